//! systemd's readiness protocol (`sd_notify`), spoken directly: one datagram per message to the
//! unix socket named by `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace).
//!
//! `kinfra runtime up` under a `Type=notify` unit sends `READY=1` (with `STATUS=` and
//! `MAINPID=`) once the proxy and the dashboard answer (the proxy's own start-up probe, then
//! `GET /healthz` on the dashboard: [`wait_answering`]),
//! `RELOADING=1` / `READY=1` around a SIGHUP reload, `STOPPING=1` when shutdown starts, and
//! `WATCHDOG=1` every half `$WATCHDOG_USEC` from its main loop. Without `$NOTIFY_SOCKET`
//! nothing is sent and nothing fails; an unusable socket is warned about once.
//!
//! The binary takes the three variables out of its environment before any thread starts
//! ([`take_process_env`]), so nothing kinfra starts (services, nats-server, provider tools)
//! inherits them and talks to the service manager in kinfra's name.

use std::ffi::{OsStr, OsString};
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The socket variable.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// The watchdog timeout variable (microseconds).
pub const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
/// The PID the watchdog timeout is meant for.
pub const WATCHDOG_PID: &str = "WATCHDOG_PID";

/// The service manager's variables, as found in the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotifyEnv {
    /// `$NOTIFY_SOCKET`.
    pub socket: Option<OsString>,
    /// `$WATCHDOG_USEC`.
    pub watchdog_usec: Option<OsString>,
    /// `$WATCHDOG_PID`.
    pub watchdog_pid: Option<OsString>,
}

impl NotifyEnv {
    /// Reads the variables from the process environment, leaving them there.
    pub fn from_env() -> Self {
        Self {
            socket: std::env::var_os(NOTIFY_SOCKET),
            watchdog_usec: std::env::var_os(WATCHDOG_USEC),
            watchdog_pid: std::env::var_os(WATCHDOG_PID),
        }
    }
}

static TAKEN: OnceLock<NotifyEnv> = OnceLock::new();

/// Moves `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID` out of the process environment
/// (children started later do not see them) and keeps them for [`Notifier::from_process`].
/// A second call changes nothing.
///
/// # Safety
///
/// Changes the process environment: call it before any other thread exists (first thing in
/// `main`, before an async runtime is built), like [`std::env::remove_var`].
pub unsafe fn take_process_env() {
    if TAKEN.get().is_some() {
        return;
    }
    let env = NotifyEnv::from_env();
    for name in [NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID] {
        // SAFETY: the caller guarantees no other thread exists.
        unsafe { std::env::remove_var(name) };
    }
    let _ = TAKEN.set(env);
}

/// Where messages go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// A socket file.
    Path(PathBuf),
    /// A Linux abstract-namespace name (`@name`, without the `@`).
    Abstract(Vec<u8>),
}

impl Target {
    fn parse(value: &OsStr) -> Result<Self, &'static str> {
        let bytes = value.as_bytes();
        match bytes.first() {
            Some(b'/') => Ok(Target::Path(PathBuf::from(value))),
            Some(b'@') if bytes.len() > 1 => Ok(Target::Abstract(bytes[1..].to_vec())),
            _ => Err("not an absolute socket path or an @abstract name"),
        }
    }

    fn send(&self, message: &[u8]) -> std::io::Result<()> {
        let socket = UnixDatagram::unbound()?;
        // Never block the runtime on a service manager that does not read.
        socket.set_nonblocking(true)?;
        let sent = match self {
            Target::Path(path) => socket.send_to(message, path)?,
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(message, &addr)?
            }
        };
        if sent != message.len() {
            return Err(std::io::Error::other("the datagram was cut short"));
        }
        Ok(())
    }
}

/// Sends sd_notify messages to the service manager, when there is one.
#[derive(Debug)]
pub struct Notifier {
    target: Option<Target>,
    /// `$NOTIFY_SOCKET` as given, for messages.
    socket_text: String,
    watchdog: Option<Duration>,
    warned: AtomicBool,
}

impl Notifier {
    /// A notifier for the variables [`take_process_env`] took, or (when it was not called, as
    /// in an application embedding kinfra) for the ones in the environment now.
    pub fn from_process() -> Self {
        match TAKEN.get() {
            Some(env) => Self::new(env),
            None => Self::new(&NotifyEnv::from_env()),
        }
    }

    /// A notifier for `env`. A `$NOTIFY_SOCKET` that cannot be a socket address, or a bad
    /// `$WATCHDOG_USEC`/`$WATCHDOG_PID`, is warned about here (once) and left unused.
    pub fn new(env: &NotifyEnv) -> Self {
        let socket_text = env
            .socket
            .as_deref()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let target = match env.socket.as_deref() {
            None => None,
            Some(value) => match Target::parse(value) {
                Ok(target) => Some(target),
                Err(error) => {
                    tracing::warn!(
                        socket = %socket_text,
                        %error,
                        "NOTIFY_SOCKET is unusable; the service manager is not notified."
                    );
                    None
                }
            },
        };
        let watchdog = target.as_ref().and(watchdog_interval(env));
        Self {
            target,
            socket_text,
            watchdog,
            warned: AtomicBool::new(false),
        }
    }

