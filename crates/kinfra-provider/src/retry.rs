//! Retries: `Retry-After` parsing, capped exponential backoff with jitter, the classification
//! of a failed request, and [`send_with_retry`] that puts them together with the instance's
//! token bucket.
//!
//! The classification: 429 and 503 are a rate limit (wait the server's `Retry-After`, else
//! back off; a rate limit is neither a crash nor a restart), other 5xx, timeouts and
//! connection failures are transient (back off and try again), everything else (4xx, a body
//! that is not the expected JSON) is permanent (retrying would give the same answer).

use crate::http::{HttpClient, HttpError, HttpRequest, HttpResponse};
use crate::ratelimit::TokenBucket;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use tracing::debug;

/// Parses a `Retry-After` value: delta-seconds (`"120"`) or an HTTP-date
/// (`"Wed, 21 Oct 2015 07:28:00 GMT"`, measured from `now`; a date in the past is zero).
/// `None` for anything else.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Capped exponential backoff with jitter: the delay before retry `n` (0-based) is drawn
/// uniformly from `[base/2, base]` where `base = min(initial * 2^n, max)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The base delay of the first retry.
    pub initial: Duration,
    /// The cap of the base delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The capped base delay of retry `attempt` (0-based), before jitter.
    pub fn base(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(31));
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The jittered delay of retry `attempt` (0-based): in `[base/2, base]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self.base(attempt);
        base.mul_f64(0.5 + 0.5 * kinfra_core::random::unit_f64())
    }
}

/// What a failed request means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// 429 or 503: wait (`Retry-After` when the server sent one), then try again. Not a crash.
    RateLimited(Option<Duration>),
    /// Other 5xx, a timeout or a connection failure: back off and try again.
    Transient,
    /// 4xx or an answer of the wrong shape: trying again gives the same answer.
    Permanent,
}

/// Classifies a failed request (see the module docs).
pub fn classify(error: &HttpError) -> Failure {
    match error {
        HttpError::RateLimited { retry_after, .. } => Failure::RateLimited(*retry_after),
        HttpError::Status {
            code: 503,
            retry_after,
            ..
        } => Failure::RateLimited(*retry_after),
        HttpError::Status { code, .. } if *code >= 500 => Failure::Transient,
        HttpError::Timeout { .. } | HttpError::Connect { .. } => Failure::Transient,
        HttpError::Status { .. } | HttpError::Decode { .. } | HttpError::Invalid { .. } => {
            Failure::Permanent
        }
    }
}

/// How long [`send_with_retry`] keeps trying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (the first one included); at least 1.
    pub max_attempts: u32,
    /// The whole time budget, waits included. A wait that would end past it is not started:
    /// the last error is returned instead (a long `Retry-After` goes to the caller).
    pub max_elapsed: Duration,
    /// The delays between attempts.
    pub backoff: Backoff,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            max_elapsed: Duration::from_secs(120),
            backoff: Backoff::default(),
        }
    }
}

/// Sends `request`, taking a token from `bucket` before every attempt, retrying rate limits
/// and transient failures within `policy`. Returns the answer, or the last error: a permanent
/// one at once, otherwise when the attempts or the time budget are spent.
pub async fn send_with_retry(
    client: &HttpClient,
    bucket: Option<&TokenBucket>,
    request: &HttpRequest,
    policy: &RetryPolicy,
) -> Result<HttpResponse, HttpError> {
    let started = Instant::now();
    let mut attempt: u32 = 0;
    loop {
        if let Some(bucket) = bucket {
            bucket.acquire().await;
        }
        let error = match client.send(request).await {
            Ok(response) => return Ok(response),
            Err(error) => error,
        };
        attempt += 1;
        let wait = match classify(&error) {
            Failure::Permanent => return Err(error),
            Failure::RateLimited(Some(after)) => after,
            Failure::RateLimited(None) | Failure::Transient => policy.backoff.delay(attempt - 1),
        };
        if attempt >= policy.max_attempts.max(1) || started.elapsed() + wait > policy.max_elapsed {
            return Err(error);
        }
        debug!(url = %request.redacted_url(), attempt, ?wait, %error, "Retrying a provider request.");
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_delta_seconds() {
        let now = SystemTime::now();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("1.5", now), None);
        assert_eq!(parse_retry_after("", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn retry_after_http_date() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").expect("date");
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        // A date in the past means "now".
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("Wed, 32 Oct 2015 07:28:30 GMT", now),
            None
        );
    }

    #[test]
    fn backoff_stays_within_bounds_and_is_capped() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        assert_eq!(backoff.base(0), Duration::from_millis(100));
        assert_eq!(backoff.base(3), Duration::from_millis(800));
        assert_eq!(backoff.base(5), Duration::from_secs(2));
        assert_eq!(backoff.base(u32::MAX), Duration::from_secs(2));
        for attempt in 0..40 {
            let base = backoff.base(attempt);
            for _ in 0..50 {
                let d = backoff.delay(attempt);
                assert!(
                    d >= base / 2 && d <= base,
                    "attempt {attempt}: {d:?} vs {base:?}"
                );
            }
        }
        // Jitter: not every draw is the same.
        let draws: std::collections::BTreeSet<Duration> =
            (0..50).map(|_| backoff.delay(4)).collect();
        assert!(draws.len() > 1, "no jitter");
    }

    fn status(code: u16, retry_after: Option<Duration>) -> HttpError {
        HttpError::Status {
            method: "GET".into(),
            url: "http://h/".into(),
            code,
            retry_after,
            body_excerpt: String::new(),
        }
    }

    #[test]
    fn classification() {
        let limited = HttpError::RateLimited {
            method: "GET".into(),
            url: "http://h/".into(),
            retry_after: Some(Duration::from_secs(3)),
        };
        assert_eq!(
            classify(&limited),
            Failure::RateLimited(Some(Duration::from_secs(3)))
        );
        assert_eq!(classify(&status(503, None)), Failure::RateLimited(None));
        assert_eq!(classify(&status(500, None)), Failure::Transient);
        assert_eq!(classify(&status(502, None)), Failure::Transient);
        assert_eq!(classify(&status(404, None)), Failure::Permanent);
        assert_eq!(classify(&status(401, None)), Failure::Permanent);
        let timeout = HttpError::Timeout {
            method: "GET".into(),
            url: "http://h/".into(),
            after: Duration::from_secs(1),
        };
        assert_eq!(classify(&timeout), Failure::Transient);
        let decode = HttpError::Decode {
            url: "http://h/".into(),
            reason: "x".into(),
        };
        assert_eq!(classify(&decode), Failure::Permanent);
    }
}
