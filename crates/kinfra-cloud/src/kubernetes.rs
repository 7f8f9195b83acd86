//! The `kubernetes` provider: a Deployment (`apps/v1`) as a resource, through the field's Rust
//! client (kube, with k8s-openapi's types); the `command` provider still covers `kubectl` for
//! those who prefer it.
//!
//! An instance (`[providers.k8s] provider = "kubernetes"`) is one cluster identity: its
//! `kubeconfig` (a path, a relative one beside the config file; without it, the in-cluster
//! service account) and optional `context`
//! (else the kubeconfig's current one), `timeout` (per request, default 30s), `rate_limit`;
//! a `token` or `base_url` of the instance overrides the kubeconfig's. Every credential the
//! kubeconfig holds (token, password, client key) is a secret: never in errors, logs, status
//! or dry-runs.
//!
//! Starting a resource scales its Deployment (`namespace`, `name`) to the configured
//! `replicas` (default 1) and stopping it scales it to 0, both through the `/scale`
//! subresource (`PATCH`, `application/merge-patch+json`, as `kubectl scale` does). The
//! Deployment is read every `interval`; its `readyReplicas` against `spec.replicas` and its
//! rollout status (`observedGeneration`, the `Progressing` and `Available` conditions) map to
//! kinfra's states: scaled to 0 is stopped (stopping while pods remain), a rollout not yet
//! complete is starting (running with the rollout's progress once it was ready), every
//! replica updated, available and ready is running, and `Progressing=False` with reason
//! `ProgressDeadlineExceeded` is failed with the controller's message. A `Progressing=False`
//! reason this module does not know keeps the last state with a warning. A Deployment that
//! disappears (404) fails the run naming `namespace/name`; a refused credential (401/403)
//! fails it naming the context.
//!
//! Commands: `scale {replicas}` and `restart` (what `kubectl rollout restart` sends: the pod
//! template's `kubectl.kubernetes.io/restartedAt` annotation, a strategic merge patch), each
//! with a dry-run that sends nothing and shows the exact request; `kinfra plan` gets the scale
//! a start would send (`planned_start`).
//!
//! Requests go through kube's client (TLS checked against the kubeconfig's certificate
//! authority, else the system's roots) but kinfra keeps the policy: the instance's token
//! bucket, one `timeout` per request, and retries of 429/503 (their `Retry-After`), other 5xx,
//! timeouts and connection failures within the provider's retry policy; any other 4xx (a 409
//! conflict included) is returned at once. kube's own retry layer is off. A credential kube
//! finds only at request time (a `tokenFile`, an `exec` plugin) is not known to kinfra, so it
//! cannot be shown, nor masked, in a dry-run.

use kinfra_core::Secret;
use kinfra_core::event::ExitInfo;
use kinfra_core::resource::{
    BoxFuture, Connection, Observed, OutputLine, ReportedState, Resource, ResourceError, Run,
    SyncFacts,
};
use kinfra_core::state::{Health, ServiceState};
use kinfra_core::status::LogStream;
use kinfra_provider::command::{CommandSpec, ParamKind, ParamSpec, ValidatedParams};
use kinfra_provider::http::HttpError;
use kinfra_provider::metadata::{
    AuthMethod, Capability, Category, ConfigKeySpec, ConfigKind, ProviderMetadata, ResourceTypeSpec,
};
use kinfra_provider::observe::{self, ObserveConfig, ObserveError};
use kinfra_provider::operation::{OperationStatus, OperationTracker};
use kinfra_provider::provider::{
    InstanceContext, KINFRA_KEYS, Provider, ProviderError, ResourceDecl, ResourceProblem,
    config_duration_or, config_problems,
};
use kinfra_provider::ratelimit::{Rate, TokenBucket};
use kinfra_provider::rest::TokenNeed;
use kinfra_provider::result::{CommandResult, PlannedRequest, mask_text};
use kinfra_provider::retry::{Backoff, Failure, RetryPolicy, classify, parse_retry_after};
use kinfra_provider::run_slot::{AbortOnDrop, LogRing, RunSlot, SyncRecord, lock};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v1::Scale;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::params::{Patch, PatchParams};
use secrecy::ExposeSecret;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{OnceCell, mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, warn};

/// The provider's id.
pub const ID: &str = "kubernetes";
/// The one resource type it runs.
pub const RESOURCE_TYPE: &str = "deployment";
/// The observe interval when the resource sets none.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// The longest one request may take when the instance sets no `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The replicas a start scales to when the resource sets none.
pub const DEFAULT_REPLICAS: i32 = 1;
/// The pod-template annotation `kubectl rollout restart` sets.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";
/// The field manager named in kinfra's patches.
pub const FIELD_MANAGER: &str = "kinfra";
/// The `Progressing` reason of a rollout that failed.
pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
/// The context name shown for an in-cluster instance.
const IN_CLUSTER: &str = "in-cluster";
/// The API server's in-cluster address (what `base_url` overrides by default).
const IN_CLUSTER_URL: &str = "https://kubernetes.default.svc";
/// Output lines kept for [`Resource::logs`].
const LOG_LINES: usize = 500;
/// Lines said outside a run kept for the next run's output.
const PENDING_LINES: usize = 20;
/// How much of an error answer's body an error shows.
const EXCERPT: usize = 300;

fn problem(key: &str, message: impl Into<String>) -> ResourceProblem {
    ResourceProblem::at(key, message)
}

/// What a Deployment's spec and status mean in kinfra's state model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeploymentState {
    /// `spec.replicas` is 0 and no pod is left.
    ScaledDown,
    /// `spec.replicas` is 0 and pods are still going away.
    ScalingDown,
    /// A rollout (or a scale up) is under way: the controller has not observed the latest
    /// generation, or not every replica is updated, available and ready yet.
    Rolling,
    /// Every replica is updated, available and ready.
    Ready,
    /// `Progressing=False` with reason `ProgressDeadlineExceeded`.
    Failed,
}

/// One reading of a Deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    /// What it means; `None` for a status this module does not know (the last state is kept).
    pub state: Option<DeploymentState>,
    /// The raw state shown as `provider_state`: counts and conditions, e.g.
    /// `ready 2/3; Progressing=True ReplicaSetUpdated; Available=True`.
    pub raw: String,
    /// The controller's words when it failed or is stuck (the condition's message).
    pub detail: Option<String>,
    /// `spec.replicas`.
    pub desired: i32,
    /// `status.readyReplicas`.
    pub ready: i32,
    /// The `Available` condition's status, when there is one.
    pub available: Option<bool>,
}

