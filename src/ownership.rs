//! Refusing a state dir or secret file that another user owns or can write: such a path may
//! have been planted (a `.kinfra/` with a known `dashboard.token` in a shared directory), so
//! kinfra neither adopts it nor reads a secret from it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Files inside the state dir that hold secrets, and the folders that hold more of them.
/// Each is checked when it exists, before any subsystem reads it.
pub const SECRET_PATHS: &[&str] = &[
    "dashboard.token",
    "nats",
    "nats/token",
    "resources",
    "resources/secrets.json",
    "acme",
    "db",
];

/// A path kinfra refuses to use, with what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("refusing to use {}: {problem}", .path.display())]
pub struct UnsafePath {
    /// The path.
    pub path: PathBuf,
    /// Its owner and mode, and why they are not acceptable.
    pub problem: String,
}

/// Checks that `path` (when it exists) belongs to the effective user and that neither its
/// group nor others may write to it. A missing path is fine (kinfra creates it).
pub fn check_private(path: &Path) -> Result<(), UnsafePath> {
    // Named in full in errors: a relative `./.kinfra` does not say which one.
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let path = absolute.as_path();
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(UnsafePath {
                path: path.to_path_buf(),
                problem: format!("cannot read its owner and mode: {e}"),
            });
        }
    };
    let me = nix::unistd::geteuid().as_raw();
    let mode = meta.mode() & 0o7777;
    let unsafe_path = |problem: String| UnsafePath {
        path: path.to_path_buf(),
        problem,
    };
    if meta.file_type().is_symlink() {
        return Err(unsafe_path(format!(
            "it is a symbolic link (owner {}); kinfra's state must be real files",
            user(meta.uid())
        )));
    }
    if meta.uid() != me {
        return Err(unsafe_path(format!(
            "it is owned by {}, not by the user running kinfra ({}); mode {mode:04o}. \
             Use a state dir of your own (`[project] state_dir`) or remove this one",
            user(meta.uid()),
            user(me)
        )));
    }
    if mode & 0o022 != 0 {
        return Err(unsafe_path(format!(
            "mode {mode:04o} lets {} write to it (owner {}); run `chmod go-w {}` if its \
             contents are yours, or remove it",
            if mode & 0o002 != 0 {
                "every user"
            } else {
                "its group"
            },
            user(meta.uid()),
            path.display()
        )));
    }
    Ok(())
}

/// Checks the state dir and every secret-holding path inside it (see [`SECRET_PATHS`]).
pub fn check_state_dir(dir: &Path) -> Result<(), UnsafePath> {
    check_private(dir)?;
    for relative in SECRET_PATHS {
        check_private(&dir.join(relative))?;
    }
    Ok(())
}

/// `uid 1000 (alice)`, or `uid 1000` when the name is unknown.
pub fn user(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => format!("uid {uid} ({})", u.name),
        _ => format!("uid {uid}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn own_private_paths_pass_and_writable_ones_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        assert!(check_private(dir.path()).is_ok());
        assert!(check_private(&dir.path().join("missing")).is_ok());
        let token = dir.path().join("dashboard.token");
        std::fs::write(&token, "t\n").expect("write");
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let error = check_state_dir(dir.path()).expect_err("a world-writable token");
        let text = error.to_string();
        assert!(text.contains("dashboard.token"), "{text}");
        assert!(text.contains("mode 0666"), "{text}");
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(check_state_dir(dir.path()).is_ok());
        let link = dir.path().join("nats");
        std::os::unix::fs::symlink("/tmp", &link).expect("symlink");
        assert!(check_state_dir(dir.path()).is_err(), "a symlinked nats dir");
    }
}
