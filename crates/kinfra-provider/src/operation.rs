//! Tracking an asynchronous operation to its end: a `202 Accepted` (with a `Location` or
//! `Operation-Location` to poll) or an operation id the provider hands back. The caller says
//! how to read the operation's status; [`OperationTracker::track`] polls it with backoff until
//! it is done, failed, or the timeout passes. Starting and stopping a cloud resource wait here.

use crate::http::{HttpError, HttpResponse, Url};
use crate::retry::{Backoff, Failure, classify};
use serde_json::Value;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;
use tracing::debug;

/// How long an operation has been under way, in whole seconds as a status message shows it
/// (`"45s"`, `"2m"`, `"1m 20s"`).
pub fn elapsed_text(d: Duration) -> String {
    let secs = d.as_secs();
    let (m, s) = (secs / 60, secs % 60);
    match m {
        0 => format!("{s}s"),
        m if s == 0 => format!("{m}m"),
        m => format!("{m}m {s}s"),
    }
}

/// What one poll of an operation says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperationStatus {
    /// Still running.
    Pending,
    /// Finished successfully.
    Done,
    /// Finished with an error, in the provider's words.
    Failed(String),
}

/// Why an operation did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OperationError {
    /// The provider reported the operation failed.
    #[error("operation failed: {reason}")]
    Failed {
        /// The provider's reason.
        reason: String,
    },
    /// Still pending when the timeout passed.
    #[error("operation still pending after {after:?} ({polls} polls)")]
    Timeout {
        /// The timeout.
        after: Duration,
        /// How many polls were made.
        polls: u32,
    },
    /// Polling failed in a way retrying cannot fix (a 4xx, a malformed answer).
    #[error("polling the operation failed: {0}")]
    Poll(HttpError),
}

/// How an operation is polled: the delays between polls and the overall timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OperationTracker {
    /// Delays between polls (growing, capped, jittered).
    pub backoff: Backoff,
    /// The longest the whole operation may take.
    pub timeout: Duration,
}

impl Default for OperationTracker {
    fn default() -> Self {
        Self {
            backoff: Backoff {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(15),
            },
            timeout: Duration::from_secs(600),
        }
    }
}

impl OperationTracker {
    /// Polls `poll` until it reports [`OperationStatus::Done`] (returns the number of polls),
    /// [`OperationStatus::Failed`], a permanent error, or the timeout. Rate limits wait the
    /// server's `Retry-After` (else back off); transient errors back off and poll again.
    pub async fn track<F, Fut>(&self, mut poll: F) -> Result<u32, OperationError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<OperationStatus, HttpError>>,
    {
        let deadline = Instant::now() + self.timeout;
        let mut polls: u32 = 0;
        let outcome = tokio::time::timeout_at(deadline, async {
            loop {
                let answer = poll().await;
                polls += 1;
                let wait = match answer {
                    Ok(OperationStatus::Done) => return Ok(polls),
                    Ok(OperationStatus::Failed(reason)) => {
                        return Err(OperationError::Failed { reason });
                    }
                    Ok(OperationStatus::Pending) => self.backoff.delay(polls - 1),
                    Err(error) => match classify(&error) {
                        Failure::Permanent => return Err(OperationError::Poll(error)),
                        Failure::RateLimited(Some(after)) => after,
                        Failure::RateLimited(None) | Failure::Transient => {
                            debug!(%error, polls, "Polling an operation failed; trying again.");
                            self.backoff.delay(polls - 1)
                        }
                    },
                };
                tokio::time::sleep(wait).await;
            }
        })
        .await;
        match outcome {
            Ok(result) => result,
            Err(_elapsed) => Err(OperationError::Timeout {
                after: self.timeout,
                polls,
            }),
        }
    }
}

/// Where a `202 Accepted` says its operation can be polled: `Operation-Location`,
/// `Azure-AsyncOperation` or `Location`, resolved against the request's URL. `None` when the
/// answer is not a 202 or names none.
pub fn operation_url(response: &HttpResponse, request_url: &Url) -> Option<Url> {
    if response.status != 202 {
        return None;
    }
    ["operation-location", "azure-asyncoperation", "location"]
        .iter()
        .find_map(|name| response.header(name))
        .and_then(|target| request_url.join(target).ok())
}

/// How an operation's state is read from a JSON poll answer: the value at `pointer` is
/// `done`, `failed` (compared without case) or, anything else, still pending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationStates {
    /// JSON pointer to the state in a poll answer, e.g. `/status`.
    pub pointer: String,
    /// Values meaning it finished successfully.
    pub done: Vec<String>,
    /// Values meaning it failed.
    pub failed: Vec<String>,
    /// JSON pointer to the provider's reason for a failure; the state itself without it.
    pub reason: Option<String>,
}

impl OperationStates {
    /// The state value in `answer` and what it means; `None` when `answer` holds no state
    /// (a string, number or boolean) at `pointer`.
    pub fn read(&self, answer: &Value) -> Option<(String, OperationStatus)> {
        let value = json_text(answer.pointer(&self.pointer)?)?;
        let is = |list: &[String]| list.iter().any(|v| v.eq_ignore_ascii_case(&value));
        let status = if is(&self.done) {
            OperationStatus::Done
        } else if is(&self.failed) {
            let reason = self
                .reason
                .as_deref()
                .and_then(|p| answer.pointer(p))
                .and_then(|v| match v {
                    Value::Null => None,
                    Value::String(s) if s.is_empty() => None,
                    other => json_text(other).or_else(|| Some(other.to_string())),
                })
                .unwrap_or_else(|| format!("the operation's state is `{value}`"));
            OperationStatus::Failed(reason)
        } else {
            OperationStatus::Pending
        };
        Some((value, status))
    }
}

/// A scalar JSON value as text (`"a"` → `a`, `3` → `3`, `true` → `true`).
pub fn json_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn elapsed_text_is_whole_minutes_and_seconds() {
        assert_eq!(elapsed_text(Duration::from_millis(45_900)), "45s");
        assert_eq!(elapsed_text(Duration::from_secs(120)), "2m");
        assert_eq!(elapsed_text(Duration::from_secs(80)), "1m 20s");
    }

    #[test]
    fn states_read_by_pointer_with_the_reason_of_a_failure() {
        let states = OperationStates {
            pointer: "/operation/status".into(),
            done: vec!["finished".into()],
            failed: vec!["failed".into(), "error".into()],
            reason: Some("/operation/error".into()),
        };
        let read = |v: Value| states.read(&v);
        assert_eq!(
            read(json!({"operation": {"status": "FINISHED"}})),
            Some(("FINISHED".into(), OperationStatus::Done))
        );
        assert_eq!(
            read(json!({"operation": {"status": "running"}})),
            Some(("running".into(), OperationStatus::Pending))
        );
        assert_eq!(
            read(json!({"operation": {"status": "error", "error": "quota exceeded"}})),
            Some((
                "error".into(),
                OperationStatus::Failed("quota exceeded".into())
            ))
        );
        assert_eq!(
            read(json!({"operation": {"status": "failed"}})),
            Some((
                "failed".into(),
                OperationStatus::Failed("the operation's state is `failed`".into())
            ))
        );
        assert_eq!(read(json!({"operation": {}})), None);
        assert_eq!(read(json!({"operation": {"status": {"x": 1}}})), None);
    }
}
