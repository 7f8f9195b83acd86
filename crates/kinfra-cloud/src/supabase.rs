//! The `supabase` provider: a Supabase project (`project_ref`) as a resource, through the
//! Management API (`https://api.supabase.com`, bearer token).
//!
//! Starting a resource resumes the project (`POST /v1/projects/{ref}/restore` when it is
//! paused) and stopping it pauses it (`POST /v1/projects/{ref}/pause`). Both take minutes in
//! real life, so neither blocks: the restore or pause is an operation the resource tracks,
//! with its progress in the status message, while `GET /v1/projects/{ref}` is read every
//! `interval`. The project's `status` maps to kinfra's states (DESIGN's table):
//! `COMING_UP RESTORING RESTARTING` starting, `ACTIVE_HEALTHY` running,
//! `ACTIVE_UNHEALTHY` running and unhealthy, `PAUSING GOING_DOWN` stopping, `INACTIVE` stopped,
//! `INIT_FAILED RESTORE_FAILED PAUSE_FAILED` failed, `UPGRADING RESIZING` maintenance and
//! `REMOVED` absent; any other value keeps the last state with a warning. Health comes from
//! `GET /v1/projects/{ref}/health` (db, auth, rest, storage), naming the unhealthy services.
//!
//! Connection facts (secrets): the direct database URL (the project's `database.host`, port
//! 5432, user and database `postgres`) and the pooler's (`connection_string` of
//! `GET /v1/projects/{ref}/config/database/pooler`), with the resource's `db_password` put in:
//! the Management API never hands out the database password.
//!
//! Commands: `list-branches`, `create-branch {name}`, `delete-branch {id}` (needs
//! confirmation) and `cancel-restore`, each with a dry-run.

use kinfra_core::Secret;
use kinfra_core::event::ExitInfo;
use kinfra_core::resource::{
    BoxFuture, Connection, Observed, OutputLine, ReportedState, Resource, ResourceError, Run,
    SyncFacts,
};
use kinfra_core::state::{Health, ServiceState};
use kinfra_core::status::{LastSync, LogStream};
use kinfra_provider::command::{CommandSpec, ParamKind, ParamSpec, ValidatedParams};
use kinfra_provider::http::{HttpConfig, HttpError, HttpRequest, Method};
use kinfra_provider::metadata::{
    AuthMethod, Capability, Category, ConfigKeySpec, ConfigKind, ProviderMetadata, ResourceTypeSpec,
};
use kinfra_provider::observe::{self, ObserveConfig, ObserveError, ObservedStatus};
use kinfra_provider::operation::{OperationStatus, OperationTracker, elapsed_text};
use kinfra_provider::provider::{
    InstanceContext, KINFRA_KEYS, Provider, ProviderError, ResourceDecl, ResourceProblem,
    config_duration_or, config_problems,
};
use kinfra_provider::rest::{CallError, RestApi, RestClients, TokenNeed, encode_segment};
use kinfra_provider::result::{CommandResult, PlannedRequest, mask_text};
use kinfra_provider::retry::{Backoff, RetryPolicy};
use kinfra_provider::run_slot::{LogRing, lock};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::warn;

/// The provider's id.
pub const ID: &str = "supabase";
/// The one resource type it runs.
pub const RESOURCE_TYPE: &str = "project";
/// The Management API.
pub const DEFAULT_BASE_URL: &str = "https://api.supabase.com";
/// The observe interval when the resource sets none.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// The longest a restore or a pause may take before the resource calls it failed.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// The services whose health is read.
pub const HEALTH_SERVICES: &[&str] = &["db", "auth", "rest", "storage"];
/// What Supabase puts in a pooler connection string where the password goes.
const PASSWORD_PLACEHOLDER: &str = "[YOUR-PASSWORD]";
/// Output lines kept for [`Resource::logs`].
const LOG_LINES: usize = 500;

/// What a project `status` means in kinfra's state model (DESIGN's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectState {
    /// COMING_UP, RESTORING, RESTARTING (and other `…ING` values going up).
    Starting,
    /// ACTIVE_HEALTHY (`healthy`) or ACTIVE_UNHEALTHY.
    Running {
        /// False for ACTIVE_UNHEALTHY.
        healthy: bool,
    },
    /// PAUSING, GOING_DOWN.
    Stopping,
    /// INACTIVE: paused.
    Stopped,
    /// INIT_FAILED, RESTORE_FAILED, PAUSE_FAILED.
    Failed,
    /// UPGRADING, RESIZING: up, under the provider's maintenance.
    Maintenance,
    /// REMOVED: the project is gone.
    Absent,
}

/// Maps a project's `status`; `None` for a value that says nothing known (kept as the last
/// state, with a warning).
pub fn map_status(status: &str) -> Option<ProjectState> {
    Some(match status {
        "COMING_UP" | "RESTORING" | "RESTARTING" => ProjectState::Starting,
        "ACTIVE_HEALTHY" => ProjectState::Running { healthy: true },
        "ACTIVE_UNHEALTHY" => ProjectState::Running { healthy: false },
        "PAUSING" | "GOING_DOWN" => ProjectState::Stopping,
        "INACTIVE" => ProjectState::Stopped,
        "INIT_FAILED" | "RESTORE_FAILED" | "PAUSE_FAILED" => ProjectState::Failed,
        "UPGRADING" | "RESIZING" => ProjectState::Maintenance,
        "REMOVED" => ProjectState::Absent,
        other if other.ends_with("ING") => {
            let down = ["PAUS", "STOP", "DOWN", "SHUT", "DELET", "REMOV", "SUSPEND"];
            if down.iter().any(|d| other.contains(d)) {
                ProjectState::Stopping
            } else {
                ProjectState::Starting
            }
        }
        _ => return None,
    })
}

