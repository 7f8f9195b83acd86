//! Certificates: a store that rustls asks for a certificate by SNI on every handshake (so
//! certificates can be added and swapped at run time), loading from the state dir, and
//! self-signed certificates (rcgen) where none is present; the TLS-ALPN-01 responder that
//! answers ACME validation handshakes before pingora's own TLS handshake.

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
pub use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a certificate could not be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The PEM text holds no certificate.
    #[error("no certificate found in the PEM data")]
    NoCertificate,
    /// The PEM text holds no private key, or one that cannot be parsed.
    #[error("no usable private key in the PEM data: {0}")]
    BadKey(String),
    /// The key type is not supported for TLS.
    #[error("unsupported private key: {0}")]
    UnsupportedKey(String),
    /// Generating a self-signed certificate failed.
    #[error("cannot generate a certificate for `{name}`: {reason}")]
    Generate {
        /// The host name.
        name: String,
        /// What went wrong.
        reason: String,
    },
    /// A certificate name that cannot be used (empty, or with path characters).
    #[error("invalid certificate name `{0}`")]
    InvalidName(String),
    /// Reading or writing a certificate file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

#[derive(Debug, Default)]
struct CertMap {
    /// By exact host name, lower case.
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the suffix after `*` (`.example.com` for `*.example.com`).
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// For handshakes without SNI or with an unknown name.
    default: Option<Arc<CertifiedKey>>,
}

/// The certificates the HTTPS listener serves, chosen by SNI at each handshake.
///
/// Reads are lock-free (an atomically swapped map); [`CertStore::insert`] and friends take
/// effect for the next handshake, without a restart. The ACME code uses this to install and
/// renew certificates.
#[derive(Debug, Default)]
pub struct CertStore {
    map: ArcSwap<CertMap>,
    writer: parking_lot::Mutex<()>,
}

impl CertStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn update(&self, f: impl FnOnce(&mut CertMap)) {
        let _guard = self.writer.lock();
        let current = self.map.load();
        let mut next = CertMap {
            exact: current.exact.clone(),
            wildcard: current.wildcard.clone(),
            default: current.default.clone(),
        };
        f(&mut next);
        self.map.store(Arc::new(next));
    }

    /// Serves `key` for `name` (`app.example.com`, or `*.example.com` for every direct
    /// subdomain), replacing what was there.
    pub fn insert(&self, name: &str, key: Arc<CertifiedKey>) {
        let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
        self.update(|m| {
            if let Some(suffix) = name.strip_prefix('*') {
                m.wildcard.insert(suffix.to_owned(), key);
            } else {
                m.exact.insert(name, key);
            }
        });
    }

    /// Parses a PEM certificate chain and private key and serves them for `name`.
    pub fn insert_pem(
        &self,
        name: &str,
        cert_chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<(), TlsError> {
        let key = certified_key_from_pem(cert_chain_pem, key_pem)?;
        self.insert(name, Arc::new(key));
        Ok(())
    }

    /// Stops serving a certificate for `name`; true when there was one.
    pub fn remove(&self, name: &str) -> bool {
        let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
        let mut removed = false;
        self.update(|m| {
            removed = match name.strip_prefix('*') {
                Some(suffix) => m.wildcard.remove(suffix).is_some(),
                None => m.exact.remove(&name).is_some(),
            };
        });
        removed
    }

    /// The certificate for handshakes without SNI or for names the store does not know.
    pub fn set_default(&self, key: Arc<CertifiedKey>) {
        self.update(|m| m.default = Some(key));
    }

    /// The certificate a handshake for `server_name` would get.
    pub fn get(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let map = self.map.load();
        if let Some(name) = server_name {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(key) = map.exact.get(&name) {
                return Some(key.clone());
            }
            if let Some(dot) = name.find('.')
                && let Some(key) = map.wildcard.get(&name[dot..])
            {
                return Some(key.clone());
            }
        }
        map.default.clone()
    }

    /// The names with a certificate, sorted (wildcards as `*.example.com`).
    pub fn names(&self) -> Vec<String> {
        let map = self.map.load();
        let mut names: Vec<String> = map.exact.keys().cloned().collect();
        names.extend(map.wildcard.keys().map(|s| format!("*{s}")));
        names.sort();
        names
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get(client_hello.server_name())
    }
}

