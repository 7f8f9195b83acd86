//! process-compose's `process-compose.yaml`: each process becomes a service (a process with
//! `replicas: N` becomes N services, `NAME-0` ... `NAME-{N-1}`, as process-compose names its
//! replicas), with its command, working dir, environment, dependencies and their conditions,
//! readiness and liveness probes (exec, http_get), restart policy and backoff, shutdown
//! signal and timeout, and `disabled`. What kinfra has no equivalent for is reported.

use crate::emit::{Dependency, Document, Table, table};
use crate::yaml::{self, Entry, Node};
use crate::{ImportError, Source, kinfra_name, text};
use kinfra_core::config::types::format_duration;
use std::time::Duration;
use toml::Value;

/// Converts a process-compose file into services of `doc`.
pub fn import(text: &str, source: &mut Source<'_>, doc: &mut Document) -> Result<(), ImportError> {
    let root = yaml::parse(text).map_err(|e| ImportError::Malformed {
        file: source.file.clone(),
        line: e.line,
        message: format!("column {}: {}", e.column, e.message),
    })?;
    let top = map_of(source, &root, "the top level")?;
    let expand = !top
        .iter()
        .find(|e| e.key == "disable_env_expansion")
        .and_then(|e| e.value.as_bool())
        .unwrap_or(false);
    let mut c = Converter {
        expand,
        names: Vec::new(),
    };
    // Every process's kinfra name(s) first: dependencies may point forward.
    if let Some(processes) = top.iter().find(|e| e.key == "processes") {
        let procs = map_of(source, &processes.value, "`processes`")?;
        for p in procs {
            let replicas = match p.value.get("replicas") {
                Some(n) => n.as_u64().filter(|n| *n >= 1).ok_or_else(|| {
                    source.malformed(n.line, "`replicas`: expected a whole number of at least 1")
                })?,
                None => 1,
            };
            let base = kinfra_name(&p.key);
            let names: Vec<String> = if replicas == 1 {
                vec![base]
            } else {
                (0..replicas).map(|i| format!("{base}-{i}")).collect()
            };
            let names = names
                .into_iter()
                .map(|n| {
                    let free = doc.free_name(&n);
                    if free != n {
                        source.changed(
                            p.line,
                            &format!("processes.{}", p.key),
                            format!("named `{free}`: `{n}` is taken by an earlier file"),
                        );
                    }
                    free
                })
                .collect();
            c.names.push((p.key.clone(), names));
        }
    } else {
        return Err(source.malformed(root.line, "expected a `processes:` mapping"));
    }
    for entry in top {
        match entry.key.as_str() {
            "processes" => {
                for p in map_of(source, &entry.value, "`processes`")? {
                    c.process(source, doc, p)?;
                }
            }
            "environment" => {
                for (k, v) in c.env_list(source, &entry.value, "environment")? {
                    doc.set_env(&k, &v);
                }
            }
            "version" | "disable_env_expansion" => {}
            "log_location" | "log_level" | "log_length" | "log_configuration" => {
                source.not_imported(
                    entry.line,
                    &entry.key,
                    "kinfra keeps each service's log under the state dir (`kinfra runtime logs \
                     NAME`); its own log level is KINFRA_LOG",
                );
            }
            other => source.not_imported(
                entry.line,
                other,
                "a process-compose setting kinfra has no equivalent for",
            ),
        }
    }
    Ok(())
}

/// A dependency: target, condition, line, source key.
type Dep = (String, Value, usize, String);

struct Converter {
    /// Expand `$VAR` as process-compose does (off with `disable_env_expansion: true`).
    expand: bool,
    /// process name -> the kinfra service names (one, or one per replica).
    names: Vec<(String, Vec<String>)>,
}

fn map_of<'n>(source: &Source<'_>, node: &'n Node, what: &str) -> Result<&'n [Entry], ImportError> {
    node.as_map()
        .ok_or_else(|| source.malformed(node.line, format!("{what}: expected a mapping")))
}

fn scalar<'n>(source: &Source<'_>, node: &'n Node, key: &str) -> Result<&'n str, ImportError> {
    node.as_str()
        .ok_or_else(|| source.malformed(node.line, format!("`{key}`: expected a string")))
}

fn seconds(source: &Source<'_>, node: &Node, key: &str) -> Result<String, ImportError> {
    let secs = node
        .as_f64()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .ok_or_else(|| source.malformed(node.line, format!("`{key}`: expected seconds")))?;
    Ok(format_duration(Duration::from_secs_f64(secs)))
}

