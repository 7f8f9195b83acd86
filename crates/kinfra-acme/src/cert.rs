//! Certificate facts (validity, names) from PEM, renewal times, and the TLS-ALPN-01 challenge
//! certificate.

use crate::error::AcmeError;
use kinfra_proxy::CertifiedKey;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What kinfra needs to know about a certificate chain's leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// DNS names in the subject alternative names, lower case.
    pub names: Vec<String>,
    /// The issuer's distinguished name, for people.
    pub issuer: String,
}

impl CertInfo {
    /// Parses the first certificate of a PEM chain.
    pub fn from_pem(chain_pem: &str) -> Result<CertInfo, AcmeError> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let der = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .next()
            .ok_or_else(|| AcmeError::Certificate("no certificate in the PEM data".into()))?
            .map_err(|e| AcmeError::Certificate(e.to_string()))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| AcmeError::Certificate(e.to_string()))?;
        let time = |t: x509_parser::time::ASN1Time| {
            let secs = t.timestamp();
            if secs >= 0 {
                UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
            } else {
                UNIX_EPOCH
            }
        };
        let validity = cert.validity();
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                    names.push(dns.to_ascii_lowercase());
                }
            }
        }
        Ok(CertInfo {
            not_before: time(validity.not_before),
            not_after: time(validity.not_after),
            names,
            issuer: cert.issuer().to_string(),
        })
    }

    /// True when the certificate names `domain`.
    pub fn covers(&self, domain: &str) -> bool {
        self.names.iter().any(|n| n.eq_ignore_ascii_case(domain))
    }

    /// When renewal is due: `renew_before` ahead of expiry when set, else when a third of
    /// the lifetime remains. `renew_before` is capped at half the lifetime, so a setting
    /// longer than a short-lived certificate's life cannot make every check order again.
    pub fn renew_at(&self, renew_before: Option<Duration>) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        let before = renew_before.unwrap_or(lifetime / 3).min(lifetime / 2);
        self.not_after
            .checked_sub(before)
            .unwrap_or(self.not_before)
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// RFC 3339, seconds, UTC.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The self-signed certificate answering a TLS-ALPN-01 challenge for `domain`: the domain as
/// its only name and the critical `acmeIdentifier` extension holding the SHA-256 digest of
/// the key authorization (RFC 8737).
pub(crate) fn tls_alpn_certificate(
    domain: &str,
    key_auth_digest: &[u8],
) -> Result<Arc<CertifiedKey>, AcmeError> {
    let err = |e: rcgen::Error| AcmeError::Certificate(format!("TLS-ALPN-01 certificate: {e}"));
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()]).map_err(err)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(key_auth_digest)];
    let cert = params.self_signed(&key).map_err(err)?;
    let ck = kinfra_proxy::tls::certified_key_from_pem(
        cert.pem().as_bytes(),
        key.serialize_pem().as_bytes(),
    )
    .map_err(|e| AcmeError::Certificate(e.to_string()))?;
    Ok(Arc::new(ck))
}

/// A new P-256 key and a CSR for `domain`; returns `(csr DER, key PEM)`.
pub(crate) fn key_and_csr(domain: &str) -> Result<(Vec<u8>, String), AcmeError> {
    let err = |e: rcgen::Error| AcmeError::Certificate(format!("CSR: {e}"));
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()]).map_err(err)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).map_err(err)?;
    Ok((csr.der().to_vec(), key.serialize_pem()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_with_a_third_left() {
        let start = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let info = CertInfo {
            not_before: start,
            not_after: start + Duration::from_secs(90 * 86400),
            names: vec!["a.test".into()],
            issuer: String::new(),
        };
        assert_eq!(info.renew_at(None), start + Duration::from_secs(60 * 86400));
        assert_eq!(
            info.renew_at(Some(Duration::from_secs(86400))),
            start + Duration::from_secs(89 * 86400)
        );
        assert_eq!(
            info.renew_at(Some(Duration::from_secs(1000 * 86400))),
            start + Duration::from_secs(45 * 86400)
        );
        assert!(info.covers("A.test"));
        assert!(!info.covers("b.test"));
    }

    #[test]
    fn parses_a_pem_certificate() {
        let (cert, _) = kinfra_proxy::tls::generate_self_signed(&["x.test".into()]).unwrap();
        let info = CertInfo::from_pem(&cert).unwrap();
        assert!(info.covers("x.test"));
        assert!(info.not_after > info.not_before);
        assert!(CertInfo::from_pem("nope").is_err());
    }

    #[test]
    fn challenge_certificate_and_csr() {
        let ck = tls_alpn_certificate("x.test", &[7u8; 32]).unwrap();
        assert_eq!(ck.cert.len(), 1);
        let (csr, key) = key_and_csr("x.test").unwrap();
        assert!(!csr.is_empty());
        assert!(key.contains("PRIVATE KEY"));
    }
}
