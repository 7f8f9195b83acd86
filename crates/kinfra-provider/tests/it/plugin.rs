//! The plugin host against a real plugin written in Python (tests/plugins/kinfra-provider-pyfake):
//! discovery from a plugin dir, describe, validate, start/status/stop, a dry-run with the token
//! masked, and the misbehaviours: a crash, garbage on stdout, a wrong shape, a hang. A plugin
//! resource's observe loop: `last_sync` and `provider_state`, a run that ends when the plugin
//! says the thing exited, a failed poll that keeps the child (a failed sync) and one that
//! kills it (the run ends, naming the fault).

use kinfra_core::Secret;
use kinfra_core::resource::{Observed, Resource, SyncFacts};
use kinfra_core::state::Health;
use kinfra_provider::command::validate;
use kinfra_provider::discovery::{SkipReason, discover};
use kinfra_provider::plugin::{PluginError, PluginOptions, PluginProvider};
use kinfra_provider::provider::{InstanceContext, Provider, ProviderError, ResourceDecl};
use serde_json::{Map, Value, json};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const TOKEN: &str = "tok-s3cret-4711";

fn pyfake() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/plugins/kinfra-provider-pyfake")
}

fn require_python() {
    let ok = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok, "python3 is missing: apt-get install python3");
}

