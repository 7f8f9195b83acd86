//! The observe loop of a cloud resource: every `interval` (±10% jitter, and a first observe at
//! a random point of the first interval, so a hundred resources started together poll evenly
//! spread rather than in bursts) it asks the provider for the resource's state and publishes
//! `last_sync` (`at`, `ok`, `error`) and the last `provider_state` on a `watch` channel.
//!
//! A failing observe keeps the last known state (only `last_sync` changes) and backs off; a
//! rate-limited one waits the server's `Retry-After`. Neither is a crash: the loop carries on
//! until its stop future completes.

use crate::http::HttpError;
use crate::retry::{Failure, classify};
use kinfra_core::status::LastSync;
use serde::Serialize;
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// What the loop knows of a resource: published after every observe.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ObservedStatus {
    /// The last observe's outcome (the same `last_sync` status shows); `None` before the
    /// first one ends.
    pub last_sync: Option<LastSync>,
    /// The provider's own word for the state, from the last successful observe.
    pub provider_state: Option<String>,
    /// Failed observes in a row (0 after a success).
    pub consecutive_failures: u32,
    /// Observes made so far (successful or not).
    pub observes: u64,
}

/// Why one observe failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObserveError {
    /// The provider rate-limited the call: wait `retry_after` (or back off) and observe again.
    #[error("{message}")]
    RateLimited {
        /// The server's `Retry-After`.
        retry_after: Option<Duration>,
        /// What happened.
        message: String,
    },
    /// Any other failure: back off and observe again.
    #[error("{0}")]
    Failed(String),
}

impl From<HttpError> for ObserveError {
    fn from(error: HttpError) -> Self {
        match classify(&error) {
            Failure::RateLimited(retry_after) => ObserveError::RateLimited {
                retry_after,
                message: error.to_string(),
            },
            Failure::Transient | Failure::Permanent => ObserveError::Failed(error.to_string()),
        }
    }
}

/// The loop's timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObserveConfig {
    /// Time between observes while they succeed (±10% jitter).
    pub interval: Duration,
    /// The cap of the delay after failures (which doubles from `interval`); never below
    /// `interval`.
    pub max_backoff: Duration,
    /// When the first observe runs: at once, or at a uniformly random point of the first
    /// interval (the default), which spreads resources started together over the interval.
    pub first: FirstObserve,
}

/// When an observe loop's first observe runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FirstObserve {
    /// After a uniformly random part of the interval: loops started at the same moment
    /// (a runtime booting a hundred resources) end up evenly spread, never polling in a burst.
    #[default]
    Spread,
    /// At once (the caller has no state yet and wants one).
    AtOnce,
}

impl ObserveConfig {
    /// `interval`, backing off up to eight times it, the first observe spread.
    pub fn every(interval: Duration) -> Self {
        Self {
            interval,
            max_backoff: interval.saturating_mul(8),
            first: FirstObserve::Spread,
        }
    }

    /// The same with the first observe at once.
    pub fn at_once(self) -> Self {
        Self {
            first: FirstObserve::AtOnce,
            ..self
        }
    }

    /// The delay before the first observe.
    pub fn first_delay(&self) -> Duration {
        match self.first {
            FirstObserve::AtOnce => Duration::ZERO,
            FirstObserve::Spread => self.interval.mul_f64(kinfra_core::random::unit_f64()),
        }
    }

    /// The delay after a success: `interval` ±10%.
    pub fn next_delay(&self) -> Duration {
        jitter(self.interval)
    }

    /// The delay after the `failures`-th failure in a row (1-based): `interval * 2^failures`
    /// capped at `max_backoff`, ±10%.
    pub fn failure_delay(&self, failures: u32) -> Duration {
        let cap = self.max_backoff.max(self.interval);
        let base = self
            .interval
            .saturating_mul(2u32.saturating_pow(failures.min(31)))
            .min(cap);
        jitter(base)
    }
}

/// `d` ±10%, uniformly.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.9 + 0.2 * kinfra_core::random::unit_f64())
}

