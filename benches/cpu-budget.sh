#!/usr/bin/env bash
# Where the two cores' time goes under the README's HTTP load, per admit+end pair.
#
#   cargo build --release && benches/cpu-budget.sh [SERVER_BINARY] [LOADGEN_BINARY]
#
# Starts the server (one worker, a fresh data dir), runs the README's loadgen command against
# it, and over a 4 s window of the load phase reads:
# - each server thread's CPU and the load generator's (`/proc/<pid>/task/*/stat`);
# - the whole machine's split (`/proc/stat`): user, system, softirq, iowait, idle. Thread CPU
#   leaves out softirq time, which is where loopback TCP delivers segments to their receiver;
# - the journal's group commits (`/metrics`) and the disk's writes and flushes
#   (`/sys/block/<disk>/stat`, when the data dir's disk is found there).
# Prints one JSON line. `per_pair_us`: µs per pair of each thread's CPU, of the machine's softirq
# time, of its idle and iowait time, and of all its cores' time; `machine`: shares of all cores.
# The parts overlap and need not add up to `all_cores`: the kernel may charge softirq work done
# inside a thread's system call to the thread as well. `idle_and_iowait` is the unused time.
# Linux only; takes about 15 s.
set -euo pipefail

server=${1:-target/release/switchboard}
loadgen=${2:-$server}
port=${SWITCHBOARD_BENCH_PORT:-8098}
url=http://127.0.0.1:$port
token=bench-token-0123456789
work=$(mktemp -d)
trap 'kill $lpid 2>/dev/null || true; kill $spid 2>/dev/null && wait $spid 2>/dev/null; rm -rf "$work"' EXIT
spid='' lpid=''

SWITCHBOARD_ADMIN_TOKEN=$token SWITCHBOARD_LOG=warn "$server" --data-dir "$work/data" --worker-threads 1 \
    --listen "127.0.0.1:$port" >"$work/server.log" 2>&1 &
spid=$!
for _ in $(seq 100); do curl -sf -o /dev/null "$url/readyz" && break; sleep 0.1; done

"$loadgen" loadgen --url "$url" --token $token --connections 64 --duration 10 --tenants 1000 >"$work/loadgen.log" 2>&1 &
lpid=$!
metric() { curl -s "$url/metrics" | awk -v pattern="$1" '$0 ~ pattern { sum += $NF } END { printf "%d\n", sum }'; }
admitted='^switchboard_admissions_total[{].*outcome="admitted"'
disk=$(lsblk -no PKNAME "$(df --output=source "$work" | tail -1)" 2>/dev/null || true)
[ -n "$disk" ] || disk=$(basename "$(df --output=source "$work" | tail -1)")
snapshot() {
    for t in /proc/$spid/task/*; do echo "server.$(tr ' ' _ <"$t/comm") $(awk '{print $14 + $15}' "$t/stat")"; done
    for t in /proc/$lpid/task/*; do echo "loadgen $(awk '{print $14 + $15}' "$t/stat")"; done
    echo "machine $(head -1 /proc/stat | cut -d' ' -f2-)"
    echo "pairs $(metric "$admitted")"
    echo "commits $(metric '^switchboard_journal_flush_seconds_count')"
    echo "disk $(cat "/sys/block/$disk/stat" 2>/dev/null || echo none)"
}
# Past the setup (1 000 tenants) and into the load phase.
for _ in $(seq 100); do [ "$(metric "$admitted")" -gt 10000 ] && break; sleep 0.1; done
snapshot >"$work/before"
sleep 4
snapshot >"$work/after"
wait $lpid
lpid=''

python3 - "$work/before" "$work/after" "$(tail -1 "$work/loadgen.log")" "$(getconf CLK_TCK)" <<'PY'
import json, sys
def read(path):
    out = {}
    for line in open(path):
        name, *values = line.split()
        if name in out and name != "machine":
            out[name] = [a + float(b) for a, b in zip(out[name], values)]
        elif values and values[0] != "none":
            out[name] = [float(v) for v in values]
    return out
before, after, loadgen, hz = read(sys.argv[1]), read(sys.argv[2]), json.loads(sys.argv[3]), float(sys.argv[4])
delta = {k: [b - a for a, b in zip(before[k], after[k])] for k in after if k in before}
pairs = delta["pairs"][0]
us = lambda ticks: round(ticks / hz * 1e6 / pairs, 1)
machine = delta["machine"]
names = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"]
total = sum(machine[:8])
result = {
    "pairs_per_s": loadgen["pairs_per_s"],
    "p99_ms": loadgen["p99_ms"],
    "errors": loadgen["errors"],
    "per_pair_us": {
        **{k.replace("server.", "server_"): us(v[0]) for k, v in sorted(delta.items()) if k.startswith(("server.", "loadgen")) and v[0]},
        "softirq": us(machine[6]),
        "idle_and_iowait": us(machine[3] + machine[4]),
        "all_cores": us(total),
    },
    "machine": {n: round(v / total, 3) for n, v in zip(names, machine) if n not in ("nice", "irq", "steal") or v},
    "pairs_per_commit": round(pairs / delta["commits"][0], 1) if delta["commits"][0] else None,
}
if "disk" in delta and delta["commits"][0]:
    d, commits = delta["disk"], delta["commits"][0]
    result["disk_per_commit"] = {"writes": round(d[4] / commits, 2), "flushes": round(d[15] / commits, 2) if len(d) > 15 else None}
print(json.dumps(result))
PY
