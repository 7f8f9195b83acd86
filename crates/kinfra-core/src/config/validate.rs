//! Semantic checks on a deserialized config: everything the schema alone cannot say.
//!
//! Every check runs and every problem is reported. A `healthy` dependency on something
//! without a readiness probe is allowed: it means "running" (see [`DependCondition`]).

use super::interpolate::{Reference, references_with_default};
use super::model::{
    Config, DependCondition, DependsOn, ProbeConfig, RestartPolicy, ServiceConfig, TcpTarget,
};
use super::source::{Anchor, join_index, join_key};
use super::types::{CommandSpec, PortSpec};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;
use url::Url;

/// One problem, at a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Issue {
    pub key: String,
    pub anchor: Anchor,
    pub message: String,
}

/// Longest service or resource name (a DNS label).
const MAX_NAME: usize = 63;

/// Where a string with `${...}` references sits, which decides what `${PORT}` means.
#[derive(Clone, Copy)]
enum RefScope<'a> {
    /// In a service's settings: `${PORT}` is its port.
    Service { name: &'a str, has_port: bool },
    /// In the global `env`: `${PORT}` is the port of each service it is given to.
    Global,
    /// In a route: there is no own port.
    Route,
}

struct Checker<'a> {
    config: &'a Config,
    issues: Vec<Issue>,
}

/// Runs every check.
pub(crate) fn check(config: &Config) -> Vec<Issue> {
    let mut c = Checker {
        config,
        issues: Vec::new(),
    };
    c.project();
    c.listeners();
    c.global_env();
    for (name, svc) in &config.services {
        c.service(name, svc);
    }
    c.providers();
    c.resources();
    c.cycles();
    c.routes();
    c.scale_to_zero();
    c.ports();
    c.acme();
    c.store();
    c.bus();
    c.node();
    c.tunnel();
    c.image();
    c.issues
}

fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("a name must not be empty".into());
    }
    if name.len() > MAX_NAME {
        return Some(format!(
            "name `{name}` is longer than {MAX_NAME} characters"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Some(format!(
            "name `{name}` contains `{bad}`; use letters, digits, `_` and `-`"
        ));
    }
    None
}

impl Checker<'_> {
    fn issue(&mut self, key: String, anchor: Anchor, message: impl Into<String>) {
        self.issues.push(Issue {
            key,
            anchor,
            message: message.into(),
        });
    }

    fn project(&mut self) {
        if self.config.project.name.trim().is_empty() {
            self.issue(
                "project.name".into(),
                Anchor::Value,
                "the project name must not be empty",
            );
        }
    }

    fn listeners(&mut self) {
        let d = &self.config.dashboard;
        let p = &self.config.proxy;
        let listeners = [
            ("dashboard.listen", Some(&d.listen)),
            ("proxy.http", p.http.as_ref()),
            ("proxy.https", p.https.as_ref()),
        ];
        for (key, addr) in listeners {
            if let Some(addr) = addr
                && addr.parse::<SocketAddr>().is_err()
            {
                self.issue(
                    key.into(),
                    Anchor::Value,
                    format!(
                        "invalid listen address `{addr}`: expected IP:port such as \
                             127.0.0.1:9000 or [::1]:9000 (port 0 picks a free port)"
                    ),
                );
            }
        }
        for (i, path) in p.reserved_paths.iter().enumerate() {
            if !path.starts_with('/') {
                self.issue(
                    join_index("proxy.reserved_paths", i),
                    Anchor::Value,
                    format!("reserved path `{path}` must start with `/`"),
                );
            }
        }
        if p.enabled && p.http.is_none() && p.https.is_none() {
            self.issue(
                "proxy.http".into(),
                Anchor::Value,
                "the proxy has no listener: set proxy.http and/or proxy.https, or \
                 [proxy] enabled = false",
            );
        }
        for (key, value) in [
            ("proxy.connect_timeout", p.connect_timeout),
            ("proxy.read_timeout", p.read_timeout),
        ] {
            if value.0.is_zero() {
                self.issue(
                    key.into(),
                    Anchor::Value,
                    format!("{key} must be more than 0"),
                );
            }
        }
        if p.threads == Some(0) {
            self.issue(
                "proxy.threads".into(),
                Anchor::Value,
                "proxy.threads must be at least 1 (leave it out for one per CPU)",
            );
        }
        let dashboard_timeouts = [
            ("dashboard.header_timeout", d.header_timeout),
            ("dashboard.idle_timeout", d.idle_timeout),
            ("dashboard.body_timeout", d.body_timeout),
        ];
        for (key, value) in dashboard_timeouts {
            if value.0.is_zero() {
                self.issue(
                    key.into(),
                    Anchor::Value,
                    format!("{key} must be more than 0"),
                );
            }
        }
        if d.max_connections == 0 {
            self.issue(
                "dashboard.max_connections".into(),
                Anchor::Value,
                "dashboard.max_connections must be at least 1",
            );
        }
    }

    fn global_env(&mut self) {
        for (k, v) in &self.config.env {
            let key = join_key("env", k);
            self.refs(&key, v, RefScope::Global);
        }
    }

    fn refs(&mut self, key: &str, text: &str, scope: RefScope<'_>) {
        let refs = match references_with_default(text) {
            Ok(refs) => refs,
            Err(e) => {
                self.issue(key.into(), Anchor::Value, e.to_string());
                return;
            }
        };
        for (reference, has_default) in refs {
            match reference {
                Reference::Port => match scope {
                    RefScope::Service {
                        name,
                        has_port: false,
                    } if !has_default => self.issue(
                        key.into(),
                        Anchor::Value,
                        format!(
                            "`${{PORT}}` is used, but service `{name}` has no `port` \
                             (add `port = \"auto\"`)"
                        ),
                    ),
                    RefScope::Route if !has_default => self.issue(
                        key.into(),
                        Anchor::Value,
                        "`${PORT}` means the port of the service it is in; a route has none \
                         (write `${services.NAME.port}`)",
                    ),
                    _ => {}
                },
                Reference::ServicePort(name) => {
                    let message = match self.config.services.get(&name) {
                        Some(svc) if svc.port.is_some() => None,
                        Some(_) => Some(format!(
                            "`${{services.{name}.port}}` names service `{name}`, which has no \
                             `port`"
                        )),
                        None if self.config.resources.contains_key(&name) => Some(format!(
                            "`{name}` is a resource; write `${{resources.{name}.port}}`"
                        )),
                        None => Some(format!(
                            "`${{services.{name}.port}}` names an unknown service `{name}`"
                        )),
                    };
                    if let Some(message) = message {
                        self.issue(key.into(), Anchor::Value, message);
                    }
                }
                Reference::ResourceField(name, field) => {
                    if !self.config.resources.contains_key(&name) {
                        let hint = if self.config.services.contains_key(&name) {
                            format!(" (`{name}` is a service: write `${{services.{name}.port}}`)")
                        } else {
                            String::new()
                        };
                        self.issue(
                            key.into(),
                            Anchor::Value,
                            format!(
                                "`${{resources.{name}.{field}}}` names an unknown resource \
                                 `{name}`{hint}"
                            ),
                        );
                    }
                }
                Reference::Env(..) => {}
            }
        }
    }

    fn command_refs(&mut self, key: &str, command: &CommandSpec, scope: RefScope<'_>) {
        match command {
            CommandSpec::Shell(s) => self.refs(key, s, scope),
            CommandSpec::Argv(argv) => {
                for (i, arg) in argv.iter().enumerate() {
                    self.refs(&join_index(key, i), arg, scope);
                }
            }
        }
    }

    fn service(&mut self, name: &str, svc: &ServiceConfig) {
        let base = join_key("services", name);
        if let Some(problem) = name_problem(name) {
            self.issue(
                base.clone(),
                Anchor::Key,
                format!("invalid service name: {problem}"),
            );
        }
        let scope = RefScope::Service {
            name,
            has_port: svc.port.is_some(),
        };
        let command_key = join_key(&base, "command");
        if svc.command.is_empty() {
            self.issue(command_key.clone(), Anchor::Value, "the command is empty");
        }
        self.command_refs(&command_key, &svc.command, scope);
        for (i, arg) in svc.args.iter().enumerate() {
            self.refs(&join_index(&join_key(&base, "args"), i), arg, scope);
        }
        for (k, v) in &svc.env {
            self.refs(&join_key(&join_key(&base, "env"), k), v, scope);
        }
        if let Some(dir) = &svc.working_dir {
            let key = join_key(&base, "working_dir");
            match dir.to_str() {
                Some(text) => self.refs(&key, text, scope),
                None => self.issue(key, Anchor::Value, "the working directory is not UTF-8"),
            }
        }
        for (field, probe) in [("health", &svc.health), ("liveness", &svc.liveness)] {
            if let Some(probe) = probe {
                self.probe(
                    &join_key(&base, field),
                    probe,
                    Some(svc.port.is_some()),
                    scope,
                );
            }
        }
        let backoff = &svc.backoff;
        if backoff.factor.is_nan() || backoff.factor < 1.0 {
            self.issue(
                join_key(&join_key(&base, "backoff"), "factor"),
                Anchor::Value,
                format!("backoff factor {} must be at least 1", backoff.factor),
            );
        }
        if !(0.0..=1.0).contains(&backoff.jitter) {
            self.issue(
                join_key(&join_key(&base, "backoff"), "jitter"),
                Anchor::Value,
                format!("backoff jitter {} must be between 0 and 1", backoff.jitter),
            );
        }
        self.depends_on(&base, &svc.depends_on);
    }

    fn resources(&mut self) {
        for (name, res) in &self.config.resources {
            let base = join_key("resources", name);
            if let Some(problem) = name_problem(name) {
                self.issue(
                    base.clone(),
                    Anchor::Key,
                    format!("invalid resource name: {problem}"),
                );
            }
            if self.config.services.contains_key(name) {
                self.issue(
                    base.clone(),
                    Anchor::Key,
                    format!("`{name}` is both a service and a resource; rename one of them"),
                );
            }
            if let Some(command) = &res.command
                && command.is_empty()
            {
                self.issue(
                    join_key(&base, "command"),
                    Anchor::Value,
                    "the command is empty",
                );
            }
            if res.container_port == Some(0) {
                self.issue(
                    join_key(&base, "container_port"),
                    Anchor::Value,
                    "invalid port `0`: expected 1-65535",
                );
            }
            if res.is_provider() {
                self.resource_provider(&base, res);
            } else {
                self.resource_container(&base, res);
            }
            if let Some(probe) = &res.health {
                // A resource's probe runs against whatever port its adapter publishes.
                self.probe(&join_key(&base, "health"), probe, None, RefScope::Global);
            }
            self.depends_on(&base, &res.depends_on);
        }
    }

    /// `[providers.NAME]` instances: a rate limit that parses, one way to give the token.
    /// Provider-specific keys (`extra`) are not judged here: the provider checks them at
    /// `runtime up` and `plan`, where it is known which keys it takes.
    fn providers(&mut self) {
        let providers = &self.config.providers;
        for (name, instance) in &providers.instances {
            let base = join_key("providers", name);
            if let Some(problem) = name_problem(name) {
                self.issue(
                    base.clone(),
                    Anchor::Key,
                    format!("invalid provider instance name: {problem}"),
                );
            }
            if let Some(Err(problem)) = instance.parsed_rate_limit() {
                self.issue(join_key(&base, "rate_limit"), Anchor::Value, problem);
            }
            if instance.token.is_some() && instance.token_file.is_some() {
                self.issue(
                    join_key(&base, "token_file"),
                    Anchor::Key,
                    "`token` and `token_file` are both set; give the token one way",
                );
            }
            if instance
                .provider
                .as_deref()
                .is_some_and(|p| p.trim().is_empty())
            {
                self.issue(
                    join_key(&base, "provider"),
                    Anchor::Value,
                    "the provider id is empty",
                );
            }
            if let Some(url) = &instance.base_url
                && Url::parse(url).is_err()
            {
                self.issue(
                    join_key(&base, "base_url"),
                    Anchor::Value,
                    format!("invalid URL `{url}`"),
                );
            }
        }
    }

    /// What a provider resource needs: an instance that exists, a non-zero interval, and
    /// `on_down` from its own set (`delete` only with `confirm_delete = true`). Its
    /// provider-specific keys are the provider's to check (at `runtime up` and `plan`).
    fn resource_provider(&mut self, base: &str, res: &super::model::ResourceConfig) {
        use super::model::OnDown;
        if let Some(instance) = &res.provider
            && !self.config.providers.instances.contains_key(instance)
        {
            let known: Vec<&str> = self
                .config
                .providers
                .instances
                .keys()
                .map(String::as_str)
                .collect();
            let known = if known.is_empty() {
                "there are none".to_owned()
            } else {
                format!("known: {}", known.join(", "))
            };
            self.issue(
                join_key(base, "provider"),
                Anchor::Value,
                format!(
                    "unknown provider instance `{instance}`: expected a [providers.{instance}] \
                     table ({known})"
                ),
            );
        }
        if res.interval.is_some_and(|i| i.0.is_zero()) {
            self.issue(
                join_key(base, "interval"),
                Anchor::Value,
                "the interval must be longer than 0",
            );
        }
        match res.on_down {
            OnDown::Stop | OnDown::Remove | OnDown::RemoveVolumes => self.issue(
                join_key(base, "on_down"),
                Anchor::Value,
                "`stop`, `remove` and `remove_volumes` are for containers; a provider resource \
                 takes keep, pause or delete",
            ),
            OnDown::Delete if !res.confirm_delete => self.issue(
                join_key(base, "on_down"),
                Anchor::Value,
                "`on_down = \"delete\"` deletes the resource at `runtime down`; confirm it \
                 with `confirm_delete = true` beside it",
            ),
            _ => {}
        }
    }

    /// What only a container resource needs: an image for `docker`, named volumes (never a
    /// host path: bind mounts are not something a config gets by accident), absolute
    /// mount paths, a container port to publish.
    fn resource_container(&mut self, base: &str, res: &super::model::ResourceConfig) {
        use super::model::Template;
        if res.on_down.is_provider_value() {
            self.issue(
                join_key(base, "on_down"),
                Anchor::Value,
                "`keep`, `pause` and `delete` are for provider resources; a container takes \
                 stop, remove or remove_volumes",
            );
        }
        for key in ["interval", "confirm_delete"] {
            let set = match key {
                "interval" => res.interval.is_some(),
                _ => res.confirm_delete,
            };
            if set {
                self.issue(
                    join_key(base, key),
                    Anchor::Key,
                    format!("`{key}` is for provider resources (with `provider = \"...\"`)"),
                );
            }
        }
        match &res.image {
            Some(image) if image.trim().is_empty() || image.chars().any(char::is_whitespace) => {
                self.issue(
                    join_key(base, "image"),
                    Anchor::Value,
                    format!("invalid image `{image}`: expected a name like `redis:7`"),
                );
            }
            None if res.template == Template::Docker => self.issue(
                base.to_owned(),
                Anchor::Key,
                "the `docker` template needs an `image`",
            ),
            _ => {}
        }
        if res.template == Template::Docker && res.port.is_some() && res.container_port.is_none() {
            self.issue(
                join_key(base, "port"),
                Anchor::Value,
                "a published port needs `container_port`, the port inside the container",
            );
        }
        if res.jetstream && res.template != Template::Nats {
            self.issue(
                join_key(base, "jetstream"),
                Anchor::Value,
                "`jetstream` is only for the `nats` template",
            );
        }
        for (volume, path) in &res.volumes {
            let key = join_key(&join_key(base, "volumes"), volume);
            let valid_name = volume
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric())
                && volume
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if !valid_name {
                self.issue(
                    key.clone(),
                    Anchor::Key,
                    format!(
                        "invalid volume name `{volume}`: expected a named volume \
                         (letters, digits, `_.-`); host paths are not mounted"
                    ),
                );
            }
            if !path.starts_with('/') {
                self.issue(
                    key,
                    Anchor::Value,
                    format!(
                        "invalid mount path `{path}`: expected an absolute path in the container"
                    ),
                );
            }
        }
    }

    /// `has_port`: whether the owner has a port (`None` when that is the adapter's affair).
    fn probe(
        &mut self,
        key: &str,
        probe: &ProbeConfig,
        has_port: Option<bool>,
        scope: RefScope<'_>,
    ) {
        let kinds: Vec<&str> = [
            ("http", probe.http.is_some()),
            ("tcp", probe.tcp.is_some()),
            ("exec", probe.exec.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect();
        match kinds.as_slice() {
            [] => self.issue(
                key.into(),
                Anchor::Key,
                "a probe needs one of `http`, `tcp` or `exec`",
            ),
            [_] => {}
            many => self.issue(
                key.into(),
                Anchor::Key,
                format!(
                    "a probe takes exactly one of `http`, `tcp` or `exec`, this one has {}",
                    many.iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(" and ")
                ),
            ),
        }
        if let Some(http) = &probe.http {
            let hkey = join_key(key, "http");
            if http.starts_with('/') {
                if has_port == Some(false) {
                    self.issue(
                        hkey.clone(),
                        Anchor::Value,
                        format!(
                            "`http = \"{http}\"` probes the service's own port, but the \
                             service has no `port`"
                        ),
                    );
                }
            } else if http.starts_with("https://") {
                self.issue(
                    hkey.clone(),
                    Anchor::Value,
                    format!(
                        "invalid probe `{http}`: probes speak plain HTTP; use an http:// URL \
                         or a path such as /healthz"
                    ),
                );
            } else if !http.starts_with("http://") {
                self.issue(
                    hkey.clone(),
                    Anchor::Value,
                    format!(
                        "invalid probe `{http}`: expected a path such as /healthz or an http:// URL"
                    ),
                );
            } else if let Some(problem) = probe_url_problem(http) {
                self.issue(hkey.clone(), Anchor::Value, problem);
            }
            self.refs(&hkey, http, scope);
        }
        match probe.tcp {
            Some(TcpTarget::OwnPort(true)) if has_port == Some(false) => self.issue(
                join_key(key, "tcp"),
                Anchor::Value,
                "`tcp = true` probes the service's own port, but the service has no `port`",
            ),
            Some(TcpTarget::OwnPort(false)) => self.issue(
                join_key(key, "tcp"),
                Anchor::Value,
                "`tcp = false` is not a probe: write `tcp = true` or a port number",
            ),
            Some(TcpTarget::Port(0)) => self.issue(
                join_key(key, "tcp"),
                Anchor::Value,
                "invalid port `0`: expected 1-65535",
            ),
            _ => {}
        }
        if let Some(exec) = &probe.exec {
            let ekey = join_key(key, "exec");
            if exec.is_empty() {
                self.issue(ekey.clone(), Anchor::Value, "the command is empty");
            }
            self.command_refs(&ekey, exec, scope);
        }
        // The prober would run back to back (and a liveness probe would restart a healthy
        // service on the first slow answer).
        for (field, value) in [("interval", probe.interval), ("timeout", probe.timeout)] {
            if value.0.is_zero() {
                self.issue(
                    join_key(key, field),
                    Anchor::Value,
                    format!("`{field}` must be more than 0"),
                );
            }
        }
        for (field, value) in [
            ("success_threshold", probe.success_threshold),
            ("failure_threshold", probe.failure_threshold),
        ] {
            if value == 0 {
                self.issue(
                    join_key(key, field),
                    Anchor::Value,
                    format!("`{field}` must be at least 1"),
                );
            }
        }
    }

    /// The restart policy of a service or resource, when it exists.
    fn restart_of(&self, name: &str) -> Option<RestartPolicy> {
        match self.config.services.get(name) {
            Some(svc) => Some(svc.restart),
            None => self.config.resources.get(name).map(|r| r.restart),
        }
    }

    fn depends_on(&mut self, base: &str, deps: &DependsOn) {
        let dkey = join_key(base, "depends_on");
        for (dep, cond) in &deps.0 {
            let key = join_key(&dkey, dep);
            match self.restart_of(dep) {
                None => self.issue(
                    key,
                    Anchor::Key,
                    format!("depends on `{dep}`, which is neither a service nor a resource"),
                ),
                Some(policy @ (RestartPolicy::Always | RestartPolicy::UnlessStopped))
                    if *cond == DependCondition::CompletedSuccessfully =>
                {
                    let policy = match policy {
                        RestartPolicy::Always => "always",
                        _ => "unless-stopped",
                    };
                    self.issue(
                        key,
                        Anchor::Key,
                        format!(
                            "waits for `{dep}` to complete successfully, but `{dep}` has \
                             restart = \"{policy}\" and so never completes"
                        ),
                    );
                }
                Some(_) => {}
            }
        }
    }

    fn node_base(&self, name: &str) -> String {
        if self.config.services.contains_key(name) {
            join_key("services", name)
        } else {
            join_key("resources", name)
        }
    }

    fn cycles(&mut self) {
        // Services win over resources of the same name (that clash is reported on its own).
        let mut graph: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let known =
            |n: &str| self.config.services.contains_key(n) || self.config.resources.contains_key(n);
        for (name, res) in &self.config.resources {
            graph.insert(
                name,
                res.depends_on
                    .0
                    .keys()
                    .map(String::as_str)
                    .filter(|d| known(d))
                    .collect(),
            );
        }
        for (name, svc) in &self.config.services {
            graph.insert(
                name,
                svc.depends_on
                    .0
                    .keys()
                    .map(String::as_str)
                    .filter(|d| known(d))
                    .collect(),
            );
        }
        let mut state: HashMap<&str, u8> = HashMap::new(); // 1 = on the stack, 2 = done
        let mut seen: HashSet<Vec<&str>> = HashSet::new();
        let mut found: Vec<Vec<&str>> = Vec::new();
        for &start in graph.keys() {
            if state.contains_key(start) {
                continue;
            }
            // Iterative depth-first search: (node, index of the next edge to follow).
            let mut stack: Vec<(&str, usize)> = vec![(start, 0)];
            state.insert(start, 1);
            while let Some(top) = stack.last_mut() {
                let (node, index) = *top;
                top.1 += 1;
                let edges = graph.get(node).map(Vec::as_slice).unwrap_or(&[]);
                if let Some(&dep) = edges.get(index) {
                    match state.get(dep) {
                        None => {
                            state.insert(dep, 1);
                            stack.push((dep, 0));
                        }
                        Some(1) => {
                            let from = stack.iter().position(|(n, _)| *n == dep).unwrap_or(0);
                            let mut cycle: Vec<&str> =
                                stack[from..].iter().map(|(n, _)| *n).collect();
                            let min = cycle
                                .iter()
                                .enumerate()
                                .min_by_key(|(_, n)| **n)
                                .map_or(0, |(i, _)| i);
                            cycle.rotate_left(min);
                            if seen.insert(cycle.clone()) {
                                found.push(cycle);
                            }
                        }
                        Some(_) => {}
                    }
                } else {
                    state.insert(node, 2);
                    stack.pop();
                }
            }
        }
        for cycle in found {
            let first = cycle[0];
            let second = cycle.get(1).copied().unwrap_or(first);
            let mut text: Vec<&str> = cycle.clone();
            text.push(first);
            let key = join_key(&join_key(&self.node_base(first), "depends_on"), second);
            self.issue(
                key,
                Anchor::Key,
                format!("dependency cycle: {}", text.join(" -> ")),
            );
        }
    }

    fn routes(&mut self) {
        for (i, route) in self.config.routes.iter().enumerate() {
            let base = join_index("routes", i);
            if !route.path.starts_with('/') {
                self.issue(
                    join_key(&base, "path"),
                    Anchor::Value,
                    format!("route path `{}` must start with `/`", route.path),
                );
            }
            match (&route.service, &route.upstream) {
                (Some(_), Some(_)) => self.issue(
                    base.clone(),
                    Anchor::Value,
                    "a route takes `service` or `upstream`, not both",
                ),
                (None, None) => self.issue(
                    base.clone(),
                    Anchor::Value,
                    "a route needs a `service` or an `upstream`",
                ),
                _ => {}
            }
            if let Some(service) = &route.service
                && !self.config.services.contains_key(service)
                && !self.config.resources.contains_key(service)
            {
                self.issue(
                    join_key(&base, "service"),
                    Anchor::Value,
                    format!("route to unknown service `{service}`"),
                );
            }
            if let Some(upstream) = &route.upstream {
                let ukey = join_key(&base, "upstream");
                match upstream.0.as_slice() {
                    [] => self.issue(ukey, Anchor::Value, "the upstream list is empty"),
                    [one] => self.upstream(&ukey, one),
                    many => {
                        for (j, url) in many.iter().enumerate() {
                            self.upstream(&join_index(&ukey, j), url);
                        }
                    }
                }
            }
        }
    }

    /// `scale_to_zero` on services and resources: positive durations; a target woken by
    /// requests needs a route to it; `idle_after` at least the interval of its probes (a
    /// shorter one would put it to sleep between two probes).
    fn scale_to_zero(&mut self) {
        let services = self.config.services.iter().map(|(name, s)| {
            let probes: Vec<(&str, Duration)> = [("health", &s.health), ("liveness", &s.liveness)]
                .into_iter()
                .filter_map(|(key, p)| p.as_ref().map(|p| (key, p.interval.0)))
                .collect();
            ("services", name, s.scale_to_zero, probes)
        });
        let resources = self.config.resources.iter().map(|(name, r)| {
            let probes: Vec<(&str, Duration)> = r
                .health
                .as_ref()
                .map(|p| ("health", p.interval.0))
                .into_iter()
                .collect();
            ("resources", name, r.scale_to_zero, probes)
        });
        let targets: Vec<_> = services
            .chain(resources)
            .filter_map(|(table, name, policy, probes)| {
                policy.map(|policy| {
                    (
                        join_key(&join_key(table, name), "scale_to_zero"),
                        name,
                        policy,
                        probes,
                    )
                })
            })
            .collect();
        for (base, name, policy, probes) in targets {
            if policy.idle_after.0.is_zero() {
                self.issue(
                    join_key(&base, "idle_after"),
                    Anchor::Value,
                    "`idle_after` must be longer than 0s",
                );
            }
            if policy.wake_timeout.0.is_zero() {
                self.issue(
                    join_key(&base, "wake_timeout"),
                    Anchor::Value,
                    "`wake_timeout` must be longer than 0s",
                );
            }
            for (probe, interval) in probes {
                if policy.idle_after.0 < interval {
                    self.issue(
                        join_key(&base, "idle_after"),
                        Anchor::Value,
                        format!(
                            "`idle_after` ({}) is shorter than the `{probe}` probe's interval ({}): \
                             `{name}` would be put to sleep between two probes",
                            policy.idle_after,
                            super::types::Dur(interval)
                        ),
                    );
                }
            }
            let routed = self
                .config
                .routes
                .iter()
                .any(|r| r.service.as_deref() == Some(name.as_str()));
            if policy.wake == super::model::WakeMode::Request && !routed {
                self.issue(
                    base,
                    Anchor::Key,
                    format!(
                        "`{name}` has `scale_to_zero` but no route reaches it, so no request can \
                         wake it: add a [[routes]] entry with service = \"{name}\", or set \
                         wake = \"manual\" (woken by `kinfra runtime wake` and its dependents)"
                    ),
                );
            }
        }
    }

    /// One upstream URL of a route: its references, and its form as the proxy reads it.
    fn upstream(&mut self, key: &str, url: &str) {
        let before = self.issues.len();
        self.refs(key, url, RefScope::Route);
        if self.issues.len() == before
            && let Some(problem) = upstream_problem(url)
        {
            self.issue(key.into(), Anchor::Value, problem);
        }
    }

    fn ports(&mut self) {
        let listen_port = |addr: Option<&String>| {
            addr.and_then(|a| a.parse::<SocketAddr>().ok())
                .map(|a| a.port())
        };
        let mut claims: Vec<(String, u16)> = Vec::new();
        let (d, p) = (&self.config.dashboard, &self.config.proxy);
        if d.enabled {
            claims
                .extend(listen_port(Some(&d.listen)).map(|port| ("dashboard.listen".into(), port)));
        }
        if p.enabled {
            claims.extend(listen_port(p.http.as_ref()).map(|port| ("proxy.http".into(), port)));
            claims.extend(listen_port(p.https.as_ref()).map(|port| ("proxy.https".into(), port)));
        }
        for (name, svc) in &self.config.services {
            if let Some(PortSpec::Fixed(port)) = svc.port {
                claims.push((join_key(&join_key("services", name), "port"), port));
            }
        }
        for (name, res) in &self.config.resources {
            if let Some(PortSpec::Fixed(port)) = res.port {
                claims.push((join_key(&join_key("resources", name), "port"), port));
            }
        }
        let mut first: HashMap<u16, String> = HashMap::new();
        for (key, port) in claims {
            if port == 0 {
                continue;
            }
            match first.get(&port) {
                Some(owner) => {
                    let message = format!("port {port} is also used by {owner}");
                    self.issue(key, Anchor::Value, message);
                }
                None => {
                    first.insert(port, key);
                }
            }
        }
    }

    fn acme(&mut self) {
        let Some(acme) = &self.config.acme else {
            return;
        };
        if !self.config.store.enabled {
            self.issue(
                "acme".into(),
                Anchor::Key,
                "ACME keeps its account and certificates in the store: it needs [store] enabled = true",
            );
        }
        if !self.config.proxy.enabled || self.config.proxy.https.is_none() {
            self.issue(
                "acme".into(),
                Anchor::Key,
                "ACME certificates are served by the proxy's HTTPS listener: set [proxy] https = \"ADDR:443\"",
            );
        }
        if acme.domains.is_empty() {
            self.issue(
                "acme.domains".into(),
                Anchor::Value,
                "ACME needs at least one domain",
            );
        }
        for (i, domain) in acme.domains.iter().enumerate() {
            if domain.trim().is_empty() {
                self.issue(join_index("acme.domains", i), Anchor::Value, "empty domain");
            } else if let Some(problem) = acme_domain_problem(domain) {
                self.issue(join_index("acme.domains", i), Anchor::Value, problem);
            }
        }
        if let Some(email) = &acme.email
            && (!email.contains('@') || email.contains(char::is_whitespace))
        {
            self.issue(
                "acme.email".into(),
                Anchor::Value,
                format!("`{email}` is not an email address"),
            );
        }
        if !acme.directory.starts_with("https://") {
            self.issue(
                "acme.directory".into(),
                Anchor::Value,
                "the ACME directory must be an https:// URL",
            );
        } else if let Err(e) = Url::parse(&acme.directory) {
            self.issue(
                "acme.directory".into(),
                Anchor::Value,
                format!("invalid ACME directory `{}`: {e}", acme.directory),
            );
        }
        if acme.retry_min.0.is_zero() {
            self.issue(
                "acme.retry_min".into(),
                Anchor::Value,
                "must be more than 0",
            );
        }
        if acme.retry_max.0 < acme.retry_min.0 {
            self.issue(
                "acme.retry_max".into(),
                Anchor::Value,
                "must not be less than acme.retry_min",
            );
        }
        if acme.check_interval.0.is_zero() {
            self.issue(
                "acme.check_interval".into(),
                Anchor::Value,
                "must be more than 0",
            );
        }
        if acme.orders_per_hour == 0 {
            self.issue(
                "acme.orders_per_hour".into(),
                Anchor::Value,
                "must be at least 1",
            );
        }
    }

    fn store(&mut self) {
        let st = &self.config.store;
        if !st.enabled {
            return;
        }
        if let Some(problem) = st.url.as_deref().and_then(store_url_problem) {
            self.issue("store.url".into(), Anchor::Value, problem);
        }
        let names = [
            ("store.namespace", &st.namespace),
            ("store.database", &st.database),
            ("store.shared_database", &st.shared_database),
            ("store.user_namespace", &st.user_namespace),
            ("store.user_database", &st.user_database),
        ];
        for (key, value) in names {
            if let Some(problem) = name_problem(value) {
                self.issue(key.into(), Anchor::Value, problem);
            }
        }
        if (&st.namespace, &st.database) == (&st.user_namespace, &st.user_database) {
            self.issue(
                "store.user_database".into(),
                Anchor::Value,
                "the user's namespace/database must differ from kinfra's own",
            );
        }
        if (&st.namespace, &st.shared_database) == (&st.user_namespace, &st.user_database) {
            self.issue(
                "store.shared_database".into(),
                Anchor::Value,
                "the shared database must differ from the user's namespace/database",
            );
        }
        if st.event_retention == 0 {
            self.issue(
                "store.event_retention".into(),
                Anchor::Value,
                "store.event_retention must be at least 1",
            );
        }
        if st.run_retention == 0 {
            self.issue(
                "store.run_retention".into(),
                Anchor::Value,
                "store.run_retention must be at least 1",
            );
        }
        if st.connect_timeout.0.is_zero() {
            self.issue(
                "store.connect_timeout".into(),
                Anchor::Value,
                "store.connect_timeout must be more than 0",
            );
        }
    }

    /// `[node] name` and every `nodes = [...]` list: node names are subject tokens.
    fn node(&mut self) {
        if let Some(name) = &self.config.node.name
            && let Some(problem) = super::model::node_name_problem(name)
        {
            self.issue("node.name".into(), Anchor::Value, problem);
        }
        if self.config.node.heartbeat.0.is_zero() {
            self.issue(
                "node.heartbeat".into(),
                Anchor::Value,
                "the heartbeat interval must be longer than zero",
            );
        }
        let lists: Vec<(String, &Vec<String>)> = self
            .config
            .services
            .iter()
            .filter_map(|(name, s)| {
                s.nodes
                    .as_ref()
                    .map(|n| (join_key(&join_key("services", name), "nodes"), n))
            })
            .chain(self.config.resources.iter().filter_map(|(name, r)| {
                r.nodes
                    .as_ref()
                    .map(|n| (join_key(&join_key("resources", name), "nodes"), n))
            }))
            .collect();
        for (key, nodes) in lists {
            if nodes.is_empty() {
                self.issue(
                    key.clone(),
                    Anchor::Value,
                    "an empty `nodes` list runs it nowhere: list at least one node name, or leave `nodes` out to run it on every node",
                );
            }
            for (i, node) in nodes.iter().enumerate() {
                if let Some(problem) = super::model::node_name_problem(node) {
                    self.issue(join_index(&key, i), Anchor::Value, problem);
                }
            }
        }
    }

    fn bus(&mut self) {
        let bus = &self.config.bus;
        if !bus.enabled {
            return;
        }
        if let Some(urls) = bus.url.as_deref().filter(|u| !u.trim().is_empty()) {
            for url in urls.split(',') {
                if let Some(problem) = bus_url_problem(url.trim()) {
                    self.issue("bus.url".into(), Anchor::Value, problem);
                }
            }
        }
        match (&bus.tls_cert, &bus.tls_key) {
            (Some(_), None) => self.issue(
                "bus.tls_cert".into(),
                Anchor::Value,
                "a client certificate needs its key: set bus.tls_key as well",
            ),
            (None, Some(_)) => self.issue(
                "bus.tls_key".into(),
                Anchor::Value,
                "a client key needs its certificate: set bus.tls_cert as well",
            ),
            _ => {}
        }
    }
}

/// A URL for messages, without `user:password@`.
fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
    }
}

