//! The write path: a queue the rest of kinfra pushes into without waiting, and one writer task
//! that turns queued changes into SurrealQL and commits them in batches.
//!
//! - Pushing never blocks and never fails. The queue is bounded only as a last resort: when
//!   the store has been failing for so long that [`MAX_QUEUE`] changes wait, the oldest are
//!   dropped, counted and logged.
//! - A batch is one transaction (one fsync with `sync` on). A failed batch is retried with
//!   backoff; after a few failures its changes are retried one by one, and a change the store
//!   keeps rejecting while a probe write succeeds (the change is at fault, not the store) is
//!   given up on, counted and logged with its kind. While the store itself is failing, nothing
//!   is given up.
//! - Events are written in order, so "every event up to seq N is committed" is one number
//!   ([`Shared::acked`]).
//! - On a SurrealDB server, every query is bounded (`connect_timeout`): the client parks
//!   requests while it reconnects, so a server gone away shows as failed, retried writes
//!   (`failures`, `last_error`) and the queue grows; nothing is given up meanwhile, and the
//!   queue drains once the client has reconnected. An idle writer refreshes its lease
//!   (`meta:owner`) every 2 s, which doubles as the liveness check (a failure counts).

use crate::records::StoreStats;
use crate::{Db, now_ms, rfc3339_ms};
use kinfra_core::event::{Event, EventKind, ExitInfo};
use kinfra_core::persist::ServiceHistory;
use kinfra_core::state::ServiceState;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

/// Most changes waiting before the oldest are dropped.
pub(crate) const MAX_QUEUE: usize = 200_000;
/// Most changes per transaction.
const MAX_BATCH: usize = 512;
/// Failed attempts of a batch before its changes are retried one by one.
const SPLIT_AFTER: u32 = 3;
/// Longest pause between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often retention runs without being asked.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Events written between retention runs.
const PRUNE_AFTER_EVENTS: u64 = 1000;
/// How often an idle writer checks that a SurrealDB server still answers, so that a server
/// gone away shows in the counters (and `last_error`) before the next write.
pub(crate) const LIVENESS_EVERY: Duration = Duration::from_secs(2);

/// A change to write, or a request to the writer.
pub(crate) enum Op {
    /// A runtime event, with the `/proc` start time of the process it names (read when the
    /// event arrived).
    Event {
        event: Box<Event>,
        start_time: Option<u64>,
    },
    /// A service's restart count or last exit changed.
    History {
        service: String,
        history: ServiceHistory,
    },
    /// A user stopped or started a service.
    UserStopped { service: String, stopped: bool },
    /// Reply once everything queued before this is written (or given up).
    Flush(oneshot::Sender<()>),
    /// Apply retention now; reply with (events, runs) deleted.
    Prune(oneshot::Sender<Result<(u64, u64), String>>),
}

/// Counters, shared with [`crate::Store::stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub written: AtomicU64,
    pub commits: AtomicU64,
    pub failures: AtomicU64,
    pub abandoned: AtomicU64,
    pub dropped: AtomicU64,
    pub lagged: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

impl Counters {
    fn set_error(&self, e: Option<String>) {
        match self.last_error.lock() {
            Ok(mut g) => *g = e,
            Err(p) => *p.into_inner() = e,
        }
    }

    pub fn snapshot(&self, location: &str, queued: u64, acked: u64) -> StoreStats {
        let last_error = match self.last_error.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        StoreStats {
            location: location.to_owned(),
            written: self.written.load(Ordering::Relaxed),
            commits: self.commits.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            abandoned: self.abandoned.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            lagged: self.lagged.load(Ordering::Relaxed),
            queued,
            acknowledged_seq: acked,
            last_error,
        }
    }
}

/// The queue between producers and the writer.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    items: Mutex<VecDeque<Op>>,
    notify: Notify,
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind())
    }
}

