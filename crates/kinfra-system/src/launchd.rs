//! The `launchd` provider (macOS only, untested here: kinfra's tests run on Linux, where this
//! module is not compiled): a launchd job (`label = "homebrew.mxcl.postgresql@16"`) as a
//! resource, through `launchctl`, the same shape as the `systemd` provider.
//!
//! The job lives in the `system` domain, or with `user = true` in the user's `gui/UID` domain.
//! Starting runs `launchctl kickstart DOMAIN/LABEL` (a job running already is adopted);
//! stopping `launchctl kill SIGTERM DOMAIN/LABEL`; `restart` is `kickstart -k`. launchd sends
//! no change notifications a client can subscribe to, so the job's state is read with
//! `launchctl print DOMAIN/LABEL` every `interval` (default 10s): `state = running` is
//! running, `state = waiting`/`not running` is stopped, a non-zero `last exit code` after a
//! run is failed with that code. A label launchd does not know fails naming it. The raw
//! `state` is the resource's `provider_state`. launchd keeps no journal to follow: the job's
//! output goes where its plist's `StandardOutPath` says, so the resource's log holds only
//! kinfra's own lines.
//!
//! Commands: `start`, `stop`, `restart`, each with a dry-run naming the `launchctl` call.

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
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The provider's id.
pub const ID: &str = "launchd";
/// The one resource type it runs.
pub const RESOURCE_TYPE: &str = "job";
/// The poll interval when the resource sets none.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// launchctl's exit code for a service it does not know (`Could not find service`).
const NOT_FOUND: i32 = 113;
/// Output lines kept for [`Resource::logs`].
const LOG_LINES: usize = 200;

/// What `launchctl print` says of a job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFacts {
    /// `state = ...` (`running`, `waiting`, `not running`).
    pub state: Option<String>,
    /// `pid = ...` while running.
    pub pid: Option<u32>,
    /// `last exit code = ...`.
    pub last_exit: Option<i32>,
}

/// Reads the top-level `state`, `pid` and `last exit code` of `launchctl print` output.
pub fn parse_print(text: &str) -> JobFacts {
    let mut facts = JobFacts::default();
    for line in text.lines() {
        // Only the job's own keys (one tab deep), not those of nested blocks.
        let Some(rest) = line.strip_prefix('\t') else {
            continue;
        };
        if rest.starts_with('\t') {
            continue;
        }
        let Some((key, value)) = rest.split_once(" = ") else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "state" => facts.state = Some(value.to_owned()),
            "pid" => facts.pid = value.parse().ok(),
            "last exit code" => facts.last_exit = value.parse().ok(),
            _ => {}
        }
    }
    facts
}

/// What a job's facts mean in kinfra's state model.
pub fn map_job(facts: &JobFacts) -> ServiceState {
    match facts.state.as_deref() {
        Some("running") => ServiceState::Running,
        Some("spawn scheduled" | "xpcproxy") => ServiceState::Starting,
        _ if facts.last_exit.is_some_and(|c| c != 0) => ServiceState::Failed,
        _ => ServiceState::Stopped,
    }
}

#[derive(Debug, Clone)]
struct JobSpec {
    label: String,
    user: bool,
    interval: Duration,
}

impl JobSpec {
    fn parse(config: &Map<String, Value>) -> Result<Self, Vec<ResourceProblem>> {
        let mut problems = Vec::new();
        let label = match config.get("label") {
            Some(Value::String(l))
                if !l.is_empty()
                    && l.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c)) =>
            {
                l.clone()
            }
            Some(Value::String(l)) => {
                problems.push(ResourceProblem::at(
                    "label",
                    format!("`{l}` is not a launchd label (letters, digits and ._-@)"),
                ));
                String::new()
            }
            Some(_) => {
                problems.push(ResourceProblem::at("label", "expected a string"));
                String::new()
            }
            None => {
                problems.push(ResourceProblem::at("label", "missing (required)"));
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
                label,
                user,
                interval,
            })
        } else {
            Err(problems)
        }
    }

    /// `system/LABEL` or `gui/UID/LABEL`.
    fn target(&self) -> String {
        if self.user {
            // SAFETY: getuid has no preconditions and cannot fail.
            let uid = unsafe { libc::getuid() };
            format!("gui/{uid}/{}", self.label)
        } else {
            format!("system/{}", self.label)
        }
    }
}

