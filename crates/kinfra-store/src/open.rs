//! Where the data lives and how it is opened: the location from `[store] url`, the data
//! directory's checks and lock, the connection (with a bound on how long it may take), and
//! the mapping of the engine's errors to ones that name the path or URL.

use crate::Db;
use crate::error::StoreError;
use kinfra_core::config::StoreConfig;
use kinfra_core::lockfile::{LockFile, LockFileError};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use surrealdb::opt::auth::Root;

/// Where the data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// surrealkv files in this directory.
    Disk(PathBuf),
    /// In memory, gone when the store closes (`mem://`).
    Memory,
    /// A SurrealDB server; the URL is kept without credentials.
    Remote(String),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Disk(p) => write!(f, "{}", p.display()),
            Location::Memory => f.write_str("mem://"),
            Location::Remote(url) => f.write_str(url),
        }
    }
}

/// Removes `user:password@` from a URL, for messages.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// The location `config` names; relative `surrealkv://` paths resolve against `state_dir`.
pub fn location(config: &StoreConfig, state_dir: &Path) -> Result<Location, StoreError> {
    let Some(url) = config.url.as_deref().map(str::trim) else {
        return Ok(Location::Disk(state_dir.join("db")));
    };
    if url == "mem://" || url == "memory" {
        return Ok(Location::Memory);
    }
    if let Some(path) = url.strip_prefix("surrealkv://") {
        if path.is_empty() || path.contains('?') {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        }
        let path = Path::new(path);
        return Ok(Location::Disk(if path.is_absolute() {
            path.to_path_buf()
        } else {
            state_dir.join(path)
        }));
    }
    if url.starts_with("ws://") || url.starts_with("wss://") {
        return Ok(Location::Remote(redact_url(url)));
    }
    Err(StoreError::UnsupportedUrl(redact_url(url)))
}

/// Creates the data directory (0700) if needed and checks it can be used.
pub(crate) fn prepare_dir(path: &Path) -> Result<(), StoreError> {
    let err = |source| StoreError::DataDir {
        path: path.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(err)?;
    let meta = std::fs::metadata(path).map_err(err)?;
    if !meta.is_dir() {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            "not a directory",
        )));
    }
    nix::unistd::access(
        path,
        nix::unistd::AccessFlags::R_OK
            | nix::unistd::AccessFlags::W_OK
            | nix::unistd::AccessFlags::X_OK,
    )
    .map_err(|e| err(std::io::Error::from(e)))?;
    Ok(())
}

/// The lock next to a data directory: `DIR.lock`, holding the owner's PID.
pub(crate) fn lock_path(dir: &Path) -> PathBuf {
    let mut p = dir.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// Takes the data directory's lock (an exclusive file lock, released when the file closes,
/// also when the process is killed).
pub(crate) fn take_lock(dir: &Path) -> Result<LockFile, StoreError> {
    LockFile::try_acquire(&lock_path(dir)).map_err(|e| match e {
        LockFileError::Held { holder, .. } => StoreError::Locked {
            path: dir.to_path_buf(),
            holder: holder.and_then(|p| i32::try_from(p).ok()),
        },
        LockFileError::Io { path, source } => StoreError::DataDir { path, source },
    })
}

/// True when the engine's own lock (`DIR/LOCK`) is free, i.e. a datastore this process
/// opened earlier has finished closing.
pub(crate) fn engine_lock_free(dir: &Path) -> bool {
    kinfra_core::lockfile::is_free(&dir.join("LOCK"))
}

/// How often the embedded engine writes this node's heartbeat. SurrealDB's default (3 s)
/// commits a transaction, with an fsync, every 3 s of an idle runtime; one node alone needs
/// it only to stay under the engine's fixed 30 s expiry of a silent node.
const NODE_HEARTBEAT_EVERY: Duration = Duration::from_secs(15);

/// Threads of the embedded engine's blocking pool. SurrealDB starts 16 on a host with fewer
/// than 16 cores (idle threads with their stacks and allocator caches); 4 is the least it
/// documents as working (`SURREAL_KVS_THREADPOOL_SIZE`), and a host with more cores gets one
/// per core as SurrealDB would.
fn engine_threads() -> usize {
    std::thread::available_parallelism().map_or(4, |n| n.get().max(4))
}

/// Builds the engine's global blocking pool before the engine does (the engine leaves an
/// existing one alone), unless `SURREAL_KVS_THREADPOOL_SIZE` says otherwise. Once per process.
fn build_engine_pool() {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        if std::env::var_os("SURREAL_KVS_THREADPOOL_SIZE").is_some() {
            return;
        }
        let _ = affinitypool::Builder::new()
            .thread_name("surrealdb-threadpool")
            .worker_threads(engine_threads())
            .build()
            .build_global();
    });
}

