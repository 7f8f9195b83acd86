//! Container resources through `kinfra runtime up` against a real Docker engine: a Redis
//! resource from the template and a service that waits for it to be healthy, in
//! `/__status__`, adopted (not duplicated) by the next start, stopped by a clean shutdown.
//! The postgres, mysql and nats templates each reach healthy with their generated password
//! and serve a dependent service that logs in with `${resources.db.url}`, on images made
//! with `docker import` from Debian's postgresql, mariadb-server and nats-server with the
//! official images' interface. mongodb is not packaged in Debian, so the mongodb template
//! is not run here (only resolved, in kinfra-docker's unit tests).

use crate::support::{Project, Up, stdout, unique_tag, wait_for};
use std::process::Command;
use std::time::Duration;

// The engine and test images are the ones kinfra-docker's own tests use (dockerd started
// when it is not running; images made with `docker import`, since nothing can be pulled).
#[allow(dead_code)]
#[path = "../../crates/kinfra-docker/tests/it/support.rs"]
pub(crate) mod docker_support;

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Removes the project's containers and volumes, whatever the test did.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let label = format!("label=dev.kinfra.project={}", self.0);
        for id in docker(&["ps", "-aq", "--filter", &label]).lines() {
            docker(&["rm", "-f", id]);
        }
        for v in docker(&["volume", "ls", "-q", "--filter", &label]).lines() {
            docker(&["volume", "rm", v]);
        }
    }
}

/// `GET key` from the published Redis port, with the generated password.
fn redis_get(port: u64, password: &str, key: &str) -> String {
    let out = Command::new("redis-cli")
        .args([
            "-p",
            &port.to_string(),
            "-a",
            password,
            "--no-auth-warning",
            "get",
            key,
        ])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn status(p: &Project) -> Option<serde_json::Value> {
    let out = p.run(&["runtime", "status", "--json"]);
    out.status
        .success()
        .then(|| serde_json::from_str(&stdout(&out)).ok())
        .flatten()
}

#[test]
fn redis_resource_with_a_dependent_service_survives_a_restart_without_a_duplicate() {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(docker_support::docker());
    let name = unique_tag("dock").replace('_', "-");
    let _cleanup = Cleanup(name.clone());
    let p = Project::with_config(&format!(
        r#"
[project]
name = "{name}"

[dashboard]
enabled = false

[resources.cache]
template = "redis"
image = "{image}"
port = "auto"

[services.app]
command = "redis-cli -u \"$REDIS_URL\" --no-auth-warning set greeting hello && exec sleep 1000"
env = {{ REDIS_URL = "${{resources.cache.url}}" }}
depends_on = {{ cache = "healthy" }}
"#,
        image = docker_support::REDIS
    ));
    let label = format!("label=dev.kinfra.project={name}");

    let mut up = p.up(&[], &[]);
    let report = wait_for(
        Duration::from_secs(90),
        "cache healthy and app running",
        || {
            let s = status(&p)?;
            let cache = &s["services"]["cache"];
            (cache["kind"] == "docker"
                && cache["state"] == "running"
                && cache["health"] == "healthy"
                && s["services"]["app"]["state"] == "running")
                .then_some(s)
        },
    );
    let port = report["services"]["cache"]["port"]
        .as_u64()
        .expect("cache port");
    // The app reached Redis through the connection string; the password never shows.
    let secrets = std::fs::read_to_string(p.path().join(".kinfra/resources/secrets.json"))
        .expect("generated secrets");
    let secrets: std::collections::BTreeMap<String, String> =
        serde_json::from_str(&secrets).expect("secrets json");
    let password = secrets
        .values()
        .next()
        .expect("a generated password")
        .clone();
    assert!(
        !report.to_string().contains(&password),
        "password in /__status__"
    );
    assert_eq!(redis_get(port, &password, "greeting"), "hello");
    let first = docker(&["ps", "-q", "--no-trunc", "--filter", &label]);
    assert_eq!(first.lines().count(), 1, "one container: {first}");

    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(60)).success());
    assert!(
        docker(&["ps", "-q", "--filter", &label]).is_empty(),
        "the container still runs after shutdown"
    );

    // The generated password is kept in the store: the state dir's working copy can go.
    std::fs::remove_file(p.path().join(".kinfra/resources/secrets.json")).expect("remove");

    // The next start adopts the same container instead of creating another.
    let mut up = p.up(&[], &[]);
    wait_for(Duration::from_secs(90), "cache healthy again", || {
        let s = status(&p)?;
        (s["services"]["cache"]["health"] == "healthy"
            && s["services"]["app"]["state"] == "running")
            .then_some(())
    });
    let all = docker(&["ps", "-aq", "--no-trunc", "--filter", &label]);
    assert_eq!(all, first, "a duplicate container was created");
    let restored = std::fs::read_to_string(p.path().join(".kinfra/resources/secrets.json"))
        .expect("secrets restored from the store");
    assert!(
        restored.contains(&password),
        "a different password after the restart"
    );
    assert_eq!(redis_get(port, &password, "greeting"), "hello");

    // A reload that changes the resource recreates its container (one, with a new id), and
    // the dependent service follows.
    let toml = std::fs::read_to_string(p.path().join("kinfra.toml")).expect("config");
    p.write(
        "kinfra.toml",
        &toml.replace(
            "port = \"auto\"\n",
            "port = \"auto\"\nenv = { KINFRA_TEST = \"changed\" }\n",
        ),
    );
    let out = p.run(&["runtime", "reload"]);
    assert!(out.status.success(), "{}", crate::support::stderr(&out));
    assert!(stdout(&out).contains("cache"), "{}", stdout(&out));
    let recreated = wait_for(
        Duration::from_secs(90),
        "cache recreated and healthy",
        || {
            let s = status(&p)?;
            let ids = docker(&["ps", "-aq", "--no-trunc", "--filter", &label]);
            (s["services"]["cache"]["health"] == "healthy"
                && s["services"]["app"]["state"] == "running"
                && ids.lines().count() == 1
                && ids != first)
                .then_some(ids)
        },
    );
    assert_ne!(recreated, first);
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(60)).success());
}

