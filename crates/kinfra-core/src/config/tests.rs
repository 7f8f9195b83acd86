//! Tests of the whole loading pipeline: parse, override, deserialize, validate.

use super::*;
use std::time::Duration;

fn env_of(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn origin_for(format: Format) -> &'static str {
    match format {
        Format::Toml => "kinfra.toml",
        Format::Yaml => "kinfra.yaml",
        Format::Json => "kinfra.json",
    }
}

fn load(format: Format, text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    Config::parse(
        text,
        format,
        origin_for(format),
        Path::new("/srv/app"),
        &env_of(env),
    )
}

fn errors(format: Format, text: &str) -> Vec<ConfigError> {
    match load(format, text, &[]) {
        Ok(config) => panic!("expected errors, the config loaded: {config:?}\n{text}"),
        Err(e) => e.0,
    }
}

/// One expected error: line, key, a fragment of the message.
type Want = (Option<usize>, Option<&'static str>, &'static str);

fn check_case(format: Format, text: &str, want: &[Want]) {
    let got = errors(format, text);
    let shown: Vec<String> = got.iter().map(ToString::to_string).collect();
    assert_eq!(
        got.len(),
        want.len(),
        "wrong number of errors for\n{text}\ngot:\n{}",
        shown.join("\n")
    );
    for (e, (line, key, fragment)) in got.iter().zip(want) {
        assert_eq!(e.origin, origin_for(format), "{e}");
        assert_eq!(e.line, *line, "line of {e}\nin\n{text}");
        assert_eq!(e.key.as_deref(), *key, "key of {e}");
        assert!(e.message.contains(fragment), "`{fragment}` not in {e}");
        if line.is_some() {
            assert!(e.column.is_some(), "no column in {e}");
        }
    }
}

const API: &str = "[services.api]\ncommand = \"serve\"\nport = 8080\n";

#[test]
fn invalid_toml_files() {
    let cases: Vec<(String, Vec<Want>)> = vec![
        // Unknown top-level key, with a suggestion.
        (
            "[project]\nname = \"x\"\n\nprojet = 1\n".into(),
            vec![(
                Some(4),
                Some("project.projet"),
                "unknown key `projet` in project; expected one of: name, state_dir",
            )],
        ),
        (
            "projekt = 1\n".into(),
            vec![(
                Some(1),
                Some("projekt"),
                "unknown key `projekt` at the top level; expected one of: project, env, dashboard",
            )],
        ),
        // Unknown nested key: points at the key, lists what fits, suggests the near one.
        (
            format!("{API}health = {{ http = \"/\", intervl = \"2s\" }}\n"),
            vec![(
                Some(4),
                Some("services.api.health.intervl"),
                "unknown key `intervl` in services.api.health; expected one of: http, tcp, exec, \
                 status, body, initial_delay, interval, timeout, success_threshold, \
                 failure_threshold (did you mean `interval`?)",
            )],
        ),
        // Wrong type.
        (
            "[services.api]\ncommand = 5\n".into(),
            vec![(
                Some(2),
                Some("services.api.command"),
                "wrong type: expected a shell command string or a list of arguments, found integer `5`",
            )],
        ),
        (
            "[dashboard]\nenabled = \"yes\"\n".into(),
            vec![(Some(2), Some("dashboard.enabled"), "wrong type: expected a boolean")],
        ),
        // Bad duration, in a table of its own.
        (
            format!("{API}\n[services.api.health]\nhttp = \"/\"\ninterval = \"fast\"\n"),
            vec![(
                Some(7),
                Some("services.api.health.interval"),
                "invalid duration `fast`: expected a number at `fast`",
            )],
        ),
        // Bad port.
        (
            "[services.api]\ncommand = \"x\"\nport = 70000\n".into(),
            vec![(
                Some(3),
                Some("services.api.port"),
                "invalid port `70000`: expected 1-65535 or \"auto\"",
            )],
        ),
        // Bad signal; unknown restart policy.
        (
            format!("{API}stop_signal = \"SIGFOO\"\nrestart = \"sometimes\"\n"),
            vec![
                (Some(4), Some("services.api.stop_signal"), "unknown signal `SIGFOO`"),
                (
                    Some(5),
                    Some("services.api.restart"),
                    "unknown value `sometimes`; expected one of: no, on-failure, always, unless-stopped",
                ),
            ],
        ),
        // Missing command: at the service's key.
        (
            "\n[services.api]\nport = 1\n".into(),
            vec![(Some(2), Some("services.api"), "missing required key `command`")],
        ),
        // Cycle of 2 and of 3, each reported once, in full.
        (
            "[services.a]\ncommand = \"x\"\ndepends_on = [\"b\"]\n\
             [services.b]\ncommand = \"x\"\ndepends_on = { a = \"healthy\" }\n"
                .into(),
            vec![(
                Some(3),
                Some("services.a.depends_on.b"),
                "dependency cycle: a -> b -> a",
            )],
        ),
        (
            "[services.c]\ncommand = \"x\"\ndepends_on = [\"a\"]\n\
             [services.b]\ncommand = \"x\"\ndepends_on = [\"c\"]\n\
             [services.a]\ncommand = \"x\"\ndepends_on = [\"b\"]\n"
                .into(),
            vec![(
                Some(9),
                Some("services.a.depends_on.b"),
                "dependency cycle: a -> b -> c -> a",
            )],
        ),
        // A cycle through a resource, and a self-dependency.
        (
            "[services.api]\ncommand = \"x\"\ndepends_on = { db = \"started\" }\n\
             [resources.db]\ntemplate = \"postgres\"\ndepends_on = [\"api\"]\n\
             [services.loner]\ncommand = \"x\"\ndepends_on = [\"loner\"]\n"
                .into(),
            vec![
                (
                    Some(3),
                    Some("services.api.depends_on.db"),
                    "dependency cycle: api -> db -> api",
                ),
                (
                    Some(9),
                    Some("services.loner.depends_on.loner"),
                    "dependency cycle: loner -> loner",
                ),
            ],
        ),
        // depends_on an unknown name.
        (
            format!("{API}depends_on = {{ cache = \"healthy\" }}\n"),
            vec![(
                Some(4),
                Some("services.api.depends_on.cache"),
                "depends on `cache`, which is neither a service nor a resource",
            )],
        ),
        // Routes: unknown service, both targets, neither, path without `/`.
        (
            format!(
                "{API}[[routes]]\npath = \"/a\"\nservice = \"nope\"\n\
                 [[routes]]\npath = \"/b\"\nservice = \"api\"\nupstream = \"http://127.0.0.1:1\"\n\
                 [[routes]]\npath = \"/c\"\n\
                 [[routes]]\npath = \"d\"\nservice = \"api\"\n"
            ),
            vec![
                (Some(6), Some("routes[0].service"), "route to unknown service `nope`"),
                (Some(7), Some("routes[1]"), "a route takes `service` or `upstream`, not both"),
                (Some(11), Some("routes[2]"), "a route needs a `service` or an `upstream`"),
                (Some(14), Some("routes[3].path"), "route path `d` must start with `/`"),
            ],
        ),
        // Duplicate fixed ports, naming both places; port 0 and "auto" never clash.
        (
            "[dashboard]\nlisten = \"127.0.0.1:0\"\n[proxy]\nhttp = \"127.0.0.1:8080\"\n\
             [services.api]\ncommand = \"x\"\nport = 8080\n\
             [services.web]\ncommand = \"x\"\nport = \"auto\"\n\
             [resources.db]\ntemplate = \"postgres\"\nport = 8080\n"
                .into(),
            vec![
                (Some(7), Some("services.api.port"), "port 8080 is also used by proxy.http"),
                (Some(13), Some("resources.db.port"), "port 8080 is also used by proxy.http"),
            ],
        ),
        // Bad listen addresses.
        (
            "[dashboard]\nlisten = \"localhost:9000\"\n[proxy]\nhttps = \"0.0.0.0\"\n".into(),
            vec![
                (
                    Some(2),
                    Some("dashboard.listen"),
                    "invalid listen address `localhost:9000`",
                ),
                (Some(4), Some("proxy.https"), "invalid listen address `0.0.0.0`"),
            ],
        ),
        // Probes: two kinds, no kind, own port missing, zero thresholds.
        (
            format!("{API}health = {{ http = \"/\", tcp = 5432 }}\nliveness = {{ interval = \"1s\" }}\n"),
            vec![
                (
                    Some(4),
                    Some("services.api.health"),
                    "a probe takes exactly one of `http`, `tcp` or `exec`, this one has `http` and `tcp`",
                ),
                (
                    Some(5),
                    Some("services.api.liveness"),
                    "a probe needs one of `http`, `tcp` or `exec`",
                ),
            ],
        ),
        (
            "[services.w]\ncommand = \"x\"\nhealth = { tcp = true }\n\
             liveness = { http = \"/up\", failure_threshold = 0 }\n"
                .into(),
            vec![
                (
                    Some(3),
                    Some("services.w.health.tcp"),
                    "`tcp = true` probes the service's own port, but the service has no `port`",
                ),
                (
                    Some(4),
                    Some("services.w.liveness.http"),
                    "probes the service's own port, but the service has no `port`",
                ),
                (
                    Some(4),
                    Some("services.w.liveness.failure_threshold"),
                    "`failure_threshold` must be at least 1",
                ),
            ],
        ),
        // Interpolation: unknown service, service without a port, bad syntax, ${PORT} without
        // a port. Unknown environment variables are fine.
        (
            "[services.web]\ncommand = \"x\"\n\
             [services.api]\ncommand = \"serve --db ${services.nope.port}\"\n\
             args = [\"--web\", \"${services.web.port}\"]\n\
             env = { A = \"${UNSET_VAR}\", B = \"${oops\", C = \"${PORT}\", D = \"${PORT:-80}\" }\n"
                .into(),
            vec![
                (
                    Some(4),
                    Some("services.api.command"),
                    "`${services.nope.port}` names an unknown service `nope`",
                ),
                (
                    Some(5),
                    Some("services.api.args[1]"),
                    "names service `web`, which has no `port`",
                ),
                (Some(6), Some("services.api.env.B"), "unterminated `${`"),
                (
                    Some(6),
                    Some("services.api.env.C"),
                    "`${PORT}` is used, but service `api` has no `port`",
                ),
            ],
        ),
        (
            format!(
                "{API}[resources.db]\ntemplate = \"redis\"\n[[routes]]\npath = \"/\"\n\
                 upstream = [\"http://127.0.0.1:${{services.api.port}}\", \"http://${{resources.cache.url}}\"]\n"
            ),
            vec![(
                Some(8),
                Some("routes[0].upstream[1]"),
                "`${resources.cache.url}` names an unknown resource `cache`",
            )],
        ),
        // `cwd` (another name for `working_dir`) and probe commands are checked too.
        (
            format!(
                "{API}cwd = \"/srv/${{services.gone.port}}\"\n\
                 health = {{ exec = [\"check\", \"${{resources.db.port\"] }}\n"
            ),
            vec![
                (
                    Some(4),
                    Some("services.api.working_dir"),
                    "names an unknown service `gone`",
                ),
                (Some(5), Some("services.api.health.exec[1]"), "unterminated `${`"),
            ],
        ),
        // Names.
        (
            "[services.\"bad name\"]\ncommand = \"x\"\n[services.\"\"]\ncommand = \"y\"\n".into(),
            vec![
                (Some(3), Some("services.\"\""), "a name must not be empty"),
                (
                    Some(1),
                    Some("services.\"bad name\""),
                    "name `bad name` contains ` `",
                ),
            ],
        ),
        (
            format!("{API}[resources.api]\ntemplate = \"redis\"\n"),
            vec![(
                Some(4),
                Some("resources.api"),
                "`api` is both a service and a resource",
            )],
        ),
        // Empty command.
        (
            "[services.api]\ncommand = \"  \"\n[services.b]\ncommand = []\n".into(),
            vec![
                (Some(2), Some("services.api.command"), "the command is empty"),
                (Some(4), Some("services.b.command"), "the command is empty"),
            ],
        ),
        // ACME without domains.
        (
            "[proxy]\nhttps = \"127.0.0.1:8443\"\n[acme]\nemail = \"a@example.com\"\ndomains = []\n"
                .into(),
            vec![(Some(5), Some("acme.domains"), "ACME needs at least one domain")],
        ),
        (
            "[acme]\nemail = \"a@example.com\"\n".into(),
            vec![(Some(1), Some("acme"), "missing required key `domains`")],
        ),
        // ACME with nowhere to serve or keep its certificates.
        (
            "[store]\nenabled = false\n[acme]\ndomains = [\"a.example.com\"]\n".into(),
            vec![
                (Some(3), Some("acme"), "it needs [store] enabled = true"),
                (Some(3), Some("acme"), "set [proxy] https"),
            ],
        ),
        // Backoff.
        (
            format!("{API}backoff = {{ factor = 0.5, jitter = 2 }}\n"),
            vec![
                (
                    Some(4),
                    Some("services.api.backoff.factor"),
                    "backoff factor 0.5 must be at least 1",
                ),
                (
                    Some(4),
                    Some("services.api.backoff.jitter"),
                    "backoff jitter 2 must be between 0 and 1",
                ),
            ],
        ),
        // Waiting for completion of something that never completes.
        (
            "[services.migrate]\ncommand = \"x\"\nrestart = \"always\"\n\
             [services.api]\ncommand = \"x\"\ndepends_on = { migrate = \"completed_successfully\" }\n"
                .into(),
            vec![(
                Some(6),
                Some("services.api.depends_on.migrate"),
                "has restart = \"always\" and so never completes",
            )],
        ),
        // Syntax error.
        (
            "[services.api]\ncommand = \"x\nport = 1\n".into(),
            vec![(Some(2), None, "invalid TOML")],
        ),
    ];
    for (text, want) in &cases {
        check_case(Format::Toml, text, want);
    }
}

