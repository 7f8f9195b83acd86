//! Progress of long work on a resource: the adapter's own measure (a pull's bytes) sampled
//! while it starts, at most four `progress` events a second however often it changes, in
//! status while it lasts and gone (with a last `progress: null` event) once the start is
//! over; a provider's long operation shown as its phase and elapsed time, with no percent.

use crate::support::*;
use kinfra_core::event::{Event, EventKind};
use kinfra_core::progress::Progress;
use kinfra_core::resource::{
    BoxFuture, Connection, Observed, OutputLine, ReportedState, Resource, ResourceError, Run,
    SyncFacts,
};
use kinfra_core::state::ServiceState;
use kinfra_supervisor::{ProcessResource, ResourceSpec, Supervisor};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, broadcast};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A process resource whose start first does long work: `bytes` counts up (changed every
/// millisecond, far faster than anyone should be told) until `finish` is notified; with
/// `operation` set it reports a provider phase instead of bytes.
struct Slow {
    process: ProcessResource,
    bytes: Arc<AtomicU64>,
    working: Arc<AtomicBool>,
    finish: Arc<Notify>,
    operation: Mutex<Option<(&'static str, &'static str)>>,
}

const TOTAL: u64 = 1_000_000;

impl Slow {
    fn new(name: &str) -> Self {
        Self {
            process: ProcessResource::shell(
                name,
                "trap 'exit 0' TERM; while :; do sleep 0.1; done",
                None,
            ),
            bytes: Arc::default(),
            working: Arc::default(),
            finish: Arc::default(),
            operation: Mutex::new(None),
        }
    }
}

impl Resource for Slow {
    fn kind(&self) -> &'static str {
        "slow"
    }
    fn name(&self) -> &str {
        self.process.name()
    }
    fn start(&self) -> BoxFuture<'_, Result<Run, ResourceError>> {
        Box::pin(async move {
            self.working.store(true, Ordering::SeqCst);
            let bytes = self.bytes.clone();
            let counter = tokio::spawn(async move {
                loop {
                    let n = bytes.load(Ordering::SeqCst);
                    bytes.store((n + 1_000).min(TOTAL - 1), Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            });
            self.finish.notified().await;
            counter.abort();
            self.bytes.store(TOTAL, Ordering::SeqCst);
            let run = self.process.start().await;
            self.working.store(false, Ordering::SeqCst);
            run
        })
    }
    fn stop(&self, grace: Duration) -> BoxFuture<'_, Result<(), ResourceError>> {
        self.process.stop(grace)
    }
    fn status(&self) -> BoxFuture<'_, Result<Observed, ResourceError>> {
        self.process.status()
    }
    fn health(&self) -> BoxFuture<'_, Result<kinfra_core::state::Health, ResourceError>> {
        self.process.health()
    }
    fn connection(&self) -> Connection {
        self.process.connection()
    }
    fn logs(&self, tail: usize) -> BoxFuture<'_, Result<Vec<OutputLine>, ResourceError>> {
        self.process.logs(tail)
    }
    fn remove(&self, volumes: bool) -> BoxFuture<'_, Result<(), ResourceError>> {
        self.process.remove(volumes)
    }
    fn progress(&self) -> Option<Progress> {
        if lock(&self.operation).is_some() || !self.working.load(Ordering::SeqCst) {
            return None;
        }
        let current = self.bytes.load(Ordering::SeqCst);
        Some(Progress {
            task: "pull".into(),
            phase: "downloading".into(),
            target: Some("example:1".into()),
            current: Some(current),
            total: Some(TOTAL),
            unit: Some("bytes".into()),
            percent: Some(current as f64 * 100.0 / TOTAL as f64),
            elapsed_s: 0,
        })
    }
    fn sync(&self) -> Option<SyncFacts> {
        let (raw, _) = (*lock(&self.operation))?;
        Some(SyncFacts {
            last_sync: None,
            provider_state: Some(raw.into()),
        })
    }
    fn reported_state(&self) -> Option<ReportedState> {
        let (_, words) = (*lock(&self.operation))?;
        let state = if self.working.load(Ordering::SeqCst) {
            ServiceState::Starting
        } else {
            ServiceState::Running
        };
        Some(ReportedState {
            state,
            message: words.into(),
        })
    }
}

