//! The built-in `command` provider with real commands: `sh` scripts whose state is a file in
//! a temp dir, observed through the `Resource` trait and the provider's typed commands.

use kinfra_core::procstat;
use kinfra_core::resource::{Observed, OutputLine, Resource, Run};
use kinfra_core::state::Health;
use kinfra_provider::builtin::command;
use kinfra_provider::command::ValidatedParams;
use kinfra_provider::provider::{InstanceContext, Provider, ProviderError, ResourceDecl};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Bound that only catches a hang.
const HANG: Duration = Duration::from_secs(30);

fn decl(config: Value) -> ResourceDecl {
    let Value::Object(config) = config else {
        panic!("config is not a table");
    };
    ResourceDecl {
        name: "tool".into(),
        config,
    }
}

fn resource(config: Value) -> Box<dyn Resource> {
    match command::provider().resource(&InstanceContext::default(), &decl(config)) {
        Ok(r) => r,
        Err(e) => panic!("resource: {e}"),
    }
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

async fn status(r: &dyn Resource) -> Observed {
    match tokio::time::timeout(HANG, r.status()).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => panic!("status failed: {e}"),
        Err(_) => panic!("status hung"),
    }
}

fn drain(run: &mut Run) -> Vec<OutputLine> {
    let mut lines = Vec::new();
    while let Ok(line) = run.output.try_recv() {
        lines.push(line);
    }
    lines
}

async fn execute(
    provider: &Arc<dyn Provider>,
    config: Value,
    id: &str,
    dry_run: bool,
) -> Result<kinfra_provider::result::CommandResult, ProviderError> {
    let spec = provider.command(id).expect("command offered").clone();
    provider
        .execute(
            &InstanceContext::default(),
            &decl(config),
            &spec,
            ValidatedParams::default(),
            dry_run,
        )
        .await
}

/// A process that is gone (or only waits to be reaped).
fn gone(pid: i32) -> bool {
    procstat::stat(pid).is_none_or(|s| s.is_zombie())
}

async fn read_pid(file: &str) -> i32 {
    let mut waited = Duration::ZERO;
    loop {
        if let Ok(text) = std::fs::read_to_string(file)
            && let Ok(pid) = text.trim().parse()
        {
            return pid;
        }
        assert!(waited < HANG, "{file} was never written");
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += Duration::from_millis(20);
    }
}

#[tokio::test]
async fn metadata_and_commands() {
    let provider = command::provider();
    assert_eq!(provider.metadata().id, "command");
    let keys: Vec<&str> = provider.metadata().resource_types[0]
        .config
        .iter()
        .map(|k| k.name.as_str())
        .collect();
    for key in [
        "start",
        "stop",
        "status",
        "health",
        "status_running",
        "status_map",
        "env",
        "cwd",
        "timeout",
    ] {
        assert!(keys.contains(&key), "{key} not declared");
    }
    for id in ["start", "stop", "status"] {
        assert!(provider.command(id).is_some_and(|c| c.dry_run), "{id}");
    }
    let problems = provider
        .validate_resource(
            &InstanceContext::default(),
            &decl(json!({"start": "true", "colour": 1})),
        )
        .await;
    let keys: Vec<Option<&str>> = problems.iter().map(|p| p.key.as_deref()).collect();
    assert_eq!(keys, [Some("colour"), Some("status")], "{problems:?}");
}

#[tokio::test]
async fn state_from_the_exit_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = path(dir.path(), "up");
    let r = resource(json!({ "status": ["test", "-f", up] }));
    assert_eq!(status(&*r).await, Observed::Idle);
    std::fs::write(&up, "").expect("write");
    assert_eq!(status(&*r).await, Observed::Running);
}

