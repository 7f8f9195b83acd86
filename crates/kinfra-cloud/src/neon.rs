//! The `neon` provider: a Neon compute endpoint as a resource, the project's branches as
//! commands (Neon API v2, `https://console.neon.tech/api/v2`, bearer token).
//!
//! A resource names its endpoint by `project_id` and `endpoint_id`, or by `branch` (the
//! branch's read-write endpoint). Start wakes it (`POST .../endpoints/{id}/start`) and waits
//! for the `operations[]` the answer lists and for `current_state = active`; stop suspends it;
//! `suspend_timeout` is applied with `PATCH .../endpoints/{id}` before the start. The observe
//! loop maps `current_state`/`pending_state` (DESIGN's table): `init`, or `idle` with
//! `active` pending, is starting; `active` running; `active` with `idle` pending stopping;
//! `idle` sleeping (the next connection wakes it: the run ends and status shows sleeping);
//! `disabled` stopped; an operation that fails fails the start with its error.
//!
//! The connection facts (`host`, `port`, `database`, `user`, `password`, `url`) come from
//! `GET .../connection_uri` during the start, as secrets: `${resources.NAME.url}` feeds
//! dependents. Nothing this provider shows (errors, log lines, dry-runs, sync errors) holds
//! the token, the password or the URL.

use kinfra_core::Secret;
use kinfra_core::event::ExitInfo;
use kinfra_core::resource::{
    BoxFuture, Connection, Observed, OutputLine, ReportedState, Resource, ResourceError, Run,
    SyncFacts,
};
use kinfra_core::state::{Health, ServiceState};
use kinfra_core::status::{LastSync, LogStream};
use kinfra_provider::command::{CommandSpec, ParamKind, ParamSpec, ValidatedParams};
use kinfra_provider::http::{HttpConfig, HttpError, Method, Url};
use kinfra_provider::metadata::{
    AuthMethod, Capability, Category, ConfigKeySpec, ConfigKind, ProviderMetadata, ResourceTypeSpec,
};
use kinfra_provider::observe::{self, ObserveConfig, ObserveError, ObservedStatus};
use kinfra_provider::operation::{OperationError, OperationStatus, OperationTracker};
use kinfra_provider::provider::{
    InstanceContext, KINFRA_KEYS, Provider, ProviderError, ResourceDecl, ResourceProblem,
    config_duration, config_problems,
};
use kinfra_provider::rest::{CallError, RestApi, RestClients, TokenNeed, encode_segment};
use kinfra_provider::result::{CommandResult, PlannedRequest, mask_text};
use kinfra_provider::retry::{Backoff, RetryPolicy};
use kinfra_provider::run_slot::{LogRing, RunSlot, SyncRecord, lock};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::warn;

/// The provider's id.
pub const ID: &str = "neon";
/// The one resource type it runs.
pub const RESOURCE_TYPE: &str = "endpoint";
/// The API's base URL when the instance sets no `base_url`.
pub const DEFAULT_BASE_URL: &str = "https://console.neon.tech/api/v2";
/// The database of the connection facts when the resource names none.
pub const DEFAULT_DATABASE: &str = "neondb";
/// The role of the connection facts when the resource names none.
pub const DEFAULT_ROLE: &str = "neondb_owner";
/// The observe interval when the resource sets none.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// How long an operation (a start, a suspend, a branch) may take by default.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(600);
/// The port of every Neon endpoint (Postgres).
pub const POSTGRES_PORT: u16 = 5432;
/// Output lines kept for [`Resource::logs`].
const LOG_LINES: usize = 500;
/// Longest a suspend timeout may be (the spec's maximum: a week).
const MAX_SUSPEND_TIMEOUT: i64 = 604_800;

// ---------------------------------------------------------------------------------------
// Metadata and commands

fn metadata() -> ProviderMetadata {
    ProviderMetadata {
        id: ID.into(),
        name: ID.into(),
        display_name: "Neon".into(),
        description: "Neon serverless Postgres: a compute endpoint as a resource (start, \
                      suspend, observe, operations tracked, connection facts as secrets) and \
                      the project's branches as commands."
            .into(),
        version: env!("CARGO_PKG_VERSION").into(),
        category: Category::Database,
        capabilities: vec![
            Capability::Monitor,
            Capability::Provision,
            Capability::Deprovision,
            Capability::Restore,
            Capability::DryRun,
        ],
        resource_types: vec![ResourceTypeSpec {
            name: RESOURCE_TYPE.into(),
            description: "A Neon compute endpoint (read-write), started and suspended by kinfra."
                .into(),
            config: vec![
                ConfigKeySpec::required(
                    "project_id",
                    ConfigKind::String,
                    "The Neon project, e.g. silent-bird-123456",
                ),
                ConfigKeySpec::optional(
                    "endpoint_id",
                    ConfigKind::String,
                    "The compute endpoint, e.g. ep-cool-darkness-123456 (or set `branch`)",
                ),
                ConfigKeySpec::optional(
                    "branch",
                    ConfigKind::String,
                    "A branch by name: its read-write endpoint (instead of `endpoint_id`)",
                ),
                ConfigKeySpec::optional(
                    "database",
                    ConfigKind::String,
                    "The database of the connection facts (default neondb)",
                ),
                ConfigKeySpec::optional(
                    "role",
                    ConfigKind::String,
                    "The role of the connection facts (default neondb_owner)",
                ),
                ConfigKeySpec::optional(
                    "pooled",
                    ConfigKind::Boolean,
                    "Connect through Neon's connection pooler",
                ),
                ConfigKeySpec::optional(
                    "suspend_timeout",
                    ConfigKind::Duration,
                    "Idle time before Neon suspends the endpoint (60s to 7d), applied at start",
                ),
                ConfigKeySpec::optional(
                    "operation_timeout",
                    ConfigKind::Duration,
                    "Longest wait for a Neon operation (default 10m)",
                ),
            ],
        }],
        auth_methods: vec![AuthMethod::Bearer],
    }
}

/// A command on the endpoint, with a dry-run.
fn command(id: &str, name: &str, category: &str, description: &str) -> CommandSpec {
    CommandSpec::new(id, name, description)
        .in_category(category)
        .for_resource_type(RESOURCE_TYPE)
        .with_dry_run()
}

