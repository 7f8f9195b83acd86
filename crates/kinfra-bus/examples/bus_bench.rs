//! Bus benchmark: event publish-to-receive latency and throughput, and control round trips,
//! against a real nats-server (and the in-process bus for comparison).
//!
//! ```text
//! cargo run --release -p kinfra-bus --example bus_bench [-- EVENTS]
//! ```
//!
//! Latency is measured from `EventSender::emit` (what the supervisor calls) to the moment an
//! independent client (its own NATS connection, in the same process) has the message: it
//! includes the broadcast channel, JSON encoding, the bus's buffer and sender task, the
//! client, the server, and the subscriber's client. Events are paced (one per 500 µs) for
//! latency, and sent flat out for throughput.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use bytes::Bytes;
use futures_util::StreamExt;
use kinfra_bus::{Bus, BusOptions};
use kinfra_core::Event;
use kinfra_core::config::BusConfig;
use kinfra_core::event::{EventKind, EventSender};
use kinfra_core::state::ServiceState;
use kinfra_core::status::{ServiceLogLine, StatusReport};
use kinfra_core::view::{Action, ActionError, BoxFuture, RuntimeControl};
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

struct BenchControl {
    events: EventSender,
    logs: broadcast::Sender<ServiceLogLine>,
}

impl RuntimeControl for BenchControl {
    fn status(&self) -> StatusReport {
        StatusReport::new("bench", BTreeMap::new())
    }
    fn logs(&self, _: Option<&str>, _: usize) -> Result<Vec<ServiceLogLine>, ActionError> {
        Ok(vec![])
    }
    fn subscribe_events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
    fn subscribe_logs(&self) -> broadcast::Receiver<ServiceLogLine> {
        self.logs.subscribe()
    }
    fn act(&self, _: Action, service: &str) -> BoxFuture<'_, Result<(), ActionError>> {
        let known = service == "api";
        let service = service.to_owned();
        Box::pin(async move {
            if known {
                Ok(())
            } else {
                Err(ActionError::UnknownService(service))
            }
        })
    }
    fn request_shutdown(&self, _: &str) {}
}

