//! A stateful fake of the Kubernetes API server for the `kubernetes` provider's tests. There is
//! no cluster here and no spec file for Prism, so the fake speaks the real thing's paths and
//! JSON shapes itself and checks every request the way the API server would: `apps/v1`
//! Deployments (`GET /apis/apps/v1/namespaces/{ns}/deployments/{name}`), their `/scale`
//! subresource (`autoscaling/v1` Scale, `GET` and `PATCH`), `PATCH` of the Deployment, with the
//! patch content types kube sends (`application/merge-patch+json`,
//! `application/strategic-merge-patch+json`, `application/json-patch+json`), `Status` objects
//! for errors (401 Unauthorized, 404 NotFound, 409 Conflict, 415, 422) and bearer-token auth.
//!
//! A request the API server would refuse (an unknown path or method, a missing or wrong
//! content type, a body that is not a JSON object, a patch touching fields the fake does not
//! model, a negative replica count, an unknown query parameter) is answered with the server's
//! error and recorded as a violation: every test ends with [`KubeFake::assert_clean`].
//!
//! The controller is simulated: after a spec change the Deployment's `observedGeneration`
//! catches up, then each read moves the replica counts one step towards `spec.replicas`
//! (`replicas`, `updatedReplicas`, `readyReplicas`, `availableReplicas`) with the
//! `Progressing`/`Available` conditions a real controller sets; a rollout told to fail ends
//! with `Progressing=False ProgressDeadlineExceeded`.
//!
//! One fake per test binary (its own thread and runtime, so it outlives every test's
//! runtime); each test uses its own namespace and only looks at its own exchanges. Faults are
//! injected per namespace: the next requests whose `METHOD target` contains a pattern get a
//! scripted [`Reply`].

use super::fake_http::{FakeHttp, Reply, Seen};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// The bearer token the fake accepts (the kubeconfig's user `tester`).
pub const TOKEN: &str = "kube-sa-token-Xf83hQ2w";
/// A token the fake refuses (the kubeconfig's user `revoked`).
pub const BAD_TOKEN: &str = "kube-revoked-token-Lp09";
/// The patch content types the API server takes.
const PATCH_TYPES: &[&str] = &[
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/json-patch+json",
];
/// Query parameters a PATCH may carry.
const PATCH_QUERY: &[&str] = &["dryRun", "fieldManager", "fieldValidation", "force"];
const TIME: &str = "2026-01-01T00:00:00Z";

/// A fault: the next `times` requests whose `METHOD target` contains `pattern` get `reply`.
#[derive(Debug, Clone)]
struct Fault {
    pattern: String,
    reply: Reply,
    times: usize,
}

/// One Deployment of the fake.
#[derive(Debug, Clone)]
pub struct FakeDeployment {
    pub generation: i64,
    pub observed_generation: i64,
    /// `spec.replicas`.
    pub desired: i32,
    /// `status.replicas` (pods, old and new).
    pub current: i32,
    pub updated: i32,
    pub ready: i32,
    pub available: i32,
    /// The pod template's annotations.
    pub annotations: serde_json::Map<String, Value>,
    /// The rollout under way fails (ProgressDeadlineExceeded) instead of completing.
    pub fail_rollout: bool,
    /// `Progressing=False` with this reason instead of the real ones (a reason kinfra does not
    /// know).
    pub odd_reason: Option<String>,
    pub uid: String,
    pub resource_version: u64,
}

impl FakeDeployment {
    fn new(replicas: i32, uid: String) -> Self {
        Self {
            generation: 1,
            observed_generation: 1,
            desired: replicas,
            current: replicas,
            updated: replicas,
            ready: replicas,
            available: replicas,
            annotations: serde_json::Map::new(),
            fail_rollout: false,
            odd_reason: None,
            uid,
            resource_version: 1000,
        }
    }

    fn complete(&self) -> bool {
        self.observed_generation >= self.generation
            && self.current == self.desired
            && self.updated == self.desired
            && self.ready == self.desired
            && self.available == self.desired
    }

    /// One step of the simulated controller.
    fn step(&mut self) {
        if self.observed_generation < self.generation {
            self.observed_generation = self.generation;
            // A new template (a restart): its pods are not updated yet.
            return;
        }
        if self.fail_rollout {
            return;
        }
        let toward = |n: i32, target: i32| match n.cmp(&target) {
            std::cmp::Ordering::Less => n + 1,
            std::cmp::Ordering::Greater => n - 1,
            std::cmp::Ordering::Equal => n,
        };
        if self.updated < self.desired {
            // A rolling update: one new pod, then one old one goes.
            self.updated += 1;
            self.current = self.current.max(self.updated);
        } else {
            self.updated = self.updated.min(self.desired);
            self.current = toward(self.current, self.desired);
        }
        self.ready = toward(self.ready, self.current.min(self.desired));
        self.available = self.ready;
        self.resource_version += 1;
    }