/// Reads a Deployment's spec and status (see [`DeploymentState`]).
pub fn assess(deployment: &Deployment) -> Assessment {
    let desired = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let generation = deployment.metadata.generation.unwrap_or(0);
    let status = deployment.status.clone().unwrap_or_default();
    let observed = status.observed_generation.unwrap_or(0) >= generation;
    let current = status.replicas.unwrap_or(0);
    let ready = status.ready_replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let conditions = status.conditions.unwrap_or_default();
    let condition = |kind: &str| conditions.iter().find(|c| c.type_ == kind).cloned();
    let progressing = condition("Progressing");
    let available_cond = condition("Available");
    let mut raw = format!("ready {ready}/{desired}");
    if updated != desired || current != desired {
        raw.push_str(&format!(", updated {updated}, current {current}"));
    }
    if let Some(p) = &progressing {
        raw.push_str(&format!(
            "; Progressing={} {}",
            p.status,
            p.reason.as_deref().unwrap_or("")
        ));
    }
    if let Some(a) = &available_cond {
        raw.push_str(&format!("; Available={}", a.status));
    }
    if !observed {
        raw.push_str(&format!(
            "; generation {generation} not yet observed ({})",
            status.observed_generation.unwrap_or(0)
        ));
    }
    let raw = raw.trim_end().to_owned();
    let available_true = available_cond.as_ref().map(|a| a.status == "True");
    let replica_failure = condition("ReplicaFailure")
        .filter(|c| c.status == "True")
        .and_then(|c| c.message.or(c.reason));
    let mut detail = replica_failure;
    let state = if desired == 0 {
        Some(if current == 0 {
            DeploymentState::ScaledDown
        } else {
            DeploymentState::ScalingDown
        })
    } else if !observed {
        Some(DeploymentState::Rolling)
    } else {
        match &progressing {
            Some(p) if p.status == "False" => {
                let reason = p.reason.clone().unwrap_or_default();
                let message = p.message.clone().unwrap_or_default();
                detail = Some(format!("{reason}: {message}").trim().to_owned());
                if reason == PROGRESS_DEADLINE_EXCEEDED {
                    Some(DeploymentState::Failed)
                } else {
                    None
                }
            }
            _ => {
                if updated >= desired
                    && current <= desired
                    && available >= desired
                    && ready >= desired
                {
                    Some(DeploymentState::Ready)
                } else {
                    Some(DeploymentState::Rolling)
                }
            }
        }
    };
    Assessment {
        state,
        raw,
        detail,
        desired,
        ready,
        available: available_true,
    }
}

