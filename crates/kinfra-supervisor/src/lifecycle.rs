//! The lifecycle core shared by the service actor and the resource actor: what an actor is
//! doing ([`Mode`]), and what follows an exit ([`Restarts`]: restart policy, backoff with
//! jitter, reset after a stable run, crash-loop guard). Each actor keeps its own process
//! handling and its own words for messages; the decisions are made here, once.

use crate::backoff::{self, CrashGuard};
use kinfra_core::config::{BackoffConfig, CrashLoopConfig, RestartPolicy};
use std::time::{Duration, Instant};

/// What an actor is doing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Mode {
    /// Waiting for dependencies, then starting.
    WaitDeps,
    /// A process (or resource run) is up, or should be.
    Active,
    /// Waiting for a restart delay to pass.
    Backoff(tokio::time::Instant),
    /// Nothing to do until a command comes.
    Idle,
}

/// What follows an exit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum AfterExit {
    /// The policy does not restart: `Completed` when it succeeded, else `Failed`.
    Done {
        /// The run failed (non-zero exit, signal, liveness).
        failed: bool,
    },
    /// Too many failures in the crash-loop window: `Failed`, until started by hand.
    CrashLoop {
        /// Failures in the window.
        failures: u32,
    },
    /// Restart after `delay` (restart number `attempt` in a row).
    Restart {
        /// How long to wait.
        delay: Duration,
        /// Restarts in a row, this one included.
        attempt: u32,
    },
}

/// Restarts in a row and the crash-loop guard of one actor.
#[derive(Debug, Clone)]
pub(crate) struct Restarts {
    attempt: u32,
    guard: CrashGuard,
}

impl Restarts {
    /// No restarts yet.
    pub(crate) fn new(crash_loop: CrashLoopConfig) -> Self {
        Self {
            attempt: 0,
            guard: CrashGuard::new(crash_loop),
        }
    }

    /// Decides what follows a run that lasted `ran` and ended (`failed` or not), under
    /// `policy` and `backoff`. A run of at least `backoff.reset_after` starts the delays
    /// over; every restart counts towards the crash-loop guard.
    pub(crate) fn after_exit(
        &mut self,
        policy: RestartPolicy,
        backoff: &BackoffConfig,
        failed: bool,
        ran: Duration,
    ) -> AfterExit {
        let restart = match policy {
            RestartPolicy::No => false,
            RestartPolicy::OnFailure => failed,
            RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
        };
        if !restart {
            return AfterExit::Done { failed };
        }
        if ran >= backoff.reset_after.0 {
            self.attempt = 0;
        }
        self.after_start_failure(backoff)
    }

    /// Decides what follows a start that failed for a reason that may pass (whatever the
    /// policy: nothing ran): a restart after the next delay, or a crash loop.
    pub(crate) fn after_start_failure(&mut self, backoff: &BackoffConfig) -> AfterExit {
        if self.guard.record(Instant::now()) {
            return AfterExit::CrashLoop {
                failures: self.guard.count(),
            };
        }
        let delay = backoff::delay(backoff, self.attempt, kinfra_core::random::unit_f64());
        self.attempt = self.attempt.saturating_add(1);
        AfterExit::Restart {
            delay,
            attempt: self.attempt,
        }
    }

    /// A start or restart by hand: the delays start over and the guard forgets.
    pub(crate) fn manual_start(&mut self) {
        self.attempt = 0;
        self.guard.reset();
    }

    /// A stop by hand: the next automatic restart waits the shortest delay again.
    pub(crate) fn reset_delays(&mut self) {
        self.attempt = 0;
    }

    /// Forgets the crash-loop failures only.
    pub(crate) fn reset_guard(&mut self) {
        self.guard.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kinfra_core::config::Dur;

    fn backoff() -> BackoffConfig {
        BackoffConfig {
            initial: Dur::from_millis(100),
            max: Dur::from_millis(400),
            factor: 2.0,
            jitter: 0.0,
            reset_after: Dur::from_secs(10),
        }
    }

    #[test]
    fn policy_backoff_reset_and_crash_loop() {
        let mut r = Restarts::new(CrashLoopConfig {
            max_failures: 4,
            window: Dur::from_secs(60),
        });
        let b = backoff();
        let short = Duration::from_millis(1);
        assert_eq!(
            r.after_exit(RestartPolicy::No, &b, true, short),
            AfterExit::Done { failed: true }
        );
        assert_eq!(
            r.after_exit(RestartPolicy::OnFailure, &b, false, short),
            AfterExit::Done { failed: false }
        );
        let delay = |a: AfterExit| match a {
            AfterExit::Restart { delay, .. } => delay.as_millis(),
            other => panic!("expected a restart, got {other:?}"),
        };
        assert_eq!(
            delay(r.after_exit(RestartPolicy::Always, &b, false, short)),
            100
        );
        assert_eq!(
            delay(r.after_exit(RestartPolicy::OnFailure, &b, true, short)),
            200
        );
        // A stable run starts the delays over.
        let stable = Duration::from_secs(10);
        assert_eq!(
            delay(r.after_exit(RestartPolicy::Always, &b, true, stable)),
            100
        );
        assert_eq!(
            r.after_exit(RestartPolicy::Always, &b, true, short),
            AfterExit::CrashLoop { failures: 4 }
        );
        r.manual_start();
        assert_eq!(
            delay(r.after_exit(RestartPolicy::Always, &b, true, short)),
            100
        );
    }
}
