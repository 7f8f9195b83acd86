//! A stateful fake of the Fly.io Machines API (`/v1/apps/{app}/machines/...`), behind Prism
//! (see `prism.rs`): machines that go stopped → (start) → starting → started after a short
//! delay, started → (stop) → stopping → stopped, (suspend) → suspending → suspended,
//! (restart) → stopping → starting → started, destroyed by DELETE, cloned by POST, updated by
//! POST with `current_version` (409 when it is stale) under leases (`fly-machine-lease-nonce`;
//! 409 when someone else holds one), and the `wait` long-poll: it answers when the machine
//! reaches the state (a transition under way is waited for) or after `timeout` seconds.
//!
//! Fly's machine operations declare no usable security scheme, so the fake checks
//! `Authorization: Bearer <TOKEN>` itself. Two deliberate departures from the live API, both
//! to stay inside the spec: a wait that times out answers `200 {"ok": false, "state": ...}`
//! (the live API answers 408, which the spec does not declare; the provider takes both, and
//! a test sends the 408), and actions answer 200 with an empty JSON object.
//!
//! Apps can also be made through the API (`POST /v1/apps` with an `org_slug` of [`ORGS`];
//! `GET /v1/apps/{app}` answers 404 for an app that does not exist, an answer the spec does
//! not declare), and each app has volumes (`GET`/`POST /v1/apps/{app}/volumes`; a machine
//! created with a mount attaches its volume). Every request the fake sees is also in one
//! log of the whole fake ([`FlyFake::log`]), apps that do not exist included.
//!
//! Tests share one fake and one Prism per binary: each test creates its own app (a unique
//! name) and only looks at exchanges of that app. Faults are injected per app: the next
//! requests matching a pattern get a scripted [`Reply`].

use super::fake_http::{Reply, Seen};
use super::prism::{self, Prism};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The token the fake accepts.
pub const TOKEN: &str = "fly-test-token-FlyV1-9c2e7d";
/// How long a transition (starting, stopping, ...) takes unless an app says otherwise.
pub const TRANSITION: Duration = Duration::from_millis(300);
const TIME: &str = "2026-01-01T00:00:00Z";
/// The organizations `POST /v1/apps` accepts (any other: 422).
pub const ORGS: &[&str] = &["personal", "kinfra-test"];

/// One machine.
#[derive(Debug, Clone)]
pub struct FakeMachine {
    pub id: String,
    pub state: String,
    pub version: String,
    pub region: String,
    pub config: Value,
    pub created_at: String,
    /// Scheduled states: (when, state), applied in order.
    pub steps: VecDeque<(Instant, String)>,
    /// The lease held: (nonce, expires).
    pub lease: Option<(String, Instant)>,
    pub events: Vec<Value>,
}

/// A fault: the next `times` requests whose `METHOD target` contains `pattern` (ends with it,
/// before any query, when it ends in `$`) get `reply`.
#[derive(Debug, Clone)]
struct Fault {
    pattern: String,
    reply: Reply,
    times: usize,
}

/// One app of the fake.
#[derive(Debug, Default)]
pub struct FakeApp {
    pub name: String,
    pub machines: Vec<FakeMachine>,
    /// `METHOD target [nonce] body` of every request that reached the fake for this app.
    pub requests: Vec<String>,
    /// How long transitions take.
    pub transition: Option<Duration>,
    /// The next start ends in `failed` instead of `started`.
    pub fail_next_start: bool,
    /// The app's volumes, in the spec's `Volume` shape.
    pub volumes: Vec<Value>,
    /// The organization the app was created in (through the API), if any.
    pub org: Option<String>,
    faults: VecDeque<Fault>,
}

