//! Services a user stopped, persisted in `STATE_DIR/stopped.json`, so an `unless-stopped`
//! service stays stopped across kinfra restarts until it is started by hand.

use crate::persist::StateSink;
use crate::ports::write_atomic;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tracing::warn;

/// Where the set is saved.
#[derive(Debug)]
enum Target {
    File(PathBuf),
    Sink(Arc<dyn StateSink>),
}

/// The persisted set of user-stopped services.
#[derive(Debug)]
pub struct StoppedSet {
    target: Target,
    names: Mutex<BTreeSet<String>>,
}

impl StoppedSet {
    /// Loads `path`; a missing or unreadable file is an empty set.
    pub fn load(path: &Path) -> StoppedSet {
        let names = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        StoppedSet {
            target: Target::File(path.to_path_buf()),
            names: Mutex::new(names),
        }
    }

    /// A set that starts with `names` and reports each change to `sink` instead of a file.
    pub fn with_sink(names: BTreeSet<String>, sink: Arc<dyn StateSink>) -> StoppedSet {
        StoppedSet {
            target: Target::Sink(sink),
            names: Mutex::new(names),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        match self.names.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// True when a user stopped `service` and has not started it since.
    pub fn contains(&self, service: &str) -> bool {
        self.lock().contains(service)
    }

    /// Records a user stop (`true`) or start (`false`) and saves when that changed the set.
    pub fn set(&self, service: &str, stopped: bool) {
        let json = {
            let mut names = self.lock();
            let changed = if stopped {
                names.insert(service.to_owned())
            } else {
                names.remove(service)
            };
            if !changed {
                return;
            }
            serde_json::to_vec(&*names)
        };
        let path = match &self.target {
            Target::File(path) => path,
            Target::Sink(sink) => {
                sink.user_stopped_changed(service, stopped);
                return;
            }
        };
        match json {
            Ok(json) => {
                if let Err(error) = write_atomic(path, &json) {
                    warn!(path = %path.display(), %error, "Saving the stopped services failed.");
                }
            }
            Err(error) => warn!(%error, "Encoding the stopped services failed."),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persists() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("stopped.json");
        let s = StoppedSet::load(&path);
        s.set("api", true);
        assert!(StoppedSet::load(&path).contains("api"));
        s.set("api", false);
        assert!(!StoppedSet::load(&path).contains("api"));
        Ok(())
    }
}