fn commands() -> Vec<CommandSpec> {
    vec![
        command(
            "create-branch",
            "Create branch",
            "branches",
            "Creates a branch of the project (from `parent`, else the default branch).",
        )
        .with_params(vec![
            ParamSpec::required("name", ParamKind::String, "The new branch's name"),
            ParamSpec::optional(
                "parent",
                ParamKind::String,
                "The parent branch's name (default: the project's default branch)",
            ),
        ]),
        command(
            "list-branches",
            "List branches",
            "branches",
            "Lists the project's branches.",
        ),
        command(
            "delete-branch",
            "Delete branch",
            "branches",
            "Deletes a branch and its endpoints (needs --yes).",
        )
        .with_params(vec![ParamSpec::required(
            "name",
            ParamKind::String,
            "The branch to delete",
        )])
        .needs_confirmation(),
        command(
            "restore-branch",
            "Restore branch",
            "branches",
            "Restores a branch to its state (or `source`'s) at a point in time; the state it \
             had is kept as `<name>-before-restore`.",
        )
        .with_params(vec![
            ParamSpec::required("name", ParamKind::String, "The branch to restore"),
            ParamSpec::required(
                "timestamp",
                ParamKind::String,
                "The point in time (RFC 3339, e.g. 2026-01-01T12:00:00Z)",
            ),
            ParamSpec::optional(
                "source",
                ParamKind::String,
                "The branch whose history to restore from (default: `name` itself)",
            ),
        ]),
        command(
            "set-suspend-timeout",
            "Set suspend timeout",
            "config",
            "Sets how long the endpoint may be idle before Neon suspends it (-1: never, 0: \
             Neon's default).",
        )
        .with_params(vec![ParamSpec::required(
            "seconds",
            ParamKind::Integer {
                min: Some(-1),
                max: Some(MAX_SUSPEND_TIMEOUT),
            },
            "Idle seconds before suspending (60 to 604800, -1 never, 0 default)",
        )]),
    ]
}

// ---------------------------------------------------------------------------------------
// Instance and resource settings

/// Which endpoint a resource means.
#[derive(Debug, Clone, PartialEq, Eq)]
enum EndpointRef {
    /// By id.
    Id(String),
    /// The read-write endpoint of the branch with this name.
    Branch(String),
}

/// A resource's settings, parsed from its table.
#[derive(Debug, Clone)]
struct Settings {
    project_id: String,
    endpoint: EndpointRef,
    database: String,
    role: String,
    pooled: bool,
    suspend_timeout: Option<i64>,
    operation_timeout: Duration,
    interval: Duration,
}

fn str_key<'a>(config: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    config.get(key).and_then(Value::as_str)
}

