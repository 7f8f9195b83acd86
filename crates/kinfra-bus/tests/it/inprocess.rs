//! The in-process fallback: no NATS configured and none installed, and the bus still works
//! for code inside the process.

use crate::support::*;
use bytes::Bytes;
use kinfra_bus::{Bus, BusBackend, BusError, BusState};
use kinfra_core::view::Action;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_any_nats_server_the_bus_runs_in_process() {
    let empty_path = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let control = FakeControl::new();
    let mut events = control.events.subscribe();
    let mut opts = options(&control, state.path(), None);
    opts.search_path = Some(empty_path.path().as_os_str().to_owned());
    let bus = Bus::start(opts, control.clone()).await.unwrap();
    assert_eq!(bus.backend(), BusBackend::InProcess);
    assert_eq!(bus.state(), BusState::InProcess);
    assert!(bus.nats_client().is_none());
    assert!(!state.path().join("nats").exists());
    // The runtime is told, with an event.
    let first = events.recv().await.unwrap();
    assert_eq!(first.kind.name(), "bus_state_changed");
    let json = serde_json::to_value(&first).unwrap();
    assert_eq!(json["state"], "in_process");
    assert!(
        json["message"]
            .as_str()
            .unwrap()
            .contains("no nats-server found on PATH")
    );

    // Events: the same subjects and JSON, in order.
    assert_eq!(bus.events_subject(), "kinfra.test.events.>");
    let mut sub = bus.subscribe("kinfra.test.events.worker.>").await.unwrap();
    let emitted: Vec<u64> = (0..50)
        .map(|n| control.emit_state("worker", n).seq)
        .collect();
    for seq in &emitted {
        let msg = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(msg.subject, "kinfra.test.events.worker.state_changed");
        assert_eq!(parse_event(&msg.payload)["seq"].as_u64(), Some(*seq));
    }

    // Control, through the same request/reply API.
    let status = bus
        .request(
            bus.control_subject("status"),
            Bytes::new(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let status = parse_event(&status);
    assert_eq!(status["project"], "test");
    let reply = bus
        .request(
            bus.control_subject("restart"),
            Bytes::from_static(br#"{"service":"api"}"#),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(parse_event(&reply)["success"], true);
    let reply = bus
        .request(
            bus.control_subject("stop"),
            Bytes::from_static(b"{oops"),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(parse_event(&reply)["success"], false);
    assert_eq!(
        control.actions(),
        vec![(Action::Restart, "api".to_string())]
    );

    // User publish/subscribe/request.
    let mut app = bus.subscribe("app.*.ping").await.unwrap();
    let responder = bus.clone();
    tokio::spawn(async move {
        while let Some(msg) = app.next().await {
            if let Some(reply) = msg.reply {
                let _ = responder.publish(reply, Bytes::from("pong")).await;
            }
        }
    });
    let answer = bus
        .request("app.x.ping", Bytes::new(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(&answer[..], b"pong");
    assert!(matches!(
        bus.request("nobody.here", Bytes::new(), Duration::from_secs(1))
            .await,
        Err(BusError::NoResponders)
    ));
    assert!(matches!(
        bus.subscribe("a.>.b").await,
        Err(BusError::InvalidSubject { .. })
    ));
    let mut later = control.events.subscribe();
    bus.shutdown(Duration::from_secs(1)).await;
    // The runtime hears that the bus closed.
    let closed = later.recv().await.unwrap();
    assert_eq!(serde_json::to_value(&closed).unwrap()["state"], "closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_or_unmanaged_bus_is_in_process_without_looking_for_a_server() {
    let state = tempfile::tempdir().unwrap();
    let control = FakeControl::new();
    for (enabled, managed) in [(false, true), (true, false)] {
        let mut opts = options(&control, state.path(), None);
        opts.config.enabled = enabled;
        opts.config.managed = managed;
        let bus = Bus::start(opts, control.clone()).await.unwrap();
        assert_eq!(bus.backend(), BusBackend::InProcess);
        assert!(!state.path().join("nats").exists());
        bus.shutdown(Duration::from_secs(1)).await;
    }
}
