//! Upstream backends and round-robin pools with passive failure detection: a backend that
//! refused a connection is skipped for a while, without any lock on the request path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Milliseconds since the first call in this process (never 0, so 0 can mean "up").
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    start.elapsed().as_millis() as u64 + 1
}

/// One upstream address.
#[derive(Debug)]
pub(crate) struct Backend {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Speak TLS to it.
    pub tls: bool,
    /// SNI (and certificate name) for TLS upstreams.
    pub sni: String,
    /// Skipped by the round-robin until this time (`now_ms`), after a failed connect.
    down_until: AtomicU64,
}

impl Backend {
    /// A backend that is considered up.
    pub(crate) fn new(addr: SocketAddr, tls: bool, sni: String) -> Self {
        Self {
            addr,
            tls,
            sni,
            down_until: AtomicU64::new(0),
        }
    }

    fn is_up(&self, now: u64) -> bool {
        self.down_until.load(Ordering::Relaxed) <= now
    }
}

/// A round-robin set of backends.
#[derive(Debug)]
pub(crate) struct Pool {
    backends: Vec<Arc<Backend>>,
    next: AtomicUsize,
    fail_timeout: Duration,
}

impl Pool {
    /// A pool over `backends`; a failed backend is skipped for `fail_timeout`.
    pub(crate) fn new(backends: Vec<Arc<Backend>>, fail_timeout: Duration) -> Self {
        Self {
            backends,
            next: AtomicUsize::new(0),
            fail_timeout,
        }
    }

    /// A pool of one plain-HTTP backend.
    pub(crate) fn single(addr: SocketAddr, fail_timeout: Duration) -> Self {
        Self::new(
            vec![Arc::new(Backend::new(addr, false, String::new()))],
            fail_timeout,
        )
    }

    /// Number of backends.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.backends.len()
    }

    /// The addresses, in order.
    pub(crate) fn addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.backends.iter().map(|b| b.addr)
    }

    /// The next backend in turn, skipping `exclude` and backends marked down. When every
    /// candidate is down, one of them is returned anyway (it may have come back).
    pub(crate) fn pick(&self, exclude: Option<SocketAddr>) -> Option<Arc<Backend>> {
        let n = self.backends.len();
        if n == 0 {
            return None;
        }
        let start = if n == 1 {
            let only = &self.backends[0];
            // Never marked down (the usual case): no clock read.
            if only.down_until.load(Ordering::Relaxed) == 0 && Some(only.addr) != exclude {
                return Some(only.clone());
            }
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed)
        };
        let now = now_ms();
        let mut fallback = None;
        for i in 0..n {
            let backend = &self.backends[(start + i) % n];
            if Some(backend.addr) == exclude {
                continue;
            }
            if backend.is_up(now) {
                return Some(backend.clone());
            }
            fallback.get_or_insert(backend);
        }
        fallback.cloned()
    }

    /// True when a backend other than `addr` exists.
    pub(crate) fn has_other(&self, addr: SocketAddr) -> bool {
        self.backends.iter().any(|b| b.addr != addr)
    }

    /// Records a failed connect: the backend is skipped for a while.
    pub(crate) fn mark_failed(&self, backend: &Backend) {
        backend.down_until.store(
            now_ms() + self.fail_timeout.as_millis() as u64,
            Ordering::Relaxed,
        );
    }

    /// Records a successful connect.
    pub(crate) fn mark_ok(backend: &Backend) {
        if backend.down_until.load(Ordering::Relaxed) != 0 {
            backend.down_until.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pool(ports: &[u16]) -> Pool {
        Pool::new(
            ports
                .iter()
                .map(|p| {
                    Arc::new(Backend::new(
                        SocketAddr::from(([127, 0, 0, 1], *p)),
                        false,
                        String::new(),
                    ))
                })
                .collect(),
            Duration::from_secs(60),
        )
    }

    #[test]
    fn round_robin_skips_failed_and_excluded() {
        let p = pool(&[1, 2, 3]);
        let picks: Vec<u16> = (0..6).map(|_| p.pick(None).unwrap().addr.port()).collect();
        assert_eq!(picks, [1, 2, 3, 1, 2, 3]);
        let two = p.backends[1].clone();
        p.mark_failed(&two);
        let picks: Vec<u16> = (0..4).map(|_| p.pick(None).unwrap().addr.port()).collect();
        assert!(!picks.contains(&2), "{picks:?}");
        Pool::mark_ok(&two);
        let ex = SocketAddr::from(([127, 0, 0, 1], 1));
        for _ in 0..6 {
            assert_ne!(p.pick(Some(ex)).unwrap().addr.port(), 1);
        }
        assert!(p.has_other(ex));
    }

    #[test]
    fn all_down_still_picks_one() {
        let p = pool(&[1, 2]);
        for b in p.backends.clone() {
            p.mark_failed(&b);
        }
        assert!(p.pick(None).is_some());
        let only = pool(&[7]);
        let ex = SocketAddr::from(([127, 0, 0, 1], 7));
        assert!(only.pick(Some(ex)).is_none());
        assert!(!only.has_other(ex));
    }
}
