//! The lifecycle of a provider instance (one configured account):
//! `uninitialized → initializing → ready → active → suspended → terminated`, and `failed`.
//! [`InstanceState::transition`] refuses what the model does not allow.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Where a provider instance is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    /// Configured, nothing done yet.
    Uninitialized,
    /// Checking credentials, starting a plugin.
    Initializing,
    /// Usable; no resource uses it yet.
    Ready,
    /// At least one resource uses it.
    Active,
    /// Paused on purpose (rate limit exhausted, maintenance); resumes to ready or active.
    Suspended,
    /// Shut down for good.
    Terminated,
    /// Initialization or operation failed; may be initialized again.
    Failed,
}

impl InstanceState {
    /// The name used in status and serde.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Uninitialized => "uninitialized",
            Self::Initializing => "initializing",
            Self::Ready => "ready",
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Terminated => "terminated",
            Self::Failed => "failed",
        }
    }

    /// True when the model allows going from `self` to `to`.
    pub fn can_transition(self, to: InstanceState) -> bool {
        use InstanceState::*;
        match (self, to) {
            (Terminated, _) => false,
            (_, Terminated) => true,
            (_, Failed) => self != Failed,
            (Uninitialized, Initializing) => true,
            (Initializing, Ready) => true,
            (Ready, Active) | (Active, Ready) => true,
            (Ready | Active, Suspended) => true,
            (Suspended, Ready | Active) => true,
            (Failed, Initializing) => true,
            _ => false,
        }
    }

    /// `to`, when the model allows it; a [`TransitionError`] otherwise.
    pub fn transition(self, to: InstanceState) -> Result<InstanceState, TransitionError> {
        if self.can_transition(to) {
            Ok(to)
        } else {
            Err(TransitionError { from: self, to })
        }
    }
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A transition the lifecycle does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a provider instance cannot go from {from} to {to}")]
pub struct TransitionError {
    /// The current state.
    pub from: InstanceState,
    /// The state asked for.
    pub to: InstanceState,
}

/// A provider instance's state, why, and since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    /// The state.
    pub state: InstanceState,
    /// Why it is in that state (the error when failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When it entered the state (RFC 3339).
    pub since: String,
}

impl InstanceStatus {
    /// A new instance: uninitialized, now.
    pub fn new() -> Self {
        Self {
            state: InstanceState::Uninitialized,
            message: None,
            since: kinfra_core::event::now_rfc3339(),
        }
    }

    /// Moves to `to` with `message`, stamping `since`; refuses an illegal transition and then
    /// changes nothing.
    pub fn transition(
        &mut self,
        to: InstanceState,
        message: Option<String>,
    ) -> Result<(), TransitionError> {
        self.state = self.state.transition(to)?;
        self.message = message;
        self.since = kinfra_core::event::now_rfc3339();
        Ok(())
    }
}

impl Default for InstanceStatus {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::InstanceState::*;
    use super::*;

    #[test]
    fn the_happy_path_and_back() {
        let mut s = InstanceStatus::new();
        for to in [
            Initializing,
            Ready,
            Active,
            Suspended,
            Active,
            Ready,
            Terminated,
        ] {
            assert_eq!(s.transition(to, None), Ok(()), "{} -> {to}", s.state);
        }
    }

    #[test]
    fn illegal_transitions_are_refused_and_change_nothing() {
        let mut s = InstanceStatus::new();
        let err = s.transition(Active, Some("x".into()));
        assert_eq!(
            err,
            Err(TransitionError {
                from: Uninitialized,
                to: Active
            })
        );
        assert_eq!(s.state, Uninitialized);
        assert_eq!(s.message, None);
        assert!(Terminated.transition(Initializing).is_err());
        assert!(Terminated.transition(Failed).is_err());
        assert!(Uninitialized.transition(Suspended).is_err());
        assert!(Failed.transition(Failed).is_err());
        assert!(Initializing.transition(Active).is_err());
        assert_eq!(
            Ready.transition(Uninitialized).map_err(|e| e.to_string()),
            Err("a provider instance cannot go from ready to uninitialized".into())
        );
    }

    #[test]
    fn failure_from_anywhere_and_retry() {
        for from in [Uninitialized, Initializing, Ready, Active, Suspended] {
            assert!(from.can_transition(Failed), "{from}");
        }
        assert_eq!(Failed.transition(Initializing), Ok(Initializing));
    }
}