fn launchctl(instance: &InstanceContext) -> String {
    instance
        .config
        .get("launchctl")
        .and_then(Value::as_str)
        .unwrap_or("launchctl")
        .to_owned()
}

/// The `launchctl` arguments of a command.
fn command_args(command: &str, target: &str) -> Option<Vec<String>> {
    let args: &[&str] = match command {
        "start" => &["kickstart"],
        "stop" => &["kill", "SIGTERM"],
        "restart" => &["kickstart", "-k"],
        _ => return None,
    };
    let mut args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    args.push(target.to_owned());
    Some(args)
}

fn planned(program: &str, args: &[String]) -> PlannedRequest {
    PlannedRequest {
        method: "EXEC".into(),
        url: format!("{program} {}", args.join(" ")),
        headers: Vec::new(),
        body: None,
    }
}

/// The `launchd` provider.
pub struct LaunchdProvider {
    metadata: ProviderMetadata,
    commands: Vec<CommandSpec>,
}

impl Default for LaunchdProvider {
    fn default() -> Self {
        let command = |id: &str, what: &str| {
            CommandSpec::new(id, id, what)
                .in_category("lifecycle")
                .for_resource_type(RESOURCE_TYPE)
                .with_dry_run()
        };
        Self {
            metadata: ProviderMetadata {
                id: ID.into(),
                name: ID.into(),
                display_name: "launchd".into(),
                description: "launchd jobs on macOS through launchctl (kickstart, kill, print); \
                              state polled every interval."
                    .into(),
                version: env!("CARGO_PKG_VERSION").into(),
                category: Category::Custom,
                capabilities: vec![Capability::Monitor, Capability::DryRun],
                resource_types: vec![ResourceTypeSpec {
                    name: RESOURCE_TYPE.into(),
                    description: "A launchd job, by label.".into(),
                    config: vec![
                        ConfigKeySpec::required("label", ConfigKind::String, "The job's label."),
                        ConfigKeySpec::optional(
                            "user",
                            ConfigKind::Boolean,
                            "A job of the user's gui/UID domain instead of system.",
                        ),
                    ],
                }],
                auth_methods: vec![AuthMethod::None],
            },
            commands: vec![
                command("start", "Starts the job (launchctl kickstart)."),
                command("stop", "Stops the job (launchctl kill SIGTERM)."),
                command("restart", "Restarts the job (launchctl kickstart -k)."),
            ],
        }
    }
}

/// The `launchd` provider.
pub fn provider() -> Arc<dyn Provider> {
    Arc::new(LaunchdProvider::default())
}

fn parse(decl: &ResourceDecl) -> Result<JobSpec, ProviderError> {
    JobSpec::parse(&decl.config).map_err(|problems| ProviderError::InvalidResource {
        resource: decl.name.clone(),
        problems,
    })
}

impl Provider for LaunchdProvider {
    fn metadata(&self) -> &ProviderMetadata {
        &self.metadata
    }

    fn commands(&self) -> &[CommandSpec] {
        &self.commands
    }