/// Why a failed status is failed, in words.
fn failure_text(status: &str, project: &str) -> String {
    match status {
        "RESTORE_FAILED" => format!("RESTORE_FAILED: restoring project `{project}` failed"),
        "PAUSE_FAILED" => format!("PAUSE_FAILED: pausing project `{project}` failed"),
        "INIT_FAILED" => format!("INIT_FAILED: project `{project}` failed to initialise"),
        other => format!("{other}: project `{project}` failed"),
    }
}

/// A project ref is 20 lower-case letters (the spec's pattern).
pub fn valid_ref(text: &str) -> bool {
    text.len() == 20 && text.bytes().all(|b| b.is_ascii_lowercase())
}

/// `"1m 20s"`-style text of a duration, whole seconds.
/// A resource's own keys, parsed.
#[derive(Debug, Clone)]
struct ProjectSpec {
    project_ref: String,
    db_password: Option<Secret>,
    interval: Duration,
    operation_timeout: Duration,
}

impl ProjectSpec {
    fn parse(config: &Map<String, Value>) -> Result<Self, Vec<ResourceProblem>> {
        let mut problems = Vec::new();
        let project_ref = match config.get("project_ref") {
            Some(Value::String(r)) if valid_ref(r) => r.clone(),
            Some(Value::String(r)) => {
                problems.push(ResourceProblem::at(
                    "project_ref",
                    format!("`{r}` is not a Supabase project ref (20 lower-case letters)"),
                ));
                String::new()
            }
            Some(_) => {
                problems.push(ResourceProblem::at("project_ref", "expected a string"));
                String::new()
            }
            None => {
                problems.push(ResourceProblem::at("project_ref", "missing (required)"));
                String::new()
            }
        };
        let db_password = match config.get("db_password") {
            None => None,
            Some(Value::String(p)) => Some(Secret::new(p.clone())),
            Some(_) => {
                problems.push(ResourceProblem::at(
                    "db_password",
                    "expected a string (secret)",
                ));
                None
            }
        };
        let interval = config_duration_or(config, "interval", DEFAULT_INTERVAL, &mut problems);
        let operation_timeout = config_duration_or(
            config,
            "operation_timeout",
            DEFAULT_OPERATION_TIMEOUT,
            &mut problems,
        );
        if problems.is_empty() {
            Ok(Self {
                project_ref,
                db_password,
                interval,
                operation_timeout,
            })
        } else {
            Err(problems)
        }
    }
}

/// The commands every project offers.
fn command_specs() -> Vec<CommandSpec> {
    let command = |id: &str, description: &str| {
        CommandSpec::new(id, id, description)
            .in_category("database")
            .for_resource_type(RESOURCE_TYPE)
            .with_dry_run()
    };
    let string =
        |name: &str, description: &str| ParamSpec::required(name, ParamKind::String, description);
    vec![
        command(
            "list-branches",
            "Lists the project's database branches (GET /v1/projects/{ref}/branches).",
        ),
        command(
            "create-branch",
            "Creates a database branch (POST /v1/projects/{ref}/branches).",
        )
        .with_params(vec![string("name", "The branch's name.")]),
        command(
            "delete-branch",
            "Deletes a database branch (DELETE /v1/branches/{id}); needs confirmation.",
        )
        .with_params(vec![string(
            "id",
            "The branch's id or ref (from list-branches).",
        )])
        .needs_confirmation(),
        command(
            "cancel-restore",
            "Cancels the project's restoration in progress (POST /v1/projects/{ref}/restore/cancel).",
        ),
    ]
}

fn metadata() -> ProviderMetadata {
    ProviderMetadata {
        id: ID.into(),
        name: ID.into(),
        display_name: "Supabase".into(),
        description: "Supabase projects through the Management API: restore and pause \
                      (tracked to completion), status and service health, the database's \
                      direct and pooler URLs as secrets, database branches."
            .into(),
        version: env!("CARGO_PKG_VERSION").into(),
        category: Category::Database,
        capabilities: vec![Capability::Monitor, Capability::Restore, Capability::DryRun],
        resource_types: vec![ResourceTypeSpec {
            name: RESOURCE_TYPE.into(),
            description: "A Supabase project: runs while ACTIVE_HEALTHY, paused when stopped."
                .into(),
            config: vec![
                ConfigKeySpec::required(
                    "project_ref",
                    ConfigKind::String,
                    "The project's ref (20 lower-case letters).",
                ),
                ConfigKeySpec::optional(
                    "db_password",
                    ConfigKind::Secret,
                    "The database password, put into the connection URLs (the API never returns it).",
                ),
                ConfigKeySpec::optional(
                    "operation_timeout",
                    ConfigKind::Duration,
                    "How long a restore or pause may take before it counts as failed (default 20m).",
                ),
            ],
        }],
        auth_methods: vec![AuthMethod::Bearer],
    }
}

/// The `supabase` provider.
pub struct SupabaseProvider {
    metadata: ProviderMetadata,
    commands: Vec<CommandSpec>,
    clients: RestClients,
}

impl std::fmt::Debug for SupabaseProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupabaseProvider").finish_non_exhaustive()
    }
}

impl Default for SupabaseProvider {
    fn default() -> Self {
        Self::new()
    }
}

/// The `supabase` provider with the default HTTP timeouts.
pub fn provider() -> Arc<dyn Provider> {
    Arc::new(SupabaseProvider::new())
}

