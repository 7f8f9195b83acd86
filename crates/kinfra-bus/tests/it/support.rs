//! Test support: a real nats-server per test, a recording `RuntimeControl`, bounded waits.

use bytes::Bytes;
use kinfra_bus::{Bus, BusOptions, BusState};
use kinfra_core::config::BusConfig;
use kinfra_core::config::types::Dur;
use kinfra_core::event::{EventKind, EventSender};
use kinfra_core::state::{Health, ServiceState};
use kinfra_core::status::{ServiceLogLine, ServiceStatus, StatusReport};
use kinfra_core::view::{
    Action, ActionError, BoxFuture, CommandCall, CommandError, RuntimeControl,
};
use kinfra_core::{Event, Secret};
use std::collections::BTreeMap;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// Project name used by the tests.
pub const PROJECT: &str = "test";
/// A secret value that must never appear on the bus.
pub const SECRET: &str = "hunter2-very-secret";

/// The nats-server binary on `PATH`; fails the test, naming the package, when it is missing.
pub fn nats_server_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    kinfra_bus::find_binary(&path).unwrap_or_else(|| {
        panic!(
            "nats-server is not on PATH: these tests run against a real NATS server; \
             install with `apt-get install nats-server` or run ./x test"
        )
    })
}

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// A nats-server started by a test, on a loopback port, with JetStream.
pub struct NatsServer {
    binary: PathBuf,
    extra: Vec<String>,
    /// Its port.
    pub port: u16,
    /// Its JetStream store directory.
    pub store: PathBuf,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts one on a free port; fails the test when nats-server is missing.
    pub async fn start() -> NatsServer {
        Self::start_with(Vec::new()).await
    }

