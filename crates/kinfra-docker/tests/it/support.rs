//! Test support: a Docker engine (started here when `docker info` fails, as `./x test`
//! does), images built locally with `docker import` (no registry is reachable), per-test
//! projects whose containers and volumes are removed at the end, and bounded waits.

use kinfra_docker::{EngineHandle, Secrets};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// A test image made from the host's own files, the way a distribution package would lay
/// them out: static busybox and its applets, executables with the shared libraries `ldd`
/// lists for them, data files and directories, and small files written here (an entrypoint
/// script that gives the image the same interface as the official one).
#[derive(Debug)]
pub struct Image {
    /// The tag (`kinfra-test/NAME:1`).
    pub tag: &'static str,
    /// The Debian packages the host files come from, named when one is missing.
    pub packages: &'static str,
    /// Host executables (shell globs; the last match wins), copied with their libraries.
    pub binaries: &'static [&'static str],
    /// Host files or directories copied as they are (shell globs); the libraries of the
    /// `.so` files among them are copied too.
    pub extra: &'static [&'static str],
    /// Files written into the image: path, content (all executable).
    pub files: &'static [(&'static str, &'static str)],
    /// Symlinks: path in the image, target (a shell glob on the host's paths).
    pub links: &'static [(&'static str, &'static str)],
    /// `docker import --change` instructions (`ENTRYPOINT [...]`, `CMD [...]`).
    pub changes: &'static [&'static str],
}

/// The busybox image: `/bin/busybox` (static) and its applets.
pub const BUSYBOX_IMAGE: Image = Image {
    tag: "kinfra-test/busybox:1",
    packages: "busybox-static",
    binaries: &[],
    extra: &[],
    files: &[],
    links: &[],
    changes: &[],
};

/// The Redis image: busybox plus Debian's `redis-server` and `redis-cli`.
pub const REDIS_IMAGE: Image = Image {
    tag: "kinfra-test/redis:1",
    packages: "redis-server",
    binaries: &["/usr/bin/redis-server", "/usr/bin/redis-cli"],
    extra: &[],
    files: &[],
    links: &[],
    changes: &[],
};

/// The busybox image's tag.
pub const BUSYBOX: &str = BUSYBOX_IMAGE.tag;
/// The Redis image's tag.
pub const REDIS: &str = REDIS_IMAGE.tag;

/// The postgres image: Debian's PostgreSQL server with the official image's interface
/// (`POSTGRES_PASSWORD`, `POSTGRES_USER`, `POSTGRES_DB`, data in `/var/lib/postgresql/data`,
/// `CMD ["postgres"]`, `pg_isready` on `PATH`).
pub const POSTGRES_IMAGE: Image = Image {
    tag: "kinfra-test/postgres:1",
    packages: "postgresql",
    binaries: &[
        "/usr/lib/postgresql/*/bin/postgres",
        "/usr/lib/postgresql/*/bin/initdb",
        "/usr/lib/postgresql/*/bin/pg_isready",
    ],
    extra: &[
        "/usr/share/postgresql/[0-9]*",
        "/usr/lib/postgresql/*/lib/plpgsql.so",
        "/usr/lib/postgresql/*/lib/dict_snowball.so",
        "/usr/share/zoneinfo",
    ],
    files: &[("/usr/local/bin/docker-entrypoint.sh", POSTGRES_ENTRYPOINT)],
    links: &[
        ("/usr/bin/postgres", "/usr/lib/postgresql/*/bin/postgres"),
        ("/usr/bin/initdb", "/usr/lib/postgresql/*/bin/initdb"),
        (
            "/usr/bin/pg_isready",
            "/usr/lib/postgresql/*/bin/pg_isready",
        ),
    ],
    changes: &[
        r#"ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]"#,
        r#"CMD ["postgres"]"#,
    ],
};