#[test]
fn name_too_long_has_its_key() {
    let name = "s".repeat(64);
    let text = format!("[services.{name}]\ncommand = \"x\"\n");
    let errs = errors(Format::Toml, &text);
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].key, Some(format!("services.{name}")));
}

#[test]
fn healthy_without_a_probe_is_allowed() {
    let text = "[services.db]\ncommand = \"x\"\n[services.api]\ncommand = \"y\"\n\
                depends_on = { db = \"healthy\" }\n";
    let config = load(Format::Toml, text, &[]).unwrap();
    assert_eq!(
        config.services["api"].depends_on.0.get("db"),
        Some(&DependCondition::Healthy)
    );
}

#[test]
fn schema_errors_are_all_reported() {
    let text = "bogus = 1\n\
                [services.api]\ncommand = 5\nport = \"x\"\n\
                [services.web]\ncommand = \"ok\"\nhealth = { http = \"/\", interval = \"soon\" }\n\
                [resources.db]\nport = 5432\n";
    let got: Vec<(Option<usize>, Option<String>)> = errors(Format::Toml, text)
        .into_iter()
        .map(|e| (e.line, e.key))
        .collect();
    let want = vec![
        (Some(1), Some("bogus".to_owned())),
        // A wrong command is reported once, not again as missing.
        (Some(3), Some("services.api.command".to_owned())),
        (Some(4), Some("services.api.port".to_owned())),
        (Some(7), Some("services.web.health.interval".to_owned())),
        (Some(8), Some("resources.db".to_owned())),
    ];
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(sorted, want, "{got:?}");
}

#[test]
fn invalid_yaml_files() {
    let cases: Vec<(&str, Vec<Want>)> = vec![
        (
            "project:\n  name: demo\nservices:\n  api:\n    command: serve\n    prot: 8080\n",
            vec![(
                Some(6),
                Some("services.api.prot"),
                "unknown key `prot` in services.api",
            )],
        ),
        (
            "services:\n  api:\n    command: serve\n    port: 8080\n    health:\n      http: /\n      timeout: quick\n",
            vec![(
                Some(7),
                Some("services.api.health.timeout"),
                "invalid duration `quick`",
            )],
        ),
        (
            "services:\n  a:\n    command: x\n    depends_on: [b]\n  b:\n    command: x\n    depends_on:\n      a: healthy\n",
            vec![(
                Some(4),
                Some("services.a.depends_on.b"),
                "dependency cycle: a -> b -> a",
            )],
        ),
        (
            "services:\n  api:\n    command: x\n    restart: no\n    port: \"8080\"\nroutes:\n  - path: /\n    service: apx\n",
            vec![(
                Some(8),
                Some("routes[0].service"),
                "route to unknown service `apx`",
            )],
        ),
        (
            "services:\n  api:\n    command: [x\n",
            vec![(Some(4), None, "invalid YAML")],
        ),
        (
            "base: &b\n  command: x\nservices:\n  api: *b\n",
            vec![(Some(4), None, "aliases")],
        ),
        (
            "- a\n- b\n",
            vec![(Some(1), None, "the top level must be a table")],
        ),
    ];
    for (text, want) in &cases {
        check_case(Format::Yaml, text, want);
    }
}

#[test]
fn invalid_json_files() {
    let cases: Vec<(&str, Vec<Want>)> = vec![
        (
            "{\n  \"dashboard\": {\"listen\": \"127.0.0.1:9000\", \"tokn\": \"x\"}\n}",
            vec![(
                Some(2),
                Some("dashboard.tokn"),
                "unknown key `tokn` in dashboard",
            )],
        ),
        (
            "{\"services\": {\n  \"api\": {\"command\": \"x\",\n    \"port\": [80]}}}",
            vec![(Some(3), Some("services.api.port"), "wrong type")],
        ),
        (
            "{\"dashboard\": {\"listen\": \"127.0.0.1:7000\"},\n \"services\": {\"api\": {\"command\": \"x\", \"port\": 7000}},\n \"proxy\": {\"enabled\": false}}",
            vec![(
                Some(2),
                Some("services.api.port"),
                "port 7000 is also used by dashboard.listen",
            )],
        ),
        (
            "{\"services\": {\"api\": {\"command\": \"x\",\n \"health\": {\"http\": \"/\", \"exec\": \"true\"}, \"port\": 1}}}",
            vec![(
                Some(2),
                Some("services.api.health"),
                "this one has `http` and `exec`",
            )],
        ),
        (
            "{\"services\": {\n\"api\": {\"command\": \"x\",}}}",
            vec![(
                Some(2),
                None,
                "invalid JSON: expected a key in double quotes",
            )],
        ),
    ];
    for (text, want) in &cases {
        check_case(Format::Json, text, want);
    }
}

#[test]
fn columns_are_exact() {
    let e = &errors(
        Format::Toml,
        "[services.api]\ncommand = \"x\"\nport = 1\nhealth = { http = \"/\", interval = \"fast\" }\n",
    )[0];
    assert_eq!((e.line, e.column), (Some(4), Some(35)));
    assert_eq!(
        e.to_string(),
        "kinfra.toml:4:35: services.api.health.interval: invalid duration `fast`: expected a \
         number at `fast`"
    );
    // Columns count characters, not bytes.
    let e = &errors(
        Format::Toml,
        "[project]\nname = \"ünïcødé\"\nstat_dir = 1\n",
    )[0];
    assert_eq!((e.line, e.column), (Some(3), Some(1)));
    let e = &errors(Format::Toml, "env = { \"ü\" = \"x\", B = 5 }\n")[0];
    assert_eq!(
        (e.line, e.column, e.key.as_deref()),
        (Some(1), Some(24), Some("env.B"))
    );
    let e = &errors(
        Format::Yaml,
        "services:\n  api:\n    command: x\n    port: nope\n",
    )[0];
    assert_eq!((e.line, e.column), (Some(4), Some(11)));
}