    /// True when messages go somewhere.
    pub fn is_active(&self) -> bool {
        self.target.is_some()
    }

    /// How often to send `WATCHDOG=1` (half the manager's timeout), when it asks for it.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends one message (`KEY=VALUE` lines). Failures are warned about once, then only
    /// logged at debug level; nothing is sent without a socket.
    pub fn notify(&self, message: &str) {
        let Some(target) = &self.target else {
            return;
        };
        if let Err(error) = target.send(message.as_bytes()) {
            if self.warned.swap(true, Ordering::Relaxed) {
                tracing::debug!(socket = %self.socket_text, %error, "sd_notify failed.");
            } else {
                tracing::warn!(
                    socket = %self.socket_text,
                    %error,
                    "Cannot notify the service manager through NOTIFY_SOCKET (warned once)."
                );
            }
        }
    }

    /// `READY=1` with a status line and this process's PID.
    pub fn ready(&self, status: &str) {
        self.notify(&format!(
            "READY=1\nSTATUS={}\nMAINPID={}",
            one_line(status),
            std::process::id()
        ));
    }

    /// `RELOADING=1` (with `MONOTONIC_USEC`, which `Type=notify-reload` wants); follow it
    /// with [`Notifier::ready`] once the reload is done.
    pub fn reloading(&self, status: &str) {
        let mut message = format!("RELOADING=1\nSTATUS={}", one_line(status));
        if let Some(usec) = monotonic_usec() {
            message.push_str(&format!("\nMONOTONIC_USEC={usec}"));
        }
        self.notify(&message);
    }

    /// `STOPPING=1` with a status line.
    pub fn stopping(&self, status: &str) {
        self.notify(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
    }

    /// `WATCHDOG=1`.
    pub fn watchdog(&self) {
        self.notify("WATCHDOG=1");
    }

    /// A ticker for the watchdog pings: ticks every [`Notifier::watchdog_interval`], never
    /// without one. Poll it from the loop that would stop when the runtime is stuck.
    pub fn watchdog_ticker(&self) -> WatchdogTicker {
        WatchdogTicker(self.watchdog.map(|every| {
            let mut interval = tokio::time::interval(every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval
        }))
    }

    /// Runs `work` to its end while sending the watchdog pings `ticker` asks for (a reload
    /// may take longer than the watchdog timeout).
    pub async fn pinging_while<F: std::future::Future>(
        &self,
        ticker: &mut WatchdogTicker,
        work: F,
    ) -> F::Output {
        tokio::pin!(work);
        loop {
            tokio::select! {
                output = &mut work => return output,
                () = ticker.tick() => self.watchdog(),
            }
        }
    }
}

/// When the next `WATCHDOG=1` is due (see [`Notifier::watchdog_ticker`]).
#[derive(Debug)]
pub struct WatchdogTicker(Option<tokio::time::Interval>);

impl WatchdogTicker {
    /// Resolves at the next ping time; never when no watchdog is asked for.
    pub async fn tick(&mut self) {
        match &mut self.0 {
            Some(interval) => {
                interval.tick().await;
            }
            None => std::future::pending().await,
        }
    }
}

/// Half of `$WATCHDOG_USEC`, when it is set for this process.
fn watchdog_interval(env: &NotifyEnv) -> Option<Duration> {
    let usec = env.watchdog_usec.as_deref()?;
    let usec = match usec.to_str().and_then(|s| s.parse::<u64>().ok()) {
        Some(usec) if usec > 0 => usec,
        _ => {
            tracing::warn!(value = %usec.to_string_lossy(), "WATCHDOG_USEC is not a positive number; no watchdog pings.");
            return None;
        }
    };
    if let Some(pid) = env.watchdog_pid.as_deref() {
        match pid.to_str().and_then(|s| s.parse::<u32>().ok()) {
            Some(pid) if pid == std::process::id() => {}
            Some(pid) => {
                tracing::debug!(
                    pid,
                    "WATCHDOG_PID names another process; no watchdog pings."
                );
                return None;
            }
            None => {
                tracing::warn!(value = %pid.to_string_lossy(), "WATCHDOG_PID is not a PID; no watchdog pings.");
                return None;
            }
        }
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

/// CLOCK_MONOTONIC in microseconds (the clock systemd compares `MONOTONIC_USEC` with).
fn monotonic_usec() -> Option<u64> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write to.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) } != 0 {
        return None;
    }
    let secs = u64::try_from(now.tv_sec).ok()?;
    let micros = u64::try_from(now.tv_nsec).ok()? / 1_000;
    Some(secs * 1_000_000 + micros)
}

/// A `STATUS=` value is one line.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// Waits until the dashboard answers `GET /healthz` with 200 (a wildcard listen address is
/// reached through loopback), trying again every 100 ms; at once without a dashboard. The
/// caller bounds the wait (systemd's `TimeoutStartSec`, or a select with its signals).
///
/// The proxy needs no check here: `kinfra::start` returns only after the proxy answered its
/// own probe request on its HTTP listener (`ProxyServer::start`), and its HTTPS listener is
/// served by the same server.
pub async fn wait_answering(dashboard: Option<SocketAddr>) {
    if let Some(addr) = dashboard {
        let addr = loopback(addr);
        retry(|| async move { http_status(addr, "/healthz").await == Some(200) }).await;
    }
}

async fn retry<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut failures = 0u32;
    loop {
        if check().await {
            return;
        }
        failures += 1;
        if failures == 100 {
            tracing::warn!("The dashboard does not answer yet; READY=1 waits.");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `0.0.0.0:P` → `127.0.0.1:P`, `[::]:P` → `[::1]:P`.
fn loopback(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, a.port()))
        }
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port()))
        }
        other => other,
    }
}

