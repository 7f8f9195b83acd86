//! The `railway` provider: a Railway service instance (a service in one environment) as a
//! resource, through Railway's public GraphQL API (`POST {base}/graphql/v2`, base
//! `https://backboard.railway.com`).
//!
//! Auth: the instance's token is an account (or team) token sent as a bearer token, or, with
//! `token_kind = "project"` on the `[providers.NAME]` table, a project token sent as the
//! `Project-Access-Token` header.
//!
//! The resource observes `serviceInstance(serviceId, environmentId) { latestDeployment }`
//! every `interval` and maps the deployment's `status` as DESIGN's table says: `QUEUED WAITING
//! NEEDS_APPROVAL INITIALIZING BUILDING DEPLOYING` starting, `SUCCESS` running (stopped when
//! `deploymentStopped`), `REMOVING` stopping, `SLEEPING` sleeping, `FAILED` failed, `CRASHED`
//! backoff (the run ends with a failure and kinfra's restart policy restarts it), `REMOVED`
//! absent (shown stopped, "absent"), `SKIPPED` no change; any other value keeps the last state
//! with a warning (`…ING` values go to starting or stopping). The raw status is the resource's
//! `provider_state`.
//!
//! Start restarts a stopped or crashed deployment (`deploymentRestart`) or redeploys the
//! service instance (`serviceInstanceRedeploy`) when there is no deployment to restart; stop
//! sends `deploymentStop` and waits (up to the grace) for `deploymentStopped`. The build and
//! deploy logs of the latest deployment (`buildLogs`, `deploymentLogs`) go into the
//! resource's log at every observe. Commands: `deploy {commit_sha?}`
//! (`serviceInstanceDeployV2`), `redeploy` (`serviceInstanceRedeploy`) and `sleep {enabled}`
//! (`serviceInstanceUpdate`'s `sleepApplication`), each with a dry-run.
//!
//! GraphQL reports errors in a 200 answer (`errors[]`): they are errors here, with their
//! messages; "Not Authorized" is a refused token (permanent, naming the instance). Nothing
//! shown (errors, log lines, dry-runs, sync errors) holds the token.

use kinfra_core::Secret;
use kinfra_core::event::ExitInfo;
use kinfra_core::resource::{
    BoxFuture, Connection, Observed, OutputLine, ReportedState, Resource, ResourceError, Run,
    SyncFacts,
};
use kinfra_core::state::{Health, ServiceState};
use kinfra_core::status::LogStream;
use kinfra_provider::command::{CommandSpec, ParamKind, ParamSpec, ParamValue, ValidatedParams};
use kinfra_provider::http::{Auth, HttpError, HttpRequest, Method};
use kinfra_provider::metadata::{
    AuthMethod, Capability, Category, ConfigKeySpec, ConfigKind, ProviderMetadata, ResourceTypeSpec,
};
use kinfra_provider::observe::{self, ObserveConfig, ObserveError};
use kinfra_provider::operation::elapsed_text;
use kinfra_provider::provider::{
    InstanceContext, KINFRA_KEYS, Provider, ProviderError, ResourceDecl, ResourceProblem,
    config_duration_or, config_problems,
};
use kinfra_provider::rest::{CallError, RestApi, RestClients, TokenNeed};
use kinfra_provider::result::{CommandResult, PlannedRequest, mask_text};
use kinfra_provider::retry::{Failure, classify};
use kinfra_provider::run_slot::{AbortOnDrop, LogRing, RunSlot, SyncRecord, lock};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::warn;

/// The provider's id.
pub const ID: &str = "railway";
/// The one resource type it runs.
pub const RESOURCE_TYPE: &str = "service";
/// Railway's API host; requests go to `{base}/graphql/v2`.
pub const DEFAULT_BASE_URL: &str = "https://backboard.railway.com";
/// The GraphQL endpoint's path under the base URL.
pub const GRAPHQL_PATH: &str = "/graphql/v2";
/// The header a project token travels in.
pub const PROJECT_TOKEN_HEADER: &str = "Project-Access-Token";
/// The observe interval when the resource sets none.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// How long a restart or redeploy may stay in progress before the start counts as failed.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// Log lines asked for per stream and observe.
const LOG_LIMIT: i64 = 200;
/// Output lines kept for [`Resource::logs`].
const LOG_LINES: usize = 500;

/// The observe query: the service instance and its latest deployment.
pub const SERVICE_INSTANCE_QUERY: &str =
    "query RailwayServiceInstance($serviceId: String!, $environmentId: String!) {
  serviceInstance(serviceId: $serviceId, environmentId: $environmentId) {
    id
    serviceName
    sleepApplication
    latestDeployment {
      id
      status
      deploymentStopped
      staticUrl
      createdAt
    }
  }
}";
/// The build and deploy logs of one deployment since the last lines seen.
pub const LOGS_QUERY: &str = "query RailwayDeploymentLogs($deploymentId: String!, $buildSince: DateTime, $deploySince: DateTime, $limit: Int) {
  buildLogs(deploymentId: $deploymentId, startDate: $buildSince, limit: $limit) {
    timestamp
    message
    severity
  }
  deploymentLogs(deploymentId: $deploymentId, startDate: $deploySince, limit: $limit) {
    timestamp
    message
    severity
  }
}";
/// Stops a deployment.
pub const STOP_MUTATION: &str = "mutation RailwayDeploymentStop($id: String!) {
  deploymentStop(id: $id)
}";
/// Restarts a deployment.
pub const RESTART_MUTATION: &str = "mutation RailwayDeploymentRestart($id: String!) {
  deploymentRestart(id: $id)
}";
/// Redeploys the service instance (its latest deployment's source).
pub const REDEPLOY_MUTATION: &str =
    "mutation RailwayServiceInstanceRedeploy($serviceId: String!, $environmentId: String!) {
  serviceInstanceRedeploy(serviceId: $serviceId, environmentId: $environmentId)
}";
/// Deploys the service instance (a commit, or the latest one); answers the deployment's id.
pub const DEPLOY_MUTATION: &str = "mutation RailwayServiceInstanceDeploy($serviceId: String!, $environmentId: String!, $commitSha: String) {
  serviceInstanceDeployV2(serviceId: $serviceId, environmentId: $environmentId, commitSha: $commitSha)
}";
/// Turns the service's sleeping (App Sleeping) on or off.
pub const SLEEP_MUTATION: &str = "mutation RailwayServiceInstanceSleep($serviceId: String!, $environmentId: String!, $input: ServiceInstanceUpdateInput!) {
  serviceInstanceUpdate(serviceId: $serviceId, environmentId: $environmentId, input: $input)
}";

