//! Schema: a version-1 database written by hand is upgraded in place; a newer one is refused.

use crate::support::*;
use kinfra_store::{Store, StoreError};
use std::time::Duration;

/// Version 1 as an older kinfra wrote it (kept here verbatim, not taken from the crate, so
/// the test keeps meaning something when the crate's schema changes).
const V1_SCHEMA: &str = r#"
DEFINE TABLE meta SCHEMALESS;
DEFINE TABLE service SCHEMAFULL;
DEFINE FIELD name ON service TYPE string;
DEFINE FIELD state ON service TYPE option<string>;
DEFINE FIELD message ON service TYPE option<string>;
DEFINE FIELD health ON service TYPE option<string>;
DEFINE FIELD pid ON service TYPE option<int>;
DEFINE FIELD restarts ON service TYPE int DEFAULT 0;
DEFINE FIELD updated_ms ON service TYPE option<int>;
DEFINE TABLE run SCHEMAFULL;
DEFINE FIELD n ON run TYPE int;
DEFINE FIELD boot ON run TYPE string;
DEFINE FIELD service ON run TYPE string;
DEFINE FIELD pid ON run TYPE int;
DEFINE FIELD started_ms ON run TYPE int;
DEFINE FIELD started_at ON run TYPE string;
DEFINE FIELD ended_ms ON run TYPE option<int>;
DEFINE FIELD ended_at ON run TYPE option<string>;
DEFINE FIELD exit_code ON run TYPE option<int>;
DEFINE FIELD exit_signal ON run TYPE option<int>;
DEFINE INDEX run_service ON run FIELDS service;
DEFINE TABLE event SCHEMAFULL;
DEFINE FIELD n ON event TYPE int;
DEFINE FIELD boot ON event TYPE string;
DEFINE FIELD seq ON event TYPE int;
DEFINE FIELD ts ON event TYPE string;
DEFINE FIELD ts_ms ON event TYPE int;
DEFINE FIELD kind ON event TYPE string;
DEFINE FIELD resource ON event TYPE string;
DEFINE FIELD data ON event TYPE string;
DEFINE TABLE port SCHEMAFULL;
DEFINE FIELD service ON port TYPE string;
DEFINE FIELD port ON port TYPE int;
DEFINE TABLE setting SCHEMAFULL;
DEFINE FIELD key ON setting TYPE string;
DEFINE FIELD value ON setting TYPE string;
UPSERT meta:schema SET version = 1;
"#;

const V1_DATA: &str = r#"
CREATE service:api SET name = 'api', state = 'running', restarts = 4, updated_ms = 1;
CREATE run:1 SET n = 1, boot = 'old', service = 'api', pid = 100, started_ms = 1,
    started_at = '2026-01-01T00:00:00.000Z', ended_ms = 2, ended_at = '2026-01-01T00:00:01.000Z',
    exit_code = 1;
CREATE run:2 SET n = 2, boot = 'old', service = 'api', pid = 4194301, started_ms = 3,
    started_at = '2026-01-01T00:00:02.000Z';
CREATE event:1 SET n = 1, boot = 'old', seq = 1, ts = '2026-01-01T00:00:00.000Z',
    ts_ms = 4102444800000, kind = 'port_assigned', resource = 'api',
    data = '{"seq":1,"timestamp":"2026-01-01T00:00:00.000Z","type":"port_assigned","service":"api","port":41000}';
CREATE port:api SET service = 'api', port = 41000;
CREATE setting:maintenance SET key = 'maintenance', value = 'true';
"#;

async fn write_v1(dir: &std::path::Path) {
    let url = format!("surrealkv://{}", dir.join("db").display());
    std::fs::create_dir_all(dir.join("db")).unwrap_or_else(|e| panic!("mkdir: {e}"));
    let db = kinfra_store::surrealdb::engine::any::connect(url.as_str())
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    db.use_ns("kinfra")
        .use_db("runtime")
        .await
        .unwrap_or_else(|e| panic!("use: {e}"));
    for sql in [V1_SCHEMA, V1_DATA] {
        db.query(sql)
            .await
            .and_then(|r| r.check())
            .unwrap_or_else(|e| panic!("v1 setup: {e}"));
    }
    // Dropping the last handle closes the engine in a background task. Store::open waits
    // only 5 s for the engine's lock (enough for a runtime restarting in one process); on a
    // loaded machine this hand-made handle's close can take longer, so wait for the lock here.
    drop(db);
    let lock = dir.join("db").join("LOCK");
    assert!(
        wait_for(Duration::from_secs(60), || kinfra_core::lockfile::is_free(
            &lock
        ))
        .await,
        "the v1 datastore still holds {} after 60 s",
        lock.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_a_version_1_database_in_place() {
    let dir = tempdir();
    write_v1(dir.path()).await;
    let store = open(&disk_config(), dir.path()).await;
    assert_eq!(store.schema_version().await.ok(), Some(3));

    // Data kept, new fields filled.
    let history = store
        .service_history()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(history.get("api").map(|h| h.restarts), Some(4));
    assert!(
        store
            .user_stopped()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .is_empty()
    );
    assert_eq!(
        store
            .ports()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .get("api"),
        Some(&41000)
    );
    assert!(store.maintenance().await.unwrap_or_else(|e| panic!("{e}")));
    let runs = store
        .history(Some("api"), 10)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[0].n, 2);
    assert!(runs[0].is_live());
    assert_eq!(runs[1].reason.as_deref(), Some("unknown"));
    assert_eq!(runs[1].exit.and_then(|e| e.code), Some(1));
    let events = store
        .recent_events(10)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event.kind.name(), "port_assigned");

    // Version-2 tables work, and numbering continues after the old rows.
    let acme = kinfra_core::Secret::new("{\"id\":\"acct\"}");
    store
        .save_acme_account("https://acme.test/dir", &acme)
        .await
        .unwrap_or_else(|e| panic!("acme: {e}"));
    let (store2, events2) = (store.clone(), kinfra_core::EventSender::new(64));
    store2.record_events(events2.subscribe());
    events2.emit(kinfra_core::EventKind::ProcessStarted {
        service: "api".into(),
        pid: std::process::id(),
    });
    settle(&store2, &events2).await;
    let runs = store
        .history(Some("api"), 1)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(runs.first().map(|r| r.n), Some(3));
    let events = store
        .recent_events(10)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(events.last().map(|e| e.n), Some(2));
    store.shutdown(Duration::from_secs(5)).await;

    // Reopening does not re-run the upgrade.
    let store = open(&disk_config(), dir.path()).await;
    assert_eq!(store.schema_version().await.ok(), Some(3));
    assert_eq!(
        store
            .acme_account("https://acme.test/dir")
            .await
            .ok()
            .flatten()
            .map(|s| s.expose().to_owned()),
        Some("{\"id\":\"acct\"}".to_owned())
    );
    store.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_newer_schema_naming_the_path() {
    let dir = tempdir();
    let store = open(&disk_config(), dir.path()).await;
    let db = store.kinfra_db().unwrap_or_else(|e| panic!("{e}"));
    db.query("UPSERT meta:schema SET version = 99")
        .await
        .and_then(|r| r.check())
        .unwrap_or_else(|e| panic!("{e}"));
    drop(db);
    store.shutdown(Duration::from_secs(5)).await;
    match Store::open(&disk_config(), dir.path()).await {
        Err(e @ StoreError::SchemaTooNew { found: 99, .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&dir.path().join("db").display().to_string()),
                "{msg}"
            );
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}
