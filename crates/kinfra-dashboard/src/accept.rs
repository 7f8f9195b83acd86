//! Backing off when `accept` fails, so a listener that cannot take connections (no file
//! descriptors left: EMFILE/ENFILE, or no memory) waits instead of spinning, and says so once
//! per interval with a count instead of once per attempt.
//!
//! Used by the dashboard's accept loop and by the runtime's control socket.

use std::time::{Duration, Instant};

/// First pause after a failed accept.
pub const FIRST_DELAY: Duration = Duration::from_millis(10);
/// Longest pause between attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(1);
/// At most one warning per this interval.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// The back-off state of one listener: the pause doubles from [`FIRST_DELAY`] to
/// [`MAX_DELAY`] while accepts fail and starts over after one succeeds.
#[derive(Debug)]
pub struct AcceptBackoff {
    /// What listens, for the log (`dashboard`, `control socket`).
    listener: &'static str,
    delay: Duration,
    /// Failures since the last warning.
    unreported: u64,
    /// Failures since the last success.
    failing: u64,
    last_report: Option<Instant>,
}

impl AcceptBackoff {
    /// A fresh back-off for the listener named `listener`.
    pub fn new(listener: &'static str) -> Self {
        Self {
            listener,
            delay: FIRST_DELAY,
            unreported: 0,
            failing: 0,
            last_report: None,
        }
    }

    /// True for errors that concern one connection only (the peer gave up before we
    /// accepted it): accept again at once, no pause, no warning.
    pub fn is_connection_error(error: &std::io::Error) -> bool {
        matches!(
            error.kind(),
            std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::Interrupted
        )
    }

    /// Records a failed accept and returns how long to pause before the next attempt. Warns
    /// at most once per [`REPORT_INTERVAL`], with the number of failures since the last
    /// warning.
    pub fn failed(&mut self, error: &std::io::Error) -> Duration {
        self.unreported += 1;
        self.failing += 1;
        let now = Instant::now();
        if self
            .last_report
            .is_none_or(|last| now.duration_since(last) >= REPORT_INTERVAL)
        {
            tracing::warn!(
                listener = self.listener,
                %error,
                failures = self.unreported,
                pause_ms = self.delay.as_millis() as u64,
                "Accept failed; pausing before the next attempt."
            );
            self.unreported = 0;
            self.last_report = Some(now);
        }
        let delay = self.delay;
        self.delay = (self.delay * 2).min(MAX_DELAY);
        delay
    }

    /// Records a successful accept: the next failure pauses [`FIRST_DELAY`] again.
    pub fn succeeded(&mut self) {
        if self.failing > 0 {
            tracing::info!(
                listener = self.listener,
                failures = self.failing,
                "Accepting connections again."
            );
            self.failing = 0;
            self.unreported = 0;
        }
        self.delay = FIRST_DELAY;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_a_cap_and_starts_over() {
        let mut b = AcceptBackoff::new("test");
        let e = std::io::Error::from_raw_os_error(24);
        let delays: Vec<_> = (0..10).map(|_| b.failed(&e)).collect();
        assert_eq!(delays[0], FIRST_DELAY);
        assert_eq!(delays[1], FIRST_DELAY * 2);
        assert_eq!(*delays.last().expect("delays"), MAX_DELAY);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        b.succeeded();
        assert_eq!(b.failed(&e), FIRST_DELAY);
    }

    #[test]
    fn connection_errors_are_not_listener_errors() {
        assert!(AcceptBackoff::is_connection_error(&std::io::Error::from(
            std::io::ErrorKind::ConnectionAborted
        )));
        assert!(!AcceptBackoff::is_connection_error(
            &std::io::Error::from_raw_os_error(24)
        ));
    }
}
