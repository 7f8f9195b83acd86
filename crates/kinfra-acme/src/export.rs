//! Optional export of certificates as PEM files under the state dir: `acme/<domain>/cert.pem`
//! and `key.pem`, mode 0600 in a 0700 directory, each written to a temporary file, synced and
//! renamed over the old one, so a reader never sees a half-written file.

use crate::error::AcmeError;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically with mode 0600.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AcmeError> {
    let err = |source| AcmeError::Export {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let result = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename is durable once the directory is synced.
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// Exports a certificate chain and key for `domain` under `state_dir/acme/<domain>/`;
/// returns the directory.
pub(crate) fn export(
    state_dir: &Path,
    domain: &str,
    chain_pem: &str,
    key_pem: &str,
) -> Result<PathBuf, AcmeError> {
    let dir = state_dir.join("acme").join(domain);
    let err = |source| AcmeError::Export {
        path: dir.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    write_private(&dir.join("key.pem"), key_pem.as_bytes())?;
    write_private(&dir.join("cert.pem"), chain_pem.as_bytes())?;
    Ok(dir)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn files_are_private_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let out = export(dir.path(), "a.test", "CERT1", "KEY1").unwrap();
        export(dir.path(), "a.test", "CERT2", "KEY2").unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join("cert.pem")).unwrap(),
            "CERT2"
        );
        assert_eq!(
            std::fs::read_to_string(out.join("key.pem")).unwrap(),
            "KEY2"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in ["cert.pem", "key.pem"] {
                let mode = std::fs::metadata(out.join(f)).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600);
            }
            let mode = std::fs::metadata(&out).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
        let leftovers = std::fs::read_dir(&out).unwrap().count();
        assert_eq!(leftovers, 2);
    }
}
