//! The certificate manager: one task per configured domain that serves the stored certificate
//! at once, orders a new one when none is stored or renewal is due, and retries failures on a
//! capped backoff. Orders are serialized across instances sharing a store by a lock with an
//! owner and an expiry, and limited per account by a rate guard.

use crate::cert::{CertInfo, epoch_ms, rfc3339};
use crate::client::{Accounts, ensure_crypto_provider, http_client};
use crate::error::AcmeError;
use crate::order::{Issued, run_order};
use kinfra_core::config::{AcmeConfig, ChallengeKind};
use kinfra_core::event::{EventKind, EventSender};
use kinfra_proxy::{CertStore, ChallengeStore};
use kinfra_store::{Store, StoredCertificate};
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// Settings of the certificate manager that are not part of `[acme]`: where to export, who
/// this instance is, and time limits. The defaults suit production.
#[derive(Debug, Clone)]
pub struct AcmeOptions {
    /// The state dir; PEM files are exported under `acme/` in it when `acme.export_pem` is on.
    pub state_dir: Option<PathBuf>,
    /// This instance's name in the order lock (host, PID and a random part by default).
    pub owner: String,
    /// How long a taken lock is valid without being released; a crashed holder's lock is taken
    /// over after this.
    pub lock_ttl: Duration,
    /// How long to wait before looking again when another instance holds the lock.
    pub lock_wait: Duration,
    /// The longest an order may take from creation to certificate.
    pub order_timeout: Duration,
    /// The time limit of one HTTP request to the ACME server.
    pub request_timeout: Duration,
    /// Orders retried at once (after `quick_retry_delay`) on a transient failure (lost
    /// connection, bad nonce, server error) before the failure counts for the backoff.
    pub quick_retries: u32,
    /// The delay before such a retry.
    pub quick_retry_delay: Duration,
    /// How often a domain's stored certificate is read again while it is valid or another
    /// instance holds the order lock: a certificate another instance sharing the store stored
    /// (its renewal) is served from then on, without a restart.
    pub watch_interval: Duration,
}

impl Default for AcmeOptions {
    fn default() -> Self {
        Self {
            state_dir: None,
            owner: default_owner(),
            lock_ttl: Duration::from_secs(600),
            lock_wait: Duration::from_secs(30),
            order_timeout: Duration::from_secs(180),
            request_timeout: Duration::from_secs(30),
            quick_retries: 2,
            quick_retry_delay: Duration::from_secs(3),
            watch_interval: Duration::from_secs(15),
        }
    }
}

/// `host:pid:random`, unique per running instance.
fn default_owner() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".into());
    format!("{host}:{}:{:08x}", std::process::id(), random_u32())
}

fn random_u32() -> u32 {
    kinfra_core::random::u64().map_or(0, |v| v as u32)
}

/// Where a domain's certificate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CertState {
    /// No certificate yet; the first order is due.
    Pending,
    /// An order is running.
    Ordering,
    /// A valid certificate is served.
    Valid,
    /// The served certificate is due for renewal (it is still served).
    RenewalDue,
    /// The last order failed; it is retried at `next_attempt`.
    Failed,
    /// Another instance holds the order lock.
    Waiting,
    /// The stored certificate has expired and no new one could be had yet.
    Expired,
}

/// One domain's certificate, for `/__status__` and the dashboard. Holds no key material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertStatus {
    /// The domain.
    pub domain: String,
    /// Where it stands.
    pub state: CertState,
    /// The challenge used to get it.
    pub challenge: &'static str,
    /// Start of validity of the served certificate, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    /// Expiry of the served certificate, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// When renewal is due, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renew_at: Option<String>,
    /// The issuer of the served certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The last failure, for people.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Failures in a row.
    pub failures: u32,
    /// When the next attempt is due after a failure, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<String>,
    /// Orders this instance placed for the domain.
    pub orders: u64,
}

struct Shared {
    config: AcmeConfig,
    options: AcmeOptions,
    store: Store,
    certs: Arc<CertStore>,
    challenges: Arc<ChallengeStore>,
    events: EventSender,
    accounts: Accounts,
    /// The account's rate guard.
    guard: Mutex<RateGuard>,
    status: Mutex<BTreeMap<String, CertStatus>>,
    orders: AtomicU64,
}

