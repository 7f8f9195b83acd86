//! The bookkeeping every provider resource repeats: the one live run it has at a time (tagged
//! by a generation, so a watcher of an old run cannot end a newer one) and its last sync with
//! the provider (`last_sync` and `provider_state`, shown beside `state` in status), and the
//! last lines of its output ([`LogRing`]).

use kinfra_core::event::ExitInfo;
use kinfra_core::resource::{OutputLine, SyncFacts};
use kinfra_core::status::LastSync;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Locks `mutex`, going on when a panicking holder poisoned it (the data is taken as it is).
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The live run of one resource, if any. Cloning shares it. `G` is what the run holds for its
/// life (a watcher task, the output sender): dropped when the run ends or is replaced.
pub struct RunSlot<G> {
    inner: Arc<Mutex<Slot<G>>>,
}

struct Slot<G> {
    generation: u64,
    run: Option<(u64, oneshot::Sender<ExitInfo>, G)>,
}

impl<G> Clone for RunSlot<G> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<G> Default for RunSlot<G> {
    fn default() -> Self {
        Self {
            inner: Arc::new(Mutex::new(Slot {
                generation: 0,
                run: None,
            })),
        }
    }
}

impl<G> RunSlot<G> {
    /// True while a run is live (begun and not ended or forgotten).
    pub fn is_live(&self) -> bool {
        lock(&self.inner)
            .run
            .as_ref()
            .is_some_and(|(_, exit, _)| !exit.is_closed())
    }

    /// Begins a new run under a new generation, replacing (dropping, without an exit) any
    /// run still held. `make` gets the generation and returns the run's exit sender and what
    /// it holds; it runs under the slot's lock, so it must not block.
    pub fn begin(&self, make: impl FnOnce(u64) -> (oneshot::Sender<ExitInfo>, G)) -> u64 {
        let mut slot = lock(&self.inner);
        slot.generation += 1;
        let generation = slot.generation;
        let old = slot.run.take();
        let (exit, held) = make(generation);
        slot.run = Some((generation, exit, held));
        drop(slot);
        drop(old);
        generation
    }

    /// Ends the live run with `info` when it is of `generation` (any run, when `None`).
    /// Returns whether a run was ended.
    pub fn end(&self, generation: Option<u64>, info: ExitInfo) -> bool {
        let run = {
            let mut slot = lock(&self.inner);
            match &slot.run {
                Some((g, _, _)) if generation.is_none_or(|want| want == *g) => slot.run.take(),
                _ => None,
            }
        };
        match run {
            Some((_, exit, held)) => {
                // What the run held goes first (its output closes), then the exit is known.
                drop(held);
                let _ = exit.send(info);
                true
            }
            None => false,
        }
    }

    /// Drops the live run without an exit: its watchers stop and its exit channel closes
    /// (the run is lost track of, not ended). For a resource being dropped.
    pub fn forget(&self) {
        let run = lock(&self.inner).run.take();
        drop(run);
    }
}

/// A task that is aborted when this is dropped: a run's watcher held in a [`RunSlot`].
pub struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The last lines of a resource's output, for `Resource::logs`: at most `capacity`, the oldest
/// let go first.
#[derive(Debug)]
pub struct LogRing {
    lines: Mutex<VecDeque<OutputLine>>,
    capacity: usize,
}

impl LogRing {
    /// An empty ring keeping at most `capacity` lines.
    pub fn new(capacity: usize) -> Self {
        Self {
            lines: Mutex::new(VecDeque::new()),
            capacity,
        }
    }