/// True for a DNS-1123 label (a namespace): lower-case alphanumerics and `-`, 1–63 long,
/// starting and ending with an alphanumeric.
pub fn valid_label(text: &str) -> bool {
    let b = text.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// True for a DNS-1123 subdomain (a Deployment's name): labels joined by `.`, at most 253.
pub fn valid_subdomain(text: &str) -> bool {
    text.len() <= 253 && text.split('.').all(valid_label)
}

/// A resource's own keys, parsed.
#[derive(Debug, Clone)]
struct DeploymentSpec {
    /// `None`: the context's namespace (`default` without one).
    namespace: Option<String>,
    name: String,
    replicas: i32,
    interval: Duration,
}

impl DeploymentSpec {
    fn parse(config: &Map<String, Value>) -> Result<Self, Vec<ResourceProblem>> {
        let mut problems = Vec::new();
        let namespace = match config.get("namespace") {
            None => None,
            Some(Value::String(n)) if valid_label(n) => Some(n.clone()),
            Some(Value::String(n)) => {
                problems.push(problem(
                    "namespace",
                    format!(
                        "`{n}` is not a namespace name (lower-case letters, digits and `-`, at most 63)"
                    ),
                ));
                None
            }
            Some(_) => {
                problems.push(problem("namespace", "expected a string"));
                None
            }
        };
        let name = match config.get("name") {
            Some(Value::String(n)) if valid_subdomain(n) => n.clone(),
            Some(Value::String(n)) => {
                problems.push(problem(
                    "name",
                    format!(
                        "`{n}` is not a Deployment name (lower-case letters, digits, `-` and `.`)"
                    ),
                ));
                String::new()
            }
            Some(_) => {
                problems.push(problem("name", "expected a string"));
                String::new()
            }
            None => {
                problems.push(problem("name", "missing (required)"));
                String::new()
            }
        };
        let replicas = match config.get("replicas") {
            None => DEFAULT_REPLICAS,
            Some(v) => match v.as_i64().and_then(|n| i32::try_from(n).ok()) {
                Some(n) if n >= 1 => n,
                _ => {
                    problems.push(problem(
                        "replicas",
                        format!("expected an integer of at least 1 (stop scales to 0), not {v}"),
                    ));
                    DEFAULT_REPLICAS
                }
            },
        };
        let interval = config_duration_or(config, "interval", DEFAULT_INTERVAL, &mut problems);
        if problems.is_empty() {
            Ok(Self {
                namespace,
                name,
                replicas,
                interval,
            })
        } else {
            Err(problems)
        }
    }
}

/// An instance's cluster access, loaded (no connection made yet).
struct ClusterConfig {
    config: kube::Config,
    /// The context's name (`in-cluster` for the service account).
    context: String,
    /// Every credential it holds, to mask.
    secrets: Vec<Secret>,
    /// The bearer token requests carry, when they carry one (for dry-runs).
    bearer: Option<Secret>,
    timeout: Duration,
    rate: Option<Rate>,
}

/// Reads `[providers.X]`'s kubeconfig (or the in-cluster account), `context`, `timeout`,
/// `rate_limit`, `token` and `base_url`: every problem at once.
async fn load_cluster(ctx: &InstanceContext) -> Result<ClusterConfig, Vec<ResourceProblem>> {
    let at = |key: &str, message: String| {
        problem(
            key,
            format!("[providers.{}] {key}: {message}", ctx.instance),
        )
    };
    let mut problems = Vec::new();
    let context = match ctx.config.get("context") {
        None => None,
        Some(Value::String(c)) if !c.is_empty() => Some(c.clone()),
        Some(_) => {
            problems.push(at("context", "expected a context's name".into()));
            None
        }
    };
    let timeout = config_duration_or(&ctx.config, "timeout", DEFAULT_TIMEOUT, &mut problems);
    // `base_url`, `rate_limit` and `token` are checked as every REST provider's are; no token
    // is needed (the kubeconfig brings the credentials), one given overrides them.
    let (rate, base_uri, instance_token) =
        match ctx.api_access(Some(IN_CLUSTER_URL), TokenNeed::Optional) {
            Ok(access) => {
                let overridden = ctx.base_url.is_some() || ctx.config.contains_key("base_url");
                let uri = overridden
                    .then(|| access.base.parse::<http::Uri>().ok())
                    .flatten();
                (access.rate, uri, access.token)
            }
            Err(found) => {
                problems.extend(found);
                (None, None, None)
            }
        };
    let mut secrets = Vec::new();
    let loaded = match ctx.config.get("kubeconfig") {
        Some(Value::String(path)) => match Kubeconfig::read_from(path) {
            Err(e) => {
                problems.push(at("kubeconfig", format!("cannot read `{path}`: {e}")));
                None
            }
            Ok(kubeconfig) => {
                for named in &kubeconfig.auth_infos {
                    if let Some(user) = &named.auth_info {
                        for s in [&user.token, &user.password, &user.client_key_data]
                            .into_iter()
                            .flatten()
                        {
                            secrets.push(Secret::new(s.expose_secret()));
                        }
                    }
                }
                let chosen = context
                    .clone()
                    .or_else(|| kubeconfig.current_context.clone());
                let known: Vec<&str> = kubeconfig
                    .contexts
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect();
                match chosen {
                    Some(name) if known.contains(&name.as_str()) => {
                        let options = KubeConfigOptions {
                            context: Some(name.clone()),
                            ..KubeConfigOptions::default()
                        };
                        match kube::Config::from_custom_kubeconfig(kubeconfig, &options).await {
                            Ok(config) => Some((config, name)),
                            Err(e) => {
                                problems.push(at(
                                    "kubeconfig",
                                    mask_secrets(
                                        &format!("`{path}`, context `{name}`: {e}"),
                                        &secrets,
                                    ),
                                ));
                                None
                            }
                        }
                    }
                    Some(name) => {
                        problems.push(at(
                            "context",
                            format!(
                                "no context `{name}` in `{path}` (it has: {})",
                                known.join(", ")
                            ),
                        ));
                        None
                    }
                    None => {
                        problems.push(at(
                            "context",
                            format!("`{path}` has no current-context: name one with `context`"),
                        ));
                        None
                    }
                }
            }
        },
        Some(_) => {
            problems.push(at("kubeconfig", "expected a file path".into()));
            None
        }
        None => match kube::Config::incluster() {
            Ok(config) => Some((config, IN_CLUSTER.to_owned())),
            Err(e) => {
                problems.push(at(
                    "kubeconfig",
                    format!(
                        "not set, and kinfra does not run in a cluster (in-cluster config: {e}); \
                         name a kubeconfig file"
                    ),
                ));
                None
            }
        },
    };
    // Every problem names the instance, since a resource's problems are shown under it.
    let named = |problems: Vec<ResourceProblem>| {
        let prefix = format!("[providers.{}]", ctx.instance);
        problems
            .into_iter()
            .map(|p| match &p.key {
                Some(key) if !p.message.starts_with(&prefix) => {
                    ResourceProblem::at(key.clone(), format!("{prefix} {key}: {}", p.message))
                }
                _ => p,
            })
            .collect::<Vec<_>>()
    };
    let Some((mut config, context)) = loaded else {
        return Err(named(problems));
    };
    if !problems.is_empty() {
        return Err(named(problems));
    }
    if let Some(uri) = base_uri {
        config.cluster_url = uri;
    }
    if let Some(token) = &instance_token {
        config.auth_info.token = Some(token.expose().to_owned().into());
        secrets.push(token.clone());
    }
    // kinfra retries itself (Retry-After honoured, 409 never retried) and times each request.
    config.default_retry = false;
    config.connect_timeout = Some(timeout);
    config.read_timeout = Some(timeout);
    config.write_timeout = Some(timeout);
    let bearer = config
        .auth_info
        .token
        .as_ref()
        .map(|t| Secret::new(t.expose_secret()));
    if let Some(b) = &bearer {
        secrets.push(b.clone());
    }
    Ok(ClusterConfig {
        config,
        context,
        secrets,
        bearer,
        timeout,
        rate,
    })
}

fn mask_secrets(text: &str, secrets: &[Secret]) -> String {
    let values: Vec<&str> = secrets.iter().map(|s| s.expose()).collect();
    mask_text(text, &values)
}

/// One instance's connection to its cluster, for one Deployment.
#[derive(Clone)]
struct Cluster {
    client: kube::Client,
    instance: String,
    context: String,
    server: String,
    namespace: String,
    name: String,
    secrets: Vec<Secret>,
    bearer: Option<Secret>,
    timeout: Duration,
    bucket: Option<TokenBucket>,
    retry: RetryPolicy,
}

/// A request as kube builds it, kept so it can be sent again and shown.
struct Prepared {
    request: http::Request<Vec<u8>>,
}

impl Prepared {
    fn copy(&self) -> http::Request<kube::client::Body> {
        let mut builder = http::Request::builder()
            .method(self.request.method().clone())
            .uri(self.request.uri().clone());
        for (k, v) in self.request.headers() {
            builder = builder.header(k, v);
        }
        builder
            .body(kube::client::Body::from(self.request.body().clone()))
            .unwrap_or_else(|_| http::Request::new(kube::client::Body::empty()))
    }

    fn method(&self) -> String {
        self.request.method().to_string()
    }
}

impl Cluster {
    fn mask(&self, text: &str) -> String {
        mask_secrets(text, &self.secrets)
    }

    fn what(&self) -> String {
        format!("Deployment `{}/{}`", self.namespace, self.name)
    }

    fn path(&self) -> String {
        format!("/apis/apps/v1/namespaces/{}/deployments", self.namespace)
    }

    fn url(&self, prepared: &Prepared) -> String {
        let path = prepared
            .request
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        format!("{}{path}", self.server.trim_end_matches('/'))
    }

    fn built(
        &self,
        built: Result<http::Request<Vec<u8>>, kube::core::request::Error>,
    ) -> Result<Prepared, HttpError> {
        let mut request = built.map_err(|e| HttpError::Invalid {
            url: format!("{}{}", self.server, self.path()),
            reason: e.to_string(),
        })?;
        // kube's builder leaves an empty pair (`?&fieldManager=...`, `path?`): drop it, so the
        // dry-run and the request sent read as kubectl's.
        let text = request.uri().to_string();
        let tidy = text.replacen("?&", "?", 1);
        let tidy = tidy.strip_suffix('?').unwrap_or(&tidy);
        if tidy != text
            && let Ok(uri) = tidy.parse::<http::Uri>()
        {
            *request.uri_mut() = uri;
        }
        Ok(Prepared { request })
    }

    fn get_deployment(&self) -> Result<Prepared, HttpError> {
        self.built(
            kube::core::Request::new(self.path())
                .get(&self.name, &kube::core::params::GetParams::default()),
        )
    }

    fn patch_scale(&self, replicas: i32) -> Result<Prepared, HttpError> {
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        let patch = Patch::Merge(json!({ "spec": { "replicas": replicas } }));
        self.built(
            kube::core::Request::new(self.path())
                .patch_subresource("scale", &self.name, &params, &patch),
        )
    }

    fn patch_restart(&self, at: &str) -> Result<Prepared, HttpError> {
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        let patch = Patch::Strategic(json!({
            "spec": { "template": { "metadata": { "annotations": { RESTARTED_AT: at } } } }
        }));
        self.built(kube::core::Request::new(self.path()).patch(&self.name, &params, &patch))
    }

    /// `prepared` as a dry-run shows it, secrets still in (mask before showing).
    fn planned(&self, prepared: &Prepared) -> PlannedRequest {
        let mut headers = Vec::new();
        if let Some(token) = &self.bearer {
            headers.push((
                "Authorization".to_owned(),
                format!("Bearer {}", token.expose()),
            ));
        }
        for (k, v) in prepared.request.headers() {
            headers.push((k.to_string(), v.to_str().unwrap_or("").to_owned()));
        }
        let body = prepared.request.body();
        PlannedRequest {
            method: prepared.method(),
            url: self.url(prepared),
            headers,
            body: (!body.is_empty()).then(|| {
                serde_json::from_slice(body)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
            }),
        }
    }

    /// Sends `prepared` once (through the instance's token bucket, within `timeout`): the
    /// answer's body for a 2xx, else the error.
    async fn send_once(&self, prepared: &Prepared) -> Result<Vec<u8>, HttpError> {
        if let Some(bucket) = &self.bucket {
            bucket.acquire().await;
        }
        let method = prepared.method();
        let url = self.mask(&self.url(prepared));
        let exchange = async {
            let response = self.client.send(prepared.copy()).await?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            let body = response.into_body().collect_bytes().await?;
            Ok::<_, kube::Error>((status, retry_after, body))
        };
        let (status, retry_after, body) = match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => {
                return Err(HttpError::Timeout {
                    method,
                    url,
                    after: self.timeout,
                });
            }
            Ok(Err(error)) => {
                let reason = self.mask(&error_chain(&error));
                return Err(match error {
                    kube::Error::Auth(_) => HttpError::Invalid { url, reason },
                    _ if reason.contains("timed out") || reason.contains("deadline") => {
                        HttpError::Timeout {
                            method,
                            url,
                            after: self.timeout,
                        }
                    }
                    _ => HttpError::Connect {
                        method,
                        url,
                        reason,
                    },
                });
            }
            Ok(Ok(answer)) => answer,
        };
        if status.is_success() {
            return Ok(body.to_vec());
        }
        if status.as_u16() == 429 {
            return Err(HttpError::RateLimited {
                method,
                url,
                retry_after,
            });
        }
        Err(HttpError::Status {
            method,
            url,
            code: status.as_u16(),
            retry_after,
            body_excerpt: self.mask(&status_excerpt(&body)),
        })
    }

    /// Sends `prepared`, retrying rate limits (their `Retry-After`) and transient failures
    /// within the policy; a permanent failure (4xx, 409 included) returns at once.
    async fn send(&self, prepared: &Prepared) -> Result<Vec<u8>, HttpError> {
        let started = Instant::now();
        let mut attempt: u32 = 0;
        loop {
            let error = match self.send_once(prepared).await {
                Ok(body) => return Ok(body),
                Err(error) => error,
            };
            attempt += 1;
            let wait = match classify(&error) {
                Failure::Permanent => return Err(error),
                Failure::RateLimited(Some(after)) => after,
                Failure::RateLimited(None) | Failure::Transient => {
                    self.retry.backoff.delay(attempt - 1)
                }
            };
            if attempt >= self.retry.max_attempts.max(1)
                || started.elapsed() + wait > self.retry.max_elapsed
            {
                return Err(error);
            }
            debug!(%error, attempt, ?wait, "Retrying a Kubernetes API request.");
            tokio::time::sleep(wait).await;
        }
    }

    /// Reads the Deployment (`retry`: with the policy's retries).
    async fn read(&self, retry: bool) -> Result<Deployment, HttpError> {
        let prepared = self.get_deployment()?;
        let body = if retry {
            self.send(&prepared).await?
        } else {
            self.send_once(&prepared).await?
        };
        decode(&body, &self.mask(&self.url(&prepared)))
    }

    /// `error` as the resource's error for `op`.
    fn error(&self, op: &str, error: &HttpError) -> ResourceError {
        let shown = self.mask(&error.to_string());
        match error {
            HttpError::Status {
                code: code @ (401 | 403),
                ..
            } => ResourceError::Invalid(format!(
                "{op}: the cluster refused the credentials of context `{}` (provider instance \
                 `{}`, HTTP {code}); check the kubeconfig: {shown}",
                self.context, self.instance
            )),
            HttpError::Status { code: 404, .. } => ResourceError::Invalid(format!(
                "{op}: {} not found (HTTP 404) in context `{}`: {shown}",
                self.what(),
                self.context
            )),
            HttpError::Connect { reason, .. } => ResourceError::EngineUnavailable {
                engine: format!(
                    "the Kubernetes API of context `{}` (provider instance `{}`, {})",
                    self.context, self.instance, self.server
                ),
                reason: self.mask(reason),
            },
            _ => ResourceError::op(op, shown),
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(body: &[u8], url: &str) -> Result<T, HttpError> {
    serde_json::from_slice(body).map_err(|e| HttpError::Decode {
        url: url.to_owned(),
        reason: e.to_string(),
    })
}

/// The message of a Kubernetes `Status` answer, else the body's start.
fn status_excerpt(body: &[u8]) -> String {
    if let Ok(status) = serde_json::from_slice::<Value>(body)
        && let Some(message) = status.get("message").and_then(Value::as_str)
    {
        let reason = status.get("reason").and_then(Value::as_str).unwrap_or("");
        return format!("{reason} {message}").trim().to_owned();
    }
    String::from_utf8_lossy(body)
        .chars()
        .take(EXCERPT)
        .collect()
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// The commands every Deployment offers.
fn command_specs() -> Vec<CommandSpec> {
    let command = |id: &str, description: &str, params: Vec<ParamSpec>| {
        CommandSpec::new(id, id, description)
            .in_category("kubernetes")
            .for_resource_type(RESOURCE_TYPE)
            .with_params(params)
            .with_dry_run()
    };
    vec![
        command(
            "scale",
            "Scales the Deployment to `replicas` (PATCH .../deployments/{name}/scale, a merge \
             patch of spec.replicas).",
            vec![ParamSpec::required(
                "replicas",
                ParamKind::Integer {
                    min: Some(0),
                    max: Some(i64::from(i32::MAX)),
                },
                "The number of pods wanted (0 scales it down).",
            )],
        ),
        command(
            "restart",
            "Restarts every pod by a rolling update, as `kubectl rollout restart` does (PATCH \
             .../deployments/{name}: the pod template's kubectl.kubernetes.io/restartedAt).",
            vec![],
        ),
    ]
}

fn metadata() -> ProviderMetadata {
    ProviderMetadata {
        id: ID.into(),
        name: ID.into(),
        display_name: "Kubernetes".into(),
        description: "Kubernetes Deployments through the API server (kube): start scales to \
                      the configured replicas and stop to 0 through the /scale subresource, \
                      readiness and rollout status observed, rollout restart. The instance \
                      names a `kubeconfig` (else the in-cluster service account), optional \
                      `context` and `timeout`; the kubeconfig's credentials are secrets."
            .into(),
        version: env!("CARGO_PKG_VERSION").into(),
        category: Category::Kubernetes,
        capabilities: vec![Capability::Scale, Capability::Monitor, Capability::DryRun],
        resource_types: vec![ResourceTypeSpec {
            name: RESOURCE_TYPE.into(),
            description: "An apps/v1 Deployment: runs while every replica is ready, scaled to \
                          0 when stopped."
                .into(),
            config: vec![
                ConfigKeySpec::required("name", ConfigKind::String, "The Deployment's name."),
                ConfigKeySpec::optional(
                    "namespace",
                    ConfigKind::String,
                    "Its namespace (default: the context's, else `default`).",
                ),
                ConfigKeySpec::optional(
                    "replicas",
                    ConfigKind::Integer,
                    "The replicas a start scales to (default 1; stop scales to 0).",
                ),
            ],
        }],
        auth_methods: vec![AuthMethod::Bearer, AuthMethod::Basic],
    }
}

/// What the provider shares with its resources: a token bucket per instance and the retry
/// policy.
struct Core {
    buckets: Mutex<HashMap<String, TokenBucket>>,
    retry: RetryPolicy,
}

/// The `kubernetes` provider.
pub struct KubernetesProvider {
    metadata: ProviderMetadata,
    commands: Vec<CommandSpec>,
    core: Arc<Core>,
}

impl std::fmt::Debug for KubernetesProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesProvider").finish_non_exhaustive()
    }
}

impl Default for KubernetesProvider {
    fn default() -> Self {
        Self::new()
    }
}

/// The `kubernetes` provider.
pub fn provider() -> Arc<dyn Provider> {
    Arc::new(KubernetesProvider::new())
}

impl KubernetesProvider {
    /// The provider with a retry policy of 4 attempts within a minute.
    pub fn new() -> Self {
        Self {
            metadata: metadata(),
            commands: command_specs(),
            core: Arc::new(Core {
                buckets: Mutex::new(HashMap::new()),
                retry: RetryPolicy {
                    max_attempts: 4,
                    max_elapsed: Duration::from_secs(60),
                    ..RetryPolicy::default()
                },
            }),
        }
    }

    /// The same with `retry` for starts, stops and commands (observes keep their own backoff).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.core = Arc::new(Core {
            buckets: Mutex::new(HashMap::new()),
            retry,
        });
        self
    }

    /// The [`DeploymentResource`] for `decl` (the concrete type behind [`Provider::resource`]).
    /// The kubeconfig is read and the client made at the first call that needs them.
    pub fn deployment_resource(
        &self,
        instance: &InstanceContext,
        decl: &ResourceDecl,
    ) -> Result<DeploymentResource, ProviderError> {
        let spec = decl.parse_config(DeploymentSpec::parse)?;
        Ok(DeploymentResource {
            inner: Arc::new(Inner {
                name: decl.name.clone(),
                spec,
                core: self.core.clone(),
                instance: instance.clone(),
                cluster: OnceCell::new(),
                view: Mutex::new(View::default()),
                logs: LogRing::new(LOG_LINES),
                slot: RunSlot::default(),
                output: Mutex::new(None),
                pending: Mutex::new(Vec::new()),
                sync: SyncRecord::default(),
            }),
        })
    }
}

