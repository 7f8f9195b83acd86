//! The user's database: its own namespace/database in the same engine, apart from kinfra's.

use crate::support::*;
use kinfra_core::state::ServiceState;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_records_live_apart_from_kinfra_tables_and_survive_restarts() {
    let dir = tempdir();
    let (store, events) = recording(&disk_config(), dir.path()).await;
    events.emit(state("api", ServiceState::Starting, ServiceState::Running));
    settle(&store, &events).await;

    let db = store.user_db().unwrap_or_else(|e| panic!("{e}"));
    db.query(
        "CREATE note:1 SET text = 'hello', n = 1; CREATE note:2 SET text = 'world', n = 2;
         CREATE event:1 SET mine = true;",
    )
    .await
    .and_then(|r| r.check())
    .unwrap_or_else(|e| panic!("user writes: {e}"));
    let mut resp = db
        .query("SELECT VALUE text FROM note WHERE n >= 1 ORDER BY n")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let texts: Vec<String> = resp.take(0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(texts, vec!["hello", "world"]);

    // The user's `event` table is theirs; kinfra's is untouched and unseen.
    let mut resp = db
        .query("SELECT * FROM event")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let theirs: kinfra_store::surrealdb::types::Value =
        resp.take(0).unwrap_or_else(|e| panic!("{e}"));
    let theirs = theirs.into_json_value();
    assert_eq!(theirs.as_array().map(Vec::len), Some(1), "{theirs}");
    assert_eq!(theirs[0]["mine"], true);
    let ours = kinfra_query(&store, "SELECT VALUE kind FROM event").await;
    assert_eq!(ours, serde_json::json!(["state_changed"]));
    let ours_notes = kinfra_query(&store, "INFO FOR DB").await;
    assert!(ours_notes["tables"].get("note").is_none(), "{ours_notes}");
    let mut resp = db
        .query("INFO FOR DB")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let info: kinfra_store::surrealdb::types::Value =
        resp.take(0).unwrap_or_else(|e| panic!("{e}"));
    let info = info.into_json_value();
    for table in ["run", "service", "port", "acme_certificate", "meta"] {
        assert!(
            info["tables"].get(table).is_none(),
            "{table} visible to the user: {info}"
        );
    }
    drop(db);
    store.shutdown(Duration::from_secs(10)).await;

    let store = open(&disk_config(), dir.path()).await;
    let db = store.user_db().unwrap_or_else(|e| panic!("{e}"));
    let mut resp = db
        .query("SELECT VALUE text FROM note ORDER BY n")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let texts: Vec<String> = resp.take(0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(texts, vec!["hello", "world"]);
    drop(db);
    store.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_and_acme_material_round_trip_without_leaking_keys() {
    let dir = tempdir();
    let store = open(&mem_config(), dir.path()).await;
    assert!(!store.maintenance().await.unwrap_or(true));
    store
        .set_maintenance(true)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(store.maintenance().await.unwrap_or_else(|e| panic!("{e}")));
    let cert = kinfra_store::StoredCertificate {
        domains: vec!["b.example".into(), "A.example".into()],
        cert_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        key_pem: "-----BEGIN PRIVATE KEY-----\nSECRETKEYBYTES\n-----END PRIVATE KEY-----\n".into(),
        not_after_ms: Some(1_900_000_000_000),
    };
    store
        .save_certificate(&cert)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let got = store
        .certificate(&["a.example".into(), "b.example".into()])
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("certificate not found"));
    assert_eq!(got.key_pem, cert.key_pem);
    assert_eq!(got.domains, vec!["a.example", "b.example"]);
    assert!(!format!("{got:?}").contains("SECRETKEYBYTES"));
    assert_eq!(
        store
            .certificates()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .len(),
        1
    );
    store
        .delete_certificate(&cert.domains)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        store
            .certificates()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .is_empty()
    );
    store.shutdown(WAIT).await;
}