impl SupabaseProvider {
    /// The provider with the default HTTP timeouts.
    pub fn new() -> Self {
        Self::with_http_config(HttpConfig::default())
    }

    /// The provider with `config`'s HTTP timeouts.
    pub fn with_http_config(config: HttpConfig) -> Self {
        Self {
            metadata: metadata(),
            commands: command_specs(),
            clients: RestClients::new(
                "the Supabase API",
                Some(DEFAULT_BASE_URL),
                TokenNeed::Required("a Supabase access token"),
            )
            .with_http_config(config),
        }
    }

    /// The retry policy of restore, pause and commands (the observe loop has its own backoff).
    pub fn with_retry(self, retry: RetryPolicy) -> Self {
        Self {
            clients: self.clients.with_retry(retry),
            ..self
        }
    }

    /// The [`SupabaseResource`] for `decl` (the concrete type behind [`Provider::resource`]).
    pub fn project_resource(
        &self,
        instance: &InstanceContext,
        decl: &ResourceDecl,
    ) -> Result<SupabaseResource, ProviderError> {
        let spec = decl.parse_config(ProjectSpec::parse)?;
        let api = self.clients.api(instance)?;
        Ok(SupabaseResource {
            inner: Arc::new(Inner {
                name: decl.name.clone(),
                spec,
                api,
                view: Mutex::new(View::default()),
                logs: LogRing::new(LOG_LINES),
                live: Mutex::new(None),
                observed: Mutex::new(None),
                runs: AtomicU64::new(0),
            }),
        })
    }
}

impl Provider for SupabaseProvider {
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
                ProjectSpec::parse,
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
        Ok(Box::new(self.project_resource(instance, decl)?))
    }

    /// The start's request: `POST /v1/projects/{ref}/restore` (sent by the resource only when
    /// the project is paused; plan asks for it when status says so).
    fn planned_start<'a>(
        &'a self,
        instance: &'a InstanceContext,
        decl: &'a ResourceDecl,
    ) -> BoxFuture<'a, Result<Option<Vec<PlannedRequest>>, ProviderError>> {
        Box::pin(async move {
            let spec = decl.parse_config(ProjectSpec::parse)?;
            let api = self.clients.api(instance)?;
            let request = api
                .request(
                    Method::POST,
                    &format!("/v1/projects/{}/restore", spec.project_ref),
                    &[],
                    None,
                )
                .map_err(|e| ProviderError::Command {
                    command: "start".into(),
                    reason: e.text,
                })?;
            Ok(Some(vec![request.planned()]))
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
            let spec = resource.parse_config(ProjectSpec::parse)?;
            let api = self.clients.api(instance)?;
            let mut secrets = api.secrets();
            secrets.extend(params.secrets());
            secrets.extend(spec.db_password.iter());
            let values: Vec<&str> = secrets.iter().map(|s| s.expose()).collect();
            let failed = |reason: String| ProviderError::Command {
                command: command.id.clone(),
                reason: mask_text(&reason, &values),
            };
            let project = &spec.project_ref;
            let request = match command.id.as_str() {
                "list-branches" => api.request(
                    Method::GET,
                    &format!("/v1/projects/{project}/branches"),
                    &[],
                    None,
                ),
                "create-branch" => {
                    let name = params.str("name").unwrap_or_default();
                    api.request(
                        Method::POST,
                        &format!("/v1/projects/{project}/branches"),
                        &[],
                        Some(json!({ "branch_name": name })),
                    )
                }
                "delete-branch" => {
                    let id = params.str("id").unwrap_or_default();
                    api.request(
                        Method::DELETE,
                        &format!("/v1/branches/{}", encode_segment(id)),
                        &[],
                        None,
                    )
                }
                "cancel-restore" => api.request(
                    Method::POST,
                    &format!("/v1/projects/{project}/restore/cancel"),
                    &[],
                    None,
                ),
                other => {
                    return Err(ProviderError::unknown_command(ID, other));
                }
            }
            .map_err(|e| failed(e.to_string()))?;
            if dry_run {
                return Ok(CommandResult::planned(&[request.planned()], &secrets));
            }
            let response = api
                .send(&request)
                .await
                .map_err(|e| failed(e.to_string()))?;
            Ok(CommandResult::ok(response.data()).mask(&secrets))
        })
    }
}

/// An operation the resource started and follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    /// A restore: sent at `since`, or (`sent == false`) waiting for a pause to end first.
    Restore { since: Instant, sent: bool },
    /// A pause sent at `since`.
    Pause { since: Instant },
}

/// The pooler's connection facts.
#[derive(Debug, Clone)]
struct Pooler {
    host: String,
    port: u16,
    user: String,
    database: String,
    url: String,
}

/// What the resource knows of its project (answers `reported_state`, `health`, `connection`
/// without I/O).
#[derive(Debug, Default)]
struct View {
    /// The last `status` the API gave.
    status: Option<String>,
    /// What the last known status meant (unknown values keep it).
    state: Option<ProjectState>,
    /// The services that were not healthy at the last health read.
    unhealthy: Vec<String>,
    /// Whether the last health read answered.
    health_read: bool,
    /// Whether the connection facts of a running project were read (the pooler, or its read
    /// failed): until then it is not called running or healthy, so a dependent never starts
    /// with facts still missing (`${resources.db.pooler_url}`).
    facts_read: bool,
    /// The operation in flight.
    operation: Option<Operation>,
    /// Why the project failed (a failed status, a refused token, a timeout).
    failure: Option<String>,
    /// The project's `database.host`.
    db_host: Option<String>,
    /// The pooler, once read.
    pooler: Option<Pooler>,
}

