//! A fixed-rate HTTP/1.1 load generator for `bench/proxy.sh` (what `wrk2 -R` would do): keeps
//! `CONNS` keep-alive connections, sends `RATE` requests per second in all for `SECS` seconds,
//! and prints latency percentiles measured from the moment each request is sent.
//!
//! `bench_load URL RATE SECS [CONNS]` → `requests=N errors=E p50_us=.. p90_us=.. p99_us=.. p999_us=.. max_us=..`

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let usage = "usage: bench_load URL RATE SECS [CONNS]";
    let mut args = std::env::args().skip(1);
    let url: hyper::Uri = args.next().ok_or(usage)?.parse()?;
    let rate: f64 = args.next().ok_or(usage)?.parse()?;
    let secs: f64 = args.next().ok_or(usage)?.parse()?;
    let conns: usize = args.next().map(|c| c.parse()).transpose()?.unwrap_or(16);
    let authority = url.authority().ok_or("URL without host")?.clone();
    let path = url.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let total = (rate * secs) as u64;
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now() + Duration::from_millis(100);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (next, errors, authority, path) = (
            next.clone(),
            errors.clone(),
            authority.clone(),
            path.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies: Vec<u32> = Vec::new();
            let mut sender = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return latencies;
                }
                let at = start + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(at.into()).await;
                if sender.is_none() {
                    let Ok(stream) = tokio::net::TcpStream::connect(authority.as_str()).await
                    else {
                        errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let Ok((s, conn)) =
                        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
                    else {
                        errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    tokio::spawn(conn);
                    sender = Some(s);
                }
                let Some(s) = sender.as_mut() else { continue };
                let req = hyper::Request::get(path.as_str())
                    .header("host", authority.as_str())
                    .body(Empty::<Bytes>::new())
                    .unwrap_or_default();
                let sent = Instant::now();
                let ok = match s.ready().await {
                    Ok(()) => match s.send_request(req).await {
                        Ok(resp) => {
                            let good = resp.status().is_success();
                            good && resp.into_body().collect().await.is_ok()
                        }
                        Err(_) => false,
                    },
                    Err(_) => false,
                };
                if ok {
                    latencies.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    sender = None;
                }
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    all.sort_unstable();
    let pct = |p: f64| -> u32 {
        if all.is_empty() {
            return 0;
        }
        let idx = ((all.len() as f64 - 1.0) * p).round() as usize;
        all[idx.min(all.len() - 1)]
    };
    println!(
        "requests={} errors={} p50_us={} p90_us={} p99_us={} p999_us={} max_us={}",
        all.len(),
        errors.load(Ordering::Relaxed),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(0.999),
        all.last().copied().unwrap_or(0)
    );
    Ok(())
}
