//! A stateful fake of the Vercel REST API, behind Prism (see `prism.rs`): projects that pause
//! and unpause, deployments that go QUEUED → BUILDING → READY (or ERROR when told to) after a
//! short delay once created by `POST /v13/deployments`, cancel, promote, build events and
//! runtime logs. Every request must carry `Authorization: Bearer <TOKEN>` and, for a project
//! of a team, `teamId=<team>`; answers are in the spec's shapes.
//!
//! Prism does not validate Vercel request bodies, so every JSON body is checked here against
//! its operation's request-body schema by `specs/vercel/validate-bodies.js` (Ajv, installed
//! with Prism): an invalid body is answered 400 and recorded ([`VercelFake::body_errors`]).
//! Prism cannot pass a multi-line `application/stream+json` answer either, so through Prism
//! the log streams answer one line per response (the next event after `since`, the next
//! runtime row, or a `delimiter` line after a short wait); [`StreamServer`] serves the same
//! state without Prism with real streams held open, to show lines arriving while they are.
//!
//! Tests share one fake and one Prism per binary: each test creates its own project (a unique
//! id) and only looks at its own exchanges. Faults are injected per project: the next requests
//! matching a pattern get a scripted [`Reply`].

use super::fake_http::{Reply, Seen};
use super::fault_script::{FaultScript, empty, lock};
use super::prism::{self, Prism};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The token the fake accepts.
pub const TOKEN: &str = "vercel_test_token_Qm41x";
/// How long each build step (QUEUED → BUILDING → READY) of a created deployment takes.
pub const BUILD_STEP: Duration = Duration::from_millis(400);
/// How long an empty log stream waits before its `delimiter` line (through Prism).
const EMPTY_STREAM_WAIT: Duration = Duration::from_millis(150);

/// One build event.
#[derive(Debug, Clone)]
pub struct FakeEvent {
    pub id: String,
    pub created: u64,
    pub kind: String,
    pub text: String,
}

/// One deployment.
#[derive(Debug, Clone)]
pub struct FakeDeployment {
    pub uid: String,
    pub url: String,
    pub target: Option<String>,
    pub state: String,
    pub created: u64,
    pub error: Option<String>,
    /// State changes still to come: (when, state).
    pub plan: VecDeque<(Instant, String)>,
    pub events: Vec<FakeEvent>,
    pub rows: Vec<(String, String, String)>,
    /// Runtime rows served so far (through Prism, one per response).
    pub rows_served: usize,
}

/// One project of the fake.
#[derive(Debug)]
pub struct FakeProject {
    pub id: String,
    pub name: String,
    /// The team it belongs to: requests must carry `teamId` = this.
    pub team: Option<String>,
    pub paused: bool,
    /// The next created deployment's build fails (ERROR).
    pub fail_next_build: bool,
    /// Deployments, oldest first.
    pub deployments: Vec<FakeDeployment>,
    /// `METHOD target body` of every request that reached the fake for this project.
    pub requests: Vec<String>,
    /// Bodies that left the spec's request-body schema.
    pub body_errors: Vec<String>,
    faults: FaultScript,
}

/// The fake's state.
#[derive(Default)]
pub struct VercelFake {
    projects: Mutex<HashMap<String, FakeProject>>,
    /// Deployment id → project id.
    owners: Mutex<HashMap<String, String>>,
    next: AtomicU64,
    validator: Mutex<Option<BodyValidator>>,
}

fn error(status: u16, code: &str, message: &str) -> Reply {
    Reply::json(
        status,
        &json!({ "error": { "code": code, "message": message } }).to_string(),
    )
}

fn ok(body: Value) -> Reply {
    Reply::json(200, &body.to_string())
}

fn stream_line(body: Value) -> Reply {
    Reply {
        status: 200,
        headers: vec![("Content-Type".into(), "application/stream+json".into())],
        body: format!("{body}\n"),
        delay: Duration::ZERO,
    }
}

/// The fake and Prism in front of it, once per test binary.
pub fn vercel() -> (&'static Prism, &'static VercelFake) {
    static FAKE: LazyLock<Arc<VercelFake>> = LazyLock::new(|| Arc::new(VercelFake::default()));
    static PRISM: OnceLock<Prism> = OnceLock::new();
    let fake: &'static VercelFake = &FAKE;
    let prism = PRISM.get_or_init(|| {
        let handler = FAKE.clone();
        Prism::start(
            &prism::spec("vercel/openapi.json"),
            Arc::new(move |seen: &Seen| Some(handler.handle(seen))),
        )
    });
    (prism, fake)
}