/// Neon ids and names in a path: lowercase letters, digits and dashes only (the spec's
/// pattern), so nothing else can be smuggled into a URL.
fn valid_id(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 60
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Settings {
    /// The settings of `decl`, or every problem with them (the type checks are
    /// [`kinfra_provider::provider::check_config`]'s).
    fn parse(config: &Map<String, Value>) -> Result<Self, Vec<ResourceProblem>> {
        let mut problems = Vec::new();
        let project_id = str_key(config, "project_id").unwrap_or_default().to_owned();
        if project_id.is_empty() && !config.contains_key("project_id") {
            problems.push(ResourceProblem::at("project_id", "missing (required)"));
        } else if !valid_id(&project_id) {
            problems.push(ResourceProblem::at(
                "project_id",
                format!("`{project_id}` is not a Neon project id (a-z, 0-9 and -)"),
            ));
        }
        let endpoint = match (str_key(config, "endpoint_id"), str_key(config, "branch")) {
            (Some(_), Some(_)) => {
                problems.push(ResourceProblem::at(
                    "branch",
                    "set endpoint_id or branch, not both",
                ));
                None
            }
            (Some(id), None) if valid_id(id) => Some(EndpointRef::Id(id.to_owned())),
            (Some(id), None) => {
                problems.push(ResourceProblem::at(
                    "endpoint_id",
                    format!("`{id}` is not a Neon endpoint id (a-z, 0-9 and -)"),
                ));
                None
            }
            (None, Some(branch)) if !branch.is_empty() => {
                Some(EndpointRef::Branch(branch.to_owned()))
            }
            (None, Some(_)) => {
                problems.push(ResourceProblem::at("branch", "empty branch name"));
                None
            }
            (None, None) => {
                if !config.contains_key("endpoint_id") && !config.contains_key("branch") {
                    problems.push(ResourceProblem::at(
                        "endpoint_id",
                        "missing: set endpoint_id (the compute endpoint) or branch (its name)",
                    ));
                }
                None
            }
        };
        let suspend_timeout =
            config_duration(config, "suspend_timeout", &mut problems).and_then(|d| {
                let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
                if (60..=MAX_SUSPEND_TIMEOUT).contains(&secs) {
                    Some(secs)
                } else {
                    problems.push(ResourceProblem::at(
                        "suspend_timeout",
                        "must be between 60s and 7d (Neon's limits)",
                    ));
                    None
                }
            });
        let operation_timeout = config_duration(config, "operation_timeout", &mut problems)
            .unwrap_or(DEFAULT_OPERATION_TIMEOUT);
        let interval =
            config_duration(config, "interval", &mut problems).unwrap_or(DEFAULT_INTERVAL);
        let settings = Settings {
            project_id,
            endpoint: endpoint.unwrap_or(EndpointRef::Id(String::new())),
            database: str_key(config, "database")
                .unwrap_or(DEFAULT_DATABASE)
                .to_owned(),
            role: str_key(config, "role").unwrap_or(DEFAULT_ROLE).to_owned(),
            pooled: config
                .get("pooled")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            suspend_timeout,
            operation_timeout,
            interval,
        };
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(problems)
        }
    }

    /// How the endpoint is named in messages.
    fn endpoint_text(&self) -> String {
        match &self.endpoint {
            EndpointRef::Id(id) => format!("endpoint `{id}` of project `{}`", self.project_id),
            EndpointRef::Branch(b) => format!(
                "the endpoint of branch `{b}` of project `{}`",
                self.project_id
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The API client of one instance

/// A Neon operation as answers list it.
#[derive(Debug, Clone, Deserialize)]
struct OperationInfo {
    id: String,
    #[serde(default)]
    action: String,
    status: String,
    #[serde(default)]
    error: Option<String>,
}

/// An endpoint as the API describes it (the fields kinfra reads).
#[derive(Debug, Clone, Deserialize)]
struct EndpointInfo {
    id: String,
    current_state: String,
    #[serde(default)]
    pending_state: Option<String>,
    #[serde(default)]
    disabled: bool,
    #[serde(default)]
    suspend_timeout_seconds: Option<i64>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct EndpointAnswer {
    endpoint: EndpointInfo,
    #[serde(default)]
    operations: Vec<OperationInfo>,
}

#[derive(Debug, Clone, Deserialize)]
struct BranchInfo {
    id: String,
    name: String,
    #[serde(default)]
    parent_id: Option<String>,
    #[serde(default)]
    default: bool,
    #[serde(default)]
    current_state: Option<String>,
}

/// The Neon calls beyond a plain request: branches by name, operations followed to their end.
trait NeonCalls {
    /// The project's branches.
    async fn branches(&self, project: &str) -> Result<Vec<BranchInfo>, CallError>;
    /// Polls `op` until it finished (or failed, or `timeout` passed).
    async fn track(
        &self,
        project: &str,
        op: &OperationInfo,
        timeout: Duration,
    ) -> Result<(), OperationError>;
    /// Tracks every operation of an answer; the first failure is the error (with the
    /// operation's action and reason).
    async fn track_all(
        &self,
        project: &str,
        ops: &[OperationInfo],
        timeout: Duration,
    ) -> Result<(), String>;
}

impl NeonCalls for RestApi {
    async fn branches(&self, project: &str) -> Result<Vec<BranchInfo>, CallError> {
        #[derive(Deserialize)]
        struct Answer {
            branches: Vec<BranchInfo>,
        }
        let answer: Answer = self
            .call(
                Method::GET,
                &format!("/projects/{}/branches", encode_segment(project)),
                &[],
                None,
            )
            .await?;
        Ok(answer.branches)
    }

    async fn track(
        &self,
        project: &str,
        op: &OperationInfo,
        timeout: Duration,
    ) -> Result<(), OperationError> {
        if let Some(status) = operation_status(op) {
            return match status {
                OperationStatus::Done => Ok(()),
                OperationStatus::Failed(reason) => Err(OperationError::Failed { reason }),
                OperationStatus::Pending => Ok(()),
            };
        }
        let tracker = OperationTracker {
            backoff: Backoff {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(5),
            },
            timeout,
        };
        let path = format!(
            "/projects/{}/operations/{}",
            encode_segment(project),
            encode_segment(&op.id)
        );
        tracker
            .track(|| async {
                #[derive(Deserialize)]
                struct Answer {
                    operation: OperationInfo,
                }
                let request = self
                    .request(Method::GET, &path, &[], None)
                    .map_err(|e| e.http)?;
                let answer: Answer = self.send_once(&request).await.map_err(|e| e.http)?.json()?;
                Ok(operation_status(&answer.operation).unwrap_or(OperationStatus::Pending))
            })
            .await
            .map(|_| ())
    }

    async fn track_all(
        &self,
        project: &str,
        ops: &[OperationInfo],
        timeout: Duration,
    ) -> Result<(), String> {
        for op in ops {
            if let Err(error) = self.track(project, op, timeout).await {
                let error = match error {
                    OperationError::Failed { reason } => {
                        format!("Neon operation {} ({}) failed: {reason}", op.action, op.id)
                    }
                    other => format!("Neon operation {} ({}): {other}", op.action, op.id),
                };
                return Err(self.mask(&error));
            }
        }
        Ok(())
    }
}

/// An operation's status when it is final (`None`: still running).
fn operation_status(op: &OperationInfo) -> Option<OperationStatus> {
    match op.status.as_str() {
        "finished" | "skipped" => Some(OperationStatus::Done),
        "failed" | "error" => Some(OperationStatus::Failed(
            op.error
                .clone()
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| format!("status {}", op.status)),
        )),
        "cancelled" => Some(OperationStatus::Failed("cancelled".into())),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// State mapping

/// What an endpoint's state means for kinfra (DESIGN's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointState {
    /// `init`, or `idle` with `active` pending.
    Starting,
    /// `active`.
    Running,
    /// `active` with `idle` pending.
    Stopping,
    /// `idle`: suspended; the next connection wakes it.
    Sleeping,
    /// `disabled`.
    Stopped,
}

impl EndpointState {
    /// kinfra's state.
    pub fn service_state(self) -> ServiceState {
        match self {
            Self::Starting => ServiceState::Starting,
            Self::Running => ServiceState::Running,
            Self::Stopping => ServiceState::Stopping,
            Self::Sleeping => ServiceState::Sleeping,
            Self::Stopped => ServiceState::Stopped,
        }
    }
}

/// Maps `current_state`, `pending_state` and `disabled` (`None`: a state kinfra does not
/// know, which keeps the last one).
pub fn map_state(current: &str, pending: Option<&str>, disabled: bool) -> Option<EndpointState> {
    if disabled {
        return Some(EndpointState::Stopped);
    }
    Some(match (current, pending) {
        ("init", _) => EndpointState::Starting,
        ("idle", Some("active" | "init")) => EndpointState::Starting,
        ("idle", _) => EndpointState::Sleeping,
        ("active", Some("idle")) => EndpointState::Stopping,
        ("active", _) => EndpointState::Running,
        (other, _) if other.ends_with("ing") => EndpointState::Starting,
        _ => return None,
    })
}

/// The provider's raw state as shown: `idle`, or `idle → active` while one is pending.
fn state_text(e: &EndpointInfo) -> String {
    let mut text = e.current_state.clone();
    if let Some(p) = e.pending_state.as_deref().filter(|p| *p != e.current_state) {
        text.push_str(&format!(" → {p}"));
    }
    if e.disabled {
        text.push_str(" (disabled)");
    }
    text
}

// ---------------------------------------------------------------------------------------
// The provider

/// The `neon` provider. Instances share one HTTP client; each has its own token bucket.
pub struct NeonProvider {
    metadata: ProviderMetadata,
    commands: Vec<CommandSpec>,
    clients: RestClients,
}

impl std::fmt::Debug for NeonProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NeonProvider").finish_non_exhaustive()
    }
}

/// The `neon` provider with the default HTTP timeouts.
pub fn provider() -> Arc<dyn Provider> {
    Arc::new(NeonProvider::new())
}

impl Default for NeonProvider {
    fn default() -> Self {
        Self::new()
    }
}

impl NeonProvider {
    /// The provider with the default HTTP timeouts.
    pub fn new() -> Self {
        Self::with_http_config(HttpConfig::default())
    }

    /// The provider with `config`'s HTTP timeouts.
    pub fn with_http_config(config: HttpConfig) -> Self {
        Self {
            metadata: metadata(),
            commands: commands(),
            clients: RestClients::new(
                "the Neon API",
                Some(DEFAULT_BASE_URL),
                TokenNeed::Required("a Neon API key"),
            )
            .with_http_config(config),
        }
    }

    /// The retry policy of calls (the observe loop has its own backoff).
    pub fn with_retry(self, retry: RetryPolicy) -> Self {
        Self {
            clients: self.clients.with_retry(retry),
            ..self
        }
    }

    /// The [`NeonResource`] for `decl` (the concrete type behind [`Provider::resource`]).
    pub fn endpoint_resource(
        &self,
        instance: &InstanceContext,
        decl: &ResourceDecl,
    ) -> Result<NeonResource, ProviderError> {
        let settings = decl.parse_config(Settings::parse)?;
        let api = self.clients.api(instance)?;
        Ok(NeonResource {
            inner: Arc::new(Inner {
                name: decl.name.clone(),
                api,
                settings,
                endpoint_id: Mutex::new(None),
                connection: Mutex::new(None),
                last: Mutex::new(None),
                failure: Mutex::new(None),
                logs: LogRing::new(LOG_LINES),
                output: Mutex::new(None),
                live: RunSlot::default(),
                sync: SyncRecord::default(),
            }),
        })
    }
}

fn data_branch(b: &BranchInfo) -> Value {
    json!({
        "id": b.id,
        "name": b.name,
        "parent_id": b.parent_id,
        "default": b.default,
        "state": b.current_state,
    })
}

/// The branch named `name` (or with that id).
fn find_branch<'a>(branches: &'a [BranchInfo], name: &str) -> Option<&'a BranchInfo> {
    branches
        .iter()
        .find(|b| b.name == name)
        .or_else(|| branches.iter().find(|b| b.id == name))
}

impl NeonProvider {
    async fn run_command(
        &self,
        api: &RestApi,
        settings: &Settings,
        command: &CommandSpec,
        params: &ValidatedParams,
        dry_run: bool,
    ) -> Result<CommandResult, String> {
        let project = encode_segment(&settings.project_id);
        let branches_path = format!("/projects/{project}/branches");
        let text = |e: CallError| e.text;
        let param = |name: &str| params.str(name).unwrap_or_default().to_owned();
        let timeout = settings.operation_timeout;
        let secrets = api.secrets();
        match command.id.as_str() {
            "list-branches" => {
                let request = api
                    .request(Method::GET, &branches_path, &[], None)
                    .map_err(|e| e.to_string())?;
                if dry_run {
                    return Ok(CommandResult::planned(&[request.planned()], &secrets));
                }
                let branches = api.branches(&settings.project_id).await.map_err(text)?;
                Ok(CommandResult::ok(json!({
                    "branches": branches.iter().map(data_branch).collect::<Vec<_>>()
                })))
            }
            "create-branch" => {
                let name = param("name");
                let parent = params.str("parent").map(str::to_owned);
                let body = |parent_id: Option<&str>| {
                    let mut branch = json!({ "name": name });
                    if let Some(id) = parent_id {
                        branch["parent_id"] = json!(id);
                    }
                    json!({ "branch": branch })
                };
                if dry_run {
                    let mut planned = Vec::new();
                    let parent_text = parent.as_ref().map(|p| format!("<id of branch `{p}`>"));
                    if parent.is_some() {
                        let list = api
                            .request(Method::GET, &branches_path, &[], None)
                            .map_err(|e| e.to_string())?;
                        planned.push(list.planned());
                    }
                    let request = api
                        .request(
                            Method::POST,
                            &branches_path,
                            &[],
                            Some(body(parent_text.as_deref())),
                        )
                        .map_err(|e| e.to_string())?;
                    planned.push(request.planned());
                    return Ok(CommandResult::planned(&planned, &secrets));
                }
                let parent_id = match &parent {
                    Some(p) => {
                        let branches = api.branches(&settings.project_id).await.map_err(text)?;
                        Some(
                            find_branch(&branches, p)
                                .ok_or_else(|| {
                                    format!("no branch `{p}` in project `{}`", settings.project_id)
                                })?
                                .id
                                .clone(),
                        )
                    }
                    None => None,
                };
                #[derive(Deserialize)]
                struct Answer {
                    branch: BranchInfo,
                    #[serde(default)]
                    operations: Vec<OperationInfo>,
                }
                let answer: Answer = api
                    .call(
                        Method::POST,
                        &branches_path,
                        &[],
                        Some(body(parent_id.as_deref())),
                    )
                    .await
                    .map_err(text)?;
                api.track_all(&settings.project_id, &answer.operations, timeout)
                    .await?;
                let mut result =
                    CommandResult::ok(json!({ "branch": data_branch(&answer.branch) }));
                result.operation = answer.operations.first().map(|o| o.id.clone());
                Ok(result)
            }
            "delete-branch" => {
                let name = param("name");
                if dry_run {
                    let list = api
                        .request(Method::GET, &branches_path, &[], None)
                        .map_err(|e| e.to_string())?;
                    let planned = [
                        list.planned(),
                        api.planned_at(
                            Method::DELETE,
                            &format!("/projects/{project}/branches/<id of branch `{name}`>"),
                            None,
                        ),
                    ];
                    return Ok(CommandResult::planned(&planned, &secrets));
                }
                let branches = api.branches(&settings.project_id).await.map_err(text)?;
                let branch = find_branch(&branches, &name).ok_or_else(|| {
                    format!("no branch `{name}` in project `{}`", settings.project_id)
                })?;
                #[derive(Deserialize)]
                struct Answer {
                    #[serde(default)]
                    operations: Vec<OperationInfo>,
                }
                let answer: Answer = api
                    .call(
                        Method::DELETE,
                        &format!("{branches_path}/{}", encode_segment(&branch.id)),
                        &[],
                        None,
                    )
                    .await
                    .map_err(text)?;
                api.track_all(&settings.project_id, &answer.operations, timeout)
                    .await?;
                let mut result = CommandResult::ok(json!({ "deleted": data_branch(branch) }));
                result.operation = answer.operations.first().map(|o| o.id.clone());
                Ok(result)
            }
            "restore-branch" => {
                let name = param("name");
                let timestamp = param("timestamp");
                let source = params.str("source").unwrap_or(&name).to_owned();
                let body = |source_id: &str| {
                    let mut body = json!({
                        "source_branch_id": source_id,
                        "source_timestamp": timestamp,
                    });
                    if source == name {
                        // Restoring a branch to its own past keeps what it had under a name.
                        body["preserve_under_name"] = json!(format!("{name}-before-restore"));
                    }
                    body
                };
                if dry_run {
                    let list = api
                        .request(Method::GET, &branches_path, &[], None)
                        .map_err(|e| e.to_string())?;
                    let planned = [
                        list.planned(),
                        api.planned_at(
                            Method::POST,
                            &format!(
                                "/projects/{project}/branches/<id of branch `{name}`>/restore"
                            ),
                            Some(body(&format!("<id of branch `{source}`>"))),
                        ),
                    ];
                    return Ok(CommandResult::planned(&planned, &secrets));
                }
                let branches = api.branches(&settings.project_id).await.map_err(text)?;
                let missing =
                    |n: &str| format!("no branch `{n}` in project `{}`", settings.project_id);
                let target = find_branch(&branches, &name).ok_or_else(|| missing(&name))?;
                let source_branch =
                    find_branch(&branches, &source).ok_or_else(|| missing(&source))?;
                #[derive(Deserialize)]
                struct Answer {
                    branch: BranchInfo,
                    #[serde(default)]
                    operations: Vec<OperationInfo>,
                }
                let answer: Answer = api
                    .call(
                        Method::POST,
                        &format!("{branches_path}/{}/restore", encode_segment(&target.id)),
                        &[],
                        Some(body(&source_branch.id)),
                    )
                    .await
                    .map_err(text)?;
                api.track_all(&settings.project_id, &answer.operations, timeout)
                    .await?;
                let mut result =
                    CommandResult::ok(json!({ "branch": data_branch(&answer.branch) }));
                result.operation = answer.operations.first().map(|o| o.id.clone());
                Ok(result)
            }
            "set-suspend-timeout" => {
                let seconds = params.integer("seconds").unwrap_or_default();
                let body = json!({ "endpoint": { "suspend_timeout_seconds": seconds } });
                let endpoint_path = |id: &str| format!("/projects/{project}/endpoints/{id}");
                if dry_run {
                    let planned = match &settings.endpoint {
                        EndpointRef::Id(id) => vec![
                            api.request(
                                Method::PATCH,
                                &endpoint_path(&encode_segment(id)),
                                &[],
                                Some(body),
                            )
                            .map_err(|e| e.to_string())?
                            .planned(),
                        ],
                        EndpointRef::Branch(b) => vec![
                            api.request(Method::GET, &branches_path, &[], None)
                                .map_err(|e| e.to_string())?
                                .planned(),
                            api.planned_at(
                                Method::GET,
                                &format!(
                                    "/projects/{project}/branches/<id of branch `{b}`>/endpoints"
                                ),
                                None,
                            ),
                            api.planned_at(
                                Method::PATCH,
                                &endpoint_path(&format!("<read-write endpoint of branch `{b}`>")),
                                Some(body),
                            ),
                        ],
                    };
                    return Ok(CommandResult::planned(&planned, &secrets));
                }
                let id = resolve_endpoint(api, settings).await.map_err(|e| match e {
                    Resolve::Call(e) => e.text,
                    Resolve::Missing(m) => m,
                })?;
                let answer: EndpointAnswer = api
                    .call(
                        Method::PATCH,
                        &endpoint_path(&encode_segment(&id)),
                        &[],
                        Some(body),
                    )
                    .await
                    .map_err(text)?;
                api.track_all(&settings.project_id, &answer.operations, timeout)
                    .await?;
                let mut result = CommandResult::ok(json!({
                    "endpoint": answer.endpoint.id,
                    "suspend_timeout_seconds": answer.endpoint.suspend_timeout_seconds,
                }));
                result.operation = answer.operations.first().map(|o| o.id.clone());
                Ok(result)
            }
            other => Err(format!("unknown command `{other}`")),
        }
    }
}

/// Why the endpoint could not be found.
enum Resolve {
    Call(CallError),
    Missing(String),
}

/// The endpoint id `settings` mean (a branch's read-write endpoint looked up by name).
async fn resolve_endpoint(api: &RestApi, settings: &Settings) -> Result<String, Resolve> {
    let branch = match &settings.endpoint {
        EndpointRef::Id(id) => return Ok(id.clone()),
        EndpointRef::Branch(b) => b,
    };
    let branches = api
        .branches(&settings.project_id)
        .await
        .map_err(Resolve::Call)?;
    let found = find_branch(&branches, branch).ok_or_else(|| {
        Resolve::Missing(format!(
            "no branch `{branch}` in project `{}`",
            settings.project_id
        ))
    })?;
    #[derive(Deserialize)]
    struct Answer {
        endpoints: Vec<EndpointInfo>,
    }
    let answer: Answer = api
        .call(
            Method::GET,
            &format!(
                "/projects/{}/branches/{}/endpoints",
                encode_segment(&settings.project_id),
                encode_segment(&found.id)
            ),
            &[],
            None,
        )
        .await
        .map_err(Resolve::Call)?;
    answer
        .endpoints
        .iter()
        .find(|e| e.kind.as_deref() == Some("read_write"))
        .or_else(|| answer.endpoints.first())
        .map(|e| e.id.clone())
        .ok_or_else(|| Resolve::Missing(format!("branch `{branch}` has no compute endpoint")))
}

impl Provider for NeonProvider {
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
        Ok(Box::new(self.endpoint_resource(instance, decl)?))
    }

    /// The start's request: `POST .../endpoints/{id}/start`, or for an endpoint named by its
    /// branch, the reads that find it and then the start (ids shown in words).
    fn planned_start<'a>(
        &'a self,
        instance: &'a InstanceContext,
        decl: &'a ResourceDecl,
    ) -> BoxFuture<'a, Result<Option<Vec<PlannedRequest>>, ProviderError>> {
        Box::pin(async move {
            let settings = decl.parse_config(Settings::parse)?;
            let api = self.clients.api(instance)?;
            let project = encode_segment(&settings.project_id);
            let start = |id: &str| format!("/projects/{project}/endpoints/{id}/start");
            let failed = |e: CallError| ProviderError::Command {
                command: "start".into(),
                reason: e.text,
            };
            let planned = match &settings.endpoint {
                EndpointRef::Id(id) => vec![
                    api.request(Method::POST, &start(&encode_segment(id)), &[], None)
                        .map_err(failed)?
                        .planned(),
                ],
                EndpointRef::Branch(b) => vec![
                    api.request(
                        Method::GET,
                        &format!("/projects/{project}/branches"),
                        &[],
                        None,
                    )
                    .map_err(failed)?
                    .planned(),
                    api.planned_at(
                        Method::GET,
                        &format!("/projects/{project}/branches/<id of branch `{b}`>/endpoints"),
                        None,
                    ),
                    api.planned_at(
                        Method::POST,
                        &start(&format!("<read-write endpoint of branch `{b}`>")),
                        None,
                    ),
                ],
            };
            Ok(Some(planned))
        })
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
            let api = self.clients.api(instance)?;
            let mut secrets: Vec<&str> = api.secrets().iter().map(|s| s.expose()).collect();
            secrets.extend(params.secrets().iter().map(|s| s.expose()));
            self.run_command(&api, &settings, command, &params, dry_run)
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