/// The ALPN protocol of ACME TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The error context of a connection the TLS-ALPN-01 responder answered itself.
pub(crate) const ACME_ANSWERED: &str = "ACME TLS-ALPN-01 validation answered (not an error)";

/// Largest ClientHello the TLS-ALPN-01 responder reads before giving up (bytes).
const MAX_HELLO: usize = 64 * 1024;

/// Answers ACME TLS-ALPN-01 validation on the TLS listener, as pingora's pre-TLS hook.
///
/// While no TLS-ALPN-01 challenge is pending this costs one atomic load per connection.
/// Otherwise it reads the ClientHello, puts the bytes back, and when the client offers
/// `acme-tls/1` (and nothing else, as RFC 8737 requires) completes the handshake itself with
/// the challenge certificate for the SNI name and closes the connection; every other
/// connection goes on to the normal handshake untouched.
#[derive(Debug)]
pub(crate) struct AcmeAlpnResponder {
    challenges: Arc<crate::acme::ChallengeStore>,
}

impl AcmeAlpnResponder {
    pub(crate) fn new(challenges: Arc<crate::acme::ChallengeStore>) -> Self {
        Self { challenges }
    }
}

#[derive(Debug)]
struct OneCert(Arc<CertifiedKey>);

impl ResolvesServerCert for OneCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Reads whole TLS records until rustls has the ClientHello; returns the bytes read and, when
/// the client offers only `acme-tls/1`, its SNI name.
async fn read_client_hello<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
) -> std::io::Result<(Vec<u8>, Option<Option<String>>)> {
    use tokio::io::AsyncReadExt;
    let mut bytes = Vec::with_capacity(2048);
    let mut acceptor = rustls::server::Acceptor::default();
    loop {
        let start = bytes.len();
        let mut header = [0u8; 5];
        stream.read_exact(&mut header).await?;
        bytes.extend_from_slice(&header);
        // Not a TLS handshake record: leave it to the normal handshake to refuse.
        if header[0] != 0x16 {
            return Ok((bytes, None));
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if bytes.len() + len > MAX_HELLO {
            return Ok((bytes, None));
        }
        bytes.resize(start + 5 + len, 0);
        stream.read_exact(&mut bytes[start + 5..]).await?;
        let mut record = &bytes[start..];
        if acceptor.read_tls(&mut record).is_err() {
            return Ok((bytes, None));
        }
        match acceptor.accept() {
            Ok(None) => continue,
            Ok(Some(accepted)) => {
                let hello = accepted.client_hello();
                let only_acme = hello.alpn().is_some_and(|mut protocols| {
                    protocols.next() == Some(ACME_TLS_ALPN) && protocols.next().is_none()
                });
                let sni = hello.server_name().map(str::to_owned);
                return Ok((bytes, only_acme.then_some(sni)));
            }
            Err(_) => return Ok((bytes, None)),
        }
    }
}

#[async_trait::async_trait]
impl pingora::listeners::PreTlsProcess for AcmeAlpnResponder {
    async fn process(
        &self,
        stream: &mut pingora::protocols::l4::stream::Stream,
    ) -> pingora::Result<()> {
        use pingora::{Error, ErrorType};
        if self.challenges.tls_alpn_is_empty() {
            return Ok(());
        }
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            read_client_hello(stream),
        )
        .await;
        let (bytes, acme) = match read {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => return Err(Error::because(ErrorType::ReadError, "ClientHello", e)),
            Err(_) => return Err(Error::explain(ErrorType::ReadTimedout, "ClientHello")),
        };
        stream.rewind(&bytes);
        let Some(sni) = acme else {
            return Ok(());
        };
        let cert = sni
            .as_deref()
            .and_then(|name| self.challenges.tls_alpn(name));
        let Some(cert) = cert else {
            tracing::debug!(sni = ?sni, "TLS-ALPN-01 handshake for a name without a challenge.");
            return Err(Error::explain(
                ErrorType::HandshakeError,
                "no acme-tls/1 challenge",
            ));
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::because(ErrorType::InternalError, "acme-tls/1 config", e))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(OneCert(cert)));
        config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
        let acceptor = pingora::tls::TlsAcceptor::from(Arc::new(config));
        let handshake = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            acceptor.accept(&mut *stream),
        )
        .await;
        match handshake {
            Ok(Ok(mut tls)) => {
                use tokio::io::AsyncWriteExt;
                let _ = tls.shutdown().await;
                tracing::debug!(sni = ?sni, "Answered a TLS-ALPN-01 validation.");
            }
            Ok(Err(error)) => {
                tracing::debug!(sni = ?sni, %error, "TLS-ALPN-01 handshake failed.");
            }
            Err(_) => tracing::debug!(sni = ?sni, "TLS-ALPN-01 handshake timed out."),
        }
        // The connection was for validation only: pingora must not handshake again. pingora
        // logs every early end of a connection as a handshake error; the context says why
        // (and `TlsHandshakeLog` does not count it).
        Err(Error::explain(ErrorType::ConnectionClosed, ACME_ANSWERED))
    }
}

