//! A stateful fake of the Neon API v2, behind Prism (see `prism.rs`): projects with compute
//! endpoints that go idle → (start) → active after a short delay with a `start_compute`
//! operation that runs and then finishes, active → (suspend) → idle, `suspend_timeout_seconds`
//! set by PATCH, branches (list, create, delete, restore), operations by id and the connection
//! URI. It checks `Authorization: Bearer <TOKEN>` itself and answers in the spec's shapes.
//!
//! Tests share one fake and one Prism per binary: each test creates its own project (a unique
//! id) and only looks at exchanges of that project. Faults are injected per project: the next
//! requests matching a pattern get a scripted [`Reply`].

use super::fake_http::{Reply, Seen};
use super::prism::{self, Prism};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The token the fake accepts.
pub const TOKEN: &str = "neon-test-token-6a1f0c";
/// The password in every connection URI the fake hands out.
pub const PASSWORD: &str = "npg-secret-pw-93kq";
/// How long an operation runs before it finishes (unless a project says otherwise).
pub const OPERATION_TIME: Duration = Duration::from_millis(400);
const TIME: &str = "2026-01-01T00:00:00Z";

/// One compute endpoint.
#[derive(Debug, Clone)]
pub struct FakeEndpoint {
    pub id: String,
    pub branch_id: String,
    pub current_state: String,
    pub pending_state: Option<String>,
    pub suspend_timeout_seconds: i64,
    pub disabled: bool,
}

/// One operation.
#[derive(Debug, Clone)]
pub struct FakeOperation {
    pub id: String,
    pub action: String,
    pub endpoint_id: Option<String>,
    pub branch_id: Option<String>,
    pub done_at: Instant,
    /// The error it ends with, when it fails.
    pub fails_with: Option<String>,
    /// What happens to the endpoint when it finishes: (endpoint, new current_state).
    pub effect: Option<(String, String)>,
    pub applied: bool,
}

impl FakeOperation {
    fn status(&self, now: Instant) -> &'static str {
        if now < self.done_at {
            "running"
        } else if self.fails_with.is_some() {
            "failed"
        } else {
            "finished"
        }
    }
}

/// One branch.
#[derive(Debug, Clone)]
pub struct FakeBranch {
    pub id: String,
    pub name: String,
    pub parent_id: Option<String>,
}

/// A fault: the next `times` requests whose `METHOD target` contains `pattern` get `reply`.
#[derive(Debug, Clone)]
struct Fault {
    pattern: String,
    reply: Reply,
    times: usize,
}

/// One project of the fake.
#[derive(Debug, Default)]
pub struct FakeProject {
    pub id: String,
    pub endpoints: BTreeMap<String, FakeEndpoint>,
    pub branches: Vec<FakeBranch>,
    pub operations: Vec<FakeOperation>,
    /// `METHOD target body` of every request that reached the fake for this project.
    pub requests: Vec<String>,
    /// The next start operation fails with this error.
    pub fail_next_start: Option<String>,
    /// How long operations run.
    pub operation_time: Option<Duration>,
    faults: VecDeque<Fault>,
}

/// The fake's state: projects by id.
#[derive(Debug, Default)]
pub struct NeonFake {
    projects: Mutex<HashMap<String, FakeProject>>,
    next: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn error(status: u16, message: &str) -> Reply {
    Reply::json(
        status,
        &json!({"code": status.to_string(), "message": message}).to_string(),
    )
}

fn ok(status: u16, body: Value) -> Reply {
    Reply::json(status, &body.to_string())
}

/// The fake and Prism in front of it, once per test binary.
pub fn neon() -> (&'static Prism, &'static NeonFake) {
    static FAKE: LazyLock<Arc<NeonFake>> = LazyLock::new(|| Arc::new(NeonFake::default()));
    static PRISM: OnceLock<Prism> = OnceLock::new();
    let fake: &'static NeonFake = &FAKE;
    let prism = PRISM.get_or_init(|| {
        let handler = FAKE.clone();
        Prism::start(
            &prism::spec("neon/v2.json"),
            Arc::new(move |seen: &Seen| Some(handler.handle(seen))),
        )
    });
    (prism, fake)
}

impl NeonFake {
    fn id(&self, prefix: &str) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{n}")
    }

