//! Control in: every action, bad requests, and a request flood, from an independent client.

use crate::support::*;
use bytes::Bytes;
use kinfra_bus::Bus;
use kinfra_core::view::Action;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_control_action_is_carried_out_and_answered() {
    let server = NatsServer::start().await;
    let state = tempfile::tempdir().unwrap();
    let control = FakeControl::new();
    let bus = Bus::start(
        options(&control, state.path(), Some(server.url())),
        control.clone(),
    )
    .await
    .unwrap();
    let steer = client(&server.url()).await;

    let status = control_request(&steer, "status", "").await;
    assert_eq!(status["project"], "test");
    assert_eq!(status["stats"]["total"], 3);
    assert_eq!(status["services"]["api"]["state"], "running");
    // The secret in the status message is masked.
    assert_eq!(
        status["services"]["api"]["status_message"],
        "Service is running (token ***)"
    );
    // A body is allowed for status too.
    let status = control_request(&steer, "status", "{}").await;
    assert_eq!(status["stats"]["running"], 3);

    for action in ["restart", "stop", "start"] {
        let reply = control_request(&steer, action, r#"{"service": "api"}"#).await;
        assert_eq!(reply["success"], true, "{action}: {reply}");
        assert_eq!(reply["service"], "api");
        assert_eq!(reply["action"], action);
    }
    let reply = control_request(&steer, "restart", r#"{"service": "worker", "extra": 1}"#).await;
    assert_eq!(reply["success"], true, "{reply}");
    assert_eq!(
        control.actions(),
        vec![
            (Action::Restart, "api".to_string()),
            (Action::Stop, "api".to_string()),
            (Action::Start, "api".to_string()),
            (Action::Restart, "worker".to_string()),
        ]
    );

    let reply = control_request(&steer, "restart", r#"{"service": "nope"}"#).await;
    assert_eq!(reply["success"], false);
    assert_eq!(reply["service"], "nope");
    assert_eq!(reply["error"], "unknown service `nope`");
    assert_eq!(control.actions().len(), 4);
    assert!(bus.status().control_requests >= 7);
    bus.shutdown(Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_json_errors_and_nothing_breaks() {
    let server = NatsServer::start().await;
    let state = tempfile::tempdir().unwrap();
    let control = FakeControl::new();
    let bus = Bus::start(
        options(&control, state.path(), Some(server.url())),
        control.clone(),
    )
    .await
    .unwrap();
    let steer = client(&server.url()).await;

    let cases: [(&str, &str, &str); 9] = [
        ("restart", "{not json", "malformed JSON"),
        ("restart", "[1, 2]", "must be a JSON object"),
        ("restart", "\"api\"", "must be a JSON object"),
        ("restart", "", "missing field `service`"),
        ("stop", r#"{"service": 42}"#, "bad request"),
        ("start", r#"{"name": "api"}"#, "missing field `service`"),
        (
            "explode",
            r#"{"service": "api"}"#,
            "unknown action `explode`",
        ),
        (
            "restart.api",
            r#"{"service": "api"}"#,
            "unknown action `restart.api`",
        ),
        ("status", "\u{0}\u{1}binary", "malformed JSON"),
    ];
    for (action, body, expected) in cases {
        let reply = control_request(&steer, action, body).await;
        assert_eq!(reply["success"], false, "{action} {body:?}: {reply}");
        let error = reply["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(expected),
            "{action} {body:?}: {error:?} lacks {expected:?}"
        );
    }
    // Invalid UTF-8.
    let reply = steer
        .request(
            "kinfra.test.control.stop",
            Bytes::from_static(&[0xff, 0xfe, b'{']),
        )
        .await
        .unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(reply["success"], false);
    // Too large.
    let big = format!(
        r#"{{"service": "api", "pad": "{}"}}"#,
        "x".repeat(kinfra_bus::MAX_REQUEST_BYTES)
    );
    let reply = control_request(&steer, "restart", &big).await;
    assert!(
        reply["error"].as_str().unwrap().contains("too large"),
        "{reply}"
    );
    // A message without a reply subject is ignored, not answered or crashed on.
    steer
        .publish("kinfra.test.control.restart", Bytes::from_static(b"{"))
        .await
        .unwrap();

    assert!(
        control.actions().is_empty(),
        "no bad request reached the runtime"
    );
    let reply = control_request(&steer, "restart", r#"{"service": "api"}"#).await;
    assert_eq!(reply["success"], true, "control still works: {reply}");
    bus.shutdown(Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_flood_is_answered_with_bounded_concurrency() {
    let server = NatsServer::start().await;
    let state = tempfile::tempdir().unwrap();
    let control = FakeControl::new();
    let bus = Bus::start(
        options(&control, state.path(), Some(server.url())),
        control.clone(),
    )
    .await
    .unwrap();
    let steer = client(&server.url()).await;

    // 400 requests at once for a service whose action takes 300 ms: at most MAX_IN_FLIGHT run
    // at once; the rest are told the bus is busy, at once. Every request gets a JSON reply.
    const FLOOD: usize = 400;
    let mut handles = Vec::new();
    for _ in 0..FLOOD {
        let steer = steer.clone();
        handles.push(tokio::spawn(async move {
            let reply = tokio::time::timeout(
                Duration::from_secs(10),
                steer.request(
                    "kinfra.test.control.restart",
                    Bytes::from_static(br#"{"service":"slow"}"#),
                ),
            )
            .await;
            let msg = reply
                .map_err(|_| "timeout".to_string())?
                .map_err(|e| e.to_string())?;
            serde_json::from_slice::<serde_json::Value>(&msg.payload).map_err(|e| e.to_string())
        }));
    }
    let (mut ok, mut busy) = (0, 0);
    for handle in handles {
        let reply = handle
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("a flood request failed: {e}"));
        if reply["success"] == true {
            ok += 1;
        } else {
            assert!(
                reply["error"].as_str().unwrap().starts_with("busy"),
                "{reply}"
            );
            busy += 1;
        }
    }
    assert_eq!(ok + busy, FLOOD);
    assert!(ok >= 1 && busy >= 1, "ok {ok}, busy {busy}");
    assert!(control.max_in_flight.load(Ordering::SeqCst) <= kinfra_bus::MAX_IN_FLIGHT);
    // Once the flood is over, control answers normally.
    let reply = control_request(&steer, "status", "").await;
    assert_eq!(reply["project"], "test");
    bus.shutdown(Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_command_runs_over_the_bus_like_the_http_action() {
    let server = NatsServer::start().await;
    let state = tempfile::tempdir().unwrap();
    let control = FakeControl::new();
    let bus = Bus::start(
        options(&control, state.path(), Some(server.url())),
        control.clone(),
    )
    .await
    .unwrap();
    let steer = client(&server.url()).await;

    let body =
        r#"{"resource": "db", "command": "scale", "params": {"replicas": 3}, "dry_run": true}"#;
    let reply = control_request(&steer, "command", body).await;
    assert_eq!(reply["success"], true, "{reply}");
    assert_eq!(reply["dry_run"], true);
    assert_eq!(reply["data"]["replicas"], 3);
    assert_eq!(reply["requests"][0], "POST /scale");

    // Every input problem comes back, as the HTTP action's 400 does.
    let reply = control_request(
        &steer,
        "command",
        r#"{"resource": "db", "command": "scale"}"#,
    )
    .await;
    assert_eq!(reply["success"], false, "{reply}");
    let problems = reply["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 2, "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("`replicas`: missing")
    );

    // A command that ran and failed: its error, the secret masked (control_request checks).
    let reply = control_request(
        &steer,
        "command",
        r#"{"resource": "db", "command": "fail"}"#,
    )
    .await;
    assert_eq!(reply["success"], false, "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("upstream said no"),
        "{reply}"
    );

    // A body without a resource or command never reaches the runtime.
    for body in [
        "",
        r#"{"command": "scale"}"#,
        r#"{"resource": "db", "command": 1}"#,
    ] {
        let reply = control_request(&steer, "command", body).await;
        assert_eq!(reply["success"], false, "{body}: {reply}");
        assert!(
            reply["error"].as_str().unwrap().contains("bad request"),
            "{reply}"
        );
        assert_eq!(
            reply["problems"].as_array().map(Vec::len),
            Some(1),
            "{reply}"
        );
    }
    let calls = control.commands.lock().unwrap().clone();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(calls[0].dry_run && !calls[0].yes && calls[0].params["replicas"] == 3);
    assert!(control.actions().is_empty());
    bus.shutdown(Duration::from_secs(3)).await;
}