/// What a deployment's status means in kinfra's state model (DESIGN's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeploymentState {
    /// QUEUED WAITING NEEDS_APPROVAL INITIALIZING BUILDING DEPLOYING (and other `…ING`
    /// values going up).
    Starting,
    /// SUCCESS.
    Running,
    /// REMOVING (and other `…ING` values going down).
    Stopping,
    /// SUCCESS with `deploymentStopped`: stopped (by `deploymentStop`).
    Stopped,
    /// SLEEPING: asleep, woken by the next request.
    Sleeping,
    /// FAILED.
    Failed,
    /// CRASHED: Railway restarts it per its restart policy; kinfra shows backoff.
    Crashed,
    /// REMOVED: no deployment runs.
    Absent,
}

/// Maps a deployment's `status` (and its `deploymentStopped`); `None` for a value that says
/// nothing known (SKIPPED, or an unknown one): the last state is kept.
pub fn map_status(status: &str, stopped: bool) -> Option<DeploymentState> {
    use DeploymentState::*;
    Some(match status {
        "SLEEPING" => Sleeping,
        "REMOVED" => Absent,
        _ if stopped => Stopped,
        "QUEUED" | "WAITING" | "NEEDS_APPROVAL" | "INITIALIZING" | "BUILDING" | "DEPLOYING" => {
            Starting
        }
        "SUCCESS" => Running,
        "REMOVING" => Stopping,
        "FAILED" => Failed,
        "CRASHED" => Crashed,
        "SKIPPED" => return None,
        other if other.ends_with("ING") => {
            let down = ["STOP", "REMOV", "DELET", "SHUT", "PAUS", "SUSPEND", "DRAIN"];
            if down.iter().any(|d| other.contains(d)) {
                Stopping
            } else {
                Starting
            }
        }
        _ => return None,
    })
}

/// True for the statuses [`map_status`] knows (SKIPPED included: it means no change).
fn known_status(status: &str) -> bool {
    matches!(
        status,
        "QUEUED"
            | "WAITING"
            | "NEEDS_APPROVAL"
            | "INITIALIZING"
            | "BUILDING"
            | "DEPLOYING"
            | "SUCCESS"
            | "REMOVING"
            | "SLEEPING"
            | "FAILED"
            | "CRASHED"
            | "REMOVED"
            | "SKIPPED"
    ) || status.ends_with("ING")
}

/// How the instance's token travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenKind {
    /// An account or team token: `Authorization: Bearer`.
    Account,
    /// A project token: `Project-Access-Token`.
    Project,
}

/// The instance's `token_kind`, checked.
fn token_kind(ctx: &InstanceContext) -> Result<TokenKind, ResourceProblem> {
    match ctx.config.get("token_kind") {
        None => Ok(TokenKind::Account),
        Some(Value::String(k)) if k == "account" || k == "team" => Ok(TokenKind::Account),
        Some(Value::String(k)) if k == "project" => Ok(TokenKind::Project),
        Some(other) => Err(ResourceProblem::at(
            "token_kind",
            format!(
                "[providers.{}]: expected \"account\" or \"project\", got {other}",
                ctx.instance
            ),
        )),
    }
}

/// A resource's own keys, parsed.
#[derive(Debug, Clone)]
struct ServiceSpec {
    service_id: String,
    environment_id: String,
    interval: Duration,
    operation_timeout: Duration,
    logs: bool,
}

impl ServiceSpec {
    fn parse(config: &Map<String, Value>) -> Result<Self, Vec<ResourceProblem>> {
        let mut problems = Vec::new();
        let mut id = |key: &str| match config.get(key) {
            Some(Value::String(v)) if !v.trim().is_empty() => v.clone(),
            Some(Value::String(_)) => {
                problems.push(ResourceProblem::at(key, "must not be empty"));
                String::new()
            }
            Some(_) => {
                problems.push(ResourceProblem::at(key, "expected a string"));
                String::new()
            }
            None => {
                problems.push(ResourceProblem::at(key, "missing (required)"));
                String::new()
            }
        };
        let service_id = id("service_id");
        let environment_id = id("environment_id");
        let interval = config_duration_or(config, "interval", DEFAULT_INTERVAL, &mut problems);
        let operation_timeout = config_duration_or(
            config,
            "operation_timeout",
            DEFAULT_OPERATION_TIMEOUT,
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
                service_id,
                environment_id,
                interval,
                operation_timeout,
                logs,
            })
        } else {
            Err(problems)
        }
    }

    fn ids(&self) -> Value {
        json!({ "serviceId": self.service_id, "environmentId": self.environment_id })
    }
}

/// Why a GraphQL call failed.
#[derive(Debug, Clone)]
pub enum GraphqlError {
    /// The HTTP exchange failed (status, timeout, connection, malformed JSON).
    Http(CallError),
    /// The API answered `errors[]`: their messages, the token masked.
    Api(Vec<String>),
}

impl std::fmt::Display for GraphqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GraphqlError::Http(e) => f.write_str(&e.text),
            GraphqlError::Api(messages) => {
                write!(f, "the Railway API answered: {}", messages.join("; "))
            }
        }
    }
}

impl GraphqlError {
    /// True for an answer that refuses the token ("Not Authorized", 401, 403).
    fn refused(&self) -> bool {
        match self {
            GraphqlError::Http(e) => matches!(e.http.status(), Some(401 | 403)),
            GraphqlError::Api(messages) => messages.iter().any(|m| {
                let m = m.to_ascii_lowercase();
                m.contains("not authorized") || m.contains("unauthorized")
            }),
        }
    }

    /// True for an answer that says the thing does not exist.
    fn not_found(&self) -> bool {
        match self {
            GraphqlError::Http(e) => e.http.status() == Some(404),
            GraphqlError::Api(messages) => messages
                .iter()
                .any(|m| m.to_ascii_lowercase().contains("not found")),
        }
    }
}

/// One instance's GraphQL endpoint.
#[derive(Debug, Clone)]
struct Graphql {
    api: RestApi,
}

impl Graphql {
    /// The request for `query` with `variables`.
    fn request(&self, query: &str, variables: Value) -> Result<HttpRequest, GraphqlError> {
        self.api
            .request(
                Method::POST,
                GRAPHQL_PATH,
                &[],
                Some(json!({ "query": query, "variables": variables })),
            )
            .map_err(GraphqlError::Http)
    }

