//! Test support: Debian's Pebble and pebble-challtestsrv as child processes (killed by PID on
//! drop), the kinfra proxy on free loopback ports, a store, small HTTP(S)/TLS clients, and
//! bounded waits.

#![allow(dead_code)]

use kinfra_acme::{AcmeHandle, AcmeOptions, AcmeService};
use kinfra_core::config::{AcmeConfig, ChallengeKind, Dur, ProxyConfig, StoreConfig};
use kinfra_core::event::{Event, EventSender};
use kinfra_core::status::{ServiceLogLine, StatusReport};
use kinfra_core::view::{Action, ActionError, BoxFuture, RuntimeControl};
use kinfra_proxy::{ProxyOptions, ProxyServer};
use kinfra_store::Store;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest a condition is waited for unless a test says otherwise.
pub const WAIT: Duration = Duration::from_secs(30);

/// Polls `check` every 20 ms until it returns `Some`, for at most `limit`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KINFRA_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A child process killed (by its PID) and reaped on drop.
pub struct Proc {
    name: &'static str,
    child: Option<Child>,
}

impl Proc {
    pub fn spawn(name: &'static str, cmd: &mut Command) -> Proc {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts (apt-get install -y pebble): {e}"));
        Proc {
            name,
            child: Some(child),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_some() {
            tracing::debug!(name = self.name, pid = self.pid(), "Killing test process.");
        }
        self.kill();
    }
}

/// Pebble's own TLS: a CA and a `localhost`/`127.0.0.1` certificate it signs.
pub struct PebbleTls {
    pub ca_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub ca_path: PathBuf,
}

pub fn pebble_tls(dir: &Path) -> PebbleTls {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "kinfra test Pebble TLS CA");
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("leaf");
    let (cert_path, key_path, ca_path) = (
        dir.join("pebble-cert.pem"),
        dir.join("pebble-key.pem"),
        dir.join("pebble-ca.pem"),
    );
    std::fs::write(&cert_path, leaf.pem()).expect("write");
    std::fs::write(&key_path, key.serialize_pem()).expect("write");
    std::fs::write(&ca_path, ca_cert.pem()).expect("write");
    PebbleTls {
        ca_pem: ca_cert.pem(),
        cert_path,
        key_path,
        ca_path,
    }
}

/// Pebble and its DNS server, pointed at the proxy's ports.
pub struct Pebble {
    pub dir: PathBuf,
    pub tls: PebbleTls,
    pub acme_port: u16,
    pub mgmt_port: u16,
    pub dns_port: u16,
    pub dns_mgmt_port: u16,
    pub http_port: u16,
    pub tls_port: u16,
    pub validity_secs: Option<u64>,
    pub env: Vec<(&'static str, String)>,
    pebble: Option<Proc>,
    dns: Option<Proc>,
}

impl Pebble {
    /// Starts pebble-challtestsrv (DNS: every name is 127.0.0.1) and Pebble, validating on
    /// `http_port` (HTTP-01) and `tls_port` (TLS-ALPN-01); waits until both answer.
    pub async fn start(
        dir: &Path,
        http_port: u16,
        tls_port: u16,
        validity_secs: Option<u64>,
    ) -> Pebble {
        Self::start_with(dir, http_port, tls_port, validity_secs, &[]).await
    }