    /// The same, with extra command-line arguments (auth, TLS, a config file).
    pub async fn start_with(extra: Vec<String>) -> NatsServer {
        let binary = nats_server_binary();
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let mut server = NatsServer {
            binary,
            extra,
            port: free_port(),
            store: dir.path().join("js"),
            child: None,
            _dir: dir,
        };
        server.run().await;
        server
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// PID of the running process.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    async fn run(&mut self) {
        let mut cmd = Command::new(&self.binary);
        cmd.args([
            "-a",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-js",
            "-sd",
        ])
        .arg(&self.store)
        .args(&self.extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nats-server: {e}"));
        self.child = Some(child);
        let port = self.port;
        wait_until(
            "nats-server accepts connections",
            Duration::from_secs(10),
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        )
        .await;
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same store.
    pub async fn restart(&mut self) {
        self.kill();
        self.run().await;
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An independent client (its own connection).
pub async fn client(url: &str) -> async_nats::Client {
    async_nats::connect(url)
        .await
        .unwrap_or_else(|e| panic!("independent client cannot connect to {url}: {e}"))
}

/// Polls `cond` every 10 ms until it holds, failing the test after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits for the bus to reach `state`.
pub async fn wait_state(bus: &Bus, state: BusState, timeout: Duration) {
    let mut rx = bus.watch_state();
    let reached = tokio::time::timeout(timeout, rx.wait_for(|s| *s == state)).await;
    assert!(
        matches!(reached, Ok(Ok(_))),
        "bus did not reach {state} within {timeout:?}; it is {} ({:?})",
        bus.state(),
        bus.status()
    );
}

/// A runtime stand-in: the NATS side is real, this records what the bus asks of it.
pub struct FakeControl {
    /// The event channel the bus reads.
    pub events: EventSender,
    logs: broadcast::Sender<ServiceLogLine>,
    /// Every action asked for, in order.
    pub actions: Mutex<Vec<(Action, String)>>,
    /// How long `act` takes for the service `slow`.
    pub slow_for: Duration,
    in_flight: AtomicUsize,
    /// Most `act` calls running at once.
    pub max_in_flight: AtomicUsize,
    /// Every command call, in order.
    pub commands: Mutex<Vec<CommandCall>>,
}

impl FakeControl {
    /// A runtime with services `api`, `worker` and `slow`.
    pub fn new() -> Arc<FakeControl> {
        Arc::new(FakeControl {
            events: EventSender::new(4096),
            logs: broadcast::channel(16).0,
            actions: Mutex::new(Vec::new()),
            slow_for: Duration::from_millis(300),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            commands: Mutex::new(Vec::new()),
        })
    }

    /// The recorded actions.
    pub fn actions(&self) -> Vec<(Action, String)> {
        self.actions.lock().map(|a| a.clone()).unwrap_or_default()
    }

    /// Emits a state change of `service`, with the secret in its message.
    pub fn emit_state(&self, service: &str, n: usize) -> Event {
        self.events.emit(EventKind::StateChanged {
            service: service.into(),
            from: ServiceState::Starting,
            to: ServiceState::Running,
            message: format!("change {n}; DB_PASSWORD={SECRET}"),
        })
    }
}

const SERVICES: [&str; 3] = ["api", "worker", "slow"];

impl RuntimeControl for FakeControl {
    fn status(&self) -> StatusReport {
        let services = SERVICES
            .iter()
            .map(|name| {
                (
                    (*name).to_string(),
                    ServiceStatus {
                        kind: "process".into(),
                        state: ServiceState::Running,
                        health: Health::Healthy,
                        status_message: format!("Service is running (token {SECRET})"),
                        port: Some(8000),
                        pid: Some(1234),
                        uptime_s: Some(5),
                        uptime: Some("5s".into()),
                        restarts: 0,
                        last_exit: None,
                        logs: vec![],
                        cpu_percent: None,
                        memory_bytes: None,
                        last_sync: None,
                        provider_state: None,
                        sleep: None,
                        progress: None,
                    },
                )
            })
            .collect::<BTreeMap<_, _>>();
        StatusReport::new(PROJECT, services)
    }

    fn logs(
        &self,
        _service: Option<&str>,
        _lines: usize,
    ) -> Result<Vec<ServiceLogLine>, ActionError> {
        Ok(vec![])
    }

    fn subscribe_events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn subscribe_logs(&self) -> broadcast::Receiver<ServiceLogLine> {
        self.logs.subscribe()
    }

    fn act(&self, action: Action, service: &str) -> BoxFuture<'_, Result<(), ActionError>> {
        let service = service.to_owned();
        Box::pin(async move {
            if !SERVICES.contains(&service.as_str()) {
                return Err(ActionError::UnknownService(service));
            }
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            if service == "slow" {
                tokio::time::sleep(self.slow_for).await;
            }
            if let Ok(mut actions) = self.actions.lock() {
                actions.push((action, service));
            }
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        })
    }

    fn request_shutdown(&self, _reason: &str) {}

    /// Resource `db` has `scale` (parameter `replicas` required; a dry-run answers with the
    /// request it would send) and `fail` (fails, with the secret in its error).
    fn command(&self, call: CommandCall) -> BoxFuture<'_, Result<serde_json::Value, CommandError>> {
        Box::pin(async move {
            if let Ok(mut calls) = self.commands.lock() {
                calls.push(call.clone());
            }
            if call.resource != "db" {
                return Err(CommandError::Input(vec![format!(
                    "unknown resource `{}`",
                    call.resource
                )]));
            }
            match call.command.as_str() {
                "scale" if call.params.contains_key("replicas") => Ok(serde_json::json!({
                    "success": true,
                    "dry_run": call.dry_run,
                    "data": {"replicas": call.params["replicas"]},
                    "requests": if call.dry_run { vec!["POST /scale"] } else { vec![] },
                })),
                "scale" => Err(CommandError::Input(vec![
                    "parameter `replicas`: missing".into(),
                    "command `scale` needs confirmation".into(),
                ])),
                "fail" => Err(CommandError::Failed(format!("upstream said no ({SECRET})"))),
                other => Err(CommandError::Input(vec![format!(
                    "resource `db` has no command `{other}`"
                )])),
            }
        })
    }
}

/// Bus options for the tests: the secret masked, fast reconnects, events to `control`.
pub fn options(control: &FakeControl, state_dir: &Path, url: Option<String>) -> BusOptions {
    let config = BusConfig {
        url,
        reconnect_max_delay: Dur::from_millis(200),
        ..BusConfig::default()
    };
    let mut options =
        BusOptions::new(PROJECT, state_dir, config).with_events(control.events.clone());
    options.secrets = vec![Secret::new(SECRET)];
    options
}

/// Sends a control request with an independent client and parses the JSON reply.
pub async fn control_request(
    client: &async_nats::Client,
    action: &str,
    body: &str,
) -> serde_json::Value {
    let subject = format!("kinfra.{PROJECT}.control.{action}");
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        client.request(subject.clone(), Bytes::from(body.to_owned())),
    )
    .await
    .unwrap_or_else(|_| panic!("no reply to {subject} within 5 s"))
    .unwrap_or_else(|e| panic!("request to {subject} failed: {e}"));
    let text = String::from_utf8_lossy(&reply.payload).into_owned();
    assert!(
        !text.contains(SECRET),
        "secret leaked in a control reply: {text}"
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("reply is not JSON ({e}): {text}"))
}

/// Parses an event message, checking that no secret is in it.
pub fn parse_event(payload: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(payload).into_owned();
    assert!(!text.contains(SECRET), "secret leaked in an event: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("event is not JSON ({e}): {text}"))
}

/// A round trip through the server on `client`'s connection: afterwards the server has
/// processed every subscription made before on it (a plain flush only empties the socket).
pub async fn roundtrip(client: &async_nats::Client) {
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await.unwrap();
    client.publish(inbox, Bytes::new()).await.unwrap();
    use futures_util::StreamExt;
    tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap_or_else(|_| panic!("no round trip through the server within 5 s"));
}
