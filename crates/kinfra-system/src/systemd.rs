//! The `systemd` provider: a systemd unit (`unit = "postgresql.service"`) as a resource,
//! through systemd's D-Bus API (`org.freedesktop.systemd1.Manager`), never by running or
//! parsing `systemctl`.
//!
//! Starting a resource loads the unit (`LoadUnit`, or `GetUnit` where the peer has no
//! `LoadUnit`; a unit systemd does not know fails naming it), subscribes to the unit object's
//! `PropertiesChanged` (after `Manager.Subscribe`, which asks systemd to send them) and, unless
//! the unit is up already (then it is adopted), calls `StartUnit(unit, "replace")` and waits
//! for the job's `JobRemoved` signal and its result. Stopping calls `StopUnit` the same way.
//! The unit's `ActiveState` maps to kinfra's states (`activating` → starting, `active` and
//! `reloading` → running, `deactivating` → stopping, `inactive` → stopped, `failed` → failed
//! with `SubState` and the service's `Result` in the message); the raw
//! `ActiveState/SubState` is the resource's `provider_state`. Changes arrive by signal; a slow
//! safety re-read runs every `interval` (default 5 minutes).
//!
//! The bus: the instance's `bus` key (a D-Bus address), else `DBUS_SYSTEM_BUS_ADDRESS`, else
//! `unix:path=/run/dbus/system_bus_socket`; with `user = true` on the resource, the session
//! bus (`DBUS_SESSION_BUS_ADDRESS`). When the bus goes away under a run (the daemon killed),
//! the run fails with that cause; a restart of the resource connects anew.
//!
//! Logs: while a run is live, `journalctl -u UNIT -f -o json -n 0` (`--user-unit` for user
//! units; the program is the instance's `journalctl` key) runs as a child and each entry's
//! `MESSAGE` goes into the run's output; the child is killed when the run ends. When the
//! journal cannot be read (no journalctl, it exits, no permission) the status message says
//! `journal not readable: ...` and the resource works on without logs.
//!
//! kinfra's `on_down` defaults to `keep` for provider resources: `runtime down` lets go of
//! the unit and leaves it running (kinfra does not stop the system's nginx).
//!
//! Commands: `start`, `stop`, `restart` (`RestartUnit`) and `reload` (`ReloadUnit`), each with
//! a dry-run that names the D-Bus call it would make and makes none.

use futures_util::StreamExt;
use kinfra_core::event::ExitInfo;
use kinfra_core::resource::{
    BoxFuture, Connection, Observed, OutputLine, ReportedState, Resource, ResourceError, Run,
    SyncFacts,
};
use kinfra_core::state::{Health, ServiceState};
use kinfra_core::status::LogStream;
use kinfra_provider::command::{CommandSpec, ValidatedParams};
use kinfra_provider::metadata::{
    AuthMethod, Capability, Category, ConfigKeySpec, ConfigKind, ProviderMetadata, ResourceTypeSpec,
};
use kinfra_provider::provider::{
    InstanceContext, KINFRA_KEYS, Provider, ProviderError, ResourceDecl, ResourceProblem,
    config_duration_or, config_problems,
};
use kinfra_provider::result::{CommandResult, PlannedRequest};
use kinfra_provider::run_slot::{AbortOnDrop, LogRing, RunSlot, SyncRecord, lock};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};
use zbus::zvariant::{OwnedObjectPath, OwnedValue};

/// The provider's id.
pub const ID: &str = "systemd";
/// The one resource type it runs.
pub const RESOURCE_TYPE: &str = "unit";
/// The safety re-read's interval when the resource sets none (changes arrive by signal).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);
/// The system bus when neither the instance's `bus` nor `DBUS_SYSTEM_BUS_ADDRESS` says one.
pub const DEFAULT_SYSTEM_BUS: &str = "unix:path=/run/dbus/system_bus_socket";
/// systemd's bus name.
pub const SYSTEMD_NAME: &str = "org.freedesktop.systemd1";
/// The manager object.
pub const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
/// The manager interface.
pub const MANAGER_INTERFACE: &str = "org.freedesktop.systemd1.Manager";
/// A unit object's interface.
pub const UNIT_INTERFACE: &str = "org.freedesktop.systemd1.Unit";
/// A service unit's own interface (its `Result`).
pub const SERVICE_INTERFACE: &str = "org.freedesktop.systemd1.Service";
/// The longest a start, stop, restart or reload job may take before kinfra gives up on it.
pub const JOB_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one D-Bus call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Output lines kept for [`Resource::logs`].
const LOG_LINES: usize = 500;
/// Lines said outside a run kept for the next run's output at most.
const PENDING_LINES: usize = 32;
/// The longest error text taken from the bus (a stand-in's traceback is cut).
const ERROR_TEXT_MAX: usize = 300;
/// The unit suffixes systemd knows.
const UNIT_SUFFIXES: &[&str] = &[
    "service",
    "socket",
    "device",
    "mount",
    "automount",
    "swap",
    "target",
    "path",
    "timer",
    "slice",
    "scope",
];

/// What a unit's `ActiveState` means in kinfra's state model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitStatus {
    /// `activating`.
    Starting,
    /// `active` or `reloading`.
    Running,
    /// `deactivating`.
    Stopping,
    /// `inactive`.
    Stopped,
    /// `failed`.
    Failed,
}

impl UnitStatus {
    /// The kinfra state it is.
    pub fn service_state(self) -> ServiceState {
        match self {
            Self::Starting => ServiceState::Starting,
            Self::Running => ServiceState::Running,
            Self::Stopping => ServiceState::Stopping,
            Self::Stopped => ServiceState::Stopped,
            Self::Failed => ServiceState::Failed,
        }
    }
}

/// Maps an `ActiveState`; `None` for a value systemd does not document (the last state is
/// kept, with a warning). `maintenance` and `refreshing` (newer systemd) count as running.
pub fn map_active_state(active: &str) -> Option<UnitStatus> {
    Some(match active {
        "activating" => UnitStatus::Starting,
        "active" | "reloading" | "refreshing" | "maintenance" => UnitStatus::Running,
        "deactivating" => UnitStatus::Stopping,
        "inactive" => UnitStatus::Stopped,
        "failed" => UnitStatus::Failed,
        _ => return None,
    })
}

