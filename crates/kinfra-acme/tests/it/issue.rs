//! Issuance with HTTP-01 and TLS-ALPN-01, a verified handshake, export, restart without a new
//! order, and a domain that fails validation.

use crate::support::*;
use kinfra_acme::CertState;
use kinfra_core::config::ChallengeKind;
use kinfra_core::event::{EventKind, EventSender};
use std::time::{Duration, Instant};

/// Issues a certificate for `domain` with `challenge`; returns the time it took.
async fn issue_and_restart(challenge: ChallengeKind, domain: &str) -> Duration {
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
    let config = acme_config(&pebble, &[domain], challenge);
    let started = Instant::now();
    let handle = acme(
        config.clone(),
        acme_options(&state, "one"),
        &store,
        &proxy,
        &events,
    )
    .await;
    let event = wait_for("CertIssued", WAIT, || {
        let e = rx.try_recv().ok();
        async move { e.filter(|e| matches!(e.kind, EventKind::CertIssued { .. })) }
    })
    .await;
    let took = started.elapsed();
    match &event.kind {
        EventKind::CertIssued {
            domains, renewal, ..
        } => {
            assert_eq!(domains, &vec![domain.to_owned()]);
            assert!(!renewal);
        }
        other => panic!("unexpected {other:?}"),
    }
    // The event and the status never carry key material.
    let json = serde_json::to_string(&event).unwrap();
    assert!(!json.contains("PRIVATE KEY"));
    let status = handle.status();
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].state, CertState::Valid);
    assert!(status[0].not_after.is_some());
    assert!(
        !serde_json::to_string(&handle.status_json())
            .unwrap()
            .contains("PRIVATE")
    );

    // A real handshake, verified against Pebble's root (chain: leaf + Pebble's intermediate).
    let leaf = handshake(https, domain, &root)
        .await
        .expect("verified handshake");
    assert!(!leaf.is_empty());

    // Stored in the store, exported with mode 0600.
    let stored = store
        .certificate(&[domain.to_owned()])
        .await
        .unwrap()
        .unwrap();
    assert!(stored.key_pem.contains("PRIVATE KEY"));
    assert!(!format!("{stored:?}").contains("PRIVATE KEY"));
    {
        use std::os::unix::fs::PermissionsExt;
        let key = state.join("acme").join(domain).join("key.pem");
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&key).unwrap(), stored.key_pem);
    }
    let account = store.acme_account(&config.directory).await.unwrap();
    assert!(account.is_some(), "the account is stored");
    assert!(handle.orders() >= 1);
    handle.shutdown().await;
    proxy.shutdown(Duration::from_secs(1)).await;
    store.shutdown(Duration::from_secs(5)).await;

    // Restart: a new proxy and store on the same state dir. The stored certificate is served
    // at once and no order is placed.
    let proxy = crate::support::proxy(&state).await;
    let store = crate::support::store(&state).await;
    let handle = acme(config, acme_options(&state, "two"), &store, &proxy, &events).await;
    let served = handshake(proxy.https_addr().unwrap(), domain, &root)
        .await
        .expect("the stored certificate is served after a restart");
    assert_eq!(served, leaf);
    assert_eq!(handle.status()[0].state, CertState::Valid);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        handle.orders(),
        0,
        "a restart with a valid certificate orders nothing"
    );
    handle.shutdown().await;
    proxy.shutdown(Duration::from_secs(1)).await;
    store.shutdown(Duration::from_secs(5)).await;
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_01_issues_serves_and_survives_a_restart() {
    let took = issue_and_restart(ChallengeKind::Http01, "http.kinfra.test").await;
    eprintln!("ISSUANCE http-01 {} ms", took.as_millis());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_issues_serves_and_survives_a_restart() {
    let took = issue_and_restart(ChallengeKind::TlsAlpn01, "alpn.kinfra.test").await;
    eprintln!("ISSUANCE tls-alpn-01 {} ms", took.as_millis());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_that_fails_validation_gets_a_clear_event_and_others_are_issued() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let proxy = proxy(&state).await;
    let (http, https) = (proxy.http_addr().unwrap(), proxy.https_addr().unwrap());
    let pebble = Pebble::start(dir.path(), http.port(), https.port(), None).await;
    // Nothing listens on 127.0.0.2, so validating bad.kinfra.test cannot connect.
    pebble.set_a("bad.kinfra.test", "127.0.0.2").await;
    let root = pebble.root().await;
    let store = store(&state).await;
    let events = EventSender::new(256);
    let mut rx = events.subscribe();
    let config = acme_config(
        &pebble,
        &["bad.kinfra.test", "good.kinfra.test"],
        ChallengeKind::Http01,
    );
    let handle = acme(config, acme_options(&state, "one"), &store, &proxy, &events).await;
    let mut seen = Vec::new();
    wait_for("a failure and an issuance", WAIT, || {
        drain(&mut rx, &mut seen);
        let failed = seen
            .iter()
            .any(|e| matches!(e.kind, EventKind::CertRenewalFailed { .. }));
        let issued = seen
            .iter()
            .any(|e| matches!(e.kind, EventKind::CertIssued { .. }));
        async move { (failed && issued).then_some(()) }
    })
    .await;
    let failure = seen
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::CertRenewalFailed {
                domains,
                error,
                attempt,
                retry_in_ms,
            } => Some((domains.clone(), error.clone(), *attempt, *retry_in_ms)),
            _ => None,
        })
        .unwrap();
    assert_eq!(failure.0, vec!["bad.kinfra.test".to_owned()]);
    assert!(
        failure.1.contains("validation of bad.kinfra.test failed"),
        "clear error: {}",
        failure.1
    );
    assert!(
        failure.1.contains("connection"),
        "names the cause: {}",
        failure.1
    );
    assert_eq!(failure.2, 1);
    assert!(failure.3 >= 1000, "retried after the backoff, not at once");
    let issued: Vec<_> = seen
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::CertIssued { domains, .. } => Some(domains.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(issued, vec![vec!["good.kinfra.test".to_owned()]]);
    handshake(https, "good.kinfra.test", &root)
        .await
        .expect("the good domain is served");
    let status = handle.status();
    let bad = status
        .iter()
        .find(|s| s.domain == "bad.kinfra.test")
        .unwrap();
    assert_eq!(bad.state, CertState::Failed);
    assert!(
        bad.last_error
            .as_deref()
            .unwrap_or("")
            .contains("bad.kinfra.test")
    );
    assert!(bad.next_attempt.is_some());
    handle.shutdown().await;
    proxy.shutdown(Duration::from_secs(1)).await;
    store.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_nonce_rejection_is_retried_until_issued() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let proxy = proxy(&state).await;
    let (http, https) = (proxy.http_addr().unwrap(), proxy.https_addr().unwrap());
    // Pebble answers 30 % of the requests with `badNonce` (the default is 5 %).
    let pebble = Pebble::start_with(
        dir.path(),
        http.port(),
        https.port(),
        None,
        &[("PEBBLE_WFE_NONCEREJECT", "30")],
    )
    .await;
    let root = pebble.root().await;
    let store = store(&state).await;
    let events = EventSender::new(256);
    let mut rx = events.subscribe();
    let domains = ["n1.kinfra.test", "n2.kinfra.test", "n3.kinfra.test"];
    let config = acme_config(&pebble, &domains, ChallengeKind::Http01);
    let handle = acme(config, acme_options(&state, "one"), &store, &proxy, &events).await;
    let mut seen = Vec::new();
    wait_for("three certificates", WAIT, || {
        drain(&mut rx, &mut seen);
        let issued = seen
            .iter()
            .filter(|e| matches!(e.kind, EventKind::CertIssued { .. }))
            .count();
        async move { (issued == 3).then_some(()) }
    })
    .await;
    for d in domains {
        handshake(https, d, &root).await.expect("served");
    }
    let failures = seen
        .iter()
        .filter(|e| matches!(e.kind, EventKind::CertRenewalFailed { .. }))
        .count();
    eprintln!("NONCE30 orders={} failures={failures}", handle.orders());
    handle.shutdown().await;
    proxy.shutdown(Duration::from_secs(1)).await;
    store.shutdown(Duration::from_secs(5)).await;
}

