//! Test support: a runtime double whose status the test sets, real backends (hyper and raw
//! TCP), and small HTTP/TLS clients.

#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use kinfra_core::config::{OneOrMany, ProxyConfig, RouteConfig};
use kinfra_core::event::EventSender;
use kinfra_core::status::{ServiceLogLine, ServiceStatus, StatusReport};
use kinfra_core::view::{Action, ActionError, BoxFuture, RuntimeControl};
use kinfra_core::{Event, EventKind, Health, ServiceState};
use kinfra_proxy::{ProxyOptions, ProxyServer};
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// The longest any condition is waited for.
pub const WAIT: Duration = Duration::from_secs(10);

/// What the fake runtime does for `act(Wake, name)`.
pub type WakeHook =
    Arc<dyn Fn(String) -> BoxFuture<'static, Result<(), ActionError>> + Send + Sync>;

/// A stand-in for the runtime: the test decides what `status()` says and emits the events.
pub struct FakeControl {
    services: Mutex<BTreeMap<String, ServiceStatus>>,
    events: EventSender,
    /// Every `act` call, in order.
    acts: Mutex<Vec<(Action, String)>>,
    /// Answers `act(Wake, _)`; `Ok(())` at once without one.
    wake: Mutex<Option<WakeHook>>,
}

impl FakeControl {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            services: Mutex::new(BTreeMap::new()),
            events: EventSender::new(256),
            acts: Mutex::new(Vec::new()),
            wake: Mutex::new(None),
        })
    }

    /// Sets what `act(Wake, name)` does.
    pub fn on_wake(&self, hook: WakeHook) {
        *self.wake.lock().unwrap() = Some(hook);
    }

    /// The `act` calls so far.
    pub fn acts(&self) -> Vec<(Action, String)> {
        self.acts.lock().unwrap().clone()
    }

    /// Sets a service's state and emits `StateChanged`, as the supervisor would.
    pub fn set(
        &self,
        name: &str,
        state: ServiceState,
        health: Health,
        port: Option<u16>,
        message: &str,
    ) {
        let from = {
            let mut services = self.services.lock().unwrap();
            let entry = services
                .entry(name.to_owned())
                .or_insert_with(|| ServiceStatus {
                    kind: "process".into(),
                    state: ServiceState::Pending,
                    health: Health::Unknown,
                    status_message: String::new(),
                    port: None,
                    pid: None,
                    uptime_s: None,
                    uptime: None,
                    restarts: 0,
                    last_exit: None,
                    logs: Vec::new(),
                    cpu_percent: None,
                    memory_bytes: None,
                    last_sync: None,
                    provider_state: None,
                    sleep: None,
                    progress: None,
                });
            let from = entry.state;
            entry.state = state;
            entry.health = health;
            entry.port = port;
            entry.status_message = message.to_owned();
            from
        };
        self.events.emit(EventKind::StateChanged {
            service: name.to_owned(),
            from,
            to: state,
            message: message.to_owned(),
        });
    }

    pub fn running(&self, name: &str, port: u16) {
        self.set(
            name,
            ServiceState::Running,
            Health::Healthy,
            Some(port),
            "Service is running",
        );
    }
}

impl RuntimeControl for FakeControl {
    fn status(&self) -> StatusReport {
        StatusReport::new("test", self.services.lock().unwrap().clone())
    }
    fn logs(&self, _: Option<&str>, _: usize) -> Result<Vec<ServiceLogLine>, ActionError> {
        Ok(Vec::new())
    }
    fn subscribe_events(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.events.subscribe()
    }
    fn subscribe_logs(&self) -> tokio::sync::broadcast::Receiver<ServiceLogLine> {
        tokio::sync::broadcast::channel(1).1
    }
    fn act(&self, action: Action, name: &str) -> BoxFuture<'_, Result<(), ActionError>> {
        self.acts.lock().unwrap().push((action, name.to_owned()));
        let hook = self.wake.lock().unwrap().clone();
        match (action, hook) {
            (Action::Wake, Some(hook)) => hook(name.to_owned()),
            _ => Box::pin(async { Ok(()) }),
        }
    }
    fn request_shutdown(&self, _: &str) {}
}

pub fn service_route(host: Option<&str>, path: &str, service: &str, strip: bool) -> RouteConfig {
    RouteConfig {
        host: host.map(str::to_owned),
        path: path.into(),
        strip_prefix: strip,
        service: Some(service.into()),
        upstream: None,
    }
}

pub fn upstream_route(path: &str, urls: &[String], strip: bool) -> RouteConfig {
    RouteConfig {
        host: None,
        path: path.into(),
        strip_prefix: strip,
        service: None,
        upstream: Some(OneOrMany(urls.to_vec())),
    }
}

/// Options for a plain-HTTP proxy on a free loopback port, one worker thread.
pub fn options(routes: Vec<RouteConfig>, state_dir: &Path) -> ProxyOptions {
    ProxyOptions {
        config: ProxyConfig {
            http: Some("127.0.0.1:0".into()),
            https: None,
            threads: Some(1),
            ..ProxyConfig::default()
        },
        routes,
        dashboard_addr: None,
        state_dir: state_dir.to_owned(),
        tls_hosts: Vec::new(),
        activity: None,
    }
}

pub async fn start(options: ProxyOptions, control: &Arc<FakeControl>) -> ProxyServer {
    let control: Arc<dyn RuntimeControl> = control.clone();
    ProxyServer::start(options, control)
        .await
        .expect("the proxy starts")
}

/// Polls `check` until it returns `Some`, for at most [`WAIT`].
pub async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Backends