/// A live run.
struct Live {
    generation: u64,
    exit: Option<oneshot::Sender<ExitInfo>>,
    output: mpsc::Sender<OutputLine>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

struct Inner {
    name: String,
    spec: ProjectSpec,
    api: RestApi,
    view: Mutex<View>,
    logs: LogRing,
    live: Mutex<Option<Live>>,
    observed: Mutex<Option<watch::Receiver<ObservedStatus>>>,
    runs: AtomicU64,
}

/// The project as `GET /v1/projects/{ref}` gives it (the parts used).
#[derive(Debug, Clone)]
struct ProjectAnswer {
    status: String,
    db_host: Option<String>,
}

impl Inner {
    fn secret_values(&self) -> Vec<&str> {
        let mut values: Vec<&str> = self.api.secrets().iter().map(|s| s.expose()).collect();
        if let Some(p) = &self.spec.db_password {
            values.push(p.expose());
        }
        values
    }

    fn mask(&self, text: &str) -> String {
        mask_text(text, &self.secret_values())
    }

    fn line(&self, stream: LogStream, text: String) {
        let line = OutputLine {
            stream,
            text: self.mask(&text),
        };
        self.logs.push(line.clone());
        if let Some(live) = lock(&self.live).as_ref()
            && live.exit.is_some()
        {
            let _ = live.output.try_send(line);
        }
    }

    /// A request to `path` (the project's API).
    fn request(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<HttpRequest, HttpError> {
        self.api
            .request(method, path, query, None)
            .map_err(|e| e.http)
    }

    fn project_path(&self) -> String {
        format!("/v1/projects/{}", self.spec.project_ref)
    }

    /// A failed call as the resource's error ([`RestApi::resource_error`], every secret this
    /// resource knows masked): a refused token and an unknown project are permanent (retrying
    /// gives the same answer), an unreachable API is the engine missing.
    fn error(&self, what: &str, error: &HttpError) -> ResourceError {
        let call = CallError {
            http: error.clone(),
            text: self.mask(&error.to_string()),
        };
        let project = format!(
            "Supabase project `{}` (provider instance `{}`)",
            self.spec.project_ref,
            self.api.instance()
        );
        match self.api.resource_error(what, &project, &call) {
            ResourceError::EngineUnavailable { engine, reason } => {
                ResourceError::EngineUnavailable {
                    engine,
                    reason: self.mask(&reason),
                }
            }
            other => other,
        }
    }

    /// One GET of the project.
    async fn fetch_project(&self) -> Result<ProjectAnswer, HttpError> {
        self.read_project(false).await
    }

    /// One GET of the project; with `retry`, rate limits (their `Retry-After`) and transient
    /// failures are retried within the provider's policy (a start is not failed by a 429).
    async fn read_project(&self, retry: bool) -> Result<ProjectAnswer, HttpError> {
        let request = self.request(Method::GET, &self.project_path(), &[])?;
        let response = if retry {
            self.api.send(&request).await
        } else {
            self.api.send_once(&request).await
        }
        .map_err(|e| e.http)?;
        let answer: Value = response.json()?;
        let status = answer
            .get("status")
            .and_then(Value::as_str)
            .ok_or_else(|| HttpError::Decode {
                url: response.url.clone(),
                reason: "no `status` (a string) in the project".into(),
            })?
            .to_owned();
        let db_host = answer
            .pointer("/database/host")
            .and_then(Value::as_str)
            .map(str::to_owned);
        Ok(ProjectAnswer { status, db_host })
    }

    /// One read of the services' health: the names of those not healthy.
    async fn fetch_health(&self) -> Result<Vec<String>, HttpError> {
        let services: Vec<(&str, &str)> =
            HEALTH_SERVICES.iter().map(|s| ("services", *s)).collect();
        let request = self.request(
            Method::GET,
            &format!("{}/health", self.project_path()),
            &services,
        )?;
        let response = self.api.send_once(&request).await.map_err(|e| e.http)?;
        let answer: Vec<Value> = response.json()?;
        Ok(answer
            .iter()
            .filter(|s| s.get("status").and_then(Value::as_str) != Some("ACTIVE_HEALTHY"))
            .map(|s| {
                let name = s.get("name").and_then(Value::as_str).unwrap_or("?");
                match s.get("error").and_then(Value::as_str) {
                    Some(e) if !e.is_empty() => format!("{name} ({e})"),
                    _ => name.to_owned(),
                }
            })
            .collect())
    }

    /// One read of the pooler's config (the primary database's).
    async fn fetch_pooler(&self) -> Result<Option<Pooler>, HttpError> {
        let request = self.request(
            Method::GET,
            &format!("{}/config/database/pooler", self.project_path()),
            &[],
        )?;
        let response = self.api.send_once(&request).await.map_err(|e| e.http)?;
        let answer: Vec<Value> = response.json()?;
        let primary = answer
            .iter()
            .find(|p| p.get("database_type").and_then(Value::as_str) == Some("PRIMARY"))
            .or_else(|| answer.first());
        Ok(primary.and_then(|p| {
            let text = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_owned);
            Some(Pooler {
                host: text("db_host")?,
                port: p
                    .get("db_port")
                    .and_then(Value::as_u64)
                    .and_then(|n| u16::try_from(n).ok())?,
                user: text("db_user")?,
                database: text("db_name")?,
                url: text("connection_string")?,
            })
        }))
    }