fn install(dir: &Path, name: &str, source: &Path, mode: u32) {
    let to = dir.join(name);
    std::fs::copy(source, &to).expect("copy the plugin");
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn options(timeout: Duration) -> PluginOptions {
    PluginOptions {
        timeout,
        shutdown_grace: Duration::from_millis(500),
    }
}

/// The pyfake provider, found by discovery in a fresh plugin dir.
async fn provider(timeout: Duration) -> (tempfile::TempDir, PluginProvider) {
    require_python();
    let dir = tempfile::tempdir().expect("tempdir");
    install(dir.path(), "kinfra-provider-pyfake", &pyfake(), 0o755);
    let report = discover(
        &[dir.path().to_path_buf()],
        options(Duration::from_secs(20)),
    )
    .await;
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    let found = report.found.into_iter().next().expect("pyfake found");
    let provider = PluginProvider::new(found.description, &found.path, options(timeout));
    (dir, provider)
}

fn instance() -> InstanceContext {
    InstanceContext {
        instance: "fake-main".into(),
        token: Some(Secret::new(TOKEN)),
        base_url: Some("http://127.0.0.1:9/api".into()),
        config: Map::new(),
    }
}

fn decl(name: &str, config: Value) -> ResourceDecl {
    ResourceDecl {
        name: name.into(),
        config: match config {
            Value::Object(m) => m,
            _ => Map::new(),
        },
    }
}

async fn run_command(
    provider: &PluginProvider,
    command: &str,
    params: Value,
    dry_run: bool,
) -> Result<kinfra_provider::result::CommandResult, ProviderError> {
    let spec = provider.command(command).expect("command exists").clone();
    let params = match params {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let params = validate(&spec, &params).expect("valid params");
    let resource = decl("db", json!({"project_id": "p-1"}));
    provider
        .execute(&instance(), &resource, &spec, params, dry_run)
        .await
}

/// True once `/proc/<pid>` is gone (the child was killed and reaped), within 10 s.
async fn gone(pid: u32) -> bool {
    for _ in 0..200 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// True once no process is left in group `pgid`, within 10 s.
async fn group_gone(pgid: i32) -> bool {
    for _ in 0..200 {
        if !kinfra_core::procstat::all().iter().any(|p| p.pgid == pgid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Polls `check` every 20 ms until it gives something; panics naming `what` after `limit`.
async fn until<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {what} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The resource's sync facts once its last sync says `ok`.
fn sync_with(resource: &dyn Resource, ok: bool) -> Option<SyncFacts> {
    resource
        .sync()
        .filter(|f| f.last_sync.as_ref().is_some_and(|s| s.ok == ok))
}

#[tokio::test]
async fn discovery_reports_what_it_found_and_why_not_the_rest() {
    require_python();
    let first = tempfile::tempdir().expect("tempdir");
    let second = tempfile::tempdir().expect("tempdir");
    let scratch = tempfile::tempdir().expect("tempdir");
    let noisy_pid = scratch.path().join("noisy.pid");
    install(first.path(), "kinfra-provider-pyfake", &pyfake(), 0o755);
    install(first.path(), "kinfra-provider-noexec", &pyfake(), 0o644);
    install(first.path(), "kinfra-provider-other", &pyfake(), 0o755);
    std::fs::write(
        first.path().join("kinfra-provider-noisy"),
        format!(
            "#!/bin/sh\necho $$ > {}\necho 'hello, I am not JSON-RPC'\nsleep 60\n",
            noisy_pid.display()
        ),
    )
    .expect("write");
    std::fs::set_permissions(
        first.path().join("kinfra-provider-noisy"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    std::fs::create_dir(first.path().join("kinfra-provider-adir")).expect("mkdir");
    std::fs::write(first.path().join("unrelated"), "x").expect("write");
    install(second.path(), "kinfra-provider-pyfake", &pyfake(), 0o755);
    let dirs = [
        first.path().to_path_buf(),
        first.path().join("missing"),
        second.path().to_path_buf(),
    ];
    let report = discover(&dirs, options(Duration::from_secs(20))).await;

    let found: Vec<&str> = report.found.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(found, ["pyfake"]);
    let pyfake = &report.found[0];
    assert_eq!(pyfake.path, first.path().join("kinfra-provider-pyfake"));
    assert_eq!(pyfake.description.metadata.display_name, "Python fake");
    assert!(pyfake.description.commands.iter().any(|c| c.id == "scale"));

    let mut skipped: Vec<(String, String)> = report
        .skipped
        .iter()
        .map(|s| (s.id.clone(), s.reason.to_string()))
        .collect();
    skipped.sort();
    assert_eq!(skipped.len(), 5, "{skipped:?}");
    assert_eq!(skipped[0], ("adir".into(), "not a regular file".into()));
    assert_eq!(skipped[1], ("noexec".into(), "not executable".into()));
    assert!(
        skipped[2].0 == "noisy"
            && skipped[2].1.contains("plugin `noisy`")
            && skipped[2].1.contains("garbage")
            && skipped[2].1.contains("hello, I am not JSON-RPC"),
        "{skipped:?}"
    );
    assert_eq!(
        skipped[3],
        (
            "other".into(),
            "describes itself as `pyfake`, not as its name says".into()
        )
    );
    // The noisy plugin was killed with what it started (its `sleep`).
    let pgid: i32 = std::fs::read_to_string(&noisy_pid)
        .expect("the noisy plugin ran")
        .trim()
        .parse()
        .expect("a pid");
    assert!(
        group_gone(pgid).await,
        "processes of group {pgid} left behind"
    );
    assert_eq!(skipped[4].0, "pyfake");
    assert!(
        matches!(&report.skipped.iter().find(|s| s.id == "pyfake").map(|s| &s.reason),
            Some(SkipReason::Duplicate { first: f }) if *f == first.path().join("kinfra-provider-pyfake")),
        "{skipped:?}"
    );
}

#[tokio::test]
async fn start_status_stop_and_a_masked_dry_run() {
    let (_dir, provider) = provider(Duration::from_secs(20)).await;
    assert_eq!(provider.metadata().id, "pyfake");
    let ctx = instance();

    let problems = provider
        .validate_resource(&ctx, &decl("db", json!({"colour": "red"})))
        .await;
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(
        text,
        ["`project_id`: missing (required)", "`colour`: unknown key"]
    );
    // kinfra's `interval` is kinfra's to judge; the plugin takes it.
    let problems = provider
        .validate_resource(
            &ctx,
            &decl("db", json!({"project_id": "p-1", "interval": "soon"})),
        )
        .await;
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(
        text,
        ["`interval`: expected a duration above 0 such as \"30s\", not `soon`"]
    );

    let db = decl("db", json!({"project_id": "p-1"}));
    let resource = provider.resource(&ctx, &db).expect("resource");
    assert_eq!(resource.status().await, Ok(Observed::Absent));
    let run = resource.start().await.expect("start");
    assert_eq!(run.id, "fake-db");
    assert!(!run.adopted);
    assert_eq!(resource.status().await, Ok(Observed::Running));
    assert_eq!(resource.health().await, Ok(Health::Healthy));
    let conn = resource.connection();
    assert_eq!(conn.host, "fake.example");
    assert_eq!(
        conn.field("url").as_deref(),
        Some("fake://u:tok-s3cret-4711@fake.example/db")
    );
    assert!(!format!("{conn:?}").contains(TOKEN));
    resource.stop(Duration::from_secs(1)).await.expect("stop");
    let exit = tokio::time::timeout(Duration::from_secs(10), run.exit)
        .await
        .expect("the run ended")
        .expect("with an exit");
    assert_eq!(exit.code, Some(0));
    assert_eq!(resource.status().await, Ok(Observed::Idle));
    let logs = resource.logs(10).await.expect("logs");
    let lines: Vec<&str> = logs.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(lines, ["started db", "stopped db"]);

    let planned = run_command(&provider, "scale", json!({"replicas": 3}), true)
        .await
        .expect("dry-run");
    assert!(planned.dry_run && planned.success);
    let shown = serde_json::to_string(&planned).expect("json");
    assert!(!shown.contains(TOKEN), "token in {shown}");
    let request = &planned.requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(
        request.url,
        "http://127.0.0.1:9/api/things/p-1/scale?token=****"
    );
    assert_eq!(
        request.headers,
        [
            ("Authorization".to_owned(), "****".to_owned()),
            ("Content-Type".to_owned(), "application/json".to_owned())
        ]
    );
    assert_eq!(request.body, Some(json!({"replicas": 3, "echo": "****"})));

    let done = run_command(&provider, "scale", json!({"replicas": 2}), false)
        .await
        .expect("execute");
    assert_eq!(done.data, json!({"replicas": 2}));
    assert_eq!(done.operation.as_deref(), Some("op-1"));
    assert!(!done.dry_run);

    let refused = run_command(&provider, "crash", json!({}), true).await;
    assert!(
        matches!(refused, Err(ProviderError::NoDryRun(ref c)) if c == "crash"),
        "{refused:?}"
    );
    provider.shutdown().await;
}

#[tokio::test]
async fn a_crash_names_the_plugin_ends_live_runs_and_the_next_call_starts_a_new_child() {
    let (_dir, provider) = provider(Duration::from_secs(20)).await;
    let ctx = instance();
    let resource = provider
        .resource(&ctx, &decl("db", json!({"project_id": "p-1"})))
        .expect("resource");
    let mut run = resource.start().await.expect("start");
    let first_pid = provider.process(&ctx).pid().await.expect("a child runs");
    assert_eq!(resource.exit_reason(), None);

    let err = run_command(&provider, "crash", json!({}), false).await;
    let Err(ProviderError::Plugin(PluginError::Crashed {
        plugin,
        method,
        status,
    })) = &err
    else {
        panic!("not a crash: {err:?}");
    };
    assert_eq!((plugin.as_str(), method.as_str()), ("pyfake", "execute"));
    assert_eq!(status, "exit code 3");
    assert_eq!(
        err.as_ref().map_err(|e| e.to_string()).err().as_deref(),
        Some("plugin `pyfake` crashed during `execute`: exit code 3")
    );
    // The run the crashed child held ends with its exit.
    let exit = tokio::time::timeout(Duration::from_secs(10), run.exit)
        .await
        .expect("the run ended")
        .expect("with an exit");
    assert_eq!(exit.code, Some(3));
    // It says why: a line in its output and the reason the supervisor shows.
    let line = run.output.try_recv().expect("a line about the crash");
    assert_eq!(
        line.text,
        "plugin `pyfake` crashed (exit code 3); the run ends with it"
    );
    assert_eq!(
        resource.exit_reason().as_deref(),
        Some("plugin `pyfake` crashed (exit code 3)")
    );

    // The next call starts a new child (which knows nothing of the old one's resources).
    assert_eq!(resource.status().await, Ok(Observed::Absent));
    let second_pid = provider.process(&ctx).pid().await.expect("a child runs");
    assert_ne!(first_pid, second_pid);
    assert!(
        gone(first_pid).await,
        "crashed child {first_pid} not reaped"
    );
    // A new start (the supervisor's restart) runs in the new child and clears the reason.
    let restarted = resource.start().await.expect("a start after the crash");
    assert!(!restarted.adopted);
    assert_eq!(resource.exit_reason(), None);
    assert_eq!(provider.process(&ctx).pid().await, Some(second_pid));
    assert_eq!(resource.status().await, Ok(Observed::Running));
    provider.shutdown().await;
}

#[tokio::test]
async fn garbage_on_stdout_is_an_error_and_the_child_is_killed() {
    let (_dir, provider) = provider(Duration::from_secs(20)).await;
    let ctx = instance();
    let resource = provider
        .resource(&ctx, &decl("db", json!({"project_id": "p-1"})))
        .expect("resource");
    assert_eq!(resource.status().await, Ok(Observed::Absent));
    let pid = provider.process(&ctx).pid().await.expect("a child runs");
    let err = run_command(&provider, "garbage", json!({}), false).await;
    assert_eq!(
        err.map_err(|e| e.to_string()).err().as_deref(),
        Some(
            "plugin `pyfake` printed garbage on stdout during `execute`: \"this is not json\"; killed it"
        )
    );
    assert!(gone(pid).await, "child {pid} still there");
    assert_eq!(resource.status().await, Ok(Observed::Absent));
    provider.shutdown().await;
}

#[tokio::test]
async fn a_json_rpc_error_is_a_refusal_and_the_child_stays() {
    let (_dir, provider) = provider(Duration::from_secs(20)).await;
    let process = provider.process(&instance());
    let err = process.call("frobnicate", json!({})).await;
    assert_eq!(
        err.map_err(|e| e.to_string()).err().as_deref(),
        Some("plugin `pyfake` refused `frobnicate`: no method frobnicate (code -32601)")
    );
    let pid = process.pid().await;
    assert!(pid.is_some());
    let description = process.call("describe", json!({})).await;
    assert!(description.is_ok(), "{description:?}");
    assert_eq!(process.pid().await, pid, "the child was replaced");
    provider.shutdown().await;
}

#[tokio::test]
async fn a_wrong_shape_is_an_error() {
    let (_dir, provider) = provider(Duration::from_secs(20)).await;
    let err = run_command(&provider, "badshape", json!({}), false).await;
    let text = err.map_err(|e| e.to_string()).err().unwrap_or_default();
    assert!(
        text.starts_with("plugin `pyfake` answered `execute` with the wrong shape: invalid type: string \"just a string\""),
        "{text}"
    );
    provider.shutdown().await;
}

#[tokio::test]
async fn a_hang_times_out_and_the_child_is_killed() {
    let (_dir, provider) = provider(Duration::from_millis(700)).await;
    let ctx = instance();
    let resource = provider
        .resource(&ctx, &decl("db", json!({"project_id": "p-1"})))
        .expect("resource");
    assert_eq!(resource.status().await, Ok(Observed::Absent));
    let pid = provider.process(&ctx).pid().await.expect("a child runs");
    let err = run_command(&provider, "hang", json!({}), false).await;
    assert!(
        matches!(
            &err,
            Err(ProviderError::Plugin(PluginError::Timeout { plugin, method, .. }))
                if plugin == "pyfake" && method == "execute"
        ),
        "{err:?}"
    );
    assert_eq!(
        err.map_err(|e| e.to_string()).err().as_deref(),
        Some("plugin `pyfake` did not answer `execute` within 700ms; killed it")
    );
    assert!(gone(pid).await, "hung child {pid} still there");
    provider.shutdown().await;
}

#[tokio::test]
async fn dropping_the_provider_stops_its_children() {
    let (_dir, provider) = provider(Duration::from_secs(20)).await;
    let ctx = instance();
    let resource = provider
        .resource(&ctx, &decl("db", json!({"project_id": "p-1"})))
        .expect("resource");
    resource.start().await.expect("start");
    let pid = provider.process(&ctx).pid().await.expect("a child runs");
    drop(resource);
    drop(provider);
    assert!(gone(pid).await, "child {pid} outlived its provider");
}

/// The observe loop polls `status` every `interval`: the sync facts carry the plugin's own word
/// for the state, and the run ends with the code the plugin reports when it says the thing
/// exited (nobody asked kinfra to stop it).
#[tokio::test]
async fn a_plugin_resource_observes_its_status_and_ends_when_the_plugin_says_exited() {
    let (_dir, provider) = provider(Duration::from_secs(20)).await;
    let ctx = instance();
    let config = json!({"project_id": "p-1", "interval": "100ms", "misbehave": "exit",
        "misbehave_after": 10});
    let resource = provider
        .resource(&ctx, &decl("db", config))
        .expect("resource");
    let run = resource.start().await.expect("start");
    let facts = until("good sync", Duration::from_secs(10), || {
        sync_with(resource.as_ref(), true)
    })
    .await;
    let last = facts.last_sync.clone().expect("a last sync");
    assert!(last.error.is_none() && !last.at.is_empty(), "{facts:?}");
    assert_eq!(facts.provider_state.as_deref(), Some("ACTIVE"), "{facts:?}");

    let exit = tokio::time::timeout(Duration::from_secs(10), run.exit)
        .await
        .expect("the run ended")
        .expect("with an exit");
    assert_eq!(exit.code, Some(4));
    let facts = resource.sync().expect("sync facts after the run");
    assert_eq!(facts.provider_state.as_deref(), Some("TERMINATED"));
    assert_eq!(resource.exit_reason(), None, "the plugin did not fail");
    provider.shutdown().await;
}

/// A poll the plugin answers with a JSON-RPC error or a result of the wrong shape keeps the
/// child: a failed sync naming the fault, not the end of the run.
#[tokio::test]
async fn a_failed_poll_that_keeps_the_child_is_a_failed_sync_and_the_run_goes_on() {
    for (how, says) in [
        (
            "error",
            "plugin `pyfake` refused `status`: the fake cloud is down (code -32000)",
        ),
        (
            "badshape",
            "plugin `pyfake` answered `status` with the wrong shape: unknown variant `sideways`",
        ),
    ] {
        let (_dir, provider) = provider(Duration::from_secs(20)).await;
        let ctx = instance();
        let config = json!({"project_id": "p-1", "interval": "100ms", "misbehave": how,
            "misbehave_after": 1});
        let resource = provider
            .resource(&ctx, &decl("db", config))
            .expect("resource");
        let mut run = resource.start().await.expect("start");
        let pid = provider.process(&ctx).pid().await.expect("a child runs");
        let facts = until("failed sync", Duration::from_secs(10), || {
            sync_with(resource.as_ref(), false)
        })
        .await;
        let error = facts
            .last_sync
            .and_then(|s| s.error)
            .expect("the failed sync's error");
        assert!(error.starts_with(says), "{how}: {error}");
        assert!(!error.contains("killed"), "{how}: {error}");
        assert_eq!(
            facts.provider_state.as_deref(),
            Some("ACTIVE"),
            "{how}: the last good word stays"
        );
        assert!(
            matches!(
                run.exit.try_recv(),
                Err(tokio::sync::oneshot::error::TryRecvError::Empty)
            ),
            "{how}: the run ended on a failed sync"
        );
        assert_eq!(provider.process(&ctx).pid().await, Some(pid), "{how}");
        assert_eq!(resource.exit_reason(), None, "{how}");

        resource.stop(Duration::from_secs(1)).await.expect("stop");
        let exit = tokio::time::timeout(Duration::from_secs(10), run.exit)
            .await
            .expect("the run ended")
            .expect("with an exit");
        assert_eq!(exit.code, Some(0), "{how}");
        provider.shutdown().await;
    }
}

/// A poll that kills the child (garbage on stdout, a frame that is not JSON-RPC, no answer
/// within the timeout) or during which the plugin crashes ends the run, and the exit reason,
/// the output line and the failed sync say which it was.
#[tokio::test]
async fn a_poll_that_loses_the_child_ends_the_run_naming_the_fault() {
    for (how, timeout, reason, signal) in [
        (
            "garbage",
            Duration::from_secs(20),
            "plugin `pyfake` printed garbage on stdout during `status`",
            true,
        ),
        (
            "badframe",
            Duration::from_secs(20),
            "plugin `pyfake` answered `status` with the wrong shape",
            true,
        ),
        (
            "hang",
            Duration::from_millis(700),
            "plugin `pyfake` timed out during `status` after 700ms",
            true,
        ),
        (
            "crash",
            Duration::from_secs(20),
            "plugin `pyfake` crashed (exit code 3)",
            false,
        ),
    ] {
        let (_dir, provider) = provider(timeout).await;
        let ctx = instance();
        let config = json!({"project_id": "p-1", "interval": "100ms", "misbehave": how,
            "misbehave_after": 3});
        let resource = provider
            .resource(&ctx, &decl("db", config))
            .expect("resource");
        // The first status call starts the child (the run may lose it soon after its start).
        assert_eq!(resource.status().await, Ok(Observed::Absent), "{how}");
        let pid = provider.process(&ctx).pid().await.expect("a child runs");
        let mut run = resource.start().await.expect("start");
        let exit = tokio::time::timeout(Duration::from_secs(20), run.exit)
            .await
            .unwrap_or_else(|_| panic!("{how}: the run did not end"))
            .expect("with an exit");
        if signal {
            assert_eq!(exit.signal, Some(libc::SIGKILL), "{how}: {exit:?}");
        } else {
            assert_eq!(exit.code, Some(3), "{how}: {exit:?}");
        }
        assert_eq!(resource.exit_reason().as_deref(), Some(reason), "{how}");
        let line = run.output.try_recv().expect("a line about the fault");
        assert!(
            line.text.starts_with(reason) && line.text.ends_with("the run ends with it"),
            "{how}: {}",
            line.text
        );
        let facts = resource.sync().expect("sync facts");
        let last = facts.last_sync.expect("a last sync");
        assert!(!last.ok, "{how}");
        assert!(
            last.error
                .as_deref()
                .unwrap_or_default()
                .contains("`status`"),
            "{how}: {last:?}"
        );
        assert!(gone(pid).await, "{how}: child {pid} still there");
        provider.shutdown().await;
    }
}
