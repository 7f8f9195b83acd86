//! The `render` provider: a Render service (`service_id`) as a resource, through Render's
//! public API (`https://api.render.com/v1`, bearer token).
//!
//! Starting a resource resumes a suspended service (`POST /services/{id}/resume`); stopping it
//! suspends it (`POST /services/{id}/suspend`, followed until the service reads `suspended`).
//! Every `interval` the observe loop reads the service (`GET /services/{id}`: `suspended`,
//! `suspenders`, `serviceDetails.maintenanceMode`) and its latest deploy
//! (`GET /services/{id}/deploys?limit=1`), mapped as DESIGN's table says: a deploy `created`,
//! `queued` or `…_in_progress` is starting, `live` running, `deactivated` or `canceled`
//! stopped, `…_failed` failed, each per deploy: a canceled or failed latest deploy while an
//! earlier one is still live (`GET /services/{id}/deploys?status=live&limit=1`) leaves the
//! service serving, so it is running ("deploy dep-b canceled; dep-a live"), stopped or failed
//! only when nothing is live; a service suspended by its user (or its parent service) is
//! stopped, one suspended by Render (`billing`, `admin`, `stuck_crashlooping`,
//! `hipaa_enablement`) failed with the reason; maintenance mode is `maintenance`. Any other
//! deploy status keeps the last state with a warning. The raw state (`live`,
//! `suspended (user)`, `live (maintenance mode)`) is the resource's `provider_state`.
//!
//! The service's logs (`GET /logs?resource={id}`, its owner's, `direction=forward`) are
//! followed into the resource's log while a run is live: each poll starts where the last one
//! ended (the last line's timestamp, or the answer's `nextStartTime`/`nextEndTime` while it
//! says `hasMore`), and lines already shown are recognised by their id and never shown again.
//!
//! Commands: `deploy {clear_cache?, commit_id?, image_url?}`, `cancel-deploy {deploy_id}`,
//! `restart`, `scale {instances}`, `list-deploys`, `start` (resume) and `stop` (suspend), each
//! with a dry-run that shows the exact request (token masked) and sends nothing.

use kinfra_core::Secret;
use kinfra_core::event::ExitInfo;
use kinfra_core::resource::{
    BoxFuture, Connection, Observed, OutputLine, ReportedState, Resource, ResourceError, Run,
    SyncFacts,
};
use kinfra_core::state::{Health, ServiceState};
use kinfra_core::status::LogStream;
use kinfra_provider::command::{CommandSpec, ParamKind, ParamSpec, ValidatedParams};
use kinfra_provider::http::{HttpConfig, HttpError, Method};
use kinfra_provider::metadata::{
    AuthMethod, Capability, Category, ConfigKeySpec, ConfigKind, ProviderMetadata, ResourceTypeSpec,
};
use kinfra_provider::observe::{self, ObserveConfig, ObserveError};
use kinfra_provider::operation::{OperationStatus, OperationTracker, elapsed_text};
use kinfra_provider::provider::{
    InstanceContext, KINFRA_KEYS, Provider, ProviderError, ResourceDecl, ResourceProblem,
    config_duration_or, config_problems,
};
use kinfra_provider::rest::{CallError, RestApi, RestClients, TokenNeed, encode_segment};
use kinfra_provider::result::{CommandResult, PlannedRequest};
use kinfra_provider::retry::{Backoff, RetryPolicy};
use kinfra_provider::run_slot::{LogRing, RunSlot, SyncRecord, lock};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::warn;

/// The provider's id.
pub const ID: &str = "render";
/// The one resource type it runs.
pub const RESOURCE_TYPE: &str = "service";
/// Render's public API.
pub const DEFAULT_BASE_URL: &str = "https://api.render.com/v1";
/// The observe interval when the resource sets none.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// The longest a resume may take (until its deploy is live) before the resource calls it
/// failed.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// Output lines kept for [`Resource::logs`].
const LOG_LINES: usize = 500;
/// Log entries asked for per `GET /logs` (the spec's maximum).
const LOG_PAGE: &str = "100";
/// Pages read per log poll at most (the rest waits for the next poll).
const LOG_PAGES_PER_POLL: usize = 10;
/// Log entry ids remembered to never show a line twice.
const LOG_IDS_KEPT: usize = 4096;
/// Suspenders that mean Render suspended the service itself: it cannot be resumed by kinfra.
const FAILING_SUSPENDERS: &[&str] = &["billing", "admin", "stuck_crashlooping", "hipaa_enablement"];

/// What a service and its latest deploy mean in kinfra's state model (DESIGN's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceStatus {
    /// A deploy created, queued or in progress (or none yet).
    Starting,
    /// The latest deploy is live.
    Running,
    /// Suspended by its user (or its parent service), or the latest deploy is deactivated or
    /// canceled.
    Stopped,
    /// Suspended by Render (billing, admin, crash loop), or the latest deploy failed.
    Failed,
    /// Maintenance mode is on.
    Maintenance,
}

/// Maps a deploy `status`; `None` for a value that says nothing known (the last state is
/// kept, with a warning). Unknown `…_in_progress`/`…ing` values are starting.
pub fn map_deploy_status(status: &str) -> Option<ServiceStatus> {
    Some(match status {
        "created"
        | "queued"
        | "build_in_progress"
        | "update_in_progress"
        | "pre_deploy_in_progress" => ServiceStatus::Starting,
        "live" => ServiceStatus::Running,
        "deactivated" | "canceled" => ServiceStatus::Stopped,
        "build_failed" | "update_failed" | "pre_deploy_failed" => ServiceStatus::Failed,
        other if other.ends_with("_in_progress") || other.ends_with("ing") => {
            ServiceStatus::Starting
        }
        other if other.ends_with("_failed") => ServiceStatus::Failed,
        _ => return None,
    })
}

/// Maps a service's facts and its latest deploy's status (`None`: no deploy yet); `None` for
/// an unknown deploy status. `earlier_live`: an earlier deploy is still live, so a canceled
/// or failed latest deploy leaves the service serving (running); stopped or failed only when
/// nothing is live.
pub fn map_service(
    suspended: bool,
    suspenders: &[String],
    maintenance: bool,
    deploy: Option<&str>,
    earlier_live: bool,
) -> Option<ServiceStatus> {
    if suspended {
        return Some(
            if suspenders
                .iter()
                .any(|s| FAILING_SUSPENDERS.contains(&s.as_str()))
            {
                ServiceStatus::Failed
            } else {
                ServiceStatus::Stopped
            },
        );
    }
    if maintenance {
        return Some(ServiceStatus::Maintenance);
    }
    match deploy.map(map_deploy_status) {
        None => Some(ServiceStatus::Starting),
        Some(Some(ServiceStatus::Stopped | ServiceStatus::Failed)) if earlier_live => {
            Some(ServiceStatus::Running)
        }
        Some(mapped) => mapped,
    }
}

