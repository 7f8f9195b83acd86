//! A SurrealDB server for tests: `kinfra-surreal-server` (the `surrealdb-server` crate at the
//! embedded engine's version, surrealkv on disk) on 127.0.0.1, and a root connection to it.

use crate::support::{kill, kinfra_bin};
use kinfra::store::surrealdb::opt::auth::Root;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Root password of the test servers; it must never show in kinfra's output.
pub const PASSWORD: &str = "s3rver-Pa55-never-shown";

/// What `kinfra-surreal-server` prints once it accepts connections.
const ANNOUNCE: &str = "kinfra-surreal-server listening on ";

/// The server binary, built beside kinfra's by `cargo test --workspace` / `./x test`.
pub fn server_bin() -> PathBuf {
    let bin = Path::new(kinfra_bin()).with_file_name("kinfra-surreal-server");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p kinfra-surreal-server` \
         (`cargo test --workspace` and `./x test` do)",
        bin.display()
    );
    bin
}

/// A running SurrealDB server with its data in surrealkv files under `data`. Killed (SIGKILL,
/// by PID) on drop.
pub struct SurrealServer {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    data: PathBuf,
}

impl SurrealServer {
    /// Starts a server on 127.0.0.1, port 0 (a free one), data under `data`.
    pub fn start(data: &Path) -> Self {
        Self::start_on(data, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Starts a server on `bind` and waits until it accepts connections.
    pub fn start_on(data: &Path, bind: SocketAddr) -> Self {
        let mut child = Command::new(server_bin())
            .args(["--bind", &bind.to_string(), "--path"])
            .arg(data)
            .env("KINFRA_SURREAL_USER", "root")
            .env("KINFRA_SURREAL_PASS", PASSWORD)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn kinfra-surreal-server");
        let out = child.stdout.take().expect("server stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if !sent && let Some(addr) = line.strip_prefix(ANNOUNCE) {
                    let _ = tx.send(addr.trim().to_owned());
                    sent = true;
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(addr) => addr.parse().expect("announced address"),
            Err(_) => {
                kill(child.id(), libc::SIGKILL);
                let _ = child.wait();
                panic!("kinfra-surreal-server did not announce its address within 120 s");
            }
        };
        Self {
            child,
            addr,
            data: data.to_path_buf(),
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// SIGKILL, by PID, and reap.
    pub fn kill(&mut self) {
        kill(self.child.id(), libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// A new server on the same port and data after [`SurrealServer::kill`].
    pub fn restart(&mut self) {
        let again = Self::start_on(&self.data, self.addr);
        let old = std::mem::replace(self, again);
        drop(old);
    }
}

impl Drop for SurrealServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

/// A connection to the server as root, on kinfra's namespace and `database`.
pub async fn direct(server: &SurrealServer, database: &str) -> kinfra::store::Db {
    let db = kinfra::store::surrealdb::engine::any::connect(server.url())
        .await
        .expect("connect to the server");
    db.signin(Root {
        username: "root".into(),
        password: PASSWORD.into(),
    })
    .await
    .expect("sign in");
    db.use_ns("kinfra")
        .use_db(database)
        .await
        .expect("use kinfra's database");
    db
}