impl Core {
    fn bucket(&self, instance: &str, rate: Option<Rate>) -> Option<TokenBucket> {
        let rate = rate?;
        let mut buckets = lock(&self.buckets);
        let bucket = buckets
            .entry(instance.to_owned())
            .or_insert_with(|| TokenBucket::new(rate));
        if bucket.rate() != rate {
            *bucket = TokenBucket::new(rate);
        }
        Some(bucket.clone())
    }

    /// Connects `ctx`'s instance to the Deployment `spec` names.
    async fn cluster(
        &self,
        ctx: &InstanceContext,
        spec: &DeploymentSpec,
        resource: &str,
    ) -> Result<Cluster, ProviderError> {
        let loaded =
            load_cluster(ctx)
                .await
                .map_err(|problems| ProviderError::InvalidResource {
                    resource: resource.to_owned(),
                    problems,
                })?;
        let namespace = spec
            .namespace
            .clone()
            .unwrap_or_else(|| loaded.config.default_namespace.clone());
        let server = loaded.config.cluster_url.to_string();
        // kube's rustls takes the process's crypto provider: make sure there is one (a caller
        // such as `kinfra plan` may not have started the runtime, which installs it).
        kinfra_core::tls::install_crypto_provider();
        let client = kube::Client::try_from(loaded.config).map_err(|e| {
            ProviderError::Resource(ResourceError::Invalid(format!(
                "[providers.{}]: cannot make a Kubernetes client for context `{}`: {}",
                ctx.instance,
                loaded.context,
                mask_secrets(&error_chain(&e), &loaded.secrets)
            )))
        })?;
        Ok(Cluster {
            client,
            instance: ctx.instance.clone(),
            context: loaded.context,
            server: server.trim_end_matches('/').to_owned(),
            namespace,
            name: spec.name.clone(),
            secrets: loaded.secrets,
            bearer: loaded.bearer,
            timeout: loaded.timeout,
            bucket: self.bucket(&ctx.instance, loaded.rate),
            retry: self.retry,
        })
    }
}