/// Why Render suspended a service, in words.
fn suspender_text(suspender: &str) -> String {
    match suspender {
        "billing" => "suspended by Render for billing (resolve it in the Render dashboard)".into(),
        "admin" => "suspended by a Render administrator".into(),
        "stuck_crashlooping" => {
            "suspended by Render: the service was stuck crash-looping (stuck_crashlooping)".into()
        }
        "hipaa_enablement" => "suspended by Render while HIPAA is enabled for the workspace".into(),
        other => format!("suspended ({other})"),
    }
}

/// A Render resource id: `srv-` (or `crn-` for a cron job) and lower-case letters and digits.
pub fn valid_service_id(text: &str) -> bool {
    let rest = text
        .strip_prefix("srv-")
        .or_else(|| text.strip_prefix("crn-"));
    rest.is_some_and(|r| {
        !r.is_empty()
            && r.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    })
}

/// A resource's own keys, parsed.
#[derive(Debug, Clone)]
struct ServiceSpec {
    service_id: String,
    interval: Duration,
    operation_timeout: Duration,
    follow_logs: bool,
}

impl ServiceSpec {
    fn parse(config: &Map<String, Value>) -> Result<Self, Vec<ResourceProblem>> {
        let mut problems = Vec::new();
        let service_id = match config.get("service_id") {
            Some(Value::String(id)) if valid_service_id(id) => id.clone(),
            Some(Value::String(id)) => {
                problems.push(ResourceProblem::at(
                    "service_id",
                    format!(
                        "`{id}` is not a Render service id (`srv-` and lower-case letters and digits)"
                    ),
                ));
                String::new()
            }
            Some(_) => {
                problems.push(ResourceProblem::at("service_id", "expected a string"));
                String::new()
            }
            None => {
                problems.push(ResourceProblem::at("service_id", "missing (required)"));
                String::new()
            }
        };
        let interval = config_duration_or(config, "interval", DEFAULT_INTERVAL, &mut problems);
        let operation_timeout = config_duration_or(
            config,
            "operation_timeout",
            DEFAULT_OPERATION_TIMEOUT,
            &mut problems,
        );
        let follow_logs = match config.get("logs") {
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
                interval,
                operation_timeout,
                follow_logs,
            })
        } else {
            Err(problems)
        }
    }

    fn path(&self, tail: &str) -> String {
        format!("/services/{}{tail}", encode_segment(&self.service_id))
    }
}

/// The commands every service offers.
fn command_specs() -> Vec<CommandSpec> {
    let command = |id: &str, category: &str, description: &str, params: Vec<ParamSpec>| {
        CommandSpec::new(id, id, description)
            .in_category(category)
            .for_resource_type(RESOURCE_TYPE)
            .with_params(params)
            .with_dry_run()
    };
    vec![
        command(
            "deploy",
            "deploy",
            "Triggers a deploy (POST /services/{id}/deploys).",
            vec![
                ParamSpec::optional(
                    "clear_cache",
                    ParamKind::Boolean,
                    "Clear the build cache before deploying.",
                )
                .with_default(Value::Bool(false)),
                ParamSpec::optional(
                    "commit_id",
                    ParamKind::String,
                    "The Git commit to deploy (default: the branch's latest).",
                ),
                ParamSpec::optional(
                    "image_url",
                    ParamKind::String,
                    "The image to deploy (image-backed services).",
                ),
            ],
        ),
        command(
            "cancel-deploy",
            "deploy",
            "Cancels a deploy in progress (POST /services/{id}/deploys/{deploy_id}/cancel).",
            vec![ParamSpec::required(
                "deploy_id",
                ParamKind::String,
                "The deploy's id (dep-...; see list-deploys).",
            )],
        ),
        command(
            "restart",
            "lifecycle",
            "Restarts the service's instances (POST /services/{id}/restart).",
            vec![],
        ),
        command(
            "scale",
            "scale",
            "Sets the number of instances of a manually scaled service (POST /services/{id}/scale).",
            vec![ParamSpec::required(
                "instances",
                ParamKind::Integer {
                    min: Some(1),
                    max: Some(100),
                },
                "The number of instances.",
            )],
        ),
        command(
            "list-deploys",
            "deploy",
            "Lists the service's latest deploys (GET /services/{id}/deploys).",
            vec![],
        ),
        command(
            "start",
            "lifecycle",
            "Resumes the suspended service (POST /services/{id}/resume).",
            vec![],
        ),
        command(
            "stop",
            "lifecycle",
            "Suspends the service (POST /services/{id}/suspend).",
            vec![],
        ),
    ]
}

fn metadata() -> ProviderMetadata {
    ProviderMetadata {
        id: ID.into(),
        name: ID.into(),
        display_name: "Render".into(),
        description: "Render services through the public API: resume and suspend, the latest \
                      deploy's status, maintenance mode, suspensions by Render, logs followed \
                      into the resource's log, deploy/cancel/restart/scale commands."
            .into(),
        version: env!("CARGO_PKG_VERSION").into(),
        category: Category::Cloud,
        capabilities: vec![Capability::Scale, Capability::Monitor, Capability::DryRun],
        resource_types: vec![ResourceTypeSpec {
            name: RESOURCE_TYPE.into(),
            description: "A Render service: runs while its latest deploy is live, suspended \
                          when stopped."
                .into(),
            config: vec![
                ConfigKeySpec::required(
                    "service_id",
                    ConfigKind::String,
                    "The service's id (srv-...).",
                ),
                ConfigKeySpec::optional(
                    "operation_timeout",
                    ConfigKind::Duration,
                    "How long a resume may take until its deploy is live (default 20m).",
                ),
                ConfigKeySpec::optional(
                    "logs",
                    ConfigKind::Boolean,
                    "Follow the service's logs (GET /logs) into the resource's log (default true).",
                ),
            ],
        }],
        auth_methods: vec![AuthMethod::Bearer],
    }
}

