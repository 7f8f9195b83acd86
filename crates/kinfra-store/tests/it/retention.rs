//! Event retention by count and by age, and run retention, on the real engine.

use crate::support::*;
use kinfra_core::config::Dur;
use kinfra_core::event::{Event, EventKind};
use kinfra_core::state::ServiceState;
use tokio::sync::broadcast;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_the_newest_events_by_count() {
    let dir = tempdir();
    let mut config = mem_config();
    config.event_retention = 50;
    let (store, events) = recording(&config, dir.path()).await;
    for _ in 0..120 {
        events.emit(state("api", ServiceState::Starting, ServiceState::Running));
    }
    settle(&store, &events).await;
    assert_eq!(store.event_count().await.ok(), Some(120));
    let (deleted, _) = store
        .apply_retention()
        .await
        .unwrap_or_else(|e| panic!("retention: {e}"));
    assert_eq!(deleted, 70);
    assert_eq!(store.event_count().await.ok(), Some(50));
    let kept = store
        .recent_events(1000)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let seqs: Vec<u64> = kept.iter().map(|e| e.event.seq).collect();
    assert_eq!(seqs, (71..=120).collect::<Vec<_>>());
    store.shutdown(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_events_older_than_the_age() {
    let dir = tempdir();
    let mut config = mem_config();
    config.event_max_age = Dur::from_secs(3600);
    let store = open(&config, dir.path()).await;
    // Events are taken as emitted; old timestamps stand in for old events.
    let (tx, rx) = broadcast::channel(64);
    store.record_events(rx);
    let mk = |seq: u64, timestamp: &str| Event {
        seq,
        timestamp: timestamp.into(),
        kind: EventKind::PortAssigned {
            service: format!("s{seq}"),
            port: 40000 + seq as u16,
        },
    };
    for seq in 1..=5 {
        let _ = tx.send(mk(seq, "2020-01-01T00:00:00.000Z"));
    }
    for seq in 6..=8 {
        let _ = tx.send(mk(seq, &kinfra_core::event::now_rfc3339()));
    }
    if let Err(e) = store.wait_acknowledged(8, WAIT).await {
        panic!("{e}");
    }
    let (deleted, _) = store
        .apply_retention()
        .await
        .unwrap_or_else(|e| panic!("retention: {e}"));
    assert_eq!(deleted, 5);
    let kept: Vec<u64> = store
        .recent_events(100)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|e| e.event.seq)
        .collect();
    assert_eq!(kept, vec![6, 7, 8]);
    // The port registry is state, not history: old assignments stay.
    assert_eq!(
        store.ports().await.unwrap_or_else(|e| panic!("{e}")).len(),
        8
    );
    store.shutdown(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_live_runs_and_the_newest_ended_ones() {
    let dir = tempdir();
    let mut config = mem_config();
    config.run_retention = 3;
    let (store, events) = recording(&config, dir.path()).await;
    // pid 1 stays "live": never deleted by retention.
    events.emit(EventKind::ProcessStarted {
        service: "keeper".into(),
        pid: 1,
    });
    for pid in 1000..1006u32 {
        events.emit(EventKind::ProcessStarted {
            service: "api".into(),
            pid,
        });
        events.emit(EventKind::ProcessExited {
            service: "api".into(),
            pid,
            exit: kinfra_core::event::ExitInfo {
                code: Some(1),
                signal: None,
            },
        });
    }
    settle(&store, &events).await;
    let (_, runs_deleted) = store
        .apply_retention()
        .await
        .unwrap_or_else(|e| panic!("retention: {e}"));
    assert_eq!(runs_deleted, 3);
    let all = store
        .history(None, 100)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let pids: Vec<u32> = all.iter().map(|r| r.pid).collect();
    assert_eq!(pids, vec![1005, 1004, 1003, 1]);
    store.shutdown(WAIT).await;
}
