//! The config data model: what `kinfra.toml` (or YAML, or JSON) holds, after parsing and
//! before anything runs. Field names are the public contract.

use super::types::{ByteSize, CommandSpec, Dur, OneOrMany, PortSpec, SignalName, StatusRange};
use crate::secret::Secret;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// The whole configuration of one runtime.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Project name and state dir.
    pub project: ProjectConfig,
    /// Environment given to every service (a service's own `env` wins).
    pub env: BTreeMap<String, String>,
    /// The dashboard listener.
    pub dashboard: DashboardConfig,
    /// The reverse proxy.
    pub proxy: ProxyConfig,
    /// Local processes to supervise, by name.
    pub services: BTreeMap<String, ServiceConfig>,
    /// External resources (containers, cloud resources), by name.
    pub resources: BTreeMap<String, ResourceConfig>,
    /// Cloud provider instances (`[providers.NAME]`) and where plugins are found.
    pub providers: ProvidersConfig,
    /// Proxy routes, in file order.
    pub routes: Vec<RouteConfig>,
    /// The message bus.
    pub bus: BusConfig,
    /// This node's identity in a fleet of kinfra runtimes sharing one bus.
    pub node: NodeConfig,
    /// The embedded store.
    pub store: StoreConfig,
    /// Automatic HTTPS; absent means no ACME.
    pub acme: Option<AcmeConfig>,
    /// A Cloudflare tunnel publishing the proxy's routes; absent means none.
    pub tunnel: Option<TunnelConfig>,
    /// What `kinfra image build` puts in the image beside the binary and this config; absent
    /// means nothing more.
    pub image: Option<ImageConfig>,
    /// Directory that relative paths in this config are resolved against (the config file's
    /// directory, or the working directory). Not part of the file.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// Where this config came from, for messages (`kinfra.toml`, `<embedded default>`,
    /// `<builder>`). Not part of the file.
    #[serde(skip)]
    pub origin: String,
}

/// `[project]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct ProjectConfig {
    /// Project name: shown in the dashboard, used in NATS subjects and container labels.
    pub name: String,
    /// Where kinfra keeps its state (db/, logs/, control socket, token, certs/). Relative
    /// paths are resolved against the config file's directory.
    pub state_dir: PathBuf,
    /// How long a graceful shutdown may take in all before what is left is killed.
    pub shutdown_timeout: Dur,
}

impl Default for ProjectConfig {
    fn default() -> Self {
        Self {
            name: "kinfra".into(),
            state_dir: PathBuf::from(".kinfra"),
            shutdown_timeout: Dur::from_secs(30),
        }
    }
}

/// `[dashboard]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct DashboardConfig {
    /// Serve the dashboard at all.
    pub enabled: bool,
    /// Listen address, `host:port`. Port 0 picks a free port.
    pub listen: String,
    /// Token for state-changing requests; generated into the state dir when absent.
    pub token: Option<Secret>,
    /// Extra `Host` header values accepted (loopback names are always accepted).
    pub allowed_hosts: Vec<String>,
    /// Time for a request's header to arrive, from the connection's start or from the first
    /// byte of a later request; then the connection is closed.
    pub header_timeout: Dur,
    /// Time a kept-alive connection may wait for its next request.
    pub idle_timeout: Dur,
    /// Time for a request body to arrive once the dashboard reads it.
    pub body_timeout: Dur,
    /// Most connections open at once; further ones are closed at once.
    pub max_connections: u32,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:9000".into(),
            token: None,
            allowed_hosts: Vec::new(),
            header_timeout: Dur::from_secs(10),
            idle_timeout: Dur::from_secs(60),
            body_timeout: Dur::from_secs(30),
            max_connections: 512,
        }
    }
}

/// `[proxy]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Run the proxy at all.
    pub enabled: bool,
    /// Plain HTTP listen address.
    pub http: Option<String>,
    /// HTTPS listen address.
    pub https: Option<String>,
    /// Redirect plain HTTP to HTTPS (except ACME challenges).
    pub redirect_https: bool,
    /// Directory with page templates overriding the embedded ones.
    pub pages_dir: Option<PathBuf>,
    /// Largest request body accepted.
    pub max_body_size: ByteSize,
    /// Time allowed to connect to an upstream.
    pub connect_timeout: Dur,
    /// Time allowed between reads from an upstream.
    pub read_timeout: Dur,
    /// How long an idle upstream keep-alive connection is kept in the pool.
    pub idle_timeout: Dur,
    /// Serve the maintenance page for every route (the dashboard paths still answer).
    pub maintenance: bool,
    /// Path prefixes that always go to the dashboard, whatever the routes say.
    pub reserved_paths: Vec<String>,
    /// Worker threads of the proxy; absent means one per CPU.
    pub threads: Option<usize>,
}

/// The paths the proxy sends to the dashboard by default.
pub const DEFAULT_RESERVED_PATHS: [&str; 9] = [
    "/kinfra",
    "/__status__",
    "/__events__",
    "/__action__/",
    "/__commands__/",
    "/__logs__/",
    "/__fleet__",
    "/metrics",
    "/healthz",
];

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            http: Some("127.0.0.1:9100".into()),
            https: None,
            redirect_https: false,
            pages_dir: None,
            max_body_size: ByteSize(64 * 1024 * 1024),
            connect_timeout: Dur::from_secs(5),
            read_timeout: Dur::from_secs(60),
            idle_timeout: Dur::from_secs(60),
            maintenance: false,
            reserved_paths: DEFAULT_RESERVED_PATHS
                .iter()
                .map(|p| (*p).to_owned())
                .collect(),
            threads: None,
        }
    }
}

