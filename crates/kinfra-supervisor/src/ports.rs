//! Ports: `"auto"` ports allocated once and persisted in `STATE_DIR/ports.json`, and checks
//! that a fixed port is free, naming the holder (PID and command) when it is not.

use crate::procfs;
use kinfra_core::config::PortSpec;
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tracing::warn;

/// The process holding a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortHolder {
    /// Its PID.
    pub pid: i32,
    /// Its command line, when readable.
    pub command: Option<String>,
}

/// A port that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PortInUse {
    /// The port.
    pub port: u16,
    /// Who holds it, when that could be found.
    pub holder: Option<PortHolder>,
}

impl fmt::Display for PortInUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "port {} is already in use", self.port)?;
        if let Some(h) = &self.holder {
            write!(f, " by pid {}", h.pid)?;
            if let Some(cmd) = &h.command {
                write!(f, " ({cmd})")?;
            }
        }
        Ok(())
    }
}

/// Who listens on `port`, if anyone (from `/proc/net/tcp*` and `/proc/*/fd`), else whether a
/// bind fails anyway.
pub fn check_free(port: u16) -> Result<(), PortInUse> {
    let inodes = procfs::listening_inodes(port);
    if !inodes.is_empty() {
        let holder = procfs::socket_holder(&inodes).map(|pid| PortHolder {
            pid,
            command: procfs::cmdline(pid),
        });
        return Err(PortInUse { port, holder });
    }
    match TcpListener::bind(("0.0.0.0", port)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(PortInUse { port, holder: None }),
        // Not allowed to bind (a low port without privileges): the service will say so.
        Err(_) => Ok(()),
    }
}

/// Asks the kernel for a free port on 127.0.0.1.
pub fn free_port() -> io::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// The persisted `"auto"` ports.
#[derive(Debug)]
pub struct PortStore {
    /// The file they are saved to; `None` when they live elsewhere (announced by
    /// `PortAssigned` events).
    path: Option<PathBuf>,
    ports: Mutex<BTreeMap<String, u16>>,
}

impl PortStore {
    /// Loads `path`; a missing file is an empty store, an unreadable one is reported.
    pub fn load(path: &Path) -> io::Result<PortStore> {
        let ports = match std::fs::read(path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(p) => p,
                Err(error) => {
                    warn!(path = %path.display(), %error, "Ignoring an unreadable ports file.");
                    BTreeMap::new()
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        Ok(PortStore {
            path: Some(path.to_path_buf()),
            ports: Mutex::new(ports),
        })
    }

    /// A store that starts with `ports` and saves no file: whoever passed them in persists
    /// new assignments from the `PortAssigned` events.
    pub fn in_memory(ports: BTreeMap<String, u16>) -> PortStore {
        PortStore {
            path: None,
            ports: Mutex::new(ports),
        }
    }

    /// The port persisted for `service`, if any.
    pub fn get(&self, service: &str) -> Option<u16> {
        self.lock().get(service).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u16>> {
        match self.ports.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The port `service` gets for `spec`: `(port, newly_assigned)`. An auto port is reused
    /// when free; a new one is taken (and persisted) when there is none or it is held by a
    /// foreign process. A fixed port must be free.
    pub fn resolve(&self, service: &str, spec: PortSpec) -> Result<(u16, bool), PortError> {
        match spec {
            PortSpec::Fixed(port) => {
                check_free(port)?;
                Ok((port, false))
            }
            PortSpec::Auto => {
                let mut ports = self.lock();
                if let Some(&port) = ports.get(service) {
                    match check_free(port) {
                        Ok(()) => return Ok((port, false)),
                        Err(error) => {
                            warn!(service, %error, "The saved auto port is taken; picking another.");
                        }
                    }
                }
                let taken: Vec<u16> = ports
                    .iter()
                    .filter(|(k, _)| k.as_str() != service)
                    .map(|(_, v)| *v)
                    .collect();
                let mut port = free_port()?;
                for _ in 0..20 {
                    if !taken.contains(&port) {
                        break;
                    }
                    port = free_port()?;
                }
                ports.insert(service.to_owned(), port);
                if let Some(path) = &self.path {
                    let json = serde_json::to_vec_pretty(&*ports).map_err(io::Error::other)?;
                    drop(ports);
                    write_atomic(path, &json)?;
                }
                Ok((port, true))
            }
        }
    }
}

/// Why a port could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// The port is held by another process.
    #[error(transparent)]
    InUse(#[from] PortInUse),
    /// Allocating or persisting failed.
    #[error("cannot allocate or save a port: {0}")]
    Io(#[from] io::Error),
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_port_persists() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("ports.json");
        let store = PortStore::load(&path)?;
        let (p1, new1) = store
            .resolve("api", PortSpec::Auto)
            .map_err(io::Error::other)?;
        assert!(new1);
        let (p1b, new1b) = store
            .resolve("api", PortSpec::Auto)
            .map_err(io::Error::other)?;
        assert_eq!((p1, false), (p1b, new1b));
        let again = PortStore::load(&path)?;
        assert_eq!(again.get("api"), Some(p1));
        Ok(())
    }

    #[test]
    fn fixed_port_in_use_names_holder() -> io::Result<()> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        let err = check_free(port).err();
        let holder = err.as_ref().and_then(|e| e.holder.clone());
        assert_eq!(holder.map(|h| h.pid), Some(std::process::id() as i32));
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains(&format!("port {port} is already in use by pid")),
            "{msg}"
        );
        drop(l);
        Ok(())
    }
}
