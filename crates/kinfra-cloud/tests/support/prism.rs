//! The spec-checking harness of the cloud providers' tests (DESIGN, "How adapters are tested
//! without the internet"): a stateful fake written in the tests, Stoplight Prism in proxy mode
//! in front of it (`prism proxy <spec> <fake> --errors`), and a relay in front of Prism that
//! records every exchange and whether Prism found a violation (the `sl-violations` header, or
//! an error Prism made up itself, as `application/problem+json`: an invalid request, an
//! unknown path, missing credentials, an upstream answer that is not JSON).
//!
//! ```text
//! provider ──► relay (records) ──► prism proxy (checks against the spec) ──► fake
//! ```
//!
//! One harness per spec and test binary (Prism takes seconds to start): keep it in a
//! `static OnceLock<Prism>`. It runs on a thread of its own (its own tokio runtime, so it
//! outlives every test's runtime); Prism is started from that thread in its own process group
//! with a parent-death signal, and killed by PID (its group) when the test binary exits, also
//! after a panicking test.
//!
//! Include it with `#[path]` beside the provider SDK's fake HTTP server
//! (`crates/kinfra-provider/tests/it/fake_http.rs`) as the sibling module `fake_http`.

use super::fake_http::{FakeHttp, Reply, Seen};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long Prism may take to load a spec and answer (it takes 2–4 s; generous for a loaded
/// 2-core machine).
const PRISM_READY_WITHIN: Duration = Duration::from_secs(90);

/// The npm package, for messages.
pub const PRISM_PACKAGE: &str = "@stoplight/prism-cli@5";

/// A stateful fake: answers a request from the test's own state (`None`: a 404 in the
/// provider's error shape is the fake's business, so return one).
pub type FakeHandler = Arc<dyn Fn(&Seen) -> Option<Reply> + Send + Sync>;

/// One exchange that went through the relay.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The method.
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// The status Prism answered with.
    pub status: u16,
    /// Prism's complaint, when it had one (the `sl-violations` header or its own error body).
    pub violation: Option<String>,
}

/// A running harness: the relay's URL is the provider's `base_url`.
pub struct Prism {
    /// `http://127.0.0.1:<relay>`: the base URL providers are pointed at.
    pub url: String,
    /// `http://127.0.0.1:<fake>`: the fake without Prism (only for answers Prism cannot pass,
    /// such as malformed JSON).
    pub fake_url: String,
    /// Prism's PID (the leader of its process group).
    pub pid: u32,
    exchanges: Arc<Mutex<Vec<Exchange>>>,
}

/// The workspace's root (the directory with `Cargo.lock`), from this crate's manifest dir.
pub fn workspace_root() -> PathBuf {
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    loop {
        if dir.join("Cargo.lock").is_file() {
            return dir;
        }
        if !dir.pop() {
            return PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        }
    }
}

/// A stored provider spec, e.g. `neon/v2.json` (kept in `crates/kinfra-cloud/specs/`).
pub fn spec(name: &str) -> PathBuf {
    workspace_root()
        .join("crates/kinfra-cloud/specs")
        .join(name)
}

/// The Prism executable: `$KINFRA_PRISM`, else `target/prism/node_modules/.bin/prism` where
/// `./x test` installs it. Missing: the test fails naming how to install it.
pub fn prism_bin() -> PathBuf {
    let path = std::env::var_os("KINFRA_PRISM")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/prism/node_modules/.bin/prism"));
    assert!(
        path.is_file(),
        "Stoplight Prism is not installed at {}: run `./x test` (it installs it), or \
         `npm install --prefix target/prism {PRISM_PACKAGE}` (Debian: apt-get install nodejs npm), \
         or set KINFRA_PRISM to the prism executable",
        path.display()
    );
    path
}

/// PIDs of the Prism process groups this binary started, killed at exit.
static GROUPS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

extern "C" fn kill_groups_at_exit() {
    let groups = GROUPS.lock().map(|g| g.clone()).unwrap_or_default();
    for pid in groups {
        // SAFETY: killpg(2) of a process group this binary created (Prism's own).
        unsafe {
            libc::killpg(pid as libc::pid_t, libc::SIGKILL);
        }
    }
}

fn register_group(pid: u32) {
    let mut groups = GROUPS.lock().unwrap_or_else(|p| p.into_inner());
    if groups.is_empty() {
        // SAFETY: registers a plain extern "C" function; it only reads a static and kills.
        unsafe {
            libc::atexit(kill_groups_at_exit);
        }
    }
    groups.push(pid);
}