/// When a service is restarted after its process exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never: an exit is final (`completed` for code 0, `failed` otherwise).
    No,
    /// Only after a non-zero exit or a signal.
    #[default]
    OnFailure,
    /// After any exit.
    Always,
    /// After any exit, unless a user stopped it (survives kinfra restarts as stopped).
    UnlessStopped,
}

/// What a dependent waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum DependCondition {
    /// The dependency's process was spawned.
    #[default]
    Started,
    /// The dependency's readiness probe passed (or it is running, when it has none).
    Healthy,
    /// The dependency exited with code 0 (one-shot tasks such as migrations).
    CompletedSuccessfully,
}

/// `depends_on`: `{ db = "healthy" }` or `["db", "cache"]` (meaning `started`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct DependsOn(pub BTreeMap<String, DependCondition>);

impl<'de> Deserialize<'de> for DependsOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = DependsOn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a table of service = condition (started, healthy, completed_successfully) or a list of service names",
                )
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<DependsOn, A::Error> {
                let mut map = BTreeMap::new();
                while let Some(name) = seq.next_element::<String>()? {
                    map.insert(name, DependCondition::Started);
                }
                Ok(DependsOn(map))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<DependsOn, A::Error> {
                let mut map = BTreeMap::new();
                while let Some((name, cond)) = access.next_entry::<String, DependCondition>()? {
                    map.insert(name, cond);
                }
                Ok(DependsOn(map))
            }
        }
        d.deserialize_any(V)
    }
}

/// Exponential backoff between restarts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct BackoffConfig {
    /// Delay before the second restart in a row; the first restart is immediate when this
    /// is `0s`, and after `initial` otherwise.
    pub initial: Dur,
    /// Multiplier per further restart.
    pub factor: f64,
    /// Largest delay.
    pub max: Dur,
    /// Random spread, as a fraction of the delay (0.1 = ±10 %).
    pub jitter: f64,
    /// A process that stays up this long resets the backoff.
    pub reset_after: Dur,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Dur::from_millis(250),
            factor: 2.0,
            max: Dur::from_secs(30),
            jitter: 0.1,
            reset_after: Dur::from_secs(30),
        }
    }
}

/// The crash-loop guard: `max_failures` exits within `window` means `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct CrashLoopConfig {
    /// Failures that trip the guard (0 turns the guard off).
    pub max_failures: u32,
    /// Window the failures are counted in.
    pub window: Dur,
}

impl Default for CrashLoopConfig {
    fn default() -> Self {
        Self {
            max_failures: 10,
            window: Dur::from_secs(60),
        }
    }
}

/// `tcp = true` (the service's port) or `tcp = 5432`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum TcpTarget {
    /// `true`: the service's own port.
    OwnPort(bool),
    /// A port on 127.0.0.1.
    Port(u16),
}

impl<'de> Deserialize<'de> for TcpTarget {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const EXPECTED: &str = "expected `true` (the service's port) or a port number";
        struct V;
        impl Visitor<'_> for V {
            type Value = TcpTarget;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`true` (the service's port) or a port number")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<TcpTarget, E> {
                Ok(TcpTarget::OwnPort(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<TcpTarget, E> {
                u16::try_from(v)
                    .map(TcpTarget::Port)
                    .map_err(|_| E::custom(EXPECTED))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<TcpTarget, E> {
                Err(E::custom(EXPECTED))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<TcpTarget, E> {
                Err(E::custom(EXPECTED))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<TcpTarget, E> {
                Err(E::custom(EXPECTED))
            }
        }
        d.deserialize_any(V)
    }
}

/// A readiness (`health`) or liveness probe. Exactly one of `http`, `tcp`, `exec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct ProbeConfig {
    /// A path on the service's port (`/healthz`) or a full `http://` URL.
    pub http: Option<String>,
    /// A TCP connect.
    pub tcp: Option<TcpTarget>,
    /// A command that exits 0 when healthy.
    pub exec: Option<CommandSpec>,
    /// Accepted HTTP status codes.
    pub status: StatusRange,
    /// Text the HTTP body must contain.
    pub body: Option<String>,
    /// Wait this long after spawn before the first probe.
    pub initial_delay: Dur,
    /// Time between probes.
    pub interval: Dur,
    /// Time one probe may take.
    pub timeout: Dur,
    /// Passes in a row that make it healthy.
    pub success_threshold: u32,
    /// Failures in a row that make it unhealthy.
    pub failure_threshold: u32,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            http: None,
            tcp: None,
            exec: None,
            status: StatusRange::default(),
            body: None,
            initial_delay: Dur::from_secs(0),
            interval: Dur::from_secs(2),
            timeout: Dur::from_secs(1),
            success_threshold: 1,
            failure_threshold: 3,
        }
    }
}

/// `watch = { paths, ignore, debounce }`: restart on file changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct WatchConfig {
    /// Files or directories to watch, relative to the service's working directory.
    pub paths: Vec<PathBuf>,
    /// Glob patterns to ignore (the state dir, `target/`, `node_modules/` and `.git/` always
    /// are).
    pub ignore: Vec<String>,
    /// Quiet time after the last change before restarting.
    pub debounce: Dur,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            paths: Vec::new(),
            ignore: Vec::new(),
            debounce: Dur::from_millis(300),
        }
    }
}

