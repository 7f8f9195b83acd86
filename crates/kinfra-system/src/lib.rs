//! System services as resources: `systemd` units over systemd's D-Bus API and, on macOS only,
//! `launchd` jobs through `launchctl` (same provider shape, untested here: this crate's tests
//! run on Linux, where the module is not compiled).

#[cfg(target_os = "macos")]
pub mod launchd;
pub mod systemd;
