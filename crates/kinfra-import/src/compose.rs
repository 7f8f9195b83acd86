//! The Compose specification's `compose.yaml`: each service with an `image` becomes a Docker
//! resource (`template = "docker"`): command, first published port, environment and
//! `env_file`, named volumes, healthcheck, dependency conditions, restart policy, stop grace.
//! `build:` and every key kinfra cannot express is reported with its line.

use crate::emit::{Dependency, Document, Table, strings, table};
use crate::yaml::{self, Entry, Node, Value as Yaml};
use crate::{ImportError, Source, envfile, kinfra_name, text};
use kinfra_core::config::types::{format_duration, parse_duration};
use kinfra_core::docker_names::{container_name, docker_name};
use toml::Value;

/// Converts a compose file into resources of `doc`.
pub fn import(text: &str, source: &mut Source<'_>, doc: &mut Document) -> Result<(), ImportError> {
    let root = yaml::parse(text).map_err(|e| ImportError::Malformed {
        file: source.file.clone(),
        line: e.line,
        message: format!("column {}: {}", e.column, e.message),
    })?;
    let top = map_of(source, &root, "the top level")?;
    if let Some(name) = top.iter().find(|e| e.key == "name") {
        let n = scalar(source, &name.value, "name")?;
        doc.project = Some(kinfra_name(n));
    }
    let Some(services) = top.iter().find(|e| e.key == "services") else {
        return Err(source.malformed(root.line, "expected a `services:` mapping"));
    };
    let services = map_of(source, &services.value, "`services`")?;
    // Names first (dependencies point forward); build-only services are left out.
    let mut names: Vec<(String, Option<String>)> = Vec::new();
    for s in services {
        let has_image = s.value.get("image").is_some();
        let name = has_image.then(|| {
            let free = doc.free_name(&kinfra_name(&s.key));
            if free != s.key {
                source.changed(
                    s.line,
                    &format!("services.{}", s.key),
                    format!("named `{free}`: `{}` is taken or not a kinfra name", s.key),
                );
            }
            free
        });
        names.push((s.key.clone(), name));
    }
    let mut c = Converter {
        project: doc.project.clone().unwrap_or_else(|| "kinfra".into()),
        names,
        volume_users: Vec::new(),
    };
    for s in services {
        c.service(source, doc, s)?;
    }
    for entry in top {
        match entry.key.as_str() {
            "services" | "name" => {}
            k if k.starts_with("x-") => {}
            "volumes" => c.volumes(source, &entry.value)?,
            "version" => source.not_imported(
                entry.line,
                "version",
                "obsolete in the Compose specification; nothing to carry over",
            ),
            "networks" => source.not_imported(
                entry.line,
                "networks",
                "kinfra publishes each container's port on 127.0.0.1; it makes no networks",
            ),
            other => source.not_imported(
                entry.line,
                other,
                "a compose setting kinfra has no equivalent for",
            ),
        }
    }
    Ok(())
}

struct Converter {
    project: String,
    /// compose service -> its resource name (`None`: not imported, no image).
    names: Vec<(String, Option<String>)>,
    /// Named volume -> the first resource that mounts it.
    volume_users: Vec<(String, String)>,
}

fn map_of<'n>(source: &Source<'_>, node: &'n Node, what: &str) -> Result<&'n [Entry], ImportError> {
    node.as_map()
        .ok_or_else(|| source.malformed(node.line, format!("{what}: expected a mapping")))
}

fn scalar<'n>(source: &Source<'_>, node: &'n Node, key: &str) -> Result<&'n str, ImportError> {
    node.as_str()
        .ok_or_else(|| source.malformed(node.line, format!("`{key}`: expected a string")))
}

/// A compose duration (`1m30s`, `10s`) in kinfra's form.
fn duration(source: &Source<'_>, node: &Node, key: &str) -> Result<String, ImportError> {
    let s = scalar(source, node, key)?;
    parse_duration(s).map(format_duration).map_err(|e| {
        source.malformed(
            node.line,
            format!("`{key}`: expected a duration such as `10s`: {e}"),
        )
    })
}

