//! Test support: a Docker engine (started here when `docker info` fails, as `./x test`
//! does), images built locally with `docker import` (no registry is reachable), per-test
//! projects whose containers and volumes are removed at the end, and bounded waits.

use kinfra_docker::{EngineHandle, Secrets};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// The busybox image: `/bin/busybox` (static) and its applets.
pub const BUSYBOX: &str = "kinfra-test/busybox:1";
/// The Redis image: busybox plus Debian's `redis-server` and `redis-cli` and their libraries.
pub const REDIS: &str = "kinfra-test/redis:1";

static READY: OnceCell<()> = OnceCell::const_new();

fn sh(script: &str) -> Result<String, String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run sh: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{script}` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn docker_up() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts `dockerd` in the background (log in the temp dir) unless an engine answers, and
/// waits up to 60 s for it. Panics with the daemon's log when it does not come up: the
/// tests need a real engine and must not skip silently.
fn ensure_dockerd() {
    if docker_up() {
        return;
    }
    let log = std::env::temp_dir().join("kinfra-test-dockerd.log");
    let started = sh(&format!(
        "command -v dockerd >/dev/null || {{ echo 'dockerd is not installed (apt-get install docker.io)'; exit 1; }}; \
         nohup dockerd --iptables=false >{log} 2>&1 & echo $!",
        log = log.display()
    ));
    let pid = match started {
        Ok(pid) => pid.trim().to_owned(),
        Err(e) => panic!("cannot start dockerd: {e}"),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if docker_up() {
            eprintln!("started dockerd (pid {pid}), log in {}", log.display());
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let tail = std::fs::read_to_string(&log).unwrap_or_default();
    panic!("dockerd (pid {pid}) did not come up within 60 s:\n{tail}");
}

fn image_present(image: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A root filesystem with static busybox and its applets in `/bin`.
fn busybox_root(dir: &Path) -> Result<(), String> {
    sh(&format!(
        "set -e; bb=$(command -v busybox || echo /bin/busybox); \
         if ldd \"$bb\" >/dev/null 2>&1; then \
           echo 'busybox is not static (apt-get install busybox-static)'; exit 1; fi; \
         mkdir -p {d}/bin {d}/tmp {d}/etc {d}/data; cp -L \"$bb\" {d}/bin/busybox; \
         for a in $({d}/bin/busybox --list); do [ \"$a\" = busybox ] || ln -sf busybox {d}/bin/$a; done; \
         echo 'root:x:0:0:root:/:/bin/sh' > {d}/etc/passwd",
        d = dir.display()
    ))
    .map(|_| ())
}

fn import(dir: &Path, image: &str) -> Result<(), String> {
    sh(&format!(
        "tar -C {} -c . | docker import --change 'ENV PATH=/usr/bin:/bin' - {image} >/dev/null",
        dir.display()
    ))
    .map(|_| ())
}

fn build_images() -> Result<(), String> {
    if !image_present(BUSYBOX) {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        busybox_root(dir.path())?;
        import(dir.path(), BUSYBOX)?;
    }
    if !image_present(REDIS) {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        busybox_root(dir.path())?;
        sh(&format!(
            "set -e; d={d}; mkdir -p $d/usr/bin; \
             cp -L /usr/bin/redis-server $d/usr/bin/redis-server; \
             cp -L /usr/bin/redis-cli $d/usr/bin/redis-cli; \
             for f in $(ldd /usr/bin/redis-server /usr/bin/redis-cli | grep -o '/[^ :]*' | sort -u); do \
               mkdir -p $d$(dirname $f); cp -L $f $d$f; done",
            d = dir.path().display()
        ))?;
        import(dir.path(), REDIS)?;
    }
    Ok(())
}

/// Makes sure the engine runs and the test images exist (once per test binary).
pub async fn docker() {
    READY
        .get_or_init(|| async {
            tokio::task::spawn_blocking(|| {
                ensure_dockerd();
                if let Err(e) = build_images() {
                    panic!("cannot build the test images: {e}");
                }
            })
            .await
            .expect("image builder");
        })
        .await;
}

/// One test's project: a unique name, a state dir, and cleanup of everything labelled with
/// the project when dropped.
pub struct Project {
    pub name: String,
    pub dir: tempfile::TempDir,
}

impl Project {
    pub async fn new(tag: &str) -> Project {
        docker().await;
        let name = format!("it-{tag}-{}-{}", std::process::id(), fastrand::u32(..));
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join(".kinfra")).expect("state dir");
        Project { name, dir }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join(".kinfra")
    }

    pub fn secrets(&self) -> Secrets {
        Secrets::in_state_dir(&self.state_dir())
    }

    pub fn engine(&self) -> EngineHandle {
        EngineHandle::local()
    }

    /// Ids of this project's containers for `resource` (running or not).
    pub fn containers(&self, resource: &str) -> Vec<String> {
        sh(&format!(
            "docker ps -aq --no-trunc --filter label=dev.kinfra.project={} \
             --filter label=dev.kinfra.resource={resource}",
            self.name
        ))
        .map(|s| s.lines().map(str::to_owned).collect())
        .unwrap_or_default()
    }

    /// Names of this project's volumes.
    pub fn volumes(&self) -> Vec<String> {
        sh(&format!(
            "docker volume ls -q --filter label=dev.kinfra.project={}",
            self.name
        ))
        .map(|s| s.lines().map(str::to_owned).collect())
        .unwrap_or_default()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = sh(&format!(
            "ids=$(docker ps -aq --filter label=dev.kinfra.project={p}); \
             [ -z \"$ids\" ] || docker rm -f $ids >/dev/null; \
             vols=$(docker volume ls -q --filter label=dev.kinfra.project={p}); \
             [ -z \"$vols\" ] || docker volume rm $vols >/dev/null",
            p = self.name
        ));
    }
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
pub async fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs a shell command on the host (for checks through independent tools).
pub fn host(script: &str) -> Result<String, String> {
    sh(script)
}

pub const SECS: fn(u64) -> Duration = Duration::from_secs;
