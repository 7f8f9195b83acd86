//! kinfra's embedded store: SurrealDB for the runtime's state, its history and the user's own
//! data. The only crate that speaks SurrealQL.
//!
//! - **Where:** `surrealkv` files under `STATE_DIR/db` by default, `mem://` for tests, or a
//!   SurrealDB server at `ws://` / `wss://` (`[store] url`). With `sync = true` (the default)
//!   every commit is synced to disk; the choice is logged at boot.
//! - **Schema:** versioned ([`schema`]), applied at boot and upgraded in place; a database
//!   written by a newer kinfra is refused rather than misread.
//! - **Writes never block kinfra:** [`Store::record_events`] consumes the event channel into a
//!   queue; one writer task commits in batches, retries failures with backoff, counts them
//!   ([`Store::stats`]) and logs them. See [`writer`].
//! - **Boot:** [`Store::boot`] migrates `ports.json` / `stopped.json` from the state dir, stops
//!   processes that runs recorded as live by a killed instance still hold, and returns the
//!   supervisor's [`Persistence`] (ports, restart counts, last exits, user stops).
//! - **The user's data:** [`Store::user_db`] is a handle on a separate namespace/database in
//!   the same engine. It is a separation, not a security boundary: code in the same process
//!   can always switch namespaces.
//! - **One owner:** a data directory is locked (`DIR.lock`, `flock`) for as long as the store
//!   is open; a second opener gets [`StoreError::Locked`] naming the path. On a server, a
//!   lease on kinfra's namespace/database does the same ([`StoreError::InUse`]): runtimes
//!   sharing a server each need their own `[store] database` (the user's database may be
//!   shared).
//! - **What a fleet shares:** the ACME account, certificates, order lock and HTTP-01
//!   challenge answers live in `[store] shared_database` (its own versioned schema), which
//!   every node on the server sees; see [`shared`].
//! - **A server that goes away:** queries to it are bounded, failed writes are retried until
//!   it returns (the client reconnects by itself), and the failure shows in [`Store::stats`].

pub mod boot;
mod error;
pub mod kv;
pub mod open;
mod owner;
mod read;
pub mod records;
pub mod schema;
pub mod shared;
pub mod writer;

pub use error::StoreError;
pub use kinfra_core::persist::{LeftRunning, Persistence, ServiceHistory, StateSink};
pub use open::Location;
pub use records::{RunRecord, StoreStats, StoredCertificate, StoredEvent};
/// The SurrealDB SDK this crate uses, so callers can name its types without depending on it.
pub use surrealdb;

use kinfra_core::config::StoreConfig;
use kinfra_core::event::{Event, EventKind};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use writer::{Op, Retention, Shared, Writer};

/// A SurrealDB handle (embedded or remote).
pub type Db = surrealdb::Surreal<surrealdb::engine::any::Any>;

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch of an RFC 3339 timestamp.
pub(crate) fn rfc3339_ms(ts: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339_weak(ts).ok()?;
    let d = t.duration_since(UNIX_EPOCH).ok()?;
    u64::try_from(d.as_millis()).ok()
}

/// Statement `idx` of a response as JSON.
pub(crate) fn json_of<T: serde::de::DeserializeOwned>(
    resp: &mut surrealdb::IndexedResults,
    idx: usize,
    what: &'static str,
) -> Result<T, StoreError> {
    let value: surrealdb::types::Value = resp.take(idx).map_err(|e| StoreError::query(what, e))?;
    serde_json::from_value(value.into_json_value()).map_err(|e| StoreError::malformed(what, e))
}

/// The embedded store. Cheap to clone; [`Store::shutdown`] closes it for every clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    /// kinfra's own session; `None` once shut down.
    db: RwLock<Option<Db>>,
    /// The user's session (another namespace/database).
    user: RwLock<Option<Db>>,
    /// The session on the shared database (ACME material every node sees).
    acme: RwLock<Option<Db>>,
    /// The shared database's name.
    shared_database: String,
    location: Location,
    boot: String,
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
    receivers: Mutex<Vec<JoinHandle<()>>>,
    stop_receivers: watch::Sender<bool>,
    lock: Mutex<Option<kinfra_core::lockfile::LockFile>>,
    /// How long a query to a server may go unanswered; `None` embedded.
    answer_timeout: Option<Duration>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropped without `shutdown`: stop recording, and let the writer finish what is queued
        // (bounded) and end, which closes the engine.
        self.stop_receivers.send_replace(true);
        self.shared.closing.send_if_modified(|c| {
            if c.is_none() {
                *c = Some(tokio::time::Instant::now() + Duration::from_secs(5));
                true
            } else {
                false
            }
        });
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("location", &self.inner.location)
            .field("boot", &self.inner.boot)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn read_handle(l: &RwLock<Option<Db>>) -> Option<Db> {
    match l.read() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    }
}

