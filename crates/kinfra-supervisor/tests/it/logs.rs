//! Log capture: last line before exit, lines without newline, long lines, floods with
//! rotation and no loss, followers.

use crate::support::*;
use kinfra_core::config::{ByteSize, RestartPolicy};
use kinfra_core::state::ServiceState;
use std::collections::BTreeSet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn final_line_before_exit_is_captured_even_without_newline() {
    let p = Project::new();
    let mut a = sh("echo first; printf 'last-without-newline'");
    a.restart = RestartPolicy::No;
    let mut b = sh("for i in $(seq 1 500); do echo line $i; done; echo goodbye >&2; exit 3");
    b.restart = RestartPolicy::No;
    let s = p.start(&services(vec![("a", a), ("b", b)])).await;
    expect_state(&s, "a", ServiceState::Completed, SECS(5)).await;
    expect_state(&s, "b", ServiceState::Failed, SECS(5)).await;
    assert!(
        wait_for(SECS(5), || {
            let m = messages(&s, "a");
            let i1 = m.iter().position(|x| x == "first");
            let i2 = m.iter().position(|x| x == "last-without-newline");
            i1.is_some() && i2 > i1
        })
        .await,
        "{:?}",
        messages(&s, "a")
    );
    // stdout and stderr are separate pipes: wait for the end of both.
    assert!(
        wait_for(SECS(5), || {
            let m = messages(&s, "b");
            m.contains(&"goodbye".to_string()) && m.contains(&"line 500".to_string())
        })
        .await
    );
    let m = messages(&s, "b");
    let lines: Vec<&String> = m.iter().filter(|x| x.starts_with("line ")).collect();
    assert_eq!(lines.len(), 500);
    assert_eq!(lines.last().map(|s| s.as_str()), Some("line 500"));
    s.shutdown(SECS(5)).await;
}

