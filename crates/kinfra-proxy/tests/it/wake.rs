//! Scale to zero at the proxy: requests to a sleeping target wake it (browsers get the loading
//! page, everyone else is held and then proxied), concurrent requests share one wake, a failed
//! or timed-out wake answers 503, and open connections count as activity.

use crate::support::*;
use bytes::Bytes;
use http_body_util::Full;
use kinfra_core::activity::{ActivityBoard, TargetPolicy};
use kinfra_core::view::{Action, ActionError};
use kinfra_core::{Health, ServiceState};
use kinfra_proxy::ProxyServer;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A free loopback address (bound, then released) for a backend that starts later.
fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn policy(wakes_on_request: bool, wake_timeout: Duration) -> TargetPolicy {
    TargetPolicy {
        wakes_on_request,
        wake_timeout,
    }
}

/// A proxy with one route `/` to service `api`, tracked on a board, asleep.
struct Sleeper {
    control: Arc<FakeControl>,
    board: Arc<ActivityBoard>,
    proxy: ProxyServer,
    /// Where `api` listens once awake.
    backend_addr: SocketAddr,
    /// The woken backend, kept alive by the test.
    backend: Arc<Mutex<Option<Backend>>>,
    /// Opens the gate of a real wake (see [`Sleeper::real_wake`]).
    gate: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

impl Sleeper {
    async fn start(tracked: &[(&str, TargetPolicy)]) -> Sleeper {
        let control = FakeControl::new();
        let backend_addr = free_addr();
        control.set(
            "api",
            ServiceState::Sleeping,
            Health::Unknown,
            Some(backend_addr.port()),
            "Asleep after 10m without requests",
        );
        let board = Arc::new(ActivityBoard::new());
        board.set_targets(tracked.iter().map(|(n, p)| ((*n).to_owned(), *p)));
        let dir = tempfile::tempdir().unwrap();
        let mut opts = options(vec![service_route(None, "/", "api", false)], dir.path());
        opts.activity = Some(board.clone());
        let proxy = start(opts, &control).await;
        let (gate, _) = watch::channel(false);
        Sleeper {
            control,
            board,
            proxy,
            backend_addr,
            backend: Arc::new(Mutex::new(None)),
            gate,
            _dir: dir,
        }
    }

    /// `act(Wake)` waits for the gate, reports `starting`, starts a real backend on the
    /// target's port, reports `running` and resolves `Ok`, as the runtime would.
    fn real_wake(&self) {
        let control: Weak<FakeControl> = Arc::downgrade(&self.control);
        let slot = self.backend.clone();
        let addr = self.backend_addr;
        let gate = self.gate.clone();
        self.control.on_wake(Arc::new(move |name| {
            let (control, slot, gate) = (control.clone(), slot.clone(), gate.clone());
            Box::pin(async move {
                let mut open = gate.subscribe();
                let _ = open.wait_for(|open| *open).await;
                let Some(control) = control.upgrade() else {
                    return Err(ActionError::ShuttingDown);
                };
                control.set(
                    &name,
                    ServiceState::Starting,
                    Health::Unknown,
                    Some(addr.port()),
                    "Waking up",
                );
                let backend = Backend::start_on(&name, addr).await;
                *slot.lock().unwrap() = Some(backend);
                control.running(&name, addr.port());
                Ok(())
            })
        }));
    }

    fn open_gate(&self) {
        self.gate.send_replace(true);
    }

    fn addr(&self) -> SocketAddr {
        self.proxy.http_addr().unwrap()
    }

    fn wakes(&self) -> usize {
        self.control
            .acts()
            .iter()
            .filter(|(a, n)| *a == Action::Wake && n == "api")
            .count()
    }