fn take_handle(l: &RwLock<Option<Db>>) -> Option<Db> {
    match l.write() {
        Ok(mut g) => g.take(),
        Err(p) => p.into_inner().take(),
    }
}

/// The newest `n` in a table (0 when empty).
async fn last_n(db: &Db, table: &'static str) -> Result<u64, StoreError> {
    let mut resp = db
        .query(format!(
            "SELECT VALUE n FROM {table} ORDER BY n DESC LIMIT 1"
        ))
        .await
        .map_err(|e| StoreError::query(table, e))?;
    let v: Vec<u64> = json_of(&mut resp, 0, table)?;
    Ok(v.first().copied().unwrap_or(0))
}

impl Store {
    /// Opens the store `config` names (surrealkv under `state_dir/db` when no URL is set),
    /// takes the data directory's lock, applies or upgrades the schema, records this boot and
    /// starts the writer. Errors name the path or URL; nothing is created for a remote URL.
    pub async fn open(config: &StoreConfig, state_dir: &Path) -> Result<Store, StoreError> {
        if !config.enabled {
            return Err(StoreError::Disabled);
        }
        let location = open::location(config, state_dir)?;
        let lock_file = match &location {
            Location::Disk(dir) => {
                open::prepare_dir(dir)?;
                Some(open::take_lock(dir)?)
            }
            _ => None,
        };
        let shown = location.to_string();
        let db = open::connect(config, &location).await?;
        let use_err = |e: surrealdb::Error| match &location {
            Location::Remote(url) => StoreError::Remote {
                url: url.clone(),
                message: e.to_string(),
            },
            _ => StoreError::Open {
                path: shown.clone().into(),
                message: e.to_string(),
            },
        };
        db.use_ns(config.namespace.as_str())
            .use_db(config.database.as_str())
            .await
            .map_err(use_err)?;
        let (from, to) = schema::upgrade(&db, &shown).await?;
        let boot = format!("{}-{}", now_ms(), std::process::id());
        if let Location::Remote(url) = &location {
            owner::claim(
                &db,
                &boot,
                state_dir,
                url,
                &config.namespace,
                &config.database,
            )
            .await?;
        }
        let started = kinfra_core::event::now_rfc3339();
        let resp = db
            .query(
                "UPSERT type::record('boot', $boot) SET pid = $pid, started_ms = $ms, \
                 started_at = $at RETURN NONE",
            )
            .bind(serde_json::json!({
                "boot": boot,
                "pid": std::process::id(),
                "ms": now_ms(),
                "at": started,
            }))
            .await
            .and_then(|r| r.check());
        // The first write: a read-only or full data directory fails here, at boot.
        if let Err(e) = resp {
            return Err(match &location {
                Location::Remote(url) => StoreError::Remote {
                    url: url.clone(),
                    message: format!("cannot write: {e}"),
                },
                _ => StoreError::Open {
                    path: shown.clone().into(),
                    message: format!("cannot write: {e}"),
                },
            });
        }
        // What the nodes share: its own schema, and the ACME rows an older kinfra kept in the
        // node's database moved there.
        let acme = db.clone();
        acme.use_ns(config.namespace.as_str())
            .use_db(config.shared_database.as_str())
            .await
            .map_err(use_err)?;
        let shared_shown = format!("{shown} (database {})", config.shared_database);
        schema::upgrade_shared(&acme, &shared_shown).await?;
        if config.shared_database != config.database {
            shared::move_acme_rows(&db, &acme).await?;
        }
        let next_event_n = last_n(&db, "event").await? + 1;
        let next_run_n = last_n(&db, "run").await? + 1;

        let user = db.clone();
        user.use_ns(config.user_namespace.as_str())
            .use_db(config.user_database.as_str())
            .await
            .map_err(use_err)?;

        // A server's client waits for a lost connection to come back without failing the
        // requests made meanwhile: every query to a server is bounded, so an outage shows as
        // failures (retried) instead of a writer, or a reader, waiting forever.
        let answer_timeout = matches!(location, Location::Remote(_))
            .then(|| config.connect_timeout.0.max(Duration::from_secs(1)));
        let shared = Arc::new(Shared::new());
        let retention = Retention {
            events_max: config.event_retention,
            events_max_age: config.event_max_age.0,
            runs_max: config.run_retention,
        };
        let mut writer = Writer {
            db: db.clone(),
            boot: boot.clone(),
            shared: shared.clone(),
            retention,
            next_event_n,
            next_run_n,
            runs: HashMap::new(),
            states: HashMap::new(),
            runtime_stopping: false,
            svc: Default::default(),
            var_counter: 0,
            events_since_prune: 0,
            last_prune: tokio::time::Instant::now(),
            answer_timeout,
            liveness: answer_timeout.map(|_| writer::LIVENESS_EVERY),
            unreachable: false,
            lease_refreshed: tokio::time::Instant::now(),
        };
        // Retention at boot, before anything new is written.
        if let Ok((events, runs)) = writer.prune_now().await
            && events + runs > 0
        {
            debug!(events, runs, "Store retention applied at boot.");
        }
        let writer_task = tokio::spawn(writer.run());

        match &location {
            Location::Disk(dir) => info!(
                engine = "surrealkv",
                path = %dir.display(),
                sync = if config.sync { "every commit (fsync)" } else { "left to the OS" },
                schema = to,
                upgraded_from = from,
                "Store opened."
            ),
            Location::Memory => info!(
                engine = "memory",
                schema = to,
                "Store opened in memory: nothing survives a restart."
            ),
            Location::Remote(url) => info!(
                engine = "remote",
                url = %url,
                schema = to,
                upgraded_from = from,
                "Store opened; durability is the server's."
            ),
        }
        Ok(Store {
            inner: Arc::new(Inner {
                db: RwLock::new(Some(db)),
                user: RwLock::new(Some(user)),
                acme: RwLock::new(Some(acme)),
                shared_database: config.shared_database.clone(),
                location,
                boot,
                shared,
                writer: Mutex::new(Some(writer_task)),
                receivers: Mutex::new(Vec::new()),
                stop_receivers: watch::channel(false).0,
                lock: Mutex::new(lock_file),
                answer_timeout,
            }),
        })
    }