/// Checks a unit name's form as systemd does (`name.suffix`, at most 255 characters of
/// letters, digits and `:-_.\@`, a known suffix, a template only with an instance).
pub fn check_unit_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty unit name".into());
    }
    if name.len() > 255 {
        return Err(format!("`{name}` is longer than 255 characters"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.' | '\\' | '@')))
    {
        return Err(format!(
            "`{name}` has `{bad}`, not allowed in a unit name (letters, digits and :-_.\\@)"
        ));
    }
    let Some((stem, suffix)) = name.rsplit_once('.') else {
        return Err(format!(
            "`{name}` has no unit type suffix (such as `{name}.service`)"
        ));
    };
    if !UNIT_SUFFIXES.contains(&suffix) {
        return Err(format!(
            "`{name}`: `.{suffix}` is not a unit type ({})",
            UNIT_SUFFIXES.join(", ")
        ));
    }
    if stem.is_empty() || stem.starts_with('@') {
        return Err(format!("`{name}` has no name before its suffix"));
    }
    if stem.ends_with('@') {
        return Err(format!(
            "`{name}` is a template: name an instance such as `{stem}1.{suffix}`"
        ));
    }
    Ok(())
}

/// A resource's own keys, parsed.
#[derive(Debug, Clone)]
struct UnitSpec {
    unit: String,
    user: bool,
    interval: Duration,
}

impl UnitSpec {
    fn parse(config: &Map<String, Value>) -> Result<Self, Vec<ResourceProblem>> {
        let mut problems = Vec::new();
        let unit = match config.get("unit") {
            Some(Value::String(unit)) => {
                if let Err(why) = check_unit_name(unit) {
                    problems.push(ResourceProblem::at("unit", why));
                }
                unit.clone()
            }
            Some(_) => {
                problems.push(ResourceProblem::at("unit", "expected a string"));
                String::new()
            }
            None => {
                problems.push(ResourceProblem::at("unit", "missing (required)"));
                String::new()
            }
        };
        let user = match config.get("user") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                problems.push(ResourceProblem::at("user", "expected true or false"));
                false
            }
        };
        let interval = config_duration_or(config, "interval", DEFAULT_INTERVAL, &mut problems);
        if problems.is_empty() {
            Ok(Self {
                unit,
                user,
                interval,
            })
        } else {
            Err(problems)
        }
    }
}

/// Where the instance's bus is and which journalctl it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusSpec {
    /// The D-Bus address.
    pub address: String,
    /// True for the session (user) bus.
    pub user: bool,
    /// The journalctl program.
    pub journalctl: String,
}

impl BusSpec {
    /// The bus a resource of `instance` uses (`user`: the session bus), and its journalctl;
    /// every problem with the instance's keys (`bus`, `journalctl`) at once.
    pub fn of(instance: &InstanceContext, user: bool) -> Result<Self, Vec<ResourceProblem>> {
        let mut problems = Vec::new();
        let text = |key: &str, problems: &mut Vec<ResourceProblem>| match instance.config.get(key) {
            None => None,
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
            Some(_) => {
                problems.push(ResourceProblem::at(
                    format!("providers.{}.{key}", instance.instance),
                    "expected a non-empty string",
                ));
                None
            }
        };
        let bus = text("bus", &mut problems);
        let journalctl = text("journalctl", &mut problems).unwrap_or_else(|| "journalctl".into());
        for key in instance.config.keys() {
            if !matches!(key.as_str(), "bus" | "journalctl" | "rate_limit") {
                problems.push(ResourceProblem::at(
                    format!("providers.{}.{key}", instance.instance),
                    "unknown key for the systemd provider (it takes `bus` and `journalctl`)",
                ));
            }
        }
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let address = match (bus, user) {
            (Some(bus), _) => bus,
            (None, false) => {
                env("DBUS_SYSTEM_BUS_ADDRESS").unwrap_or_else(|| DEFAULT_SYSTEM_BUS.into())
            }
            (None, true) => match env("DBUS_SESSION_BUS_ADDRESS") {
                Some(a) => a,
                None => {
                    problems.push(ResourceProblem::at(
                        "user",
                        "no session bus: DBUS_SESSION_BUS_ADDRESS is not set (set the instance's `bus`)",
                    ));
                    String::new()
                }
            },
        };
        if !address.is_empty()
            && let Err(e) = zbus::Address::try_from(address.as_str())
        {
            problems.push(ResourceProblem::at(
                format!("providers.{}.bus", instance.instance),
                format!("`{address}` is not a D-Bus address: {e}"),
            ));
        }
        if problems.is_empty() {
            Ok(Self {
                address,
                user,
                journalctl,
            })
        } else {
            Err(problems)
        }
    }

    /// The bus in words: `the system bus (unix:path=...)`.
    pub fn what(&self) -> String {
        let which = if self.user { "session" } else { "system" };
        format!("the {which} bus ({})", self.address)
    }
}

/// The D-Bus call a command (or a start) makes, for dry-runs.
pub fn planned_call(bus: &BusSpec, method: &str, unit: &str) -> PlannedRequest {
    PlannedRequest {
        method: "DBUS".into(),
        url: format!(
            "{} {SYSTEMD_NAME} {MANAGER_PATH} {MANAGER_INTERFACE}.{method}",
            bus.address
        ),
        headers: Vec::new(),
        body: Some(match method {
            "StartUnit" | "StopUnit" | "RestartUnit" | "ReloadUnit" => json!([unit, "replace"]),
            _ => json!([unit]),
        }),
    }
}

/// The D-Bus method of a command.
fn command_method(command: &str) -> Option<&'static str> {
    Some(match command {
        "start" => "StartUnit",
        "stop" => "StopUnit",
        "restart" => "RestartUnit",
        "reload" => "ReloadUnit",
        _ => return None,
    })
}

fn command_specs() -> Vec<CommandSpec> {
    let command = |id: &str, method: &str, what: &str| {
        CommandSpec::new(
            id,
            id,
            format!("{what} ({MANAGER_INTERFACE}.{method}, mode replace)."),
        )
        .in_category("lifecycle")
        .for_resource_type(RESOURCE_TYPE)
        .with_dry_run()
    };
    vec![
        command("start", "StartUnit", "Starts the unit"),
        command("stop", "StopUnit", "Stops the unit"),
        command("restart", "RestartUnit", "Restarts the unit"),
        command(
            "reload",
            "ReloadUnit",
            "Asks the unit to reload its configuration (ExecReload)",
        ),
    ]
}