    /// Sends `method path` with the provider's retries.
    async fn call(&self, what: &str, method: Method, path: &str) -> Result<(), ResourceError> {
        let request = self
            .request(method, path, &[])
            .map_err(|e| self.error(what, &e))?;
        self.line(
            LogStream::System,
            format!("{what}: {} {}", request.method, request.redacted_url()),
        );
        self.api
            .send(&request)
            .await
            .map_err(|e| self.error(what, &e.http))?;
        Ok(())
    }

    /// Records a project answer; returns what its status means (the last state for an unknown
    /// one, which also logs a warning).
    fn record(&self, answer: &ProjectAnswer) -> Option<ProjectState> {
        let mapped = map_status(&answer.status);
        let mut view = lock(&self.view);
        let changed = view.status.as_deref() != Some(answer.status.as_str());
        view.status = Some(answer.status.clone());
        if answer.db_host.is_some() {
            view.db_host = answer.db_host.clone();
        }
        match mapped {
            Some(state) => {
                view.state = Some(state);
                if !matches!(state, ProjectState::Running { .. }) {
                    view.health_read = false;
                    view.unhealthy.clear();
                }
                drop(view);
                if changed {
                    self.line(
                        LogStream::System,
                        format!("project status {}", answer.status),
                    );
                }
                Some(state)
            }
            None => {
                let kept = view.state;
                view.health_read = false;
                drop(view);
                if changed {
                    warn!(resource = %self.name, status = %answer.status, "Unknown Supabase project status; keeping the last state.");
                    self.line(
                        LogStream::Stderr,
                        format!(
                            "warning: unknown project status `{}`; keeping the last state",
                            answer.status
                        ),
                    );
                }
                kept
            }
        }
    }

    /// One observe of a live run: reads the project (and its health and pooler once up),
    /// moves the operation along and ends the run when the project is paused, failed or gone.
    async fn observe_once(self: &Arc<Self>, generation: u64) -> Result<String, ObserveError> {
        let answer = match self.fetch_project().await {
            Ok(a) => a,
            Err(error) => {
                if matches!(
                    error,
                    HttpError::Status {
                        code: 401 | 403 | 404,
                        ..
                    }
                ) {
                    let failure = self.error("observe", &error).to_string();
                    lock(&self.view).failure = Some(failure.clone());
                    self.line(LogStream::Stderr, failure);
                    self.end_run(generation, 1);
                }
                return Err(ObserveError::from(error));
            }
        };
        // Act on what this answer says; an unknown status changes nothing (its state is kept).
        let state = self
            .record(&answer)
            .filter(|_| map_status(&answer.status).is_some());
        let operation = lock(&self.view).operation;
        match state {
            Some(ProjectState::Running { .. }) => {
                if matches!(operation, Some(Operation::Restore { .. })) {
                    lock(&self.view).operation = None;
                    self.line(LogStream::System, "restore finished".into());
                }
                match self.fetch_health().await {
                    Ok(unhealthy) => {
                        let mut view = lock(&self.view);
                        view.unhealthy = unhealthy;
                        view.health_read = true;
                    }
                    Err(error) => {
                        lock(&self.view).health_read = false;
                        self.line(LogStream::Stderr, format!("health check failed: {error}"));
                    }
                }
                if lock(&self.view).pooler.is_none() {
                    match self.fetch_pooler().await {
                        Ok(pooler) => lock(&self.view).pooler = pooler,
                        Err(error) => self.line(
                            LogStream::Stderr,
                            format!("reading the pooler's config failed: {error}"),
                        ),
                    }
                }
                lock(&self.view).facts_read = true;
            }
            Some(ProjectState::Stopped) => match operation {
                Some(Operation::Restore { sent: false, .. }) => {
                    // The pause that was under way has ended: restore now.
                    match self
                        .call(
                            "restore",
                            Method::POST,
                            &format!("{}/restore", self.project_path()),
                        )
                        .await
                    {
                        Ok(()) => {
                            lock(&self.view).operation = Some(Operation::Restore {
                                since: Instant::now(),
                                sent: true,
                            })
                        }
                        Err(error) => self.line(LogStream::Stderr, error.to_string()),
                    }
                }
                Some(Operation::Restore { .. }) => {
                    // The API may still say INACTIVE right after the restore was sent.
                }
                _ => self.end_run(generation, 0),
            },
            Some(ProjectState::Failed) => {
                let failure = failure_text(&answer.status, &self.spec.project_ref);
                {
                    let mut view = lock(&self.view);
                    view.failure = Some(failure.clone());
                    view.operation = None;
                }
                self.line(LogStream::Stderr, failure);
                self.end_run(generation, 1);
            }
            Some(ProjectState::Absent) => {
                let failure = format!(
                    "REMOVED: Supabase project `{}` was removed",
                    self.spec.project_ref
                );
                lock(&self.view).failure = Some(failure.clone());
                self.line(LogStream::Stderr, failure);
                self.end_run(generation, 1);
            }
            _ => {}
        }
        // A restore that takes too long fails the run. (The view's lock is let go before the
        // body takes it again: an `if let` on the guard would hold it through the body.)
        let restoring_since = match lock(&self.view).operation {
            Some(Operation::Restore { since, .. }) => Some(since),
            _ => None,
        };
        if let Some(since) = restoring_since
            && since.elapsed() > self.spec.operation_timeout
        {
            let failure = format!(
                "the restore of project `{}` did not finish within {} (status {})",
                self.spec.project_ref,
                elapsed_text(self.spec.operation_timeout),
                answer.status
            );
            {
                let mut view = lock(&self.view);
                view.failure = Some(failure.clone());
                view.operation = None;
            }
            self.line(LogStream::Stderr, failure);
            self.end_run(generation, 1);
        }
        Ok(answer.status)
    }