/// `kinfra runtime up` with a resource `db` from `template` (the test image `image`) and a
/// service `app` that, once `db` is healthy, runs `script` with `DATABASE_URL` set to
/// `${resources.db.url}` (its output goes to `app.out`). Stopped and cleaned up on drop.
struct TemplateRun {
    up: Up,
    _cleanup: Cleanup,
    /// Kept for its directory (removed last).
    _project: Project,
    /// The published port of `db`.
    port: u16,
    /// The generated password of `db`.
    password: String,
    /// What the app printed.
    out: String,
}

impl TemplateRun {
    fn start(template: &str, image: &str, run: &str, script: &str, expect: &str) -> TemplateRun {
        let name = unique_tag(template).replace('_', "-");
        let cleanup = Cleanup(name.clone());
        let p = Project::with_config(&format!(
            r#"
[project]
name = "{name}"

[dashboard]
enabled = false

[resources.db]
template = "{template}"
image = "{image}"
port = "auto"

[services.app]
command = "{run} > app.out 2>&1; exec sleep 1000"
env = {{ DATABASE_URL = "${{resources.db.url}}" }}
depends_on = {{ db = "healthy" }}
"#
        ));
        p.write(run.rsplit(' ').next().expect("script name"), script);
        let out_file = p.path().join("app.out");
        let up = p.up(&[], &[]);
        let report = wait_for(
            Duration::from_secs(90),
            "db healthy and app running",
            || {
                let s = status(&p)?;
                let db = &s["services"]["db"];
                (db["kind"] == "docker"
                    && db["state"] == "running"
                    && db["health"] == "healthy"
                    && s["services"]["app"]["state"] == "running")
                    .then_some(s)
            },
        );
        let out = wait_for(Duration::from_secs(30), "the app's output", || {
            std::fs::read_to_string(&out_file)
                .ok()
                .filter(|s| s.contains(expect) || s.contains("rror"))
        });
        assert!(out.contains(expect), "the app did not get through: {out}");
        let port = report["services"]["db"]["port"].as_u64().expect("db port");
        let secrets = std::fs::read_to_string(p.path().join(".kinfra/resources/secrets.json"))
            .expect("generated secrets");
        let secrets: std::collections::BTreeMap<String, String> =
            serde_json::from_str(&secrets).expect("secrets json");
        let password = secrets.get("db.password").expect("db's password").clone();
        assert!(password.len() >= 16, "a generated password");
        assert!(
            !report.to_string().contains(&password),
            "password in /__status__"
        );
        TemplateRun {
            up,
            _cleanup: cleanup,
            _project: p,
            port: u16::try_from(port).expect("port"),
            password,
            out,
        }
    }

    /// A clean shutdown stops the container.
    fn stop(mut self) {
        self.up.signal(libc::SIGTERM);
        assert!(self.up.wait_exit(Duration::from_secs(60)).success());
        let label = format!("label=dev.kinfra.project={}", self._cleanup.0);
        assert!(
            docker(&["ps", "-q", "--filter", &label]).is_empty(),
            "the container still runs after shutdown"
        );
    }
}

