//! The state-dir lock: one runtime per state dir, held with `flock` for the runtime's life.

use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// File name of the lock inside the state dir. It also holds the owner's PID.
pub const LOCK_FILE: &str = "kinfra.lock";

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error("another kinfra runtime{} is already using the state dir {}", .pid.map(|p| format!(" (pid {p})")).unwrap_or_default(), .dir.display())]
    Held {
        /// The state dir.
        dir: PathBuf,
        /// The holder's PID, when the lock file says.
        pid: Option<u32>,
    },
    /// The lock file could not be opened or written.
    #[error("cannot lock the state dir {}: {source}", .dir.display())]
    Io {
        /// The state dir.
        dir: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Held for as long as the runtime lives; released on drop (and by the kernel if we die).
#[derive(Debug)]
pub struct StateLock {
    _lock: Flock<File>,
}

impl StateLock {
    /// Takes the lock of `dir` without waiting.
    pub fn acquire(dir: &Path) -> Result<StateLock, LockError> {
        let io = |source| LockError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(LockError::Held {
                    dir: dir.to_path_buf(),
                    pid: text.trim().parse().ok(),
                });
            }
            Err((_, errno)) => return Err(io(std::io::Error::from(errno))),
        };
        lock.set_len(0).map_err(io)?;
        lock.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(lock, "{}", std::process::id()).map_err(io)?;
        lock.flush().map_err(io)?;
        Ok(StateLock { _lock: lock })
    }
}

/// The PID written in the lock file of `dir`, when a live runtime holds it.
#[cfg(test)]
pub fn holder_pid(dir: &Path) -> Option<u32> {
    let file = File::open(dir.join(LOCK_FILE)).ok()?;
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_unlocked_on_drop) => None,
        Err((mut file, _)) => {
            let mut text = String::new();
            file.read_to_string(&mut text).ok()?;
            text.trim().parse().ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_and_names_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = StateLock::acquire(dir.path()).expect("first lock");
        match StateLock::acquire(dir.path()) {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected Held, got {other:?}"),
        }
        assert_eq!(holder_pid(dir.path()), Some(std::process::id()));
        drop(first);
        assert_eq!(holder_pid(dir.path()), None);
        assert!(StateLock::acquire(dir.path()).is_ok());
    }
}