const RICH_TOML: &str = r#"
env = { RUST_LOG = "info" }

[project]
name = "demo"
state_dir = "state"
shutdown_timeout = "45s"

[dashboard]
listen = "127.0.0.1:9001"
token = "s3cret-token"
allowed_hosts = ["demo.local"]

[proxy]
http = "127.0.0.1:9101"
https = "127.0.0.1:9443"
max_body_size = "1MiB"

[services.api]
command = "python3 -m http.server ${PORT}"
args = ["--bind", "127.0.0.1"]
port = "auto"
env = { LOG_LEVEL = "debug", DB = "${resources.db.url}" }
depends_on = { db = "healthy", migrate = "completed_successfully" }
restart = "always"
backoff = { initial = "0s", factor = 1.5, jitter = 0.0 }
crash_loop = { max_failures = 3, window = "1m30s" }
health = { http = "/healthz", interval = "2s", timeout = "1s", failure_threshold = 3, status = "200-299" }
watch = { paths = ["src"], debounce = "300ms" }
stop_signal = "SIGINT"
stop_grace = "5s"
log = { max_size = "1MiB", keep = 2 }

[services.migrate]
command = ["sh", "-c", "echo migrate"]
restart = "no"
cwd = "db"

[resources.db]
template = "postgres"
port = 5433
volumes = { pgdata = "/var/lib/postgresql/data" }
health = { tcp = 5433 }

[[routes]]
path = "/api"
service = "api"
strip_prefix = true

[[routes]]
host = "*.example.com"
upstream = ["http://127.0.0.1:7001", "http://127.0.0.1:7002"]

[bus]
url = "nats://127.0.0.1:4222"

[store]
url = "mem://"
sync = false

[acme]
email = "ops@example.com"
domains = ["example.com"]
challenge = "tls-alpn-01"
"#;

const RICH_YAML: &str = r#"
env:
  RUST_LOG: info
project:
  name: demo
  state_dir: state
  shutdown_timeout: 45s
dashboard:
  listen: 127.0.0.1:9001
  token: s3cret-token
  allowed_hosts: [demo.local]
proxy:
  http: 127.0.0.1:9101
  https: "127.0.0.1:9443"
  max_body_size: 1MiB
services:
  api:
    command: python3 -m http.server ${PORT}
    args: ["--bind", 127.0.0.1]
    port: auto
    env:
      LOG_LEVEL: debug
      DB: ${resources.db.url}
    depends_on:
      db: healthy
      migrate: completed_successfully
    restart: always
    backoff: {initial: 0s, factor: 1.5, jitter: 0.0}
    crash_loop: {max_failures: 3, window: 1m30s}
    health:
      http: /healthz
      interval: 2s
      timeout: 1s
      failure_threshold: 3
      status: 200-299
    watch:
      paths:
        - src
      debounce: 300ms
    stop_signal: SIGINT
    stop_grace: 5s
    log: {max_size: 1MiB, keep: 2}
  migrate:
    command: [sh, -c, echo migrate]
    restart: no
    cwd: db
resources:
  db:
    template: postgres
    port: 5433
    volumes: {pgdata: /var/lib/postgresql/data}
    health: {tcp: 5433}
routes:
  - path: /api
    service: api
    strip_prefix: true
  - host: "*.example.com"
    upstream:
      - http://127.0.0.1:7001
      - http://127.0.0.1:7002
bus:
  url: nats://127.0.0.1:4222
store:
  url: "mem://"
  sync: false
acme:
  email: ops@example.com
  domains: [example.com]
  challenge: tls-alpn-01
"#;

const RICH_JSON: &str = r#"{
  "env": {"RUST_LOG": "info"},
  "project": {"name": "demo", "state_dir": "state", "shutdown_timeout": "45s"},
  "dashboard": {"listen": "127.0.0.1:9001", "token": "s3cret-token", "allowed_hosts": ["demo.local"]},
  "proxy": {"http": "127.0.0.1:9101", "https": "127.0.0.1:9443", "max_body_size": "1MiB"},
  "services": {
    "api": {
      "command": "python3 -m http.server ${PORT}",
      "args": ["--bind", "127.0.0.1"],
      "port": "auto",
      "env": {"LOG_LEVEL": "debug", "DB": "${resources.db.url}"},
      "depends_on": {"db": "healthy", "migrate": "completed_successfully"},
      "restart": "always",
      "backoff": {"initial": "0s", "factor": 1.5, "jitter": 0},
      "crash_loop": {"max_failures": 3, "window": "1m30s"},
      "health": {"http": "/healthz", "interval": "2s", "timeout": "1s", "failure_threshold": 3, "status": "200-299"},
      "watch": {"paths": ["src"], "debounce": "300ms"},
      "stop_signal": "SIGINT",
      "stop_grace": "5s",
      "log": {"max_size": "1MiB", "keep": 2}
    },
    "migrate": {"command": ["sh", "-c", "echo migrate"], "restart": "no", "cwd": "db"}
  },
  "resources": {
    "db": {"template": "postgres", "port": 5433, "volumes": {"pgdata": "/var/lib/postgresql/data"}, "health": {"tcp": 5433}}
  },
  "routes": [
    {"path": "/api", "service": "api", "strip_prefix": true},
    {"host": "*.example.com", "upstream": ["http://127.0.0.1:7001", "http://127.0.0.1:7002"]}
  ],
  "bus": {"url": "nats://127.0.0.1:4222"},
  "store": {"url": "mem://", "sync": false},
  "acme": {"email": "ops@example.com", "domains": ["example.com"], "challenge": "tls-alpn-01"}
}"#;

#[test]
fn one_config_in_three_formats() {
    let mut toml = load(Format::Toml, RICH_TOML, &[]).unwrap();
    let mut yaml = load(Format::Yaml, RICH_YAML, &[]).unwrap();
    let json = load(Format::Json, RICH_JSON, &[]).unwrap();
    assert_eq!(toml.origin, "kinfra.toml");
    assert_eq!(json.base_dir, PathBuf::from("/srv/app"));
    toml.origin = json.origin.clone();
    yaml.origin = json.origin.clone();
    assert_eq!(toml, json);
    assert_eq!(yaml, json);

    // And the values are the ones written, not defaults.
    let api = &json.services["api"];
    assert_eq!(api.port, Some(PortSpec::Auto));
    assert_eq!(api.restart, RestartPolicy::Always);
    assert_eq!(api.backoff.factor, 1.5);
    assert_eq!(api.backoff.initial, Dur::from_secs(0));
    assert_eq!(api.crash_loop.window, Dur::from_secs(90));
    assert_eq!(api.stop_signal, SignalName(2));
    assert_eq!(api.log.max_size, ByteSize(1024 * 1024));
    let health = api.health.as_ref().unwrap();
    assert_eq!(health.http.as_deref(), Some("/healthz"));
    assert_eq!(health.status, StatusRange { min: 200, max: 299 });
    assert_eq!(
        api.depends_on.0.get("migrate"),
        Some(&DependCondition::CompletedSuccessfully)
    );
    let migrate = &json.services["migrate"];
    assert_eq!(
        migrate.command,
        CommandSpec::Argv(vec!["sh".into(), "-c".into(), "echo migrate".into()])
    );
    assert_eq!(migrate.restart, RestartPolicy::No);
    assert_eq!(migrate.working_dir, Some(PathBuf::from("db")));
    assert_eq!(
        json.resources["db"].health.as_ref().unwrap().tcp,
        Some(TcpTarget::Port(5433))
    );
    assert_eq!(json.routes[1].upstream.as_ref().unwrap().0.len(), 2);
    assert_eq!(json.project.shutdown_timeout.0, Duration::from_secs(45));
    assert_eq!(
        json.dashboard.token.as_ref().unwrap().expose(),
        "s3cret-token"
    );
    assert_eq!(
        json.acme.as_ref().unwrap().challenge,
        ChallengeKind::TlsAlpn01
    );
    assert!(!json.store.sync);
    assert_eq!(json.state_dir(), PathBuf::from("/srv/app/state"));
}

#[test]
fn env_overrides_are_typed() {
    let config = load(
        Format::Toml,
        RICH_TOML,
        &[
            ("KINFRA_DASHBOARD__LISTEN", "127.0.0.1:9999"),
            ("KINFRA_SERVICES__API__PORT", "8080"),
            ("KINFRA_PROJECT__STATE_DIR", "/tmp/x"),
            ("KINFRA_PROJECT__NAME", "42"),
            ("KINFRA_SERVICES__API__BACKOFF__FACTOR", "3"),
            ("KINFRA_SERVICES__API__HEALTH__FAILURE_THRESHOLD", "7"),
            ("KINFRA_SERVICES__API__ENV__LOG_LEVEL", "trace"),
            ("KINFRA_STORE__SYNC", "true"),
            ("KINFRA_ROUTES__0__PATH", "/v2"),
            ("KINFRA_DASHBOARD_TOKEN", "not-an-override"),
            ("KINFRA_LOG", "debug"),
            ("KINFRA_BIN", "/usr/bin/kinfra"),
        ],
    )
    .unwrap();
    assert_eq!(config.dashboard.listen, "127.0.0.1:9999");
    assert_eq!(
        config.dashboard.token.as_ref().unwrap().expose(),
        "s3cret-token"
    );
    let api = &config.services["api"];
    assert_eq!(api.port, Some(PortSpec::Fixed(8080)));
    assert_eq!(api.backoff.factor, 3.0);
    assert_eq!(api.health.as_ref().unwrap().failure_threshold, 7);
    assert_eq!(api.env["LOG_LEVEL"], "trace");
    assert_eq!(config.project.name, "42");
    assert_eq!(config.state_dir(), PathBuf::from("/tmp/x"));
    assert!(config.store.sync);
    assert_eq!(config.routes[0].path, "/v2");
}

