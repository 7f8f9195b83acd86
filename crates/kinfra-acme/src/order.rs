//! One ACME order for one domain: new order, the configured challenge put up on the proxy
//! (an HTTP-01 answer also published in the shared store, so any node of a fleet answers it),
//! validation, finalization with a fresh key, the certificate. Challenges are taken down
//! whatever the outcome.

use crate::cert::{key_and_csr, tls_alpn_certificate};
use crate::error::AcmeError;
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy,
};
use kinfra_core::config::ChallengeKind;
use kinfra_proxy::ChallengeStore;
use kinfra_store::Store;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, warn};

/// A new certificate: the PEM chain and its private key (PEM, secret).
pub(crate) struct Issued {
    pub(crate) chain_pem: String,
    pub(crate) key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field(
                "chain_pem",
                &format_args!("<{} bytes>", self.chain_pem.len()),
            )
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// What was put up on the proxy and published in the store for an order; taken down on drop
/// (the store's answers by a task of their own then; [`Posted::withdraw`] waits for them).
struct Posted {
    challenges: Arc<ChallengeStore>,
    store: Store,
    tokens: Vec<String>,
    published: Vec<String>,
    alpn_domains: Vec<String>,
}

impl Posted {
    /// Takes everything down, waiting until the store's answers are deleted.
    async fn withdraw(mut self) {
        for token in std::mem::take(&mut self.published) {
            if let Err(error) = self.store.delete_acme_challenge(&token).await {
                debug!(%error, "Withdrawing a published challenge answer failed; it expires.");
            }
        }
    }
}

impl Drop for Posted {
    fn drop(&mut self) {
        for token in &self.tokens {
            self.challenges.remove(token);
        }
        for domain in &self.alpn_domains {
            self.challenges.remove_tls_alpn(domain);
        }
        let published = std::mem::take(&mut self.published);
        if !published.is_empty()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let store = self.store.clone();
            runtime.spawn(async move {
                for token in published {
                    let _ = store.delete_acme_challenge(&token).await;
                }
            });
        }
    }
}

/// Runs one order for `domain` to the end (valid certificate, or an error).
/// An HTTP-01 answer is published in `store` for `timeout` (the longest the order may take).
pub(crate) async fn run_order(
    account: &Account,
    domain: &str,
    kind: ChallengeKind,
    challenges: &Arc<ChallengeStore>,
    store: &Store,
    timeout: Duration,
) -> Result<Issued, AcmeError> {
    let identifiers = [Identifier::Dns(domain.to_owned())];
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(AcmeError::acme("new order"))?;
    debug!(domain, url = order.url(), "ACME order created.");
    let mut posted = Posted {
        challenges: challenges.clone(),
        store: store.clone(),
        tokens: Vec::new(),
        published: Vec::new(),
        alpn_domains: Vec::new(),
    };
    let (wanted, kind_name) = match kind {
        ChallengeKind::Http01 => (ChallengeType::Http01, "http-01"),
        ChallengeKind::TlsAlpn01 => (ChallengeType::TlsAlpn01, "tls-alpn-01"),
    };
    {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(AcmeError::acme("authorization"))?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(AcmeError::Order(format!("authorization is {other:?}")));
                }
            }
            let name = authz.identifier().to_string();
            let mut challenge =
                authz
                    .challenge(wanted.clone())
                    .ok_or_else(|| AcmeError::NoChallenge {
                        domain: name.clone(),
                        kind: kind_name,
                    })?;
            let key_auth = challenge.key_authorization();
            match kind {
                ChallengeKind::Http01 => {
                    challenges.insert(&challenge.token, key_auth.as_str());
                    posted.tokens.push(challenge.token.clone());
                    // Any node of the fleet may be the one the CA connects to. Without the
                    // store only this node answers, which may still be enough.
                    match store
                        .save_acme_challenge(&challenge.token, key_auth.as_str(), timeout)
                        .await
                    {
                        Ok(()) => posted.published.push(challenge.token.clone()),
                        Err(error) => warn!(
                            domain = %name,
                            %error,
                            "Publishing the challenge answer to the fleet failed; only this node answers it."
                        ),
                    }
                }
                ChallengeKind::TlsAlpn01 => {
                    let cert = tls_alpn_certificate(&name, key_auth.digest().as_ref())?;
                    challenges.insert_tls_alpn(&name, cert);
                    posted.alpn_domains.push(name.clone());
                }
            }
            challenge
                .set_ready()
                .await
                .map_err(AcmeError::acme("challenge ready"))?;
        }
    }

    let polling = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(timeout);
    let status = match order.poll_ready(&polling).await {
        Ok(status) => status,
        Err(instant_acme::Error::Timeout(_)) => {
            return Err(AcmeError::Timeout {
                step: "validation",
                secs: timeout.as_secs(),
            });
        }
        Err(instant_acme::Error::Api(problem)) if problem.r#type.is_some() => {
            return Err(validation_error(&mut order, domain, Some(problem.to_string())).await);
        }
        Err(e) => return Err(AcmeError::acme("validation")(e)),
    };
    if status != OrderStatus::Ready {
        return Err(validation_error(&mut order, domain, None).await);
    }
    // Validation is over: nothing needs answering any more.
    posted.withdraw().await;

    let (csr, key_pem) = key_and_csr(domain)?;
    order
        .finalize_csr(&csr)
        .await
        .map_err(AcmeError::acme("finalize"))?;
    let chain_pem = match order.poll_certificate(&polling).await {
        Ok(chain) => chain,
        Err(instant_acme::Error::Timeout(_)) => {
            return Err(AcmeError::Timeout {
                step: "certificate",
                secs: timeout.as_secs(),
            });
        }
        Err(e) => return Err(AcmeError::acme("certificate")(e)),
    };
    Ok(Issued { chain_pem, key_pem })
}

/// The clearest reason an order failed validation: the failed challenge's problem detail.
async fn validation_error(
    order: &mut instant_acme::Order,
    domain: &str,
    fallback: Option<String>,
) -> AcmeError {
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        let Ok(state) = authz.refresh().await else {
            continue;
        };
        if state.status == AuthorizationStatus::Valid {
            continue;
        }
        let name = state.identifier().to_string();
        for challenge in &state.challenges {
            if let Some(problem) = &challenge.error {
                let detail = problem
                    .detail
                    .clone()
                    .unwrap_or_else(|| problem.to_string());
                let kind = problem
                    .r#type
                    .as_deref()
                    .unwrap_or("")
                    .trim_start_matches("urn:ietf:params:acme:error:");
                return AcmeError::Validation {
                    domain: name,
                    detail: if kind.is_empty() {
                        detail
                    } else {
                        format!("{detail} ({kind})")
                    },
                };
            }
        }
    }
    AcmeError::Validation {
        domain: domain.to_owned(),
        detail: fallback.unwrap_or_else(|| "the order became invalid".into()),
    }
}