    fn validate_resource<'a>(
        &'a self,
        _instance: &'a InstanceContext,
        decl: &'a ResourceDecl,
    ) -> BoxFuture<'a, Vec<ResourceProblem>> {
        Box::pin(async move {
            config_problems(
                &self.metadata,
                RESOURCE_TYPE,
                &decl.config,
                KINFRA_KEYS,
                JobSpec::parse,
            )
        })
    }

    fn resource(
        &self,
        instance: &InstanceContext,
        decl: &ResourceDecl,
    ) -> Result<Box<dyn Resource>, ProviderError> {
        let spec = parse(decl)?;
        Ok(Box::new(LaunchdResource {
            inner: Arc::new(Inner {
                name: decl.name.clone(),
                launchctl: launchctl(instance),
                spec,
                facts: Mutex::new(None),
                failure: Mutex::new(None),
                logs: LogRing::new(LOG_LINES),
                live: RunSlot::default(),
                sync: SyncRecord::default(),
            }),
        }))
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
            let spec = parse(resource)?;
            let program = launchctl(instance);
            let Some(args) = command_args(&command.id, &spec.target()) else {
                return Err(ProviderError::unknown_command(ID, &command.id));
            };
            if dry_run {
                return Ok(CommandResult::planned(&[planned(&program, &args)], &[]));
            }
            let (code, text) =
                run(&program, &args)
                    .await
                    .map_err(|reason| ProviderError::Command {
                        command: command.id.clone(),
                        reason,
                    })?;
            if code != 0 {
                return Err(ProviderError::Command {
                    command: command.id.clone(),
                    reason: format!("{program} exited with {code}: {}", text.trim()),
                });
            }
            Ok(CommandResult::ok(
                json!({ "label": spec.label, "output": text }),
            ))
        })
    }
}

/// Runs `program args`, giving its exit code and its output (stdout then stderr).
async fn run(program: &str, args: &[String]) -> Result<(i32, String), String> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("{program}: {e}"))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok((out.status.code().unwrap_or(-1), text))
}

struct Inner {
    name: String,
    launchctl: String,
    spec: JobSpec,
    facts: Mutex<Option<JobFacts>>,
    failure: Mutex<Option<String>>,
    logs: LogRing,
    live: RunSlot<(mpsc::Sender<OutputLine>, AbortOnDrop)>,
    sync: SyncRecord,
}

impl Inner {
    fn line(&self, stream: LogStream, text: String) {
        self.logs.push(OutputLine { stream, text });
    }

    async fn launchctl(&self, args: &[&str]) -> Result<(i32, String), ResourceError> {
        let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        all.push(self.spec.target());
        self.line(
            LogStream::System,
            format!("{} {}", self.launchctl, all.join(" ")),
        );
        run(&self.launchctl, &all)
            .await
            .map_err(|reason| ResourceError::EngineUnavailable {
                engine: "launchctl".into(),
                reason,
            })
    }

    /// Reads the job; an unknown label is an error naming it.
    async fn read(&self) -> Result<JobFacts, ResourceError> {
        let (code, text) = run(&self.launchctl, &["print".to_owned(), self.spec.target()])
            .await
            .map_err(|reason| ResourceError::EngineUnavailable {
                engine: "launchctl".into(),
                reason,
            })?;
        if code == NOT_FOUND {
            return Err(ResourceError::Invalid(format!(
                "launchd job `{}` not found ({})",
                self.spec.target(),
                text.trim()
            )));
        }
        if code != 0 {
            return Err(ResourceError::op("launchctl print", text.trim()));
        }
        let facts = parse_print(&text);
        self.sync.ok(facts.state.clone());
        *lock(&self.facts) = Some(facts.clone());
        Ok(facts)
    }

    fn end(&self, generation: Option<u64>, code: i32) {
        self.live.end(
            generation,
            ExitInfo {
                code: Some(code),
                signal: None,
            },
        );
    }

    async fn poll(self: Arc<Self>, generation: u64) {
        let mut tick = tokio::time::interval(self.spec.interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            match self.read().await {
                Ok(facts) => match map_job(&facts) {
                    ServiceState::Stopped => return self.end(Some(generation), 0),
                    ServiceState::Failed => {
                        let text = format!(
                            "launchd job `{}` exited with {}",
                            self.spec.label,
                            facts.last_exit.unwrap_or_default()
                        );
                        *lock(&self.failure) = Some(text);
                        return self.end(Some(generation), 1);
                    }
                    _ => {}
                },
                Err(ResourceError::Invalid(text)) => {
                    *lock(&self.failure) = Some(text);
                    return self.end(Some(generation), 1);
                }
                Err(error) => self.sync.failed(error.to_string()),
            }
        }
    }
}

/// A resource of the `launchd` provider (see the module docs).
pub struct LaunchdResource {
    inner: Arc<Inner>,
}

impl Drop for LaunchdResource {
    fn drop(&mut self) {
        self.inner.live.forget();
    }
}