impl Op {
    fn kind(&self) -> &'static str {
        match self {
            Op::Event { event, .. } => event.kind.name(),
            Op::History { .. } => "service_history",
            Op::UserStopped { .. } => "user_stopped",
            Op::Flush(_) => "flush",
            Op::Prune(_) => "prune",
        }
    }
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Op>> {
        match self.items.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Adds a change; never waits.
    pub fn push(&self, op: Op, counters: &Counters) {
        let dropped = {
            let mut items = self.lock();
            items.push_back(op);
            if items.len() > MAX_QUEUE {
                items.pop_front()
            } else {
                None
            }
        };
        self.notify.notify_one();
        if let Some(old) = dropped {
            let n = counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // One line per thousand, so a long outage does not flood the log.
            if n % 1000 == 1 {
                error!(
                    dropped = n,
                    kind = old.kind(),
                    queued = MAX_QUEUE,
                    "Store queue full; dropping the oldest changes."
                );
            }
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    fn take(&self, max: usize) -> Vec<Op> {
        let mut items = self.lock();
        let n = items.len().min(max);
        items.drain(..n).collect()
    }
}

/// What the writer shares with the store handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub queue: Queue,
    pub counters: Counters,
    /// Highest event seq of this run committed, in order.
    pub acked: watch::Sender<u64>,
    /// Set when the store shuts down: write what is queued until this instant, then stop.
    pub closing: watch::Sender<Option<Instant>>,
}

impl Shared {
    pub fn new() -> Self {
        Self {
            queue: Queue::default(),
            counters: Counters::default(),
            acked: watch::channel(0).0,
            closing: watch::channel(None).0,
        }
    }

    pub fn push(&self, op: Op) {
        self.queue.push(op, &self.counters);
    }
}

/// Retention limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retention {
    pub events_max: u64,
    pub events_max_age: Duration,
    pub runs_max: u64,
}

/// One change as SurrealQL: statements and their variables (names unique in the writer).
struct Piece {
    what: &'static str,
    sql: String,
    vars: Map<String, Value>,
    seq: Option<u64>,
    /// The `event` row, inserted with the batch's other rows in one statement (a statement
    /// per row costs more than the rest of the write).
    row: Option<Value>,
}

/// Builds statements with numbered variables.
struct Stmt<'a> {
    sql: String,
    vars: Map<String, Value>,
    counter: &'a mut u64,
}

impl<'a> Stmt<'a> {
    fn new(counter: &'a mut u64) -> Self {
        Self {
            sql: String::new(),
            vars: Map::new(),
            counter,
        }
    }

    /// A variable holding `v`, as `$vN`.
    fn var(&mut self, v: impl Into<Value>) -> String {
        *self.counter += 1;
        let name = format!("v{}", self.counter);
        self.vars.insert(name.clone(), v.into());
        format!("${name}")
    }

    /// A variable, or the literal `NONE`.
    fn opt<T: Into<Value>>(&mut self, v: Option<T>) -> String {
        match v {
            Some(v) => self.var(v),
            None => "NONE".into(),
        }
    }

    fn push(&mut self, line: String) {
        self.sql.push_str(&line);
        self.sql.push_str(";\n");
    }

    fn finish(self, what: &'static str, seq: Option<u64>) -> Piece {
        Piece {
            what,
            sql: self.sql,
            vars: self.vars,
            seq,
            row: None,
        }
    }
}

/// The writer task's state.
pub(crate) struct Writer {
    pub db: Db,
    pub boot: String,
    pub shared: Arc<Shared>,
    pub retention: Retention,
    pub next_event_n: u64,
    pub next_run_n: u64,
    /// Live runs of this boot: (service, pid) → run n.
    pub runs: HashMap<(String, u32), u64>,
    /// Current state per service (decides why a process ended).
    pub states: HashMap<String, ServiceState>,
    pub runtime_stopping: bool,
    /// Service fields changed since the last write (see [`Writer::service_pieces`]).
    pub svc: ServiceSets,
    pub var_counter: u64,
    pub events_since_prune: u64,
    pub last_prune: Instant,
    /// How long a query may go unanswered before it counts as failed (and is retried): set
    /// for a server, whose client waits for a lost connection to come back without failing
    /// the requests made meanwhile. `None` for the embedded engine.
    pub answer_timeout: Option<Duration>,
    /// How often an idle writer checks the server; `None` for the embedded engine.
    pub liveness: Option<Duration>,
    /// The last liveness check failed (and is counted); cleared by the next answer.
    pub unreachable: bool,
    /// When this boot's lease on a server's tables (`meta:owner`) was last refreshed.
    pub lease_refreshed: Instant,
}