impl Shared {
    fn challenge_name(&self) -> &'static str {
        match self.config.challenge {
            ChallengeKind::Http01 => "http-01",
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
        }
    }

    fn update(&self, domain: &str, f: impl FnOnce(&mut CertStatus)) {
        let mut status = self.status.lock();
        let entry = status
            .entry(domain.to_owned())
            .or_insert_with(|| CertStatus {
                domain: domain.to_owned(),
                state: CertState::Pending,
                challenge: self.challenge_name(),
                not_before: None,
                not_after: None,
                renew_at: None,
                issuer: None,
                last_error: None,
                failures: 0,
                next_attempt: None,
                orders: 0,
            });
        f(entry);
    }

    /// Takes a slot of the rate guard, or says how long until one is free.
    fn take_order_slot(&self) -> Result<(), Duration> {
        self.guard.lock().take(Instant::now())
    }

    /// Gives back the slot taken last (the order was not placed after all).
    fn give_back_order_slot(&self) {
        self.guard.lock().give_back();
    }

    fn backoff(&self, failures: u32) -> Duration {
        backoff(
            self.config.retry_min.0,
            self.config.retry_max.0,
            failures,
            random_u32() % 1000,
        )
    }
}

/// The delay after `failures` failures in a row: `min` doubled per failure, at most `max`,
/// plus `jitter_permille / 10` percent (under 10 %) so instances do not retry in step.
fn backoff(min: Duration, max: Duration, failures: u32, jitter_permille: u32) -> Duration {
    let max = max.max(min);
    let exp = failures.saturating_sub(1).min(30);
    let base = min.saturating_mul(1u32 << exp).min(max);
    let jitter = base.mul_f64(f64::from(jitter_permille.min(999)) / 10_000.0);
    (base + jitter).min(max)
}

/// At most `limit` orders in any hour (per account: every domain's orders count).
#[derive(Debug)]
struct RateGuard {
    limit: usize,
    /// Start times of the orders of the last hour, oldest first.
    started: VecDeque<Instant>,
}

impl RateGuard {
    const WINDOW: Duration = Duration::from_secs(3600);

    fn new(per_hour: u32) -> Self {
        Self {
            limit: usize::try_from(per_hour.max(1)).unwrap_or(usize::MAX),
            started: VecDeque::new(),
        }
    }

    /// Counts an order starting `now`, or says how long until one may start.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        while self
            .started
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= Self::WINDOW)
        {
            self.started.pop_front();
        }
        if self.started.len() >= self.limit {
            let oldest = self.started.front().copied().unwrap_or(now);
            return Err(Self::WINDOW.saturating_sub(now.saturating_duration_since(oldest)));
        }
        self.started.push_back(now);
        Ok(())
    }

    fn give_back(&mut self) {
        self.started.pop_back();
    }
}

/// A stored certificate that can be served.
struct Current {
    chain_pem: String,
    info: CertInfo,
}

/// The automatic HTTPS service. See [`AcmeService::start`].
#[derive(Debug)]
pub struct AcmeService;

