//! The static binary (issue 20): `dist/kinfra-x86_64-unknown-linux-musl`, built by `./x dist`
//! (which `./x test` runs first), is statically linked and runs `runtime up` in an EMPTY
//! container made with `docker import` (the binary, a static busybox that is not `/bin/sh`, a
//! CA bundle, `/tmp` and the config: no libc, no shell). The dashboard bound to 0.0.0.0 with a
//! token answers from the host through a published port; a shell-string service fails saying
//! there is no `/bin/sh`; `docker stop` ends it gracefully; the supervisor's guardian (the
//! binary itself, without a shell) kills a SIGKILLed kinfra's services; `deploy/Dockerfile`
//! builds offline from `dist/` and serves the embedded default config.

use crate::support::{alive, http_get_as, output_within, stderr, stdout, wait_for};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const TARGET: &str = "x86_64-unknown-linux-musl";
const TOKEN: &str = "dist-test-token-0123456789";
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The config copied into the image: a demo service that is the binary itself, a process
/// tree of the static busybox (array commands, no shell needed), and a shell string.
const CONFIG: &str = r#"
[project]
name = "dist"
shutdown_timeout = "10s"

[dashboard]
listen = "0.0.0.0:9000"
token = "dist-test-token-0123456789"

[proxy]
http = "127.0.0.1:9100"

[services.hello]
command = ["/kinfra", "demo", "hello", "--port", "${PORT}"]
port = "auto"
health = { http = "/healthz", interval = "1s" }

[services.tree]
command = ["/bin/busybox", "sh", "-c", "/bin/busybox sleep 1000 & exec /bin/busybox sleep 1001"]

[services.shell]
command = "echo hello && sleep 1000"
restart = "no"
"#;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The dist binary; the test fails naming `./x dist` when it is missing.
fn dist_binary() -> PathBuf {
    let path = root().join("dist").join(format!("kinfra-{TARGET}"));
    assert!(
        path.is_file(),
        "no {}: build it with `./x dist` (`./x test` does; needs rustup's {TARGET} target and Debian's musl-tools)",
        path.display()
    );
    path
}

/// Runs `cmd` to completion, its output captured (bounded: 5 minutes).
fn run(cmd: &mut Command, what: &str) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    output_within(cmd, Duration::from_secs(300), what)
}

fn docker(args: &[&str]) -> Output {
    run(
        Command::new("docker").args(args),
        &format!("docker {}", args.join(" ")),
    )
}

/// `docker ARGS`, which must succeed; its stdout trimmed.
fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        stderr(&out)
    );
    stdout(&out).trim().to_owned()
}

/// The Docker engine answers (`./x test` starts dockerd), and the static busybox and CA bundle
/// are on the host; a missing one fails naming its package.
fn prerequisites() {
    let info = Command::new("docker").arg("info").output();
    assert!(
        info.as_ref().is_ok_and(|o| o.status.success()),
        "no Docker engine: install docker.io and start dockerd (`./x test` does)"
    );
    let busybox = Command::new("file").args(["-bL", "/bin/busybox"]).output();
    assert!(
        busybox.is_ok_and(|o| stdout(&o).contains("statically linked")),
        "no static /bin/busybox: install busybox-static (and the `file` package)"
    );
    assert!(
        Path::new(CA_BUNDLE).is_file(),
        "no {CA_BUNDLE}: install ca-certificates"
    );
}

/// Removes the container when the test ends, whatever happened.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

fn name(what: &str) -> String {
    format!("kinfra-dist-{what}-{}", std::process::id())
}

/// An image this test made; removed when the test ends (after its containers: declare it
/// first).
struct Image(String);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
    }
}