    /// Keeps `line`, letting the oldest go when the ring is full.
    pub fn push(&self, line: OutputLine) {
        let mut lines = lock(&self.lines);
        if lines.len() >= self.capacity {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// The last `n` lines kept, oldest first.
    pub fn tail(&self, n: usize) -> Vec<OutputLine> {
        let lines = lock(&self.lines);
        let skip = lines.len().saturating_sub(n);
        lines.iter().skip(skip).cloned().collect()
    }
}

/// A resource's last sync with its provider. Cloning shares it.
#[derive(Clone, Default)]
pub struct SyncRecord {
    facts: Arc<Mutex<Option<SyncFacts>>>,
}

impl SyncRecord {
    /// Records a sync that worked now; `provider_state` is the provider's raw state, when
    /// it said one.
    pub fn ok(&self, provider_state: Option<String>) {
        self.set(
            LastSync {
                at: kinfra_core::event::now_rfc3339(),
                ok: true,
                error: None,
            },
            provider_state,
        );
    }

    /// Records a sync that failed now with `error` (already free of secrets); the last
    /// provider state is kept.
    pub fn failed(&self, error: String) {
        self.set(
            LastSync {
                at: kinfra_core::event::now_rfc3339(),
                ok: false,
                error: Some(error),
            },
            None,
        );
    }

    /// Records `last_sync` as it is; when the sync worked, `provider_state` replaces the
    /// last one (also by `None`: the provider said no state this time).
    pub fn set(&self, last_sync: LastSync, provider_state: Option<String>) {
        let mut facts = lock(&self.facts);
        let facts = facts.get_or_insert_with(SyncFacts::default);
        if last_sync.ok {
            facts.provider_state = provider_state;
        }
        facts.last_sync = Some(last_sync);
    }

    /// What is known, for [`kinfra_core::resource::Resource::sync`]; `None` before any sync.
    pub fn facts(&self) -> Option<SyncFacts> {
        lock(&self.facts).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(c: i32) -> ExitInfo {
        ExitInfo {
            code: Some(c),
            signal: None,
        }
    }

    #[tokio::test]
    async fn an_old_generation_cannot_end_a_newer_run() {
        let slot: RunSlot<()> = RunSlot::default();
        let (tx1, mut rx1) = oneshot::channel();
        let first = slot.begin(|_| (tx1, ()));
        let (tx2, rx2) = oneshot::channel();
        let second = slot.begin(|_| (tx2, ()));
        assert_ne!(first, second);
        // The replaced run's exit closes without a value.
        assert!(rx1.try_recv().is_err());
        assert!(
            !slot.end(Some(first), code(3)),
            "an old watcher ended the new run"
        );
        assert!(slot.is_live());
        assert!(slot.end(Some(second), code(0)));
        assert_eq!(rx2.await.ok(), Some(code(0)));
        assert!(!slot.is_live());
        assert!(!slot.end(None, code(1)), "nothing left to end");
    }

    #[tokio::test]
    async fn ending_or_forgetting_aborts_the_held_watcher() {
        let slot: RunSlot<AbortOnDrop> = RunSlot::default();
        let (tx, _rx) = oneshot::channel();
        let mut handle = None;
        slot.begin(|_| {
            let task = tokio::spawn(std::future::pending::<()>());
            handle = Some(task.abort_handle());
            (tx, AbortOnDrop(task))
        });
        slot.forget();
        let handle = handle.expect("begin ran make");
        tokio::task::yield_now().await;
        assert!(handle.is_finished(), "the watcher outlived its run");
    }

    #[test]
    fn a_failed_sync_keeps_the_last_provider_state() {
        let sync = SyncRecord::default();
        assert_eq!(sync.facts(), None);
        sync.ok(Some("ACTIVE".into()));
        sync.failed("HTTP 500".into());
        let facts = sync.facts().expect("recorded");
        assert_eq!(facts.provider_state.as_deref(), Some("ACTIVE"));
        let last = facts.last_sync.expect("last sync");
        assert!(!last.ok);
        assert_eq!(last.error.as_deref(), Some("HTTP 500"));
    }

    #[test]
    fn a_log_ring_keeps_the_last_lines_in_order() {
        let ring = LogRing::new(3);
        for i in 0..5 {
            ring.push(OutputLine {
                stream: kinfra_core::status::LogStream::Stdout,
                text: format!("line {i}"),
            });
        }
        let texts =
            |lines: Vec<OutputLine>| -> Vec<String> { lines.into_iter().map(|l| l.text).collect() };
        assert_eq!(texts(ring.tail(10)), ["line 2", "line 3", "line 4"]);
        assert_eq!(texts(ring.tail(2)), ["line 3", "line 4"]);
        assert!(ring.tail(0).is_empty());
    }
}
