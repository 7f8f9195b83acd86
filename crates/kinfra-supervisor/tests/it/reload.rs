//! Reload: the diff (added, removed, changed, unchanged), rejection of an invalid set, and
//! file-watch restarts.

use crate::support::*;
use kinfra_core::EventKind;
use kinfra_core::config::{DependCondition, Dur, WatchConfig};
use kinfra_core::state::ServiceState;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_starts_added_stops_removed_restarts_changed_only() {
    let p = Project::new();
    let list = services(vec![
        ("a", sh("exec sleep 30")),
        ("b", sh("echo b-v1; exec sleep 30")),
        ("c", sh("exec sleep 30")),
    ]);
    let s = p.start(&list).await;
    for n in ["a", "b", "c"] {
        expect_state(&s, n, ServiceState::Running, SECS(5)).await;
    }
    let pid = |n: &str| status_of(&s, n).pid;
    let (a1, b1, c1) = (pid("a"), pid("b"), pid("c"));
    let mut rx = s.events().subscribe();
    let new = services(vec![
        ("a", sh("exec sleep 30")),
        ("b", sh("echo b-v2; exec sleep 30")),
        ("d", sh("exec sleep 30")),
    ]);
    let summary = s.apply(&new).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(summary.added, vec!["d"]);
    assert_eq!(summary.removed, vec!["c"]);
    assert_eq!(summary.changed, vec!["b"]);
    assert_eq!(summary.unchanged, vec!["a"]);
    expect_state(&s, "d", ServiceState::Running, SECS(5)).await;
    expect_state(&s, "b", ServiceState::Running, SECS(5)).await;
    assert_eq!(pid("a"), a1, "unchanged service was touched");
    assert_ne!(pid("b"), b1);
    assert!(wait_for(SECS(5), || messages(&s, "b").contains(&"b-v2".to_string())).await);
    assert!(!s.status().contains_key("c"));
    assert!(!alive(c1.unwrap_or(0) as i32), "removed service still runs");
    let mut reloaded = false;
    while let Ok(e) = rx.try_recv() {
        if let EventKind::ConfigReloaded {
            added,
            removed,
            changed,
        } = e.kind
        {
            assert_eq!(
                (added, removed, changed),
                (
                    vec!["d".to_string()],
                    vec!["c".to_string()],
                    vec!["b".to_string()]
                )
            );
            reloaded = true;
        }
    }
    assert!(reloaded);

    // An invalid set is rejected and nothing changes.
    let mut bad = new.clone();
    if let Some(a) = bad.get_mut("a") {
        a.depends_on.0.insert("d".into(), DependCondition::Started);
    }
    if let Some(d) = bad.get_mut("d") {
        d.depends_on.0.insert("a".into(), DependCondition::Started);
    }
    let before = (pid("a"), pid("b"), pid("d"));
    assert!(s.apply(&bad).await.is_err());
    assert_eq!((pid("a"), pid("b"), pid("d")), before);
    let mut rejected = false;
    while let Ok(e) = rx.try_recv() {
        rejected |= matches!(e.kind, EventKind::ConfigRejected { .. });
    }
    assert!(rejected);
    s.shutdown(SECS(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_changes_restart_the_service_debounced_and_ignored_paths_do_not() {
    let p = Project::new();
    p.write("src/app.txt", "v1");
    p.write("src/target/out.bin", "x");
    let mut svc = sh("exec sleep 30");
    svc.watch = Some(WatchConfig {
        paths: vec!["src".into()],
        ignore: vec!["*.tmp".into()],
        debounce: Dur::from_millis(150),
    });
    let s = p.start(&services(vec![("w", svc)])).await;
    expect_state(&s, "w", ServiceState::Running, SECS(5)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid1 = status_of(&s, "w").pid;
    // Ignored changes: no restart.
    p.write("src/target/out.bin", "y");
    p.write("src/scratch.tmp", "y");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(status_of(&s, "w").pid, pid1);
    assert_eq!(status_of(&s, "w").restarts, 0);
    // A burst of changes: one restart.
    for i in 0..5 {
        p.write("src/app.txt", &format!("v{i}"));
    }
    assert!(
        wait_for(SECS(5), || status_of(&s, "w")
            .pid
            .is_some_and(|p| Some(p) != pid1))
        .await,
        "not restarted"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(status_of(&s, "w").restarts, 1);
    expect_state(&s, "w", ServiceState::Running, SECS(5)).await;
    s.shutdown(SECS(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_reruns_a_failed_service_but_not_a_stopped_one() {
    let p = Project::new();
    p.write("app/fixed", "no");
    let watch = WatchConfig {
        paths: vec!["app".into()],
        ignore: vec![],
        debounce: Dur::from_millis(100),
    };
    let mut crashy = sh("grep -q yes app/fixed || exit 1; exec sleep 30");
    crashy.restart = kinfra_core::config::RestartPolicy::No;
    crashy.watch = Some(watch.clone());
    let mut stopped = sh("exec sleep 30");
    stopped.watch = Some(watch);
    let s = p
        .start(&services(vec![("crashy", crashy), ("stopped", stopped)]))
        .await;
    expect_state(&s, "crashy", ServiceState::Failed, SECS(5)).await;
    expect_state(&s, "stopped", ServiceState::Running, SECS(5)).await;
    s.act(kinfra_core::view::Action::Stop, "stopped")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    p.write("app/fixed", "yes");
    expect_state(&s, "crashy", ServiceState::Running, SECS(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(state_of(&s, "stopped"), ServiceState::Stopped);
    s.shutdown(SECS(5)).await;
}
