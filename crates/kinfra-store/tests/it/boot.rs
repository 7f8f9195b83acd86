//! Boot: the state-dir files move into the store; runs left live by a killed instance are
//! checked and their processes stopped; the supervisor's persistence comes back.

use crate::support::*;
use kinfra_core::event::{EventKind, ExitInfo};
use kinfra_core::state::ServiceState;
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrates_ports_json_and_stopped_json() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("ports.json"),
        r#"{"api": 41234, "web": 41235}"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("stopped.json"), r#"["worker"]"#)
        .unwrap_or_else(|e| panic!("{e}"));
    let store = open(&disk_config(), dir.path()).await;
    let boot = store
        .boot(dir.path())
        .await
        .unwrap_or_else(|e| panic!("boot: {e}"));
    assert_eq!(boot.migrated.ports.len(), 2);
    assert_eq!(boot.persistence.ports.get("api"), Some(&41234));
    assert_eq!(boot.persistence.ports.get("web"), Some(&41235));
    assert!(boot.persistence.user_stopped.contains("worker"));
    assert!(!dir.path().join("ports.json").exists());
    assert!(dir.path().join("ports.json.migrated").exists());
    assert!(!dir.path().join("stopped.json").exists());
    assert!(dir.path().join("stopped.json.migrated").exists());
    store.shutdown(WAIT).await;

    // The next boot finds them in the store, with no file.
    let store = open(&disk_config(), dir.path()).await;
    let boot = store
        .boot(dir.path())
        .await
        .unwrap_or_else(|e| panic!("boot: {e}"));
    assert!(boot.migrated.ports.is_empty());
    assert_eq!(boot.persistence.ports.get("api"), Some(&41234));
    assert!(boot.persistence.user_stopped.contains("worker"));
    store.shutdown(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_ports_file_is_set_aside_not_silently_dropped() {
    let dir = tempdir();
    std::fs::write(dir.path().join("ports.json"), "{not json").unwrap_or_else(|e| panic!("{e}"));
    let store = open(&mem_config(), dir.path()).await;
    let migrated = store
        .migrate_state_files(dir.path())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(migrated.ports.is_empty());
    assert!(dir.path().join("ports.json.invalid").exists());
    store.shutdown(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_restart_counts_and_stops_come_back() {
    let dir = tempdir();
    let (store, events) = recording(&disk_config(), dir.path()).await;
    let sink = store.state_sink();
    events.emit(state("api", ServiceState::Pending, ServiceState::Starting));
    events.emit(EventKind::ProcessStarted {
        service: "api".into(),
        pid: 4_194_300,
    });
    events.emit(EventKind::ProcessExited {
        service: "api".into(),
        pid: 4_194_300,
        exit: ExitInfo {
            code: None,
            signal: Some(9),
        },
    });
    sink.history_changed(
        "api",
        kinfra_store::ServiceHistory {
            restarts: 1,
            last_exit: Some(ExitInfo {
                code: None,
                signal: Some(9),
            }),
        },
    );
    events.emit(EventKind::ProcessStarted {
        service: "api".into(),
        pid: 4_194_301,
    });
    events.emit(state("api", ServiceState::Running, ServiceState::Stopping));
    events.emit(EventKind::ProcessExited {
        service: "api".into(),
        pid: 4_194_301,
        exit: ExitInfo {
            code: Some(0),
            signal: None,
        },
    });
    sink.user_stopped_changed("api", true);
    settle(&store, &events).await;

    let runs = store
        .history(Some("api"), 10)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[0].pid, 4_194_301);
    assert_eq!(runs[0].reason.as_deref(), Some("stopped"));
    assert_eq!(runs[1].reason.as_deref(), Some("crashed"));
    assert_eq!(runs[1].exit.and_then(|e| e.signal), Some(9));
    assert!(
        store
            .live_runs()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .is_empty()
    );
    let stats = store.stats();
    assert_eq!(stats.failures, 0, "{stats:?}");
    assert_eq!(stats.acknowledged_seq, 6);
    store.shutdown(WAIT).await;

    let store = open(&disk_config(), dir.path()).await;
    let p = store.persistence().await.unwrap_or_else(|e| panic!("{e}"));
    let h = p
        .history
        .get("api")
        .copied()
        .unwrap_or_else(|| panic!("no history of api: {:?}", p.history));
    assert_eq!(h.restarts, 1);
    assert_eq!(h.last_exit.and_then(|e| e.code), Some(0));
    assert!(p.user_stopped.contains("api"));
    store.shutdown(WAIT).await;
}

/// A process that outlives its parent: `sleep` in its own process group.
fn orphanable_sleep() -> std::process::Child {
    use std::os::unix::process::CommandExt;
    Command::new("sleep")
        .arg("300")
        .process_group(0)
        .stdin(Stdio::null())
        // Not the writer's stdout: the parent reads that to its end.
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn sleep: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_pid_is_not_killed() {
    let dir = tempdir();
    let mut sleeper = orphanable_sleep();
    let pid = sleeper.id() as i32;
    let real = kinfra_supervisor::procfs::stat(pid).map(|s| s.start_time);
    let store = open(&mem_config(), dir.path()).await;
    // A run of an earlier instance whose PID now names another process.
    let db = store.kinfra_db().unwrap_or_else(|e| panic!("{e}"));
    db.query(
        "CREATE run:1 SET n = 1, boot = 'earlier', service = 'api', pid = $pid, \
         start_time = $st, started_ms = 1, started_at = '2026-01-01T00:00:00.000Z'",
    )
    .bind(serde_json::json!({"pid": pid, "st": real.unwrap_or(0) + 1}))
    .await
    .and_then(|r| r.check())
    .unwrap_or_else(|e| panic!("{e}"));
    let rec = store
        .recover_stale_runs()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(rec.killed.is_empty());
    assert_eq!(rec.lost.len(), 1);
    assert!(alive(pid));
    assert!(
        store
            .live_runs()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .is_empty()
    );
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    store.shutdown(WAIT).await;
}

/// The writer side of the SIGKILL test, not a test on its own: the parent test runs this
/// binary with `--ignored --exact` and `KINFRA_STORE_IT_WRITER` set. It records a process that
/// outlives it, then a burst of events, printing each acknowledged seq, until it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process entry point, run by sigkill_mid_burst_loses_no_acknowledged_write_and_next_boot_cleans_up"]
// The sleeper is left running on purpose: the recovery under test must find and stop it.
#[allow(clippy::zombie_processes)]
async fn writer_child() {
    let Ok(dir) = std::env::var("KINFRA_STORE_IT_WRITER") else {
        panic!(
            "helper process entry point: run by \
             boot::sigkill_mid_burst_loses_no_acknowledged_write_and_next_boot_cleans_up \
             with KINFRA_STORE_IT_WRITER set, not on its own"
        );
    };
    let dir = std::path::PathBuf::from(dir);
    let (store, events) = recording(&disk_config(), &dir).await;
    let sleeper = orphanable_sleep();
    println!("IT:boot {}", store.boot_id());
    println!("IT:sleeper {}", sleeper.id());
    events.emit(EventKind::ProcessStarted {
        service: "victim".into(),
        pid: sleeper.id(),
    });
    let mut acked = store.subscribe_acknowledged();
    tokio::spawn(async move {
        while acked.changed().await.is_ok() {
            let seq = *acked.borrow_and_update();
            println!("IT:acked {seq}");
        }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        for _ in 0..20 {
            events.emit(state(
                "burst",
                ServiceState::Starting,
                ServiceState::Running,
            ));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_burst_loses_no_acknowledged_write_and_next_boot_cleans_up() {
    use std::io::BufRead;
    let dir = tempdir();
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
    let mut child = Command::new(exe)
        .args([
            "--ignored",
            "--exact",
            "boot::writer_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KINFRA_STORE_IT_WRITER", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn writer: {e}"));
    let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut boot = String::new();
    let mut sleeper = 0i32;
    let mut max_acked = 0u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    // Kill it in the middle of the burst, after a few hundred acknowledged events.
    while max_acked < 400 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            let _ = child.kill();
            panic!("the writer did not acknowledge 400 events in time (got {max_acked})");
        };
        // libtest may print `test NAME ... ` on the same line before the test's output.
        let line = line.find("IT:").map_or("", |i| &line[i..]);
        if let Some(b) = line.strip_prefix("IT:boot ") {
            boot = b.to_owned();
        } else if let Some(p) = line.strip_prefix("IT:sleeper ") {
            sleeper = p.parse().unwrap_or(0);
        } else if let Some(a) = line.strip_prefix("IT:acked ") {
            max_acked = max_acked.max(a.parse().unwrap_or(0));
        }
    }
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    // Every line written before the kill counts as acknowledged.
    let _ = reader.join();
    while let Ok(line) = rx.try_recv() {
        let line = line.find("IT:").map_or("", |i| &line[i..]);
        if let Some(a) = line.strip_prefix("IT:acked ") {
            max_acked = max_acked.max(a.parse().unwrap_or(0));
        }
    }
    assert!(!boot.is_empty() && sleeper > 1);
    assert!(
        alive(sleeper),
        "the orphan should outlive the killed writer"
    );

    let store = open(&disk_config(), dir.path()).await;
    let stored = store
        .recent_events(1_000_000)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let seqs: std::collections::BTreeSet<u64> = stored
        .iter()
        .filter(|e| e.boot == boot)
        .map(|e| e.event.seq)
        .collect();
    let missing: Vec<u64> = (1..=max_acked).filter(|s| !seqs.contains(s)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged up to {max_acked}, missing {} of them (first {:?})",
        missing.len(),
        missing.first()
    );
    let live = store.live_runs().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(live.iter().any(|r| r.pid as i32 == sleeper), "{live:?}");

    let b = store
        .boot(dir.path())
        .await
        .unwrap_or_else(|e| panic!("boot: {e}"));
    assert_eq!(
        b.recovery
            .killed
            .iter()
            .map(|r| (r.service.as_str(), r.pid as i32))
            .collect::<Vec<_>>(),
        vec![("victim", sleeper)]
    );
    // The store only finds it; stopping it is the supervisor's job at boot.
    let stopped = kinfra_supervisor::stop_left_running(&b.recovery.left_running()).await;
    assert_eq!(
        stopped.iter().map(|p| p.pid).collect::<Vec<_>>(),
        vec![sleeper]
    );
    assert!(
        wait_for(WAIT, || !alive(sleeper)).await,
        "the stale process is still running"
    );
    let runs = store
        .history(Some("victim"), 5)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        runs.first().and_then(|r| r.reason.as_deref()),
        Some("killed at boot")
    );
    assert!(
        store
            .live_runs()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .is_empty()
    );
    store.shutdown(WAIT).await;
}
