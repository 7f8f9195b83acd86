//! `kinfra import` through the built binary: each sample project (tests/fixtures/import)
//! imports into a config that `kinfra config check` accepts, the report names what did not
//! map at its line, bad input exits 2 at its line, `--dry-run` and `-o` behave, and an
//! imported Procfile project runs and answers on its port.

use crate::docker::docker_support;
use crate::support::{Project, http_get, stderr, stdout, unique_tag, wait_for};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

/// A project dir holding a copy of the fixture dir `name` (with its dotfiles).
fn fixture_project(name: &str) -> Project {
    let p = Project::new();
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/import")
        .join(name);
    for entry in std::fs::read_dir(&src).expect("fixture dir") {
        let entry = entry.expect("fixture entry");
        std::fs::copy(entry.path(), p.path().join(entry.file_name())).expect("copy fixture");
    }
    p
}

#[test]
fn every_sample_imports_into_a_config_that_passes_check() {
    for (dir, file, counts) in [
        ("rails", "Procfile", "5 services, 0 resources"),
        ("node", "Procfile", "4 services, 0 resources"),
        (
            "process-compose",
            "process-compose.yaml",
            "6 services, 0 resources",
        ),
        ("compose", "compose.yaml", "0 services, 3 resources"),
    ] {
        let p = fixture_project(dir);
        let out = p.run(&["import", file]);
        assert!(out.status.success(), "{dir}: {}", stderr(&out));
        assert!(stderr(&out).contains(counts), "{dir}: {}", stderr(&out));
        let check = p.run(&["config", "check"]);
        assert!(
            check.status.success(),
            "{dir}: config check failed:\n{}\n--- kinfra.toml:\n{}",
            stderr(&check),
            std::fs::read_to_string(p.path().join("kinfra.toml")).unwrap_or_default()
        );
    }
}