    fn conditions(&self) -> Value {
        let cond = |kind: &str, status: &str, reason: &str, message: String| {
            json!({
                "type": kind, "status": status, "reason": reason, "message": message,
                "lastUpdateTime": TIME, "lastTransitionTime": TIME
            })
        };
        // Available: at least the minimum (replicas less maxUnavailable, 25 % rounded down).
        let minimum = self.desired - self.desired / 4;
        let available = if self.available >= minimum {
            cond(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
            )
        } else {
            cond(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
            )
        };
        let progressing = if let Some(reason) = &self.odd_reason {
            cond(
                "Progressing",
                "False",
                reason,
                format!("{reason} happened."),
            )
        } else if self.fail_rollout && self.observed_generation >= self.generation {
            cond(
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                "ReplicaSet \"web-7d9f8c6b5\" has timed out progressing.".into(),
            )
        } else if self.complete() {
            cond(
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                "ReplicaSet \"web-7d9f8c6b5\" has successfully progressed.".into(),
            )
        } else {
            cond(
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                "ReplicaSet \"web-7d9f8c6b5\" is progressing.".into(),
            )
        };
        json!([available, progressing])
    }

    fn json(&self, namespace: &str, name: &str) -> Value {
        let mut status = json!({
            "observedGeneration": self.observed_generation,
            "conditions": self.conditions(),
        });
        // The API server leaves zero counts out, as the real one does.
        for (key, n) in [
            ("replicas", self.current),
            ("updatedReplicas", self.updated),
            ("readyReplicas", self.ready),
            ("availableReplicas", self.available),
            (
                "unavailableReplicas",
                (self.current - self.available).max(0),
            ),
        ] {
            if n > 0 {
                status[key] = json!(n);
            }
        }
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": self.uid,
                "resourceVersion": self.resource_version.to_string(),
                "generation": self.generation,
                "creationTimestamp": TIME,
                "labels": {"app": name},
                "annotations": {"deployment.kubernetes.io/revision": "1"}
            },
            "spec": {
                "replicas": self.desired,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}, "annotations": self.annotations},
                    "spec": {"containers": [{"name": name, "image": "nginx:1.27"}]}
                },
                "strategy": {"type": "RollingUpdate",
                             "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}},
                "revisionHistoryLimit": 10,
                "progressDeadlineSeconds": 600
            },
            "status": status
        })
    }

    fn scale_json(&self, namespace: &str, name: &str) -> Value {
        json!({
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": self.uid,
                "resourceVersion": self.resource_version.to_string(),
                "creationTimestamp": TIME
            },
            "spec": {"replicas": self.desired},
            "status": {"replicas": self.current, "selector": format!("app={name}")}
        })
    }
}

/// What the fake keeps per namespace.
#[derive(Debug, Default)]
struct Space {
    deployments: HashMap<String, FakeDeployment>,
    faults: VecDeque<Fault>,
    /// `METHOD target content-type body` of every request for this namespace.
    requests: Vec<String>,
    violations: Vec<String>,
}

/// The fake API server.
pub struct KubeFake {
    /// `http://127.0.0.1:<port>`: the cluster's `server`.
    pub url: String,
    spaces: Arc<Mutex<HashMap<String, Space>>>,
    next: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A `Status` object, as the API server answers errors.
pub fn status(code: u16, reason: &str, message: &str) -> Reply {
    Reply::json(
        code,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code
        })
        .to_string(),
    )
}

fn ok(body: Value) -> Reply {
    Reply::json(200, &body.to_string())
}

/// The fake, once per test binary.
pub fn kube() -> &'static KubeFake {
    static FAKE: OnceLock<KubeFake> = OnceLock::new();
    FAKE.get_or_init(KubeFake::start)
}