/// The official image's first start, for Debian's build: a cluster owned by
/// `$POSTGRES_USER` with `$POSTGRES_PASSWORD`, password (scram-sha-256) logins over TCP from
/// anywhere, the database `$POSTGRES_DB`; no server runs until all that is done, so the
/// healthcheck cannot pass early.
const POSTGRES_ENTRYPOINT: &str = r#"#!/bin/sh
set -e
if [ "${1#-}" != "$1" ]; then set -- postgres "$@"; fi
if [ "$1" != postgres ]; then exec "$@"; fi
shift
export PGDATA="${PGDATA:-/var/lib/postgresql/data}"
export PG_INIT_USER="${POSTGRES_USER:-postgres}"
db="${POSTGRES_DB:-$PG_INIT_USER}"
mkdir -p "$PGDATA" /var/run/postgresql
chown -R postgres:postgres "$PGDATA" /var/run/postgresql
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "$POSTGRES_PASSWORD" ]; then echo "POSTGRES_PASSWORD is not set" >&2; exit 1; fi
  printf '%s\n' "$POSTGRES_PASSWORD" > /tmp/pwfile
  chown postgres /tmp/pwfile
  su postgres -s /bin/sh -c 'initdb -D "$PGDATA" -U "$PG_INIT_USER" --pwfile=/tmp/pwfile --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C'
  rm -f /tmp/pwfile
  echo 'host all all all scram-sha-256' >> "$PGDATA/pg_hba.conf"
  if [ "$db" != postgres ]; then
    printf 'CREATE DATABASE "%s" OWNER "%s";\n' "$db" "$PG_INIT_USER" \
      | su postgres -s /bin/sh -c 'postgres --single -D "$PGDATA" postgres' > /dev/null
  fi
fi
exec su postgres -s /bin/sh -c 'exec postgres -D "$PGDATA" -c listen_addresses="*" "$@"' postgres "$@"
"#;

/// The mysql image: Debian's MariaDB server with the official mysql image's interface
/// (`MYSQL_ROOT_PASSWORD`, `MYSQL_DATABASE`, data in `/var/lib/mysql`, `CMD ["mysqld"]`,
/// `mysqladmin` on `PATH`).
pub const MYSQL_IMAGE: Image = Image {
    tag: "kinfra-test/mysql:1",
    packages: "mariadb-server mariadb-client",
    binaries: &[
        "/usr/sbin/mariadbd",
        "/usr/bin/mariadb-admin",
        "/usr/bin/mariadb-install-db",
        "/usr/bin/my_print_defaults",
    ],
    extra: &["/usr/share/mysql", "/usr/lib/mysql/plugin"],
    files: &[("/usr/local/bin/docker-entrypoint.sh", MYSQL_ENTRYPOINT)],
    links: &[("/usr/bin/mysqladmin", "/usr/bin/mariadb-admin")],
    changes: &[
        r#"ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]"#,
        r#"CMD ["mysqld"]"#,
    ],
};

/// The official image's first start, for MariaDB: system tables, `root` with
/// `$MYSQL_ROOT_PASSWORD` from anywhere, the database `$MYSQL_DATABASE`; all before the
/// server listens, so the healthcheck cannot pass early.
const MYSQL_ENTRYPOINT: &str = r#"#!/bin/sh
set -e
if [ "${1#-}" != "$1" ]; then set -- mysqld "$@"; fi
if [ "$1" != mysqld ] && [ "$1" != mariadbd ]; then exec "$@"; fi
shift
datadir=/var/lib/mysql
mkdir -p "$datadir" /run/mysqld
chown -R mysql:mysql "$datadir" /run/mysqld
if [ ! -d "$datadir/mysql" ]; then
  if [ -z "$MYSQL_ROOT_PASSWORD" ]; then echo "MYSQL_ROOT_PASSWORD is not set" >&2; exit 1; fi
  mariadb-install-db --user=mysql --datadir="$datadir" --force --skip-name-resolve \
    --auth-root-authentication-method=normal --skip-test-db > /dev/null
  pw=$(printf '%s' "$MYSQL_ROOT_PASSWORD" | sed -e 's/\\/\\\\/g' -e "s/'/\\\\'/g")
  {
    echo "FLUSH PRIVILEGES;"
    echo "ALTER USER 'root'@'localhost' IDENTIFIED BY '$pw';"
    echo "CREATE USER 'root'@'%' IDENTIFIED BY '$pw';"
    echo "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;"
    if [ -n "$MYSQL_DATABASE" ]; then echo "CREATE DATABASE IF NOT EXISTS \`$MYSQL_DATABASE\`;"; fi
  } | mariadbd --bootstrap --user=mysql --datadir="$datadir" --skip-networking
fi
exec mariadbd --user=mysql --datadir="$datadir" --bind-address=0.0.0.0 --port=3306 "$@"
"#;