    /// Waits for `work` at most the answer timeout of a server (unbounded embedded).
    pub(crate) async fn answered<T>(
        &self,
        what: &'static str,
        work: impl std::future::Future<Output = Result<T, surrealdb::Error>>,
    ) -> Result<T, StoreError> {
        match self.inner.answer_timeout {
            None => work.await.map_err(|e| StoreError::query(what, e)),
            Some(limit) => match tokio::time::timeout(limit, work).await {
                Ok(r) => r.map_err(|e| StoreError::query(what, e)),
                Err(_) => Err(StoreError::query(
                    what,
                    format!("the server did not answer within {limit:?}"),
                )),
            },
        }
    }

    /// kinfra's own session.
    pub(crate) fn db(&self) -> Result<Db, StoreError> {
        read_handle(&self.inner.db).ok_or(StoreError::Closed)
    }

    /// The session on the shared database (`[store] shared_database`).
    pub(crate) fn acme_db(&self) -> Result<Db, StoreError> {
        read_handle(&self.inner.acme).ok_or(StoreError::Closed)
    }

    /// Where the data lives.
    pub fn location(&self) -> &Location {
        &self.inner.location
    }

    /// This start of kinfra, as recorded with runs and events.
    pub fn boot_id(&self) -> &str {
        &self.inner.boot
    }

    /// A handle for the user's code on its own namespace/database (`[store] user_namespace`,
    /// `user_database`), apart from kinfra's tables. Each call is a new session.
    pub fn user_db(&self) -> Result<Db, StoreError> {
        read_handle(&self.inner.user).ok_or(StoreError::Closed)
    }

