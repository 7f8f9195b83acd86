//! The `vercel` provider: a Vercel project (`project_id`, its id or name) as a resource,
//! through the REST API (`https://api.vercel.com`, bearer token; an instance's optional
//! `team_id` goes as `teamId` on every call).
//!
//! The resource follows the project's latest production deployment
//! (`GET /v6/deployments?projectId=…&target=production&limit=1`) and the project itself
//! (`GET /v9/projects/{id}`, its `paused` flag), read every `interval`. The deployment's
//! `readyState` maps to kinfra's states (DESIGN's table): `QUEUED INITIALIZING BUILDING`
//! starting, `READY` running (and healthy), `CANCELED` stopped, `ERROR` failed with the
//! deployment's `errorMessage`, `DELETED` absent; a paused project is stopped. Any other value
//! keeps the last state with a warning (an unknown `…ING` value is starting). A build that stays
//! starting longer than `build_timeout` fails the run.
//!
//! Starting unpauses a paused project (`POST /v1/projects/{id}/unpause`); stopping pauses it
//! (`POST /v1/projects/{id}/pause`). Both take effect at once on Vercel's side; the build of a
//! deployment is what takes minutes, and the run shows it as starting until it is READY.
//! `runtime down` with the default `on_down = "keep"` lets go without pausing.
//!
//! Connection facts: the latest READY production deployment's URL (`url`, `host`, port 443,
//! `deployment_id`, `deployment_url`).
//!
//! Logs: while a run is live, the latest production deployment's build events are streamed
//! (`GET /v3/deployments/{id}/events?follow=1`, newline-delimited JSON read as it arrives,
//! reconnecting after `since` the last event when the stream ends before the build does), and
//! once it is READY its runtime logs (`GET /v1/projects/{id}/deployments/{id}/runtime-logs`,
//! also a stream, rows deduplicated by `rowId` across reconnects). Every line goes into the
//! resource's log (dashboard, `runtime logs`, the bus). A stream's connection is paced (never
//! more than one attempt per `stream_pause`), takes a token from the instance's rate limit
//! like every other request, and backs off on errors, honouring `Retry-After`.
//!
//! Commands (each with a dry-run): `deploy {target?, git_ref?}` (`POST /v13/deployments` from
//! the project's linked Git repository), `redeploy {deployment_id, target?}`,
//! `promote {deployment_id}` (`POST /v10/projects/{id}/promote/{deployment}`),
//! `cancel {deployment_id}` (`PATCH /v12/deployments/{id}/cancel`, needs confirmation) and
//! `list-deployments {limit?, target?}`.

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
use kinfra_provider::operation::elapsed_text;
use kinfra_provider::provider::{
    InstanceContext, KINFRA_KEYS, Provider, ProviderError, ResourceDecl, ResourceProblem,
    config_duration_or, config_problems,
};
use kinfra_provider::rest::{CallError, RestApi, RestClients, TokenNeed, encode_segment};
use kinfra_provider::result::{CommandResult, PlannedRequest};
use kinfra_provider::retry::RetryPolicy;
use kinfra_provider::run_slot::{AbortOnDrop, RunSlot, lock};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, warn};

/// The provider's id.
pub const ID: &str = "vercel";
/// The one resource type it runs.
pub const RESOURCE_TYPE: &str = "project";
/// The REST API.
pub const DEFAULT_BASE_URL: &str = "https://api.vercel.com";
/// The observe interval when the resource sets none.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// How long a production build may stay QUEUED/INITIALIZING/BUILDING in a run.
pub const DEFAULT_BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Output lines kept for [`Resource::logs`].
const LOG_LINES: usize = 500;
/// The shortest silence after which a log stream is reconnected (a build step can be quiet
/// for a while).
const STREAM_SILENCE: Duration = Duration::from_secs(60);
/// Runtime-log row ids remembered to drop repeats after a reconnect.
const SEEN_ROWS: usize = 2048;

/// What a deployment's `readyState` means in kinfra's state model (DESIGN's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeploymentState {
    /// QUEUED, INITIALIZING, BUILDING (and other `…ING` values).
    Starting,
    /// READY.
    Running,
    /// An unknown `…ING` value that goes down (`CANCELING`, `DELETING`).
    Stopping,
    /// CANCELED.
    Stopped,
    /// ERROR.
    Failed,
    /// DELETED.
    Absent,
}

/// Maps a deployment's `readyState`; `None` for a value that says nothing known (the last
/// state is kept, with a warning).
pub fn map_ready_state(state: &str) -> Option<DeploymentState> {
    Some(match state {
        "QUEUED" | "INITIALIZING" | "BUILDING" => DeploymentState::Starting,
        "READY" => DeploymentState::Running,
        "CANCELED" => DeploymentState::Stopped,
        "ERROR" => DeploymentState::Failed,
        "DELETED" => DeploymentState::Absent,
        other if other.ends_with("ING") => {
            let down = ["CANCEL", "DELET", "REMOV", "STOP", "PAUS"];
            if down.iter().any(|d| other.contains(d)) {
                DeploymentState::Stopping
            } else {
                DeploymentState::Starting
            }
        }
        _ => return None,
    })
}

/// A resource's own keys, parsed.
#[derive(Debug, Clone)]
struct ProjectSpec {
    project_id: String,
    interval: Duration,
    build_timeout: Duration,
    logs: bool,
}

impl ProjectSpec {
    fn parse(config: &Map<String, Value>) -> Result<Self, Vec<ResourceProblem>> {
        let mut problems = Vec::new();
        let project_id = match config.get("project_id") {
            Some(Value::String(id)) if !id.trim().is_empty() && !id.contains('/') => id.clone(),
            Some(Value::String(id)) => {
                problems.push(ResourceProblem::at(
                    "project_id",
                    format!("`{id}` is not a Vercel project id or name"),
                ));
                String::new()
            }
            Some(_) => {
                problems.push(ResourceProblem::at("project_id", "expected a string"));
                String::new()
            }
            None => {
                problems.push(ResourceProblem::at("project_id", "missing (required)"));
                String::new()
            }
        };
        let interval = config_duration_or(config, "interval", DEFAULT_INTERVAL, &mut problems);
        let build_timeout = config_duration_or(
            config,
            "build_timeout",
            DEFAULT_BUILD_TIMEOUT,
            &mut problems,
        );
        let logs = match config.get("logs") {
            None => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                problems.push(ResourceProblem::at("logs", "expected true or false"));
                true
            }
        };
        if problems.is_empty() {
            Ok(Self {
                project_id,
                interval,
                build_timeout,
                logs,
            })
        } else {
            Err(problems)
        }
    }
}

/// The instance's `team_id`, checked.
fn team_id(ctx: &InstanceContext) -> Result<Option<String>, ResourceProblem> {
    match ctx.config.get("team_id") {
        None => Ok(None),
        Some(Value::String(t)) if !t.trim().is_empty() => Ok(Some(t.clone())),
        Some(_) => Err(ResourceProblem::at(
            "team_id",
            format!(
                "[providers.{}] team_id: expected a team id such as \"team_…\"",
                ctx.instance
            ),
        )),
    }
}

/// One instance's API with its team scope: every request carries `teamId` when it has one.
#[derive(Clone, Debug)]
struct VercelApi {
    rest: RestApi,
    team: Option<String>,
}

