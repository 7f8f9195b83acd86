//! A provider in a few lines: [`SimpleProvider`] turns three async closures (start, stop and
//! status, each given the resource's config table) into a [`Provider`] an application registers
//! in code (`kinfra::RuntimeOptions { providers, .. }`) and uses from `kinfra.toml` like a
//! built-in one.
//!
//! A run lives while status says running: after `start`, the SDK's observe loop
//! ([`crate::observe`]) asks `status` every `interval` (the resource's `interval`, jittered) and
//! ends the run when it says [`State::Failed`], or [`State::Stopped`]/[`State::Absent`] once it
//! has said running (before that, a not-yet-running answer is taken as still starting). Each
//! answer is the resource's `provider_state` and `last_sync` in status. A resource that already
//! runs when kinfra starts is adopted: `start` is not called.

use crate::command::{CommandSpec, ValidatedParams};
use crate::metadata::{AuthMethod, Capability, Category, ProviderMetadata, ResourceTypeSpec};
use crate::observe::{self, ObserveConfig, ObserveError, ObservedStatus};
use crate::provider::{InstanceContext, Provider, ProviderError, ResourceDecl, ResourceProblem};
use crate::result::CommandResult;
use crate::run_slot::{RunSlot, SyncRecord};
use kinfra_core::event::ExitInfo;
use kinfra_core::resource::{
    BoxFuture, Connection, Observed, OutputLine, Resource, ResourceError, Run, SyncFacts,
};
use kinfra_core::state::Health;
use kinfra_core::status::LastSync;
use serde_json::{Map, Value, json};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// What a closure's error is: any error (`?` converts into it).
pub type SimpleError = Box<dyn std::error::Error + Send + Sync>;

/// What a closure returns.
pub type SimpleResult<T> = Result<T, SimpleError>;

/// The status period when the resource sets no `interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// A closure given the resource's config table.
type Hook<T> = Arc<dyn Fn(Map<String, Value>) -> BoxFuture<'static, SimpleResult<T>> + Send + Sync>;

fn hook<T, F, Fut>(f: F) -> Hook<T>
where
    F: Fn(Map<String, Value>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = SimpleResult<T>> + Send + 'static,
{
    Arc::new(move |config| Box::pin(f(config)))
}

/// What a status closure says of its resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// It runs.
    Running,
    /// It is coming up.
    Starting,
    /// It exists and is stopped.
    Stopped,
    /// It failed.
    Failed,
    /// It does not exist.
    Absent,
}

impl State {
    /// The state's name, e.g. `running` (the resource's `provider_state`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Starting => "starting",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
            Self::Absent => "absent",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [
            Self::Running,
            Self::Starting,
            Self::Stopped,
            Self::Failed,
            Self::Absent,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    fn observed(self) -> Observed {
        match self {
            Self::Running | Self::Starting => Observed::Running,
            Self::Stopped => Observed::Idle,
            Self::Absent => Observed::Absent,
            Self::Failed => Observed::Exited(ExitInfo {
                code: Some(1),
                signal: None,
            }),
        }
    }
}

/// The three closures, shared by the provider and its resources.
#[derive(Clone)]
struct Hooks {
    start: Hook<()>,
    stop: Hook<()>,
    status: Hook<State>,
}

/// A provider made of closures; see the module docs. Without `on_start`/`on_stop` those do
/// nothing; without `on_status` the resource is taken as running. Resources accept any keys.
pub struct SimpleProvider {
    metadata: ProviderMetadata,
    commands: Vec<CommandSpec>,
    hooks: Hooks,
}

impl SimpleProvider {
    /// A provider with id `id` (`[providers.X] provider = "<id>"`) and a name for people.
    pub fn new(id: &str, display_name: &str) -> Self {
        let command = |id: &str, name: &str, description: &str| {
            CommandSpec::new(id, name, description).in_category("lifecycle")
        };
        Self {
            metadata: ProviderMetadata {
                id: id.into(),
                name: id.into(),
                display_name: display_name.into(),
                description: String::new(),
                version: "0.0.0".into(),
                category: Category::Custom,
                capabilities: vec![Capability::Monitor],
                resource_types: vec![ResourceTypeSpec {
                    name: id.into(),
                    description: display_name.into(),
                    config: Vec::new(),
                }],
                auth_methods: vec![AuthMethod::None],
            },
            commands: vec![
                command("start", "Start", "Calls the provider's start."),
                command("stop", "Stop", "Calls the provider's stop."),
                command(
                    "status",
                    "Status",
                    "Reports the state the provider's status says.",
                ),
            ],
            hooks: Hooks {
                start: hook(|_| async { Ok(()) }),
                stop: hook(|_| async { Ok(()) }),
                status: hook(|_| async { Ok(State::Running) }),
            },
        }
    }

    /// One or two sentences on what it manages (`kinfra providers show`).
    pub fn description(mut self, text: &str) -> Self {
        self.metadata.description = text.into();
        self
    }

