//! Upgrades: today's build starts on a data dir an older build left, and shows what that build
//! showed.
//!
//! `tests/fixtures/journal-v2/data` is a real sled journal of durable format 2, written by the
//! real binary at commit 4bacf62 (the last build that wrote format 2) through its HTTP API, by
//! `tests/fixtures/journal-v2/make.sh`; `expected.json` is what that binary's API answered
//! before its graceful stop. The journal holds a snapshot with callback entries in it and
//! events after the snapshot (see the script).
//!
//! What this proves:
//! - every record in the fixture is format 2, and the journal has a snapshot and events after
//!   it, so both paths of the replay read the old format;
//! - today's build boots on a copy and answers the same callbacks, stats, tenants, line and
//!   ended call, and replays an `Idempotency-Key` stored by the old build;
//! - it then writes format 3 on top, which a restart replays together with the format-2 snapshot
//!   and events to the same state;
//! - entries written by format 2 remember no attempts: a retry of an attempt counted before the
//!   upgrade counts again (the README's upgrade note), and attempts counted after it do not.

mod common;

use std::path::Path;

use common::*;
use serde_json::{Value, json};
use switchboard::client::Client;
use switchboard::journal::SledStore;
use switchboard_actors::codec::FORMAT_VERSION;
use switchboard_actors::store::Store;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/journal-v2");
const LINE: &str = "+14155550100";
const ALICE: &str = "+14155550111";

/// Copies a directory tree (git keeps no empty directories; sled recreates its own).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read fixture dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy fixture file");
        }
    }
}

/// The format of every stored record: the snapshot's (with its seq), and each event's after it.
fn stored_formats(data_dir: &Path) -> (Option<(u64, u8)>, Vec<u8>) {
    let store = SledStore::open(data_dir).expect("open the fixture's journal");
    let snapshot = store.latest_snapshot().expect("read the snapshot").map(|(seq, bytes)| (seq, bytes[0]));
    let mut event_formats = Vec::new();
    store
        .scan_after(snapshot.map_or(0, |(seq, _)| seq), &mut |_, bytes| {
            event_formats.push(bytes[0]);
            Ok(())
        })
        .expect("scan the events");
    store.close();
    (snapshot, event_formats)
}

/// What the fixture's builder saved: the same requests against today's build.
async fn answers(client: &mut Client) -> Value {
    json!({
        "callbacks": get_json(client, "/v1/callbacks?limit=200").await,
        "callback_stats": get_json(client, "/v1/callbacks/stats").await,
        "tenants": [get_json(client, "/v1/tenants/acme").await, get_json(client, "/v1/tenants/globex").await],
        "line": get_json(client, &format!("/v1/lines/{LINE}")).await,
        "filler_call": get_json(client, "/v1/calls/call_000000000001").await,
    })
}

/// Alice turned away by a webhook naming the provider's call: the answer's entry.
async fn alice_turned_away(client: &mut Client, provider_call_id: &str) -> Value {
    let body = json!({"tenant_id": "acme", "line_id": LINE, "direction": "inbound", "from": ALICE, "provider_call_id": provider_call_id});
    let response = admit(client, body).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["action"], "reject_busy", "{}", response.text());
    response.json()["callback"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_2_journal_reads_as_the_old_build_showed_it_and_takes_format_3_on_top() {
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(Path::new(FIXTURE).join("expected.json")).expect("expected.json"))
        .expect("expected.json is JSON");
    let dir = temp_dir();
    copy_tree(&Path::new(FIXTURE).join("data"), dir.path());

    let (snapshot, event_formats) = stored_formats(dir.path());
    assert!(snapshot.is_some_and(|(seq, _)| seq >= 100), "the fixture holds a snapshot: {snapshot:?}");
    assert_eq!(snapshot.map(|(_, format)| format), Some(2), "the snapshot is format 2");
    assert!(event_formats.len() >= 5, "the fixture holds events after its snapshot: {event_formats:?}");
    assert!(event_formats.iter().all(|&f| f == 2), "every event is format 2: {event_formats:?}");

    let server = start_in(dir.path(), |_| {}).await;
    let mut client = server.client().await;
    let mut upgraded = answers(&mut client).await;
    let mut old = expected.clone();
    let replay = old.as_object_mut().expect("an object").remove("replayed_order_3").expect("the replayed admission");
    assert_eq!(upgraded, old, "today's build shows the old build's state");
    // The old build's stored key still replays its admission.
    let body = json!({"tenant_id": "globex", "direction": "outbound", "to": "+14155550003"});
    let replayed = client.send("POST", "/v1/calls", Some(&body), &[("idempotency-key", "order-3")]).await.expect("request");
    assert_eq!((replayed.status, replayed.header("idempotent-replayed")), (201, Some("true")), "{}", replayed.text());
    assert_eq!(replayed.json(), replay);
    assert_live_equals_durable(&server.system).await;

    // Format 3 on top. Alice's entry from format 2 remembers no attempts: a retry of one she
    // missed before the upgrade counts again. One counted after it does not.
    let filler = json!({"tenant_id": "acme", "line_id": LINE, "direction": "inbound", "from": "+14155550199"});
    let filler = admit(&mut client, filler).await;
    assert_eq!(filler.status, 201, "{}", filler.text());
    let alice_id = expected["callbacks"]["data"][2]["id"].clone();
    assert_eq!(expected["callbacks"]["data"][2]["caller"], ALICE);
    let counted = alice_turned_away(&mut client, "CA-alice-1").await;
    assert_eq!((counted["id"].clone(), counted["missed_count"].as_u64()), (alice_id.clone(), Some(4)), "{counted}");
    let new_attempt = alice_turned_away(&mut client, "CA-alice-9").await;
    assert_eq!(new_attempt["missed_count"], 5, "{new_attempt}");
    assert_eq!(alice_turned_away(&mut client, "CA-alice-9").await, new_attempt, "a retry after the upgrade counts once");
    upgraded = answers(&mut client).await;
    server.stop().await;

    let (_, event_formats) = stored_formats(dir.path());
    // The filler's admission and Alice's two counted attempts; the replay and the retry journal nothing.
    assert_eq!(event_formats.iter().filter(|&&f| f == FORMAT_VERSION).count(), 3, "{event_formats:?}");
    assert!(event_formats.iter().all(|&f| f == 2 || f == FORMAT_VERSION), "{event_formats:?}");

    // Replayed from the format-2 snapshot, format-2 events and format-3 events.
    let server = start_in(dir.path(), |_| {}).await;
    let mut client = server.client().await;
    assert_eq!(answers(&mut client).await, upgraded, "a restart rebuilds the same state");
    assert_eq!(alice_turned_away(&mut client, "CA-alice-9").await, new_attempt, "the attempt is remembered across the restart");
    assert_live_equals_durable(&server.system).await;
    server.stop().await;
}