/// Log capture settings of one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Rotate the log file when it reaches this size.
    pub max_size: ByteSize,
    /// Rotated files kept.
    pub keep: u32,
    /// Lines kept in memory for the dashboard.
    pub ring: usize,
    /// Longest line kept whole; longer lines are split.
    pub max_line: ByteSize,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            max_size: ByteSize(10 * 1024 * 1024),
            keep: 5,
            ring: 1000,
            max_line: ByteSize(16 * 1024),
        }
    }
}

/// `[services.NAME]`: one supervised local process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// What to run.
    pub command: CommandSpec,
    /// Extra arguments appended to the command.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment (on top of the global `env`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory, relative to the config file's directory.
    #[serde(default, alias = "cwd")]
    pub working_dir: Option<PathBuf>,
    /// The port the service listens on; given to it as `$PORT`.
    #[serde(default)]
    pub port: Option<PortSpec>,
    /// Services or resources this one waits for.
    #[serde(default)]
    pub depends_on: DependsOn,
    /// When to restart.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Delays between restarts.
    #[serde(default)]
    pub backoff: BackoffConfig,
    /// The crash-loop guard.
    #[serde(default)]
    pub crash_loop: CrashLoopConfig,
    /// Readiness probe.
    #[serde(default)]
    pub health: Option<ProbeConfig>,
    /// Liveness probe: restarts the service when it fails.
    #[serde(default)]
    pub liveness: Option<ProbeConfig>,
    /// Restart on file changes.
    #[serde(default)]
    pub watch: Option<WatchConfig>,
    /// Signal sent first on stop.
    #[serde(default)]
    pub stop_signal: SignalName,
    /// Time between the stop signal and SIGKILL.
    #[serde(default = "default_stop_grace")]
    pub stop_grace: Dur,
    /// Log capture.
    #[serde(default)]
    pub log: LogConfig,
    /// Start in maintenance mode.
    #[serde(default)]
    pub maintenance: bool,
    /// Do not start this service with the runtime; it can be started by hand.
    #[serde(default)]
    pub disabled: bool,
    /// Put it to sleep when idle; the next request wakes it.
    #[serde(default)]
    pub scale_to_zero: Option<ScaleToZero>,
    /// The nodes (`[node] name`) that run this service; absent means every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<String>>,
}

/// `scale_to_zero = { idle_after = "10m", wake_timeout = "60s" }` on a service or resource:
/// after `idle_after` without activity (requests through the proxy to its routes, open
/// long-lived connections, awake dependents, `kinfra runtime wake`) it is stopped (a process
/// or container) or paused (a cloud resource) and shown `sleeping`; the next request wakes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ScaleToZero {
    /// Time without activity before it is put to sleep. Also the grace period of a target
    /// started any other way (at boot, by hand) before it can be put to sleep.
    pub idle_after: Dur,
    /// Longest wait for a woken target to be ready (running and healthy); a request held
    /// longer is answered 503 with `Retry-After`.
    #[serde(default = "default_wake_timeout")]
    pub wake_timeout: Dur,
    /// What wakes it: `request` (the default: a request through the proxy) or `manual`
    /// (`kinfra runtime wake`, or a dependent waking; for targets no route reaches).
    #[serde(default)]
    pub wake: WakeMode,
}

/// The default [`ScaleToZero::wake_timeout`].
pub const DEFAULT_WAKE_TIMEOUT: Dur = Dur::from_secs(60);

fn default_wake_timeout() -> Dur {
    DEFAULT_WAKE_TIMEOUT
}

impl ScaleToZero {
    /// A policy sleeping after `idle_after`, woken by requests within the default timeout.
    pub fn after(idle_after: std::time::Duration) -> Self {
        Self {
            idle_after: Dur(idle_after),
            wake_timeout: DEFAULT_WAKE_TIMEOUT,
            wake: WakeMode::Request,
        }
    }
}

/// What wakes a sleeping target ([`ScaleToZero::wake`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum WakeMode {
    /// A request through the proxy to one of its routes (and everything `manual` takes).
    #[default]
    Request,
    /// Only `kinfra runtime wake NAME` (or the dashboard's wake) and a dependent waking.
    Manual,
}

fn default_stop_grace() -> Dur {
    Dur::from_secs(10)
}

impl ServiceConfig {
    /// A service running `command` with every other setting at its default.
    pub fn new(command: impl Into<CommandSpec>) -> Self {
        Self {
            command: command.into(),
            args: Vec::new(),
            env: BTreeMap::new(),
            working_dir: None,
            port: None,
            depends_on: DependsOn::default(),
            restart: RestartPolicy::default(),
            backoff: BackoffConfig::default(),
            crash_loop: CrashLoopConfig::default(),
            health: None,
            liveness: None,
            watch: None,
            stop_signal: SignalName::default(),
            stop_grace: default_stop_grace(),
            log: LogConfig::default(),
            maintenance: false,
            disabled: false,
            scale_to_zero: None,
            nodes: None,
        }
    }
}

/// Which adapter template a resource uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Template {
    /// PostgreSQL container.
    Postgres,
    /// Redis container.
    Redis,
    /// NATS container.
    Nats,
    /// MongoDB container.
    Mongodb,
    /// MySQL container.
    Mysql,
    /// Any image.
    Docker,
}

