//! A stateful fake of Railway's GraphQL API (`POST /graphql/v2`) with the schema check in
//! front of it (DESIGN, "How adapters are tested without the internet": Railway is GraphQL,
//! so there is no Prism; each query is validated against `specs/railway/schema.json`).
//!
//! ```text
//! provider ──► fake HTTP server ──► graphql-js (validate the query and its variables)
//!                     │                        ▲
//!                     └── the fake's state ────┘ (execute the query over the schema)
//! ```
//!
//! The check is graphql-js itself (the reference implementation, npm `graphql@16`), run as one
//! long-lived `node` child per test binary that answers JSON lines: `check` parses the
//! document, runs every validation rule against the schema built by `buildClientSchema`,
//! coerces the variables to the operation's declared types (an undeclared variable is an
//! error too) and returns the root fields with their coerced arguments; `execute` runs the
//! query over the schema with the fake's values as the root, so the answer has exactly the
//! shape the query asks for, and a value that leaves the schema (a null in a non-null field, a
//! status outside `DeploymentStatus`) is an error. Every exchange is recorded with its
//! violation; tests end with [`RailwayFake::assert_clean`]. graphql-js rather than a Rust
//! GraphQL crate: it is the implementation Railway's own clients are checked with, it loads an
//! introspection result directly (`buildClientSchema`), and Node is a prerequisite of the
//! other providers' tests already (Prism).
//!
//! The fake: service instances (by service id, each in one environment) with deployments that
//! go QUEUED → BUILDING → DEPLOYING → SUCCESS (or CRASHED / FAILED when told to), stopped by
//! `deploymentStop` (`deploymentStopped`), restarted by `deploymentRestart`, replaced by
//! `serviceInstanceRedeploy` / `serviceInstanceDeployV2` (the old one REMOVED); build and
//! deploy log lines; `sleepApplication`. Auth: `Authorization: Bearer ACCOUNT_TOKEN` or
//! `Project-Access-Token: PROJECT_TOKEN`; anything else is answered like Railway does, 200
//! with `errors: [{"message": "Not Authorized"}]`. Faults are injected per service on an
//! operation name. Tests share one fake; each makes its own services (unique ids) and looks
//! only at its own exchanges (deployment ids start with their service's id).

use super::fake_http::{FakeHttp, Reply, Seen};
use super::fault_script::{FaultScript, lock};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The account token the fake accepts as a bearer token.
pub const ACCOUNT_TOKEN: &str = "rw-acct-7f3a9c1e55d2";
/// The project token the fake accepts in `Project-Access-Token`.
pub const PROJECT_TOKEN: &str = "rw-proj-0b8e6d4422aa";
/// The npm package, for messages.
pub const GRAPHQL_PACKAGE: &str = "graphql@16";
/// How long each step of a deployment takes (QUEUED → BUILDING → DEPLOYING → SUCCESS).
pub const STEP_TIME: Duration = Duration::from_millis(150);

