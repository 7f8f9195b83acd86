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
