//! A stateful fake of Render's public API, behind Prism (see `prism.rs`): services that are
//! suspended and resumed (a resume starts a `service_resumed` deploy that goes
//! `update_in_progress` → `live`), a suspend that takes a moment, deploys (`build_in_progress`
//! → `live`, or `build_failed` when told to; a canceled one stays `canceled`), restart, scale,
//! maintenance mode, suspensions by Render (billing, crash loop), and logs served by
//! `GET /logs` with Render's paging (`hasMore`, `nextStartTime`, `nextEndTime`). It checks
//! `Authorization: Bearer <TOKEN>` itself (Prism only checks that one is there) and answers in
//! the spec's shapes.
//!
//! Tests share one fake and one Prism per binary: each test creates its own service (a unique
//! id) and only looks at its own exchanges. Faults are injected per service: the next requests
//! matching a pattern get a scripted [`Reply`].

use super::fake_http::{Reply, Seen};
use super::fault_script::{FaultScript, empty, lock};
use super::prism::{self, Prism};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The token the fake accepts.
pub const TOKEN: &str = "rnd_test_token_Q8p2vX41";
/// The workspace every service belongs to.
pub const OWNER: &str = "tea-kinfrafakeowner";
/// How long a deploy takes (unless a service says otherwise).
pub const DEPLOY_TIME: Duration = Duration::from_millis(600);
/// How long a suspend takes to show.
pub const SUSPEND_TIME: Duration = Duration::from_millis(300);
const TIME: &str = "2026-01-01T00:00:00Z";

/// One deploy.
#[derive(Debug, Clone)]
pub struct FakeDeploy {
    pub id: String,
    pub status: String,
    pub trigger: String,
    pub commit: Option<String>,
    pub image: Option<String>,
    /// The status change under way: (when, the status then).
    pub next: Option<(Instant, String)>,
}

/// One log entry.
#[derive(Debug, Clone)]
pub struct FakeLog {
    pub id: String,
    pub timestamp: String,
    pub message: String,
    pub level: String,
    pub kind: String,
}

/// One service of the fake.
#[derive(Debug)]
pub struct FakeService {
    pub id: String,
    pub suspended: bool,
    pub suspenders: Vec<String>,
    /// A suspend under way: when it shows.
    pub suspending: Option<Instant>,
    pub maintenance: bool,
    pub instances: i64,
    /// Latest first.
    pub deploys: Vec<FakeDeploy>,
    pub logs: Vec<FakeLog>,
    /// The next deploy ends in `build_failed`.
    pub fail_next_deploy: bool,
    /// How long deploys take.
    pub deploy_time: Duration,
    pub restarts: u32,
    /// `METHOD target body` of every request that reached the fake for this service.
    pub requests: Vec<String>,
    faults: FaultScript,
}

impl FakeService {
    fn advance(&mut self, now: Instant) {
        if let Some(at) = self.suspending
            && now >= at
        {
            self.suspended = true;
            self.suspenders = vec!["user".into()];
            self.suspending = None;
        }
        let mut went_live = false;
        for d in &mut self.deploys {
            if let Some((at, status)) = &d.next
                && now >= *at
            {
                went_live |= status == "live";
                d.status = status.clone();
                d.next = None;
            }
        }
        if went_live {
            // The deploy before the newest live one is deactivated.
            let newest_live = self.deploys.iter().position(|d| d.status == "live");
            for (i, d) in self.deploys.iter_mut().enumerate() {
                if Some(i) != newest_live && d.status == "live" {
                    d.status = "deactivated".into();
                }
            }
        }
    }

    /// Starts a deploy (latest first) that ends live after the deploy time.
    fn deploy(&mut self, id: String, trigger: &str, first: &str, now: Instant) -> FakeDeploy {
        let end = if std::mem::take(&mut self.fail_next_deploy) {
            "build_failed"
        } else {
            "live"
        };
        let d = FakeDeploy {
            id,
            status: first.into(),
            trigger: trigger.into(),
            commit: None,
            image: None,
            next: Some((now + self.deploy_time, end.into())),
        };
        self.deploys.insert(0, d.clone());
        d
    }
}

/// The fake's state: services by id.
#[derive(Debug, Default)]
pub struct RenderFake {
    services: Mutex<HashMap<String, FakeService>>,
    next: AtomicU64,
}

/// An answer in the spec's `error` shape.
pub fn error(status: u16, message: &str) -> Reply {
    Reply::json(
        status,
        &json!({ "id": format!("err-{status}"), "message": message }).to_string(),
    )
}

fn ok(status: u16, body: Value) -> Reply {
    Reply::json(status, &body.to_string())
}

