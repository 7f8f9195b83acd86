//! The HTTP client that talks to the ACME server (rustls with ring, the system's roots plus
//! `acme.ca_roots`, a time limit per request) and the account: created once, stored, reused.

use crate::error::AcmeError;
use bytes::Bytes;
use instant_acme::{Account, AccountCredentials, BodyWrapper, BytesResponse, HttpClient};
use kinfra_core::secret::Secret;
use kinfra_store::Store;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info};

/// The process's one rustls crypto provider (see `kinfra_core::tls`), under the name this
/// crate has always exported.
pub use kinfra_core::tls::install_crypto_provider as ensure_crypto_provider;

/// An HTTP client with a time limit on each request, so a CA that stops answering ends the
/// attempt instead of hanging it.
struct TimedClient {
    inner: Box<dyn HttpClient>,
    timeout: Duration,
}

impl HttpClient for TimedClient {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let fut = self.inner.request(req);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, fut).await {
                Ok(result) => result,
                Err(_) => Err(instant_acme::Error::Other(
                    format!(
                        "no answer from the ACME server within {}s",
                        timeout.as_secs()
                    )
                    .into(),
                )),
            }
        })
    }
}

/// Builds the HTTP client: the system's root certificates plus every certificate in
/// `ca_roots` (PEM files).
pub(crate) fn http_client(
    ca_roots: &[PathBuf],
    timeout: Duration,
) -> Result<Box<dyn HttpClient>, AcmeError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(native.certs);
    debug!(added, "System root certificates loaded.");
    for path in ca_roots {
        let bytes = std::fs::read(path).map_err(|e| AcmeError::CaRoot {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
            .filter_map(Result::ok)
            .collect();
        if certs.is_empty() {
            return Err(AcmeError::CaRoot {
                path: path.clone(),
                reason: "no PEM certificate in the file".into(),
            });
        }
        for cert in certs {
            roots.add(cert).map_err(|e| AcmeError::CaRoot {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AcmeError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    let client: hyper_util::client::legacy::Client<_, BodyWrapper<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector);
    Ok(Box::new(TimedClient {
        inner: Box::new(client),
        timeout,
    }))
}

/// Where accounts come from: the store first, the CA when there is none.
pub(crate) struct Accounts {
    pub(crate) directory: String,
    pub(crate) email: Option<String>,
    pub(crate) ca_roots: Vec<PathBuf>,
    pub(crate) timeout: Duration,
    pub(crate) store: Store,
    current: tokio::sync::Mutex<Option<Account>>,
}

impl Accounts {
    pub(crate) fn new(
        directory: String,
        email: Option<String>,
        ca_roots: Vec<PathBuf>,
        timeout: Duration,
        store: Store,
    ) -> Self {
        Self {
            directory,
            email,
            ca_roots,
            timeout,
            store,
            current: tokio::sync::Mutex::new(None),
        }
    }

    /// The account: the one in memory, else the stored one, else a new one (stored before it
    /// is used). Concurrent callers wait for one creation.
    pub(crate) async fn get(&self) -> Result<Account, AcmeError> {
        let mut current = self.current.lock().await;
        if let Some(account) = current.as_ref() {
            return Ok(account.clone());
        }
        let http = http_client(&self.ca_roots, self.timeout)?;
        let account = match self.store.acme_account(&self.directory).await? {
            Some(secret) => {
                let credentials: AccountCredentials = serde_json::from_str(secret.expose())
                    .map_err(|e| {
                        AcmeError::Certificate(format!("stored ACME account unreadable: {e}"))
                    })?;
                let account = Account::builder_with_http(http)
                    .from_credentials(credentials)
                    .await
                    .map_err(AcmeError::acme("directory"))?;
                debug!(directory = %self.directory, "ACME account loaded from the store.");
                account
            }
            None => self.create(http).await?,
        };
        *current = Some(account.clone());
        Ok(account)
    }

    /// Forgets the account (the CA does not know it): the next [`Accounts::get`] creates one.
    pub(crate) async fn forget(&self) -> Result<(), AcmeError> {
        let mut current = self.current.lock().await;
        *current = None;
        let http = http_client(&self.ca_roots, self.timeout)?;
        *current = Some(self.create(http).await?);
        Ok(())
    }

    async fn create(&self, http: Box<dyn HttpClient>) -> Result<Account, AcmeError> {
        let contact = self.email.as_ref().map(|e| format!("mailto:{e}"));
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        let (account, credentials) = Account::builder_with_http(http)
            .create(
                &instant_acme::NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.directory.clone(),
                None,
            )
            .await
            .map_err(AcmeError::acme("new account"))?;
        let json = serde_json::to_string(&credentials)
            .map_err(|e| AcmeError::Certificate(format!("ACME account: {e}")))?;
        self.store
            .save_acme_account(&self.directory, &Secret::new(json))
            .await?;
        info!(directory = %self.directory, "ACME account created.");
        Ok(account)
    }
}