/// True when `text` has `${...}` references (or `$$`): its final form is known only when
/// a service is spawned.
fn has_references(text: &str) -> bool {
    text.contains('$')
}

/// Why the proxy would refuse `text` as an upstream (the form `http[s]://HOST[:PORT]`, or
/// `HOST:PORT` for plain HTTP), if it would. Names are not resolved here: that is for the
/// machine the runtime runs on.
fn upstream_problem(text: &str) -> Option<String> {
    if has_references(text) {
        return None;
    }
    let trimmed = text.trim();
    let full = if trimmed.contains("://") {
        trimmed.to_owned()
    } else {
        format!("http://{trimmed}")
    };
    let shown = redacted(trimmed);
    let url = match Url::parse(&full) {
        Ok(url) => url,
        Err(e) => return Some(format!("invalid upstream `{shown}`: {e}")),
    };
    let problem = if !matches!(url.scheme(), "http" | "https") {
        "only http:// and https:// upstreams are supported"
    } else if url.host_str().is_none_or(str::is_empty) {
        "it has no host"
    } else if !url.username().is_empty() || url.password().is_some() {
        "an upstream URL must not have user info"
    } else if !url.path().trim_matches('/').is_empty()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        "an upstream URL must not have a path (the request's path is forwarded as it is)"
    } else {
        return None;
    };
    Some(format!("invalid upstream `{shown}`: {problem}"))
}