/// A millisecond clock that only goes up (event and deployment timestamps).
fn now_ms() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = wall.max(last + 1);
        match LAST.compare_exchange(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

impl FakeDeployment {
    fn new(uid: String, project: &str, target: Option<&str>, state: &str) -> Self {
        let url = format!("{project}-{}.vercel.app", uid.trim_start_matches("dpl_"));
        Self {
            uid,
            url,
            target: target.map(str::to_owned),
            state: state.into(),
            created: now_ms(),
            error: None,
            plan: VecDeque::new(),
            events: Vec::new(),
            rows: Vec::new(),
            rows_served: 0,
        }
    }

    fn event(&mut self, kind: &str, text: &str) {
        let created = now_ms();
        self.events.push(FakeEvent {
            id: format!("evt_{}_{created}", self.events.len()),
            created,
            kind: kind.into(),
            text: text.into(),
        });
    }

    fn advance(&mut self, now: Instant) {
        while let Some((at, _)) = self.plan.front() {
            if *at > now {
                break;
            }
            let Some((_, state)) = self.plan.pop_front() else {
                break;
            };
            let text = match state.as_str() {
                "BUILDING" => "Running \"npm run build\"".to_owned(),
                "READY" => "Build Completed; deployment READY".to_owned(),
                "ERROR" => {
                    self.error = Some("Command \"npm run build\" exited with 1".into());
                    "Error: Command \"npm run build\" exited with 1".to_owned()
                }
                other => format!("state {other}"),
            };
            let kind = if state == "ERROR" { "stderr" } else { "stdout" };
            self.state = state;
            self.event(kind, &text);
        }
    }

    fn is_final(&self) -> bool {
        matches!(
            self.state.as_str(),
            "READY" | "ERROR" | "CANCELED" | "DELETED"
        )
    }
}

impl FakeProject {
    fn advance(&mut self, now: Instant) {
        for d in &mut self.deployments {
            d.advance(now);
        }
    }

    /// The latest deployment of `target` (newest `created` last).
    fn latest(&self, target: Option<&str>) -> Vec<&FakeDeployment> {
        let mut all: Vec<&FakeDeployment> = self
            .deployments
            .iter()
            .filter(|d| target.is_none_or(|t| d.target.as_deref() == Some(t)))
            .collect();
        all.sort_by_key(|d| std::cmp::Reverse(d.created));
        all
    }
}

impl VercelFake {
    fn n(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// A new project (`prj_<tag>…`) of `team` (if any), paused or not, with one production
    /// deployment in `state` (none when `None`). Returns (project id, deployment id).
    pub fn project(
        &self,
        tag: &str,
        team: Option<&str>,
        paused: bool,
        state: Option<&str>,
    ) -> (String, String) {
        let n = self.n();
        let id = format!("prj_{tag}{n}");
        let mut project = FakeProject {
            id: id.clone(),
            name: format!("{tag}-{n}"),
            team: team.map(str::to_owned),
            paused,
            fail_next_build: false,
            deployments: Vec::new(),
            requests: Vec::new(),
            body_errors: Vec::new(),
            faults: FaultScript::default(),
        };
        let mut deployment_id = String::new();
        if let Some(state) = state {
            let uid = format!("dpl_{tag}{n}a");
            let mut d = FakeDeployment::new(uid.clone(), &project.name, Some("production"), state);
            d.event("stdout", "Cloning github.com/acme/site (Branch: main)");
            if state == "ERROR" {
                d.error = Some("Command \"npm run build\" exited with 1".into());
            }
            lock(&self.owners).insert(uid.clone(), id.clone());
            project.deployments.push(d);
            deployment_id = uid;
        }
        lock(&self.projects).insert(id.clone(), project);
        (id, deployment_id)
    }

    /// Runs `f` on project `id`.
    pub fn with<T>(&self, id: &str, f: impl FnOnce(&mut FakeProject) -> T) -> T {
        let mut projects = lock(&self.projects);
        let p = projects.get_mut(id).expect("a project of this fake");
        f(p)
    }

    /// Runs `f` on deployment `uid` of project `id`.
    pub fn with_deployment<T>(
        &self,
        id: &str,
        uid: &str,
        f: impl FnOnce(&mut FakeDeployment) -> T,
    ) -> T {
        self.with(id, |p| {
            let d = p
                .deployments
                .iter_mut()
                .find(|d| d.uid == uid)
                .expect("a deployment of this project");
            f(d)
        })
    }

    /// Sets a deployment's state now (a change outside kinfra).
    pub fn set_state(&self, id: &str, uid: &str, state: &str) {
        self.with_deployment(id, uid, |d| {
            d.plan.clear();
            d.state = state.into();
        });
    }

    /// Pauses or unpauses the project outside kinfra.
    pub fn set_paused(&self, id: &str, paused: bool) {
        self.with(id, |p| p.paused = paused);
    }

    /// Adds a build event to deployment `uid`.
    pub fn add_event(&self, id: &str, uid: &str, kind: &str, text: &str) {
        self.with_deployment(id, uid, |d| d.event(kind, text));
    }

    /// Adds a runtime log row to deployment `uid`.
    pub fn add_row(&self, id: &str, uid: &str, level: &str, message: &str) {
        self.with_deployment(id, uid, |d| {
            let row = format!("row_{}_{}", d.rows.len(), now_ms());
            d.rows.push((row, level.into(), message.into()));
        });
    }

    /// The next `times` requests of project `id` whose `METHOD target` contains `pattern`
    /// get `reply`.
    pub fn inject(&self, id: &str, pattern: &str, reply: Reply, times: usize) {
        self.with(id, |p| p.faults.push(pattern, reply, times));
    }

    /// `METHOD target body` of every request of project `id` that reached the fake.
    pub fn requests(&self, id: &str) -> Vec<String> {
        self.with(id, |p| p.requests.clone())
    }

    /// How many requests of project `id` that reached the fake contain `needle`.
    pub fn count(&self, id: &str, needle: &str) -> usize {
        self.requests(id)
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// The bodies of project `id` that left the spec (empty when every one fit).
    pub fn body_errors(&self, id: &str) -> Vec<String> {
        self.with(id, |p| p.body_errors.clone())
    }

    /// The project's deployments, newest first.
    pub fn deployments(&self, id: &str) -> Vec<FakeDeployment> {
        self.with(id, |p| {
            p.advance(Instant::now());
            p.latest(None).into_iter().cloned().collect()
        })
    }

    /// Which project a request is about: its path, `projectId`, a deployment id, or the body.
    fn owner(&self, path: &str, query: &HashMap<String, String>, body: &Value) -> Option<String> {
        let parts: Vec<&str> = path.split('/').collect();
        let by_deployment = |uid: &str| lock(&self.owners).get(uid).cloned();
        match parts.as_slice() {
            ["", _, "projects", id, ..] => Some((*id).to_owned()),
            ["", "v6", "deployments"] => query.get("projectId").cloned(),
            ["", "v13", "deployments"] => body
                .get("project")
                .and_then(Value::as_str)
                .map(str::to_owned),
            ["", _, "deployments", uid, ..] => by_deployment(uid),
            _ => None,
        }
    }

    /// Answers one request (the fake's whole API).
    pub fn handle(&self, seen: &Seen) -> Reply {
        let (path, query_text) = seen
            .target
            .split_once('?')
            .unwrap_or((seen.target.as_str(), ""));
        let query: HashMap<String, String> = query_text
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), decode(v)))
            .collect();
        let body: Value = serde_json::from_str(&seen.body).unwrap_or(Value::Null);
        let Some(id) = self.owner(path, &query, &body) else {
            return error(404, "not_found", "the fake has no such route");
        };
        let body_check = if seen.method == "POST" && path == "/v13/deployments" {
            Some(self.check_body(&seen.method, path, &body))
        } else {
            None
        };
        let mut projects = lock(&self.projects);
        let Some(p) = projects.get_mut(&id) else {
            return error(404, "not_found", &format!("Project `{id}` not found"));
        };
        let line = format!("{} {} {}", seen.method, seen.target, seen.body);
        p.requests.push(line.clone());
        if seen.header("authorization") != Some(&format!("Bearer {TOKEN}")) {
            return error(401, "unauthorized", "The request is not authorized.");
        }
        if let Some(team) = &p.team
            && query.get("teamId") != Some(team)
        {
            return error(
                403,
                "forbidden",
                "You do not have permission to access this resource.",
            );
        }
        let key = format!("{} {}", seen.method, seen.target);
        if let Some(reply) = p.faults.take(|pattern| key.contains(pattern)) {
            return reply;
        }
        if let Some(Err(problem)) = body_check {
            p.body_errors.push(problem.clone());
            return error(400, "bad_request", &problem);
        }
        p.advance(Instant::now());
        self.answer(p, &seen.method, path, &query, &body)
    }

    fn answer(
        &self,
        p: &mut FakeProject,
        method: &str,
        path: &str,
        query: &HashMap<String, String>,
        body: &Value,
    ) -> Reply {
        let parts: Vec<&str> = path.split('/').collect();
        match (method, parts.as_slice()) {
            ("GET", ["", "v9", "projects", _]) => ok(project_json(p)),
            ("POST", ["", "v1", "projects", _, "pause"]) => {
                p.paused = true;
                empty(200)
            }
            ("POST", ["", "v1", "projects", _, "unpause"]) => {
                p.paused = false;
                empty(200)
            }
            ("GET", ["", "v6", "deployments"]) => {
                let limit = query
                    .get("limit")
                    .and_then(|l| l.parse::<usize>().ok())
                    .unwrap_or(20);
                let listed: Vec<Value> = p
                    .latest(query.get("target").map(String::as_str))
                    .into_iter()
                    .take(limit)
                    .map(|d| list_item_json(p, d))
                    .collect();
                ok(json!({
                    "pagination": {"count": listed.len(), "next": null, "prev": null},
                    "deployments": listed,
                }))
            }
            ("POST", ["", "v13", "deployments"]) => {
                let target = body.get("target").and_then(Value::as_str);
                let source = match body.get("deploymentId").and_then(Value::as_str) {
                    Some(from) => match p.deployments.iter().find(|d| d.uid == from) {
                        Some(d) => format!("redeploy of {}", d.uid),
                        None => return error(404, "not_found", "Deployment not found"),
                    },
                    None => format!(
                        "{} at {}",
                        body.pointer("/gitSource/type")
                            .and_then(Value::as_str)
                            .unwrap_or("?"),
                        body.pointer("/gitSource/ref")
                            .and_then(Value::as_str)
                            .unwrap_or("?")
                    ),
                };
                let uid = format!("dpl_{}n{}", p.id.trim_start_matches("prj_"), self.n());
                let mut d = FakeDeployment::new(uid.clone(), &p.name, target, "QUEUED");
                d.event("stdout", &format!("Cloning ({source})"));
                let now = Instant::now();
                d.plan.push_back((now + BUILD_STEP, "BUILDING".into()));
                let end = if std::mem::take(&mut p.fail_next_build) {
                    "ERROR"
                } else {
                    "READY"
                };
                d.plan.push_back((now + BUILD_STEP * 2, end.into()));
                lock(&self.owners).insert(uid, p.id.clone());
                let answer = deployment_json(p, &d);
                p.deployments.push(d);
                ok(answer)
            }
            ("PATCH", ["", "v12", "deployments", uid, "cancel"]) => {
                let Some(d) = p.deployments.iter_mut().find(|d| d.uid == *uid) else {
                    return error(404, "not_found", "Deployment not found");
                };
                if d.is_final() {
                    return error(400, "bad_request", "the deployment cannot be canceled");
                }
                d.plan.clear();
                d.state = "CANCELED".into();
                d.event("stdout", "Canceled");
                let d = d.clone();
                ok(deployment_json(p, &d))
            }
            ("POST", ["", "v10", "projects", _, "promote", uid]) => {
                let Some(d) = p.deployments.iter_mut().find(|d| d.uid == *uid) else {
                    return error(400, "bad_request", "Deployment not found");
                };
                d.target = Some("production".into());
                d.created = now_ms();
                empty(201)
            }
            ("GET", ["", "v3", "deployments", uid, "events"]) => {
                let since: u64 = query.get("since").and_then(|s| s.parse().ok()).unwrap_or(0);
                let Some(d) = p.deployments.iter().find(|d| d.uid == *uid) else {
                    return error(400, "bad_request", "Deployment not found");
                };
                match d.events.iter().find(|e| e.created > since) {
                    Some(e) => stream_line(event_json(d, e)),
                    None => {
                        let wait = if d.is_final() {
                            Duration::ZERO
                        } else {
                            EMPTY_STREAM_WAIT
                        };
                        stream_line(delimiter_event(d)).delayed(wait)
                    }
                }
            }
            ("GET", ["", "v1", "projects", _, "deployments", uid, "runtime-logs"]) => {
                let Some(d) = p.deployments.iter_mut().find(|d| d.uid == *uid) else {
                    return error(400, "bad_request", "Deployment not found");
                };
                match d.rows.get(d.rows_served).cloned() {
                    Some(row) => {
                        d.rows_served += 1;
                        stream_line(row_json(d, &row))
                    }
                    None => stream_line(row_json(
                        d,
                        &(format!("delim_{}", now_ms()), "info".into(), String::new()),
                    ))
                    .delayed(EMPTY_STREAM_WAIT),
                }
            }
            _ => error(404, "not_found", "the fake has no such route"),
        }
    }

    fn check_body(&self, method: &str, path: &str, body: &Value) -> Result<(), String> {
        let mut validator = lock(&self.validator);
        if validator.is_none() {
            *validator = Some(BodyValidator::start());
        }
        match validator.as_mut() {
            Some(v) => v.check(method, path, body),
            None => Err("no body validator".into()),
        }
    }
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The project as `GET /v9/projects/{id}` gives it.
pub fn project_json(p: &FakeProject) -> Value {
    json!({
        "accountId": p.team.clone().unwrap_or_else(|| "acct_kinfra".into()),
        "directoryListing": false,
        "id": p.id,
        "name": p.name,
        "nodeVersion": "20.x",
        "resourceConfig": {"functionDefaultRegions": ["iad1"]},
        "defaultResourceConfig": {"functionDefaultRegions": ["iad1"]},
        "paused": p.paused,
        "link": {
            "type": "github",
            "org": "acme",
            "repo": "site",
            "repoId": 4242,
            "productionBranch": "main",
            "gitCredentialId": "cred_1",
            "deployHooks": [],
        },
    })
}

fn list_item_json(p: &FakeProject, d: &FakeDeployment) -> Value {
    json!({
        "uid": d.uid,
        "name": p.name,
        "projectId": p.id,
        "url": d.url,
        "created": d.created,
        "type": "LAMBDAS",
        "creator": {"uid": "user_kinfra"},
        "inspectorUrl": null,
        "state": d.state,
        "readyState": d.state,
        "target": d.target,
        "errorMessage": d.error,
    })
}

/// A deployment as `POST /v13/deployments` and cancel give it.
fn deployment_json(p: &FakeProject, d: &FakeDeployment) -> Value {
    let status = if d.state == "DELETED" {
        "CANCELED"
    } else {
        d.state.as_str()
    };
    json!({
        "build": {"env": []},
        "env": [],
        "inspectorUrl": null,
        "isInConcurrentBuildsQueue": false,
        "isInSystemBuildsQueue": false,
        "projectSettings": {},
        "aliasAssigned": false,
        "bootedAt": d.created,
        "buildingAt": d.created,
        "buildSkipped": false,
        "creator": {"uid": "user_kinfra"},
        "public": false,
        "status": status,
        "id": d.uid,
        "createdAt": d.created,
        "name": p.name,
        "meta": {},
        "readyState": status,
        "regions": ["iad1"],
        "type": "LAMBDAS",
        "url": d.url,
        "version": 2,
        "createdIn": "iad1",
        "ownerId": "acct_kinfra",
        "plan": "hobby",
        "projectId": p.id,
        "routes": null,
        "target": d.target,
    })
}

fn event_json(d: &FakeDeployment, e: &FakeEvent) -> Value {
    json!({
        "created": e.created,
        "date": e.created,
        "deploymentId": d.uid,
        "id": e.id,
        "info": {"type": "build", "name": "bld_1"},
        "serial": e.created.to_string(),
        "type": e.kind,
        "text": e.text,
    })
}

fn delimiter_event(d: &FakeDeployment) -> Value {
    let created = now_ms();
    json!({
        "created": created,
        "date": created,
        "deploymentId": d.uid,
        "id": format!("delim_{created}"),
        "info": {"type": "build", "name": "bld_1"},
        "serial": created.to_string(),
        "type": "delimiter",
    })
}

fn row_json(d: &FakeDeployment, (row, level, message): &(String, String, String)) -> Value {
    json!({
        "level": level,
        "message": message,
        "rowId": row,
        "source": if message.is_empty() { "delimiter" } else { "serverless" },
        "timestampInMs": now_ms(),
        "domain": d.url,
        "messageTruncated": false,
        "requestMethod": "GET",
        "requestPath": "/api/hello",
        "responseStatusCode": 200,
    })
}

/// `node specs/vercel/validate-bodies.js`, one child per test binary, asked one line per body.
struct BodyValidator {
    _child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl BodyValidator {
    fn start() -> Self {
        let modules = std::env::var_os("KINFRA_AJV_MODULES")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                let bin = prism::prism_bin();
                // <prefix>/node_modules/.bin/prism → <prefix>/node_modules
                bin.parent()
                    .and_then(|b| b.parent())
                    .map(|p| p.to_path_buf())
                    .unwrap_or_default()
            });
        assert!(
            modules.join("ajv").is_dir(),
            "Ajv (installed with {}) is not at {}: run `./x test`, or set KINFRA_AJV_MODULES \
             to a node_modules directory holding ajv",
            prism::PRISM_PACKAGE,
            modules.display()
        );
        let script = prism::spec("vercel/validate-bodies.js");
        let mut child = Command::new("node")
            .arg(&script)
            .arg(prism::spec("vercel/openapi.json"))
            .arg(&modules)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run node (Debian: apt-get install nodejs) for {}: {e}",
                    script.display()
                )
            });
        let stdin = child.stdin.take().expect("the validator's stdin");
        let stdout = BufReader::new(child.stdout.take().expect("the validator's stdout"));
        Self {
            _child: child,
            stdin,
            stdout,
        }
    }

    fn check(&mut self, method: &str, path: &str, body: &Value) -> Result<(), String> {
        let request = json!({"method": method, "path": path, "body": body});
        writeln!(self.stdin, "{request}").map_err(|e| format!("validator: {e}"))?;
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .map_err(|e| format!("validator: {e}"))?;
        let answer: Value =
            serde_json::from_str(&line).map_err(|e| format!("validator answered {line:?}: {e}"))?;
        if answer["ok"] == true {
            Ok(())
        } else {
            Err(answer["errors"].as_str().unwrap_or("invalid").to_owned())
        }
    }
}

