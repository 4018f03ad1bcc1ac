//! `switchboard loadgen` against the real server: the lean load phase's bare HTTP/1.1
//! connection understands every response the server gives it (each is framed by
//! `content-length`, never chunked), and a short run completes pairs without errors.

mod common;

use std::process::Command;

use common::process::{Launcher, Server};
use common::*;
use serde_json::{Value, json};
use switchboard::loadgen::{self, LoadgenArgs};
use switchboard::wire::WireConn;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_frames_admit_end_and_problem_responses_with_content_length() {
    let dir = temp_dir();
    let server = start_in(dir.path(), |_| {}).await;
    let addr = server.running.address;
    let mut client = server.client().await;
    create_tenant(&mut client, "lg-it-0", "PRO", Some(1000)).await;

    // What the load phase sends, on one keep-alive connection. Every response below parsed,
    // so each had a content-length and no transfer-encoding.
    let mut wire = WireConn::new(addr, TOKEN).unwrap();
    let admit = wire.post("/v1/calls", br#"{"tenant_id":"lg-it-0","direction":"outbound"}"#).await.unwrap();
    assert_eq!(admit.status, 201, "{}", String::from_utf8_lossy(admit.body));
    let call: Value = serde_json::from_slice(admit.body).unwrap();
    let id = call["call_id"].as_str().expect("call_id").to_owned();
    let end_path = format!("/v1/calls/{id}/end");
    let end = wire.post(&end_path, b"{}").await.unwrap();
    assert_eq!(end.status, 200, "{}", String::from_utf8_lossy(end.body));
    assert_eq!(serde_json::from_slice::<Value>(end.body).unwrap()["status"], "ended");

    // Error answers are framed the same way and keep the connection.
    for (path, body, status) in [
        ("/v1/calls/call_999999999999/end", &b"{}"[..], 404),
        ("/v1/calls", br#"{"tenant_id":"nobody","direction":"outbound"}"#, 422),
        ("/v1/calls", b"{", 400),
    ] {
        let r = wire.post(path, body).await.unwrap();
        assert_eq!(r.status, status, "POST {path}: {}", String::from_utf8_lossy(r.body));
        assert!(serde_json::from_slice::<Value>(r.body).unwrap()["code"].is_string(), "problem+json body");
        assert!(wire.is_connected(), "POST {path}: the server kept the connection");
    }
    let mut anonymous = WireConn::new(addr, "").unwrap();
    let r = anonymous.post("/v1/calls", br#"{"tenant_id":"lg-it-0","direction":"outbound"}"#).await.unwrap();
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(r.body));

    // The same, seen through the general client's header list.
    let r = client.post("/v1/calls", &json!({"tenant_id": "lg-it-0", "direction": "outbound"})).await.unwrap();
    assert_eq!(r.status, 201);
    assert!(r.header("content-length").is_some() && r.header("transfer-encoding").is_none(), "{:?}", r.headers);
    let r = client.post(&format!("/v1/calls/{}/end", r.json()["call_id"].as_str().unwrap()), &json!({})).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r.header("content-length").is_some() && r.header("transfer-encoding").is_none(), "{:?}", r.headers);

    assert_eq!(get_json(&mut client, "/v1/platform").await["active"], 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_loadgen_run_completes_pairs_without_errors() {
    let dir = temp_dir();
    let server = start_in(dir.path(), |_| {}).await;
    let url = format!("http://{}", server.running.address);
    let args = |token: &str| LoadgenArgs { url: url.clone(), token: token.into(), connections: 2, duration_s: 1, tenants: 3 };

    let report = loadgen::run(args(TOKEN)).await.unwrap();
    assert!(report.pairs > 0, "{report:?}");
    assert_eq!(report.errors, 0, "{report:?}");
    assert!(report.duration_s >= 1.0 && report.p50_ms > 0.0 && report.p50_ms <= report.p99_ms, "{report:?}");

    let mut client = server.client().await;
    let platform = get_json(&mut client, "/v1/platform").await;
    assert_eq!(platform["active"], 0, "every admitted call was ended: {platform}");
    assert!(platform["capacity"].as_u64().unwrap() >= 4, "capacity raised to connections*2: {platform}");

    let err = loadgen::run(args("wrong-token")).await.unwrap_err();
    assert!(format!("{err:#}").contains("401"), "{err:#}");

    assert_live_equals_durable(&server.system).await;
    server.stop().await;
}

/// The README's HTTP benchmark as real processes: the server started with `--worker-threads 1`,
/// and `switchboard loadgen` in a process of its own whose last line on stdout is the report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_benchmark_commands_run_as_processes() {
    let dir = temp_dir();
    let mut launcher = Launcher::new(dir.path(), TOKEN, &[]);
    launcher.args = vec!["--worker-threads".into(), "1".into()];
    let configure = |_| std::fs::write(&launcher.config, "").map(|()| "defaults".to_owned()).map_err(Into::into);
    let (mut server, _, _) = Server::start(&launcher, "one worker", configure).await.unwrap();

    let url = format!("http://{}", server.addr);
    let load = ["loadgen", "--url", &url, "--token", TOKEN, "--connections", "4", "--duration", "1", "--tenants", "10"];
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard")).args(load).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "loadgen failed: {}\n{}", stdout, String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_str(stdout.lines().last().expect("a report line")).unwrap();
    assert!(report["pairs"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(worker_threads(&server).await, 1, "--worker-threads 1 took effect");
    server.sigterm().await.unwrap();

    // Without the flag: one worker per core.
    std::fs::create_dir(dir.path().join("default")).unwrap();
    let launcher = Launcher::new(&dir.path().join("default"), TOKEN, &["SWITCHBOARD_WORKER_THREADS"]);
    let configure = |_| std::fs::write(&launcher.config, "").map(|()| "defaults".to_owned()).map_err(Into::into);
    let (mut server, _, _) = Server::start(&launcher, "default workers", configure).await.unwrap();
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(worker_threads(&server).await, cores, "one worker per core by default");

    // Sandboxed and bounded: were the flag not checked, this would start a server (not on :8080
    // in the current directory), which is killed and fails the test.
    let data_dir = dir.path().join("refused").display().to_string();
    let mut refused = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["--worker-threads", "0", "--data-dir", &data_dir, "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(status) = refused.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            refused.kill().unwrap();
            panic!("--worker-threads 0 started a server");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut refused.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("--worker-threads"), "{stderr}");
    server.sigterm().await.unwrap();
}

/// The `switchboard_runtime_worker_threads` gauge of a server process.
async fn worker_threads(server: &Server) -> usize {
    let mut client = switchboard::client::Client::connect(server.addr, None).await.unwrap();
    let metrics = client.get("/metrics").await.unwrap().text();
    let line = metrics.lines().find(|l| l.starts_with("switchboard_runtime_worker_threads ")).expect("the gauge");
    line.rsplit(' ').next().unwrap().parse().unwrap()
}
