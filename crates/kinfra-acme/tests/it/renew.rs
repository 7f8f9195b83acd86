//! Renewal of a short-lived certificate while clients keep handshaking: every handshake
//! succeeds and verifies, and the served certificate changes.

use crate::support::*;
use kinfra_core::config::ChallengeKind;
use kinfra_core::event::{EventKind, EventSender};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lived_certificate_is_renewed_under_load_without_failed_handshakes() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let proxy = proxy(&state).await;
    let (http, https) = (proxy.http_addr().unwrap(), proxy.https_addr().unwrap());
    // Certificates valid for 15 s: renewal is due 10 s after issuance.
    let pebble = Pebble::start(dir.path(), http.port(), https.port(), Some(15)).await;
    let root = pebble.root().await;
    let store = store(&state).await;
    let events = EventSender::new(256);
    let mut rx = events.subscribe();
    let domain = "renew.kinfra.test";
    let config = acme_config(&pebble, &[domain], ChallengeKind::Http01);
    let handle = acme(config, acme_options(&state, "one"), &store, &proxy, &events).await;
    let mut seen = Vec::new();
    wait_for("the first certificate", WAIT, || {
        drain(&mut rx, &mut seen);
        let issued = seen
            .iter()
            .any(|e| matches!(e.kind, EventKind::CertIssued { .. }));
        async move { issued.then_some(()) }
    })
    .await;

    // Load: handshakes back to back from two clients, each verified against Pebble's root.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let leaves = Arc::new(parking_lot::Mutex::new(HashSet::new()));
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (stop, ok, failed, leaves, root) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            leaves.clone(),
            root.clone(),
        );
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match handshake(https, domain, &root).await {
                    Ok(leaf) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        leaves.lock().insert(leaf);
                    }
                    Err(error) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("handshake failed: {error}");
                    }
                }
            }
        }));
    }
    wait_for("the renewal", Duration::from_secs(40), || {
        drain(&mut rx, &mut seen);
        let renewed = seen
            .iter()
            .any(|e| matches!(e.kind, EventKind::CertIssued { renewal: true, .. }));
        async move { renewed.then_some(()) }
    })
    .await;
    // Some more load on the new certificate.
    let after = ok.load(Ordering::Relaxed);
    wait_for("handshakes after the renewal", WAIT, || {
        let n = ok.load(Ordering::Relaxed);
        async move { (n >= after + 50).then_some(()) }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("RENEWAL handshakes ok={ok} failed={failed}");
    assert_eq!(failed, 0, "no handshake fails during the swap");
    assert!(ok > 100);
    assert!(
        leaves.lock().len() >= 2,
        "the renewed certificate is served"
    );
    let failures = seen
        .iter()
        .filter(|e| matches!(e.kind, EventKind::CertRenewalFailed { .. }))
        .count();
    assert_eq!(failures, 0);
    handle.shutdown().await;
    proxy.shutdown(Duration::from_secs(1)).await;
    store.shutdown(Duration::from_secs(5)).await;
}
