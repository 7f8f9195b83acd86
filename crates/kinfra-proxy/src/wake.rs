//! Waking sleeping targets for requests (`scale_to_zero`): one `act(Wake)` per target at a
//! time (single flight), shared by every request waiting for it and bounded by the target's
//! wake timeout. A wake that failed is remembered for a few seconds, so clients are answered
//! at once (with `Retry-After`) instead of starting wake after wake.

use crate::metrics::WakeMetrics;
use crate::pages::{Page, WAKE_RETRY_AFTER};
use crate::state::RouteState;
use kinfra_core::view::{Action, ActionError, RuntimeControl};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How a wake ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WakeOutcome {
    /// The runtime says the target is ready.
    Ready,
    /// The runtime could not wake it, for this reason.
    Failed(String),
    /// It was not ready within its wake timeout.
    TimedOut(String),
}

impl WakeOutcome {
    /// The metric label.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::Ready => "ok",
            Self::Failed(_) => "failed",
            Self::TimedOut(_) => "timeout",
        }
    }

    /// The 503 page of a wake that did not succeed (`None` for a ready target).
    pub(crate) fn page(&self, service: &str) -> Option<Page> {
        match self {
            Self::Ready => None,
            Self::Failed(reason) => Some(Page::wake_failed(service, false, reason)),
            Self::TimedOut(reason) => Some(Page::wake_failed(service, true, reason)),
        }
    }
}

/// Where the outcome of one wake in flight is announced (`None` until it ends).
pub(crate) type Flight = watch::Receiver<Option<WakeOutcome>>;

/// Wakes in flight and recent failures, by target.
#[derive(Default)]
struct Book {
    flights: HashMap<Arc<str>, Flight>,
    failures: HashMap<Arc<str>, (Instant, WakeOutcome)>,
}

/// Starts wakes through the runtime and lets requests wait for them.
pub(crate) struct Wakes {
    /// Weak: the runtime owns the proxy, so a strong reference here would be a cycle that
    /// keeps the runtime (its supervisor and state-dir locks) alive after shutdown.
    control: std::sync::Weak<dyn RuntimeControl>,
    /// The runtime the proxy was started from: wakes run there, not on pingora's threads.
    runtime: tokio::runtime::Handle,
    /// Refreshed from the runtime's status as soon as a wake succeeds.
    routes: Arc<RouteState>,
    book: parking_lot::Mutex<Book>,
    /// Held requests and wakes by target.
    pub(crate) metrics: WakeMetrics,
}

impl std::fmt::Debug for Wakes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wakes").finish_non_exhaustive()
    }
}

/// The reason of a refused wake, for people.
fn reason(error: ActionError) -> String {
    match error {
        ActionError::NotAvailable { reason, .. } => reason,
        other => other.to_string(),
    }
}

impl Wakes {
    /// Wakes through `control`, run on `runtime`; `routes` is refreshed after each success.
    pub(crate) fn new(
        control: Arc<dyn RuntimeControl>,
        runtime: tokio::runtime::Handle,
        routes: Arc<RouteState>,
        tracking: bool,
    ) -> Self {
        Self {
            control: Arc::downgrade(&control),
            runtime,
            routes,
            book: parking_lot::Mutex::new(Book::default()),
            metrics: WakeMetrics::new(tracking),
        }
    }

    /// The outcome of a wake of `service` that failed less than [`WAKE_RETRY_AFTER`] seconds
    /// ago.
    pub(crate) fn recent_failure(&self, service: &str) -> Option<WakeOutcome> {
        let mut book = self.book.lock();
        let (at, outcome) = book.failures.get(service)?;
        if at.elapsed() < Duration::from_secs(u64::from(WAKE_RETRY_AFTER)) {
            return Some(outcome.clone());
        }
        book.failures.remove(service);
        None
    }

    /// Joins the wake of `service` in flight, or, when `start`, starts one (`act(Wake)`
    /// bounded by `timeout`); `None` when there is none and `start` is false.
    pub(crate) fn join(
        self: &Arc<Self>,
        service: &Arc<str>,
        timeout: Duration,
        start: bool,
    ) -> Option<Flight> {
        let mut book = self.book.lock();
        if let Some(flight) = book.flights.get(service) {
            return Some(flight.clone());
        }
        if !start {
            return None;
        }
        let (tx, rx) = watch::channel(None);
        book.flights.insert(service.clone(), rx.clone());
        drop(book);
        tracing::info!(service = %service, ?timeout, "Waking for a request.");
        let wakes = self.clone();
        let service = service.clone();
        self.runtime.spawn(async move {
            let started = Instant::now();
            let outcome = match wakes.control.upgrade() {
                None => WakeOutcome::Failed("The runtime is shutting down.".into()),
                Some(control) => {
                    let act = control.act(Action::Wake, &service);
                    match tokio::time::timeout(timeout, act).await {
                        Ok(Ok(())) => {
                            // Serve it from now on, without waiting for the event to come
                            // around.
                            wakes.routes.apply_status(&control.status());
                            WakeOutcome::Ready
                        }
                        Ok(Err(error)) => WakeOutcome::Failed(reason(error)),
                        Err(_) => {
                            WakeOutcome::TimedOut(format!("It was not ready within {timeout:?}."))
                        }
                    }
                }
            };
            wakes.metrics.wake(&service, outcome.label());
            match &outcome {
                WakeOutcome::Ready => tracing::info!(
                    service = %service,
                    took_ms = started.elapsed().as_millis() as u64,
                    "Woken for a request."
                ),
                WakeOutcome::Failed(reason) | WakeOutcome::TimedOut(reason) => tracing::warn!(
                    service = %service,
                    outcome = outcome.label(),
                    %reason,
                    "Waking for a request failed."
                ),
            }
            {
                let mut book = wakes.book.lock();
                book.flights.remove(&service);
                if outcome == WakeOutcome::Ready {
                    book.failures.remove(&service);
                } else {
                    book.failures
                        .insert(service.clone(), (Instant::now(), outcome.clone()));
                }
            }
            tx.send_replace(Some(outcome));
        });
        Some(rx)
    }
}
