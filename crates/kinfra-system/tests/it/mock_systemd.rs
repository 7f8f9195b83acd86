//! The stand-in for systemd in these tests (no systemd runs here as PID 1): a private D-Bus
//! daemon (`dbus-daemon --session`, Debian's `dbus-daemon`) on a socket in a temporary
//! directory, and python-dbusmock's `systemd` template (PyPI `python-dbusmock`, a maintained
//! third-party implementation of `org.freedesktop.systemd1`) as the peer on it. The template
//! has `StartUnit`, `StopUnit`, `GetUnit` and the mock control `AddMockUnit`; what it lacks
//! (`Subscribe`, `LoadUnit` with systemd's `NoSuchUnit`, `RestartUnit`, `ReloadUnit`, the
//! `SubState` and `Result` properties) is added through dbusmock's own `AddMethod` /
//! `AddProperty`, and state changes made "outside kinfra" go through its `UpdateProperties`,
//! which emits `PropertiesChanged` as systemd does.
//!
//! Shared with the root test binary through `#[path]`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};
use zbus::zvariant::{OwnedValue, Value};

const MOCK_INTERFACE: &str = "org.freedesktop.DBus.Mock";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const UNIT: &str = "org.freedesktop.systemd1.Unit";
const SERVICE: &str = "org.freedesktop.systemd1.Service";