    fn uuid(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("00000000-0000-4000-8000-{n:012x}")
    }

    /// A new project (`p-<tag>-<n>`) with branch `main` and one endpoint in `state`; returns
    /// (project id, endpoint id, main branch id).
    pub fn project(&self, tag: &str, state: &str) -> (String, String, String) {
        let project = self.id(&format!("p-{tag}"));
        let branch = self.id("br-main");
        let endpoint = self.id("ep-compute");
        let mut p = FakeProject {
            id: project.clone(),
            ..FakeProject::default()
        };
        p.branches.push(FakeBranch {
            id: branch.clone(),
            name: "main".into(),
            parent_id: None,
        });
        p.endpoints.insert(
            endpoint.clone(),
            FakeEndpoint {
                id: endpoint.clone(),
                branch_id: branch.clone(),
                current_state: state.into(),
                pending_state: None,
                suspend_timeout_seconds: 300,
                disabled: false,
            },
        );
        lock(&self.projects).insert(project.clone(), p);
        (project, endpoint, branch)
    }

    /// Runs `f` on project `id` (panics when there is none).
    pub fn with<T>(&self, id: &str, f: impl FnOnce(&mut FakeProject) -> T) -> T {
        let mut projects = lock(&self.projects);
        let p = projects
            .get_mut(id)
            .unwrap_or_else(|| panic!("no fake project {id}"));
        advance(p, Instant::now());
        f(p)
    }

    /// The endpoint's current state.
    pub fn state(&self, project: &str, endpoint: &str) -> String {
        self.with(project, |p| p.endpoints[endpoint].current_state.clone())
    }

    /// Sets the endpoint's state as if it changed outside kinfra.
    pub fn set_state(&self, project: &str, endpoint: &str, state: &str) {
        self.with(project, |p| {
            let e = p.endpoints.get_mut(endpoint).expect("endpoint");
            e.current_state = state.into();
            e.pending_state = None;
        });
    }

    /// The next `times` requests of `project` whose `METHOD target` contains `pattern` get
    /// `reply`.
    pub fn inject(&self, project: &str, pattern: &str, reply: Reply, times: usize) {
        self.with(project, |p| {
            p.faults.push_back(Fault {
                pattern: pattern.into(),
                reply,
                times,
            })
        });
    }