/// Linux signal numbers, as process-compose's `shutdown.signal` gives them.
fn signal_name(number: u64) -> Option<&'static str> {
    Some(match number {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        6 => "SIGABRT",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        12 => "SIGUSR2",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => return None,
    })
}

impl Converter {
    fn text(&self, source: &mut Source<'_>, line: usize, key: &str, s: &str) -> String {
        if !self.expand {
            return text::shell_command(s);
        }
        let (out, unmapped) = text::compose_string(s);
        for form in unmapped {
            source.changed(
                line,
                key,
                format!("`{form}` has no kinfra form; it is kept as literal text"),
            );
        }
        out
    }

    fn env_list(
        &self,
        source: &mut Source<'_>,
        node: &Node,
        key: &str,
    ) -> Result<Vec<(String, String)>, ImportError> {
        let mut out = Vec::new();
        if let Some(items) = node.as_seq() {
            for item in items {
                let s = scalar(source, item, key)?;
                let (k, v) = s.split_once('=').ok_or_else(|| {
                    source.malformed(
                        item.line,
                        format!("`{key}`: expected `NAME=value`, found `{s}`"),
                    )
                })?;
                let v = self.text(source, item.line, key, v);
                out.push((k.trim().to_owned(), v));
            }
        } else if let Some(entries) = node.as_map() {
            for e in entries {
                let v = if e.value.is_null() {
                    ""
                } else {
                    scalar(source, &e.value, key)?
                };
                let v = self.text(source, e.line, key, v);
                out.push((e.key.clone(), v));
            }
        } else if !node.is_null() {
            return Err(source.malformed(
                node.line,
                format!("`{key}`: expected a list of `NAME=value`"),
            ));
        }
        Ok(out)
    }

    fn names_of(&self, process: &str) -> Option<&[String]> {
        self.names
            .iter()
            .find(|(n, _)| n == process)
            .map(|(_, names)| names.as_slice())
    }

