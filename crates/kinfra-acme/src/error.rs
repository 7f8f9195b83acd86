//! Why getting a certificate failed, and whether trying again soon can help.

use std::path::PathBuf;

/// An ACME failure. Messages carry the CA's problem detail and never key material.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The ACME server answered with a problem document, or could not be reached.
    #[error("{step}: {source}")]
    Acme {
        /// What was being done (`new order`, `finalize`, ...).
        step: &'static str,
        /// The client's error.
        #[source]
        source: instant_acme::Error,
    },
    /// A challenge was rejected by the CA (the validation failed).
    #[error("validation of {domain} failed: {detail}")]
    Validation {
        /// The domain whose authorization failed.
        domain: String,
        /// The CA's explanation.
        detail: String,
    },
    /// The CA offered no challenge of the configured kind.
    #[error("the CA offers no {kind} challenge for {domain}")]
    NoChallenge {
        /// The domain.
        domain: String,
        /// `http-01` or `tls-alpn-01`.
        kind: &'static str,
    },
    /// The order took longer than allowed.
    #[error("{step} timed out after {secs}s")]
    Timeout {
        /// What was being waited for.
        step: &'static str,
        /// The limit, in seconds.
        secs: u64,
    },
    /// The order ended in a state other than valid.
    #[error("order ended {0}")]
    Order(String),
    /// The certificate the CA returned cannot be used.
    #[error("unusable certificate: {0}")]
    Certificate(String),
    /// A file of `acme.ca_roots` cannot be read or holds no certificate.
    #[error("{path}: {reason}")]
    CaRoot {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS client for the ACME server cannot be built.
    #[error("TLS client for the ACME server: {0}")]
    Tls(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] kinfra_store::StoreError),
    /// Writing the exported PEM files failed.
    #[error("{path}: {source}")]
    Export {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl AcmeError {
    pub(crate) fn acme(step: &'static str) -> impl FnOnce(instant_acme::Error) -> AcmeError {
        move |source| AcmeError::Acme { step, source }
    }

    /// The ACME problem type (`urn:ietf:params:acme:error:...`), when the CA sent one.
    pub fn problem_type(&self) -> Option<&str> {
        match self {
            AcmeError::Acme {
                source: instant_acme::Error::Api(problem),
                ..
            } => problem.r#type.as_deref(),
            _ => None,
        }
    }

    /// True when the account the stored credentials name is unknown to the CA (a CA that
    /// lost its state, or a test CA restarted): a new account is created.
    pub(crate) fn is_unknown_account(&self) -> bool {
        self.problem_type() == Some("urn:ietf:params:acme:error:accountDoesNotExist")
    }

    /// True for failures that another try a few seconds later can fix (a lost connection, a
    /// bad nonce, a server error); false for the CA's considered answers (validation failed,
    /// rate limited, rejected identifier), which wait for the backoff schedule.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            AcmeError::Acme { source, .. } => match source {
                instant_acme::Error::Api(problem) => {
                    matches!(
                        problem.r#type.as_deref(),
                        Some("urn:ietf:params:acme:error:badNonce")
                            | Some("urn:ietf:params:acme:error:serverInternal")
                    ) || problem.status.is_some_and(|s| s >= 500)
                }
                instant_acme::Error::Hyper(_)
                | instant_acme::Error::Other(_)
                | instant_acme::Error::Timeout(_) => true,
                _ => false,
            },
            AcmeError::Timeout { .. } | AcmeError::Store(_) => true,
            _ => false,
        }
    }
}
