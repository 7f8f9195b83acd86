//! The systemd provider: key validation and dry-runs (no bus), and its resources against a
//! private D-Bus daemon with python-dbusmock's `systemd` template standing in for systemd
//! (see `mock_systemd.rs`); `journalctl` is a stand-in script printing journal JSON lines.

use crate::mock_systemd::{MockSystemd, alive, journalctl_runs, journalctl_stand_in};
use kinfra_core::resource::{ReportedState, Resource, Run};
use kinfra_core::state::ServiceState;
use kinfra_provider::command::{ValidatedParams, validate};
use kinfra_provider::provider::{InstanceContext, Provider, ResourceDecl};
use kinfra_system::systemd::{SystemdProvider, SystemdResource, check_unit_name, journal_line};
use serde_json::{Map, Value, json};
use std::path::Path;
use std::time::Duration;

fn table(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => panic!("not a table"),
    }
}

fn instance(config: Value) -> InstanceContext {
    InstanceContext {
        instance: "sys".into(),
        config: table(config),
        ..InstanceContext::default()
    }
}

fn decl(config: Value) -> ResourceDecl {
    ResourceDecl {
        name: "db".into(),
        config: table(config),
    }
}

/// Waits (bounded) until `check` holds for the resource's reported state.
async fn reported(
    resource: &SystemdResource,
    what: &str,
    check: impl Fn(&ReportedState) -> bool,
) -> ReportedState {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(r) = resource.reported_state()
            && check(&r)
        {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: still {:?} after 30s",
            resource.reported_state()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) until `check` gives a value.
async fn wait_until<T>(check: impl Fn() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "not within 30s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn exit_code(run: Run) -> Option<i32> {
    tokio::time::timeout(Duration::from_secs(30), run.exit)
        .await
        .expect("the run ended within 30s")
        .ok()
        .and_then(|e| e.code)
}

#[test]
fn unit_names_are_checked_as_systemd_does() {
    assert!(check_unit_name("postgresql.service").is_ok());
    assert!(check_unit_name("getty@tty1.service").is_ok());
    assert!(check_unit_name("dev-sda1.device").is_ok());
    for (bad, says) in [
        ("postgresql", "no unit type suffix"),
        ("nginx.srv", "not a unit type"),
        ("getty@.service", "is a template"),
        ("a b.service", "not allowed"),
        (".service", "no name"),
        ("", "empty"),
    ] {
        let error = check_unit_name(bad).expect_err(bad);
        assert!(error.contains(says), "{bad}: {error}");
    }
}

#[tokio::test]
async fn every_bad_key_is_reported_at_once() {
    let provider = SystemdProvider::default();
    let problems: Vec<String> = provider
        .validate_resource(
            &instance(json!({ "bus": 12, "colour": "red" })),
            &decl(json!({
                "provider": "sys",
                "unit": "postgresql",
                "user": "yes",
                "interval": "5 parsecs",
                "flavour": 1,
            })),
        )
        .await
        .iter()
        .map(|p| p.to_string())
        .collect();
    for expected in [
        "`flavour`: unknown key for resource type `unit`",
        "`unit`: `postgresql` has no unit type suffix",
        "`user`: expected true or false",
        "`interval`: invalid duration `5 parsecs`",
        "`providers.sys.bus`: expected a non-empty string",
        "`providers.sys.colour`: unknown key for the systemd provider",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(expected)),
            "missing {expected:?} in {problems:#?}"
        );
    }
    let fine = provider
        .validate_resource(
            &instance(json!({ "bus": "unix:path=/run/x" })),
            &decl(json!({ "unit": "nginx.service", "interval": "1h" })),
        )
        .await;
    assert!(fine.is_empty(), "{fine:?}");
    let bad_address = provider
        .validate_resource(
            &instance(json!({ "bus": "no-such-transport:x=1" })),
            &decl(json!({ "unit": "nginx.service" })),
        )
        .await;
    assert!(
        bad_address
            .iter()
            .any(|p| p.to_string().contains("is not a D-Bus address")),
        "{bad_address:?}"
    );
}