/// The fake's state served without Prism, with log streams held open and written as events
/// come (what Vercel does with `follow=1`): a raw HTTP/1.1 server on 127.0.0.1.
pub struct StreamServer {
    pub url: String,
    /// Event streams opened so far.
    pub opened: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StreamServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StreamServer {
    /// Serves `fake` on a port of its own.
    pub async fn start(fake: &'static VercelFake) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let opened = Arc::new(AtomicU64::new(0));
        let count = opened.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let count = count.clone();
                tokio::spawn(async move {
                    let _ = serve_stream(fake, stream, count).await;
                });
            }
        });
        Self { url, opened, task }
    }
}

async fn serve_stream(
    fake: &'static VercelFake,
    mut stream: tokio::net::TcpStream,
    opened: Arc<AtomicU64>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.lines();
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_owned();
    let target = first.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await?;
    let seen = Seen {
        method,
        target: target.clone(),
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        at: tokio::time::Instant::now(),
    };
    let events = target.contains("/events") && target.contains("follow=1");
    let reply = fake.handle(&seen);
    if !events || reply.status != 200 {
        let mut out = format!("HTTP/1.1 {} X\r\nConnection: close\r\n", reply.status);
        for (k, v) in &reply.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str(&format!(
            "Content-Length: {}\r\n\r\n{}",
            reply.body.len(),
            reply.body
        ));
        stream.write_all(out.as_bytes()).await?;
        return stream.shutdown().await;
    }
    // A real stream: every event after `since` as it comes, until the build is over.
    opened.fetch_add(1, Ordering::Relaxed);
    let uid = target.split('/').nth(3).unwrap_or_default().to_owned();
    let Some(project) = lock(&fake.owners).get(&uid).cloned() else {
        return Ok(());
    };
    stream
        .write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/stream+json\r\n\
              Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        )
        .await?;
    let mut sent = 0usize;
    loop {
        let (fresh, done) = fake.with(&project, |p| {
            p.advance(Instant::now());
            let d = p.deployments.iter().find(|d| d.uid == uid);
            match d {
                Some(d) => (
                    d.events[sent.min(d.events.len())..]
                        .iter()
                        .map(|e| event_json(d, e).to_string())
                        .collect::<Vec<_>>(),
                    d.is_final(),
                ),
                None => (Vec::new(), true),
            }
        });
        for line in &fresh {
            let chunk = format!("{line}\n");
            stream
                .write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes())
                .await?;
        }
        sent += fresh.len();
        if done && fresh.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stream.write_all(b"0\r\n\r\n").await?;
    stream.shutdown().await
}