/// The `render` provider.
pub struct RenderProvider {
    metadata: ProviderMetadata,
    commands: Vec<CommandSpec>,
    clients: RestClients,
}

impl std::fmt::Debug for RenderProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenderProvider").finish_non_exhaustive()
    }
}

impl Default for RenderProvider {
    fn default() -> Self {
        Self::new()
    }
}

/// The `render` provider with the default HTTP timeouts.
pub fn provider() -> Arc<dyn Provider> {
    Arc::new(RenderProvider::new())
}

impl RenderProvider {
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
                "the Render API",
                Some(DEFAULT_BASE_URL),
                TokenNeed::Required("a Render API key"),
            )
            .with_http_config(config),
        }
    }

    /// The retry policy of resume, suspend, the start's reads and commands (the observe and
    /// log loops keep their own backoff).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.clients = self.clients.with_retry(retry);
        self
    }

    /// The [`RenderResource`] for `decl` (the concrete type behind [`Provider::resource`]).
    pub fn service_resource(
        &self,
        instance: &InstanceContext,
        decl: &ResourceDecl,
    ) -> Result<RenderResource, ProviderError> {
        let spec = ServiceSpec::parse(&decl.config).map_err(|problems| {
            ProviderError::InvalidResource {
                resource: decl.name.clone(),
                problems,
            }
        })?;
        let api = self.clients.api(instance)?;
        Ok(RenderResource {
            inner: Arc::new(Inner {
                name: decl.name.clone(),
                spec,
                api,
                view: Mutex::new(View::default()),
                logs: LogRing::new(LOG_LINES),
                output: Mutex::new(None),
                live: RunSlot::default(),
                sync: SyncRecord::default(),
                cursor: Mutex::new(LogCursor::default()),
            }),
        })
    }
}

impl Provider for RenderProvider {
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
                ServiceSpec::parse,
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
        Ok(Box::new(self.service_resource(instance, decl)?))
    }

    /// Reads the service (nothing is sent that changes it): a service suspended by its user
    /// would get `POST /services/{id}/resume`; one up needs nothing; one suspended by Render or
    /// whose latest deploy failed or was canceled cannot be started (the reason, as an error).
    fn planned_start<'a>(
        &'a self,
        instance: &'a InstanceContext,
        decl: &'a ResourceDecl,
    ) -> BoxFuture<'a, Result<Option<Vec<PlannedRequest>>, ProviderError>> {
        Box::pin(async move {
            let resource = self.service_resource(instance, decl)?;
            let inner = &resource.inner;
            let reading = inner
                .read(true)
                .await
                .map_err(|e| ProviderError::Resource(inner.error("plan", &e)))?;
            let suspended = reading.service.suspended;
            match inner.record(reading) {
                Some(ServiceStatus::Stopped) if suspended => {
                    let request = inner
                        .api
                        .request(Method::POST, &inner.spec.path("/resume"), &[], None)
                        .map_err(|e| ProviderError::Command {
                            command: "start".into(),
                            reason: e.text,
                        })?;
                    Ok(Some(vec![request.planned()]))
                }
                Some(ServiceStatus::Stopped | ServiceStatus::Failed) => Err(
                    ProviderError::Resource(ResourceError::Invalid(inner.start_refusal())),
                ),
                _ => Ok(Some(Vec::new())),
            }
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
            let spec = ServiceSpec::parse(&resource.config).map_err(|problems| {
                ProviderError::InvalidResource {
                    resource: resource.name.clone(),
                    problems,
                }
            })?;
            let api = self.clients.api(instance)?;
            let mut secrets = api.secrets();
            secrets.extend(params.secrets());
            let failed = |error: &CallError| ProviderError::Command {
                command: command.id.clone(),
                reason: error.text.clone(),
            };
            let (method, path, body) = match command.id.as_str() {
                "deploy" => {
                    let clear = matches!(
                        params.get("clear_cache"),
                        Some(kinfra_provider::command::ParamValue::Boolean(true))
                    );
                    let mut body = json!({
                        "clearCache": if clear { "clear" } else { "do_not_clear" },
                    });
                    if let Some(commit) = params.str("commit_id") {
                        body["commitId"] = Value::String(commit.to_owned());
                    }
                    if let Some(image) = params.str("image_url") {
                        body["imageUrl"] = Value::String(image.to_owned());
                    }
                    (Method::POST, spec.path("/deploys"), Some(body))
                }
                "cancel-deploy" => {
                    let id = params.str("deploy_id").unwrap_or_default();
                    (
                        Method::POST,
                        spec.path(&format!("/deploys/{}/cancel", encode_segment(id))),
                        None,
                    )
                }
                "restart" => (Method::POST, spec.path("/restart"), None),
                "scale" => {
                    let n = params.integer("instances").unwrap_or(1);
                    (
                        Method::POST,
                        spec.path("/scale"),
                        Some(json!({ "numInstances": n })),
                    )
                }
                "list-deploys" => (Method::GET, spec.path("/deploys"), None),
                "start" => (Method::POST, spec.path("/resume"), None),
                "stop" => (Method::POST, spec.path("/suspend"), None),
                other => return Err(ProviderError::unknown_command(ID, other)),
            };
            let request = api
                .request(method, &path, &[], body)
                .map_err(|e| failed(&e))?;
            if dry_run {
                return Ok(CommandResult::planned(&[request.planned()], &secrets));
            }
            let response = api.send(&request).await.map_err(|e| failed(&e))?;
            let data = response.data();
            let mut result = CommandResult::ok(data.clone());
            if command.id == "deploy" {
                // 201: the deploy; 202: queued behind another (no body).
                result.operation = data.get("id").and_then(Value::as_str).map(str::to_owned);
                result.operation_state = data
                    .get("status")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                if response.status == 202 {
                    result
                        .warnings
                        .push("the deploy was queued behind another one (202)".into());
                }
            }
            Ok(result.mask(&secrets))
        })
    }
}

/// An operation the resource started and follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    /// A resume sent at `since`; done once the latest deploy is live.
    Resume { since: Instant },
    /// A suspend sent at `since`.
    Suspend { since: Instant },
}

/// The service as `GET /services/{id}` gives it (the parts used).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ServiceAnswer {
    suspended: bool,
    suspenders: Vec<String>,
    maintenance: bool,
    owner_id: Option<String>,
    url: Option<String>,
    dashboard_url: Option<String>,
}