/// kinfra's own lines bracket the process's output: the spawn line first, the exit line after
/// the last thing the process wrote (on both streams).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_and_exit_lines_bracket_the_output() {
    let p = Project::new();
    let mut svc = sh("echo hello; echo oops >&2; printf 'last words'; exit 4");
    svc.restart = RestartPolicy::No;
    let s = p.start(&services(vec![("talk", svc)])).await;
    expect_state(&s, "talk", ServiceState::Failed, SECS(5)).await;
    assert!(
        wait_for(SECS(5), || messages(&s, "talk")
            .iter()
            .any(|m| m.starts_with("Exited with code 4")))
        .await
    );
    let m = messages(&s, "talk");
    let at = |f: &dyn Fn(&String) -> bool| m.iter().position(f).unwrap_or(usize::MAX);
    let started = at(&|x| x.starts_with("Started pid"));
    let exited = at(&|x| x.starts_with("Exited with code 4"));
    for own in ["hello", "oops", "last words"] {
        let i = at(&|x| x == own);
        assert!(started < i && i < exited, "{own:?} out of order in {m:?}");
    }
    s.shutdown(SECS(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lines_are_split() {
    let p = Project::new();
    let mut svc = sh("python3 -c \"print('x' * 5000); print('short')\"");
    svc.restart = RestartPolicy::No;
    svc.log.max_line = ByteSize(1024);
    let s = p.start(&services(vec![("long", svc)])).await;
    expect_state(&s, "long", ServiceState::Completed, SECS(5)).await;
    assert!(
        wait_for(SECS(5), || messages(&s, "long")
            .contains(&"short".to_string()))
        .await
    );
    let xs: Vec<usize> = messages(&s, "long")
        .iter()
        .filter(|m| m.starts_with('x'))
        .map(|m| m.len())
        .collect();
    assert_eq!(xs, vec![1024, 1024, 1024, 1024, 904]);
    s.shutdown(SECS(5)).await;
}

fn read_all_log_files(dir: &std::path::Path, name: &str, keep: u32) -> Vec<String> {
    let mut out = Vec::new();
    for n in (1..=keep).rev() {
        if let Ok(t) = std::fs::read_to_string(dir.join(format!("{name}.log.{n}"))) {
            out.extend(t.lines().map(str::to_owned));
        }
    }
    if let Ok(t) = std::fs::read_to_string(dir.join(format!("{name}.log"))) {
        out.extend(t.lines().map(str::to_owned));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_rotates_without_losing_lines_and_supervisor_stays_responsive() {
    let p = Project::new();
    const N: usize = 60_000;
    let mut flood = sh(&format!(
        "python3 -c \"import sys\nfor i in range({N}): sys.stdout.write('flood %06d %s\\n' % (i, 'y' * 40))\nsys.stdout.write('END')\""
    ));
    flood.restart = RestartPolicy::No;
    flood.log.max_size = ByteSize(256 * 1024);
    flood.log.keep = 40;
    flood.log.ring = 500;
    let s = p
        .start(&services(vec![
            ("flood", flood),
            ("calm", sh("exec sleep 30")),
        ]))
        .await;
    let mut follower = s.subscribe_logs();
    // Status answers at once while the flood runs.
    let t0 = std::time::Instant::now();
    for _ in 0..50 {
        let _ = s.status();
    }
    // A hang bound only: how fast status answers under load is measured in bench/.
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(30),
        "status hung"
    );
    expect_state(&s, "calm", ServiceState::Running, SECS(5)).await;
    assert!(
        wait_for(SECS(30), || messages(&s, "flood")
            .last()
            .map(|m| m == "END")
            .unwrap_or(false)
            || messages(&s, "flood")
                .iter()
                .rev()
                .take(3)
                .any(|m| m == "END"))
        .await,
        "END never arrived"
    );
    // Ring is bounded.
    assert!(s.logs(Some("flood"), 100_000).unwrap_or_default().len() <= 500);
    // Files hold every line once, in order. The file writer may be behind the live log (by
    // at most its channel): read them once the service is done and its last lines (its own
    // END and kinfra's exit line) are written.
    let log_dir = p.state_dir().join("logs");
    expect_state(&s, "flood", ServiceState::Completed, SECS(10)).await;
    assert!(
        wait_for(SECS(10), || {
            let files = read_all_log_files(&log_dir, "flood", 40);
            let has = |m: &str| {
                files
                    .iter()
                    .any(|l| l.contains(&format!("\"message\":\"{m}")))
            };
            has("END") && has("Exited with code 0")
        })
        .await,
        "the files never caught up with the live log"
    );
    assert!(log_dir.join("flood.log.1").exists(), "no rotation happened");
    let lines = read_all_log_files(&log_dir, "flood", 40);
    let mut seen = BTreeSet::new();
    let mut last = None;
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
        let msg = v["message"].as_str().unwrap_or("");
        if let Some(rest) = msg.strip_prefix("flood ") {
            let n: usize = rest[..6].parse().unwrap_or(usize::MAX);
            assert!(
                last.is_none_or(|l| n == l + 1),
                "out of order at {n} after {last:?}"
            );
            last = Some(n);
            seen.insert(n);
        }
    }
    assert_eq!(seen.len(), N, "lines lost");
    assert!(lines.iter().any(|l| l.contains("\"message\":\"END\"")));
    for f in std::fs::read_dir(&log_dir)
        .map(|d| d.filter_map(|e| e.ok()).collect::<Vec<_>>())
        .unwrap_or_default()
    {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        assert!(len <= 256 * 1024, "{:?} is {len} bytes", f.path());
    }
    // Followers got lines too.
    let (mut got, mut lagged) = (0, false);
    loop {
        match follower.try_recv() {
            Ok(l) => got += usize::from(l.service == "flood"),
            Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => lagged = true,
            Err(_) => break,
        }
    }
    assert!(got > 0 && lagged, "got {got}, lagged {lagged}");
    s.shutdown(SECS(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_services_logs_interleave_and_follow() {
    let p = Project::new();
    let s = p.start(&services(vec![])).await;
    let mut follower = s.subscribe_logs();
    s.apply(&services(vec![
        ("one", sh("echo from-one; exec sleep 30")),
        ("two", sh("echo from-two; exec sleep 30")),
    ]))
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        wait_for(SECS(5), || {
            let all: Vec<String> = s
                .logs(None, 100)
                .unwrap_or_default()
                .into_iter()
                .map(|l| format!("{}:{}", l.service, l.line.message))
                .collect();
            all.contains(&"one:from-one".to_string()) && all.contains(&"two:from-two".to_string())
        })
        .await
    );
    let mut followed = Vec::new();
    while let Ok(Ok(l)) = tokio::time::timeout(SECS(1), follower.recv()).await {
        followed.push(format!("{}:{}", l.service, l.line.message));
        if followed.contains(&"one:from-one".to_string())
            && followed.contains(&"two:from-two".to_string())
        {
            break;
        }
    }
    assert!(
        followed.contains(&"one:from-one".to_string()),
        "{followed:?}"
    );
    let all = s.logs(None, 100).unwrap_or_default();
    assert!(
        all.windows(2)
            .all(|w| w[0].line.timestamp <= w[1].line.timestamp)
    );
    assert_eq!(s.logs(None, 1).unwrap_or_default().len(), 1);
    assert!(s.logs(Some("nope"), 1).is_err());
    s.shutdown(SECS(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_flood_does_not_block_stop_or_status() {
    let p = Project::new();
    let mut svc = sh("exec yes 'endless flood line'");
    svc.log.max_size = ByteSize(64 * 1024);
    svc.log.keep = 1;
    svc.log.ring = 100;
    let s = p.start(&services(vec![("yes", svc)])).await;
    assert!(wait_for(SECS(5), || p.state_dir().join("logs/yes.log.1").exists()).await);
    let t0 = std::time::Instant::now();
    for _ in 0..20 {
        assert_eq!(state_of(&s, "yes"), ServiceState::Running);
    }
    s.act(kinfra_core::view::Action::Stop, "yes")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(30),
        "stop hung"
    );
    let kept = s
        .logs(Some("yes"), 1_000_000)
        .unwrap_or_else(|e| panic!("logs of yes: {e}"));
    assert!(
        !kept.is_empty() && kept.len() <= 100,
        "{} lines",
        kept.len()
    );
    assert!(!p.state_dir().join("logs/yes.log.2").exists());
    s.shutdown(SECS(5)).await;
}

/// A log file that stops taking writes (a stalled disk; here a FIFO nobody reads) holds up
/// neither the service nor its live log: later lines still reach `logs()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_log_file_does_not_hold_up_the_live_log() {
    use std::os::unix::fs::OpenOptionsExt;
    let p = Project::new();
    let dir = p.state_dir().join("logs");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir: {e}"));
    let fifo = dir.join("big.log");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .unwrap_or_else(|e| panic!("mkfifo: {e}"));
    // Open for reading and never read: the writer's open succeeds, its writes block once
    // the pipe holds 64 KiB.
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap_or_else(|e| panic!("open fifo: {e}"));
    let s = p
        .start(&services(vec![(
            "big",
            sh("head -c 300000 /dev/zero | tr '\\0' x; echo; echo marker; sleep 30"),
        )]))
        .await;
    assert!(
        wait_for(SECS(10), || messages(&s, "big")
            .contains(&"marker".to_string()))
        .await,
        "the line after the stall never reached the live log ({} lines there)",
        messages(&s, "big").len()
    );
    // Unblock the writer, so it ends with the supervisor.
    drop(reader);
    s.shutdown(SECS(5)).await;
}

/// Reads every log file of `name` (rotated ones first) as [`LogLine`]s.
fn read_log_lines(
    dir: &std::path::Path,
    name: &str,
    keep: u32,
) -> Vec<kinfra_core::status::LogLine> {
    read_all_log_files(dir, name, keep)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a LogLine ({e}): {l}")))
        .collect()
}

/// Lines are captured in batches (one per pipe read): a process that writes many lines and
/// exits at once still has every line in its files, once and in order, across rotations, and
/// its last line at the end of the ring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_of_a_process_exiting_at_once_is_in_the_files_and_the_ring() {
    use kinfra_core::status::LogStream;
    let p = Project::new();
    const M: usize = 100_000;
    let mut svc = sh(&format!("exec seq 1 {M}"));
    svc.restart = RestartPolicy::No;
    svc.log.max_size = ByteSize(256 * 1024);
    svc.log.keep = 100;
    svc.log.ring = 50;
    let s = p.start(&services(vec![("count", svc)])).await;
    expect_state(&s, "count", ServiceState::Completed, SECS(30)).await;
    let dir = p.state_dir().join("logs");
    let last = M.to_string();
    assert!(
        wait_for(SECS(30), || {
            let lines = read_log_lines(&dir, "count", 100);
            lines.iter().any(|l| l.message == last)
                && lines
                    .iter()
                    .any(|l| l.message.starts_with("Exited with code 0"))
        })
        .await,
        "the last line or the exit line never reached the files"
    );
    assert!(dir.join("count.log.1").exists(), "no rotation happened");
    assert!(!dir.join("count.log.100").exists(), "lines rotated away");
    let numbers: Vec<String> = read_log_lines(&dir, "count", 100)
        .into_iter()
        .filter(|l| l.stream == LogStream::Stdout)
        .map(|l| l.message)
        .collect();
    assert_eq!(numbers.len(), M, "lines lost or doubled");
    for (i, n) in numbers.iter().enumerate() {
        assert_eq!(*n, (i + 1).to_string(), "out of order at line {}", i + 1);
    }
    let ring = s
        .logs(Some("count"), 1000)
        .unwrap_or_else(|e| panic!("logs: {e}"));
    assert!(ring.len() <= 50, "{} lines in the ring", ring.len());
    let ring_last = ring
        .iter()
        .rev()
        .find(|l| l.line.stream == LogStream::Stdout)
        .map(|l| l.line.message.clone());
    assert_eq!(ring_last.as_deref(), Some(last.as_str()));
    s.shutdown(SECS(5)).await;
}

/// The file writer buffers, but a lone line of a process that stays alive reaches the file
/// and the followers without waiting for more output or for the exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_line_of_a_live_process_reaches_the_file_and_followers() {
    let p = Project::new();
    let s = p.start(&services(vec![])).await;
    let mut follower = s.subscribe_logs();
    s.apply(&services(vec![(
        "lone",
        sh("echo lone-line; exec sleep 30"),
    )]))
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let followed = tokio::time::timeout(SECS(10), async {
        loop {
            match follower.recv().await {
                Ok(l) if l.service == "lone" && l.line.message == "lone-line" => return true,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return false,
            }
        }
    })
    .await;
    assert_eq!(followed, Ok(true), "the follower never got the line");
    let file = p.state_dir().join("logs/lone.log");
    assert!(
        wait_for(SECS(10), || std::fs::read_to_string(&file)
            .is_ok_and(|t| t.contains("\"message\":\"lone-line\"")))
        .await,
        "the line never reached the file"
    );
    // Still running (it sleeps 30 s): the line was written while the process lived, not at
    // its exit. The state turns running after the readers start, so a loaded machine can
    // deliver the line first: wait for it (bounded) rather than read it once.
    assert!(
        wait_for(SECS(10), || state_of(&s, "lone") == ServiceState::Running).await,
        "lone is {:?}, not running",
        state_of(&s, "lone")
    );
    s.shutdown(SECS(5)).await;
}