fn metadata() -> ProviderMetadata {
    ProviderMetadata {
        id: ID.into(),
        name: ID.into(),
        display_name: "systemd".into(),
        description: "systemd units (nginx, PostgreSQL, Redis, any service) through systemd's \
                      D-Bus API: start/stop/restart/reload jobs, ActiveState/SubState followed \
                      by signal, the unit's journal in the resource's log. Instance keys: `bus` \
                      (a D-Bus address), `journalctl` (the program)."
            .into(),
        version: env!("CARGO_PKG_VERSION").into(),
        category: Category::Custom,
        capabilities: vec![Capability::Monitor, Capability::DryRun],
        resource_types: vec![ResourceTypeSpec {
            name: RESOURCE_TYPE.into(),
            description: "A systemd unit: running while its ActiveState is active.".into(),
            config: vec![
                ConfigKeySpec::required(
                    "unit",
                    ConfigKind::String,
                    "The unit's name, e.g. `postgresql.service`.",
                ),
                ConfigKeySpec::optional(
                    "user",
                    ConfigKind::Boolean,
                    "A unit of the user's systemd (the session bus) instead of the system's.",
                ),
            ],
        }],
        auth_methods: vec![AuthMethod::None],
    }
}

/// The `systemd` provider.
pub struct SystemdProvider {
    metadata: ProviderMetadata,
    commands: Vec<CommandSpec>,
}

impl std::fmt::Debug for SystemdProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemdProvider").finish_non_exhaustive()
    }
}

impl Default for SystemdProvider {
    fn default() -> Self {
        Self {
            metadata: metadata(),
            commands: command_specs(),
        }
    }
}

/// The `systemd` provider.
pub fn provider() -> Arc<dyn Provider> {
    Arc::new(SystemdProvider::default())
}

fn parse(
    instance: &InstanceContext,
    decl: &ResourceDecl,
) -> Result<(UnitSpec, BusSpec), ProviderError> {
    let invalid = |problems| ProviderError::InvalidResource {
        resource: decl.name.clone(),
        problems,
    };
    let spec = UnitSpec::parse(&decl.config).map_err(invalid)?;
    let bus = BusSpec::of(instance, spec.user).map_err(invalid)?;
    Ok((spec, bus))
}

impl SystemdProvider {
    /// The [`SystemdResource`] for `decl` (the concrete type behind [`Provider::resource`]).
    pub fn unit_resource(
        &self,
        instance: &InstanceContext,
        decl: &ResourceDecl,
    ) -> Result<SystemdResource, ProviderError> {
        let (spec, bus) = parse(instance, decl)?;
        Ok(SystemdResource {
            inner: Arc::new(Inner {
                name: decl.name.clone(),
                spec,
                bus,
                view: Mutex::new(View::default()),
                logs: LogRing::new(LOG_LINES),
                output: Mutex::new(None),
                pending: Mutex::new(Vec::new()),
                live: RunSlot::default(),
                sync: SyncRecord::default(),
            }),
        })
    }
}

impl Provider for SystemdProvider {
    fn metadata(&self) -> &ProviderMetadata {
        &self.metadata
    }

    fn commands(&self) -> &[CommandSpec] {
        &self.commands
    }

    fn validate_resource<'a>(
        &'a self,
        instance: &'a InstanceContext,
        decl: &'a ResourceDecl,
    ) -> BoxFuture<'a, Vec<ResourceProblem>> {
        Box::pin(async move {
            let mut problems = config_problems(
                &self.metadata,
                RESOURCE_TYPE,
                &decl.config,
                KINFRA_KEYS,
                UnitSpec::parse,
            );
            let user = matches!(decl.config.get("user"), Some(Value::Bool(true)));
            if let Err(found) = BusSpec::of(instance, user) {
                kinfra_provider::provider::merge_problems(&mut problems, found);
            }
            problems
        })
    }

    fn resource(
        &self,
        instance: &InstanceContext,
        decl: &ResourceDecl,
    ) -> Result<Box<dyn Resource>, ProviderError> {
        Ok(Box::new(self.unit_resource(instance, decl)?))
    }

    /// The `StartUnit` call a start makes (made only when the unit is not up already).
    fn planned_start<'a>(
        &'a self,
        instance: &'a InstanceContext,
        decl: &'a ResourceDecl,
    ) -> BoxFuture<'a, Result<Option<Vec<PlannedRequest>>, ProviderError>> {
        Box::pin(async move {
            let (spec, bus) = parse(instance, decl)?;
            Ok(Some(vec![planned_call(&bus, "StartUnit", &spec.unit)]))
        })
    }

    fn execute<'a>(
        &'a self,
        instance: &'a InstanceContext,
        resource: &'a ResourceDecl,
        command: &'a CommandSpec,
        _params: ValidatedParams,
        dry_run: bool,
    ) -> BoxFuture<'a, Result<CommandResult, ProviderError>> {
        Box::pin(async move {
            let (spec, bus) = parse(instance, resource)?;
            let Some(method) = command_method(&command.id) else {
                return Err(ProviderError::unknown_command(ID, &command.id));
            };
            if dry_run {
                return Ok(CommandResult::planned(
                    &[planned_call(&bus, method, &spec.unit)],
                    &[],
                ));
            }
            let failed = |reason: String| ProviderError::Command {
                command: command.id.clone(),
                reason,
            };
            let client = SystemdClient::connect(&bus)
                .await
                .map_err(|e| failed(e.to_string()))?;
            let job = client
                .run_job(method, &spec.unit, JOB_TIMEOUT)
                .await
                .map_err(|e| failed(e.to_string()))?;
            let state = client.unit_path(&spec.unit).await.ok();
            let mut data = json!({ "unit": spec.unit, "job": job.path, "result": job.result });
            if let Some(path) = state
                && let Ok(facts) = client.read_unit(&path).await
            {
                data["state"] = Value::String(facts.words());
            }
            let mut result = CommandResult::ok(data);
            result.operation = Some(job.path);
            result.operation_state = Some(job.result.clone());
            if job.result != "done" {
                result.success = false;
                result.warnings.push(format!(
                    "the {method} job of `{}` ended `{}`",
                    spec.unit, job.result
                ));
            }
            Ok(result)
        })
    }
}