impl VercelApi {
    fn request(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> Result<HttpRequest, CallError> {
        let mut all: Vec<(&str, &str)> = query.to_vec();
        if let Some(team) = &self.team {
            all.push(("teamId", team));
        }
        self.rest.request(method, path, &all, body)
    }

    fn planned(&self, request: &HttpRequest) -> PlannedRequest {
        request.planned()
    }

    fn project_path(project: &str) -> String {
        format!("/v9/projects/{}", encode_segment(project))
    }

    /// The latest production deployment's request.
    fn latest_request(&self, project: &str) -> Result<HttpRequest, CallError> {
        self.request(
            Method::GET,
            "/v6/deployments",
            &[
                ("projectId", project),
                ("target", "production"),
                ("limit", "1"),
            ],
            None,
        )
    }
}

/// The commands every project offers.
fn command_specs() -> Vec<CommandSpec> {
    let command = |id: &str, description: &str, params: Vec<ParamSpec>| {
        CommandSpec::new(id, id, description)
            .in_category("deployment")
            .for_resource_type(RESOURCE_TYPE)
            .with_params(params)
            .with_dry_run()
    };
    let deployment_id = || {
        ParamSpec::required(
            "deployment_id",
            ParamKind::String,
            "The deployment's id (dpl_…, from list-deployments).",
        )
    };
    let target = || {
        ParamSpec::optional(
            "target",
            ParamKind::String,
            "The environment: production (default), staging, or a custom environment.",
        )
        .with_default(json!("production"))
    };
    vec![
        command(
            "deploy",
            "Creates a deployment from the project's linked Git repository (POST /v13/deployments).",
            vec![
                target(),
                ParamSpec::optional(
                    "git_ref",
                    ParamKind::String,
                    "The branch, tag or commit to deploy (default: the project's production branch).",
                ),
            ],
        ),
        command(
            "redeploy",
            "Deploys an existing deployment's source again (POST /v13/deployments with deploymentId).",
            vec![deployment_id(), target()],
        ),
        command(
            "promote",
            "Points production at an existing deployment (POST /v10/projects/{id}/promote/{deployment}).",
            vec![deployment_id()],
        ),
        command(
            "cancel",
            "Cancels a deployment that is queued or building (PATCH /v12/deployments/{id}/cancel); needs confirmation.",
            vec![deployment_id()],
        )
        .needs_confirmation(),
        command(
            "list-deployments",
            "Lists the project's deployments, newest first (GET /v6/deployments).",
            vec![
                ParamSpec::optional(
                    "limit",
                    ParamKind::Integer {
                        min: Some(1),
                        max: Some(100),
                    },
                    "How many (1–100, default 10).",
                )
                .with_default(json!(10)),
                ParamSpec::optional(
                    "target",
                    ParamKind::String,
                    "Only this environment (production, staging); all when unset.",
                ),
            ],
        ),
    ]
}

fn metadata() -> ProviderMetadata {
    ProviderMetadata {
        id: ID.into(),
        name: ID.into(),
        display_name: "Vercel".into(),
        description: "Vercel projects through the REST API: the latest production deployment's \
                      state, pause and unpause, its URL as a connection fact, build events and \
                      runtime logs streamed into the resource's log, deploy/redeploy/promote/\
                      cancel. The instance's optional `team_id` scopes every call (teamId)."
            .into(),
        version: env!("CARGO_PKG_VERSION").into(),
        category: Category::Serverless,
        capabilities: vec![
            Capability::Provision,
            Capability::Monitor,
            Capability::Rollback,
            Capability::DryRun,
        ],
        resource_types: vec![ResourceTypeSpec {
            name: RESOURCE_TYPE.into(),
            description: "A Vercel project: runs while its latest production deployment is \
                          READY and the project is not paused; paused when stopped."
                .into(),
            config: vec![
                ConfigKeySpec::required(
                    "project_id",
                    ConfigKind::String,
                    "The project's id (prj_…) or name.",
                ),
                ConfigKeySpec::optional(
                    "build_timeout",
                    ConfigKind::Duration,
                    "How long a production build may stay queued or building before the run fails (default 30m).",
                ),
                ConfigKeySpec::optional(
                    "logs",
                    ConfigKind::Boolean,
                    "Stream build events and runtime logs into the resource's log (default true).",
                ),
            ],
        }],
        auth_methods: vec![AuthMethod::Bearer],
    }
}

/// The `vercel` provider.
pub struct VercelProvider {
    metadata: ProviderMetadata,
    commands: Vec<CommandSpec>,
    clients: RestClients,
    http_config: HttpConfig,
    streams: OnceLock<reqwest::Client>,
}

impl std::fmt::Debug for VercelProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VercelProvider").finish_non_exhaustive()
    }
}

impl Default for VercelProvider {
    fn default() -> Self {
        Self::new()
    }
}

/// The `vercel` provider with the default HTTP timeouts.
pub fn provider() -> Arc<dyn Provider> {
    Arc::new(VercelProvider::new())
}

fn clients(config: HttpConfig) -> RestClients {
    RestClients::new(
        "the Vercel API",
        Some(DEFAULT_BASE_URL),
        TokenNeed::Required("a Vercel access token"),
    )
    .with_http_config(config)
}

impl VercelProvider {
    /// The provider with the default HTTP timeouts.
    pub fn new() -> Self {
        Self::with_http_config(HttpConfig::default())
    }

    /// The provider with `config`'s HTTP timeouts (the log streams take its connect timeout;
    /// a stream silent for longer than its request timeout, and at least a minute, is
    /// reconnected).
    pub fn with_http_config(config: HttpConfig) -> Self {
        Self {
            metadata: metadata(),
            commands: command_specs(),
            clients: clients(config.clone()),
            http_config: config,
            streams: OnceLock::new(),
        }
    }