/// The latest deploy (the parts used).
#[derive(Debug, Clone, PartialEq, Eq)]
struct DeployAnswer {
    id: String,
    status: String,
}

/// One read of the service: itself, its latest deploy and, when that one is canceled or
/// failed, the earlier deploy still live (if any).
#[derive(Debug)]
struct Reading {
    service: ServiceAnswer,
    deploy: Option<DeployAnswer>,
    live: Option<DeployAnswer>,
}

/// What the resource knows of its service (answers `reported_state`, `health`, `connection`
/// without I/O).
#[derive(Debug, Default)]
struct View {
    service: Option<ServiceAnswer>,
    deploy: Option<DeployAnswer>,
    /// An earlier deploy still live under a canceled or failed latest one.
    live: Option<DeployAnswer>,
    /// The provider's state in words (`live`, `suspended (user)`).
    provider_state: Option<String>,
    /// Whether the last answer's state was known.
    known: bool,
    /// What the last known state meant.
    state: Option<ServiceStatus>,
    /// The operation in flight.
    operation: Option<Operation>,
    /// Why the service failed (a suspension by Render, a failed deploy, a refused token).
    failure: Option<String>,
    /// The service was suspended by kinfra's stop (until it reads not suspended again).
    suspended_by_kinfra: bool,
}

/// Where the log follower goes on from, and the ids it has shown.
#[derive(Debug, Default)]
struct LogCursor {
    start: Option<String>,
    end: Option<String>,
    seen: HashSet<String>,
    order: VecDeque<String>,
    /// The last error shown in the log (shown once until it changes or clears).
    error: Option<String>,
}

impl LogCursor {
    /// Remembers `id`; false when it was seen before.
    fn first_sight(&mut self, id: &str) -> bool {
        if self.seen.contains(id) {
            return false;
        }
        self.seen.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        if self.order.len() > LOG_IDS_KEPT
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        true
    }
}

/// What a live run holds: its output sender and the stop signal of its loops (dropping it
/// ends the observe and log loops).
type Held = (mpsc::Sender<OutputLine>, watch::Sender<()>);

struct Inner {
    name: String,
    spec: ServiceSpec,
    api: RestApi,
    view: Mutex<View>,
    logs: LogRing,
    /// The live run's output (generation, sender): cleared when that run ends.
    output: Mutex<Option<(u64, mpsc::Sender<OutputLine>)>>,
    live: RunSlot<Held>,
    sync: SyncRecord,
    cursor: Mutex<LogCursor>,
}

fn decode_error(api: &RestApi, url: &str, reason: &str) -> CallError {
    api.call_error(HttpError::Decode {
        url: url.to_owned(),
        reason: reason.to_owned(),
    })
}