/// `[resources.NAME]`: an external resource managed through an adapter: a container
/// (`template`, the Docker keys) or, with `provider`, a cloud resource driven by a provider
/// instance (kinfra's own keys plus the provider's keys, kept in `extra`).
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceConfig {
    /// The template (containers). Meaningless for a provider resource (see
    /// [`ResourceConfig::is_provider`]), where it is left at `docker`.
    pub template: Template,
    /// Image, overriding the template's.
    pub image: Option<String>,
    /// Command, overriding the image's.
    pub command: Option<CommandSpec>,
    /// Port inside the container.
    pub container_port: Option<u16>,
    /// Host port on 127.0.0.1.
    pub port: Option<PortSpec>,
    /// Environment inside the container (for a provider resource, `env` is one of the
    /// provider's keys and sits in `extra`).
    pub env: BTreeMap<String, String>,
    /// Named volumes: volume name -> path in the container.
    pub volumes: BTreeMap<String, String>,
    /// Readiness probe (a table). On a provider resource, a string or a list `health` is the
    /// provider's own key (the command provider's health command) and sits in `extra`.
    pub health: Option<ProbeConfig>,
    /// What it waits for.
    pub depends_on: DependsOn,
    /// When to restart.
    pub restart: RestartPolicy,
    /// Enable JetStream (nats template).
    pub jetstream: bool,
    /// How long a stop waits before it forces the resource down.
    pub stop_grace: Dur,
    /// What `runtime down` does with the resource: `stop | remove | remove_volumes` for a
    /// container (default `stop`), `keep | pause | delete` for a provider resource (default
    /// `keep`).
    pub on_down: OnDown,
    /// The provider instance (`[providers.NAME]`) that drives this resource; absent for a
    /// container.
    pub provider: Option<String>,
    /// How often a provider resource's state is observed; absent means
    /// [`DEFAULT_PROVIDER_INTERVAL`].
    pub interval: Option<Dur>,
    /// Confirms `on_down = "delete"`: a provider resource is deleted by `runtime down` only
    /// with this set.
    pub confirm_delete: bool,
    /// Put it to sleep when idle (a container is stopped, a cloud resource paused).
    pub scale_to_zero: Option<ScaleToZero>,
    /// The nodes (`[node] name`) that run this resource; absent means every node.
    pub nodes: Option<Vec<String>>,
    /// A provider resource's own keys, unjudged here: the provider checks them at
    /// `runtime up` and `plan`. Always empty for a container.
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// The observe period of a provider resource without `interval`.
pub const DEFAULT_PROVIDER_INTERVAL: Dur = Dur::from_secs(30);

/// Every key kinfra itself reads in `[resources.NAME]`.
pub(crate) const RESOURCE_FIELDS: &[&str] = &[
    "template",
    "image",
    "command",
    "container_port",
    "port",
    "env",
    "volumes",
    "health",
    "depends_on",
    "restart",
    "jetstream",
    "stop_grace",
    "on_down",
    "provider",
    "interval",
    "confirm_delete",
    "scale_to_zero",
    "nodes",
];

/// Keys only a container resource takes; an error on a provider resource.
pub const DOCKER_ONLY_RESOURCE_KEYS: &[&str] = &[
    "template",
    "image",
    "command",
    "container_port",
    "port",
    "volumes",
    "jetstream",
];

impl ResourceConfig {
    /// Whether a provider instance drives this resource (`provider` is set), rather than
    /// Docker.
    pub fn is_provider(&self) -> bool {
        self.provider.is_some()
    }

    /// The observe period: `interval`, or [`DEFAULT_PROVIDER_INTERVAL`].
    pub fn observe_interval(&self) -> Dur {
        self.interval.unwrap_or(DEFAULT_PROVIDER_INTERVAL)
    }
}

/// A seed that fails with its message without reading the value, so the error is reported
/// at the key being read.
struct Reject(String);

impl<'de> DeserializeSeed<'de> for Reject {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, _: D) -> Result<(), D::Error> {
        Err(de::Error::custom(self.0))
    }
}

/// A provider resource's `health`: kinfra's probe, or the provider's own key.
enum ProviderHealth {
    /// A table: kinfra's readiness probe.
    Probe(ProbeConfig),
    /// A string or a list: the provider's (the command provider's health command).
    Provider(serde_json::Value),
}

/// Reads a provider resource's `health`: a table as a [`ProbeConfig`] through the same map
/// access (so its errors keep their keys and lines), a string or a list as the provider's.
struct ProviderHealthSeed;