impl Provider for KubernetesProvider {
    fn metadata(&self) -> &ProviderMetadata {
        &self.metadata
    }

    fn commands(&self) -> &[CommandSpec] {
        &self.commands
    }

    /// A relative `kubeconfig` means the file beside the config file, whatever the working
    /// directory kinfra runs in.
    fn instance_path_keys(&self) -> &[&'static str] {
        &["kubeconfig"]
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
                DeploymentSpec::parse,
            );
            if let Err(found) = load_cluster(instance).await {
                problems.extend(found);
            }
            problems
        })
    }

    fn resource(
        &self,
        instance: &InstanceContext,
        decl: &ResourceDecl,
    ) -> Result<Box<dyn Resource>, ProviderError> {
        Ok(Box::new(self.deployment_resource(instance, decl)?))
    }

    /// One read of the Deployment, then the scale its start would send (none when it is at
    /// its replicas already).
    fn planned_start<'a>(
        &'a self,
        instance: &'a InstanceContext,
        decl: &'a ResourceDecl,
    ) -> BoxFuture<'a, Result<Option<Vec<PlannedRequest>>, ProviderError>> {
        Box::pin(async move {
            let spec = decl.parse_config(DeploymentSpec::parse)?;
            let cluster = self.core.cluster(instance, &spec, &decl.name).await?;
            let deployment = cluster
                .read(false)
                .await
                .map_err(|e| ProviderError::Resource(cluster.error("plan", &e)))?;
            if assess(&deployment).desired == spec.replicas {
                return Ok(Some(Vec::new()));
            }
            let prepared = cluster
                .patch_scale(spec.replicas)
                .map_err(|e| ProviderError::Resource(cluster.error("plan", &e)))?;
            let secrets: Vec<&Secret> = cluster.secrets.iter().collect();
            Ok(Some(vec![cluster.planned(&prepared).masked(&secrets)]))
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
            let spec = resource.parse_config(DeploymentSpec::parse)?;
            let cluster = self.core.cluster(instance, &spec, &resource.name).await?;
            let failed = |reason: String| ProviderError::Command {
                command: command.id.clone(),
                reason: cluster.mask(&reason),
            };
            let prepared = match command.id.as_str() {
                "scale" => {
                    let replicas = params
                        .integer("replicas")
                        .and_then(|n| i32::try_from(n).ok())
                        .unwrap_or(0);
                    cluster.patch_scale(replicas)
                }
                "restart" => cluster.patch_restart(&kinfra_core::event::now_rfc3339()),
                other => {
                    return Err(ProviderError::unknown_command(ID, other));
                }
            }
            .map_err(|e| failed(e.to_string()))?;
            let secrets: Vec<&Secret> = cluster.secrets.iter().collect();
            if dry_run {
                return Ok(CommandResult::planned(
                    &[cluster.planned(&prepared)],
                    &secrets,
                ));
            }
            let url = cluster.mask(&cluster.url(&prepared));
            let body = cluster.send(&prepared).await.map_err(|e| {
                let text = match &e {
                    HttpError::Status {
                        code: code @ (401 | 403),
                        ..
                    } => format!(
                        "the cluster refused the credentials of context `{}` (HTTP {code}): {e}",
                        cluster.context
                    ),
                    HttpError::Status { code: 404, .. } => {
                        format!("{} not found (HTTP 404): {e}", cluster.what())
                    }
                    HttpError::Status { code: 409, .. } => format!(
                        "conflict (HTTP 409): {} changed meanwhile; read it and try again: {e}",
                        cluster.what()
                    ),
                    _ => e.to_string(),
                };
                failed(text)
            })?;
            let data = match command.id.as_str() {
                "scale" => {
                    let scale: Scale = decode(&body, &url).map_err(|e| failed(e.to_string()))?;
                    json!({
                        "namespace": cluster.namespace,
                        "name": cluster.name,
                        "replicas": scale.spec.and_then(|s| s.replicas),
                        "current": scale.status.map(|s| s.replicas),
                    })
                }
                _ => {
                    let deployment: Deployment =
                        decode(&body, &url).map_err(|e| failed(e.to_string()))?;
                    let restarted = deployment
                        .spec
                        .as_ref()
                        .and_then(|s| s.template.metadata.as_ref())
                        .and_then(|m| m.annotations.as_ref())
                        .and_then(|a| a.get(RESTARTED_AT))
                        .cloned();
                    json!({
                        "namespace": cluster.namespace,
                        "name": cluster.name,
                        "restartedAt": restarted,
                        "generation": deployment.metadata.generation,
                    })
                }
            };
            Ok(CommandResult::ok(data).mask(&secrets))
        })
    }
}