/// Why a D-Bus operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SystemdError {
    /// The bus cannot be reached (no socket, refused, authentication).
    #[error("{what} is not reachable: {reason}")]
    Bus {
        /// The bus in words.
        what: String,
        /// What the connection said.
        reason: String,
    },
    /// systemd is not on the bus.
    #[error("systemd ({SYSTEMD_NAME}) is not on {what}: {reason}")]
    NoSystemd {
        /// The bus in words.
        what: String,
        /// What the bus said.
        reason: String,
    },
    /// The unit is unknown to systemd.
    #[error("systemd unit `{unit}` not found: {reason}")]
    NoSuchUnit {
        /// The unit.
        unit: String,
        /// What systemd said.
        reason: String,
    },
    /// A call failed.
    #[error("{call} failed: {reason}")]
    Call {
        /// The call (`StartUnit postgresql.service`).
        call: String,
        /// What systemd said.
        reason: String,
    },
    /// A job did not end in time.
    #[error("the {call} job did not finish within {secs}s")]
    JobTimeout {
        /// The call.
        call: String,
        /// The bound, in seconds.
        secs: u64,
    },
    /// The connection was lost (the bus went away).
    #[error("the connection to {what} was lost")]
    Lost {
        /// The bus in words.
        what: String,
    },
}

impl SystemdError {
    fn resource_error(&self) -> ResourceError {
        match self {
            Self::Bus { what, reason } => ResourceError::EngineUnavailable {
                engine: what.clone(),
                reason: reason.clone(),
            },
            Self::NoSystemd { what, reason } => ResourceError::EngineUnavailable {
                engine: format!("systemd on {what}"),
                reason: reason.clone(),
            },
            Self::NoSuchUnit { .. } => ResourceError::Invalid(self.to_string()),
            Self::Lost { what } => ResourceError::EngineUnavailable {
                engine: what.clone(),
                reason: "the connection was lost".into(),
            },
            Self::Call { call, reason } => ResourceError::op(call, reason),
            Self::JobTimeout { .. } => ResourceError::op("job", self),
        }
    }
}

/// The D-Bus error name of `error`, when the peer answered with one.
fn error_name(error: &zbus::Error) -> Option<String> {
    match error {
        zbus::Error::MethodError(name, _, _) => Some(name.to_string()),
        zbus::Error::FDO(e) => Some(zbus::DBusError::name(e.as_ref()).to_string()),
        _ => None,
    }
}

/// `error` in words: the peer's message (and its error name), or zbus's text.
fn error_text(error: &zbus::Error) -> String {
    match error {
        zbus::Error::MethodError(name, Some(message), _) => {
            // One line: the last of a multi-line message (a peer's traceback ends with what
            // went wrong), bounded.
            let line = message
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or_default()
                .trim();
            let line: String = line.chars().take(ERROR_TEXT_MAX).collect();
            format!("{line} ({name})")
        }
        zbus::Error::MethodError(name, None, _) => name.to_string(),
        other => other.to_string(),
    }
}

/// A job's end: its object path and `JobRemoved`'s result (`done`, `failed`, `timeout`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEnd {
    /// The job's object path.
    pub path: String,
    /// Its result.
    pub result: String,
}

/// What a unit object says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitFacts {
    /// `LoadState` (`loaded`, `not-found`, `masked`, ...).
    pub load: Option<String>,
    /// `ActiveState`.
    pub active: Option<String>,
    /// `SubState`.
    pub sub: Option<String>,
    /// A service's `Result` (`success`, `exit-code`, ...).
    pub result: Option<String>,
}

impl UnitFacts {
    /// `ActiveState/SubState` (just `ActiveState` when the unit says no `SubState`).
    pub fn words(&self) -> String {
        let active = self.active.as_deref().unwrap_or("unknown");
        match self.sub.as_deref() {
            Some(sub) if !sub.is_empty() => format!("{active}/{sub}"),
            _ => active.to_owned(),
        }
    }

    /// Takes the properties of `changed` that it knows.
    fn apply(&mut self, changed: &HashMap<String, OwnedValue>) {
        let text = |key: &str| {
            changed
                .get(key)
                .and_then(|v| String::try_from(v.clone()).ok())
        };
        if let Some(v) = text("LoadState") {
            self.load = Some(v);
        }
        if let Some(v) = text("ActiveState") {
            self.active = Some(v);
        }
        if let Some(v) = text("SubState") {
            self.sub = Some(v);
        }
        if let Some(v) = text("Result") {
            self.result = Some(v);
        }
    }
}

/// One connection to a bus with systemd on it.
pub struct SystemdClient {
    bus: BusSpec,
    conn: zbus::Connection,
    manager: zbus::Proxy<'static>,
}

impl SystemdClient {
    /// Connects to `bus` (a bus that cannot be reached is [`SystemdError::Bus`]).
    pub async fn connect(bus: &BusSpec) -> Result<Self, SystemdError> {
        let unreachable = |e: zbus::Error| SystemdError::Bus {
            what: bus.what(),
            reason: error_text(&e),
        };
        let conn = tokio::time::timeout(CALL_TIMEOUT, async {
            zbus::connection::Builder::address(bus.address.as_str())?
                .method_timeout(CALL_TIMEOUT)
                .build()
                .await
        })
        .await
        .map_err(|_| SystemdError::Bus {
            what: bus.what(),
            reason: format!("no answer within {}s", CALL_TIMEOUT.as_secs()),
        })?
        .map_err(unreachable)?;
        let manager = Self::proxy(&conn, MANAGER_PATH.to_owned(), MANAGER_INTERFACE)
            .await
            .map_err(unreachable)?;
        Ok(Self {
            bus: bus.clone(),
            conn,
            manager,
        })
    }