fn event(n: u64) -> EventKind {
    EventKind::StateChanged {
        service: "api".into(),
        from: ServiceState::Starting,
        to: ServiceState::Running,
        message: format!("Service is running ({n})"),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn us(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}

fn row(name: &str, mut lat: Vec<Duration>) -> String {
    lat.sort();
    format!(
        "| {name} | {} | {} | {} | {} | {} |",
        lat.len(),
        us(percentile(&lat, 0.5)),
        us(percentile(&lat, 0.9)),
        us(percentile(&lat, 0.99)),
        us(*lat.last().unwrap_or(&Duration::ZERO)),
    )
}

/// Emits `n` events one per `pace` and returns emit→receive latencies. `recv` delivers
/// (seq, receive time) pairs.
async fn latency_run(
    control: &BenchControl,
    n: u64,
    pace: Duration,
    mut recv: tokio::sync::mpsc::UnboundedReceiver<(u64, Instant)>,
) -> Vec<Duration> {
    let first = control.events.next_seq();
    let sent: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::with_capacity(n as usize)));
    let mut tick = tokio::time::interval(pace);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let emitter = {
        let sent = sent.clone();
        let events = control.events.clone();
        tokio::spawn(async move {
            for i in 0..n {
                tick.tick().await;
                let t = Instant::now();
                let ev = events.emit(event(i));
                debug_assert_eq!(ev.seq, first + i);
                sent.lock().unwrap().push(t);
            }
        })
    };
    let mut got = vec![None; n as usize];
    let mut count = 0;
    let deadline = tokio::time::Instant::now() + pace * n as u32 + Duration::from_secs(10);
    while count < n {
        match tokio::time::timeout_at(deadline, recv.recv()).await {
            Ok(Some((seq, at))) if seq >= first && seq < first + n => {
                got[(seq - first) as usize] = Some(at);
                count += 1;
            }
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    emitter.await.unwrap();
    let sent = sent.lock().unwrap();
    got.iter()
        .zip(sent.iter())
        .filter_map(|(r, s)| r.map(|r| r.saturating_duration_since(*s)))
        .collect()
}

fn seq_of(payload: &[u8]) -> Option<u64> {
    // `{"seq":N,...}`: cheap enough not to distort the measurement.
    let text = std::str::from_utf8(payload).ok()?;
    let rest = text.strip_prefix("{\"seq\":")?;
    let end = rest.find(',')?;
    rest[..end].parse().ok()
}

async fn throughput_run(
    control: &BenchControl,
    bus: &Bus,
    n: u64,
    mut recv: tokio::sync::mpsc::UnboundedReceiver<(u64, Instant)>,
) -> String {
    let first = control.events.next_seq();
    let last = first + n - 1;
    let dropped_before = bus.status().dropped;
    let start = Instant::now();
    let events = control.events.clone();
    let emitter = tokio::spawn(async move {
        for i in 0..n {
            events.emit(event(i));
            if i % 512 == 0 {
                tokio::task::yield_now().await;
            }
        }
        Instant::now()
    });
    let mut received = 0u64;
    let mut end = start;
    while let Ok(Some((seq, at))) = tokio::time::timeout(Duration::from_secs(3), recv.recv()).await
    {
        if seq >= first {
            received += 1;
            end = at;
        }
        if seq == last {
            break;
        }
    }
    let emitted_at = emitter.await.unwrap();
    let secs = end.duration_since(start).as_secs_f64();
    let dropped = bus.status().dropped - dropped_before;
    format!(
        "| {n} | {:.0} | {received} | {dropped} | {:.0} | {:.0} |",
        emitted_at.duration_since(start).as_secs_f64() * 1e3,
        secs * 1e3,
        received as f64 / secs,
    )
}

fn start_nats(port: u16, store: &std::path::Path) -> Child {
    let child = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server on PATH (apt-get install -y nats-server)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nats-server did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5000);
    let through_n: u64 = n * 20;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = start_nats(port, &dir.path().join("js"));
    let url = format!("nats://127.0.0.1:{port}");
    let version = Command::new("nats-server")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!("nats-server: {version}; events per latency run: {n}; throughput run: {through_n}\n");

    // --- NATS ---
    let control = Arc::new(BenchControl {
        events: EventSender::new(65_536),
        logs: broadcast::channel(16).0,
    });
    let config = BusConfig {
        url: Some(url.clone()),
        buffer: 65_536,
        ..BusConfig::default()
    };
    let bus = Bus::start(
        BusOptions::new("bench", dir.path().join("state"), config),
        control.clone(),
    )
    .await
    .unwrap();
    let watcher = async_nats::connect(url.as_str()).await.unwrap();
    let (tx, _) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let tx = Arc::new(Mutex::new(tx));
    let mut sub = watcher.subscribe("kinfra.bench.events.>").await.unwrap();
    {
        // Round trip so the subscription is in place.
        let inbox = watcher.new_inbox();
        let mut s = watcher.subscribe(inbox.clone()).await.unwrap();
        watcher.publish(inbox, Bytes::new()).await.unwrap();
        s.next().await;
    }
    let sink = tx.clone();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let at = Instant::now();
            if let Some(seq) = seq_of(&msg.payload) {
                let _ = sink.lock().unwrap().send((seq, at));
            }
        }
    });

    println!("## Event latency, emit → independent subscriber (µs)\n");
    println!("| backend | events | p50 | p90 | p99 | max |");
    println!("|---|---|---|---|---|---|");
    // Warm-up.
    let (t, r) = tokio::sync::mpsc::unbounded_channel();
    *tx.lock().unwrap() = t;
    latency_run(&control, 500, Duration::from_micros(500), r).await;
    let (t, r) = tokio::sync::mpsc::unbounded_channel();
    *tx.lock().unwrap() = t;
    let lat = latency_run(&control, n, Duration::from_micros(500), r).await;
    let nats_latency = row("NATS (external nats-server)", lat);

    // In-process, for comparison.
    let control_local = Arc::new(BenchControl {
        events: EventSender::new(65_536),
        logs: broadcast::channel(16).0,
    });
    let local_config = BusConfig {
        managed: false,
        buffer: 65_536,
        ..BusConfig::default()
    };
    let local = Bus::start(
        BusOptions::new("bench", dir.path().join("state2"), local_config),
        control_local.clone(),
    )
    .await
    .unwrap();
    let (ltx, _) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let ltx = Arc::new(Mutex::new(ltx));
    let mut lsub = local.subscribe("kinfra.bench.events.>").await.unwrap();
    let lsink = ltx.clone();
    tokio::spawn(async move {
        while let Some(msg) = lsub.next().await {
            let at = Instant::now();
            if let Some(seq) = seq_of(&msg.payload) {
                let _ = lsink.lock().unwrap().send((seq, at));
            }
        }
    });
    let (t, r) = tokio::sync::mpsc::unbounded_channel();
    *ltx.lock().unwrap() = t;
    let lat = latency_run(&control_local, n, Duration::from_micros(500), r).await;
    println!("{nats_latency}");
    println!("{}", row("in-process", lat));

    println!("\n## Event throughput, emitted flat out (yield every 512)\n");
    println!("| backend | events | emit ms | received | dropped | last received ms | events/s |");
    println!("|---|---|---|---|---|---|---|");
    let (t, r) = tokio::sync::mpsc::unbounded_channel();
    *tx.lock().unwrap() = t;
    let line = throughput_run(&control, &bus, through_n, r).await;
    println!("| NATS {line}");
    let (t, r) = tokio::sync::mpsc::unbounded_channel();
    *ltx.lock().unwrap() = t;
    let line = throughput_run(&control_local, &local, through_n, r).await;
    println!("| in-process {line}");

    println!("\n## Control round trip, independent client, sequential (µs)\n");
    println!("| request | count | p50 | p90 | p99 | max |");
    println!("|---|---|---|---|---|---|");
    for (action, body) in [("status", ""), ("restart", r#"{"service":"api"}"#)] {
        let subject = format!("kinfra.bench.control.{action}");
        let mut lat = Vec::new();
        for _ in 0..(n / 5).max(100) {
            let t = Instant::now();
            let reply = watcher
                .request(subject.clone(), Bytes::from(body.to_owned()))
                .await
                .unwrap();
            lat.push(t.elapsed());
            assert!(!reply.payload.is_empty());
        }
        println!("{}", row(action, lat));
    }
    println!("\nbus status after the runs: {:?}", bus.status());

    bus.shutdown(Duration::from_secs(2)).await;
    local.shutdown(Duration::from_secs(1)).await;
    let _ = server.kill();
    let _ = server.wait();
}