/// What the resource knows of its Deployment (answers `reported_state`, `health` without I/O).
#[derive(Debug, Default)]
struct View {
    /// The last reading.
    last: Option<Assessment>,
    /// The last known state (an unknown status keeps it).
    state: Option<DeploymentState>,
    /// Whether the last reading's state was unknown.
    unknown: bool,
    /// Whether this run has been ready once (a later rollout is then shown as running).
    ever_ready: bool,
    /// kinfra is scaling it to 0.
    stopping: bool,
    /// Why it failed (a failed rollout, a refused credential, a missing Deployment).
    failure: Option<String>,
}

struct Inner {
    name: String,
    spec: DeploymentSpec,
    core: Arc<Core>,
    instance: InstanceContext,
    cluster: OnceCell<Cluster>,
    view: Mutex<View>,
    logs: LogRing,
    slot: RunSlot<(AbortOnDrop, mpsc::Sender<OutputLine>)>,
    output: Mutex<Option<mpsc::WeakSender<OutputLine>>>,
    /// Lines said before the run began (kept to the last few).
    pending: Mutex<Vec<OutputLine>>,
    sync: SyncRecord,
}

impl Inner {
    async fn cluster(&self) -> Result<&Cluster, ResourceError> {
        self.cluster
            .get_or_try_init(|| async {
                self.core
                    .cluster(&self.instance, &self.spec, &self.name)
                    .await
                    .map_err(|e| match e {
                        ProviderError::Resource(r) => r,
                        other => ResourceError::Invalid(other.to_string()),
                    })
            })
            .await
    }

    fn mask(&self, text: &str) -> String {
        match self.cluster.get() {
            Some(c) => c.mask(text),
            None => text.to_owned(),
        }
    }

    fn line(&self, stream: LogStream, text: String) {
        let line = OutputLine {
            stream,
            text: self.mask(&text),
        };
        self.logs.push(line.clone());
        match lock(&self.output).as_ref().and_then(|w| w.upgrade()) {
            Some(tx) => {
                let _ = tx.try_send(line);
            }
            // Said while a start is under way (the scale it sends): the run's output gets it
            // once the run begins.
            None => {
                let mut pending = lock(&self.pending);
                if pending.len() >= PENDING_LINES {
                    pending.remove(0);
                }
                pending.push(line);
            }
        }
    }

    /// Records a reading; returns the state it means (the last one for an unknown status).
    fn record(&self, assessment: Assessment) -> Option<DeploymentState> {
        let mut view = lock(&self.view);
        let changed = view.last.as_ref().map(|a| &a.raw) != Some(&assessment.raw);
        let state = assessment.state;
        view.unknown = state.is_none();
        if let Some(s) = state {
            view.state = Some(s);
            if s == DeploymentState::Ready {
                view.ever_ready = true;
            }
        }
        let raw = assessment.raw.clone();
        let detail = assessment.detail.clone();
        view.last = Some(assessment);
        let kept = view.state;
        drop(view);
        self.sync.ok(Some(raw.clone()));
        if changed {
            match state {
                Some(_) => self.line(LogStream::System, format!("deployment {raw}")),
                None => {
                    warn!(resource = %self.name, state = %raw, "Unknown Deployment status; keeping the last state.");
                    self.line(
                        LogStream::Stderr,
                        format!(
                            "warning: unknown Deployment status ({}); keeping the last state",
                            detail.unwrap_or(raw)
                        ),
                    );
                }
            }
        }
        kept
    }

    fn failed(&self, failure: String) {
        let failure = self.mask(&failure);
        lock(&self.view).failure = Some(failure.clone());
        self.line(LogStream::Stderr, failure);
    }

    /// One observe of a live run.
    async fn observe_once(self: &Arc<Self>, generation: u64) -> Result<String, ObserveError> {
        let cluster = self
            .cluster()
            .await
            .map_err(|e| ObserveError::Failed(e.to_string()))?;
        let deployment = match cluster.read(false).await {
            Ok(d) => d,
            Err(error) => {
                let shown = cluster.mask(&error.to_string());
                self.sync.failed(shown.clone());
                if matches!(
                    error,
                    HttpError::Status {
                        code: 401 | 403 | 404,
                        ..
                    }
                ) {
                    self.failed(cluster.error("observe", &error).to_string());
                    self.end_run(generation, 1);
                }
                return Err(match ObserveError::from(error) {
                    ObserveError::RateLimited { retry_after, .. } => ObserveError::RateLimited {
                        retry_after,
                        message: shown,
                    },
                    ObserveError::Failed(_) => ObserveError::Failed(shown),
                });
            }
        };
        let assessment = assess(&deployment);
        let raw = assessment.raw.clone();
        let detail = assessment.detail.clone();
        let known = assessment.state;
        self.record(assessment);
        let stopping = lock(&self.view).stopping;
        match known {
            Some(DeploymentState::Failed) => {
                self.failed(format!(
                    "{}: the rollout failed: {}",
                    cluster.what(),
                    detail.unwrap_or_else(|| PROGRESS_DEADLINE_EXCEEDED.into())
                ));
                self.end_run(generation, 1);
            }
            Some(DeploymentState::ScaledDown) if !stopping => {
                self.line(
                    LogStream::System,
                    format!("{} was scaled to 0 outside kinfra", cluster.what()),
                );
                self.end_run(generation, 0);
            }
            _ => {}
        }
        Ok(raw)
    }