    /// Sends `query`: with `retry`, rate limits and transient failures are retried within
    /// the provider's policy; without, it is sent once through the instance's bucket (an
    /// observe, whose loop backs off itself). Answers `data`.
    async fn run(&self, query: &str, variables: Value, retry: bool) -> Result<Value, GraphqlError> {
        let request = self.request(query, variables)?;
        let answer = if retry {
            self.api.send(&request).await
        } else {
            self.api.send_once(&request).await
        }
        .map_err(GraphqlError::Http)?;
        let body: Value = answer
            .json()
            .map_err(|http| GraphqlError::Http(self.api.call_error(http)))?;
        if let Some(errors) = body.get("errors").and_then(Value::as_array)
            && !errors.is_empty()
        {
            return Err(GraphqlError::Api(
                errors
                    .iter()
                    .map(|e| {
                        let text = e
                            .get("message")
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                            .unwrap_or_else(|| e.to_string());
                        self.api.mask(&text)
                    })
                    .collect(),
            ));
        }
        match body.get("data") {
            Some(data) if data.is_object() => Ok(data.clone()),
            _ => Err(GraphqlError::Http(self.api.call_error(HttpError::Decode {
                url: format!("{}{GRAPHQL_PATH}", self.api.base()),
                reason: "no `data` object and no `errors` in the answer".into(),
            }))),
        }
    }

    /// `error` as a resource's error for `op` on `what`.
    fn resource_error(&self, op: &str, what: &str, error: &GraphqlError) -> ResourceError {
        match error {
            GraphqlError::Http(e) => self.api.resource_error(op, what, e),
            GraphqlError::Api(_) if error.refused() => ResourceError::Invalid(format!(
                "{op}: the Railway API refused the token of provider instance `{}`: {error}",
                self.api.instance()
            )),
            GraphqlError::Api(_) if error.not_found() => {
                ResourceError::Invalid(format!("{op}: {what} not found: {error}"))
            }
            GraphqlError::Api(_) => ResourceError::op(op, error),
        }
    }
}

/// The commands every service offers.
fn command_specs() -> Vec<CommandSpec> {
    let command = |id: &str, description: &str, params: Vec<ParamSpec>| {
        CommandSpec::new(id, id, description)
            .in_category("deploy")
            .for_resource_type(RESOURCE_TYPE)
            .with_params(params)
            .with_dry_run()
    };
    vec![
        command(
            "deploy",
            "Deploys the service instance: a commit, or the latest one of its source \
             (serviceInstanceDeployV2); answers the new deployment's id.",
            vec![ParamSpec::optional(
                "commit_sha",
                ParamKind::String,
                "The commit to deploy (default: the latest commit).",
            )],
        ),
        command(
            "redeploy",
            "Redeploys the service instance's latest deployment (serviceInstanceRedeploy).",
            vec![],
        ),
        command(
            "sleep",
            "Turns App Sleeping on or off: an idle service sleeps and wakes on the next \
             request (serviceInstanceUpdate, sleepApplication).",
            vec![ParamSpec::required(
                "enabled",
                ParamKind::Boolean,
                "True: let the service sleep when idle; false: keep it awake.",
            )],
        ),
    ]
}

fn metadata() -> ProviderMetadata {
    ProviderMetadata {
        id: ID.into(),
        name: ID.into(),
        display_name: "Railway".into(),
        description: "Railway services through the public GraphQL API (/graphql/v2): a \
                      service instance's latest deployment observed and stopped, restarted \
                      or redeployed, its build and deploy logs in the resource's log; deploy, \
                      redeploy and sleep commands. The instance's token is an account token \
                      (bearer) or, with token_kind = \"project\", a project token \
                      (Project-Access-Token header)."
            .into(),
        version: env!("CARGO_PKG_VERSION").into(),
        category: Category::Cloud,
        capabilities: vec![
            Capability::Provision,
            Capability::Monitor,
            Capability::DryRun,
        ],
        resource_types: vec![ResourceTypeSpec {
            name: RESOURCE_TYPE.into(),
            description: "A Railway service in one environment: runs while its latest \
                          deployment is SUCCESS."
                .into(),
            config: vec![
                ConfigKeySpec::required(
                    "service_id",
                    ConfigKind::String,
                    "The service's id (a UUID).",
                ),
                ConfigKeySpec::required(
                    "environment_id",
                    ConfigKind::String,
                    "The environment's id (a UUID).",
                ),
                ConfigKeySpec::optional(
                    "operation_timeout",
                    ConfigKind::Duration,
                    "How long a restart or redeploy may take before the start counts as \
                     failed (default 20m).",
                ),
                ConfigKeySpec::optional(
                    "logs",
                    ConfigKind::Boolean,
                    "Read the latest deployment's build and deploy logs into the resource's \
                     log at every observe (default true).",
                ),
            ],
        }],
        auth_methods: vec![AuthMethod::Bearer, AuthMethod::CustomHeader],
    }
}

/// The `railway` provider.
pub struct RailwayProvider {
    metadata: ProviderMetadata,
    commands: Vec<CommandSpec>,
    clients: RestClients,
}

impl std::fmt::Debug for RailwayProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RailwayProvider").finish_non_exhaustive()
    }
}

impl Default for RailwayProvider {
    fn default() -> Self {
        Self::new()
    }
}

/// The `railway` provider with the default HTTP timeouts.
pub fn provider() -> Arc<dyn Provider> {
    Arc::new(RailwayProvider::new())
}

impl RailwayProvider {
    /// The provider with the default HTTP timeouts.
    pub fn new() -> Self {
        Self::with_clients(RestClients::new(
            "the Railway API",
            Some(DEFAULT_BASE_URL),
            TokenNeed::Required("a Railway account or project token"),
        ))
    }

    /// The provider on `clients` (other timeouts or retries).
    pub fn with_clients(clients: RestClients) -> Self {
        Self {
            metadata: metadata(),
            commands: command_specs(),
            clients,
        }
    }

