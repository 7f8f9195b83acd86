//! Test helpers: configs, opening, event helpers, bounded waits.

use kinfra_core::config::StoreConfig;
use kinfra_core::event::{EventKind, EventSender};
use kinfra_core::state::ServiceState;
use kinfra_store::Store;
use std::path::Path;
use std::time::{Duration, Instant};

/// A bound for waits that should take milliseconds.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn mem_config() -> StoreConfig {
    StoreConfig {
        url: Some("mem://".into()),
        ..StoreConfig::default()
    }
}

pub fn disk_config() -> StoreConfig {
    StoreConfig::default()
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("kinfra-store-it")
        .tempdir()
        .unwrap_or_else(|e| panic!("tempdir: {e}"))
}

/// Logs to the test's output (shown for failed tests), once per binary.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KINFRA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .try_init();
}

pub async fn open(config: &StoreConfig, state_dir: &Path) -> Store {
    init_logs();
    match Store::open(config, state_dir).await {
        Ok(s) => s,
        Err(e) => panic!("open {}: {e}", state_dir.display()),
    }
}

/// A store recording the events of a fresh channel.
pub async fn recording(config: &StoreConfig, state_dir: &Path) -> (Store, EventSender) {
    let store = open(config, state_dir).await;
    let events = EventSender::new(65536);
    store.record_events(events.subscribe());
    (store, events)
}

/// Waits until every event emitted so far is committed.
pub async fn settle(store: &Store, events: &EventSender) {
    let last = events.next_seq() - 1;
    if let Err(e) = store.wait_acknowledged(last, WAIT).await {
        panic!(
            "events up to {last} not acknowledged: {e}; {:?}",
            store.stats()
        );
    }
    if let Err(e) = store.flush(WAIT).await {
        panic!("flush: {e}");
    }
}

pub fn state(service: &str, from: ServiceState, to: ServiceState) -> EventKind {
    EventKind::StateChanged {
        service: service.into(),
        from,
        to,
        message: format!("{from} -> {to}"),
    }
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub async fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs a SurrealQL query on kinfra's own tables and returns statement 0 as JSON.
pub async fn kinfra_query(store: &Store, sql: &str) -> serde_json::Value {
    let db = store
        .kinfra_db()
        .unwrap_or_else(|e| panic!("kinfra db: {e}"));
    let mut resp = db
        .query(sql)
        .await
        .unwrap_or_else(|e| panic!("query {sql}: {e}"));
    let v: kinfra_store::surrealdb::types::Value =
        resp.take(0).unwrap_or_else(|e| panic!("take {sql}: {e}"));
    v.into_json_value()
}

/// True while `pid` names a live (not zombie) process.
pub fn alive(pid: i32) -> bool {
    kinfra_supervisor::procfs::stat(pid).is_some_and(|s| !s.is_zombie())
}