#[test]
fn env_override_errors_name_the_variable() {
    let err = load(
        Format::Toml,
        API,
        &[("KINFRA_SERVICES__API__PORT", "99999")],
    )
    .unwrap_err();
    assert_eq!(err.0.len(), 1, "{err}");
    assert_eq!(
        err.0[0].to_string(),
        "KINFRA_SERVICES__API__PORT: services.api.port: invalid port `99999`: expected 1-65535 or \"auto\""
    );
    assert_eq!(err.0[0].line, None);

    // A new service from the environment alone lacks its command.
    let err = load(
        Format::Toml,
        API,
        &[("KINFRA_SERVICES__WORKER__PORT", "7000")],
    )
    .unwrap_err();
    assert_eq!(err.0.len(), 1, "{err}");
    assert_eq!(err.0[0].origin, "KINFRA_SERVICES__WORKER__PORT");
    assert_eq!(err.0[0].key.as_deref(), Some("services.worker"));
    assert!(err.0[0].message.contains("missing required key `command`"));

    // Semantic errors on overridden values name the variable too; the file's own
    // errors keep their lines.
    let text = format!("{API}[services.web]\ncommand = \"y\"\nport = 8080\n");
    let err = load(
        Format::Toml,
        &text,
        &[
            ("KINFRA_DASHBOARD__LISTEN", "nowhere"),
            ("KINFRA_SERVICES__API__HELTH__HTTP", "/"),
        ],
    )
    .unwrap_err();
    let got: Vec<(String, Option<usize>, Option<String>)> = err
        .0
        .iter()
        .map(|e| (e.origin.clone(), e.line, e.key.clone()))
        .collect();
    assert_eq!(
        got,
        vec![(
            "KINFRA_SERVICES__API__HELTH__HTTP".to_owned(),
            None,
            Some("services.api.helth".to_owned())
        )],
        "{err}"
    );
    let err = load(
        Format::Toml,
        &text,
        &[("KINFRA_DASHBOARD__LISTEN", "nowhere")],
    )
    .unwrap_err();
    let got: Vec<(String, Option<usize>, Option<String>)> = err
        .0
        .iter()
        .map(|e| (e.origin.clone(), e.line, e.key.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "KINFRA_DASHBOARD__LISTEN".to_owned(),
                None,
                Some("dashboard.listen".to_owned())
            ),
            (
                "kinfra.toml".to_owned(),
                Some(6),
                Some("services.web.port".to_owned())
            ),
        ],
        "{err}"
    );
}

#[test]
fn builder_builds_and_validates() {
    let config = Config::builder()
        .project("demo")
        .service(
            "api",
            ServiceConfig::new("python3 -m http.server ${PORT}")
                .port(PortSpec::Auto)
                .env("LOG_LEVEL", "info")
                .depends_on("db", DependCondition::Healthy)
                .restart(RestartPolicy::Always)
                .health(ProbeConfig::http("/healthz"))
                .working_dir("app"),
        )
        .resource("db", ResourceConfig::new(Template::Postgres))
        .route("/api", "api")
        .state_dir("/tmp/kinfra-test")
        .dashboard_listen("127.0.0.1:0")
        .proxy_http(None)
        .proxy_enabled(false)
        .build()
        .unwrap();
    assert_eq!(config.project.name, "demo");
    assert_eq!(config.origin, "<builder>");
    assert_eq!(config.proxy.http, None);
    assert_eq!(config.dashboard.listen, "127.0.0.1:0");
    assert_eq!(config.state_dir(), PathBuf::from("/tmp/kinfra-test"));
    let api = &config.services["api"];
    assert_eq!(api.port, Some(PortSpec::Auto));
    assert_eq!(api.env["LOG_LEVEL"], "info");
    assert_eq!(api.restart, RestartPolicy::Always);
    assert_eq!(api.working_dir, Some(PathBuf::from("app")));
    assert_eq!(
        api.health.as_ref().unwrap().http.as_deref(),
        Some("/healthz")
    );
    assert_eq!(config.routes[0].path, "/api");
    assert_eq!(config.routes[0].service.as_deref(), Some("api"));
    assert_eq!(ProbeConfig::tcp().tcp, Some(TcpTarget::OwnPort(true)));
    assert_eq!(
        ProbeConfig::exec("pg_isready").exec,
        Some(CommandSpec::Shell("pg_isready".into()))
    );

    let err = Config::builder()
        .service(
            "api",
            ServiceConfig::new("serve ${PORT}").health(ProbeConfig::tcp()),
        )
        .route("/x", "nope")
        .build()
        .unwrap_err();
    let got: Vec<(&str, Option<usize>, Option<&str>)> = err
        .0
        .iter()
        .map(|e| (e.origin.as_str(), e.line, e.key.as_deref()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("<builder>", None, Some("services.api.command")),
            ("<builder>", None, Some("services.api.health.tcp")),
            ("<builder>", None, Some("routes[0].service")),
        ],
        "{err}"
    );
}

#[test]
fn validate_uses_the_configs_origin() {
    let mut config = load(Format::Toml, API, &[]).unwrap();
    assert_eq!(config.validate(), Ok(()));
    config.services.get_mut("api").unwrap().port = Some(PortSpec::Fixed(9000));
    let err = config.validate().unwrap_err();
    assert_eq!(err.0.len(), 1);
    assert_eq!(
        err.0[0].to_string(),
        "kinfra.toml: services.api.port: port 9000 is also used by dashboard.listen"
    );
}

#[test]
fn from_file_picks_format_origin_and_base_dir() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kinfra.yaml");
    std::fs::write(&path, "project:\n  name: filed\n").unwrap();
    let config = Config::from_file_with_env(&path, &[]).unwrap();
    assert_eq!(config.project.name, "filed");
    assert_eq!(config.origin, path.display().to_string());
    assert_eq!(config.state_dir(), dir.path().join(".kinfra"));

    let bad = dir.path().join("kinfra.json");
    std::fs::write(&bad, "{\"project\": {\"nam\": 1}}").unwrap();
    let err = Config::from_file_with_env(&bad, &[]).unwrap_err();
    assert_eq!(err.0[0].origin, bad.display().to_string());
    assert_eq!((err.0[0].line, err.0[0].column), (Some(1), Some(14)));

    let missing = Config::from_file_with_env(&dir.path().join("nope.toml"), &[]).unwrap_err();
    assert!(missing.0[0].message.starts_with("cannot read the file"));
}

/// Relative file paths mean the same whatever directory the runtime is started from: they
/// resolve against the config file's directory; absolute paths and a bare `nats_server` name
/// (looked up on PATH) stay.
#[test]
fn relative_file_paths_resolve_against_the_config_directory() {
    let text = "[proxy]\npages_dir = \"pages\"\n\
                [bus]\nurl = \"nats://127.0.0.1:4222\"\ncredentials = \"secrets/app.creds\"\n\
                tls_ca = \"/etc/ca.pem\"\nnats_server = \"nats-server\"\n";
    let config = load(Format::Toml, text, &[]).unwrap();
    assert_eq!(
        config.proxy.pages_dir,
        Some(PathBuf::from("/srv/app/pages"))
    );
    assert_eq!(
        config.bus.credentials,
        Some(PathBuf::from("/srv/app/secrets/app.creds"))
    );
    assert_eq!(config.bus.tls_ca, Some(PathBuf::from("/etc/ca.pem")));
    assert_eq!(config.bus.nats_server, Some(PathBuf::from("nats-server")));
    let local = load(
        Format::Toml,
        "[bus]\nnats_server = \"bin/nats-server\"\n",
        &[],
    )
    .unwrap();
    assert_eq!(
        local.bus.nats_server,
        Some(PathBuf::from("/srv/app/bin/nats-server"))
    );
}

#[test]
fn an_empty_file_is_the_default_config() {
    for format in [Format::Toml, Format::Yaml] {
        let config = load(format, "", &[]).unwrap();
        let want = Config {
            base_dir: PathBuf::from("/srv/app"),
            origin: origin_for(format).into(),
            ..Config::default()
        };
        assert_eq!(config, want);
    }
}

#[test]
fn store_section_is_checked() {
    check_case(
        Format::Toml,
        "[store]\nurl = \"rocksdb://x\"\nuser_namespace = \"kinfra\"\n\
         user_database = \"runtime\"\nevent_retention = 0\n",
        &[
            (
                Some(2),
                Some("store.url"),
                "unsupported store url `rocksdb://x`",
            ),
            (
                Some(4),
                Some("store.user_database"),
                "must differ from kinfra's own",
            ),
            (Some(5), Some("store.event_retention"), "at least 1"),
        ],
    );
    check_case(
        Format::Toml,
        "[store]\nnamespace = \"a b\"\n",
        &[(Some(2), Some("store.namespace"), "contains ` `")],
    );
    check_case(
        Format::Toml,
        "[store]\nuser_namespace = \"kinfra\"\nshared_database = \"main\"\n",
        &[(
            Some(3),
            Some("store.shared_database"),
            "must differ from the user's namespace/database",
        )],
    );
    check_case(
        Format::Toml,
        "[store]\nshared_database = \"a.b\"\n",
        &[(Some(2), Some("store.shared_database"), "contains `.`")],
    );
    let ok = load(
        Format::Toml,
        "[store]\nurl = \"mem://\"\nevent_max_age = \"1d\"\nconnect_timeout = \"2s\"\n",
        &[],
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        ok.store.event_max_age.0,
        std::time::Duration::from_secs(86400)
    );
    assert_eq!(ok.store.namespace, "kinfra");
    assert_eq!(ok.store.user_namespace, "app");
}