/// The fake's state: apps by name.
#[derive(Debug, Default)]
pub struct FlyFake {
    apps: Mutex<HashMap<String, FakeApp>>,
    next: AtomicU64,
    /// `METHOD target` of every request the fake saw.
    log: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn error(status: u16, message: &str) -> Reply {
    Reply::json(status, &json!({ "error": message }).to_string())
}

fn ok(status: u16, body: Value) -> Reply {
    Reply::json(status, &body.to_string())
}

/// The fake and Prism in front of it, once per test binary.
pub fn fly() -> (&'static Prism, &'static FlyFake) {
    static FAKE: LazyLock<Arc<FlyFake>> = LazyLock::new(|| Arc::new(FlyFake::default()));
    static PRISM: OnceLock<Prism> = OnceLock::new();
    let fake: &'static FlyFake = &FAKE;
    let prism = PRISM.get_or_init(|| {
        let handler = FAKE.clone();
        Prism::start(
            &prism::spec("fly/openapi.json"),
            Arc::new(move |seen: &Seen| Some(handler.handle(seen))),
        )
    });
    (prism, fake)
}

/// A machine config with one HTTP service; `autostart` as given.
pub fn config(autostart: bool) -> Value {
    json!({
        "image": "registry.fly.io/kinfra-test:v1",
        "env": { "APP_ENV": "test" },
        "guest": { "cpu_kind": "shared", "cpus": 1, "memory_mb": 256 },
        "services": [{
            "protocol": "tcp",
            "internal_port": 8080,
            "autostart": autostart,
            "autostop": if autostart { "stop" } else { "off" },
            "ports": [{ "port": 443, "handlers": ["tls", "http"] }],
        }],
    })
}

impl FlyFake {
    fn n(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    fn version(&self) -> String {
        format!("01JFAKEVERSION{:012}", self.n())
    }

    /// A new app (`app-<tag>-<n>`) with one machine per entry of `states` (autostart as
    /// given); returns (app, machine ids).
    pub fn app(&self, tag: &str, states: &[&str], autostart: bool) -> (String, Vec<String>) {
        let name = format!("app-{tag}-{}", self.n());
        let mut app = FakeApp {
            name: name.clone(),
            ..FakeApp::default()
        };
        for state in states {
            let m = self.machine(state, config(autostart), "ams");
            app.machines.push(m);
        }
        let ids = app.machines.iter().map(|m| m.id.clone()).collect();
        lock(&self.apps).insert(name.clone(), app);
        (name, ids)
    }

    fn machine(&self, state: &str, config: Value, region: &str) -> FakeMachine {
        let n = self.n();
        FakeMachine {
            id: format!("e82{n:011x}"),
            state: state.into(),
            version: self.version(),
            region: region.into(),
            config,
            created_at: format!("2026-01-01T00:{:02}:{:02}Z", (n / 60) % 60, n % 60),
            steps: VecDeque::new(),
            lease: None,
            events: Vec::new(),
        }
    }

    /// Runs `f` on app `name` (panics when there is none).
    pub fn with<T>(&self, name: &str, f: impl FnOnce(&mut FakeApp) -> T) -> T {
        let mut apps = lock(&self.apps);
        let app = apps
            .get_mut(name)
            .unwrap_or_else(|| panic!("no fake app {name}"));
        advance(app, Instant::now());
        f(app)
    }

    /// Machine `id`'s state.
    pub fn state(&self, app: &str, id: &str) -> String {
        self.with(app, |a| machine(a, id).state.clone())
    }

    /// Sets machine `id`'s state as if it changed outside kinfra.
    pub fn set_state(&self, app: &str, id: &str, state: &str) {
        self.with(app, |a| {
            let m = machine_mut(a, id);
            m.state = state.into();
            m.steps.clear();
        });
    }

    /// The next `times` requests of `app` whose `METHOD target` contains `pattern` get
    /// `reply`.
    pub fn inject(&self, app: &str, pattern: &str, reply: Reply, times: usize) {
        self.with(app, |a| {
            a.faults.push_back(Fault {
                pattern: pattern.into(),
                reply,
                times,
            })
        });
    }

    /// A fresh app name (`app-<tag>-<n>`) for an app that does not exist yet.
    pub fn new_app_name(&self, tag: &str) -> String {
        format!("app-{tag}-{}", self.n())
    }

    /// True when app `name` exists.
    pub fn has_app(&self, name: &str) -> bool {
        lock(&self.apps).contains_key(name)
    }

    /// `METHOD target` of every request the fake saw whose target contains `needle`.
    pub fn log(&self, needle: &str) -> Vec<String> {
        lock(&self.log)
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// `METHOD target [nonce] body` of every request of `app` that reached the fake.
    pub fn requests(&self, app: &str) -> Vec<String> {
        self.with(app, |a| a.requests.clone())
    }

    /// Answers one request (the fake's whole API).
    pub fn handle(&self, seen: &Seen) -> Reply {
        let (path, query) = seen
            .target
            .split_once('?')
            .unwrap_or((seen.target.as_str(), ""));
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let expected = format!("Bearer {TOKEN}");
        if seen.header("authorization") != Some(expected.as_str()) {
            return error(401, "unauthorized");
        }
        lock(&self.log).push(format!("{} {}", seen.method, seen.target));
        if parts.as_slice() == ["v1", "apps"] && seen.method == "POST" {
            return self.create_app(seen);
        }
        let ["v1", "apps", app_name, rest @ ..] = parts.as_slice() else {
            return error(404, "not found");
        };
        let mut apps = lock(&self.apps);
        let Some(app) = apps.get_mut(*app_name) else {
            return error(404, &format!("app {app_name} not found"));
        };
        let now = Instant::now();
        advance(app, now);
        let nonce = seen.header("fly-machine-lease-nonce").map(str::to_owned);
        app.requests.push(format!(
            "{} {} [{}] {}",
            seen.method,
            seen.target,
            nonce.as_deref().unwrap_or(""),
            seen.body
        ));
        let line = format!("{} {}", seen.method, seen.target);
        if let Some(i) = app.faults.iter().position(|f| matches(&line, &f.pattern)) {
            let fault = &mut app.faults[i];
            let reply = fault.reply.clone();
            fault.times -= 1;
            if fault.times == 0 {
                app.faults.remove(i);
            }
            return reply;
        }
        let query: HashMap<String, String> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let body: Value = serde_json::from_str(&seen.body).unwrap_or(Value::Null);
        let t = app.transition.unwrap_or(TRANSITION);
        match (seen.method.as_str(), rest) {
            ("GET", []) => ok(
                200,
                json!({
                    "id": format!("id-{}", app.name),
                    "name": app.name,
                    "organization": {
                        "slug": app.org.as_deref().unwrap_or("personal"),
                        "name": app.org.as_deref().unwrap_or("personal"),
                    },
                    "status": "deployed",
                    "machine_count": app.machines.iter().filter(|m| m.state != "destroyed").count(),
                    "volume_count": app.volumes.len(),
                }),
            ),
            ("GET", ["volumes"]) => ok(200, Value::Array(app.volumes.clone())),
            ("POST", ["volumes"]) => {
                let n = self.n();
                let volume = json!({
                    "id": format!("vol_{n:014x}"),
                    "name": body.get("name").and_then(Value::as_str).unwrap_or("data"),
                    "region": body.get("region").and_then(Value::as_str).unwrap_or("ams"),
                    "size_gb": body.get("size_gb").and_then(Value::as_u64).unwrap_or(1),
                    "state": "created",
                    "encrypted": true,
                    "fstype": "ext4",
                    "host_status": "ok",
                    "type": "local",
                    "zone": "a1b2",
                    "created_at": TIME,
                });
                app.volumes.push(volume.clone());
                ok(200, volume)
            }
            ("GET", ["machines"]) => {
                let all = query.get("include_deleted").is_some_and(|v| v == "true");
                let list: Vec<Value> = app
                    .machines
                    .iter()
                    .filter(|m| all || m.state != "destroyed")
                    .map(machine_json)
                    .collect();
                ok(200, Value::Array(list))
            }
            ("POST", ["machines"]) => {
                let config = body.get("config").cloned().unwrap_or_else(|| json!({}));
                let region = body
                    .get("region")
                    .and_then(Value::as_str)
                    .unwrap_or("ams")
                    .to_owned();
                let mut m = self.machine("created", config, &region);
                if !body
                    .get("skip_launch")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
                {
                    m.steps.push_back((now, "starting".into()));
                    m.steps.push_back((now + t, "started".into()));
                }
                event(&mut m, "launch", "created", "user");
                let mounted: Vec<String> = m.config["mounts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|mount| mount["volume"].as_str().map(str::to_owned))
                    .collect();
                for volume in &mut app.volumes {
                    if mounted.iter().any(|id| volume["id"] == id.as_str()) {
                        volume["attached_machine_id"] = json!(m.id);
                    }
                }
                let answer = machine_json(&m);
                app.machines.push(m);
                ok(200, answer)
            }
            (method, ["machines", id, tail @ ..]) => {
                let Some(i) = app.machines.iter().position(|m| m.id == *id) else {
                    return error(404, &format!("machine {id} not found"));
                };
                let fail_start = app.fail_next_start;
                let m = &mut app.machines[i];
                let reply =
                    self.machine_route(m, method, tail, &query, &body, nonce, t, fail_start);
                if matches!((method, tail), ("POST", ["start"])) && reply.status == 200 {
                    app.fail_next_start = false;
                }
                reply
            }
            _ => error(404, &format!("the fake has no route {line}")),
        }
    }

    /// `POST /v1/apps`: a new app named `name` in organization `org_slug` (one of [`ORGS`]).
    fn create_app(&self, seen: &Seen) -> Reply {
        let body: Value = serde_json::from_str(&seen.body).unwrap_or(Value::Null);
        let Some(name) = body.get("name").and_then(Value::as_str) else {
            return error(400, "name is required");
        };
        let Some(org) = body.get("org_slug").and_then(Value::as_str) else {
            return error(400, "org_slug is required");
        };
        if !ORGS.contains(&org) {
            return error(422, &format!("organization {org} not found"));
        }
        let mut apps = lock(&self.apps);
        if apps.contains_key(name) {
            return ok(
                422,
                json!({ "error": format!("app name {name} is taken"), "status": "name_taken" }),
            );
        }
        let app = FakeApp {
            name: name.to_owned(),
            org: Some(org.to_owned()),
            requests: vec![format!("{} {} [] {}", seen.method, seen.target, seen.body)],
            ..FakeApp::default()
        };
        apps.insert(name.to_owned(), app);
        ok(
            201,
            json!({ "id": format!("id-{name}"), "created_at": 1_767_225_600_000i64 }),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn machine_route(
        &self,
        m: &mut FakeMachine,
        method: &str,
        tail: &[&str],
        query: &HashMap<String, String>,
        body: &Value,
        nonce: Option<String>,
        t: Duration,
        fail_start: bool,
    ) -> Reply {
        let now = Instant::now();
        let lease_held = m.lease.as_ref().filter(|(_, until)| *until > now).cloned();
        match (method, tail) {
            ("GET", []) => ok(200, machine_json(m)),
            ("POST", []) => {
                if let Some((held, _)) = &lease_held
                    && nonce.as_deref() != Some(held.as_str())
                {
                    return error(409, &format!("machine {} is leased by someone else", m.id));
                }
                if let Some(current) = body.get("current_version").and_then(Value::as_str)
                    && current != m.version
                {
                    return error(
                        409,
                        &format!(
                            "current_version {current} does not match the machine's version {}",
                            m.version
                        ),
                    );
                }
                if let Some(config) = body.get("config") {
                    m.config = config.clone();
                }
                m.version = self.version();
                if m.state == "started" {
                    m.state = "replacing".into();
                    m.steps.push_back((now + t, "started".into()));
                }
                event(m, "update", "replacing", "user");
                ok(200, machine_json(m))
            }
            ("DELETE", []) => {
                if m.state == "started" && query.get("force").is_none_or(|f| f != "true") {
                    return error(400, "machine is started: stop it or pass force=true");
                }
                m.state = "destroying".into();
                m.steps.clear();
                m.steps.push_back((now + t, "destroyed".into()));
                event(m, "destroy", "destroying", "user");
                ok(200, json!({ "ok": true }))
            }
            ("POST", ["start"]) => {
                if m.state == "started" || m.state == "starting" {
                    return ok(200, json!({}));
                }
                if m.state == "destroyed" || m.state == "destroying" {
                    return error(400, "machine is destroyed");
                }
                m.state = "starting".into();
                m.steps.clear();
                let end = if fail_start { "failed" } else { "started" };
                m.steps.push_back((now + t, end.into()));
                event(m, "start", "starting", "user");
                if fail_start {
                    event(m, "exit", "failed: exit code 1, oom killed", "flyd");
                }
                ok(200, json!({}))
            }
            ("POST", [action @ ("stop" | "suspend")]) => {
                if m.state != "started" && m.state != "starting" && m.state != "replacing" {
                    return ok(200, json!({}));
                }
                let (during, end) = if *action == "stop" {
                    ("stopping", "stopped")
                } else {
                    ("suspending", "suspended")
                };
                m.state = during.into();
                m.steps.clear();
                m.steps.push_back((now + t, end.into()));
                event(m, action, during, "user");
                ok(200, json!({}))
            }
            ("POST", ["restart"]) => {
                if m.state != "started" {
                    return error(400, &format!("machine is {}, not started", m.state));
                }
                m.state = "stopping".into();
                m.steps.clear();
                m.steps.push_back((now + t / 2, "starting".into()));
                m.steps.push_back((now + t, "started".into()));
                event(m, "restart", "stopping", "user");
                ok(200, json!({}))
            }
            ("POST", ["lease"]) => {
                if let Some((held, _)) = &lease_held
                    && nonce.as_deref() != Some(held.as_str())
                {
                    return error(409, &format!("machine {} is leased by someone else", m.id));
                }
                let ttl = body.get("ttl").and_then(Value::as_u64).unwrap_or(30);
                let new_nonce = format!("nonce-{:08x}", self.n());
                m.lease = Some((new_nonce.clone(), now + Duration::from_secs(ttl)));
                ok(
                    201,
                    json!({
                        "nonce": new_nonce,
                        "expires_at": 1_767_225_600u64 + ttl,
                        "owner": "kinfra@example.test",
                        "description": body.get("description").cloned().unwrap_or(json!("")),
                        "version": m.version,
                    }),
                )
            }
            ("GET", ["lease"]) => match &lease_held {
                Some((n, _)) => ok(200, json!({ "nonce": n, "owner": "kinfra@example.test" })),
                None => error(404, "no lease"),
            },
            ("DELETE", ["lease"]) => match &lease_held {
                Some((held, _)) if nonce.as_deref() == Some(held.as_str()) => {
                    m.lease = None;
                    ok(200, json!({}))
                }
                Some(_) => error(409, "the nonce does not match the lease"),
                None => error(404, "no lease"),
            },
            ("GET", ["wait"]) => {
                let target = query.get("state").map(String::as_str).unwrap_or("started");
                let timeout = query
                    .get("timeout")
                    .and_then(|t| t.parse::<u64>().ok())
                    .unwrap_or(60);
                let timeout = Duration::from_secs(timeout);
                if m.state == target {
                    return ok(
                        200,
                        json!({ "ok": true, "state": target, "version": m.version }),
                    );
                }
                // A scheduled transition to the target within the timeout: answer then.
                if let Some((at, _)) = m.steps.iter().find(|(_, s)| s == target)
                    && at.saturating_duration_since(now) <= timeout
                {
                    return ok(
                        200,
                        json!({ "ok": true, "state": target, "version": m.version }),
                    )
                    .delayed(at.saturating_duration_since(now));
                }
                ok(
                    200,
                    json!({ "ok": false, "state": m.state, "version": m.version }),
                )
                .delayed(timeout)
            }
            _ => error(404, "the fake has no such machine route"),
        }
    }
}

/// Whether `line` (`METHOD target`) matches a fault's pattern: it contains it, or with a
/// trailing `$` it ends with it (the path only, no query).
fn matches(line: &str, pattern: &str) -> bool {
    match pattern.strip_suffix('$') {
        Some(exact) => line.split('?').next().unwrap_or(line).ends_with(exact),
        None => line.contains(pattern),
    }
}

fn machine<'a>(app: &'a FakeApp, id: &str) -> &'a FakeMachine {
    app.machines
        .iter()
        .find(|m| m.id == id)
        .unwrap_or_else(|| panic!("no fake machine {id}"))
}

fn machine_mut<'a>(app: &'a mut FakeApp, id: &str) -> &'a mut FakeMachine {
    app.machines
        .iter_mut()
        .find(|m| m.id == id)
        .unwrap_or_else(|| panic!("no fake machine {id}"))
}

fn event(m: &mut FakeMachine, kind: &str, status: &str, source: &str) {
    let n = m.events.len();
    m.events.push(json!({
        "id": format!("01JEVENT{}{n:04}", m.id),
        "type": kind,
        "status": status,
        "source": source,
        "timestamp": 1_767_225_600_000i64 + n as i64,
    }));
}

/// Applies every scheduled state that is due.
fn advance(app: &mut FakeApp, now: Instant) {
    for m in &mut app.machines {
        while let Some((at, _)) = m.steps.front() {
            if *at > now {
                break;
            }
            if let Some((_, state)) = m.steps.pop_front() {
                m.state = state;
            }
        }
    }
}

/// A `Machine` in the spec's shape.
pub fn machine_json(m: &FakeMachine) -> Value {
    json!({
        "id": m.id,
        "name": format!("machine-{}", m.id),
        "state": m.state,
        "region": m.region,
        "instance_id": m.version,
        "version": m.version,
        "private_ip": "fdaa:0:1:a7b:1::2",
        "config": m.config,
        "image_ref": {
            "registry": "registry.fly.io",
            "repository": "kinfra-test",
            "tag": "v1",
            "digest": "sha256:0000",
        },
        "created_at": m.created_at,
        "updated_at": TIME,
        "events": m.events,
        "host_status": "ok",
        "checks": [],
    })
}