impl AcmeService {
    /// Starts managing certificates for `config.domains`: serves the stored ones at once
    /// (before returning), then orders or renews in the background. `certs` is the proxy's
    /// certificate store, `challenges` its challenge answers.
    ///
    /// Fails only on a configuration that can never work (an unreadable `ca_roots` file).
    pub async fn start(
        config: AcmeConfig,
        options: AcmeOptions,
        store: Store,
        certs: Arc<CertStore>,
        challenges: Arc<ChallengeStore>,
        events: EventSender,
    ) -> Result<AcmeHandle, AcmeError> {
        ensure_crypto_provider();
        let mut options = options;
        // The lock must outlive the longest order, or a second instance could take it over
        // from a holder that is still ordering.
        let needed = options.order_timeout.saturating_mul(2) + options.request_timeout;
        if options.lock_ttl < needed {
            debug!(lock_ttl = ?options.lock_ttl, ?needed, "ACME lock TTL raised to outlive an order.");
            options.lock_ttl = needed;
        }
        // A zero interval would read the store in a busy loop.
        options.watch_interval = options.watch_interval.max(Duration::from_millis(100));
        // Checks the extra roots now, so a wrong path fails the start.
        http_client(&config.ca_roots, options.request_timeout)?;
        let mut domains: Vec<String> = config
            .domains
            .iter()
            .map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase())
            .filter(|d| !d.is_empty())
            .collect();
        domains.sort();
        domains.dedup();
        let accounts = Accounts::new(
            config.directory.clone(),
            config.email.clone(),
            config.ca_roots.clone(),
            options.request_timeout,
            store.clone(),
        );
        // A token another node of the fleet published is answered here too.
        challenges.set_lookup(Arc::new(crate::challenge::SharedAnswers::new(
            store.clone(),
        )));
        let guard = Mutex::new(RateGuard::new(config.orders_per_hour));
        let shared = Arc::new(Shared {
            config,
            options,
            store,
            certs,
            challenges,
            events,
            accounts,
            guard,
            status: Mutex::new(BTreeMap::new()),
            orders: AtomicU64::new(0),
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = Vec::with_capacity(domains.len());
        for domain in domains {
            shared.update(&domain, |_| {});
            let installed = match load_and_install(&shared, &domain, None).await {
                Ok(current) => current.map(|c| c.chain_pem),
                Err(error) => {
                    warn!(domain = %domain, %error, "Stored certificate could not be loaded.");
                    None
                }
            };
            let task = ManagedDomain {
                shared: shared.clone(),
                domain,
                shutdown: shutdown_rx.clone(),
                installed,
                failures: 0,
                next_attempt: None,
            };
            tasks.push(tokio::spawn(task.run()));
        }
        Ok(AcmeHandle {
            shared,
            shutdown,
            tasks,
        })
    }
}

/// Reads the stored certificate of `domain` and serves it when it is usable and differs from
/// `installed` (the chain served now). Returns the usable stored certificate.
async fn load_and_install(
    shared: &Shared,
    domain: &str,
    installed: Option<&str>,
) -> Result<Option<Current>, AcmeError> {
    let Some(stored) = shared.store.certificate(&[domain.to_owned()]).await? else {
        return Ok(None);
    };
    let info = match CertInfo::from_pem(&stored.cert_pem) {
        Ok(info) if info.covers(domain) => info,
        Ok(_) => {
            warn!(domain = %domain, "Stored certificate does not name the domain; ignored.");
            return Ok(None);
        }
        Err(error) => {
            warn!(domain = %domain, %error, "Stored certificate unreadable; ignored.");
            return Ok(None);
        }
    };
    if installed != Some(stored.cert_pem.as_str()) {
        if info.not_after <= SystemTime::now() {
            debug!(domain = %domain, "Stored certificate has expired; not served.");
            set_cert_status(shared, domain, &info, CertState::Expired);
            return Ok(Some(Current {
                chain_pem: stored.cert_pem,
                info,
            }));
        }
        match kinfra_proxy::tls::certified_key_from_pem(
            stored.cert_pem.as_bytes(),
            stored.key_pem.as_bytes(),
        ) {
            Ok(key) => {
                shared.certs.insert(domain, Arc::new(key));
                info!(domain = %domain, not_after = %rfc3339(info.not_after), "Serving the stored certificate.");
            }
            Err(error) => {
                warn!(domain = %domain, %error, "Stored certificate or key unusable; ignored.");
                return Ok(None);
            }
        }
    }
    let renew_before = shared.config.renew_before.map(|d| d.0);
    let state = if info.renew_at(renew_before) <= SystemTime::now() {
        CertState::RenewalDue
    } else {
        CertState::Valid
    };
    set_cert_status(shared, domain, &info, state);
    Ok(Some(Current {
        chain_pem: stored.cert_pem,
        info,
    }))
}

fn set_cert_status(shared: &Shared, domain: &str, info: &CertInfo, state: CertState) {
    let renew_before = shared.config.renew_before.map(|d| d.0);
    shared.update(domain, |s| {
        s.state = state;
        s.not_before = Some(rfc3339(info.not_before));
        s.not_after = Some(rfc3339(info.not_after));
        s.renew_at = Some(rfc3339(info.renew_at(renew_before)));
        s.issuer = Some(info.issuer.clone());
    });
}

/// The loop of one domain.
struct ManagedDomain {
    shared: Arc<Shared>,
    domain: String,
    shutdown: watch::Receiver<bool>,
    /// The chain served now (from the store or a new order).
    installed: Option<String>,
    failures: u32,
    next_attempt: Option<Instant>,
}

enum Wake {
    Timer,
    Shutdown,
}

impl ManagedDomain {
    async fn sleep(&mut self, d: Duration) -> Wake {
        if *self.shutdown.borrow() {
            return Wake::Shutdown;
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => Wake::Timer,
            _ = self.shutdown.changed() => Wake::Shutdown,
        }
    }