/// One HTTP/1.1 `GET path` (2 s bound); the status code of the answer.
async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nUser-Agent: kinfra-ready-check\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = Vec::with_capacity(64);
        let mut buf = [0u8; 256];
        while !head.contains(&b'\n') && head.len() < 4096 {
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let line = std::str::from_utf8(&head).ok()?.lines().next()?.to_owned();
        let mut parts = line.split(' ');
        parts.next().filter(|v| v.starts_with("HTTP/1."))?;
        parts.next()?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(socket: &str, usec: Option<&str>, pid: Option<&str>) -> NotifyEnv {
        NotifyEnv {
            socket: Some(socket.into()),
            watchdog_usec: usec.map(Into::into),
            watchdog_pid: pid.map(Into::into),
        }
    }

    #[test]
    fn socket_values_are_paths_or_abstract_names() {
        assert_eq!(
            Target::parse(OsStr::new("/run/systemd/notify")),
            Ok(Target::Path("/run/systemd/notify".into()))
        );
        assert_eq!(
            Target::parse(OsStr::new("@kinfra")),
            Ok(Target::Abstract(b"kinfra".to_vec()))
        );
        for bad in ["", "@", "relative/path", "vsock:2:1234"] {
            assert!(Target::parse(OsStr::new(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn watchdog_is_half_the_timeout_and_only_for_this_pid() {
        let me = std::process::id().to_string();
        let n = Notifier::new(&env("/x", Some("30000000"), None));
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(15)));
        let n = Notifier::new(&env("/x", Some("30000000"), Some(&me)));
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(15)));
        let other = (std::process::id() + 1).to_string();
        let n = Notifier::new(&env("/x", Some("30000000"), Some(&other)));
        assert_eq!(n.watchdog_interval(), None);
        for bad in ["0", "-1", "soon"] {
            let n = Notifier::new(&env("/x", Some(bad), None));
            assert_eq!(n.watchdog_interval(), None, "{bad:?}");
        }
        // No socket, no pings.
        let n = Notifier::new(&NotifyEnv {
            watchdog_usec: Some("1000000".into()),
            ..NotifyEnv::default()
        });
        assert!(!n.is_active());
        assert_eq!(n.watchdog_interval(), None);
    }

    #[test]
    fn messages_arrive_as_datagrams_and_a_missing_socket_is_harmless() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier::new(&env(path.to_str().expect("utf-8"), None, None));
        n.ready("up\nand running");
        let mut buf = [0u8; 512];
        let len = receiver.recv(&mut buf).expect("recv");
        let text = std::str::from_utf8(&buf[..len]).expect("utf-8");
        assert_eq!(
            text,
            format!(
                "READY=1\nSTATUS=up and running\nMAINPID={}",
                std::process::id()
            )
        );
        n.reloading("reloading");
        let len = receiver.recv(&mut buf).expect("recv");
        let text = std::str::from_utf8(&buf[..len]).expect("utf-8");
        assert!(text.starts_with("RELOADING=1\n"), "{text}");
        assert!(text.contains("\nMONOTONIC_USEC="), "{text}");
        drop(receiver);
        // Gone: a warning, no panic, no error to the caller.
        n.stopping("bye");
        n.watchdog();
        assert!(n.warned.load(Ordering::Relaxed));
        // Unset: nothing at all.
        let none = Notifier::new(&NotifyEnv::default());
        none.ready("x");
        assert!(!none.is_active());
        assert!(!none.warned.load(Ordering::Relaxed));
    }
}