impl<'de> DeserializeSeed<'de> for ProviderHealthSeed {
    type Value = ProviderHealth;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<ProviderHealth, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ProviderHealthSeed {
    type Value = ProviderHealth;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a probe table, or the provider's health command (a string or a list)")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<ProviderHealth, E> {
        Ok(ProviderHealth::Provider(serde_json::Value::String(
            v.to_owned(),
        )))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<ProviderHealth, E> {
        Ok(ProviderHealth::Provider(serde_json::Value::String(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ProviderHealth, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<serde_json::Value>()? {
            items.push(item);
        }
        Ok(ProviderHealth::Provider(serde_json::Value::Array(items)))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ProviderHealth, A::Error> {
        ProbeConfig::deserialize(de::value::MapAccessDeserializer::new(map))
            .map(ProviderHealth::Probe)
    }
}

fn docker_key_message(key: &str, provider: &str) -> String {
    format!(
        "`{key}` is a container key; a provider resource (provider = \"{provider}\") does not \
         take it"
    )
}

impl<'de> Deserialize<'de> for ResourceConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ResourceConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ResourceConfig, A::Error> {
                let mut r = ResourceConfig::new(Template::Docker);
                let mut template = None;
                let mut on_down = None;
                // Keys read before `provider` was seen: container keys, and unknown ones
                // (the config's own deserializer yields `provider` first, so these stay
                // empty for files; other deserializers may not).
                let mut docker_seen: Vec<String> = Vec::new();
                let mut pending: Vec<(String, serde_json::Value)> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if let Some(provider) = &r.provider
                        && DOCKER_ONLY_RESOURCE_KEYS.contains(&key.as_str())
                    {
                        let message = docker_key_message(&key, provider);
                        map.next_value_seed(Reject(message))?;
                        continue;
                    }
                    if r.provider.is_none() && DOCKER_ONLY_RESOURCE_KEYS.contains(&key.as_str()) {
                        docker_seen.push(key.clone());
                    }
                    match key.as_str() {
                        "provider" => r.provider = Some(map.next_value()?),
                        "interval" => r.interval = map.next_value()?,
                        "confirm_delete" => r.confirm_delete = map.next_value()?,
                        "scale_to_zero" => r.scale_to_zero = map.next_value()?,
                        "nodes" => r.nodes = map.next_value()?,
                        "health" if r.provider.is_some() => {
                            match map.next_value_seed(ProviderHealthSeed)? {
                                ProviderHealth::Probe(probe) => r.health = Some(probe),
                                ProviderHealth::Provider(value) => {
                                    r.extra.insert(key, value);
                                }
                            }
                        }
                        "health" => r.health = map.next_value()?,
                        "depends_on" => r.depends_on = map.next_value()?,
                        "restart" => r.restart = map.next_value()?,
                        "stop_grace" => r.stop_grace = map.next_value()?,
                        "on_down" => on_down = Some(map.next_value()?),
                        "env" if r.provider.is_some() => {
                            r.extra.insert(key, map.next_value()?);
                        }
                        "env" => r.env = map.next_value()?,
                        "template" => template = Some(map.next_value()?),
                        "image" => r.image = map.next_value()?,
                        "command" => r.command = map.next_value()?,
                        "container_port" => r.container_port = map.next_value()?,
                        "port" => r.port = map.next_value()?,
                        "volumes" => r.volumes = map.next_value()?,
                        "jetstream" => r.jetstream = map.next_value()?,
                        _ if r.provider.is_some() => {
                            let value = map.next_value()?;
                            r.extra.insert(key, value);
                        }
                        _ => {
                            let value = map.next_value()?;
                            pending.push((key, value));
                        }
                    }
                }
                match &r.provider {
                    Some(provider) => {
                        if let Some(key) = docker_seen.first() {
                            return Err(de::Error::custom(docker_key_message(key, provider)));
                        }
                        if !r.env.is_empty() {
                            let env = std::mem::take(&mut r.env);
                            r.extra.insert(
                                "env".into(),
                                serde_json::to_value(env).map_err(de::Error::custom)?,
                            );
                        }
                        r.extra.extend(pending);
                        r.on_down = on_down.unwrap_or(OnDown::Keep);
                    }
                    None => {
                        if let Some((key, _)) = pending.first() {
                            return Err(de::Error::unknown_field(key, RESOURCE_FIELDS));
                        }
                        r.template =
                            template.ok_or_else(|| de::Error::missing_field("template"))?;
                        r.on_down = on_down.unwrap_or_default();
                    }
                }
                Ok(r)
            }
        }
        d.deserialize_map(V)
    }
}

impl Serialize for ResourceConfig {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        match &self.provider {
            Some(provider) => {
                m.serialize_entry("provider", provider)?;
                if let Some(interval) = &self.interval {
                    m.serialize_entry("interval", interval)?;
                }
                if self.confirm_delete {
                    m.serialize_entry("confirm_delete", &true)?;
                }
            }
            None => {
                m.serialize_entry("template", &self.template)?;
                if let Some(image) = &self.image {
                    m.serialize_entry("image", image)?;
                }
                if let Some(command) = &self.command {
                    m.serialize_entry("command", command)?;
                }
                if let Some(port) = &self.container_port {
                    m.serialize_entry("container_port", port)?;
                }
                if let Some(port) = &self.port {
                    m.serialize_entry("port", port)?;
                }
                m.serialize_entry("env", &self.env)?;
                m.serialize_entry("volumes", &self.volumes)?;
                m.serialize_entry("jetstream", &self.jetstream)?;
            }
        }
        if let Some(health) = &self.health {
            m.serialize_entry("health", health)?;
        }
        m.serialize_entry("depends_on", &self.depends_on)?;
        m.serialize_entry("restart", &self.restart)?;
        m.serialize_entry("stop_grace", &self.stop_grace)?;
        m.serialize_entry("on_down", &self.on_down)?;
        if let Some(policy) = &self.scale_to_zero {
            m.serialize_entry("scale_to_zero", policy)?;
        }
        if let Some(nodes) = &self.nodes {
            m.serialize_entry("nodes", nodes)?;
        }
        for (key, value) in &self.extra {
            m.serialize_entry(key, value)?;
        }
        m.end()
    }
}

/// What `runtime down` does with a resource. For a container, data volumes are kept unless
/// `remove_volumes` says otherwise; `keep`, `pause` and `delete` are for provider resources
/// only (validation refuses the other set on each kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum OnDown {
    /// Stop it; the next start adopts it.
    #[default]
    Stop,
    /// Stop and remove the container; keep its volumes.
    Remove,
    /// Stop and remove the container and its named volumes.
    RemoveVolumes,
    /// Provider resource: leave it as it is (the default for provider resources).
    Keep,
    /// Provider resource: pause or suspend it (scale to zero, stop billing compute).
    Pause,
    /// Provider resource: delete it (needs `confirm_delete = true`).
    Delete,
}

