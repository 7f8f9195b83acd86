//! Two instances sharing a store, each with its own proxy: the second serves the certificate
//! the first ordered, and when the first renews, the second serves the renewal within a few
//! of its watch intervals, without a restart and without ordering itself.

use crate::support::*;
use kinfra_core::config::{ChallengeKind, Dur};
use kinfra_core::event::{EventKind, EventSender};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_by_one_instance_is_served_by_the_other_without_a_restart() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (state_a, state_b) = (dir.path().join("a"), dir.path().join("b"));
    let proxy_a = proxy(&state_a).await;
    let proxy_b = proxy(&state_b).await;
    let (http, https_a) = (proxy_a.http_addr().unwrap(), proxy_a.https_addr().unwrap());
    let https_b = proxy_b.https_addr().unwrap();
    // Certificates valid for 40 s. Pebble validates on a's proxy, so a orders: its renewal is
    // due a third of the lifetime before expiry (~27 s after issuance); b's only 1 s before
    // (~39 s after), so b can only serve a's renewal by reading the store.
    let pebble = Pebble::start(dir.path(), http.port(), https_a.port(), Some(40)).await;
    let root = pebble.root().await;
    let store = store(&state_a).await;
    let events = EventSender::new(256);
    let mut rx = events.subscribe();
    let domain = "fleet.kinfra.test";
    let config = acme_config(&pebble, &[domain], ChallengeKind::Http01);
    let a = acme(
        config.clone(),
        acme_options(&state_a, "instance-a"),
        &store,
        &proxy_a,
        &events,
    )
    .await;
    let mut seen = Vec::new();
    wait_for("the first certificate", WAIT, || {
        drain(&mut rx, &mut seen);
        let issued = seen
            .iter()
            .any(|e| matches!(e.kind, EventKind::CertIssued { .. }));
        async move { issued.then_some(()) }
    })
    .await;
    let first = handshake(https_a, domain, &root).await.expect("a serves");

    let mut config_b = config;
    config_b.renew_before = Some(Dur::from_secs(1));
    let b = acme(
        config_b,
        kinfra_acme::AcmeOptions {
            watch_interval: Duration::from_millis(500),
            ..acme_options(&state_b, "instance-b")
        },
        &store,
        &proxy_b,
        &events,
    )
    .await;
    assert_eq!(
        handshake(https_b, domain, &root).await.expect("b serves"),
        first,
        "b serves the stored certificate at start"
    );

    wait_for("a's renewal", Duration::from_secs(60), || {
        drain(&mut rx, &mut seen);
        let renewed = seen
            .iter()
            .any(|e| matches!(e.kind, EventKind::CertIssued { renewal: true, .. }));
        async move { renewed.then_some(()) }
    })
    .await;
    let renewed = handshake(https_a, domain, &root).await.expect("a serves");
    assert_ne!(renewed, first, "a serves its renewal");
    // b reads the store every 500 ms: a generous bound, yet well before b's own renewal time
    // (which would also make it look at the store).
    let (root, first) = (&root, &first);
    wait_for(
        "b to serve a's renewal",
        Duration::from_secs(8),
        || async move {
            let on_a = handshake(https_a, domain, root).await.ok()?;
            let on_b = handshake(https_b, domain, root).await.ok()?;
            (on_b == on_a && on_b != *first).then_some(())
        },
    )
    .await;
    assert_eq!(b.orders(), 0, "b never ordered");
    assert_eq!(b.status()[0].state, kinfra_acme::CertState::Valid);
    a.shutdown().await;
    b.shutdown().await;
    proxy_a.shutdown(Duration::from_secs(1)).await;
    proxy_b.shutdown(Duration::from_secs(1)).await;
    store.shutdown(Duration::from_secs(5)).await;
}
