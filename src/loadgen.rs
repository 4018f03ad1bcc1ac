//! `switchboard loadgen`: a closed-loop HTTP load generator for a running
//! switchboard server.
//!
//! ```text
//! switchboard loadgen --url http://127.0.0.1:8080 --token T \
//!     --connections N --duration SECS --tenants K
//! ```
//!
//! Phases:
//! 1. **Setup** – opens `N` keep-alive connections, creates `K` fresh tenants
//!    (`lg-<runid>-<i>`, plan `PRO`, huge concurrency override) spread over
//!    those connections, and raises the platform capacity to at least `2*N`
//!    so the load itself is never refused for capacity. Any unexpected
//!    status here is fatal.
//! 2. **Load** – `N` workers, one connection each, loop until the deadline
//!    doing admit (`POST /v1/calls`) + end (`POST /v1/calls/{id}/end`)
//!    pairs. Worker `w` uses tenant `(w + k*N) % K` for its `k`-th pair.
//!    Every failed pair (wrong status, bad body, I/O error, timeout) counts
//!    one error; a worker stops after [`MAX_CONSECUTIVE_ERRORS`] in a row.
//!
//!    The load generator shares the CPU with the server it measures (on the
//!    2-core development machine, a quarter of the machine went to it), so
//!    the load phase is lean, like `wrk`: each worker owns a plain TCP
//!    connection ([`WireConn`]) that it writes and reads itself, with no
//!    connection-driver task (one task wake-up per request, not two). A
//!    request is assembled in a reusable buffer and written at once; the
//!    response is read into a reusable buffer and framed by its
//!    `content-length`; the admit response is deserialised into just its
//!    `call_id`, borrowed from that buffer. No JSON tree is built for either
//!    request or response. The setup phase keeps the general
//!    [`Client`].
//! 3. **Report** – latencies are kept in fixed-size per-worker
//!    [`Histogram`]s (no per-sample storage) that are merged at the end.
//!    `p50_ms`/`p99_ms`/`max_ms` are per HTTP request (admit and end are one
//!    sample each, any request that got an HTTP response counts); `pair_*`
//!    are per successful admit+end pair.
//!
//! Nothing is written to stdout except the final one-line JSON report
//! ([`run_and_print`] / [`report_json`]); setup progress and the first few
//! errors go to stderr.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::json;

use crate::client::{Client, Response, parse_http_url};
use crate::wire::{self, WireConn};

/// Upper bound for `--connections`. Each connection is one TCP socket, one
/// tokio task, two histograms (~20 KiB each) and a 4 KiB response buffer;
/// past ~1k a single load generator process is the bottleneck and
/// file-descriptor limits bite.
pub const CONNECTIONS_MAX: usize = 1024;
/// Upper bound for `--duration` in seconds (one hour); longer soaks should
/// be separate runs so a typo can't tie up a server for days.
pub const DURATION_S_MAX: u64 = 3600;
/// Upper bound for `--tenants`; setup creates them all one request each, so
/// this also bounds setup time and the tenant rows a run leaves behind.
pub const TENANTS_MAX: usize = 100_000;
/// A worker gives up after this many consecutive failed pairs, so a dead or
/// misconfigured server can't make every worker spin until the deadline.
pub const MAX_CONSECUTIVE_ERRORS: u32 = 1000;
/// Timeout for a single HTTP request (and for a (re)connect). A request
/// that hangs longer counts as an I/O error and the connection is replaced.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// `concurrent_limit_override` given to every load tenant, so per-tenant
/// limits never refuse load-generator calls.
pub const TENANT_CONCURRENT_LIMIT: u64 = 100_000;
/// Pause after a failed reconnect before retrying, so a worker facing a
/// refused port does not busy-loop.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(10);
/// At most this many individual load errors are described on stderr per
/// run (the total is always in the report).
const ERRORS_LOGGED_MAX: u64 = 10;

/// Arguments of `switchboard loadgen`.
#[derive(Debug, Clone)]
pub struct LoadgenArgs {
    /// Base URL of the server, `http://IP:PORT` or `http://localhost:PORT`.
    pub url: String,
    /// Bearer token; an empty string sends no `authorization` header.
    pub token: String,
    /// Number of concurrent connections / workers, `1..=CONNECTIONS_MAX`.
    pub connections: usize,
    /// Load phase length in seconds, `1..=DURATION_S_MAX`.
    pub duration_s: u64,
    /// Number of tenants to create and spread calls over, `1..=TENANTS_MAX`.
    pub tenants: usize,
}

impl LoadgenArgs {
    /// Checks every bound; out-of-range values are an error, never clamped.
    pub fn validate(&self) -> Result<()> {
        if !(1..=CONNECTIONS_MAX).contains(&self.connections) {
            bail!("--connections must be in 1..={CONNECTIONS_MAX}, got {}", self.connections);
        }
        if !(1..=DURATION_S_MAX).contains(&self.duration_s) {
            bail!("--duration must be in 1..={DURATION_S_MAX} seconds, got {}", self.duration_s);
        }
        if !(1..=TENANTS_MAX).contains(&self.tenants) {
            bail!("--tenants must be in 1..={TENANTS_MAX}, got {}", self.tenants);
        }
        parse_http_url(&self.url).context("--url")?;
        Ok(())
    }
}