/// The validator, run by node with `KINFRA_GRAPHQL_SCHEMA` naming the schema file and
/// `NODE_PATH` where graphql-js is installed.
const VALIDATOR: &str = r#"
const fs = require('fs');
const readline = require('readline');
const g = require('graphql');
const values = require('graphql/execution/values');
const raw = JSON.parse(fs.readFileSync(process.env.KINFRA_GRAPHQL_SCHEMA, 'utf8'));
const schema = g.buildClientSchema(raw.data || raw);
function operation(doc, name) {
  const ops = doc.definitions.filter((d) => d.kind === 'OperationDefinition');
  if (name) return ops.find((o) => o.name && o.name.value === name);
  return ops.length === 1 ? ops[0] : undefined;
}
function check(req) {
  if (typeof req.query !== 'string') return { ok: false, errors: ['no `query` string'] };
  let doc;
  try { doc = g.parse(req.query); } catch (e) { return { ok: false, errors: ['syntax: ' + e.message] }; }
  const errors = g.validate(schema, doc).map((e) => e.message);
  if (errors.length) return { ok: false, errors };
  const op = operation(doc, req.operationName);
  if (!op) return { ok: false, errors: ['no single operation to run'] };
  const given = req.variables || {};
  if (typeof given !== 'object' || Array.isArray(given)) return { ok: false, errors: ['`variables` is not an object'] };
  const declared = new Set((op.variableDefinitions || []).map((v) => v.variable.name.value));
  const extra = Object.keys(given).filter((k) => !declared.has(k));
  if (extra.length) return { ok: false, errors: extra.map((k) => 'variable $' + k + ' is not declared by the operation') };
  const coerced = values.getVariableValues(schema, op.variableDefinitions || [], given);
  if (coerced.errors) return { ok: false, errors: coerced.errors.map((e) => e.message) };
  const root = op.operation === 'mutation' ? schema.getMutationType() : schema.getQueryType();
  const fields = op.selectionSet.selections
    .filter((s) => s.kind === 'Field' && !s.name.value.startsWith('__'))
    .map((s) => ({ name: s.name.value, args: values.getArgumentValues(root.getFields()[s.name.value], s, coerced.coerced) }));
  return { ok: true, operation: op.operation, name: op.name ? op.name.value : null, fields };
}
function execute(req) {
  const doc = g.parse(req.query);
  const result = g.executeSync({ schema, document: doc, rootValue: req.root, variableValues: req.variables || {}, operationName: req.operationName });
  return { data: result.data === undefined ? null : result.data, errors: (result.errors || []).map((e) => e.message + (e.path ? ' at ' + e.path.join('.') : '')) };
}
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  let out;
  try {
    const req = JSON.parse(line);
    out = req.op === 'execute' ? execute(req) : check(req);
  } catch (e) {
    out = { ok: false, errors: ['validator: ' + (e && e.message ? e.message : String(e))] };
  }
  process.stdout.write(JSON.stringify(out) + '\n');
}).on('close', () => process.exit(0));
process.stdout.write(JSON.stringify({ ready: true, types: Object.keys(schema.getTypeMap()).length }) + '\n');
"#;

/// The workspace's root (the directory with `Cargo.lock`).
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

/// Where graphql-js is installed: `$KINFRA_GRAPHQL` (a `node_modules` directory), else
/// `target/graphql/node_modules` where `./x test` installs it. Missing: the test fails naming
/// how to install it.
pub fn graphql_modules() -> PathBuf {
    let dir = std::env::var_os("KINFRA_GRAPHQL")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/graphql/node_modules"));
    assert!(
        dir.join("graphql/package.json").is_file(),
        "graphql-js is not installed in {}: run `./x test` (it installs it), or \
         `npm install --prefix target/graphql {GRAPHQL_PACKAGE}` (Debian: apt-get install nodejs \
         npm), or set KINFRA_GRAPHQL to a node_modules directory holding it",
        dir.display()
    );
    dir
}

/// The stored schema.
pub fn schema_path() -> PathBuf {
    workspace_root().join("crates/kinfra-cloud/specs/railway/schema.json")
}

/// The graphql-js child: one request line in, one answer line out.
pub struct SchemaCheck {
    pipes: Mutex<(ChildStdin, BufReader<ChildStdout>)>,
    /// The node process's PID.
    pub pid: u32,
    _child: Mutex<Child>,
}

