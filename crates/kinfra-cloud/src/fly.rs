//! The `fly` provider: Fly.io Machines (`https://api.machines.dev`, bearer token) as a
//! resource, one machine (`app` and `machine_id`) or every machine of an app (`app` only).
//!
//! Start starts what is not started (`POST /v1/apps/{app}/machines/{id}/start`) and follows
//! it with the `wait` endpoint (`GET …/wait?state=started&timeout=N`, a long-poll that
//! answers once the machine reached the state or the timeout passed, then a normal read),
//! never by tight polling. Stop stops the machine (`POST …/stop`) or suspends it
//! (`stop_mode = "suspend"`, `POST …/suspend`). While a run is live, each machine (the
//! one, or every machine of the app) is long-polled with `wait` for the state it is expected
//! to reach next (`stopped` while started, `started` otherwise), bounded by `wait_timeout`
//! (≤ 60 s, Fly's cap), then read: a change made outside kinfra is seen when it happens. At
//! most [`MAX_WAITS`] polls are open at once and one machine is never polled twice within
//! [`MIN_WAIT_GAP`]; a failing poll backs off. The observe loop, every `interval`, reads
//! the machine or lists the app's machines (the list sees machines appear and go).
//!
//! States (DESIGN's table): `created` (pending) and `starting` are starting, `started`
//! running, `stopping`/`suspending`/`destroying` stopping, `stopped` stopped (sleeping when a
//! service has `autostart`: Fly's proxy wakes it on the next request), `suspended` sleeping,
//! `failed` failed, `destroyed` absent; any other `…ing` state is starting (stopping when it
//! names stop, suspend or destroy), anything else keeps the last state with a warning.
//! The machine's events (`events[]`) go into the resource's log.
//!
//! Commands: `update {image?, env?, size?}` changes the machine's config under a lease
//! (`POST …/lease`, the nonce in `fly-machine-lease-nonce` on the update, the lease released
//! even when the update fails) with `current_version`, so a machine changed meanwhile
//! answers 409 and nothing changes: the 409 is reported with Fly's reason and never retried.
//! `restart` restarts the machine(s); `scale {count}` clones the first machine or destroys the
//! newest ones (destroying needs confirmation). Every command has a dry-run. Nothing this
//! provider shows (errors, log lines, dry-runs, sync errors) holds the token.

use kinfra_core::event::ExitInfo;
use kinfra_core::resource::{
    BoxFuture, Connection, Observed, OutputLine, ReportedState, Resource, ResourceError, Run,
    SyncFacts,
};
use kinfra_core::state::{Health, ServiceState};
use kinfra_core::status::LogStream;
use kinfra_provider::command::{CommandSpec, ParamKind, ParamSpec, ValidatedParams};
use kinfra_provider::http::{HttpConfig, HttpError, HttpRequest, Method};
use kinfra_provider::metadata::{
    AuthMethod, Capability, Category, ConfigKeySpec, ConfigKind, ProviderMetadata, ResourceTypeSpec,
};
use kinfra_provider::observe::{self, ObserveConfig, ObserveError, ObservedStatus};
use kinfra_provider::provider::{
    InstanceContext, KINFRA_KEYS, Provider, ProviderError, ResourceDecl, ResourceProblem,
    config_duration, config_duration_or, config_problems,
};
use kinfra_provider::rest::{CallError, RestApi, RestClients, TokenNeed, encode_segment};
use kinfra_provider::result::{CommandResult, PlannedRequest, mask_text};
use kinfra_provider::retry::{Failure, RetryPolicy, classify};
use kinfra_provider::run_slot::{AbortOnDrop, LogRing, RunSlot, SyncRecord, lock};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::warn;

/// The provider's id.
pub const ID: &str = "fly";
/// The one resource type it runs.
pub const RESOURCE_TYPE: &str = "machine";
/// The Machines API when the instance sets no `base_url`.
pub const DEFAULT_BASE_URL: &str = "https://api.machines.dev";
/// The observe interval when the resource sets none.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// How long a start or a stop may take by default.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest one `wait` call may block (Fly's own cap).
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// The header that carries a lease's nonce.
pub const LEASE_HEADER: &str = "fly-machine-lease-nonce";
/// How long an update's lease lives (seconds) when it is not released.
pub const LEASE_TTL_SECS: i64 = 60;
/// The most `wait` long-polls one resource holds open at once (each holds a connection).
pub const MAX_WAITS: usize = 16;
/// The least time between the starts of two long-polls of one machine (a wait that answers
/// at once, a machine moving quickly, is not polled tightly).
pub const MIN_WAIT_GAP: Duration = Duration::from_secs(1);
/// The source of syncs that are reads of the machine or lists of the app (the others are
/// each machine's long-polls, by its id).
const READS: &str = "";
/// Output lines kept for [`Resource::logs`].
const LOG_LINES: usize = 500;
/// Lines kept for the next run while none is live (the run's output holds 64 unread).
const PENDING_LINES: usize = 48;
/// The most machines `scale` manages.
const MAX_SCALE: i64 = 100;
/// Fly's guest presets `size` accepts: (name, cpu kind, cpus, memory MB).
const SIZES: &[(&str, &str, i64, i64)] = &[
    ("shared-cpu-1x", "shared", 1, 256),
    ("shared-cpu-2x", "shared", 2, 512),
    ("shared-cpu-4x", "shared", 4, 1024),
    ("shared-cpu-8x", "shared", 8, 2048),
    ("performance-1x", "performance", 1, 2048),
    ("performance-2x", "performance", 2, 4096),
    ("performance-4x", "performance", 4, 8192),
    ("performance-8x", "performance", 8, 16384),
    ("performance-16x", "performance", 16, 32768),
];

// ---------------------------------------------------------------------------------------
// Metadata and commands

fn metadata() -> ProviderMetadata {
    ProviderMetadata {
        id: ID.into(),
        name: ID.into(),
        display_name: "Fly.io Machines".into(),
        description: "Fly.io Machines: a machine (or every machine of an app) as a resource \
                      (start, stop or suspend, observed with the wait endpoint), and update, \
                      restart and scale as commands."
            .into(),
        version: env!("CARGO_PKG_VERSION").into(),
        category: Category::Cloud,
        capabilities: vec![
            Capability::Monitor,
            Capability::Provision,
            Capability::Deprovision,
            Capability::Scale,
            Capability::DryRun,
        ],
        resource_types: vec![ResourceTypeSpec {
            name: RESOURCE_TYPE.into(),
            description: "A Fly machine, or every machine of a Fly app, started and stopped by \
                          kinfra."
                .into(),
            config: vec![
                ConfigKeySpec::required("app", ConfigKind::String, "The Fly app, e.g. my-app"),
                ConfigKeySpec::optional(
                    "machine_id",
                    ConfigKind::String,
                    "One machine of the app, e.g. 3d8d9e1b2c4e87 (without it: every machine \
                     of the app)",
                ),
                ConfigKeySpec::optional(
                    "stop_mode",
                    ConfigKind::String,
                    "What stopping does: `stop` (default) or `suspend` (resumed from a \
                     snapshot at the next start)",
                ),
                ConfigKeySpec::optional(
                    "wait_timeout",
                    ConfigKind::Duration,
                    "How long one long-poll of the wait endpoint may block (1s to 60s; \
                     default: the interval)",
                ),
                ConfigKeySpec::optional(
                    "operation_timeout",
                    ConfigKind::Duration,
                    "Longest wait for a start or stop to reach its state (default 5m)",
                ),
            ],
        }],
        auth_methods: vec![AuthMethod::Bearer],
    }
}

/// A command of the machine resource type, with a dry-run.
fn command(id: &str, name: &str, category: &str, description: &str) -> CommandSpec {
    CommandSpec::new(id, name, description)
        .in_category(category)
        .for_resource_type(RESOURCE_TYPE)
        .with_dry_run()
}

fn commands() -> Vec<CommandSpec> {
    vec![
        command(
            "update",
            "Update machine",
            "deploy",
            "Changes the machine's image, environment or size (each machine of the app \
             without machine_id) under a lease, guarded by its current_version: a machine \
             changed meanwhile answers 409, reported and never retried.",
        )
        .with_params(vec![
            ParamSpec::optional(
                "image",
                ParamKind::String,
                "The image to run, e.g. registry.fly.io/my-app:v2",
            ),
            ParamSpec::optional(
                "env",
                ParamKind::String,
                "Environment to set, KEY=VALUE pairs separated by commas (merged into the \
                 machine's own)",
            ),
            ParamSpec::optional(
                "size",
                ParamKind::Enum {
                    values: SIZES.iter().map(|s| s.0.to_owned()).collect(),
                },
                "A guest preset, e.g. shared-cpu-1x",
            ),
        ]),
        command(
            "restart",
            "Restart machine",
            "lifecycle",
            "Restarts the machine (each started machine of the app without machine_id).",
        ),
        // Not `confirm` as a whole: scaling up only clones; the command itself refuses to
        // destroy machines without --yes, naming them.
        command(
            "scale",
            "Scale app",
            "scale",
            "Sets how many machines the app has: clones the first machine (the resource's own \
             with machine_id) or destroys the newest others, stopped ones first. Destroying \
             needs --yes (the refusal and the dry-run name the machines); cloning does not.",
        )
        .with_params(vec![ParamSpec::required(
            "count",
            ParamKind::Integer {
                min: Some(0),
                max: Some(MAX_SCALE),
            },
            "How many machines the app should have",
        )]),
    ]
}