/// The empty image, imported for one test: the dist binary at `/kinfra` (the entrypoint,
/// `runtime up` in `/app`), `/bin/busybox` (static; no `/bin/sh` link), the CA bundle,
/// `/tmp` and `/app/kinfra.toml`.
fn empty_image(what: &str) -> Image {
    prerequisites();
    let binary = dist_binary();
    let stage = tempfile::Builder::new()
        .prefix("kinfra-dist-image-")
        .tempdir()
        .expect("tempdir");
    let root = stage.path().join("root");
    for dir in ["bin", "tmp", "etc/ssl/certs", "app"] {
        std::fs::create_dir_all(root.join(dir)).expect("image dir");
    }
    std::fs::copy(&binary, root.join("kinfra")).expect("copy the dist binary");
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copy busybox");
    std::fs::copy(CA_BUNDLE, root.join(CA_BUNDLE.trim_start_matches('/'))).expect("CA");
    std::fs::write(root.join("app/kinfra.toml"), CONFIG).expect("config");
    let tar = stage.path().join("root.tar");
    let out = run(
        Command::new("tar")
            .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
        "tar the image root",
    );
    assert!(out.status.success(), "tar: {}", stderr(&out));
    let image = Image(format!("kinfra-test/dist-{what}:{}", std::process::id()));
    docker_ok(&[
        "import",
        "--change",
        r#"ENTRYPOINT ["/kinfra"]"#,
        "--change",
        r#"CMD ["runtime", "up", "--color", "never"]"#,
        "--change",
        "WORKDIR /app",
        tar.to_str().expect("utf-8 temp path"),
        &image.0,
    ]);
    image
}

/// The status JSON from the host, once `done` holds for it.
fn status_when(
    addr: &str,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_for(Duration::from_secs(60), what, || {
        let (code, body) = http_get_as(addr, "/__status__", Some(TOKEN)).ok()?;
        let status: serde_json::Value = serde_json::from_str(&body).ok()?;
        (code == 200 && done(&status)).then_some(status)
    })
}

/// The host address Docker published the container's port 9000 on.
fn published(container: &str) -> String {
    let mapping = docker_ok(&["port", container, "9000/tcp"]);
    mapping
        .lines()
        .find(|l| l.starts_with("127.0.0.1:"))
        .unwrap_or_else(|| panic!("no 127.0.0.1 mapping: {mapping}"))
        .to_owned()
}

#[test]
fn dist_binary_is_static_and_matches_its_checksum() {
    let binary = dist_binary();
    let kind = stdout(&run(Command::new("file").arg("-b").arg(&binary), "file"));
    assert!(
        kind.contains("statically linked") || kind.contains("static-pie linked"),
        "{kind}"
    );
    assert!(!kind.contains("interpreter"), "{kind}");
    let check = run(
        Command::new("sha256sum")
            .args(["-c", &format!("kinfra-{TARGET}.sha256")])
            .current_dir(root().join("dist")),
        "sha256sum -c",
    );
    assert!(
        check.status.success(),
        "{}{}",
        stdout(&check),
        stderr(&check)
    );
}

#[test]
fn dist_binary_runs_runtime_up_in_an_empty_container() {
    let image = empty_image("up");
    let container = Container(name("up"));
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &container.0,
        "-p",
        "127.0.0.1::9000",
        &image.0,
    ]);
    let addr = published(&container.0);
    let logs = || {
        let out = docker(&["logs", &container.0]);
        format!("{}{}", stdout(&out), stderr(&out))
    };

    // The dashboard answers from the host: services running, the demo (the binary itself)
    // healthy, the busybox tree running without a shell.
    let status = status_when(&addr, "hello healthy and tree running", |s| {
        s["services"]["hello"]["health"] == "healthy"
            && s["services"]["tree"]["state"] == "running"
            && s["services"]["shell"]["state"] == "failed"
    });
    assert_eq!(status["project"], "dist");
    // A client outside the container is not local: no token, no status.
    let (code, _) = http_get_as(&addr, "/__status__", None).expect("GET without a token");
    assert_eq!(code, 401, "status without the token");

    // The shell string fails with the reason, in the status's log lines and kinfra's output.
    let shell = &status["services"]["shell"];
    let reason = "command is a shell string but /bin/sh does not exist; use an array command or include a static sh";
    assert!(
        shell.to_string().contains(reason),
        "shell service: {shell:#}\nlogs:\n{}",
        logs()
    );
    assert!(logs().contains("/bin/sh does not exist"), "{}", logs());

    // `docker stop` (SIGTERM to kinfra as PID 1) ends it gracefully, well within the grace:
    // exit code 0, not 137 (SIGKILL after the grace).
    docker_ok(&["stop", "-t", "60", &container.0]);
    let code = docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", &container.0]);
    assert_eq!(code, "0", "exit code after docker stop; logs:\n{}", logs());
}