/// What a run holds for its life: its output sender and the observe loop's stop signal.
type Held = (mpsc::Sender<OutputLine>, oneshot::Sender<()>);

struct Inner {
    name: String,
    api: RestApi,
    settings: Settings,
    /// The endpoint's id, once resolved.
    endpoint_id: Mutex<Option<String>>,
    /// The connection facts, once fetched.
    connection: Mutex<Option<Connection>>,
    /// The last mapped state and the provider's words.
    last: Mutex<Option<(EndpointState, String)>>,
    /// Why the last start failed, when an operation failed.
    failure: Mutex<Option<String>>,
    logs: LogRing,
    /// The live run's output (a clone of what the run slot holds).
    output: Mutex<Option<mpsc::Sender<OutputLine>>>,
    live: RunSlot<Held>,
    sync: SyncRecord,
}

impl Inner {
    /// Every secret this resource knows (token, password, URL), for masking.
    fn secrets(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .api
            .secrets()
            .iter()
            .map(|s| s.expose().to_owned())
            .collect();
        if let Some(c) = lock(&self.connection).as_ref() {
            out.extend(c.url.iter().map(|u| u.expose().to_owned()));
            out.extend(c.fields.values().map(|v| v.expose().to_owned()));
        }
        out.retain(|s| !s.is_empty());
        out
    }

