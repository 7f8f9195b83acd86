//! A stateful fake of the Supabase Management API, behind Prism (see `prism.rs`): projects
//! that go INACTIVE → (restore) → COMING_UP → ACTIVE_HEALTHY (or RESTORE_FAILED when told to)
//! and ACTIVE_HEALTHY → (pause) → PAUSING → INACTIVE after a short delay, a cancelled restore
//! back to INACTIVE, services' health (some can be made unhealthy), the pooler's config and
//! database branches. The spec declares no usable security scheme, so the fake checks
//! `Authorization: Bearer <TOKEN>` itself; it answers in the spec's shapes.
//!
//! Tests share one fake and one Prism per binary: each test creates its own project (a unique
//! 20-letter ref) and only looks at its own exchanges. Faults are injected per project: the
//! next requests matching a pattern get a scripted [`Reply`].

use super::fake_http::{Reply, Seen};
use super::prism::{self, Prism};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The token the fake accepts.
pub const TOKEN: &str = "sbp_test_token_5f0c2e9a";
/// How long a restore or a pause takes (unless a project says otherwise).
pub const OPERATION_TIME: Duration = Duration::from_millis(600);
const TIME: &str = "2026-01-01T00:00:00Z";

/// One branch.
#[derive(Debug, Clone)]
pub struct FakeBranch {
    pub id: String,
    pub name: String,
}

/// A fault: the next `times` requests whose `METHOD target` contains `pattern` get `reply`.
#[derive(Debug, Clone)]
struct Fault {
    pattern: String,
    reply: Reply,
    times: usize,
}

/// One project of the fake.
#[derive(Debug)]
pub struct FakeProject {
    pub project_ref: String,
    /// The status now.
    pub status: String,
    /// A status change under way: (when, the status then).
    pub next: Option<(Instant, String)>,
    /// Services whose health is UNHEALTHY, with their error.
    pub unhealthy: Vec<(String, String)>,
    /// The next restore ends in RESTORE_FAILED.
    pub fail_next_restore: bool,
    /// How long restores and pauses take.
    pub operation_time: Duration,
    pub branches: Vec<FakeBranch>,
    /// `METHOD target body` of every request that reached the fake for this project.
    pub requests: Vec<String>,
    faults: VecDeque<Fault>,
}

impl FakeProject {
    fn advance(&mut self, now: Instant) {
        if let Some((at, status)) = &self.next
            && now >= *at
        {
            self.status = status.clone();
            self.next = None;
        }
    }
}

