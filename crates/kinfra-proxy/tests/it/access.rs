//! The access log: one `tracing` event per request under `kinfra::access`.

use crate::support::*;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Keeps the access log events as `field=value` lines.
struct Capture;

struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = write!(self.0, "{}={} ", field.name(), value);
    }
}

impl Subscriber for Capture {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target() == kinfra_proxy::ACCESS_TARGET
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut line = Line(String::new());
        event.record(&mut line);
        LINES.lock().unwrap().push(line.0);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_an_access_log_line() {
    let _ = tracing::subscriber::set_global_default(Capture);
    let api = Backend::start("api").await;
    let control = FakeControl::new();
    control.running("api", api.port());
    let dir = tempfile::tempdir().unwrap();
    let proxy = start(
        options(
            vec![
                service_route(None, "/", "api", false),
                service_route(None, "/down", "nope", false),
            ],
            dir.path(),
        ),
        &control,
    )
    .await;
    let addr = proxy.http_addr().unwrap();
    assert_eq!(get(addr, "/access-marker-1?q=1").await.status, 200);
    assert_eq!(get(addr, "/down/access-marker-2").await.status, 503);
    let find = |marker: &'static str| async move {
        LINES
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(marker))
            .cloned()
    };
    let ok = wait_for("the access line", || find("path=/access-marker-1?q=1")).await;
    assert!(ok.contains("status=200"), "{ok}");
    assert!(ok.contains("service=api"), "{ok}");
    assert!(ok.contains("method=GET"), "{ok}");
    assert!(ok.contains(&format!("upstream=Some({})", api.addr)), "{ok}");
    let page = wait_for("the page line", || find("path=/down/access-marker-2")).await;
    assert!(page.contains("status=503"), "{page}");
    assert_eq!(proxy.access_log_dropped(), 0);
    proxy.shutdown(Duration::from_secs(2)).await;
}