#[tokio::test]
async fn state_from_the_output() {
    let map = json!({ "ACTIVE": "running", "PAUSED": "sleeping", "BROKEN": "failed" });
    let active = resource(json!({ "status": "echo ACTIVE", "status_map": map }));
    assert_eq!(status(&*active).await, Observed::Running);
    let paused = json!({ "status": "echo PAUSED", "status_map": map });
    assert_eq!(status(&*resource(paused.clone())).await, Observed::Idle);
    let provider = command::provider();
    let result = execute(&provider, paused, "status", false)
        .await
        .expect("status command");
    assert_eq!(result.data["state"], "sleeping");
    let broken = resource(json!({ "status": "echo BROKEN; exit 4", "status_map": map }));
    assert!(matches!(status(&*broken).await, Observed::Exited(e) if e.code == Some(4)));
    // A `status_running` pattern: a match is running, none is stopped.
    let pattern = |out: &str| {
        resource(json!({ "status": format!("echo {out}"), "status_running": "^replicas=[1-9]" }))
    };
    assert_eq!(status(&*pattern("replicas=2")).await, Observed::Running);
    assert_eq!(status(&*pattern("replicas=0")).await, Observed::Idle);
}

#[tokio::test]
async fn start_runs_until_stop_and_the_exit_fires() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = path(dir.path(), "state");
    let r = resource(json!({
        "start": format!("echo starting api; echo running > {state}"),
        "stop": format!("echo stopped > {state}"),
        "status": format!("grep -q running {state}"),
        "interval": "100ms",
        "env": { "API_TOKEN": "s3cr3t-t0ken" },
    }));
    let mut run = r.start().await.expect("start");
    assert!(!run.adopted);
    assert_eq!(status(&*r).await, Observed::Running);
    r.stop(Duration::from_secs(1)).await.expect("stop");
    assert_eq!(status(&*r).await, Observed::Idle);
    let exit = tokio::time::timeout(HANG, &mut run.exit)
        .await
        .expect("exit fired")
        .expect("exit sent");
    assert_eq!(exit.code, Some(0));
    let lines: Vec<String> = drain(&mut run).into_iter().map(|l| l.text).collect();
    assert!(
        lines.iter().any(|l| l == "[start] starting api"),
        "{lines:?}"
    );
    let logs = r.logs(100).await.expect("logs");
    assert!(logs.iter().any(|l| l.text == "[start] starting api"));
}

#[tokio::test]
async fn the_run_ends_when_status_says_stopped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = path(dir.path(), "state");
    let r = resource(json!({
        "start": format!("echo ACTIVE > {state}"),
        "status": format!("cat {state}"),
        "status_map": { "ACTIVE": "running", "GONE": "stopped" },
        "interval": "100ms",
    }));
    let mut run = r.start().await.expect("start");
    // Let the watcher see it running, then stop it behind kinfra's back.
    let mut seen = false;
    for _ in 0..300 {
        if drain(&mut run)
            .iter()
            .any(|l| l.text.starts_with("[status] ACTIVE"))
        {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen, "the status command never ran in the run");
    std::fs::write(&state, "GONE\n").expect("write");
    let exit = tokio::time::timeout(HANG, &mut run.exit)
        .await
        .expect("exit fired")
        .expect("exit sent");
    assert_eq!(exit.code, Some(0));
    let lines: Vec<String> = drain(&mut run).into_iter().map(|l| l.text).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("says stopped") && l.contains("GONE")),
        "{lines:?}"
    );
}

#[tokio::test]
async fn secret_env_values_never_reach_the_output() {
    let r = resource(json!({
        "start": "echo token=$API_TOKEN",
        "status": "false",
        "env": { "API_TOKEN": "s3cr3t-t0ken" },
    }));
    let mut run = r.start().await.expect("start");
    let lines: Vec<String> = drain(&mut run).into_iter().map(|l| l.text).collect();
    assert!(lines.iter().any(|l| l == "[start] token=****"), "{lines:?}");
    assert!(!lines.iter().any(|l| l.contains("s3cr3t")));
}

