//! Tracking an asynchronous operation to its end: a `202 Accepted` (with a `Location` or
//! `Operation-Location` to poll) or an operation id the provider hands back. The caller says
//! how to read the operation's status; [`OperationTracker::track`] polls it with backoff until
//! it is done, failed, or the timeout passes. Starting and stopping a cloud resource wait here.

use crate::http::{HttpError, HttpResponse, Url};
use crate::retry::{Backoff, Failure, classify};
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;
use tracing::debug;

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