/// Why the prober could not use an `http://` probe URL, if it could not.
fn probe_url_problem(text: &str) -> Option<String> {
    if has_references(text) {
        return None;
    }
    match Url::parse(text) {
        Ok(url) if url.host_str().is_none_or(str::is_empty) => {
            Some(format!("invalid probe URL `{text}`: it has no host"))
        }
        Ok(_) => None,
        Err(e) => Some(format!("invalid probe URL `{text}`: {e}")),
    }
}

/// Why the store could not open `url`, if it could not (the forms it takes: `mem://`,
/// `surrealkv://PATH`, `ws://HOST[:PORT]`, `wss://HOST[:PORT]`).
fn store_url_problem(url: &str) -> Option<String> {
    let url = url.trim();
    let shown = redacted(url);
    if url == "mem://" || url == "memory" {
        return None;
    }
    if let Some(path) = url.strip_prefix("surrealkv://") {
        return if path.is_empty() {
            Some(format!(
                "invalid store url `{shown}`: surrealkv:// needs a path, as in surrealkv://db"
            ))
        } else if path.contains('?') {
            Some(format!(
                "invalid store url `{shown}`: options after `?` are not supported"
            ))
        } else {
            None
        };
    }
    if url.starts_with("ws://") || url.starts_with("wss://") {
        return match Url::parse(url) {
            Ok(parsed) if parsed.host_str().is_none_or(str::is_empty) => {
                Some(format!("invalid store url `{shown}`: it has no host"))
            }
            Ok(_) => None,
            Err(e) => Some(format!("invalid store url `{shown}`: {e}")),
        };
    }
    Some(format!(
        "unsupported store url `{shown}`: expected surrealkv://PATH, mem://, ws://HOST:PORT or \
         wss://HOST:PORT"
    ))
}