    /// Brings a resource up, given its config table.
    pub fn on_start<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Map<String, Value>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = SimpleResult<()>> + Send + 'static,
    {
        self.hooks.start = hook(f);
        self
    }

    /// Brings a resource down, given its config table.
    pub fn on_stop<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Map<String, Value>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = SimpleResult<()>> + Send + 'static,
    {
        self.hooks.stop = hook(f);
        self
    }

    /// Says what a resource is doing, given its config table.
    pub fn on_status<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Map<String, Value>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = SimpleResult<State>> + Send + 'static,
    {
        self.hooks.status = hook(f);
        self
    }

    /// The provider, ready for `RuntimeOptions::providers` or a registry.
    pub fn build(self) -> Arc<dyn Provider> {
        Arc::new(self)
    }
}

impl Provider for SimpleProvider {
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
        Box::pin(async move { interval(decl).err().into_iter().collect() })
    }

    fn resource(
        &self,
        _instance: &InstanceContext,
        decl: &ResourceDecl,
    ) -> Result<Box<dyn Resource>, ProviderError> {
        let interval = interval(decl).map_err(|problem| ProviderError::InvalidResource {
            resource: decl.name.clone(),
            problems: vec![problem],
        })?;
        Ok(Box::new(SimpleResource {
            kind_id: self.metadata.id.clone(),
            name: decl.name.clone(),
            config: decl.config.clone(),
            hooks: self.hooks.clone(),
            interval,
            live: RunSlot::default(),
            sync: SyncRecord::default(),
        }))
    }

    fn execute<'a>(
        &'a self,
        _instance: &'a InstanceContext,
        resource: &'a ResourceDecl,
        command: &'a CommandSpec,
        _params: ValidatedParams,
        dry_run: bool,
    ) -> BoxFuture<'a, Result<CommandResult, ProviderError>> {
        Box::pin(async move {
            if dry_run {
                return Err(ProviderError::NoDryRun(command.id.clone()));
            }
            let failed = |e: SimpleError| ProviderError::Command {
                command: command.id.clone(),
                reason: e.to_string(),
            };
            let config = resource.config.clone();
            let data = match command.id.as_str() {
                "start" => (self.hooks.start)(config).await.map(|()| Value::Null),
                "stop" => (self.hooks.stop)(config).await.map(|()| Value::Null),
                "status" => (self.hooks.status)(config)
                    .await
                    .map(|s| json!({ "state": s.as_str() })),
                other => {
                    return Err(ProviderError::UnknownCommand {
                        provider: self.metadata.id.clone(),
                        command: other.into(),
                    });
                }
            };
            Ok(CommandResult::ok(data.map_err(failed)?))
        })
    }
}

/// The resource's `interval` (kinfra writes it into every provider resource's table).
fn interval(decl: &ResourceDecl) -> Result<Duration, ResourceProblem> {
    match decl.config.get("interval") {
        None => Ok(DEFAULT_INTERVAL),
        Some(Value::String(text)) => match humantime::parse_duration(text) {
            Ok(d) if !d.is_zero() => Ok(d),
            _ => Err(ResourceProblem {
                key: Some("interval".into()),
                message: format!("expected a duration above 0 such as \"30s\", not `{text}`"),
            }),
        },
        Some(_) => Err(ResourceProblem {
            key: Some("interval".into()),
            message: "expected a duration such as \"30s\"".into(),
        }),
    }
}

/// What a run holds for its life: its output sender and the observe loop's stop signal.
type Held = (mpsc::Sender<OutputLine>, oneshot::Sender<()>);

/// Follows a run's observe loop: records each answer and ends the run when status says failed,
/// or stopped/absent after having said running. Ends with the loop.
async fn watch_run(
    mut observed: watch::Receiver<ObservedStatus>,
    live: RunSlot<Held>,
    sync: SyncRecord,
    generation: u64,
    mut seen_running: bool,
) {
    while observed.changed().await.is_ok() {
        let status = observed.borrow_and_update().clone();
        let Some(last) = status.last_sync else {
            continue;
        };
        let ok = last.ok;
        sync.set(
            LastSync {
                at: last.at,
                ok: last.ok,
                error: last.error,
            },
            status.provider_state.clone(),
        );
        if !ok {
            continue;
        }
        let code = match status.provider_state.as_deref().and_then(State::parse) {
            Some(State::Running) => {
                seen_running = true;
                continue;
            }
            Some(State::Stopped | State::Absent) if seen_running => 0,
            Some(State::Failed) => 1,
            _ => continue,
        };
        live.end(
            Some(generation),
            ExitInfo {
                code: Some(code),
                signal: None,
            },
        );
        return;
    }
}

/// A resource run by a [`SimpleProvider`]'s closures.
struct SimpleResource {
    kind_id: String,
    name: String,
    config: Map<String, Value>,
    hooks: Hooks,
    interval: Duration,
    live: RunSlot<Held>,
    sync: SyncRecord,
}

