//! The CLI's conveniences (issue 23) through the real binary: the config's JSON Schema (checked
//! in, accepting every example, rejecting typos, with the same keys as the config's own
//! unknown-key errors), shell completions, the man page, `--version` with the git commit and
//! build date (also in `runtime status --json`), and `--log-format json`.

use crate::support::{Project, kinfra_bin, output_within, stderr, stdout};
use kinfra_core::config::Format;
use kinfra_core::config::schema::parse_tree;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `kinfra config schema`'s output, parsed.
fn printed_schema() -> Value {
    let out = Project::new().run(&["config", "schema"]);
    assert!(out.status.success(), "config schema: {}", stderr(&out));
    serde_json::from_str(&stdout(&out)).expect("config schema prints JSON")
}

fn validator() -> jsonschema::Validator {
    let schema = printed_schema();
    jsonschema::validator_for(&schema).expect("the schema is a valid JSON Schema")
}

/// The schema's complaints about `instance`, one a line (empty when it is valid).
fn problems(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

fn tree(text: &str, format: Format, what: &str) -> Value {
    parse_tree(text, format).unwrap_or_else(|e| panic!("{what} does not parse: {e}"))
}

/// The README's `toml` code blocks.
fn readme_toml_blocks() -> Vec<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let mut blocks = Vec::new();
    let mut rest = readme.as_str();
    while let Some(start) = rest.find("```toml\n") {
        let body = &rest[start + "```toml\n".len()..];
        let end = body.find("```").expect("a closed toml block");
        blocks.push(body[..end].to_owned());
        rest = &body[end..];
    }
    blocks
}

#[test]
fn the_checked_in_schema_is_the_generated_one() {
    let path = repo().join("embedded/kinfra.schema.json");
    let checked_in = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; generate it with `kinfra config schema > embedded/kinfra.schema.json`",
            path.display()
        )
    });
    let checked_in: Value = serde_json::from_str(&checked_in).expect("checked-in schema JSON");
    assert!(
        checked_in == printed_schema(),
        "embedded/kinfra.schema.json is stale (the config types changed): regenerate it with \
         `cargo run -- config schema > embedded/kinfra.schema.json`"
    );
    assert_eq!(
        checked_in["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
}

#[test]
fn the_schema_accepts_every_example() {
    let validator = validator();
    let mut examples: Vec<(String, Value)> = Vec::new();
    for (i, block) in readme_toml_blocks().iter().enumerate() {
        let what = format!("README toml block {}", i + 1);
        examples.push((what.clone(), tree(block, Format::Toml, &what)));
    }
    assert!(
        examples.len() >= 5,
        "README toml blocks: {}",
        examples.len()
    );
    for file in [
        "embedded/default.toml",
        "examples/five-services/kinfra.toml",
    ] {
        let text = std::fs::read_to_string(repo().join(file)).expect(file);
        examples.push((file.into(), tree(&text, Format::Toml, file)));
    }
    // What `kinfra import` makes of the sample projects is a config too.
    for source in [
        "tests/fixtures/import/rails/Procfile",
        "tests/fixtures/import/node/Procfile",
        "tests/fixtures/import/process-compose/process-compose.yaml",
        "tests/fixtures/import/compose/compose.yaml",
    ] {
        let p = Project::new();
        let path = repo().join(source);
        let out = p.run(&["import", &path.to_string_lossy(), "--dry-run"]);
        assert!(out.status.success(), "import {source}: {}", stderr(&out));
        let what = format!("import of {source}");
        examples.push((what.clone(), tree(&stdout(&out), Format::Toml, &what)));
    }
    // The YAML and JSON forms of a config go through the same trees.
    let yaml = r#"
project:
  name: shop
services:
  api:
    command: ["python3", "-m", "http.server", "${PORT}"]
    port: auto
    health: { http: /, interval: 1s }
    depends_on: { db: healthy }
    cwd: backend
  worker:
    command: ./worker
    depends_on: [api]
    restart: always
    stop_signal: SIGINT
resources:
  db:
    template: postgres
    port: 5432
    env: { POSTGRES_PASSWORD: dev }
  neon:
    provider: neon
    project: shop
    branch: main
    on_down: pause
providers:
  neon:
    token: "${NEON_API_KEY}"
    rate_limit: 5/s
routes:
  - path: /api
    service: api
    strip_prefix: true
"#;
    examples.push(("a YAML config".into(), tree(yaml, Format::Yaml, "YAML")));
    let json = r#"{"services": {"web": {"command": "sleep 100", "port": 8080,
        "scale_to_zero": {"idle_after": "10m"}}}, "proxy": {"max_body_size": "10MiB"}}"#;
    examples.push(("a JSON config".into(), tree(json, Format::Json, "JSON")));

    let mut rejected = Vec::new();
    for (what, instance) in &examples {
        let found = problems(&validator, instance);
        if !found.is_empty() {
            rejected.push(format!("{what}:\n  {}", found.join("\n  ")));
        }
    }
    assert!(
        rejected.is_empty(),
        "the schema rejects examples kinfra accepts:\n{}",
        rejected.join("\n")
    );
}