fn parse_service(api: &RestApi, url: &str, v: &Value) -> Result<ServiceAnswer, CallError> {
    let suspended = match v.get("suspended").and_then(Value::as_str) {
        Some("suspended") => true,
        Some(_) => false,
        None => {
            return Err(decode_error(
                api,
                url,
                "no `suspended` (a string) in the service",
            ));
        }
    };
    let text = |pointer: &str| {
        v.pointer(pointer)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    Ok(ServiceAnswer {
        suspended,
        suspenders: v
            .get("suspenders")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        maintenance: v
            .pointer("/serviceDetails/maintenanceMode/enabled")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        owner_id: text("/ownerId"),
        url: text("/serviceDetails/url"),
        dashboard_url: text("/dashboardUrl"),
    })
}

fn parse_deploys(api: &RestApi, url: &str, v: &Value) -> Result<Option<DeployAnswer>, CallError> {
    let Some(list) = v.as_array() else {
        return Err(decode_error(api, url, "the deploys are not a list"));
    };
    let Some(first) = list.first() else {
        return Ok(None);
    };
    let deploy = first.get("deploy").unwrap_or(first);
    let id = deploy.get("id").and_then(Value::as_str);
    let status = deploy.get("status").and_then(Value::as_str);
    match (id, status) {
        (Some(id), Some(status)) => Ok(Some(DeployAnswer {
            id: id.to_owned(),
            status: status.to_owned(),
        })),
        _ => Err(decode_error(
            api,
            url,
            "the latest deploy has no `id` and `status`",
        )),
    }
}

/// The provider's state in words.
fn state_words(service: &ServiceAnswer, deploy: Option<&DeployAnswer>) -> String {
    if service.suspended {
        return if service.suspenders.is_empty() {
            "suspended".into()
        } else {
            format!("suspended ({})", service.suspenders.join(", "))
        };
    }
    let status = deploy.map_or("no deploy", |d| d.status.as_str());
    if service.maintenance {
        format!("{status} (maintenance mode)")
    } else {
        status.to_owned()
    }
}

impl Inner {
    fn mask(&self, text: &str) -> String {
        self.api.mask(text)
    }

    fn line(&self, stream: LogStream, text: impl Into<String>) {
        let line = OutputLine {
            stream,
            text: self.mask(&text.into()),
        };
        self.logs.push(line.clone());
        if let Some((_, out)) = lock(&self.output).as_ref() {
            let _ = out.try_send(line);
        }
    }

    fn what(&self) -> String {
        format!("Render service `{}`", self.spec.service_id)
    }

    fn error(&self, op: &str, error: &CallError) -> ResourceError {
        self.api.resource_error(op, &self.what(), error)
    }

    /// Reads the service and its latest deploy (and, when that one is canceled or failed, the
    /// live one: `GET …/deploys?status=live&limit=1`); `retry` retries rate limits and
    /// transient failures within the provider's policy (a start), else one send each (a poll).
    async fn read(&self, retry: bool) -> Result<Reading, CallError> {
        let get = |path: String, query: &'static [(&'static str, &'static str)]| async move {
            let request = self.api.request(Method::GET, &path, query, None)?;
            let response = if retry {
                self.api.send(&request).await?
            } else {
                self.api.send_once(&request).await?
            };
            let value: Value = response.json().map_err(|http| self.api.call_error(http))?;
            Ok::<_, CallError>((response.url, value))
        };
        let (url, service) = get(self.spec.path(""), &[]).await?;
        let service = parse_service(&self.api, &url, &service)?;
        let (url, deploys) = get(self.spec.path("/deploys"), &[("limit", "1")]).await?;
        let deploy = parse_deploys(&self.api, &url, &deploys)?;
        let ended = deploy.as_ref().is_some_and(|d| {
            matches!(
                map_deploy_status(&d.status),
                Some(ServiceStatus::Stopped | ServiceStatus::Failed)
            )
        });
        let live = if ended && !service.suspended {
            let query = &[("status", "live"), ("limit", "1")];
            let (url, lives) = get(self.spec.path("/deploys"), query).await?;
            parse_deploys(&self.api, &url, &lives)?
                .filter(|l| deploy.as_ref().is_none_or(|d| d.id != l.id))
        } else {
            None
        };
        Ok(Reading {
            service,
            deploy,
            live,
        })
    }

    /// Records an answer; returns what it means (the last state for an unknown deploy status,
    /// which also logs a warning).
    fn record(&self, reading: Reading) -> Option<ServiceStatus> {
        let Reading {
            service,
            deploy,
            live,
        } = reading;
        let mapped = map_service(
            service.suspended,
            &service.suspenders,
            service.maintenance,
            deploy.as_ref().map(|d| d.status.as_str()),
            live.is_some(),
        );
        let words = state_words(&service, deploy.as_ref());
        let mut view = lock(&self.view);
        let changed = view.provider_state.as_deref() != Some(words.as_str());
        view.provider_state = Some(words.clone());
        if !service.suspended {
            view.suspended_by_kinfra = false;
        }
        view.service = Some(service);
        view.deploy = deploy;
        view.live = live;
        view.known = mapped.is_some();
        match mapped {
            Some(state) => {
                view.state = Some(state);
                drop(view);
                if changed {
                    self.line(LogStream::System, format!("service is {words}"));
                }
                Some(state)
            }
            None => {
                let kept = view.state;
                drop(view);
                if changed {
                    warn!(resource = %self.name, state = %words, "Unknown Render deploy status; keeping the last state.");
                    self.line(
                        LogStream::Stderr,
                        format!("warning: unknown deploy status `{words}`; keeping the last state"),
                    );
                }
                kept
            }
        }
    }

    /// Why the service is failed, from the last answer.
    fn failure_text(&self) -> String {
        let view = lock(&self.view);
        let id = &self.spec.service_id;
        match (&view.service, &view.deploy) {
            (Some(s), _) if s.suspended => {
                let why: Vec<String> = s
                    .suspenders
                    .iter()
                    .filter(|x| FAILING_SUSPENDERS.contains(&x.as_str()))
                    .map(|x| suspender_text(x))
                    .collect();
                format!("Render service `{id}` {}", why.join("; "))
            }
            (_, Some(d)) => format!(
                "Render service `{id}`: its latest deploy {} is {}",
                d.id, d.status
            ),
            _ => format!("Render service `{id}` failed"),
        }
    }

    /// Why a start cannot bring the service up, from the last answer (a suspension by Render,
    /// a failed, canceled or deactivated latest deploy).
    fn start_refusal(&self) -> String {
        let (state, deploy) = {
            let view = lock(&self.view);
            (view.state, view.deploy.clone())
        };
        match (state, deploy) {
            (Some(ServiceStatus::Failed), _) => self.failure_text(),
            (_, Some(d)) => format!(
                "{}: its latest deploy {} is {}; nothing runs (deploy it with the `deploy` command)",
                self.what(),
                d.id,
                d.status
            ),
            (_, None) => format!("{}: nothing runs", self.what()),
        }
    }

    /// Sends `POST path` with the provider's retries, logging it.
    async fn post(&self, what: &str, tail: &str) -> Result<(), ResourceError> {
        let request = self
            .api
            .request(Method::POST, &self.spec.path(tail), &[], None)
            .map_err(|e| self.error(what, &e))?;
        self.line(
            LogStream::System,
            format!("{what}: {} {}", request.method, request.redacted_url()),
        );
        self.api
            .send(&request)
            .await
            .map_err(|e| self.error(what, &e))?;
        Ok(())
    }

    fn fail(&self, generation: u64, failure: String) {
        {
            let mut view = lock(&self.view);
            view.failure = Some(self.mask(&failure));
            view.operation = None;
        }
        self.line(LogStream::Stderr, failure);
        self.end_run(generation, 1);
    }

    /// One observe of a live run: reads the service and its latest deploy, moves the
    /// operation along and ends the run when the service is stopped or failed.
    async fn observe_once(&self, generation: u64) -> Result<String, ObserveError> {
        let reading = match self.read(false).await {
            Ok(answer) => answer,
            Err(error) => {
                if matches!(error.http.status(), Some(401 | 403 | 404)) {
                    let failure = self.error("observe", &error).to_string();
                    self.fail(generation, failure);
                }
                return Err(match ObserveError::from(error.http) {
                    ObserveError::RateLimited { retry_after, .. } => ObserveError::RateLimited {
                        retry_after,
                        message: error.text,
                    },
                    ObserveError::Failed(_) => ObserveError::Failed(error.text),
                });
            }
        };
        let state = self.record(reading);
        let known = lock(&self.view).known;
        let operation = lock(&self.view).operation;
        match state.filter(|_| known) {
            Some(state @ (ServiceStatus::Running | ServiceStatus::Maintenance)) => {
                // Up (maintenance mode is up too): the resume is done.
                if matches!(operation, Some(Operation::Resume { .. })) {
                    lock(&self.view).operation = None;
                    let how = if state == ServiceStatus::Running {
                        "the latest deploy is live"
                    } else {
                        "maintenance mode is on"
                    };
                    self.line(LogStream::System, format!("resumed: {how}"));
                }
            }
            Some(ServiceStatus::Stopped) => match operation {
                // Right after the resume the service may still read suspended.
                Some(Operation::Resume { .. }) => {}
                _ => self.end_run(generation, 0),
            },
            Some(ServiceStatus::Failed) => {
                let failure = self.failure_text();
                self.fail(generation, failure);
            }
            _ => {}
        }
        // Copied out first: the view's lock must not be held while the body locks it again.
        let operation = lock(&self.view).operation;
        if let Some(Operation::Resume { since }) = operation
            && since.elapsed() > self.spec.operation_timeout
        {
            let failure = format!(
                "the resume of {} did not finish within {} (state {})",
                self.what(),
                elapsed_text(self.spec.operation_timeout),
                lock(&self.view).provider_state.clone().unwrap_or_default()
            );
            self.fail(generation, failure);
        }
        Ok(lock(&self.view).provider_state.clone().unwrap_or_default())
    }

    /// One poll of the service's logs: every page the API has (up to a bound), each line not
    /// shown before.
    async fn follow_logs_once(&self) -> Result<String, ObserveError> {
        let owner = lock(&self.view)
            .service
            .as_ref()
            .and_then(|s| s.owner_id.clone());
        let Some(owner) = owner else {
            return Ok("no owner yet".into());
        };
        let mut shown = 0usize;
        for _ in 0..LOG_PAGES_PER_POLL {
            let (start, end) = {
                let cursor = lock(&self.cursor);
                (cursor.start.clone(), cursor.end.clone())
            };
            let shown_before = shown;
            let mut query: Vec<(&str, &str)> = vec![
                ("ownerId", owner.as_str()),
                ("resource", self.spec.service_id.as_str()),
                ("direction", "forward"),
                ("limit", LOG_PAGE),
            ];
            if let Some(s) = &start {
                query.push(("startTime", s.as_str()));
            }
            if let Some(e) = &end {
                query.push(("endTime", e.as_str()));
            }
            let answer = async {
                let request = self.api.request(Method::GET, "/logs", &query, None)?;
                let response = self.api.send_once(&request).await?;
                response
                    .json::<Value>()
                    .map_err(|http| self.api.call_error(http))
            }
            .await;
            let answer = match answer {
                Ok(a) => a,
                Err(error) => {
                    let text = format!("logs: {}", error.text);
                    let new = lock(&self.cursor).error.as_deref() != Some(text.as_str());
                    if new {
                        lock(&self.cursor).error = Some(text.clone());
                        self.line(LogStream::Stderr, text);
                    }
                    return Err(ObserveError::from(error.http));
                }
            };
            lock(&self.cursor).error = None;
            let entries = answer
                .get("logs")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let mut last_time = None;
            for entry in &entries {
                let id = entry.get("id").and_then(Value::as_str).unwrap_or_default();
                let message = entry
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if let Some(t) = entry.get("timestamp").and_then(Value::as_str) {
                    last_time = Some(t.to_owned());
                }
                if id.is_empty() || !lock(&self.cursor).first_sight(id) {
                    continue;
                }
                let label = |name: &str| {
                    entry
                        .get("labels")
                        .and_then(Value::as_array)
                        .and_then(|ls| {
                            ls.iter()
                                .find(|l| l.get("name").and_then(Value::as_str) == Some(name))
                        })
                        .and_then(|l| l.get("value").and_then(Value::as_str))
                        .map(str::to_owned)
                };
                let stream = match label("level").as_deref() {
                    Some("error" | "fatal" | "critical") => LogStream::Stderr,
                    _ => LogStream::Stdout,
                };
                let text = match label("type").as_deref() {
                    Some(kind) if kind != "app" => format!("[{kind}] {message}"),
                    _ => message.to_owned(),
                };
                self.line(stream, text);
                shown += 1;
            }
            let more = answer.get("hasMore").and_then(Value::as_bool) == Some(true);
            let next_start = answer
                .get("nextStartTime")
                .and_then(Value::as_str)
                .map(str::to_owned);
            if more && shown == shown_before && next_start == start {
                // A full page of lines already shown and no step forward: wait for the next
                // poll rather than asking for the same page again.
                break;
            }
            let next = |k: &str| answer.get(k).and_then(Value::as_str).map(str::to_owned);
            let mut cursor = lock(&self.cursor);
            if more {
                cursor.start = next_start.or(last_time);
                cursor.end = next("nextEndTime");
            } else {
                if last_time.is_some() {
                    cursor.start = last_time;
                }
                cursor.end = None;
                break;
            }
        }
        Ok(format!("{shown} new lines"))
    }

    /// Ends run `generation` (if it is still the live one) with exit `code`.
    fn end_run(&self, generation: u64, code: i32) {
        let ended = self.live.end(
            Some(generation),
            ExitInfo {
                code: Some(code),
                signal: None,
            },
        );
        if ended {
            let mut output = lock(&self.output);
            if output.as_ref().is_some_and(|(g, _)| *g == generation) {
                *output = None;
            }
        }
    }

    /// Ends the live run, whichever it is, with exit `code`.
    fn end_live(&self, code: i32) {
        self.live.end(
            None,
            ExitInfo {
                code: Some(code),
                signal: None,
            },
        );
        *lock(&self.output) = None;
    }

    /// Begins a run with its observe loop (and log follower).
    fn begin_run(self: &Arc<Self>, adopted: bool) -> Run {
        let (out_tx, out_rx) = mpsc::channel(256);
        let (exit_tx, exit_rx) = oneshot::channel();
        let (stop_tx, stop_rx) = watch::channel(());
        let generation = self.live.begin(|_| (exit_tx, (out_tx.clone(), stop_tx)));
        *lock(&self.output) = Some((generation, out_tx));
        if lock(&self.cursor).start.is_none() {
            // Follow the logs from this moment on.
            lock(&self.cursor).start = Some(kinfra_core::event::now_rfc3339());
        }
        let stopped = |mut rx: watch::Receiver<()>| async move {
            // Ends when the run's sender is dropped (the run ended or was replaced).
            while rx.changed().await.is_ok() {}
        };
        let observer = self.clone();
        let (_, _observe) = observe::spawn(
            ObserveConfig::every(self.spec.interval),
            move || {
                let inner = observer.clone();
                async move {
                    let answer = inner.observe_once(generation).await;
                    match &answer {
                        Ok(state) => inner.sync.ok(Some(state.clone())),
                        Err(error) => inner.sync.failed(inner.mask(&error.to_string())),
                    }
                    answer
                }
            },
            stopped(stop_rx.clone()),
        );
        if self.spec.follow_logs {
            let follower = self.clone();
            let _ = observe::spawn(
                ObserveConfig::every(self.spec.interval),
                move || {
                    let inner = follower.clone();
                    async move { inner.follow_logs_once().await }
                },
                stopped(stop_rx),
            );
        }
        self.line(
            LogStream::System,
            format!("following {} every {:?}", self.what(), self.spec.interval),
        );
        Run {
            id: format!("{}#{generation}", self.spec.service_id),
            pid: None,
            adopted,
            output: out_rx,
            exit: exit_rx,
        }
    }

    /// Follows a suspend until the service reads suspended (or `grace` passes).
    async fn track_suspend(self: &Arc<Self>, grace: Duration) {
        let tracker = OperationTracker {
            backoff: Backoff {
                initial: (self.spec.interval / 4).min(Duration::from_secs(1)),
                max: self.spec.interval,
            },
            timeout: grace,
        };
        let poll = || async {
            let reading = self.read(false).await.map_err(|e| e.http)?;
            let suspended = reading.service.suspended;
            self.record(reading);
            Ok(if suspended {
                OperationStatus::Done
            } else {
                OperationStatus::Pending
            })
        };
        let done = match tracker.track(poll).await {
            Ok(_) => {
                self.line(LogStream::System, "suspended");
                true
            }
            Err(error) => {
                self.line(
                    LogStream::Stderr,
                    format!("the suspend was not seen done: {error}"),
                );
                false
            }
        };
        let mut view = lock(&self.view);
        view.operation = None;
        view.suspended_by_kinfra = done;
    }
}

