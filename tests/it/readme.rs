//! The README's configuration examples, checked: every `toml` block is a kinfra.toml (every
//! `yaml` / `yml` block a kinfra.yaml) that `kinfra config check` accepts (with the environment
//! variables it names set), the hybrid example (a local Redis container, a Neon database, a
//! Supabase project) stays under 25 lines, and the quick start runs for real: its request
//! through the proxy answers 200.

use crate::support::{Project, http_get, pids_tagged, stderr, unique_tag, wait_for};
use std::net::TcpListener;
use std::time::{Duration, Instant};

const README: &str = include_str!("../../README.md");

/// The bodies of `text`'s code blocks opened with one of `fences` (e.g. "```toml\n"), in order.
fn blocks_in(text: &str, fences: &[&str]) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some((start, fence)) = fences
        .iter()
        .filter_map(|f| rest.find(f).map(|i| (i, *f)))
        .min_by_key(|(i, _)| *i)
    {
        let body = &rest[start + fence.len()..];
        let Some(end) = body.find("```") else {
            panic!("README: a {fence:?} block is not closed");
        };
        blocks.push(body[..end].to_owned());
        rest = &body[end + "```".len()..];
    }
    blocks
}

/// The README's `toml` code blocks, in order.
fn toml_blocks() -> Vec<String> {
    blocks_in(README, &["```toml\n"])
}

/// The README's `yaml` / `yml` code blocks, in order.
fn yaml_blocks() -> Vec<String> {
    blocks_in(README, &["```yaml\n", "```yml\n"])
}

/// The `${NAME}` environment variables a block refers to (not `${resources...}`, `${PORT}`).
fn env_names(block: &str) -> Vec<String> {
    block
        .split("${")
        .skip(1)
        .filter_map(|s| s.split_once('}'))
        .map(|(name, _)| name.split(":-").next().unwrap_or(name).to_owned())
        .filter(|n| n != "PORT" && !n.contains('.'))
        .collect()
}

/// Runs `kinfra config check` on `block` written as `file`; panics naming the block when it
/// is rejected.
fn assert_config_check_accepts(file: &str, block: &str) {
    let p = Project::new();
    p.write(file, block);
    let names = env_names(block);
    let env: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "x-value")).collect();
    let out = p.run_env(&["config", "check", "-c", file], &env);
    assert!(
        out.status.success(),
        "README block rejected as {file}:\n{block}\n{}",
        stderr(&out)
    );
}

#[test]
fn every_readme_config_example_passes_config_check() {
    let blocks = toml_blocks();
    assert!(blocks.len() >= 5, "README toml blocks: {}", blocks.len());
    for block in &blocks {
        assert_config_check_accepts("kinfra.toml", block);
    }
    for block in yaml_blocks() {
        assert_config_check_accepts("kinfra.yaml", &block);
    }
    let hybrid = blocks
        .iter()
        .find(|b| b.contains("provider = \"neon\"") && b.contains("provider = \"supabase\""))
        .expect("the README shows a Neon + Supabase + container config");
    assert!(hybrid.contains("template = \"redis\""), "{hybrid}");
    assert!(
        hybrid.lines().count() < 25,
        "hybrid example too long:\n{hybrid}"
    );
}

#[test]
fn readme_block_extraction_finds_toml_and_yaml_fences() {
    let text = "a\n```toml\nx = 1\n```\n```sh\nls\n```\n```yml\na: 1\n```\n```yaml\nb: 2\n```\n";
    assert_eq!(blocks_in(text, &["```toml\n"]), vec!["x = 1\n"]);
    assert_eq!(
        blocks_in(text, &["```yaml\n", "```yml\n"]),
        vec!["a: 1\n", "b: 2\n"]
    );
}

/// The quick start's kinfra.toml: the first `toml` block under `## Quick start`.
fn quick_start_config() -> String {
    let section = README
        .split_once("## Quick start\n")
        .map(|(_, rest)| rest)
        .expect("README has a `## Quick start` section");
    let section = section.split("\n## ").next().unwrap_or(section);
    blocks_in(section, &["```toml\n"])
        .into_iter()
        .next()
        .expect("the quick start shows a kinfra.toml")
}

