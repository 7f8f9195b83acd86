//! `kinfra config check` on good and bad files: exit codes and precise messages.

use crate::support::{Project, kinfra_bin, stderr, stdout};

const GOOD: &str = r#"
[project]
name = "shop"

[dashboard]
listen = "127.0.0.1:0"

[services.db]
command = "sleep 1000"
port = 5432
health = { tcp = true }

[services.api]
command = ["python3", "-m", "http.server", "${PORT}"]
port = "auto"
depends_on = { db = "healthy" }
health = { http = "/", interval = "1s" }

[[routes]]
path = "/api"
service = "api"
"#;

#[test]
fn good_config_passes_with_summary() {
    let p = Project::with_config(GOOD);
    let out = p.run(&["config", "check"]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("project `shop`"), "{text}");
    assert!(text.contains("2 services"), "{text}");
    assert!(text.contains("1 routes"), "{text}");
}

#[test]
fn good_config_in_yaml_and_json_passes() {
    let p = Project::new();
    p.write(
        "kinfra.yaml",
        "project:\n  name: shop\nservices:\n  web:\n    command: sleep 100\n    port: auto\n",
    );
    let out = p.run(&["config", "check", "-c", "kinfra.yaml"]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert!(stdout(&out).contains("1 services"));
    p.write(
        "k.json",
        r#"{"project": {"name": "shop"}, "services": {"web": {"command": ["sleep", "100"]}}}"#,
    );
    let out = p.run(&["config", "check", "-c", "k.json"]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
}

/// Each bad file: the file name, line, key and a fragment of the message must be named,
/// and the exit code must be 2.
#[test]
fn bad_configs_exit_2_with_location() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "unknown top-level key",
            "[project]\nname = \"x\"\n\n[dashbord]\nlisten = \"127.0.0.1:0\"\n",
            &["kinfra.toml:4", "dashbord"],
        ),
        (
            "unknown nested key",
            "[services.api]\ncommand = \"sleep 1\"\nhealth = { http = \"/\", intervl = \"2s\" }\n",
            &["kinfra.toml:3", "intervl"],
        ),
        (
            "bad duration",
            "[services.api]\ncommand = \"sleep 1\"\nport = 8080\nhealth = { http = \"/\", interval = \"fast\" }\n",
            &["kinfra.toml:4", "services.api.health.interval", "fast"],
        ),
        (
            "bad port",
            "[services.api]\ncommand = \"sleep 1\"\nport = 70000\n",
            &["kinfra.toml:3", "services.api.port", "70000"],
        ),
        (
            "dependency cycle",
            "[services.a]\ncommand = \"sleep 1\"\ndepends_on = [\"b\"]\n\n[services.b]\ncommand = \"sleep 1\"\ndepends_on = [\"a\"]\n",
            &["kinfra.toml:", "a -> b -> a"],
        ),
        (
            "route to unknown service",
            "[services.api]\ncommand = \"sleep 1\"\n\n[[routes]]\npath = \"/x\"\nservice = \"nope\"\n",
            &["kinfra.toml:6", "nope"],
        ),
        (
            "duplicate port",
            "[services.a]\ncommand = \"sleep 1\"\nport = 8080\n\n[services.b]\ncommand = \"sleep 1\"\nport = 8080\n",
            &["kinfra.toml:", "8080", "services."],
        ),
        (
            "toml syntax error",
            "[services.api\ncommand = \"sleep 1\"\n",
            &["kinfra.toml:1"],
        ),
    ];
    for (name, text, fragments) in cases {
        let p = Project::with_config(text);
        let out = p.run(&["config", "check"]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{name}: expected exit 2, stdout {} stderr {}",
            stdout(&out),
            stderr(&out)
        );
        let err = stderr(&out);
        for fragment in *fragments {
            assert!(
                err.contains(fragment),
                "{name}: {fragment:?} not in:\n{err}"
            );
        }
    }
}