    async fn proxy(
        conn: &zbus::Connection,
        path: String,
        interface: &'static str,
    ) -> zbus::Result<zbus::Proxy<'static>> {
        zbus::proxy::Builder::<zbus::Proxy<'static>>::new(conn)
            .destination(SYSTEMD_NAME)?
            .path(path)?
            .interface(interface)?
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
    }

    fn call_error(&self, call: String, error: zbus::Error) -> SystemdError {
        match error_name(&error).as_deref() {
            Some(
                "org.freedesktop.DBus.Error.ServiceUnknown"
                | "org.freedesktop.DBus.Error.NameHasNoOwner",
            ) => SystemdError::NoSystemd {
                what: self.bus.what(),
                reason: error_text(&error),
            },
            Some(_) => SystemdError::Call {
                call,
                reason: error_text(&error),
            },
            None => SystemdError::Call {
                call,
                reason: error_text(&error),
            },
        }
    }

    /// Asks systemd to send unit signals (`Manager.Subscribe`); a peer without it (some
    /// stand-ins) is noted in the log and ignored.
    pub async fn subscribe(&self) -> Result<(), SystemdError> {
        match self.manager.call::<_, _, ()>("Subscribe", &()).await {
            Ok(()) => Ok(()),
            Err(e)
                if error_name(&e).as_deref()
                    == Some("org.freedesktop.DBus.Error.UnknownMethod") =>
            {
                debug!(error = %error_text(&e), "systemd peer has no Manager.Subscribe.");
                Ok(())
            }
            Err(e) => Err(self.call_error("Subscribe".into(), e)),
        }
    }

    /// The unit's object path: `LoadUnit` (which also loads a unit not loaded yet), or
    /// `GetUnit` where the peer has no `LoadUnit`. An unknown unit is
    /// [`SystemdError::NoSuchUnit`].
    pub async fn unit_path(&self, unit: &str) -> Result<OwnedObjectPath, SystemdError> {
        let not_found = |e: &zbus::Error| SystemdError::NoSuchUnit {
            unit: unit.to_owned(),
            reason: error_text(e),
        };
        let answer = match self
            .manager
            .call::<_, _, OwnedObjectPath>("LoadUnit", &(unit,))
            .await
        {
            Err(e)
                if error_name(&e).as_deref()
                    == Some("org.freedesktop.DBus.Error.UnknownMethod") =>
            {
                self.manager
                    .call::<_, _, OwnedObjectPath>("GetUnit", &(unit,))
                    .await
            }
            other => other,
        };
        match answer {
            Ok(path) => Ok(path),
            Err(e) => match error_name(&e).as_deref() {
                Some(
                    "org.freedesktop.systemd1.NoSuchUnit" | "org.freedesktop.systemd1.LoadFailed",
                ) => Err(not_found(&e)),
                _ => Err(self.call_error(format!("LoadUnit {unit}"), e)),
            },
        }
    }

    /// Reads the unit's `LoadState`, `ActiveState`, `SubState` and (for a service) `Result`.
    pub async fn read_unit(&self, path: &OwnedObjectPath) -> Result<UnitFacts, SystemdError> {
        let props = Self::proxy(
            &self.conn,
            path.as_str().to_owned(),
            "org.freedesktop.DBus.Properties",
        )
        .await
        .map_err(|e| self.call_error("Properties".into(), e))?;
        let all: HashMap<String, OwnedValue> = props
            .call("GetAll", &(UNIT_INTERFACE,))
            .await
            .map_err(|e| self.call_error(format!("GetAll {UNIT_INTERFACE}"), e))?;
        let mut facts = UnitFacts::default();
        facts.apply(&all);
        if let Ok(result) = props
            .call::<_, _, OwnedValue>("Get", &(SERVICE_INTERFACE, "Result"))
            .await
            && let Ok(text) = String::try_from(result)
        {
            facts.result = Some(text);
        }
        Ok(facts)
    }

    /// A stream of the unit object's `PropertiesChanged` (interface, changed, invalidated).
    async fn unit_changes(
        &self,
        path: &OwnedObjectPath,
    ) -> Result<zbus::proxy::SignalStream<'static>, SystemdError> {
        let props = Self::proxy(
            &self.conn,
            path.as_str().to_owned(),
            "org.freedesktop.DBus.Properties",
        )
        .await
        .map_err(|e| self.call_error("Properties".into(), e))?;
        props
            .receive_signal("PropertiesChanged")
            .await
            .map_err(|e| self.call_error("PropertiesChanged match".into(), e))
    }

    /// Calls `method(unit, "replace")` and waits up to `timeout` for its job's `JobRemoved`.
    pub async fn run_job(
        &self,
        method: &str,
        unit: &str,
        timeout: Duration,
    ) -> Result<JobEnd, SystemdError> {
        let call = format!("{method} {unit}");
        // Subscribed before the call: the job may end before its reply arrives.
        let mut removed = self
            .manager
            .receive_signal("JobRemoved")
            .await
            .map_err(|e| self.call_error(call.clone(), e))?;
        let job: OwnedObjectPath = self
            .manager
            .call(method, &(unit, "replace"))
            .await
            .map_err(|e| match error_name(&e).as_deref() {
                Some("org.freedesktop.systemd1.NoSuchUnit") => SystemdError::NoSuchUnit {
                    unit: unit.to_owned(),
                    reason: error_text(&e),
                },
                _ => self.call_error(call.clone(), e),
            })?;
        let wait = async {
            while let Some(message) = removed.next().await {
                let Ok((_id, path, _unit, result)) =
                    message
                        .body()
                        .deserialize::<(u32, OwnedObjectPath, String, String)>()
                else {
                    continue;
                };
                if path == job {
                    return Ok(JobEnd {
                        path: path.as_str().to_owned(),
                        result,
                    });
                }
            }
            Err(SystemdError::Lost {
                what: self.bus.what(),
            })
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| SystemdError::JobTimeout {
                call,
                secs: timeout.as_secs(),
            })?
    }
}

/// What the resource knows of its unit (answers `reported_state`, `health` without I/O).
#[derive(Debug, Default)]
struct View {
    facts: UnitFacts,
    /// Why the resource failed (unknown unit, lost bus, failed job); cleared by a start.
    failure: Option<String>,
    /// Why the journal cannot be read, while it cannot.
    journal: Option<String>,
    /// The unit was stopped by kinfra (its last stop).
    stopped_by_kinfra: bool,
}

/// What a live run holds: its output sender, its watcher (signals and safety re-reads) and
/// its journal follower (which owns the journalctl child: aborting it kills the child).
type Held = (mpsc::Sender<OutputLine>, AbortOnDrop, AbortOnDrop);