#[test]
fn container_resources_are_checked() {
    check_case(
        Format::Toml,
        "[resources.box]\ntemplate = \"docker\"\nport = \"auto\"\n\
         [resources.cache]\ntemplate = \"redis\"\nimage = \"\"\njetstream = true\n\
         volumes = { \"../etc\" = \"/data\", data = \"var/lib\" }\n",
        &[
            (
                Some(1),
                Some("resources.box"),
                "the `docker` template needs an `image`",
            ),
            (
                Some(3),
                Some("resources.box.port"),
                "a published port needs `container_port`",
            ),
            (Some(6), Some("resources.cache.image"), "invalid image ``"),
            (
                Some(7),
                Some("resources.cache.jetstream"),
                "`jetstream` is only for the `nats` template",
            ),
            (
                Some(8),
                Some("resources.cache.volumes.\"../etc\""),
                "invalid volume name `../etc`",
            ),
            (
                Some(8),
                Some("resources.cache.volumes.data"),
                "invalid mount path `var/lib`",
            ),
        ],
    );
    let ok = load(
        Format::Toml,
        "[resources.cache]\ntemplate = \"redis\"\nport = \"auto\"\non_down = \"remove\"\n\
         stop_grace = \"3s\"\nvolumes = { data = \"/data\" }\n",
        &[],
    )
    .expect("a valid redis resource");
    let cache = &ok.resources["cache"];
    assert_eq!(cache.on_down, OnDown::Remove);
    assert_eq!(cache.stop_grace.0, std::time::Duration::from_secs(3));
}

/// Values that `runtime up` rejects or misuses are caught by loading already, each at its
/// line and key (what `kinfra config check` reports).
#[test]
fn values_runtime_up_rejects_are_config_errors() {
    let cases: Vec<(Format, &str, Vec<Want>)> = vec![
        (
            Format::Toml,
            "[[routes]]\npath = \"/\"\nupstream = \"http://[::1\"\n",
            vec![(
                Some(3),
                Some("routes[0].upstream"),
                "invalid upstream `http://[::1`",
            )],
        ),
        (
            Format::Toml,
            "[[routes]]\npath = \"/\"\nupstream = [\"http://u:pw@127.0.0.1:1\", \"127.0.0.1:2/x\", \"ftp://h\"]\n",
            vec![
                (
                    Some(3),
                    Some("routes[0].upstream[0]"),
                    "`http://***@127.0.0.1:1`: an upstream URL must not have user info",
                ),
                (
                    Some(3),
                    Some("routes[0].upstream[1]"),
                    "must not have a path",
                ),
                (
                    Some(3),
                    Some("routes[0].upstream[2]"),
                    "only http:// and https://",
                ),
            ],
        ),
        (
            Format::Toml,
            "[store]\nurl = \"ws://\"\n",
            vec![(Some(2), Some("store.url"), "invalid store url `ws://`")],
        ),
        (
            Format::Toml,
            "[store]\nurl = \"surrealkv://\"\n",
            vec![(Some(2), Some("store.url"), "surrealkv:// needs a path")],
        ),
        (
            Format::Toml,
            "[store]\nurl = \"mem://x\"\n",
            vec![(
                Some(2),
                Some("store.url"),
                "unsupported store url `mem://x`",
            )],
        ),
        (
            Format::Toml,
            "[services.api]\ncommand = \"x\"\nport = 1\n\
             health = { http = \"/\", interval = \"0s\", timeout = \"0\" }\n\
             liveness = { tcp = true, interval = \"0ms\" }\n",
            vec![
                (
                    Some(4),
                    Some("services.api.health.interval"),
                    "`interval` must be more than 0",
                ),
                (
                    Some(4),
                    Some("services.api.health.timeout"),
                    "`timeout` must be more than 0",
                ),
                (
                    Some(5),
                    Some("services.api.liveness.interval"),
                    "`interval` must be more than 0",
                ),
            ],
        ),
        (
            Format::Toml,
            "[resources.db]\ntemplate = \"redis\"\nhealth = { tcp = 6379, interval = \"0s\" }\n",
            vec![(
                Some(3),
                Some("resources.db.health.interval"),
                "must be more than 0",
            )],
        ),
        (
            Format::Toml,
            "[services.api]\ncommand = \"x\"\nhealth = { http = \"https://127.0.0.1/\" }\n\
             liveness = { http = \"http://127.0.0.1:99999/\" }\n",
            vec![
                (
                    Some(3),
                    Some("services.api.health.http"),
                    "probes speak plain HTTP",
                ),
                (
                    Some(4),
                    Some("services.api.liveness.http"),
                    "invalid probe URL `http://127.0.0.1:99999/`",
                ),
            ],
        ),
        (
            Format::Yaml,
            "proxy:\n  http: ~\n  connect_timeout: 0s\n  read_timeout: \"0\"\n",
            vec![
                (Some(2), Some("proxy.http"), "the proxy has no listener"),
                (
                    Some(3),
                    Some("proxy.connect_timeout"),
                    "must be more than 0",
                ),
                (Some(4), Some("proxy.read_timeout"), "must be more than 0"),
            ],
        ),
        (
            Format::Toml,
            "[bus]\nurl = \"nats://127.0.0.1:4222,,nats://[::1, http://h:1, nats://\"\n\
             tls_cert = \"c.pem\"\n",
            vec![
                (Some(2), Some("bus.url"), "an empty entry"),
                (Some(2), Some("bus.url"), "invalid bus url `nats://[::1`"),
                (
                    Some(2),
                    Some("bus.url"),
                    "invalid bus url `http://h:1`: expected nats://",
                ),
                (
                    Some(2),
                    Some("bus.url"),
                    "invalid bus url `nats://`: it has no host",
                ),
                (Some(3), Some("bus.tls_cert"), "set bus.tls_key as well"),
            ],
        ),
        (
            Format::Toml,
            "[proxy]\nhttps = \"127.0.0.1:0\"\n[acme]\ndomains = [\"a.example.com\"]\n\
             directory = \"https://[::1/dir\"\n",
            vec![(Some(5), Some("acme.directory"), "invalid ACME directory")],
        ),
    ];
    for (format, text, want) in &cases {
        check_case(*format, text, want);
    }
}

/// The forms the runtime takes pass: references are resolved at spawn time, so a URL with
/// one is not judged by its form.
#[test]
fn values_runtime_up_accepts_load() {
    let text = "[services.api]\ncommand = \"x\"\nport = \"auto\"\n\
        health = { http = \"http://127.0.0.1:${PORT}/healthz\", interval = \"500ms\" }\n\
        liveness = { tcp = true, interval = \"1m30s\", timeout = \"1.5s\" }\n\
        [store]\nurl = \"wss://root:pw@db.example:8000\"\n\
        [bus]\nurl = \"nats://127.0.0.1:4222, tls://[::1]:4223,127.0.0.1\"\n\
        tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n\
        [[routes]]\npath = \"/a\"\nupstream = [\"http://[::1]:8080/\", \"127.0.0.1:8081\", \"https://localhost\"]\n\
        [[routes]]\npath = \"/b\"\nupstream = \"http://127.0.0.1:${services.api.port}\"\n";
    let config = load(Format::Toml, text, &[]).unwrap();
    assert_eq!(config.routes.len(), 2);
    for url in [
        "mem://",
        "memory",
        "surrealkv://db",
        "surrealkv:///var/db",
        "ws://h",
    ] {
        let text = format!("[store]\nurl = \"{url}\"\n");
        assert!(load(Format::Toml, &text, &[]).is_ok(), "{url}");
    }
}