    fn mask(&self, text: &str) -> String {
        let secrets = self.secrets();
        let values: Vec<&str> = secrets.iter().map(String::as_str).collect();
        mask_text(text, &values)
    }

    fn line(&self, stream: LogStream, text: impl Into<String>) {
        let line = OutputLine {
            stream,
            text: self.mask(&text.into()),
        };
        self.logs.push(line.clone());
        if let Some(out) = lock(&self.output).as_ref() {
            let _ = out.try_send(line);
        }
    }

    /// [`RestApi::resource_error`] with every secret this resource knows masked.
    fn error(&self, op: &str, what: &str, error: &CallError) -> ResourceError {
        let masked = CallError {
            http: error.http.clone(),
            text: self.mask(&error.text),
        };
        match self.api.resource_error(op, what, &masked) {
            ResourceError::EngineUnavailable { engine, reason } => {
                ResourceError::EngineUnavailable {
                    engine,
                    reason: self.mask(&reason),
                }
            }
            other => other,
        }
    }

    async fn endpoint_id(&self) -> Result<String, ResourceError> {
        if let Some(id) = lock(&self.endpoint_id).clone() {
            return Ok(id);
        }
        let what = self.settings.endpoint_text();
        let id = resolve_endpoint(&self.api, &self.settings)
            .await
            .map_err(|e| match e {
                Resolve::Call(e) => self.error("find the endpoint", &what, &e),
                Resolve::Missing(m) => ResourceError::Invalid(m),
            })?;
        *lock(&self.endpoint_id) = Some(id.clone());
        Ok(id)
    }