impl Prism {
    /// Starts the fake (`handler`), Prism on `spec` in front of it, and the relay; returns
    /// once Prism answers. Panics (failing the test) when Prism is missing or does not come up.
    pub fn start(spec: &Path, handler: FakeHandler) -> Prism {
        // reqwest (the relay's client, the providers') needs the process's crypto provider.
        kinfra_core::tls::install_crypto_provider();
        let bin = prism_bin();
        assert!(spec.is_file(), "no spec at {}", spec.display());
        let spec = spec.to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("prism-harness".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("the harness's runtime");
                runtime.block_on(async move {
                    let result = serve(&bin, &spec, handler).await;
                    let keep = match result {
                        Ok((prism, servers)) => {
                            let _ = tx.send(Ok(prism));
                            servers
                        }
                        Err(message) => {
                            let _ = tx.send(Err(message));
                            return;
                        }
                    };
                    // The fake and the relay live as long as the test binary.
                    std::future::pending::<()>().await;
                    drop(keep);
                });
            })
            .expect("spawn the harness thread");
        match rx.recv() {
            Ok(Ok(prism)) => prism,
            Ok(Err(message)) => panic!("{message}"),
            Err(_) => panic!("the Prism harness thread died while starting"),
        }
    }

    /// Every exchange whose target contains `needle` (a test's own project id, say).
    pub fn exchanges(&self, needle: &str) -> Vec<Exchange> {
        self.exchanges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|e| e.target.contains(needle))
            .cloned()
            .collect()
    }

    /// The exchanges with a violation whose target contains `needle`.
    pub fn violations(&self, needle: &str) -> Vec<Exchange> {
        self.exchanges(needle)
            .into_iter()
            .filter(|e| e.violation.is_some())
            .collect()
    }

    /// Fails the test when any exchange whose target contains `needle` left the spec; also
    /// when there was none at all (a test that reached nothing proves nothing).
    pub fn assert_clean(&self, needle: &str) {
        let seen = self.exchanges(needle);
        assert!(
            !seen.is_empty(),
            "no exchange through Prism matched `{needle}`"
        );
        let bad: Vec<String> = seen
            .iter()
            .filter_map(|e| {
                e.violation
                    .as_ref()
                    .map(|v| format!("{} {} → {}: {v}", e.method, e.target, e.status))
            })
            .collect();
        assert!(
            bad.is_empty(),
            "exchanges left the spec:\n{}",
            bad.join("\n")
        );
    }
}

/// The relay and fake handles kept alive on the harness thread.
type Servers = (FakeHttp, tokio::task::JoinHandle<()>);

async fn serve(bin: &Path, spec: &Path, handler: FakeHandler) -> Result<(Prism, Servers), String> {
    let fake = FakeHttp::start(Reply::json(
        404,
        r#"{"code":"NOT_FOUND","message":"the fake has no such route"}"#,
    ))
    .await;
    fake.route(move |seen| handler(seen));
    let port = free_port().map_err(|e| format!("no free port for Prism: {e}"))?;
    let mut cmd = Command::new(bin);
    cmd.arg("proxy")
        .arg(spec)
        .arg(format!("http://{}", fake.addr))
        .args(["--errors", "-h", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
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
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start Prism ({}): {e}", bin.display()))?;
    let pid = child.id();
    register_group(pid);
    // Reap it whenever it ends, so it never lingers as a zombie.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    let prism_url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| format!("relay client: {e}"))?;
    let started = Instant::now();
    loop {
        // Any HTTP answer (a 404 for `/`) means Prism has loaded the spec and listens.
        if client.get(format!("{prism_url}/")).send().await.is_ok() {
            break;
        }
        if started.elapsed() > PRISM_READY_WITHIN {
            return Err(format!(
                "Prism ({}) did not answer on {prism_url} within {PRISM_READY_WITHIN:?}",
                bin.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let exchanges = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("relay bind: {e}"))?;
    let relay_addr = listener
        .local_addr()
        .map_err(|e| format!("relay addr: {e}"))?;
    let state = Relay {
        client,
        prism: prism_url,
        exchanges: exchanges.clone(),
    };
    let app = axum::Router::new()
        .fallback(relay)
        .with_state(Arc::new(state));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let prism = Prism {
        url: format!("http://{relay_addr}"),
        fake_url: format!("http://{}", fake.addr),
        pid,
        exchanges,
    };
    Ok((prism, (fake, task)))
}

fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

struct Relay {
    client: reqwest::Client,
    prism: String,
    exchanges: Arc<Mutex<Vec<Exchange>>>,
}

/// Headers that belong to one hop.
const HOP: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "upgrade",
];

async fn relay(
    axum::extract::State(relay): axum::extract::State<Arc<Relay>>,
    request: axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (parts, body) = request.into_parts();
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let body = axum::body::to_bytes(body, 16 << 20)
        .await
        .unwrap_or_default();
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes())
        .unwrap_or(reqwest::Method::GET);
    let mut forward = relay
        .client
        .request(method, format!("{}{target}", relay.prism))
        .body(body.to_vec());
    for (name, value) in &parts.headers {
        if !HOP.contains(&name.as_str()) {
            forward = forward.header(name.as_str(), value.as_bytes());
        }
    }
    let record = |status: u16, violation: Option<String>| {
        relay
            .exchanges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Exchange {
                method: parts.method.to_string(),
                target: target.clone(),
                status,
                violation,
            });
    };
    let answer = match forward.send().await {
        Ok(answer) => answer,
        Err(error) => {
            record(502, Some(format!("Prism did not answer: {error}")));
            return (
                axum::http::StatusCode::BAD_GATEWAY,
                format!("relay: Prism did not answer: {error}"),
            )
                .into_response();
        }
    };
    let status = answer.status().as_u16();
    let headers = answer.headers().clone();
    let bytes = answer.bytes().await.unwrap_or_default();
    let mut violation = headers
        .get("sl-violations")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let problem = headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    // Prism answers its own errors (an invalid request, an unknown path, missing credentials,
    // an upstream answer it could not read) as problem+json; the fakes never do.
    if violation.is_none() && problem {
        violation = Some(String::from_utf8_lossy(&bytes).into_owned());
    }
    record(status, violation);
    let mut response = axum::response::Response::new(axum::body::Body::from(bytes));
    *response.status_mut() =
        axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::BAD_GATEWAY);
    for (name, value) in &headers {
        if !HOP.contains(&name.as_str())
            && let (Ok(name), Ok(value)) = (
                axum::http::HeaderName::from_bytes(name.as_str().as_bytes()),
                axum::http::HeaderValue::from_bytes(value.as_bytes()),
            )
        {
            response.headers_mut().append(name, value);
        }
    }
    response
}