    /// [`Pebble::start`] with extra environment variables for Pebble.
    pub async fn start_with(
        dir: &Path,
        http_port: u16,
        tls_port: u16,
        validity_secs: Option<u64>,
        extra_env: &[(&'static str, &str)],
    ) -> Pebble {
        let mut p = Pebble {
            dir: dir.to_owned(),
            tls: pebble_tls(dir),
            acme_port: free_port(),
            mgmt_port: free_port(),
            dns_port: free_port(),
            dns_mgmt_port: free_port(),
            http_port,
            tls_port,
            validity_secs,
            // No random validation delay; every order validates (no reused authorizations).
            // Nonce rejection stays at Pebble's default.
            env: vec![
                ("PEBBLE_VA_NOSLEEP", "1".into()),
                ("PEBBLE_AUTHZREUSE", "0".into()),
            ],
            pebble: None,
            dns: None,
        };
        p.env
            .extend(extra_env.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let dns = Proc::spawn(
            "pebble-challtestsrv",
            Command::new("pebble-challtestsrv")
                .arg("-dns01")
                .arg(format!("127.0.0.1:{}", p.dns_port))
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .arg("-management")
                .arg(format!("127.0.0.1:{}", p.dns_mgmt_port))
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""]),
        );
        p.dns = Some(dns);
        let mgmt = p.dns_mgmt_port;
        wait_for("pebble-challtestsrv", WAIT, || async move {
            TcpStream::connect(("127.0.0.1", mgmt))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        p.start_pebble().await;
        p
    }

    /// (Re)starts Pebble itself (a new CA: new roots, no accounts).
    pub async fn start_pebble(&mut self) {
        let mut config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{}", self.acme_port),
                "managementListenAddress": format!("127.0.0.1:{}", self.mgmt_port),
                "certificate": self.tls.cert_path,
                "privateKey": self.tls.key_path,
                "httpPort": self.http_port,
                "tlsPort": self.tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
            }
        });
        if let Some(v) = self.validity_secs {
            config["pebble"]["certificateValidityPeriod"] = v.into();
        }
        let path = self.dir.join("pebble-config.json");
        std::fs::write(&path, config.to_string()).expect("write config");
        let mut cmd = Command::new("pebble");
        cmd.arg("-config")
            .arg(&path)
            .arg("-dnsserver")
            .arg(format!("127.0.0.1:{}", self.dns_port));
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.pebble = Some(Proc::spawn("pebble", &mut cmd));
        let dir_url = self.directory();
        let ca = self.tls.ca_pem.clone();
        let acme_port = self.acme_port;
        wait_for("pebble's directory", WAIT, || {
            let ca = ca.clone();
            let url = dir_url.clone();
            async move {
                let _ = url;
                https_get(acme_port, "/dir", &ca)
                    .await
                    .ok()
                    .filter(|(s, _)| *s == 200)
            }
        })
        .await;
    }

    /// Kills Pebble (the DNS server keeps running).
    pub fn stop_pebble(&mut self) {
        if let Some(mut p) = self.pebble.take() {
            p.kill();
        }
    }

    pub fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.acme_port)
    }

    /// Pebble's current root certificate (PEM), from the management API.
    pub async fn root(&self) -> String {
        let (status, body) = https_get(self.mgmt_port, "/roots/0", &self.tls.ca_pem)
            .await
            .expect("pebble management answers");
        assert_eq!(status, 200, "GET /roots/0");
        String::from_utf8(body).expect("PEM")
    }

    /// Makes `host` resolve to `ip` (pebble-challtestsrv's management API).
    pub async fn set_a(&self, host: &str, ip: &str) {
        let body = serde_json::json!({"host": host, "addresses": [ip]}).to_string();
        let (status, _) = http_post(self.dns_mgmt_port, "/add-a", &body).await;
        assert_eq!(status, 200, "add-a");
    }
}

fn parse_response(raw: &[u8]) -> (u16, Vec<u8>) {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut body = raw[split..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&data[..line_end])
                .split(';')
                .next()
                .unwrap_or("0")
                .trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        out.extend_from_slice(&data[start..(start + size).min(data.len())]);
        data = &data[(start + size + 2).min(data.len())..];
    }
    out
}

/// `GET path` over HTTPS to 127.0.0.1:port, trusting `ca_pem`.
pub async fn https_get(port: u16, path: &str, ca_pem: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let connector = connector(ca_pem);
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = connector.connect(name, tcp).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw).await;
    Ok(parse_response(&raw))
}

/// `POST path` over plain HTTP to 127.0.0.1:port.
pub async fn http_post(port: u16, path: &str, body: &str) -> (u16, Vec<u8>) {
    let mut tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    let _ = tcp.read_to_end(&mut raw).await;
    parse_response(&raw)
}