    fn end_run(&self, generation: u64, code: i32) {
        self.slot.end(
            Some(generation),
            ExitInfo {
                code: Some(code),
                signal: None,
            },
        );
    }

    fn end_any(&self, code: i32) {
        self.slot.end(
            None,
            ExitInfo {
                code: Some(code),
                signal: None,
            },
        );
    }

    /// Begins a run and its observe loop.
    fn begin_run(self: &Arc<Self>, adopted: bool) -> Run {
        let (out_tx, out_rx) = mpsc::channel(256);
        let (exit_tx, exit_rx) = oneshot::channel();
        for line in std::mem::take(&mut *lock(&self.pending)) {
            let _ = out_tx.try_send(line);
        }
        *lock(&self.output) = Some(out_tx.downgrade());
        let interval = self.spec.interval;
        let generation = self.slot.begin(|generation| {
            let inner = self.clone();
            let observe_fn = move || {
                let inner = inner.clone();
                async move { inner.observe_once(generation).await }
            };
            let (_status, task) = observe::spawn(
                ObserveConfig::every(interval),
                observe_fn,
                std::future::pending::<()>(),
            );
            (exit_tx, (AbortOnDrop(task), out_tx))
        });
        Run {
            id: format!(
                "{}/{}#{generation}",
                self.spec.namespace.as_deref().unwrap_or("-"),
                self.spec.name
            ),
            pid: None,
            adopted,
            output: out_rx,
            exit: exit_rx,
        }
    }

    /// Scales to `replicas` through `/scale`.
    async fn scale(&self, replicas: i32, op: &str) -> Result<(), ResourceError> {
        let cluster = self.cluster().await?;
        let prepared = cluster
            .patch_scale(replicas)
            .map_err(|e| cluster.error(op, &e))?;
        self.line(
            LogStream::System,
            format!(
                "{op}: scale {} to {replicas} (PATCH {})",
                cluster.what(),
                cluster.url(&prepared)
            ),
        );
        cluster
            .send(&prepared)
            .await
            .map_err(|e| cluster.error(op, &e))?;
        Ok(())
    }
}

/// A resource of the `kubernetes` provider (see the module docs).
pub struct DeploymentResource {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DeploymentResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeploymentResource")
            .field("name", &self.inner.name)
            .field("deployment", &self.inner.spec.name)
            .finish_non_exhaustive()
    }
}

impl Drop for DeploymentResource {
    fn drop(&mut self) {
        // The observe loop holds the resource's state: it must not outlive it.
        self.inner.slot.forget();
    }
}

impl DeploymentResource {
    /// The last raw state read (`provider_state`).
    pub fn provider_status(&self) -> Option<String> {
        lock(&self.inner.view).last.as_ref().map(|a| a.raw.clone())
    }
}

impl Resource for DeploymentResource {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    fn name(&self) -> &str {
        &self.inner.name
    }