/// A real HTTP/1.1 backend (hyper) that echoes requests as JSON.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    tasks: Arc<Mutex<Option<JoinSet<()>>>>,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(name, listener)
    }

    /// Serves on a given address (to bring a killed backend back on its port).
    pub async fn start_on(name: &str, addr: SocketAddr) -> Backend {
        let listener = wait_for("the port to be free again", || async {
            TcpListener::bind(addr).await.ok()
        })
        .await;
        Self::serve(name, listener)
    }

    fn serve(name: &str, listener: TcpListener) -> Backend {
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let tasks: Arc<Mutex<Option<JoinSet<()>>>> = Arc::new(Mutex::new(Some(JoinSet::new())));
        let (n, c, t) = (name.to_owned(), connections.clone(), tasks.clone());
        let accept = async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let name = n.clone();
                let conn = async move {
                    let svc = service_fn(move |req| handle(name.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                };
                if let Some(set) = t.lock().unwrap().as_mut() {
                    set.spawn(conn);
                }
            }
        };
        if let Some(set) = tasks.lock().unwrap().as_mut() {
            set.spawn(accept);
        }
        Backend {
            addr,
            name: name.to_owned(),
            connections,
            tasks,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops listening and drops every open connection, like a crash.
    pub fn kill(&self) {
        if let Some(mut set) = self.tasks.lock().unwrap().take() {
            set.abort_all();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

fn query_ms(req: &Request<Incoming>) -> u64 {
    req.uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ms=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn handle(name: String, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    if req.uri().path() == "/slow" {
        tokio::time::sleep(Duration::from_millis(query_ms(&req))).await;
        return Ok(Response::new(Full::new(Bytes::from("slow done"))));
    }
    let method = req.method().to_string();
    let version = format!("{:?}", req.version());
    let mut headers = serde_json::Map::new();
    for (k, v) in req.headers() {
        headers.insert(
            k.as_str().to_owned(),
            serde_json::Value::String(v.to_str().unwrap_or("?").to_owned()),
        );
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let json = serde_json::json!({
        "backend": name,
        "method": method,
        "path": path,
        "version": version,
        "headers": headers,
        "body_len": body.len(),
        "body": String::from_utf8_lossy(&body),
    });
    let mut resp = Response::new(Full::new(Bytes::from(json.to_string())));
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    resp.headers_mut()
        .insert("keep-alive", "timeout=30".parse().unwrap());
    Ok(resp)
}

/// Reads an HTTP/1 request head from a raw stream.
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.unwrap();
        assert!(n > 0, "connection closed before the end of the head");
        buf.push(byte[0]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// A WebSocket handshake (RFC 6455's sample key) for `/ws/chat`.
pub const WS_HANDSHAKE: &[u8] =
    b"GET /ws/chat HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
      Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A backend's `101` to [`WS_HANDSHAKE`].
pub const WS_SWITCHING: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
      Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

/// A WebSocket frame "Hello", masked (RFC 6455, 5.7).
pub const WS_FRAME: &[u8] = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58";

/// A backend's side of an upgraded connection: echoes what comes until either side closes.
pub async fn echo_until_closed(s: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    loop {
        let n = s.read(&mut buf).await.unwrap_or(0);
        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Connects to `proxy`, sends [`WS_HANDSHAKE`] and returns the stream with the answer's head.
pub async fn ws_connect(proxy: SocketAddr) -> (TcpStream, String) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(WS_HANDSHAKE).await.unwrap();
    let head = tokio::time::timeout(WAIT, read_head(&mut s)).await.unwrap();
    (s, head)
}

/// Sends [`WS_FRAME`] `rounds` times and expects each back; `what` names the socket in failures.
pub async fn ws_echoes(s: &mut TcpStream, rounds: usize, what: &str) {
    for round in 0..rounds {
        s.write_all(WS_FRAME).await.unwrap();
        let mut back = vec![0u8; WS_FRAME.len()];
        let read = tokio::time::timeout(WAIT, s.read_exact(&mut back)).await;
        assert!(
            matches!(read, Ok(Ok(_))),
            "{what}, round {round}: the tunnel closed: {read:?}"
        );
        assert_eq!(back, WS_FRAME, "{what}, round {round}");
    }
}

/// A proxy with one upstream route `/ws` to `upstream`.
pub async fn ws_proxy(upstream: SocketAddr, dir: &Path) -> ProxyServer {
    let control = FakeControl::new();
    start(
        options(
            vec![upstream_route(
                "/ws",
                &[format!("http://{upstream}")],
                false,
            )],
            dir,
        ),
        &control,
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// Clients

/// A response with its body read in full.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Sends one request on a new connection.
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Result<Resp, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    collect(resp).await
}

pub async fn collect(resp: Response<Incoming>) -> Result<Resp, String> {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

pub fn request(path: &str, host: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::builder().uri(path).header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

pub async fn get(addr: SocketAddr, path: &str) -> Resp {
    send(addr, request(path, "localhost", &[]))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

pub async fn get_host(addr: SocketAddr, host: &str, path: &str) -> Resp {
    send(addr, request(path, host, &[]))
        .await
        .unwrap_or_else(|e| panic!("GET {host}{path}: {e}"))
}

pub async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    send(addr, request(path, "localhost", headers))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// Which backend answered, from the echo body.
pub fn backend_of(resp: &Resp) -> String {
    resp.json()["backend"].as_str().unwrap_or("").to_owned()
}

/// Names of this process's threads whose name starts with `prefix`.
pub fn threads_named(prefix: &str) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
        .filter(|name| name.trim().starts_with(prefix))
        .count()
}

/// Counts of each header value, handy for load results.
pub fn tally<I: IntoIterator<Item = String>>(items: I) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for i in items {
        *m.entry(i).or_default() += 1;
    }
    m
}
