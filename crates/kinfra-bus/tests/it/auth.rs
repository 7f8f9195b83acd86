//! `[bus] url` with authentication and TLS: token, user/password (in the config and in the
//! URL), nkey seed file, client certificates; wrong credentials keep the runtime running.

use crate::support::*;
use futures_util::StreamExt;
use kinfra_bus::{Bus, BusBackend, BusError, BusState};
use kinfra_core::Secret;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Starts a bus and checks that events and control work over its connection.
async fn check_works(bus: &Bus, control: &FakeControl, watcher: &async_nats::Client) {
    assert_eq!(bus.state(), BusState::Connected, "{:?}", bus.status());
    let mut sub = watcher.subscribe("kinfra.test.events.api.>").await.unwrap();
    roundtrip(watcher).await;
    let ev = control.emit_state("api", 1);
    let msg = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(parse_event(&msg.payload)["seq"].as_u64(), Some(ev.seq));
    let reply = control_request(watcher, "start", r#"{"service":"api"}"#).await;
    assert_eq!(reply["success"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_and_user_password_authentication() {
    const TOKEN: &str = "s3cr3t-bus-token";
    let server = NatsServer::start_with(vec!["--auth".into(), TOKEN.into()]).await;
    let state = tempfile::tempdir().unwrap();
    let control = FakeControl::new();
    let mut opts = options(&control, state.path(), Some(server.url()));
    opts.config.token = Some(Secret::new(TOKEN));
    let bus = Bus::start(opts, control.clone()).await.unwrap();
    let watcher = async_nats::ConnectOptions::with_token(TOKEN.into())
        .connect(server.url())
        .await
        .unwrap();
    check_works(&bus, &control, &watcher).await;
    // The bus's own token is masked in what it publishes.
    let mut sub = watcher
        .subscribe("kinfra.test.events.runtime.>")
        .await
        .unwrap();
    roundtrip(&watcher).await;
    control.events.emit(kinfra_core::EventKind::ConfigRejected {
        error: format!("bad token {TOKEN}"),
    });
    let msg = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(parse_event(&msg.payload)["error"], "bad token ***");
    bus.shutdown(Duration::from_secs(2)).await;

    // A wrong token: the bus starts anyway, keeps trying, and says why.
    let mut opts = options(&control, state.path(), Some(server.url()));
    opts.config.token = Some(Secret::new("wrong-token"));
    let started = std::time::Instant::now();
    let bus = Bus::start(opts, control.clone()).await.unwrap();
    // A hang bound only: the outcome (still connecting, the error named) is asserted next.
    assert!(started.elapsed() < Duration::from_secs(60), "start hung");
    assert_eq!(bus.state(), BusState::Connecting);
    let error = bus.status().last_error.unwrap_or_default();
    assert!(error.to_lowercase().contains("authorization"), "{error}");
    bus.shutdown(Duration::from_secs(1)).await;

    let server = NatsServer::start_with(vec![
        "--user".into(),
        "kinfra".into(),
        "--pass".into(),
        "pa55word".into(),
    ])
    .await;
    let watcher =
        async_nats::ConnectOptions::with_user_and_password("kinfra".into(), "pa55word".into())
            .connect(server.url())
            .await
            .unwrap();
    let mut opts = options(&control, state.path(), Some(server.url()));
    opts.config.user = Some("kinfra".into());
    opts.config.password = Some(Secret::new("pa55word"));
    let bus = Bus::start(opts, control.clone()).await.unwrap();
    check_works(&bus, &control, &watcher).await;
    bus.shutdown(Duration::from_secs(2)).await;

    // Credentials in the URL work, and never show.
    let url = format!("nats://kinfra:pa55word@127.0.0.1:{}", server.port);
    let bus = Bus::start(options(&control, state.path(), Some(url)), control.clone())
        .await
        .unwrap();
    check_works(&bus, &control, &watcher).await;
    assert_eq!(
        bus.backend(),
        BusBackend::External {
            url: format!("nats://***@127.0.0.1:{}", server.port)
        }
    );
    assert!(!format!("{bus:?} {:?}", bus.status()).contains("pa55word"));
    bus.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nkey_seed_file_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let user = nkeys::KeyPair::new_user();
    let conf = dir.path().join("server.conf");
    std::fs::write(
        &conf,
        format!(
            "authorization {{ users = [ {{ nkey: \"{}\" }} ] }}\n",
            user.public_key()
        ),
    )
    .unwrap();
    let seed = user.seed().unwrap();
    std::fs::write(dir.path().join("user.nk"), format!("{seed}\n")).unwrap();
    let server = NatsServer::start_with(vec!["-c".into(), conf.display().to_string()]).await;
    let state = tempfile::tempdir().unwrap();
    let control = FakeControl::new();
    let mut opts = options(&control, state.path(), Some(server.url()));
    // Relative to the config file's directory.
    opts.base_dir = dir.path().to_path_buf();
    opts.config.nkey_file = Some("user.nk".into());
    let bus = Bus::start(opts, control.clone()).await.unwrap();
    let watcher = async_nats::ConnectOptions::with_nkey(seed)
        .connect(server.url())
        .await
        .unwrap();
    check_works(&bus, &control, &watcher).await;
    bus.shutdown(Duration::from_secs(2)).await;

    // A missing credentials file is an error at start, naming the file.
    let mut opts = options(&control, state.path(), Some(server.url()));
    opts.config.credentials = Some(dir.path().join("missing.creds"));
    let err = Bus::start(opts, control.clone()).await.unwrap_err();
    assert!(matches!(err, BusError::Credentials { .. }), "{err}");
    assert!(err.to_string().contains("missing.creds"), "{err}");
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl (apt-get install -y openssl): {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA.
fn make_certs(dir: &Path) {
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "ca.key",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-subj",
            "/CN=kinfra test CA",
            "-days",
            "2",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            "ca.pem",
        ],
    );
    for (name, usage, san) in [
        (
            "server",
            "serverAuth",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ),
        ("client", "clientAuth", "subjectAltName=DNS:kinfra-client"),
    ] {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let pem = format!("{name}.pem");
        let ext = format!("{name}.ext");
        std::fs::write(
            dir.join(&ext),
            format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage={usage}\n{san}\n"),
        )
        .unwrap();
        openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                &key,
            ],
        );
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-key",
                &key,
                "-subj",
                &format!("/CN={name}"),
                "-out",
                &csr,
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &pem,
            ],
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let p = |f: &str| dir.path().join(f).display().to_string();
    let server = NatsServer::start_with(vec![
        "--tlsverify".into(),
        "--tlscert".into(),
        p("server.pem"),
        "--tlskey".into(),
        p("server.key"),
        "--tlscacert".into(),
        p("ca.pem"),
    ])
    .await;
    let state = tempfile::tempdir().unwrap();
    let control = FakeControl::new();
    let url = format!("tls://127.0.0.1:{}", server.port);
    let mut opts = options(&control, state.path(), Some(url.clone()));
    opts.config.tls_ca = Some(p("ca.pem").into());
    opts.config.tls_cert = Some(p("client.pem").into());
    opts.config.tls_key = Some(p("client.key").into());
    let bus = Bus::start(opts, control.clone()).await.unwrap();
    let watcher = async_nats::ConnectOptions::new()
        .add_root_certificates(p("ca.pem").into())
        .add_client_certificate(p("client.pem").into(), p("client.key").into())
        .connect(url.as_str())
        .await
        .unwrap();
    check_works(&bus, &control, &watcher).await;
    bus.shutdown(Duration::from_secs(2)).await;

    // Without a client certificate the server refuses the bus; the bus keeps trying.
    let mut opts = options(&control, state.path(), Some(url));
    opts.config.tls_ca = Some(p("ca.pem").into());
    let bus = Bus::start(opts, control.clone()).await.unwrap();
    assert_ne!(bus.state(), BusState::Connected);
    bus.shutdown(Duration::from_secs(1)).await;

    // Only one of cert and key is a config error.
    let mut opts = options(
        &control,
        state.path(),
        Some(format!("tls://127.0.0.1:{}", server.port)),
    );
    opts.config.tls_cert = Some(p("client.pem").into());
    assert!(matches!(
        Bus::start(opts, control.clone()).await,
        Err(BusError::Config(_))
    ));
}