/// The fake and Prism in front of it, once per test binary.
pub fn render() -> (&'static Prism, &'static RenderFake) {
    static FAKE: LazyLock<Arc<RenderFake>> = LazyLock::new(|| Arc::new(RenderFake::default()));
    static PRISM: OnceLock<Prism> = OnceLock::new();
    let fake: &'static RenderFake = &FAKE;
    let prism = PRISM.get_or_init(|| {
        let handler = FAKE.clone();
        Prism::start(
            &prism::spec("render/render-public-api.json"),
            Arc::new(move |seen: &Seen| Some(handler.handle(seen))),
        )
    });
    (prism, fake)
}

fn query_values(query: &str, key: &str) -> Vec<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| v.replace("%3A", ":").replace("%2B", "+"))
        .collect()
}

impl RenderFake {
    fn n(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// A new service whose latest deploy is `deploy` (`None`: no deploy), suspended by
    /// `suspenders` when there are any; returns its id (`srv-<tag letters><n>`).
    pub fn service(&self, tag: &str, deploy: Option<&str>, suspenders: &[&str]) -> String {
        let letters: String = tag
            .bytes()
            .filter(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            .map(char::from)
            .take(16)
            .collect();
        let id = format!("srv-{letters}{}", self.n());
        let deploys = deploy
            .map(|status| {
                vec![FakeDeploy {
                    id: format!("dep-{letters}{}", self.n()),
                    status: status.into(),
                    trigger: "new_commit".into(),
                    commit: Some("4f1e2d3c".into()),
                    image: None,
                    next: None,
                }]
            })
            .unwrap_or_default();
        lock(&self.services).insert(
            id.clone(),
            FakeService {
                id: id.clone(),
                suspended: !suspenders.is_empty(),
                suspenders: suspenders.iter().map(|s| (*s).to_owned()).collect(),
                suspending: None,
                maintenance: false,
                instances: 1,
                deploys,
                logs: Vec::new(),
                fail_next_deploy: false,
                deploy_time: DEPLOY_TIME,
                restarts: 0,
                requests: Vec::new(),
                faults: FaultScript::default(),
            },
        );
        id
    }

    /// Runs `f` on service `id` (panics when there is none).
    pub fn with<T>(&self, id: &str, f: impl FnOnce(&mut FakeService) -> T) -> T {
        let mut services = lock(&self.services);
        let s = services
            .get_mut(id)
            .unwrap_or_else(|| panic!("no fake service {id}"));
        s.advance(Instant::now());
        f(s)
    }

    /// The latest deploy's status (`None`: no deploy).
    pub fn latest(&self, id: &str) -> Option<String> {
        self.with(id, |s| s.deploys.first().map(|d| d.status.clone()))
    }

    /// Whether the service is suspended now.
    pub fn suspended(&self, id: &str) -> bool {
        self.with(id, |s| s.suspended)
    }

    /// Suspends it as its user (or Render, by `suspenders`) would, outside kinfra.
    pub fn suspend(&self, id: &str, suspenders: &[&str]) {
        self.with(id, |s| {
            s.suspended = true;
            s.suspenders = suspenders.iter().map(|x| (*x).to_owned()).collect();
        });
    }

    /// Resumes it outside kinfra (no new deploy).
    pub fn unsuspend(&self, id: &str) {
        self.with(id, |s| {
            s.suspended = false;
            s.suspenders.clear();
        });
    }

    /// Sets the latest deploy's status as if it changed outside kinfra.
    pub fn set_latest(&self, id: &str, status: &str) {
        self.with(id, |s| {
            if let Some(d) = s.deploys.first_mut() {
                d.status = status.into();
                d.next = None;
            }
        });
    }

    /// Adds a deploy with `status` as the latest one, the earlier ones left as they are (a
    /// deploy canceled or failed outside kinfra); returns its id.
    pub fn push_deploy(&self, id: &str, status: &str) -> String {
        let deploy_id = format!("dep-pushed{}", self.n());
        self.with(id, |s| {
            s.deploys.insert(
                0,
                FakeDeploy {
                    id: deploy_id.clone(),
                    status: status.into(),
                    trigger: "new_commit".into(),
                    commit: None,
                    image: None,
                    next: None,
                },
            )
        });
        deploy_id
    }

    /// Sets the status of deploy `deploy_id` of service `id`.
    pub fn set_deploy(&self, id: &str, deploy_id: &str, status: &str) {
        self.with(id, |s| {
            let d = s
                .deploys
                .iter_mut()
                .find(|d| d.id == deploy_id)
                .unwrap_or_else(|| panic!("no deploy {deploy_id}"));
            d.status = status.into();
            d.next = None;
        });
    }

    /// The id of the latest deploy.
    pub fn latest_id(&self, id: &str) -> Option<String> {
        self.with(id, |s| s.deploys.first().map(|d| d.id.clone()))
    }

    /// Writes a log line (level `info`, type `app` unless said otherwise); returns its id.
    pub fn log(&self, id: &str, message: &str, level: &str, kind: &str) -> String {
        let n = self.n();
        let log_id = format!("log-{n}");
        // Render's timestamps are finer than milliseconds: nine digits, the last six a
        // sequence, so lines written in one millisecond keep their order and page apart.
        let millis = kinfra_core::event::now_rfc3339();
        let timestamp = format!("{}{:06}Z", millis.trim_end_matches('Z'), n % 1_000_000);
        self.with(id, |s| {
            s.logs.push(FakeLog {
                id: log_id.clone(),
                timestamp,
                message: message.into(),
                level: level.into(),
                kind: kind.into(),
            })
        });
        log_id
    }

    /// The next `times` requests of `id` whose `METHOD target` contains `pattern` get `reply`
    /// (`pattern` ending in `$`: whose `METHOD target` without its query is exactly the rest).
    pub fn inject(&self, id: &str, pattern: &str, reply: Reply, times: usize) {
        self.with(id, |s| s.faults.push(pattern, reply, times));
    }

    /// `METHOD target body` of every request of `id` that reached the fake.
    pub fn requests(&self, id: &str) -> Vec<String> {
        self.with(id, |s| s.requests.clone())
    }

    /// How many requests of `id` that reached the fake contain `needle`.
    pub fn count(&self, id: &str, needle: &str) -> usize {
        self.requests(id)
            .iter()
            .filter(|l| l.contains(needle))
            .count()
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
            return error(401, "Unauthorized");
        }
        let (service, rest): (String, Vec<&str>) = match parts.as_slice() {
            ["services", id, rest @ ..] => ((*id).to_owned(), rest.to_vec()),
            ["logs"] => match query_values(query, "resource").first() {
                Some(id) => (id.clone(), vec!["logs"]),
                None => return error(400, "resource is required"),
            },
            _ => return error(404, "not found"),
        };
        let mut services = lock(&self.services);
        let Some(s) = services.get_mut(&service) else {
            return error(404, &format!("service {service} not found"));
        };
        let now = Instant::now();
        s.advance(now);
        s.requests
            .push(format!("{} {} {}", seen.method, seen.target, seen.body));
        let line = format!("{} {}", seen.method, seen.target);
        let bare = format!("{} {path}", seen.method);
        let matches = |pattern: &str| match pattern.strip_suffix('$') {
            Some(exact) => bare == exact,
            None => line.contains(pattern),
        };
        if let Some(reply) = s.faults.take(matches) {
            return reply;
        }
        let body: Value = serde_json::from_str(&seen.body).unwrap_or(Value::Null);
        match (seen.method.as_str(), rest.as_slice()) {
            ("GET", []) => ok(200, service_json(s)),
            ("POST", ["suspend"]) => {
                if !s.suspended && s.suspending.is_none() {
                    s.suspending = Some(now + SUSPEND_TIME);
                }
                empty(202)
            }
            ("POST", ["resume"]) => {
                if !s.suspended {
                    return error(400, "service is not suspended");
                }
                if s.suspenders.iter().any(|x| x != "user") {
                    return error(400, "service was suspended by Render");
                }
                s.suspended = false;
                s.suspenders.clear();
                let id = format!("dep-resumed{}", self.n());
                s.deploy(id, "service_resumed", "update_in_progress", now);
                empty(202)
            }
            ("POST", ["restart"]) => {
                s.restarts += 1;
                empty(200)
            }
            ("POST", ["scale"]) => match body.get("numInstances").and_then(Value::as_i64) {
                Some(n) => {
                    s.instances = n;
                    empty(202)
                }
                None => error(400, "numInstances is required"),
            },
            ("GET", ["deploys"]) => {
                let limit = query_values(query, "limit")
                    .first()
                    .and_then(|l| l.parse::<usize>().ok())
                    .unwrap_or(20);
                let statuses = query_values(query, "status");
                let list: Vec<Value> = s
                    .deploys
                    .iter()
                    .filter(|d| statuses.is_empty() || statuses.contains(&d.status))
                    .take(limit)
                    .map(|d| json!({ "deploy": deploy_json(d), "cursor": d.id }))
                    .collect();
                ok(200, Value::Array(list))
            }
            ("POST", ["deploys"]) => {
                let id = format!("dep-api{}", self.n());
                let mut d = s.deploy(id, "api", "build_in_progress", now);
                d.commit = body
                    .get("commitId")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                d.image = body
                    .get("imageUrl")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                s.deploys[0] = d.clone();
                ok(201, deploy_json(&d))
            }
            ("POST", ["deploys", deploy, "cancel"]) => {
                let Some(d) = s.deploys.iter_mut().find(|d| d.id == *deploy) else {
                    return error(404, &format!("deploy {deploy} not found"));
                };
                if !d.status.ends_with("_in_progress") && d.status != "queued" {
                    return error(400, &format!("deploy {deploy} is {}", d.status));
                }
                d.status = "canceled".into();
                d.next = None;
                ok(200, deploy_json(d))
            }
            ("GET", ["logs"]) => {
                if query_values(query, "ownerId").first().map(String::as_str) != Some(OWNER) {
                    return error(400, "ownerId does not own the resource");
                }
                let start = query_values(query, "startTime").into_iter().next();
                let end = query_values(query, "endTime").into_iter().next();
                let limit = query_values(query, "limit")
                    .first()
                    .and_then(|l| l.parse::<usize>().ok())
                    .unwrap_or(20);
                let start = start.map(|t| instant_key(&t));
                let end_key = end.as_ref().map(|t| instant_key(t));
                let mut matching: Vec<&FakeLog> = s
                    .logs
                    .iter()
                    .filter(|l| {
                        start
                            .as_ref()
                            .is_none_or(|t| instant_key(&l.timestamp) >= *t)
                    })
                    .filter(|l| {
                        end_key
                            .as_ref()
                            .is_none_or(|t| instant_key(&l.timestamp) < *t)
                    })
                    .collect();
                matching.sort_by_key(|l| instant_key(&l.timestamp));
                let page: Vec<Value> = matching
                    .iter()
                    .take(limit)
                    .map(|l| log_json(&s.id, l))
                    .collect();
                let rest = matching.get(limit);
                let now_text = kinfra_core::event::now_rfc3339();
                ok(
                    200,
                    json!({
                        "hasMore": rest.is_some(),
                        "nextStartTime": rest.map_or(now_text.clone(), |l| l.timestamp.clone()),
                        "nextEndTime": end.unwrap_or(now_text),
                        "logs": page,
                    }),
                )
            }
            _ => error(404, &format!("the fake has no route {line}")),
        }
    }
}

/// A UTC RFC 3339 time (`…:40.534Z`, `…:40.534000017Z`) as a key that sorts by time: the
/// fraction padded to nine digits.
fn instant_key(text: &str) -> String {
    let bare = text.trim_end_matches('Z');
    let (whole, fraction) = bare.split_once('.').unwrap_or((bare, ""));
    format!("{whole}.{fraction:0<9}")
}

/// A `service` (a web service).
pub fn service_json(s: &FakeService) -> Value {
    json!({
        "id": s.id,
        "name": format!("kinfra test {}", s.id),
        "ownerId": OWNER,
        "type": "web_service",
        "createdAt": TIME,
        "updatedAt": TIME,
        "dashboardUrl": format!("https://dashboard.render.com/web/{}", s.id),
        "suspended": if s.suspended { "suspended" } else { "not_suspended" },
        "suspenders": s.suspenders,
        "autoDeploy": "yes",
        "notifyOnFail": "default",
        "slug": s.id,
        "rootDir": "",
        "branch": "main",
        "repo": "https://github.com/render-examples/flask-hello-world",
        "serviceDetails": {
            "env": "python",
            "runtime": "python",
            "envSpecificDetails": {
                "buildCommand": "pip install -r requirements.txt",
                "startCommand": "gunicorn app:app",
            },
            "plan": "starter",
            "region": "frankfurt",
            "numInstances": s.instances,
            "buildPlan": "starter",
            "healthCheckPath": "/healthz",
            "openPorts": [{ "port": 10000, "protocol": "TCP" }],
            "url": format!("https://{}.onrender.com", s.id),
            "maintenanceMode": { "enabled": s.maintenance, "uri": "" },
        },
    })
}

/// A `deploy`.
pub fn deploy_json(d: &FakeDeploy) -> Value {
    let mut v = json!({
        "id": d.id,
        "status": d.status,
        "trigger": d.trigger,
        "createdAt": TIME,
        "updatedAt": TIME,
        "startedAt": TIME,
    });
    if let Some(c) = &d.commit {
        v["commit"] = json!({ "id": c, "message": "the change", "createdAt": TIME });
    }
    if let Some(i) = &d.image {
        v["image"] = json!({ "ref": i, "sha": "sha256:0f0f" });
    }
    if d.next.is_none() && !d.status.ends_with("_in_progress") {
        v["finishedAt"] = json!(TIME);
    }
    v
}

fn log_json(service: &str, l: &FakeLog) -> Value {
    json!({
        "id": l.id,
        "message": l.message,
        "timestamp": l.timestamp,
        "labels": [
            { "name": "resource", "value": service },
            { "name": "instance", "value": format!("{service}-abc12") },
            { "name": "level", "value": l.level },
            { "name": "type", "value": l.kind },
        ],
    })
}