/// Result of a load run; serialised by [`report_json`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Successful admit+end pairs per second of measured load time.
    pub pairs_per_s: f64,
    /// Median per-request latency (admit and end each one sample).
    pub p50_ms: f64,
    /// 99th percentile per-request latency.
    pub p99_ms: f64,
    /// Failed pairs (unexpected status, bad body, I/O error or timeout).
    pub errors: u64,
    /// Successful admit+end pairs.
    pub pairs: u64,
    /// Measured load phase length (deadline plus in-flight completion).
    pub duration_s: f64,
    /// Median latency of a successful admit+end pair.
    pub pair_p50_ms: f64,
    /// 99th percentile latency of a successful admit+end pair.
    pub pair_p99_ms: f64,
    /// Largest per-request latency seen (exact, not bucketed).
    pub max_ms: f64,
}

/// The report as one line of JSON (the last line `loadgen` prints).
pub fn report_json(r: &Report) -> String {
    // A struct of numbers always serialises (non-finite floats become null).
    serde_json::to_string(r).expect("Report serialisation cannot fail")
}

/// Runs the load and prints [`report_json`] as the only line on stdout.
/// This is what the `loadgen` subcommand should call.
pub async fn run_and_print(args: LoadgenArgs) -> Result<()> {
    let report = run(args).await?;
    println!("{}", report_json(&report));
    Ok(())
}

/// Performs setup and the load phase and returns the report. Prints
/// nothing on stdout.
pub async fn run(args: LoadgenArgs) -> Result<Report> {
    args.validate()?;
    let addr = parse_http_url(&args.url)?;
    let token = (!args.token.is_empty()).then(|| args.token.clone());
    let n = args.connections;

    let clients = connect_all(addr, &token, n).await?;

    let run_id = run_id();
    let tenants: Arc<[String]> = (0..args.tenants).map(|i| format!("lg-{run_id}-{i}")).collect();
    // The load phase writes them into JSON bodies verbatim.
    assert!(tenants.iter().all(|t| is_plain_id(t)), "tenant ids need no JSON escaping");
    eprintln!("loadgen: creating {} tenants (lg-{run_id}-*) over {n} connections", tenants.len());
    let mut clients = create_tenants(clients, &tenants).await?;
    ensure_capacity(&mut clients[0], (n as u64) * 2).await?;
    // The load phase opens its own connections.
    drop(clients);

    eprintln!("loadgen: running {n} connections for {}s against {addr}", args.duration_s);
    let (total, elapsed) = load(addr, &args.token, n, tenants, Duration::from_secs(args.duration_s)).await?;
    let elapsed = elapsed.as_secs_f64();
    let report = Report {
        pairs_per_s: round_to(total.pairs as f64 / elapsed, 2),
        p50_ms: round_to(total.requests.percentile_ms(0.50), 3),
        p99_ms: round_to(total.requests.percentile_ms(0.99), 3),
        errors: total.errors,
        pairs: total.pairs,
        duration_s: round_to(elapsed, 3),
        pair_p50_ms: round_to(total.pair_latency.percentile_ms(0.50), 3),
        pair_p99_ms: round_to(total.pair_latency.percentile_ms(0.99), 3),
        max_ms: round_to(total.requests.max_ms(), 3),
    };
    eprintln!("loadgen: done: {} pairs, {} errors in {:.3}s", report.pairs, report.errors, elapsed);
    Ok(report)
}

/// The load phase: `connections` workers, each on its own [`WireConn`],
/// doing admit+end pairs on `tenants` (which must exist and need no JSON
/// escaping) for `duration`. Returns the merged counters and the measured
/// time (the deadline plus the completion of the pairs in flight).
async fn load(
    addr: SocketAddr,
    token: &str,
    connections: usize,
    tenants: Arc<[String]>,
    duration: Duration,
) -> Result<(WorkerStats, Duration)> {
    let mut conns = (0..connections).map(|_| WireConn::new(addr, token)).collect::<std::io::Result<Vec<_>>>().context("--token")?;
    // Connected before the clock starts, so the measured window holds only load. One that
    // fails here is retried (and counted) by its worker.
    for conn in &mut conns {
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, conn.connect()).await;
    }
    let logged = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let handles: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(w, conn)| {
            let worker = Worker { index: w, connections, tenants: tenants.clone(), deadline, logged: logged.clone() };
            tokio::spawn(worker.run(conn))
        })
        .collect();

    let mut total = WorkerStats::new();
    for h in handles {
        let stats = h.await.context("load worker panicked")?;
        total.merge(&stats);
    }
    Ok((total, start.elapsed()))
}

fn round_to(v: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (v * f).round() / f
}

/// Current unix time in milliseconds, base 36 (8 chars until the year 2059),
/// so tenant ids of repeated runs don't collide.
fn run_id() -> String {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    base36(ms)
}