/// Builds a rustls certified key from a PEM chain and a PEM private key (PKCS#8, PKCS#1 or
/// SEC1).
pub fn certified_key_from_pem(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<CertifiedKey, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_chain_pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::BadKey(e.to_string()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| TlsError::UnsupportedKey(e.to_string()))?;
    Ok(CertifiedKey::new(certs, signing))
}

/// A new self-signed certificate for `names` (host names or IP addresses); returns
/// `(certificate PEM, private key PEM)`.
pub fn generate_self_signed(names: &[String]) -> Result<(String, String), TlsError> {
    let first = names.first().cloned().unwrap_or_default();
    let err = |e: rcgen::Error| TlsError::Generate {
        name: first.clone(),
        reason: e.to_string(),
    };
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(err)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, first.as_str());
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "kinfra self-signed");
    let cert = params.self_signed(&key).map_err(err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The directory name used for a host's certificate files (`*.example.com` →
/// `_wildcard.example.com`).
fn dir_name(name: &str) -> Result<String, TlsError> {
    let clean = name.trim().trim_end_matches('.').to_ascii_lowercase();
    let clean = match clean.strip_prefix("*.") {
        Some(rest) => format!("_wildcard.{rest}"),
        None => clean,
    };
    let ok = !clean.is_empty()
        && clean != "."
        && clean != ".."
        && clean
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
    if ok {
        Ok(clean)
    } else {
        Err(TlsError::InvalidName(name.to_owned()))
    }
}

fn read(path: &Path) -> Result<Option<Vec<u8>>, TlsError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TlsError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn write(path: &Path, bytes: &[u8], private: bool) -> Result<(), TlsError> {
    let io = |source| TlsError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    use std::io::Write;
    let mut file = options.open(path).map_err(io)?;
    file.write_all(bytes).map_err(io)
}

/// Where a certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertSource {
    /// `certs/<name>/cert.pem` and `key.pem` in the state dir (put there by hand or by ACME).
    Provided,
    /// A self-signed certificate kept in `certs/self-signed/<name>/`.
    SelfSigned,
}

