//! kinfra as a library: one call, [`start`], boots the supervisor, the dashboard and the
//! control socket in this process and returns a [`Runtime`] handle.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let rt = kinfra::start(kinfra::Config::from_file("kinfra.toml")?).await?;
//! println!("dashboard on {:?}", rt.dashboard_addr());
//! rt.restart("api").await?;
//! rt.shutdown().await?;
//! # Ok(()) }
//! ```

mod control;
pub mod embedded;
mod lock;
mod maintenance;
mod ownership;
pub mod pages;
mod procstat;
pub mod providers;
mod runtime;
pub mod sd_notify;

pub use kinfra_bus as bus;
pub use kinfra_core::config::{
    self, CommandSpec, DependCondition, Dur, PortSpec, ProbeConfig, RestartPolicy, ServiceConfig,
};
pub use kinfra_core::control::{ControlRequest, ControlResponse};
pub use kinfra_core::event::{Event, EventKind, EventSender, ExitInfo};
pub use kinfra_core::state::{Health, ServiceState};
pub use kinfra_core::status::{LogLine, LogStream, ServiceLogLine, ServiceStatus, StatusReport};
pub use kinfra_core::tls;
pub use kinfra_core::view::{Action, ActionError, RuntimeControl};
pub use kinfra_core::{Config, ConfigError, ConfigErrors};
pub use kinfra_store as store;
pub use kinfra_supervisor::ReloadSummary;
#[doc(hidden)]
pub use ownership::user as user_name;
pub use runtime::{
    ReloadError, ReloadReport, Runtime, RuntimeOptions, ShutdownError, StartError, TOKEN_FILE,
    dashboard_token, start, start_with,
};
