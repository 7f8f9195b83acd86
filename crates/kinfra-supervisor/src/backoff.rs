//! Restart delays (exponential backoff with jitter) and the crash-loop guard.

use kinfra_core::config::{BackoffConfig, CrashLoopConfig};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The delay before restart number `attempt` in a row (0 = the first restart after a stable
/// run). `unit` is a random number in `[0, 1)` for the jitter.
///
/// `initial * factor^attempt`, capped at `max`, then spread by `±jitter`. With
/// `initial = 0s` every restart is immediate (the crash-loop guard bounds a tight loop).
pub fn delay(cfg: &BackoffConfig, attempt: u32, unit: f64) -> Duration {
    let initial = cfg.initial.0.as_secs_f64();
    if initial <= 0.0 {
        return Duration::ZERO;
    }
    let factor = if cfg.factor.is_finite() && cfg.factor >= 1.0 {
        cfg.factor
    } else {
        1.0
    };
    let max = cfg.max.0.as_secs_f64().max(initial);
    let base = (initial * factor.powi(attempt.min(64) as i32)).min(max);
    let jitter = if cfg.jitter.is_finite() {
        cfg.jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let spread = base * jitter * (unit.clamp(0.0, 1.0) * 2.0 - 1.0);
    Duration::from_secs_f64((base + spread).max(0.0))
}

/// Counts failures in a sliding window; trips at `max_failures`.
#[derive(Debug, Clone)]
pub struct CrashGuard {
    cfg: CrashLoopConfig,
    failures: VecDeque<Instant>,
}

impl CrashGuard {
    /// A guard with no failures recorded.
    pub fn new(cfg: CrashLoopConfig) -> Self {
        Self {
            cfg,
            failures: VecDeque::new(),
        }
    }

    /// Records a failure at `now`; true when the guard trips.
    pub fn record(&mut self, now: Instant) -> bool {
        if self.cfg.max_failures == 0 {
            return false;
        }
        self.failures.push_back(now);
        while let Some(first) = self.failures.front() {
            if now.duration_since(*first) > self.cfg.window.0 {
                self.failures.pop_front();
            } else {
                break;
            }
        }
        self.failures.len() as u32 >= self.cfg.max_failures
    }

    /// Failures currently in the window.
    pub fn count(&self) -> u32 {
        self.failures.len() as u32
    }

    /// Forgets every failure (after a manual start).
    pub fn reset(&mut self) {
        self.failures.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kinfra_core::config::Dur;

    fn cfg(initial_ms: u64, factor: f64, max_ms: u64, jitter: f64) -> BackoffConfig {
        BackoffConfig {
            initial: Dur::from_millis(initial_ms),
            factor,
            max: Dur::from_millis(max_ms),
            jitter,
            reset_after: Dur::from_secs(30),
        }
    }

    #[test]
    fn grows_exponentially_and_caps() {
        let c = cfg(100, 2.0, 1000, 0.0);
        let ms: Vec<u128> = (0..6).map(|a| delay(&c, a, 0.5).as_millis()).collect();
        assert_eq!(ms, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn zero_initial_is_immediate() {
        let c = cfg(0, 2.0, 1000, 0.5);
        assert_eq!(delay(&c, 0, 0.9), Duration::ZERO);
        assert_eq!(delay(&c, 5, 0.9), Duration::ZERO);
    }

    #[test]
    fn jitter_stays_in_band() {
        let c = cfg(1000, 1.0, 1000, 0.1);
        assert_eq!(delay(&c, 0, 0.0).as_millis(), 900);
        assert_eq!(delay(&c, 0, 0.5).as_millis(), 1000);
        let hi = delay(&c, 0, 0.999_999).as_millis();
        assert!((1099..=1100).contains(&hi), "{hi}");
    }

    #[test]
    fn guard_trips_within_window_only() {
        let mut g = CrashGuard::new(CrashLoopConfig {
            max_failures: 3,
            window: Dur::from_secs(10),
        });
        let t0 = Instant::now();
        assert!(!g.record(t0));
        assert!(!g.record(t0 + Duration::from_secs(1)));
        // The first failure falls out of the window.
        assert!(!g.record(t0 + Duration::from_secs(11)));
        assert_eq!(g.count(), 2);
        assert!(g.record(t0 + Duration::from_secs(11)));
        g.reset();
        assert_eq!(g.count(), 0);
    }

    #[test]
    fn guard_off_with_zero() {
        let mut g = CrashGuard::new(CrashLoopConfig {
            max_failures: 0,
            window: Dur::from_secs(10),
        });
        let t0 = Instant::now();
        assert!((0..100).all(|_| !g.record(t0)));
    }
}