// ---------------------------------------------------------------------------------------
// Settings

/// What stopping a machine does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// `POST …/stop`.
    Stop,
    /// `POST …/suspend`.
    Suspend,
}

/// A resource's settings, parsed from its table.
#[derive(Debug, Clone)]
struct Settings {
    app: String,
    machine_id: Option<String>,
    stop_mode: StopMode,
    wait_timeout: Option<Duration>,
    operation_timeout: Duration,
    interval: Duration,
}

fn str_key<'a>(config: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    config.get(key).and_then(Value::as_str)
}

/// Fly app names and machine ids in a path: lowercase letters, digits and dashes only, so
/// nothing else can be smuggled into a URL.
fn valid_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Settings {
    /// The settings of a resource table, or every problem with them (the type checks are
    /// [`check_config`]'s).
    fn parse(config: &Map<String, Value>) -> Result<Self, Vec<ResourceProblem>> {
        let mut problems = Vec::new();
        let app = str_key(config, "app").unwrap_or_default().to_owned();
        if !config.contains_key("app") {
            problems.push(ResourceProblem::at("app", "missing (required)"));
        } else if !valid_name(&app) {
            problems.push(ResourceProblem::at(
                "app",
                format!("`{app}` is not a Fly app name (a-z, 0-9 and -)"),
            ));
        }
        let machine_id = match str_key(config, "machine_id") {
            Some(id) if valid_name(id) => Some(id.to_owned()),
            Some(id) => {
                problems.push(ResourceProblem::at(
                    "machine_id",
                    format!("`{id}` is not a Fly machine id (a-z, 0-9 and -)"),
                ));
                None
            }
            None => None,
        };
        let stop_mode = match str_key(config, "stop_mode") {
            None | Some("stop") => StopMode::Stop,
            Some("suspend") => StopMode::Suspend,
            Some(other) => {
                problems.push(ResourceProblem::at(
                    "stop_mode",
                    format!("`{other}`: expected `stop` or `suspend`"),
                ));
                StopMode::Stop
            }
        };
        let wait_timeout = config_duration(config, "wait_timeout", &mut problems).and_then(|d| {
            if d >= Duration::from_secs(1) && d <= MAX_WAIT {
                Some(d)
            } else {
                problems.push(ResourceProblem::at(
                    "wait_timeout",
                    "must be between 1s and 60s (Fly's limit)",
                ));
                None
            }
        });
        let operation_timeout = config_duration_or(
            config,
            "operation_timeout",
            DEFAULT_OPERATION_TIMEOUT,
            &mut problems,
        );
        let interval = config_duration_or(config, "interval", DEFAULT_INTERVAL, &mut problems);
        if problems.is_empty() {
            Ok(Settings {
                app,
                machine_id,
                stop_mode,
                wait_timeout,
                operation_timeout,
                interval,
            })
        } else {
            Err(problems)
        }
    }

    /// How the resource's thing is named in messages.
    fn what(&self) -> String {
        match &self.machine_id {
            Some(id) => format!("machine `{id}` of Fly app `{}`", self.app),
            None => format!("the machines of Fly app `{}`", self.app),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The API's shapes and the state mapping

/// A machine as the API describes it (the fields kinfra reads).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct MachineInfo {
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) state: String,
    #[serde(default)]
    pub(crate) region: Option<String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    instance_id: Option<String>,
    #[serde(default)]
    pub(crate) config: Value,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    events: Vec<MachineEvent>,
}

#[derive(Debug, Clone, Deserialize)]
struct MachineEvent {
    #[serde(default)]
    id: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    timestamp: Option<i64>,
}

impl MachineInfo {
    /// The version to pass as `current_version` (`instance_id` in older answers).
    pub(crate) fn version(&self) -> Option<&str> {
        self.version
            .as_deref()
            .or(self.instance_id.as_deref())
            .filter(|v| !v.is_empty())
    }

    /// True when Fly's proxy starts the machine on a request (a service with `autostart`).
    fn autostart(&self) -> bool {
        autostart(&self.config)
    }

    fn mapped(&self) -> Option<MachineState> {
        map_state(&self.state, self.autostart())
    }
}

/// True when a machine config lets Fly's proxy start it (a service with `autostart = true`,
/// autostart not disabled).
fn autostart(config: &Value) -> bool {
    if config
        .get("disable_machine_autostart")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        return false;
    }
    config
        .get("services")
        .and_then(Value::as_array)
        .is_some_and(|services| {
            services
                .iter()
                .any(|s| s.get("autostart").and_then(Value::as_bool) == Some(true))
        })
}

#[derive(Debug, Clone, Deserialize)]
struct WaitAnswer {
    #[serde(default)]
    ok: Option<bool>,
    #[serde(default)]
    state: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct LeaseAnswer {
    #[serde(default)]
    pub(crate) nonce: Option<String>,
}

/// What a machine's state means for kinfra (DESIGN's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineState {
    /// `created` (pending), `starting`, and unknown `…ing` states.
    Starting,
    /// `started`.
    Running,
    /// `stopping`, `suspending`, `destroying`.
    Stopping,
    /// `stopped` without autostart.
    Stopped,
    /// `suspended`, or `stopped` with autostart: the next request wakes it.
    Sleeping,
    /// `failed`.
    Failed,
    /// `destroyed`: the machine is gone.
    Absent,
}

impl MachineState {
    /// kinfra's state (an absent machine is shown failed: it cannot be started again).
    pub fn service_state(self) -> ServiceState {
        match self {
            Self::Starting => ServiceState::Starting,
            Self::Running => ServiceState::Running,
            Self::Stopping => ServiceState::Stopping,
            Self::Stopped => ServiceState::Stopped,
            Self::Sleeping => ServiceState::Sleeping,
            Self::Failed | Self::Absent => ServiceState::Failed,
        }
    }

    /// True when a run of the resource is over in this state.
    fn ends_run(self) -> bool {
        matches!(
            self,
            Self::Stopped | Self::Sleeping | Self::Failed | Self::Absent
        )
    }
}

/// Maps a machine's `state` (`None`: a state kinfra does not know, which keeps the last one).
/// `autostart`: whether a service of the machine has `autostart` (then `stopped` is sleeping).
pub fn map_state(state: &str, autostart: bool) -> Option<MachineState> {
    Some(match state {
        "created" | "starting" => MachineState::Starting,
        "started" => MachineState::Running,
        "stopping" | "suspending" | "destroying" => MachineState::Stopping,
        "stopped" if autostart => MachineState::Sleeping,
        "stopped" => MachineState::Stopped,
        "suspended" => MachineState::Sleeping,
        "failed" => MachineState::Failed,
        "destroyed" => MachineState::Absent,
        other if other.ends_with("ing") => {
            if ["stop", "suspend", "destroy", "down"]
                .iter()
                .any(|w| other.contains(w))
            {
                MachineState::Stopping
            } else {
                MachineState::Starting
            }
        }
        _ => return None,
    })
}

/// The state of an app's machines together (`None` when no state is known): none left is
/// absent; any failed, failed; any on its way up, starting; any started, running; any on its
/// way down, stopping; all sleeping, sleeping; else stopped.
pub fn aggregate(states: &[Option<MachineState>]) -> Option<MachineState> {
    let known: Vec<MachineState> = states
        .iter()
        .flatten()
        .copied()
        .filter(|s| *s != MachineState::Absent)
        .collect();
    if known.is_empty() {
        return if states.iter().all(Option::is_some) {
            Some(MachineState::Absent)
        } else {
            None
        };
    }
    let any = |s: MachineState| known.contains(&s);
    Some(if any(MachineState::Failed) {
        MachineState::Failed
    } else if any(MachineState::Starting) {
        MachineState::Starting
    } else if any(MachineState::Running) {
        MachineState::Running
    } else if any(MachineState::Stopping) {
        MachineState::Stopping
    } else if known.iter().all(|s| *s == MachineState::Sleeping) {
        MachineState::Sleeping
    } else {
        MachineState::Stopped
    })
}