    /// Ends run `generation` (if it is still the live one) with exit `code`.
    fn end_run(&self, generation: u64, code: i32) {
        let mut live = lock(&self.live);
        if let Some(l) = live.as_mut()
            && l.generation == generation
            && let Some(exit) = l.exit.take()
        {
            let _ = exit.send(ExitInfo {
                code: Some(code),
                signal: None,
            });
            let _ = l.stop.send(true);
        }
    }

    fn live_generation(&self) -> Option<u64> {
        lock(&self.live)
            .as_ref()
            .filter(|l| l.exit.is_some())
            .map(|l| l.generation)
    }

    /// Begins a run and its observe loop.
    fn begin_run(self: &Arc<Self>, adopted: bool) -> Run {
        let generation = self.runs.fetch_add(1, Ordering::Relaxed) + 1;
        let (out_tx, out_rx) = mpsc::channel(256);
        let (exit_tx, exit_rx) = oneshot::channel();
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let observe_fn = {
            let inner = self.clone();
            move || {
                let inner = inner.clone();
                async move { inner.observe_once(generation).await }
            }
        };
        let stop = async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        };
        let (observed, task) =
            observe::spawn(ObserveConfig::every(self.spec.interval), observe_fn, stop);
        *lock(&self.observed) = Some(observed);
        let previous = lock(&self.live).replace(Live {
            generation,
            exit: Some(exit_tx),
            output: out_tx,
            stop: stop_tx,
            task: Some(task),
        });
        if let Some(mut old) = previous {
            let _ = old.stop.send(true);
            if let Some(task) = old.task.take() {
                task.abort();
            }
        }
        Run {
            id: format!("{}#{generation}", self.spec.project_ref),
            pid: None,
            adopted,
            output: out_rx,
            exit: exit_rx,
        }
    }

    /// Follows a pause to its end (INACTIVE) in the background; the handle ends with it.
    fn track_pause(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let inner = self.clone();
        tokio::spawn(async move {
            let tracker = OperationTracker {
                backoff: Backoff {
                    initial: (inner.spec.interval / 4).min(Duration::from_secs(1)),
                    max: inner.spec.interval,
                },
                timeout: inner.spec.operation_timeout,
            };
            let poll = || {
                let inner = inner.clone();
                async move {
                    let answer = inner.fetch_project().await?;
                    Ok(match inner.record(&answer) {
                        Some(ProjectState::Stopped) => OperationStatus::Done,
                        Some(ProjectState::Failed) => OperationStatus::Failed(failure_text(
                            &answer.status,
                            &inner.spec.project_ref,
                        )),
                        Some(ProjectState::Absent) => {
                            OperationStatus::Failed("REMOVED: the project was removed".into())
                        }
                        _ => OperationStatus::Pending,
                    })
                }
            };
            let outcome = tracker.track(poll).await;
            let mut view = lock(&inner.view);
            if matches!(view.operation, Some(Operation::Pause { .. })) {
                view.operation = None;
            }
            drop(view);
            match outcome {
                Ok(_) => inner.line(LogStream::System, "pause finished".into()),
                Err(error) => {
                    let text = inner.mask(&format!("pause: {error}"));
                    lock(&inner.view).failure = Some(text.clone());
                    inner.line(LogStream::Stderr, text);
                }
            }
        })
    }

    /// The direct database URL (`postgresql://postgres[:pw]@host:5432/postgres`).
    fn direct_url(&self, host: &str) -> String {
        match &self.spec.db_password {
            Some(pw) => format!(
                "postgresql://postgres:{}@{host}:5432/postgres",
                encode_segment(pw.expose())
            ),
            None => format!("postgresql://postgres@{host}:5432/postgres"),
        }
    }
}

/// A resource of the `supabase` provider (see the module docs).
pub struct SupabaseResource {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SupabaseResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupabaseResource")
            .field("name", &self.inner.name)
            .field("project_ref", &self.inner.spec.project_ref)
            .finish_non_exhaustive()
    }
}

impl Drop for SupabaseResource {
    fn drop(&mut self) {
        // The observe loop holds the resource's state: it must not outlive it.
        if let Some(mut live) = lock(&self.inner.live).take()
            && let Some(task) = live.task.take()
        {
            task.abort();
        }
    }
}

impl SupabaseResource {
    /// The project's last status as the API gave it.
    pub fn provider_status(&self) -> Option<String> {
        lock(&self.inner.view).status.clone()
    }

    /// The project ref.
    pub fn project_ref(&self) -> &str {
        &self.inner.spec.project_ref
    }
}