    /// The retry policy of start, stop and commands (observe loops keep their own backoff).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.clients = clients(self.http_config.clone()).with_retry(retry);
        self
    }

    fn api(&self, ctx: &InstanceContext) -> Result<VercelApi, ProviderError> {
        let team = team_id(ctx).map_err(|p| ProviderError::InvalidResource {
            resource: format!("[providers.{}]", ctx.instance),
            problems: vec![p],
        })?;
        Ok(VercelApi {
            rest: self.clients.api(ctx)?,
            team,
        })
    }

    fn stream_client(&self) -> Result<reqwest::Client, ResourceError> {
        if let Some(c) = self.streams.get() {
            return Ok(c.clone());
        }
        kinfra_core::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(self.http_config.connect_timeout)
            .read_timeout(self.http_config.request_timeout.max(STREAM_SILENCE))
            .user_agent(self.http_config.user_agent.clone())
            .build()
            .map_err(|e| ResourceError::Invalid(format!("cannot build the HTTP client: {e}")))?;
        Ok(self.streams.get_or_init(|| client).clone())
    }

    /// The [`VercelResource`] for `decl` (the concrete type behind [`Provider::resource`]).
    pub fn project_resource(
        &self,
        instance: &InstanceContext,
        decl: &ResourceDecl,
    ) -> Result<VercelResource, ProviderError> {
        let spec = decl.parse_config(ProjectSpec::parse)?;
        let api = self.api(instance)?;
        let streams = self.stream_client()?;
        Ok(VercelResource {
            inner: Arc::new(Inner {
                name: decl.name.clone(),
                spec,
                api,
                streams,
                view: Mutex::new(View::default()),
                logs: Mutex::new(VecDeque::new()),
                slot: RunSlot::default(),
                output: Mutex::new(None),
                observed: Mutex::new(None),
                build_logged: watch::channel(None).0,
            }),
        })
    }

    async fn run_command(
        &self,
        api: &VercelApi,
        spec: &ProjectSpec,
        command: &CommandSpec,
        params: &ValidatedParams,
        dry_run: bool,
    ) -> Result<CommandResult, ProviderError> {
        let secrets = api.rest.secrets();
        let failed = |reason: &str| ProviderError::Command {
            command: command.id.clone(),
            reason: api.rest.mask(reason),
        };
        let call_failed = |e: CallError| failed(&e.text);
        let project = spec.project_id.as_str();
        let target = params.str("target").unwrap_or("production").to_owned();
        let request = match command.id.as_str() {
            "deploy" => {
                let read = api
                    .request(Method::GET, &VercelApi::project_path(project), &[], None)
                    .map_err(call_failed)?;
                let git_ref = params.str("git_ref");
                if dry_run {
                    let body = json!({
                        "name": project,
                        "project": project,
                        "target": target,
                        "gitSource": {
                            "type": "<the project's link.type>",
                            "repoId": "<the project's link.repoId>",
                            "ref": git_ref.unwrap_or("<the project's link.productionBranch>"),
                        },
                    });
                    let post = api
                        .request(Method::POST, "/v13/deployments", &[], Some(body))
                        .map_err(call_failed)?;
                    let mut result =
                        CommandResult::planned(&[api.planned(&read), api.planned(&post)], &secrets);
                    result.warnings.push(
                        "gitSource comes from the project's linked repository, read first".into(),
                    );
                    return Ok(result);
                }
                let answer = api.rest.send(&read).await.map_err(call_failed)?;
                let project_answer: Value = answer
                    .json()
                    .map_err(|e| call_failed(api.rest.call_error(e)))?;
                let source = git_source(&project_answer, git_ref).map_err(|r| failed(&r))?;
                api.request(
                    Method::POST,
                    "/v13/deployments",
                    &[],
                    Some(json!({
                        "name": project,
                        "project": project,
                        "target": target,
                        "gitSource": source,
                    })),
                )
                .map_err(call_failed)?
            }
            "redeploy" => {
                let id = params.str("deployment_id").unwrap_or_default();
                api.request(
                    Method::POST,
                    "/v13/deployments",
                    &[],
                    Some(json!({
                        "name": project,
                        "project": project,
                        "deploymentId": id,
                        "target": target,
                    })),
                )
                .map_err(call_failed)?
            }
            "promote" => {
                let id = params.str("deployment_id").unwrap_or_default();
                api.request(
                    Method::POST,
                    &format!(
                        "/v10/projects/{}/promote/{}",
                        encode_segment(project),
                        encode_segment(id)
                    ),
                    &[],
                    None,
                )
                .map_err(call_failed)?
            }
            "cancel" => {
                let id = params.str("deployment_id").unwrap_or_default();
                api.request(
                    Method::PATCH,
                    &format!("/v12/deployments/{}/cancel", encode_segment(id)),
                    &[],
                    None,
                )
                .map_err(call_failed)?
            }
            "list-deployments" => {
                let limit = params.integer("limit").unwrap_or(10).to_string();
                let mut query = vec![("projectId", project), ("limit", limit.as_str())];
                if let Some(t) = params.str("target") {
                    query.push(("target", t));
                }
                api.request(Method::GET, "/v6/deployments", &query, None)
                    .map_err(call_failed)?
            }
            other => {
                return Err(ProviderError::unknown_command(ID, other));
            }
        };
        if dry_run {
            return Ok(CommandResult::planned(&[api.planned(&request)], &secrets));
        }
        let response = api.rest.send(&request).await.map_err(call_failed)?;
        let data = response.data();
        let mut result = match command.id.as_str() {
            "deploy" | "redeploy" | "cancel" => {
                let mut result = CommandResult::ok(deployment_summary(&data));
                result.operation = data.get("id").and_then(Value::as_str).map(str::to_owned);
                result.operation_state = data
                    .get("readyState")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                result
            }
            "list-deployments" => CommandResult::ok(Value::Array(
                data.get("deployments")
                    .and_then(Value::as_array)
                    .map(|all| all.iter().map(deployment_summary).collect())
                    .unwrap_or_default(),
            )),
            _ => CommandResult::ok(json!({ "status": response.status })),
        };
        result = result.mask(&secrets);
        Ok(result)
    }
}

/// The `gitSource` of a deployment from the project's Git link at `git_ref` (default: the
/// production branch).
fn git_source(project: &Value, git_ref: Option<&str>) -> Result<Value, String> {
    let link = project
        .get("link")
        .filter(|l| l.is_object())
        .ok_or("the project has no linked Git repository to deploy from")?;
    let kind = link.get("type").and_then(Value::as_str).unwrap_or_default();
    let reference = git_ref
        .map(str::to_owned)
        .or_else(|| {
            link.get("productionBranch")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .ok_or("no git_ref given and the project's link names no production branch")?;
    let field = |k: &str| link.get(k).cloned().filter(|v| !v.is_null());
    match kind {
        "github" | "github-limited" | "github-custom-host" => {
            if let Some(repo_id) = field("repoId") {
                Ok(json!({"type": kind, "repoId": repo_id, "ref": reference}))
            } else {
                match (field("org"), field("repo")) {
                    (Some(org), Some(repo)) => {
                        Ok(json!({"type": kind, "org": org, "repo": repo, "ref": reference}))
                    }
                    _ => Err("the project's GitHub link has neither repoId nor org/repo".into()),
                }
            }
        }
        "gitlab" => field("projectId")
            .map(|id| json!({"type": "gitlab", "projectId": id, "ref": reference}))
            .ok_or_else(|| "the project's GitLab link has no projectId".into()),
        "bitbucket" => field("repoUuid")
            .map(|id| json!({"type": "bitbucket", "repoUuid": id, "ref": reference}))
            .ok_or_else(|| "the project's Bitbucket link has no repoUuid".into()),
        other => Err(format!(
            "the project's Git link is of type `{other}`, which deploy does not know"
        )),
    }
}

/// The parts of a deployment a command shows.
fn deployment_summary(d: &Value) -> Value {
    let id = d.get("id").or_else(|| d.get("uid")).cloned();
    json!({
        "id": id,
        "url": d.get("url"),
        "readyState": d.get("readyState").or_else(|| d.get("state")),
        "target": d.get("target"),
        "created": d.get("createdAt").or_else(|| d.get("created")),
    })
}

impl Provider for VercelProvider {
    fn metadata(&self) -> &ProviderMetadata {
        &self.metadata
    }

    fn commands(&self) -> &[CommandSpec] {
        &self.commands
    }

    /// What a start would send: one read of the project, then the unpause when it is
    /// paused (nothing when it is not: a start only follows the production deployment).
    fn planned_start<'a>(
        &'a self,
        instance: &'a InstanceContext,
        decl: &'a ResourceDecl,
    ) -> BoxFuture<'a, Result<Option<Vec<PlannedRequest>>, ProviderError>> {
        Box::pin(async move {
            let resource = self.project_resource(instance, decl)?;
            let inner = &resource.inner;
            let failed = |text: &str| ProviderError::Command {
                command: "start".into(),
                reason: inner.mask(text),
            };
            let request = inner
                .api
                .request(
                    Method::GET,
                    &VercelApi::project_path(&inner.spec.project_id),
                    &[],
                    None,
                )
                .map_err(|e| failed(&e.text))?;
            let answer: Value = inner
                .api
                .rest
                .send(&request)
                .await
                .and_then(|r| r.json().map_err(|e| inner.api.rest.call_error(e)))
                .map_err(|e| failed(&e.text))?;
            if answer.get("paused").and_then(Value::as_bool) != Some(true) {
                return Ok(Some(Vec::new()));
            }
            let unpause = inner
                .api
                .request(
                    Method::POST,
                    &format!(
                        "/v1/projects/{}/unpause",
                        encode_segment(&inner.spec.project_id)
                    ),
                    &[],
                    None,
                )
                .map_err(|e| failed(&e.text))?;
            Ok(Some(vec![
                unpause.planned().masked(&inner.api.rest.secrets()),
            ]))
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
                ProjectSpec::parse,
            );
            problems.extend(self.clients.check(instance));
            if let Err(p) = team_id(instance) {
                problems.push(p);
            }
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
            let api = self.api(instance)?;
            self.run_command(&api, &spec, command, &params, dry_run)
                .await
        })
    }
}

