//! The lifecycle state and health of a managed resource, shared by every adapter.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Where a resource is in its lifecycle. The names are part of the public contract
/// (`/__status__`, events, CLI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceState {
    /// Not started yet: waiting for its dependencies or its turn.
    Pending,
    /// Spawned, not yet ready (readiness probe not passed yet).
    Starting,
    /// Up (and ready, when it has a readiness probe).
    Running,
    /// Being stopped.
    Stopping,
    /// Stopped on purpose (by a user or a shutdown).
    Stopped,
    /// Exited and waiting for its restart delay to pass.
    Backoff,
    /// Gave up: crash loop, spawn error, or exited under a policy that does not restart.
    Failed,
    /// A one-shot task that exited successfully.
    Completed,
    /// Taken out of service on purpose; the proxy serves a maintenance page.
    Maintenance,
    /// Stopped on purpose to save resources and woken by the next request (kinfra's own
    /// scale-to-zero, Neon's idle endpoints, Railway's SLEEPING, Fly's suspended machines).
    Sleeping,
}

impl ServiceState {
    /// The contract name, e.g. `"running"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Backoff => "backoff",
            Self::Failed => "failed",
            Self::Completed => "completed",
            Self::Maintenance => "maintenance",
            Self::Sleeping => "sleeping",
        }
    }

    /// True for states in which a process of this resource may be alive.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Starting | Self::Running | Self::Stopping)
    }

    /// True for states counted as errors in status stats.
    pub fn is_error(self) -> bool {
        matches!(self, Self::Failed | Self::Backoff)
    }
}

impl fmt::Display for ServiceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Result of the readiness probe. `Unknown` when there is no probe or it has not run yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// No probe, or no result yet.
    #[default]
    Unknown,
    /// The last probes passed.
    Healthy,
    /// The probe failed `failure_threshold` times in a row.
    Unhealthy,
}

impl Health {
    /// The contract name, e.g. `"healthy"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeping_is_its_own_state_neither_active_nor_an_error() {
        let s = ServiceState::Sleeping;
        assert_eq!(s.as_str(), "sleeping");
        assert_eq!(
            serde_json::to_value(s).expect("json"),
            serde_json::json!("sleeping")
        );
        assert_eq!(
            serde_json::from_str::<ServiceState>("\"sleeping\"").expect("parse"),
            s
        );
        assert!(!s.is_active() && !s.is_error());
    }
}