fn build_image(image: &'static docker_support::Image) -> &'static str {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(docker_support::image(image))
}

fn host(script: &str) -> (bool, String) {
    let out = Command::new("sh")
        .args(["-c", script])
        .output()
        .expect("sh");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn postgres_template_is_healthy_and_a_dependent_logs_in_with_its_url() {
    let image = build_image(&docker_support::POSTGRES_IMAGE);
    let run = TemplateRun::start(
        "postgres",
        image,
        "sh app.sh",
        "psql \"$DATABASE_URL\" -q -v ON_ERROR_STOP=1 -tA \
         -c \"create table greeting (text text)\" \
         -c \"insert into greeting values ('hello')\" \
         -c \"select text || ' from ' || current_user || ' in ' || current_database() from greeting\"\n",
        "hello from kinfra in db",
    );
    // The server wants the password: a wrong one is refused.
    let (ok, refused) = host(&format!(
        "psql postgres://kinfra:wrong@127.0.0.1:{}/db -tAc 'select 1'",
        run.port
    ));
    assert!(
        !ok && refused.contains("password authentication failed"),
        "{refused}"
    );
    let (ok, read) = host(&format!(
        "psql postgres://kinfra:{}@127.0.0.1:{}/db -tAc 'select text from greeting'",
        run.password, run.port
    ));
    assert!(ok && read.trim() == "hello", "{read} / {}", run.out);
    run.stop();
}

#[test]
fn mysql_template_is_healthy_and_a_dependent_logs_in_with_its_url() {
    let image = build_image(&docker_support::MYSQL_IMAGE);
    // The mariadb client takes no URL: the script takes `${resources.db.url}` apart.
    let run = TemplateRun::start(
        "mysql",
        image,
        "sh app.sh",
        r#"u=${DATABASE_URL#mysql://}; cred=${u%%@*}; rest=${u#*@}; hostport=${rest%%/*}
export MYSQL_PWD="${cred#*:}"
mariadb -h "${hostport%:*}" -P "${hostport##*:}" -u "${cred%%:*}" -N -B "${rest#*/}" \
  -e "create table greeting (text varchar(20)); insert into greeting values ('hello');
      select concat(text, ' from ', current_user(), ' in ', database()) from greeting"
"#,
        "hello from root@% in db",
    );
    let query = |pw: &str| {
        host(&format!(
            "MYSQL_PWD='{pw}' mariadb -h 127.0.0.1 -P {} -u root -N -B db -e 'select text from greeting'",
            run.port
        ))
    };
    let (ok, refused) = query("wrong");
    assert!(!ok && refused.contains("Access denied"), "{refused}");
    let (ok, read) = query(&run.password);
    assert!(ok && read.trim() == "hello", "{read} / {}", run.out);
    run.stop();
}

#[test]
fn nats_template_is_healthy_and_a_dependent_logs_in_with_its_url() {
    let image = build_image(&docker_support::NATS_IMAGE);
    // A NATS client speaking the protocol over TCP with the URL's token: a message it
    // publishes comes back on its subscription.
    let run = TemplateRun::start(
        "nats",
        image,
        "python3 app.py",
        r#"import json, os, socket, urllib.parse
url = urllib.parse.urlsplit(os.environ["DATABASE_URL"])
conn = socket.create_connection((url.hostname, url.port), timeout=10)
lines = conn.makefile("rb")
assert lines.readline().startswith(b"INFO ")
connect = json.dumps({"auth_token": url.username, "verbose": False})
conn.sendall(f"CONNECT {connect}\r\nSUB greeting 1\r\nPUB greeting 5\r\nhello\r\nPING\r\n".encode())
seen = []
while not seen or seen[-1] not in ("PONG", ""):
    seen.append(lines.readline().decode().strip())
    if seen[-1].startswith("-ERR"):
        break
print(seen)
if seen[:2] == ["MSG greeting 1 5", "hello"]:
    print("hello over nats")
"#,
        "hello over nats",
    );
    let refused = docker_support::nats_exchange(run.port, "wrong");
    assert!(
        refused
            .iter()
            .any(|l| l.contains("Authorization Violation")),
        "{refused:?}"
    );
    let accepted = docker_support::nats_exchange(run.port, &run.password);
    assert_eq!(
        accepted.last().map(String::as_str),
        Some("PONG"),
        "{accepted:?}"
    );
    run.stop();
}
