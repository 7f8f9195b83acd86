//! Durable supervisor state kept somewhere other than the state-dir files (the store): the
//! types live in [`kinfra_core::persist`], so the store needs nothing from this crate; they
//! are re-exported here under their old paths. Started with [`Persistence`]
//! ([`crate::SupervisorOptions::persistence`]), the supervisor takes its known ports, restart
//! counts, last exits and user stops from it and reports changes to its [`StateSink`].

pub use kinfra_core::persist::{LeftRunning, Persistence, ServiceHistory, StateSink};