/// The latest production deployment, as the list gives it (the parts used).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Deployment {
    id: String,
    url: String,
    ready_state: String,
    error: Option<String>,
}

/// What one observe read.
#[derive(Debug, Clone)]
struct Reading {
    paused: bool,
    deployment: Option<Deployment>,
}

impl Reading {
    /// The provider state shown: `paused` for a paused project, else the deployment's
    /// `readyState` (`none` without a production deployment).
    fn provider_state(&self) -> String {
        if self.paused {
            "paused".into()
        } else {
            self.deployment
                .as_ref()
                .map(|d| d.ready_state.clone())
                .unwrap_or_else(|| "none".into())
        }
    }
}

/// What the resource did that it follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    /// An unpause sent at `since`.
    Unpause { since: Instant },
    /// A pause sent at `since`.
    Pause { since: Instant },
}

/// What the resource knows (answers `reported_state`, `health`, `connection` without I/O).
#[derive(Debug, Default)]
struct View {
    /// Whether the project is paused, at the last read.
    paused: Option<bool>,
    /// The latest production deployment at the last read.
    deployment: Option<Deployment>,
    /// True once a read found no production deployment.
    no_deployment: bool,
    /// What the last known `readyState` meant (unknown values keep it).
    state: Option<DeploymentState>,
    /// The latest READY production deployment seen (the connection facts).
    ready: Option<Deployment>,
    /// Since when the run has seen the production deployment building (build_timeout).
    building_since: Option<(String, Instant)>,
    operation: Option<Operation>,
    /// Why the resource failed (ERROR, DELETED, a refused token, a build timeout).
    failure: Option<String>,
}

struct Inner {
    name: String,
    spec: ProjectSpec,
    api: VercelApi,
    streams: reqwest::Client,
    view: Mutex<View>,
    /// The lines kept for [`Resource::logs`], numbered.
    logs: Mutex<VecDeque<(u64, OutputLine)>>,
    slot: RunSlot<Vec<AbortOnDrop>>,
    /// The live run's output sender, by generation.
    output: Mutex<Option<(u64, mpsc::Sender<OutputLine>)>>,
    observed: Mutex<Option<watch::Receiver<ObservedStatus>>>,
    /// The last deployment whose build events the log follower read to their end.
    build_logged: watch::Sender<Option<String>>,
}

/// How long a run that ends on a failed or canceled build waits for that build's last
/// events to reach its output.
const BUILD_LOG_DRAIN: Duration = Duration::from_secs(10);

/// How a failed read ends: a refused token or an unknown project is permanent.
fn permanent(error: &CallError) -> bool {
    matches!(
        error.http,
        HttpError::Status {
            code: 401 | 403 | 404,
            ..
        }
    )
}

impl Inner {
    fn mask(&self, text: &str) -> String {
        self.api.rest.mask(text)
    }

    fn what(&self) -> String {
        format!("Vercel project `{}`", self.spec.project_id)
    }

    /// Keeps a line (masked) and sends it to the live run's output. The output's lock is
    /// taken first, so a run beginning replays exactly the lines it has not been sent.
    fn line(&self, stream: LogStream, text: String) {
        let line = OutputLine {
            stream,
            text: self.mask(&text),
        };
        let output = lock(&self.output);
        {
            let mut logs = lock(&self.logs);
            if logs.len() >= LOG_LINES {
                logs.pop_front();
            }
            let seq = logs.back().map_or(0, |(n, _)| n + 1);
            logs.push_back((seq, line.clone()));
        }
        if let Some((_, output)) = output.as_ref() {
            let _ = output.try_send(line);
        }
    }

    /// The sequence number the next line gets.
    fn next_line(&self) -> u64 {
        lock(&self.logs).back().map_or(0, |(n, _)| n + 1)
    }

    fn error(&self, op: &str, error: &CallError) -> ResourceError {
        self.api.rest.resource_error(op, &self.what(), error)
    }

    /// Reads the project and its latest production deployment; `retry` for a start.
    async fn read(&self, retry: bool) -> Result<Reading, CallError> {
        let project = &self.spec.project_id;
        let send = |request: HttpRequest| async move {
            if retry {
                self.api.rest.send(&request).await
            } else {
                self.api.rest.send_once(&request).await
            }
        };
        let request =
            self.api
                .request(Method::GET, &VercelApi::project_path(project), &[], None)?;
        let answer: Value = send(request)
            .await?
            .json()
            .map_err(|e| self.api.rest.call_error(e))?;
        let paused = answer
            .get("paused")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        // The deployments are listed by the project's id (a name works too, but the id is
        // what the list filters on exactly).
        let id = answer
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or(project)
            .to_owned();
        let request = self.api.latest_request(&id)?;
        let response = send(request).await?;
        let list: Value = response.json().map_err(|e| self.api.rest.call_error(e))?;
        let Some(all) = list.get("deployments").and_then(Value::as_array) else {
            return Err(self.api.rest.call_error(HttpError::Decode {
                url: response.url.clone(),
                reason: "no `deployments` (an array) in the answer".into(),
            }));
        };
        let deployment = match all.first() {
            None => None,
            Some(d) => {
                let text = |k: &str| d.get(k).and_then(Value::as_str).map(str::to_owned);
                let (Some(id), Some(ready_state)) =
                    (text("uid"), text("readyState").or_else(|| text("state")))
                else {
                    return Err(self.api.rest.call_error(HttpError::Decode {
                        url: response.url.clone(),
                        reason: "a deployment without `uid` or `readyState`".into(),
                    }));
                };
                Some(Deployment {
                    id,
                    url: text("url").unwrap_or_default(),
                    ready_state,
                    error: text("errorMessage"),
                })
            }
        };
        Ok(Reading { paused, deployment })
    }