    async fn run(mut self) {
        let shared = self.shared.clone();
        let domain = self.domain.clone();
        let lock_name = format!("cert:{domain}");
        let renew_before = shared.config.renew_before.map(|d| d.0);
        loop {
            if *self.shutdown.borrow() {
                break;
            }
            // Another instance sharing the store may have renewed: serve what is stored.
            let current = match load_and_install(&shared, &domain, self.installed.as_deref()).await
            {
                Ok(current) => current,
                Err(error) => {
                    warn!(domain = %domain, %error, "Reading the stored certificate failed.");
                    None
                }
            };
            if let Some(c) = &current
                && c.info.not_after > SystemTime::now()
            {
                self.installed = Some(c.chain_pem.clone());
            }
            let now = SystemTime::now();
            if let Some(c) = &current {
                let renew_at = c.info.renew_at(renew_before);
                if renew_at > now {
                    self.failures = 0;
                    self.next_attempt = None;
                    let until = renew_at.duration_since(now).unwrap_or_default();
                    // Woken at the watch interval too, to serve a certificate another
                    // instance stored in the meantime.
                    let wait = until
                        .min(shared.config.check_interval.0)
                        .min(shared.options.watch_interval);
                    debug!(domain = %domain, renew_in = ?until, "Certificate valid.");
                    if let Wake::Shutdown = self.sleep(wait).await {
                        break;
                    }
                    continue;
                }
            }
            if let Some(at) = self.next_attempt {
                let now = Instant::now();
                if at > now {
                    // Backing off (or held by the rate guard) still looks at the store every
                    // watch interval: another node may store the certificate meanwhile.
                    let wait = (at - now).min(shared.options.watch_interval);
                    if let Wake::Shutdown = self.sleep(wait).await {
                        break;
                    }
                    continue;
                }
            }
            if let Err(wait) = shared.take_order_slot() {
                warn!(domain = %domain, wait = ?wait, "ACME rate guard: order postponed.");
                self.next_attempt = Some(Instant::now() + wait);
                shared.update(&domain, |s| {
                    s.next_attempt = Some(rfc3339(SystemTime::now() + wait));
                    s.last_error = Some("postponed by the rate guard".into());
                });
                continue;
            }
            match shared
                .store
                .try_acme_lock(&lock_name, &shared.options.owner, shared.options.lock_ttl)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    debug!(domain = %domain, "Another instance is ordering this certificate.");
                    shared.update(&domain, |s| s.state = CertState::Waiting);
                    // The slot was not used.
                    shared.give_back_order_slot();
                    let wait = shared.options.lock_wait.min(shared.options.watch_interval);
                    if let Wake::Shutdown = self.sleep(wait).await {
                        break;
                    }
                    continue;
                }
                Err(error) => {
                    shared.give_back_order_slot();
                    self.failed(&current, &AcmeError::from(error));
                    continue;
                }
            }
            // The lock holder before us may have stored a fresh certificate.
            if let Ok(Some(c)) = load_and_install(&shared, &domain, self.installed.as_deref()).await
                && c.info.renew_at(renew_before) > SystemTime::now()
            {
                shared.give_back_order_slot();
                self.installed = Some(c.chain_pem);
                self.release(&lock_name).await;
                continue;
            }
            shared.update(&domain, |s| s.state = CertState::Ordering);
            let mut shutdown = self.shutdown.clone();
            let outcome = tokio::select! {
                r = self.attempt() => Some(r),
                _ = shutdown.changed() => None,
            };
            match outcome {
                None => {
                    self.release(&lock_name).await;
                    break;
                }
                Some(Ok(issued)) => {
                    if let Err(error) = self.issued(issued, current.is_some()).await {
                        self.failed(&current, &error);
                    }
                }
                Some(Err(error)) => self.failed(&current, &error),
            }
            self.release(&lock_name).await;
        }
        debug!(domain = %domain, "Certificate manager stopped.");
    }

    async fn release(&self, lock_name: &str) {
        if let Err(error) = self
            .shared
            .store
            .release_acme_lock(lock_name, &self.shared.options.owner)
            .await
        {
            warn!(domain = %self.domain, %error, "Releasing the ACME lock failed; it expires.");
        }
    }

    /// One attempt: an order, retried at once on transient failures, with a new account
    /// when the CA does not know the stored one.
    async fn attempt(&self) -> Result<Issued, AcmeError> {
        let shared = &self.shared;
        let mut quick = 0;
        let mut new_account = false;
        loop {
            let result = async {
                let account = shared.accounts.get().await?;
                shared.orders.fetch_add(1, Ordering::Relaxed);
                shared.update(&self.domain, |s| s.orders += 1);
                tokio::time::timeout(
                    shared.options.order_timeout,
                    run_order(
                        &account,
                        &self.domain,
                        shared.config.challenge,
                        &shared.challenges,
                        &shared.store,
                        shared.options.order_timeout,
                    ),
                )
                .await
                .unwrap_or(Err(AcmeError::Timeout {
                    step: "order",
                    secs: shared.options.order_timeout.as_secs(),
                }))
            }
            .await;
            match result {
                Ok(issued) => return Ok(issued),
                Err(error) if error.is_unknown_account() && !new_account => {
                    warn!(domain = %self.domain, %error, "The CA does not know the stored account; creating a new one.");
                    new_account = true;
                    shared.accounts.forget().await?;
                }
                Err(error) if error.is_transient() && quick < shared.options.quick_retries => {
                    quick += 1;
                    debug!(domain = %self.domain, %error, attempt = quick, "Transient ACME failure; retrying.");
                    tokio::time::sleep(shared.options.quick_retry_delay).await;
                    if shared.take_order_slot().is_err() {
                        return Err(error);
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Stores, serves, exports and announces a new certificate.
    async fn issued(&mut self, issued: Issued, renewal: bool) -> Result<(), AcmeError> {
        let shared = &self.shared;
        let domain = &self.domain;
        let info = CertInfo::from_pem(&issued.chain_pem)?;
        if !info.covers(domain) {
            return Err(AcmeError::Certificate(format!(
                "the certificate does not name {domain}"
            )));
        }
        let key = kinfra_proxy::tls::certified_key_from_pem(
            issued.chain_pem.as_bytes(),
            issued.key_pem.as_bytes(),
        )
        .map_err(|e| AcmeError::Certificate(e.to_string()))?;
        // Stored first: the old certificate stays served until the new one is safe.
        shared
            .store
            .save_certificate(&StoredCertificate {
                domains: vec![domain.clone()],
                cert_pem: issued.chain_pem.clone(),
                key_pem: issued.key_pem.clone(),
                not_after_ms: Some(epoch_ms(info.not_after)),
            })
            .await?;
        shared.certs.insert(domain, Arc::new(key));
        self.installed = Some(issued.chain_pem.clone());
        self.failures = 0;
        self.next_attempt = None;
        set_cert_status(shared, domain, &info, CertState::Valid);
        shared.update(domain, |s| {
            s.failures = 0;
            s.last_error = None;
            s.next_attempt = None;
        });
        if shared.config.export_pem
            && let Some(dir) = &shared.options.state_dir
        {
            match crate::export::export(dir, domain, &issued.chain_pem, &issued.key_pem) {
                Ok(path) => {
                    debug!(domain = %domain, path = %path.display(), "Certificate exported.")
                }
                Err(error) => warn!(domain = %domain, %error, "Exporting the certificate failed."),
            }
        }
        info!(domain = %domain, not_after = %rfc3339(info.not_after), renewal, "Certificate issued.");
        shared.events.emit(EventKind::CertIssued {
            domains: vec![domain.clone()],
            not_after: rfc3339(info.not_after),
            renewal,
        });
        Ok(())
    }

    fn failed(&mut self, current: &Option<Current>, error: &AcmeError) {
        let shared = &self.shared;
        self.failures = self.failures.saturating_add(1);
        let delay = shared.backoff(self.failures);
        self.next_attempt = Some(Instant::now() + delay);
        let message = error_chain(error);
        warn!(domain = %self.domain, error = %message, attempt = self.failures, retry_in = ?delay, "Certificate order failed.");
        let state = match current {
            Some(c) if c.info.not_after <= SystemTime::now() => CertState::Expired,
            _ => CertState::Failed,
        };
        let failures = self.failures;
        shared.update(&self.domain, |s| {
            s.state = state;
            s.failures = failures;
            s.last_error = Some(message.clone());
            s.next_attempt = Some(rfc3339(SystemTime::now() + delay));
        });
        shared.events.emit(EventKind::CertRenewalFailed {
            domains: vec![self.domain.clone()],
            error: message,
            attempt: self.failures,
            retry_in_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        });
    }
}

/// `error` with its sources, each added when the text so far does not already say it
/// (`new order: client error (Connect): tcp connect error: Connection refused`).
fn error_chain(error: &AcmeError) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// The running service: status, and a graceful stop.
#[derive(Debug)]
pub struct AcmeHandle {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("directory", &self.config.directory)
            .field("domains", &self.config.domains)
            .finish_non_exhaustive()
    }
}

impl AcmeHandle {
    /// One entry per domain, sorted by domain.
    pub fn status(&self) -> Vec<CertStatus> {
        self.shared.status.lock().values().cloned().collect()
    }

    /// [`AcmeHandle::status`] as JSON values, for `StatusReport::certificates`.
    pub fn status_json(&self) -> Vec<serde_json::Value> {
        self.status()
            .iter()
            .filter_map(|s| serde_json::to_value(s).ok())
            .collect()
    }

    /// Orders this instance has placed since it started (every `newOrder` request).
    pub fn orders(&self) -> u64 {
        self.shared.orders.load(Ordering::Relaxed)
    }

    /// Stops the service: an order in flight is abandoned (its challenges taken down, its
    /// lock released); served certificates stay in the proxy.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        self.shared.challenges.clear_lookup();
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

impl Drop for AcmeHandle {
    /// A handle dropped without [`AcmeHandle::shutdown`] still stops its tasks (without
    /// waiting for them).
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.shared.challenges.clear_lookup();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let (min, max) = (Duration::from_secs(60), Duration::from_secs(3600));
        let b = |n| backoff(min, max, n, 0).as_secs();
        assert_eq!(
            [b(1), b(2), b(3), b(4), b(6), b(7), b(50)],
            [60, 120, 240, 480, 1920, 3600, 3600]
        );
        assert_eq!(backoff(min, max, 1, 999), Duration::from_millis(65_994));
        assert_eq!(
            backoff(min, max, 9, 999),
            max,
            "jitter never passes the cap"
        );
        assert_eq!(
            backoff(min, Duration::ZERO, 3, 0),
            min,
            "a cap below the minimum"
        );
    }

    #[test]
    fn rate_guard_allows_a_number_per_hour() {
        let mut g = RateGuard::new(2);
        let t0 = Instant::now();
        assert!(g.take(t0).is_ok());
        assert!(g.take(t0 + Duration::from_secs(10)).is_ok());
        let wait = g.take(t0 + Duration::from_secs(20)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(3580));
        g.give_back();
        assert!(g.take(t0 + Duration::from_secs(20)).is_ok());
        assert!(
            g.take(t0 + Duration::from_secs(3600)).is_ok(),
            "the oldest left the window"
        );
    }
}