/// Dry-runs name the D-Bus call and send nothing: the bus's socket does not even exist.
#[tokio::test]
async fn dry_runs_name_the_dbus_call_and_send_nothing() {
    let provider = SystemdProvider::default();
    let bus = "unix:path=/nonexistent/kinfra-test-bus";
    let inst = instance(json!({ "bus": bus }));
    let unit = decl(json!({ "unit": "nginx.service" }));
    for (command, method) in [
        ("start", "StartUnit"),
        ("stop", "StopUnit"),
        ("restart", "RestartUnit"),
        ("reload", "ReloadUnit"),
    ] {
        let spec = provider.command(command).expect(command).clone();
        assert!(spec.dry_run, "{command} has a dry-run");
        let params = validate(&spec, &Map::new()).expect("no params");
        let result = provider
            .execute(&inst, &unit, &spec, params, true)
            .await
            .unwrap_or_else(|e| panic!("{command}: {e}"));
        assert!(result.dry_run);
        assert_eq!(result.requests.len(), 1, "{command}");
        let call = &result.requests[0];
        assert_eq!(call.method, "DBUS");
        assert_eq!(
            call.url,
            format!(
                "{bus} org.freedesktop.systemd1 /org/freedesktop/systemd1 \
                 org.freedesktop.systemd1.Manager.{method}"
            )
        );
        assert_eq!(call.body, Some(json!(["nginx.service", "replace"])));
    }
    // Without the dry-run the same command reaches for the bus, which is not there.
    let spec = provider.command("restart").expect("restart").clone();
    let error = provider
        .execute(&inst, &unit, &spec, ValidatedParams::default(), false)
        .await
        .expect_err("no bus");
    assert!(error.to_string().contains("is not reachable"), "{error}");
    let planned = provider
        .planned_start(&inst, &unit)
        .await
        .expect("planned")
        .expect("says");
    assert!(planned[0].url.ends_with("Manager.StartUnit"));
}