    /// Records a reading; returns what the deployment's state means (the last state for an
    /// unknown one, with a warning), and whether it is known.
    fn record(&self, reading: &Reading) -> (Option<DeploymentState>, bool) {
        let mut view = lock(&self.view);
        let before = (view.paused, view.deployment.clone());
        view.paused = Some(reading.paused);
        view.no_deployment = reading.deployment.is_none();
        view.deployment = reading.deployment.clone();
        let mapped = reading
            .deployment
            .as_ref()
            .map(|d| map_ready_state(&d.ready_state));
        let known = !matches!(mapped, Some(None));
        match mapped {
            Some(Some(state)) => view.state = Some(state),
            None => view.state = None,
            Some(None) => {}
        }
        if let Some(d) = &reading.deployment
            && d.ready_state == "READY"
        {
            view.ready = Some(d.clone());
        }
        let state = view.state;
        let changed = before != (view.paused, view.deployment.clone());
        drop(view);
        if changed {
            match &reading.deployment {
                Some(d) if !known => {
                    warn!(resource = %self.name, state = %d.ready_state, "Unknown Vercel readyState; keeping the last state.");
                    self.line(
                        LogStream::Stderr,
                        format!(
                            "warning: unknown readyState `{}` of deployment {}; keeping the last state",
                            d.ready_state, d.id
                        ),
                    );
                }
                Some(d) => self.line(
                    LogStream::System,
                    format!(
                        "production deployment {} {}{}",
                        d.id,
                        d.ready_state,
                        if reading.paused {
                            " (project paused)"
                        } else {
                            ""
                        }
                    ),
                ),
                None => self.line(
                    LogStream::System,
                    "the project has no production deployment".into(),
                ),
            }
        }
        (state, known)
    }

    fn failure_text(&self, deployment: &Deployment) -> String {
        match deployment.ready_state.as_str() {
            "DELETED" => format!(
                "DELETED: production deployment {} of {} was deleted",
                deployment.id,
                self.what()
            ),
            state => format!(
                "{state}: production deployment {} of {} failed{}",
                deployment.id,
                self.what(),
                deployment
                    .error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ),
        }
    }

    /// Ends run `generation` (if live) with exit `code`: its output closes first.
    fn end_run(&self, generation: u64, code: i32) {
        {
            let mut output = lock(&self.output);
            if output.as_ref().is_some_and(|(g, _)| *g == generation) {
                *output = None;
            }
        }
        self.slot.end(
            Some(generation),
            ExitInfo {
                code: Some(code),
                signal: None,
            },
        );
    }

    fn end_live(&self, code: i32) {
        let generation = lock(&self.output).as_ref().map(|(g, _)| *g);
        if let Some(g) = generation {
            self.end_run(g, code);
        }
    }

    fn fail(&self, generation: u64, failure: String) {
        lock(&self.view).failure = Some(failure.clone());
        self.line(LogStream::Stderr, failure);
        self.end_run(generation, 1);
    }

    /// One observe of a live run: reads, then ends the run when the project is paused
    /// outside kinfra, the deployment is canceled, failed or gone, or the build timed out.
    async fn observe_once(
        self: &Arc<Self>,
        generation: u64,
        current: &watch::Sender<Option<Deployment>>,
    ) -> Result<String, ObserveError> {
        let reading = match self.read(false).await {
            Ok(r) => r,
            Err(error) => {
                if permanent(&error) {
                    let failure = self.error("observe", &error).to_string();
                    self.fail(generation, failure);
                }
                // The loop's classification, with the masked text.
                return Err(match ObserveError::from(error.http.clone()) {
                    ObserveError::RateLimited { retry_after, .. } => ObserveError::RateLimited {
                        retry_after,
                        message: error.text,
                    },
                    ObserveError::Failed(_) => ObserveError::Failed(error.text),
                });
            }
        };
        let (state, known) = self.record(&reading);
        current.send_if_modified(|d| {
            let changed = *d != reading.deployment;
            if changed {
                *d = reading.deployment.clone();
            }
            changed
        });
        let operation = lock(&self.view).operation;
        if reading.paused {
            if !matches!(operation, Some(Operation::Unpause { .. })) {
                self.line(LogStream::System, "the project was paused".into());
                self.end_run(generation, 0);
            }
            return Ok(reading.provider_state());
        }
        if matches!(operation, Some(Operation::Unpause { .. })) {
            lock(&self.view).operation = None;
            self.line(LogStream::System, "the project is unpaused".into());
        }
        let Some(deployment) = reading.deployment.clone() else {
            self.line(
                LogStream::System,
                "no production deployment: nothing runs".into(),
            );
            self.end_run(generation, 0);
            return Ok(reading.provider_state());
        };
        match state.filter(|_| known) {
            Some(DeploymentState::Starting) => {
                let since = {
                    let mut view = lock(&self.view);
                    match &view.building_since {
                        Some((id, since)) if *id == deployment.id => *since,
                        _ => {
                            let now = Instant::now();
                            view.building_since = Some((deployment.id.clone(), now));
                            now
                        }
                    }
                };
                if since.elapsed() > self.spec.build_timeout {
                    let failure = format!(
                        "production deployment {} of {} did not get READY within {} ({})",
                        deployment.id,
                        self.what(),
                        elapsed_text(self.spec.build_timeout),
                        deployment.ready_state
                    );
                    self.fail(generation, failure);
                }
            }
            Some(DeploymentState::Running) => lock(&self.view).building_since = None,
            Some(DeploymentState::Stopped) => {
                self.await_build_log(&deployment.id).await;
                self.line(
                    LogStream::System,
                    format!("production deployment {} was canceled", deployment.id),
                );
                self.end_run(generation, 0);
            }
            Some(state @ (DeploymentState::Failed | DeploymentState::Absent)) => {
                if state == DeploymentState::Failed {
                    self.await_build_log(&deployment.id).await;
                }
                let failure = self.failure_text(&deployment);
                self.fail(generation, failure);
            }
            Some(DeploymentState::Stopping) | None => {}
        }
        Ok(reading.provider_state())
    }

    /// Waits (bounded) until the log follower has read deployment `id`'s build events to
    /// their end, so a failed or canceled build's last lines reach the run's output before
    /// the run ends.
    async fn await_build_log(&self, id: &str) {
        if !self.spec.logs {
            return;
        }
        let mut logged = self.build_logged.subscribe();
        let _ = tokio::time::timeout(
            BUILD_LOG_DRAIN,
            logged.wait_for(|d| d.as_deref() == Some(id)),
        )
        .await;
    }