    /// Waits until `n` requests to `api` have been held (counted in `/metrics`).
    async fn wait_held(&self, n: usize) {
        let line = format!("kinfra_proxy_held_requests_total{{service=\"api\"}} {n}\n");
        wait_for(&format!("{n} held requests"), || {
            let found = self.proxy.metrics().render().contains(&line);
            async move { found.then_some(()) }
        })
        .await;
    }
}

fn post_json(body: &str) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .method("POST")
        .uri("/orders?x=1")
        .header("host", "localhost")
        .header("accept", "application/json")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

const HTML: (&str, &str) = ("accept", "text/html,application/xhtml+xml,*/*;q=0.8");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_gets_the_loading_page_at_once_and_the_real_answer_after_the_wake() {
    let s = Sleeper::start(&[("api", policy(true, Duration::from_secs(10)))]).await;
    s.real_wake();
    let first = get_with(s.addr(), "/page", &[HTML]).await;
    assert_eq!(first.status, 503, "{}", first.body);
    assert_eq!(first.header("x-kinfra-page"), Some("service_sleeping"));
    assert!(first.header("retry-after").is_some());
    assert!(
        first.body.contains("http-equiv=\"refresh\""),
        "{}",
        first.body
    );
    // The wake was started in the background, once.
    wait_for("the wake to be asked for", || async {
        (s.wakes() == 1).then_some(())
    })
    .await;
    s.open_gate();
    let answer = wait_for("the woken backend to answer", || async {
        let r = get_with(s.addr(), "/page", &[HTML]).await;
        (r.status == 200).then_some(r)
    })
    .await;
    assert_eq!(backend_of(&answer), "api");
    assert_eq!(s.wakes(), 1);
    s.proxy.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_post_is_held_and_answered_by_the_woken_service_with_its_body() {
    let s = Sleeper::start(&[("api", policy(true, Duration::from_secs(10)))]).await;
    s.real_wake();
    let body = r#"{"order":42,"items":["a","b"],"note":"héllo"}"#;
    let addr = s.addr();
    let held = tokio::spawn(async move { send(addr, post_json(body)).await });
    s.wait_held(1).await;
    assert!(!held.is_finished(), "a held request is not answered yet");
    s.open_gate();
    let resp = tokio::time::timeout(WAIT, held).await.unwrap().unwrap();
    let resp = resp.unwrap();
    assert_eq!(resp.status, 200, "{}", resp.body);
    let echo = resp.json();
    assert_eq!(echo["backend"], "api");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/orders?x=1");
    assert_eq!(echo["body"], body);
    assert_eq!(s.wakes(), 1);
    s.proxy.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_requests_share_one_wake() {
    let s = Sleeper::start(&[("api", policy(true, Duration::from_secs(10)))]).await;
    s.real_wake();
    let addr = s.addr();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        tasks.spawn(async move {
            let path = format!("/n/{i}");
            let req = request(&path, "localhost", &[("accept", "application/json")]);
            send(addr, req).await
        });
    }
    s.wait_held(50).await;
    assert_eq!(s.wakes(), 1, "one wake for every held request");
    s.open_gate();
    let mut answered = 0;
    while let Some(done) = tokio::time::timeout(WAIT, tasks.join_next()).await.unwrap() {
        let resp = done.unwrap().unwrap();
        assert_eq!(resp.status, 200, "{}", resp.body);
        assert_eq!(backend_of(&resp), "api");
        answered += 1;
    }
    assert_eq!(answered, 50);
    assert_eq!(s.wakes(), 1);
    let metrics = s.proxy.metrics().render();
    assert!(
        metrics.contains("kinfra_proxy_wakes_total{service=\"api\",outcome=\"ok\"} 1\n"),
        "{metrics}"
    );
    s.proxy.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_wake_answers_503_with_the_reason_never_200() {
    let s = Sleeper::start(&[("api", policy(true, Duration::from_secs(10)))]).await;
    s.control.on_wake(Arc::new(|name| {
        Box::pin(async move {
            Err(ActionError::NotAvailable {
                action: "wake".into(),
                service: name,
                reason: "exited with code 3 before it was ready".into(),
            })
        })
    }));
    let resp = send(s.addr(), post_json("{}")).await.unwrap();
    assert_eq!(resp.status, 503, "{}", resp.body);
    assert!(resp.header("retry-after").is_some());
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let json = resp.json();
    assert_eq!(json["error"], "wake_failed");
    assert_eq!(json["service"], "api");
    assert!(
        json["detail"]
            .as_str()
            .unwrap_or("")
            .contains("exited with code 3"),
        "{json}"
    );
    // A browser right after the failure sees the error, not the loading page forever.
    let page = get_with(s.addr(), "/", &[HTML]).await;
    assert_eq!(page.status, 503);
    assert_eq!(page.header("x-kinfra-page"), Some("wake_failed"));
    assert!(page.body.contains("exited with code 3"), "{}", page.body);
    assert!(page.header("retry-after").is_some());
    s.proxy.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wake_that_never_completes_answers_503_after_the_wake_timeout() {
    let s = Sleeper::start(&[("api", policy(true, Duration::from_secs(1)))]).await;
    s.control
        .on_wake(Arc::new(|_| Box::pin(std::future::pending())));
    let req = request("/slow", "localhost", &[("accept", "application/json")]);
    let resp = tokio::time::timeout(WAIT, send(s.addr(), req))
        .await
        .expect("answered within the wake timeout (and well before WAIT)")
        .unwrap();
    assert_eq!(resp.status, 503, "{}", resp.body);
    assert!(resp.header("retry-after").is_some());
    let json = resp.json();
    assert_eq!(json["error"], "wake_timeout");
    assert_eq!(json["service"], "api");
    assert_eq!(s.wakes(), 1);
    // The wake itself gives up at the same timeout (counted when it does).
    wait_for("the timed-out wake to be counted", || {
        let found = s
            .proxy
            .metrics()
            .render()
            .contains("kinfra_proxy_wakes_total{service=\"api\",outcome=\"timeout\"} 1\n");
        async move { found.then_some(()) }
    })
    .await;
    s.proxy.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_while_held_drops_its_wait() {
    let s = Sleeper::start(&[("api", policy(true, Duration::from_secs(60)))]).await;
    s.control
        .on_wake(Arc::new(|_| Box::pin(std::future::pending())));
    let mut client = TcpStream::connect(s.addr()).await.unwrap();
    client
        .write_all(b"GET /x HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\r\n")
        .await
        .unwrap();
    s.wait_held(1).await;
    assert_eq!(s.proxy.in_flight(), 1);
    drop(client);
    wait_for("the held request to be dropped", || async {
        (s.proxy.in_flight() == 0).then_some(())
    })
    .await;
    let api = s.board.get("api").unwrap();
    assert_eq!(api.in_flight(), 0);
    s.proxy.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_wins_over_waking() {
    let s = Sleeper::start(&[("api", policy(true, Duration::from_secs(10)))]).await;
    s.real_wake();
    s.proxy.set_maintenance(Some("api"), true);
    let resp = get_with(s.addr(), "/", &[("accept", "application/json")]).await;
    assert_eq!(resp.status, 503);
    assert_eq!(resp.json()["error"], "maintenance");
    assert!(s.control.acts().is_empty());
    s.proxy.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_not_on_the_board_keeps_todays_sleeping_page() {
    // Only `db` is tracked; `api` sleeps (a cloud resource paused by its provider, say).
    let s = Sleeper::start(&[("db", policy(true, Duration::from_secs(10)))]).await;
    s.real_wake();
    s.open_gate();
    let resp = get_with(s.addr(), "/", &[("accept", "application/json")]).await;
    assert_eq!(resp.status, 503);
    assert_eq!(resp.json()["error"], "service_sleeping");
    let html = get_with(s.addr(), "/", &[HTML]).await;
    assert_eq!(html.header("x-kinfra-page"), Some("service_sleeping"));
    assert!(s.control.acts().is_empty(), "no wake asked for");
    s.proxy.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_set_at_run_time_are_taken_in_by_activity_changed() {
    let s = Sleeper::start(&[]).await;
    s.real_wake();
    s.open_gate();
    let json = [("accept", "application/json")];
    let resp = get_with(s.addr(), "/", &json).await;
    assert_eq!(resp.json()["error"], "service_sleeping");
    assert!(s.control.acts().is_empty());
    // A reload makes `api` sleep when idle.
    s.board
        .set_targets([("api".to_owned(), policy(true, Duration::from_secs(10)))]);
    s.proxy.activity_changed();
    let resp = get_with(s.addr(), "/after", &json).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(backend_of(&resp), "api");
    assert_eq!(s.wakes(), 1);
    // And back: no longer tracked, requests record nothing.
    let api = s.board.get("api").unwrap();
    // (A request counts until pingora's last hook, which may run after the client got its
    // answer.)
    wait_for("the earlier requests to end", || async {
        (s.proxy.in_flight() == 0 && api.in_flight() == 0).then_some(())
    })
    .await;
    s.board.set_targets([]);
    s.proxy.activity_changed();
    let slow = {
        let addr = s.addr();
        tokio::spawn(async move { get(addr, "/slow?ms=1000").await })
    };
    wait_for("the slow request to be in flight", || async {
        (s.proxy.in_flight() == 1).then_some(())
    })
    .await;
    assert_eq!(api.in_flight(), 0);
    assert_eq!(slow.await.unwrap().status, 200);
    s.proxy.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_already_starting_is_waited_for_without_another_wake() {
    let s = Sleeper::start(&[("api", policy(true, Duration::from_secs(10)))]).await;
    // Woken by `kinfra runtime wake api`, say: starting, not ready yet.
    let port = s.backend_addr.port();
    s.control.set(
        "api",
        ServiceState::Starting,
        Health::Unknown,
        Some(port),
        "Waking up",
    );
    s.proxy.refresh(&*s.control);
    let addr = s.addr();
    let held = tokio::spawn(async move { send(addr, post_json("{\"a\":1}")).await });
    s.wait_held(1).await;
    let browser = get_with(s.addr(), "/", &[HTML]).await;
    assert_eq!(browser.header("x-kinfra-page"), Some("service_starting"));
    let backend = Backend::start_on("api", s.backend_addr).await;
    s.control.running("api", port);
    let resp = tokio::time::timeout(WAIT, held)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(resp.json()["body"], "{\"a\":1}");
    assert!(s.control.acts().is_empty(), "no wake asked for");
    drop(backend);
    s.proxy.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_goes_back_to_sleep_while_a_request_waits_is_woken() {
    let s = Sleeper::start(&[("api", policy(true, Duration::from_secs(10)))]).await;
    s.real_wake();
    s.open_gate();
    let port = s.backend_addr.port();
    s.control.set(
        "api",
        ServiceState::Starting,
        Health::Unknown,
        Some(port),
        "Starting",
    );
    s.proxy.refresh(&*s.control);
    let addr = s.addr();
    let held = tokio::spawn(async move { send(addr, post_json("{}")).await });
    s.wait_held(1).await;
    assert!(s.control.acts().is_empty());
    s.control.set(
        "api",
        ServiceState::Sleeping,
        Health::Unknown,
        Some(port),
        "Asleep",
    );
    let resp = tokio::time::timeout(WAIT, held)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(s.wakes(), 1);
    s.proxy.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_fails_while_starting_answers_its_page_to_held_requests() {
    let s = Sleeper::start(&[("api", policy(true, Duration::from_secs(10)))]).await;
    let port = s.backend_addr.port();
    s.control.set(
        "api",
        ServiceState::Starting,
        Health::Unknown,
        Some(port),
        "Waking up",
    );
    s.proxy.refresh(&*s.control);
    let addr = s.addr();
    let held = tokio::spawn(async move { send(addr, post_json("{}")).await });
    s.wait_held(1).await;
    s.control.set(
        "api",
        ServiceState::Failed,
        Health::Unknown,
        Some(port),
        "exited with code 3",
    );
    let resp = tokio::time::timeout(WAIT, held)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(resp.status, 503, "{}", resp.body);
    assert!(resp.header("retry-after").is_some());
    assert_eq!(resp.json()["state"], "failed");
    s.proxy.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_wake_target_is_not_woken_by_requests() {
    let s = Sleeper::start(&[("api", policy(false, Duration::from_secs(10)))]).await;
    s.real_wake();
    let resp = get_with(s.addr(), "/", &[("accept", "application/json")]).await;
    assert_eq!(resp.status, 503);
    assert_eq!(resp.json()["error"], "service_sleeping");
    assert!(s.control.acts().is_empty());
    s.proxy.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_counts_as_activity_until_it_closes() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        read_head(&mut s).await;
        s.write_all(WS_SWITCHING).await.unwrap();
        echo_until_closed(&mut s).await;
    });
    let control = FakeControl::new();
    control.running("api", upstream.port());
    let board = Arc::new(ActivityBoard::new());
    board.set_targets([("api".to_owned(), policy(true, Duration::from_secs(10)))]);
    let api = board.get("api").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(vec![service_route(None, "/", "api", false)], dir.path());
    opts.activity = Some(board.clone());
    let proxy = start(opts, &control).await;

    let (mut ws, head) = ws_connect(proxy.http_addr().unwrap()).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    for _ in 0..3 {
        ws_echoes(&mut ws, 1, "the WebSocket").await;
        assert_eq!(api.in_flight(), 1, "the open WebSocket counts");
        assert_eq!(api.idle_for(), Duration::ZERO);
    }
    drop(ws);
    wait_for("the closed WebSocket to end its activity", || async {
        (api.in_flight() == 0).then_some(())
    })
    .await;
    proxy.shutdown(Duration::from_secs(2)).await;
}

/// The race Sablier's users hit: the runtime decides to put an idle target to sleep while a
/// request arrives. With the target marked as draining (`TargetActivity::try_drain`), the
/// request must not reach the backend that is about to go away: it is held and wakes the
/// target after the sleep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_racing_a_decided_sleep_is_held_and_wakes_the_target_after_it() {
    let s = Sleeper::start(&[("api", policy(true, Duration::from_secs(10)))]).await;
    let backend = Backend::start_on("api", s.backend_addr).await;
    s.control.running("api", s.backend_addr.port());
    s.proxy.activity_changed();
    let activity = s.board.get("api").unwrap();
    assert!(activity.try_drain(), "nothing is open, so the sleep holds");
    // The runtime's wake: waits for the gate (the sleep and the start), then the target
    // runs again, no longer draining.
    let gate = s.gate.clone();
    let woken = activity.clone();
    s.control.on_wake(Arc::new(move |_| {
        let (gate, woken) = (gate.clone(), woken.clone());
        Box::pin(async move {
            let _ = gate.subscribe().wait_for(|open| *open).await;
            woken.undrain();
            Ok(())
        })
    }));
    let addr = s.addr();
    let held = tokio::spawn(async move { send(addr, post_json(r#"{"n":1}"#)).await });
    s.wait_held(1).await;
    assert_eq!(
        backend
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a request reached a target the runtime is putting to sleep"
    );
    assert_eq!(s.wakes(), 1);
    s.open_gate();
    let resp = tokio::time::timeout(WAIT, held)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(resp.json()["body"], r#"{"n":1}"#);
    s.proxy.shutdown(Duration::from_secs(2)).await;
}

/// A WebSocket whose handshake woke the target: the upgraded connection counts as open for as
/// long as it lasts (its request was held during the wake, then proxied), so the target is
/// never idle under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_that_woke_the_target_counts_until_it_closes() {
    let s = Sleeper::start(&[("api", policy(true, Duration::from_secs(10)))]).await;
    let control: Weak<FakeControl> = Arc::downgrade(&s.control);
    let addr = s.backend_addr;
    s.control.on_wake(Arc::new(move |name| {
        let control = control.clone();
        Box::pin(async move {
            let listener = TcpListener::bind(addr).await.unwrap();
            tokio::spawn(async move {
                let (mut up, _) = listener.accept().await.unwrap();
                read_head(&mut up).await;
                up.write_all(WS_SWITCHING).await.unwrap();
                echo_until_closed(&mut up).await;
            });
            let Some(control) = control.upgrade() else {
                return Err(ActionError::ShuttingDown);
            };
            control.running(&name, addr.port());
            Ok(())
        })
    }));
    let api = s.board.get("api").unwrap();
    let (mut ws, head) = ws_connect(s.addr()).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(s.wakes(), 1);
    for _ in 0..3 {
        ws_echoes(&mut ws, 1, "the WebSocket").await;
        assert_eq!(api.in_flight(), 1, "the open WebSocket counts");
    }
    drop(ws);
    wait_for("the closed WebSocket to end its activity", || async {
        (api.in_flight() == 0).then_some(())
    })
    .await;
    s.proxy.shutdown(Duration::from_secs(2)).await;
}
