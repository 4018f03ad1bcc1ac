#!/usr/bin/env bash
# The server's user-space instructions per admit+end pair over HTTP, counted by valgrind's
# callgrind: a steadier measure than wall time on a shared VM, whose speed drifts by 10-25 %.
#
#   cargo build --release && benches/http-instructions.sh [SERVER_BINARY] [LOADGEN_BINARY]
#
# Runs the server under callgrind (one worker, a fresh data dir), drives it with the README's
# loadgen command, counts only a 10 s window of the load phase, and divides the instructions by
# the admissions `/metrics` counted in that window. Needs valgrind; takes about a minute.
# Kernel time (loopback TCP, fsync) is not counted: callgrind sees user space only.
# KEEP_CALLGRIND=FILE keeps the profile, for callgrind_annotate.
set -euo pipefail

server=${1:-target/release/switchboard}
loadgen=${2:-$server}
port=${SWITCHBOARD_BENCH_PORT:-8099}
url=http://127.0.0.1:$port
token=bench-token-0123456789
work=$(mktemp -d)
trap 'kill $vpid $lpid 2>/dev/null || true; [ -n "${KEEP_CALLGRIND:-}" ] && cp "$work/callgrind.out" "$KEEP_CALLGRIND"; rm -rf "$work"' EXIT

SWITCHBOARD_ADMIN_TOKEN=$token SWITCHBOARD_LOG=warn valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$work/callgrind.out" "$server" --data-dir "$work/data" --worker-threads 1 \
    --listen "127.0.0.1:$port" >"$work/server.log" 2>&1 &
vpid=$!
for _ in $(seq 120); do curl -sf -o /dev/null "$url/healthz" && break; sleep 1; done

"$loadgen" loadgen --url "$url" --token $token --connections 64 --duration 40 --tenants 1000 >"$work/loadgen.log" 2>&1 &
lpid=$!
admitted() { curl -s "$url/metrics" | awk '/^switchboard_admissions_total\{/ && /outcome="admitted"/ {print int($2)}'; }
# Wait out the setup (1 000 tenants, slow under valgrind) until calls are being admitted.
for _ in $(seq 120); do [ "$(admitted)" -gt 1000 ] 2>/dev/null && break; sleep 1; done
before=$(admitted)
callgrind_control -i on $vpid >/dev/null 2>&1
sleep 10
callgrind_control -i off $vpid >/dev/null 2>&1
after=$(admitted)
wait $lpid || true
kill -INT $vpid
wait $vpid || true
instructions=$(awk '/Collected :/ {print $4}' "$work/server.log")
pairs=$((after - before))
echo "{\"instructions\":$instructions,\"pairs\":$pairs,\"instructions_per_pair\":$((instructions / pairs))}"