    fn process(
        &self,
        source: &mut Source<'_>,
        doc: &mut Document,
        p: &Entry,
    ) -> Result<(), ImportError> {
        let name = &p.key;
        let base = format!("processes.{name}");
        let entries = map_of(source, &p.value, &format!("`{base}`"))?;
        let mut t = Table::new("services", "");
        let mut env: Vec<(String, String)> = Vec::new();
        let mut command: Option<(String, usize)> = None;
        let mut deps: Vec<Dep> = Vec::new();
        let mut env_line = p.line;
        for e in entries {
            let key = format!("{base}.{}", e.key);
            match e.key.as_str() {
                "command" => {
                    let s = scalar(source, &e.value, &key)?;
                    command = Some((self.text(source, e.line, &key, s), e.line));
                }
                "working_dir" => {
                    let s = scalar(source, &e.value, &key)?;
                    let s = self.text(source, e.line, &key, s);
                    t.set("working_dir", s);
                }
                "environment" => {
                    env = self.env_list(source, &e.value, &key)?;
                    env_line = e.line;
                }
                "depends_on" => {
                    deps = self.depends_on(source, &e.value, &key)?;
                    if !deps.is_empty() {
                        let pairs = deps.iter().map(|(n, c, _, _)| (n.clone(), c.clone()));
                        t.set("depends_on", table(pairs));
                    }
                }
                "availability" => self.availability(source, &mut t, &e.value, &key)?,
                "readiness_probe" => {
                    let probe = self.probe(source, e.line, &e.value, &key)?;
                    t.set("health", probe);
                }
                "liveness_probe" => {
                    let probe = self.probe(source, e.line, &e.value, &key)?;
                    t.set("liveness", probe);
                }
                "shutdown" => self.shutdown(source, &mut t, &e.value, &key)?,
                "disabled" => {
                    let b = e.value.as_bool().ok_or_else(|| {
                        source.malformed(e.value.line, format!("`{key}`: expected true or false"))
                    })?;
                    if b {
                        t.set("disabled", true);
                    }
                }
                "description" => {
                    let s = scalar(source, &e.value, &key)?;
                    t.comments.extend(s.lines().map(str::to_owned));
                }
                "replicas" => {}
                "log_location" | "log_configuration" => source.not_imported(
                    e.line,
                    &key,
                    "kinfra keeps each service's log under the state dir (`kinfra runtime logs \
                     NAME`), rotated by `log.max_size` and `log.keep`",
                ),
                "is_daemon" => source.not_imported(
                    e.line,
                    &key,
                    "kinfra supervises processes that stay in the foreground; run the program \
                     without forking",
                ),
                "ready_log_line" => source.not_imported(
                    e.line,
                    &key,
                    "kinfra has no log-line readiness; use a readiness probe (health)",
                ),
                "namespace" => source.not_imported(e.line, &key, "kinfra has no namespaces"),
                _ => source.not_imported(
                    e.line,
                    &key,
                    "a process-compose setting kinfra has no equivalent for",
                ),
            }
        }
        let Some((command, command_line)) = command else {
            return Err(source.malformed(p.line, format!("`{base}`: expected a `command`")));
        };
        // `PORT` in the environment is the service's port: kinfra hands it over as $PORT.
        if let Some(i) = env.iter().position(|(k, _)| k == "PORT") {
            let (_, value) = env.remove(i);
            match value.parse::<u16>() {
                Ok(port) if port > 0 => {
                    t.set("port", i64::from(port));
                    source.changed(
                        env_line,
                        &format!("{base}.environment.PORT"),
                        format!("port = {port}: kinfra gives the service its port as $PORT"),
                    );
                }
                _ => env.insert(i, ("PORT".into(), value)),
            }
        }
        if t.get("port").is_none()
            && !env.iter().any(|(k, _)| k == "PORT")
            && text::uses_port(&command)
        {
            t.set("port", "auto");
            source.changed(
                command_line,
                &format!("{base}.command"),
                "port = \"auto\": the command names $PORT, which kinfra sets to the service's port",
            );
        }
        let mut entries_front = vec![("command".to_owned(), Value::String(command))];
        entries_front.append(&mut t.entries);
        t.entries = entries_front;
        if t.get("restart").is_none() {
            // process-compose's default is no restart; kinfra's is on-failure.
            t.set("restart", "no");
        }
        let names = self.names_of(name).unwrap_or_default().to_vec();
        let replicated = names.len() > 1;
        for (i, service) in names.iter().enumerate() {
            let mut copy = t.clone();
            copy.name = service.clone();
            let mut env = env.clone();
            if replicated {
                env.push(("PC_REPLICA_NUM".into(), i.to_string()));
                if i == 0 {
                    copy.comments.push(format!(
                        "replica {i} of `{name}` (process-compose replicas: {})",
                        names.len()
                    ));
                } else {
                    copy.comments = vec![format!("replica {i} of `{name}`")];
                }
            }
            if !env.is_empty() {
                copy.set(
                    "env",
                    table(env.into_iter().map(|(k, v)| (k, Value::String(v)))),
                );
            }
            for (target, _, line, key) in &deps {
                doc.dependencies.push(Dependency {
                    from: service.clone(),
                    target: target.clone(),
                    file: source.file.clone(),
                    line: *line,
                    key: key.clone(),
                });
            }
            doc.tables.push(copy);
        }
        Ok(())
    }

    fn depends_on(
        &self,
        source: &mut Source<'_>,
        node: &Node,
        key: &str,
    ) -> Result<Vec<Dep>, ImportError> {
        let mut out = Vec::new();
        for dep in map_of(source, node, &format!("`{key}`"))? {
            let dkey = format!("{key}.{}", dep.key);
            let condition = match dep.value.get("condition") {
                Some(c) => scalar(source, c, &format!("{dkey}.condition"))?,
                None => "process_started",
            };
            let mapped = match condition {
                "process_started" => "started",
                "process_healthy" => "healthy",
                "process_completed_successfully" => "completed_successfully",
                "process_completed" => {
                    source.changed(
                        dep.line,
                        &format!("{dkey}.condition"),
                        "process_completed -> completed_successfully: kinfra waits for exit \
                         code 0",
                    );
                    "completed_successfully"
                }
                "process_log_ready" => {
                    source.changed(
                        dep.line,
                        &format!("{dkey}.condition"),
                        "process_log_ready -> started: kinfra has no log-line readiness (give \
                         the dependency a readiness probe and wait for healthy)",
                    );
                    "started"
                }
                other => {
                    return Err(source.malformed(
                        dep.line,
                        format!(
                            "`{dkey}.condition`: expected process_started, process_healthy, \
                             process_completed, process_completed_successfully or \
                             process_log_ready, found `{other}`"
                        ),
                    ));
                }
            };
            // A dependency on a replicated process is one on each replica; a name not in
            // this file may be a service of another imported file.
            let targets = match self.names_of(&dep.key) {
                Some(names) => names.to_vec(),
                None => vec![kinfra_name(&dep.key)],
            };
            for target in targets {
                out.push((target, Value::String(mapped.into()), dep.line, dkey.clone()));
            }
        }
        Ok(out)
    }

