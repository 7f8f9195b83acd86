//! The bus for real: `runtime up` starts a managed nats-server; an independent NATS client
//! watches the events and steers kinfra over request/reply.

use crate::support::{Project, pids_tagged, stderr, unique_tag, wait_for};
use kinfra::bus::async_nats;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_client_watches_and_steers_through_managed_nats() {
    assert!(
        std::process::Command::new("nats-server")
            .arg("--version")
            .output()
            .is_ok(),
        "nats-server is missing: install Debian's nats-server (./x test does)"
    );
    let tag = unique_tag("bus");
    let p = Project::with_config(&format!(
        "[project]\nname = \"bt\"\n[env]\nKINFRA_TEST_TAG = \"{tag}\"\nAPI_TOKEN = \"very-secret-value\"\n\
         [dashboard]\nlisten = \"127.0.0.1:0\"\n\
         [services.web]\ncommand = \"echo token is $API_TOKEN; exec sleep 1000\"\n"
    ));
    let mut up = tokio::task::block_in_place(|| p.up(&[], &[]));
    let banner = up.wait_for_line(Duration::from_secs(5), "bus ");
    assert!(banner.contains("managed nats-server"), "{banner}");
    let nats_dir = p.path().join(".kinfra/nats");
    let (url, token) = wait_for(Duration::from_secs(10), "nats url and token", || {
        let url = std::fs::read_to_string(nats_dir.join("url")).ok()?;
        let token = std::fs::read_to_string(nats_dir.join("token")).ok()?;
        Some((url.trim().to_string(), token.trim().to_string()))
    });
    let client = async_nats::ConnectOptions::with_token(token)
        .connect(url.as_str())
        .await
        .expect("independent client connects");
    let mut events = client
        .subscribe("kinfra.bt.events.>")
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");

    // Status over the bus has the /__status__ shape.
    let reply = client
        .request("kinfra.bt.control.status", "{}".into())
        .await
        .expect("status reply");
    let status: serde_json::Value = serde_json::from_slice(&reply.payload).expect("json");
    assert_eq!(status["project"], "bt");
    assert!(status["services"]["web"].is_object(), "{status}");

    // Restart over the bus; the events that follow arrive in order, without gaps.
    let reply = client
        .request("kinfra.bt.control.restart", r#"{"service": "web"}"#.into())
        .await
        .expect("restart reply");
    let v: serde_json::Value = serde_json::from_slice(&reply.payload).expect("json");
    assert_eq!(v["success"], true, "{v}");
    let mut seqs = Vec::new();
    let mut subjects = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let msg = tokio::time::timeout_at(deadline, futures_next(&mut events))
            .await
            .expect("events in time")
            .expect("event");
        let e: serde_json::Value = serde_json::from_slice(&msg.payload).expect("event json");
        assert!(!String::from_utf8_lossy(&msg.payload).contains("very-secret-value"));
        seqs.push(e["seq"].as_u64().expect("seq"));
        subjects.push(msg.subject.to_string());
        // The restart's own `running` comes after its exit (the first start may still be
        // reporting when the client subscribed).
        if e["type"] == "state_changed"
            && e["service"] == "web"
            && e["to"] == "running"
            && subjects
                .iter()
                .any(|s| s == "kinfra.bt.events.web.process_exited")
        {
            break;
        }
    }
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "gap in {seqs:?}");
    assert!(
        subjects
            .iter()
            .any(|s| s == "kinfra.bt.events.web.process_exited"),
        "{subjects:?}"
    );

    // Errors are JSON replies.
    let reply = client
        .request("kinfra.bt.control.restart", "not json".into())
        .await
        .expect("reply");
    let v: serde_json::Value = serde_json::from_slice(&reply.payload).expect("json");
    assert_eq!(v["success"], false);

    // The bus state shows in /__status__.
    let addr = up.dashboard_addr();
    let (_, body) = crate::support::http_get(&addr, "/__status__").expect("status");
    let s: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(s["bus"]["state"], "connected", "{}", s["bus"]);
    assert_eq!(s["bus"]["backend"]["kind"], "managed");
    // And in /metrics: a live connection to the managed server.
    let (code, metrics) = crate::support::http_get(&addr, "/metrics").expect("metrics");
    assert_eq!(code, 200, "{metrics}");
    assert_eq!(
        metric(
            &metrics,
            "kinfra_bus_connected{",
            &["mode=\"managed\"", "state=\"connected\""]
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        metric(&metrics, "kinfra_bus_events_published_total ", &[]).is_some_and(|n| n > 0.0),
        "{metrics}"
    );

    up.signal(libc::SIGTERM);
    let status = tokio::task::block_in_place(|| up.wait_exit(Duration::from_secs(30)));
    assert!(status.success(), "{}", stderr_lines(&up));
    tokio::task::block_in_place(|| {
        wait_for(Duration::from_secs(5), "nothing left", || {
            pids_tagged(&tag).is_empty().then_some(())
        })
    });
}

async fn futures_next(sub: &mut async_nats::Subscriber) -> Option<async_nats::Message> {
    use futures_util::StreamExt;
    sub.next().await
}

/// The value of the first sample in a Prometheus text `body` whose line starts with `start`
/// and contains every one of `labels`.
pub(crate) fn metric(body: &str, start: &str, labels: &[&str]) -> Option<f64> {
    body.lines()
        .filter(|l| l.starts_with(start) && labels.iter().all(|label| l.contains(label)))
        .find_map(|l| l.rsplit_once(' ')?.1.parse().ok())
}

fn stderr_lines(up: &crate::support::Up) -> String {
    up.lines().join("\n")
}

#[test]
fn no_nats_anywhere_still_runs_in_process() {
    let p = Project::with_config(
        "[dashboard]\nlisten = \"127.0.0.1:0\"\n[bus]\nmanaged = false\n\
         [services.web]\ncommand = \"exec sleep 1000\"\n",
    );
    let mut up = p.up(&[], &[]);
    let banner = up.wait_for_line(Duration::from_secs(5), "bus ");
    assert!(banner.contains("in-process"), "{banner}");
    let out = p.run(&["runtime", "status", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The in-process bus is not a connection: /metrics says which bus runs, and 0 connected.
    let (code, metrics) =
        crate::support::http_get(&up.dashboard_addr(), "/metrics").expect("metrics");
    assert_eq!(code, 200, "{metrics}");
    assert_eq!(
        metric(&metrics, "kinfra_bus_connected{", &["mode=\"in_process\""]),
        Some(0.0),
        "{metrics}"
    );
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
}