    fn endpoint_path(&self, id: &str, action: &str) -> String {
        format!(
            "/projects/{}/endpoints/{}{action}",
            encode_segment(&self.settings.project_id),
            encode_segment(id)
        )
    }

    fn what(&self, id: &str) -> String {
        format!("endpoint `{id}` of project `{}`", self.settings.project_id)
    }

    /// Reads the endpoint and records what it says (sync facts, mapped state).
    async fn read(&self) -> Result<EndpointInfo, ResourceError> {
        let id = self.endpoint_id().await?;
        let answer: Result<EndpointAnswer, CallError> = self
            .api
            .call(Method::GET, &self.endpoint_path(&id, ""), &[], None)
            .await;
        match answer {
            Ok(answer) => {
                self.record(&answer.endpoint);
                Ok(answer.endpoint)
            }
            Err(error) => {
                self.sync.failed(self.mask(&error.text));
                Err(self.error("read the endpoint", &self.what(&id), &error))
            }
        }
    }

    /// Records an endpoint's state; unknown states keep the last one with a warning.
    fn record(&self, e: &EndpointInfo) -> Option<EndpointState> {
        let text = state_text(e);
        self.sync.ok(Some(text.clone()));
        let mapped = map_state(&e.current_state, e.pending_state.as_deref(), e.disabled);
        let mut last = lock(&self.last);
        match mapped {
            Some(state) => {
                let changed = last.as_ref().is_none_or(|(s, t)| *s != state || *t != text);
                *last = Some((state, text.clone()));
                drop(last);
                if changed {
                    self.line(
                        LogStream::System,
                        format!("Neon endpoint {}: {text} → {}", e.id, state.service_state()),
                    );
                }
                Some(state)
            }
            None => {
                let kept = last.as_ref().map(|(s, _)| *s);
                drop(last);
                warn!(resource = %self.name, state = %text, "Unknown Neon endpoint state; keeping the last state.");
                self.line(
                    LogStream::Stderr,
                    format!(
                        "warning: unknown Neon endpoint state `{text}`; keeping the last state"
                    ),
                );
                kept
            }
        }
    }

    /// Waits until the endpoint is `active` with nothing pending (bounded by the operation
    /// timeout).
    async fn wait_active(&self) -> Result<(), ResourceError> {
        let tracker = OperationTracker {
            backoff: Backoff {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(5),
            },
            timeout: self.settings.operation_timeout,
        };
        let outcome = tracker
            .track(|| async {
                match self.read().await {
                    Ok(e) => Ok(
                        match map_state(&e.current_state, e.pending_state.as_deref(), e.disabled) {
                            Some(EndpointState::Running) => OperationStatus::Done,
                            Some(EndpointState::Stopped) => {
                                OperationStatus::Failed("the endpoint is disabled".into())
                            }
                            _ => OperationStatus::Pending,
                        },
                    ),
                    Err(error) => Err(HttpError::Invalid {
                        url: String::new(),
                        reason: error.to_string(),
                    }),
                }
            })
            .await;
        match outcome {
            Ok(_) => Ok(()),
            Err(OperationError::Failed { reason }) => Err(ResourceError::Invalid(reason)),
            Err(OperationError::Poll(HttpError::Invalid { reason, .. })) => {
                Err(ResourceError::op("start", reason))
            }
            Err(other) => Err(ResourceError::op("start", other.to_string())),
        }
    }