struct Inner {
    name: String,
    spec: UnitSpec,
    bus: BusSpec,
    view: Mutex<View>,
    logs: LogRing,
    /// The live run's output (generation, sender): cleared when that run ends.
    output: Mutex<Option<(u64, mpsc::Sender<OutputLine>)>>,
    /// Lines said while no run was live (a start's calls), for the next run's output.
    pending: Mutex<Vec<OutputLine>>,
    live: RunSlot<Held>,
    sync: SyncRecord,
}

impl Inner {
    fn line(&self, stream: LogStream, text: impl Into<String>) {
        let line = OutputLine {
            stream,
            text: text.into(),
        };
        self.logs.push(line.clone());
        match lock(&self.output).as_ref() {
            Some((_, out)) => {
                let _ = out.try_send(line);
            }
            None => {
                // Said while no run is live (during a start): the next run's output opens
                // with it.
                let mut pending = lock(&self.pending);
                if pending.len() < PENDING_LINES {
                    pending.push(line);
                }
            }
        }
    }

    /// Records what the unit says; logs a change of `ActiveState/SubState`.
    fn record(&self, facts: UnitFacts) -> Option<UnitStatus> {
        let words = facts.words();
        let mapped = facts.active.as_deref().and_then(map_active_state);
        let changed = {
            let mut view = lock(&self.view);
            let changed = view.facts.words() != words;
            view.facts = facts;
            changed
        };
        self.sync.ok(Some(words.clone()));
        if changed {
            self.line(
                LogStream::System,
                format!("unit {} is {words}", self.spec.unit),
            );
            if mapped.is_none() {
                warn!(resource = %self.name, state = %words, "Unknown systemd ActiveState; keeping the last state.");
            }
        }
        mapped
    }

    fn fail(&self, generation: Option<u64>, failure: String) {
        lock(&self.view).failure = Some(failure.clone());
        self.line(LogStream::Stderr, failure);
        self.end_run(generation, 1);
    }

    fn end_run(&self, generation: Option<u64>, code: i32) {
        let ended = self.live.end(
            generation,
            ExitInfo {
                code: Some(code),
                signal: None,
            },
        );
        if ended {
            let mut output = lock(&self.output);
            if generation.is_none() || output.as_ref().map(|(g, _)| Some(*g)) == Some(generation) {
                *output = None;
            }
        }
    }

    /// Why the unit failed, from what it says.
    fn failure_text(&self) -> String {
        failure_text(&self.spec.unit, &lock(&self.view).facts)
    }

    /// Acts on the unit's current state in run `generation`: ends the run when it stopped or
    /// failed outside kinfra.
    fn react(&self, generation: u64, status: Option<UnitStatus>) {
        match status {
            Some(UnitStatus::Stopped) => self.end_run(Some(generation), 0),
            Some(UnitStatus::Failed) => {
                let failure = self.failure_text();
                self.fail(Some(generation), failure);
            }
            _ => {}
        }
    }

    /// The run's watcher: every `PropertiesChanged` of the unit, a safety re-read every
    /// `interval`; the signal stream ending means the bus went away.
    async fn watch(
        self: Arc<Self>,
        generation: u64,
        client: SystemdClient,
        path: OwnedObjectPath,
        mut changes: zbus::proxy::SignalStream<'static>,
    ) {
        let mut reread = tokio::time::interval(self.spec.interval);
        reread.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        reread.tick().await;
        loop {
            tokio::select! {
                message = changes.next() => {
                    let Some(message) = message else {
                        let failure = format!(
                            "{} (systemd unit `{}` no longer followed; restart the resource once the bus is back)",
                            SystemdError::Lost { what: self.bus.what() },
                            self.spec.unit
                        );
                        warn!(resource = %self.name, "The D-Bus connection to systemd was lost.");
                        self.fail(Some(generation), failure);
                        return;
                    };
                    let Ok((interface, changed, invalidated)) = message
                        .body()
                        .deserialize::<(String, HashMap<String, OwnedValue>, Vec<String>)>()
                    else {
                        continue;
                    };
                    if interface == UNIT_INTERFACE || interface == SERVICE_INTERFACE {
                        let mut facts = lock(&self.view).facts.clone();
                        facts.apply(&changed);
                        let needs_read = invalidated.iter().any(|p| {
                            matches!(p.as_str(), "ActiveState" | "SubState" | "LoadState" | "Result")
                        });
                        let facts = if needs_read {
                            match client.read_unit(&path).await {
                                Ok(f) => f,
                                Err(_) => facts,
                            }
                        } else {
                            facts
                        };
                        let status = self.record(facts);
                        self.react(generation, status);
                    }
                }
                _ = reread.tick() => {
                    match client.read_unit(&path).await {
                        Ok(facts) => {
                            let status = self.record(facts);
                            self.react(generation, status);
                        }
                        Err(error) => self.sync.failed(error.to_string()),
                    }
                }
            }
        }
    }

