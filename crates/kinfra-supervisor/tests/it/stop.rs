//! Stopping: SIGTERM-ignoring processes, escaped descendants (setsid, double fork, cleared
//! environment), custom stop signals, reaping, and leftovers of a killed previous instance.

use crate::support::*;
use kinfra_core::config::{Dur, SignalName};
use kinfra_core::state::ServiceState;
use kinfra_core::view::Action;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kills_a_process_ignoring_sigterm_after_grace() {
    let p = Project::new();
    let mut svc = sh("trap '' TERM; echo ready; while true; do sleep 0.1; done");
    svc.stop_grace = Dur::from_millis(300);
    let s = p.start(&services(vec![("stubborn", svc)])).await;
    assert!(
        wait_for(SECS(5), || messages(&s, "stubborn")
            .contains(&"ready".to_string()))
        .await
    );
    let pid = status_of(&s, "stubborn").pid.unwrap_or(0) as i32;
    let t0 = Instant::now();
    s.act(Action::Stop, "stubborn")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let took = t0.elapsed();
    // The grace is waited for; the kill after it is shown by the exit signal below.
    assert!(took >= Duration::from_millis(290), "took {took:?}");
    assert!(
        kinfra_supervisor::procfs::stat(pid).is_none(),
        "main process not gone or not reaped"
    );
    assert!(!kinfra_supervisor::spawn::group_alive(pid));
    assert_eq!(
        status_of(&s, "stubborn").last_exit.and_then(|e| e.signal),
        Some(libc::SIGKILL)
    );
    assert!(
        messages(&s, "stubborn")
            .iter()
            .any(|m| m.starts_with("Did not stop within 300ms"))
    );
    s.shutdown(SECS(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kills_descendants_that_left_the_group() {
    let p = Project::new();
    p.write(
        "double_fork.py",
        r#"
import os, sys, time
pid = os.fork()
if pid == 0:
    os.setsid()
    if os.fork() == 0:
        with open("py.pid", "w") as f:
            f.write(str(os.getpid()))
        time.sleep(60)
    os._exit(0)
os.waitpid(pid, 0)
print("forked", flush=True)
time.sleep(60)
"#,
    );
    let setsid = sh("setsid sh -c 'echo $$$$ > setsid.pid; exec sleep 60' & \
         setsid env -i /bin/sh -c 'echo $$$$ > clean.pid; exec sleep 60' & \
         exec sleep 60");
    let py = sh("exec python3 double_fork.py");
    let s = p
        .start(&services(vec![("escaper", setsid), ("py", py)]))
        .await;
    let files = ["setsid.pid", "clean.pid", "py.pid"].map(|f| p.path().join(f));
    assert!(
        wait_for(SECS(10), || files.iter().all(|f| read_pid(f).is_some())).await,
        "pid files missing"
    );
    let pids: Vec<i32> = files.iter().filter_map(|f| read_pid(f)).collect();
    assert!(wait_for(SECS(5), || pids.iter().all(|p| alive(*p))).await);
    // They really left the group.
    let main_pid = status_of(&s, "escaper").pid.unwrap_or(0) as i32;
    let escaped_pgid = kinfra_supervisor::procfs::stat(pids[0]).map(|s| s.pgid);
    assert_ne!(escaped_pgid, Some(main_pid));
    s.act(Action::Stop, "escaper")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    s.act(Action::Stop, "py")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        wait_for(SECS(2), || pids.iter().all(|p| !alive(*p))).await,
        "survivors: {:?}",
        pids.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
    );
    assert_eq!(state_of(&s, "escaper"), ServiceState::Stopped);
    s.shutdown(SECS(5)).await;
}

/// A descendant that leaves the group, clears its environment (no tag) and then loses its
/// parent (reparented outside the service's tree) is only known from the supervisor's tree
/// walks while it was still below the service; the stop kills it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kills_a_descendant_recorded_before_it_escaped() {
    let p = Project::new();
    // The subshell starts the escaper, lives 2 s (the first walk is due 0.5 s after the
    // start), then exits: the escaper is reparented away from the service's tree.
    let svc = sh(
        "(setsid env -i /bin/sh -c 'echo $$$$ > gone.pid; exec sleep 60' & \
         echo $$$$ > sub.pid; exec sleep 2) & exec sleep 60",
    );
    let s = p.start(&services(vec![("svc", svc)])).await;
    let gone_file = p.path().join("gone.pid");
    assert!(
        wait_for(SECS(10), || read_pid(&gone_file).is_some()).await,
        "gone.pid missing"
    );
    let gone = read_pid(&gone_file).unwrap_or(0);
    let main_pid = status_of(&s, "svc").pid.unwrap_or(0) as i32;
    // Wait until it left the tree: its parent is neither the service nor below it.
    let left = wait_for(SECS(10), || {
        kinfra_supervisor::procfs::stat(gone).is_some_and(|st| {
            st.ppid != main_pid
                && !kinfra_supervisor::procfs::descendant_pids(main_pid)
                    .unwrap_or_default()
                    .contains(&gone)
        })
    })
    .await;
    assert!(left, "the escaper never left the service's tree");
    assert!(alive(gone));
    assert_ne!(
        kinfra_supervisor::procfs::stat(gone).map(|st| st.pgid),
        Some(main_pid)
    );
    s.act(Action::Stop, "svc")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        wait_for(SECS(3), || !alive(gone)).await,
        "the escaped descendant survived the stop"
    );
    s.shutdown(SECS(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_stop_signal_is_sent_first() {
    let p = Project::new();
    let mut svc = sh(
        "trap 'echo got INT; exit 0' INT; trap '' TERM; echo up; while true; do sleep 0.05; done",
    );
    svc.stop_signal = SignalName(libc::SIGINT);
    let s = p.start(&services(vec![("i", svc)])).await;
    assert!(wait_for(SECS(5), || messages(&s, "i").contains(&"up".to_string())).await);
    let t0 = Instant::now();
    s.act(Action::Stop, "i")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // SIGINT, not SIGKILL after the grace: the trap ran and exited 0 (asserted below).
    assert!(t0.elapsed() < Duration::from_secs(60), "stop hung");
    assert!(
        wait_for(SECS(2), || messages(&s, "i")
            .contains(&"got INT".to_string()))
        .await
    );
    assert_eq!(status_of(&s, "i").last_exit.and_then(|e| e.code), Some(0));
    s.shutdown(SECS(5)).await;
}

/// A previous instance that could not clean up (its runtime vanished without a shutdown, as
/// after a SIGKILL) left a process and an escaped grandchild; the next start kills both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_a_previous_instance_are_killed_at_start() {
    let p = Project::new();
    let opts = p.opts();
    // One escapee keeps the tag; one clears its environment and is known only from the
    // process-tree walk recorded in pids.json.
    let svc = sh("setsid sh -c 'echo $$$$ > escaped.pid; exec sleep 60' & \
         setsid env -i /bin/sh -c 'echo $$$$ > clean.pid; exec sleep 60' & \
         exec sleep 60");
    let list = services(vec![("old", svc)]);
    let list2 = list.clone();
    let clean_file = p.path().join("clean.pid");
    let clean_file2 = clean_file.clone();
    let pids_path = p.state_dir().join("pids.json");
    let main_pid = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        let (sup, pid) = rt.block_on(async move {
            let sup = kinfra_supervisor::Supervisor::start(&list2, opts)
                .await
                .ok()?;
            let ok = wait_for(SECS(5), || {
                sup.status().get("old").and_then(|s| s.pid).is_some()
            })
            .await;
            let pid = sup.status().get("old").and_then(|s| s.pid)?;
            let recorded = wait_for(SECS(5), || {
                let json = std::fs::read_to_string(&pids_path).unwrap_or_default();
                read_pid(&clean_file2).is_some_and(|c| json.contains(&format!(":{c},")))
            })
            .await;
            (ok && recorded).then_some((sup, pid))
        })?;
        // The runtime goes away without any shutdown: actors vanish, processes stay.
        drop(rt);
        drop(sup);
        Some(pid as i32)
    })
    .join()
    .ok()
    .flatten()
    .unwrap_or_else(|| panic!("first instance failed"));
    let escaped_file = p.path().join("escaped.pid");
    assert!(wait_for(SECS(5), || read_pid(&escaped_file).is_some()).await);
    let escaped = read_pid(&escaped_file).unwrap_or(0);
    assert!(
        alive(main_pid) && alive(escaped),
        "leftovers should exist before the second start"
    );
    let pids_json = std::fs::read_to_string(p.state_dir().join("pids.json")).unwrap_or_default();
    assert!(pids_json.contains(&main_pid.to_string()), "{pids_json}");

    let clean = read_pid(&clean_file).unwrap_or(0);
    assert!(alive(clean));
    let s = p.start(&list).await;
    assert!(!alive(main_pid), "old main process survived");
    assert!(!alive(clean), "old env-cleared escapee survived");
    assert!(
        wait_for(SECS(2), || !alive(escaped)).await,
        "old escaped process survived"
    );
    expect_state(&s, "old", ServiceState::Running, SECS(5)).await;
    assert_ne!(status_of(&s, "old").pid.map(|p| p as i32), Some(main_pid));
    s.shutdown(SECS(5)).await;
}