/// The nats image: Debian's `nats-server` as the official image has it (`/nats-server` as
/// the entrypoint, no shell needed, arguments from the command).
pub const NATS_IMAGE: Image = Image {
    tag: "kinfra-test/nats:1",
    packages: "nats-server",
    binaries: &["/usr/sbin/nats-server"],
    extra: &[],
    files: &[],
    links: &[("/nats-server", "/usr/sbin/nats-server")],
    changes: &[r#"ENTRYPOINT ["/nats-server"]"#],
};

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

/// The label that holds the content hash an image was built from.
const HASH_LABEL: &str = "dev.kinfra.test-image-hash";

/// Users of the test images' services (postgres and mysql run unprivileged).
const PASSWD: &str = "root:x:0:0:root:/:/bin/sh\n\
                      postgres:x:999:999:postgres:/var/lib/postgresql:/bin/sh\n\
                      mysql:x:998:998:mysql:/var/lib/mysql:/bin/false\n";
const GROUP: &str = "root:x:0:\npostgres:x:999:\nmysql:x:998:\n";

/// The image's label value, empty when the image is absent.
fn image_hash(tag: &str) -> String {
    sh(&format!(
        "docker image inspect -f '{{{{ index .Config.Labels \"{HASH_LABEL}\" }}}}' {tag} 2>/dev/null || true"
    ))
    .map(|s| s.trim().to_owned())
    .unwrap_or_default()
}

/// The shell words that expand `pattern` and print its last match, failing with the
/// packages to install when nothing matches.
fn last_match(pattern: &str) -> String {
    format!("$(last {pattern})")
}

/// Lists the host files `image` is made of into `{dir}/files` (binaries, their libraries,
/// extra trees) and prints the content hash of those files and the recipe.
fn collect(image: &Image, dir: &Path) -> Result<String, String> {
    let recipe = dir.join("recipe");
    std::fs::write(&recipe, format!("{image:?}")).map_err(|e| e.to_string())?;
    let bins: Vec<String> = image.binaries.iter().map(|b| last_match(b)).collect();
    let extra: Vec<String> = image.extra.iter().map(|e| last_match(e)).collect();
    sh(&format!(
        r#"set -e
last() {{ for f in "$@"; do :; done; [ -e "$f" ] || {{ echo "$1: missing (apt-get install {packages})" >&2; exit 1; }}; echo "$f"; }}
bb=$(command -v busybox || echo /bin/busybox)
if ldd "$bb" >/dev/null 2>&1; then echo 'busybox is not static (apt-get install busybox-static)' >&2; exit 1; fi
bins="{bins}"
extra="{extra}"
{{
  for f in $bins; do echo "$f"; done
  for e in $extra; do find -L "$e" -type f; done
  libs=$(for e in $extra; do find -L "$e" -type f -name '*.so*'; done)
  ldd $bins $libs 2>/dev/null | grep -o '/[^ :]*' || true
}} | sort -u > {d}/files
{{ cat {recipe}; sha256sum "$bb"; tr '\n' '\0' < {d}/files | xargs -0 -r sha256sum; }} | sha256sum | cut -c1-64"#,
        packages = image.packages,
        bins = bins.join(" "),
        extra = extra.join(" "),
        d = dir.display(),
        recipe = recipe.display(),
    ))
    .map(|s| s.trim().to_owned())
}

/// Builds `image` with `docker import` unless an image with its tag was built from the
/// same content (its hash label matches).
fn build(image: &Image) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let hash = collect(image, dir.path())?;
    if image_hash(image.tag) == hash {
        return Ok(());
    }
    let root = dir.path().join("root");
    sh(&format!(
        "set -e; d={d}; bb=$(command -v busybox || echo /bin/busybox); \
         mkdir -p $d/bin $d/tmp $d/etc $d/data $d/usr/bin $d/usr/local/bin; chmod 1777 $d/tmp; \
         cp -L \"$bb\" $d/bin/busybox; \
         for a in $($d/bin/busybox --list); do [ \"$a\" = busybox ] || ln -sf busybox $d/bin/$a; done; \
         sed 's|^/||' {files} > {files}.rel; \
         tar -C / -chf - -T {files}.rel | tar -C $d -xf -",
        d = root.display(),
        files = dir.path().join("files").display(),
    ))?;
    let write = |path: &str, text: &str, mode: u32| -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        let target = root.join(path.trim_start_matches('/'));
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        std::fs::write(&target, text).map_err(|e| format!("{}: {e}", target.display()))?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))
            .map_err(|e| e.to_string())
    };
    write("/etc/passwd", PASSWD, 0o644)?;
    write("/etc/group", GROUP, 0o644)?;
    for (path, text) in image.files {
        write(path, text, 0o755)?;
    }
    for (link, target) in image.links {
        sh(&format!(
            "set -e; last() {{ for f in \"$@\"; do :; done; echo \"$f\"; }}; \
             l={root}{link}; mkdir -p $(dirname $l); ln -sfn $(last {target}) $l",
            root = root.display()
        ))?;
    }
    let tar = dir.path().join("root.tar");
    sh(&format!(
        "tar -C {} -cf {} .",
        root.display(),
        tar.display()
    ))?;
    let mut cmd = Command::new("docker");
    cmd.arg("import")
        .args([
            "--change",
            "ENV PATH=/usr/local/bin:/usr/bin:/usr/sbin:/bin",
        ])
        .args(["--change", &format!("LABEL {HASH_LABEL}={hash}")]);
    for change in image.changes {
        cmd.args(["--change", change]);
    }
    let out = cmd
        .arg(&tar)
        .arg(image.tag)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run docker import: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "docker import {} failed: {}",
            image.tag,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    eprintln!("built test image {} ({})", image.tag, &hash[..12]);
    Ok(())
}