    fn availability(
        &self,
        source: &mut Source<'_>,
        t: &mut Table,
        node: &Node,
        key: &str,
    ) -> Result<(), ImportError> {
        for e in map_of(source, node, &format!("`{key}`"))? {
            let k = format!("{key}.{}", e.key);
            match e.key.as_str() {
                "restart" => {
                    let policy = match scalar(source, &e.value, &k)? {
                        "always" => "always",
                        "on_failure" => "on-failure",
                        "no" => "no",
                        "exit_on_failure" => {
                            source.changed(
                                e.line,
                                &k,
                                "exit_on_failure -> restart = \"no\": kinfra does not stop the \
                                 other services when one fails",
                            );
                            "no"
                        }
                        other => {
                            return Err(source.malformed(
                                e.value.line,
                                format!(
                                    "`{k}`: expected always, on_failure, exit_on_failure or no, \
                                     found `{other}`"
                                ),
                            ));
                        }
                    };
                    t.set("restart", policy);
                }
                "backoff_seconds" => {
                    let d = seconds(source, &e.value, &k)?;
                    // process-compose waits the same time before every restart.
                    t.set(
                        "backoff",
                        table([
                            ("initial", Value::String(d.clone())),
                            ("factor", Value::Float(1.0)),
                            ("max", Value::String(d)),
                        ]),
                    );
                }
                "max_restarts" => {
                    let n = e.value.as_u64().ok_or_else(|| {
                        source.malformed(e.value.line, format!("`{k}`: expected a whole number"))
                    })?;
                    if n > 0 {
                        t.set(
                            "crash_loop",
                            table([
                                (
                                    "max_failures",
                                    Value::Integer(n.min(i64::MAX as u64) as i64),
                                ),
                                ("window", Value::String("24h".into())),
                            ]),
                        );
                        source.changed(
                            e.line,
                            &k,
                            format!(
                                "crash_loop = {{ max_failures = {n}, window = \"24h\" }}: kinfra \
                                 marks the service failed after {n} failures within the window"
                            ),
                        );
                    }
                }
                _ => source.not_imported(
                    e.line,
                    &k,
                    "kinfra does not stop the runtime when a service ends or is skipped",
                ),
            }
        }
        Ok(())
    }

    fn probe(
        &self,
        source: &mut Source<'_>,
        key_line: usize,
        node: &Node,
        key: &str,
    ) -> Result<Value, ImportError> {
        let mut pairs: Vec<(String, Value)> = Vec::new();
        for e in map_of(source, node, &format!("`{key}`"))? {
            let k = format!("{key}.{}", e.key);
            match e.key.as_str() {
                "exec" => {
                    for x in map_of(source, &e.value, &format!("`{k}`"))? {
                        let xk = format!("{k}.{}", x.key);
                        match x.key.as_str() {
                            "command" => {
                                let s = scalar(source, &x.value, &xk)?;
                                let s = self.text(source, x.line, &xk, s);
                                pairs.push(("exec".into(), Value::String(s)));
                            }
                            _ => source.not_imported(
                                x.line,
                                &xk,
                                "a probe runs in the service's working directory",
                            ),
                        }
                    }
                }
                "http_get" => {
                    let get = |f: &str| e.value.get(f).and_then(Node::as_str);
                    let scheme = get("scheme").unwrap_or("http").to_ascii_lowercase();
                    let host = get("host").unwrap_or("127.0.0.1");
                    let path = get("path").unwrap_or("/");
                    let path = if path.starts_with('/') {
                        path.to_owned()
                    } else {
                        format!("/{path}")
                    };
                    let port = get("port").ok_or_else(|| {
                        source.malformed(e.line, format!("`{k}`: expected a `port`"))
                    })?;
                    let url = format!("{scheme}://{host}:{port}{path}");
                    let url = self.text(source, e.line, &k, &url);
                    for f in e.value.as_map().unwrap_or_default() {
                        if !matches!(f.key.as_str(), "scheme" | "host" | "path" | "port") {
                            source.not_imported(
                                f.line,
                                &format!("{k}.{}", f.key),
                                "kinfra's HTTP probe sends a plain GET",
                            );
                        }
                    }
                    pairs.push(("http".into(), Value::String(url)));
                }
                "initial_delay_seconds" | "period_seconds" | "timeout_seconds" => {
                    let field = match e.key.as_str() {
                        "initial_delay_seconds" => "initial_delay",
                        "period_seconds" => "interval",
                        _ => "timeout",
                    };
                    let d = seconds(source, &e.value, &k)?;
                    // A zero interval or timeout means process-compose's default.
                    if d != "0s" || field == "initial_delay" {
                        pairs.push((field.to_owned(), Value::String(d)));
                    }
                }
                "success_threshold" | "failure_threshold" => {
                    let n = e.value.as_u64().filter(|n| *n >= 1).ok_or_else(|| {
                        source.malformed(
                            e.value.line,
                            format!("`{k}`: expected a whole number of at least 1"),
                        )
                    })?;
                    pairs.push((e.key.clone(), Value::Integer(n.min(u32::MAX.into()) as i64)));
                }
                _ => {
                    source.not_imported(e.line, &k, "a probe setting kinfra has no equivalent for")
                }
            }
        }
        if !pairs.iter().any(|(k, _)| k == "exec" || k == "http") {
            return Err(source.malformed(
                key_line,
                format!("`{key}`: expected an `exec` or `http_get` probe"),
            ));
        }
        Ok(table(pairs))
    }

