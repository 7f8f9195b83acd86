//! The VPS deploy (issue 20): `kinfra runtime up` under a `Type=notify` unit speaks sd_notify
//! to a real datagram socket (a path and an abstract `@name`): READY=1 once the dashboard and
//! the proxy answer, WATCHDOG=1 pings, RELOADING=1/READY=1 around SIGHUP, STOPPING=1 at
//! SIGTERM, and services do not inherit NOTIFY_SOCKET. `deploy/install.sh` into a staging
//! root, and `systemd-analyze verify` on the unit it installed.

use crate::support::{Project, http_get, output_within, stderr, stdout, unique_tag, wait_for};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The test's end of `$NOTIFY_SOCKET`: every datagram kinfra sent, in order.
struct NotifySocket {
    socket: UnixDatagram,
    seen: Vec<String>,
}

impl NotifySocket {
    fn at_path(path: &Path) -> Self {
        Self::new(UnixDatagram::bind(path).expect("bind the notify socket"))
    }

    fn at_abstract_name(name: &str) -> Self {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("abstract address");
        Self::new(UnixDatagram::bind_addr(&addr).expect("bind the abstract notify socket"))
    }

    fn new(socket: UnixDatagram) -> Self {
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        Self {
            socket,
            seen: Vec::new(),
        }
    }

    /// Receives until `done(all messages so far)` holds; panics naming `what` after `limit`.
    fn until(&mut self, limit: Duration, what: &str, done: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + limit;
        let mut buf = vec![0u8; 4096];
        while !done(&self.seen) {
            if Instant::now() > deadline {
                panic!(
                    "no {what} within {limit:?}; messages so far: {:?}",
                    self.seen
                );
            }
            match self.socket.recv(&mut buf) {
                Ok(n) => self
                    .seen
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("recv on the notify socket: {e}"),
            }
        }
    }

    /// Waits for the `n`th message that has the line `line`; returns it.
    fn nth_with(&mut self, n: usize, line: &str, limit: Duration) -> String {
        let has = |m: &String| m.lines().any(|l| l == line);
        self.until(limit, &format!("{n} × {line}"), |all| {
            all.iter().filter(|m| has(m)).count() >= n
        });
        self.seen
            .iter()
            .filter(|m| has(m))
            .nth(n - 1)
            .cloned()
            .expect("counted above")
    }

    fn index_of(&self, line: &str, from: usize) -> Option<usize> {
        self.seen
            .iter()
            .enumerate()
            .skip(from)
            .find(|(_, m)| m.lines().any(|l| l == line))
            .map(|(i, _)| i)
    }
}

/// A value of a `KEY=VALUE` line of an sd_notify message.
fn field<'a>(message: &'a str, key: &str) -> &'a str {
    message
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {message:?}"))
}

/// The `host:port` after `name http://` in READY's STATUS text.
fn status_addr(status: &str, name: &str) -> String {
    status
        .split(&format!("{name} http://"))
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no {name} address in STATUS {status:?}"))
        .to_owned()
}

fn config(tag: &str, env_file: &Path) -> String {
    format!(
        "[project]\nname = \"vps\"\n[env]\nKINFRA_TEST_TAG = \"{tag}\"\n\
         [dashboard]\nlisten = \"127.0.0.1:0\"\n\
         [services.printenv]\ncommand = \"env > '{}.tmp' && mv '{0}.tmp' '{0}'; exec sleep 1000\"\n",
        env_file.display()
    )
}