impl Resource for SupabaseResource {
    fn kind(&self) -> &'static str {
        "supabase"
    }

    fn name(&self) -> &str {
        &self.inner.name
    }

    /// Resumes the project: reads it once (a refused token, an unknown project or an
    /// unreachable API fail here), sends the restore when it is paused (or schedules it
    /// after a pause under way), and returns at once; the observe loop follows the restore.
    fn start(&self) -> BoxFuture<'_, Result<Run, ResourceError>> {
        Box::pin(async move {
            let inner = &self.inner;
            if inner.live_generation().is_some() {
                // A live run: the supervisor gets a fresh handle on a new generation.
                return Ok(inner.begin_run(true));
            }
            lock(&inner.view).failure = None;
            let answer = inner
                .read_project(true)
                .await
                .map_err(|e| inner.error("start", &e))?;
            let state = inner.record(&answer);
            let project = &inner.spec.project_ref;
            let adopted = match state {
                Some(ProjectState::Stopped) | Some(ProjectState::Failed)
                    if answer.status != "INIT_FAILED" =>
                {
                    inner
                        .call(
                            "restore",
                            Method::POST,
                            &format!("{}/restore", inner.project_path()),
                        )
                        .await?;
                    lock(&inner.view).operation = Some(Operation::Restore {
                        since: Instant::now(),
                        sent: true,
                    });
                    false
                }
                Some(ProjectState::Stopping) => {
                    inner.line(
                        LogStream::System,
                        format!("project is {}: restoring once it is paused", answer.status),
                    );
                    lock(&inner.view).operation = Some(Operation::Restore {
                        since: Instant::now(),
                        sent: false,
                    });
                    false
                }
                Some(ProjectState::Failed) => {
                    return Err(ResourceError::Invalid(failure_text(
                        &answer.status,
                        project,
                    )));
                }
                Some(ProjectState::Absent) => {
                    return Err(ResourceError::Invalid(format!(
                        "REMOVED: Supabase project `{project}` was removed"
                    )));
                }
                _ => true,
            };
            Ok(inner.begin_run(adopted))
        })
    }

    /// Pauses the project: sends the pause (unless it is paused or pausing already), follows
    /// it in the background and waits for it up to `grace`; the run ends either way.
    fn stop(&self, grace: Duration) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let (state, status) = {
                let view = lock(&inner.view);
                (view.state, view.status.clone())
            };
            let failed_for_good =
                matches!(state, Some(ProjectState::Failed | ProjectState::Absent))
                    && status.as_deref() != Some("PAUSE_FAILED");
            if failed_for_good {
                // Nothing runs to pause (a failed restore, a removed project).
                if let Some(generation) = inner.live_generation() {
                    inner.end_run(generation, 1);
                }
                return Ok(());
            }
            let sent = match state {
                Some(ProjectState::Stopped) | Some(ProjectState::Stopping) => Ok(()),
                _ => {
                    inner
                        .call(
                            "pause",
                            Method::POST,
                            &format!("{}/pause", inner.project_path()),
                        )
                        .await
                }
            };
            if sent.is_ok() {
                lock(&inner.view).operation = Some(Operation::Pause {
                    since: Instant::now(),
                });
                let mut tracker = inner.track_pause();
                if tokio::time::timeout(grace, &mut tracker).await.is_err() {
                    inner.line(
                        LogStream::System,
                        format!(
                            "the pause goes on after {}; it is followed in the background",
                            elapsed_text(grace)
                        ),
                    );
                }
            }
            if let Some(generation) = inner.live_generation() {
                inner.end_run(generation, 0);
            }
            sent
        })
    }

    /// Lets go of the run; the project stays as it is (`on_down = "keep"`).
    fn release(&self, _grace: Duration) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            if let Some(generation) = self.inner.live_generation() {
                self.inner.end_run(generation, 0);
            }
            Ok(())
        })
    }

    fn status(&self) -> BoxFuture<'_, Result<Observed, ResourceError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let answer = inner
                .fetch_project()
                .await
                .map_err(|e| inner.error("status", &e))?;
            Ok(match inner.record(&answer) {
                Some(ProjectState::Stopped) => Observed::Idle,
                Some(ProjectState::Failed) => Observed::Exited(ExitInfo {
                    code: Some(1),
                    signal: None,
                }),
                Some(ProjectState::Absent) => Observed::Absent,
                Some(_) => Observed::Running,
                None => Observed::Idle,
            })
        })
    }

    /// From the last observe: healthy when ACTIVE_HEALTHY with every service healthy,
    /// unhealthy when ACTIVE_UNHEALTHY or a service is not, unknown otherwise. No I/O.
    fn health(&self) -> BoxFuture<'_, Result<Health, ResourceError>> {
        Box::pin(async move {
            let view = lock(&self.inner.view);
            let known = view.status.as_deref().and_then(map_status).is_some();
            Ok(match view.state.filter(|_| known) {
                Some(ProjectState::Running { healthy: false }) => Health::Unhealthy,
                Some(ProjectState::Running { healthy: true })
                    if view.health_read && view.facts_read =>
                {
                    if view.unhealthy.is_empty() {
                        Health::Healthy
                    } else {
                        Health::Unhealthy
                    }
                }
                _ => Health::Unknown,
            })
        })
    }

    fn has_own_health(&self) -> bool {
        true
    }

    fn connection(&self) -> Connection {
        let inner = &self.inner;
        let view = lock(&inner.view);
        let host = view
            .db_host
            .clone()
            .unwrap_or_else(|| format!("db.{}.supabase.co", inner.spec.project_ref));
        let direct = inner.direct_url(&host);
        let mut fields = BTreeMap::new();
        fields.insert("direct_url".to_owned(), Secret::new(direct.clone()));
        fields.insert("user".to_owned(), Secret::new("postgres"));
        fields.insert("database".to_owned(), Secret::new("postgres"));
        if let Some(pw) = &inner.spec.db_password {
            fields.insert("password".to_owned(), pw.clone());
        }
        if let Some(pooler) = &view.pooler {
            let url = match &inner.spec.db_password {
                Some(pw) => pooler
                    .url
                    .replace(PASSWORD_PLACEHOLDER, &encode_segment(pw.expose())),
                None => pooler.url.clone(),
            };
            fields.insert("pooler_url".to_owned(), Secret::new(url));
            fields.insert("pooler_host".to_owned(), Secret::new(pooler.host.clone()));
            fields.insert(
                "pooler_port".to_owned(),
                Secret::new(pooler.port.to_string()),
            );
            fields.insert("pooler_user".to_owned(), Secret::new(pooler.user.clone()));
            fields.insert(
                "pooler_database".to_owned(),
                Secret::new(pooler.database.clone()),
            );
        }
        Connection {
            host,
            port: Some(5432),
            url: Some(Secret::new(direct)),
            fields,
        }
    }

    fn logs(&self, tail: usize) -> BoxFuture<'_, Result<Vec<OutputLine>, ResourceError>> {
        Box::pin(async move { Ok(self.inner.logs.tail(tail)) })
    }

    /// kinfra never deletes a Supabase project: the project is the user's.
    fn remove(&self, _volumes: bool) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            self.inner.line(
                LogStream::System,
                "kinfra does not delete Supabase projects; the project is left as it is".into(),
            );
            Ok(())
        })
    }

    fn sync(&self) -> Option<SyncFacts> {
        let inner = &self.inner;
        let observed = lock(&inner.observed).as_ref().map(|o| o.borrow().clone());
        let provider_state = lock(&inner.view).status.clone();
        let last_sync = observed.and_then(|o| o.last_sync).map(|s| LastSync {
            at: s.at,
            ok: s.ok,
            error: s.error.map(|e| inner.mask(&e)),
        });
        (last_sync.is_some() || provider_state.is_some()).then_some(SyncFacts {
            last_sync,
            provider_state,
        })
    }

    fn exit_reason(&self) -> Option<String> {
        lock(&self.inner.view).failure.clone()
    }

    fn reported_state(&self) -> Option<ReportedState> {
        let view = lock(&self.inner.view);
        let report = |state: ServiceState, message: String| {
            Some(ReportedState {
                state,
                message: self.inner.mask(&message),
            })
        };
        if let Some(failure) = &view.failure {
            return report(ServiceState::Failed, failure.clone());
        }
        let status = view.status.clone()?;
        let known = map_status(&status).is_some();
        let suffix = if known {
            String::new()
        } else {
            format!(" (unknown status {status}; last known state kept)")
        };
        match (view.state?, view.operation) {
            (
                ProjectState::Stopped | ProjectState::Stopping | ProjectState::Starting,
                Some(Operation::Restore { since, sent }),
            ) => report(
                ServiceState::Starting,
                if sent {
                    format!(
                        "{status}: restore requested {} ago{suffix}",
                        elapsed_text(since.elapsed())
                    )
                } else {
                    format!(
                        "{status}: restoring once the pause under way ends ({} so far){suffix}",
                        elapsed_text(since.elapsed())
                    )
                },
            ),
            (ProjectState::Starting, _) => {
                report(ServiceState::Starting, format!("{status}{suffix}"))
            }
            (ProjectState::Running { .. }, _) if !view.facts_read => report(
                ServiceState::Starting,
                format!("{status}: reading its connection facts{suffix}"),
            ),
            (ProjectState::Running { .. }, _) => {
                let mut message = status.clone();
                if !view.unhealthy.is_empty() {
                    message.push_str(&format!("; unhealthy: {}", view.unhealthy.join(", ")));
                }
                report(ServiceState::Running, format!("{message}{suffix}"))
            }
            (ProjectState::Stopping, Some(Operation::Pause { since })) => report(
                ServiceState::Stopping,
                format!(
                    "{status}: pause requested {} ago{suffix}",
                    elapsed_text(since.elapsed())
                ),
            ),
            (ProjectState::Stopping, _) => report(
                ServiceState::Stopping,
                format!("{status}: pausing (outside kinfra){suffix}"),
            ),
            (ProjectState::Stopped, Some(Operation::Pause { .. })) => {
                report(ServiceState::Stopped, format!("{status}: paused{suffix}"))
            }
            (ProjectState::Stopped, _) => report(
                ServiceState::Stopped,
                format!("{status}: paused outside kinfra{suffix}"),
            ),
            (ProjectState::Maintenance, _) => report(
                ServiceState::Maintenance,
                format!("{status}: under Supabase maintenance{suffix}"),
            ),
            (ProjectState::Failed | ProjectState::Absent, _) => {
                report(ServiceState::Failed, format!("{status}{suffix}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_as_design_says() {
        use ProjectState::*;
        for (status, state) in [
            ("COMING_UP", Starting),
            ("RESTORING", Starting),
            ("RESTARTING", Starting),
            ("ACTIVE_HEALTHY", Running { healthy: true }),
            ("ACTIVE_UNHEALTHY", Running { healthy: false }),
            ("PAUSING", Stopping),
            ("GOING_DOWN", Stopping),
            ("INACTIVE", Stopped),
            ("INIT_FAILED", Failed),
            ("RESTORE_FAILED", Failed),
            ("PAUSE_FAILED", Failed),
            ("UPGRADING", Maintenance),
            ("RESIZING", Maintenance),
            ("REMOVED", Absent),
            ("WARMING", Starting),
            ("SUSPENDING", Stopping),
        ] {
            assert_eq!(map_status(status), Some(state), "{status}");
        }
        assert_eq!(map_status("UNKNOWN"), None);
        assert_eq!(map_status("SOMETHING_NEW"), None);
    }

    #[test]
    fn refs_are_twenty_lower_case_letters() {
        assert!(valid_ref("abcdefghijklmnopqrst"));
        assert!(!valid_ref("abcdefghijklmnopqrs"));
        assert!(!valid_ref("abcdefghijklmnopqrs1"));
        assert!(!valid_ref("ABCDEFGHIJKLMNOPQRST"));
    }
}