/// The `progress` events about `name` received so far, in order.
fn progress_events(rx: &mut broadcast::Receiver<Event>, name: &str) -> Vec<Option<Progress>> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        if let EventKind::Progress { service, progress } = e.kind
            && service == name
        {
            out.push(progress);
        }
    }
    out
}

async fn start(adapter: Arc<Slow>) -> (Project, Supervisor) {
    let project = Project::new();
    let mut spec = ResourceSpec::new(adapter);
    spec.stop_grace = SECS(2);
    let sup = Supervisor::start(
        &BTreeMap::new(),
        project.opts().with_resources(vec![("work".into(), spec)]),
    )
    .await
    .expect("start");
    (project, sup)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_sampled_at_most_four_times_a_second_and_cleared_when_running() {
    let adapter = Arc::new(Slow::new("work"));
    let began = Instant::now();
    let (_project, sup) = start(adapter.clone()).await;
    let mut rx = sup.events().subscribe();
    // Status carries the work while the start runs.
    assert!(
        wait_for(SECS(10), || status_of(&sup, "work")
            .progress
            .is_some_and(|p| p.current.unwrap_or(0) > 0))
        .await,
        "status never showed the work: {:?}",
        status_of(&sup, "work")
    );
    // Let it change a few thousand times (every millisecond) over at least ~1.5 s.
    assert!(
        wait_for(SECS(20), || began.elapsed() >= Duration::from_millis(1500)
            && adapter.bytes.load(Ordering::SeqCst) >= 200_000)
        .await
    );
    let during = status_of(&sup, "work");
    assert_eq!(during.state, ServiceState::Starting);
    adapter.finish.notify_one();
    expect_state(&sup, "work", ServiceState::Running, SECS(10)).await;
    let elapsed = began.elapsed();
    assert!(
        wait_for(SECS(5), || status_of(&sup, "work").progress.is_none()).await,
        "progress stays in status once running"
    );
    let events = progress_events(&mut rx, "work");
    let shown: Vec<&Progress> = events.iter().flatten().collect();
    assert!(shown.len() >= 3, "several updates: {events:?}");
    // One per 250 ms tick at most, plus the last sample and the clearing.
    let bound = (elapsed.as_millis() / 250) as usize + 3;
    assert!(
        events.len() <= bound,
        "{} progress events in {elapsed:?} (at most {bound}): the sampling does not throttle",
        events.len()
    );
    let currents: Vec<u64> = shown.iter().filter_map(|p| p.current).collect();
    assert!(
        currents.windows(2).all(|w| w[0] <= w[1]),
        "bytes only grow: {currents:?}"
    );
    assert!(shown.iter().all(|p| p.total == Some(TOTAL)));
    assert_eq!(events.last(), Some(&None), "the last event clears it");
    sup.shutdown(SECS(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_operation_shows_its_phase_and_elapsed_time_without_a_percent() {
    let adapter = Arc::new(Slow::new("work"));
    *lock(&adapter.operation) = Some(("provisioning", "Creating the machine"));
    let (_project, sup) = start(adapter.clone()).await;
    let mut rx = sup.events().subscribe();
    assert!(
        wait_for(SECS(10), || status_of(&sup, "work")
            .progress
            .is_some_and(|p| p.elapsed_s >= 1))
        .await,
        "status never showed the operation with its time: {:?}",
        status_of(&sup, "work")
    );
    let p = status_of(&sup, "work").progress.expect("progress");
    assert_eq!(p.task, "operation");
    assert_eq!(p.phase, "provisioning");
    assert_eq!((p.percent, p.current, p.total), (None, None, None));
    *lock(&adapter.operation) = Some(("started", "Machine started"));
    assert!(
        wait_for(SECS(10), || status_of(&sup, "work")
            .progress
            .is_some_and(|p| p.phase == "started"))
        .await
    );
    adapter.finish.notify_one();
    expect_state(&sup, "work", ServiceState::Running, SECS(10)).await;
    assert!(wait_for(SECS(5), || status_of(&sup, "work").progress.is_none()).await);
    let events = progress_events(&mut rx, "work");
    let phases: Vec<&str> = events.iter().flatten().map(|p| p.phase.as_str()).collect();
    assert!(phases.contains(&"started"), "{events:?}");
    assert_eq!(events.last(), Some(&None), "the last event clears it");
    sup.shutdown(SECS(5)).await;
}