/// Schema errors in full: each kind of serde error, in config words.
#[test]
fn schema_error_messages_are_exact() {
    let cases: &[(&str, &str)] = &[
        (
            "[services.api]\ncommand = 5\n",
            "kinfra.toml:2:11: services.api.command: wrong type: expected a shell command string or a list of arguments, found integer `5`",
        ),
        (
            "[services.api]\ncommand = \"x\"\nport = 70000\n",
            "kinfra.toml:3:8: services.api.port: invalid port `70000`: expected 1-65535 or \"auto\"",
        ),
        (
            "[services.api]\ncommand = \"x\"\nport = -3\n",
            "kinfra.toml:3:8: services.api.port: invalid port `-3`: expected 1-65535 or \"auto\"",
        ),
        (
            "[services.api]\ncommand = \"x\"\nport = true\n",
            "kinfra.toml:3:8: services.api.port: wrong type: expected a port number (1-65535) or \"auto\", found boolean `true`",
        ),
        (
            "[services.api]\ncommand = \"x\"\nhealth = { tcp = \"yes\" }\n",
            "kinfra.toml:3:18: services.api.health.tcp: expected `true` (the service's port) or a port number",
        ),
        (
            "[services.api]\ncommand = \"x\"\nhealth = { tcp = 70000 }\n",
            "kinfra.toml:3:18: services.api.health.tcp: expected `true` (the service's port) or a port number",
        ),
        (
            "[services.api]\ncommand = \"x\"\nrestart = \"alway\"\n",
            "kinfra.toml:3:11: services.api.restart: unknown value `alway`; expected one of: no, on-failure, always, unless-stopped (did you mean `always`?)",
        ),
        (
            "[services.api]\ncommand = \"x\"\nrestart = 3\n",
            "kinfra.toml:3:11: services.api.restart: wrong type: expected a string, found integer `3`",
        ),
        (
            "[services.api]\ncommand = \"x\"\nhealth = 3\n",
            "kinfra.toml:3:10: services.api.health: wrong type: expected a table, found integer `3`",
        ),
        (
            "[services.api]\ncommand = \"x\"\nargs = \"a\"\n",
            "kinfra.toml:3:8: services.api.args: wrong type: expected a list, found string \"a\"",
        ),
        (
            "[services.api]\ncommand = \"x\"\nargs = [1]\n",
            "kinfra.toml:3:9: services.api.args[0]: wrong type: expected a string, found integer `1`",
        ),
        (
            "[services.api]\ncommand = \"x\"\nenv = [1]\n",
            "kinfra.toml:3:7: services.api.env: wrong type: expected a table, found sequence",
        ),
        (
            "[services.api]\ncommand = \"x\"\nlog = { keep = -1 }\n",
            "kinfra.toml:3:16: services.api.log.keep: invalid value: integer `-1`, expected a non-negative integer",
        ),
        (
            "[services.api]\ncommand = \"x\"\nlog = { ring = 1.5 }\n",
            "kinfra.toml:3:16: services.api.log.ring: wrong type: expected a non-negative integer, found floating point `1.5`",
        ),
        (
            "[services.api]\ncommand = \"x\"\nbackoff = { factor = \"x\" }\n",
            "kinfra.toml:3:22: services.api.backoff.factor: wrong type: expected a number, found string \"x\"",
        ),
        (
            "[services.api]\ncommand = \"x\"\ndepends_on = { db = \"ready\" }\n",
            "kinfra.toml:3:21: services.api.depends_on.db: unknown value `ready`; expected one of: started, healthy, completed_successfully",
        ),
        (
            "[services.api]\ncommand = \"x\"\ndepends_on = 5\n",
            "kinfra.toml:3:14: services.api.depends_on: wrong type: expected a table of service = condition (started, healthy, completed_successfully) or a list of service names, found integer `5`",
        ),
        (
            "[services.api]\ncommand = \"x\"\nwatch = { debounce = 5 }\n",
            "kinfra.toml:3:22: services.api.watch.debounce: invalid duration `5`: missing unit (write \"5s\" or \"5ms\")",
        ),
        (
            "[services.api]\ncommand = \"x\"\nstop_grace = \"5 parsecs\"\n",
            "kinfra.toml:3:14: services.api.stop_grace: invalid duration `5 parsecs`: unknown unit `parsecs` (use ms, s, m, h or d)",
        ),
        (
            "[services.api]\ncommand = \"x\"\nstop_signal = 9\n",
            "kinfra.toml:3:15: services.api.stop_signal: wrong type: expected a string, found integer `9`",
        ),
        (
            "[services.api]\ncommand = \"x\"\nhealth = { tcp = 1, status = \"600\" }\n",
            "kinfra.toml:3:30: services.api.health.status: invalid status `600`: expected a code such as 200 or a range such as \"200-299\"",
        ),
        (
            "[services.api]\ncommand = \"x\"\ndisabled = 1\n",
            "kinfra.toml:3:12: services.api.disabled: wrong type: expected a boolean, found integer `1`",
        ),
        (
            "[services.api]\ncommand = \"x\"\nprot = 1\n",
            "kinfra.toml:3:1: services.api.prot: unknown key `prot` in services.api; expected one of: command, args, env, cwd, working_dir, port, depends_on, restart, backoff, crash_loop, health, liveness, watch, stop_signal, stop_grace, log, maintenance, disabled, scale_to_zero, nodes",
        ),
        (
            "[services.api]\ncommand = \"x\"\nhealth = { tcp = 1, x = 1 }\n",
            "kinfra.toml:3:21: services.api.health.x: unknown key `x` in services.api.health; expected one of: http, tcp, exec, status, body, initial_delay, interval, timeout, success_threshold, failure_threshold",
        ),
        (
            "[services.api]\ncmd = \"x\"\n",
            "kinfra.toml:1:11: services.api: missing required key `command`\nkinfra.toml:2:1: services.api.cmd: unknown key `cmd` in services.api; expected one of: command, args, env, cwd, working_dir, port, depends_on, restart, backoff, crash_loop, health, liveness, watch, stop_signal, stop_grace, log, maintenance, disabled, scale_to_zero, nodes (did you mean `cwd`?)",
        ),
        (
            "[resources.db]\ntemplate = \"postgress\"\n",
            "kinfra.toml:2:12: resources.db.template: unknown value `postgress`; expected one of: postgres, redis, nats, mongodb, mysql, docker (did you mean `postgres`?)",
        ),
        (
            "[resources.db]\nimage = \"x\"\n",
            "kinfra.toml:1:12: resources.db: missing required key `template`",
        ),
        (
            "[acme]\ndomains = [\"a.example.com\"]\nchallenge = \"dns-01\"\n",
            "kinfra.toml:3:13: acme.challenge: unknown value `dns-01`; expected one of: http-01, tls-alpn-01",
        ),
        (
            "project = 1\n",
            "kinfra.toml:1:11: project: wrong type: expected a table, found integer `1`",
        ),
        (
            "[project]\nname = [\"a\"]\n",
            "kinfra.toml:2:8: project.name: wrong type: expected a string, found sequence",
        ),
        (
            "[store]\nevent_retention = 1e3\n",
            "kinfra.toml:2:19: store.event_retention: wrong type: expected a non-negative integer, found floating point `1000.0`",
        ),
        (
            "[proxy]\nthreads = -1\n",
            "kinfra.toml:2:11: proxy.threads: invalid value: integer `-1`, expected a non-negative integer",
        ),
        (
            "[proxy]\nmax_body_size = \"1 parsec\"\n",
            "kinfra.toml:2:17: proxy.max_body_size: invalid size `1 parsec`: unknown unit `parsec` (use B, KiB, MiB, GiB, kB, MB, GB)",
        ),
        (
            "[bus]\nport = 65536\n",
            "kinfra.toml:2:8: bus.port: invalid value: integer `65536`, expected an integer from 0 to 65535",
        ),
        (
            "[dashboard]\ntoken = 5\n",
            "kinfra.toml:2:9: dashboard.token: wrong type: expected a string, found integer `5`",
        ),
        (
            "[[routes]]\npath = \"/\"\nupstream = 5\n",
            "kinfra.toml:3:12: routes[0].upstream: wrong type: expected a string or a list of strings, found integer `5`",
        ),
    ];
    for (text, want) in cases {
        let got: Vec<String> = errors(Format::Toml, text)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got.join("\n"), *want, "{text}");
    }
}

const PROVIDERS_TOML: &str = r#"[providers]
plugin_dirs = ["plugins", "/opt/kinfra/providers"]

[providers.neon]
token = "neon-secret-token"
rate_limit = "5/s"
org_id = "org-1"

[providers.ops]
provider = "command"
token_file = "secrets/ops.token"
base_url = "https://api.example.com/v2"
rate_limit = "100/m"

[resources.main_db]
provider = "neon"
project_id = "proj-1"
region = "aws-eu-central-1"
interval = "10s"
on_down = "delete"
confirm_delete = true
depends_on = ["cache"]

[resources.tunnel]
provider = "ops"
env = { A = "1" }
start = ["cloudflared", "tunnel", "run"]

[resources.cache]
template = "redis"

[services.api]
command = "sleep 100"
env = { DATABASE_URL = "${resources.main_db.url}", TUNNEL = "${resources.tunnel.host}" }
"#;

const PROVIDERS_YAML: &str = r#"providers:
  plugin_dirs: [plugins, /opt/kinfra/providers]
  neon:
    token: neon-secret-token
    rate_limit: 5/s
    org_id: org-1
  ops:
    provider: command
    token_file: secrets/ops.token
    base_url: https://api.example.com/v2
    rate_limit: 100/m
resources:
  main_db:
    provider: neon
    project_id: proj-1
    region: aws-eu-central-1
    interval: 10s
    on_down: delete
    confirm_delete: true
    depends_on: [cache]
  tunnel:
    provider: ops
    env: { A: "1" }
    start: [cloudflared, tunnel, run]
  cache:
    template: redis
services:
  api:
    command: sleep 100
    env:
      DATABASE_URL: ${resources.main_db.url}
      TUNNEL: ${resources.tunnel.host}
"#;

const PROVIDERS_JSON: &str = r#"{
  "providers": {
    "plugin_dirs": ["plugins", "/opt/kinfra/providers"],
    "neon": {"token": "neon-secret-token", "rate_limit": "5/s", "org_id": "org-1"},
    "ops": {"provider": "command", "token_file": "secrets/ops.token",
            "base_url": "https://api.example.com/v2", "rate_limit": "100/m"}
  },
  "resources": {
    "main_db": {"provider": "neon", "project_id": "proj-1", "region": "aws-eu-central-1",
                "interval": "10s", "on_down": "delete", "confirm_delete": true,
                "depends_on": ["cache"]},
    "tunnel": {"provider": "ops", "env": {"A": "1"}, "start": ["cloudflared", "tunnel", "run"]},
    "cache": {"template": "redis"}
  },
  "services": {
    "api": {"command": "sleep 100",
            "env": {"DATABASE_URL": "${resources.main_db.url}", "TUNNEL": "${resources.tunnel.host}"}}
  }
}"#;

