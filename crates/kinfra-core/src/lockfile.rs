//! Exclusive lock files holding their owner's PID: one runtime per state dir, one store per
//! data directory, one supervisor per state dir all take theirs here.
//!
//! The lock is std's [`File::try_lock`] (`flock` on Linux): held as long as the file stays
//! open, and released by the kernel when the process dies, so a killed owner never leaves a
//! stale lock behind. The PID inside is only for messages.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Why a lock file could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockFileError {
    /// Another open file (another process, or another owner in this one) holds the lock.
    #[error("{} is locked by another process{}", .path.display(), .holder.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Held {
        /// The lock file.
        path: PathBuf,
        /// The PID written in the lock file, when readable.
        holder: Option<u32>,
    },
    /// The lock file could not be opened, locked or written.
    #[error("cannot lock {}: {source}", .path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// A held lock file; the lock is released when this is dropped (or the process dies).
#[derive(Debug)]
pub struct LockFile {
    file: File,
    path: PathBuf,
}

impl LockFile {
    /// Takes the lock of `path` without waiting, creating the file if needed, and writes
    /// this process's PID into it.
    pub fn try_acquire(path: &Path) -> Result<LockFile, LockFileError> {
        let io = |source| LockFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(LockFileError::Held {
                    path: path.to_path_buf(),
                    holder: read_pid(&mut file),
                });
            }
            Err(std::fs::TryLockError::Error(source)) => return Err(io(source)),
        }
        let written = file
            .set_len(0)
            .and_then(|_| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{}", std::process::id()))
            .and_then(|_| file.flush());
        written.map_err(io)?;
        Ok(LockFile {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open, locked file.
    pub fn file(&self) -> &File {
        &self.file
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// True when nobody holds the lock of `path` (a missing file is free). Only looks: the lock
/// taken to check is released before returning.
pub fn is_free(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return true;
    };
    file.try_lock().is_ok()
}

/// The PID written in the lock file at `path`, when someone holds its lock.
pub fn holder(path: &Path) -> Option<u32> {
    let mut file = File::open(path).ok()?;
    match file.try_lock_shared() {
        Ok(()) => None,
        Err(_) => read_pid(&mut file),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_naming_path_and_holder() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("x.lock");
        assert!(is_free(&path));
        let first = LockFile::try_acquire(&path)?;
        assert_eq!(first.path(), path);
        assert!(!is_free(&path));
        assert_eq!(holder(&path), Some(std::process::id()));
        match LockFile::try_acquire(&path) {
            Err(e @ LockFileError::Held { .. }) => {
                let text = e.to_string();
                assert!(text.contains(&path.display().to_string()), "{text}");
                assert!(
                    text.contains(&format!("pid {}", std::process::id())),
                    "{text}"
                );
            }
            other => panic!("expected Held, got {other:?}"),
        }
        drop(first);
        assert!(is_free(&path));
        assert_eq!(holder(&path), None);
        let again = LockFile::try_acquire(&path)?;
        assert_eq!(
            std::fs::read_to_string(again.path())?.trim(),
            std::process::id().to_string()
        );
        Ok(())
    }

    #[test]
    fn an_unopenable_path_is_an_io_error() {
        let r = LockFile::try_acquire(Path::new("/proc/no-such-dir/x.lock"));
        assert!(matches!(r, Err(LockFileError::Io { .. })), "{r:?}");
    }
}