    /// `METHOD target body` of every request of `project` that reached the fake.
    pub fn requests(&self, project: &str) -> Vec<String> {
        self.with(project, |p| p.requests.clone())
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
            return error(401, "authentication required");
        }
        let ["projects", project, rest @ ..] = parts.as_slice() else {
            return error(404, "not found");
        };
        let mut projects = lock(&self.projects);
        let Some(p) = projects.get_mut(*project) else {
            return error(404, &format!("project {project} not found"));
        };
        let now = Instant::now();
        advance(p, now);
        p.requests
            .push(format!("{} {} {}", seen.method, seen.target, seen.body));
        let line = format!("{} {}", seen.method, seen.target);
        if let Some(i) = p.faults.iter().position(|f| line.contains(&f.pattern)) {
            let fault = &mut p.faults[i];
            let reply = fault.reply.clone();
            fault.times -= 1;
            if fault.times == 0 {
                p.faults.remove(i);
            }
            return reply;
        }
        let query: HashMap<String, String> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let body: Value = serde_json::from_str(&seen.body).unwrap_or(Value::Null);
        let op_time = p.operation_time.unwrap_or(OPERATION_TIME);
        match (seen.method.as_str(), rest) {
            ("GET", ["endpoints", id]) => match p.endpoints.get(*id) {
                Some(e) => ok(200, json!({ "endpoint": endpoint_json(project, e) })),
                None => error(404, &format!("endpoint {id} not found")),
            },
            ("PATCH", ["endpoints", id]) => {
                let Some(e) = p.endpoints.get_mut(*id) else {
                    return error(404, &format!("endpoint {id} not found"));
                };
                if let Some(t) = body
                    .pointer("/endpoint/suspend_timeout_seconds")
                    .and_then(Value::as_i64)
                {
                    e.suspend_timeout_seconds = t;
                }
                let e = e.clone();
                let op = self.operation(p, "apply_config", Some(&e), Duration::ZERO, None, None);
                ok(
                    200,
                    json!({ "endpoint": endpoint_json(project, &e), "operations": [op] }),
                )
            }
            ("POST", ["endpoints", id, action @ ("start" | "suspend" | "restart")]) => {
                let Some(e) = p.endpoints.get(*id).cloned() else {
                    return error(404, &format!("endpoint {id} not found"));
                };
                let (name, target) = match *action {
                    "suspend" => ("suspend_compute", "idle"),
                    _ => ("start_compute", "active"),
                };
                let fails = if *action == "suspend" {
                    None
                } else {
                    p.fail_next_start.take()
                };
                let effect = fails.is_none().then(|| (e.id.clone(), target.to_owned()));
                let op = self.operation(p, name, Some(&e), op_time, fails, effect);
                let e = p.endpoints.get_mut(*id).expect("endpoint");
                if e.current_state != target || *action == "restart" {
                    e.pending_state = Some(target.into());
                }
                let e = e.clone();
                ok(
                    200,
                    json!({ "endpoint": endpoint_json(project, &e), "operations": [op] }),
                )
            }
            ("GET", ["operations", id]) => match p.operations.iter().find(|o| o.id == *id) {
                Some(o) => ok(200, json!({ "operation": operation_json(project, o, now) })),
                None => error(404, &format!("operation {id} not found")),
            },
            ("GET", ["connection_uri"]) => {
                let (Some(db), Some(role)) = (query.get("database_name"), query.get("role_name"))
                else {
                    return error(400, "database_name and role_name are required");
                };
                let endpoint = query
                    .get("endpoint_id")
                    .cloned()
                    .or_else(|| p.endpoints.keys().next().cloned())
                    .unwrap_or_default();
                ok(
                    200,
                    json!({ "uri": format!(
                        "postgresql://{role}:{PASSWORD}@{endpoint}.fake.neon.test/{db}?sslmode=require"
                    ) }),
                )
            }
            ("GET", ["branches"]) => {
                let branches: Vec<Value> =
                    p.branches.iter().map(|b| branch_json(project, b)).collect();
                ok(
                    200,
                    json!({ "branches": branches, "annotations": {}, "pagination": {} }),
                )
            }
            ("POST", ["branches"]) => {
                let name = body
                    .pointer("/branch/name")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| self.id("br"));
                let parent = body
                    .pointer("/branch/parent_id")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .or_else(|| p.branches.first().map(|b| b.id.clone()));
                let b = FakeBranch {
                    id: self.id("br-new"),
                    name,
                    parent_id: parent,
                };
                p.branches.push(b.clone());
                let op = self.operation(p, "create_branch", None, op_time, None, None);
                if let Some(last) = p.operations.last_mut() {
                    last.branch_id = Some(b.id.clone());
                }
                ok(
                    201,
                    json!({
                        "branch": branch_json(project, &b),
                        "endpoints": [],
                        "operations": [op],
                        "roles": [],
                        "databases": [],
                    }),
                )
            }
            ("GET", ["branches", id, "endpoints"]) => {
                let endpoints: Vec<Value> = p
                    .endpoints
                    .values()
                    .filter(|e| e.branch_id == *id)
                    .map(|e| endpoint_json(project, e))
                    .collect();
                ok(200, json!({ "endpoints": endpoints }))
            }
            ("DELETE", ["branches", id]) => {
                let Some(i) = p.branches.iter().position(|b| b.id == *id) else {
                    return error(404, &format!("branch {id} not found"));
                };
                let b = p.branches.remove(i);
                let op = self.operation(p, "delete_timeline", None, op_time, None, None);
                ok(
                    200,
                    json!({ "branch": branch_json(project, &b), "operations": [op] }),
                )
            }
            ("POST", ["branches", id, "restore"]) => {
                let Some(b) = p.branches.iter().find(|b| b.id == *id).cloned() else {
                    return error(404, &format!("branch {id} not found"));
                };
                if body.pointer("/source_branch_id").is_none() {
                    return error(400, "source_branch_id is required");
                }
                let op = self.operation(p, "create_timeline", None, op_time, None, None);
                ok(
                    200,
                    json!({ "branch": branch_json(project, &b), "operations": [op] }),
                )
            }
            _ => error(404, &format!("the fake has no route {line}")),
        }
    }

    /// Records an operation and returns its JSON as first reported (`running`, or already
    /// `finished` when it takes no time).
    fn operation(
        &self,
        p: &mut FakeProject,
        action: &str,
        endpoint: Option<&FakeEndpoint>,
        takes: Duration,
        fails_with: Option<String>,
        effect: Option<(String, String)>,
    ) -> Value {
        let now = Instant::now();
        let op = FakeOperation {
            id: self.uuid(),
            action: action.into(),
            endpoint_id: endpoint.map(|e| e.id.clone()),
            branch_id: endpoint.map(|e| e.branch_id.clone()),
            done_at: now + takes,
            fails_with,
            effect,
            applied: false,
        };
        p.operations.push(op);
        advance(p, now);
        let op = p.operations.last().expect("just pushed");
        operation_json(&p.id, op, now)
    }
}

