//! The `neon` provider: a Neon compute endpoint as a resource (start, suspend, observe,
//! operations, connection facts) and the project's branches as commands.

/// The provider's id.
pub const ID: &str = "neon";