/// Issuance time against Pebble (nonce rejection on, no validation delay): one new domain
/// per round, from `AcmeService::start` to `CertIssued`. Run with
/// `cargo test -p kinfra-acme --test it issuance_time -- --ignored --nocapture`; results go
/// to `bench/acme.md` by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test"]
async fn issuance_time() {
    init_tracing();
    let rounds: usize = std::env::var("KINFRA_ACME_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    for challenge in [ChallengeKind::Http01, ChallengeKind::TlsAlpn01] {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let proxy = proxy(&state).await;
        let (http, https) = (proxy.http_addr().unwrap(), proxy.https_addr().unwrap());
        let pebble = Pebble::start(dir.path(), http.port(), https.port(), None).await;
        let store = store(&state).await;
        let events = EventSender::new(256);
        let mut times = Vec::new();
        let mut failures = 0;
        for round in 0..rounds {
            let domain = format!("b{round}.bench.kinfra.test");
            let mut rx = events.subscribe();
            let config = acme_config(&pebble, &[domain.as_str()], challenge);
            let started = Instant::now();
            let handle = acme(
                config,
                acme_options(&state, "bench"),
                &store,
                &proxy,
                &events,
            )
            .await;
            let mut seen = Vec::new();
            wait_for("CertIssued", WAIT, || {
                drain(&mut rx, &mut seen);
                let done = seen
                    .iter()
                    .any(|e| matches!(e.kind, EventKind::CertIssued { .. }));
                async move { done.then_some(()) }
            })
            .await;
            times.push(started.elapsed());
            failures += seen
                .iter()
                .filter(|e| matches!(e.kind, EventKind::CertRenewalFailed { .. }))
                .count();
            handle.shutdown().await;
        }
        let first = times[0];
        let mut rest: Vec<Duration> = times[1..].to_vec();
        rest.sort();
        let pct = |p: f64| {
            let i = ((rest.len() as f64 - 1.0) * p).round() as usize;
            rest.get(i).copied().unwrap_or_default()
        };
        eprintln!(
            "BENCH {challenge:?}: rounds={rounds} failures={failures} first(with account)={}ms \
             p50={}ms p95={}ms max={}ms",
            first.as_millis(),
            pct(0.5).as_millis(),
            pct(0.95).as_millis(),
            rest.last().copied().unwrap_or_default().as_millis()
        );
        proxy.shutdown(Duration::from_secs(1)).await;
        store.shutdown(Duration::from_secs(5)).await;
    }
}