/// Values `runtime up` would reject (or misuse) are rejected by `config check` already: exit 2,
/// with the file, the line and the key in the message.
#[test]
fn values_runtime_up_rejects_fail_the_check() {
    let cases: &[(&str, &str, &str, &[&str])] = &[
        (
            "upstream URL that does not parse",
            "kinfra.toml",
            "[[routes]]\npath = \"/\"\nupstream = \"http://[::1\"\n",
            &["kinfra.toml:3", "routes[0].upstream", "http://[::1"],
        ),
        (
            "one of several upstreams with a path",
            "kinfra.toml",
            "[[routes]]\npath = \"/\"\nupstream = [\"http://127.0.0.1:1\", \"http://127.0.0.1:2/x\"]\n",
            &["kinfra.toml:3", "routes[0].upstream[1]", "path"],
        ),
        (
            "upstream with another scheme",
            "kinfra.toml",
            "[[routes]]\npath = \"/\"\nupstream = \"ftp://127.0.0.1:21\"\n",
            &["kinfra.toml:3", "routes[0].upstream", "http://"],
        ),
        (
            "store URL without a host",
            "kinfra.toml",
            "[store]\nurl = \"ws://\"\n",
            &["kinfra.toml:2", "store.url", "ws://"],
        ),
        (
            "surrealkv URL without a path",
            "kinfra.toml",
            "[store]\nurl = \"surrealkv://\"\n",
            &["kinfra.toml:2", "store.url"],
        ),
        (
            "readiness probe every 0s",
            "kinfra.toml",
            "[services.api]\ncommand = \"sleep 1\"\nport = 8080\nhealth = { http = \"/\", interval = \"0s\" }\n",
            &[
                "kinfra.toml:4",
                "services.api.health.interval",
                "more than 0",
            ],
        ),
        (
            "liveness probe every 0s",
            "kinfra.toml",
            "[services.api]\ncommand = \"sleep 1\"\nport = 8080\n\n[services.api.liveness]\ntcp = true\ninterval = \"0s\"\n",
            &[
                "kinfra.toml:7",
                "services.api.liveness.interval",
                "more than 0",
            ],
        ),
        (
            "probe timeout of 0",
            "kinfra.toml",
            "[services.api]\ncommand = \"sleep 1\"\nport = 8080\nliveness = { tcp = true, timeout = \"0\" }\n",
            &[
                "kinfra.toml:4",
                "services.api.liveness.timeout",
                "more than 0",
            ],
        ),
        (
            "https probe (the prober speaks plain HTTP only)",
            "kinfra.toml",
            "[services.api]\ncommand = \"sleep 1\"\nhealth = { http = \"https://127.0.0.1:8443/\" }\n",
            &["kinfra.toml:3", "services.api.health.http", "http://"],
        ),
        (
            "probe URL that does not parse",
            "kinfra.toml",
            "[services.api]\ncommand = \"sleep 1\"\nhealth = { http = \"http://127.0.0.1:99999/\" }\n",
            &["kinfra.toml:3", "services.api.health.http", "99999"],
        ),
        (
            "proxy with no listener",
            "kinfra.yaml",
            "proxy:\n  http: ~\n",
            &["kinfra.yaml:2", "proxy.http", "no listener"],
        ),
        (
            "proxy connect timeout of 0",
            "kinfra.toml",
            "[proxy]\nconnect_timeout = \"0s\"\n",
            &["kinfra.toml:2", "proxy.connect_timeout", "more than 0"],
        ),
        (
            "bus URL that does not parse",
            "kinfra.toml",
            "[bus]\nurl = \"nats://127.0.0.1:4222, nats://[::1\"\n",
            &["kinfra.toml:2", "bus.url", "nats://[::1"],
        ),
        (
            "bus URL with another scheme",
            "kinfra.toml",
            "[bus]\nurl = \"http://127.0.0.1:4222\"\n",
            &["kinfra.toml:2", "bus.url", "nats://"],
        ),
        (
            "bus client certificate without its key",
            "kinfra.toml",
            "[bus]\nurl = \"tls://127.0.0.1:4222\"\ntls_cert = \"client.pem\"\n",
            &["kinfra.toml:3", "bus.tls_cert", "bus.tls_key"],
        ),
    ];
    // Every case runs; the failures are reported together.
    let mut failures = Vec::new();
    for (name, file, text, fragments) in cases {
        let p = Project::new();
        p.write(file, text);
        // Without the harness's `KINFRA_PROXY__HTTP` (which would give the proxy a listener):
        // `config check` binds nothing.
        let out = std::process::Command::new(kinfra_bin())
            .args(["config", "check", "-c", file])
            .current_dir(p.path())
            .env_remove("KINFRA_PROXY__HTTP")
            .env_remove("KINFRA_LOG")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run kinfra config check");
        let err = stderr(&out);
        if out.status.code() != Some(2) {
            failures.push(format!(
                "{name}: expected exit 2, got {:?}; stdout {} stderr {err}",
                out.status.code(),
                stdout(&out)
            ));
        }
        for fragment in *fragments {
            if !err.contains(fragment) {
                failures.push(format!("{name}: {fragment:?} not in:\n{err}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// What the checks above must not reject: references resolved at spawn time, and the forms
/// the runtime takes.
#[test]
fn values_runtime_up_accepts_pass_the_check() {
    let p = Project::with_config(
        "[services.api]\ncommand = \"sleep 1\"\nport = \"auto\"\n\
         health = { http = \"http://127.0.0.1:${PORT}/healthz\", interval = \"500ms\" }\n\
         liveness = { tcp = true, interval = \"1m30s\", timeout = \"1.5s\" }\n\n\
         [store]\nurl = \"ws://127.0.0.1:8000\"\n\n\
         [bus]\nurl = \"nats://127.0.0.1:4222,tls://[::1]:4223\"\n\n\
         [[routes]]\npath = \"/a\"\nupstream = [\"http://[::1]:8080/\", \"127.0.0.1:8081\", \"https://localhost\"]\n\n\
         [[routes]]\npath = \"/b\"\nupstream = \"http://127.0.0.1:${services.api.port}\"\n",
    );
    let out = p.run(&["config", "check"]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
}

#[test]
fn missing_config_file_is_a_usage_error() {
    let p = Project::new();
    let out = p.run(&["config", "check", "-c", "nope.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("nope.toml"), "{}", stderr(&out));
}

#[test]
fn no_config_checks_the_embedded_default() {
    let p = Project::new();
    let out = p.run(&["config", "check"]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert!(
        stdout(&out).contains("built-in default"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn env_override_errors_name_the_variable() {
    let p = Project::with_config("[services.api]\ncommand = \"sleep 1\"\n");
    let out = p.run_env(
        &["config", "check"],
        &[("KINFRA_SERVICES__API__PORT", "99999")],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("KINFRA_SERVICES__API__PORT"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_usage_exits_2_and_version_prints() {
    let p = Project::new();
    let out = p.run(&["runtime", "frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    let out = p.run(&["--version"]);
    assert!(out.status.success());
    assert!(stdout(&out).contains(env!("CARGO_PKG_VERSION")));
}

/// A config with provider instances and provider resources passes; the summary counts the
/// instances; provider keys are checked by the provider (a discovered plugin, the Python
/// test plugin, and the built-in `command`); references to provider resources pass; the
/// token never reaches `--print`.
#[test]
fn provider_config_passes_and_counts_providers() {
    let plugins = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/kinfra-provider/tests/plugins")
        .display()
        .to_string();
    let p = Project::with_config(&format!(
        r#"
[project]
name = "cloud"

[providers]
plugin_dirs = ["{plugins}"]

[providers.neon]
provider = "pyfake"
token = "neon-token-5f1c2a"
rate_limit = "5/s"

[providers.ops]
provider = "command"
rate_limit = "30/m"

[resources.db]
provider = "neon"
project_id = "proj-1"
interval = "10s"
on_down = "delete"
confirm_delete = true

[resources.tunnel]
provider = "ops"
start = ["cloudflared", "tunnel", "run"]
status = "pgrep cloudflared"

[services.api]
command = "sleep 100"
env = {{ DATABASE_URL = "${{resources.db.url}}" }}
"#
    ));
    let out = p.run(&["config", "check", "--print"]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("2 resources"), "{text}");
    assert!(text.contains("2 providers"), "{text}");
    assert!(text.contains("project_id = \"proj-1\""), "{text}");
    assert!(
        !text.contains("neon-token-5f1c2a"),
        "the token leaked:\n{text}"
    );
}

/// Provider mistakes: exit 2 with the file, the line and the key.
#[test]
fn bad_provider_configs_exit_2_with_location() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "rate_limit that does not parse",
            "[providers.neon]\nrate_limit = \"5 per second\"\n",
            &[
                "kinfra.toml:2",
                "providers.neon.rate_limit",
                "5 per second",
                "N/s",
            ],
        ),
        (
            "resource naming no provider instance",
            "[providers.neon]\n\n[resources.db]\nprovider = \"neom\"\n",
            &[
                "kinfra.toml:4",
                "resources.db.provider",
                "unknown provider instance `neom`",
            ],
        ),
        (
            "on_down = delete without confirmation",
            "[providers.neon]\n\n[resources.db]\nprovider = \"neon\"\non_down = \"delete\"\n",
            &[
                "kinfra.toml:5",
                "resources.db.on_down",
                "confirm_delete = true",
            ],
        ),
        (
            "Docker key on a provider resource",
            "[providers.neon]\n\n[resources.db]\nimage = \"postgres:16\"\nprovider = \"neon\"\n",
            &["kinfra.toml:4", "resources.db.image", "container key"],
        ),
        (
            "token and token_file",
            "[providers.neon]\ntoken = \"t\"\ntoken_file = \"t.txt\"\n",
            &["kinfra.toml:3", "providers.neon.token_file", "both set"],
        ),
        (
            "interval of 0",
            "[providers.neon]\n\n[resources.db]\nprovider = \"neon\"\ninterval = \"0s\"\n",
            &["kinfra.toml:5", "resources.db.interval"],
        ),
        (
            "provider on_down on a container",
            "[resources.cache]\ntemplate = \"redis\"\non_down = \"keep\"\n",
            &[
                "kinfra.toml:3",
                "resources.cache.on_down",
                "stop, remove or remove_volumes",
            ],
        ),
        (
            "unknown key on a container",
            "[resources.cache]\ntemplate = \"redis\"\nproject_id = \"p\"\n",
            &["kinfra.toml:3", "resources.cache.project_id", "unknown key"],
        ),
    ];
    for (name, text, fragments) in cases {
        let p = Project::with_config(text);
        let out = p.run(&["config", "check"]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{name}: expected exit 2, stdout {} stderr {}",
            stdout(&out),
            stderr(&out)
        );
        let err = stderr(&out);
        for fragment in *fragments {
            assert!(
                err.contains(fragment),
                "{name}: {fragment:?} not in:\n{err}"
            );
        }
    }
}

/// Each provider resource's keys are checked by its provider (the built-in `command` here),
/// and an instance of a provider that is nowhere is an error: exit 2, every problem with the
/// file, the line and the key.
#[test]
fn provider_resources_are_checked_by_their_provider() {
    let p = Project::with_config(
        "[project]\nname = \"pc\"\n\
         [providers.sh]\nprovider = \"command\"\n\
         [providers.nowhere]\nprovider = \"not-installed-anywhere\"\n\
         [resources.typo]\nprovider = \"sh\"\nstatus = \"true\"\nstatsu = \"true\"\n\
         [resources.bare]\nprovider = \"sh\"\nstart = \"true\"\n",
    );
    let out = p.run(&["config", "check"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "stdout {} stderr {}",
        stdout(&out),
        stderr(&out)
    );
    let err = stderr(&out);
    // Line 10: `statsu`, the command provider's unknown key.
    assert!(
        err.contains("kinfra.toml:10:1: resources.typo.statsu: unknown key"),
        "{err}"
    );
    // `status` is missing in [resources.bare]: located at the table (line 11).
    assert!(
        err.contains("kinfra.toml:11:12: resources.bare.status: missing (required)"),
        "{err}"
    );
    // The instance whose provider is not installed, at its `provider` key (line 6).
    assert!(
        err.contains(
            "kinfra.toml:6:1: providers.nowhere.provider: provider `not-installed-anywhere`"
        ),
        "{err}"
    );

    // Fixed, it passes.
    p.write(
        "kinfra.toml",
        "[project]\nname = \"pc\"\n\
         [providers.sh]\nprovider = \"command\"\n\
         [resources.ok]\nprovider = \"sh\"\nstatus = \"true\"\n",
    );
    let out = p.run(&["config", "check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("1 providers"), "{}", stdout(&out));
}