/// Why the NATS client would refuse `url` (one entry of `bus.url`), if it would.
fn bus_url_problem(url: &str) -> Option<String> {
    if url.is_empty() {
        return Some("an empty entry in the list of URLs".into());
    }
    let shown = redacted(url);
    let full = if url.contains("://") {
        url.to_owned()
    } else {
        format!("nats://{url}")
    };
    match Url::parse(&full) {
        Ok(parsed) if !matches!(parsed.scheme(), "nats" | "tls" | "ws" | "wss") => Some(format!(
            "invalid bus url `{shown}`: expected nats://, tls://, ws:// or wss://"
        )),
        Ok(parsed) if parsed.host_str().is_none_or(str::is_empty) => {
            Some(format!("invalid bus url `{shown}`: it has no host"))
        }
        Ok(_) => None,
        Err(e) => Some(format!("invalid bus url `{shown}`: {e}")),
    }
}

/// Why `domain` cannot be on an ACME certificate, if it cannot.
fn acme_domain_problem(domain: &str) -> Option<String> {
    let d = domain.trim().trim_end_matches('.');
    let name = d.strip_prefix("*.").unwrap_or(d);
    if d.starts_with("*.") {
        return Some(format!(
            "`{domain}`: wildcard certificates need the DNS-01 challenge, which is not supported"
        ));
    }
    if d.parse::<std::net::IpAddr>().is_ok() {
        return Some(format!(
            "`{domain}`: IP addresses are not supported, use a host name"
        ));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if name.len() > 253 || !name.contains('.') || !name.split('.').all(label_ok) {
        return Some(format!("`{domain}` is not a valid domain name"));
    }
    None
}

impl Checker<'_> {
    /// `[tunnel]`: a known provider, the account and zone, at least one hostname (a bare
    /// DNS name, no scheme, port or path), the token one way, a metrics address that parses,
    /// the proxy it publishes, and the service name `tunnel` left to it.
    fn tunnel(&mut self) {
        let Some(t) = &self.config.tunnel else {
            return;
        };
        if t.provider_id() != "cloudflare" {
            self.issue(
                "tunnel.provider".into(),
                Anchor::Value,
                format!(
                    "unknown tunnel provider `{}`: expected `cloudflare`",
                    t.provider_id()
                ),
            );
        }
        if t.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
            self.issue(
                "tunnel.name".into(),
                Anchor::Value,
                "the tunnel name is empty",
            );
        }
        for (key, value) in [("account_id", &t.account_id), ("zone_id", &t.zone_id)] {
            match value.as_deref().map(str::trim) {
                None => self.issue(
                    "tunnel".into(),
                    Anchor::Key,
                    format!(
                        "`tunnel.{key}` is required (the Cloudflare {})",
                        &key[..key.len() - 3]
                    ),
                ),
                Some("") => self.issue(
                    format!("tunnel.{key}"),
                    Anchor::Value,
                    format!("`{key}` is empty"),
                ),
                Some(_) => {}
            }
        }
        if t.hostnames.is_empty() {
            self.issue(
                "tunnel.hostnames".into(),
                Anchor::Value,
                "a tunnel needs at least one hostname (`hostnames = [\"app.example.com\"]`)",
            );
        }
        let mut seen = HashSet::new();
        for (i, host) in t.hostnames.iter().enumerate() {
            let key = join_index("tunnel.hostnames", i);
            if let Some(problem) = tunnel_hostname_problem(host) {
                self.issue(key, Anchor::Value, problem);
            } else if !seen.insert(host.to_ascii_lowercase()) {
                self.issue(key, Anchor::Value, format!("`{host}` is listed twice"));
            }
        }
        match (&t.token, &t.token_file) {
            (Some(_), Some(_)) => self.issue(
                "tunnel.token_file".into(),
                Anchor::Key,
                "`token` and `token_file` are both set; give the token one way",
            ),
            (None, None) => self.issue(
                "tunnel".into(),
                Anchor::Key,
                "the Cloudflare API token is required: set `tunnel.token` (`${VAR}` reads it from the environment) or `tunnel.token_file`",
            ),
            (Some(token), None) if token.expose().trim().is_empty() => {
                self.issue("tunnel.token".into(), Anchor::Value, "the token is empty")
            }
            _ => {}
        }
        if let Some(url) = &t.base_url
            && !url.contains("${")
            && Url::parse(url).is_err()
        {
            self.issue(
                "tunnel.base_url".into(),
                Anchor::Value,
                format!("invalid URL `{url}`"),
            );
        }
        if t.cloudflared
            .as_deref()
            .is_some_and(|c| c.trim().is_empty())
        {
            self.issue(
                "tunnel.cloudflared".into(),
                Anchor::Value,
                "the cloudflared program is empty",
            );
        }
        if let Some(metrics) = &t.metrics
            && metrics.parse::<SocketAddr>().is_err()
        {
            self.issue(
                "tunnel.metrics".into(),
                Anchor::Value,
                format!("invalid address `{metrics}`: expected IP:PORT (`127.0.0.1:2000`)"),
            );
        }
        if !self.config.proxy.enabled || self.config.proxy.http.is_none() {
            self.issue(
                "tunnel".into(),
                Anchor::Key,
                "a tunnel forwards to the proxy's HTTP listener: set [proxy] enabled = true and http = \"ADDR:PORT\"",
            );
        }
        if self.config.services.contains_key("tunnel") {
            self.issue(
                "services.tunnel".into(),
                Anchor::Key,
                "the name `tunnel` is taken by [tunnel] (cloudflared runs as the service `tunnel`); rename this service",
            );
        }
    }
}