/// A port free on 127.0.0.1 right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Followed as a new user would: the quick start's kinfra.toml, `runtime up`, the first
/// request through the proxy to the quick start's route answers 200, `runtime down` stops
/// everything, no process left. Only the listen addresses and the db's fixed port are moved, and
/// a tag added to `[env]` (through the documented `KINFRA_...` overrides), so tests running in
/// parallel do not collide.
#[test]
fn readme_quick_start_runs_and_its_route_answers_200() {
    let config = quick_start_config();
    let parsed: toml::Table = toml::from_str(&config).expect("the quick start is TOML");
    let route = parsed["routes"]
        .as_array()
        .and_then(|r| r.first())
        .and_then(|r| r.as_table())
        .expect("the quick start has a [[routes]] entry");
    let route_path = route["path"].as_str().expect("route path").to_owned();
    let service = route["service"].as_str().expect("route service").to_owned();
    assert!(
        config.contains("python3"),
        "the quick start's demo services run python3:\n{config}"
    );
    assert!(
        std::process::Command::new("python3")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "python3 is needed (apt-get install python3)"
    );

    let p = Project::with_config(&config);
    let db_port = free_port().to_string();
    let tag = unique_tag("readme");
    let mut env = vec![
        ("KINFRA_DASHBOARD__LISTEN", "127.0.0.1:0"),
        // Every service gets KINFRA_TEST_TAG, to find its processes after `runtime down`.
        ("KINFRA_ENV__KINFRA_TEST_TAG", tag.as_str()),
    ];
    if parsed["services"]
        .get("db")
        .and_then(|db| db.get("port"))
        .is_some_and(|port| port.is_integer())
    {
        env.push(("KINFRA_SERVICES__DB__PORT", db_port.as_str()));
    }
    let mut up = p.up(&[], &env);
    let line = up.wait_for_line(Duration::from_secs(5), "proxy       http://");
    let proxy = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .expect("proxy address in the banner")
        .to_owned();
    let dashboard = up.dashboard_addr();

    // The routed service comes up after its dependencies (db healthy, migrate done).
    wait_for(
        Duration::from_secs(60),
        &format!("{service} healthy"),
        || {
            let (_, body) = http_get(&dashboard, "/__status__").ok()?;
            let status: serde_json::Value = serde_json::from_str(&body).ok()?;
            (status["services"][&service]["health"] == "healthy").then_some(())
        },
    );
    let request = format!("{}/", route_path.trim_end_matches('/'));
    // The proxy follows the state through events, a moment after the status shows it.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, body) = http_get(&proxy, &request).unwrap_or((0, String::new()));
        if code == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "GET {request} through the proxy answered {code}, not 200, for 15 s:\n{body}\n\
             config:\n{config}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    assert!(!pids_tagged(&tag).is_empty(), "the services run tagged");
    let out = p.run(&["runtime", "down"]);
    assert!(out.status.success(), "runtime down: {}", stderr(&out));
    let status = up.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "runtime up exited with {status:?}");
    wait_for(Duration::from_secs(10), "no service process left", || {
        pids_tagged(&tag).is_empty().then_some(())
    });
}

/// The README's "build the config in code" example routes `/api` to `python3 -m http.server`
/// too: it strips the prefix, and its code compiles as written here.
#[test]
fn readme_builder_example_strips_its_route_prefix() {
    use kinfra::{Config, PortSpec, ServiceConfig, config::RouteConfig};
    let readme_line = r#"    .route_config(RouteConfig { path: "/api".into(), strip_prefix: true, ..RouteConfig::to("api") })"#;
    assert!(
        README.contains(&format!("{readme_line}\n")),
        "README's builder example lacks:\n{readme_line}"
    );
    let config = Config::builder()
        .project("demo")
        .service(
            "api",
            ServiceConfig::new("python3 -m http.server ${PORT}").port(PortSpec::Auto),
        )
        .route_config(RouteConfig {
            path: "/api".into(),
            strip_prefix: true,
            ..RouteConfig::to("api")
        })
        .build()
        .expect("the README's builder example builds");
    assert_eq!(config.routes.len(), 1);
    assert!(config.routes[0].strip_prefix, "{:?}", config.routes[0]);
    assert_eq!(config.routes[0].path, "/api");
}