fn base36(mut v: u128) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(v % 36) as usize]);
        v /= 36;
        if v == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("base36 digits are ASCII")
}

async fn connect_with_timeout(addr: SocketAddr, token: Option<String>) -> Result<Client> {
    tokio::time::timeout(REQUEST_TIMEOUT, Client::connect(addr, token))
        .await
        .map_err(|_| anyhow!("connecting to {addr} timed out after {REQUEST_TIMEOUT:?}"))?
}

async fn connect_all(addr: SocketAddr, token: &Option<String>, n: usize) -> Result<Vec<Client>> {
    let handles: Vec<_> = (0..n).map(|_| tokio::spawn(connect_with_timeout(addr, token.clone()))).collect();
    let mut clients = Vec::with_capacity(n);
    for h in handles {
        clients.push(h.await.context("connect task panicked")??);
    }
    Ok(clients)
}

/// Sends one setup request with [`REQUEST_TIMEOUT`].
async fn setup_request(c: &mut Client, method: &str, path: &str, body: Option<&serde_json::Value>) -> Result<Response> {
    tokio::time::timeout(REQUEST_TIMEOUT, c.send(method, path, body, &[]))
        .await
        .map_err(|_| anyhow!("{method} {path} timed out after {REQUEST_TIMEOUT:?}"))?
        .with_context(|| format!("{method} {path}"))
}

fn unexpected(method: &str, path: &str, r: &Response, want: u16) -> anyhow::Error {
    anyhow!("setup: {method} {path} returned {} (expected {want}): {}", r.status, r.text())
}

/// Creates all tenants, connection `c` handling tenants `c, c+N, c+2N, ...`.
/// Returns the clients in their original order.
async fn create_tenants(clients: Vec<Client>, tenants: &Arc<[String]>) -> Result<Vec<Client>> {
    let n = clients.len();
    let handles: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(c, mut client)| {
            let tenants = tenants.clone();
            tokio::spawn(async move {
                for id in tenants.iter().skip(c).step_by(n) {
                    let body = json!({
                        "id": id,
                        "plan": "PRO",
                        "concurrent_limit_override": TENANT_CONCURRENT_LIMIT,
                    });
                    let r = setup_request(&mut client, "POST", "/v1/tenants", Some(&body)).await?;
                    match r.status {
                        201 => {}
                        409 => bail!(
                            "setup: tenant {id:?} already exists (409 from POST /v1/tenants); \
                             another loadgen run started in the same millisecond? retry"
                        ),
                        _ => return Err(unexpected("POST", "/v1/tenants", &r, 201)),
                    }
                }
                Ok(client)
            })
        })
        .collect();

    let mut out = Vec::with_capacity(n);
    let mut first_err = None;
    for h in handles {
        match h.await.context("tenant setup task panicked")? {
            Ok(c) => out.push(c),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// Makes sure platform capacity is at least `needed` concurrent calls.
async fn ensure_capacity(c: &mut Client, needed: u64) -> Result<()> {
    let r = setup_request(c, "GET", "/v1/platform", None).await?;
    if r.status != 200 {
        return Err(unexpected("GET", "/v1/platform", &r, 200));
    }
    let capacity =
        r.json()["capacity"].as_u64().ok_or_else(|| anyhow!("setup: GET /v1/platform: no numeric \"capacity\" in {}", r.text()))?;
    if capacity < needed {
        eprintln!("loadgen: raising platform capacity {capacity} -> {needed}");
        let body = json!({ "capacity": needed });
        let r = setup_request(c, "PATCH", "/v1/platform", Some(&body)).await?;
        if r.status != 200 {
            return Err(unexpected("PATCH", "/v1/platform", &r, 200));
        }
    }
    Ok(())
}

/// Per-worker counters, merged after the run.
struct WorkerStats {
    requests: Histogram,
    pair_latency: Histogram,
    pairs: u64,
    errors: u64,
}

impl WorkerStats {
    fn new() -> Self {
        WorkerStats { requests: Histogram::new(), pair_latency: Histogram::new(), pairs: 0, errors: 0 }
    }

    fn merge(&mut self, o: &WorkerStats) {
        self.requests.merge(&o.requests);
        self.pair_latency.merge(&o.pair_latency);
        self.pairs += o.pairs;
        self.errors += o.errors;
    }
}

struct Worker {
    index: usize,
    connections: usize,
    tenants: Arc<[String]>,
    deadline: Instant,
    logged: Arc<AtomicU64>,
}

impl Worker {
    async fn run(self, mut conn: WireConn) -> WorkerStats {
        let mut stats = WorkerStats::new();
        let mut admit_body = Vec::with_capacity(128);
        let mut consecutive: u32 = 0;
        let k_count = self.tenants.len();
        // `k` is kept modulo K: (w + k*N) % K == (w + (k % K)*N) % K.
        let mut k: usize = 0;

        while Instant::now() < self.deadline {
            if !conn.is_connected() {
                let failure = match tokio::time::timeout(REQUEST_TIMEOUT, conn.connect()).await {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(format!("connecting to {}: {e}", conn.addr())),
                    Err(_) => Some(format!("connecting to {} timed out after {REQUEST_TIMEOUT:?}", conn.addr())),
                };
                if let Some(msg) = failure {
                    if self.error(&mut stats, &mut consecutive, msg) {
                        break;
                    }
                    tokio::time::sleep(RECONNECT_BACKOFF).await;
                    continue;
                }
            }
            let tenant = &self.tenants[(self.index + k * self.connections) % k_count];
            k = (k + 1) % k_count;

            match one_pair(&mut conn, tenant, &mut admit_body, &mut stats).await {
                Ok(()) => {
                    stats.pairs += 1;
                    consecutive = 0;
                }
                // A transport error or a timeout has already dropped the connection (the
                // request owned it); a wrong answer keeps it.
                Err(msg) => {
                    if self.error(&mut stats, &mut consecutive, msg) {
                        break;
                    }
                }
            }
        }
        stats
    }

    /// Counts one error; returns true if the worker must stop.
    fn error(&self, stats: &mut WorkerStats, consecutive: &mut u32, msg: String) -> bool {
        stats.errors += 1;
        *consecutive += 1;
        if self.logged.fetch_add(1, Ordering::Relaxed) < ERRORS_LOGGED_MAX {
            eprintln!("loadgen: worker {}: {msg}", self.index);
        }
        if *consecutive >= MAX_CONSECUTIVE_ERRORS {
            eprintln!("loadgen: worker {} stopping after {MAX_CONSECUTIVE_ERRORS} consecutive errors", self.index);
            return true;
        }
        false
    }
}

/// One timed POST; records the latency of every request that got a response.
async fn timed_post<'c>(c: &'c mut WireConn, hist: &mut Histogram, path: &str, body: &[u8]) -> Result<wire::Response<'c>, String> {
    let t0 = Instant::now();
    match tokio::time::timeout(REQUEST_TIMEOUT, c.post(path, body)).await {
        Ok(Ok(r)) => {
            hist.record(t0.elapsed());
            Ok(r)
        }
        Ok(Err(e)) => Err(format!("POST {path}: {e}")),
        Err(_) => Err(format!("POST {path}: timed out after {REQUEST_TIMEOUT:?}")),
    }
}