/// Why `host` is not a tunnel hostname (a DNS name; `*.` only as the first label; no scheme,
/// port or path), or `None`.
fn tunnel_hostname_problem(host: &str) -> Option<String> {
    if host.trim().is_empty() {
        return Some("empty hostname".into());
    }
    if host.contains("://") {
        return Some(format!(
            "`{host}` has a scheme: give the bare hostname (`app.example.com`)"
        ));
    }
    if host.contains('/') {
        return Some(format!(
            "`{host}` has a path: give the bare hostname (paths come from [[routes]])"
        ));
    }
    if host.contains(':') {
        return Some(format!(
            "`{host}` has a port: give the bare hostname (cloudflared refuses ports)"
        ));
    }
    let rest = host.strip_prefix("*.").unwrap_or(host);
    let labels: Vec<&str> = rest.split('.').collect();
    if labels.len() < 2 {
        return Some(format!(
            "`{host}` is not a public hostname: expected a name in the zone (`app.example.com`)"
        ));
    }
    for label in labels {
        if label.is_empty()
            || label.len() > 63
            || label.starts_with('-')
            || label.ends_with('-')
            || !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Some(format!(
                "`{host}` is not a valid hostname (letters, digits and `-` per label; `*.` only as the first label)"
            ));
        }
    }
    None
}

