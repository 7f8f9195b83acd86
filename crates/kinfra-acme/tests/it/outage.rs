//! Pebble stopped in the middle of an order: the failure is retried on the backoff schedule
//! (no tight loop), and once a CA answers again the certificate is issued (with a new
//! account, since the restarted Pebble forgot the old one).

use crate::support::*;
use kinfra_acme::CertState;
use kinfra_core::config::ChallengeKind;
use kinfra_core::event::{EventKind, EventSender};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pebble_stopped_mid_order_is_retried_on_backoff_then_issued() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let proxy = proxy(&state).await;
    let (http, https) = (proxy.http_addr().unwrap(), proxy.https_addr().unwrap());
    let mut pebble = Pebble::start(dir.path(), http.port(), https.port(), None).await;
    let store = store(&state).await;
    let events = EventSender::new(256);
    let mut rx = events.subscribe();
    let domain = "outage.kinfra.test";
    let config = acme_config(&pebble, &[domain], ChallengeKind::Http01);
    let directory = config.directory.clone();
    let handle = acme(config, acme_options(&state, "one"), &store, &proxy, &events).await;

    // Stop Pebble as soon as the order is under way.
    wait_for("the order to start", WAIT, || {
        let ordering = handle.status()[0].state == CertState::Ordering && handle.orders() > 0;
        async move { ordering.then_some(()) }
    })
    .await;
    pebble.stop_pebble();
    let stopped = Instant::now();
    let account_before = store.acme_account(&directory).await.unwrap();

    // Three failures in a row, each after a longer delay.
    let mut seen = Vec::new();
    let mut failures: Vec<(Instant, u32, u64)> = Vec::new();
    wait_for("three failures", WAIT, || {
        let mut fresh = Vec::new();
        drain(&mut rx, &mut fresh);
        for e in &fresh {
            if let EventKind::CertRenewalFailed {
                attempt,
                retry_in_ms,
                ..
            } = &e.kind
            {
                failures.push((Instant::now(), *attempt, *retry_in_ms));
            }
        }
        seen.extend(fresh);
        let n = failures.len();
        async move { (n >= 3).then_some(()) }
    })
    .await;
    let elapsed = stopped.elapsed();
    let orders_while_down = handle.orders();
    eprintln!(
        "OUTAGE failures={:?} orders={orders_while_down} in {elapsed:?}",
        failures.iter().map(|f| (f.1, f.2)).collect::<Vec<_>>()
    );
    assert_eq!(
        failures.iter().map(|f| f.1).collect::<Vec<_>>()[..3],
        [1, 2, 3]
    );
    // Backoff: 1 s, 2 s, 4 s (capped), with up to 10 % jitter.
    assert!((1000..1200).contains(&failures[0].2), "{failures:?}");
    assert!((2000..2400).contains(&failures[1].2), "{failures:?}");
    assert!((4000..=4000).contains(&failures[2].2), "{failures:?}");
    assert!(
        failures[2].0 - failures[0].0 >= Duration::from_millis(2900),
        "retries wait for the backoff"
    );
    // Each failure is one order plus at most one quick retry: no tight loop.
    assert!(
        orders_while_down <= 1 + 2 * 3,
        "orders: {orders_while_down}"
    );
    let status = handle.status();
    assert_eq!(status[0].failures, 3);
    assert!(status[0].last_error.is_some());

    // A CA again (a fresh Pebble: new roots, no accounts).
    pebble.start_pebble().await;
    let root = pebble.root().await;
    wait_for("the certificate", Duration::from_secs(20), || {
        drain(&mut rx, &mut seen);
        let issued = seen
            .iter()
            .any(|e| matches!(e.kind, EventKind::CertIssued { .. }));
        async move { issued.then_some(()) }
    })
    .await;
    handshake(https, domain, &root)
        .await
        .expect("served and verified against the new root");
    let account_after = store.acme_account(&directory).await.unwrap();
    assert_ne!(
        account_before.map(|s| s.expose().to_owned()),
        account_after.map(|s| s.expose().to_owned()),
        "a new account replaced the one the restarted CA forgot"
    );
    assert_eq!(handle.status()[0].state, CertState::Valid);
    assert_eq!(handle.status()[0].failures, 0);
    handle.shutdown().await;
    proxy.shutdown(Duration::from_secs(1)).await;
    store.shutdown(Duration::from_secs(5)).await;
}
