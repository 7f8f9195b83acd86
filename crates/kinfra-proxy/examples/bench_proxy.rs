//! The kinfra proxy alone, for `bench/proxy.sh`: routes everything to one fixed upstream and
//! runs until SIGTERM or SIGINT.
//!
//! `bench_proxy LISTEN UPSTREAM_URL [THREADS]`

use kinfra_core::config::{OneOrMany, ProxyConfig, RouteConfig};
use kinfra_core::event::EventSender;
use kinfra_core::status::{ServiceLogLine, StatusReport};
use kinfra_core::view::{Action, ActionError, BoxFuture, RuntimeControl};
use kinfra_proxy::{ProxyOptions, ProxyServer};
use std::sync::Arc;
use std::time::Duration;

/// pingora allocates on every request; glibc's malloc costs a good share of the CPU time, so
/// the bench runs with mimalloc (the kinfra binary should too).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A runtime with no services.
struct NoServices(EventSender);

impl RuntimeControl for NoServices {
    fn status(&self) -> StatusReport {
        StatusReport::new("bench", Default::default())
    }
    fn logs(&self, _: Option<&str>, _: usize) -> Result<Vec<ServiceLogLine>, ActionError> {
        Ok(Vec::new())
    }
    fn subscribe_events(&self) -> tokio::sync::broadcast::Receiver<kinfra_core::Event> {
        self.0.subscribe()
    }
    fn subscribe_logs(&self) -> tokio::sync::broadcast::Receiver<ServiceLogLine> {
        tokio::sync::broadcast::channel(1).1
    }
    fn act(&self, _: Action, _: &str) -> BoxFuture<'_, Result<(), ActionError>> {
        Box::pin(async { Ok(()) })
    }
    fn request_shutdown(&self, _: &str) {}
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen = args
        .next()
        .ok_or("usage: bench_proxy LISTEN UPSTREAM_URL [THREADS]")?;
    let upstream = args
        .next()
        .ok_or("usage: bench_proxy LISTEN UPSTREAM_URL [THREADS]")?;
    let threads = args.next().map(|t| t.parse()).transpose()?;
    let options = ProxyOptions {
        config: ProxyConfig {
            http: Some(listen),
            threads,
            ..ProxyConfig::default()
        },
        routes: vec![RouteConfig {
            host: None,
            path: "/".into(),
            strip_prefix: false,
            service: None,
            upstream: Some(OneOrMany(vec![upstream])),
        }],
        dashboard_addr: None,
        state_dir: std::env::temp_dir().join("kinfra-bench-proxy"),
        tls_hosts: Vec::new(),
        activity: None,
    };
    let control: Arc<dyn RuntimeControl> = Arc::new(NoServices(EventSender::new(16)));
    let proxy = ProxyServer::start(options, control).await?;
    println!("listening on {}", proxy.http_addr().ok_or("no address")?);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    proxy.shutdown(Duration::from_secs(2)).await;
    Ok(())
}