#[test]
fn the_schema_rejects_typos_and_wrong_types() {
    let validator = validator();
    for (what, toml) in [
        (
            "a typo'd service key",
            "[services.api]\ncommand = \"x\"\nprot = 8080\n",
        ),
        ("a typo'd section", "[projet]\nname = \"x\"\n"),
        (
            "a typo'd probe key",
            "[services.api]\ncommand = \"x\"\nhealth = { intervl = \"1s\" }\n",
        ),
        ("a service without command", "[services.api]\nport = 80\n"),
        (
            "a container key typo",
            "[resources.db]\ntemplate = \"postgres\"\nimgae = \"postgres:16\"\n",
        ),
        (
            "a container key on a provider resource",
            "[resources.db]\nprovider = \"neon\"\nimage = \"postgres:16\"\n",
        ),
        (
            "a bad restart policy",
            "[services.api]\ncommand = \"x\"\nrestart = \"sometimes\"\n",
        ),
        (
            "a duration without unit",
            "[services.api]\ncommand = \"x\"\nstop_grace = 10\n",
        ),
        (
            "a port out of range",
            "[services.api]\ncommand = \"x\"\nport = 70000\n",
        ),
        (
            "a typo'd route key",
            "[[routes]]\npath = \"/\"\nservise = \"api\"\n",
        ),
    ] {
        let instance = tree(toml, Format::Toml, what);
        assert!(
            !problems(&validator, &instance).is_empty(),
            "the schema accepts {what}:\n{toml}"
        );
        // kinfra agrees: each is a config error.
        let out = Project::with_config(toml).run(&["config", "check"]);
        assert_eq!(out.status.code(), Some(2), "{what}: {}", stderr(&out));
    }
}

/// Follows `$ref`s, and from an optional value (`anyOf [X, null]`) to X.
fn resolve<'a>(root: &'a Value, mut node: &'a Value) -> &'a Value {
    loop {
        if let Some(reference) = node.get("$ref").and_then(Value::as_str) {
            let name = reference.trim_start_matches("#/$defs/");
            node = &root["$defs"][name];
            continue;
        }
        if let Some(branches) = node.get("anyOf").and_then(Value::as_array)
            && let Some(object) = branches
                .iter()
                .find(|b| b.get("type") != Some(&"null".into()))
            && branches.len() == 2
        {
            node = object;
            continue;
        }
        return node;
    }
}

/// The schema node of the table at a config path such as `services.api.health`.
fn node_at<'a>(root: &'a Value, path: &str) -> &'a Value {
    let mut node = root;
    for segment in path.split('.').filter(|s| !s.is_empty()) {
        node = resolve(root, node);
        let (key, index) = match segment.split_once('[') {
            Some((key, _)) => (key, true),
            None => (segment, false),
        };
        node = match node["properties"].get(key) {
            Some(child) => child,
            // A map's entry (services.NAME).
            None => &node["additionalProperties"],
        };
        if index {
            node = &resolve(root, node)["items"];
        }
    }
    resolve(root, node)
}