impl OnDown {
    /// Whether this value is one of a provider resource's (`keep`, `pause`, `delete`).
    pub fn is_provider_value(self) -> bool {
        matches!(self, OnDown::Keep | OnDown::Pause | OnDown::Delete)
    }
}

/// `[providers]`: `plugin_dirs = [...]` beside one table per provider instance
/// (`[providers.neon]`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProvidersConfig {
    /// Extra directories searched for `kinfra-provider-<id>` executables, relative to the
    /// config file's directory.
    pub plugin_dirs: Vec<PathBuf>,
    /// Provider instances, by name.
    pub instances: BTreeMap<String, ProviderInstanceConfig>,
}

impl<'de> Deserialize<'de> for ProvidersConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ProvidersConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of `plugin_dirs` and provider instances")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ProvidersConfig, A::Error> {
                let mut out = ProvidersConfig::default();
                while let Some(key) = map.next_key::<String>()? {
                    if key == "plugin_dirs" {
                        out.plugin_dirs = map.next_value()?;
                    } else {
                        let instance = map.next_value()?;
                        out.instances.insert(key, instance);
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

impl Serialize for ProvidersConfig {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        if !self.plugin_dirs.is_empty() {
            m.serialize_entry("plugin_dirs", &self.plugin_dirs)?;
        }
        for (name, instance) in &self.instances {
            m.serialize_entry(name, instance)?;
        }
        m.end()
    }
}

/// `[providers.NAME]`: one provider instance (an account, a token, an endpoint).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProviderInstanceConfig {
    /// The provider's id (`neon`, `http-api`, ...); absent means the instance's name.
    pub provider: Option<String>,
    /// API token.
    pub token: Option<Secret>,
    /// File holding the API token, relative to the config file's directory.
    pub token_file: Option<PathBuf>,
    /// API base URL, overriding the provider's.
    pub base_url: Option<String>,
    /// Most requests to the API: `N/s`, `N/m` or `N/h` (see [`RateLimit`]).
    pub rate_limit: Option<String>,
    /// The provider's own keys, unjudged here: the provider checks them at `runtime up`
    /// and `plan`.
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl ProviderInstanceConfig {
    /// The provider's id: `provider`, or the instance's name.
    pub fn provider_id<'a>(&'a self, instance: &'a str) -> &'a str {
        self.provider.as_deref().unwrap_or(instance)
    }

    /// `rate_limit` parsed; `None` when absent, `Some(Err)` when it does not parse.
    pub fn parsed_rate_limit(&self) -> Option<Result<RateLimit, String>> {
        self.rate_limit.as_deref().map(RateLimit::parse)
    }
}

impl<'de> Deserialize<'de> for ProviderInstanceConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ProviderInstanceConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ProviderInstanceConfig, A::Error> {
                let mut out = ProviderInstanceConfig::default();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "provider" => out.provider = map.next_value()?,
                        "token" => out.token = map.next_value()?,
                        "token_file" => out.token_file = map.next_value()?,
                        "base_url" => out.base_url = map.next_value()?,
                        "rate_limit" => out.rate_limit = map.next_value()?,
                        _ => {
                            let value = map.next_value()?;
                            out.extra.insert(key, value);
                        }
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

impl Serialize for ProviderInstanceConfig {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        if let Some(provider) = &self.provider {
            m.serialize_entry("provider", provider)?;
        }
        if let Some(token) = &self.token {
            m.serialize_entry("token", token)?;
        }
        if let Some(token_file) = &self.token_file {
            m.serialize_entry("token_file", token_file)?;
        }
        if let Some(base_url) = &self.base_url {
            m.serialize_entry("base_url", base_url)?;
        }
        if let Some(rate_limit) = &self.rate_limit {
            m.serialize_entry("rate_limit", rate_limit)?;
        }
        for (key, value) in &self.extra {
            m.serialize_entry(key, value)?;
        }
        m.end()
    }
}

/// A parsed `rate_limit`: at most `count` requests per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests allowed per period (at least 1).
    pub count: u32,
    /// The period: one second, minute or hour.
    pub per: std::time::Duration,
}

impl RateLimit {
    /// Parses `N/s`, `N/m` or `N/h` with N >= 1; the error says what is expected.
    pub fn parse(text: &str) -> Result<RateLimit, String> {
        let bad = || {
            format!(
                "invalid rate limit `{text}`: expected N/s, N/m or N/h with N >= 1 (e.g. `5/s`)"
            )
        };
        let (count, unit) = text.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" => std::time::Duration::from_secs(1),
            "m" => std::time::Duration::from_secs(60),
            "h" => std::time::Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(bad());
        }
        Ok(RateLimit { count, per })
    }
}

/// `[[routes]]`: one proxy route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Host to match (exact, or `*.example.com`); any host when absent.
    #[serde(default)]
    pub host: Option<String>,
    /// Path prefix.
    #[serde(default = "default_route_path")]
    pub path: String,
    /// Remove the prefix before forwarding.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Target service or resource.
    #[serde(default)]
    pub service: Option<String>,
    /// Or fixed upstream URL(s), load-balanced.
    #[serde(default)]
    pub upstream: Option<OneOrMany>,
}

fn default_route_path() -> String {
    "/".into()
}