/// The raw state shown as `provider_state`: the machine's `state`, or for an app each state
/// with its count (`started ×2, stopped`).
fn state_text(machines: &[MachineInfo], single: bool) -> String {
    if single {
        return machines
            .first()
            .map(|m| m.state.clone())
            .unwrap_or_else(|| "destroyed".into());
    }
    if machines.is_empty() {
        return "no machines".into();
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for m in machines {
        *counts.entry(m.state.as_str()).or_default() += 1;
    }
    counts
        .iter()
        .map(|(state, n)| {
            if *n == 1 {
                (*state).to_owned()
            } else {
                format!("{state} ×{n}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A guest preset's `guest` table.
fn guest(size: &str) -> Option<Value> {
    SIZES.iter().find(|s| s.0 == size).map(
        |(_, kind, cpus, memory)| json!({ "cpu_kind": kind, "cpus": cpus, "memory_mb": memory }),
    )
}

/// `KEY=VALUE,KEY2=VALUE2` as a map; every malformed pair named.
fn parse_env(text: &str) -> Result<Map<String, Value>, String> {
    let mut env = Map::new();
    let mut bad = Vec::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((k, v))
                if !k.trim().is_empty()
                    && k.trim()
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
            {
                env.insert(k.trim().to_owned(), Value::String(v.to_owned()));
            }
            _ => bad.push(format!("`{}`", pair.split('=').next().unwrap_or(pair))),
        }
    }
    if !bad.is_empty() {
        return Err(format!(
            "env: {} not KEY=VALUE (KEY of letters, digits and _)",
            bad.join(", ")
        ));
    }
    if env.is_empty() {
        return Err("env: no KEY=VALUE pair".into());
    }
    Ok(env)
}

// ---------------------------------------------------------------------------------------
// The API of one instance, as this provider uses it

/// The Machines API of one instance.
#[derive(Clone, Debug)]
pub(crate) struct Fly {
    pub(crate) api: RestApi,
    /// How long an answer may take once due: the instance's `timeout`, else the client's.
    answer_within: Duration,
}

/// Why a wait did not report the state reached.
pub(crate) enum WaitOutcome {
    Reached,
    NotYet,
}

impl Fly {
    pub(crate) fn machines_path(app: &str) -> String {
        format!("/v1/apps/{}/machines", encode_segment(app))
    }

    pub(crate) fn machine_path(app: &str, id: &str, action: &str) -> String {
        format!(
            "/v1/apps/{}/machines/{}{action}",
            encode_segment(app),
            encode_segment(id)
        )
    }

    /// A GET of `path` read as `T`: retried within the call policy, or sent once (`once`:
    /// a poll of the observe loop, which has its own backoff and honours Retry-After).
    pub(crate) async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
        once: bool,
    ) -> Result<T, CallError> {
        let request = self.request(Method::GET, path, query, None)?;
        let answer = if once {
            self.api.send_once(&request).await?
        } else {
            self.api.send(&request).await?
        };
        answer.json().map_err(|e| self.api.call_error(e))
    }

    pub(crate) fn request(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> Result<HttpRequest, CallError> {
        self.api.request(method, path, query, body)
    }

    /// Sends `request` and expects a 2xx answer whose body does not matter.
    pub(crate) async fn send_unit(&self, request: &HttpRequest) -> Result<(), CallError> {
        self.api.send(request).await.map(|_| ())
    }

    pub(crate) async fn machine(
        &self,
        app: &str,
        id: &str,
        once: bool,
    ) -> Result<MachineInfo, CallError> {
        self.get(&Self::machine_path(app, id, ""), &[], once).await
    }

    pub(crate) async fn list(&self, app: &str, once: bool) -> Result<Vec<MachineInfo>, CallError> {
        self.get(&Self::machines_path(app), &[], once).await
    }

    /// Long-polls `wait` for `state`, up to `timeout` (capped, whole seconds, at least 1).
    /// A 408 (Fly's answer when the timeout passed) or `ok: false` is not reached yet.
    pub(crate) async fn wait(
        &self,
        app: &str,
        id: &str,
        state: &str,
        version: Option<&str>,
        timeout: Duration,
        once: bool,
    ) -> Result<WaitOutcome, CallError> {
        let secs = timeout.min(MAX_WAIT).as_secs().max(1);
        let secs_text = secs.to_string();
        let mut query = vec![("state", state), ("timeout", secs_text.as_str())];
        if let Some(v) = version {
            query.push(("version", v));
        }
        // A long-poll is held by design: its answer is due after the wait, not at once.
        let request = self
            .request(
                Method::GET,
                &Self::machine_path(app, id, "/wait"),
                &query,
                None,
            )?
            .timeout(Duration::from_secs(secs) + self.answer_within);
        let answer = if once {
            self.api.send_once(&request).await
        } else {
            self.api.send(&request).await
        };
        match answer {
            Ok(answer) => {
                let parsed: WaitAnswer = answer.json().map_err(|e| self.api.call_error(e))?;
                let reached =
                    parsed.ok.unwrap_or(true) && parsed.state.as_deref().is_none_or(|s| s == state);
                Ok(if reached {
                    WaitOutcome::Reached
                } else {
                    WaitOutcome::NotYet
                })
            }
            Err(CallError {
                http: HttpError::Status { code: 408, .. },
                ..
            }) => Ok(WaitOutcome::NotYet),
            Err(e) => Err(e),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The provider

/// The `fly` provider. Instances share one HTTP client; each has its own token bucket.
pub struct FlyProvider {
    metadata: ProviderMetadata,
    commands: Vec<CommandSpec>,
    clients: RestClients,
    /// The client's per-request timeout (an instance's `timeout` replaces it).
    request_timeout: Duration,
}

impl std::fmt::Debug for FlyProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlyProvider").finish_non_exhaustive()
    }
}

/// The `fly` provider with the default HTTP timeouts.
pub fn provider() -> Arc<dyn Provider> {
    Arc::new(FlyProvider::new())
}

impl Default for FlyProvider {
    fn default() -> Self {
        Self::new()
    }
}

impl FlyProvider {
    /// The provider with the default HTTP timeouts.
    pub fn new() -> Self {
        Self::with_http_config(HttpConfig::default())
    }

    /// The provider with `config`'s HTTP timeouts (a `wait` long-poll may take its own
    /// timeout plus the request timeout).
    pub fn with_http_config(config: HttpConfig) -> Self {
        Self {
            metadata: metadata(),
            commands: commands(),
            request_timeout: config.request_timeout,
            clients: RestClients::new(
                "the Fly Machines API",
                Some(DEFAULT_BASE_URL),
                TokenNeed::Required("a Fly API token"),
            )
            .with_http_config(config),
        }
    }

    /// The retry policy of calls (the observe loop has its own backoff).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.clients = self.clients.with_retry(retry);
        self
    }

    pub(crate) fn fly(&self, ctx: &InstanceContext) -> Result<Fly, ProviderError> {
        let api = self.clients.api(ctx)?;
        Ok(Fly {
            answer_within: api.timeout().unwrap_or(self.request_timeout),
            api,
        })
    }

    /// The [`FlyResource`] for `decl` (the concrete type behind [`Provider::resource`]).
    pub fn machine_resource(
        &self,
        instance: &InstanceContext,
        decl: &ResourceDecl,
    ) -> Result<FlyResource, ProviderError> {
        let settings = decl.parse_config(Settings::parse)?;
        let fly = self.fly(instance)?;
        Ok(FlyResource {
            inner: Arc::new(Inner {
                name: decl.name.clone(),
                fly,
                settings,
                view: Mutex::new(None),
                failure: Mutex::new(None),
                events_seen: Mutex::new(HashSet::new()),
                logs: LogRing::new(LOG_LINES),
                pending: Mutex::new(VecDeque::new()),
                output: Mutex::new(None),
                live: RunSlot::default(),
                sync: SyncRecord::default(),
                machines: Mutex::new(Vec::new()),
                listed: watch::channel(Vec::new()).0,
                failing: Mutex::new(BTreeMap::new()),
            }),
        })
    }
}

/// A request as a dry-run shows it, at a path only known in words once sent
/// (`/machines/<each machine of app x>`).
pub(crate) fn planned_text(
    fly: &Fly,
    method: Method,
    path_text: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Result<PlannedRequest, String> {
    let mut planned = fly.api.planned_at(method, path_text, body);
    planned.headers.extend(
        headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    Ok(planned)
}

pub(crate) fn planned(
    fly: &Fly,
    method: Method,
    path: &str,
    query: &[(&str, &str)],
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Result<PlannedRequest, String> {
    let mut request = fly.request(method, path, query, body).map_err(|e| e.text)?;
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    Ok(request.planned())
}

/// The reason in a Fly error answer (`{"error": "..."}`), else the error's text.
pub(crate) fn fly_reason(error: &CallError) -> String {
    if let HttpError::Status { body_excerpt, .. } = &error.http
        && let Ok(v) = serde_json::from_str::<Value>(body_excerpt)
        && let Some(reason) = v.get("error").and_then(Value::as_str)
    {
        return reason.to_owned();
    }
    error.text.clone()
}

/// What `update` changes: the config table merged into the machine's own.
#[derive(Debug, Clone)]
struct Change {
    image: Option<String>,
    env: Option<Map<String, Value>>,
    size: Option<String>,
}

impl Change {
    fn from_params(params: &ValidatedParams) -> Result<Self, String> {
        let change = Change {
            image: params
                .str("image")
                .map(str::to_owned)
                .filter(|s| !s.is_empty()),
            env: params.str("env").map(parse_env).transpose()?,
            size: params.str("size").map(str::to_owned),
        };
        if change.image.is_none() && change.env.is_none() && change.size.is_none() {
            return Err("nothing to update: give image, env or size".into());
        }
        Ok(change)
    }

    /// `config` with the change applied.
    fn apply(&self, config: &Value) -> Value {
        let mut config = match config {
            Value::Object(_) => config.clone(),
            _ => json!({}),
        };
        if let Some(image) = &self.image {
            config["image"] = json!(image);
        }
        if let Some(env) = &self.env {
            let mut merged = config
                .get("env")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            merged.extend(env.clone());
            config["env"] = Value::Object(merged);
        }
        if let Some(g) = self.size.as_deref().and_then(guest) {
            config["guest"] = g;
        }
        config
    }

    /// What the dry-run shows as the new config: only the changed keys.
    fn shown(&self) -> Value {
        let mut config = json!({});
        if let Some(image) = &self.image {
            config["image"] = json!(image);
        }
        if let Some(env) = &self.env {
            config["env"] = Value::Object(env.clone());
        }
        if let Some(g) = self.size.as_deref().and_then(guest) {
            config["guest"] = g;
        }
        config
    }
}

impl FlyProvider {
    async fn run_command(
        &self,
        fly: &Fly,
        settings: &Settings,
        command: &CommandSpec,
        params: &ValidatedParams,
        dry_run: bool,
    ) -> Result<CommandResult, String> {
        let secrets: Vec<&kinfra_core::Secret> = fly.api.secrets();
        let app = settings.app.as_str();
        let machines_path = Fly::machines_path(app);
        let each = format!("<each machine of app `{app}`>");
        // The machine ids a command acts on: the resource's own, or every machine of the app.
        let targets = || async {
            match &settings.machine_id {
                Some(id) => Ok::<Vec<String>, String>(vec![id.clone()]),
                None => Ok(fly
                    .list(app, false)
                    .await
                    .map_err(|e| e.text)?
                    .into_iter()
                    .filter(|m| m.state != "destroyed")
                    .map(|m| m.id)
                    .collect()),
            }
        };
        match command.id.as_str() {
            "update" => {
                let change = Change::from_params(params)?;
                if dry_run {
                    let mut shown = Vec::new();
                    let id_text = match &settings.machine_id {
                        Some(id) => encode_segment(id),
                        None => {
                            shown.push(planned(fly, Method::GET, &machines_path, &[], &[], None)?);
                            each.clone()
                        }
                    };
                    let path = |action: &str| {
                        format!(
                            "/v1/apps/{}/machines/{id_text}{action}",
                            encode_segment(app)
                        )
                    };
                    let nonce = "<nonce of the lease>";
                    shown.push(planned_text(
                        fly,
                        Method::POST,
                        &path("/lease"),
                        &[],
                        Some(json!({ "ttl": LEASE_TTL_SECS, "description": "kinfra update" })),
                    )?);
                    shown.push(planned_text(fly, Method::GET, &path(""), &[], None)?);
                    shown.push(planned_text(
                        fly,
                        Method::POST,
                        &path(""),
                        &[(LEASE_HEADER, nonce)],
                        Some(json!({
                            "config": change.shown(),
                            "current_version": "<the machine's version, read under the lease>",
                        })),
                    )?);
                    shown.push(planned_text(
                        fly,
                        Method::DELETE,
                        &path("/lease"),
                        &[(LEASE_HEADER, nonce)],
                        None,
                    )?);
                    let mut result = CommandResult::planned(&shown, &secrets);
                    result.data = json!({
                        "note": "the config sent is the machine's own with these keys changed",
                        "changes": change.shown(),
                    });
                    return Ok(result);
                }
                let mut updated = Vec::new();
                for id in targets().await? {
                    match update_machine(fly, app, &id, &change).await {
                        Ok(version) => updated.push(json!({ "id": id, "version": version })),
                        Err(reason) if updated.is_empty() => return Err(reason),
                        Err(reason) => {
                            return Err(format!(
                                "{reason} (updated before it: {})",
                                updated
                                    .iter()
                                    .filter_map(|u| u["id"].as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ));
                        }
                    }
                }
                Ok(CommandResult::ok(json!({ "updated": updated })))
            }
            "restart" => {
                if dry_run {
                    let shown = match &settings.machine_id {
                        Some(id) => vec![planned(
                            fly,
                            Method::POST,
                            &Fly::machine_path(app, id, "/restart"),
                            &[],
                            &[],
                            None,
                        )?],
                        None => vec![
                            planned(fly, Method::GET, &machines_path, &[], &[], None)?,
                            planned_text(
                                fly,
                                Method::POST,
                                &format!(
                                    "/v1/apps/{}/machines/{each}/restart",
                                    encode_segment(app)
                                ),
                                &[],
                                None,
                            )?,
                        ],
                    };
                    return Ok(CommandResult::planned(&shown, &secrets));
                }
                let mut restarted = Vec::new();
                let ids = match &settings.machine_id {
                    Some(id) => vec![id.clone()],
                    // Only started machines restart (Fly refuses the rest).
                    None => fly
                        .list(app, false)
                        .await
                        .map_err(|e| e.text)?
                        .into_iter()
                        .filter(|m| m.state == "started")
                        .map(|m| m.id)
                        .collect(),
                };
                for id in ids {
                    let request = fly
                        .request(
                            Method::POST,
                            &Fly::machine_path(app, &id, "/restart"),
                            &[],
                            None,
                        )
                        .map_err(|e| e.text)?;
                    fly.send_unit(&request)
                        .await
                        .map_err(|e| format!("restart machine `{id}`: {}", e.text))?;
                    restarted.push(id);
                }
                Ok(CommandResult::ok(json!({ "restarted": restarted })))
            }
            "scale" => {
                let count = params.integer("count").unwrap_or_default();
                if settings.machine_id.is_some() && count < 1 {
                    return Err(format!(
                        "count {count}: the resource's own machine `{}` is never destroyed, so \
                         the app keeps at least 1",
                        settings.machine_id.as_deref().unwrap_or_default()
                    ));
                }
                let plan = ScalePlan::read(fly, settings, count).await?;
                if dry_run {
                    return Ok(plan.dry_run(fly, &secrets));
                }
                if !plan.destroy.is_empty() && !params.confirmed() {
                    return Err(format!(
                        "{}: this needs confirmation, pass --yes",
                        plan.destroys_text()
                    ));
                }
                plan.run(fly).await
            }
            other => Err(format!("unknown command `{other}`")),
        }
    }
}

/// Updates one machine under a lease; the lease is released whatever happens. Returns the
/// new version.
async fn update_machine(
    fly: &Fly,
    app: &str,
    id: &str,
    change: &Change,
) -> Result<Option<String>, String> {
    let lease_path = Fly::machine_path(app, id, "/lease");
    let lease: LeaseAnswer = fly
        .api
        .call(
            Method::POST,
            &lease_path,
            &[],
            Some(json!({ "ttl": LEASE_TTL_SECS, "description": "kinfra update" })),
        )
        .await
        .map_err(|e| match e.http.status() {
            Some(409) => format!(
                "machine `{id}` is leased by someone else (409 Conflict): {}; not updated",
                fly_reason(&e)
            ),
            _ => format!("lease machine `{id}`: {}", e.text),
        })?;
    let nonce = lease
        .nonce
        .filter(|n| !n.is_empty())
        .ok_or_else(|| format!("lease machine `{id}`: the answer has no nonce"))?;
    let outcome = async {
        let machine = fly
            .machine(app, id, false)
            .await
            .map_err(|e| format!("read machine `{id}`: {}", e.text))?;
        let version = machine.version().map(str::to_owned);
        let mut body = json!({ "config": change.apply(&machine.config) });
        if let Some(v) = &version {
            body["current_version"] = json!(v);
        }
        let request = fly
            .request(
                Method::POST,
                &Fly::machine_path(app, id, ""),
                &[],
                Some(body),
            )
            .map_err(|e| e.text)?
            .header(LEASE_HEADER, nonce.as_str());
        match fly.api.send(&request).await {
            Ok(answer) => Ok(answer
                .json::<MachineInfo>()
                .ok()
                .and_then(|m| m.version().map(str::to_owned))),
            Err(e) if e.http.status() == Some(409) => Err(format!(
                "update of machine `{id}` refused (409 Conflict): {}; it changed since version \
                 {} or is leased elsewhere. Not retried: read it again and decide",
                fly_reason(&e),
                version.as_deref().unwrap_or("?")
            )),
            Err(e) => Err(format!("update machine `{id}`: {}", e.text)),
        }
    }
    .await;
    // The lease goes whatever happened (it would expire after its ttl anyway).
    let release = fly
        .request(Method::DELETE, &lease_path, &[], None)
        .map(|r| r.header(LEASE_HEADER, nonce.as_str()));
    let released = match release {
        Ok(r) => fly.send_unit(&r).await.map_err(|e| e.text),
        Err(e) => Err(e.text),
    };
    match (outcome, released) {
        (Ok(version), Ok(())) => Ok(version),
        (Ok(_), Err(e)) => Err(format!(
            "machine `{id}` updated, but its lease was not released (it expires in \
             {LEASE_TTL_SECS}s): {e}"
        )),
        (Err(reason), _) => Err(reason),
    }
}

/// What `scale` does to reach `count` machines, from a fresh list of the app's machines:
/// clone the template `clones` times, or destroy `destroy` (never the resource's own
/// machine; stopped ones first, then the newest).
struct ScalePlan {
    app: String,
    have: i64,
    count: i64,
    template: Option<MachineInfo>,
    clones: i64,
    destroy: Vec<MachineInfo>,
}

impl ScalePlan {
    async fn read(fly: &Fly, settings: &Settings, count: i64) -> Result<Self, String> {
        let app = settings.app.as_str();
        let machines: Vec<MachineInfo> = fly
            .list(app, false)
            .await
            .map_err(|e| e.text)?
            .into_iter()
            .filter(|m| m.state != "destroyed")
            .collect();
        let have = i64::try_from(machines.len()).unwrap_or(i64::MAX);
        let mut plan = ScalePlan {
            app: app.to_owned(),
            have,
            count,
            template: None,
            clones: 0,
            destroy: Vec::new(),
        };
        if count > have {
            plan.template = Some(match &settings.machine_id {
                Some(id) => machines
                    .iter()
                    .find(|m| &m.id == id)
                    .cloned()
                    .ok_or_else(|| {
                        format!("machine `{id}` is not among the machines of app `{app}`")
                    })?,
                None => machines
                    .first()
                    .cloned()
                    .ok_or_else(|| format!("app `{app}` has no machine to clone"))?,
            });
            plan.clones = count - have;
            return Ok(plan);
        }
        let mut candidates: Vec<MachineInfo> = machines
            .into_iter()
            .filter(|m| Some(&m.id) != settings.machine_id.as_ref())
            .collect();
        // Stopped ones first, then the newest.
        candidates.sort_by(|a, b| {
            let running = |m: &MachineInfo| m.state == "started";
            running(a)
                .cmp(&running(b))
                .then_with(|| b.created_at.cmp(&a.created_at))
        });
        candidates.truncate(usize::try_from(have - count).unwrap_or(0));
        plan.destroy = candidates;
        Ok(plan)
    }

    fn clone_body(template: &MachineInfo) -> Value {
        let mut body = json!({ "config": template.config });
        if let Some(region) = &template.region {
            body["region"] = json!(region);
        }
        body
    }

    fn destroy_ids(&self) -> Vec<&str> {
        self.destroy.iter().map(|m| m.id.as_str()).collect()
    }

    /// `scaling app x from 3 to 1 destroys machines a (stopped), b (started)`.
    fn destroys_text(&self) -> String {
        format!(
            "scaling app `{}` from {} to {} destroys {} {}",
            self.app,
            self.have,
            self.count,
            if self.destroy.len() == 1 {
                "machine"
            } else {
                "machines"
            },
            self.destroy
                .iter()
                .map(|m| format!("`{}` ({})", m.id, m.state))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    fn destroy_request(fly: &Fly, app: &str, id: &str) -> Result<HttpRequest, String> {
        fly.request(
            Method::DELETE,
            &Fly::machine_path(app, id, ""),
            &[("force", "true")],
            None,
        )
        .map_err(|e| e.text)
    }

    /// The requests the command would send after its read, each exact (the clone's config
    /// is the template's own, shown by reference).
    fn dry_run(&self, fly: &Fly, secrets: &[&kinfra_core::Secret]) -> CommandResult {
        let app = self.app.as_str();
        // The run reads the list again first (the machines are counted when it runs).
        let mut shown: Vec<PlannedRequest> = fly
            .request(Method::GET, &Fly::machines_path(app), &[], None)
            .map(|r| vec![r.planned()])
            .unwrap_or_default();
        let mut warnings = Vec::new();
        if let Some(template) = &self.template {
            let mut body = Self::clone_body(template);
            body["config"] = json!(format!("<config of machine {}>", template.id));
            if let Ok(request) =
                fly.request(Method::POST, &Fly::machines_path(app), &[], Some(body))
            {
                for _ in 0..self.clones {
                    shown.push(request.planned());
                }
            }
        }
        for m in &self.destroy {
            if let Ok(request) = Self::destroy_request(fly, app, &m.id) {
                shown.push(request.planned());
            }
        }
        if !self.destroy.is_empty() {
            warnings.push(format!("{}: running it needs --yes", self.destroys_text()));
        }
        let mut result = CommandResult::planned(&shown, secrets);
        result.warnings.extend(warnings);
        result.data = json!({
            "from": self.have,
            "to": self.count,
            "clone_from": self.template.as_ref().map(|t| t.id.clone()),
            "clones": self.clones,
            "destroy": self.destroy_ids(),
        });
        result
    }

    async fn run(self, fly: &Fly) -> Result<CommandResult, String> {
        let app = self.app.as_str();
        if let Some(template) = &self.template {
            let mut created = Vec::new();
            for _ in 0..self.clones {
                let machine: MachineInfo = fly
                    .api
                    .call(
                        Method::POST,
                        &Fly::machines_path(app),
                        &[],
                        Some(Self::clone_body(template)),
                    )
                    .await
                    .map_err(|e| format!("clone machine `{}`: {}", template.id, e.text))?;
                created.push(machine.id);
            }
            return Ok(CommandResult::ok(json!({
                "from": self.have, "to": self.count, "cloned_from": template.id,
                "created": created,
            })));
        }
        let mut destroyed = Vec::new();
        for m in &self.destroy {
            let request = Self::destroy_request(fly, app, &m.id)?;
            fly.send_unit(&request)
                .await
                .map_err(|e| format!("destroy machine `{}`: {}", m.id, e.text))?;
            destroyed.push(m.id.clone());
        }
        Ok(CommandResult::ok(json!({
            "from": self.have, "to": self.count, "destroyed": destroyed,
        })))
    }
}

impl Provider for FlyProvider {
    fn metadata(&self) -> &ProviderMetadata {
        &self.metadata
    }

    fn commands(&self) -> &[CommandSpec] {
        &self.commands
    }

    /// Reads the machine (or the app's machines) and renders what the start would send for
    /// each that is not started: its `start` and the `wait` long-poll that follows it.
    fn planned_start<'a>(
        &'a self,
        instance: &'a InstanceContext,
        decl: &'a ResourceDecl,
    ) -> BoxFuture<'a, Result<Option<Vec<PlannedRequest>>, ProviderError>> {
        Box::pin(async move {
            let resource = self.machine_resource(instance, decl)?;
            let inner = &resource.inner;
            let refused = |reason: String| ProviderError::Command {
                command: "start".into(),
                reason: inner.mask(&reason),
            };
            let machines = inner.read().await.map_err(|e| refused(e.to_string()))?;
            let wait = inner.wait_timeout().as_secs().max(1).to_string();
            let mut shown = Vec::new();
            for m in machines
                .iter()
                .filter(|m| m.state != "destroyed" && m.mapped() != Some(MachineState::Running))
            {
                if m.state != "starting" {
                    shown.push(
                        planned(
                            &inner.fly,
                            Method::POST,
                            &Fly::machine_path(inner.app(), &m.id, "/start"),
                            &[],
                            &[],
                            None,
                        )
                        .map_err(refused)?,
                    );
                }
                let mut query = vec![("state", "started"), ("timeout", wait.as_str())];
                if let Some(v) = m.version() {
                    query.push(("version", v));
                }
                shown.push(
                    planned(
                        &inner.fly,
                        Method::GET,
                        &Fly::machine_path(inner.app(), &m.id, "/wait"),
                        &query,
                        &[],
                        None,
                    )
                    .map_err(refused)?,
                );
            }
            let secrets = inner.fly.api.secrets();
            Ok(Some(shown.iter().map(|r| r.masked(&secrets)).collect()))
        })
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
                Settings::parse,
            );
            problems.extend(self.clients.check(instance));
            problems
        })
    }

    fn resource(
        &self,
        instance: &InstanceContext,
        decl: &ResourceDecl,
    ) -> Result<Box<dyn Resource>, ProviderError> {
        Ok(Box::new(self.machine_resource(instance, decl)?))
    }

    fn execute<'a>(
        &'a self,
        instance: &'a InstanceContext,
        resource: &'a ResourceDecl,
        command: &'a CommandSpec,
        params: ValidatedParams,
        dry_run: bool,
    ) -> BoxFuture<'a, Result<CommandResult, ProviderError>> {
        Box::pin(async move {
            if !self.commands.iter().any(|c| c.id == command.id) {
                return Err(ProviderError::unknown_command(ID, &command.id));
            }
            let settings = resource.parse_config(Settings::parse)?;
            let fly = self.fly(instance)?;
            let mut secrets: Vec<&str> = fly.api.secrets().iter().map(|s| s.expose()).collect();
            secrets.extend(params.secrets().iter().map(|s| s.expose()));
            self.run_command(&fly, &settings, command, &params, dry_run)
                .await
                .map_err(|reason| ProviderError::Command {
                    command: command.id.clone(),
                    reason: mask_text(&reason, &secrets),
                })
        })
    }
}

// ---------------------------------------------------------------------------------------
// The resource

/// What a run holds for its life: its output sender, the observe loop's stop signal and the
/// task long-polling its machines.
type Held = (mpsc::Sender<OutputLine>, oneshot::Sender<()>, AbortOnDrop);

/// The last thing read: the mapped state, the raw text, the machines' versions.
#[derive(Debug, Clone)]
struct View {
    state: MachineState,
    text: String,
    /// A state kinfra did not know was read last (the state is the one before).
    unknown: Option<String>,
}

struct Inner {
    name: String,
    fly: Fly,
    settings: Settings,
    view: Mutex<Option<View>>,
    /// Why the last start failed.
    failure: Mutex<Option<String>>,
    events_seen: Mutex<HashSet<String>>,
    logs: LogRing,
    /// Lines written while no run was live (during a start), for the next run's output.
    pending: Mutex<VecDeque<OutputLine>>,
    /// The live run's output (a clone of what the run slot holds).
    output: Mutex<Option<mpsc::Sender<OutputLine>>>,
    live: RunSlot<Held>,
    sync: SyncRecord,
    /// The machines as last read (the one, or the app's not destroyed), each long-polled.
    machines: Mutex<Vec<MachineInfo>>,
    /// Their ids, watched by the task that long-polls each.
    listed: watch::Sender<Vec<String>>,
    /// The last error of each source of syncs whose last call failed ([`READS`] or a
    /// machine's id, for its long-polls).
    failing: Mutex<BTreeMap<String, String>>,
}

impl Inner {
    fn mask(&self, text: &str) -> String {
        self.fly.api.mask(text)
    }

    fn line(&self, stream: LogStream, text: impl Into<String>) {
        let line = OutputLine {
            stream,
            text: self.mask(&text.into()),
        };
        self.logs.push(line.clone());
        match lock(&self.output).as_ref() {
            Some(out) => {
                let _ = out.try_send(line);
            }
            None => {
                // No run to carry it yet (a start under way): the next run's output gets it.
                let mut pending = lock(&self.pending);
                if pending.len() >= PENDING_LINES {
                    pending.pop_front();
                }
                pending.push_back(line);
            }
        }
    }

    fn error(&self, op: &str, error: &CallError) -> ResourceError {
        self.fly
            .api
            .resource_error(op, &self.settings.what(), error)
    }

    fn app(&self) -> &str {
        &self.settings.app
    }

    /// The wait timeout of one long-poll: `wait_timeout`, else the interval (capped).
    fn wait_timeout(&self) -> Duration {
        self.settings
            .wait_timeout
            .unwrap_or(self.settings.interval)
            .clamp(Duration::from_secs(1), MAX_WAIT)
    }

    /// Reads the machine (or the app's machines) and records what it says.
    async fn read(&self) -> Result<Vec<MachineInfo>, ResourceError> {
        self.fetch(false)
            .await
            .map_err(|error| self.error("read", &error))
    }

    /// Reads the machine (or the app's machines), sent `once` or retried, and records what
    /// it says, or the failed sync.
    async fn fetch(&self, once: bool) -> Result<Vec<MachineInfo>, CallError> {
        let answer = match &self.settings.machine_id {
            Some(id) => self
                .fly
                .machine(self.app(), id, once)
                .await
                .map(|m| vec![m]),
            None => self.fly.list(self.app(), once).await,
        };
        match answer {
            Ok(machines) => {
                self.record(READS, &machines);
                Ok(machines)
            }
            Err(error) => {
                self.synced(READS, Some(self.mask(&error.text)), None);
                Err(error)
            }
        }
    }

    /// Records how the last call of `source` went (the reads, or one machine's long-polls),
    /// with the provider state it read: last_sync stays failed, with the error, while any
    /// source's last call failed, and is ok again once each worked.
    fn synced(&self, source: &str, failure: Option<String>, provider_state: Option<String>) {
        let mut failing = lock(&self.failing);
        match failure {
            Some(error) => {
                failing.insert(source.to_owned(), error.clone());
                self.sync.failed(error);
            }
            None => {
                failing.remove(source);
                self.sync.ok(provider_state);
                if let Some(error) = failing.values().next() {
                    self.sync.failed(error.clone());
                }
            }
        }
    }

    /// Records machines read: sync facts, mapped state, new events in the log. Unknown states
    /// keep the last one with a warning.
    fn record(&self, source: &str, machines: &[MachineInfo]) -> Option<MachineState> {
        let single = self.settings.machine_id.is_some();
        let visible: Vec<MachineInfo> = machines
            .iter()
            .filter(|m| single || m.state != "destroyed")
            .cloned()
            .collect();
        let text = state_text(&visible, single);
        self.synced(source, None, Some(text.clone()));
        self.log_events(&visible);
        let mapped = if single {
            visible.first().and_then(MachineInfo::mapped)
        } else {
            aggregate(&visible.iter().map(MachineInfo::mapped).collect::<Vec<_>>())
        };
        let ids: Vec<String> = visible.iter().map(|m| m.id.clone()).collect();
        *lock(&self.machines) = visible;
        self.listed.send_if_modified(|listed| {
            let changed = *listed != ids;
            *listed = ids;
            changed
        });
        let mut view = lock(&self.view);
        match mapped {
            Some(state) => {
                let changed = view
                    .as_ref()
                    .is_none_or(|v| v.state != state || v.text != text);
                *view = Some(View {
                    state,
                    text: text.clone(),
                    unknown: None,
                });
                drop(view);
                if changed {
                    self.line(
                        LogStream::System,
                        format!("Fly {}: {text} → {}", self.short(), state.service_state()),
                    );
                }
                Some(state)
            }
            None => {
                let kept = view.as_ref().map(|v| v.state);
                if let Some(v) = view.as_mut() {
                    v.unknown = Some(text.clone());
                }
                drop(view);
                warn!(resource = %self.name, state = %text, "Unknown Fly machine state; keeping the last state.");
                self.line(
                    LogStream::Stderr,
                    format!("warning: unknown Fly machine state `{text}`; keeping the last state"),
                );
                kept
            }
        }
    }

    /// `machine 3d8d…` or `app my-app`, for log lines.
    fn short(&self) -> String {
        match &self.settings.machine_id {
            Some(id) => format!("machine {id}"),
            None => format!("app {}", self.settings.app),
        }
    }

    /// Writes the machines' events not logged yet, oldest first.
    fn log_events(&self, machines: &[MachineInfo]) {
        let mut lines = Vec::new();
        {
            let mut seen = lock(&self.events_seen);
            for m in machines {
                let mut events: Vec<&MachineEvent> = m.events.iter().collect();
                events.sort_by_key(|e| e.timestamp.unwrap_or_default());
                for e in events {
                    let key = e.id.clone().unwrap_or_else(|| {
                        format!("{}-{:?}-{:?}-{:?}", m.id, e.timestamp, e.kind, e.status)
                    });
                    if seen.insert(key) {
                        lines.push(format!(
                            "Fly machine {} event: {} {} ({})",
                            m.id,
                            e.kind.as_deref().unwrap_or("?"),
                            e.status.as_deref().unwrap_or("?"),
                            e.source.as_deref().unwrap_or("?"),
                        ));
                    }
                }
            }
        }
        for line in lines {
            self.line(LogStream::Stdout, line);
        }
    }

    fn last_state(&self) -> Option<MachineState> {
        lock(&self.view).as_ref().map(|v| v.state)
    }

    /// One observe of the loop: a read of the machine (or a list of the app's machines,
    /// which sees machines appear and go). Changes in between are seen by the long-polls of
    /// [`watch_machines`].
    async fn observe(&self) -> Result<String, ObserveError> {
        match self.fetch(true).await {
            Ok(machines) => Ok(state_text(
                &machines
                    .into_iter()
                    .filter(|m| self.settings.machine_id.is_some() || m.state != "destroyed")
                    .collect::<Vec<_>>(),
                self.settings.machine_id.is_some(),
            )),
            Err(error) => Err(self.observe_error(&error)),
        }
    }

    /// One long-poll of machine `id`: `wait` for the state it is expected to reach next
    /// (bounded by the wait timeout), then a read of it.
    async fn poll_machine(&self, id: &str) -> Result<MachineInfo, CallError> {
        let (target, version) = {
            let machines = lock(&self.machines);
            let machine = machines.iter().find(|m| m.id == id);
            (
                machine.map_or("started", wait_target),
                machine.and_then(|m| m.version().map(str::to_owned)),
            )
        };
        self.fly
            .wait(
                self.app(),
                id,
                target,
                version.as_deref(),
                self.wait_timeout(),
                true,
            )
            .await?;
        self.fly.machine(self.app(), id, true).await
    }

    /// Records machine `machine` read on its own, among the others as last read.
    fn record_machine(&self, machine: MachineInfo) {
        let source = machine.id.clone();
        let machines = {
            let mut machines = lock(&self.machines);
            match machines.iter_mut().find(|m| m.id == machine.id) {
                Some(known) => *known = machine,
                None => machines.push(machine),
            }
            machines.clone()
        };
        self.record(&source, &machines);
    }

    /// Ends run `generation` when the state last read ends a run (stopped, sleeping, failed,
    /// destroyed); true when it did.
    fn end_if_over(&self, generation: u64) -> bool {
        match self.last_state() {
            Some(state) if state.ends_run() => {
                let code = i32::from(matches!(state, MachineState::Failed | MachineState::Absent));
                self.end_run(Some(generation), code);
                true
            }
            _ => false,
        }
    }

    fn observe_error(&self, error: &CallError) -> ObserveError {
        let message = self.mask(&error.text);
        match classify(&error.http) {
            Failure::RateLimited(retry_after) => ObserveError::RateLimited {
                retry_after,
                message,
            },
            _ => ObserveError::Failed(message),
        }
    }

    /// Sends `action` (`/start`, `/stop`, `/suspend`) to machine `id`.
    async fn act(&self, id: &str, action: &str, body: Option<Value>) -> Result<(), ResourceError> {
        let request = self
            .fly
            .request(
                Method::POST,
                &Fly::machine_path(self.app(), id, action),
                &[],
                body,
            )
            .map_err(|e| self.error(action.trim_start_matches('/'), &e))?;
        self.fly.send_unit(&request).await.map_err(|e| {
            self.fly.api.resource_error(
                action.trim_start_matches('/'),
                &format!("machine `{id}` of Fly app `{}`", self.app()),
                &e,
            )
        })
    }

    /// Waits (long-polls, bounded by `timeout` overall) until machine `id` is in `state`;
    /// reads it after each wait. Returns the machine as last read.
    async fn wait_for(
        &self,
        id: &str,
        target: &str,
        timeout: Duration,
    ) -> Result<MachineInfo, ResourceError> {
        let deadline = Instant::now() + timeout;
        let mut version: Option<String> = None;
        loop {
            // Long-polls of at most the wait timeout each: a machine that fails instead of
            // reaching the target is read (and seen) after one of them.
            let left = deadline
                .saturating_duration_since(Instant::now())
                .min(self.wait_timeout());
            if !left.is_zero() {
                let _ = self
                    .fly
                    .wait(self.app(), id, target, version.as_deref(), left, false)
                    .await
                    .map_err(|e| self.error("wait", &e))?;
            }
            let machine = self
                .fly
                .machine(self.app(), id, false)
                .await
                .map_err(|e| self.error("read", &e))?;
            version = machine.version().map(str::to_owned);
            if machine.state == target {
                return Ok(machine);
            }
            let mapped = machine.mapped();
            if target == "started"
                && matches!(mapped, Some(MachineState::Failed | MachineState::Absent))
            {
                return Ok(machine);
            }
            if Instant::now() >= deadline {
                return Err(ResourceError::op(
                    "wait",
                    format!(
                        "machine `{id}` of Fly app `{}` is `{}`, not `{target}`, after {:?}",
                        self.app(),
                        machine.state,
                        timeout
                    ),
                ));
            }
        }
    }

    fn fail(&self, reason: String) -> ResourceError {
        let reason = self.mask(&reason);
        self.line(LogStream::Stderr, reason.clone());
        *lock(&self.failure) = Some(reason.clone());
        ResourceError::Invalid(reason)
    }

    /// Starts one machine unless it is started; waits until it is.
    async fn start_machine(&self, m: &MachineInfo) -> Result<(), ResourceError> {
        let id = m.id.as_str();
        match m.mapped() {
            Some(MachineState::Running) => return Ok(()),
            Some(MachineState::Absent) => {
                return Err(self.fail(format!(
                    "machine `{id}` of Fly app `{}` was destroyed",
                    self.app()
                )));
            }
            Some(MachineState::Stopping) => {
                // Let the stop or suspend under way end first.
                let settled = if m.state == "suspending" {
                    "suspended"
                } else {
                    "stopped"
                };
                self.wait_for(id, settled, self.settings.operation_timeout)
                    .await?;
                self.send_start(id).await?;
            }
            Some(MachineState::Starting) if m.state != "created" => {}
            _ => self.send_start(id).await?,
        }
        let machine = self
            .wait_for(id, "started", self.settings.operation_timeout)
            .await?;
        self.record_one(&machine);
        match machine.mapped() {
            Some(MachineState::Running) => Ok(()),
            _ => Err(self.fail(format!(
                "machine `{id}` of Fly app `{}` did not start: it is `{}`{}",
                self.app(),
                machine.state,
                last_event_text(&machine)
            ))),
        }
    }

    async fn send_start(&self, id: &str) -> Result<(), ResourceError> {
        self.line(
            LogStream::System,
            format!("Starting Fly machine {id} (POST …/machines/{id}/start)"),
        );
        self.act(id, "/start", None).await
    }

    /// Records a machine read during a start or stop (single machine: the whole view).
    fn record_one(&self, machine: &MachineInfo) {
        if self.settings.machine_id.is_some() {
            self.record(&machine.id, std::slice::from_ref(machine));
        } else {
            self.log_events(std::slice::from_ref(machine));
        }
    }

    /// Stops (or suspends) one machine unless it is down already; waits up to `grace`.
    async fn stop_machine(&self, m: &MachineInfo, grace: Duration) -> Result<(), ResourceError> {
        let id = m.id.as_str();
        if !matches!(
            m.mapped(),
            Some(MachineState::Running | MachineState::Starting)
        ) {
            return Ok(());
        }
        let (action, target, body) = match self.settings.stop_mode {
            StopMode::Stop => (
                "/stop",
                "stopped",
                Some(json!({ "timeout": format!("{}s", grace.as_secs().max(1)) })),
            ),
            StopMode::Suspend => ("/suspend", "suspended", None),
        };
        self.line(
            LogStream::System,
            format!("Stopping Fly machine {id} (POST …/machines/{id}{action})"),
        );
        self.act(id, action, body).await?;
        match self
            .wait_for(id, target, grace.max(Duration::from_secs(1)))
            .await
        {
            Ok(machine) => self.record_one(&machine),
            Err(error) => self.line(LogStream::Stderr, error.to_string()),
        }
        Ok(())
    }

    fn end_run(&self, generation: Option<u64>, code: i32) {
        self.live.end(
            generation,
            ExitInfo {
                code: Some(code),
                signal: None,
            },
        );
        *lock(&self.output) = None;
    }
}

fn last_event_text(m: &MachineInfo) -> String {
    m.events
        .iter()
        .max_by_key(|e| e.timestamp.unwrap_or_default())
        .map(|e| {
            format!(
                " (last event: {} {})",
                e.kind.as_deref().unwrap_or("?"),
                e.status.as_deref().unwrap_or("?")
            )
        })
        .unwrap_or_default()
}

/// A Fly machine, or an app's machines (see the module docs).
pub struct FlyResource {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FlyResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlyResource")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

impl Drop for FlyResource {
    /// A dropped resource stops observing (the run is lost track of, not ended).
    fn drop(&mut self) {
        self.inner.live.forget();
    }
}

impl FlyResource {
    /// The last mapped state and the provider's words for it.
    pub fn state(&self) -> Option<(MachineState, String)> {
        lock(&self.inner.view)
            .as_ref()
            .map(|v| (v.state, v.text.clone()))
    }
}

/// Follows a run's observe loop (whose reads record their own sync): ends the run when the
/// machine stopped, went to sleep, failed or was destroyed. Ends with the loop.
async fn watch_run(
    mut observed: watch::Receiver<ObservedStatus>,
    inner: Arc<Inner>,
    generation: u64,
) {
    while observed.changed().await.is_ok() {
        let worked = observed
            .borrow_and_update()
            .last_sync
            .as_ref()
            .is_some_and(|l| l.ok);
        if worked && inner.end_if_over(generation) {
            return;
        }
    }
}

/// The state to `wait` for next on `machine`: the end of the transition under way, else the
/// opposite of where it rests.
fn wait_target(machine: &MachineInfo) -> &'static str {
    match machine.mapped() {
        Some(MachineState::Stopping) if machine.state == "suspending" => "suspended",
        Some(MachineState::Running | MachineState::Stopping) => "stopped",
        Some(MachineState::Absent) => "destroyed",
        _ => "started",
    }
}

/// Long-polls every machine of run `generation` (the one, or each of the app's as the
/// observe loop's list finds them), at most [`MAX_WAITS`] at once: a change made outside
/// kinfra is seen when it happens, not at the next `interval`. Ends with the run.
async fn watch_machines(inner: Arc<Inner>, generation: u64) {
    let permits = Arc::new(Semaphore::new(MAX_WAITS));
    let mut listed = inner.listed.subscribe();
    let mut watchers: HashMap<String, AbortOnDrop> = HashMap::new();
    loop {
        let ids = listed.borrow_and_update().clone();
        watchers.retain(|id, _| {
            let listed = ids.contains(id);
            if !listed {
                lock(&inner.failing).remove(id);
            }
            listed
        });
        for id in ids {
            watchers.entry(id).or_insert_with_key(|id| {
                AbortOnDrop(tokio::spawn(watch_machine(
                    inner.clone(),
                    id.clone(),
                    generation,
                    permits.clone(),
                )))
            });
        }
        if listed.changed().await.is_err() {
            return;
        }
    }
}

/// Long-polls machine `id` again and again (never two polls of it within
/// [`MIN_WAIT_GAP`]), recording each read and ending the run when it is over. A failed poll
/// is a failed sync, and backs off (Retry-After honoured). A machine of an app that is gone
/// (404) is left to the next list.
async fn watch_machine(inner: Arc<Inner>, id: String, generation: u64, permits: Arc<Semaphore>) {
    let backoff = ObserveConfig::every(inner.wait_timeout());
    let mut failures = 0u32;
    loop {
        let began = Instant::now();
        let polled = {
            let Ok(_permit) = permits.acquire().await else {
                return;
            };
            inner.poll_machine(&id).await
        };
        let pause = match polled {
            Ok(machine) => {
                failures = 0;
                let destroyed = machine.state == "destroyed";
                inner.record_machine(machine);
                if inner.end_if_over(generation) || destroyed {
                    return;
                }
                MIN_WAIT_GAP.saturating_sub(began.elapsed())
            }
            Err(error)
                if inner.settings.machine_id.is_none() && error.http.status() == Some(404) =>
            {
                return;
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                inner.synced(&id, Some(inner.mask(&error.text)), None);
                match classify(&error.http) {
                    Failure::RateLimited(Some(after)) => after,
                    _ => backoff.failure_delay(failures),
                }
            }
        };
        tokio::time::sleep(pause).await;
    }
}

impl Resource for FlyResource {
    fn kind(&self) -> &'static str {
        "fly"
    }

    fn name(&self) -> &str {
        &self.inner.name
    }

    fn start(&self) -> BoxFuture<'_, Result<Run, ResourceError>> {
        Box::pin(async move {
            let inner = &self.inner;
            *lock(&inner.failure) = None;
            lock(&inner.failing).clear();
            let machines = inner.read().await?;
            let mapped = inner.last_state();
            let adopted = mapped == Some(MachineState::Running)
                && machines
                    .iter()
                    .filter(|m| m.state != "destroyed")
                    .all(|m| m.mapped() == Some(MachineState::Running));
            if machines.iter().all(|m| m.state == "destroyed") {
                return Err(inner.fail(if machines.is_empty() {
                    format!("Fly app `{}` has no machines", inner.app())
                } else {
                    format!("{} was destroyed", inner.settings.what())
                }));
            }
            if !adopted {
                for m in machines.iter().filter(|m| m.state != "destroyed") {
                    inner.start_machine(m).await?;
                }
                inner.read().await?;
            } else {
                inner.line(
                    LogStream::System,
                    format!("Fly {} is started", inner.short()),
                );
            }
            let (out_tx, out_rx) = mpsc::channel(64);
            let (exit_tx, exit_rx) = oneshot::channel();
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let observer = inner.clone();
            let (observed, _loop) = observe::spawn(
                ObserveConfig::every(inner.settings.interval),
                move || {
                    let inner = observer.clone();
                    async move { inner.observe().await }
                },
                async move {
                    let _ = stop_rx.await;
                },
            );
            {
                // What the start wrote (its requests, the machine's events) opens the run's
                // output, so `runtime logs` shows it too.
                let mut output = lock(&inner.output);
                for line in lock(&inner.pending).drain(..) {
                    let _ = out_tx.try_send(line);
                }
                *output = Some(out_tx.clone());
            }
            let generation = inner.live.begin(|generation| {
                let waits = tokio::spawn(watch_machines(inner.clone(), generation));
                (exit_tx, (out_tx, stop_tx, AbortOnDrop(waits)))
            });
            tokio::spawn(watch_run(observed, inner.clone(), generation));
            inner.line(
                LogStream::System,
                format!(
                    "Following Fly {} (wait long-polls of {:?}, every {:?})",
                    inner.short(),
                    inner.wait_timeout(),
                    inner.settings.interval
                ),
            );
            Ok(Run {
                id: inner
                    .settings
                    .machine_id
                    .clone()
                    .unwrap_or_else(|| inner.settings.app.clone()),
                pid: None,
                adopted,
                output: out_rx,
                exit: exit_rx,
            })
        })
    }

    fn stop(&self, grace: Duration) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let result = async {
                let machines = inner.read().await?;
                for m in &machines {
                    inner.stop_machine(m, grace).await?;
                }
                if inner.settings.machine_id.is_none() {
                    inner.read().await?;
                }
                Ok(())
            }
            .await;
            inner.end_run(None, 0);
            result
        })
    }

    /// Lets go of the run and leaves the machines as they are (`on_down = "keep"`).
    fn release(&self, _grace: Duration) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            self.inner.end_run(None, 0);
            Ok(())
        })
    }

    fn status(&self) -> BoxFuture<'_, Result<Observed, ResourceError>> {
        Box::pin(async move {
            self.inner.read().await?;
            Ok(match self.inner.last_state() {
                Some(MachineState::Absent) => Observed::Absent,
                Some(MachineState::Running | MachineState::Starting | MachineState::Stopping) => {
                    Observed::Running
                }
                _ => Observed::Idle,
            })
        })
    }

    fn health(&self) -> BoxFuture<'_, Result<Health, ResourceError>> {
        Box::pin(async { Ok(Health::Unknown) })
    }

    fn connection(&self) -> Connection {
        Connection::default()
    }

    fn logs(&self, tail: usize) -> BoxFuture<'_, Result<Vec<OutputLine>, ResourceError>> {
        Box::pin(async move { Ok(self.inner.logs.tail(tail)) })
    }

    fn remove(&self, _volumes: bool) -> BoxFuture<'_, Result<(), ResourceError>> {
        // kinfra created nothing: the machines are the user's, never destroyed here.
        Box::pin(async { Ok(()) })
    }

    fn sync(&self) -> Option<SyncFacts> {
        self.inner.sync.facts()
    }

    fn reported_state(&self) -> Option<ReportedState> {
        if let Some(reason) = lock(&self.inner.failure).clone() {
            return Some(ReportedState {
                state: ServiceState::Failed,
                message: reason,
            });
        }
        let view = lock(&self.inner.view).clone()?;
        let suffix = view
            .unknown
            .as_ref()
            .map(|u| format!(" (unknown state {u}; last known state kept)"))
            .unwrap_or_default();
        let text = &view.text;
        let message = match view.state {
            MachineState::Running => format!("Fly: {text}{suffix}"),
            MachineState::Starting => format!("Fly: starting ({text}){suffix}"),
            MachineState::Stopping => format!("Fly: stopping ({text}){suffix}"),
            MachineState::Stopped => format!("Fly: {text}{suffix}"),
            MachineState::Sleeping => {
                format!("Fly: {text} (sleeping: the next request wakes it){suffix}")
            }
            MachineState::Failed => format!("Fly: {text}{suffix}"),
            MachineState::Absent => {
                format!(
                    "Fly: {text}: {} is absent{suffix}",
                    self.inner.settings.what()
                )
            }
        };
        Some(ReportedState {
            state: view.state.service_state(),
            message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_map_as_designed() {
        use MachineState::*;
        assert_eq!(map_state("created", false), Some(Starting));
        assert_eq!(map_state("starting", false), Some(Starting));
        assert_eq!(map_state("started", false), Some(Running));
        assert_eq!(map_state("stopping", false), Some(Stopping));
        assert_eq!(map_state("suspending", false), Some(Stopping));
        assert_eq!(map_state("stopped", false), Some(Stopped));
        assert_eq!(map_state("stopped", true), Some(Sleeping));
        assert_eq!(map_state("suspended", false), Some(Sleeping));
        assert_eq!(map_state("failed", false), Some(Failed));
        assert_eq!(map_state("destroyed", false), Some(Absent));
        assert_eq!(map_state("replacing", false), Some(Starting));
        assert_eq!(map_state("migrating", false), Some(Starting));
        assert_eq!(map_state("force-stopping", false), Some(Stopping));
        assert_eq!(map_state("quantum", false), None);
    }

    #[test]
    fn an_apps_machines_add_up() {
        use MachineState::*;
        assert_eq!(aggregate(&[Some(Running), Some(Sleeping)]), Some(Running));
        assert_eq!(aggregate(&[Some(Running), Some(Starting)]), Some(Starting));
        assert_eq!(aggregate(&[Some(Sleeping), Some(Sleeping)]), Some(Sleeping));
        assert_eq!(aggregate(&[Some(Sleeping), Some(Stopped)]), Some(Stopped));
        assert_eq!(aggregate(&[Some(Running), Some(Failed)]), Some(Failed));
        assert_eq!(aggregate(&[Some(Absent)]), Some(Absent));
        assert_eq!(aggregate(&[]), Some(Absent));
        assert_eq!(aggregate(&[None]), None);
        assert_eq!(aggregate(&[None, Some(Running)]), Some(Running));
    }

    #[test]
    fn autostart_makes_a_stopped_machine_sleep() {
        let config = json!({ "services": [{ "internal_port": 8080, "autostart": true }] });
        assert!(autostart(&config));
        let mut off = config.clone();
        off["disable_machine_autostart"] = json!(true);
        assert!(!autostart(&off));
        assert!(!autostart(&json!({ "services": [{ "autostart": false }] })));
        assert!(!autostart(&json!({})));
    }

    #[test]
    fn settings_and_env_name_every_problem() {
        let Value::Object(config) = json!({
            "app": "Bad_App", "machine_id": "x/y", "stop_mode": "hibernate",
            "wait_timeout": "5m",
        }) else {
            panic!("object")
        };
        let problems: Vec<String> = Settings::parse(&config)
            .expect_err("invalid")
            .iter()
            .map(ToString::to_string)
            .collect();
        for key in ["app", "machine_id", "stop_mode", "wait_timeout"] {
            assert!(
                problems.iter().any(|p| p.starts_with(&format!("`{key}`"))),
                "{key}: {problems:?}"
            );
        }
        let env = parse_env("A=1, B_2=x=y").expect("env");
        assert_eq!(env["B_2"], "x=y");
        let bad = parse_env("A=1,no-equals,bad key=2").expect_err("bad");
        assert!(
            bad.contains("`no-equals`") && bad.contains("`bad key`"),
            "{bad}"
        );
    }

    #[test]
    fn an_update_merges_into_the_machine_config() {
        let change = Change {
            image: Some("img:2".into()),
            env: Some(parse_env("B=2").expect("env")),
            size: Some("shared-cpu-2x".into()),
        };
        let config =
            change.apply(&json!({ "image": "img:1", "env": { "A": "1" }, "services": [] }));
        assert_eq!(config["image"], "img:2");
        assert_eq!(config["env"], json!({ "A": "1", "B": "2" }));
        assert_eq!(config["guest"]["cpus"], 2);
        assert_eq!(config["services"], json!([]));
    }
}