/// Loads the certificate for `name` from `certs_dir/<name>/{cert,key}.pem`, else the kept
/// self-signed one from `certs_dir/self-signed/<name>/`, else generates and keeps a new
/// self-signed one. `extra_names` are added to a new self-signed certificate's names.
pub fn load_or_create(
    certs_dir: &Path,
    name: &str,
    extra_names: &[&str],
) -> Result<(CertifiedKey, CertSource), TlsError> {
    let dir = dir_name(name)?;
    let provided = certs_dir.join(&dir);
    if let (Some(cert), Some(key)) = (
        read(&provided.join("cert.pem"))?,
        read(&provided.join("key.pem"))?,
    ) {
        return Ok((certified_key_from_pem(&cert, &key)?, CertSource::Provided));
    }
    let own = certs_dir.join("self-signed").join(&dir);
    let (cert_path, key_path) = (own.join("cert.pem"), own.join("key.pem"));
    if let (Some(cert), Some(key)) = (read(&cert_path)?, read(&key_path)?)
        && let Ok(ck) = certified_key_from_pem(&cert, &key)
    {
        return Ok((ck, CertSource::SelfSigned));
    }
    let mut names = vec![name.to_owned()];
    names.extend(extra_names.iter().map(|s| (*s).to_owned()));
    let (cert, key) = generate_self_signed(&names)?;
    write(&key_path, key.as_bytes(), true)?;
    write(&cert_path, cert.as_bytes(), false)?;
    Ok((
        certified_key_from_pem(cert.as_bytes(), key.as_bytes())?,
        CertSource::SelfSigned,
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key_for(name: &str) -> Arc<CertifiedKey> {
        let (c, k) = generate_self_signed(&[name.to_owned()]).unwrap();
        Arc::new(certified_key_from_pem(c.as_bytes(), k.as_bytes()).unwrap())
    }

    #[test]
    fn store_picks_by_name() {
        let store = CertStore::new();
        assert!(store.get(Some("a.test")).is_none());
        let (a, w, d) = (key_for("a.test"), key_for("*.b.test"), key_for("localhost"));
        store.insert("A.test", a.clone());
        store.insert("*.b.test", w.clone());
        store.set_default(d.clone());
        assert!(Arc::ptr_eq(&store.get(Some("a.test")).unwrap(), &a));
        assert!(Arc::ptr_eq(&store.get(Some("x.b.test")).unwrap(), &w));
        assert!(Arc::ptr_eq(&store.get(Some("b.test")).unwrap(), &d));
        assert!(Arc::ptr_eq(&store.get(None).unwrap(), &d));
        assert_eq!(store.names(), ["*.b.test", "a.test"]);
        assert!(store.remove("a.test"));
        assert!(!store.remove("a.test"));
        assert!(Arc::ptr_eq(&store.get(Some("a.test")).unwrap(), &d));
    }

    #[test]
    fn self_signed_is_kept_and_provided_wins() {
        let dir = tempfile::tempdir().unwrap();
        let (first, src) = load_or_create(dir.path(), "app.test", &[]).unwrap();
        assert_eq!(src, CertSource::SelfSigned);
        let (again, _) = load_or_create(dir.path(), "app.test", &[]).unwrap();
        assert_eq!(first.cert, again.cert);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(dir.path().join("self-signed/app.test/key.pem")).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        }
        let (c, k) = generate_self_signed(&["app.test".into()]).unwrap();
        std::fs::create_dir_all(dir.path().join("app.test")).unwrap();
        std::fs::write(dir.path().join("app.test/cert.pem"), &c).unwrap();
        std::fs::write(dir.path().join("app.test/key.pem"), &k).unwrap();
        let (provided, src) = load_or_create(dir.path(), "app.test", &[]).unwrap();
        assert_eq!(src, CertSource::Provided);
        assert_ne!(provided.cert, first.cert);
        assert!(load_or_create(dir.path(), "../evil", &[]).is_err());
        assert!(load_or_create(dir.path(), "*.w.test", &[]).is_ok());
    }

    #[test]
    fn bad_pem_is_an_error() {
        assert!(matches!(
            certified_key_from_pem(b"nope", b"nope"),
            Err(TlsError::NoCertificate)
        ));
        let (c, _) = generate_self_signed(&["x.test".into()]).unwrap();
        assert!(matches!(
            certified_key_from_pem(c.as_bytes(), b"nope"),
            Err(TlsError::BadKey(_))
        ));
    }
}