    /// The instance's GraphQL endpoint, its token sent the way `token_kind` says.
    fn graphql(&self, ctx: &InstanceContext) -> Result<Graphql, ProviderError> {
        let kind = token_kind(ctx).map_err(|p| ProviderError::InvalidResource {
            resource: format!("[providers.{}]", ctx.instance),
            problems: vec![p],
        })?;
        let api = self.clients.api(ctx)?;
        let api = match (kind, api.token().cloned()) {
            (TokenKind::Project, Some(token)) => api.with_auth(Auth::Header {
                name: PROJECT_TOKEN_HEADER.into(),
                value: token,
            }),
            _ => api,
        };
        Ok(Graphql { api })
    }

    /// The [`RailwayResource`] for `decl` (the concrete type behind [`Provider::resource`]).
    pub fn service_resource(
        &self,
        instance: &InstanceContext,
        decl: &ResourceDecl,
    ) -> Result<RailwayResource, ProviderError> {
        let spec = decl.parse_config(ServiceSpec::parse)?;
        let graphql = self.graphql(instance)?;
        Ok(RailwayResource {
            inner: Arc::new(Inner {
                name: decl.name.clone(),
                spec,
                graphql,
                view: Mutex::new(View::default()),
                logs: LogRing::new(LOG_LINES),
                slot: RunSlot::default(),
                output: Mutex::new(None),
                sync: SyncRecord::default(),
            }),
        })
    }
}

impl Provider for RailwayProvider {
    fn metadata(&self) -> &ProviderMetadata {
        &self.metadata
    }

    fn commands(&self) -> &[CommandSpec] {
        &self.commands
    }

    /// Reads the service instance once and renders what the start would send after that
    /// read: `deploymentRestart` of a stopped or crashed deployment, `serviceInstanceRedeploy`
    /// when there is none to restart, nothing for one that runs or sleeps.
    fn planned_start<'a>(
        &'a self,
        instance: &'a InstanceContext,
        decl: &'a ResourceDecl,
    ) -> BoxFuture<'a, Result<Option<Vec<PlannedRequest>>, ProviderError>> {
        Box::pin(async move {
            let resource = self.service_resource(instance, decl)?;
            let inner = &resource.inner;
            let answer = inner.read(true).await.map_err(|e| ProviderError::Command {
                command: "start".into(),
                reason: inner.mask(&e.to_string()),
            })?;
            let Some((query, variables, _)) =
                start_action(&inner.spec, answer.state(), answer.latest.as_ref())
            else {
                return Ok(Some(Vec::new()));
            };
            let request =
                inner
                    .graphql
                    .request(query, variables)
                    .map_err(|e| ProviderError::Command {
                        command: "start".into(),
                        reason: inner.mask(&e.to_string()),
                    })?;
            Ok(Some(vec![
                request.planned().masked(&inner.graphql.api.secrets()),
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
                ServiceSpec::parse,
            );
            problems.extend(self.clients.check(instance));
            if let Err(p) = token_kind(instance) {
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
        Ok(Box::new(self.service_resource(instance, decl)?))
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
            let spec = resource.parse_config(ServiceSpec::parse)?;
            let graphql = self.graphql(instance)?;
            let mut secrets = graphql.api.secrets();
            secrets.extend(params.secrets());
            let values: Vec<&str> = secrets.iter().map(|s| s.expose()).collect();
            let failed = |reason: String| ProviderError::Command {
                command: command.id.clone(),
                reason: mask_text(&reason, &values),
            };
            let (query, variables) = match command.id.as_str() {
                "deploy" => {
                    let mut variables = spec.ids();
                    if let Some(sha) = params.str("commit_sha") {
                        variables["commitSha"] = json!(sha);
                    }
                    (DEPLOY_MUTATION, variables)
                }
                "redeploy" => (REDEPLOY_MUTATION, spec.ids()),
                "sleep" => {
                    let enabled = matches!(params.get("enabled"), Some(ParamValue::Boolean(true)));
                    let mut variables = spec.ids();
                    variables["input"] = json!({ "sleepApplication": enabled });
                    (SLEEP_MUTATION, variables)
                }
                other => {
                    return Err(ProviderError::unknown_command(ID, other));
                }
            };
            if dry_run {
                let request = graphql
                    .request(query, variables)
                    .map_err(|e| failed(e.to_string()))?;
                return Ok(CommandResult::planned(&[request.planned()], &secrets));
            }
            let data = graphql
                .run(query, variables, true)
                .await
                .map_err(|e| failed(e.to_string()))?;
            let mut result = CommandResult::ok(data.clone());
            if command.id == "deploy" {
                result.operation = data
                    .get("serviceInstanceDeployV2")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
            }
            Ok(result.mask(&secrets))
        })
    }
}

/// What a start sends, from what the read said: a restart of a stopped or crashed deployment,
/// a redeploy when there is none to restart (none, removed, failed); nothing for one that
/// runs, is on its way or sleeps (it wakes on the next request).
fn start_action(
    spec: &ServiceSpec,
    state: Option<DeploymentState>,
    latest: Option<&Deployment>,
) -> Option<(&'static str, Value, &'static str)> {
    match (state, latest) {
        (Some(DeploymentState::Stopped | DeploymentState::Crashed), Some(d)) => {
            Some((RESTART_MUTATION, json!({ "id": d.id }), "restart"))
        }
        (Some(DeploymentState::Absent | DeploymentState::Failed), _) | (None, None) => {
            Some((REDEPLOY_MUTATION, spec.ids(), "redeploy"))
        }
        _ => None,
    }
}

/// The latest deployment as the observe query gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Deployment {
    id: String,
    status: String,
    stopped: bool,
    static_url: Option<String>,
}

/// One read of the service instance.
#[derive(Debug, Clone)]
struct InstanceAnswer {
    service_name: Option<String>,
    latest: Option<Deployment>,
}

impl InstanceAnswer {
    fn from_data(data: &Value) -> Result<Self, String> {
        let instance = data
            .get("serviceInstance")
            .filter(|v| v.is_object())
            .ok_or("no `serviceInstance` in the answer")?;
        let latest = match instance.get("latestDeployment") {
            None | Some(Value::Null) => None,
            Some(d) => {
                let text = |k: &str| d.get(k).and_then(Value::as_str).map(str::to_owned);
                Some(Deployment {
                    id: text("id").ok_or("a latestDeployment without `id`")?,
                    status: text("status").ok_or("a latestDeployment without `status`")?,
                    stopped: d
                        .get("deploymentStopped")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                    static_url: text("staticUrl"),
                })
            }
        };
        Ok(Self {
            service_name: instance
                .get("serviceName")
                .and_then(Value::as_str)
                .map(str::to_owned),
            latest,
        })
    }