    fn shutdown(
        &self,
        source: &mut Source<'_>,
        t: &mut Table,
        node: &Node,
        key: &str,
    ) -> Result<(), ImportError> {
        for e in map_of(source, node, &format!("`{key}`"))? {
            let k = format!("{key}.{}", e.key);
            match e.key.as_str() {
                "signal" => {
                    let name = e.value.as_u64().and_then(signal_name).ok_or_else(|| {
                        source.malformed(
                            e.value.line,
                            format!(
                                "`{k}`: expected a signal number (1, 2, 3, 6, 9, 10, 12, 14 or 15)"
                            ),
                        )
                    })?;
                    t.set("stop_signal", name);
                }
                "timeout_seconds" => {
                    let d = seconds(source, &e.value, &k)?;
                    t.set("stop_grace", d);
                }
                "command" => source.not_imported(
                    e.line,
                    &k,
                    "kinfra stops a service with its stop_signal, then SIGKILL after stop_grace",
                ),
                _ => source.not_imported(e.line, &k, "kinfra signals the process group"),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::{NoteKind, import_files};
    use kinfra_core::config::{DependCondition, PortSpec, RestartPolicy};
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/import/process-compose/process-compose.yaml")
    }

    #[test]
    fn the_documented_features_map() {
        let dir = tempfile::tempdir().unwrap();
        let out = import_files(&[fixture()], dir.path()).unwrap();
        let c = &out.config;
        assert_eq!(c.env.get("APP_ENV").map(String::as_str), Some("dev"));
        // Probe, restart, backoff, crash loop, shutdown.
        let pg = &c.services["postgres"];
        assert_eq!(pg.restart, RestartPolicy::Always);
        let health = pg.health.as_ref().unwrap();
        assert!(health.exec.is_some());
        assert_eq!(health.interval.0, Duration::from_secs(2));
        assert_eq!(health.failure_threshold, 5);
        assert_eq!(health.initial_delay.0, Duration::from_secs(1));
        assert_eq!(pg.backoff.initial.0, Duration::from_secs(2));
        assert_eq!(pg.backoff.max.0, Duration::from_secs(2));
        assert_eq!(pg.crash_loop.max_failures, 5);
        assert_eq!(pg.stop_signal.name(), "INT");
        assert_eq!(pg.stop_grace.0, Duration::from_secs(10));
        // Conditions.
        let api = &c.services["api"];
        assert_eq!(api.depends_on.0["postgres"], DependCondition::Healthy);
        assert_eq!(
            api.depends_on.0["migrate"],
            DependCondition::CompletedSuccessfully
        );
        assert_eq!(api.port, Some(PortSpec::Fixed(8080)));
        assert!(!api.env.contains_key("PORT"));
        assert_eq!(
            api.health.as_ref().unwrap().http.as_deref(),
            Some("http://127.0.0.1:8080/")
        );
        assert_eq!(
            api.liveness.as_ref().unwrap().http.as_deref(),
            Some("http://127.0.0.1:8080/healthz")
        );
        assert_eq!(api.restart, RestartPolicy::OnFailure);
        assert_eq!(api.stop_grace.0, Duration::from_secs(20));
        // Default restart of process-compose is none; exit_on_failure too (reported).
        assert_eq!(c.services["migrate"].restart, RestartPolicy::No);
        // Replicas: NAME-0 and NAME-1, each with its number; dependents wait for both.
        assert_eq!(c.services["worker-0"].env["PC_REPLICA_NUM"], "0");
        assert_eq!(c.services["worker-1"].env["PC_REPLICA_NUM"], "1");
        assert!(!c.services.contains_key("worker"));
        let reporter = &c.services["reporter"];
        assert!(reporter.disabled);
        assert_eq!(
            reporter.depends_on.0["worker-1"],
            DependCondition::CompletedSuccessfully
        );
        // Reported: log locations, shutdown command, is_daemon, exit_on_failure,
        // process_completed.
        let reported = |key: &str, kind: NoteKind| {
            out.notes
                .iter()
                .any(|n| n.key == key && n.kind == kind && n.line > 0)
        };
        assert!(reported(
            "processes.api.log_location",
            NoteKind::NotImported
        ));
        assert!(reported("log_location", NoteKind::NotImported));
        assert!(reported(
            "processes.api.shutdown.command",
            NoteKind::NotImported
        ));
        assert!(reported(
            "processes.reporter.is_daemon",
            NoteKind::NotImported
        ));
        assert!(reported(
            "processes.migrate.availability.restart",
            NoteKind::Changed
        ));
        assert!(reported(
            "processes.reporter.depends_on.worker.condition",
            NoteKind::Changed
        ));
        let line = out
            .notes
            .iter()
            .find(|n| n.key == "processes.api.log_location")
            .unwrap()
            .line;
        assert_eq!(line, 66);
        // The description is kept as a comment.
        assert!(out.toml.contains("# The database"), "{}", out.toml);
    }

    #[test]
    fn bad_shapes_name_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("process-compose.yaml");
        std::fs::write(
            &path,
            "processes:\n  a:\n    command: x\n    depends_on:\n      b:\n        condition: process_whenever\n  b:\n    command: y\n",
        )
        .unwrap();
        let e = import_files(std::slice::from_ref(&path), dir.path()).unwrap_err();
        assert!(e.is_input_error());
        let text = e.to_string();
        assert!(text.contains("process-compose.yaml:5:"), "{text}");
        assert!(text.contains("expected process_started"), "{text}");
        std::fs::write(&path, "processes:\n  a:\n    working_dir: .\n").unwrap();
        let e = import_files(&[path], dir.path()).unwrap_err();
        assert!(e.to_string().contains("expected a `command`"), "{e}");
    }

    #[test]
    fn unknown_dependencies_are_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("process-compose.yaml");
        std::fs::write(
            &path,
            "processes:\n  a:\n    command: x\n    depends_on:\n      ghost:\n        condition: process_started\n",
        )
        .unwrap();
        let out = import_files(&[path], dir.path()).unwrap();
        assert!(out.config.services["a"].depends_on.0.is_empty());
        assert!(
            out.notes
                .iter()
                .any(|n| n.line == 5 && n.message.contains("not in the imported files"))
        );
    }