/// `[providers]` (a list key beside instance tables) and provider resources read the same in
/// TOML, YAML and JSON; provider-specific keys are kept for the provider; references to
/// provider resources pass like those to containers.
#[test]
fn providers_in_three_formats() {
    let toml = load(Format::Toml, PROVIDERS_TOML, &[]).expect("toml");
    let yaml = load(Format::Yaml, PROVIDERS_YAML, &[]).expect("yaml");
    let json = load(Format::Json, PROVIDERS_JSON, &[]).expect("json");
    let strip = |mut c: Config| {
        c.origin.clear();
        c
    };
    let toml = strip(toml);
    assert_eq!(toml, strip(yaml));
    assert_eq!(toml, strip(json));

    let p = &toml.providers;
    assert_eq!(
        p.plugin_dirs,
        vec![
            PathBuf::from("plugins"),
            PathBuf::from("/opt/kinfra/providers")
        ]
    );
    assert_eq!(p.instances.len(), 2);
    let neon = &p.instances["neon"];
    assert_eq!(neon.provider_id("neon"), "neon");
    assert_eq!(
        neon.token.as_ref().map(|t| t.expose()),
        Some("neon-secret-token")
    );
    assert_eq!(neon.extra["org_id"], serde_json::json!("org-1"));
    assert_eq!(
        neon.parsed_rate_limit(),
        Some(Ok(RateLimit {
            count: 5,
            per: Duration::from_secs(1)
        }))
    );
    let ops = &p.instances["ops"];
    assert_eq!(ops.provider_id("ops"), "command");
    assert_eq!(ops.token_file, Some(PathBuf::from("secrets/ops.token")));
    assert_eq!(ops.base_url.as_deref(), Some("https://api.example.com/v2"));
    assert!(ops.extra.is_empty());

    assert_eq!(
        toml.provider_plugin_dirs(),
        vec![
            PathBuf::from("/srv/app/plugins"),
            PathBuf::from("/opt/kinfra/providers")
        ]
    );
    assert_eq!(
        ops.token_file.as_deref().map(|f| toml.resolve_path(f)),
        Some(PathBuf::from("/srv/app/secrets/ops.token"))
    );

    let db = &toml.resources["main_db"];
    assert!(db.is_provider());
    assert_eq!(db.provider.as_deref(), Some("neon"));
    assert_eq!(db.observe_interval().0, Duration::from_secs(10));
    assert_eq!(db.on_down, OnDown::Delete);
    assert!(db.confirm_delete);
    assert_eq!(
        db.extra.keys().collect::<Vec<_>>(),
        ["project_id", "region"]
    );
    assert!(db.depends_on.0.contains_key("cache"));
    let tunnel = &toml.resources["tunnel"];
    assert_eq!(
        tunnel.on_down,
        OnDown::Keep,
        "keep is the default for providers"
    );
    assert_eq!(tunnel.observe_interval().0, Duration::from_secs(30));
    assert!(tunnel.env.is_empty(), "env is the provider's key");
    assert_eq!(tunnel.extra["env"], serde_json::json!({"A": "1"}));
    assert_eq!(
        tunnel.extra["start"],
        serde_json::json!(["cloudflared", "tunnel", "run"])
    );
    let cache = &toml.resources["cache"];
    assert!(!cache.is_provider());
    assert_eq!(cache.template, Template::Redis);
    assert_eq!(cache.on_down, OnDown::Stop);
    assert!(cache.extra.is_empty());
}

/// What `config check --print` writes reads back as the same config.
#[test]
fn providers_round_trip_through_toml() {
    let mut config = load(Format::Toml, PROVIDERS_TOML, &[]).expect("load");
    let text = toml::to_string_pretty(&config).expect("serialize");
    assert!(
        !text.contains("neon-secret-token"),
        "the token leaked:\n{text}"
    );
    let mut again = load(Format::Toml, &text, &[]).expect("reload");
    // The token is written masked; everything else reads back the same.
    for c in [&mut config, &mut again] {
        if let Some(neon) = c.providers.instances.get_mut("neon") {
            neon.token = None;
        }
    }
    assert_eq!(config.providers, again.providers, "{text}");
    assert_eq!(config.resources, again.resources, "{text}");
}

/// Each problem of providers and provider resources, at its line and key.
#[test]
fn provider_errors_have_line_and_key() {
    check_case(
        Format::Toml,
        "[providers.neon]\nrate_limit = \"0/s\"\n\n\
         [providers.aws]\nrate_limit = \"5/d\"\ntoken = \"t\"\ntoken_file = \"f\"\n\n\
         [providers.gh]\nrate_limit = \"fast\"\n\n\
         [resources.db]\nprovider = \"nope\"\ninterval = \"0s\"\n\n\
         [resources.br]\nprovider = \"neon\"\non_down = \"delete\"\n\n\
         [resources.st]\nprovider = \"neon\"\non_down = \"stop\"\n\n\
         [resources.cache]\ntemplate = \"redis\"\non_down = \"pause\"\ninterval = \"5s\"\n",
        // In the order the checks run: instances, then resources, each by name.
        &[
            (
                Some(5),
                Some("providers.aws.rate_limit"),
                "invalid rate limit `5/d`",
            ),
            (
                Some(7),
                Some("providers.aws.token_file"),
                "`token` and `token_file` are both set",
            ),
            (
                Some(10),
                Some("providers.gh.rate_limit"),
                "invalid rate limit `fast`",
            ),
            (
                Some(2),
                Some("providers.neon.rate_limit"),
                "invalid rate limit `0/s`: expected N/s, N/m or N/h",
            ),
            (
                Some(18),
                Some("resources.br.on_down"),
                "confirm it with `confirm_delete = true`",
            ),
            (
                Some(26),
                Some("resources.cache.on_down"),
                "a container takes stop, remove or remove_volumes",
            ),
            (
                Some(27),
                Some("resources.cache.interval"),
                "`interval` is for provider resources",
            ),
            (
                Some(13),
                Some("resources.db.provider"),
                "unknown provider instance `nope`",
            ),
            (
                Some(14),
                Some("resources.db.interval"),
                "the interval must be longer than 0",
            ),
            (
                Some(22),
                Some("resources.st.on_down"),
                "a provider resource takes keep, pause or delete",
            ),
        ],
    );
}

/// Container keys on a provider resource are errors at their key, wherever `provider` sits
/// in the table; without `provider`, unknown keys are errors as before.
#[test]
fn container_keys_on_provider_resources_are_errors() {
    check_case(
        Format::Toml,
        "[providers.neon]\n\n\
         [resources.db]\nimage = \"postgres:16\"\nprovider = \"neon\"\nvolumes = { d = \"/d\" }\n\
         project_id = \"p\"\n\n\
         [resources.cache]\ntemplate = \"redis\"\nproject_id = \"p\"\n",
        &[
            (
                Some(4),
                Some("resources.db.image"),
                "`image` is a container key; a provider resource (provider = \"neon\")",
            ),
            (
                Some(6),
                Some("resources.db.volumes"),
                "`volumes` is a container key",
            ),
            (
                Some(11),
                Some("resources.cache.project_id"),
                "unknown key `project_id` in resources.cache; expected one of: template",
            ),
        ],
    );
    check_case(
        Format::Yaml,
        "providers:\n  neon: {}\nresources:\n  db:\n    template: postgres\n    provider: neon\n",
        &[(
            Some(5),
            Some("resources.db.template"),
            "`template` is a container key",
        )],
    );
    check_case(
        Format::Json,
        "{\"providers\": {\"neon\": {}},\n \"resources\": {\"db\": {\"provider\": \"neon\",\n  \"jetstream\": true}}}",
        &[(
            Some(3),
            Some("resources.db.jetstream"),
            "`jetstream` is a container key",
        )],
    );
    check_case(
        Format::Yaml,
        "resources:\n  db:\n    provider: neon\n    rate_limit: 5/s\n",
        &[(
            Some(3),
            Some("resources.db.provider"),
            "unknown provider instance `neon`: expected a [providers.neon] table (there are none)",
        )],
    );
}

/// Type errors inside `[providers]` keep their key, as everywhere else.
#[test]
fn provider_type_errors_have_their_key() {
    check_case(
        Format::Toml,
        "[providers]\nplugin_dirs = \"plugins\"\n\n[providers.neon]\nrate_limit = 5\n",
        &[
            (Some(2), Some("providers.plugin_dirs"), "wrong type"),
            (Some(5), Some("providers.neon.rate_limit"), "wrong type"),
        ],
    );
    check_case(
        Format::Json,
        "{\"providers\": {\"neon\": 5}}",
        &[(Some(1), Some("providers.neon"), "wrong type")],
    );
}

#[test]
fn rate_limits_parse() {
    let per = |s| Duration::from_secs(s);
    assert_eq!(
        RateLimit::parse("5/s").map(|r| (r.count, r.per)),
        Ok((5, per(1)))
    );
    assert_eq!(
        RateLimit::parse(" 100 / m ").map(|r| (r.count, r.per)),
        Ok((100, per(60)))
    );
    assert_eq!(
        RateLimit::parse("1/h").map(|r| (r.count, r.per)),
        Ok((1, per(3600)))
    );
    for bad in ["0/s", "-1/s", "5", "5/d", "/s", "x/s", "5/s/s", ""] {
        assert!(RateLimit::parse(bad).is_err(), "{bad}");
    }
}

/// A config built in code with a provider resource validates like a loaded one.
#[test]
fn builder_provider_resource_validates() {
    let mut config = Config::default();
    config
        .resources
        .insert("db".into(), ResourceConfig::provider("neon"));
    let errors = config.validate().expect_err("no instance").0;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].key.as_deref(), Some("resources.db.provider"));
    config
        .providers
        .instances
        .insert("neon".into(), ProviderInstanceConfig::default());
    config.validate().expect("valid");
}

