//! The proxy's TLS-ALPN-01 responder on its own: a client offering only `acme-tls/1` gets the
//! challenge certificate, every other client the normal handshake, even while a challenge is
//! pending; `acme-tls/1` for a name without a challenge is refused.

use crate::support::*;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Accepts any certificate: these tests look at which certificate is sent, not at trust.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Handshakes offering `alpn`; returns the leaf certificate and the negotiated protocol.
async fn hello(
    addr: SocketAddr,
    sni: &str,
    alpn: &[&[u8]],
) -> std::io::Result<(Vec<u8>, Option<Vec<u8>>)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).map_err(std::io::Error::other)?;
    let tls = connector.connect(name, tcp).await?;
    let (_, conn) = tls.get_ref();
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .unwrap_or_default();
    Ok((leaf, conn.alpn_protocol().map(<[u8]>::to_vec)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_tls_1_gets_the_challenge_certificate_and_others_the_normal_one() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy(dir.path()).await;
    let https = proxy.https_addr().unwrap();
    let (cert_pem, key_pem) =
        kinfra_proxy::tls::generate_self_signed(&["x.kinfra.test".into()]).unwrap();
    let challenge =
        kinfra_proxy::tls::certified_key_from_pem(cert_pem.as_bytes(), key_pem.as_bytes()).unwrap();
    let challenge_der = challenge.cert[0].as_ref().to_vec();
    let (normal, proto) = hello(https, "x.kinfra.test", &[b"h2", b"http/1.1"])
        .await
        .expect("a normal handshake");
    assert_eq!(proto.as_deref(), Some(&b"h2"[..]));
    proxy
        .acme_challenges()
        .insert_tls_alpn("x.kinfra.test", Arc::new(challenge));

    let (leaf, proto) = hello(https, "x.kinfra.test", &[b"acme-tls/1"])
        .await
        .expect("the acme-tls/1 handshake");
    assert_eq!(leaf, challenge_der);
    assert_eq!(proto.as_deref(), Some(&b"acme-tls/1"[..]));

    // Normal clients are untouched while the challenge is pending.
    for alpn in [
        &[&b"h2"[..], &b"http/1.1"[..]][..],
        &[],
        &[&b"http/1.1"[..]],
    ] {
        let (leaf, _) = hello(https, "x.kinfra.test", alpn)
            .await
            .expect("a normal handshake during the challenge");
        assert_eq!(leaf, normal);
    }
    // acme-tls/1 for a name without a challenge: refused.
    assert!(
        hello(https, "y.kinfra.test", &[b"acme-tls/1"])
            .await
            .is_err()
    );
    assert!(proxy.acme_challenges().remove_tls_alpn("x.kinfra.test"));
    proxy.shutdown(Duration::from_secs(1)).await;
}