    /// Scales the Deployment to the configured replicas (when it is not there already) and
    /// returns at once; the observe loop follows the rollout. A refused credential, a missing
    /// Deployment, an unreachable API or a failed rollout fail here.
    fn start(&self) -> BoxFuture<'_, Result<Run, ResourceError>> {
        Box::pin(async move {
            let inner = &self.inner;
            if inner.slot.is_live() {
                return Ok(inner.begin_run(true));
            }
            {
                let mut view = lock(&inner.view);
                view.failure = None;
                view.stopping = false;
                view.ever_ready = false;
            }
            lock(&inner.pending).clear();
            let cluster = inner.cluster().await?;
            let deployment = match cluster.read(true).await {
                Ok(d) => d,
                Err(e) => {
                    inner.sync.failed(cluster.mask(&e.to_string()));
                    return Err(cluster.error("start", &e));
                }
            };
            let assessment = assess(&deployment);
            let desired = assessment.desired;
            let detail = assessment.detail.clone();
            let state = assessment.state;
            inner.record(assessment);
            if desired == inner.spec.replicas && state == Some(DeploymentState::Failed) {
                let failure = format!(
                    "{}: the rollout failed: {}",
                    cluster.what(),
                    detail.unwrap_or_else(|| PROGRESS_DEADLINE_EXCEEDED.into())
                );
                lock(&inner.view).failure = Some(failure.clone());
                return Err(ResourceError::Invalid(failure));
            }
            let adopted = desired == inner.spec.replicas;
            if !adopted {
                inner.scale(inner.spec.replicas, "start").await?;
            }
            Ok(inner.begin_run(adopted))
        })
    }

    /// Scales the Deployment to 0 and waits up to `grace` for its pods to go; the run ends
    /// either way.
    fn stop(&self, grace: Duration) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            let inner = &self.inner;
            lock(&inner.view).stopping = true;
            let sent = inner.scale(0, "stop").await;
            if sent.is_ok()
                && let Ok(cluster) = inner.cluster().await
            {
                let tracker = OperationTracker {
                    backoff: Backoff {
                        initial: (inner.spec.interval / 8).min(Duration::from_millis(500)),
                        max: inner.spec.interval.min(Duration::from_secs(5)),
                    },
                    timeout: grace,
                };
                let poll = || async {
                    let deployment = cluster.read(false).await?;
                    let assessment = assess(&deployment);
                    let gone = assessment.state == Some(DeploymentState::ScaledDown);
                    inner.record(assessment);
                    Ok(if gone {
                        OperationStatus::Done
                    } else {
                        OperationStatus::Pending
                    })
                };
                if let Err(error) = tracker.track(poll).await {
                    inner.line(
                        LogStream::System,
                        cluster.mask(&format!("scaled to 0; its pods are still going: {error}")),
                    );
                }
            }
            inner.end_any(0);
            sent
        })
    }

    /// Lets go of the run; the Deployment stays as it is (`on_down = "keep"`).
    fn release(&self, _grace: Duration) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            self.inner.end_any(0);
            Ok(())
        })
    }

    fn status(&self) -> BoxFuture<'_, Result<Observed, ResourceError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let cluster = inner.cluster().await?;
            let deployment = match cluster.read(false).await {
                Ok(d) => d,
                Err(HttpError::Status { code: 404, .. }) => return Ok(Observed::Absent),
                Err(e) => {
                    inner.sync.failed(cluster.mask(&e.to_string()));
                    return Err(cluster.error("status", &e));
                }
            };
            Ok(match inner.record(assess(&deployment)) {
                Some(DeploymentState::ScaledDown) | None => Observed::Idle,
                Some(DeploymentState::Failed) => Observed::Exited(ExitInfo {
                    code: Some(1),
                    signal: None,
                }),
                Some(_) => Observed::Running,
            })
        })
    }

    /// From the last reading: healthy when every replica is ready and available, unhealthy
    /// when a run that was ready lost replicas or availability, unknown otherwise. No I/O.
    fn health(&self) -> BoxFuture<'_, Result<Health, ResourceError>> {
        Box::pin(async move {
            let view = lock(&self.inner.view);
            let Some(last) = view.last.as_ref().filter(|_| !view.unknown) else {
                return Ok(Health::Unknown);
            };
            Ok(match last.state {
                Some(DeploymentState::Ready) if last.available != Some(false) => Health::Healthy,
                Some(DeploymentState::Rolling)
                    if view.ever_ready && last.available == Some(false) =>
                {
                    Health::Unhealthy
                }
                Some(DeploymentState::Failed) => Health::Unhealthy,
                _ => Health::Unknown,
            })
        })
    }

    fn has_own_health(&self) -> bool {
        true
    }

    /// The Deployment's coordinates (`namespace`, `name`, `context`); it has no URL of its own.
    fn connection(&self) -> Connection {
        let inner = &self.inner;
        let namespace = inner
            .cluster
            .get()
            .map(|c| c.namespace.clone())
            .or_else(|| inner.spec.namespace.clone())
            .unwrap_or_else(|| "default".into());
        let mut fields = BTreeMap::new();
        fields.insert("name".to_owned(), Secret::new(inner.spec.name.clone()));
        fields.insert("namespace".to_owned(), Secret::new(namespace));
        if let Some(c) = inner.cluster.get() {
            fields.insert("context".to_owned(), Secret::new(c.context.clone()));
        }
        Connection {
            host: String::new(),
            port: None,
            url: None,
            fields,
        }
    }

    fn logs(&self, tail: usize) -> BoxFuture<'_, Result<Vec<OutputLine>, ResourceError>> {
        Box::pin(async move { Ok(self.inner.logs.tail(tail)) })
    }

    /// kinfra never deletes a Deployment: it is the cluster's.
    fn remove(&self, _volumes: bool) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            self.inner.line(
                LogStream::System,
                "kinfra does not delete Kubernetes Deployments; it is left as it is".into(),
            );
            Ok(())
        })
    }

    fn sync(&self) -> Option<SyncFacts> {
        self.inner.sync.facts()
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
        let last = view.last.as_ref()?;
        let raw = &last.raw;
        let suffix = if view.unknown {
            format!(
                " (unknown status{}; last known state kept)",
                last.detail
                    .as_ref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            )
        } else {
            String::new()
        };
        match view.state? {
            DeploymentState::Rolling if view.ever_ready => report(
                ServiceState::Running,
                format!("rollout in progress: {raw}{suffix}"),
            ),
            DeploymentState::Rolling => report(
                ServiceState::Starting,
                format!("rolling out: {raw}{suffix}"),
            ),
            DeploymentState::Ready => report(ServiceState::Running, format!("{raw}{suffix}")),
            DeploymentState::ScalingDown => report(
                ServiceState::Stopping,
                format!("scaling to 0: {raw}{suffix}"),
            ),
            DeploymentState::ScaledDown if view.stopping => {
                report(ServiceState::Stopped, format!("scaled to 0{suffix}"))
            }
            DeploymentState::ScaledDown => report(
                ServiceState::Stopped,
                format!("scaled to 0 outside kinfra{suffix}"),
            ),
            DeploymentState::Failed => report(
                ServiceState::Failed,
                format!(
                    "{}{suffix}",
                    last.detail.clone().unwrap_or_else(|| raw.clone())
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(value: Value) -> Deployment {
        serde_json::from_value(value).expect("a Deployment")
    }

    fn with(
        generation: i64,
        observed: i64,
        desired: i32,
        counts: [i32; 4],
        conditions: Value,
    ) -> Deployment {
        let [current, ready, updated, available] = counts;
        deployment(json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop", "generation": generation},
            "spec": {
                "replicas": desired,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                             "spec": {"containers": [{"name": "web", "image": "nginx"}]}}
            },
            "status": {
                "observedGeneration": observed,
                "replicas": current,
                "readyReplicas": ready,
                "updatedReplicas": updated,
                "availableReplicas": available,
                "conditions": conditions
            }
        }))
    }

    fn cond(kind: &str, status: &str, reason: &str) -> Value {
        json!({"type": kind, "status": status, "reason": reason, "message": format!("{kind} says {reason}")})
    }

    #[test]
    fn rollout_status_maps_to_states() {
        use DeploymentState::*;
        let ok = json!([
            cond("Available", "True", "MinimumReplicasAvailable"),
            cond("Progressing", "True", "NewReplicaSetAvailable")
        ]);
        assert_eq!(
            assess(&with(2, 2, 3, [3, 3, 3, 3], ok.clone())).state,
            Some(Ready)
        );
        // Not yet observed: rolling whatever the counts say.
        assert_eq!(
            assess(&with(3, 2, 3, [3, 3, 3, 3], ok.clone())).state,
            Some(Rolling)
        );
        // Fewer ready than wanted.
        let a = assess(&with(2, 2, 3, [3, 1, 3, 1], ok.clone()));
        assert_eq!(a.state, Some(Rolling));
        assert!(a.raw.starts_with("ready 1/3"), "{}", a.raw);
        // Old pods still there during a rolling update.
        assert_eq!(
            assess(&with(2, 2, 2, [3, 2, 1, 2], ok.clone())).state,
            Some(Rolling)
        );
        assert_eq!(
            assess(&with(2, 2, 0, [0, 0, 0, 0], json!([]))).state,
            Some(ScaledDown)
        );
        assert_eq!(
            assess(&with(2, 2, 0, [2, 2, 0, 2], ok.clone())).state,
            Some(ScalingDown)
        );
        let failed = assess(&with(
            2,
            2,
            3,
            [3, 1, 3, 1],
            json!([cond("Progressing", "False", PROGRESS_DEADLINE_EXCEEDED)]),
        ));
        assert_eq!(failed.state, Some(Failed));
        assert!(
            failed
                .detail
                .as_deref()
                .is_some_and(|d| d.contains("ProgressDeadlineExceeded")),
            "{failed:?}"
        );
        // A reason this module does not know: no state (the last one is kept).
        let unknown = assess(&with(
            2,
            2,
            3,
            [3, 3, 3, 3],
            json!([cond("Progressing", "False", "SomethingNew")]),
        ));
        assert_eq!(unknown.state, None);
    }

    #[test]
    fn names_are_checked_as_kubernetes_does() {
        assert!(valid_label("shop-1"));
        assert!(!valid_label("Shop"));
        assert!(!valid_label("-shop"));
        assert!(!valid_label(""));
        assert!(valid_subdomain("web.v2"));
        assert!(!valid_subdomain("web..v2"));
        let Value::Object(config) = json!({"name": "Web", "replicas": 0, "namespace": 3}) else {
            panic!("not a table");
        };
        let problems = DeploymentSpec::parse(&config).expect_err("problems");
        let keys: Vec<_> = problems.iter().filter_map(|p| p.key.as_deref()).collect();
        assert_eq!(keys, ["namespace", "name", "replicas"], "{problems:?}");
    }
}