pub fn connector(ca_pem: &str) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("PEM")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A TLS handshake to `addr` for `domain`, verified against `root_pem`; returns the leaf
/// certificate the server sent (DER).
pub async fn handshake(addr: SocketAddr, domain: &str, root_pem: &str) -> std::io::Result<Vec<u8>> {
    let connector = connector(root_pem);
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(domain.to_owned())
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let tls = connector.connect(name, tcp).await?;
    let (_, conn) = tls.get_ref();
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .unwrap_or_default();
    Ok(leaf)
}

/// A runtime double for the proxy: no services.
pub struct NoServices {
    events: EventSender,
}

impl RuntimeControl for NoServices {
    fn status(&self) -> StatusReport {
        StatusReport::new("test", Default::default())
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
    fn act(&self, _: Action, _: &str) -> BoxFuture<'_, Result<(), ActionError>> {
        Box::pin(async { Ok(()) })
    }
    fn request_shutdown(&self, _: &str) {}
}

/// The proxy with HTTP and HTTPS on free loopback ports.
pub async fn proxy(state_dir: &Path) -> ProxyServer {
    let options = ProxyOptions {
        config: ProxyConfig {
            http: Some("127.0.0.1:0".into()),
            https: Some("127.0.0.1:0".into()),
            threads: Some(1),
            ..ProxyConfig::default()
        },
        routes: Vec::new(),
        dashboard_addr: None,
        state_dir: state_dir.to_owned(),
        tls_hosts: Vec::new(),
        activity: None,
    };
    let control: Arc<dyn RuntimeControl> = Arc::new(NoServices {
        events: EventSender::new(16),
    });
    ProxyServer::start(options, control)
        .await
        .expect("the proxy starts")
}

/// The store on disk under `state_dir`.
pub async fn store(state_dir: &Path) -> Store {
    Store::open(&StoreConfig::default(), state_dir)
        .await
        .expect("the store opens")
}

/// `[acme]` for Pebble: fast retries for tests.
pub fn acme_config(pebble: &Pebble, domains: &[&str], challenge: ChallengeKind) -> AcmeConfig {
    AcmeConfig {
        email: Some("ops@kinfra.test".into()),
        directory: pebble.directory(),
        domains: domains.iter().map(|d| (*d).to_owned()).collect(),
        challenge,
        ca_roots: vec![pebble.tls.ca_path.clone()],
        export_pem: true,
        renew_before: None,
        check_interval: Dur::from_secs(3600),
        retry_min: Dur::from_millis(1000),
        retry_max: Dur::from_millis(4000),
        orders_per_hour: 100,
    }
}

pub fn acme_options(state_dir: &Path, owner: &str) -> AcmeOptions {
    AcmeOptions {
        state_dir: Some(state_dir.to_owned()),
        owner: owner.into(),
        lock_ttl: Duration::from_secs(60),
        lock_wait: Duration::from_millis(300),
        order_timeout: Duration::from_secs(30),
        request_timeout: Duration::from_secs(5),
        quick_retries: 1,
        quick_retry_delay: Duration::from_millis(200),
        watch_interval: Duration::from_secs(15),
    }
}

/// Starts the ACME service on `proxy`'s stores.
pub async fn acme(
    config: AcmeConfig,
    options: AcmeOptions,
    store: &Store,
    proxy: &ProxyServer,
    events: &EventSender,
) -> AcmeHandle {
    AcmeService::start(
        config,
        options,
        store.clone(),
        proxy.cert_resolver(),
        proxy.acme_challenges(),
        events.clone(),
    )
    .await
    .expect("the ACME service starts")
}

/// Every event received so far on `rx`.
pub fn drain(rx: &mut tokio::sync::broadcast::Receiver<Event>, into: &mut Vec<Event>) {
    while let Ok(e) = rx.try_recv() {
        into.push(e);
    }
}