    /// Begins a run: its observe loop and (with `logs`) its log follower.
    /// The run's output opens with the lines written since line `since` (what the start said).
    fn begin_run(self: &Arc<Self>, adopted: bool, since: u64) -> Run {
        let (out_tx, out_rx) = mpsc::channel(256);
        let (exit_tx, exit_rx) = oneshot::channel();
        let (current_tx, current_rx) = watch::channel(lock(&self.view).deployment.clone());
        let mut observed = None;
        // The output is in place before the run's tasks start writing to it.
        let mut output = lock(&self.output);
        let generation = self.slot.begin(|generation| {
            let observe_fn = {
                let inner = self.clone();
                let current = Arc::new(current_tx);
                move || {
                    let inner = inner.clone();
                    let current = current.clone();
                    async move { inner.observe_once(generation, &current).await }
                }
            };
            let (status, task) = observe::spawn(
                ObserveConfig::every(self.spec.interval),
                observe_fn,
                std::future::pending::<()>(),
            );
            observed = Some(status);
            let mut held = vec![AbortOnDrop(task)];
            if self.spec.logs {
                let inner = self.clone();
                held.push(AbortOnDrop(tokio::spawn(async move {
                    inner.follow_logs(current_rx).await;
                })));
            }
            (exit_tx, held)
        });
        for (_, line) in lock(&self.logs).iter().filter(|(n, _)| *n >= since) {
            let _ = out_tx.try_send(line.clone());
        }
        *output = Some((generation, out_tx));
        drop(output);
        *lock(&self.observed) = observed;
        Run {
            id: format!("{}#{generation}", self.spec.project_id),
            pid: None,
            adopted,
            output: out_rx,
            exit: exit_rx,
        }
    }

    /// The pause between two connections of a log stream that gave nothing new.
    fn stream_pause(&self) -> Duration {
        self.spec
            .interval
            .clamp(Duration::from_millis(200), Duration::from_secs(5))
    }

    /// Follows the logs of the latest production deployment, switching when it changes.
    async fn follow_logs(self: Arc<Self>, mut current: watch::Receiver<Option<Deployment>>) {
        loop {
            let deployment = current.borrow_and_update().clone();
            match deployment {
                Some(d) => {
                    let states = current.clone();
                    tokio::select! {
                        () = self.follow_deployment(&d.id, &states) => {
                            // Nothing more to follow for it: wait for another deployment.
                            if !wait_for_other(&mut current, &d.id).await {
                                return;
                            }
                        }
                        changed = wait_for_other(&mut current, &d.id) => {
                            if !changed {
                                return;
                            }
                        }
                    }
                }
                None => {
                    if current.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Build events until the build is over, then (when READY) runtime logs.
    async fn follow_deployment(&self, id: &str, current: &watch::Receiver<Option<Deployment>>) {
        let state = || {
            current
                .borrow()
                .as_ref()
                .filter(|d| d.id == id)
                .map(|d| d.ready_state.clone())
        };
        let events_path = format!("/v3/deployments/{}/events", encode_segment(id));
        let mut since: Option<u64> = None;
        let mut seen_events: HashSet<String> = HashSet::new();
        let mut failures = 0u32;
        self.line(
            LogStream::System,
            format!("following the build events of {id}"),
        );
        loop {
            let build_over = state().is_some_and(|s| {
                !matches!(map_ready_state(&s), Some(DeploymentState::Starting) | None)
            });
            let since_text = since.map(|s| s.to_string());
            let mut query = vec![("follow", "1"), ("direction", "forward")];
            if let Some(s) = &since_text {
                query.push(("since", s.as_str()));
            }
            let mut fresh = 0usize;
            let outcome = self
                .stream(&events_path, &query, |value| {
                    let Some(event) = BuildEvent::read(value) else {
                        return;
                    };
                    if event.kind == "delimiter" || !seen_events.insert(event.id.clone()) {
                        return;
                    }
                    if seen_events.len() > SEEN_ROWS {
                        seen_events.clear();
                        seen_events.insert(event.id.clone());
                    }
                    since = Some(since.map_or(event.created, |s| s.max(event.created)));
                    fresh += 1;
                    if let Some(text) = &event.text {
                        let stream = match event.kind.as_str() {
                            "stderr" | "fatal" => LogStream::Stderr,
                            "stdout" => LogStream::Stdout,
                            _ => LogStream::System,
                        };
                        for part in text.lines().filter(|l| !l.trim().is_empty()) {
                            self.line(stream, format!("build: {part}"));
                        }
                    }
                })
                .await;
            match outcome {
                Ok(()) => failures = 0,
                Err(error) => {
                    failures += 1;
                    self.stream_failed("build events", &error, failures).await;
                    continue;
                }
            }
            if build_over && fresh == 0 {
                break;
            }
            if fresh == 0 {
                tokio::time::sleep(self.stream_pause()).await;
            }
        }
        self.build_logged.send_replace(Some(id.to_owned()));
        if state().as_deref() != Some("READY") {
            return;
        }
        let runtime_path = format!(
            "/v1/projects/{}/deployments/{}/runtime-logs",
            encode_segment(&self.spec.project_id),
            encode_segment(id)
        );
        self.line(
            LogStream::System,
            format!("following the runtime logs of {id}"),
        );
        let mut seen_rows: HashSet<String> = HashSet::new();
        let mut order: VecDeque<String> = VecDeque::new();
        let mut failures = 0u32;
        loop {
            let mut fresh = 0usize;
            let outcome = self
                .stream(&runtime_path, &[], |value| {
                    let Some(row) = RuntimeRow::read(value) else {
                        return;
                    };
                    if row.source == "delimiter" || !seen_rows.insert(row.id.clone()) {
                        return;
                    }
                    order.push_back(row.id.clone());
                    if order.len() > SEEN_ROWS
                        && let Some(old) = order.pop_front()
                    {
                        seen_rows.remove(&old);
                    }
                    fresh += 1;
                    let stream = if row.level == "error" {
                        LogStream::Stderr
                    } else {
                        LogStream::Stdout
                    };
                    for part in row.message.lines().filter(|l| !l.trim().is_empty()) {
                        self.line(stream, format!("runtime: {}{part}", row.request));
                    }
                })
                .await;
            match outcome {
                Ok(()) => failures = 0,
                Err(error) => {
                    failures += 1;
                    self.stream_failed("runtime logs", &error, failures).await;
                    continue;
                }
            }
            if fresh == 0 {
                tokio::time::sleep(self.stream_pause()).await;
            }
        }
    }

    /// A failed stream connection: said once in the log (the first of a row), then a wait.
    async fn stream_failed(&self, what: &str, error: &StreamError, failures: u32) {
        let text = self.mask(&error.text);
        if failures == 1 {
            self.line(
                LogStream::Stderr,
                format!("{what}: {text}; retrying in the background"),
            );
        }
        debug!(resource = %self.name, what, error = %text, failures, "Log stream failed.");
        let backoff = self
            .stream_pause()
            .saturating_mul(2u32.saturating_pow(failures.min(6)))
            .min(Duration::from_secs(60));
        tokio::time::sleep(error.retry_after.unwrap_or(backoff)).await;
    }

    /// Opens `path` as a stream and calls `each` with every JSON line as it arrives; returns
    /// when the server ends the stream.
    async fn stream(
        &self,
        path: &str,
        query: &[(&str, &str)],
        mut each: impl FnMut(&Value),
    ) -> Result<(), StreamError> {
        let request = self
            .api
            .request(Method::GET, path, query, None)
            .map_err(|e| StreamError {
                text: e.text,
                retry_after: None,
            })?;
        let mut builder = self
            .streams
            .get(request.url.clone())
            .header("Accept", "application/stream+json");
        if let Some(token) = self.api.rest.token() {
            builder = builder.bearer_auth(token.expose());
        }
        // Every (re)connect is one more request against the instance's rate limit.
        self.api.rest.take_token().await;
        let shown = request.redacted_url();
        let transport = |e: reqwest::Error| StreamError {
            text: format!("GET {shown}: {}", e.without_url()),
            retry_after: None,
        };
        let mut response = builder.send().await.map_err(transport)?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            return Err(StreamError {
                text: format!("GET {shown}: HTTP {status}"),
                retry_after,
            });
        }
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                // A silent stream: read what came and reconnect, nothing went wrong.
                Err(e) if e.is_timeout() => break,
                Err(e) => return Err(transport(e)),
            };
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                read_line(&line, &mut each);
            }
        }
        read_line(&pending, &mut each);
        Ok(())
    }
}

