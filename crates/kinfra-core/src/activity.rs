//! Activity of the targets that sleep when idle (`scale_to_zero`): the proxy records requests
//! and open connections here, the runtime reads how long each target has been idle.
//!
//! Recording is two atomic operations per request on a target the proxy already looked up,
//! so routes without `scale_to_zero` pay nothing and the others nearly nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// What the board needs to know of one target's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetPolicy {
    /// A request through the proxy wakes it (`wake = "request"`).
    pub wakes_on_request: bool,
    /// Longest wait for it to be ready after a wake.
    pub wake_timeout: Duration,
}

/// The tracked targets by name. Shared by the proxy (writes activity) and the runtime's
/// scale-to-zero controller (reads it, sets the targets at start and at each reload).
#[derive(Debug)]
pub struct ActivityBoard {
    epoch: Instant,
    targets: RwLock<HashMap<String, Arc<TargetActivity>>>,
}

impl Default for ActivityBoard {
    fn default() -> Self {
        Self::new()
    }
}

impl ActivityBoard {
    /// An empty board.
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            targets: RwLock::new(HashMap::new()),
        }
    }

    /// Sets the tracked targets. A target that stays keeps its activity (and gets the new
    /// policy); a new one starts as active now; the others are forgotten.
    pub fn set_targets(&self, targets: impl IntoIterator<Item = (String, TargetPolicy)>) {
        let mut map = self.targets.write().unwrap_or_else(|e| e.into_inner());
        let mut next = HashMap::new();
        for (name, policy) in targets {
            let target = match map.remove(&name) {
                Some(kept) => {
                    kept.set_policy(policy);
                    kept
                }
                None => Arc::new(TargetActivity::new(self.epoch, policy)),
            };
            next.insert(name, target);
        }
        *map = next;
    }

    /// The activity of `name`, when it is tracked.
    pub fn get(&self, name: &str) -> Option<Arc<TargetActivity>> {
        self.targets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// The tracked names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .targets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }

    /// True when no target is tracked.
    pub fn is_empty(&self) -> bool {
        self.targets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }
}

/// One target's activity: requests and connections open now, and when the last one began or
/// ended.
#[derive(Debug)]
pub struct TargetActivity {
    epoch: Instant,
    in_flight: AtomicU32,
    /// Milliseconds since `epoch` of the last activity.
    last_ms: AtomicU64,
    wakes_on_request: AtomicBool,
    wake_timeout_ms: AtomicU64,
    /// Set from the moment the runtime decided to put it to sleep until it is running again:
    /// the proxy holds new requests (and wakes it after the sleep) instead of sending them to
    /// a backend that is going away.
    draining: AtomicBool,
}

impl TargetActivity {
    fn new(epoch: Instant, policy: TargetPolicy) -> Self {
        let target = Self {
            epoch,
            in_flight: AtomicU32::new(0),
            last_ms: AtomicU64::new(0),
            wakes_on_request: AtomicBool::new(policy.wakes_on_request),
            wake_timeout_ms: AtomicU64::new(0),
            draining: AtomicBool::new(false),
        };
        target.set_policy(policy);
        target.touch();
        target
    }

    fn set_policy(&self, policy: TargetPolicy) {
        self.wakes_on_request
            .store(policy.wakes_on_request, Ordering::Relaxed);
        let ms = u64::try_from(policy.wake_timeout.as_millis()).unwrap_or(u64::MAX);
        self.wake_timeout_ms.store(ms, Ordering::Relaxed);
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A request or connection begins; it counts as open until the guard is dropped. A
    /// caller about to send it to the target checks [`TargetActivity::is_draining`] after
    /// this (the order matters: see [`TargetActivity::try_drain`]).
    pub fn begin(self: &Arc<Self>) -> ActivityGuard {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.touch();
        ActivityGuard(self.clone())
    }

    /// Marks the target as going to sleep when nothing is open, and says whether it did.
    /// The flag is set before the open count is read, and the proxy counts a request before
    /// it reads the flag, so of a request and a sleep racing at least one sees the other:
    /// either the sleep is called off, or the request is held and wakes the target after it.
    pub fn try_drain(&self) -> bool {
        self.draining.store(true, Ordering::SeqCst);
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            self.draining.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Marks the target as going to sleep whatever is open (a sleep asked for by hand).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// The target is (about to be) running again, or its sleep was called off.
    pub fn undrain(&self) {
        self.draining.store(false, Ordering::SeqCst);
    }

    /// True from a decided sleep until the target runs again: do not send it requests.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Records activity now (a wake, a short exchange), without keeping anything open.
    pub fn touch(&self) {
        self.last_ms.fetch_max(self.now_ms(), Ordering::AcqRel);
    }

    /// Requests and connections open now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// How long it has been idle: zero while something is open, else the time since the
    /// last activity.
    pub fn idle_for(&self) -> Duration {
        if self.in_flight() > 0 {
            return Duration::ZERO;
        }
        let last = self.last_ms.load(Ordering::Acquire);
        Duration::from_millis(self.now_ms().saturating_sub(last))
    }

    /// Whether a request through the proxy wakes it.
    pub fn wakes_on_request(&self) -> bool {
        self.wakes_on_request.load(Ordering::Relaxed)
    }

    /// Longest wait for it to be ready after a wake.
    pub fn wake_timeout(&self) -> Duration {
        Duration::from_millis(self.wake_timeout_ms.load(Ordering::Relaxed))
    }
}

/// An open request or connection of a target; dropping it ends it (and records activity).
#[derive(Debug)]
pub struct ActivityGuard(Arc<TargetActivity>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> TargetPolicy {
        TargetPolicy {
            wakes_on_request: true,
            wake_timeout: Duration::from_secs(7),
        }
    }

    #[test]
    fn open_requests_keep_a_target_busy_and_the_board_keeps_activity_across_updates() {
        let board = ActivityBoard::new();
        board.set_targets([("api".to_owned(), policy())]);
        let api = board.get("api").expect("tracked");
        assert_eq!(api.wake_timeout(), Duration::from_secs(7));
        let guard = api.begin();
        assert_eq!(api.in_flight(), 1);
        assert_eq!(api.idle_for(), Duration::ZERO);
        board.set_targets([
            (
                "api".to_owned(),
                TargetPolicy {
                    wakes_on_request: false,
                    wake_timeout: Duration::from_secs(1),
                },
            ),
            ("db".to_owned(), policy()),
        ]);
        let again = board.get("api").expect("still tracked");
        assert!(Arc::ptr_eq(&api, &again));
        assert!(!again.wakes_on_request());
        // A sleep is called off while something is open, and holds once nothing is.
        assert!(!api.try_drain());
        assert!(!api.is_draining());
        drop(guard);
        assert_eq!(api.in_flight(), 0);
        assert!(api.try_drain());
        assert!(api.is_draining());
        api.undrain();
        assert!(!api.is_draining());
        assert_eq!(board.names(), ["api", "db"]);
        board.set_targets([]);
        assert!(board.get("api").is_none());
        assert!(board.is_empty());
    }
}
