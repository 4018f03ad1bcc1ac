mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_boots_and_creates_a_tenant() {
    let dir = temp_dir();
    let server = start_in(dir.path(), |_| {}).await;
    let mut client = server.client().await;
    create_tenant(&mut client, "acme", "PRO", None).await;
    assert_live_equals_durable(&server.system).await;
    server.stop().await;
}