#[test]
fn the_schema_has_the_keys_of_the_configs_unknown_key_errors() {
    // One unknown key in every table kinfra reads; `config check` reports each with the keys
    // the model has there ("expected one of: ..."), which the schema must list too.
    let config = r#"
zz_unknown = 1
[project]
zz_unknown = 1
[dashboard]
zz_unknown = 1
[proxy]
zz_unknown = 1
[services.api]
command = "x"
zz_unknown = 1
backoff = { zz_unknown = 1 }
crash_loop = { zz_unknown = 1 }
health = { zz_unknown = 1 }
liveness = { zz_unknown = 1 }
watch = { zz_unknown = 1 }
log = { zz_unknown = 1 }
scale_to_zero = { idle_after = "1m", zz_unknown = 1 }
[resources.db]
template = "redis"
zz_unknown = 1
[[routes]]
zz_unknown = 1
[bus]
zz_unknown = 1
[store]
zz_unknown = 1
[acme]
domains = ["example.com"]
zz_unknown = 1
[tunnel]
zz_unknown = 1
[image]
zz_unknown = 1
"#;
    let out = Project::with_config(config).run(&["config", "check"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let schema = printed_schema();
    let mut tables = Vec::new();
    for line in stderr(&out).lines() {
        let Some((_, rest)) = line.split_once("unknown key `zz_unknown` ") else {
            continue;
        };
        let (place, keys) = rest
            .split_once("; expected one of: ")
            .unwrap_or_else(|| panic!("no key list in {line}"));
        let keys = keys.split(" (did you mean").next().unwrap_or(keys);
        let path = place
            .strip_prefix("in ")
            .unwrap_or(if place == "at the top level" {
                ""
            } else {
                place
            });
        let mut expected: Vec<&str> = keys.split(", ").map(str::trim).collect();
        expected.sort_unstable();
        let node = node_at(&schema, path);
        let mut listed: Vec<&str> = node["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("no properties at `{path}` in the schema: {node}"))
            .keys()
            .map(String::as_str)
            .collect();
        listed.sort_unstable();
        assert_eq!(
            listed, expected,
            "the schema's keys at `{path}` differ from the config's"
        );
        tables.push(path.to_owned());
    }
    assert!(
        tables.len() >= 19,
        "unknown keys reported in only {} tables: {tables:?}\n{}",
        tables.len(),
        stderr(&out)
    );
}

#[test]
fn completions_load_in_bash_zsh_and_fish() {
    let script = format!(
        "source <({} completions bash) && complete -p kinfra",
        kinfra_bin()
    );
    let out = output_within(
        Command::new("bash")
            .args(["-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        Duration::from_secs(30),
        "bash completion",
    );
    assert!(out.status.success(), "bash: {}", stderr(&out));
    assert!(
        stdout(&out).contains("complete") && stdout(&out).contains("kinfra"),
        "{}",
        stdout(&out)
    );
    // fish completes a partial command from the script; zsh loads it as kinfra's completer.
    for (shell, package) in [("zsh", "zsh"), ("fish", "fish")] {
        assert!(
            Path::new("/usr/bin").join(shell).exists(),
            "{shell} is missing: apt-get install {package} (./x test installs it)"
        );
    }
    let p = Project::new();
    for (shell, file) in [("zsh", "_kinfra"), ("fish", "kinfra.fish")] {
        let out = p.run(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        p.write(file, &stdout(&out));
    }
    let fish = format!(
        "source {}; complete -C 'kinfra run'",
        p.path().join("kinfra.fish").display()
    );
    let out = output_within(
        Command::new("fish")
            .args(["--no-config", "-c", &fish])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        Duration::from_secs(30),
        "fish completion",
    );
    assert!(out.status.success(), "fish: {}", stderr(&out));
    assert!(
        stdout(&out).lines().any(|l| l.starts_with("runtime\t")),
        "fish does not complete `kinfra run` to runtime: {}",
        stdout(&out)
    );
    let zsh = format!(
        "autoload -U compinit && compinit -u -D && source {} && print -r -- ${{_comps[kinfra]}}",
        p.path().join("_kinfra").display()
    );
    let out = output_within(
        Command::new("zsh")
            .args(["-f", "-c", &zsh])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        Duration::from_secs(30),
        "zsh completion",
    );
    assert!(out.status.success(), "zsh: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "_kinfra", "zsh: {}", stderr(&out));
    let out = Project::new().run(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn the_man_page_renders() {
    let man = Path::new("/usr/bin/man");
    assert!(
        man.exists(),
        "man is missing: apt-get install man-db (./x test installs it)"
    );
    let page = Project::new().run(&["man"]);
    assert!(page.status.success(), "kinfra man: {}", stderr(&page));
    let dir = Project::new();
    let roff = dir.write("kinfra.1", &stdout(&page));
    let out = output_within(
        Command::new(man)
            .arg("-l")
            .arg(&roff)
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            .env("COLUMNS", "100")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        Duration::from_secs(30),
        "man -l",
    );
    assert!(out.status.success(), "man -l: {}", stderr(&out));
    let text = stdout(&out);
    for needle in [
        "NAME",
        "SYNOPSIS",
        "kinfra",
        "runtime",
        "completions",
        "--log-format",
    ] {
        assert!(text.contains(needle), "man page lacks {needle}:\n{text}");
    }
    // One page per command with --dir.
    let out = dir.run(&["man", "--dir", "pages"]);
    assert!(out.status.success(), "man --dir: {}", stderr(&out));
    for page in [
        "kinfra.1",
        "kinfra-runtime.1",
        "kinfra-runtime-up.1",
        "kinfra-config-schema.1",
    ] {
        assert!(dir.path().join("pages").join(page).exists(), "no {page}");
    }
}

/// `kinfra --version`'s (commit, date), checked: the commit names a commit of this repo (or
/// is `unknown` outside git), the date is `YYYY-MM-DD`.
fn version_facts() -> (String, String) {
    let out = Project::new().run(&["--version"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let line = stdout(&out).trim().to_owned();
    let rest = line
        .strip_prefix(concat!("kinfra ", env!("CARGO_PKG_VERSION"), " (commit "))
        .unwrap_or_else(|| panic!("unexpected --version: {line}"));
    let (commit, rest) = rest.split_once(", built ").expect("a build date");
    let date = rest.strip_suffix(')').expect("closing parenthesis");
    assert!(
        date.len() == 10
            && date.chars().enumerate().all(|(i, c)| if i == 4 || i == 7 {
                c == '-'
            } else {
                c.is_ascii_digit()
            }),
        "build date: {date}"
    );
    if repo().join(".git").exists() {
        let known = Command::new("git")
            .args(["cat-file", "-e", &format!("{commit}^{{commit}}")])
            .current_dir(repo())
            .status()
            .expect("git");
        assert!(
            known.success(),
            "--version names no commit of this repo: {commit}"
        );
    }
    (commit.to_owned(), date.to_owned())
}

#[test]
fn version_names_the_commit_and_build_date_and_status_json_carries_them() {
    let (commit, date) = version_facts();
    let p = Project::with_config(
        r#"
[project]
name = "version"
[dashboard]
listen = "127.0.0.1:0"
[proxy]
enabled = false
[bus]
enabled = false
[services.idle]
command = "exec sleep 1000"
"#,
    );
    let mut up = p.up(&[], &[]);
    let out = p.run(&["runtime", "status", "--json"]);
    assert!(out.status.success(), "status: {}", stderr(&out));
    let status: Value = serde_json::from_str(&stdout(&out)).expect("status JSON");
    assert_eq!(status["build"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["build"]["commit"], commit.as_str());
    assert_eq!(status["build"]["date"], date.as_str());
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
}

#[test]
fn log_format_json_prints_json_lines_and_a_bad_value_exits_2() {
    let p = Project::with_config(
        r#"
[project]
name = "logs"
[dashboard]
listen = "127.0.0.1:0"
[proxy]
enabled = false
[bus]
enabled = false
[services.idle]
command = "exec sleep 1000"
"#,
    );
    for (args, env) in [
        (vec!["--log-format", "json"], vec![("KINFRA_LOG", "info")]),
        (
            vec![],
            vec![("KINFRA_LOG", "info"), ("KINFRA_LOG_FORMAT", "json")],
        ),
    ] {
        let mut cmd = Command::new(kinfra_bin());
        cmd.args(["runtime", "up", "--color", "never"])
            .args(&args)
            .current_dir(p.path())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn runtime up");
        let stderr_pipe = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr_pipe)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // kinfra's own log at info: the first line, then what follows it closely; each one
        // JSON object.
        let mut lines: Vec<String> = rx
            .recv_timeout(Duration::from_secs(30))
            .into_iter()
            .collect();
        while !lines.is_empty()
            && lines.len() < 10
            && let Ok(line) = rx.recv_timeout(Duration::from_secs(2))
        {
            lines.push(line);
        }
        crate::support::kill(child.id(), libc::SIGTERM);
        let _ = child.wait();
        assert!(
            !lines.is_empty(),
            "no log lines on stderr with {args:?} {env:?}"
        );
        for line in &lines {
            let object: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            assert!(object["level"].is_string(), "{line}");
            assert!(object["timestamp"].is_string(), "{line}");
            assert!(object["fields"].is_object(), "{line}");
        }
    }
    // A bad value is a usage error that names it, from the flag or the environment.
    let out = p.run(&["--log-format", "xml", "runtime", "up"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("xml"), "{}", stderr(&out));
    let out = p.run_env(&["runtime", "up"], &[("KINFRA_LOG_FORMAT", "yaml")]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("yaml"), "{}", stderr(&out));
    // The default stays the readable one: not JSON.
    let mut up = p.up(&[], &[("KINFRA_LOG", "info")]);
    let line = up.wait_for_line(Duration::from_secs(30), "INFO");
    assert!(serde_json::from_str::<Value>(&line).is_err(), "{line}");
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
}