/// Reads one stream line (a JSON object, or an array of them for a server that answers
/// `application/json`).
fn read_line(line: &[u8], each: &mut impl FnMut(&Value)) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim();
    if text.is_empty() {
        return;
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(all)) => all.iter().for_each(&mut *each),
        Ok(value) => each(&value),
        Err(error) => debug!(%error, "A log stream line that is not JSON; skipped."),
    }
}

/// Waits until the followed deployment is not `id` any more; false when the run is over.
async fn wait_for_other(current: &mut watch::Receiver<Option<Deployment>>, id: &str) -> bool {
    current
        .wait_for(|d| d.as_ref().is_some_and(|d| d.id != id))
        .await
        .is_ok()
}

/// A failed stream connection.
#[derive(Debug)]
struct StreamError {
    text: String,
    retry_after: Option<Duration>,
}

/// One build event (either of the spec's two shapes: flat or with a `payload`).
struct BuildEvent {
    kind: String,
    id: String,
    created: u64,
    text: Option<String>,
}

impl BuildEvent {
    fn read(value: &Value) -> Option<Self> {
        let kind = value.get("type")?.as_str()?.to_owned();
        let payload = value.get("payload").unwrap_or(value);
        let created = value
            .get("created")
            .or_else(|| payload.get("created"))
            .and_then(Value::as_f64)
            .unwrap_or(0.0) as u64;
        let id = payload
            .get("id")
            .or_else(|| value.get("id"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{created}-{kind}"));
        let text = payload
            .get("text")
            .or_else(|| value.get("text"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        Some(Self {
            kind,
            id,
            created,
            text,
        })
    }
}

/// One runtime log row.
struct RuntimeRow {
    id: String,
    source: String,
    level: String,
    message: String,
    /// `GET /path 200: ` when the row is about a request.
    request: String,
}

impl RuntimeRow {
    fn read(value: &Value) -> Option<Self> {
        let text = |k: &str| value.get(k).and_then(Value::as_str).map(str::to_owned);
        let request = match (text("requestMethod"), text("requestPath")) {
            (Some(m), Some(p)) if !m.is_empty() => {
                let code = value
                    .get("responseStatusCode")
                    .and_then(Value::as_f64)
                    .map(|c| format!(" {}", c as u64))
                    .unwrap_or_default();
                format!("{m} {p}{code}: ")
            }
            _ => String::new(),
        };
        Some(Self {
            id: text("rowId")?,
            source: text("source").unwrap_or_default(),
            level: text("level").unwrap_or_default(),
            message: text("message").unwrap_or_default(),
            request,
        })
    }
}

/// A resource of the `vercel` provider (see the module docs).
pub struct VercelResource {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for VercelResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VercelResource")
            .field("name", &self.inner.name)
            .field("project_id", &self.inner.spec.project_id)
            .finish_non_exhaustive()
    }
}

impl Drop for VercelResource {
    fn drop(&mut self) {
        // The observe loop and the log follower hold the resource's state: they go with it.
        *lock(&self.inner.output) = None;
        self.inner.slot.forget();
    }
}

impl VercelResource {
    /// The provider state at the last read (`paused`, or the deployment's `readyState`).
    pub fn provider_status(&self) -> Option<String> {
        let view = lock(&self.inner.view);
        match (view.paused, &view.deployment) {
            (Some(true), _) => Some("paused".into()),
            (Some(false), Some(d)) => Some(d.ready_state.clone()),
            (Some(false), None) => Some("none".into()),
            (None, _) => None,
        }
    }

    /// The project id or name.
    pub fn project_id(&self) -> &str {
        &self.inner.spec.project_id
    }
}

impl Resource for VercelResource {
    fn kind(&self) -> &'static str {
        "vercel"
    }

    fn name(&self) -> &str {
        &self.inner.name
    }

    /// Reads the project (a refused token, an unknown project or an unreachable API fail
    /// here), unpauses it when paused, and begins the run; the observe loop follows the
    /// production deployment to READY.
    fn start(&self) -> BoxFuture<'_, Result<Run, ResourceError>> {
        Box::pin(async move {
            let inner = &self.inner;
            if inner.slot.is_live() {
                return Ok(inner.begin_run(true, inner.next_line()));
            }
            // What the start says opens the run's output.
            let since = inner.next_line();
            {
                let mut view = lock(&inner.view);
                view.failure = None;
                view.building_since = None;
            }
            let reading = inner
                .read(true)
                .await
                .map_err(|e| inner.error("start", &e))?;
            inner.record(&reading);
            let mut adopted = true;
            if reading.paused {
                let request = inner
                    .api
                    .request(
                        Method::POST,
                        &format!(
                            "/v1/projects/{}/unpause",
                            encode_segment(&inner.spec.project_id)
                        ),
                        &[],
                        None,
                    )
                    .map_err(|e| inner.error("unpause", &e))?;
                inner.line(
                    LogStream::System,
                    format!("unpause: POST {}", request.redacted_url()),
                );
                inner
                    .api
                    .rest
                    .send(&request)
                    .await
                    .map_err(|e| inner.error("unpause", &e))?;
                lock(&inner.view).operation = Some(Operation::Unpause {
                    since: Instant::now(),
                });
                adopted = false;
            }
            match &reading.deployment {
                None => {
                    return Err(ResourceError::Invalid(format!(
                        "{} has no production deployment: deploy one (`kinfra resource {} deploy`)",
                        inner.what(),
                        inner.name
                    )));
                }
                Some(d) => match map_ready_state(&d.ready_state) {
                    Some(DeploymentState::Failed | DeploymentState::Absent) => {
                        let failure = inner.failure_text(d);
                        lock(&inner.view).failure = Some(failure.clone());
                        return Err(ResourceError::Invalid(failure));
                    }
                    Some(DeploymentState::Stopped) => {
                        return Err(ResourceError::Invalid(format!(
                            "CANCELED: the latest production deployment {} of {} was canceled: \
                             deploy or promote another",
                            d.id,
                            inner.what()
                        )));
                    }
                    _ => {}
                },
            }
            Ok(inner.begin_run(adopted, since))
        })
    }

    /// Pauses the project (unless it is paused already) and ends the run.
    fn stop(&self, _grace: Duration) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let (paused, failed) = {
                let view = lock(&inner.view);
                (
                    view.paused == Some(true),
                    view.failure.is_some()
                        || matches!(
                            view.state,
                            Some(DeploymentState::Failed | DeploymentState::Absent)
                        ),
                )
            };
            if failed {
                // Nothing serves to pause.
                inner.end_live(1);
                return Ok(());
            }
            let mut sent = Ok(());
            if !paused {
                let request = inner
                    .api
                    .request(
                        Method::POST,
                        &format!(
                            "/v1/projects/{}/pause",
                            encode_segment(&inner.spec.project_id)
                        ),
                        &[],
                        None,
                    )
                    .map_err(|e| inner.error("pause", &e))?;
                inner.line(
                    LogStream::System,
                    format!("pause: POST {}", request.redacted_url()),
                );
                sent = match inner.api.rest.send(&request).await {
                    Ok(_) => {
                        let mut view = lock(&inner.view);
                        view.paused = Some(true);
                        view.operation = Some(Operation::Pause {
                            since: Instant::now(),
                        });
                        Ok(())
                    }
                    Err(e) => Err(inner.error("pause", &e)),
                };
            }
            inner.end_live(0);
            sent
        })
    }

    /// Lets go of the run; the project stays as it is (`on_down = "keep"`).
    fn release(&self, _grace: Duration) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            self.inner.end_live(0);
            Ok(())
        })
    }

    fn status(&self) -> BoxFuture<'_, Result<Observed, ResourceError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let reading = inner
                .read(false)
                .await
                .map_err(|e| inner.error("status", &e))?;
            let (state, _) = inner.record(&reading);
            if reading.paused {
                return Ok(Observed::Idle);
            }
            Ok(match state {
                None | Some(DeploymentState::Stopped) => Observed::Idle,
                Some(DeploymentState::Failed) => Observed::Exited(ExitInfo {
                    code: Some(1),
                    signal: None,
                }),
                Some(DeploymentState::Absent) => Observed::Absent,
                Some(_) => Observed::Running,
            })
        })
    }

    /// Healthy while the project is not paused and its production deployment is READY;
    /// unknown otherwise. No I/O.
    fn health(&self) -> BoxFuture<'_, Result<Health, ResourceError>> {
        Box::pin(async move {
            let view = lock(&self.inner.view);
            let ready = view.paused == Some(false)
                && view
                    .deployment
                    .as_ref()
                    .is_some_and(|d| d.ready_state == "READY");
            Ok(if ready {
                Health::Healthy
            } else {
                Health::Unknown
            })
        })
    }

    fn has_own_health(&self) -> bool {
        true
    }

    fn connection(&self) -> Connection {
        let view = lock(&self.inner.view);
        let mut fields = BTreeMap::new();
        fields.insert(
            "project_id".to_owned(),
            Secret::new(self.inner.spec.project_id.clone()),
        );
        let Some(ready) = view.ready.as_ref().filter(|d| !d.url.is_empty()) else {
            return Connection {
                host: String::new(),
                port: None,
                url: None,
                fields,
            };
        };
        let url = format!("https://{}", ready.url);
        fields.insert("deployment_id".to_owned(), Secret::new(ready.id.clone()));
        fields.insert("deployment_url".to_owned(), Secret::new(url.clone()));
        Connection {
            host: ready.url.clone(),
            port: Some(443),
            url: Some(Secret::new(url)),
            fields,
        }
    }

    fn logs(&self, tail: usize) -> BoxFuture<'_, Result<Vec<OutputLine>, ResourceError>> {
        Box::pin(async move {
            let logs = lock(&self.inner.logs);
            let skip = logs.len().saturating_sub(tail);
            Ok(logs.iter().skip(skip).map(|(_, l)| l.clone()).collect())
        })
    }

    /// kinfra never deletes a Vercel project: the project is the user's.
    fn remove(&self, _volumes: bool) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            self.inner.line(
                LogStream::System,
                "kinfra does not delete Vercel projects; the project is left as it is".into(),
            );
            Ok(())
        })
    }

    fn sync(&self) -> Option<SyncFacts> {
        let inner = &self.inner;
        let observed = lock(&inner.observed).as_ref().map(|o| o.borrow().clone());
        let provider_state = self.provider_status();
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
        let paused = view.paused?;
        if paused {
            return match view.operation {
                Some(Operation::Unpause { since }) => report(
                    ServiceState::Starting,
                    format!(
                        "paused: unpause requested {} ago",
                        elapsed_text(since.elapsed())
                    ),
                ),
                Some(Operation::Pause { .. }) => report(ServiceState::Stopped, "paused".into()),
                None => report(ServiceState::Stopped, "paused outside kinfra".into()),
            };
        }
        if view.no_deployment {
            return report(ServiceState::Stopped, "no production deployment".into());
        }
        let deployment = view.deployment.as_ref()?;
        let raw = &deployment.ready_state;
        let known = map_ready_state(raw).is_some();
        let suffix = if known {
            String::new()
        } else {
            format!(" (unknown readyState {raw}; last known state kept)")
        };
        match view.state? {
            DeploymentState::Starting => report(
                ServiceState::Starting,
                format!("{raw}: production deployment {}{suffix}", deployment.id),
            ),
            DeploymentState::Running => {
                let url = view
                    .ready
                    .as_ref()
                    .map(|d| format!(" https://{}", d.url))
                    .unwrap_or_default();
                report(ServiceState::Running, format!("{raw}{url}{suffix}"))
            }
            DeploymentState::Stopping => report(ServiceState::Stopping, format!("{raw}{suffix}")),
            DeploymentState::Stopped => report(
                ServiceState::Stopped,
                format!(
                    "{raw}: production deployment {} was canceled{suffix}",
                    deployment.id
                ),
            ),
            DeploymentState::Failed | DeploymentState::Absent => report(
                ServiceState::Failed,
                format!("{}{suffix}", self.inner.failure_text(deployment)),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_states_map_as_design_says() {
        use DeploymentState::*;
        for (state, mapped) in [
            ("QUEUED", Starting),
            ("INITIALIZING", Starting),
            ("BUILDING", Starting),
            ("READY", Running),
            ("CANCELED", Stopped),
            ("ERROR", Failed),
            ("DELETED", Absent),
            ("ANALYZING", Starting),
            ("CANCELING", Stopping),
        ] {
            assert_eq!(map_ready_state(state), Some(mapped), "{state}");
        }
        assert_eq!(map_ready_state("BLOCKED"), None);
    }

    #[test]
    fn git_source_comes_from_the_project_link() {
        let project = json!({"link": {"type": "github", "repoId": 42, "productionBranch": "main"}});
        assert_eq!(
            git_source(&project, None).ok(),
            Some(json!({"type": "github", "repoId": 42, "ref": "main"}))
        );
        assert_eq!(
            git_source(&project, Some("v2")).ok(),
            Some(json!({"type": "github", "repoId": 42, "ref": "v2"}))
        );
        let gitlab =
            json!({"link": {"type": "gitlab", "projectId": "9", "productionBranch": "trunk"}});
        assert_eq!(
            git_source(&gitlab, None).ok(),
            Some(json!({"type": "gitlab", "projectId": "9", "ref": "trunk"}))
        );
        assert!(git_source(&json!({"id": "prj"}), None).is_err());
    }

    #[test]
    fn stream_lines_are_read_as_objects_or_arrays() {
        let mut seen = Vec::new();
        read_line(b"{\"a\":1}\n", &mut |v: &Value| seen.push(v.clone()));
        read_line(b"[{\"a\":2},{\"a\":3}]", &mut |v: &Value| {
            seen.push(v.clone())
        });
        read_line(b"not json\n", &mut |v: &Value| seen.push(v.clone()));
        read_line(b"  \n", &mut |v: &Value| seen.push(v.clone()));
        assert_eq!(seen, [json!({"a":1}), json!({"a":2}), json!({"a":3})]);
    }
}
