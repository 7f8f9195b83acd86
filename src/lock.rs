//! The state-dir lock: one runtime per state dir, held with `flock` for the runtime's life.

use kinfra_core::lockfile::{LockFile, LockFileError};
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
    _lock: LockFile,
}

impl StateLock {
    /// Takes the lock of `dir` without waiting.
    pub fn acquire(dir: &Path) -> Result<StateLock, LockError> {
        match LockFile::try_acquire(&dir.join(LOCK_FILE)) {
            Ok(lock) => Ok(StateLock { _lock: lock }),
            Err(LockFileError::Held { holder, .. }) => Err(LockError::Held {
                dir: dir.to_path_buf(),
                pid: holder,
            }),
            Err(LockFileError::Io { source, .. }) => Err(LockError::Io {
                dir: dir.to_path_buf(),
                source,
            }),
        }
    }
}

/// The PID written in the lock file of `dir`, when a live runtime holds it.
#[cfg(test)]
pub fn holder_pid(dir: &Path) -> Option<u32> {
    kinfra_core::lockfile::holder(&dir.join(LOCK_FILE))
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