    /// Follows the unit's journal into the run's output; a journal that cannot be read is
    /// noted in the view (and so in status).
    async fn follow_journal(self: Arc<Self>) {
        let mut cmd = std::process::Command::new(&self.bus.journalctl);
        let which = if self.bus.user { "--user-unit" } else { "-u" };
        cmd.args([which, &self.spec.unit, "-f", "-o", "json", "-n", "0"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        kinfra_core::child::tie_to_parent(&mut cmd);
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                self.journal_unreadable(format!("{}: {e}", self.bus.journalctl));
                return;
            }
        };
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            self.journal_unreadable("journalctl's output could not be read".into());
            return;
        };
        let errors = tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            let mut last = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                if last.len() >= 5 {
                    last.remove(0);
                }
                last.push(line);
            }
            last
        });
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some((stream, text)) = journal_line(&line) {
                lock(&self.view).journal = None;
                self.line(stream, text);
            }
        }
        let status = child.wait().await;
        let stderr = errors.await.unwrap_or_default().join("; ");
        let how = match status {
            Ok(s) => s.to_string(),
            Err(e) => e.to_string(),
        };
        let reason = if stderr.is_empty() {
            format!("{} {how}", self.bus.journalctl)
        } else {
            format!("{} {how}: {stderr}", self.bus.journalctl)
        };
        self.journal_unreadable(reason);
    }

    fn journal_unreadable(&self, reason: String) {
        let text = format!("journal not readable: {reason}");
        warn!(resource = %self.name, reason = %reason, "The unit's journal is not readable.");
        lock(&self.view).journal = Some(text.clone());
        self.line(LogStream::Stderr, text);
    }

    /// Begins a run: the watcher over `changes` and the journal follower.
    fn begin_run(
        self: &Arc<Self>,
        adopted: bool,
        client: SystemdClient,
        path: OwnedObjectPath,
        changes: zbus::proxy::SignalStream<'static>,
    ) -> (Run, u64) {
        let (out_tx, out_rx) = mpsc::channel(256);
        let (exit_tx, exit_rx) = oneshot::channel();
        lock(&self.view).journal = None;
        let inner = self.clone();
        for line in std::mem::take(&mut *lock(&self.pending)) {
            let _ = out_tx.try_send(line);
        }
        let generation = self.live.begin(|generation| {
            // The output is in place before the watcher can end the run.
            *lock(&inner.output) = Some((generation, out_tx.clone()));
            let watcher = tokio::spawn(inner.clone().watch(generation, client, path, changes));
            let journal = tokio::spawn(inner.clone().follow_journal());
            (
                exit_tx,
                (out_tx, AbortOnDrop(watcher), AbortOnDrop(journal)),
            )
        });
        let run = Run {
            // Shown cut to 12 characters ("Started systemd #3"): the unit is in every line.
            id: format!("#{generation}"),
            pid: None,
            adopted,
            output: out_rx,
            exit: exit_rx,
        };
        (run, generation)
    }

    /// Connects, loads the unit and reads it; a unit not found fails naming it.
    async fn open(&self) -> Result<(SystemdClient, OwnedObjectPath, UnitFacts), SystemdError> {
        let client = SystemdClient::connect(&self.bus).await?;
        let path = client.unit_path(&self.spec.unit).await?;
        let facts = client.read_unit(&path).await?;
        if let Some(load) = facts.load.as_deref()
            && matches!(load, "not-found" | "bad-setting" | "error" | "masked")
        {
            return Err(SystemdError::NoSuchUnit {
                unit: self.spec.unit.clone(),
                reason: format!("LoadState {load}"),
            });
        }
        Ok((client, path, facts))
    }
}

/// Why `unit` failed, from what it says: `ActiveState/SubState` and a service's `Result`.
fn failure_text(unit: &str, facts: &UnitFacts) -> String {
    let mut text = format!("systemd unit `{unit}` failed ({})", facts.words());
    if let Some(result) = facts.result.as_deref().filter(|r| *r != "success") {
        text.push_str(&format!(", result {result}"));
    }
    text
}

/// A journal entry (one line of `journalctl -o json`) as an output line: its `MESSAGE` (a
/// string, or bytes when it was not UTF-8), on stderr for priorities 0-3 (emerg to err).
pub fn journal_line(line: &str) -> Option<(LogStream, String)> {
    let entry: Value = serde_json::from_str(line).ok()?;
    let message = match entry.get("MESSAGE")? {
        Value::String(s) => s.clone(),
        Value::Array(bytes) => {
            let bytes: Vec<u8> = bytes
                .iter()
                .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
        _ => return None,
    };
    let priority = entry
        .get("PRIORITY")
        .and_then(|p| match p {
            Value::String(s) => s.parse::<u8>().ok(),
            Value::Number(n) => n.as_u64().and_then(|n| u8::try_from(n).ok()),
            _ => None,
        })
        .unwrap_or(6);
    let stream = if priority <= 3 {
        LogStream::Stderr
    } else {
        LogStream::Stdout
    };
    Some((stream, message.trim_end_matches('\n').to_owned()))
}

/// A resource of the `systemd` provider (see the module docs).
pub struct SystemdResource {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SystemdResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemdResource")
            .field("name", &self.inner.name)
            .field("unit", &self.inner.spec.unit)
            .finish_non_exhaustive()
    }
}

impl Drop for SystemdResource {
    fn drop(&mut self) {
        // The watcher and the journal child hold the resource's state: they end with it.
        self.inner.live.forget();
        *lock(&self.inner.output) = None;
    }
}

impl SystemdResource {
    /// The unit's `ActiveState/SubState`, from the last read or signal.
    pub fn provider_state(&self) -> Option<String> {
        let view = lock(&self.inner.view);
        view.facts.active.is_some().then(|| view.facts.words())
    }

    /// Why the journal is not readable, while it is not.
    pub fn journal_problem(&self) -> Option<String> {
        lock(&self.inner.view).journal.clone()
    }
}

