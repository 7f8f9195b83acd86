//! Spawn, status, logs, stop, start, environment and working directory.

use crate::support::*;
use kinfra_core::EventKind;
use kinfra_core::state::ServiceState;
use kinfra_core::view::{Action, ActionError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawns_reports_status_and_stops() {
    let p = Project::new();
    let mut svc = sh("echo hello from $KINFRA_SERVICE; echo to-stderr >&2; exec sleep 30");
    svc.env.insert("GREETING".into(), "hi".into());
    let sup = p.start(&services(vec![("web", svc)])).await;
    let mut events = sup.events().subscribe();
    expect_state(&sup, "web", ServiceState::Running, SECS(5)).await;
    let st = status_of(&sup, "web");
    assert_eq!(st.kind, "process");
    assert_eq!(st.status_message, "Service is running");
    let pid = st.pid.unwrap_or(0) as i32;
    assert!(pid > 0 && alive(pid));
    assert!(st.uptime_s.is_some());
    assert!(
        wait_for(SECS(5), || {
            let m = messages(&sup, "web");
            m.contains(&"hello from web".to_string()) && m.contains(&"to-stderr".to_string())
        })
        .await,
        "{:?}",
        messages(&sup, "web")
    );
    let lines = sup.logs(Some("web"), 100).unwrap_or_default();
    let err_line = lines.iter().find(|l| l.line.message == "to-stderr");
    assert_eq!(err_line.map(|l| l.line.stream.as_str()), Some("stderr"));
    // The log file has the same lines, as JSON (its writer follows the live log, so wait for
    // it to catch up).
    let log_file = p.state_dir().join("logs/web.log");
    let read = || std::fs::read_to_string(&log_file).unwrap_or_default();
    assert!(
        wait_for(SECS(5), || read()
            .contains("\"message\":\"hello from web\""))
        .await,
        "{}",
        read()
    );

    sup.act(Action::Stop, "web")
        .await
        .unwrap_or_else(|e| panic!("stop: {e}"));
    assert!(!alive(pid), "stop resolved but the process lives");
    let st = status_of(&sup, "web");
    assert_eq!(st.state, ServiceState::Stopped);
    assert_eq!(st.pid, None);
    // Events told the story.
    let mut kinds = Vec::new();
    while let Ok(e) = events.try_recv() {
        kinds.push(e.kind.name());
    }
    assert!(kinds.contains(&"process_exited"), "{kinds:?}");
    assert!(kinds.contains(&"state_changed"), "{kinds:?}");

    sup.act(Action::Start, "web")
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    expect_state(&sup, "web", ServiceState::Running, SECS(5)).await;
    let pid2 = status_of(&sup, "web").pid.unwrap_or(0) as i32;
    assert!(pid2 > 0 && pid2 != pid);
    sup.act(Action::Restart, "web")
        .await
        .unwrap_or_else(|e| panic!("restart: {e}"));
    let st = status_of(&sup, "web");
    assert_ne!(st.pid.map(|p| p as i32), Some(pid2));
    assert_eq!(st.restarts, 1);
    assert!(!alive(pid2));

    assert_eq!(
        sup.act(Action::Stop, "nope").await,
        Err(ActionError::UnknownService("nope".into()))
    );
    sup.shutdown(SECS(5)).await;
    let _ = events.try_recv();
    let _ = EventKind::RuntimeStarted {
        project: String::new(),
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_port_and_working_dir_reach_the_child() {
    let p = Project::new();
    std::fs::create_dir_all(p.path().join("sub")).unwrap_or_else(|e| panic!("{e}"));
    let mut svc =
        sh("echo cwd=$(pwd) port=$PORT g=$G s=$S p2=${PORT}; exec sleep 30 # ${API_TOKEN}");
    svc.working_dir = Some("sub".into());
    svc.port = Some(kinfra_core::config::PortSpec::Auto);
    svc.env.insert("S".into(), "svc".into());
    svc.env
        .insert("API_TOKEN".into(), "supersecretvalue".into());
    let mut opts = p.opts();
    opts.global_env.insert("G".into(), "global".into());
    opts.global_env.insert("S".into(), "overridden".into());
    let sup = kinfra_supervisor::Supervisor::start(&services(vec![("app", svc)]), opts)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let port = sup.port_of("app").unwrap_or(0);
    assert!(port > 0);
    let want_prefix = format!(
        "cwd={}/sub port={port} g=global s=svc",
        std::fs::canonicalize(p.path())
            .unwrap_or_default()
            .display()
    );
    assert!(
        wait_for(SECS(5), || messages(&sup, "app").iter().any(|m| m
            .starts_with(&want_prefix)
            && m.ends_with(&format!("p2={port}"))))
        .await,
        "{:?} (want {want_prefix})",
        messages(&sup, "app")
    );
    // The secret never shows in what kinfra writes about the service.
    let all = messages(&sup, "app").join("\n");
    assert!(!all.contains("supersecretvalue"), "{all}");
    assert!(all.contains("# ***"), "{all}");
    assert_eq!(status_of(&sup, "app").port, Some(port));
    sup.shutdown(SECS(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_command_and_bad_dir_fail_clearly_and_others_keep_running() {
    let p = Project::new();
    let mut bad_dir = sh("exec sleep 30");
    bad_dir.working_dir = Some("does/not/exist".into());
    let mut missing =
        kinfra_core::config::ServiceConfig::new(kinfra_core::config::CommandSpec::Argv(vec![
            "no-such-program-kinfra".into(),
        ]));
    missing.restart = kinfra_core::config::RestartPolicy::Always;
    let mut shell_missing = sh("no-such-program-kinfra");
    shell_missing.restart = kinfra_core::config::RestartPolicy::No;
    let mut unknown_var = sh("echo ${KINFRA_IT_SURELY_UNSET}");
    unknown_var.restart = kinfra_core::config::RestartPolicy::Always;
    let sup = p
        .start(&services(vec![
            ("unknownvar", unknown_var),
            ("baddir", bad_dir),
            ("missing", missing),
            ("shmissing", shell_missing),
            ("good", sh("exec sleep 30")),
        ]))
        .await;
    expect_state(&sup, "baddir", ServiceState::Failed, SECS(5)).await;
    expect_state(&sup, "missing", ServiceState::Failed, SECS(5)).await;
    expect_state(&sup, "shmissing", ServiceState::Failed, SECS(5)).await;
    expect_state(&sup, "good", ServiceState::Running, SECS(5)).await;
    expect_state(&sup, "unknownvar", ServiceState::Failed, SECS(5)).await;
    let msg = |n| status_of(&sup, n).status_message;
    assert!(
        msg("unknownvar").starts_with("unknown variable `KINFRA_IT_SURELY_UNSET`"),
        "{}",
        msg("unknownvar")
    );
    assert!(
        msg("baddir").contains("does not exist"),
        "{}",
        msg("baddir")
    );
    assert_eq!(msg("missing"), "Command not found: no-such-program-kinfra");
    assert!(msg("shmissing").contains("127"), "{}", msg("shmissing"));
    sup.shutdown(SECS(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_state_dir_and_second_instance_are_errors() {
    let p = Project::new();
    let file = p.write("not-a-dir", "x");
    let mut opts = p.opts();
    opts.state_dir = file.join("state");
    let err = kinfra_supervisor::Supervisor::start(&services(vec![]), opts)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.starts_with("the state dir"), "{err}");
    assert!(err.contains("not-a-dir/state"), "{err}");

    let first = p.start(&services(vec![])).await;
    let second = kinfra_supervisor::Supervisor::start(&services(vec![]), p.opts()).await;
    assert!(
        matches!(
            second,
            Err(kinfra_supervisor::SupervisorError::AlreadyRunning { holder: Some(pid), .. })
                if pid == std::process::id()
        ),
        "{second:?}"
    );
    first.shutdown(SECS(5)).await;
}

/// An env value that refers to another service's port is resolved before the command that
/// uses it (`${API_URL}` → `http://127.0.0.1:${services.api.port}` → the real port), and a
/// reference cycle fails the service clearly instead of looping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_values_with_references_resolve_inside_commands() {
    use kinfra_core::config::{PortSpec, RestartPolicy};
    let p = Project::new();
    let mut api = sh("exec sleep 1000");
    api.port = Some(PortSpec::Auto);
    let mut worker = sh("echo polling ${API_URL}; exec sleep 1000");
    worker.env.insert(
        "API_URL".into(),
        "http://127.0.0.1:${services.api.port}".into(),
    );
    worker.depends_on.0.insert("api".into(), Default::default());
    let mut cyclic = sh("echo ${A}");
    cyclic.restart = RestartPolicy::No;
    cyclic.env.insert("A".into(), "${B}".into());
    cyclic.env.insert("B".into(), "${A}".into());
    let s = p
        .start(&services(vec![
            ("api", api),
            ("worker", worker),
            ("cyclic", cyclic),
        ]))
        .await;
    expect_state(&s, "worker", ServiceState::Running, SECS(10)).await;
    let port = s.port_of("api").expect("api port");
    let want = format!("polling http://127.0.0.1:{port}");
    assert!(
        wait_for(SECS(5), || messages(&s, "worker").contains(&want)).await,
        "{:?}",
        messages(&s, "worker")
    );
    expect_state(&s, "cyclic", ServiceState::Failed, SECS(5)).await;
    assert!(
        status_of(&s, "cyclic")
            .status_message
            .contains("unknown variable"),
        "{}",
        status_of(&s, "cyclic").status_message
    );
    s.shutdown(SECS(5)).await;
}
