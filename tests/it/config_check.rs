//! `kinfra config check` on good and bad files: exit codes and precise messages.

use crate::support::{Project, stderr, stdout};

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