#[test]
fn journal_entries_become_output_lines() {
    use kinfra_core::status::LogStream;
    assert_eq!(
        journal_line(r#"{"MESSAGE":"ready","PRIORITY":"6"}"#),
        Some((LogStream::Stdout, "ready".into()))
    );
    assert_eq!(
        journal_line(r#"{"MESSAGE":"boom","PRIORITY":"2"}"#),
        Some((LogStream::Stderr, "boom".into()))
    );
    assert_eq!(
        journal_line(r#"{"MESSAGE":[104,105],"PRIORITY":"5"}"#),
        Some((LogStream::Stdout, "hi".into()))
    );
    assert_eq!(journal_line(r#"{"MESSAGE":null}"#), None);
    assert_eq!(journal_line("not json"), None);
}

struct Setup {
    dir: tempfile::TempDir,
    mock: MockSystemd,
    provider: SystemdProvider,
}

impl Setup {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mock = MockSystemd::start(dir.path()).await;
        Self {
            dir,
            mock,
            provider: SystemdProvider::default(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn instance(&self, journalctl: &str) -> InstanceContext {
        instance(json!({ "bus": self.mock.address, "journalctl": journalctl }))
    }

    fn resource(&self, unit: &str, journalctl: &str) -> SystemdResource {
        self.provider
            .unit_resource(
                &self.instance(journalctl),
                &decl(json!({ "unit": unit, "interval": "1h" })),
            )
            .expect("resource")
    }
}

/// A start calls StartUnit and waits for its job; a change made outside kinfra arrives by
/// PropertiesChanged (the safety re-read is an hour away); the journal stand-in's lines reach
/// the log, and its child is gone when the run ends.
///
/// Stand-ins: a private dbus-daemon for the bus, python-dbusmock's systemd template for
/// systemd, a script for journalctl (it prints two JSON entries and waits).
#[tokio::test]
async fn start_follows_the_unit_by_signal_and_its_journal() {
    let setup = Setup::new().await;
    setup.mock.add_unit("nginx.service").await;
    let journalctl = journalctl_stand_in(setup.path());
    let resource = setup.resource("nginx.service", &journalctl.display().to_string());
    let run = resource.start().await.expect("start");
    assert!(!run.adopted);
    assert_eq!(setup.mock.calls("StartUnit").await, 1);
    assert_eq!(setup.mock.active_state("nginx.service").await, "active");
    let up = reported(&resource, "running", |r| r.state == ServiceState::Running).await;
    assert!(up.message.starts_with("active"), "{}", up.message);
    // The journal's lines.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let logs = resource.logs(50).await.expect("logs");
        if logs.iter().any(|l| l.text == "something went wrong")
            && logs.iter().any(|l| l.text == "hello from the unit")
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{logs:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let runs = journalctl_runs(setup.path());
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].1, "-u nginx.service -f -o json -n 0");
    // Stopped outside kinfra: the run ends, reported stopped.
    setup
        .mock
        .set_state("nginx.service", "inactive", "dead", None)
        .await;
    assert_eq!(exit_code(run).await, Some(0));
    let stopped = reported(&resource, "stopped", |r| r.state == ServiceState::Stopped).await;
    assert!(
        stopped.message.contains("stopped outside kinfra"),
        "{}",
        stopped.message
    );
    assert_eq!(resource.provider_state().as_deref(), Some("inactive/dead"));
    // No journalctl left behind.
    let pid = runs[0].0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "journalctl {pid} outlived its run"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A unit up already is adopted (no StartUnit); stop calls StopUnit; release leaves it be.
///
/// Stand-ins: a private dbus-daemon for the bus, python-dbusmock's systemd template for
/// systemd; `/bin/false` for journalctl.
#[tokio::test]
async fn an_active_unit_is_adopted_stopped_and_released() {
    let setup = Setup::new().await;
    setup.mock.add_unit("redis.service").await;
    setup
        .mock
        .set_state("redis.service", "active", "running", None)
        .await;
    let resource = setup.resource("redis.service", "/bin/false");
    let run = resource.start().await.expect("start");
    assert!(run.adopted);
    assert_eq!(setup.mock.calls("StartUnit").await, 0);
    resource
        .release(Duration::from_secs(5))
        .await
        .expect("release");
    assert_eq!(exit_code(run).await, Some(0));
    assert_eq!(setup.mock.calls("StopUnit").await, 0);
    assert_eq!(setup.mock.active_state("redis.service").await, "active");
    let run = resource.start().await.expect("start again");
    assert!(run.adopted);
    resource.stop(Duration::from_secs(10)).await.expect("stop");
    assert_eq!(setup.mock.calls("StopUnit").await, 1);
    assert_eq!(setup.mock.active_state("redis.service").await, "inactive");
    assert_eq!(exit_code(run).await, Some(0));
    let r = resource.reported_state().expect("reported");
    assert_eq!(r.state, ServiceState::Stopped);
    assert!(r.message.contains("stopped by kinfra"), "{}", r.message);
}

/// An unknown unit fails the start for good, naming the unit.
///
/// Stand-ins: a private dbus-daemon for the bus, python-dbusmock's systemd template for
/// systemd.
#[tokio::test]
async fn an_unknown_unit_fails_naming_it() {
    let setup = Setup::new().await;
    let resource = setup.resource("nosuch.service", "/bin/false");
    let error = resource.start().await.expect_err("unknown unit");
    assert!(error.is_permanent(), "{error:?}");
    let text = error.to_string();
    assert!(
        text.contains("systemd unit `nosuch.service` not found"),
        "{text}"
    );
    let r = resource.reported_state().expect("reported");
    assert_eq!(r.state, ServiceState::Failed);
    assert!(r.message.contains("nosuch.service"), "{}", r.message);
    // A unit object systemd holds for a name it found no file for: LoadState not-found.
    setup.mock.add_unit("gone.service").await;
    setup.mock.set_load_state("gone.service", "not-found").await;
    let resource = setup.resource("gone.service", "/bin/false");
    let error = resource.start().await.expect_err("not-found unit");
    assert!(error.is_permanent(), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("systemd unit `gone.service` not found: LoadState not-found"),
        "{error}"
    );
    assert_eq!(setup.mock.calls("StartUnit").await, 0);
}

/// A unit that fails ends the run as failed, with SubState and Result in the reason; the
/// journal being unreadable is said in the message.
///
/// Stand-ins: a private dbus-daemon for the bus, python-dbusmock's systemd template for
/// systemd (its UpdateProperties makes the unit fail); no journalctl at all.
#[tokio::test]
async fn a_failing_unit_fails_the_run_with_its_reason() {
    let setup = Setup::new().await;
    setup.mock.add_unit("app.service").await;
    let resource = setup.resource("app.service", "/nonexistent/journalctl");
    let run = resource.start().await.expect("start");
    let unreadable = reported(&resource, "journal note", |r| {
        r.message
            .contains("journal not readable: /nonexistent/journalctl")
    })
    .await;
    assert_eq!(unreadable.state, ServiceState::Running);
    setup
        .mock
        .set_state("app.service", "failed", "failed", Some("exit-code"))
        .await;
    assert_eq!(exit_code(run).await, Some(1));
    let reason = resource.exit_reason().expect("a reason");
    assert!(
        reason.contains("systemd unit `app.service` failed (failed/failed), result exit-code"),
        "{reason}"
    );
    assert_eq!(
        resource.reported_state().map(|r| r.state),
        Some(ServiceState::Failed)
    );
}

/// A journalctl that exits at once (no journal files, no permission) is said in status.
///
/// Stand-ins: a private dbus-daemon for the bus, python-dbusmock's systemd template for
/// systemd, a script for journalctl that exits at once
/// as the real one does without permission.
#[tokio::test]
async fn a_journal_that_cannot_be_read_is_said() {
    let setup = Setup::new().await;
    setup.mock.add_unit("web.service").await;
    let script = setup.path().join("journalctl-denied");
    std::fs::write(
        &script,
        "#!/bin/sh\necho 'No journal files were opened due to insufficient permissions.' >&2\nexit 1\n",
    )
    .expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let resource = setup.resource("web.service", &script.display().to_string());
    let _run = resource.start().await.expect("start");
    let r = reported(&resource, "journal note", |r| {
        r.message.contains("journal not readable")
    })
    .await;
    assert!(
        r.message.contains("insufficient permissions"),
        "{}",
        r.message
    );
    assert_eq!(r.state, ServiceState::Running);
}

/// The bus going away fails the run with the cause; once it is back, a start takes the unit
/// up again. Commands (restart, reload) run their jobs.
///
/// Stand-ins: a private dbus-daemon for the bus, python-dbusmock's systemd template for
/// systemd; killing the daemon is the bus going away.
#[tokio::test]
async fn the_bus_going_away_fails_the_run_and_a_restart_recovers() {
    let mut setup = Setup::new().await;
    setup.mock.add_unit("pg.service").await;
    let resource = setup.resource("pg.service", "/bin/false");
    let run = resource.start().await.expect("start");
    setup.mock.kill_bus().await;
    assert_eq!(exit_code(run).await, Some(1));
    let reason = resource.exit_reason().expect("a reason");
    assert!(
        reason.contains("the connection to the system bus") && reason.contains("was lost"),
        "{reason}"
    );
    let error = resource.start().await.expect_err("no bus");
    assert!(error.to_string().contains("is not reachable"), "{error}");
    setup.mock.restart_bus().await;
    setup.mock.add_unit("pg.service").await;
    let run = resource.start().await.expect("start after the bus is back");
    assert!(!run.adopted);
    assert_eq!(resource.exit_reason(), None);
    let inst = setup.instance("/bin/false");
    let unit = decl(json!({ "unit": "pg.service" }));
    for (command, method) in [("restart", "RestartUnit"), ("reload", "ReloadUnit")] {
        let spec = setup.provider.command(command).expect(command).clone();
        let result = setup
            .provider
            .execute(&inst, &unit, &spec, ValidatedParams::default(), false)
            .await
            .unwrap_or_else(|e| panic!("{command}: {e}"));
        assert!(result.success, "{result:?}");
        assert_eq!(result.operation_state.as_deref(), Some("done"));
        assert_eq!(setup.mock.calls(method).await, 1, "{method}");
    }
}

/// `user = true`: the same calls on the instance's bus (here the private one standing in for
/// the session bus), and the journal read with `--user-unit`.
///
/// Stand-ins: a private dbus-daemon for the bus, python-dbusmock's systemd template for
/// systemd, a script for journalctl.
#[tokio::test]
async fn a_user_unit_reads_its_user_journal() {
    let setup = Setup::new().await;
    setup.mock.add_unit("syncthing.service").await;
    let journalctl = journalctl_stand_in(setup.path());
    let resource = setup
        .provider
        .unit_resource(
            &setup.instance(&journalctl.display().to_string()),
            &decl(json!({ "unit": "syncthing.service", "user": true, "interval": "1h" })),
        )
        .expect("resource");
    let run = resource.start().await.expect("start");
    assert_eq!(setup.mock.calls("StartUnit").await, 1);
    assert!(setup.mock.calls("Subscribe").await >= 1);
    let runs = wait_until(|| {
        let runs = journalctl_runs(setup.path());
        (!runs.is_empty()).then_some(runs)
    })
    .await;
    assert_eq!(runs[0].1, "--user-unit syncthing.service -f -o json -n 0");
    resource.stop(Duration::from_secs(5)).await.expect("stop");
    assert_eq!(exit_code(run).await, Some(0));
}

/// A start whose job ends `failed` fails the start with the job's result and the unit's.
///
/// Stand-ins: a private dbus-daemon for the bus, python-dbusmock's systemd template for
/// systemd (its StartUnit overridden to fail the job).
#[tokio::test]
async fn a_start_job_that_fails_fails_the_start_with_its_result() {
    let setup = Setup::new().await;
    setup.mock.add_unit("broken.service").await;
    setup.mock.fail_starts().await;
    let resource = setup.resource("broken.service", "/bin/false");
    let error = resource.start().await.expect_err("the job failed");
    let text = error.to_string();
    assert!(
        text.contains("StartUnit broken.service")
            && text.contains("the job ended `failed`")
            && text.contains("failed (failed/failed), result exit-code"),
        "{text}"
    );
    let r = resource.reported_state().expect("reported");
    assert_eq!(r.state, ServiceState::Failed);
    assert_eq!(resource.provider_state().as_deref(), Some("failed/failed"));
}