/// Tags checked or built by this process.
static BUILT: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());

/// Builds `image` once per process (see [`build`]); panics naming what is missing.
fn ensure(image: &'static Image) {
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if built.contains(&image.tag) {
        return;
    }
    if let Err(e) = build(image) {
        panic!("cannot build the test image {}: {e}", image.tag);
    }
    built.push(image.tag);
}

/// Makes sure the engine runs and the busybox and Redis images exist.
pub async fn docker() {
    READY
        .get_or_init(|| async {
            tokio::task::spawn_blocking(|| {
                ensure_dockerd();
                ensure(&BUSYBOX_IMAGE);
                ensure(&REDIS_IMAGE);
            })
            .await
            .expect("image builder");
        })
        .await;
}

/// Makes sure the engine runs and `image` exists; its tag.
pub async fn image(image: &'static Image) -> &'static str {
    tokio::task::spawn_blocking(move || {
        ensure_dockerd();
        ensure(image);
    })
    .await
    .expect("image builder");
    image.tag
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

/// `(user, password, port, database)` of a `scheme://user:password@127.0.0.1:port/db` URL.
pub fn url_parts(url: &str) -> (String, String, u16, String) {
    let rest = url.split_once("://").expect("scheme").1;
    let (cred, addr) = rest.rsplit_once('@').expect("credentials");
    let (user, pw) = cred.split_once(':').unwrap_or((cred, ""));
    let (hostport, db) = addr.split_once('/').unwrap_or((addr, ""));
    let port = hostport
        .rsplit_once(':')
        .expect("port")
        .1
        .parse()
        .expect("port number");
    (user.into(), pw.into(), port, db.into())
}

/// A NATS exchange over TCP at `port` with `token`: `CONNECT` (verbose), then a message
/// published and received on one subject. The server's lines, in order.
pub fn nats_exchange(port: u16, token: &str) -> Vec<String> {
    use std::io::{BufRead, BufReader, Write};
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(SECS(10))).expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut lines = Vec::new();
    let mut line = String::new();
    let mut read = |lines: &mut Vec<String>| {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(n) if n > 0 => {
                lines.push(line.trim_end().to_owned());
                true
            }
            _ => false,
        }
    };
    if !read(&mut lines) {
        return lines;
    }
    let connect = serde_json::json!({"auth_token": token, "verbose": true, "pedantic": false});
    let mut w = &stream;
    let _ = write!(
        w,
        "CONNECT {connect}\r\nSUB greeting 1\r\nPUB greeting 5\r\nhello\r\nPING\r\n"
    );
    while read(&mut lines)
        && !lines
            .last()
            .is_some_and(|l| l == "PONG" || l.starts_with("-ERR"))
    {}
    lines
}

pub const SECS: fn(u64) -> Duration = Duration::from_secs;
