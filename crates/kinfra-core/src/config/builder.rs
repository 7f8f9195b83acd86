//! Building a config in code: `Config::builder()` and builder-style setters on the parts.
//!
//! ```
//! use kinfra_core::config::{Config, PortSpec, ProbeConfig, ServiceConfig};
//! let config = Config::builder()
//!     .project("demo")
//!     .service(
//!         "api",
//!         ServiceConfig::new("python3 -m http.server ${PORT}")
//!             .port(PortSpec::Auto)
//!             .health(ProbeConfig::http("/")),
//!     )
//!     .route("/api", "api")
//!     .dashboard_listen("127.0.0.1:0")
//!     .proxy_http(Some("127.0.0.1:0"))
//!     .build()
//!     .unwrap();
//! assert_eq!(config.project.name, "demo");
//! ```

use super::ConfigErrors;
use super::model::{
    Config, DependCondition, ProbeConfig, ResourceConfig, RestartPolicy, RouteConfig,
    ServiceConfig, TcpTarget, Template,
};
use super::types::{CommandSpec, PortSpec};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Builds a [`Config`] step by step; [`ConfigBuilder::build`] validates it.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    config: Config,
}

impl Default for ConfigBuilder {
    fn default() -> Self {
        Self {
            config: Config {
                base_dir: PathBuf::from("."),
                origin: "<builder>".into(),
                ..Config::default()
            },
        }
    }
}

impl Config {
    /// Starts a config in code, from the defaults (origin `<builder>`, base dir `.`).
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::default()
    }
}

impl ConfigBuilder {
    /// Sets the project name.
    pub fn project(mut self, name: impl Into<String>) -> Self {
        self.config.project.name = name.into();
        self
    }

    /// Sets the state dir (relative paths resolve against the base dir).
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.project.state_dir = dir.into();
        self
    }

    /// Sets the directory relative paths resolve against.
    pub fn base_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.base_dir = dir.into();
        self
    }

    /// Sets a variable of the global `env`.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.env.insert(key.into(), value.into());
        self
    }

    /// Adds (or replaces) a service.
    pub fn service(mut self, name: impl Into<String>, service: ServiceConfig) -> Self {
        self.config.services.insert(name.into(), service);
        self
    }

    /// Adds (or replaces) a resource.
    pub fn resource(mut self, name: impl Into<String>, resource: ResourceConfig) -> Self {
        self.config.resources.insert(name.into(), resource);
        self
    }

    /// Adds a route from a path prefix to a service or resource.
    pub fn route(self, path: impl Into<String>, service: impl Into<String>) -> Self {
        let route = RouteConfig {
            path: path.into(),
            ..RouteConfig::to(service)
        };
        self.route_config(route)
    }

    /// Adds a route given in full.
    pub fn route_config(mut self, route: RouteConfig) -> Self {
        self.config.routes.push(route);
        self
    }

    /// Sets the dashboard's listen address (`127.0.0.1:0` picks a free port).
    pub fn dashboard_listen(mut self, addr: impl Into<String>) -> Self {
        self.config.dashboard.listen = addr.into();
        self
    }

    /// Turns the dashboard on or off.
    pub fn dashboard_enabled(mut self, enabled: bool) -> Self {
        self.config.dashboard.enabled = enabled;
        self
    }

    /// Sets the proxy's plain HTTP listen address; `None` for no plain listener.
    pub fn proxy_http(mut self, addr: Option<&str>) -> Self {
        self.config.proxy.http = addr.map(str::to_owned);
        self
    }

    /// Sets the proxy's HTTPS listen address; `None` for no TLS listener.
    pub fn proxy_https(mut self, addr: Option<&str>) -> Self {
        self.config.proxy.https = addr.map(str::to_owned);
        self
    }

    /// Turns the proxy on or off.
    pub fn proxy_enabled(mut self, enabled: bool) -> Self {
        self.config.proxy.enabled = enabled;
        self
    }

    /// Changes anything else directly.
    pub fn with(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(&mut self.config);
        self
    }

    /// Validates and returns the config.
    pub fn build(self) -> Result<Config, ConfigErrors> {
        self.config.validate()?;
        Ok(self.config)
    }
}

impl ServiceConfig {
    /// Sets the port.
    pub fn port(mut self, port: PortSpec) -> Self {
        self.port = Some(port);
        self
    }

    /// Appends an argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Waits for a service or resource.
    pub fn depends_on(mut self, name: impl Into<String>, condition: DependCondition) -> Self {
        self.depends_on.0.insert(name.into(), condition);
        self
    }

    /// Sets the restart policy.
    pub fn restart(mut self, policy: RestartPolicy) -> Self {
        self.restart = policy;
        self
    }

    /// Sets the readiness probe.
    pub fn health(mut self, probe: ProbeConfig) -> Self {
        self.health = Some(probe);
        self
    }

    /// Sets the liveness probe.
    pub fn liveness(mut self, probe: ProbeConfig) -> Self {
        self.liveness = Some(probe);
        self
    }

    /// Sets the working directory.
    pub fn working_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.working_dir = Some(dir.into());
        self
    }
}

impl From<String> for CommandSpec {
    fn from(s: String) -> Self {
        Self::Shell(s)
    }
}

impl From<Vec<String>> for CommandSpec {
    fn from(argv: Vec<String>) -> Self {
        Self::Argv(argv)
    }
}

impl ProbeConfig {
    /// An HTTP probe of a path on the service's port (`/healthz`) or of a full URL.
    pub fn http(path: impl Into<String>) -> Self {
        Self {
            http: Some(path.into()),
            ..Self::default()
        }
    }

    /// A TCP connect to the service's own port.
    pub fn tcp() -> Self {
        Self {
            tcp: Some(TcpTarget::OwnPort(true)),
            ..Self::default()
        }
    }

    /// A TCP connect to a port on 127.0.0.1.
    pub fn tcp_port(port: u16) -> Self {
        Self {
            tcp: Some(TcpTarget::Port(port)),
            ..Self::default()
        }
    }

    /// A command that exits 0 when healthy.
    pub fn exec(command: impl Into<CommandSpec>) -> Self {
        Self {
            exec: Some(command.into()),
            ..Self::default()
        }
    }
}

impl ResourceConfig {
    /// A resource from `template` with every other setting at its default.
    pub fn new(template: Template) -> Self {
        Self {
            template,
            image: None,
            command: None,
            container_port: None,
            port: None,
            env: BTreeMap::new(),
            volumes: BTreeMap::new(),
            health: None,
            depends_on: Default::default(),
            restart: RestartPolicy::default(),
            jetstream: false,
            stop_grace: crate::config::Dur::from_secs(10),
            on_down: Default::default(),
            provider: None,
            interval: None,
            confirm_delete: false,
            scale_to_zero: None,
            nodes: None,
            extra: BTreeMap::new(),
        }
    }

    /// A resource driven by the provider instance `instance` (`[providers.INSTANCE]`), with
    /// every other setting at its default (`on_down = "keep"`).
    pub fn provider(instance: impl Into<String>) -> Self {
        Self {
            provider: Some(instance.into()),
            on_down: super::model::OnDown::Keep,
            ..Self::new(Template::Docker)
        }
    }
}

impl RouteConfig {
    /// A route of every path (`/`) to a service or resource.
    pub fn to(service: impl Into<String>) -> Self {
        Self {
            host: None,
            path: "/".into(),
            strip_prefix: false,
            service: Some(service.into()),
            upstream: None,
        }
    }
}