/// The embedded engine's settings: its background tasks at an idle-friendly pace.
fn engine_config() -> surrealdb::opt::Config {
    surrealdb::opt::Config::new().node_membership_refresh_interval(NODE_HEARTBEAT_EVERY)
}

/// Opens the connection: the embedded engine for a path or `mem://`, a WebSocket for a
/// server (signing in as root with `[store] user` / `password` when given).
pub(crate) async fn connect(config: &StoreConfig, location: &Location) -> Result<Db, StoreError> {
    let timeout: Duration = config.connect_timeout.0;
    if !matches!(location, Location::Remote(_)) {
        build_engine_pool();
    }
    match location {
        Location::Memory => surrealdb::engine::any::connect("mem://")
            .await
            .map_err(|e| StoreError::Open {
                path: PathBuf::from("mem://"),
                message: e.to_string(),
            }),
        Location::Disk(dir) => {
            let sync = if config.sync { "every" } else { "never" };
            let endpoint = format!("surrealkv://{}?sync={sync}", dir.display());
            // A datastore this process closed a moment ago may still be releasing the
            // engine's lock (the kinfra lock, already held, rules out another process).
            let deadline = tokio::time::Instant::now() + timeout.min(Duration::from_secs(5));
            loop {
                let attempt = tokio::time::timeout(
                    timeout,
                    surrealdb::engine::any::connect((endpoint.as_str(), engine_config())),
                )
                .await;
                match attempt {
                    Ok(Ok(db)) => return Ok(db),
                    Ok(Err(e)) => {
                        let message = e.to_string();
                        if message.contains("already locked") {
                            if tokio::time::Instant::now() < deadline {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                continue;
                            }
                            return Err(StoreError::Locked {
                                path: dir.clone(),
                                holder: None,
                            });
                        }
                        return Err(StoreError::Open {
                            path: dir.clone(),
                            message,
                        });
                    }
                    Err(_) => {
                        return Err(StoreError::Open {
                            path: dir.clone(),
                            message: format!("the engine did not open within {timeout:?}"),
                        });
                    }
                }
            }
        }
        Location::Remote(shown) => {
            let url = config.url.clone().unwrap_or_default();
            if url.starts_with("wss://") {
                kinfra_core::tls::install_crypto_provider();
            }
            let remote = |message: String| StoreError::Remote {
                url: shown.clone(),
                message,
            };
            let work = async {
                let db = surrealdb::engine::any::connect(url.as_str())
                    .await
                    .map_err(|e| remote(e.to_string()))?;
                if let (Some(user), Some(password)) = (&config.user, &config.password) {
                    db.signin(Root {
                        username: user.clone(),
                        password: password.expose().to_owned(),
                    })
                    .await
                    .map_err(|e| remote(format!("sign-in as `{user}` failed: {e}")))?;
                }
                Ok::<Db, StoreError>(db)
            };
            match tokio::time::timeout(timeout, work).await {
                Ok(r) => r,
                Err(_) => Err(remote(format!("no answer within {timeout:?}"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        let dir = Path::new("/state");
        let mut c = StoreConfig::default();
        assert_eq!(location(&c, dir).ok(), Some(Location::Disk(dir.join("db"))));
        c.url = Some("mem://".into());
        assert_eq!(location(&c, dir).ok(), Some(Location::Memory));
        c.url = Some("surrealkv://data".into());
        assert_eq!(
            location(&c, dir).ok(),
            Some(Location::Disk(dir.join("data")))
        );
        c.url = Some("surrealkv:///abs".into());
        assert_eq!(location(&c, dir).ok(), Some(Location::Disk("/abs".into())));
        c.url = Some("wss://root:pw@db.example:8000".into());
        assert_eq!(
            location(&c, dir).ok(),
            Some(Location::Remote("wss://db.example:8000".into()))
        );
        c.url = Some("rocksdb://x".into());
        assert!(matches!(
            location(&c, dir),
            Err(StoreError::UnsupportedUrl(_))
        ));
    }
}