#[test]
fn procfile_and_compose_merge_into_one_config() {
    let p = fixture_project("rails");
    for entry in ["compose.yaml", "db.env"] {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/import/compose")
            .join(entry);
        std::fs::copy(src, p.path().join(entry)).expect("copy");
    }
    let out = p.run(&["import", "Procfile", "compose.yaml", "-o", "merged.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let check = p.run(&["config", "check", "-c", "merged.toml"]);
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(
        stdout(&check).contains("5 services, 3 resources"),
        "{}",
        stdout(&check)
    );
}

#[test]
fn the_report_names_build_and_other_unmapped_keys_with_their_lines() {
    let p = fixture_project("compose");
    let out = p.run(&["import", "compose.yaml", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = stderr(&out);
    assert!(
        report.contains("compose.yaml:39: not imported: `services.app.build`"),
        "{report}"
    );
    assert!(
        report.contains("compose.yaml:56: not imported: `services.worker.build`"),
        "{report}"
    );
    assert!(report.contains("`services.worker.deploy`"), "{report}");
    assert!(report.contains("`networks`"), "{report}");
}

#[test]
fn dry_run_prints_the_config_and_writes_nothing() {
    let p = fixture_project("rails");
    let out = p.run(&["import", "Procfile", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let toml = stdout(&out);
    assert!(toml.contains("[services.web]"), "{toml}");
    assert!(toml.contains("port = \"auto\""), "{toml}");
    assert!(toml.contains("# The app server"), "{toml}");
    assert!(stderr(&out).contains("nothing written"), "{}", stderr(&out));
    assert!(!p.path().join("kinfra.toml").exists());
}

#[test]
fn an_existing_output_is_kept_unless_forced() {
    let p = fixture_project("node");
    p.write("kinfra.toml", "# mine\n");
    let out = p.run(&["import", "Procfile"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(p.path().join("kinfra.toml")).expect("read"),
        "# mine\n"
    );
    let out = p.run(&["import", "Procfile", "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(p.path().join("kinfra.toml")).expect("read");
    assert!(text.contains("[services.web]"), "{text}");
}

#[test]
fn bad_input_exits_2_with_file_line_and_what_was_expected() {
    let p = Project::new();
    p.write(
        "compose.yaml",
        "services:\n  db:\n    image: postgres\n    ports: [\"5432:5432\"\n  cache:\n    image: redis\n",
    );
    let out = p.run(&["import", "compose.yaml"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("compose.yaml:5:"), "{err}");
    assert!(err.contains("invalid YAML"), "{err}");
    p.write("Procfile", "web: ./server\nthis line has no name\n");
    let out = p.run(&["import", "Procfile"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Procfile:2: expected `name: command`"),
        "{}",
        stderr(&out)
    );
    let out = p.run(&["import", "missing/Procfile"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("missing/Procfile: cannot read the file"),
        "{}",
        stderr(&out)
    );
    assert!(!p.path().join("kinfra.toml").exists());
}

/// The Procfile sits in `web/` and the config is written one level up: the service still
/// runs in `web/` (foreman runs a Procfile's commands in its directory), which serves the
/// page.
#[test]
fn an_imported_procfile_project_runs_and_answers_on_its_port() {
    let p = Project::new();
    std::fs::create_dir(p.path().join("web")).expect("mkdir web");
    p.write("web/index.html", "hello from an imported Procfile\n");
    p.write(
        "web/Procfile",
        "# the web process reads $PORT, as foreman gives it\nweb: python3 -m http.server $PORT --bind 127.0.0.1\n",
    );
    p.write("web/.env", "GREETING=hi\n");
    let out = p.run(&["import", "web/Procfile", "-o", "kinfra.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut up = p.up(&[], &[("KINFRA_DASHBOARD__LISTEN", "127.0.0.1:0")]);
    let addr = up.dashboard_addr();
    let port = wait_for(Duration::from_secs(30), "web running with a port", || {
        let (_, body) = http_get(&addr, "/__status__").ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let web = &v["services"]["web"];
        (web["state"] == "running")
            .then(|| web["port"].as_u64())
            .flatten()
    });
    let (code, body) = wait_for(Duration::from_secs(20), "web answers", || {
        http_get(&format!("127.0.0.1:{port}"), "/index.html").ok()
    });
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("hello from an imported Procfile"), "{body}");
    up.signal(libc::SIGINT);
    let status = up.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
}

/// Removes a project's containers and volumes (by kinfra's label), whatever the test did.
struct DockerCleanup(String);

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        let docker = |args: &[&str]| {
            std::process::Command::new("docker")
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        let label = format!("label=dev.kinfra.project={}", self.0);
        for id in docker(&["ps", "-aq", "--filter", &label]).lines() {
            docker(&["rm", "-f", id]);
        }
        for v in docker(&["volume", "ls", "-q", "--filter", &label]).lines() {
            docker(&["volume", "rm", v]);
        }
    }
}

/// A compose service on a real Docker engine (the Redis test image, made with `docker
/// import`): imported, it runs as a container resource, its compose healthcheck (run through
/// `docker exec` on kinfra's container name) makes it healthy, and it answers on the port
/// kinfra published; the `build:`-only service beside it is reported, not run.
#[test]
fn an_imported_compose_service_runs_and_its_healthcheck_passes() {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(docker_support::docker());
    let name = unique_tag("import").replace('_', "-");
    let _cleanup = DockerCleanup(name.clone());
    let p = Project::new();
    p.write(
        "compose.yaml",
        &format!(
            r#"name: {name}
services:
  cache:
    image: {image}
    command: ["redis-server", "--protected-mode", "no", "--save", ""]
    ports:
      - "6379"
    volumes:
      - cachedata:/data
    healthcheck:
      test: ["CMD", "redis-cli", "ping"]
      interval: 1s
  web:
    build: .
    depends_on:
      cache:
        condition: service_healthy
volumes:
  cachedata:
"#,
            image = docker_support::REDIS
        ),
    );
    let out = p.run(&["import", "compose.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("compose.yaml:14: not imported: `services.web.build`"),
        "{}",
        stderr(&out)
    );
    let mut up = p.up(&[], &[("KINFRA_DASHBOARD__LISTEN", "127.0.0.1:0")]);
    let addr = up.dashboard_addr();
    let port = wait_for(
        Duration::from_secs(120),
        "cache running and healthy",
        || {
            let (_, body) = http_get(&addr, "/__status__").ok()?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let cache = &v["services"]["cache"];
            (cache["kind"] == "docker"
                && cache["state"] == "running"
                && cache["health"] == "healthy")
                .then(|| cache["port"].as_u64())
                .flatten()
        },
    );
    let pong = wait_for(
        Duration::from_secs(20),
        "PONG on the published port",
        || {
            let mut conn = TcpStream::connect(("127.0.0.1", u16::try_from(port).ok()?)).ok()?;
            conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            conn.write_all(b"PING\r\n").ok()?;
            let mut buf = [0u8; 64];
            let n = conn.read(&mut buf).ok()?;
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            text.starts_with("+PONG").then_some(text)
        },
    );
    assert!(pong.starts_with("+PONG"), "{pong}");
    up.signal(libc::SIGINT);
    let status = up.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status:?}");
}