/// `[[ip:]host:]container[/protocol]` -> (host port, container port, protocol).
fn parse_port(spec: &str) -> Option<(Option<String>, String, String)> {
    let (addr, protocol) = match spec.rsplit_once('/') {
        Some((a, p)) => (a, p.to_owned()),
        None => (spec, "tcp".to_owned()),
    };
    let parts: Vec<&str> = addr.rsplitn(3, ':').collect();
    match parts.as_slice() {
        [container] => Some((None, (*container).to_owned(), protocol)),
        [container, host, ..] => Some((
            (!host.is_empty()).then(|| (*host).to_owned()),
            (*container).to_owned(),
            protocol,
        )),
        [] => None,
    }
}

/// Linux signal names compose accepts (`SIGTERM`, `TERM`).
fn is_signal(s: &str) -> bool {
    let upper = s.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    matches!(
        bare,
        "HUP" | "INT" | "QUIT" | "ABRT" | "KILL" | "USR1" | "USR2" | "ALRM" | "TERM"
    )
}

impl Converter {
    fn resource_of(&self, service: &str) -> Option<Option<&str>> {
        self.names
            .iter()
            .find(|(n, _)| n == service)
            .map(|(_, r)| r.as_deref())
    }

    fn text(&self, source: &mut Source<'_>, line: usize, key: &str, s: &str) -> String {
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

    fn service(
        &mut self,
        source: &mut Source<'_>,
        doc: &mut Document,
        s: &Entry,
    ) -> Result<(), ImportError> {
        let base = format!("services.{}", s.key);
        let entries = map_of(source, &s.value, &format!("`{base}`"))?;
        let Some(Some(name)) = self.resource_of(&s.key).map(|r| r.map(str::to_owned)) else {
            // No image: kinfra cannot run it.
            let line = entries
                .iter()
                .find(|e| e.key == "build")
                .map_or(s.line, |e| e.line);
            source.not_imported(
                line,
                &format!("{base}.build"),
                format!(
                    "kinfra runs images, it does not build them: the service `{}` is left out. \
                     Build the image (`docker build -t {} .`) and set `image`, or run the app \
                     as a kinfra service (a local process)",
                    s.key, s.key
                ),
            );
            return Ok(());
        };
        let mut t = Table::new("resources", &name);
        t.set("template", "docker");
        let mut env: Vec<(String, String)> = Vec::new();
        let mut env_from_files: Vec<(String, String)> = Vec::new();
        let mut restart = None;
        for e in entries {
            let key = format!("{base}.{}", e.key);
            match e.key.as_str() {
                "image" => {
                    let image = scalar(source, &e.value, &key)?;
                    let image = self.text(source, e.line, &key, image);
                    t.set("image", image);
                }
                "build" => source.not_imported(
                    e.line,
                    &key,
                    "kinfra runs the image named by `image`; it does not build it (build and \
                     tag it first: `docker build -t IMAGE .`)",
                ),
                "command" => {
                    let argv: Vec<String> = match &e.value.value {
                        Yaml::Seq(items) => items
                            .iter()
                            .map(|i| scalar(source, i, &key).map(str::to_owned))
                            .collect::<Result<_, _>>()?,
                        Yaml::Scalar { text: cmd, .. } => {
                            text::split_args(cmd).ok_or_else(|| {
                                source.malformed(
                                    e.value.line,
                                    format!("`{key}`: a quote is not closed"),
                                )
                            })?
                        }
                        _ => {
                            return Err(source.malformed(
                                e.value.line,
                                format!("`{key}`: expected a string or a list of strings"),
                            ));
                        }
                    };
                    let argv: Vec<String> = argv
                        .iter()
                        .map(|a| self.text(source, e.line, &key, a))
                        .collect();
                    t.set("command", strings(argv));
                }
                "environment" => env = self.environment(source, &e.value, &key)?,
                "env_file" => env_from_files = self.env_files(source, &e.value, &key)?,
                "ports" => self.ports(source, &mut t, &e.value, &key)?,
                "volumes" => self.service_volumes(source, &mut t, &name, &e.value, &key)?,
                "healthcheck" => self.healthcheck(source, &mut t, &name, &e.value, &key)?,
                "depends_on" => {
                    let deps = self.depends_on(source, &e.value, &key)?;
                    for (target, _, line) in &deps {
                        doc.dependencies.push(Dependency {
                            from: name.clone(),
                            target: target.clone(),
                            file: source.file.clone(),
                            line: *line,
                            key: format!("{key}.{target}"),
                        });
                    }
                    if !deps.is_empty() {
                        t.set(
                            "depends_on",
                            table(deps.into_iter().map(|(n, c, _)| (n, c))),
                        );
                    }
                }
                "restart" => {
                    let policy = scalar(source, &e.value, &key)?;
                    restart = Some(match policy {
                        "no" | "\"no\"" => "no",
                        "always" => "always",
                        "unless-stopped" => "unless-stopped",
                        p if p == "on-failure" || p.starts_with("on-failure:") => {
                            if p != "on-failure" {
                                source.changed(
                                    e.line,
                                    &key,
                                    "on-failure without a retry limit: kinfra's crash-loop \
                                     guard (crash_loop) stops restarts instead",
                                );
                            }
                            "on-failure"
                        }
                        other => {
                            return Err(source.malformed(
                                e.value.line,
                                format!(
                                    "`{key}`: expected no, always, on-failure[:N] or \
                                     unless-stopped, found `{other}`"
                                ),
                            ));
                        }
                    });
                }
                "stop_grace_period" => {
                    let d = duration(source, &e.value, &key)?;
                    t.set("stop_grace", d);
                }
                "stop_signal" => {
                    let sig = scalar(source, &e.value, &key)?;
                    let why = if is_signal(sig) {
                        "a container resource is stopped by Docker with the image's stop signal"
                    } else {
                        "not a signal name"
                    };
                    source.not_imported(e.line, &key, why);
                }
                "entrypoint" => source.not_imported(
                    e.line,
                    &key,
                    "kinfra's `command` replaces the image's CMD; the image's ENTRYPOINT stays",
                ),
                "container_name" => source.not_imported(
                    e.line,
                    &key,
                    format!(
                        "kinfra names the container kinfra-{}-{name}",
                        docker_name(&self.project)
                    ),
                ),
                "networks" | "network_mode" | "links" | "hostname" | "extra_hosts" => source
                    .not_imported(
                        e.line,
                        &key,
                        "kinfra publishes the container's port on 127.0.0.1; containers and \
                         services reach it there, not by a network name",
                    ),
                _ => source.not_imported(
                    e.line,
                    &key,
                    "a compose setting kinfra has no equivalent for",
                ),
            }
        }
        // `environment` wins over `env_file`, as in compose.
        for (k, v) in env {
            env_from_files.retain(|(k2, _)| *k2 != k);
            env_from_files.push((k, v));
        }
        self.network_names(source, s, &env_from_files, &base);
        if !env_from_files.is_empty() {
            t.set(
                "env",
                table(
                    env_from_files
                        .into_iter()
                        .map(|(k, v)| (k, Value::String(v))),
                ),
            );
        }
        // compose's default is no restart; kinfra's is on-failure.
        t.set("restart", restart.unwrap_or("no"));
        doc.tables.push(t);
        Ok(())
    }

    /// A value naming another compose service as a host (`@db:5432`, `//cache:6379`): that
    /// name resolves on compose's network only.
    fn network_names(
        &self,
        source: &mut Source<'_>,
        s: &Entry,
        env: &[(String, String)],
        base: &str,
    ) {
        for (k, v) in env {
            for (other, resource) in &self.names {
                let hit = [
                    format!("//{other}:"),
                    format!("@{other}:"),
                    format!("//{other}/"),
                ]
                .iter()
                .any(|p| v.contains(p.as_str()));
                if hit {
                    let line = s.value.get("environment").map_or(s.line, |n| n.line);
                    let hint = match resource {
                        Some(r) => {
                            format!("; kinfra publishes it on 127.0.0.1:${{resources.{r}.port}}")
                        }
                        None => String::new(),
                    };
                    source.changed(
                        line,
                        &format!("{base}.environment.{k}"),
                        format!(
                            "`{other}` is a host name on compose's network, which kinfra does \
                             not make{hint}"
                        ),
                    );
                }
            }
        }
    }

    fn environment(
        &self,
        source: &mut Source<'_>,
        node: &Node,
        key: &str,
    ) -> Result<Vec<(String, String)>, ImportError> {
        let mut out = Vec::new();
        match &node.value {
            Yaml::Seq(items) => {
                for item in items {
                    let s = scalar(source, item, key)?;
                    match s.split_once('=') {
                        Some((k, v)) => {
                            let v = self.text(source, item.line, key, v);
                            out.push((k.to_owned(), v));
                        }
                        None => {
                            let v = pass_through(source, key, item.line, s);
                            out.push((s.to_owned(), v));
                        }
                    }
                }
            }
            Yaml::Map(entries) => {
                for e in entries {
                    let v = if e.value.is_null() {
                        pass_through(source, key, e.line, &e.key)
                    } else {
                        let s = scalar(source, &e.value, &format!("{key}.{}", e.key))?;
                        self.text(source, e.line, key, s)
                    };
                    out.push((e.key.clone(), v));
                }
            }
            Yaml::Null => {}
            Yaml::Scalar { .. } => {
                return Err(source.malformed(
                    node.line,
                    format!("`{key}`: expected a mapping or a list of `NAME=value`"),
                ));
            }
        }
        Ok(out)
    }

    fn env_files(
        &self,
        source: &mut Source<'_>,
        node: &Node,
        key: &str,
    ) -> Result<Vec<(String, String)>, ImportError> {
        let items: Vec<&Node> = match &node.value {
            Yaml::Seq(items) => items.iter().collect(),
            _ => vec![node],
        };
        let mut out: Vec<(String, String)> = Vec::new();
        for item in items {
            let (path, required) = match &item.value {
                Yaml::Map(_) => {
                    let path = item.get("path").and_then(Node::as_str).ok_or_else(|| {
                        source.malformed(item.line, format!("`{key}`: expected a `path`"))
                    })?;
                    let required = item.get("required").and_then(Node::as_bool).unwrap_or(true);
                    (path, required)
                }
                _ => (scalar(source, item, key)?, true),
            };
            let file = source.dir.join(path);
            if !file.exists() && !required {
                source.changed(
                    item.line,
                    key,
                    format!("{path} does not exist (required: false)"),
                );
                continue;
            }
            let (file, text) = source.read_beside(path)?;
            let vars = envfile::parse(&text).map_err(|e| ImportError::Malformed {
                file: file.display().to_string(),
                line: e.line,
                message: e.message,
            })?;
            for var in vars {
                out.retain(|(k, _)| *k != var.key);
                // Values of an env file are literal.
                out.push((var.key, var.value.replace('$', "$$")));
            }
            source.changed(
                item.line,
                key,
                format!("the variables of {path} are copied into kinfra.toml's env"),
            );
        }
        Ok(out)
    }

    fn ports(
        &self,
        source: &mut Source<'_>,
        t: &mut Table,
        node: &Node,
        key: &str,
    ) -> Result<(), ImportError> {
        let items = node
            .as_seq()
            .ok_or_else(|| source.malformed(node.line, format!("`{key}`: expected a list")))?;
        for (i, item) in items.iter().enumerate() {
            let (host, container, protocol) = match &item.value {
                Yaml::Map(_) => {
                    let get = |f: &str| item.get(f).and_then(Node::as_str).map(str::to_owned);
                    let container = get("target").ok_or_else(|| {
                        source.malformed(item.line, format!("`{key}`: expected a `target` port"))
                    })?;
                    (
                        get("published"),
                        container,
                        get("protocol").unwrap_or("tcp".into()),
                    )
                }
                _ => {
                    let spec = scalar(source, item, key)?;
                    parse_port(spec).ok_or_else(|| {
                        source.malformed(item.line, format!("`{key}`: expected `HOST:CONTAINER`"))
                    })?
                }
            };
            if i > 0 {
                source.not_imported(
                    item.line,
                    key,
                    format!(
                        "a kinfra resource publishes one port: only the first is kept \
                         ({container} inside is not published)"
                    ),
                );
                continue;
            }
            if protocol != "tcp" {
                source.not_imported(
                    item.line,
                    key,
                    format!("kinfra publishes TCP ports only, not {protocol}"),
                );
                continue;
            }
            let Ok(container_port) = container.parse::<u16>() else {
                source.not_imported(
                    item.line,
                    key,
                    format!("`{container}`: kinfra publishes one port, not a range or a variable"),
                );
                continue;
            };
            t.set("container_port", i64::from(container_port));
            match host.as_deref().map(str::parse::<u16>) {
                Some(Ok(p)) if p > 0 => t.set("port", i64::from(p)),
                None => t.set("port", "auto"),
                Some(_) => {
                    t.set("port", "auto");
                    source.changed(
                        item.line,
                        key,
                        format!(
                            "host port `{}`: port = \"auto\" (kinfra picks a free port and keeps it)",
                            host.as_deref().unwrap_or_default()
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    fn service_volumes(
        &mut self,
        source: &mut Source<'_>,
        t: &mut Table,
        resource: &str,
        node: &Node,
        key: &str,
    ) -> Result<(), ImportError> {
        let items = node
            .as_seq()
            .ok_or_else(|| source.malformed(node.line, format!("`{key}`: expected a list")))?;
        let mut volumes: Vec<(String, Value)> = Vec::new();
        for item in items {
            let (kind, src, target, read_only) = match &item.value {
                Yaml::Map(_) => {
                    let get = |f: &str| item.get(f).and_then(Node::as_str).map(str::to_owned);
                    (
                        get("type").unwrap_or_else(|| "volume".into()),
                        get("source"),
                        get("target").unwrap_or_default(),
                        item.get("read_only")
                            .and_then(Node::as_bool)
                            .unwrap_or(false),
                    )
                }
                _ => {
                    let spec = scalar(source, item, key)?;
                    let parts: Vec<&str> = spec.split(':').collect();
                    let (src, target, mode) = match parts.as_slice() {
                        [target] => (None, (*target).to_owned(), ""),
                        [src, target] => (Some((*src).to_owned()), (*target).to_owned(), ""),
                        [src, target, mode, ..] => {
                            (Some((*src).to_owned()), (*target).to_owned(), *mode)
                        }
                        [] => (None, String::new(), ""),
                    };
                    let bind = src
                        .as_deref()
                        .is_some_and(|s| s.starts_with(['.', '/', '~', '$']));
                    let kind = if bind { "bind" } else { "volume" };
                    (
                        kind.to_owned(),
                        src,
                        target,
                        mode.split(',').any(|m| m == "ro"),
                    )
                }
            };
            match (kind.as_str(), src) {
                ("volume", Some(volume)) => {
                    if read_only {
                        source.changed(item.line, key, format!("`{volume}` is mounted read-write"));
                    }
                    match self.volume_users.iter().find(|(v, _)| *v == volume) {
                        Some((_, first)) if first != resource => source.changed(
                            item.line,
                            key,
                            format!(
                                "`{volume}` is not shared with `{first}`: kinfra names volumes \
                                 per resource (kinfra-PROJECT-RESOURCE-VOLUME)"
                            ),
                        ),
                        Some(_) => {}
                        None => self
                            .volume_users
                            .push((volume.clone(), resource.to_owned())),
                    }
                    volumes.push((volume, Value::String(target)));
                }
                ("volume", None) => source.not_imported(
                    item.line,
                    key,
                    format!("an anonymous volume at {target}: name it (`data:{target}`)"),
                ),
                (kind, _) => source.not_imported(
                    item.line,
                    key,
                    format!("a {kind} mount: kinfra mounts named volumes only, never host paths"),
                ),
            }
        }
        if !volumes.is_empty() {
            t.set("volumes", table(volumes));
        }
        Ok(())
    }

    fn healthcheck(
        &self,
        source: &mut Source<'_>,
        t: &mut Table,
        resource: &str,
        node: &Node,
        key: &str,
    ) -> Result<(), ImportError> {
        let entries = map_of(source, node, &format!("`{key}`"))?;
        if entries
            .iter()
            .any(|e| e.key == "disable" && e.value.as_bool() == Some(true))
        {
            return Ok(());
        }
        let container = container_name(&self.project, resource);
        let mut pairs: Vec<(String, Value)> = Vec::new();
        for e in entries {
            let k = format!("{key}.{}", e.key);
            match e.key.as_str() {
                "test" => {
                    let mut argv = vec!["docker".to_owned(), "exec".to_owned(), container.clone()];
                    match &e.value.value {
                        Yaml::Scalar { text: cmd, .. } => {
                            argv.extend(["sh".into(), "-c".into(), cmd.clone()]);
                        }
                        Yaml::Seq(items) => {
                            let items: Vec<String> = items
                                .iter()
                                .map(|i| scalar(source, i, &k).map(str::to_owned))
                                .collect::<Result<_, _>>()?;
                            match items.split_first() {
                                Some((first, rest)) if first == "CMD" => {
                                    argv.extend(rest.iter().cloned())
                                }
                                Some((first, rest)) if first == "CMD-SHELL" => {
                                    argv.extend(["sh".into(), "-c".into(), rest.join(" ")]);
                                }
                                Some((first, _)) if first == "NONE" => return Ok(()),
                                _ => {
                                    return Err(source.malformed(
                                        e.value.line,
                                        format!("`{k}`: expected [\"CMD\", ...], [\"CMD-SHELL\", \"...\"] or [\"NONE\"]"),
                                    ));
                                }
                            }
                        }
                        _ => {
                            return Err(source.malformed(
                                e.value.line,
                                format!("`{k}`: expected a string or a list"),
                            ));
                        }
                    }
                    // The test is interpolated as compose does (`$$` reaches the container
                    // as `$`); the `docker exec` prefix is kinfra's own.
                    let argv: Vec<String> = argv
                        .iter()
                        .enumerate()
                        .map(|(i, a)| {
                            if i < 3 {
                                a.clone()
                            } else {
                                self.text(source, e.line, &k, a)
                            }
                        })
                        .collect();
                    source.changed(
                        e.line,
                        &k,
                        format!(
                            "kinfra probes from the host: the test runs through `docker exec \
                             {container}` (the docker CLI must be installed; the name follows \
                             the project's name)"
                        ),
                    );
                    pairs.push(("exec".into(), strings(argv)));
                }
                "interval" => pairs.push((
                    "interval".into(),
                    Value::String(duration(source, &e.value, &k)?),
                )),
                "timeout" => pairs.push((
                    "timeout".into(),
                    Value::String(duration(source, &e.value, &k)?),
                )),
                "start_period" => pairs.push((
                    "initial_delay".into(),
                    Value::String(duration(source, &e.value, &k)?),
                )),
                "retries" => {
                    let n = e.value.as_u64().filter(|n| *n >= 1).ok_or_else(|| {
                        source.malformed(
                            e.value.line,
                            format!("`{k}`: expected a whole number of at least 1"),
                        )
                    })?;
                    pairs.push((
                        "failure_threshold".into(),
                        Value::Integer(n.min(u32::MAX.into()) as i64),
                    ));
                }
                _ => source.not_imported(
                    e.line,
                    &k,
                    "a healthcheck setting kinfra has no equivalent for",
                ),
            }
        }
        if pairs.iter().any(|(k, _)| k == "exec") {
            t.set("health", table(pairs));
        } else {
            source.not_imported(
                node.line,
                key,
                "a healthcheck without `test` (the image's own) is not run by kinfra",
            );
        }
        Ok(())
    }

    fn depends_on(
        &self,
        source: &mut Source<'_>,
        node: &Node,
        key: &str,
    ) -> Result<Vec<(String, Value, usize)>, ImportError> {
        let mut deps: Vec<(String, usize, &str)> = Vec::new();
        match &node.value {
            Yaml::Seq(items) => {
                for i in items {
                    deps.push((scalar(source, i, key)?.to_owned(), i.line, "started"));
                }
            }
            Yaml::Map(entries) => {
                for e in entries {
                    let dkey = format!("{key}.{}", e.key);
                    let condition = match e.value.get("condition") {
                        Some(c) => scalar(source, c, &format!("{dkey}.condition"))?,
                        None => "service_started",
                    };
                    let mapped = match condition {
                        "service_started" => "started",
                        "service_healthy" => "healthy",
                        "service_completed_successfully" => "completed_successfully",
                        other => {
                            return Err(source.malformed(
                                e.line,
                                format!(
                                    "`{dkey}.condition`: expected service_started, \
                                     service_healthy or service_completed_successfully, found \
                                     `{other}`"
                                ),
                            ));
                        }
                    };
                    for f in e.value.as_map().unwrap_or_default() {
                        if f.key != "condition" {
                            source.not_imported(
                                f.line,
                                &format!("{dkey}.{}", f.key),
                                "kinfra's depends_on takes a condition only",
                            );
                        }
                    }
                    deps.push((e.key.clone(), e.line, mapped));
                }
            }
            _ => {
                return Err(
                    source.malformed(node.line, format!("`{key}`: expected a list or a mapping"))
                );
            }
        }
        let mut out = Vec::new();
        for (service, line, condition) in deps {
            match self.resource_of(&service) {
                Some(Some(resource)) => {
                    out.push((resource.to_owned(), Value::String(condition.into()), line));
                }
                Some(None) => source.not_imported(
                    line,
                    &format!("{key}.{service}"),
                    format!("`{service}` is not imported (it has no image)"),
                ),
                None => out.push((kinfra_name(&service), Value::String(condition.into()), line)),
            }
        }
        Ok(out)
    }

    /// The top-level `volumes:`: plain declarations are what kinfra does anyway; options are
    /// not.
    fn volumes(&self, source: &mut Source<'_>, node: &Node) -> Result<(), ImportError> {
        for v in map_of(source, node, "`volumes`")? {
            for opt in v.value.as_map().unwrap_or_default() {
                source.not_imported(
                    opt.line,
                    &format!("volumes.{}.{}", v.key, opt.key),
                    "kinfra creates local named volumes with Docker's defaults",
                );
            }
        }
        Ok(())
    }
}

/// `NAME` without a value: compose passes the variable through from its environment.
fn pass_through(source: &mut Source<'_>, key: &str, line: usize, name: &str) -> String {
    source.changed(
        line,
        &format!("{key}.{name}"),
        format!("taken from kinfra's environment: {name} = \"${{{name}:-}}\""),
    );
    format!("${{{name}:-}}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::parse_port;
    use crate::{NoteKind, import_files};
    use kinfra_core::config::{CommandSpec, DependCondition, PortSpec, RestartPolicy};
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/import/compose/compose.yaml")
    }

    #[test]
    fn postgres_redis_and_an_app_with_build() {
        let dir = tempfile::tempdir().unwrap();
        let out = import_files(&[fixture()], dir.path()).unwrap();
        let c = &out.config;
        assert_eq!(c.project.name, "shop");
        let db = &c.resources["db"];
        assert_eq!(db.image.as_deref(), Some("postgres:16-alpine"));
        assert_eq!(db.port, Some(PortSpec::Fixed(5432)));
        assert_eq!(db.container_port, Some(5432));
        assert_eq!(db.restart, RestartPolicy::UnlessStopped);
        // environment and env_file, environment winning.
        assert_eq!(db.env["POSTGRES_USER"], "shop");
        assert_eq!(db.env["POSTGRES_PASSWORD"], "shop");
        assert_eq!(db.volumes["pgdata"], "/var/lib/postgresql/data");
        let health = db.health.as_ref().unwrap();
        assert_eq!(
            health.exec,
            Some(CommandSpec::Argv(vec![
                "docker".into(),
                "exec".into(),
                "kinfra-shop-db".into(),
                "sh".into(),
                "-c".into(),
                "pg_isready -U $${POSTGRES_USER} -d shop".into(),
            ]))
        );
        assert_eq!(health.interval.0, Duration::from_secs(5));
        assert_eq!(health.timeout.0, Duration::from_secs(3));
        assert_eq!(health.failure_threshold, 10);
        assert_eq!(health.initial_delay.0, Duration::from_secs(10));
        let cache = &c.resources["cache"];
        assert_eq!(
            cache.command,
            Some(CommandSpec::Argv(vec![
                "redis-server".into(),
                "--appendonly".into(),
                "yes".into(),
                "--save".into(),
                "".into(),
            ]))
        );
        assert_eq!(cache.restart, RestartPolicy::Always);
        // `app` has only `build`: left out, reported at its line.
        assert!(!c.resources.contains_key("app"));
        let build = out
            .notes
            .iter()
            .find(|n| n.key == "services.app.build")
            .unwrap();
        assert_eq!((build.line, build.kind), (39, NoteKind::NotImported));
        // `worker` has both: imported, its `build` reported.
        let worker = &c.resources["worker"];
        assert_eq!(worker.depends_on.0["cache"], DependCondition::Started);
        assert!(!worker.depends_on.0.contains_key("app"));
        assert_eq!(worker.stop_grace.0, Duration::from_secs(90));
        assert_eq!(worker.restart, RestartPolicy::No);
        let reported = |key: &str| out.notes.iter().any(|n| n.key == key);
        assert!(reported("services.worker.build"));
        assert!(reported("services.worker.deploy"));
        assert!(reported("services.worker.networks"));
        assert!(reported("services.worker.depends_on.app"));
        assert!(reported("services.worker.environment.REDIS_URL"));
        assert!(reported("services.db.volumes"));
        assert!(reported("volumes.redisdata.driver"));
        assert!(reported("networks"));
    }

    #[test]
    fn port_forms() {
        assert_eq!(
            parse_port("5432"),
            Some((None, "5432".into(), "tcp".into()))
        );
        assert_eq!(
            parse_port("127.0.0.1:8080:80/udp"),
            Some((Some("8080".into()), "80".into(), "udp".into()))
        );
        assert_eq!(parse_port("127.0.0.1::80").unwrap().0, None);
    }

    #[test]
    fn malformed_yaml_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("compose.yaml");
        std::fs::write(
            &path,
            "services:\n  db:\n    image: postgres\n   ports: [\n",
        )
        .unwrap();
        let e = import_files(&[path], dir.path()).unwrap_err();
        assert!(e.is_input_error());
        assert!(e.to_string().contains("compose.yaml:4"), "{e}");
    }

    fn import_text(text: &str) -> crate::Imported {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("compose.yaml");
        std::fs::write(&path, text).unwrap();
        import_files(&[path], dir.path()).unwrap()
    }

    #[test]
    fn long_syntax_pass_through_and_other_forms() {
        let out = import_text(
            "name: p\nservices:\n  api:\n    image: busybox\n    command: sh -c 'echo $$HOME'\n    environment:\n      - TOKEN\n      - MODE=${MODE-dev}\n    env_file:\n      - path: missing.env\n        required: false\n    ports:\n      - target: 80\n        published: \"8080\"\n      - \"9000:9000\"\n    volumes:\n      - type: volume\n        source: data\n        target: /data\n        read_only: true\n      - /anonymous\n    restart: on-failure:3\n    healthcheck:\n      test: wget -q -O- localhost:80\n  off:\n    image: busybox\n    healthcheck:\n      test: [\"NONE\"]\n",
        );
        let api = &out.config.resources["api"];
        assert_eq!(
            api.command,
            Some(CommandSpec::Argv(vec![
                "sh".into(),
                "-c".into(),
                "echo $$HOME".into()
            ]))
        );
        assert_eq!(api.env["TOKEN"], "${TOKEN:-}");
        assert_eq!(api.env["MODE"], "${MODE:-dev}");
        assert_eq!(api.port, Some(PortSpec::Fixed(8080)));
        assert_eq!(api.container_port, Some(80));
        assert_eq!(api.volumes["data"], "/data");
        assert_eq!(api.restart, RestartPolicy::OnFailure);
        assert_eq!(
            api.health.as_ref().unwrap().exec,
            Some(CommandSpec::Argv(vec![
                "docker".into(),
                "exec".into(),
                "kinfra-p-api".into(),
                "sh".into(),
                "-c".into(),
                "wget -q -O- localhost:80".into(),
            ]))
        );
        assert!(out.config.resources["off"].health.is_none());
        let note = |line: usize, kind: NoteKind| {
            out.notes.iter().any(|n| n.line == line && n.kind == kind)
        };
        assert!(note(7, NoteKind::Changed), "TOKEN pass-through");
        assert!(note(10, NoteKind::Changed), "missing optional env_file");
        assert!(note(15, NoteKind::NotImported), "second port");
        assert!(note(17, NoteKind::Changed), "read-only volume");
        assert!(note(21, NoteKind::NotImported), "anonymous volume");
        assert!(note(22, NoteKind::Changed), "on-failure:3");
    }

    #[test]
    fn a_required_env_file_that_is_missing_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("compose.yaml");
        std::fs::write(
            &path,
            "services:\n  a:\n    image: x\n    env_file: nope.env\n",
        )
        .unwrap();
        let e = import_files(&[path], dir.path()).unwrap_err();
        assert!(e.is_input_error());
        assert!(
            e.to_string().contains("nope.env: cannot read the file"),
            "{e}"
        );
    }
}