/// The only field of the admit response the load phase reads; the others
/// are skipped. Borrowed from the response buffer unless it has escapes.
#[derive(serde::Deserialize)]
struct Admitted<'a> {
    #[serde(borrow)]
    call_id: Cow<'a, str>,
}

/// The `call_id` of an admit response. switchboard's own begin `{"object":"call","call_id":"`
/// with an id that needs no escaping: it is read from there, without parsing the rest of the
/// view (which was a third of this load generator's instructions). Anything else is parsed.
fn call_id_of(body: &[u8]) -> Result<Cow<'_, str>, serde_json::Error> {
    const PREFIX: &[u8] = br#"{"object":"call","call_id":""#;
    if let Some(rest) = body.strip_prefix(PREFIX)
        && let Some(end) = rest.iter().position(|&b| b == b'"')
        && rest[..end].iter().all(|&b| b >= 0x20 && b != b'\\')
        && let Ok(id) = std::str::from_utf8(&rest[..end])
    {
        return Ok(Cow::Borrowed(id));
    }
    serde_json::from_slice::<Admitted<'_>>(body).map(|admitted| admitted.call_id)
}

/// Room for `/v1/calls/{id}/end` with switchboard's ids (`call_` and twelve digits or more).
const END_PATH_BYTES: usize = 48;

/// Whether `s` can be written into a JSON string (or a URL path) verbatim:
/// loadgen's own tenant ids (`lg-<base36>-<i>`) always can.
fn is_plain_id(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The admit request body for `tenant`, written into `out`.
fn write_admit_body(out: &mut Vec<u8>, tenant: &str) {
    debug_assert!(is_plain_id(tenant), "{tenant:?} would need JSON escaping");
    out.clear();
    out.extend_from_slice(br#"{"tenant_id":""#);
    out.extend_from_slice(tenant.as_bytes());
    out.extend_from_slice(br#"","direction":"outbound"}"#);
}

async fn one_pair(c: &mut WireConn, tenant: &str, admit_body: &mut Vec<u8>, stats: &mut WorkerStats) -> Result<(), String> {
    let t0 = Instant::now();
    write_admit_body(admit_body, tenant);
    let r = timed_post(c, &mut stats.requests, "/v1/calls", admit_body).await?;
    if r.status != 201 {
        return Err(format!("POST /v1/calls returned {} (expected 201): {}", r.status, String::from_utf8_lossy(r.body)));
    }
    let call_id = call_id_of(r.body).map_err(|e| format!("POST /v1/calls: no \"call_id\" in {} ({e})", String::from_utf8_lossy(r.body)))?;
    let mut path = String::with_capacity(END_PATH_BYTES);
    path.push_str("/v1/calls/");
    push_path_segment(&mut path, &call_id);
    path.push_str("/end");
    let r = timed_post(c, &mut stats.requests, &path, b"{}").await?;
    if r.status != 200 {
        return Err(format!("POST {path} returned {} (expected 200): {}", r.status, String::from_utf8_lossy(r.body)));
    }
    stats.pair_latency.record(t0.elapsed());
    Ok(())
}

/// Appends `s` to `out`, percent-encoding everything but RFC 3986 unreserved characters.
fn push_path_segment(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.extend(['%', char::from(HEX[usize::from(b >> 4)]), char::from(HEX[usize::from(b & 15)])]);
        }
    }
}

/// Fixed-size log-linear latency histogram (HDR-style), microsecond units.
///
/// Values below 128 µs get exact 1 µs buckets; above that every power of
/// two is split into 128 equal buckets, so a bucket is never wider than
/// 1/128 (< 0.8 %) of its values. Values above [`HISTOGRAM_MAX_US`] (60 s)
/// land in a single overflow bucket. About 2.5k `u64` counters (~20 KiB)
/// regardless of the number of samples; the exact min and max are tracked
/// separately.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    min_us: u64,
    max_us: u64,
}