    /// The provider's raw state: the latest deployment's status (`NO_DEPLOYMENT` without
    /// one), `+STOPPED` when its instances are stopped.
    fn provider_state(&self) -> String {
        match &self.latest {
            None => "NO_DEPLOYMENT".into(),
            Some(d) if d.stopped && d.status != "REMOVED" => format!("{} (stopped)", d.status),
            Some(d) => d.status.clone(),
        }
    }

    fn state(&self) -> Option<DeploymentState> {
        match &self.latest {
            None => Some(DeploymentState::Absent),
            Some(d) => map_status(&d.status, d.stopped),
        }
    }
}

/// What kinfra asked of the service and follows.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Operation {
    /// A restart of a deployment or a redeploy, sent at `since`.
    Start { since: Instant, how: &'static str },
    /// A stop of deployment `id`, sent at `since`.
    Stop { since: Instant },
}

/// Where the logs of a deployment were read up to, per stream: the last timestamp and how
/// many lines carried it (the next read starts at it and skips those).
#[derive(Debug, Clone, Default)]
struct LogCursor {
    deployment: String,
    build: Option<(String, usize)>,
    deploy: Option<(String, usize)>,
}

/// What the resource knows of its service (answers `reported_state` and `connection`
/// without I/O).
#[derive(Debug, Default)]
struct View {
    service_name: Option<String>,
    /// The last latest deployment read.
    latest: Option<Deployment>,
    /// Whether a read happened.
    read: bool,
    /// What the last known status meant (unknown values and SKIPPED keep it).
    state: Option<DeploymentState>,
    /// The operation kinfra follows.
    operation: Option<Operation>,
    /// Why the service failed (a failed deployment, a refused token, a timeout).
    failure: Option<String>,
    /// Why the last run ended when it crashed.
    exit_reason: Option<String>,
    /// How far the logs were read.
    cursor: LogCursor,
}

struct Inner {
    name: String,
    spec: ServiceSpec,
    graphql: Graphql,
    view: Mutex<View>,
    logs: LogRing,
    slot: RunSlot<AbortOnDrop>,
    /// The live run's output (dropped when the run ends).
    output: Mutex<Option<(u64, mpsc::Sender<OutputLine>)>>,
    sync: SyncRecord,
}

impl Inner {
    fn mask(&self, text: &str) -> String {
        self.graphql.api.mask(text)
    }

    fn what(&self) -> String {
        format!(
            "Railway service `{}` in environment `{}`",
            self.spec.service_id, self.spec.environment_id
        )
    }

    fn line(&self, stream: LogStream, text: String) {
        let line = OutputLine {
            stream,
            text: self.mask(&text),
        };
        self.logs.push(line.clone());
        if let Some((_, output)) = lock(&self.output).as_ref() {
            let _ = output.try_send(line);
        }
    }

    /// One read of the service instance.
    async fn read(&self, retry: bool) -> Result<InstanceAnswer, GraphqlError> {
        let data = self
            .graphql
            .run(SERVICE_INSTANCE_QUERY, self.spec.ids(), retry)
            .await?;
        InstanceAnswer::from_data(&data).map_err(|reason| {
            GraphqlError::Http(self.graphql.api.call_error(HttpError::Decode {
                url: format!("{}{GRAPHQL_PATH}", self.graphql.api.base()),
                reason,
            }))
        })
    }

    /// Records an answer; returns what it means (the last state for SKIPPED or an unknown
    /// status, which also logs a warning once).
    fn record(&self, answer: &InstanceAnswer) -> Option<DeploymentState> {
        let raw = answer.provider_state();
        self.sync.ok(Some(raw.clone()));
        let mapped = answer.state();
        let mut view = lock(&self.view);
        let changed = !view.read || view.latest != answer.latest;
        view.read = true;
        if answer.service_name.is_some() {
            view.service_name = answer.service_name.clone();
        }
        view.latest = answer.latest.clone();
        match mapped {
            Some(state) => {
                view.state = Some(state);
                drop(view);
                if changed {
                    let id = answer.latest.as_ref().map(|d| d.id.as_str()).unwrap_or("-");
                    self.line(LogStream::System, format!("deployment {id}: {raw}"));
                }
                Some(state)
            }
            None => {
                let kept = view.state;
                drop(view);
                let status = answer.latest.as_ref().map(|d| d.status.as_str());
                if changed && status != Some("SKIPPED") {
                    warn!(resource = %self.name, status = %raw, "Unknown Railway deployment status; keeping the last state.");
                    self.line(
                        LogStream::Stderr,
                        format!(
                            "warning: unknown deployment status `{raw}`; keeping the last state"
                        ),
                    );
                }
                kept
            }
        }
    }

    /// Sends a mutation with the provider's retries; logs it first.
    async fn mutate(
        &self,
        op: &str,
        query: &str,
        variables: Value,
    ) -> Result<Value, ResourceError> {
        self.line(
            LogStream::System,
            format!("{op}: POST {GRAPHQL_PATH} ({op})"),
        );
        self.graphql
            .run(query, variables, true)
            .await
            .map_err(|e| self.graphql.resource_error(op, &self.what(), &e))
    }

    /// Reads the latest deployment's new build and deploy log lines into the log.
    async fn read_logs(&self, deployment: &str) {
        let cursor = {
            let mut view = lock(&self.view);
            if view.cursor.deployment != deployment {
                view.cursor = LogCursor {
                    deployment: deployment.to_owned(),
                    ..LogCursor::default()
                };
            }
            view.cursor.clone()
        };
        let mut variables = json!({ "deploymentId": deployment, "limit": LOG_LIMIT });
        if let Some((at, _)) = &cursor.build {
            variables["buildSince"] = json!(at);
        }
        if let Some((at, _)) = &cursor.deploy {
            variables["deploySince"] = json!(at);
        }
        let data = match self.graphql.run(LOGS_QUERY, variables, false).await {
            Ok(d) => d,
            Err(error) => {
                self.line(
                    LogStream::Stderr,
                    format!("reading the logs of deployment {deployment} failed: {error}"),
                );
                return;
            }
        };
        let build = self.new_lines(&data, "buildLogs", "build", cursor.build.as_ref());
        let deploy = self.new_lines(&data, "deploymentLogs", "deploy", cursor.deploy.as_ref());
        let mut view = lock(&self.view);
        if view.cursor.deployment == deployment {
            if build.is_some() {
                view.cursor.build = build;
            }
            if deploy.is_some() {
                view.cursor.deploy = deploy;
            }
        }
    }

