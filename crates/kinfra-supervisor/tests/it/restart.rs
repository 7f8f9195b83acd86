//! Restart policies, backoff timing, fast restart and the crash-loop guard.

use crate::support::*;
use kinfra_core::EventKind;
use kinfra_core::config::{CrashLoopConfig, Dur, RestartPolicy};
use kinfra_core::state::ServiceState;
use kinfra_core::view::Action;
use std::time::{Duration, Instant};

/// A script that counts its runs in `count` and exits with `code` until run `until`, then
/// sleeps.
fn counting(code: i32, until: u32) -> String {
    format!(
        "n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; echo run $n; \
         if [ $n -ge {until} ]; then exec sleep 30; fi; exit {code}"
    )
}

fn runs(p: &Project) -> u32 {
    std::fs::read_to_string(p.path().join("count"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_no_completes_or_fails_without_restart() {
    let p = Project::new();
    let mut ok = sh("echo done; exit 0");
    ok.restart = RestartPolicy::No;
    let mut bad = sh("exit 3");
    bad.restart = RestartPolicy::No;
    let sup = p.start(&services(vec![("ok", ok), ("bad", bad)])).await;
    expect_state(&sup, "ok", ServiceState::Completed, SECS(5)).await;
    expect_state(&sup, "bad", ServiceState::Failed, SECS(5)).await;
    let bad_st = status_of(&sup, "bad");
    assert_eq!(bad_st.status_message, "Exited with code 3");
    assert_eq!(bad_st.last_exit.and_then(|e| e.code), Some(3));
    assert_eq!(bad_st.restarts, 0);
    assert_eq!(
        status_of(&sup, "ok").status_message,
        "Completed successfully"
    );
    // Still not restarted a little later.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(status_of(&sup, "bad").state, ServiceState::Failed);
    sup.shutdown(SECS(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_restarts_failures_only() {
    let p = Project::new();
    let mut svc = sh(&counting(1, 3));
    svc.restart = RestartPolicy::OnFailure;
    let sup = p.start(&services(vec![("svc", svc)])).await;
    assert!(
        wait_for(SECS(10), || runs(&p) >= 3).await,
        "runs: {}",
        runs(&p)
    );
    expect_state(&sup, "svc", ServiceState::Running, SECS(5)).await;
    assert_eq!(status_of(&sup, "svc").restarts, 2);
    assert_eq!(
        status_of(&sup, "svc").last_exit.and_then(|e| e.code),
        Some(1)
    );

    let p2 = Project::new();
    let mut zero = sh("exit 0");
    zero.restart = RestartPolicy::OnFailure;
    let sup2 = p2.start(&services(vec![("zero", zero)])).await;
    expect_state(&sup2, "zero", ServiceState::Completed, SECS(5)).await;
    assert_eq!(status_of(&sup2, "zero").restarts, 0);
    sup.shutdown(SECS(5)).await;
    sup2.shutdown(SECS(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_restarts_clean_exits_and_unless_stopped_respects_stop() {
    let p = Project::new();
    let mut svc = sh(&counting(0, 3));
    svc.restart = RestartPolicy::Always;
    let sup = p.start(&services(vec![("svc", svc)])).await;
    assert!(
        wait_for(SECS(10), || runs(&p) >= 3).await,
        "runs: {}",
        runs(&p)
    );
    expect_state(&sup, "svc", ServiceState::Running, SECS(5)).await;
    assert_eq!(status_of(&sup, "svc").restarts, 2);
    sup.shutdown(SECS(5)).await;

    let p = Project::new();
    let mut svc = sh("exec sleep 30");
    svc.restart = RestartPolicy::UnlessStopped;
    let sup = p.start(&services(vec![("svc", svc)])).await;
    expect_state(&sup, "svc", ServiceState::Running, SECS(5)).await;
    // Killed from outside: restarted.
    let pid = status_of(&sup, "svc").pid.unwrap_or(0) as i32;
    // SAFETY: kill on a pid we just read.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(
        wait_for(SECS(5), || status_of(&sup, "svc")
            .pid
            .is_some_and(|p| p as i32 != pid))
        .await,
        "not restarted: {:#?}",
        status_of(&sup, "svc")
    );
    assert_eq!(
        status_of(&sup, "svc").last_exit.and_then(|e| e.signal),
        Some(libc::SIGKILL)
    );
    // Stopped by the user: stays stopped.
    sup.act(Action::Stop, "svc")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(state_of(&sup, "svc"), ServiceState::Stopped);
    assert_eq!(status_of(&sup, "svc").pid, None);
    sup.shutdown(SECS(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_without_backoff_spawns_within_milliseconds() {
    let p = Project::new();
    let mut svc = sh(&counting(1, 12));
    svc.restart = RestartPolicy::Always;
    svc.crash_loop.max_failures = 0;
    let sup = p.start(&services(vec![("fast", svc)])).await;
    let mut rx = sup.events().subscribe();
    // How fast is measured in bench/ (restart latency); here: each exit is followed by a
    // restart scheduled with no delay and a start, never by the backoff state.
    let mut kinds = Vec::new();
    let deadline = Instant::now() + SECS(60);
    while kinds.iter().filter(|k| *k == "started").count() < 8 && Instant::now() < deadline {
        match tokio::time::timeout(SECS(30), rx.recv()).await {
            Ok(Ok(e)) => match e.kind {
                EventKind::ProcessExited { .. } => kinds.push("exited".to_owned()),
                EventKind::RestartScheduled { delay_ms, .. } => {
                    kinds.push(format!("scheduled in {delay_ms} ms"));
                }
                EventKind::ProcessStarted { .. } => kinds.push("started".to_owned()),
                EventKind::StateChanged {
                    to: ServiceState::Backoff,
                    ..
                } => kinds.push("backoff".to_owned()),
                _ => {}
            },
            _ => break,
        }
    }
    let restarts = kinds
        .windows(3)
        .filter(|w| w == &["exited", "scheduled in 0 ms", "started"])
        .count();
    assert!(restarts >= 5, "too few immediate restarts: {kinds:?}");
    assert!(
        kinds
            .iter()
            .all(|k| !k.starts_with("scheduled") || k == "scheduled in 0 ms"),
        "a restart was delayed: {kinds:?}"
    );
    assert!(!kinds.iter().any(|k| k == "backoff"), "{kinds:?}");
    sup.shutdown(SECS(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_delays_grow_and_are_honoured() {
    let p = Project::new();
    let mut svc = sh("exit 1");
    svc.restart = RestartPolicy::OnFailure;
    svc.backoff.initial = Dur::from_millis(100);
    svc.backoff.factor = 2.0;
    svc.backoff.jitter = 0.0;
    svc.backoff.max = Dur::from_millis(300);
    let mut rx_holder = None;
    let sup = {
        let s = p.start(&services(vec![])).await;
        rx_holder.replace(s.events().subscribe());
        s.apply(&services(vec![("b", svc)]))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        s
    };
    let Some(mut rx) = rx_holder else {
        panic!("no receiver")
    };
    let mut delays = Vec::new();
    let mut gaps = Vec::new();
    let mut exited_at = None;
    while delays.len() < 4 {
        let Ok(Ok(e)) = tokio::time::timeout(SECS(5), rx.recv()).await else {
            break;
        };
        match e.kind {
            EventKind::RestartScheduled { delay_ms, .. } => delays.push(delay_ms),
            EventKind::ProcessExited { .. } => exited_at = Some(Instant::now()),
            EventKind::ProcessStarted { .. } => {
                if let Some(t) = exited_at.take() {
                    gaps.push(t.elapsed());
                }
            }
            _ => {}
        }
    }
    assert_eq!(delays, vec![100, 200, 300, 300]);
    assert!(
        gaps.iter()
            .zip([100u64, 200, 300])
            .all(|(g, d)| *g >= Duration::from_millis(d - 5)),
        "gaps {gaps:?}"
    );
    assert_eq!(gaps.len(), 3, "gaps {gaps:?}");
    sup.shutdown(SECS(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_resets_after_a_stable_run() {
    let p = Project::new();
    let mut svc = sh("sleep 0.3; exit 1");
    svc.backoff.initial = Dur::from_millis(50);
    svc.backoff.jitter = 0.0;
    svc.backoff.reset_after = Dur::from_millis(200);
    let s = p.start(&services(vec![])).await;
    let mut rx = s.events().subscribe();
    s.apply(&services(vec![("r", svc)]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut attempts = Vec::new();
    while attempts.len() < 3 {
        let Ok(Ok(e)) = tokio::time::timeout(SECS(5), rx.recv()).await else {
            break;
        };
        if let EventKind::RestartScheduled {
            attempt, delay_ms, ..
        } = e.kind
        {
            attempts.push((attempt, delay_ms));
        }
    }
    assert_eq!(attempts, vec![(1, 50), (1, 50), (1, 50)]);
    s.shutdown(SECS(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_guard_fails_the_service_until_a_manual_start() {
    let p = Project::new();
    let mut svc = sh("echo crash; exit 2");
    svc.restart = RestartPolicy::Always;
    svc.crash_loop = CrashLoopConfig {
        max_failures: 4,
        window: Dur::from_secs(10),
    };
    let s = p.start(&services(vec![])).await;
    let mut rx = s.events().subscribe();
    s.apply(&services(vec![("loop", svc)]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    expect_state(&s, "loop", ServiceState::Failed, SECS(10)).await;
    let st = status_of(&s, "loop");
    assert_eq!(
        st.status_message,
        "Crash loop: 4 failures in 10s; start it by hand"
    );
    assert_eq!(st.restarts, 3);
    let mut crash_events = 0;
    let mut started = 0;
    while let Ok(e) = rx.try_recv() {
        match e.kind {
            EventKind::CrashLoop { failures, .. } => {
                assert_eq!(failures, 4);
                crash_events += 1;
            }
            EventKind::ProcessStarted { .. } => started += 1,
            _ => {}
        }
    }
    assert_eq!((crash_events, started), (1, 4));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        state_of(&s, "loop"),
        ServiceState::Failed,
        "restarted after the guard tripped"
    );
    // A manual start clears the guard: it runs (and loops) again.
    s.act(Action::Start, "loop")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    expect_state(&s, "loop", ServiceState::Failed, SECS(10)).await;
    assert_eq!(status_of(&s, "loop").restarts, 6);
    s.shutdown(SECS(5)).await;
}

/// Backoff with a paused clock: virtual time advances exactly by the scheduled delays.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn backoff_timing_with_paused_clock() {
    let (_guard_tx, guard_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = guard_rx.recv_timeout(SECS(60)) {
            eprintln!("backoff_timing_with_paused_clock hung");
            std::process::exit(1);
        }
    });
    let p = Project::new();
    let mut svc = sh("exit 1");
    svc.backoff.initial = Dur::from_secs(10);
    svc.backoff.factor = 3.0;
    svc.backoff.jitter = 0.0;
    svc.backoff.max = Dur::from_secs(60);
    svc.crash_loop.max_failures = 0;
    let s = p.start(&services(vec![])).await;
    let mut rx = s.events().subscribe();
    s.apply(&services(vec![("p", svc)]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut gaps = Vec::new();
    let mut exited_at = None;
    while gaps.len() < 4 {
        let Ok(e) = rx.recv().await else { break };
        match e.kind {
            EventKind::ProcessExited { .. } => exited_at = Some(tokio::time::Instant::now()),
            EventKind::ProcessStarted { .. } => {
                if let Some(t) = exited_at.take() {
                    gaps.push(t.elapsed().as_secs());
                }
            }
            _ => {}
        }
    }
    assert_eq!(gaps, vec![10, 30, 60, 60]);
    s.act(Action::Stop, "p")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    s.shutdown(SECS(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unless_stopped_stays_stopped_across_runs_until_started() {
    let p = Project::new();
    let mut keep = sh("exec sleep 30");
    keep.restart = RestartPolicy::UnlessStopped;
    let mut always = sh("exec sleep 30");
    always.restart = RestartPolicy::Always;
    let list = services(vec![("keep", keep), ("always", always)]);
    let s = p.start(&list).await;
    expect_state(&s, "keep", ServiceState::Running, SECS(5)).await;
    s.act(Action::Stop, "keep")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    s.act(Action::Stop, "always")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    s.shutdown(SECS(5)).await;
    drop(s);

    let s = p.start(&list).await;
    expect_state(&s, "always", ServiceState::Running, SECS(5)).await;
    let st = status_of(&s, "keep");
    assert_eq!(st.state, ServiceState::Stopped);
    assert_eq!(st.pid, None);
    assert!(
        st.status_message.contains("unless-stopped"),
        "{}",
        st.status_message
    );
    s.act(Action::Start, "keep")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    expect_state(&s, "keep", ServiceState::Running, SECS(5)).await;
    s.shutdown(SECS(5)).await;
    drop(s);
    // Started by hand: runs again on the next start.
    let s = p.start(&list).await;
    expect_state(&s, "keep", ServiceState::Running, SECS(5)).await;
    s.shutdown(SECS(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_state_says_when_it_restarts() {
    let p = Project::new();
    let mut svc = sh("exit 1");
    svc.backoff.initial = Dur::from_secs(20);
    svc.backoff.jitter = 0.0;
    let s = p.start(&services(vec![("slow", svc)])).await;
    expect_state(&s, "slow", ServiceState::Backoff, SECS(5)).await;
    let st = status_of(&s, "slow");
    assert_eq!(st.status_message, "Exited with code 1, restarting in 20.0s");
    assert_eq!(st.pid, None);
    // Stop during backoff cancels the restart; start runs it at once.
    s.act(Action::Stop, "slow")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(state_of(&s, "slow"), ServiceState::Stopped);
    s.act(Action::Start, "slow")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        wait_for(SECS(5), || {
            let st = status_of(&s, "slow");
            st.state == ServiceState::Backoff && st.restarts == 2
        })
        .await,
        "{:#?}",
        status_of(&s, "slow")
    );
    s.shutdown(SECS(5)).await;
}