/// `[bus]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct BusConfig {
    /// Connect to the bus at all.
    pub enabled: bool,
    /// NATS server URL(s); absent means a managed local nats-server, else in-process.
    pub url: Option<String>,
    /// User name.
    pub user: Option<String>,
    /// Password.
    pub password: Option<Secret>,
    /// Token.
    pub token: Option<Secret>,
    /// NKey seed file.
    pub nkey_file: Option<PathBuf>,
    /// Credentials file.
    pub credentials: Option<PathBuf>,
    /// CA certificate for TLS.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate.
    pub tls_cert: Option<PathBuf>,
    /// Client key.
    pub tls_key: Option<PathBuf>,
    /// With no `url`: start and supervise a local `nats-server` (found on PATH, or at
    /// `nats_server`). When false, or when none is found, the bus runs in-process.
    pub managed: bool,
    /// Path of the `nats-server` binary for the managed server; absent means search PATH.
    pub nats_server: Option<PathBuf>,
    /// Loopback port of the managed server; absent means the port used last time, else a
    /// free one.
    pub port: Option<u16>,
    /// Events kept while the server is unreachable; the oldest are dropped beyond this.
    pub buffer: usize,
    /// Longest wait between two reconnect attempts.
    pub reconnect_max_delay: Dur,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            url: None,
            user: None,
            password: None,
            token: None,
            nkey_file: None,
            credentials: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            managed: true,
            nats_server: None,
            port: None,
            buffer: 1024,
            reconnect_max_delay: Dur::from_secs(2),
        }
    }
}

/// `[node]`: who this runtime is among the kinfra runtimes sharing one bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// This node's name: one NATS subject token (ASCII letters, digits, `_`, `-`); absent
    /// means the machine's hostname (made subject-safe).
    pub name: Option<String>,
    /// How often this node publishes its heartbeat (with its services' states) on the bus;
    /// a node not heard from for 3 of its intervals is shown `down`.
    pub heartbeat: Dur,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            name: None,
            heartbeat: Dur::from_secs(5),
        }
    }
}

/// Node names that would make a node's subjects collide with the project's own
/// (`kinfra.<project>.events.…`, `kinfra.<project>.control.…`).
pub const RESERVED_NODE_NAMES: &[&str] = &["events", "control", "fleet"];

/// Whether `name` is usable as a node name: a NATS subject token of ASCII letters, digits,
/// `_` and `-`, at most 63 characters, and not one of [`RESERVED_NODE_NAMES`].
pub fn node_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("a node name must not be empty".into());
    }
    if name.len() > 63 {
        return Some(format!("node name `{name}` is longer than 63 characters"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Some(format!(
            "node name `{name}` contains `{bad}`: a node name is one NATS subject token (ASCII letters, digits, `_`, `-`)"
        ));
    }
    if RESERVED_NODE_NAMES.contains(&name) {
        return Some(format!(
            "node name `{name}` is reserved (it would collide with kinfra's own subjects); choose another"
        ));
    }
    None
}

/// The machine's hostname made into a node name (characters other than ASCII letters,
/// digits, `_` and `-` become `_`); `node` when there is none.
pub fn hostname_node_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let raw = raw.trim();
    let name: String = raw
        .chars()
        .take(63)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() || RESERVED_NODE_NAMES.contains(&name.as_str()) {
        "node".into()
    } else {
        name
    }
}

impl NodeConfig {
    /// This node's name: `name`, else the hostname ([`hostname_node_name`]).
    pub fn effective_name(&self) -> String {
        self.name.clone().unwrap_or_else(hostname_node_name)
    }
}

/// Whether a service or resource with `nodes` runs on `node` (absent `nodes`: everywhere).
pub fn runs_on(nodes: Option<&[String]>, node: &str) -> bool {
    nodes.is_none_or(|list| list.iter().any(|n| n == node))
}

/// `[store]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Run the store at all.
    pub enabled: bool,
    /// `surrealkv://path`, `mem://`, `ws://host:port` or `wss://...`; absent means surrealkv
    /// under the state dir (`STATE_DIR/db`).
    pub url: Option<String>,
    /// Sync every commit to disk (surrealkv). Off, the OS decides when writes reach the disk:
    /// faster, but a power loss can lose the last commits (a crash of kinfra alone cannot).
    pub sync: bool,
    /// Remote user.
    pub user: Option<String>,
    /// Remote password.
    pub password: Option<Secret>,
    /// Namespace of kinfra's own tables.
    pub namespace: String,
    /// Database of kinfra's own tables.
    pub database: String,
    /// Database (in `namespace`) of what every node pointing at the same store shares: the
    /// ACME account, certificates, order lock and HTTP-01 challenge answers. Nodes of a fleet
    /// on one SurrealDB server each have their own `database` and the same `shared_database`,
    /// so one orders a certificate and all serve it. Embedded, it is another database of the
    /// same data directory.
    pub shared_database: String,
    /// Namespace given to the user's code (`Runtime::db()`).
    pub user_namespace: String,
    /// Database given to the user's code (`Runtime::db()`).
    pub user_database: String,
    /// Most events kept; older ones are deleted.
    pub event_retention: u64,
    /// Events older than this are deleted.
    pub event_max_age: Dur,
    /// Most runs (process starts with their exits) kept for `kinfra runtime history`.
    pub run_retention: u64,
    /// How long opening the store may take (a remote server that does not answer).
    pub connect_timeout: Dur,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            url: None,
            sync: true,
            user: None,
            password: None,
            namespace: "kinfra".into(),
            database: "runtime".into(),
            shared_database: "shared".into(),
            user_namespace: "app".into(),
            user_database: "main".into(),
            event_retention: 10_000,
            event_max_age: Dur::from_secs(7 * 24 * 3600),
            run_retention: 10_000,
            connect_timeout: Dur::from_secs(10),
        }
    }
}

