//! Ports: auto ports persisted across runs, fixed ports held by foreign processes.

use crate::support::*;
use kinfra_core::config::PortSpec;
use kinfra_core::state::ServiceState;
use kinfra_supervisor::SupervisorError;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_port_is_kept_across_two_runs() {
    let p = Project::new();
    let mut svc = sh("echo port=$PORT; exec sleep 30");
    svc.port = Some(PortSpec::Auto);
    let list = services(vec![("api", svc)]);
    let opts = p.opts();
    let mut events = opts.events.subscribe();
    let s = kinfra_supervisor::Supervisor::start(&list, opts)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let port = s.port_of("api").unwrap_or(0);
    assert!(port > 0);
    let mut assigned = None;
    while let Ok(e) = events.try_recv() {
        if let kinfra_core::EventKind::PortAssigned { service, port } = e.kind {
            assigned = Some((service, port));
        }
    }
    assert_eq!(assigned, Some(("api".to_string(), port)));
    assert!(
        wait_for(SECS(5), || messages(&s, "api")
            .contains(&format!("port={port}")))
        .await
    );
    s.shutdown(SECS(5)).await;
    drop(s);
    let saved = std::fs::read_to_string(p.state_dir().join("ports.json")).unwrap_or_default();
    assert!(saved.contains(&port.to_string()), "{saved}");

    let s2 = p.start(&list).await;
    assert_eq!(s2.port_of("api"), Some(port));
    expect_state(&s2, "api", ServiceState::Running, SECS(5)).await;
    assert_eq!(status_of(&s2, "api").port, Some(port));
    s2.shutdown(SECS(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_port_held_by_a_foreign_process_names_the_holder() {
    let p = Project::new();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let port = holder.local_addr().map(|a| a.port()).unwrap_or(0);
    let mut svc = sh("exec sleep 30");
    svc.port = Some(PortSpec::Fixed(port));
    let err = kinfra_supervisor::Supervisor::start(&services(vec![("web", svc)]), p.opts())
        .await
        .err();
    let Some(SupervisorError::PortInUse { service, source }) = err else {
        panic!("expected PortInUse, got {err:?}");
    };
    assert_eq!(service, "web");
    assert_eq!(
        source.holder.as_ref().map(|h| h.pid),
        Some(std::process::id() as i32)
    );
    let msg = source.to_string();
    assert!(
        msg.starts_with(&format!(
            "port {port} is already in use by pid {}",
            std::process::id()
        )),
        "{msg}"
    );
    drop(holder);
}

/// A process of ours from a previous run (it carries this state dir's tag) holding a fixed
/// port is killed, and the service gets its port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_port_held_by_a_stale_process_of_ours_is_reclaimed() {
    let p = Project::new();
    std::fs::create_dir_all(p.state_dir()).unwrap_or_else(|e| panic!("{e}"));
    let port = kinfra_supervisor::ports::free_port().unwrap_or_else(|e| panic!("{e}"));
    let tag = format!(
        "{}web/",
        kinfra_supervisor::pids::tag_prefix(&p.state_dir())
    );
    let mut stale = std::process::Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .env("KINFRA_SUPERVISOR_TAG", &tag)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let stale_pid = stale.id() as i32;
    assert!(
        wait_for(SECS(5), || kinfra_supervisor::ports::check_free(port)
            .is_err())
        .await,
        "the stale server never listened"
    );
    let mut svc = sh("echo port=$PORT; exec python3 -m http.server --bind 127.0.0.1 $PORT");
    svc.port = Some(PortSpec::Fixed(port));
    let s = p.start(&services(vec![("web", svc)])).await;
    let _ = stale.wait();
    assert!(!alive(stale_pid));
    expect_state(&s, "web", ServiceState::Running, SECS(5)).await;
    assert!(
        wait_for(SECS(5), || messages(&s, "web")
            .contains(&format!("port={port}")))
        .await
    );
    s.shutdown(SECS(5)).await;
}

/// Two services on one fixed port: the second fails with the holder named, and the first
/// keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_on_one_fixed_port_conflict_without_killing_each_other() {
    let p = Project::new();
    let port = kinfra_supervisor::ports::free_port().unwrap_or_else(|e| panic!("{e}"));
    let mut first = sh("exec python3 -m http.server --bind 127.0.0.1 $PORT");
    first.port = Some(PortSpec::Fixed(port));
    first.health = Some(kinfra_core::config::ProbeConfig {
        tcp: Some(kinfra_core::config::TcpTarget::OwnPort(true)),
        interval: kinfra_core::config::Dur::from_millis(50),
        ..Default::default()
    });
    let s = p.start(&services(vec![("first", first)])).await;
    expect_state(&s, "first", ServiceState::Running, SECS(10)).await;
    let first_pid = status_of(&s, "first").pid;
    let mut second = sh("exec sleep 30");
    second.port = Some(PortSpec::Fixed(port));
    let mut list = services(vec![("second", second)]);
    list.insert("first".into(), {
        let mut c = sh("exec python3 -m http.server --bind 127.0.0.1 $PORT");
        c.port = Some(PortSpec::Fixed(port));
        c.health = Some(kinfra_core::config::ProbeConfig {
            tcp: Some(kinfra_core::config::TcpTarget::OwnPort(true)),
            interval: kinfra_core::config::Dur::from_millis(50),
            ..Default::default()
        });
        c
    });
    // A reload adding the second is rejected as a whole.
    let err = s
        .apply(&list)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains(&format!("port {port} is already in use by pid")),
        "{err}"
    );
    assert!(!s.status().contains_key("second"));
    assert_eq!(status_of(&s, "first").pid, first_pid);
    assert_eq!(state_of(&s, "first"), ServiceState::Running);
    s.shutdown(SECS(5)).await;
}