/// `health` on a provider resource: a table is kinfra's probe (its errors at their key, as
/// anywhere); a string or a list is the provider's own key (the command provider's health
/// command), kept for the provider. A container's `health` stays a probe table.
#[test]
fn provider_resource_health_is_a_probe_table_or_the_provider_s_key() {
    let toml = "[providers.sh]\nprovider = \"command\"\n\n\
                [resources.a]\nprovider = \"sh\"\nstart = \"x\"\nhealth = \"true\"\n\n\
                [resources.b]\nprovider = \"sh\"\nhealth = [\"test\", \"-f\", \"up\"]\n\n\
                [resources.c]\nprovider = \"sh\"\nhealth = { exec = \"true\", interval = \"1s\" }\n";
    let json = "{\"providers\": {\"sh\": {\"provider\": \"command\"}}, \"resources\": {\
                \"a\": {\"health\": \"true\", \"provider\": \"sh\", \"start\": \"x\"},\
                \"b\": {\"provider\": \"sh\", \"health\": [\"test\", \"-f\", \"up\"]},\
                \"c\": {\"provider\": \"sh\", \"health\": {\"exec\": \"true\", \"interval\": \"1s\"}}}}";
    for (format, text) in [(Format::Toml, toml), (Format::Json, json)] {
        let config = load(format, text, &[]).expect("load");
        let a = &config.resources["a"];
        assert_eq!(a.health, None, "{format:?}");
        assert_eq!(a.extra["health"], serde_json::json!("true"), "{format:?}");
        assert_eq!(a.extra["start"], serde_json::json!("x"), "{format:?}");
        let b = &config.resources["b"];
        assert_eq!(
            b.extra["health"],
            serde_json::json!(["test", "-f", "up"]),
            "{format:?}"
        );
        let c = &config.resources["c"];
        assert!(!c.extra.contains_key("health"), "{format:?}");
        let probe = c.health.as_ref().expect("a probe table");
        assert!(probe.exec.is_some(), "{format:?}");
        assert_eq!(probe.interval, Dur::from_secs(1), "{format:?}");
    }

    check_case(
        Format::Toml,
        "[providers.sh]\nprovider = \"command\"\n\n\
         [resources.c]\nprovider = \"sh\"\nhealth = { exec = \"true\", intervl = \"1s\" }\n\n\
         [resources.d]\nprovider = \"sh\"\nhealth = 5\n\n\
         [resources.cache]\ntemplate = \"redis\"\nhealth = \"true\"\n",
        &[
            (
                Some(6),
                Some("resources.c.health.intervl"),
                "unknown key `intervl` in resources.c.health",
            ),
            (
                Some(10),
                Some("resources.d.health"),
                "wrong type: expected a probe table, or the provider's health command (a string \
                 or a list)",
            ),
            (
                Some(14),
                Some("resources.cache.health"),
                "wrong type: expected a table",
            ),
        ],
    );
}

/// `[tunnel]` loads with its defaults (provider cloudflare, name `kinfra-<project>`, on_down
/// keep) and each bad value is an error at its key.
#[test]
fn tunnel_section_loads_and_is_checked() {
    let config = match load(
        Format::Toml,
        "[project]\nname = \"shop\"\n\n[tunnel]\naccount_id = \"acc\"\nzone_id = \"zone\"\n\
         hostnames = [\"app.example.com\", \"*.example.org\"]\ntoken = \"${CF_TOKEN}\"\n",
        &[],
    ) {
        Ok(config) => config,
        Err(e) => panic!("{e}"),
    };
    let Some(tunnel) = &config.tunnel else {
        panic!("no [tunnel]")
    };
    assert_eq!(tunnel.provider_id(), "cloudflare");
    assert_eq!(tunnel.tunnel_name("shop"), "kinfra-shop");
    assert_eq!(tunnel.cloudflared_program(), "cloudflared");
    assert_eq!(tunnel.on_down, TunnelOnDown::Keep);
    assert_eq!(tunnel.hostnames.len(), 2);
    // The token never shows.
    assert!(!format!("{tunnel:?}").contains("CF_TOKEN"));

    check_case(
        Format::Toml,
        "[services.tunnel]\ncommand = \"true\"\n\n\
         [tunnel]\nprovider = \"ngrok\"\nzone_id = \"\"\n\
         hostnames = [\"https://app.example.com\", \"app.example.com:8443\", \"app.example.com/api\", \"a.*.example.com\", \"ok.example.com\", \"ok.example.com\"]\n\
         token = \"t\"\ntoken_file = \"f\"\nmetrics = \"localhost\"\nbase_url = \"not a url\"\n",
        &[
            (
                Some(5),
                Some("tunnel.provider"),
                "unknown tunnel provider `ngrok`",
            ),
            (Some(4), Some("tunnel"), "`tunnel.account_id` is required"),
            (Some(6), Some("tunnel.zone_id"), "`zone_id` is empty"),
            (Some(7), Some("tunnel.hostnames[0]"), "has a scheme"),
            (Some(7), Some("tunnel.hostnames[1]"), "has a port"),
            (Some(7), Some("tunnel.hostnames[2]"), "has a path"),
            (Some(7), Some("tunnel.hostnames[3]"), "not a valid hostname"),
            (Some(7), Some("tunnel.hostnames[5]"), "listed twice"),
            (Some(9), Some("tunnel.token_file"), "both set"),
            (Some(11), Some("tunnel.base_url"), "invalid URL"),
            (
                Some(10),
                Some("tunnel.metrics"),
                "invalid address `localhost`",
            ),
            (
                Some(1),
                Some("services.tunnel"),
                "the name `tunnel` is taken",
            ),
        ],
    );
    check_case(
        Format::Toml,
        "[proxy]\nenabled = false\n\n[tunnel]\naccount_id = \"a\"\nzone_id = \"z\"\non_down = \"remove\"\n",
        &[(
            Some(7),
            Some("tunnel.on_down"),
            "expected one of: keep, delete",
        )],
    );
    check_case(
        Format::Toml,
        "[proxy]\nenabled = false\n\n[tunnel]\naccount_id = \"a\"\nzone_id = \"z\"\n",
        &[
            (Some(4), Some("tunnel.hostnames"), "at least one hostname"),
            (Some(4), Some("tunnel"), "API token is required"),
            (Some(4), Some("tunnel"), "forwards to the proxy"),
        ],
    );
}

/// `[image]` loads (include paths kept relative, shell unset) and its include paths are
/// checked: absolute, `..` and duplicates are refused with the key of each.
#[test]
fn image_section_loads_and_is_checked() {
    let config = load(
        Format::Toml,
        "[image]\ninclude = [\"static/\", \"app.sh\"]\nshell = true\n",
        &[],
    )
    .unwrap();
    let Some(image) = &config.image else {
        panic!("no [image]")
    };
    assert_eq!(
        image.include,
        [PathBuf::from("static/"), PathBuf::from("app.sh")]
    );
    assert_eq!(image.shell, Some(true));
    assert_eq!(load(Format::Toml, "", &[]).unwrap().image, None);
    check_case(
        Format::Toml,
        "[image]\ninclude = [\"/etc/passwd\", \"../secret\", \"a/\", \"a\", \"\"]\n",
        &[
            (Some(2), Some("image.include[0]"), "is absolute"),
            (
                Some(2),
                Some("image.include[1]"),
                "leaves the config file's directory",
            ),
            (Some(2), Some("image.include[3]"), "listed twice"),
            (Some(2), Some("image.include[4]"), "empty"),
        ],
    );
    check_case(
        Format::Toml,
        "[image]\ninclud = [\"x\"]\n",
        &[(Some(2), Some("image.includ"), "unknown")],
    );
}

#[test]
fn scale_to_zero_needs_a_route_or_manual_wake_and_outlasts_its_probes() {
    // No route reaches `api`: an error at the policy, naming the way out.
    check_case(
        Format::Toml,
        "[services.api]\ncommand = \"serve\"\nport = 8080\n\
         scale_to_zero = { idle_after = \"10m\" }\n",
        &[(
            Some(4),
            Some("services.api.scale_to_zero"),
            "no route reaches it",
        )],
    );
    // Shorter than the readiness probe's interval; a zero wake timeout.
    check_case(
        Format::Toml,
        "[services.api]\ncommand = \"serve\"\nport = 8080\n\
         health = { http = \"/\", interval = \"30s\" }\n\
         scale_to_zero = { idle_after = \"10s\", wake_timeout = \"0s\" }\n\
         [[routes]]\npath = \"/\"\nservice = \"api\"\n",
        &[
            (
                Some(5),
                Some("services.api.scale_to_zero.wake_timeout"),
                "`wake_timeout` must be longer than 0s",
            ),
            (
                Some(5),
                Some("services.api.scale_to_zero.idle_after"),
                "shorter than the `health` probe's interval (30s)",
            ),
        ],
    );
    // An unknown key in the policy names itself.
    let errs = errors(
        Format::Toml,
        "[services.api]\ncommand = \"serve\"\nscale_to_zero = { idle_after = \"1m\", idle = 3 }\n",
    );
    assert!(errs.iter().any(|e| e.message.contains("idle")), "{errs:?}");
    // Routed services, manual wake and resources (container and provider) load.
    let text = "[services.api]\ncommand = \"serve\"\nport = 8080\n\
                scale_to_zero = { idle_after = \"10m\", wake_timeout = \"30s\" }\n\
                [resources.cache]\ntemplate = \"redis\"\n\
                scale_to_zero = { idle_after = \"5m\", wake = \"manual\" }\n\
                [providers.neon]\ntoken = \"t\"\n\
                [resources.db]\nprovider = \"neon\"\nproject_id = \"p\"\n\
                scale_to_zero = { idle_after = \"10m\", wake = \"manual\" }\n\
                [[routes]]\npath = \"/\"\nservice = \"api\"\n";
    let config = load(Format::Toml, text, &[]).unwrap();
    let api = config.services["api"].scale_to_zero.unwrap();
    assert_eq!(api.idle_after.0, std::time::Duration::from_secs(600));
    assert_eq!(api.wake_timeout.0, std::time::Duration::from_secs(30));
    assert_eq!(api.wake, WakeMode::Request);
    assert_eq!(
        config.resources["cache"].scale_to_zero.map(|p| p.wake),
        Some(WakeMode::Manual)
    );
    let db = &config.resources["db"];
    assert_eq!(
        db.scale_to_zero.map(|p| p.wake_timeout),
        Some(DEFAULT_WAKE_TIMEOUT)
    );
    assert!(!db.extra.contains_key("scale_to_zero"), "{:?}", db.extra);
}
