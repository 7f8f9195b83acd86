//! `kinfra::start` used as a library: readiness, events, actions, failed startup cleanup,
//! bounded shutdown.

use crate::support::{alive, pids_tagged, unique_tag, wait_for};
use kinfra::{Config, EventKind, EventSender, RuntimeOptions, ServiceConfig, ServiceState};
use std::time::Duration;

fn config(dir: &std::path::Path, tag: &str, dashboard: &str) -> Config {
    let toml = format!(
        r#"
[project]
name = "lib"
state_dir = "{state}"
shutdown_timeout = "20s"

[env]
KINFRA_TEST_TAG = "{tag}"

[dashboard]
listen = "{dashboard}"

[proxy]
http = "127.0.0.1:0"

[services.sleeper]
command = "echo up; exec sleep 1000"
"#,
        state = dir.join("state").display()
    );
    Config::parse(&toml, kinfra::config::Format::Toml, "test.toml", dir, &[]).expect("valid config")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_events_restart_shutdown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tag = unique_tag("lib");
    let events = EventSender::new(1024);
    let mut rx = events.subscribe();
    let rt = kinfra::start_with(
        config(dir.path(), &tag, "127.0.0.1:0"),
        RuntimeOptions {
            events: Some(events),
            ..RuntimeOptions::default()
        },
    )
    .await
    .expect("runtime starts");
    assert!(rt.dashboard_addr().is_some_and(|a| a.port() != 0));
    assert!(rt.control_socket().exists());

    // Events arrive numbered without gaps, and the service reaches running.
    let mut seqs = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ev = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("running event in time")
            .expect("event");
        seqs.push(ev.seq);
        if let EventKind::StateChanged { service, to, .. } = &ev.kind
            && service == "sleeper"
            && *to == ServiceState::Running
        {
            break;
        }
    }
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "gap in {seqs:?}");
    let pid = rt.status().await.services["sleeper"].pid.expect("pid");

    rt.restart("sleeper").await.expect("restart");
    let new_pid = wait_for(Duration::from_secs(20), "new pid", || {
        running_pid(&rt).filter(|p| *p != pid)
    });
    assert!(!alive(pid));
    assert!(rt.restart("nope").await.is_err());

    rt.shutdown().await.expect("clean shutdown");
    assert!(!alive(new_pid));
    assert!(pids_tagged(&tag).is_empty());
    assert!(!dir.path().join("state/control.sock").exists());
}

/// Blocking peek at the running PID (the status snapshot never waits on the supervisor).
fn running_pid(rt: &kinfra::Runtime) -> Option<u32> {
    let report = rt.control().status();
    let s = &report.services["sleeper"];
    (s.state == ServiceState::Running)
        .then_some(s.pid)
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_start_leaves_nothing_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tag = unique_tag("half");
    // Hold the dashboard port so startup fails after the state dir was locked.
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = blocker.local_addr().expect("addr").to_string();
    let err = kinfra::start(config(dir.path(), &tag, &taken))
        .await
        .expect_err("start must fail on a taken dashboard port");
    assert!(err.to_string().contains(&taken), "{err}");
    assert!(!err.is_config_error());
    // The lock was released: a second start on the same state dir works.
    drop(blocker);
    let rt = kinfra::start(config(dir.path(), &tag, "127.0.0.1:0"))
        .await
        .expect("start after failure");
    rt.shutdown().await.expect("shutdown");

    // A taken proxy port fails later, after the bus started its managed nats-server: that
    // server was started (its config is under the state dir) and is stopped again.
    assert!(
        std::process::Command::new("nats-server")
            .arg("--version")
            .output()
            .is_ok(),
        "nats-server is missing: install Debian's nats-server (./x test does)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = blocker.local_addr().expect("addr").to_string();
    let mut half = config(dir.path(), &tag, "127.0.0.1:0");
    half.proxy.http = Some(taken.clone());
    let err = kinfra::start(half)
        .await
        .expect_err("start must fail on a taken proxy port");
    assert!(err.to_string().contains(&taken), "{err}");
    let nats_dir = dir.path().join("state/nats");
    assert!(
        nats_dir.join("nats-server.conf").exists(),
        "the managed nats-server was never started, so this shows no cleanup"
    );
    let needle = nats_dir.display().to_string();
    let left: Vec<u32> = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
                && alive(*pid)
        })
        .collect();
    assert!(
        left.is_empty(),
        "the managed nats-server {left:?} was left running"
    );
    assert!(pids_tagged(&tag).is_empty(), "a service was left running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builder_config_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tag = unique_tag("builder");
    let config = Config::builder()
        .project("built")
        .state_dir(dir.path().join("state"))
        .dashboard_listen("127.0.0.1:0")
        .proxy_http(Some("127.0.0.1:0"))
        .service(
            "one",
            ServiceConfig::new("exec sleep 1000").env("KINFRA_TEST_TAG", &tag),
        )
        .build()
        .expect("builder config is valid");
    let rt = kinfra::start(config).await.expect("start");
    wait_for(Duration::from_secs(20), "one running", || {
        (pids_tagged(&tag).len() == 1).then_some(())
    });
    assert_eq!(rt.status().await.project, "built");
    rt.shutdown().await.expect("shutdown");
    assert!(pids_tagged(&tag).is_empty());
}

