//! Clients' failed TLS handshakes: counted by reason in the proxy's metrics and kept out of
//! the log by `TlsHandshakeLog` (pingora's per-connection ERROR line never reaches another
//! layer). Its own test binary: the subscriber and the counters are process-wide.

#![allow(clippy::unwrap_used)]

#[path = "it/support.rs"]
mod support;

use kinfra_proxy::{PINGORA_LISTENER_TARGET, TlsHandshakeLog};
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// Every ERROR event that reaches the layers behind `TlsHandshakeLog`, as `target: message`.
#[derive(Clone, Default)]
struct Errors(Arc<Mutex<Vec<String>>>);

struct Fields(String, String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.1 = format!("{value:?}"),
            "log.target" => self.0 = format!("{value:?}"),
            _ => {}
        }
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "message" => self.1 = value.to_owned(),
            "log.target" => self.0 = value.to_owned(),
            _ => {}
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for Errors {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if *event.metadata().level() == tracing::Level::ERROR {
            let mut fields = Fields(event.metadata().target().to_owned(), String::new());
            event.record(&mut fields);
            self.0
                .lock()
                .unwrap()
                .push(format!("{}: {}", fields.0, fields.1));
        }
    }
}

/// The counter's value for `reason` in the proxy's metrics.
fn failures(metrics: &kinfra_proxy::ProxyMetricsHandle, reason: &str) -> u64 {
    let text = metrics.render();
    let series = format!("kinfra_proxy_tls_handshake_failures_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

async fn wait_count(metrics: &kinfra_proxy::ProxyMetricsHandle, reason: &str, expected: u64) {
    wait_for(&format!("{reason} = {expected}"), || async {
        (failures(metrics, reason) == expected).then_some(())
    })
    .await;
}

/// Reads until the proxy closes the connection.
async fn read_to_close(stream: &mut TcpStream) {
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut sink))
        .await
        .expect("the proxy closes the connection");
}

fn rejecting_connector() -> tokio_rustls::TlsConnector {
    // No trusted roots: the client rejects the proxy's (self-signed) certificate.
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A TLS 1.2 ClientHello offering only TLS_RSA_WITH_3DES_EDE_CBC_SHA, which the proxy does
/// not accept.
fn hello_without_shared_cipher() -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // no session id
    body.extend_from_slice(&[0x00, 0x02, 0x00, 0x0a]); // one cipher suite
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    // signature_algorithms: rsa_pkcs1_sha256, ecdsa_secp256r1_sha256
    let sigs = [0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x01, 0x04, 0x03];
    // supported_groups: x25519
    let groups = [0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x1d];
    let ext_len = (sigs.len() + groups.len()) as u16;
    body.extend_from_slice(&ext_len.to_be_bytes());
    body.extend_from_slice(&sigs);
    body.extend_from_slice(&groups);
    let mut handshake = vec![0x01, 0x00];
    handshake.extend_from_slice(&(body.len() as u16).to_be_bytes());
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_handshakes_are_counted_by_reason_and_not_logged_as_errors() {
    let errors = Errors::default();
    tracing_subscriber::registry()
        .with(errors.clone())
        .with(TlsHandshakeLog)
        .try_init()
        .expect("the test's subscriber is the first");

    let control = FakeControl::new();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(vec![service_route(None, "/", "api", false)], dir.path());
    opts.config.https = Some("127.0.0.1:0".into());
    let proxy = start(opts, &control).await;
    let addr: SocketAddr = proxy.https_addr().unwrap();
    let metrics = proxy.metrics();
    for reason in ["not_tls", "unknown_ca", "eof", "no_shared_cipher"] {
        assert_eq!(failures(&metrics, reason), 0, "{reason}");
    }

    // Plain HTTP to the HTTPS port.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    read_to_close(&mut stream).await;
    wait_count(&metrics, "not_tls", 1).await;

    // A client that does not trust the certificate (a browser before the CA is installed).
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let refused = rejecting_connector().connect(name, tcp).await;
    assert!(refused.is_err(), "the client must reject the certificate");
    wait_count(&metrics, "unknown_ca", 1).await;

    // A client that connects and goes away (a port scanner).
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.shutdown().await.unwrap();
    read_to_close(&mut stream).await;
    wait_count(&metrics, "eof", 1).await;

    // Nothing in common.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(&hello_without_shared_cipher())
        .await
        .unwrap();
    read_to_close(&mut stream).await;
    wait_count(&metrics, "no_shared_cipher", 1).await;

    // A good handshake counts nothing.
    let mut roots = rustls::RootCertStore::empty();
    let local = std::fs::read(dir.path().join("certs/self-signed/localhost/cert.pem")).unwrap();
    use rustls::pki_types::pem::PemObject;
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(&local).unwrap())
        .unwrap();
    let trusting = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(trusting))
        .connect(name, tcp)
        .await
        .unwrap();
    drop(tls);

    proxy.shutdown(std::time::Duration::from_secs(2)).await;
    for (reason, count) in [
        ("not_tls", 1),
        ("unknown_ca", 1),
        ("eof", 1),
        ("no_shared_cipher", 1),
        ("other", 0),
    ] {
        assert_eq!(failures(&metrics, reason), count, "{reason}");
    }
    let errors = errors.0.lock().unwrap();
    let leaked: Vec<&String> = errors.iter().filter(|e| e.contains("handshake")).collect();
    assert!(
        leaked.is_empty(),
        "pingora's handshake errors reached the log ({PINGORA_LISTENER_TARGET}): {leaked:?}"
    );
}
