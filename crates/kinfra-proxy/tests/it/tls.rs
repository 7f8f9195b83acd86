//! TLS: certificates by SNI, a certificate swap at run time, HTTP/2 via ALPN, HTTPS redirect
//! and ACME HTTP-01 answers.

use crate::support::*;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

fn pem_cert(pem: &[u8]) -> CertificateDer<'static> {
    CertificateDer::pem_slice_iter(pem).next().unwrap().unwrap()
}

fn self_signed_of(state_dir: &Path, name: &str) -> CertificateDer<'static> {
    let path = state_dir
        .join("certs/self-signed")
        .join(name)
        .join("cert.pem");
    pem_cert(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

fn connector(roots: &[CertificateDer<'static>], alpn: &[&[u8]]) -> TlsConnector {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

async fn handshake(
    addr: SocketAddr,
    name: &str,
    connector: &TlsConnector,
) -> Result<TlsStream<TcpStream>, std::io::Error> {
    let tcp = TcpStream::connect(addr).await?;
    let server_name = ServerName::try_from(name.to_owned()).unwrap();
    tokio::time::timeout(WAIT, connector.connect(server_name, tcp))
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))?
}

fn presented(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

async fn start_tls(
    dir: &Path,
    redirect: bool,
) -> (
    kinfra_proxy::ProxyServer,
    Backend,
    std::sync::Arc<FakeControl>,
) {
    let api = Backend::start("api").await;
    let control = FakeControl::new();
    control.running("api", api.port());
    let mut opts = options(vec![service_route(None, "/", "api", false)], dir);
    opts.config.https = Some("127.0.0.1:0".into());
    opts.config.redirect_https = redirect;
    opts.tls_hosts = vec!["a.test".into(), "B.test".into()];
    let proxy = start(opts, &control).await;
    (proxy, api, control)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_swaps_at_run_time() {
    let dir = tempfile::tempdir().unwrap();
    let (proxy, _api, _control) = start_tls(dir.path(), false).await;
    let addr = proxy.https_addr().unwrap();
    let (a, b, local) = (
        self_signed_of(dir.path(), "a.test"),
        self_signed_of(dir.path(), "b.test"),
        self_signed_of(dir.path(), "localhost"),
    );
    assert_ne!(a, b);
    let trusting = connector(&[a.clone(), b.clone(), local.clone()], &[]);
    for (name, expected) in [("a.test", &a), ("b.test", &b), ("localhost", &local)] {
        let s = handshake(addr, name, &trusting).await.unwrap();
        assert_eq!(&presented(&s), expected, "certificate for {name}");
    }
    // A name the store does not know gets the default (localhost) certificate, which a
    // verifying client rejects for that name.
    assert!(handshake(addr, "c.test", &trusting).await.is_err());

    // HTTP/1.1 over TLS works and says https upstream.
    let s = handshake(addr, "a.test", &trusting).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let r = collect(
        sender
            .send_request(request("/tls", "a.test", &[]))
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.json()["headers"]["x-forwarded-proto"], "https");

    // Swap the certificate for a.test at run time: the next handshake gets the new one.
    let (cert_pem, key_pem) =
        kinfra_proxy::tls::generate_self_signed(&["a.test".to_owned()]).unwrap();
    proxy
        .cert_resolver()
        .insert_pem("a.test", cert_pem.as_bytes(), key_pem.as_bytes())
        .unwrap();
    let new_a = pem_cert(cert_pem.as_bytes());
    let s = handshake(
        addr,
        "a.test",
        &connector(std::slice::from_ref(&new_a), &[]),
    )
    .await
    .unwrap();
    assert_eq!(presented(&s), new_a);
    // b.test is untouched.
    let s = handshake(addr, "b.test", &trusting).await.unwrap();
    assert_eq!(presented(&s), b);
    proxy.shutdown(Duration::from_secs(2)).await;

    // The self-signed certificates are kept for the next start.
    let (proxy, _api, _control) = start_tls(dir.path(), false).await;
    let s = handshake(proxy.https_addr().unwrap(), "b.test", &trusting)
        .await
        .unwrap();
    assert_eq!(presented(&s), b);
    proxy.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_is_negotiated_by_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let (proxy, _api, _control) = start_tls(dir.path(), false).await;
    let addr = proxy.https_addr().unwrap();
    let roots = [self_signed_of(dir.path(), "b.test")];
    let s = handshake(addr, "b.test", &connector(&roots, &[b"h2", b"http/1.1"]))
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    // Several streams on the one connection, concurrently.
    let mut pending = Vec::new();
    for i in 0..5 {
        let req = hyper::Request::builder()
            .uri(format!("https://b.test/h2/{i}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        pending.push(sender.send_request(req));
    }
    for (i, p) in pending.into_iter().enumerate() {
        let resp = p.await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let r = collect(resp).await.unwrap();
        assert_eq!(r.status, 200);
        let v = r.json();
        assert_eq!(v["path"], format!("/h2/{i}"));
        assert_eq!(v["headers"]["via"], "2 kinfra");
        assert_eq!(v["headers"]["x-forwarded-proto"], "https");
        assert_eq!(v["headers"]["x-forwarded-host"], "b.test");
    }
    // Without ALPN h2: HTTP/1.1.
    let s = handshake(addr, "b.test", &connector(&roots, &[b"http/1.1"]))
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    proxy.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_redirects_to_https_except_acme_challenges() {
    let dir = tempfile::tempdir().unwrap();
    let (proxy, _api, _control) = start_tls(dir.path(), true).await;
    let http = proxy.http_addr().unwrap();
    let https_port = proxy.https_addr().unwrap().port();
    let r = get_host(http, "a.test", "/x?y=1").await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some(format!("https://a.test:{https_port}/x?y=1").as_str())
    );
    proxy
        .acme_challenges()
        .insert("tok123", "tok123.thumbprint");
    let r = get_host(http, "a.test", "/.well-known/acme-challenge/tok123").await;
    assert_eq!((r.status, r.body.as_str()), (200, "tok123.thumbprint"));
    assert!(proxy.acme_challenges().remove("tok123"));
    let r = get_host(http, "a.test", "/.well-known/acme-challenge/tok123").await;
    assert_eq!(
        (r.status, backend_of(&r)),
        (200, "api".to_owned()),
        "unknown tokens go to the routes, not to HTTPS"
    );
    proxy.shutdown(Duration::from_secs(2)).await;
}