/// Which ACME challenge to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum ChallengeKind {
    /// HTTP-01, answered by the proxy's HTTP listener.
    #[default]
    #[serde(rename = "http-01")]
    Http01,
    /// TLS-ALPN-01, answered by the TLS listener.
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

/// `[acme]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// Contact email.
    #[serde(default)]
    pub email: Option<String>,
    /// Directory URL.
    #[serde(default = "default_acme_directory")]
    pub directory: String,
    /// Domains on the certificate.
    pub domains: Vec<String>,
    /// Challenge type.
    #[serde(default)]
    pub challenge: ChallengeKind,
    /// Extra roots trusted for the ACME server's own TLS.
    #[serde(default)]
    pub ca_roots: Vec<PathBuf>,
    /// Also write PEM files under the state dir (`acme/<domain>/{cert,key}.pem`, mode 0600).
    #[serde(default)]
    pub export_pem: bool,
    /// Renew when less than this remains; absent means when a third of the certificate's
    /// lifetime remains.
    #[serde(default)]
    pub renew_before: Option<Dur>,
    /// How often certificates are checked for renewal.
    #[serde(default = "default_acme_check_interval")]
    pub check_interval: Dur,
    /// First delay after a failed order; doubled after each failure in a row.
    #[serde(default = "default_acme_retry_min")]
    pub retry_min: Dur,
    /// Longest delay between attempts after failures.
    #[serde(default = "default_acme_retry_max")]
    pub retry_max: Dur,
    /// New orders per hour per account at most (a guard against CA rate limits).
    #[serde(default = "default_acme_orders_per_hour")]
    pub orders_per_hour: u32,
}

fn default_acme_directory() -> String {
    "https://acme-v02.api.letsencrypt.org/directory".into()
}

fn default_acme_check_interval() -> Dur {
    Dur::from_secs(3600)
}

fn default_acme_retry_min() -> Dur {
    Dur::from_secs(60)
}

fn default_acme_retry_max() -> Dur {
    Dur::from_secs(6 * 3600)
}

fn default_acme_orders_per_hour() -> u32 {
    60
}

/// What `runtime down` does with a tunnel's DNS records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum TunnelOnDown {
    /// Leave the tunnel and its DNS records (the next start adopts them).
    #[default]
    Keep,
    /// Remove the DNS records pointing at the tunnel.
    Delete,
}

/// `[tunnel]`: a Cloudflare tunnel that publishes the proxy's routes under public hostnames.
/// kinfra creates or adopts the named tunnel, keeps a proxied CNAME per hostname, writes
/// cloudflared's ingress config from `[[routes]]` and runs cloudflared as the supervised
/// service `tunnel`. `${VAR}` in `account_id`, `zone_id`, `token` and `base_url` is filled in
/// from the environment when the runtime starts.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct TunnelConfig {
    /// The tunnel provider; only `cloudflare`.
    pub provider: Option<String>,
    /// The tunnel's name at Cloudflare; absent means `kinfra-<project>`.
    pub name: Option<String>,
    /// The Cloudflare account the tunnel belongs to.
    pub account_id: Option<String>,
    /// The zone (DNS) the hostnames live in.
    pub zone_id: Option<String>,
    /// Public hostnames (`app.example.com`; no scheme, port or path). At least one.
    pub hostnames: Vec<String>,
    /// API token (tunnel and DNS edit rights).
    pub token: Option<Secret>,
    /// File holding the API token, relative to the config file's directory.
    pub token_file: Option<PathBuf>,
    /// The Cloudflare API's base URL (tests); absent means Cloudflare's.
    pub base_url: Option<String>,
    /// The cloudflared program: a name looked up on PATH, or a path; absent means
    /// `cloudflared`.
    pub cloudflared: Option<String>,
    /// Where cloudflared's metrics server listens (its `/ready` is the readiness probe);
    /// absent means 127.0.0.1 on a free port.
    pub metrics: Option<String>,
    /// What `runtime down` does with the DNS records.
    pub on_down: TunnelOnDown,
}

impl TunnelConfig {
    /// The provider: `provider`, or `cloudflare`.
    pub fn provider_id(&self) -> &str {
        self.provider.as_deref().unwrap_or("cloudflare")
    }

    /// The tunnel's name: `name`, or `kinfra-<project>`.
    pub fn tunnel_name(&self, project: &str) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("kinfra-{project}"))
    }

    /// The cloudflared program: `cloudflared`, or the name `cloudflared`.
    pub fn cloudflared_program(&self) -> &str {
        self.cloudflared.as_deref().unwrap_or("cloudflared")
    }
}

/// `[image]`: what `kinfra image build` packs beside the static binary, a CA bundle and this
/// config (which lands at `/app/<its file name>`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct ImageConfig {
    /// Files and directories (relative to the config file's directory, copied under `/app`
    /// with the same relative path; a directory with everything in it).
    pub include: Vec<PathBuf>,
    /// Put a static busybox in as `/bin/sh` (with its applets in `/bin`): absent means only
    /// when a command of the config is a shell string; `true` for scripts that need one
    /// (`#!/bin/sh`), `false` never.
    pub shell: Option<bool>,
}