/// The message every statement of a failed transaction gets; the cause is elsewhere.
const CASCADE: &str = "not executed due to a failed transaction";

/// The first real error of a response (not the cascade of a failed transaction), if any.
fn first_error(mut resp: surrealdb::IndexedResults) -> Result<(), String> {
    let mut errors: Vec<(usize, String)> = resp
        .take_errors()
        .into_iter()
        .map(|(i, e)| (i, e.to_string()))
        .collect();
    errors.sort();
    let cause = errors
        .iter()
        .find(|(_, e)| !e.contains(CASCADE))
        .or_else(|| errors.first());
    match cause {
        Some((_, e)) => Err(e.clone()),
        None => Ok(()),
    }
}

/// Pending service fields: service → field → value (`None` is `NONE`).
pub(crate) type ServiceSets = BTreeMap<String, BTreeMap<&'static str, Option<Value>>>;

/// Records the latest value of some fields of a service.
fn svc_set(map: &mut ServiceSets, service: &str, sets: Vec<(&'static str, Option<Value>)>) {
    let fields = map.entry(service.to_owned()).or_default();
    for (field, value) in sets {
        fields.insert(field, value);
    }
}

/// What woke an idle writer.
enum Idle {
    /// Work queued, or the store is closing.
    Work,
    /// Retention is due.
    Prune,
    /// The server's liveness check is due.
    Check,
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn exit_fields(exit: Option<ExitInfo>) -> (Option<i64>, Option<i64>) {
    match exit {
        Some(e) => (e.code.map(i64::from), e.signal.map(i64::from)),
        None => (None, None),
    }
}

impl Writer {
    /// Runs until the store closes and the queue is written (or the close deadline passes).
    pub async fn run(mut self) {
        let mut closing = self.shared.closing.subscribe();
        loop {
            let ops = self.shared.queue.take(MAX_BATCH);
            if ops.is_empty() {
                if closing.borrow().is_some() {
                    break;
                }
                let due = self.last_prune + PRUNE_EVERY;
                let check = self.liveness.map(|every| Instant::now() + every);
                let idle = tokio::select! {
                    _ = self.shared.queue.notify.notified() => Idle::Work,
                    _ = closing.changed() => Idle::Work,
                    _ = tokio::time::sleep_until(due) => Idle::Prune,
                    _ = sleep_until_some(check) => Idle::Check,
                };
                match idle {
                    Idle::Work => {}
                    Idle::Prune => self.prune_logged().await,
                    Idle::Check => self.check_liveness().await,
                }
                continue;
            }
            if !self.process(ops).await {
                break;
            }
            if self.events_since_prune >= PRUNE_AFTER_EVENTS
                || self.last_prune.elapsed() >= PRUNE_EVERY
            {
                self.prune_logged().await;
            }
        }
        let left = self.shared.queue.len();
        if left > 0 {
            error!(
                unwritten = left,
                "Store closed before every change was written."
            );
        }
        debug!("Store writer ended.");
    }

    /// Writes a batch of ops; false when the close deadline passed.
    async fn process(&mut self, ops: Vec<Op>) -> bool {
        let mut pieces = Vec::new();
        let mut replies = Vec::new();
        for op in ops {
            match op {
                Op::Flush(reply) => {
                    // Everything before it is in `pieces`; write them first.
                    pieces.extend(self.service_pieces());
                    if !self.write(std::mem::take(&mut pieces)).await {
                        return false;
                    }
                    let _ = reply.send(());
                }
                Op::Prune(reply) => {
                    pieces.extend(self.service_pieces());
                    if !self.write(std::mem::take(&mut pieces)).await {
                        return false;
                    }
                    replies.push(reply);
                }
                other => pieces.extend(self.translate(other)),
            }
        }
        pieces.extend(self.service_pieces());
        let ok = self.write(pieces).await;
        for reply in replies {
            let r = self.prune_now().await;
            let _ = reply.send(r);
        }
        ok
    }

    /// One `UPSERT` per service touched since the last write, with the latest value of each
    /// field: a service's row is one statement per batch, however many events changed it.
    fn service_pieces(&mut self) -> Vec<Piece> {
        let svc = std::mem::take(&mut self.svc);
        let mut out = Vec::with_capacity(svc.len());
        for (service, fields) in svc {
            let mut s = Stmt::new(&mut self.var_counter);
            let name = s.var(service.as_str());
            let mut sets = format!("name = {name}");
            for (field, value) in fields {
                let v = s.opt(value);
                sets.push_str(&format!(", {field} = {v}"));
            }
            s.push(format!(
                "UPSERT type::record('service', {name}) SET {sets} RETURN NONE"
            ));
            out.push(s.finish("service", None));
        }
        out
    }

    fn translate(&mut self, op: Op) -> Option<Piece> {
        match op {
            Op::Event { event, start_time } => Some(self.event(*event, start_time)),
            Op::History { service, history } => {
                let mut sets = vec![("restarts", Some(Value::from(history.restarts)))];
                if history.last_exit.is_some() {
                    let (code, signal) = exit_fields(history.last_exit);
                    sets.push(("last_exit_code", code.map(Value::from)));
                    sets.push(("last_exit_signal", signal.map(Value::from)));
                }
                svc_set(&mut self.svc, &service, sets);
                None
            }
            Op::UserStopped { service, stopped } => {
                svc_set(
                    &mut self.svc,
                    &service,
                    vec![("user_stopped", Some(Value::from(stopped)))],
                );
                None
            }
            Op::Flush(_) | Op::Prune(_) => None,
        }
    }

    fn event(&mut self, event: Event, start_time: Option<u64>) -> Piece {
        let n = self.next_event_n;
        self.next_event_n += 1;
        self.events_since_prune += 1;
        let ts_ms = rfc3339_ms(&event.timestamp).unwrap_or_else(now_ms);
        let data = serde_json::to_string(&event).unwrap_or_default();
        let boot = self.boot.clone();
        let row = json!({
            "id": n,
            "n": n,
            "boot": boot,
            "seq": event.seq,
            "ts": event.timestamp,
            "ts_ms": ts_ms,
            "kind": event.kind.name(),
            "resource": event.kind.resource(),
            "data": data,
        });
        let mut s = Stmt::new(&mut self.var_counter);
        let vboot = s.var(boot.as_str());
        let vts = s.var(event.timestamp.as_str());
        let vms = s.var(ts_ms);
        match &event.kind {
            EventKind::StateChanged {
                service,
                to,
                message,
                ..
            } => {
                self.states.insert(service.clone(), *to);
                svc_set(
                    &mut self.svc,
                    service,
                    vec![
                        ("state", Some(Value::from(to.as_str()))),
                        ("message", Some(Value::from(message.as_str()))),
                        ("updated_ms", Some(Value::from(ts_ms))),
                    ],
                );
            }
            EventKind::HealthChanged {
                service, health, ..
            } => {
                svc_set(
                    &mut self.svc,
                    service,
                    vec![
                        ("health", Some(Value::from(health.as_str()))),
                        ("updated_ms", Some(Value::from(ts_ms))),
                    ],
                );
            }
            EventKind::ProcessStarted { service, pid } => {
                let rn = self.next_run_n;
                self.next_run_n += 1;
                self.runs.insert((service.clone(), *pid), rn);
                let vrn = s.var(rn);
                let name = s.var(service.as_str());
                let vpid = s.var(*pid);
                let vst = s.opt(start_time);
                s.push(format!(
                    "UPSERT type::record('run', {vrn}) SET n = {vrn}, boot = {vboot}, \
                     service = {name}, pid = {vpid}, start_time = {vst}, started_ms = {vms}, \
                     started_at = {vts} RETURN NONE"
                ));
                svc_set(
                    &mut self.svc,
                    service,
                    vec![
                        ("pid", Some(Value::from(*pid))),
                        ("updated_ms", Some(Value::from(ts_ms))),
                    ],
                );
            }
            EventKind::ProcessExited { service, pid, exit } => {
                let reason = if self.runtime_stopping {
                    "shutdown"
                } else if self.states.get(service) == Some(&ServiceState::Stopping) {
                    "stopped"
                } else if exit.success() {
                    "exited"
                } else {
                    "crashed"
                };
                let (code, signal) = exit_fields(Some(*exit));
                let name = s.var(service.as_str());
                let vpid = s.var(*pid);
                let vcode = s.opt(code);
                let vsig = s.opt(signal);
                let vreason = s.var(reason);
                let sets = format!(
                    "ended_ms = {vms}, ended_at = {vts}, exit_code = {vcode}, \
                     exit_signal = {vsig}, reason = {vreason}"
                );
                match self.runs.remove(&(service.clone(), *pid)) {
                    Some(rn) => {
                        let vrn = s.var(rn);
                        s.push(format!(
                            "UPDATE type::record('run', {vrn}) SET {sets} RETURN NONE"
                        ));
                    }
                    None => s.push(format!(
                        "UPDATE run SET {sets} WHERE service = {name} AND pid = {vpid} \
                         AND ended_ms = NONE RETURN NONE"
                    )),
                }
                svc_set(
                    &mut self.svc,
                    service,
                    vec![
                        ("pid", None),
                        ("last_exit_code", code.map(Value::from)),
                        ("last_exit_signal", signal.map(Value::from)),
                        ("updated_ms", Some(Value::from(ts_ms))),
                    ],
                );
            }
            EventKind::PortAssigned { service, port } => {
                let name = s.var(service.as_str());
                let p = s.var(*port);
                s.push(format!(
                    "UPSERT type::record('port', {name}) SET service = {name}, port = {p}, \
                     assigned_ms = {vms} RETURN NONE"
                ));
            }
            EventKind::RuntimeStarted { project } => {
                let p = s.var(project.as_str());
                s.push(format!(
                    "UPDATE type::record('boot', {vboot}) SET project = {p} RETURN NONE"
                ));
            }
            EventKind::RuntimeStopping { reason } => {
                self.runtime_stopping = true;
                let r = s.var(reason.as_str());
                s.push(format!(
                    "UPDATE type::record('boot', {vboot}) SET stopping_ms = {vms}, \
                     stop_reason = {r} RETURN NONE"
                ));
            }
            _ => {}
        }
        let mut piece = s.finish(event.kind.name(), Some(event.seq));
        piece.row = Some(row);
        piece
    }

    /// Waits for `work` at most [`Writer::answer_timeout`].
    async fn answered<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, surrealdb::Error>>,
    ) -> Result<T, String> {
        match self.answer_timeout {
            None => work.await.map_err(|e| e.to_string()),
            Some(limit) => match tokio::time::timeout(limit, work).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err(format!("the server did not answer within {limit:?}")),
            },
        }
    }

    /// True when this boot's lease on a server's tables is due for a refresh.
    fn lease_due(&self) -> bool {
        self.liveness.is_some() && self.lease_refreshed.elapsed() >= crate::owner::REFRESH_EVERY
    }

    /// The variables of [`crate::owner::REFRESH_SQL`].
    fn lease_vars(&self) -> [(String, Value); 2] {
        [
            ("owner_boot".into(), Value::from(self.boot.as_str())),
            ("owner_seen".into(), Value::from(now_ms())),
        ]
    }

    /// Checks that the server answers while nothing is written (by refreshing this boot's
    /// lease): a failure is counted and kept as `last_error` (logged once per outage); the
    /// next answer clears it.
    async fn check_liveness(&mut self) {
        let query = self
            .db
            .query(crate::owner::REFRESH_SQL)
            .bind(Value::Object(self.lease_vars().into_iter().collect()));
        let work = async move { query.await?.check().map(|_| ()) };
        match self.answered(work).await {
            Ok(()) => {
                self.lease_refreshed = Instant::now();
                if self.unreachable {
                    self.unreachable = false;
                    self.shared.counters.set_error(None);
                    info!("The store's server answers again.");
                }
            }
            Err(error) => {
                let c = &self.shared.counters;
                c.failures.fetch_add(1, Ordering::Relaxed);
                c.set_error(Some(error.clone()));
                if !self.unreachable {
                    warn!(%error, "The store's server does not answer; kinfra keeps running and queues its writes.");
                }
                self.unreachable = true;
            }
        }
    }

    /// Runs pieces in one transaction.
    async fn execute(&self, pieces: &[&Piece]) -> Result<(), String> {
        let mut sql = String::from("BEGIN TRANSACTION;\n");
        let mut vars = Map::new();
        let rows: Vec<Value> = pieces.iter().filter_map(|p| p.row.clone()).collect();
        if !rows.is_empty() {
            // IGNORE: a retry after a commit whose answer was lost finds its rows there.
            sql.push_str("INSERT IGNORE INTO event $event_rows RETURN NONE;\n");
            vars.insert("event_rows".into(), Value::Array(rows));
        }
        for p in pieces {
            sql.push_str(&p.sql);
            vars.extend(p.vars.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        if self.lease_due() {
            sql.push_str(crate::owner::REFRESH_SQL);
            vars.extend(self.lease_vars());
        }
        sql.push_str("COMMIT TRANSACTION;");
        let resp = self
            .answered(self.db.query(sql).bind(Value::Object(vars)).into_future())
            .await?;
        first_error(resp)
    }

    /// A trivial write: does the store take writes at all?
    async fn probe(&self) -> bool {
        match self
            .answered(
                self.db
                    .query("UPSERT meta:probe SET at = time::now() RETURN NONE")
                    .into_future(),
            )
            .await
        {
            Ok(resp) => resp.check().is_ok(),
            Err(_) => false,
        }
    }

    fn committed(&mut self, pieces: &[&Piece]) {
        let c = &self.shared.counters;
        c.written.fetch_add(pieces.len() as u64, Ordering::Relaxed);
        c.commits.fetch_add(1, Ordering::Relaxed);
        c.set_error(None);
        if self.lease_due() {
            self.lease_refreshed = Instant::now();
        }
        if self.unreachable {
            self.unreachable = false;
            info!("The store's server answers again.");
        }
        if let Some(seq) = pieces.iter().filter_map(|p| p.seq).max() {
            self.shared.acked.send_if_modified(|a| {
                let changed = seq > *a;
                *a = (*a).max(seq);
                changed
            });
        }
    }

    fn failed(&self, attempt: u32, ops: usize, error: &str) {
        let c = &self.shared.counters;
        c.failures.fetch_add(1, Ordering::Relaxed);
        c.set_error(Some(error.to_owned()));
        let queued = self.shared.queue.len();
        // Every failure is counted; the log gets the first few and then one a minute or so.
        if attempt <= 3 || attempt.is_multiple_of(12) {
            warn!(attempt, ops, queued, %error, "Store write failed; retrying.");
        }
        if attempt == 6 {
            error!(
                attempt,
                queued,
                %error,
                "The store keeps refusing writes. After an I/O error (a full disk) the embedded \
                 engine takes no more writes until kinfra restarts; changes queue up meanwhile."
            );
        }
    }

    /// Waits before the next attempt; false when the close deadline passed.
    async fn pause(&self, attempt: u32) -> bool {
        let backoff = Duration::from_millis(100)
            .saturating_mul(1u32 << attempt.min(6))
            .min(MAX_BACKOFF);
        let until = Instant::now() + backoff;
        let deadline = *self.shared.closing.borrow();
        match deadline {
            Some(d) if d <= Instant::now() => false,
            Some(d) => {
                tokio::time::sleep_until(until.min(d)).await;
                true
            }
            None => {
                let mut closing = self.shared.closing.subscribe();
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    _ = closing.changed() => {}
                }
                true
            }
        }
    }

    /// Writes `pieces` with retries; false when the close deadline passed first.
    async fn write(&mut self, pieces: Vec<Piece>) -> bool {
        if pieces.is_empty() {
            return true;
        }
        let refs: Vec<&Piece> = pieces.iter().collect();
        let mut attempt = 0u32;
        loop {
            match self.execute(&refs).await {
                Ok(()) => {
                    self.committed(&refs);
                    if attempt > 0 {
                        info!(
                            attempt,
                            ops = refs.len(),
                            "Store write succeeded after retrying."
                        );
                    }
                    return true;
                }
                Err(error) => {
                    attempt += 1;
                    self.failed(attempt, refs.len(), &error);
                    if refs.len() > 1 && attempt >= SPLIT_AFTER {
                        for p in &refs {
                            if !self.write_one(p).await {
                                return false;
                            }
                        }
                        return true;
                    }
                    if !self.pause(attempt).await {
                        self.give_up(refs.len(), &error);
                        return false;
                    }
                }
            }
        }
    }

    /// Writes one piece with retries; gives up on it only while the store itself works.
    async fn write_one(&mut self, piece: &Piece) -> bool {
        let mut attempt = 0u32;
        loop {
            match self.execute(&[piece]).await {
                Ok(()) => {
                    self.committed(&[piece]);
                    return true;
                }
                Err(error) => {
                    attempt += 1;
                    self.failed(attempt, 1, &error);
                    if attempt >= 2 && self.probe().await {
                        self.shared
                            .counters
                            .abandoned
                            .fetch_add(1, Ordering::Relaxed);
                        error!(kind = piece.what, seq = ?piece.seq, %error,
                            "The store rejects this change while taking others; giving up on it.");
                        return true;
                    }
                    if !self.pause(attempt).await {
                        self.give_up(1, &error);
                        return false;
                    }
                }
            }
        }
    }

    fn give_up(&self, ops: usize, error: &str) {
        error!(
            unwritten = ops + self.shared.queue.len(),
            %error,
            "Store close deadline passed while a write kept failing; changes are lost."
        );
    }

    async fn prune_logged(&mut self) {
        match self.prune_now().await {
            Ok((0, 0)) => {}
            Ok((events, runs)) => debug!(events, runs, "Store retention applied."),
            Err(error) => {
                self.shared
                    .counters
                    .failures
                    .fetch_add(1, Ordering::Relaxed);
                warn!(%error, "Store retention failed; will retry.");
            }
        }
    }

    /// Deletes events beyond the count or older than the age, and ended runs beyond the count.
    pub(crate) async fn prune_now(&mut self) -> Result<(u64, u64), String> {
        self.last_prune = Instant::now();
        self.events_since_prune = 0;
        let r = self.retention;
        let last_event = self.next_event_n.saturating_sub(1);
        let event_cut = last_event.saturating_sub(r.events_max);
        let age_cut =
            now_ms().saturating_sub(u64::try_from(r.events_max_age.as_millis()).unwrap_or(0));
        let last_run = self.next_run_n.saturating_sub(1);
        let run_cut = last_run.saturating_sub(r.runs_max);
        let query = self
            .db
            .query(
                "DELETE event WHERE n <= $event_cut OR ts_ms < $age_cut RETURN BEFORE;\n\
                 DELETE run WHERE n <= $run_cut AND ended_ms != NONE RETURN BEFORE;",
            )
            .bind(json!({
                "event_cut": event_cut,
                "age_cut": age_cut,
                "run_cut": run_cut,
            }));
        let mut resp = self.answered(query.into_future()).await?;
        let mut count = |i: usize| -> Result<u64, String> {
            let v: Vec<surrealdb::types::Value> = resp.take(i).map_err(|e| e.to_string())?;
            Ok(v.len() as u64)
        };
        Ok((count(0)?, count(1)?))
    }
}
