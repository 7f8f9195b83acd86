//! The order lock in the store: one owner at a time, extended by its owner, taken over when
//! stale; two instances sharing a store place one order between them.

use crate::support::*;
use kinfra_core::config::{ChallengeKind, StoreConfig};
use kinfra_core::event::{EventKind, EventSender};
use kinfra_store::Store;
use std::time::Duration;

#[tokio::test]
async fn the_lock_has_one_owner_and_is_taken_over_when_stale() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        url: Some("mem://".into()),
        ..StoreConfig::default()
    };
    let store = Store::open(&config, dir.path()).await.unwrap();
    let ttl = Duration::from_millis(300);
    assert!(store.try_acme_lock("cert:a.test", "a", ttl).await.unwrap());
    assert!(!store.try_acme_lock("cert:a.test", "b", ttl).await.unwrap());
    assert!(store.try_acme_lock("cert:a.test", "a", ttl).await.unwrap());
    assert!(store.try_acme_lock("cert:b.test", "b", ttl).await.unwrap());
    assert_eq!(
        store.acme_lock("cert:a.test").await.unwrap().map(|l| l.0),
        Some("a".to_owned())
    );
    // Released only by its owner.
    store.release_acme_lock("cert:a.test", "b").await.unwrap();
    assert!(!store.try_acme_lock("cert:a.test", "b", ttl).await.unwrap());
    // Stale: taken over.
    wait_for("the lock to expire", WAIT, || {
        let store = store.clone();
        async move {
            store
                .try_acme_lock("cert:a.test", "b", ttl)
                .await
                .unwrap()
                .then_some(())
        }
    })
    .await;
    assert_eq!(
        store.acme_lock("cert:a.test").await.unwrap().map(|l| l.0),
        Some("b".to_owned())
    );
    store.release_acme_lock("cert:a.test", "b").await.unwrap();
    assert_eq!(store.acme_lock("cert:a.test").await.unwrap(), None);
    store.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_a_store_order_once() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let proxy = proxy(&state).await;
    let (http, https) = (proxy.http_addr().unwrap(), proxy.https_addr().unwrap());
    let pebble = Pebble::start(dir.path(), http.port(), https.port(), None).await;
    let root = pebble.root().await;
    let store = store(&state).await;
    let events = EventSender::new(256);
    let mut rx = events.subscribe();
    let domain = "shared.kinfra.test";
    let config = acme_config(&pebble, &[domain], ChallengeKind::Http01);
    let (a, b) = tokio::join!(
        acme(
            config.clone(),
            acme_options(&state, "instance-a"),
            &store,
            &proxy,
            &events
        ),
        acme(
            config,
            acme_options(&state, "instance-b"),
            &store,
            &proxy,
            &events
        ),
    );
    let mut seen = Vec::new();
    wait_for("the certificate", WAIT, || {
        drain(&mut rx, &mut seen);
        let issued = seen
            .iter()
            .any(|e| matches!(e.kind, EventKind::CertIssued { .. }));
        async move { issued.then_some(()) }
    })
    .await;
    // The waiting instance looks again after its lock wait and finds the stored certificate.
    wait_for("both instances to see a valid certificate", WAIT, || {
        let both = a.status()[0].state == kinfra_acme::CertState::Valid
            && b.status()[0].state == kinfra_acme::CertState::Valid;
        async move { both.then_some(()) }
    })
    .await;
    assert_eq!(
        a.orders() + b.orders(),
        1,
        "one order between two instances"
    );
    handshake(https, domain, &root).await.expect("served");
    a.shutdown().await;
    b.shutdown().await;
    proxy.shutdown(Duration::from_secs(1)).await;
    store.shutdown(Duration::from_secs(5)).await;
}