    #[test]
    fn environment_maps_and_disabled_expansion() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("process-compose.yaml");
        std::fs::write(
            &path,
            "disable_env_expansion: true\nprocesses:\n  a:\n    command: echo ${HOME} $$\n    environment:\n      X: \"1\"\n      Y:\n",
        )
        .unwrap();
        let out = import_files(&[path], dir.path()).unwrap();
        let a = &out.config.services["a"];
        assert_eq!(
            a.command,
            kinfra_core::config::CommandSpec::Shell("echo $${HOME} $$$$".into())
        );
        assert_eq!(a.env["X"], "1");
        assert_eq!(a.env["Y"], "");
    }

    #[test]
    fn probes_and_signals_must_be_what_process_compose_takes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("process-compose.yaml");
        for (text, expected) in [
            (
                "processes:\n  a:\n    command: x\n    readiness_probe:\n      period_seconds: 2\n",
                ":4: `processes.a.readiness_probe`: expected an `exec` or `http_get` probe",
            ),
            (
                "processes:\n  a:\n    command: x\n    shutdown:\n      signal: 99\n",
                ":5: `processes.a.shutdown.signal`: expected a signal number",
            ),
            (
                "processes:\n  a:\n    command: x\n    availability:\n      restart: sometimes\n",
                ":5: `processes.a.availability.restart`: expected always",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = import_files(std::slice::from_ref(&path), dir.path()).unwrap_err();
            assert!(e.to_string().contains(expected), "{e}");
        }
    }
}