/// Run as a child process by `sigkill_of_kinfra_leaves_no_survivors` (ignored otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process entry point, run by sigkill_of_kinfra_leaves_no_survivors"]
async fn child_instance_helper() {
    let Ok(dir) = std::env::var("KINFRA_IT_CHILD_DIR") else {
        panic!(
            "helper process entry point: run by stop::sigkill_of_kinfra_leaves_no_survivors \
             with KINFRA_IT_CHILD_DIR set, not on its own"
        );
    };
    let dir = std::path::PathBuf::from(dir);
    let mut opts = kinfra_supervisor::SupervisorOptions::new("child", dir.join(".kinfra"));
    opts.base_dir = dir.clone();
    let svc = sh("setsid sh -c 'echo $$$$ > escaped.pid; exec sleep 60' & \
         sh -c 'echo $$$$ > grand.pid; exec sleep 60' & echo $$$$ > main.pid; wait");
    let _s = kinfra_supervisor::Supervisor::start(&services(vec![("svc", svc)]), opts)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(SECS(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_kinfra_leaves_no_survivors() {
    let p = Project::new();
    let Ok(exe) = std::env::current_exe() else {
        panic!("no current exe")
    };
    let mut child = std::process::Command::new(exe)
        .args([
            "--ignored",
            "--exact",
            "stop::child_instance_helper",
            "--nocapture",
        ])
        .env("KINFRA_IT_CHILD_DIR", p.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let main_file = p.path().join("main.pid");
    let escaped_file = p.path().join("escaped.pid");
    let grand_file = p.path().join("grand.pid");
    let ok = wait_for(SECS(20), || {
        read_pid(&main_file).is_some()
            && read_pid(&escaped_file).is_some()
            && read_pid(&grand_file).is_some()
    })
    .await;
    if !ok {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the child instance never started its service");
    }
    let main = read_pid(&main_file).unwrap_or(0);
    let escaped = read_pid(&escaped_file).unwrap_or(0);
    let grand = read_pid(&grand_file).unwrap_or(0);
    assert!(alive(main) && alive(escaped) && alive(grand));
    // SIGKILL "kinfra" (the child test process).
    let _ = child.kill();
    let _ = child.wait();
    // Its direct child dies with it (parent-death signal).
    assert!(
        wait_for(SECS(3), || !alive(main)).await,
        "the service outlived kinfra"
    );
    // The guardian kills the rest of its group and what left the group.
    assert!(
        wait_for(SECS(3), || !alive(grand)).await,
        "a grandchild in the service's group outlived kinfra"
    );
    assert!(
        wait_for(SECS(3), || !alive(escaped)).await,
        "the escaped process outlived kinfra"
    );
    // The next start finds nothing left (and would kill it).
    let s = p.start(&services(vec![])).await;
    assert!(
        wait_for(SECS(3), || !alive(escaped)).await,
        "the escaped process survived the next start"
    );
    s.shutdown(SECS(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_bounded_by_its_timeout() {
    let p = Project::new();
    let mut stubborn = sh("trap '' TERM; echo up; while true; do sleep 0.1; done");
    stubborn.stop_grace = Dur::from_secs(30);
    let s = p
        .start(&services(vec![
            ("stubborn", stubborn),
            ("plain", sh("exec sleep 30")),
        ]))
        .await;
    assert!(
        wait_for(SECS(5), || messages(&s, "stubborn")
            .contains(&"up".to_string()))
        .await
    );
    expect_state(&s, "plain", ServiceState::Running, SECS(5)).await;
    let pids: Vec<i32> = ["stubborn", "plain"]
        .iter()
        .filter_map(|n| status_of(&s, n).pid.map(|p| p as i32))
        .collect();
    // A process whose output is in the log, or that is Running, has its pid in the status.
    assert_eq!(pids.len(), 2, "a pid is missing: {:#?}", s.status());
    let t0 = Instant::now();
    s.shutdown(Duration::from_millis(500)).await;
    let took = t0.elapsed();
    // Bounded by its timeout, not by the 30 s grace (a generous bound well below it).
    assert!(took < Duration::from_secs(20), "shutdown took {took:?}");
    for pid in pids {
        assert!(
            kinfra_supervisor::procfs::stat(pid).is_none(),
            "{pid} survived or was not reaped"
        );
    }
    assert!(s.act(Action::Start, "plain").await.is_err());
    let pids_json = std::fs::read_to_string(p.state_dir().join("pids.json")).unwrap_or_default();
    assert_eq!(pids_json.trim(), "{}");
}