    /// Writes the lines of `field` after `seen` and returns the new cursor of that stream.
    fn new_lines(
        &self,
        data: &Value,
        field: &str,
        label: &str,
        seen: Option<&(String, usize)>,
    ) -> Option<(String, usize)> {
        let lines = data.get(field).and_then(Value::as_array)?;
        let mut cursor = seen.cloned();
        let mut skip_at = seen.cloned();
        for entry in lines {
            let Some(at) = entry.get("timestamp").and_then(Value::as_str) else {
                continue;
            };
            let message = entry.get("message").and_then(Value::as_str).unwrap_or("");
            if let Some((last, count)) = &mut skip_at {
                if at < last.as_str() {
                    continue;
                }
                if at == last.as_str() && *count > 0 {
                    *count -= 1;
                    continue;
                }
            }
            let severity = entry.get("severity").and_then(Value::as_str).unwrap_or("");
            let stream = if severity.eq_ignore_ascii_case("error") {
                LogStream::Stderr
            } else {
                LogStream::Stdout
            };
            self.line(stream, format!("[{label}] {message}"));
            cursor = match cursor {
                Some((last, n)) if last == at => Some((last, n + 1)),
                _ => Some((at.to_owned(), 1)),
            };
        }
        cursor
    }

    /// Ends run `generation` (the live one, when `None`) with exit `code`.
    fn end_run(&self, generation: Option<u64>, code: i32) {
        let ended = self.slot.end(
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

    /// One observe of a live run: reads the service instance (and the latest deployment's
    /// logs), follows the operation and ends the run when the service stopped, sleeps,
    /// failed, crashed or is gone.
    async fn observe_once(&self, generation: u64) -> Result<String, ObserveError> {
        let answer = match self.read(false).await {
            Ok(a) => a,
            Err(error) => {
                let shown = self.mask(&error.to_string());
                self.sync.failed(shown.clone());
                if error.refused() || error.not_found() {
                    let failure = self
                        .graphql
                        .resource_error("observe", &self.what(), &error)
                        .to_string();
                    lock(&self.view).failure = Some(failure.clone());
                    self.line(LogStream::Stderr, failure);
                    self.end_run(Some(generation), 1);
                }
                return Err(match &error {
                    GraphqlError::Http(e) => match classify(&e.http) {
                        Failure::RateLimited(retry_after) => ObserveError::RateLimited {
                            retry_after,
                            message: shown,
                        },
                        _ => ObserveError::Failed(shown),
                    },
                    GraphqlError::Api(_) => ObserveError::Failed(shown),
                });
            }
        };
        let raw = answer.provider_state();
        let state = self.record(&answer);
        let fresh = answer.state().is_some();
        if self.spec.logs
            && let Some(d) = &answer.latest
        {
            self.read_logs(&d.id).await;
        }
        let operation = lock(&self.view).operation.clone();
        match state.filter(|_| fresh) {
            Some(DeploymentState::Running) => {
                if let Some(Operation::Start { how, .. }) = operation {
                    lock(&self.view).operation = None;
                    self.line(LogStream::System, format!("{how} finished: {raw}"));
                }
            }
            Some(DeploymentState::Stopped)
                if !matches!(operation, Some(Operation::Start { .. })) =>
            {
                self.end_run(Some(generation), 0);
            }
            Some(DeploymentState::Sleeping | DeploymentState::Absent) => {
                self.end_run(Some(generation), 0);
            }
            Some(DeploymentState::Failed) => {
                let id = answer.latest.as_ref().map(|d| d.id.as_str()).unwrap_or("-");
                let failure = format!("FAILED: deployment {id} of {} failed", self.what());
                {
                    let mut view = lock(&self.view);
                    view.failure = Some(failure.clone());
                    view.operation = None;
                }
                self.line(LogStream::Stderr, failure);
                self.end_run(Some(generation), 1);
            }
            Some(DeploymentState::Crashed) => {
                let id = answer.latest.as_ref().map(|d| d.id.as_str()).unwrap_or("-");
                let reason = format!("CRASHED: deployment {id} crashed");
                {
                    let mut view = lock(&self.view);
                    view.exit_reason = Some(reason.clone());
                    view.operation = None;
                }
                self.line(LogStream::Stderr, reason);
                self.end_run(Some(generation), 1);
            }
            _ => {}
        }
        // A restart or redeploy that takes too long fails the run.
        if let Some(Operation::Start { since, how }) = lock(&self.view).operation.clone()
            && since.elapsed() > self.spec.operation_timeout
        {
            let failure = format!(
                "the {how} of {} did not finish within {} (status {raw})",
                self.what(),
                elapsed_text(self.spec.operation_timeout)
            );
            {
                let mut view = lock(&self.view);
                view.failure = Some(failure.clone());
                view.operation = None;
            }
            self.line(LogStream::Stderr, failure);
            self.end_run(Some(generation), 1);
        }
        Ok(raw)
    }

    /// Begins a run and its observe loop.
    fn begin_run(self: &Arc<Self>, adopted: bool) -> Run {
        let (out_tx, out_rx) = mpsc::channel(256);
        let (exit_tx, exit_rx) = oneshot::channel();
        let inner = self.clone();
        let interval = self.spec.interval;
        let generation = self.slot.begin(move |generation| {
            let (stop_tx, mut stop_rx) = watch::channel(false);
            let observe_fn = move || {
                let inner = inner.clone();
                async move { inner.observe_once(generation).await }
            };
            let stop = async move {
                let _ = stop_rx.wait_for(|s| *s).await;
                drop(stop_tx);
            };
            let (_observed, task) =
                observe::spawn(ObserveConfig::every(interval), observe_fn, stop);
            (exit_tx, AbortOnDrop(task))
        });
        *lock(&self.output) = Some((generation, out_tx));
        Run {
            id: format!("{}#{generation}", self.spec.service_id),
            pid: None,
            adopted,
            output: out_rx,
            exit: exit_rx,
        }
    }
}

/// A resource of the `railway` provider (see the module docs).
pub struct RailwayResource {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RailwayResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RailwayResource")
            .field("name", &self.inner.name)
            .field("service_id", &self.inner.spec.service_id)
            .finish_non_exhaustive()
    }
}

impl Drop for RailwayResource {
    fn drop(&mut self) {
        // The observe loop holds the resource's state: it must not outlive it.
        self.inner.slot.forget();
    }
}

impl RailwayResource {
    /// The latest deployment's status as the API gave it.
    pub fn provider_status(&self) -> Option<String> {
        lock(&self.inner.view)
            .latest
            .as_ref()
            .map(|d| d.status.clone())
    }