/// The fake's state: projects by ref, branch ids to their project.
#[derive(Debug, Default)]
pub struct SupabaseFake {
    projects: Mutex<HashMap<String, FakeProject>>,
    next: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn error(status: u16, message: &str) -> Reply {
    Reply::json(status, &json!({ "message": message }).to_string())
}

/// A 200 without a body (what the spec declares for restore, cancel and pause).
fn empty() -> Reply {
    Reply {
        status: 200,
        headers: Vec::new(),
        body: String::new(),
        delay: Duration::ZERO,
    }
}

fn ok(status: u16, body: Value) -> Reply {
    Reply::json(status, &body.to_string())
}

/// The fake and Prism in front of it, once per test binary.
pub fn supabase() -> (&'static Prism, &'static SupabaseFake) {
    static FAKE: LazyLock<Arc<SupabaseFake>> = LazyLock::new(|| Arc::new(SupabaseFake::default()));
    static PRISM: OnceLock<Prism> = OnceLock::new();
    let fake: &'static SupabaseFake = &FAKE;
    let prism = PRISM.get_or_init(|| {
        let handler = FAKE.clone();
        Prism::start(
            &prism::spec("supabase/openapi.json"),
            Arc::new(move |seen: &Seen| Some(handler.handle(seen))),
        )
    });
    (prism, fake)
}

/// `n` as 20 lower-case letters (a valid, unique project ref).
fn letters(tag: &str, n: u64) -> String {
    let mut out: String = tag
        .bytes()
        .filter(u8::is_ascii_lowercase)
        .map(char::from)
        .take(12)
        .collect();
    let mut n = n;
    let mut tail = String::new();
    for _ in 0..8 {
        tail.push(char::from(b'a' + (n % 26) as u8));
        n /= 26;
    }
    out.push_str(&tail);
    while out.len() < 20 {
        out.push('x');
    }
    out
}

impl SupabaseFake {
    fn n(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// A new project in `status`; returns its ref (20 letters, starting with `tag`'s letters).
    pub fn project(&self, tag: &str, status: &str) -> String {
        let project_ref = letters(tag, self.n());
        lock(&self.projects).insert(
            project_ref.clone(),
            FakeProject {
                project_ref: project_ref.clone(),
                status: status.into(),
                next: None,
                unhealthy: Vec::new(),
                fail_next_restore: false,
                operation_time: OPERATION_TIME,
                branches: Vec::new(),
                requests: Vec::new(),
                faults: VecDeque::new(),
            },
        );
        project_ref
    }

    /// Runs `f` on project `r` (panics when there is none).
    pub fn with<T>(&self, r: &str, f: impl FnOnce(&mut FakeProject) -> T) -> T {
        let mut projects = lock(&self.projects);
        let p = projects
            .get_mut(r)
            .unwrap_or_else(|| panic!("no fake project {r}"));
        p.advance(Instant::now());
        f(p)
    }

    /// The project's status now.
    pub fn status(&self, r: &str) -> String {
        self.with(r, |p| p.status.clone())
    }

    /// Sets the status as if it changed outside kinfra.
    pub fn set_status(&self, r: &str, status: &str) {
        self.with(r, |p| {
            p.status = status.into();
            p.next = None;
        });
    }

    /// The next `times` requests of `r` whose `METHOD target` contains `pattern` get `reply`
    /// (`pattern` ending in `$`: whose `METHOD target` is exactly the rest).
    pub fn inject(&self, r: &str, pattern: &str, reply: Reply, times: usize) {
        self.with(r, |p| {
            p.faults.push_back(Fault {
                pattern: pattern.into(),
                reply,
                times,
            })
        });
    }

    /// `METHOD target body` of every request of `r` that reached the fake.
    pub fn requests(&self, r: &str) -> Vec<String> {
        self.with(r, |p| p.requests.clone())
    }

    /// How many requests of `r` that reached the fake contain `needle`.
    pub fn count(&self, r: &str, needle: &str) -> usize {
        self.requests(r)
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
        let mut projects = lock(&self.projects);
        // `/v1/branches/{id}` belongs to the project that has the branch.
        let (project, rest): (String, Vec<&str>) = match parts.as_slice() {
            ["v1", "projects", r, rest @ ..] => ((*r).to_owned(), rest.to_vec()),
            ["v1", "branches", id] => match projects
                .values()
                .find(|p| p.branches.iter().any(|b| b.id == *id))
            {
                Some(p) => (p.project_ref.clone(), vec!["branch", id]),
                None => return error(404, &format!("branch {id} not found")),
            },
            _ => return error(404, "not found"),
        };
        let Some(p) = projects.get_mut(&project) else {
            return error(404, &format!("project {project} not found"));
        };
        let now = Instant::now();
        p.advance(now);
        p.requests
            .push(format!("{} {} {}", seen.method, seen.target, seen.body));
        let line = format!("{} {}", seen.method, seen.target);
        let matches = |pattern: &str| match pattern.strip_suffix('$') {
            Some(exact) => line == exact,
            None => line.contains(pattern),
        };
        if let Some(i) = p.faults.iter().position(|f| matches(&f.pattern)) {
            let fault = &mut p.faults[i];
            let reply = fault.reply.clone();
            fault.times -= 1;
            if fault.times == 0 {
                p.faults.remove(i);
            }
            return reply;
        }
        let body: Value = serde_json::from_str(&seen.body).unwrap_or(Value::Null);
        match (seen.method.as_str(), rest.as_slice()) {
            ("GET", []) => ok(200, project_json(p)),
            ("POST", ["restore"]) => {
                if p.status != "INACTIVE" && p.status != "RESTORE_FAILED" {
                    return error(400, &format!("project is {}, not paused", p.status));
                }
                p.status = "COMING_UP".into();
                let end = if std::mem::take(&mut p.fail_next_restore) {
                    "RESTORE_FAILED"
                } else {
                    "ACTIVE_HEALTHY"
                };
                p.next = Some((now + p.operation_time, end.into()));
                empty()
            }
            ("POST", ["restore", "cancel"]) => {
                if p.status == "COMING_UP" || p.status == "RESTORING" {
                    p.status = "INACTIVE".into();
                    p.next = None;
                }
                empty()
            }
            ("POST", ["pause"]) => {
                if !p.status.starts_with("ACTIVE") {
                    return error(400, &format!("project is {}, not active", p.status));
                }
                p.status = "PAUSING".into();
                p.next = Some((now + p.operation_time, "INACTIVE".into()));
                empty()
            }
            ("GET", ["health"]) => {
                let services: Vec<&str> = query
                    .split('&')
                    .filter_map(|kv| kv.strip_prefix("services="))
                    .collect();
                let answer: Vec<Value> = services
                    .iter()
                    .map(|name| match p.unhealthy.iter().find(|(n, _)| n == name) {
                        Some((_, e)) => json!({
                            "name": name, "healthy": false, "status": "UNHEALTHY", "error": e,
                        }),
                        None => {
                            json!({ "name": name, "healthy": true, "status": "ACTIVE_HEALTHY" })
                        }
                    })
                    .collect();
                ok(200, Value::Array(answer))
            }
            ("GET", ["config", "database", "pooler"]) => ok(
                200,
                json!([{
                    "identifier": p.project_ref,
                    "database_type": "PRIMARY",
                    "is_using_scram_auth": true,
                    "db_user": format!("postgres.{}", p.project_ref),
                    "db_host": "aws-0-eu-central-1.pooler.supabase.com",
                    "db_port": 6543,
                    "db_name": "postgres",
                    "connection_string": format!(
                        "postgresql://postgres.{}:[YOUR-PASSWORD]@aws-0-eu-central-1.pooler.supabase.com:6543/postgres",
                        p.project_ref
                    ),
                    "connectionString": format!(
                        "postgresql://postgres.{}:[YOUR-PASSWORD]@aws-0-eu-central-1.pooler.supabase.com:6543/postgres",
                        p.project_ref
                    ),
                    "default_pool_size": 15,
                    "max_client_conn": 200,
                    "pool_mode": "transaction",
                }]),
            ),
            ("GET", ["branches"]) => {
                let branches: Vec<Value> = p.branches.iter().map(|b| branch_json(p, b)).collect();
                ok(200, Value::Array(branches))
            }
            ("POST", ["branches"]) => {
                let Some(name) = body.get("branch_name").and_then(Value::as_str) else {
                    return error(400, "branch_name is required");
                };
                let b = FakeBranch {
                    id: format!("00000000-0000-4000-8000-{:012x}", self.n()),
                    name: name.into(),
                };
                p.branches.push(b.clone());
                ok(201, branch_json(p, &b))
            }
            ("DELETE", ["branch", id]) => {
                p.branches.retain(|b| b.id != *id);
                ok(200, json!({ "message": "ok" }))
            }
            _ => error(404, &format!("the fake has no route {line}")),
        }
    }
}

/// A `V1ProjectWithDatabaseResponse`.
pub fn project_json(p: &FakeProject) -> Value {
    json!({
        "id": p.project_ref,
        "ref": p.project_ref,
        "organization_id": "kinfraorgfake",
        "organization_slug": "kinfraorgfake",
        "name": format!("kinfra test {}", p.project_ref),
        "region": "eu-central-1",
        "created_at": TIME,
        "status": p.status,
        "database": {
            "host": format!("db.{}.supabase.co", p.project_ref),
            "version": "15.8.1.085",
            "postgres_engine": "15",
            "release_channel": "ga",
        },
    })
}

fn branch_json(p: &FakeProject, b: &FakeBranch) -> Value {
    json!({
        "id": b.id,
        "name": b.name,
        "project_ref": p.project_ref,
        "parent_project_ref": p.project_ref,
        "is_default": false,
        "persistent": false,
        "status": "CREATING_PROJECT",
        "created_at": TIME,
        "updated_at": TIME,
        "with_data": false,
    })
}