    /// Applies `suspend_timeout` when it differs from the endpoint's.
    async fn apply_settings(&self, id: &str, current: &EndpointInfo) -> Result<(), ResourceError> {
        let Some(wanted) = self.settings.suspend_timeout else {
            return Ok(());
        };
        if current.suspend_timeout_seconds == Some(wanted) {
            return Ok(());
        }
        self.line(
            LogStream::System,
            format!("Setting suspend_timeout_seconds = {wanted} (PATCH endpoint {id})"),
        );
        let answer: EndpointAnswer = self
            .api
            .call(
                Method::PATCH,
                &self.endpoint_path(id, ""),
                &[],
                Some(json!({ "endpoint": { "suspend_timeout_seconds": wanted } })),
            )
            .await
            .map_err(|e| self.error("set suspend_timeout", &self.what(id), &e))?;
        self.api
            .track_all(
                &self.settings.project_id,
                &answer.operations,
                self.settings.operation_timeout,
            )
            .await
            .map_err(|reason| self.fail(reason))
    }

    /// An operation failed: remembered for status, permanent (Neon retried it already).
    fn fail(&self, reason: String) -> ResourceError {
        let reason = self.mask(&reason);
        self.line(LogStream::Stderr, reason.clone());
        *lock(&self.failure) = Some(reason.clone());
        ResourceError::Invalid(reason)
    }