#[tokio::test]
async fn a_failing_start_names_its_stderr() {
    let r = resource(json!({
        "start": "echo 'trying'; echo 'error: no cluster at 10.0.0.1' >&2; exit 3",
        "status": "false",
    }));
    let error = r.start().await.expect_err("start must fail").to_string();
    assert!(error.contains("no cluster at 10.0.0.1"), "{error}");
    assert!(error.contains("exit code 3"), "{error}");
}

#[tokio::test]
async fn a_hanging_status_is_killed_at_its_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pid_file, bg_file) = (path(dir.path(), "pid"), path(dir.path(), "bg"));
    let r = resource(json!({
        "status": format!("sleep 1000 & echo $! > {bg_file}; echo $$ > {pid_file}; wait"),
        "timeout": "500ms",
    }));
    let answer = tokio::time::timeout(HANG, r.status())
        .await
        .expect("the status call itself must not hang");
    let error = answer
        .expect_err("a hanging status is an error")
        .to_string();
    assert!(error.contains("timed out after 500ms"), "{error}");
    let (shell, sleeper) = (read_pid(&pid_file).await, read_pid(&bg_file).await);
    assert!(gone(shell), "the status shell {shell} still runs");
    // The background sleep was in the command's process group: killed with it.
    let mut waited = Duration::ZERO;
    while !gone(sleeper) && waited < HANG {
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += Duration::from_millis(20);
    }
    assert!(
        gone(sleeper),
        "the status command's child {sleeper} still runs"
    );
}

#[tokio::test]
async fn health_from_the_health_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let healthy = path(dir.path(), "healthy");
    let r = resource(json!({ "status": "true", "health": ["test", "-f", healthy] }));
    assert!(r.has_own_health());
    assert_eq!(r.health().await.expect("health"), Health::Unhealthy);
    std::fs::write(&healthy, "").expect("write");
    assert_eq!(r.health().await.expect("health"), Health::Healthy);
    let without = resource(json!({ "status": "true" }));
    assert!(!without.has_own_health());
    assert_eq!(without.health().await.expect("health"), Health::Unknown);
}

#[tokio::test]
async fn a_dry_run_of_start_sends_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = path(dir.path(), "state");
    let config = json!({
        "start": format!("echo running > {state}"),
        "status": format!("test -f {state}"),
        "env": { "API_TOKEN": "s3cr3t-t0ken", "REGION": "eu" },
    });
    let provider = command::provider();
    let result = execute(&provider, config.clone(), "start", true)
        .await
        .expect("dry-run");
    assert!(result.dry_run && result.success);
    assert_eq!(result.requests.len(), 1);
    assert_eq!(result.requests[0].method, "EXEC");
    assert_eq!(result.requests[0].url, format!("echo running > {state}"));
    let shown = serde_json::to_string(&result).expect("json");
    assert!(!shown.contains("s3cr3t"), "{shown}");
    assert!(shown.contains("REGION"), "{shown}");
    assert!(!Path::new(&state).exists(), "the dry-run ran the command");
    // The same command for real does run it.
    let ran = execute(&provider, config, "start", false)
        .await
        .expect("start");
    assert!(ran.success && !ran.dry_run);
    assert!(Path::new(&state).exists());
}

#[tokio::test]
async fn a_dropped_resource_stops_watching_its_run() {
    let r = resource(json!({ "status": "true", "interval": "100ms" }));
    let mut run = r.start().await.expect("start");
    assert!(run.adopted, "status said running before start: adopted");
    drop(r);
    let exit = tokio::time::timeout(HANG, &mut run.exit)
        .await
        .expect("the exit channel closes");
    assert!(exit.is_err(), "lost track of, not ended: {exit:?}");
    let closed =
        tokio::time::timeout(HANG, async { while run.output.recv().await.is_some() {} }).await;
    assert!(closed.is_ok(), "the output channel closes");
}