/// A resource of the `render` provider (see the module docs).
pub struct RenderResource {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RenderResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenderResource")
            .field("name", &self.inner.name)
            .field("service_id", &self.inner.spec.service_id)
            .finish_non_exhaustive()
    }
}

impl Drop for RenderResource {
    fn drop(&mut self) {
        // The loops hold the resource's state: they must not outlive it.
        self.inner.live.forget();
        *lock(&self.inner.output) = None;
    }
}

impl RenderResource {
    /// The service's state in the provider's words, from the last read.
    pub fn provider_state(&self) -> Option<String> {
        lock(&self.inner.view).provider_state.clone()
    }

    /// The service id.
    pub fn service_id(&self) -> &str {
        &self.inner.spec.service_id
    }
}

impl Resource for RenderResource {
    fn kind(&self) -> &'static str {
        "render"
    }

    fn name(&self) -> &str {
        &self.inner.name
    }

    /// Resumes the service when it is suspended by its user: reads it (a refused token, an
    /// unknown service or an unreachable API fail here), sends the resume and returns at
    /// once; the observe loop follows the resume's deploy until it is live. A service
    /// suspended by Render or whose latest deploy failed or was canceled fails the start with
    /// the reason.
    fn start(&self) -> BoxFuture<'_, Result<Run, ResourceError>> {
        Box::pin(async move {
            let inner = &self.inner;
            if inner.live.is_live() {
                return Ok(inner.begin_run(true));
            }
            {
                let mut view = lock(&inner.view);
                view.failure = None;
                view.operation = None;
            }
            let reading = inner
                .read(true)
                .await
                .map_err(|e| inner.error("start", &e))?;
            let suspended = reading.service.suspended;
            let state = inner.record(reading);
            let adopted = match state {
                Some(ServiceStatus::Stopped) if suspended => {
                    inner.post("resume", "/resume").await?;
                    lock(&inner.view).operation = Some(Operation::Resume {
                        since: Instant::now(),
                    });
                    false
                }
                Some(ServiceStatus::Stopped | ServiceStatus::Failed) => {
                    let refusal = inner.start_refusal();
                    if matches!(state, Some(ServiceStatus::Failed)) {
                        lock(&inner.view).failure = Some(refusal.clone());
                    }
                    return Err(ResourceError::Invalid(refusal));
                }
                _ => true,
            };
            Ok(inner.begin_run(adopted))
        })
    }

    /// Suspends the service (unless it is suspended or failed already), follows the suspend
    /// up to `grace`, and ends the run either way.
    fn stop(&self, grace: Duration) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let (state, suspended) = {
                let view = lock(&inner.view);
                (
                    view.state,
                    view.service.as_ref().is_some_and(|s| s.suspended),
                )
            };
            if suspended || matches!(state, Some(ServiceStatus::Failed)) {
                inner.end_live(if suspended { 0 } else { 1 });
                return Ok(());
            }
            let sent = inner.post("suspend", "/suspend").await;
            if sent.is_ok() {
                lock(&inner.view).operation = Some(Operation::Suspend {
                    since: Instant::now(),
                });
                inner.track_suspend(grace).await;
            }
            inner.end_live(0);
            sent
        })
    }

    /// Lets go of the run; the service stays as it is (`on_down = "keep"`).
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
            Ok(match inner.record(reading) {
                Some(ServiceStatus::Stopped) | None => Observed::Idle,
                Some(ServiceStatus::Failed) => Observed::Exited(ExitInfo {
                    code: Some(1),
                    signal: None,
                }),
                Some(_) => Observed::Running,
            })
        })
    }

    /// Healthy while the latest deploy is live (and the service neither suspended nor in
    /// maintenance), unhealthy when failed, unknown otherwise. No I/O.
    fn health(&self) -> BoxFuture<'_, Result<Health, ResourceError>> {
        Box::pin(async move {
            let view = lock(&self.inner.view);
            Ok(match view.state.filter(|_| view.known) {
                Some(ServiceStatus::Running) => Health::Healthy,
                Some(ServiceStatus::Failed) => Health::Unhealthy,
                _ => Health::Unknown,
            })
        })
    }

    fn has_own_health(&self) -> bool {
        true
    }

    /// The service's public URL (`serviceDetails.url`) and its host, once read.
    fn connection(&self) -> Connection {
        let view = lock(&self.inner.view);
        let service = view.service.clone().unwrap_or_default();
        let host = service
            .url
            .as_deref()
            .map(|u| {
                let rest = u.split_once("://").map_or(u, |(_, r)| r);
                rest.split(['/', ':']).next().unwrap_or(rest).to_owned()
            })
            .unwrap_or_default();
        let mut fields = BTreeMap::new();
        fields.insert(
            "service_id".to_owned(),
            Secret::new(self.inner.spec.service_id.clone()),
        );
        if let Some(d) = &service.dashboard_url {
            fields.insert("dashboard_url".to_owned(), Secret::new(d.clone()));
        }
        Connection {
            host,
            port: service
                .url
                .as_ref()
                .map(|u| if u.starts_with("http://") { 80 } else { 443 }),
            url: service.url.map(Secret::new),
            fields,
        }
    }

    fn logs(&self, tail: usize) -> BoxFuture<'_, Result<Vec<OutputLine>, ResourceError>> {
        Box::pin(async move { Ok(self.inner.logs.tail(tail)) })
    }

    /// kinfra never deletes a Render service: the service is the user's.
    fn remove(&self, _volumes: bool) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            self.inner.line(
                LogStream::System,
                "kinfra does not delete Render services; the service is left as it is",
            );
            Ok(())
        })
    }

    /// The observe loop's last sync, with the provider state of the latest read (a stop's
    /// or a status read's too, so it never lags behind the state shown).
    fn sync(&self) -> Option<SyncFacts> {
        let mut facts = self.inner.sync.facts().unwrap_or_default();
        if let Some(words) = lock(&self.inner.view).provider_state.clone() {
            facts.provider_state = Some(words);
        }
        (facts.last_sync.is_some() || facts.provider_state.is_some()).then_some(facts)
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
        let words = view.provider_state.clone()?;
        let suffix = if view.known {
            String::new()
        } else {
            " (unknown deploy status; last known state kept)".to_owned()
        };
        let suspended = view.service.as_ref().is_some_and(|s| s.suspended);
        match (view.state?, view.operation) {
            (
                ServiceStatus::Stopped | ServiceStatus::Starting,
                Some(Operation::Resume { since }),
            ) => report(
                ServiceState::Starting,
                format!(
                    "{words}: resume requested {} ago{suffix}",
                    elapsed_text(since.elapsed())
                ),
            ),
            (ServiceStatus::Starting, _) => {
                report(ServiceState::Starting, format!("{words}{suffix}"))
            }
            (ServiceStatus::Running, Some(Operation::Suspend { since })) if !suspended => report(
                ServiceState::Stopping,
                format!(
                    "{words}: suspend requested {} ago{suffix}",
                    elapsed_text(since.elapsed())
                ),
            ),
            (ServiceStatus::Running, _) => match (&view.deploy, &view.live) {
                // A canceled or failed latest deploy over one still live: it serves.
                (Some(latest), Some(live)) => report(
                    ServiceState::Running,
                    format!(
                        "deploy {} {}; {} live{suffix}",
                        latest.id, latest.status, live.id
                    ),
                ),
                _ => report(ServiceState::Running, format!("{words}{suffix}")),
            },
            (ServiceStatus::Maintenance, _) => report(
                ServiceState::Maintenance,
                format!("{words}: maintenance mode is on{suffix}"),
            ),
            (ServiceStatus::Stopped, _) if view.suspended_by_kinfra => report(
                ServiceState::Stopped,
                format!("{words}: suspended by kinfra{suffix}"),
            ),
            (ServiceStatus::Stopped, _) if suspended => report(
                ServiceState::Stopped,
                format!("{words}: suspended outside kinfra{suffix}"),
            ),
            (ServiceStatus::Stopped, _) => report(
                ServiceState::Stopped,
                format!(
                    "latest deploy {}{suffix}",
                    view.deploy
                        .as_ref()
                        .map_or(words.as_str(), |d| d.status.as_str())
                ),
            ),
            (ServiceStatus::Failed, _) => report(ServiceState::Failed, format!("{words}{suffix}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn deploy_statuses_map_as_design_says() {
        use ServiceStatus::*;
        for (status, state) in [
            ("created", Starting),
            ("queued", Starting),
            ("build_in_progress", Starting),
            ("update_in_progress", Starting),
            ("pre_deploy_in_progress", Starting),
            ("live", Running),
            ("deactivated", Stopped),
            ("canceled", Stopped),
            ("build_failed", Failed),
            ("update_failed", Failed),
            ("pre_deploy_failed", Failed),
            ("warming_in_progress", Starting),
            ("migrating", Starting),
            ("post_deploy_failed", Failed),
        ] {
            assert_eq!(map_deploy_status(status), Some(state), "{status}");
        }
        assert_eq!(map_deploy_status("paused"), None);
        assert_eq!(map_deploy_status("something_new"), None);
    }

    #[test]
    fn suspensions_and_maintenance_come_before_the_deploy() {
        use ServiceStatus::*;
        assert_eq!(
            map_service(true, &s(&["user"]), false, Some("live"), false),
            Some(Stopped)
        );
        assert_eq!(
            map_service(true, &s(&[]), false, Some("live"), false),
            Some(Stopped)
        );
        assert_eq!(
            map_service(true, &s(&["parent_service"]), false, Some("live"), false),
            Some(Stopped)
        );
        for by in ["billing", "admin", "stuck_crashlooping", "hipaa_enablement"] {
            assert_eq!(
                map_service(true, &s(&["user", by]), false, Some("live"), false),
                Some(Failed),
                "{by}"
            );
        }
        assert_eq!(
            map_service(false, &[], true, Some("live"), false),
            Some(Maintenance)
        );
        assert_eq!(map_service(false, &[], false, None, false), Some(Starting));
        assert_eq!(map_service(false, &[], false, Some("odd"), false), None);
        // A canceled or failed latest deploy over an earlier live one still serves.
        for latest in ["canceled", "build_failed"] {
            assert_eq!(
                map_service(false, &[], false, Some(latest), true),
                Some(Running)
            );
        }
        assert_eq!(
            map_service(false, &[], false, Some("canceled"), false),
            Some(Stopped)
        );
        assert_eq!(
            map_service(false, &[], false, Some("build_failed"), false),
            Some(Failed)
        );
        assert_eq!(
            map_service(true, &s(&["user"]), false, Some("canceled"), true),
            Some(Stopped)
        );
        assert!(suspender_text("stuck_crashlooping").contains("crash-looping"));
        assert!(suspender_text("billing").contains("billing"));
    }

    #[test]
    fn service_ids_are_checked() {
        assert!(valid_service_id("srv-cukouhrtq21c73e9scng"));
        assert!(valid_service_id("crn-abc123"));
        assert!(!valid_service_id("srv-"));
        assert!(!valid_service_id("srv-ABC"));
        assert!(!valid_service_id("dep-abc"));
        assert!(!valid_service_id("srv-a/b"));
    }

    #[test]
    fn a_log_id_is_shown_once_and_old_ids_are_let_go() {
        let mut cursor = LogCursor::default();
        assert!(cursor.first_sight("a"));
        assert!(!cursor.first_sight("a"));
        for i in 0..LOG_IDS_KEPT {
            cursor.first_sight(&format!("x{i}"));
        }
        assert_eq!(cursor.seen.len(), LOG_IDS_KEPT);
        assert!(cursor.first_sight("a"), "the oldest id was let go");
    }
}