    /// Fetches the connection URI and keeps its parts as the connection facts.
    async fn fetch_connection(&self, id: &str) -> Result<(), ResourceError> {
        #[derive(Deserialize)]
        struct Answer {
            uri: String,
        }
        let pooled = if self.settings.pooled {
            "true"
        } else {
            "false"
        };
        let answer: Answer = self
            .api
            .call(
                Method::GET,
                &format!(
                    "/projects/{}/connection_uri",
                    encode_segment(&self.settings.project_id)
                ),
                &[
                    ("endpoint_id", id),
                    ("database_name", &self.settings.database),
                    ("role_name", &self.settings.role),
                    ("pooled", pooled),
                ],
                None,
            )
            .await
            .map_err(|e| self.error("get the connection URI", &self.what(id), &e))?;
        let connection = parse_connection_uri(&answer.uri).ok_or_else(|| {
            ResourceError::op(
                "get the connection URI",
                "the answer is not a postgresql:// URI",
            )
        })?;
        *lock(&self.connection) = Some(connection);
        Ok(())
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = text.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A `postgresql://user:password@host[:port]/database?…` URI as connection facts (every part
/// a secret; `host` and `port` plain).
pub fn parse_connection_uri(uri: &str) -> Option<Connection> {
    let url = Url::parse(uri).ok()?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return None;
    }
    let host = url.host_str()?.to_owned();
    let port = url.port().unwrap_or(POSTGRES_PORT);
    let mut fields = BTreeMap::new();
    fields.insert(
        "database".to_owned(),
        Secret::new(percent_decode(url.path().trim_start_matches('/'))),
    );
    fields.insert(
        "user".to_owned(),
        Secret::new(percent_decode(url.username())),
    );
    fields.insert(
        "password".to_owned(),
        Secret::new(percent_decode(url.password().unwrap_or_default())),
    );
    Some(Connection {
        host,
        port: Some(port),
        url: Some(Secret::new(uri)),
        fields,
    })
}

/// A Neon compute endpoint (see the module docs).
pub struct NeonResource {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NeonResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NeonResource")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

impl Drop for NeonResource {
    /// A dropped resource stops observing (the run is lost track of, not ended).
    fn drop(&mut self) {
        self.inner.live.forget();
    }
}

impl NeonResource {
    /// The last mapped state and the provider's words for it.
    pub fn state(&self) -> Option<(EndpointState, String)> {
        lock(&self.inner.last).clone()
    }
}

/// Follows a run's observe loop: records each answer and ends the run when the endpoint went
/// idle (sleeping) or was disabled (stopped). Ends with the loop.
async fn watch_run(
    mut observed: watch::Receiver<ObservedStatus>,
    inner: Arc<Inner>,
    generation: u64,
) {
    while observed.changed().await.is_ok() {
        let status = observed.borrow_and_update().clone();
        let Some(last) = status.last_sync else {
            continue;
        };
        if !last.ok {
            inner.sync.set(
                LastSync {
                    at: last.at.clone(),
                    ok: false,
                    error: last.error.as_deref().map(|e| inner.mask(e)),
                },
                None,
            );
            continue;
        }
        let state = lock(&inner.last).as_ref().map(|(s, _)| *s);
        if matches!(
            state,
            Some(EndpointState::Sleeping | EndpointState::Stopped)
        ) {
            inner.live.end(
                Some(generation),
                ExitInfo {
                    code: Some(0),
                    signal: None,
                },
            );
            *lock(&inner.output) = None;
            return;
        }
    }
}

impl Resource for NeonResource {
    fn kind(&self) -> &'static str {
        "neon"
    }

    fn name(&self) -> &str {
        &self.inner.name
    }

    fn start(&self) -> BoxFuture<'_, Result<Run, ResourceError>> {
        Box::pin(async move {
            let inner = &self.inner;
            *lock(&inner.failure) = None;
            let id = inner.endpoint_id().await?;
            let current = inner.read().await?;
            inner.apply_settings(&id, &current).await?;
            let mapped = map_state(
                &current.current_state,
                current.pending_state.as_deref(),
                current.disabled,
            );
            let adopted = mapped == Some(EndpointState::Running);
            match mapped {
                Some(EndpointState::Stopped) => {
                    return Err(ResourceError::Invalid(format!(
                        "{} is disabled in Neon",
                        inner.what(&id)
                    )));
                }
                Some(EndpointState::Running) => {
                    inner.line(LogStream::System, format!("Neon endpoint {id} is active"));
                }
                _ => {
                    inner.line(
                        LogStream::System,
                        format!("Starting Neon endpoint {id} (POST …/endpoints/{id}/start)"),
                    );
                    let answer: EndpointAnswer = inner
                        .api
                        .call(Method::POST, &inner.endpoint_path(&id, "/start"), &[], None)
                        .await
                        .map_err(|e| inner.error("start", &inner.what(&id), &e))?;
                    inner.record(&answer.endpoint);
                    inner
                        .api
                        .track_all(
                            &inner.settings.project_id,
                            &answer.operations,
                            inner.settings.operation_timeout,
                        )
                        .await
                        .map_err(|reason| inner.fail(reason))?;
                    inner.wait_active().await?;
                }
            }
            inner.fetch_connection(&id).await?;
            let (out_tx, out_rx) = mpsc::channel(64);
            let (exit_tx, exit_rx) = oneshot::channel();
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let observer = inner.clone();
            let (observed, _loop) = observe::spawn(
                ObserveConfig::every(inner.settings.interval),
                move || {
                    let inner = observer.clone();
                    async move {
                        inner
                            .read()
                            .await
                            .map(|e| state_text(&e))
                            .map_err(|e| match e {
                                ResourceError::Operation { reason, .. } => {
                                    ObserveError::Failed(reason)
                                }
                                other => ObserveError::Failed(other.to_string()),
                            })
                    }
                },
                async move {
                    let _ = stop_rx.await;
                },
            );
            *lock(&inner.output) = Some(out_tx.clone());
            let generation = inner.live.begin(|_| (exit_tx, (out_tx, stop_tx)));
            tokio::spawn(watch_run(observed, inner.clone(), generation));
            inner.line(
                LogStream::System,
                format!(
                    "Following Neon endpoint {id} every {:?}",
                    inner.settings.interval
                ),
            );
            Ok(Run {
                id,
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
                let id = inner.endpoint_id().await?;
                let current = inner.read().await?;
                let mapped = map_state(
                    &current.current_state,
                    current.pending_state.as_deref(),
                    current.disabled,
                );
                if matches!(
                    mapped,
                    Some(EndpointState::Sleeping | EndpointState::Stopped)
                ) {
                    return Ok(());
                }
                inner.line(
                    LogStream::System,
                    format!("Suspending Neon endpoint {id} (POST …/endpoints/{id}/suspend)"),
                );
                let answer: EndpointAnswer = inner
                    .api
                    .call(
                        Method::POST,
                        &inner.endpoint_path(&id, "/suspend"),
                        &[],
                        None,
                    )
                    .await
                    .map_err(|e| inner.error("suspend", &inner.what(&id), &e))?;
                inner.record(&answer.endpoint);
                if let Err(reason) = inner
                    .api
                    .track_all(&inner.settings.project_id, &answer.operations, grace)
                    .await
                {
                    inner.line(LogStream::Stderr, reason);
                }
                Ok(())
            }
            .await;
            inner.live.end(
                None,
                ExitInfo {
                    code: Some(0),
                    signal: None,
                },
            );
            *lock(&inner.output) = None;
            result
        })
    }

    /// Lets go of the run and leaves the endpoint as it is (`on_down = "keep"`).
    fn release(&self, _grace: Duration) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            self.inner.live.end(
                None,
                ExitInfo {
                    code: Some(0),
                    signal: None,
                },
            );
            *lock(&self.inner.output) = None;
            Ok(())
        })
    }

    fn status(&self) -> BoxFuture<'_, Result<Observed, ResourceError>> {
        Box::pin(async move {
            let e = self.inner.read().await?;
            Ok(
                match map_state(&e.current_state, e.pending_state.as_deref(), e.disabled) {
                    Some(EndpointState::Sleeping | EndpointState::Stopped) => Observed::Idle,
                    Some(_) => Observed::Running,
                    None => match lock(&self.inner.last).as_ref().map(|(s, _)| *s) {
                        Some(EndpointState::Sleeping | EndpointState::Stopped) | None => {
                            Observed::Idle
                        }
                        Some(_) => Observed::Running,
                    },
                },
            )
        })
    }

    fn health(&self) -> BoxFuture<'_, Result<Health, ResourceError>> {
        Box::pin(async { Ok(Health::Unknown) })
    }

    fn connection(&self) -> Connection {
        lock(&self.inner.connection).clone().unwrap_or_default()
    }

    fn logs(&self, tail: usize) -> BoxFuture<'_, Result<Vec<OutputLine>, ResourceError>> {
        Box::pin(async move { Ok(self.inner.logs.tail(tail)) })
    }

    fn remove(&self, _volumes: bool) -> BoxFuture<'_, Result<(), ResourceError>> {
        // kinfra created nothing: the endpoint is the user's, never deleted here.
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
        let (state, text) = lock(&self.inner.last).clone()?;
        let message = match state {
            EndpointState::Running => format!("Neon: {text}"),
            EndpointState::Starting => format!("Neon: starting ({text})"),
            EndpointState::Stopping => format!("Neon: suspending ({text})"),
            EndpointState::Sleeping => {
                format!("Neon: {text} (suspended; the next connection wakes it)")
            }
            EndpointState::Stopped => format!("Neon: {text}"),
        };
        Some(ReportedState {
            state: state.service_state(),
            message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_map_as_designed() {
        use EndpointState::*;
        assert_eq!(map_state("init", None, false), Some(Starting));
        assert_eq!(map_state("idle", Some("active"), false), Some(Starting));
        assert_eq!(map_state("active", None, false), Some(Running));
        assert_eq!(map_state("active", Some("idle"), false), Some(Stopping));
        assert_eq!(map_state("idle", None, false), Some(Sleeping));
        assert_eq!(map_state("active", None, true), Some(Stopped));
        assert_eq!(map_state("resizing", None, false), Some(Starting));
        assert_eq!(map_state("quantum", None, false), None);
    }

    #[test]
    fn connection_uri_parts_are_secret_facts() {
        let c =
            parse_connection_uri("postgresql://alex:p%40ss@ep-x.neon.tech/neondb?sslmode=require")
                .expect("parsed");
        assert_eq!(c.host, "ep-x.neon.tech");
        assert_eq!(c.port, Some(5432));
        assert_eq!(c.field("password").as_deref(), Some("p@ss"));
        assert_eq!(c.field("user").as_deref(), Some("alex"));
        assert_eq!(c.field("database").as_deref(), Some("neondb"));
        assert!(
            c.field("url")
                .is_some_and(|u| u.starts_with("postgresql://"))
        );
        assert!(!format!("{c:?}").contains("p%40ss"));
        assert_eq!(parse_connection_uri("https://x/y"), None);
    }

    #[test]
    fn settings_name_every_problem() {
        let Value::Object(config) = json!({
            "project_id": "Bad_Id",
            "suspend_timeout": "5s",
        }) else {
            panic!("object")
        };
        let problems: Vec<String> = Settings::parse(&config)
            .expect_err("invalid")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            problems.iter().any(|p| p.starts_with("`project_id`")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.starts_with("`endpoint_id`")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.starts_with("`suspend_timeout`")),
            "{problems:?}"
        );
    }
}