/// log2 of the number of buckets per power of two.
const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;
/// Largest latency (µs) that is still bucketed precisely: 60 s.
pub const HISTOGRAM_MAX_US: u64 = 60_000_000;
/// Precise buckets plus one overflow bucket.
const BUCKETS: usize = bucket_index(HISTOGRAM_MAX_US) + 2;

const fn bucket_index(v: u64) -> usize {
    if v < SUB {
        v as usize
    } else {
        let exp = 63 - v.leading_zeros(); // floor(log2 v) >= SUB_BITS
        let shift = exp - SUB_BITS;
        (((shift as u64 + 1) << SUB_BITS) + ((v >> shift) & (SUB - 1))) as usize
    }
}

/// Smallest value in bucket `i` and the bucket's width (both µs).
fn bucket_range(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < SUB {
        (i, 1)
    } else {
        let shift = i / SUB - 1;
        ((SUB + i % SUB) << shift, 1 << shift)
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    pub fn new() -> Self {
        Histogram { counts: vec![0; BUCKETS].into_boxed_slice(), total: 0, min_us: u64::MAX, max_us: 0 }
    }

    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = if us > HISTOGRAM_MAX_US { BUCKETS - 1 } else { bucket_index(us) };
        self.counts[i] += 1;
        self.total += 1;
        self.min_us = self.min_us.min(us);
        self.max_us = self.max_us.max(us);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.min_us = self.min_us.min(other.min_us);
        self.max_us = self.max_us.max(other.max_us);
    }

    /// Number of recorded samples.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Exact largest sample in milliseconds (0 when empty).
    pub fn max_ms(&self) -> f64 {
        self.max_us as f64 / 1000.0
    }

    /// The `q`-quantile (`0.0..=1.0`, nearest-rank) in milliseconds: the
    /// middle of the bucket holding that rank, clamped to the exact min/max
    /// (which are returned exactly for the first/last rank). 0 when empty.
    pub fn percentile_ms(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).clamp(1, self.total);
        // The extremes are tracked exactly.
        if rank == 1 {
            return self.min_us as f64 / 1000.0;
        }
        if rank == self.total {
            return self.max_ms();
        }
        let mut seen = 0u64;
        for (i, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let us = if i == BUCKETS - 1 {
                    self.max_us as f64
                } else {
                    let (low, width) = bucket_range(i);
                    low as f64 + (width - 1) as f64 / 2.0
                };
                return us.clamp(self.min_us as f64, self.max_us as f64) / 1000.0;
            }
        }
        self.max_ms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(v: u64) -> Duration {
        Duration::from_micros(v)
    }

    #[test]
    fn bucket_index_is_monotonic_and_consistent() {
        assert_eq!(BUCKETS, 2534);
        let mut prev = 0;
        let mut v = 0u64;
        while v <= HISTOGRAM_MAX_US {
            let i = bucket_index(v);
            assert!(i >= prev, "index decreased at {v}");
            assert!(i < BUCKETS - 1);
            let (low, width) = bucket_range(i);
            assert!(low <= v && v < low + width, "{v} not in bucket {i}");
            assert!(width == 1 || (width as f64) / (low as f64) <= 1.0 / 128.0);
            prev = i;
            v = if v < 100_000 { v + 1 } else { v + v / 1000 };
        }
    }

    #[test]
    fn exact_percentiles_for_small_values() {
        let mut h = Histogram::new();
        for v in 1..=100 {
            h.record(us(v));
        }
        assert_eq!(h.count(), 100);
        assert_eq!(h.percentile_ms(0.0), 0.001);
        assert_eq!(h.percentile_ms(0.5), 0.050);
        assert_eq!(h.percentile_ms(0.99), 0.099);
        assert_eq!(h.percentile_ms(1.0), 0.100);
        assert_eq!(h.max_ms(), 0.100);
    }

    #[test]
    fn percentiles_within_one_percent_for_large_values() {
        let mut h = Histogram::new();
        for ms in 1..=10_000u64 {
            h.record(Duration::from_millis(ms));
        }
        let close = |got: f64, want: f64| (got - want).abs() / want < 0.01;
        assert!(close(h.percentile_ms(0.5), 5000.0), "{}", h.percentile_ms(0.5));
        assert!(close(h.percentile_ms(0.99), 9900.0), "{}", h.percentile_ms(0.99));
        assert_eq!(h.percentile_ms(1.0), 10_000.0);
        assert_eq!(h.max_ms(), 10_000.0);
    }

    #[test]
    fn empty_and_overflow() {
        let mut h = Histogram::new();
        assert_eq!(h.percentile_ms(0.5), 0.0);
        assert_eq!(h.max_ms(), 0.0);
        h.record(Duration::from_secs(120));
        h.record(Duration::from_secs(200));
        h.record(Duration::from_secs(3600));
        assert_eq!(h.percentile_ms(0.0), 120_000.0); // exact min
        assert_eq!(h.percentile_ms(0.5), 3_600_000.0); // overflow -> exact max
        assert_eq!(h.max_ms(), 3_600_000.0);
        h.record(Duration::from_nanos(500)); // rounds down to 0 µs
        assert_eq!(h.percentile_ms(0.0), 0.0);
    }

    #[test]
    fn merge_equals_recording_everything_in_one() {
        let (mut a, mut b, mut all) = (Histogram::new(), Histogram::new(), Histogram::new());
        for v in 0..5000u64 {
            let d = us(v * 37 % 90_000 + 3);
            if v % 3 == 0 { &mut a } else { &mut b }.record(d);
            all.record(d);
        }
        a.merge(&b);
        assert_eq!(a.count(), all.count());
        assert_eq!(a.counts, all.counts);
        for q in [0.0, 0.25, 0.5, 0.9, 0.99, 1.0] {
            assert_eq!(a.percentile_ms(q), all.percentile_ms(q));
        }
        assert_eq!(a.max_ms(), all.max_ms());
    }

    #[test]
    fn helpers() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
        let encoded = |s: &str| {
            let mut out = String::from("/");
            push_path_segment(&mut out, s);
            out
        };
        assert_eq!(encoded("c-1_a.b~Z"), "/c-1_a.b~Z");
        assert_eq!(encoded("a/b c"), "/a%2Fb%20c");
        assert_eq!(encoded("é"), "/%C3%A9");
        let r = Report {
            pairs_per_s: 1.5,
            p50_ms: 0.1,
            p99_ms: 0.2,
            errors: 0,
            pairs: 3,
            duration_s: 2.0,
            pair_p50_ms: 0.3,
            pair_p99_ms: 0.4,
            max_ms: 0.5,
        };
        let j: serde_json::Value = serde_json::from_str(&report_json(&r)).unwrap();
        for key in ["pairs_per_s", "p50_ms", "p99_ms", "errors", "pairs", "duration_s", "pair_p50_ms", "pair_p99_ms", "max_ms"] {
            assert!(j.get(key).is_some(), "missing {key}");
        }
        assert!(!report_json(&r).contains('\n'));
    }

    fn args(url: &str, token: &str, connections: usize, duration_s: u64, tenants: usize) -> LoadgenArgs {
        LoadgenArgs { url: url.into(), token: token.into(), connections, duration_s, tenants }
    }

    #[test]
    fn out_of_range_args_are_rejected() {
        let ok = "http://127.0.0.1:1";
        assert!(args(ok, "t", 1, 1, 1).validate().is_ok());
        assert!(args(ok, "t", CONNECTIONS_MAX, DURATION_S_MAX, TENANTS_MAX).validate().is_ok());
        for bad in [
            args(ok, "t", 0, 1, 1),
            args(ok, "t", CONNECTIONS_MAX + 1, 1, 1),
            args(ok, "t", 1, 0, 1),
            args(ok, "t", 1, DURATION_S_MAX + 1, 1),
            args(ok, "t", 1, 1, 0),
            args(ok, "t", 1, 1, TENANTS_MAX + 1),
            args("https://127.0.0.1:1", "t", 1, 1, 1),
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    // ----- fake server -----

    mod fake {
        use std::collections::{HashMap, HashSet};
        use std::sync::{Arc, Mutex};

        use axum::extract::{Path, State};
        use axum::http::{HeaderMap, StatusCode};
        use axum::routing::{get, post};
        use axum::{Json, Router};
        use serde_json::{Value, json};

        pub const TOKEN: &str = "secret";

        #[derive(Default)]
        pub struct Inner {
            pub tenants: HashSet<String>,
            pub calls: HashMap<String, String>,
            pub next_call: u64,
            pub capacity: u64,
            pub ended: u64,
            /// When set, `end` still ends the call but answers this status.
            pub end_status: Option<StatusCode>,
        }

        pub type Shared = Arc<Mutex<Inner>>;
        type Reply = (StatusCode, Json<Value>);

        fn authed(h: &HeaderMap) -> Result<(), Reply> {
            let ok = h.get("authorization").and_then(|v| v.to_str().ok()).is_some_and(|v| v == format!("Bearer {TOKEN}"));
            let json_ct = h.get("content-type").is_none_or(|v| v == "application/json");
            if !ok {
                Err((StatusCode::UNAUTHORIZED, Json(json!({"error": "unauthorized"}))))
            } else if !json_ct {
                Err((StatusCode::UNSUPPORTED_MEDIA_TYPE, Json(json!({}))))
            } else {
                Ok(())
            }
        }

        async fn create_tenant(State(s): State<Shared>, h: HeaderMap, Json(b): Json<Value>) -> Result<Reply, Reply> {
            authed(&h)?;
            let id = b["id"].as_str().unwrap_or_default().to_owned();
            assert_eq!(b["plan"], "PRO");
            assert!(b["concurrent_limit_override"].is_u64());
            let mut s = s.lock().unwrap();
            if !s.tenants.insert(id.clone()) {
                return Err((StatusCode::CONFLICT, Json(json!({"error": "exists"}))));
            }
            Ok((StatusCode::CREATED, Json(json!({"id": id}))))
        }

        async fn get_platform(State(s): State<Shared>, h: HeaderMap) -> Result<Reply, Reply> {
            authed(&h)?;
            let s = s.lock().unwrap();
            Ok((StatusCode::OK, Json(json!({"capacity": s.capacity, "active_calls": s.calls.len()}))))
        }

        async fn patch_platform(State(s): State<Shared>, h: HeaderMap, Json(b): Json<Value>) -> Result<Reply, Reply> {
            authed(&h)?;
            let mut s = s.lock().unwrap();
            s.capacity = b["capacity"].as_u64().expect("capacity");
            Ok((StatusCode::OK, Json(json!({"capacity": s.capacity}))))
        }

        async fn admit(State(s): State<Shared>, h: HeaderMap, Json(b): Json<Value>) -> Result<Reply, Reply> {
            authed(&h)?;
            let tenant = b["tenant_id"].as_str().unwrap_or_default().to_owned();
            assert_eq!(b["direction"], "outbound");
            let mut s = s.lock().unwrap();
            if !s.tenants.contains(&tenant) {
                return Err((StatusCode::NOT_FOUND, Json(json!({}))));
            }
            if s.calls.len() as u64 >= s.capacity {
                return Err((StatusCode::TOO_MANY_REQUESTS, Json(json!({}))));
            }
            s.next_call += 1;
            let id = format!("call-{}", s.next_call);
            s.calls.insert(id.clone(), tenant.clone());
            Ok((StatusCode::CREATED, Json(json!({"call_id": id, "tenant_id": tenant}))))
        }

        async fn end(State(s): State<Shared>, Path(id): Path<String>, h: HeaderMap) -> Result<Reply, Reply> {
            authed(&h)?;
            let mut s = s.lock().unwrap();
            if s.calls.remove(&id).is_none() {
                return Err((StatusCode::NOT_FOUND, Json(json!({}))));
            }
            s.ended += 1;
            Ok((s.end_status.unwrap_or(StatusCode::OK), Json(json!({"call_id": id}))))
        }

        /// Starts the fake server on 127.0.0.1:0 with platform capacity 1.
        pub async fn start() -> (String, Shared) {
            start_with(Inner { capacity: 1, ..Inner::default() }).await
        }

        /// Starts the fake server on 127.0.0.1:0 with this state.
        pub async fn start_with(inner: Inner) -> (String, Shared) {
            let state: Shared = Arc::new(Mutex::new(inner));
            let app = Router::new()
                .route("/v1/tenants", post(create_tenant))
                .route("/v1/platform", get(get_platform).patch(patch_platform))
                .route("/v1/calls", post(admit))
                .route("/v1/calls/{id}/end", post(end))
                .with_state(state.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(listener, app).await });
            (url, state)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_against_fake_server_and_fails_setup_on_bad_token() {
        let (url, state) = fake::start().await;

        let report = run(args(&url, fake::TOKEN, 2, 1, 3)).await.unwrap();
        assert!(report.pairs > 0, "{report:?}");
        assert_eq!(report.errors, 0, "{report:?}");
        assert!(report.pairs_per_s > 0.0);
        assert!(report.duration_s >= 1.0);
        assert!(report.p50_ms > 0.0 && report.p50_ms <= report.p99_ms);
        assert!(report.p99_ms <= report.max_ms);
        assert!(report.pair_p50_ms <= report.pair_p99_ms);
        {
            let s = state.lock().unwrap();
            assert_eq!(s.tenants.len(), 3);
            assert!(s.tenants.iter().all(|t| t.starts_with("lg-")));
            assert_eq!(s.capacity, 4, "capacity raised to connections*2");
            assert!(s.calls.is_empty(), "every admitted call was ended");
            assert_eq!(s.ended, report.pairs);
        }

        let err = run(args(&url, "wrong", 2, 1, 3)).await.unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("401"), "{msg}");
        assert_eq!(state.lock().unwrap().tenants.len(), 3, "nothing created");
    }

    /// A fake server that already has `tenants` (and capacity for the
    /// load), for running the load phase alone.
    async fn fake_with_tenants(tenants: &[&str], end_status: Option<axum::http::StatusCode>) -> (SocketAddr, fake::Shared, Arc<[String]>) {
        let inner =
            fake::Inner { tenants: tenants.iter().map(|t| t.to_string()).collect(), capacity: 100, end_status, ..fake::Inner::default() };
        let (url, state) = fake::start_with(inner).await;
        (parse_http_url(&url).unwrap(), state, tenants.iter().map(|t| t.to_string()).collect())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lean_load_phase_runs_pairs_without_errors() {
        let (addr, state, tenants) = fake_with_tenants(&["lg-t-0", "lg-t-1", "lg-t-2"], None).await;
        let (stats, elapsed) = load(addr, fake::TOKEN, 2, tenants, Duration::from_secs(1)).await.unwrap();
        assert!(stats.pairs > 0, "no pairs");
        assert_eq!(stats.errors, 0);
        assert!(elapsed >= Duration::from_secs(1));
        assert_eq!(stats.requests.count(), 2 * stats.pairs, "admit and end are one sample each");
        assert_eq!(stats.pair_latency.count(), stats.pairs);
        let s = state.lock().unwrap();
        assert_eq!(s.ended, stats.pairs, "every pair ended its call");
        assert!(s.calls.is_empty(), "every admitted call was ended");
        assert_eq!(s.next_call, stats.pairs, "every admit was one pair");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lean_load_phase_counts_a_wrong_end_status_as_an_error() {
        let (addr, state, tenants) = fake_with_tenants(&["lg-t-0"], Some(axum::http::StatusCode::ACCEPTED)).await;
        let (stats, _) = load(addr, fake::TOKEN, 2, tenants, Duration::from_secs(1)).await.unwrap();
        assert_eq!(stats.pairs, 0);
        assert!(stats.errors > 0, "no errors counted");
        assert!(stats.errors <= 2 * u64::from(MAX_CONSECUTIVE_ERRORS), "workers stop after MAX_CONSECUTIVE_ERRORS");
        assert_eq!(stats.pair_latency.count(), 0);
        // The connection stays up after a wrong status: both requests of every failed pair
        // got a response and were timed.
        assert_eq!(stats.requests.count(), 2 * stats.errors);
        let s = state.lock().unwrap();
        assert_eq!(s.ended, stats.errors, "one error per end answered 202");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lean_load_phase_counts_refused_connections_and_rejects_bad_tokens() {
        // A port nobody listens on: every connect fails, each one error, paced by the backoff.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let tenants: Arc<[String]> = vec!["lg-t-0".to_owned()].into();
        let (stats, _) = load(addr, "t", 1, tenants.clone(), Duration::from_millis(300)).await.unwrap();
        assert_eq!(stats.pairs, 0);
        assert!(stats.errors > 0);
        assert!(stats.errors <= 300 / RECONNECT_BACKOFF.as_millis() as u64 + 1, "{} errors: not paced", stats.errors);

        let err = load(addr, "a\nb", 1, tenants, Duration::from_millis(1)).await.err().expect("a bad token is refused");
        assert!(format!("{err:#}").contains("--token"), "{err:#}");
    }

    #[test]
    fn admit_body_and_admitted() {
        let mut body = b"stale".to_vec();
        write_admit_body(&mut body, "lg-abc-7");
        let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(j, serde_json::json!({"tenant_id": "lg-abc-7", "direction": "outbound"}));
        assert!(is_plain_id("lg-0-1") && !is_plain_id("a\"b") && !is_plain_id("a b") && !is_plain_id(""));

        let a: Admitted<'_> = serde_json::from_slice(br#"{"object":"call","call_id":"c-1","nested":{"x":[1,2]}}"#).unwrap();
        assert!(matches!(a.call_id, Cow::Borrowed("c-1")));
        let a: Admitted<'_> = serde_json::from_slice(br#"{"call_id":"c\/2"}"#).unwrap();
        assert_eq!(a.call_id, "c/2");
        assert!(serde_json::from_slice::<Admitted<'_>>(br#"{"id":"c-1"}"#).is_err());
        assert!(serde_json::from_slice::<Admitted<'_>>(br#"{"call_id":7}"#).is_err());

        // switchboard's own shape is read without parsing; anything else is parsed.
        let ours = br#"{"object":"call","call_id":"call_000000000042","tenant_id":"t","call":{"call_id":"x"}}"#;
        assert!(matches!(call_id_of(ours).unwrap(), Cow::Borrowed("call_000000000042")));
        assert_eq!(call_id_of(br#"{"object":"call","call_id":"c\"3","x":1}"#).unwrap(), "c\"3");
        assert_eq!(call_id_of(br#"{"object":"call","call_id":"c\/4"}"#).unwrap(), "c/4");
        assert_eq!(call_id_of(br#"{"nested":{"call_id":"no"},"call_id":"yes"}"#).unwrap(), "yes");
        assert!(call_id_of(br#"{"object":"call","call_id":7}"#).is_err());
        assert!(call_id_of(br#"{"object":"call","call_id":"unterminated"#).is_err());
    }
}
