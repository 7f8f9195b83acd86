//! Generated passwords of templates: made once from the OS's random source, kept in a file
//! readable only by kinfra's user (`0600`), reused on every start so a data volume keeps
//! working. Values never reach a log line, an event or a status.

use crate::DockerError;
use kinfra_core::Secret;
use std::collections::BTreeMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Length of a generated password.
const PASSWORD_LEN: usize = 32;
const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// The generated secrets of a project, in one JSON file.
#[derive(Debug)]
pub struct Secrets {
    path: PathBuf,
    lock: Mutex<()>,
}

impl Secrets {
    /// Secrets kept in `path` (created on first use).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            lock: Mutex::new(()),
        }
    }

    /// The usual place: `STATE_DIR/resources/secrets.json`.
    pub fn in_state_dir(state_dir: &Path) -> Self {
        Self::new(state_dir.join("resources").join("secrets.json"))
    }

    fn err(&self) -> impl FnOnce(std::io::Error) -> DockerError + '_ {
        move |source| DockerError::Secrets {
            path: self.path.display().to_string(),
            source,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        match self.lock.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The file's values; empty when there is no file yet.
    fn read(&self) -> Result<BTreeMap<String, String>, DockerError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| self.err()(std::io::Error::other(e)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(self.err()(e)),
        }
    }

    /// Replaces the file (mode 0600, written to a temporary file, synced, then renamed).
    fn write(&self, map: &BTreeMap<String, String>) -> Result<(), DockerError> {
        use std::io::Write;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(self.err())?;
        }
        let json =
            serde_json::to_vec_pretty(map).map_err(|e| self.err()(std::io::Error::other(e)))?;
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(self.err())?;
        f.write_all(&json).map_err(self.err())?;
        f.sync_all().map_err(self.err())?;
        std::fs::rename(&tmp, &self.path).map_err(self.err())
    }

    /// The value under `key`, generated and saved when there is none.
    pub fn get_or_create(&self, key: &str) -> Result<String, DockerError> {
        let _guard = self.lock();
        let mut map = self.read()?;
        if let Some(v) = map.get(key) {
            return Ok(v.clone());
        }
        let value = generate().map_err(self.err())?;
        map.insert(key.to_owned(), value.clone());
        self.write(&map)?;
        Ok(value)
    }

    /// Every value kept, by key (for a copy elsewhere, such as the store).
    pub fn all(&self) -> Result<BTreeMap<String, Secret>, DockerError> {
        let _guard = self.lock();
        Ok(self
            .read()?
            .into_iter()
            .map(|(k, v)| (k, Secret::new(v)))
            .collect())
    }

    /// Adds the values of `kept` whose keys the file lacks; a value already in the file wins.
    /// Writes only when something was added.
    pub fn add_missing(&self, kept: &BTreeMap<String, Secret>) -> Result<(), DockerError> {
        let _guard = self.lock();
        let mut map = self.read()?;
        let before = map.len();
        for (k, v) in kept {
            map.entry(k.clone())
                .or_insert_with(|| v.expose().to_owned());
        }
        if map.len() == before {
            return Ok(());
        }
        self.write(&map)
    }
}

/// A random alphanumeric password from the OS ([`kinfra_core::random`]).
fn generate() -> std::io::Result<String> {
    let mut bytes = [0u8; PASSWORD_LEN];
    kinfra_core::random::fill(&mut bytes)?;
    Ok(bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generated_once_kept_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Secrets::in_state_dir(dir.path());
        let a = s.get_or_create("db.password").expect("create");
        let b = s.get_or_create("db.password").expect("read");
        let c = s.get_or_create("cache.password").expect("create");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), PASSWORD_LEN);
        let mode = std::fs::metadata(dir.path().join("resources/secrets.json"))
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn kept_values_fill_gaps_and_never_overwrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Secrets::in_state_dir(dir.path());
        let local = s.get_or_create("db.password").expect("create");
        let kept: BTreeMap<String, Secret> = [
            ("db.password".to_owned(), Secret::new("from-store")),
            ("cache.password".to_owned(), Secret::new("kept")),
        ]
        .into_iter()
        .collect();
        s.add_missing(&kept).expect("merge");
        let all = s.all().expect("read");
        assert_eq!(all["db.password"].expose(), local);
        assert_eq!(all["cache.password"].expose(), "kept");
        assert_eq!(s.get_or_create("cache.password").expect("read"), "kept");
        let fresh = Secrets::in_state_dir(&dir.path().join("none"));
        assert!(fresh.all().expect("no file yet").is_empty());
    }
}