/// Host PIDs and command lines of the container's processes (`docker top`).
fn processes(container: &str) -> Vec<(u32, String)> {
    docker_ok(&["top", container, "-eo", "pid,args"])
        .lines()
        .skip(1)
        .filter_map(|l| {
            let (pid, args) = l.trim().split_once(char::is_whitespace)?;
            Some((pid.parse().ok()?, args.trim().to_owned()))
        })
        .collect()
}

#[test]
fn guardian_kills_a_killed_kinfras_services_without_a_shell() {
    let image = empty_image("guardian");
    let container = Container(name("guardian"));
    // PID 1 is a busybox sleep, so a SIGKILLed kinfra does not take the container (and every
    // process in it) along: only the guardian can clean up after it.
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &container.0,
        "--entrypoint",
        "/bin/busybox",
        &image.0,
        "sleep",
        "3600",
    ]);
    docker_ok(&[
        "exec",
        "-d",
        &container.0,
        "/kinfra",
        "runtime",
        "up",
        "--color",
        "never",
    ]);
    let find = |all: &[(u32, String)], args: &str| {
        all.iter()
            .find(|(_, a)| a.as_str() == args)
            .map(|(pid, _)| *pid)
    };
    let (kinfra, grandchild, guardian) = wait_for(
        Duration::from_secs(60),
        "kinfra, the tree's grandchild and the guardian in the container",
        || {
            let all = processes(&container.0);
            Some((
                find(&all, "/kinfra runtime up --color never")?,
                find(&all, "/bin/busybox sleep 1000")?,
                find(&all, "kinfra-guardian")?,
            ))
        },
    );
    // SIGKILL: no shutdown runs. The tree's shell had the parent-death signal, its
    // backgrounded grandchild did not.
    crate::support::kill(kinfra, libc::SIGKILL);
    wait_for(
        Duration::from_secs(30),
        "the grandchild killed by the guardian",
        || (!alive(grandchild)).then_some(()),
    );
    wait_for(Duration::from_secs(30), "the guardian gone", || {
        (!alive(guardian)).then_some(())
    });
    let left: Vec<_> = processes(&container.0)
        .into_iter()
        .filter(|(pid, _)| alive(*pid))
        .collect();
    assert!(
        left.iter()
            .all(|(_, args)| args == "/bin/busybox sleep 3600"),
        "left in the container: {left:?}"
    );
}

#[test]
fn deploy_dockerfile_builds_offline_and_serves_the_default_config() {
    prerequisites();
    dist_binary();
    assert!(
        root().join("dist/ca-certificates.crt").is_file(),
        "no dist/ca-certificates.crt: `./x dist` copies it there"
    );
    let image = Image(format!("kinfra-test/dockerfile:{}", std::process::id()));
    let out = run(
        Command::new("docker")
            .args([
                "build",
                "-q",
                "-f",
                "deploy/Dockerfile",
                "-t",
                &image.0,
                ".",
            ])
            .current_dir(root()),
        "docker build -f deploy/Dockerfile",
    );
    assert!(out.status.success(), "docker build: {}", stderr(&out));
    let container = Container(name("dockerfile"));
    let token = format!("KINFRA_DASHBOARD_TOKEN={TOKEN}");
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &container.0,
        "-p",
        "127.0.0.1::9000",
        "-e",
        "KINFRA_DASHBOARD__LISTEN=0.0.0.0:9000",
        "-e",
        &token,
        &image.0,
    ]);
    let addr = published(&container.0);
    let status = status_when(&addr, "the default config's demo healthy", |s| {
        s["services"]["hello"]["health"] == "healthy"
            && s["services"]["ticker"]["state"] == "running"
    });
    assert_eq!(status["project"], "kinfra-demo");
    docker_ok(&["stop", "-t", "60", &container.0]);
    let code = docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", &container.0]);
    assert_eq!(code, "0", "exit code after docker stop");
}