/// Applies every finished operation's effect.
fn advance(p: &mut FakeProject, now: Instant) {
    for op in p.operations.iter_mut() {
        if op.applied || now < op.done_at {
            continue;
        }
        op.applied = true;
        if op.fails_with.is_some() {
            // A failed start leaves the endpoint where it was.
            if let Some(e) = op
                .endpoint_id
                .as_ref()
                .and_then(|id| p.endpoints.get_mut(id))
            {
                e.pending_state = None;
            }
            continue;
        }
        if let Some((id, state)) = &op.effect
            && let Some(e) = p.endpoints.get_mut(id)
        {
            e.current_state = state.clone();
            e.pending_state = None;
        }
    }
}

/// An `Endpoint` in the spec's shape.
pub fn endpoint_json(project: &str, e: &FakeEndpoint) -> Value {
    let mut v = json!({
        "host": format!("{}.fake.neon.test", e.id),
        "id": e.id,
        "project_id": project,
        "branch_id": e.branch_id,
        "region_id": "aws-us-east-2",
        "autoscaling_limit_min_cu": 0.25,
        "autoscaling_limit_max_cu": 1,
        "type": "read_write",
        "current_state": e.current_state,
        "settings": { "pg_settings": {} },
        "pooler_enabled": false,
        "pooler_mode": "transaction",
        "disabled": e.disabled,
        "passwordless_access": true,
        "creation_source": "console",
        "created_at": TIME,
        "updated_at": TIME,
        "proxy_host": "fake.neon.test",
        "suspend_timeout_seconds": e.suspend_timeout_seconds,
        "provisioner": "k8s-neonvm",
    });
    if let Some(pending) = &e.pending_state {
        v["pending_state"] = json!(pending);
    }
    v
}

fn operation_json(project: &str, o: &FakeOperation, now: Instant) -> Value {
    let mut v = json!({
        "id": o.id,
        "project_id": project,
        "action": o.action,
        "status": o.status(now),
        "failures_count": 0,
        "created_at": TIME,
        "updated_at": TIME,
        "total_duration_ms": 100,
    });
    if let Some(e) = &o.endpoint_id {
        v["endpoint_id"] = json!(e);
    }
    if let Some(b) = &o.branch_id {
        v["branch_id"] = json!(b);
    }
    if o.status(now) == "failed"
        && let Some(error) = &o.fails_with
    {
        v["error"] = json!(error);
        v["failures_count"] = json!(1);
    }
    v
}

fn branch_json(project: &str, b: &FakeBranch) -> Value {
    let mut v = json!({
        "id": b.id,
        "project_id": project,
        "name": b.name,
        "current_state": "ready",
        "state_changed_at": TIME,
        "creation_source": "console",
        "created_at": TIME,
        "updated_at": TIME,
        "default": b.parent_id.is_none(),
        "protected": false,
        "cpu_used_sec": 0,
        "active_time_seconds": 0,
        "compute_time_seconds": 0,
        "written_data_bytes": 0,
        "data_transfer_bytes": 0,
    });
    if let Some(parent) = &b.parent_id {
        v["parent_id"] = json!(parent);
    }
    v
}