impl SchemaCheck {
    /// Starts node with the validator on the stored schema; panics (failing the test) when
    /// node or graphql-js is missing or the schema does not load.
    pub fn start() -> SchemaCheck {
        let modules = graphql_modules();
        let schema = schema_path();
        assert!(schema.is_file(), "no schema at {}", schema.display());
        let node = std::env::var_os("KINFRA_NODE").unwrap_or_else(|| "node".into());
        let mut cmd = Command::new(&node);
        cmd.arg("-e")
            .arg(VALIDATOR)
            .env("NODE_PATH", &modules)
            .env("KINFRA_GRAPHQL_SCHEMA", &schema)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
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
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start node ({node:?}) for the GraphQL check: {e} (Debian: apt-get install nodejs)")
        });
        let stdin = child.stdin.take().expect("piped stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut first = String::new();
        let _ = stdout.read_line(&mut first);
        let ready: Value = serde_json::from_str(&first).unwrap_or(Value::Null);
        assert_eq!(
            ready["ready"],
            json!(true),
            "the GraphQL check did not load {}: {first:?}",
            schema.display()
        );
        SchemaCheck {
            pid: child.id(),
            pipes: Mutex::new((stdin, stdout)),
            _child: Mutex::new(child),
        }
    }

    /// One request to the validator.
    pub fn call(&self, request: &Value) -> Value {
        let mut pipes = self.pipes.lock().unwrap_or_else(|p| p.into_inner());
        let (stdin, stdout) = &mut *pipes;
        let line = format!("{request}\n");
        if stdin
            .write_all(line.as_bytes())
            .and_then(|()| stdin.flush())
            .is_err()
        {
            return json!({"ok": false, "errors": ["the GraphQL check (node) is gone"]});
        }
        let mut answer = String::new();
        match stdout.read_line(&mut answer) {
            Ok(n) if n > 0 => serde_json::from_str(&answer).unwrap_or_else(
                |e| json!({"ok": false, "errors": [format!("validator answer: {e}")]}),
            ),
            _ => json!({"ok": false, "errors": ["the GraphQL check (node) is gone"]}),
        }
    }

    /// Checks `query` with `variables`: the root fields with their arguments, or the errors.
    pub fn check(
        &self,
        query: &str,
        variables: &Value,
    ) -> Result<Vec<(String, Value)>, Vec<String>> {
        let answer = self.call(&json!({"op": "check", "query": query, "variables": variables}));
        if answer["ok"] != json!(true) {
            return Err(strings(&answer["errors"]));
        }
        Ok(answer["fields"]
            .as_array()
            .map(|fields| {
                fields
                    .iter()
                    .map(|f| {
                        (
                            f["name"].as_str().unwrap_or_default().to_owned(),
                            f["args"].clone(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Executes `query` over the schema with `root` as the root value: `data` and errors.
    pub fn execute(&self, query: &str, variables: &Value, root: &Value) -> (Value, Vec<String>) {
        let answer = self
            .call(&json!({"op": "execute", "query": query, "variables": variables, "root": root}));
        (answer["data"].clone(), strings(&answer["errors"]))
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    e.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| e.to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// One exchange the fake saw.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The operation's name (`RailwayServiceInstance`), or what was posted.
    pub operation: String,
    /// The variables as sent.
    pub variables: String,
    /// The HTTP status answered.
    pub status: u16,
    /// What left the schema, when something did.
    pub violation: Option<String>,
}

/// One log line: (timestamp, message, severity).
pub type LogLine = (String, String, String);

/// One deployment.
#[derive(Debug, Clone)]
pub struct FakeDeployment {
    pub id: String,
    pub status: String,
    pub stopped: bool,
    pub commit: Option<String>,
    /// Status changes to come: (when, status).
    pub steps: VecDeque<(Instant, String)>,
    pub build_logs: Vec<LogLine>,
    pub deploy_logs: Vec<LogLine>,
}

/// One service instance.
#[derive(Debug)]
pub struct FakeService {
    pub service_id: String,
    pub environment_id: String,
    pub name: String,
    pub sleep: bool,
    pub deployments: Vec<FakeDeployment>,
    /// The next restart or deploy ends in this status (CRASHED, FAILED) instead of SUCCESS.
    pub next_outcome: Option<String>,
    /// `OperationName variables` of every request that reached the fake for this service.
    pub requests: Vec<String>,
    faults: FaultScript,
}

/// The fake's state.
#[derive(Default)]
pub struct RailwayFake {
    services: Mutex<HashMap<String, FakeService>>,
    exchanges: Mutex<Vec<Exchange>>,
    next: AtomicU64,
    clock: AtomicU64,
    check: OnceLock<SchemaCheck>,
    /// `http://127.0.0.1:<port>`: the base URL providers are pointed at.
    url: OnceLock<String>,
}

/// The fake, its schema check and its server, once per test binary.
pub fn railway() -> &'static RailwayFake {
    static FAKE: LazyLock<Arc<RailwayFake>> = LazyLock::new(|| Arc::new(RailwayFake::default()));
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        kinfra_core::tls::install_crypto_provider();
        let (tx, rx) = std::sync::mpsc::channel();
        let fake = FAKE.clone();
        // node is started from this long-lived thread: its parent-death signal fires when the
        // thread that forked it ends, and a test's thread ends with the test.
        std::thread::Builder::new()
            .name("railway-fake".into())
            .spawn(move || {
                let check = std::panic::catch_unwind(SchemaCheck::start);
                let check = match check {
                    Ok(check) => check,
                    Err(panic) => {
                        let message = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                            .unwrap_or_else(|| "the GraphQL check did not start".into());
                        let _ = tx.send(Err(message));
                        return;
                    }
                };
                let _ = fake.check.set(check);
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("the fake's runtime");
                runtime.block_on(async move {
                    let server =
                        FakeHttp::start(Reply::json(404, r#"{"message":"no route"}"#)).await;
                    let handler = fake.clone();
                    server.route(move |seen| Some(handler.handle(seen)));
                    let _ = tx.send(Ok(format!("http://{}", server.addr)));
                    std::future::pending::<()>().await;
                    drop(server);
                });
            })
            .expect("spawn the fake's thread");
        let url = match rx.recv() {
            Ok(Ok(url)) => url,
            Ok(Err(message)) => panic!("{message}"),
            Err(_) => panic!("the Railway fake's thread died while starting"),
        };
        let _ = FAKE.url.set(url);
    });
    &FAKE
}

/// A GraphQL error answer (200, as Railway sends them).
fn gql_error(message: &str) -> Reply {
    Reply::json(
        200,
        &json!({"data": null, "errors": [{"message": message}]}).to_string(),
    )
}

impl RailwayFake {
    /// The base URL of the fake.
    pub fn url(&self) -> String {
        self.url.get().cloned().unwrap_or_default()
    }

    /// The schema check (graphql-js) the fake runs every exchange through.
    pub fn schema_check(&self) -> &SchemaCheck {
        self.check.get().expect("the schema check runs")
    }

    /// A fake timestamp, later than every one before (fixed width, so text order is time order).
    fn timestamp(&self) -> String {
        let n = self.clock.fetch_add(1, Ordering::Relaxed);
        format!(
            "2026-01-01T{:02}:{:02}:{:02}.{:03}Z",
            (n / 3_600_000) % 24,
            (n / 60_000) % 60,
            (n / 1000) % 60,
            n % 1000
        )
    }

    /// A new service (unique ids from `tag`) whose latest deployment has `status` (none when
    /// `None`); returns (service id, environment id).
    pub fn service(&self, tag: &str, status: Option<&str>) -> (String, String) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let service_id = format!("svc-{tag}-{n}");
        let environment_id = format!("env-{tag}-{n}");
        let mut service = FakeService {
            service_id: service_id.clone(),
            environment_id: environment_id.clone(),
            name: format!("{tag}-api"),
            sleep: false,
            deployments: Vec::new(),
            next_outcome: None,
            requests: Vec::new(),
            faults: FaultScript::default(),
        };
        if let Some(status) = status {
            let id = format!("{service_id}-d0");
            service.deployments.push(FakeDeployment {
                id,
                status: status.to_owned(),
                stopped: false,
                commit: None,
                steps: VecDeque::new(),
                build_logs: vec![(
                    self.timestamp(),
                    "build of the first deployment".into(),
                    "info".into(),
                )],
                deploy_logs: vec![(self.timestamp(), "listening on :8080".into(), "info".into())],
            });
        }
        lock(&self.services).insert(service_id.clone(), service);
        (service_id, environment_id)
    }

    /// Changes the latest deployment as Railway would outside kinfra.
    pub fn set_latest(&self, service_id: &str, status: &str, stopped: bool) {
        if let Some(s) = lock(&self.services).get_mut(service_id)
            && let Some(d) = s.deployments.last_mut()
        {
            d.status = status.to_owned();
            d.stopped = stopped;
            d.steps.clear();
        }
    }

    /// The next restart or deploy of `service_id` ends in `status`.
    pub fn next_outcome(&self, service_id: &str, status: &str) {
        if let Some(s) = lock(&self.services).get_mut(service_id) {
            s.next_outcome = Some(status.to_owned());
        }
    }

    /// Adds a deploy log line to the latest deployment.
    pub fn deploy_log(&self, service_id: &str, message: &str, severity: &str) {
        let at = self.timestamp();
        if let Some(s) = lock(&self.services).get_mut(service_id)
            && let Some(d) = s.deployments.last_mut()
        {
            d.deploy_logs
                .push((at, message.to_owned(), severity.to_owned()));
        }
    }

    /// The latest deployment now.
    pub fn latest(&self, service_id: &str) -> Option<FakeDeployment> {
        let now = Instant::now();
        let mut services = lock(&self.services);
        let s = services.get_mut(service_id)?;
        self.advance(s, now);
        s.deployments.last().cloned()
    }

    /// Whether the service sleeps when idle.
    pub fn sleeping_enabled(&self, service_id: &str) -> Option<bool> {
        lock(&self.services).get(service_id).map(|s| s.sleep)
    }

    /// Every request that reached the fake for `service_id` (`OperationName variables`).
    pub fn requests(&self, service_id: &str) -> Vec<String> {
        lock(&self.services)
            .get(service_id)
            .map(|s| s.requests.clone())
            .unwrap_or_default()
    }

    /// The next `times` requests of `operation` for `service_id` get `reply`.
    pub fn inject(&self, service_id: &str, operation: &str, reply: Reply, times: usize) {
        if let Some(s) = lock(&self.services).get_mut(service_id) {
            s.faults.push(operation, reply, times);
        }
    }

    /// Drops the faults still waiting for `service_id`.
    pub fn clear_faults(&self, service_id: &str) {
        if let Some(s) = lock(&self.services).get_mut(service_id) {
            s.faults.clear();
        }
    }

    /// Every exchange whose variables contain `needle`.
    pub fn exchanges(&self, needle: &str) -> Vec<Exchange> {
        lock(&self.exchanges)
            .iter()
            .filter(|e| e.variables.contains(needle))
            .cloned()
            .collect()
    }

    /// Fails the test when any exchange of `needle` left the schema; also when there was none.
    pub fn assert_clean(&self, needle: &str) {
        let seen = self.exchanges(needle);
        assert!(!seen.is_empty(), "no GraphQL exchange matched `{needle}`");
        let bad: Vec<String> = seen
            .iter()
            .filter_map(|e| {
                e.violation
                    .as_ref()
                    .map(|v| format!("{} {} → {}: {v}", e.operation, e.variables, e.status))
            })
            .collect();
        assert!(
            bad.is_empty(),
            "exchanges left the schema:\n{}",
            bad.join("\n")
        );
    }

    fn record(&self, operation: &str, variables: &Value, status: u16, violation: Option<String>) {
        lock(&self.exchanges).push(Exchange {
            operation: operation.to_owned(),
            variables: variables.to_string(),
            status,
            violation,
        });
    }

    /// Applies the status changes that are due.
    fn advance(&self, service: &mut FakeService, now: Instant) {
        let mut done_logs = Vec::new();
        for d in &mut service.deployments {
            while let Some((at, status)) = d.steps.front().cloned() {
                if now < at {
                    break;
                }
                d.steps.pop_front();
                if status == "SUCCESS" {
                    done_logs.push(d.id.clone());
                }
                d.status = status;
            }
        }
        for id in done_logs {
            let at = self.timestamp();
            if let Some(d) = service.deployments.iter_mut().find(|d| d.id == id) {
                d.deploy_logs.push((
                    at,
                    format!("deployment {id} listening on :8080"),
                    "info".into(),
                ));
            }
        }
    }

    /// A new deployment of `service` (the latest one REMOVED), building then running.
    fn deploy(&self, service: &mut FakeService, commit: Option<String>) -> String {
        let now = Instant::now();
        if let Some(last) = service.deployments.last_mut() {
            last.status = "REMOVED".into();
            last.steps.clear();
        }
        let id = format!("{}-d{}", service.service_id, service.deployments.len());
        let outcome = service
            .next_outcome
            .take()
            .unwrap_or_else(|| "SUCCESS".into());
        let steps = [
            (now + STEP_TIME, "BUILDING".to_owned()),
            (now + STEP_TIME * 2, "DEPLOYING".to_owned()),
            (now + STEP_TIME * 3, outcome),
        ];
        service.deployments.push(FakeDeployment {
            id: id.clone(),
            status: "QUEUED".into(),
            stopped: false,
            commit: commit.clone(),
            steps: steps.into_iter().collect(),
            build_logs: vec![
                (
                    self.timestamp(),
                    format!(
                        "building {}",
                        commit.as_deref().unwrap_or("the latest commit")
                    ),
                    "info".into(),
                ),
                (
                    self.timestamp(),
                    "build step failed to cache, continuing".into(),
                    "error".into(),
                ),
            ],
            deploy_logs: Vec::new(),
        });
        id
    }

    fn deployment_json(d: &FakeDeployment, service: &FakeService) -> Value {
        json!({
            "id": d.id,
            "status": d.status,
            "deploymentStopped": d.stopped,
            "staticUrl": format!("{}.up.railway.app", service.name),
            "url": format!("https://{}.up.railway.app", service.name),
            "createdAt": "2026-01-01T00:00:00.000Z",
            "serviceId": service.service_id,
            "environmentId": service.environment_id,
            "projectId": "prj-fake",
            "canRedeploy": true,
            "canRollback": false,
        })
    }

    fn logs_json(lines: &[LogLine], args: &Value) -> Value {
        let since = args["startDate"].as_str();
        let limit = args["limit"].as_i64().unwrap_or(100).max(0) as usize;
        let lines: Vec<Value> = lines
            .iter()
            .filter(|(at, _, _)| since.is_none_or(|s| at.as_str() >= s))
            .take(limit)
            .map(|(at, message, severity)| {
                json!({"timestamp": at, "message": message, "severity": severity, "attributes": []})
            })
            .collect();
        Value::Array(lines)
    }

    /// The service a request is about: by `serviceId`, or by a deployment id's prefix.
    fn service_of(&self, fields: &[(String, Value)]) -> Option<String> {
        let services = lock(&self.services);
        fields.iter().find_map(|(_, args)| {
            if let Some(id) = args["serviceId"].as_str() {
                return Some(id.to_owned());
            }
            let deployment = args["id"].as_str().or(args["deploymentId"].as_str())?;
            services
                .keys()
                .find(|s| deployment.starts_with(&format!("{s}-d")))
                .cloned()
        })
    }

    /// Answers one request (see the module docs).
    fn handle(&self, seen: &Seen) -> Reply {
        let path = seen.target.split('?').next().unwrap_or_default();
        if seen.method != "POST" || path != "/graphql/v2" {
            self.record(
                &format!("{} {}", seen.method, seen.target),
                &Value::Null,
                404,
                Some("not the GraphQL endpoint".into()),
            );
            return Reply::json(404, r#"{"message":"not found"}"#);
        }
        let Ok(body) = serde_json::from_str::<Value>(&seen.body) else {
            self.record(
                "(not JSON)",
                &json!(seen.body),
                400,
                Some("the body is not JSON".into()),
            );
            return gql_error("the body is not JSON");
        };
        let query = body["query"].as_str().unwrap_or_default();
        let variables = if body["variables"].is_null() {
            json!({})
        } else {
            body["variables"].clone()
        };
        let fields = match self.schema_check().check(query, &variables) {
            Ok(fields) => fields,
            Err(errors) => {
                let text = errors.join("; ");
                self.record(
                    "(invalid)",
                    &json!({"query": query, "variables": variables}),
                    400,
                    Some(text.clone()),
                );
                let errors: Vec<Value> = errors.iter().map(|e| json!({"message": e})).collect();
                return Reply::json(400, &json!({"errors": errors}).to_string());
            }
        };
        let operation = query
            .split(['(', '{'])
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .nth(1)
            .unwrap_or("(anonymous)")
            .to_owned();
        let service_id = self.service_of(&fields);
        let now = Instant::now();
        // Faults, per service and operation.
        if let Some(id) = &service_id {
            let mut services = lock(&self.services);
            if let Some(s) = services.get_mut(id) {
                s.requests.push(format!("{operation} {variables}"));
                if let Some(reply) = s.faults.take(|name| name == operation) {
                    drop(services);
                    self.record(&operation, &variables, reply.status, None);
                    return reply;
                }
            }
        }
        let bearer = seen.header("authorization");
        let project = seen.header("project-access-token");
        let authorized = bearer == Some(&format!("Bearer {ACCOUNT_TOKEN}")) && project.is_none()
            || project == Some(PROJECT_TOKEN) && bearer.is_none();
        if !authorized {
            self.record(&operation, &variables, 200, None);
            return gql_error("Not Authorized");
        }
        let mut root = serde_json::Map::new();
        {
            let mut services = lock(&self.services);
            let service = service_id.as_ref().and_then(|id| services.get_mut(id));
            let Some(service) = service else {
                drop(services);
                self.record(&operation, &variables, 200, None);
                return gql_error("ServiceInstance not found");
            };
            self.advance(service, now);
            for (name, args) in &fields {
                let deployment = |service: &mut FakeService| {
                    let id = args["id"]
                        .as_str()
                        .or(args["deploymentId"].as_str())
                        .unwrap_or_default()
                        .to_owned();
                    service.deployments.iter().position(|d| d.id == id)
                };
                let value = match name.as_str() {
                    "serviceInstance" => {
                        if args["environmentId"].as_str() != Some(service.environment_id.as_str()) {
                            drop(services);
                            self.record(&operation, &variables, 200, None);
                            return gql_error("ServiceInstance not found");
                        }
                        json!({
                            "id": format!("si-{}", service.service_id),
                            "serviceId": service.service_id,
                            "environmentId": service.environment_id,
                            "serviceName": service.name,
                            "sleepApplication": service.sleep,
                            "latestDeployment": service.deployments.last().map(|d| Self::deployment_json(d, service)),
                        })
                    }
                    "buildLogs" | "deploymentLogs" => match deployment(service) {
                        Some(i) => {
                            let d = &service.deployments[i];
                            let lines = if name == "buildLogs" {
                                &d.build_logs
                            } else {
                                &d.deploy_logs
                            };
                            Self::logs_json(lines, args)
                        }
                        None => {
                            drop(services);
                            self.record(&operation, &variables, 200, None);
                            return gql_error("Deployment not found");
                        }
                    },
                    "deploymentStop" | "deploymentRestart" => match deployment(service) {
                        Some(i) => {
                            if name == "deploymentStop" {
                                service.deployments[i].stopped = true;
                                service.deployments[i].steps.clear();
                            } else {
                                let outcome = service
                                    .next_outcome
                                    .take()
                                    .unwrap_or_else(|| "SUCCESS".into());
                                let d = &mut service.deployments[i];
                                d.stopped = false;
                                d.status = "DEPLOYING".into();
                                d.steps = [(now + STEP_TIME, outcome)].into_iter().collect();
                            }
                            json!(true)
                        }
                        None => {
                            drop(services);
                            self.record(&operation, &variables, 200, None);
                            return gql_error("Deployment not found");
                        }
                    },
                    "serviceInstanceRedeploy" => {
                        self.deploy(service, None);
                        json!(true)
                    }
                    "serviceInstanceDeployV2" => {
                        let commit = args["commitSha"].as_str().map(str::to_owned);
                        json!(self.deploy(service, commit))
                    }
                    "serviceInstanceUpdate" => {
                        if let Some(sleep) = args["input"]["sleepApplication"].as_bool() {
                            service.sleep = sleep;
                        }
                        json!(true)
                    }
                    other => {
                        drop(services);
                        let message = format!("the fake does not model `{other}`");
                        self.record(&operation, &variables, 200, Some(message.clone()));
                        return gql_error(&message);
                    }
                };
                root.insert(name.clone(), value);
            }
        }
        let (data, errors) = self
            .schema_check()
            .execute(query, &variables, &Value::Object(root));
        let violation = (!errors.is_empty())
            .then(|| format!("the answer leaves the schema: {}", errors.join("; ")));
        self.record(&operation, &variables, 200, violation);
        let mut answer = json!({ "data": data });
        if !errors.is_empty() {
            answer["errors"] = errors.iter().map(|e| json!({"message": e})).collect();
        }
        Reply::json(200, &answer.to_string())
    }
}