/// The README's "own provider" snippet, compiled here and compared with the README's text.
async fn own_provider(
    config: Config,
) -> Result<
    (
        kinfra::Runtime,
        std::sync::Arc<std::sync::atomic::AtomicBool>,
    ),
    kinfra::StartError,
> {
    // README: own provider (begin)
    use kinfra::providers::sdk::simple::{SimpleProvider, State};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    let up = Arc::new(AtomicBool::new(false)); // stands for the app's real queue
    let (on_start, on_stop, on_status) = (up.clone(), up.clone(), up.clone());
    let queue = SimpleProvider::new("my-queue", "My queue")
        .on_start(move |_config| {
            let up = on_start.clone();
            async move {
                up.store(true, SeqCst);
                Ok(())
            }
        })
        .on_stop(move |_config| {
            let up = on_stop.clone();
            async move {
                up.store(false, SeqCst);
                Ok(())
            }
        })
        .on_status(move |_config| {
            let up = on_status.load(SeqCst);
            async move { Ok(if up { State::Running } else { State::Stopped }) }
        })
        .build();
    let mut options = kinfra::RuntimeOptions::default();
    options.providers.push(queue);
    let rt = kinfra::start_with(config, options).await?;
    // README: own provider (end)
    Ok((rt, up))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_provider_in_code_runs_a_resource() {
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = format!(
        "[project]\nname = \"ownprov\"\nstate_dir = \"{}\"\n\
         [dashboard]\nlisten = \"127.0.0.1:0\"\n[proxy]\nhttp = \"127.0.0.1:0\"\n\
         [providers.q]\nprovider = \"my-queue\"\n\
         [resources.jobs]\nprovider = \"q\"\ninterval = \"100ms\"\n",
        dir.path().join("state").display()
    );
    let config = Config::parse(
        &toml,
        kinfra::config::Format::Toml,
        "test.toml",
        dir.path(),
        &[],
    )
    .expect("valid config");
    let (rt, up) = own_provider(config).await.expect("runtime starts");
    let state = |rt: &kinfra::Runtime| rt.control().status().services.get("jobs").map(|s| s.state);
    wait_for(Duration::from_secs(20), "jobs running", || {
        (state(&rt) == Some(ServiceState::Running)).then_some(())
    });
    assert!(
        up.load(std::sync::atomic::Ordering::SeqCst),
        "start closure was not called"
    );
    // The observe loop's answers reach status as the provider's state.
    wait_for(Duration::from_secs(20), "provider_state running", || {
        let jobs = &rt.control().status().services["jobs"];
        (jobs.provider_state.as_deref() == Some("running")).then_some(())
    });

    rt.stop("jobs").await.expect("stop jobs");
    wait_for(Duration::from_secs(20), "jobs stopped", || {
        (state(&rt) == Some(ServiceState::Stopped)).then_some(())
    });
    assert!(
        !up.load(std::sync::atomic::Ordering::SeqCst),
        "stop closure was not called"
    );
    rt.shutdown().await.expect("shutdown");

    // The README shows the snippet above, word for word.
    let source = include_str!("library.rs");
    let begin = source
        .find("// README: own provider (begin)\n")
        .expect("begin marker");
    let end = source
        .find("    // README: own provider (end)")
        .expect("end marker");
    let snippet: String = source[begin..end]
        .lines()
        .skip(1)
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    assert!(snippet.lines().count() < 30, "README snippet too long");
    let readme = include_str!("../../README.md");
    assert!(
        readme.contains(&format!("```rust\n{snippet}```")),
        "README.md lacks:\n{snippet}"
    );
}
