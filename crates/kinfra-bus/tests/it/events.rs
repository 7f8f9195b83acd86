//! Events out: an independent subscriber sees every event, in order, with no gap in `seq`.

use crate::support::*;
use futures_util::StreamExt;
use kinfra_bus::{Bus, BusBackend, BusState};
use kinfra_core::event::EventKind;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_an_independent_subscriber_in_order_without_gaps() {
    let server = NatsServer::start().await;
    let state = tempfile::tempdir().unwrap();
    let control = FakeControl::new();
    let watcher = client(&server.url()).await;
    let mut sub = watcher.subscribe("kinfra.test.events.>").await.unwrap();
    roundtrip(&watcher).await;

    let bus = Bus::start(
        options(&control, state.path(), Some(server.url())),
        control.clone(),
    )
    .await
    .unwrap();
    assert_eq!(bus.state(), BusState::Connected);
    assert_eq!(bus.backend(), BusBackend::External { url: server.url() });
    assert!(bus.nats_client().is_some());

    const N: usize = 300;
    for n in 0..N {
        match n % 3 {
            0 => {
                control.emit_state("api", n);
            }
            1 => {
                control.events.emit(EventKind::PortAssigned {
                    service: "worker".into(),
                    port: 8000,
                });
            }
            _ => {
                control.events.emit(EventKind::RuntimeStarted {
                    project: "test".into(),
                });
            }
        }
    }
    let last = control.events.next_seq() - 1;

    let mut seqs = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seqs.last() != Some(&last) {
        let msg = tokio::time::timeout_at(deadline, sub.next())
            .await
            .unwrap_or_else(|_| panic!("timed out; got {} of {last} events", seqs.len()))
            .unwrap();
        let event = parse_event(&msg.payload);
        let seq = event["seq"].as_u64().unwrap();
        let kind = event["type"].as_str().unwrap();
        let resource = match kind {
            "state_changed" => event["service"].as_str().unwrap(),
            "port_assigned" => "worker",
            _ => "runtime",
        };
        assert_eq!(
            msg.subject.as_str(),
            format!("kinfra.test.events.{resource}.{kind}")
        );
        assert!(
            event["timestamp"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z'))
        );
        if seq == 1 {
            // The first event of this runtime is the bus saying it is connected.
            assert_eq!(kind, "bus_state_changed");
            assert_eq!(event["state"], "connected");
            assert_eq!(event["backend"], "external");
        }
        if kind == "state_changed" {
            assert!(
                event["message"]
                    .as_str()
                    .unwrap()
                    .contains("DB_PASSWORD=***")
            );
        }
        seqs.push(seq);
    }
    let expected: Vec<u64> = (1..=last).collect();
    assert_eq!(seqs, expected, "events out of order or with gaps");
    let status = bus.status();
    assert_eq!(status.published, last);
    assert_eq!(status.dropped, 0);
    assert_eq!(status.buffered, 0);

    // Publish, subscribe and request through the user-facing API on the same server.
    let mut echo = bus.subscribe("app.echo").await.unwrap();
    let responder = bus.clone();
    tokio::spawn(async move {
        while let Some(msg) = echo.next().await {
            if let Some(reply) = msg.reply {
                let _ = responder.publish(reply, msg.payload).await;
            }
        }
    });
    let mut app = watcher.subscribe("app.hello").await.unwrap();
    roundtrip(&watcher).await;
    bus.publish("app.hello", "hi".into()).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), app.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got.payload[..], b"hi");
    let answer = bus
        .request("app.echo", "ping".into(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(&answer[..], b"ping");
    assert!(bus.publish("app.*", "x".into()).await.is_err());
    assert!(bus.publish("bad subject", "x".into()).await.is_err());
    assert!(matches!(
        bus.request("nobody.listens", "x".into(), Duration::from_secs(2))
            .await,
        Err(kinfra_bus::BusError::NoResponders)
    ));

    bus.clone().shutdown(Duration::from_secs(3)).await;
    assert_eq!(bus.state(), BusState::Closed);
    assert!(matches!(
        bus.publish("a.b", "x".into()).await,
        Err(kinfra_bus::BusError::Closed)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_emitted_just_before_shutdown_are_still_published() {
    let server = NatsServer::start().await;
    let state = tempfile::tempdir().unwrap();
    let control = FakeControl::new();
    let watcher = client(&server.url()).await;
    let mut sub = watcher
        .subscribe("kinfra.test.events.runtime.runtime_stopping")
        .await
        .unwrap();
    roundtrip(&watcher).await;
    let bus = Bus::start(
        options(&control, state.path(), Some(server.url())),
        control.clone(),
    )
    .await
    .unwrap();
    let ev = control.events.emit(EventKind::RuntimeStopping {
        reason: "test".into(),
    });
    bus.shutdown(Duration::from_secs(3)).await;
    let msg = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(parse_event(&msg.payload)["seq"].as_u64(), Some(ev.seq));
}