    /// The service's id.
    pub fn service_id(&self) -> &str {
        &self.inner.spec.service_id
    }
}

impl Resource for RailwayResource {
    fn kind(&self) -> &'static str {
        "railway"
    }

    fn name(&self) -> &str {
        &self.inner.name
    }

    /// Brings the service up: reads it once (a refused token, an unknown service or an
    /// unreachable API fail here), restarts a stopped or crashed deployment or redeploys
    /// when there is none to restart, and returns at once; the observe loop follows it.
    fn start(&self) -> BoxFuture<'_, Result<Run, ResourceError>> {
        Box::pin(async move {
            let inner = &self.inner;
            if inner.slot.is_live() {
                return Ok(inner.begin_run(true));
            }
            {
                let mut view = lock(&inner.view);
                view.failure = None;
                view.exit_reason = None;
                view.operation = None;
            }
            let what = inner.what();
            let answer = inner
                .read(true)
                .await
                .map_err(|e| inner.graphql.resource_error("start", &what, &e))?;
            let state = inner.record(&answer);
            let adopted = match start_action(&inner.spec, state, answer.latest.as_ref()) {
                Some((query, variables, how)) => {
                    inner.mutate(how, query, variables).await?;
                    let mut view = lock(&inner.view);
                    view.operation = Some(Operation::Start {
                        since: Instant::now(),
                        how,
                    });
                    // What was read before the mutation no longer holds.
                    if matches!(
                        view.state,
                        Some(
                            DeploymentState::Stopped
                                | DeploymentState::Crashed
                                | DeploymentState::Absent
                                | DeploymentState::Failed
                        )
                    ) {
                        view.state = Some(DeploymentState::Starting);
                    }
                    false
                }
                None => true,
            };
            let run = inner.begin_run(adopted);
            if state == Some(DeploymentState::Sleeping) {
                // Asleep: it wakes on the next request; kinfra shows it sleeping.
                inner.end_run(None, 0);
            }
            Ok(run)
        })
    }

    /// Stops the latest deployment (`deploymentStop`) unless it is stopped, asleep or gone,
    /// and waits up to `grace` for `deploymentStopped`; the run ends either way.
    fn stop(&self, grace: Duration) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let (state, latest) = {
                let view = lock(&inner.view);
                (view.state, view.latest.clone())
            };
            let needs_stop = !matches!(
                state,
                Some(
                    DeploymentState::Stopped
                        | DeploymentState::Sleeping
                        | DeploymentState::Absent
                        | DeploymentState::Failed
                )
            );
            let mut sent = Ok(());
            if let (true, Some(d)) = (needs_stop, latest) {
                sent = inner
                    .mutate("stop", STOP_MUTATION, json!({ "id": d.id }))
                    .await
                    .map(|_| ());
                if sent.is_ok() {
                    lock(&inner.view).operation = Some(Operation::Stop {
                        since: Instant::now(),
                    });
                    let deadline = Instant::now() + grace;
                    let mut pause = Duration::from_millis(200);
                    loop {
                        match inner.read(false).await {
                            Ok(answer) => {
                                if matches!(
                                    inner.record(&answer),
                                    Some(
                                        DeploymentState::Stopped
                                            | DeploymentState::Absent
                                            | DeploymentState::Sleeping
                                            | DeploymentState::Failed
                                    )
                                ) {
                                    break;
                                }
                            }
                            Err(error) => inner.line(
                                LogStream::Stderr,
                                format!("reading the service after the stop failed: {error}"),
                            ),
                        }
                        if Instant::now() + pause > deadline {
                            inner.line(
                                LogStream::System,
                                format!(
                                    "the deployment is not stopped after {}; leaving it to Railway",
                                    elapsed_text(grace)
                                ),
                            );
                            break;
                        }
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(5));
                    }
                }
            }
            inner.end_run(None, 0);
            sent
        })
    }

    /// Lets go of the run; the service stays as it is (`on_down = "keep"`).
    fn release(&self, _grace: Duration) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            self.inner.end_run(None, 0);
            Ok(())
        })
    }

    fn status(&self) -> BoxFuture<'_, Result<Observed, ResourceError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let answer = match inner.read(false).await {
                Ok(a) => a,
                Err(error) => {
                    inner.sync.failed(inner.mask(&error.to_string()));
                    return Err(inner
                        .graphql
                        .resource_error("status", &inner.what(), &error));
                }
            };
            Ok(match inner.record(&answer) {
                Some(DeploymentState::Absent) => Observed::Absent,
                Some(DeploymentState::Stopped | DeploymentState::Sleeping) | None => Observed::Idle,
                Some(DeploymentState::Failed | DeploymentState::Crashed) => {
                    Observed::Exited(ExitInfo {
                        code: Some(1),
                        signal: None,
                    })
                }
                Some(_) => Observed::Running,
            })
        })
    }

    /// From the last observe (no I/O): healthy while the latest deployment is SUCCESS (Railway
    /// turns a deployment SUCCESS only once its own healthcheck, when it has one, passed),
    /// unknown otherwise. So the supervisor calls the resource running once the deployment
    /// runs, not as soon as a restart or redeploy was sent.
    fn health(&self) -> BoxFuture<'_, Result<Health, ResourceError>> {
        Box::pin(async move {
            let view = lock(&self.inner.view);
            let fresh = view.latest.as_ref().is_some_and(|d| {
                d.status == "SKIPPED" || map_status(&d.status, d.stopped).is_some()
            });
            Ok(match view.state {
                Some(DeploymentState::Running) if fresh && view.failure.is_none() => {
                    Health::Healthy
                }
                _ => Health::Unknown,
            })
        })
    }

    fn has_own_health(&self) -> bool {
        true
    }

    /// The deployment's public domain (`staticUrl`) as `host` and `https://…` as `url`.
    fn connection(&self) -> Connection {
        let view = lock(&self.inner.view);
        let host = view
            .latest
            .as_ref()
            .and_then(|d| d.static_url.clone())
            .unwrap_or_default();
        let mut fields = BTreeMap::new();
        fields.insert(
            "service_id".to_owned(),
            Secret::new(self.inner.spec.service_id.clone()),
        );
        if let Some(d) = &view.latest {
            fields.insert("deployment_id".to_owned(), Secret::new(d.id.clone()));
        }
        Connection {
            url: (!host.is_empty()).then(|| Secret::new(format!("https://{host}"))),
            port: (!host.is_empty()).then_some(443),
            host,
            fields,
        }
    }

    fn logs(&self, tail: usize) -> BoxFuture<'_, Result<Vec<OutputLine>, ResourceError>> {
        Box::pin(async move { Ok(self.inner.logs.tail(tail)) })
    }

    /// kinfra never deletes a Railway service: the service is the user's.
    fn remove(&self, _volumes: bool) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            self.inner.line(
                LogStream::System,
                "kinfra does not delete Railway services; the service is left as it is".into(),
            );
            Ok(())
        })
    }

    fn sync(&self) -> Option<SyncFacts> {
        self.inner.sync.facts()
    }

    fn exit_reason(&self) -> Option<String> {
        let view = lock(&self.inner.view);
        view.failure.clone().or_else(|| view.exit_reason.clone())
    }

    fn reported_state(&self) -> Option<ReportedState> {
        let inner = &self.inner;
        let view = lock(&inner.view);
        let report = |state: ServiceState, message: String| {
            Some(ReportedState {
                state,
                message: inner.mask(&message),
            })
        };
        if let Some(failure) = &view.failure {
            return report(ServiceState::Failed, failure.clone());
        }
        if !view.read {
            return None;
        }
        let (id, status) = match &view.latest {
            Some(d) => (d.id.clone(), d.status.clone()),
            None => ("-".into(), "NO_DEPLOYMENT".into()),
        };
        let stopped = view.latest.as_ref().is_some_and(|d| d.stopped);
        let suffix = if known_status(&status) || view.latest.is_none() {
            String::new()
        } else {
            format!(" (unknown status {status}; last known state kept)")
        };
        let head = format!("{status}: deployment {id}");
        match (view.state?, &view.operation) {
            (
                DeploymentState::Starting
                | DeploymentState::Stopped
                | DeploymentState::Crashed
                | DeploymentState::Absent,
                Some(Operation::Start { since, how }),
            ) => report(
                ServiceState::Starting,
                format!(
                    "{head}: {how} requested {} ago{suffix}",
                    elapsed_text(since.elapsed())
                ),
            ),
            (DeploymentState::Starting, _) => {
                report(ServiceState::Starting, format!("{head}{suffix}"))
            }
            (DeploymentState::Running, _) => {
                let url = view
                    .latest
                    .as_ref()
                    .and_then(|d| d.static_url.as_deref())
                    .map(|u| format!(" at https://{u}"))
                    .unwrap_or_default();
                report(ServiceState::Running, format!("{head}{url}{suffix}"))
            }
            (DeploymentState::Stopping, Some(Operation::Stop { since })) => report(
                ServiceState::Stopping,
                format!(
                    "{head}: stop requested {} ago{suffix}",
                    elapsed_text(since.elapsed())
                ),
            ),
            (DeploymentState::Stopping, _) => {
                report(ServiceState::Stopping, format!("{head}{suffix}"))
            }
            (DeploymentState::Stopped, Some(Operation::Stop { .. })) => {
                report(ServiceState::Stopped, format!("{head}: stopped{suffix}"))
            }
            (DeploymentState::Stopped, _) => report(
                ServiceState::Stopped,
                format!(
                    "{head}: stopped outside kinfra{}{suffix}",
                    if stopped { " (deploymentStopped)" } else { "" }
                ),
            ),
            (DeploymentState::Sleeping, _) => report(
                ServiceState::Sleeping,
                format!("{head}: asleep, wakes on the next request{suffix}"),
            ),
            (DeploymentState::Crashed, _) => {
                report(ServiceState::Backoff, format!("{head}: crashed{suffix}"))
            }
            (DeploymentState::Absent, _) => report(
                ServiceState::Stopped,
                format!("{head}: absent (no deployment runs){suffix}"),
            ),
            (DeploymentState::Failed, _) => report(ServiceState::Failed, format!("{head}{suffix}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_as_design_says() {
        use DeploymentState::*;
        for (status, stopped, state) in [
            ("QUEUED", false, Starting),
            ("WAITING", false, Starting),
            ("NEEDS_APPROVAL", false, Starting),
            ("INITIALIZING", false, Starting),
            ("BUILDING", false, Starting),
            ("DEPLOYING", false, Starting),
            ("SUCCESS", false, Running),
            ("SUCCESS", true, Stopped),
            ("REMOVING", false, Stopping),
            ("SLEEPING", false, Sleeping),
            ("FAILED", false, Failed),
            ("CRASHED", false, Crashed),
            ("REMOVED", false, Absent),
            ("REMOVED", true, Absent),
            ("MIGRATING", false, Starting),
            ("DRAINING", false, Stopping),
        ] {
            assert_eq!(map_status(status, stopped), Some(state), "{status}");
        }
        assert_eq!(map_status("SKIPPED", false), None);
        assert_eq!(map_status("SOMETHING_NEW", false), None);
        assert!(known_status("SKIPPED"));
        assert!(!known_status("SOMETHING_NEW"));
    }

    #[test]
    fn token_kind_is_account_or_project() {
        let ctx = |v: Value| InstanceContext {
            instance: "rw".into(),
            config: v.as_object().cloned().unwrap_or_default(),
            ..InstanceContext::default()
        };
        assert_eq!(token_kind(&ctx(json!({}))).ok(), Some(TokenKind::Account));
        assert_eq!(
            token_kind(&ctx(json!({"token_kind": "project"}))).ok(),
            Some(TokenKind::Project)
        );
        let bad = token_kind(&ctx(json!({"token_kind": "team-ish"}))).expect_err("refused");
        assert_eq!(bad.key.as_deref(), Some("token_kind"));
    }

    #[test]
    fn every_bad_key_is_named_at_once() {
        let config = json!({"environment_id": 3, "interval": "soon", "logs": "yes"});
        let problems =
            ServiceSpec::parse(config.as_object().expect("table")).expect_err("problems");
        let keys: Vec<_> = problems.iter().filter_map(|p| p.key.as_deref()).collect();
        assert_eq!(keys, ["service_id", "environment_id", "interval", "logs"]);
    }
}