    /// Records every event `rx` receives (subscribe before the supervisor starts, so nothing
    /// is missed). Never slows the sender: events go into the write queue as they arrive; if
    /// the channel outruns even that, the loss is counted (`lagged`) and logged.
    pub fn record_events(&self, mut rx: broadcast::Receiver<Event>) {
        let shared = self.inner.shared.clone();
        let mut stop = self.inner.stop_receivers.subscribe();
        let task = tokio::spawn(async move {
            let push = |event: Event| {
                let start_time = match &event.kind {
                    EventKind::ProcessStarted { pid, .. } => {
                        kinfra_core::procstat::stat(*pid as i32).map(|s| s.start_time)
                    }
                    _ => None,
                };
                shared.push(Op::Event {
                    event: Box::new(event),
                    start_time,
                });
            };
            loop {
                tokio::select! {
                    biased;
                    r = rx.recv() => match r {
                        Ok(event) => push(event),
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            shared.counters.lagged.fetch_add(n, Ordering::Relaxed);
                            warn!(missed = n, "The store fell behind the event channel; events were not recorded.");
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                    _ = stop.wait_for(|s| *s) => {
                        // Take what was sent before the stop.
                        while let Ok(event) = rx.try_recv() {
                            push(event);
                        }
                        break;
                    }
                }
            }
        });
        lock(&self.inner.receivers).push(task);
    }

    /// The sink the supervisor reports restart counts, last exits and user stops to.
    pub fn state_sink(&self) -> Arc<dyn StateSink> {
        Arc::new(boot::StoreSink {
            shared: self.inner.shared.clone(),
        })
    }

    /// Highest event `seq` of this run whose writes are committed (in order: every earlier
    /// event is committed too).
    pub fn acknowledged_seq(&self) -> u64 {
        *self.inner.shared.acked.borrow()
    }

    /// Follows [`Store::acknowledged_seq`].
    pub fn subscribe_acknowledged(&self) -> watch::Receiver<u64> {
        self.inner.shared.acked.subscribe()
    }

    /// Write counters and the queue length.
    pub fn stats(&self) -> StoreStats {
        let queued = self.inner.shared.queue.len() as u64;
        self.inner.shared.counters.snapshot(
            &self.inner.location.to_string(),
            queued,
            self.acknowledged_seq(),
        )
    }

    /// Waits until every event up to `seq` of this run is committed, at most `timeout`.
    pub async fn wait_acknowledged(&self, seq: u64, timeout: Duration) -> Result<(), StoreError> {
        let mut rx = self.subscribe_acknowledged();
        match tokio::time::timeout(timeout, rx.wait_for(|a| *a >= seq)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(StoreError::Closed),
            Err(_) => Err(StoreError::Timeout(timeout)),
        }
    }

    /// kinfra's own tables, for inspection and tests. Write through the `Store` methods:
    /// they keep the invariants (ordering, run bookkeeping) that raw queries would not.
    #[doc(hidden)]
    pub fn kinfra_db(&self) -> Result<Db, StoreError> {
        self.db()
    }

    /// The schema version in the database.
    pub async fn schema_version(&self) -> Result<u32, StoreError> {
        schema::version(&self.db()?).await
    }

    /// Waits until everything queued so far is written (or given up on), at most `timeout`.
    /// Events still in the broadcast channel are not covered; see
    /// [`Store::wait_acknowledged`].
    pub async fn flush(&self, timeout: Duration) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.inner.shared.push(Op::Flush(tx));
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(StoreError::Closed),
            Err(_) => Err(StoreError::Timeout(timeout)),
        }
    }

    /// Applies retention now (it also runs every minute and every thousand events): events
    /// beyond `event_retention` or older than `event_max_age`, ended runs beyond
    /// `run_retention`. Returns (events, runs) deleted.
    pub async fn apply_retention(&self) -> Result<(u64, u64), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.inner.shared.push(Op::Prune(tx));
        match rx.await {
            Ok(r) => r.map_err(|e| StoreError::query("retention", e)),
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// Stops recording: takes the events already sent, writes what is queued within
    /// `timeout` (what is left is counted and logged), closes kinfra's handles and releases
    /// the data directory's lock once the engine has closed. Handles from
    /// [`Store::user_db`] still held by the user's code keep the engine open; that is logged.
    pub async fn shutdown(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        self.inner.stop_receivers.send_replace(true);
        let receivers = std::mem::take(&mut *lock(&self.inner.receivers));
        for r in receivers {
            let _ = tokio::time::timeout_at(deadline, r).await;
        }
        self.inner.shared.closing.send_replace(Some(deadline));
        let writer = lock(&self.inner.writer).take();
        if let Some(mut w) = writer
            && tokio::time::timeout_at(deadline, &mut w).await.is_err()
        {
            w.abort();
            warn!(
                unwritten = self.inner.shared.queue.len(),
                "Store writer did not finish in time."
            );
        }
        let stats = self.stats();
        if let (Some(limit), Some(db)) = (self.inner.answer_timeout, read_handle(&self.inner.db)) {
            owner::release(&db, &self.inner.boot, limit).await;
        }
        drop(take_handle(&self.inner.db));
        drop(take_handle(&self.inner.user));
        drop(take_handle(&self.inner.acme));
        if let Location::Disk(dir) = &self.inner.location {
            // The engine closes once its last handle is gone; wait for its lock, so the next
            // opener (maybe in this process) finds the directory free.
            let close_deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            while !open::engine_lock_free(dir) {
                if tokio::time::Instant::now() >= close_deadline {
                    warn!(path = %dir.display(), "The store engine is still open (the user's code holds a handle from Runtime::db()).");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        drop(lock(&self.inner.lock).take());
        info!(
            written = stats.written,
            failures = stats.failures,
            abandoned = stats.abandoned,
            unwritten = stats.queued,
            "Store closed."
        );
    }
}
