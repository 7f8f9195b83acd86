//! Bad input and faults at boot: a clear error naming the path or URL, never a panic, never a
//! silently empty state.

use crate::support::*;
use kinfra_store::{Store, StoreError};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_opener_is_refused_naming_the_path() {
    let dir = tempdir();
    let first = open(&disk_config(), dir.path()).await;
    match Store::open(&disk_config(), dir.path()).await {
        Err(e @ StoreError::Locked { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&dir.path().join("db").display().to_string()),
                "{msg}"
            );
            assert!(
                msg.contains(&format!("pid {}", std::process::id())),
                "{msg}"
            );
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    first.shutdown(WAIT).await;
    // Released on shutdown.
    let again = open(&disk_config(), dir.path()).await;
    again.shutdown(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_remote_url_is_named() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempdir();
    let mut config = mem_config();
    config.url = Some(format!("ws://root:hunter22@127.0.0.1:{port}"));
    match Store::open(&config, dir.path()).await {
        Err(e @ StoreError::Remote { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&format!("ws://127.0.0.1:{port}")), "{msg}");
            assert!(!msg.contains("hunter22"), "{msg}");
        }
        other => panic!("expected Remote, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_remote_times_out_naming_the_url() {
    // Accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let dir = tempdir();
    let mut config = mem_config();
    config.url = Some(format!("ws://127.0.0.1:{port}"));
    config.connect_timeout = kinfra_core::config::Dur::from_millis(500);
    let started = std::time::Instant::now();
    match Store::open(&config, dir.path()).await {
        Err(e @ StoreError::Remote { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&format!("ws://127.0.0.1:{port}")), "{msg}");
            assert!(msg.contains("no answer"), "{msg}");
        }
        other => panic!("expected Remote, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(60), "hung");
    drop(listener);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_that_is_a_file_is_named() {
    let dir = tempdir();
    std::fs::write(dir.path().join("db"), "not a directory").unwrap_or_else(|e| panic!("{e}"));
    match Store::open(&disk_config(), dir.path()).await {
        Err(e @ StoreError::DataDir { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&dir.path().join("db").display().to_string()),
                "{msg}"
            );
        }
        other => panic!("expected DataDir, got {other:?}"),
    }
}

/// Overwrites every regular file under `dir` with garbage of the same length.
fn scramble(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n != "LOCK") {
                let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0).max(64);
                let junk: Vec<u8> = (0..len).map(|i| (i * 7 + 13) as u8).collect();
                if std::fs::write(&p, junk).is_ok() {
                    n += 1;
                }
            }
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_data_dir_is_an_error_not_an_empty_store() {
    let dir = tempdir();
    let (store, events) = recording(&disk_config(), dir.path()).await;
    for i in 0..50u16 {
        events.emit(kinfra_core::EventKind::PortAssigned {
            service: format!("s{i}"),
            port: 40000 + i,
        });
    }
    settle(&store, &events).await;
    store.shutdown(WAIT).await;
    assert!(scramble(&dir.path().join("db")) > 0);
    match Store::open(&disk_config(), dir.path()).await {
        Err(e) => {
            let msg = e.to_string();
            eprintln!("corrupt data dir: {msg}");
            assert!(
                msg.contains(&dir.path().join("db").display().to_string()),
                "{msg}"
            );
        }
        Ok(store) => {
            eprintln!("corrupt data dir: opened");
            // Opening is acceptable only if the data is all there.
            let ports = store.ports().await;
            let n = ports.as_ref().map(|p| p.len()).unwrap_or(0);
            store.shutdown(WAIT).await;
            assert_eq!(n, 50, "a corrupt store opened with missing data: {ports:?}");
        }
    }
}

/// A tiny tmpfs mounted for the test, unmounted on drop. Mounting needs root (CAP_SYS_ADMIN)
/// and `mount` from util-linux; without them the test fails saying so.
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(options: &str) -> Tmpfs {
        let dir = tempdir();
        let path = dir.path().join("mnt");
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(&path)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run mount ({e}): this test mounts a tmpfs; \
                     install util-linux (apt-get install util-linux) or run ./x test"
                )
            });
        assert!(
            out.status.success(),
            "cannot mount a tmpfs on {} ({}): this test needs root (CAP_SYS_ADMIN) to mount one; \
             run it as root, as ./x test does in CI",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Tmpfs { path, _dir: dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_data_dir_is_named() {
    let fs = Tmpfs::mount("size=4m,ro");
    match Store::open(&disk_config(), &fs.path).await {
        Err(e @ (StoreError::DataDir { .. } | StoreError::Open { .. })) => {
            let msg = e.to_string();
            assert!(msg.contains(&fs.path.display().to_string()), "{msg}");
        }
        other => panic!("expected DataDir or Open, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_an_error_at_boot_and_counted_while_running() {
    let fs = Tmpfs::mount("size=2m");
    // Fill the disk: opening must fail with the path named.
    let filler = fs.path.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 4 << 20]);
    match Store::open(&disk_config(), &fs.path).await {
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains(&fs.path.display().to_string()), "{msg}");
        }
        Ok(store) => {
            store.shutdown(WAIT).await;
            panic!("opened a store on a full disk");
        }
    }
    // Room to open; then the disk fills while running: failures are counted and logged,
    // nothing blocks, and nothing unwritten is acknowledged.
    let _ = std::fs::remove_file(&filler);
    let (store, events) = recording(&disk_config(), &fs.path).await;
    for i in 0..20u16 {
        events.emit(kinfra_core::EventKind::PortAssigned {
            service: format!("before{i}"),
            port: 41000 + i,
        });
    }
    settle(&store, &events).await;
    let _ = std::fs::write(&filler, vec![0u8; 4 << 20]);
    let big = "x".repeat(64 * 1024);
    for _ in 0..64 {
        events.emit(kinfra_core::EventKind::ConfigRejected { error: big.clone() });
    }
    let counted = wait_for(WAIT, || store.stats().failures > 0).await;
    let stats = store.stats();
    assert!(counted, "no failure counted on a full disk: {stats:?}");
    assert!(stats.last_error.is_some());
    assert!(stats.acknowledged_seq < events.next_seq() - 1, "{stats:?}");
    let acked = stats.acknowledged_seq;
    assert!(
        acked >= 20,
        "the writes before the disk filled were acknowledged: {stats:?}"
    );
    // Shutdown is bounded even while writes fail.
    let started = std::time::Instant::now();
    store.shutdown(Duration::from_secs(2)).await;
    assert!(started.elapsed() < Duration::from_secs(60), "hung");

    // With space again, the next boot has everything that was acknowledged.
    let _ = std::fs::remove_file(&filler);
    let store = open(&disk_config(), &fs.path).await;
    assert_eq!(store.ports().await.map(|p| p.len()).ok(), Some(20));
    let seqs: Vec<u64> = store
        .recent_events(10_000)
        .await
        .unwrap_or_else(|e| panic!("recent events after the full disk: {e}"))
        .iter()
        .map(|e| e.event.seq)
        .collect();
    assert!(
        (1..=acked).all(|s| seqs.contains(&s)),
        "acked {acked}, stored {seqs:?}"
    );
    store.shutdown(WAIT).await;
}