/// Runs the observe loop until `stop` completes, publishing on `status` after every observe.
/// The first observe runs after [`ObserveConfig::first_delay`]. `observe` returns the
/// provider's state string.
pub async fn run<F, Fut, S>(
    config: ObserveConfig,
    mut observe: F,
    stop: S,
    status: watch::Sender<ObservedStatus>,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<String, ObserveError>>,
    S: Future<Output = ()>,
{
    tokio::pin!(stop);
    let first = config.first_delay();
    if !first.is_zero() {
        tokio::select! {
            biased;
            () = &mut stop => return,
            () = tokio::time::sleep(first) => {}
        }
    }
    loop {
        let answer = tokio::select! {
            biased;
            () = &mut stop => return,
            answer = observe() => answer,
        };
        let at = kinfra_core::event::now_rfc3339();
        let mut wait = config.next_delay();
        status.send_modify(|s| {
            s.observes += 1;
            match &answer {
                Ok(state) => {
                    s.provider_state = Some(state.clone());
                    s.consecutive_failures = 0;
                    s.last_sync = Some(LastSync {
                        at,
                        ok: true,
                        error: None,
                    });
                }
                Err(error) => {
                    s.consecutive_failures = s.consecutive_failures.saturating_add(1);
                    s.last_sync = Some(LastSync {
                        at,
                        ok: false,
                        error: Some(error.to_string()),
                    });
                    wait = match error {
                        ObserveError::RateLimited {
                            retry_after: Some(after),
                            ..
                        } => *after,
                        _ => config.failure_delay(s.consecutive_failures),
                    };
                }
            }
        });
        if let Err(error) = &answer {
            match error {
                ObserveError::RateLimited { .. } => {
                    debug!(%error, ?wait, "Observe rate limited; waiting.");
                }
                ObserveError::Failed(_) => warn!(%error, ?wait, "Observe failed; backing off."),
            }
        }
        tokio::select! {
            biased;
            () = &mut stop => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Spawns [`run`] on the current runtime: the latest status and the loop's task (which ends
/// when `stop` completes).
pub fn spawn<F, Fut, S>(
    config: ObserveConfig,
    observe: F,
    stop: S,
) -> (watch::Receiver<ObservedStatus>, JoinHandle<()>)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<String, ObserveError>> + Send + 'static,
    S: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = watch::channel(ObservedStatus::default());
    let task = tokio::spawn(run(config, observe, stop, tx));
    (rx, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_jitter_within_ten_percent_and_back_off_capped() {
        let config = ObserveConfig {
            interval: Duration::from_secs(10),
            max_backoff: Duration::from_secs(60),
            first: FirstObserve::Spread,
        };
        for _ in 0..200 {
            let d = config.next_delay();
            assert!(
                d >= Duration::from_secs(9) && d <= Duration::from_secs(11),
                "{d:?}"
            );
        }
        let first = config.failure_delay(1);
        assert!(first >= Duration::from_secs(18) && first <= Duration::from_secs(22));
        for failures in [3, 10, u32::MAX] {
            let d = config.failure_delay(failures);
            assert!(
                d >= Duration::from_secs(54) && d <= Duration::from_secs(66),
                "{d:?}"
            );
        }
    }

    /// Loops started together spread their first observe over the whole first interval
    /// (what keeps a hundred resources from polling in one burst); `at_once` does not wait.
    #[test]
    fn the_first_observe_is_spread_over_the_interval_unless_at_once() {
        let config = ObserveConfig::every(Duration::from_secs(10));
        let firsts: Vec<Duration> = (0..1000).map(|_| config.first_delay()).collect();
        assert!(firsts.iter().all(|d| *d < Duration::from_secs(10)));
        assert!(
            firsts.iter().any(|d| *d < Duration::from_secs(1)),
            "none early"
        );
        assert!(
            firsts.iter().any(|d| *d > Duration::from_secs(9)),
            "none late"
        );
        assert_eq!(config.at_once().first_delay(), Duration::ZERO);
    }
}