/// Records what the supervisor reports through its state sink.
#[derive(Debug, Default)]
struct RecordingSink {
    changes: std::sync::Mutex<Vec<String>>,
}

impl kinfra_supervisor::StateSink for RecordingSink {
    fn history_changed(&self, service: &str, h: kinfra_supervisor::ServiceHistory) {
        if let Ok(mut c) = self.changes.lock() {
            c.push(format!("{service} restarts={}", h.restarts));
        }
    }
    fn user_stopped_changed(&self, service: &str, stopped: bool) {
        if let Ok(mut c) = self.changes.lock() {
            c.push(format!("{service} stopped={stopped}"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persisted_state_comes_in_and_changes_go_to_the_sink_not_files() {
    let p = Project::new();
    let known = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut api = sh("exec sleep 30");
    api.port = Some(PortSpec::Auto);
    let mut keep = sh("exec sleep 30");
    keep.restart = kinfra_core::config::RestartPolicy::UnlessStopped;
    let list = services(vec![("api", api), ("keep", keep.clone()), ("kept", keep)]);
    let sink = std::sync::Arc::new(RecordingSink::default());
    let persistence = kinfra_supervisor::Persistence {
        ports: [("api".to_string(), known)].into(),
        history: [(
            "api".to_string(),
            kinfra_supervisor::ServiceHistory {
                restarts: 7,
                last_exit: Some(kinfra_core::event::ExitInfo {
                    code: Some(2),
                    signal: None,
                }),
            },
        )]
        .into(),
        user_stopped: ["kept".to_string()].into(),
        sink: sink.clone(),
    };
    let s = kinfra_supervisor::Supervisor::start(&list, p.opts().with_persistence(persistence))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.port_of("api"), Some(known));
    let api = status_of(&s, "api");
    assert_eq!(api.restarts, 7);
    assert_eq!(api.last_exit.and_then(|e| e.code), Some(2));
    expect_state(&s, "kept", ServiceState::Stopped, SECS(5)).await;
    expect_state(&s, "api", ServiceState::Running, SECS(5)).await;
    expect_state(&s, "keep", ServiceState::Running, SECS(5)).await;
    s.act(kinfra_core::view::Action::Restart, "api")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    s.act(kinfra_core::view::Action::Stop, "keep")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status_of(&s, "api").restarts, 8);
    s.shutdown(SECS(5)).await;
    let changes = sink.changes.lock().map(|c| c.clone()).unwrap_or_default();
    assert!(
        changes.contains(&"api restarts=8".to_string()),
        "{changes:?}"
    );
    assert!(
        changes.contains(&"keep stopped=true".to_string()),
        "{changes:?}"
    );
    for f in ["ports.json", "stopped.json"] {
        assert!(!p.state_dir().join(f).exists(), "{f} written");
    }
}