impl Resource for SystemdResource {
    fn kind(&self) -> &'static str {
        "systemd"
    }

    fn name(&self) -> &str {
        &self.inner.name
    }

    /// Loads and reads the unit; adopts it when it is up, else starts it and waits for the
    /// job. An unknown unit or an unreachable bus fails for good (no restart loop).
    fn start(&self) -> BoxFuture<'_, Result<Run, ResourceError>> {
        Box::pin(async move {
            let inner = &self.inner;
            {
                let mut view = lock(&inner.view);
                view.failure = None;
                view.stopped_by_kinfra = false;
            }
            // Only what this start says opens its run's output.
            lock(&inner.pending).clear();
            let opened = async {
                let (client, path, facts) = inner.open().await?;
                client.subscribe().await?;
                // Followed before anything changes, so no change is missed.
                let changes = client.unit_changes(&path).await?;
                let adopted = match inner.record(facts) {
                    Some(UnitStatus::Running | UnitStatus::Starting) => true,
                    _ => {
                        inner.line(
                            LogStream::System,
                            format!(
                                "StartUnit {} (replace) on {}",
                                inner.spec.unit,
                                inner.bus.what()
                            ),
                        );
                        let job = client
                            .run_job("StartUnit", &inner.spec.unit, JOB_TIMEOUT)
                            .await?;
                        if job.result != "done" {
                            let facts = client.read_unit(&path).await.unwrap_or_default();
                            inner.record(facts);
                            return Err(SystemdError::Call {
                                call: format!("StartUnit {}", inner.spec.unit),
                                reason: format!(
                                    "the job ended `{}`; {}",
                                    job.result,
                                    inner.failure_text()
                                ),
                            });
                        }
                        let facts = client.read_unit(&path).await?;
                        inner.record(facts);
                        false
                    }
                };
                Ok::<_, SystemdError>((client, path, changes, adopted))
            }
            .await;
            match opened {
                Ok((client, path, changes, adopted)) => {
                    let (run, generation) = inner.begin_run(adopted, client, path, changes);
                    // A state read after the job (a unit failed at once) ends the run now.
                    let status = lock(&inner.view)
                        .facts
                        .active
                        .as_deref()
                        .and_then(map_active_state);
                    inner.react(generation, status);
                    Ok(run)
                }
                Err(error) => {
                    let text = error.to_string();
                    if matches!(
                        error,
                        SystemdError::NoSuchUnit { .. }
                            | SystemdError::Bus { .. }
                            | SystemdError::NoSystemd { .. }
                            | SystemdError::Call { .. }
                    ) {
                        lock(&inner.view).failure = Some(text.clone());
                    }
                    inner.line(LogStream::Stderr, text);
                    Err(error.resource_error())
                }
            }
        })
    }

    /// `StopUnit` and waits for its job (up to `grace`, at least a few seconds); the run ends
    /// either way.
    fn stop(&self, grace: Duration) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let stopped = async {
                let client = SystemdClient::connect(&inner.bus).await?;
                inner.line(
                    LogStream::System,
                    format!(
                        "StopUnit {} (replace) on {}",
                        inner.spec.unit,
                        inner.bus.what()
                    ),
                );
                let job = client
                    .run_job(
                        "StopUnit",
                        &inner.spec.unit,
                        grace.max(Duration::from_secs(5)),
                    )
                    .await?;
                if let Ok(path) = client.unit_path(&inner.spec.unit).await
                    && let Ok(facts) = client.read_unit(&path).await
                {
                    inner.record(facts);
                }
                Ok::<_, SystemdError>(job)
            }
            .await;
            lock(&inner.view).stopped_by_kinfra = true;
            inner.end_run(None, 0);
            match stopped {
                Ok(_) => Ok(()),
                Err(error) => {
                    inner.line(LogStream::Stderr, error.to_string());
                    Err(error.resource_error())
                }
            }
        })
    }

    /// Lets go of the run (and its journal follower); the unit stays as it is
    /// (`on_down = "keep"`).
    fn release(&self, _grace: Duration) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            self.inner.line(
                LogStream::System,
                format!(
                    "letting go of unit {}; it is left as it is",
                    self.inner.spec.unit
                ),
            );
            self.inner.end_run(None, 0);
            Ok(())
        })
    }

    fn status(&self) -> BoxFuture<'_, Result<Observed, ResourceError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let (_, _, facts) = inner.open().await.map_err(|e| e.resource_error())?;
            Ok(match inner.record(facts) {
                Some(UnitStatus::Stopped) | None => Observed::Idle,
                Some(UnitStatus::Failed) => Observed::Exited(ExitInfo {
                    code: Some(1),
                    signal: None,
                }),
                Some(_) => Observed::Running,
            })
        })
    }

    /// Healthy while the unit is active, unhealthy when failed, unknown otherwise. No I/O.
    fn health(&self) -> BoxFuture<'_, Result<Health, ResourceError>> {
        Box::pin(async move {
            let view = lock(&self.inner.view);
            if view.failure.is_some() {
                return Ok(Health::Unhealthy);
            }
            Ok(
                match view.facts.active.as_deref().and_then(map_active_state) {
                    Some(UnitStatus::Running) => Health::Healthy,
                    Some(UnitStatus::Failed) => Health::Unhealthy,
                    _ => Health::Unknown,
                },
            )
        })
    }

    fn has_own_health(&self) -> bool {
        true
    }

    /// The unit on this host: `host` 127.0.0.1 and the field `unit`.
    fn connection(&self) -> Connection {
        let mut fields = BTreeMap::new();
        fields.insert(
            "unit".to_owned(),
            kinfra_core::Secret::new(self.inner.spec.unit.clone()),
        );
        Connection {
            host: "127.0.0.1".into(),
            port: None,
            url: None,
            fields,
        }
    }

    fn logs(&self, tail: usize) -> BoxFuture<'_, Result<Vec<OutputLine>, ResourceError>> {
        Box::pin(async move { Ok(self.inner.logs.tail(tail)) })
    }

    /// kinfra never removes a systemd unit: the unit is the system's.
    fn remove(&self, _volumes: bool) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            self.inner.line(
                LogStream::System,
                "kinfra does not remove systemd units; the unit is left as it is",
            );
            Ok(())
        })
    }

    fn sync(&self) -> Option<SyncFacts> {
        let mut facts = self.inner.sync.facts().unwrap_or_default();
        if let Some(words) = self.provider_state() {
            facts.provider_state = Some(words);
        }
        (facts.last_sync.is_some() || facts.provider_state.is_some()).then_some(facts)
    }

    fn exit_reason(&self) -> Option<String> {
        lock(&self.inner.view).failure.clone()
    }

    fn reported_state(&self) -> Option<ReportedState> {
        let view = lock(&self.inner.view);
        let journal = view
            .journal
            .as_ref()
            .map(|j| format!("; {j}"))
            .unwrap_or_default();
        if let Some(failure) = &view.failure {
            return Some(ReportedState {
                state: ServiceState::Failed,
                message: format!("{failure}{journal}"),
            });
        }
        let active = view.facts.active.as_deref()?;
        let status = map_active_state(active)?;
        let words = view.facts.words();
        let message = match status {
            UnitStatus::Failed => {
                format!(
                    "{}{journal}",
                    failure_text(&self.inner.spec.unit, &view.facts)
                )
            }
            UnitStatus::Stopped if view.stopped_by_kinfra => {
                format!("{words}: stopped by kinfra{journal}")
            }
            UnitStatus::Stopped => format!("{words}: stopped outside kinfra{journal}"),
            _ => format!("{words}{journal}"),
        };
        Some(ReportedState {
            state: status.service_state(),
            message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_states_map_as_the_issue_says() {
        use UnitStatus::*;
        for (active, status) in [
            ("activating", Starting),
            ("active", Running),
            ("reloading", Running),
            ("deactivating", Stopping),
            ("inactive", Stopped),
            ("failed", Failed),
        ] {
            assert_eq!(map_active_state(active), Some(status), "{active}");
        }
        assert_eq!(map_active_state("exploded"), None);
    }
}