#[test]
fn runtime_up_notifies_ready_watchdog_reload_and_stopping_on_a_socket_file() {
    let tag = unique_tag("notify");
    let dir = tempfile::tempdir().expect("tempdir");
    let env_file = dir.path().join("printenv.env");
    let p = Project::with_config(&config(&tag, &env_file));
    let socket_path = dir.path().join("notify.sock");
    let mut notify = NotifySocket::at_path(&socket_path);
    let socket_text = socket_path.to_str().expect("utf-8 path");
    let mut up = p.up(
        &[],
        &[("NOTIFY_SOCKET", socket_text), ("WATCHDOG_USEC", "400000")],
    );

    let ready = notify.nth_with(1, "READY=1", Duration::from_secs(60));
    // Right after READY=1, both answer (READY's STATUS names where).
    let status = field(&ready, "STATUS").to_owned();
    let dashboard = status_addr(&status, "dashboard");
    let proxy = status_addr(&status, "proxy");
    let (code, _) = http_get(&dashboard, "/healthz").expect("dashboard answers");
    assert_eq!(code, 200, "dashboard /healthz right after READY=1");
    let (code, _) = http_get(&proxy, "/").expect("proxy answers");
    assert!(
        (100..600).contains(&code),
        "proxy right after READY=1: {code}"
    );
    assert_eq!(field(&ready, "MAINPID"), up.pid().to_string());

    // WATCHDOG_USEC=400000: a ping every 200 ms, from the runtime's loop.
    notify.nth_with(2, "WATCHDOG=1", Duration::from_secs(20));

    // The service's environment: kinfra's, without the service manager's variables.
    let env = wait_for(Duration::from_secs(30), "the service's env file", || {
        std::fs::read_to_string(&env_file).ok()
    });
    assert!(env.contains(&format!("KINFRA_TEST_TAG={tag}")), "{env}");
    for name in ["NOTIFY_SOCKET=", "WATCHDOG_USEC=", "WATCHDOG_PID="] {
        assert!(
            !env.lines().any(|l| l.starts_with(name)),
            "the service inherited {name}: {env}"
        );
    }

    // SIGHUP: RELOADING=1 (with MONOTONIC_USEC), then READY=1 again.
    up.signal(libc::SIGHUP);
    let reloading = notify.nth_with(1, "RELOADING=1", Duration::from_secs(30));
    assert!(
        field(&reloading, "MONOTONIC_USEC").parse::<u64>().is_ok(),
        "{reloading}"
    );
    notify.nth_with(2, "READY=1", Duration::from_secs(30));
    let reloading_at = notify.index_of("RELOADING=1", 0).expect("seen");
    assert!(
        notify.index_of("READY=1", reloading_at + 1).is_some(),
        "READY=1 after RELOADING=1: {:?}",
        notify.seen
    );

    // SIGTERM: STOPPING=1 is sent when shutdown starts, before kinfra exits.
    up.signal(libc::SIGTERM);
    let status = up.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status:?}\n{}", up.lines().join("\n"));
    let stopping = notify.nth_with(1, "STOPPING=1", Duration::from_secs(5));
    assert!(field(&stopping, "STATUS").contains("SIGTERM"), "{stopping}");
}

#[test]
fn runtime_up_notifies_an_abstract_socket() {
    let tag = unique_tag("notify-abstract");
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Project::with_config(&config(&tag, &dir.path().join("printenv.env")));
    let name = format!("kinfra-it-{tag}");
    let mut notify = NotifySocket::at_abstract_name(&name);
    let mut up = p.up(&[], &[("NOTIFY_SOCKET", &format!("@{name}"))]);
    let ready = notify.nth_with(1, "READY=1", Duration::from_secs(60));
    let dashboard = status_addr(field(&ready, "STATUS"), "dashboard");
    let (code, _) = http_get(&dashboard, "/healthz").expect("dashboard answers");
    assert_eq!(code, 200);
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(60)).success());
    notify.nth_with(1, "STOPPING=1", Duration::from_secs(5));
    // No WATCHDOG_USEC: no pings.
    assert!(
        notify.index_of("WATCHDOG=1", 0).is_none(),
        "{:?}",
        notify.seen
    );
}

#[test]
fn a_notify_socket_nobody_listens_on_is_warned_about_once_and_changes_nothing_else() {
    let tag = unique_tag("notify-bad");
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Project::with_config(&config(&tag, &dir.path().join("printenv.env")));
    let nobody = dir.path().join("nobody-listens.sock");
    let mut up = p.up(
        &[],
        &[
            ("NOTIFY_SOCKET", nobody.to_str().expect("utf-8 path")),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    up.wait_for_line(Duration::from_secs(30), "Cannot notify the service manager");
    let dashboard = up.dashboard_addr();
    let (code, _) = http_get(&dashboard, "/healthz").expect("dashboard answers");
    assert_eq!(code, 200);
    // READY=1, pings and STOPPING=1 all fail: still one warning, and a clean stop.
    up.signal(libc::SIGTERM);
    let status = up.wait_exit(Duration::from_secs(60));
    let lines = up.lines();
    assert!(status.success(), "{status:?}\n{}", lines.join("\n"));
    let warnings = lines.iter().filter(|l| l.contains("NOTIFY_SOCKET")).count();
    assert_eq!(warnings, 1, "{}", lines.join("\n"));
}

// ---- deploy/install.sh and the unit ----

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A stand-in for the static binary (install.sh copies it, never runs it).
fn stub_binary(path: &Path) {
    std::fs::write(path, "#!/bin/sh\necho kinfra stub\n").expect("write stub");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn install(script: &Path, args: &[&str]) -> Output {
    install_with_path(script, args, None)
}

/// install.sh with `dir` first on `PATH`, and standing in for `/run/systemd/system` (systemd
/// runs).
fn install_with_path(script: &Path, args: &[&str], dir: Option<&Path>) -> Output {
    let mut cmd = Command::new("sh");
    if let Some(dir) = dir {
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("{}:{path}", dir.display()))
            .env("KINFRA_SYSTEMD_RUN_DIR", dir);
    }
    cmd.arg(script)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    output_within(&mut cmd, Duration::from_secs(60), "deploy/install.sh")
}

/// A copy of deploy/ (and an empty dist/) as in an unpacked release.
fn release_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("deploy")).expect("mkdir deploy");
    std::fs::create_dir(dir.path().join("dist")).expect("mkdir dist");
    for file in ["install.sh", "kinfra.service"] {
        std::fs::copy(
            repo().join("deploy").join(file),
            dir.path().join("deploy").join(file),
        )
        .expect("copy deploy file");
    }
    dir
}

