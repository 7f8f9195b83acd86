//! Write latency of state updates through the store, as kinfra produces them: an event is
//! emitted on the channel, and the time until the store acknowledges it (committed, and with
//! `sync` on, fsynced) is measured. One event at a time (latency), then bursts (throughput).
//!
//! `cargo run --release -p kinfra-store --example store_bench [-- DIR] [N]`
//! DIR defaults to a temp dir (its filesystem is what is measured); N to 2000.
//!
//! With `STORE_BENCH_URL=ws://HOST:PORT` (and `STORE_BENCH_USER` / `STORE_BENCH_PASS` for its
//! root user) a third row measures the same through a SurrealDB server (`bench/store_server.sh`
//! starts `kinfra-surreal-server` with surrealkv on DIR's filesystem and runs this).

use kinfra_core::config::StoreConfig;
use kinfra_core::event::{EventKind, EventSender};
use kinfra_core::state::ServiceState;
use kinfra_store::Store;
use std::time::{Duration, Instant};

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

async fn run(
    label: &str,
    config: StoreConfig,
    state_dir: &std::path::Path,
    n: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::open(&config, state_dir).await?;
    let events = EventSender::new(65536);
    store.record_events(events.subscribe());
    let plain = std::env::var("BENCH_PLAIN").is_ok();
    let kind = |i: usize| {
        if plain {
            EventKind::CrashLoop {
                service: format!("svc{}", i % 10),
                failures: 1,
            }
        } else {
            EventKind::StateChanged {
                service: format!("svc{}", i % 10),
                from: ServiceState::Starting,
                to: ServiceState::Running,
                message: "Service is running".into(),
            }
        }
    };
    // Warm up.
    for i in 0..100 {
        let e = events.emit(kind(i));
        store
            .wait_acknowledged(e.seq, Duration::from_secs(30))
            .await?;
    }
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let e = events.emit(kind(i));
        store
            .wait_acknowledged(e.seq, Duration::from_secs(30))
            .await?;
        lat.push(t.elapsed());
    }
    lat.sort();
    // Bursts: 10 x 1000 events emitted at once; time until the last is acknowledged.
    let mut rates = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let mut last = 0;
        for i in 0..1000 {
            last = events.emit(kind(i)).seq;
        }
        store
            .wait_acknowledged(last, Duration::from_secs(60))
            .await?;
        rates.push(1000.0 / t.elapsed().as_secs_f64());
    }
    rates.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let stats = store.stats();
    println!(
        "| {} | {} | {} | {} | {} | {} | {:.0} events/s | {} |",
        label,
        n,
        us(pct(&lat, 0.5)),
        us(pct(&lat, 0.99)),
        us(pct(&lat, 0.999)),
        us(lat.last().copied().unwrap_or_default()),
        rates[rates.len() / 2],
        stats.commits,
    );
    store.shutdown(Duration::from_secs(30)).await;
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tmp = tempfile::tempdir()?;
    let dir = args
        .first()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2000);
    println!("store dir: {}", dir.display());
    println!(
        "| store | updates | p50 | p99 | p99.9 | max | burst throughput (median of 10 x 1000) | commits |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let embedded = |sync: bool| StoreConfig {
        sync,
        ..StoreConfig::default()
    };
    run(
        "embedded, sync on (fsync every commit)",
        embedded(true),
        &dir.join("sync-on"),
        n,
    )
    .await?;
    run(
        "embedded, sync off",
        embedded(false),
        &dir.join("sync-off"),
        n,
    )
    .await?;
    if let Ok(url) = std::env::var("STORE_BENCH_URL") {
        let config = StoreConfig {
            url: Some(url),
            user: std::env::var("STORE_BENCH_USER").ok(),
            password: std::env::var("STORE_BENCH_PASS")
                .ok()
                .map(kinfra_core::secret::Secret::new),
            ..StoreConfig::default()
        };
        run(
            "server over ws:// (surrealkv, fsync every commit, on loopback)",
            config,
            &dir.join("remote"),
            n,
        )
        .await?;
    }
    Ok(())
}
