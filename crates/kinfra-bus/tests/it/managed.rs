//! The managed nats-server: found on PATH, started with JetStream under the state dir,
//! restarted when it dies, stopped with the bus.

use crate::support::*;
use futures_util::StreamExt;
use kinfra_bus::{Bus, BusBackend, BusState};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

fn alive(pid: u32) -> bool {
    // A zombie is not alive; our own children are reaped by the bus.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

async fn managed_client(url: &str, token_file: &Path) -> async_nats::Client {
    let token = std::fs::read_to_string(token_file).unwrap();
    async_nats::ConnectOptions::with_token(token.trim().to_owned())
        .connect(url)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_server_runs_is_restarted_when_killed_and_stops_with_the_bus() {
    let binary = nats_server_binary();
    let state = tempfile::tempdir().unwrap();
    let control = FakeControl::new();
    let mut opts = options(&control, state.path(), None);
    // Only the directory of nats-server is searched.
    opts.search_path = Some(binary.parent().unwrap().as_os_str().to_owned());
    let bus = Bus::start(opts.clone(), control.clone()).await.unwrap();
    assert_eq!(bus.state(), BusState::Connected);
    let BusBackend::Managed {
        url,
        pid,
        token_file,
    } = bus.backend()
    else {
        panic!("expected a managed server, got {:?}", bus.backend());
    };
    assert!(url.starts_with("nats://127.0.0.1:"), "{url}");
    assert!(alive(pid));
    let nats_dir = state.path().join("nats");
    assert_eq!(token_file, nats_dir.join("token"));
    for private in [&token_file, &nats_dir.join("nats-server.conf")] {
        let mode = std::fs::metadata(private).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", private.display());
    }
    let dir_mode = std::fs::metadata(&nats_dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700);
    // The token is not on the command line, where other users could read it.
    let token = std::fs::read_to_string(&token_file).unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(!cmdline.contains(token.trim()), "{cmdline}");
    assert!(
        cmdline.contains("127.0.0.1") && cmdline.contains("-js"),
        "{cmdline}"
    );
    assert_eq!(std::fs::read_to_string(nats_dir.join("url")).unwrap(), url);

    // Without the token nobody gets in.
    let anonymous = async_nats::ConnectOptions::new()
        .max_reconnects(Some(1))
        .connect(url.as_str())
        .await;
    assert!(
        anonymous.is_err(),
        "the managed server must require its token"
    );

    let watcher = managed_client(&url, &token_file).await;
    // JetStream is on, with its store under the state dir.
    let js = async_nats::jetstream::new(watcher.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "KEEP".into(),
        subjects: vec!["keep.>".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(nats_dir.join("jetstream").is_dir());

    let mut sub = watcher.subscribe("kinfra.test.events.api.>").await.unwrap();
    roundtrip(&watcher).await;
    let ev = control.emit_state("api", 1);
    let msg = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(parse_event(&msg.payload)["seq"].as_u64(), Some(ev.seq));
    let reply = control_request(&watcher, "restart", r#"{"service":"api"}"#).await;
    assert_eq!(reply["success"], true);

    // Kill it: the bus restarts it on the same port, reconnects, and events flow again.
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    wait_until(
        "the managed server to be restarted",
        Duration::from_secs(10),
        || matches!(bus.backend(), BusBackend::Managed { pid: p, .. } if p != 0 && p != pid),
    )
    .await;
    wait_until("the bus to reconnect", Duration::from_secs(10), || {
        bus.status().reconnects >= 1
    })
    .await;
    wait_state(&bus, BusState::Connected, Duration::from_secs(10)).await;
    let BusBackend::Managed {
        url: url2,
        pid: pid2,
        ..
    } = bus.backend()
    else {
        panic!()
    };
    assert_eq!(url2, url, "same port after a restart");
    assert!(bus.status().server_restarts >= 1);
    // The watcher reconnects by itself; events and control work again.
    let mut seen = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.is_none() {
        let ev = control.emit_state("api", 2);
        if let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
            let got = parse_event(&msg.payload)["seq"].as_u64();
            assert!(got <= Some(ev.seq));
            seen = got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no event after the server restart"
        );
    }
    let reply = control_request(&watcher, "stop", r#"{"service":"api"}"#).await;
    assert_eq!(reply["success"], true);

    bus.shutdown(Duration::from_secs(5)).await;
    assert!(!alive(pid2), "the managed server is stopped with the bus");

    // The next start prefers the same port.
    let bus = Bus::start(opts, control.clone()).await.unwrap();
    let BusBackend::Managed {
        url: url3,
        pid: pid3,
        ..
    } = bus.backend()
    else {
        panic!()
    };
    assert_eq!(url3, url);
    drop(bus);
    // Dropping the last handle kills the server too.
    wait_until(
        "the dropped bus's server to die",
        Duration::from_secs(5),
        || !alive(pid3),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_nats_server_falls_back_to_in_process() {
    // A "nats-server" that exits at once: the bus must not hang or fail, but run in-process.
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("nats-server");
    std::fs::write(&fake, "#!/bin/sh\necho '[FTL] cannot do it' >&2\nexit 1\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = tempfile::tempdir().unwrap();
    let control = FakeControl::new();
    let mut opts = options(&control, state.path(), None);
    opts.search_path = Some(dir.path().as_os_str().to_owned());
    let started = std::time::Instant::now();
    let bus = Bus::start(opts, control.clone()).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(60), "start hung");
    assert_eq!(bus.backend(), BusBackend::InProcess);
    assert_eq!(bus.state(), BusState::InProcess);
    bus.shutdown(Duration::from_secs(1)).await;
}

/// Environment variable that turns [`child_process_holding_a_managed_bus`] on.
const CHILD_STATE: &str = "KINFRA_BUS_TEST_CHILD_STATE";

/// Not a test on its own: run in a child process by
/// `managed_server_dies_when_kinfra_is_killed` (with `--ignored --exact`), it starts a managed
/// bus, prints the server's PID and waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process entry point, run by managed_server_dies_when_kinfra_is_killed"]
async fn child_process_holding_a_managed_bus() {
    let Some(state) = std::env::var_os(CHILD_STATE) else {
        panic!(
            "helper process entry point: run by managed::managed_server_dies_when_kinfra_is_killed \
             with {CHILD_STATE} set, not on its own"
        );
    };
    let control = FakeControl::new();
    let bus = Bus::start(options(&control, Path::new(&state), None), control.clone())
        .await
        .unwrap();
    let BusBackend::Managed { pid, .. } = bus.backend() else {
        panic!("expected a managed server");
    };
    println!("MANAGED_PID={pid}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // Held until the parent test kills this process.
    tokio::time::sleep(Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_server_dies_when_kinfra_is_killed() {
    use std::io::BufRead;
    nats_server_binary();
    let state = tempfile::tempdir().unwrap();
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "managed::child_process_holding_a_managed_bus",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_STATE, state.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(KillOnDrop)
        .unwrap();
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            // libtest prints its "test … ..." prefix on the same line.
            if let Some((_, pid)) = line.split_once("MANAGED_PID=") {
                let _ = tx.send(pid.trim().parse::<u32>().unwrap_or(0));
            }
        }
    });
    let pid = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the child never reported its managed server");
    assert!(alive(pid));
    // SIGKILL: no chance for the bus to stop its server.
    drop(child);
    wait_until(
        "the managed server to die with its parent",
        Duration::from_secs(5),
        || !alive(pid),
    )
    .await;
}
