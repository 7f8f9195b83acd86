//! The shared database (`[store] shared_database`): ACME rows an older kinfra kept in the
//! node's own database move there at boot (a newer row already shared is kept), and HTTP-01
//! answers published there are read back until withdrawn or expired.

use crate::support::*;
use kinfra_store::StoredCertificate;
use std::time::Duration;

const DIRECTORY: &str = "https://acme.test/dir";

fn cert(domain: &str, key: &str) -> StoredCertificate {
    StoredCertificate {
        domains: vec![domain.to_owned()],
        cert_pem: format!("-----BEGIN CERTIFICATE-----\n{domain}\n-----END CERTIFICATE-----\n"),
        key_pem: format!("-----BEGIN PRIVATE KEY-----\n{key}\n-----END PRIVATE KEY-----\n"),
        not_after_ms: Some(1_900_000_000_000),
    }
}

async fn certificate_key(store: &kinfra_store::Store, domain: &str) -> Option<String> {
    store
        .certificate(&[domain.to_owned()])
        .await
        .unwrap_or_else(|e| panic!("certificate {domain}: {e}"))
        .map(|c| c.key_pem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_rows_of_an_older_kinfra_move_to_the_shared_database() {
    let dir = tempdir();
    let store = open(&disk_config(), dir.path()).await;
    assert_eq!(store.shared_database(), "shared");
    assert_eq!(store.shared_schema_version().await.ok(), Some(1));
    // Already shared (another node's, newer than this node's own copy below).
    store
        .save_certificate(&cert("both.example", "SHARED-NEWER"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // What an older kinfra wrote into the node's own database.
    kinfra_query(
        &store,
        "CREATE acme_account:x SET directory = 'https://acme.test/dir', \
         credentials = '{\"id\":\"old-account\"}', updated_ms = 1;\n\
         UPSERT type::record('acme_certificate', 'old.example') SET domains = ['old.example'], \
         cert_pem = 'OLD CERT', key_pem = 'NODE-OLD', not_after_ms = 1900000000000, \
         updated_ms = 5;\n\
         UPSERT type::record('acme_certificate', 'both.example') SET domains = ['both.example'], \
         cert_pem = 'OLDER CERT', key_pem = 'NODE-OLDER', not_after_ms = 1900000000000, \
         updated_ms = 1;",
    )
    .await;
    assert_eq!(
        certificate_key(&store, "old.example").await,
        None,
        "the node's rows are not read in place"
    );
    store.shutdown(Duration::from_secs(10)).await;

    let store = open(&disk_config(), dir.path()).await;
    assert_eq!(
        store
            .acme_account(DIRECTORY)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .map(|s| s.expose().to_owned()),
        Some("{\"id\":\"old-account\"}".to_owned()),
        "the account moved"
    );
    assert_eq!(
        certificate_key(&store, "old.example").await.as_deref(),
        Some("NODE-OLD"),
        "the certificate moved"
    );
    let both = certificate_key(&store, "both.example").await;
    assert!(
        both.as_deref().is_some_and(|k| k.contains("SHARED-NEWER")),
        "an older row overwrote a newer shared one: {both:?}"
    );
    assert_eq!(
        store
            .certificates()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .len(),
        2
    );
    for table in ["acme_account", "acme_certificate"] {
        assert_eq!(
            kinfra_query(&store, &format!("SELECT VALUE id FROM {table}")).await,
            serde_json::json!([]),
            "{table} left in the node's database"
        );
    }
    store.shutdown(Duration::from_secs(10)).await;

    // A shared database named like the node's keeps everything where it is.
    let config = kinfra_core::config::StoreConfig {
        shared_database: "runtime".into(),
        ..disk_config()
    };
    let store = open(&config, dir.path()).await;
    assert_eq!(certificate_key(&store, "old.example").await, None);
    store
        .save_certificate(&cert("own.example", "OWN"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        kinfra_query(&store, "SELECT VALUE domains FROM acme_certificate").await,
        serde_json::json!([["own.example"]])
    );
    store.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenge_answers_are_read_back_until_withdrawn_or_expired() {
    let dir = tempdir();
    let store = open(&mem_config(), dir.path()).await;
    let long = Duration::from_secs(60);
    store
        .save_acme_challenge("tok-1", "tok-1.thumb", long)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        store
            .acme_challenge("tok-1")
            .await
            .ok()
            .flatten()
            .as_deref(),
        Some("tok-1.thumb")
    );
    assert_eq!(store.acme_challenge("tok-2").await.ok().flatten(), None);
    store
        .delete_acme_challenge("tok-1")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(store.acme_challenge("tok-1").await.ok().flatten(), None);

    // An answer past its time is not given, and the next publication deletes it.
    store
        .save_acme_challenge("tok-3", "tok-3.thumb", Duration::from_millis(1))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut expired = false;
    for _ in 0..500 {
        if store.acme_challenge("tok-3").await.ok().flatten().is_none() {
            expired = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(expired, "an expired answer is still given");
    store
        .save_acme_challenge("tok-4", "tok-4.thumb", long)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(store.acme_challenge_count().await.ok(), Some(1));
    store.shutdown(WAIT).await;
}
