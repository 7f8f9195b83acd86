//! Automatic HTTPS through `kinfra::start` against Debian's Pebble: `[acme]` in the config
//! gets a certificate over HTTP-01 on the proxy's port, serves it on the HTTPS listener (a
//! real handshake verified against Pebble's root), shows it in `/__status__` and `/metrics`,
//! and a restart serves the stored certificate at once instead of ordering again.

// Pebble, its DNS server and the TLS helpers are the ones kinfra-acme's own tests use.
use crate::support::pebble as acme_support;

use acme_support::{Pebble, WAIT, free_port, handshake, wait_for};
use kinfra::{Config, EventKind, EventSender, RuntimeOptions};
use std::net::SocketAddr;

const DOMAIN: &str = "app.kinfra.test";

fn config(dir: &std::path::Path, pebble: &Pebble, http: u16, https: u16) -> Config {
    let toml = format!(
        r#"
[project]
name = "acmert"
state_dir = "{state}"

[dashboard]
enabled = false

[proxy]
http = "127.0.0.1:{http}"
https = "127.0.0.1:{https}"

[acme]
email = "ops@kinfra.test"
directory = "{directory}"
domains = ["{DOMAIN}"]
challenge = "http-01"
ca_roots = ["{ca}"]
retry_min = "1s"
retry_max = "4s"

[services.web]
command = "exec sleep 1000"
"#,
        state = dir.join("state").display(),
        directory = pebble.directory(),
        ca = pebble.tls.ca_path.display(),
    );
    Config::parse(&toml, kinfra::config::Format::Toml, "acme.toml", dir, &[]).expect("valid config")
}

fn cert_state(report: &kinfra::StatusReport) -> Option<String> {
    report
        .certificates
        .iter()
        .find(|c| c["domain"] == DOMAIN)
        .and_then(|c| c["state"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_gets_serves_and_keeps_a_certificate_from_pebble() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (http, https) = (free_port(), free_port());
    let pebble = Pebble::start(dir.path(), http, https, None).await;
    let root = pebble.root().await;

    let events = EventSender::new(1024);
    let mut rx = events.subscribe();
    let rt = kinfra::start_with(
        config(dir.path(), &pebble, http, https),
        RuntimeOptions {
            events: Some(events),
            ..RuntimeOptions::default()
        },
    )
    .await
    .expect("runtime starts");
    let issued = wait_for("CertIssued", WAIT, || {
        let e = rx.try_recv().ok();
        async move { e.filter(|e| matches!(e.kind, EventKind::CertIssued { .. })) }
    })
    .await;
    assert!(
        !serde_json::to_string(&issued)
            .expect("json")
            .contains("PRIVATE KEY")
    );
    let addr: SocketAddr = ([127, 0, 0, 1], https).into();
    // Served once stored: a handshake verified against Pebble's root succeeds.
    let leaf = wait_for("the issued certificate served", WAIT, || {
        let root = root.clone();
        async move { handshake(addr, DOMAIN, &root).await.ok() }
    })
    .await;
    assert!(!leaf.is_empty());
    let report = rt.status().await;
    assert_eq!(cert_state(&report).as_deref(), Some("valid"), "{report:?}");
    assert!(
        !serde_json::to_string(&report)
            .expect("json")
            .contains("PRIVATE")
    );
    let metrics = rt.control().extra_metrics();
    assert!(
        metrics.contains(&format!(
            "kinfra_certificate_expiry_timestamp_seconds{{domain=\"{DOMAIN}\"}}"
        )),
        "{metrics}"
    );
    rt.shutdown().await.expect("shutdown");

    // A restart serves the stored certificate before start returns: no new order.
    let rt = kinfra::start(config(dir.path(), &pebble, http, https))
        .await
        .expect("runtime restarts");
    assert_eq!(
        cert_state(&rt.status().await).as_deref(),
        Some("valid"),
        "the stored certificate was not served at start"
    );
    let again = handshake(addr, DOMAIN, &root)
        .await
        .expect("handshake after restart");
    assert_eq!(again, leaf, "a new certificate was ordered at restart");
    rt.shutdown().await.expect("shutdown");
}

/// Every TLS client and server of one process share one crypto provider, whatever starts
/// first: the store (surrealkv here; its `wss://` client uses the same provider), the bus
/// speaking `tls://` to a real nats-server (Debian's `nats-server`, TLS with a test CA), ACME
/// against Pebble and the proxy's HTTPS listener, all in this test process. Before one
/// provider was installed at startup, the store installed aws-lc-rs and the bus and ACME ring
/// "if none yet", so which one won depended on start order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_speaks_tls_to_nats_and_pebble_with_one_provider() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (http, https, nats_port) = (free_port(), free_port(), free_port());
    let pebble = Pebble::start(dir.path(), http, https, None).await;
    let root = pebble.root().await;
    let nats_conf = dir.path().join("nats.conf");
    std::fs::write(
        &nats_conf,
        format!(
            "listen: \"127.0.0.1:{nats_port}\"\ntls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n}}\n",
            pebble.tls.cert_path.display(),
            pebble.tls.key_path.display()
        ),
    )
    .expect("write nats.conf");
    let nats_bin = which("nats-server").unwrap_or_else(|| {
        panic!("nats-server is not installed: apt-get install nats-server (or run ./x test)")
    });
    let _nats = acme_support::Proc::spawn(
        "nats-server",
        std::process::Command::new(nats_bin)
            .arg("-c")
            .arg(&nats_conf),
    );
    let mut config = config(dir.path(), &pebble, http, https);
    config.bus.url = Some(format!("tls://127.0.0.1:{nats_port}"));
    config.bus.tls_ca = Some(pebble.tls.ca_path.clone());

    let events = EventSender::new(1024);
    let mut rx = events.subscribe();
    let rt = kinfra::start_with(
        config,
        RuntimeOptions {
            events: Some(events),
            ..RuntimeOptions::default()
        },
    )
    .await
    .expect("runtime starts");
    assert!(
        kinfra::tls::is_kinfra_provider(),
        "the process-wide rustls provider is not the one kinfra installs"
    );
    wait_for("CertIssued", WAIT, || {
        let e = rx.try_recv().ok();
        async move { e.filter(|e| matches!(e.kind, EventKind::CertIssued { .. })) }
    })
    .await;
    let addr: SocketAddr = ([127, 0, 0, 1], https).into();
    wait_for("the issued certificate served", WAIT, || {
        let root = root.clone();
        async move { handshake(addr, DOMAIN, &root).await.ok() }
    })
    .await;
    // The bus reached nats-server over TLS (the handshake verified against the test CA).
    let runtime = &rt;
    let bus = wait_for("the bus connected over tls://", WAIT, || async move {
        let bus = runtime.status().await.bus?;
        (bus["state"] == "connected").then_some(bus)
    })
    .await;
    assert!(
        bus["backend"]
            .to_string()
            .contains(&format!("tls://127.0.0.1:{nats_port}")),
        "{bus}"
    );
    rt.shutdown().await.expect("shutdown");
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}