impl Checker<'_> {
    /// `[image]`: each include a relative path inside the config's directory (no absolute
    /// path, no `..`), listed once. Whether it exists is checked by `kinfra image build`.
    fn image(&mut self) {
        let Some(image) = &self.config.image else {
            return;
        };
        let mut seen = HashSet::new();
        for (i, path) in image.include.iter().enumerate() {
            let key = join_index("image.include", i);
            let text = path.to_string_lossy();
            let problem = if text.trim().is_empty() {
                Some("an include path is empty".to_owned())
            } else if path.is_absolute() {
                Some(format!(
                    "`{text}` is absolute; include paths are relative to the config file's \
                     directory (they land under /app)"
                ))
            } else if path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                Some(format!(
                    "`{text}` leaves the config file's directory (`..`)"
                ))
            } else if !seen.insert(text.trim_end_matches('/').to_owned()) {
                Some(format!("`{text}` is listed twice"))
            } else {
                None
            };
            if let Some(problem) = problem {
                self.issue(key, Anchor::Value, problem);
            }
        }
    }
}

#[cfg(test)]
mod acme_tests {
    use super::acme_domain_problem;

    #[test]
    fn acme_domains_are_checked() {
        assert!(acme_domain_problem("app.example.com").is_none());
        assert!(acme_domain_problem("app.example.com.").is_none());
        assert!(acme_domain_problem("localhost").is_some());
        assert!(acme_domain_problem("10.0.0.1").is_some());
        assert!(acme_domain_problem("*.example.com").is_some());
        assert!(acme_domain_problem("a_b.example.com").is_some());
        assert!(acme_domain_problem("-a.example.com").is_some());
        assert!(acme_domain_problem("a..example.com").is_some());
    }
}