impl Resource for LaunchdResource {
    fn kind(&self) -> &'static str {
        "launchd"
    }

    fn name(&self) -> &str {
        &self.inner.name
    }

    fn start(&self) -> BoxFuture<'_, Result<Run, ResourceError>> {
        Box::pin(async move {
            let inner = &self.inner;
            *lock(&inner.failure) = None;
            let facts = inner.read().await.inspect_err(|e| {
                *lock(&inner.failure) = Some(e.to_string());
            })?;
            let adopted = map_job(&facts) == ServiceState::Running;
            if !adopted {
                let (code, text) = inner.launchctl(&["kickstart"]).await?;
                if code != 0 {
                    return Err(ResourceError::op("launchctl kickstart", text.trim()));
                }
                inner.read().await?;
            }
            let (out_tx, out_rx) = mpsc::channel(16);
            let (exit_tx, exit_rx) = oneshot::channel();
            let poller = inner.clone();
            let generation = inner.live.begin(|generation| {
                let task = tokio::spawn(poller.poll(generation));
                (exit_tx, (out_tx, AbortOnDrop(task)))
            });
            Ok(Run {
                id: format!("{}#{generation}", inner.spec.label),
                pid: lock(&inner.facts).as_ref().and_then(|f| f.pid),
                adopted,
                output: out_rx,
                exit: exit_rx,
            })
        })
    }

    fn stop(&self, _grace: Duration) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            let result = self.inner.launchctl(&["kill", "SIGTERM"]).await;
            self.inner.end(None, 0);
            match result {
                Ok((0, _)) => Ok(()),
                Ok((_, text)) => Err(ResourceError::op("launchctl kill", text.trim())),
                Err(e) => Err(e),
            }
        })
    }

    fn release(&self, _grace: Duration) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            self.inner.end(None, 0);
            Ok(())
        })
    }

    fn status(&self) -> BoxFuture<'_, Result<Observed, ResourceError>> {
        Box::pin(async move {
            let facts = self.inner.read().await?;
            Ok(match map_job(&facts) {
                ServiceState::Running | ServiceState::Starting => Observed::Running,
                ServiceState::Failed => Observed::Exited(ExitInfo {
                    code: facts.last_exit,
                    signal: None,
                }),
                _ => Observed::Idle,
            })
        })
    }

    fn health(&self) -> BoxFuture<'_, Result<Health, ResourceError>> {
        Box::pin(async move { Ok(Health::Unknown) })
    }

    fn connection(&self) -> Connection {
        Connection {
            host: "127.0.0.1".into(),
            ..Connection::default()
        }
    }

    fn logs(&self, tail: usize) -> BoxFuture<'_, Result<Vec<OutputLine>, ResourceError>> {
        Box::pin(async move { Ok(self.inner.logs.tail(tail)) })
    }

    fn remove(&self, _volumes: bool) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move { Ok(()) })
    }

    fn sync(&self) -> Option<SyncFacts> {
        self.inner.sync.facts()
    }

    fn exit_reason(&self) -> Option<String> {
        lock(&self.inner.failure).clone()
    }

    fn reported_state(&self) -> Option<ReportedState> {
        if let Some(failure) = lock(&self.inner.failure).clone() {
            return Some(ReportedState {
                state: ServiceState::Failed,
                message: failure,
            });
        }
        let facts = lock(&self.inner.facts).clone()?;
        Some(ReportedState {
            state: map_job(&facts),
            message: facts.state.unwrap_or_else(|| "unknown".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn print_output_is_read_one_level_deep() {
        let text = "system/com.example.db = {\n\tactive count = 1\n\tstate = running\n\
                    \tpid = 4242\n\tlast exit code = 0\n\tendpoints = {\n\t\tstate = other\n\t}\n}\n";
        let facts = parse_print(text);
        assert_eq!(facts.state.as_deref(), Some("running"));
        assert_eq!(facts.pid, Some(4242));
        assert_eq!(map_job(&facts), ServiceState::Running);
        let failed = parse_print("x = {\n\tstate = not running\n\tlast exit code = 78\n}\n");
        assert_eq!(map_job(&failed), ServiceState::Failed);
    }
}