/// The Python with python-dbusmock: `KINFRA_DBUSMOCK_PYTHON` (set by `./x test`), else
/// `target/dbusmock/bin/python` of the workspace. Missing: the test fails naming the package.
pub fn dbusmock_python() -> PathBuf {
    if let Some(p) = std::env::var_os("KINFRA_DBUSMOCK_PYTHON") {
        return PathBuf::from(p);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in manifest.ancestors() {
        let candidate = dir.join("target/dbusmock/bin/python");
        if candidate.exists() {
            return candidate;
        }
    }
    panic!(
        "python-dbusmock (PyPI) not found: run ./x test, which installs it into \
         target/dbusmock, or set KINFRA_DBUSMOCK_PYTHON to a python that has it"
    );
}

fn dbus_daemon() -> PathBuf {
    for dir in ["/usr/bin", "/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join("dbus-daemon");
        if p.exists() {
            return p;
        }
    }
    panic!("dbus-daemon not found: install the Debian package `dbus-daemon` (./x test does)");
}

/// The unit object path dbusmock's template gives `unit`.
pub fn unit_path(unit: &str) -> String {
    format!(
        "/org/freedesktop/systemd1/unit/{}",
        unit.replace(['.', '-'], "_")
    )
}

/// A private bus with the systemd stand-in on it.
pub struct MockSystemd {
    dir: PathBuf,
    /// The bus's address (`unix:path=...`).
    pub address: String,
    daemon: Option<Child>,
    mock: Option<Child>,
    conn: Option<zbus::Connection>,
}

impl MockSystemd {
    /// Starts the bus and the mock in `dir` (a socket `dir/bus`).
    pub async fn start(dir: &Path) -> Self {
        let mut me = Self {
            dir: dir.to_owned(),
            address: format!("unix:path={}", dir.join("bus").display()),
            daemon: None,
            mock: None,
            conn: None,
        };
        me.bring_up().await;
        me
    }

    async fn bring_up(&mut self) {
        let _ = std::fs::remove_file(self.dir.join("bus"));
        let mut daemon = Command::new(dbus_daemon())
            .args(["--session", "--nofork", "--nopidfile", "--print-address"])
            .arg(format!("--address={}", self.address))
            .stdout(Stdio::piped())
            // It says it cannot raise its fd limit (not root-owned here): noise.
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("dbus-daemon starts");
        let stdout = daemon.stdout.take().expect("stdout piped");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let printed = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("dbus-daemon prints its address within 30s")
            .expect("dbus-daemon's stdout")
            .expect("an address line");
        assert!(printed.starts_with("unix:path="), "{printed}");
        self.daemon = Some(daemon);
        let mock = Command::new(dbusmock_python())
            .args(["-m", "dbusmock", "--session", "--template", "systemd"])
            .env("DBUS_SESSION_BUS_ADDRESS", &self.address)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("python -m dbusmock starts");
        self.mock = Some(mock);
        let conn = zbus::connection::Builder::address(self.address.as_str())
            .expect("address")
            .build()
            .await
            .expect("the test connects to its bus");
        let dbus = zbus::fdo::DBusProxy::new(&conn).await.expect("bus proxy");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let name = zbus::names::BusName::try_from("org.freedesktop.systemd1").expect("name");
            if dbus.name_has_owner(name).await.unwrap_or(false) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "python-dbusmock's systemd template did not take org.freedesktop.systemd1 within 60s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.conn = Some(conn);
        self.add_methods().await;
    }

    fn conn(&self) -> &zbus::Connection {
        self.conn.as_ref().expect("the bus is up")
    }

    async fn call<B, R>(&self, path: &str, interface: &str, method: &str, body: &B) -> R
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
        R: for<'d> zbus::zvariant::DynamicDeserialize<'d>,
    {
        let reply = self
            .conn()
            .call_method(
                Some("org.freedesktop.systemd1"),
                path,
                Some(interface),
                method,
                body,
            )
            .await
            .unwrap_or_else(|e| panic!("{interface}.{method} on {path}: {e}"));
        reply
            .body()
            .deserialize()
            .unwrap_or_else(|e| panic!("{interface}.{method}'s answer: {e}"))
    }

    async fn add_method(&self, name: &str, in_sig: &str, out_sig: &str, code: &str) {
        let () = self
            .call(
                "/org/freedesktop/systemd1",
                MOCK_INTERFACE,
                "AddMethod",
                &(MANAGER, name, in_sig, out_sig, code),
            )
            .await;
    }

    /// What the template lacks, added with dbusmock's `AddMethod`.
    async fn add_methods(&self) {
        self.add_method("Subscribe", "", "", "").await;
        self.add_method(
            "LoadUnit",
            "s",
            "o",
            "if args[0] not in self.units:\n    raise dbus.exceptions.DBusException(\
             'Unit %s not found.' % args[0], name='org.freedesktop.systemd1.NoSuchUnit')\n\
             ret = self.units[args[0]]",
        )
        .await;
        let job = |state: &str| {
            format!(
                "job = self.next_job_id\nself.next_job_id += 1\n\
                 path = '/org/freedesktop/systemd1/Job/%d' % job\n\
                 {state}\
                 self.EmitSignal('{MANAGER}', 'JobRemoved', 'uoss', [job, path, args[0], 'done'])\n\
                 ret = path"
            )
        };
        self.add_method(
            "RestartUnit",
            "ss",
            "o",
            &job(&format!(
                "objects[self.units[args[0]]].UpdateProperties('{UNIT}', {{'ActiveState': 'active'}})\n"
            )),
        )
        .await;
        self.add_method("ReloadUnit", "ss", "o", &job("")).await;
    }

    /// Makes every later `StartUnit` fail as systemd does when a unit's start fails: the unit
    /// goes `failed/failed` with `Result` `exit-code` and the job ends `failed`.
    pub async fn fail_starts(&self) {
        self.add_method(
            "StartUnit",
            "ss",
            "o",
            &format!(
                "job = self.next_job_id\nself.next_job_id += 1\n\
                 path = '/org/freedesktop/systemd1/Job/%d' % job\n\
                 unit = objects[self.units[args[0]]]\n\
                 unit.UpdateProperties('{SERVICE}', {{'Result': 'exit-code'}})\n\
                 unit.UpdateProperties('{UNIT}', {{'ActiveState': 'failed', 'SubState': 'failed'}})\n\
                 self.EmitSignal('{MANAGER}', 'JobRemoved', 'uoss', [job, path, args[0], 'failed'])\n\
                 ret = path"
            ),
        )
        .await;
    }

    /// Adds `unit` (inactive/dead) with `SubState` and a service `Result`.
    pub async fn add_unit(&self, unit: &str) {
        let () = self
            .call(
                "/org/freedesktop/systemd1",
                MOCK_INTERFACE,
                "AddMockUnit",
                &(unit,),
            )
            .await;
        let path = unit_path(unit);
        let () = self
            .call(
                &path,
                MOCK_INTERFACE,
                "AddProperty",
                &(UNIT, "SubState", Value::from("dead")),
            )
            .await;
        let () = self
            .call(
                &path,
                MOCK_INTERFACE,
                "AddProperty",
                &(SERVICE, "Result", Value::from("success")),
            )
            .await;
    }

    /// Changes `unit`'s state outside kinfra (`PropertiesChanged` is emitted): its service
    /// `Result` first when given, then `ActiveState` and `SubState`.
    pub async fn set_state(&self, unit: &str, active: &str, sub: &str, result: Option<&str>) {
        let path = unit_path(unit);
        if let Some(result) = result {
            let props: HashMap<&str, Value> = HashMap::from([("Result", Value::from(result))]);
            let () = self
                .call(&path, MOCK_INTERFACE, "UpdateProperties", &(SERVICE, props))
                .await;
        }
        let props: HashMap<&str, Value> = HashMap::from([
            ("ActiveState", Value::from(active)),
            ("SubState", Value::from(sub)),
        ]);
        let () = self
            .call(&path, MOCK_INTERFACE, "UpdateProperties", &(UNIT, props))
            .await;
    }

    /// Sets `unit`'s `LoadState` (`not-found`, `masked`, ...).
    pub async fn set_load_state(&self, unit: &str, load: &str) {
        let props: HashMap<&str, Value> = HashMap::from([("LoadState", Value::from(load))]);
        let () = self
            .call(
                &unit_path(unit),
                MOCK_INTERFACE,
                "UpdateProperties",
                &(UNIT, props),
            )
            .await;
    }

    /// `unit`'s `ActiveState` as the mock has it.
    pub async fn active_state(&self, unit: &str) -> String {
        let value: OwnedValue = self
            .call(
                &unit_path(unit),
                "org.freedesktop.DBus.Properties",
                "Get",
                &(UNIT, "ActiveState"),
            )
            .await;
        String::try_from(value).expect("a string")
    }

    /// How often the manager's `method` was called.
    pub async fn calls(&self, method: &str) -> usize {
        let calls: Vec<(u64, Vec<OwnedValue>)> = self
            .call(
                "/org/freedesktop/systemd1",
                MOCK_INTERFACE,
                "GetMethodCalls",
                &(method,),
            )
            .await;
        calls.len()
    }

    /// Kills the bus daemon (and the mock with it): the bus goes away.
    pub async fn kill_bus(&mut self) {
        self.conn = None;
        for child in [self.mock.take(), self.daemon.take()].into_iter().flatten() {
            let mut child = child;
            let _ = child.kill().await;
        }
    }

    /// Brings the bus and the mock back on the same address (units must be added again).
    pub async fn restart_bus(&mut self) {
        self.bring_up().await;
    }
}

/// A stand-in `journalctl` (no journal here): a script that records its pid and arguments in
/// `dir/journalctl.args`, prints two journal entries as `journalctl -o json` does, and then
/// waits like `-f` does.
pub fn journalctl_stand_in(dir: &Path) -> PathBuf {
    let path = dir.join("journalctl");
    let args = dir.join("journalctl.args");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"$$ $*\" >> '{}'\n\
             printf '%s\\n' '{{\"MESSAGE\":\"hello from the unit\",\"PRIORITY\":\"6\",\"_SYSTEMD_UNIT\":\"x\"}}' \
             '{{\"MESSAGE\":\"something went wrong\",\"PRIORITY\":\"3\"}}'\n\
             exec sleep 1000\n",
            args.display()
        ),
    )
    .expect("write the journalctl stand-in");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// The pids the journalctl stand-in in `dir` recorded, with their arguments.
pub fn journalctl_runs(dir: &Path) -> Vec<(i32, String)> {
    std::fs::read_to_string(dir.join("journalctl.args"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (pid, args) = l.split_once(' ')?;
            Some((pid.parse().ok()?, args.to_owned()))
        })
        .collect()
}

/// True while `pid` runs (a zombie, killed and not yet reaped, does not count).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}
