//! A per-instance token bucket: one provider instance (one account) never sends faster than
//! its configured `rate_limit` (`"5/s"`, `"100/m"`, `"1/h"`), and never bursts past the
//! bucket's capacity (the count of the rate).
//!
//! Clones share the bucket, so every resource of an instance draws from the same tokens.
//! Waiters are served in arrival order (a fair tokio mutex guards the refill).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// A rate: `count` requests per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests allowed per period, also the bucket's capacity (at least 1).
    pub count: u32,
    /// The period.
    pub per: Duration,
}

/// A rate string that is not `<count>/<s|m|h>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid rate {value:?}: {reason} (expected like \"5/s\", \"100/m\", \"1/h\")")]
pub struct RateParseError {
    /// The value as written.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FromStr for Rate {
    type Err = RateParseError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let error = |reason: &str| RateParseError {
            value: value.to_string(),
            reason: reason.to_string(),
        };
        let (count, unit) = value
            .trim()
            .split_once('/')
            .ok_or_else(|| error("no '/'"))?;
        let count: u32 = count
            .trim()
            .parse()
            .map_err(|_| error("the count is not a whole number"))?;
        if count == 0 {
            return Err(error("the count must be at least 1"));
        }
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(error("the unit must be s, m or h")),
        };
        Ok(Rate { count, per })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s".to_string(),
            60 => "m".to_string(),
            3600 => "h".to_string(),
            _ => format!("{:?}", self.per),
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl Rate {
    /// The time one token takes to come back.
    pub fn interval(&self) -> Duration {
        self.per / self.count
    }
}

#[derive(Debug)]
struct Tokens {
    available: f64,
    refilled_at: Instant,
}

/// A token bucket of capacity `rate.count`, refilled at `rate`. Starts full.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: Rate,
    tokens: Arc<Mutex<Tokens>>,
    waiting: Arc<AtomicUsize>,
}

impl TokenBucket {
    /// A full bucket for `rate`.
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            tokens: Arc::new(Mutex::new(Tokens {
                available: f64::from(rate.count),
                refilled_at: Instant::now(),
            })),
            waiting: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The bucket's rate.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// How many callers are inside [`TokenBucket::acquire`] right now, waiting for a token.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Waits for a token and takes it.
    pub async fn acquire(&self) {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _leave = Leave(&self.waiting);
        // Holding the lock while sleeping keeps the order fair: the next waiter gets the next
        // token, nobody overtakes.
        let mut tokens = self.tokens.lock().await;
        loop {
            self.refill(&mut tokens);
            if tokens.available >= 1.0 {
                tokens.available -= 1.0;
                return;
            }
            let missing = 1.0 - tokens.available;
            let wait = self.rate.interval().mul_f64(missing);
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }

    /// Takes a token when one is available now, without waiting.
    pub fn try_acquire(&self) -> bool {
        let Ok(mut tokens) = self.tokens.try_lock() else {
            return false;
        };
        self.refill(&mut tokens);
        if tokens.available >= 1.0 {
            tokens.available -= 1.0;
            true
        } else {
            false
        }
    }

    fn refill(&self, tokens: &mut Tokens) {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(tokens.refilled_at);
        let gained =
            elapsed.as_secs_f64() * f64::from(self.rate.count) / self.rate.per.as_secs_f64();
        tokens.available = (tokens.available + gained).min(f64::from(self.rate.count));
        tokens.refilled_at = now;
    }
}

/// Decrements the waiting count when `acquire` returns or is cancelled.
struct Leave<'a>(&'a AtomicUsize);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates() {
        assert_eq!(
            "5/s".parse::<Rate>(),
            Ok(Rate {
                count: 5,
                per: Duration::from_secs(1)
            })
        );
        assert_eq!(
            "100/m".parse::<Rate>().map(|r| (r.count, r.per)),
            Ok((100, Duration::from_secs(60)))
        );
        assert_eq!(
            " 1/h ".parse::<Rate>().map(|r| r.per),
            Ok(Duration::from_secs(3600))
        );
        assert_eq!(
            "100/m".parse::<Rate>().map(|r| r.to_string()),
            Ok("100/m".into())
        );
    }

    #[test]
    fn rate_errors_name_the_value() {
        for bad in ["5", "x/s", "0/s", "5/d", "-1/s", "", "5/"] {
            let error = bad.parse::<Rate>().expect_err(bad);
            assert_eq!(error.value, bad);
            assert!(error.to_string().contains(&format!("{bad:?}")), "{error}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn never_bursts_past_capacity() {
        let bucket = TokenBucket::new("3/s".parse().expect("rate"));
        for _ in 0..3 {
            assert!(bucket.try_acquire());
        }
        assert!(!bucket.try_acquire(), "a fourth token at once");
        // A long idle time refills to the capacity, not beyond.
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..3 {
            assert!(bucket.try_acquire());
        }
        assert!(
            !bucket.try_acquire(),
            "the bucket held more than its capacity"
        );
        // acquire waits for the refill (paused time advances automatically).
        let clone = bucket.clone();
        let start = Instant::now();
        clone.acquire().await;
        assert!(Instant::now() > start, "acquire did not wait for a token");
    }
}