impl SimpleResource {
    async fn read_status(&self) -> Result<State, ResourceError> {
        let answer = (self.hooks.status)(self.config.clone())
            .await
            .map_err(|e| e.to_string());
        match &answer {
            Ok(state) => self.sync.ok(Some(state.as_str().into())),
            Err(error) => self.sync.failed(error.clone()),
        }
        answer.map_err(|reason| ResourceError::op(format!("{} status", self.kind_id), reason))
    }
}

impl Drop for SimpleResource {
    /// A dropped resource stops observing (the run is lost track of, not ended).
    fn drop(&mut self) {
        self.live.forget();
    }
}

impl Resource for SimpleResource {
    fn kind(&self) -> &'static str {
        "provider"
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn start(&self) -> BoxFuture<'_, Result<Run, ResourceError>> {
        Box::pin(async move {
            let mut adopted = self.live.is_live();
            if !adopted {
                adopted = matches!(self.read_status().await, Ok(State::Running));
                if !adopted {
                    (self.hooks.start)(self.config.clone())
                        .await
                        .map_err(|e| ResourceError::op(format!("{} start", self.kind_id), e))?;
                }
            }
            let (out_tx, out_rx) = mpsc::channel(1);
            let (exit_tx, exit_rx) = oneshot::channel();
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let status = self.hooks.status.clone();
            let config = self.config.clone();
            let (observed, _loop) = observe::spawn(
                ObserveConfig::every(self.interval),
                move || {
                    let answer = status(config.clone());
                    async move {
                        answer
                            .await
                            .map(|s| s.as_str().to_owned())
                            .map_err(|e| ObserveError::Failed(e.to_string()))
                    }
                },
                async move {
                    let _ = stop_rx.await;
                },
            );
            let generation = self.live.begin(|_| (exit_tx, (out_tx, stop_tx)));
            tokio::spawn(watch_run(
                observed,
                self.live.clone(),
                self.sync.clone(),
                generation,
                adopted,
            ));
            Ok(Run {
                id: self.name.clone(),
                pid: None,
                adopted,
                output: out_rx,
                exit: exit_rx,
            })
        })
    }

    fn stop(&self, _grace: Duration) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            (self.hooks.stop)(self.config.clone())
                .await
                .map_err(|e| ResourceError::op(format!("{} stop", self.kind_id), e))?;
            self.live.end(
                None,
                ExitInfo {
                    code: Some(0),
                    signal: None,
                },
            );
            Ok(())
        })
    }

    fn status(&self) -> BoxFuture<'_, Result<Observed, ResourceError>> {
        Box::pin(async move { Ok(self.read_status().await?.observed()) })
    }

    fn health(&self) -> BoxFuture<'_, Result<Health, ResourceError>> {
        Box::pin(async { Ok(Health::Unknown) })
    }

    fn connection(&self) -> Connection {
        Connection::default()
    }

    fn logs(&self, _tail: usize) -> BoxFuture<'_, Result<Vec<OutputLine>, ResourceError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn remove(&self, _volumes: bool) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async { Ok(()) })
    }

    fn sync(&self) -> Option<SyncFacts> {
        self.sync.facts()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU8, Ordering::SeqCst};

    fn decl() -> ResourceDecl {
        let Value::Object(config) = json!({ "provider": "q", "interval": "20ms" }) else {
            panic!("not an object");
        };
        ResourceDecl {
            name: "jobs".into(),
            config,
        }
    }

    /// 0 stopped, 1 running, 2 failed: what the status closure says.
    fn provider(state: Arc<AtomicU8>) -> Arc<dyn Provider> {
        let (on_start, on_status) = (state.clone(), state);
        SimpleProvider::new("my-queue", "My queue")
            .on_start(move |_| {
                let state = on_start.clone();
                async move {
                    state.store(1, SeqCst);
                    Ok(())
                }
            })
            .on_status(move |_| {
                let state = on_status.load(SeqCst);
                async move {
                    Ok([State::Stopped, State::Running, State::Failed][usize::from(state)])
                }
            })
            .build()
    }

    #[tokio::test]
    async fn a_run_ends_when_status_says_failed_or_stopped() {
        let state = Arc::new(AtomicU8::new(0));
        let resource = provider(state.clone())
            .resource(&InstanceContext::default(), &decl())
            .expect("resource");
        let run = resource.start().await.expect("start");
        assert!(!run.adopted);
        assert_eq!(state.load(SeqCst), 1, "start closure called");
        state.store(2, SeqCst);
        let exit = tokio::time::timeout(Duration::from_secs(20), run.exit)
            .await
            .expect("run ends in time")
            .expect("exit known");
        assert_eq!(exit.code, Some(1));
        let facts = resource.sync().expect("sync facts");
        assert_eq!(facts.provider_state.as_deref(), Some("failed"));

        // Already running: adopted, start not called again; stop ends the run with 0.
        state.store(1, SeqCst);
        let run = resource.start().await.expect("start");
        assert!(run.adopted);
        resource.stop(Duration::from_secs(1)).await.expect("stop");
        let exit = tokio::time::timeout(Duration::from_secs(20), run.exit)
            .await
            .expect("run ends in time")
            .expect("exit known");
        assert_eq!(exit.code, Some(0));
    }
}