impl KubeFake {
    fn start() -> KubeFake {
        let spaces: Arc<Mutex<HashMap<String, Space>>> = Arc::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let handler_spaces = spaces.clone();
        std::thread::Builder::new()
            .name("kube-fake".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the fake");
                runtime.block_on(async move {
                    let server = FakeHttp::start(status(500, "InternalError", "no route")).await;
                    server.route(move |seen| Some(handle(&handler_spaces, seen)));
                    let _ = tx.send(format!("http://{}", server.addr));
                    std::future::pending::<()>().await;
                });
            })
            .expect("the fake's thread");
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the fake starts");
        KubeFake {
            url,
            spaces,
            next: AtomicU64::new(0),
        }
    }

    /// A fresh namespace (unique in this binary) for one test.
    pub fn namespace(&self, tag: &str) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let ns = format!("{tag}-{n}");
        lock(&self.spaces).insert(ns.clone(), Space::default());
        ns
    }

    /// Creates Deployment `name` in `namespace` with `replicas`, settled (every replica ready).
    pub fn deployment(&self, namespace: &str, name: &str, replicas: i32) {
        let uid = format!(
            "0b5e{:08x}-0000-4000-8000-000000000000",
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        lock(&self.spaces)
            .entry(namespace.to_owned())
            .or_default()
            .deployments
            .insert(name.to_owned(), FakeDeployment::new(replicas, uid));
    }

    /// Changes Deployment `name` as `change` says (outside kinfra: `kubectl scale`, a failing
    /// rollout, ...).
    pub fn change(&self, namespace: &str, name: &str, change: impl FnOnce(&mut FakeDeployment)) {
        let mut spaces = lock(&self.spaces);
        let d = spaces
            .get_mut(namespace)
            .and_then(|s| s.deployments.get_mut(name))
            .expect("a deployment of the fake");
        change(d);
        d.resource_version += 1;
    }

    /// Scales `name` outside kinfra (a new `spec.replicas`, as `kubectl scale` does).
    pub fn scale_outside(&self, namespace: &str, name: &str, replicas: i32) {
        self.change(namespace, name, |d| {
            d.desired = replicas;
            d.generation += 1;
        });
    }

    /// Deletes `name` outside kinfra.
    pub fn delete(&self, namespace: &str, name: &str) {
        if let Some(space) = lock(&self.spaces).get_mut(namespace) {
            space.deployments.remove(name);
        }
    }

    /// The Deployment as the fake has it now.
    pub fn get(&self, namespace: &str, name: &str) -> Option<FakeDeployment> {
        lock(&self.spaces)
            .get(namespace)
            .and_then(|s| s.deployments.get(name).cloned())
    }

    /// The next `times` requests of `namespace` whose `METHOD target` contains `pattern` get
    /// `reply`.
    pub fn inject(&self, namespace: &str, pattern: &str, reply: Reply, times: usize) {
        lock(&self.spaces)
            .entry(namespace.to_owned())
            .or_default()
            .faults
            .push_back(Fault {
                pattern: pattern.to_owned(),
                reply,
                times,
            });
    }

    /// Every request for `namespace`: `METHOD target content-type body`.
    pub fn requests(&self, namespace: &str) -> Vec<String> {
        lock(&self.spaces)
            .get(namespace)
            .map(|s| s.requests.clone())
            .unwrap_or_default()
    }

    /// The requests of `namespace` that were not reads (`GET`).
    pub fn writes(&self, namespace: &str) -> Vec<String> {
        self.requests(namespace)
            .into_iter()
            .filter(|r| !r.starts_with("GET "))
            .collect()
    }

    /// What the API server would have refused in `namespace`'s requests.
    pub fn violations(&self, namespace: &str) -> Vec<String> {
        lock(&self.spaces)
            .get(namespace)
            .map(|s| s.violations.clone())
            .unwrap_or_default()
    }

    /// Fails the test when any request of `namespace` was one the API server would refuse.
    pub fn assert_clean(&self, namespace: &str) {
        let violations = self.violations(namespace);
        assert!(
            violations.is_empty(),
            "requests the Kubernetes API server would refuse: {violations:#?}"
        );
    }

    /// Waits (bounded) until `namespace` saw a request containing `needle`.
    pub async fn wait_request(&self, namespace: &str, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(r) = self
                .requests(namespace)
                .into_iter()
                .find(|r| r.contains(needle))
            {
                return r;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the fake never saw `{needle}`: {:#?}",
                self.requests(namespace)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Answers one request (see the module docs).
fn handle(spaces: &Mutex<HashMap<String, Space>>, seen: &Seen) -> Reply {
    let (path, query) = seen.target.split_once('?').unwrap_or((&seen.target, ""));
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // /apis/apps/v1/namespaces/{ns}/deployments/{name}[/scale]
    let route = match segments.as_slice() {
        ["apis", "apps", "v1", "namespaces", ns, "deployments", name] => Some((*ns, *name, false)),
        [
            "apis",
            "apps",
            "v1",
            "namespaces",
            ns,
            "deployments",
            name,
            "scale",
        ] => Some((*ns, *name, true)),
        _ => None,
    };
    let content_type = seen.header("content-type").unwrap_or("-").to_owned();
    let mut spaces = lock(spaces);
    let Some((namespace, name, scale)) = route else {
        // Not a path the provider should ever call: record it against every namespace it
        // could belong to (tests look at their own).
        for space in spaces.values_mut() {
            if seen.target.contains("/namespaces/") {
                space
                    .violations
                    .push(format!("unknown path: {} {}", seen.method, seen.target));
            }
        }
        return status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
    };
    let space = spaces.entry(namespace.to_owned()).or_default();
    space.requests.push(format!(
        "{} {} {} {}",
        seen.method, seen.target, content_type, seen.body
    ));
    let mut violation = |text: String, reply: Reply| {
        space.violations.push(text);
        reply
    };
    // Authentication first, as the API server does.
    match seen.header("authorization") {
        Some(v) if v == format!("Bearer {TOKEN}") => {}
        _ => {
            return status(401, "Unauthorized", "Unauthorized");
        }
    }
    let request = format!("{} {}", seen.method, seen.target);
    if let Some(i) = space
        .faults
        .iter()
        .position(|f| request.contains(&f.pattern))
    {
        let fault = &mut space.faults[i];
        let reply = fault.reply.clone();
        fault.times -= 1;
        if fault.times == 0 {
            space.faults.remove(i);
        }
        return reply;
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let key = pair.split('=').next().unwrap_or_default();
        let allowed = seen.method == "PATCH" && PATCH_QUERY.contains(&key);
        if !allowed {
            return violation(
                format!("unknown query parameter `{key}`: {request}"),
                status(400, "BadRequest", &format!("unknown query parameter {key}")),
            );
        }
    }
    let not_found = || {
        status(
            404,
            "NotFound",
            &format!("deployments.apps \"{name}\" not found"),
        )
    };
    match (seen.method.as_str(), scale) {
        ("GET", _) => {
            let Some(d) = space.deployments.get_mut(name) else {
                return not_found();
            };
            if scale {
                return ok(d.scale_json(namespace, name));
            }
            let answer = ok(d.json(namespace, name));
            d.step();
            answer
        }
        ("PATCH", _) => {
            if !PATCH_TYPES.contains(&content_type.as_str()) {
                return violation(
                    format!("PATCH with content type `{content_type}`: {request}"),
                    status(
                        415,
                        "UnsupportedMediaType",
                        &format!(
                            "the body of the request was in an unknown format - accepted media types include: {}",
                            PATCH_TYPES.join(", ")
                        ),
                    ),
                );
            }
            let patch: Value = match serde_json::from_str(&seen.body) {
                Ok(p @ Value::Object(_)) => p,
                _ => {
                    return violation(
                        format!("PATCH body is not a JSON object: {request} {}", seen.body),
                        status(400, "BadRequest", "invalid JSON patch"),
                    );
                }
            };
            let Some(d) = space.deployments.get_mut(name) else {
                return not_found();
            };
            if scale {
                let keys_ok = patch
                    .as_object()
                    .is_some_and(|o| o.keys().all(|k| k == "spec"))
                    && patch["spec"]
                        .as_object()
                        .is_some_and(|o| o.keys().all(|k| k == "replicas"));
                let replicas = patch["spec"]["replicas"].as_i64();
                match (keys_ok, replicas) {
                    (true, Some(n)) if n >= 0 => {
                        let n = n as i32;
                        if n != d.desired {
                            d.desired = n;
                            d.generation += 1;
                        }
                        d.resource_version += 1;
                        ok(d.scale_json(namespace, name))
                    }
                    _ => violation(
                        format!("a scale patch the fake does not take: {}", seen.body),
                        status(
                            422,
                            "Invalid",
                            "Scale.autoscaling \"web\" is invalid: spec.replicas: Invalid value",
                        ),
                    ),
                }
            } else {
                let annotations = patch
                    .pointer("/spec/template/metadata/annotations")
                    .and_then(Value::as_object);
                let only_annotations = patch.as_object().is_some_and(|o| o.len() == 1)
                    && patch["spec"].as_object().is_some_and(|o| o.len() == 1)
                    && patch["spec"]["template"]
                        .as_object()
                        .is_some_and(|o| o.len() == 1)
                    && patch["spec"]["template"]["metadata"]
                        .as_object()
                        .is_some_and(|o| o.len() == 1);
                match annotations {
                    Some(a) if only_annotations && a.values().all(Value::is_string) => {
                        for (k, v) in a {
                            d.annotations.insert(k.clone(), v.clone());
                        }
                        d.generation += 1;
                        d.updated = 0;
                        d.resource_version += 1;
                        ok(d.json(namespace, name))
                    }
                    _ => violation(
                        format!("a Deployment patch the fake does not model: {}", seen.body),
                        status(422, "Invalid", "unsupported patch"),
                    ),
                }
            }
        }
        _ => violation(
            format!("method not allowed: {request}"),
            status(
                405,
                "MethodNotAllowed",
                "the server does not allow this method",
            ),
        ),
    }
}

/// A kubeconfig for the fake at `server`: context `fake` (user `tester`, namespace
/// `namespace`) as the current one, and context `revoked` whose token the fake refuses.
pub fn kubeconfig(server: &str, namespace: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\n\
         clusters:\n- name: fake-cluster\n  cluster:\n    server: {server}\n\
         contexts:\n\
         - name: fake\n  context:\n    cluster: fake-cluster\n    user: tester\n    namespace: {namespace}\n\
         - name: revoked\n  context:\n    cluster: fake-cluster\n    user: revoked\n    namespace: {namespace}\n\
         current-context: fake\n\
         users:\n- name: tester\n  user:\n    token: {TOKEN}\n\
         - name: revoked\n  user:\n    token: {BAD_TOKEN}\n"
    )
}

/// Writes [`kubeconfig`] into a fresh file under the system's temp dir; returns its path.
pub fn kubeconfig_file(server: &str, namespace: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("kinfra-kube-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let path = dir.join(format!("{namespace}.kubeconfig"));
    std::fs::write(&path, kubeconfig(server, namespace)).expect("the kubeconfig is written");
    path
}

/// A TLS front for the fake, once per test binary: `https://127.0.0.1:<port>` serving a
/// certificate made at start (for `127.0.0.1`, self-signed) and relaying each connection to
/// the fake. Returns the URL and the certificate's PEM (the kubeconfig's certificate
/// authority).
pub fn tls_front() -> &'static (String, String) {
    static FRONT: OnceLock<(String, String)> = OnceLock::new();
    FRONT.get_or_init(|| {
        kinfra_core::tls::install_crypto_provider();
        let upstream = kube().url.trim_start_matches("http://").to_owned();
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])
            .expect("a certificate");
        let pem = certified.cert.pem();
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)
            .expect("a TLS server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("kube-fake-tls".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the TLS front");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                        .await
                        .expect("bind");
                    let addr = listener.local_addr().expect("addr");
                    let _ = tx.send(format!("https://{addr}"));
                    loop {
                        let Ok((tcp, _)) = listener.accept().await else {
                            continue;
                        };
                        let acceptor = acceptor.clone();
                        let upstream = upstream.clone();
                        tokio::spawn(async move {
                            let Ok(mut tls) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let Ok(mut plain) = tokio::net::TcpStream::connect(&upstream).await
                            else {
                                return;
                            };
                            let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                        });
                    }
                });
            })
            .expect("the TLS front's thread");
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the TLS front starts");
        (url, pem)
    })
}

/// Standard base64 of `bytes` (a kubeconfig's `*-data` fields).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// [`kubeconfig_file`] for the TLS front: the cluster's `certificate-authority-data` holds
/// `ca_pem` (`None`: no certificate authority, so the system's roots are used).
pub fn kubeconfig_tls_file(
    server: &str,
    namespace: &str,
    ca_pem: Option<&str>,
) -> std::path::PathBuf {
    let mut text = kubeconfig(server, namespace);
    if let Some(pem) = ca_pem {
        text = text.replacen(
            &format!("    server: {server}\n"),
            &format!(
                "    server: {server}\n    certificate-authority-data: {}\n",
                base64(pem.as_bytes())
            ),
            1,
        );
    }
    let dir = std::env::temp_dir().join(format!("kinfra-kube-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let path = dir.join(format!("{namespace}-tls-{}.kubeconfig", ca_pem.is_some()));
    std::fs::write(&path, text).expect("the kubeconfig is written");
    path
}
