//! A NATS server that dies and comes back: events emitted meanwhile are buffered (bounded),
//! published after the reconnection, and control works again.

use crate::support::*;
use futures_util::StreamExt;
use kinfra_bus::{Bus, BusState};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_buffers_events_then_resumes_events_and_control() {
    let mut server = NatsServer::start().await;
    let state = tempfile::tempdir().unwrap();
    let control = FakeControl::new();

    // A JetStream stream records every event on the server's disk, so what the bus publishes
    // right after reconnecting is kept even before any subscriber is back.
    let admin = client(&server.url()).await;
    let js = async_nats::jetstream::new(admin.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "EVENTS".into(),
        subjects: vec!["kinfra.test.events.>".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap();

    let bus = Bus::start(
        options(&control, state.path(), Some(server.url())),
        control.clone(),
    )
    .await
    .unwrap();
    let mut sub = admin.subscribe("kinfra.test.events.>").await.unwrap();
    roundtrip(&admin).await;
    let before = control.emit_state("api", 0).seq;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap()
            .unwrap();
        if parse_event(&msg.payload)["seq"].as_u64() == Some(before) {
            break;
        }
    }
    drop(sub);

    // Kill the server by PID: the bus notices, says so, keeps running, and buffers.
    let mut runtime_events = control.events.subscribe();
    let old_pid = server.pid();
    server.kill();
    wait_state(&bus, BusState::Reconnecting, Duration::from_secs(10)).await;
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), runtime_events.recv())
            .await
            .unwrap()
            .unwrap();
        if serde_json::to_value(&ev).unwrap()["state"] == "reconnecting" {
            break;
        }
    }
    let during: Vec<u64> = (1..=20).map(|n| control.emit_state("api", n).seq).collect();
    wait_until("the events to be buffered", Duration::from_secs(5), || {
        bus.status().buffered >= during.len()
    })
    .await;
    assert_eq!(bus.status().dropped, 0);

    // Same port, same store.
    server.restart().await;
    assert_ne!(server.pid(), old_pid);
    wait_state(&bus, BusState::Connected, Duration::from_secs(10)).await;
    wait_until("the buffer to drain", Duration::from_secs(10), || {
        bus.status().buffered == 0
    })
    .await;
    assert!(bus.status().reconnects >= 1);

    // The stream got every event emitted while the server was down, in order, with no gap,
    // followed by the `connected` state change, and the `reconnecting` one before them.
    let admin = client(&server.url()).await;
    let js = async_nats::jetstream::new(admin.clone());
    let mut stream = js.get_stream("EVENTS").await.unwrap();
    let last = control.events.next_seq() - 1;
    let mut seqs = Vec::new();
    let mut states = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let info = stream.info().await.unwrap().state.clone();
        seqs.clear();
        states.clear();
        for n in info.first_sequence..=info.last_sequence {
            let Ok(msg) = stream.get_raw_message(n).await else {
                continue;
            };
            let event = parse_event(&msg.payload);
            let seq = event["seq"].as_u64().unwrap();
            if seq > before {
                seqs.push(seq);
            }
            if event["type"] == "bus_state_changed" {
                states.push((seq, event["state"].as_str().unwrap().to_owned()));
            }
        }
        if seqs.last() == Some(&last) || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let expected: Vec<u64> = (before + 1..=last).collect();
    assert_eq!(seqs, expected, "events after the kill: gaps or disorder");
    assert!(during.iter().all(|s| seqs.contains(s)));
    let reconnecting = states
        .iter()
        .find(|(_, s)| s == "reconnecting")
        .map(|(q, _)| *q);
    let connected_again = states
        .iter()
        .rev()
        .find(|(_, s)| s == "connected")
        .map(|(q, _)| *q);
    assert!(
        matches!((reconnecting, connected_again), (Some(r), Some(c)) if r < during[0] && c > r),
        "state events: {states:?}"
    );

    // Control works again, and new events reach a plain subscriber.
    let reply = control_request(&admin, "restart", r#"{"service":"worker"}"#).await;
    assert_eq!(reply["success"], true, "{reply}");
    let mut sub = admin
        .subscribe("kinfra.test.events.api.state_changed")
        .await
        .unwrap();
    roundtrip(&admin).await;
    let after = control.emit_state("api", 99).seq;
    let msg = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(parse_event(&msg.payload)["seq"].as_u64(), Some(after));
    bus.shutdown(Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_at_start_keeps_running_with_a_bounded_buffer() {
    let mut server = NatsServer::start().await;
    // Nothing listens on the port at first.
    server.kill();
    let state = tempfile::tempdir().unwrap();
    let control = FakeControl::new();
    let mut opts = options(&control, state.path(), Some(server.url()));
    opts.config.buffer = 10;
    let started = std::time::Instant::now();
    let bus = Bus::start(opts, control.clone()).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "start must not hang"
    );
    assert_eq!(bus.state(), BusState::Connecting);
    for n in 0..25 {
        control.emit_state("api", n);
    }
    wait_until("the buffer to fill", Duration::from_secs(5), || {
        bus.status().dropped >= 15
    })
    .await;
    let status = bus.status();
    assert_eq!(status.buffered, 10);
    assert_eq!(status.dropped, 15);
    assert_eq!(status.published, 0);

    server.restart().await;
    wait_state(&bus, BusState::Connected, Duration::from_secs(10)).await;
    // The newest ten and the `connected` event go out (that event may push out one more
    // old one, if it comes before the sender starts draining).
    wait_until("the buffer to drain", Duration::from_secs(10), || {
        let s = bus.status();
        s.buffered == 0 && s.published + s.dropped == 26
    })
    .await;
    assert!(bus.status().published >= 10);
    let steer = client(&server.url()).await;
    let reply = control_request(&steer, "status", "").await;
    assert_eq!(reply["project"], "test");
    bus.shutdown(Duration::from_secs(3)).await;
}