fn sha256(path: &Path) -> String {
    let out = output_within(
        Command::new("sha256sum").arg(path).stdout(Stdio::piped()),
        Duration::from_secs(30),
        "sha256sum",
    );
    stdout(&out)
        .split_whitespace()
        .next()
        .expect("a hash")
        .to_owned()
}

/// `KEY=value` of the unit's `[Service]` section.
fn unit_value(unit: &str, key: &str) -> String {
    unit.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in the unit"))
        .to_owned()
}

/// `systemd-analyze verify` on `unit` (ExecStart rewritten to `binary`, which exists): passes
/// with nothing said (it exits 0 on settings it ignores, so its output counts too).
fn verify_unit(unit: &str, exec_start: &str, binary: &Path) {
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("kinfra.service");
    let text = unit.replace(
        &format!("ExecStart={exec_start} "),
        &format!("ExecStart={} ", binary.display()),
    );
    std::fs::write(&copy, text).expect("write unit copy");
    let mut cmd = Command::new("systemd-analyze");
    cmd.args(["verify", "--man=no"])
        .arg(&copy)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = match cmd.spawn() {
        Ok(child) => child.wait_with_output().expect("systemd-analyze"),
        Err(e) => panic!("systemd-analyze: {e} (Debian package systemd; ./x test installs it)"),
    };
    assert!(
        out.status.success() && stderr(&out).trim().is_empty() && stdout(&out).trim().is_empty(),
        "systemd-analyze verify: {:?}\n{}{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
}

#[test]
fn install_sh_puts_the_binary_unit_and_config_where_the_unit_expects_them() {
    let release = release_dir();
    let script = release.path().join("deploy/install.sh");
    let binary = release.path().join("dist/kinfra");
    stub_binary(&binary);
    let root = tempfile::tempdir().expect("tempdir");
    let root_arg = root.path().to_str().expect("utf-8 path");
    // A systemctl that records its calls, on a "host" where systemd runs: a staging root gets
    // no calls.
    let fake_bin = tempfile::tempdir().expect("tempdir");
    let calls = fake_bin.path().join("calls");
    std::fs::write(
        fake_bin.path().join("systemctl"),
        format!("#!/bin/sh\necho \"$*\" >> '{}'\n", calls.display()),
    )
    .expect("write fake systemctl");
    std::fs::set_permissions(
        fake_bin.path().join("systemctl"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let out = install_with_path(&script, &["--root", root_arg], Some(fake_bin.path()));
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(!calls.exists(), "systemctl was called for a staging root");

    let unit_path = root.path().join("etc/systemd/system/kinfra.service");
    let unit = std::fs::read_to_string(&unit_path).expect("the unit is installed");
    assert_eq!(unit_value(&unit, "Type"), "notify");
    assert_eq!(unit_value(&unit, "NotifyAccess"), "main");
    assert_eq!(unit_value(&unit, "WatchdogSec"), "30s");
    assert_eq!(unit_value(&unit, "StateDirectory"), "kinfra");
    // ExecStart's binary and config, and the working directory, are what install.sh wrote.
    let exec_start = unit_value(&unit, "ExecStart");
    let words: Vec<&str> = exec_start.split_whitespace().collect();
    assert_eq!(words[0], "/usr/local/bin/kinfra");
    let installed = root.path().join(words[0].trim_start_matches('/'));
    assert_eq!(sha256(&installed), sha256(&binary), "installed binary");
    let config_at = words
        .iter()
        .position(|w| *w == "--config")
        .map(|i| words[i + 1])
        .expect("ExecStart names the config");
    let config = root.path().join(config_at.trim_start_matches('/'));
    assert!(config.is_file(), "{config_at} is installed");
    let workdir = unit_value(&unit, "WorkingDirectory");
    assert!(root.path().join(workdir.trim_start_matches('/')).is_dir());
    // The starting config is one kinfra accepts, with the unit's state dir (so the CLI's
    // `-c /etc/kinfra/kinfra.toml` finds the control socket).
    let text = std::fs::read_to_string(&config).expect("config");
    assert!(
        text.contains("state_dir = \"/var/lib/kinfra\"")
            && unit.contains("Environment=KINFRA_PROJECT__STATE_DIR=/var/lib/kinfra\n"),
        "{text}"
    );
    let check = output_within(
        Command::new(crate::support::kinfra_bin())
            .args(["config", "check", "-c"])
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        Duration::from_secs(60),
        "kinfra config check",
    );
    assert!(
        check.status.success(),
        "{}{}",
        stdout(&check),
        stderr(&check)
    );

    verify_unit(&unit, words[0], &installed);

    // A second install keeps the user's config.
    std::fs::write(&config, "# mine\n").expect("edit config");
    let out = install(&script, &["--root", root_arg]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(&config).expect("config"),
        "# mine\n"
    );

    // --prefix moves the binary and ExecStart together.
    let out = install(&script, &["--root", root_arg, "--prefix", "/opt/kinfra"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let unit = std::fs::read_to_string(&unit_path).expect("unit");
    assert!(
        unit_value(&unit, "ExecStart").starts_with("/opt/kinfra/bin/kinfra runtime up "),
        "{unit}"
    );
    assert!(root.path().join("opt/kinfra/bin/kinfra").is_file());
}

#[test]
fn install_sh_checks_the_binary_and_its_checksum() {
    let release = release_dir();
    let script = release.path().join("deploy/install.sh");
    let root = tempfile::tempdir().expect("tempdir");
    let root_arg = root.path().to_str().expect("utf-8 path");

    // Bad usage: exit 2.
    let out = install(&script, &["--frobnicate"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--frobnicate"), "{}", stderr(&out));

    // No binary in dist/: exit 2 naming the path, nothing installed.
    let out = install(&script, &["--root", root_arg]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let expected = release.path().join("dist/kinfra");
    assert!(
        stderr(&out).contains(&expected.display().to_string()),
        "{}",
        stderr(&out)
    );
    let missing = root.path().join("nope/kinfra");
    let out = install(
        &script,
        &[
            "--binary",
            missing.to_str().expect("utf-8"),
            "--root",
            root_arg,
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains(&missing.display().to_string()));
    assert!(!root.path().join("usr/local/bin/kinfra").exists());
    assert!(
        !root
            .path()
            .join("etc/systemd/system/kinfra.service")
            .exists()
    );

    // dist/kinfra with a matching dist/kinfra.sha256 (sha256sum's format): installed.
    let binary = release.path().join("dist/kinfra");
    stub_binary(&binary);
    let sums = release.path().join("dist/kinfra.sha256");
    std::fs::write(&sums, format!("{}  kinfra\n", sha256(&binary))).expect("write sums");
    let out = install(&script, &["--root", root_arg]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("SHA-256"), "{}", stdout(&out));
    let installed = root.path().join("usr/local/bin/kinfra");
    assert_eq!(sha256(&installed), sha256(&binary));

    // A different binary than the checksum says: exit 2, the installed one is left alone.
    std::fs::write(&binary, "#!/bin/sh\necho damaged\n").expect("damage");
    let out = install(&script, &["--root", root_arg]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("SHA-256"), "{}", stderr(&out));
    assert!(
        std::fs::read_to_string(&installed)
            .expect("installed")
            .contains("kinfra stub")
    );

    // A SHA256SUMS-style file naming several files is read too.
    std::fs::remove_file(&sums).expect("rm");
    std::fs::write(
        release.path().join("dist/SHA256SUMS.sha256"),
        format!(
            "{}  kinfra-image.tar\n{}  kinfra\n",
            "0".repeat(64),
            "1".repeat(64)
        ),
    )
    .expect("write sums");
    let out = install(&script, &["--root", root_arg]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn install_sh_passes_shellcheck() {
    let mut cmd = Command::new("shellcheck");
    cmd.arg(repo().join("deploy/install.sh"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = match cmd.spawn() {
        Ok(child) => child.wait_with_output().expect("shellcheck"),
        Err(e) => panic!("shellcheck: {e} (Debian package shellcheck; ./x test installs it)"),
    };
    assert!(
        out.status.success(),
        "shellcheck deploy/install.sh:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
}
