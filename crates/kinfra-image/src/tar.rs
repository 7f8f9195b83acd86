//! A deterministic tar (ustar) writer: entries sorted by path, parents before children, every
//! entry with the same mtime, uid/gid 0, no user or group names, modes as given. The same
//! entries always give the same bytes.

use std::collections::BTreeMap;

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file with its contents.
    File(Vec<u8>),
    /// A symbolic link to the target.
    Symlink(String),
}

/// One entry: its path inside the archive (relative, `/`-separated, no `.` or `..`), mode
/// (permission bits, with sticky/setgid where wanted) and kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Permission bits (`0o755`, `0o1777`, ...).
    pub mode: u32,
    /// What it is.
    pub kind: EntryKind,
}

/// A set of entries keyed by path; [`Archive::to_bytes`] writes them in path order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the entry at `path`, and its missing parent directories (0755).
    /// The path is cleaned of leading `/` and `./`; `..` or an empty path is an error.
    pub fn insert(&mut self, path: &str, entry: Entry) -> Result<(), String> {
        let clean = clean_path(path)?;
        let mut parent = String::new();
        let parts: Vec<&str> = clean.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            self.entries.entry(parent.clone()).or_insert(Entry {
                mode: 0o755,
                kind: EntryKind::Dir,
            });
        }
        self.entries.insert(clean, entry);
        Ok(())
    }

    /// True when an entry exists at `path`.
    pub fn contains(&self, path: &str) -> bool {
        clean_path(path).is_ok_and(|p| self.entries.contains_key(&p))
    }

    /// The paths, in archive order.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The archive's bytes, every entry with modification time `mtime` (seconds since 1970).
    pub fn to_bytes(&self, mtime: u64) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        for (path, entry) in &self.entries {
            let (typeflag, size, link, data): (u8, u64, &str, &[u8]) = match &entry.kind {
                EntryKind::Dir => (b'5', 0, "", &[]),
                EntryKind::File(data) => (b'0', data.len() as u64, "", data),
                EntryKind::Symlink(target) => (b'2', 0, target.as_str(), &[]),
            };
            let name = if entry.kind == EntryKind::Dir {
                format!("{path}/")
            } else {
                path.clone()
            };
            out.extend_from_slice(&header(&name, entry.mode, size, mtime, typeflag, link)?);
            out.extend_from_slice(data);
            let pad = (512 - data.len() % 512) % 512;
            out.extend(std::iter::repeat_n(0u8, pad));
        }
        out.extend(std::iter::repeat_n(0u8, 1024));
        Ok(out)
    }
}

/// `a/./b/` → `a/b`; refuses `..`, empty paths and NUL.
fn clean_path(path: &str) -> Result<String, String> {
    if path.contains('\0') {
        return Err(format!("path {path:?} holds a NUL byte"));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(format!("path {path:?} leaves its directory (`..`)")),
            other => parts.push(other),
        }
    }
    if parts.is_empty() {
        return Err(format!("path {path:?} is empty"));
    }
    Ok(parts.join("/"))
}

/// One 512-byte ustar header.
fn header(
    name: &str,
    mode: u32,
    size: u64,
    mtime: u64,
    typeflag: u8,
    link: &str,
) -> Result<[u8; 512], String> {
    let mut h = [0u8; 512];
    let (prefix, base) = split_name(name)?;
    h[..base.len()].copy_from_slice(base.as_bytes());
    octal(&mut h[100..108], u64::from(mode))?;
    octal(&mut h[108..116], 0)?;
    octal(&mut h[116..124], 0)?;
    octal(&mut h[124..136], size)?;
    octal(&mut h[136..148], mtime)?;
    h[156] = typeflag;
    if link.len() > 100 {
        return Err(format!("link target of {name} is longer than 100 bytes"));
    }
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    octal(&mut h[329..337], 0)?;
    octal(&mut h[337..345], 0)?;
    h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
    let text = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(text.as_bytes());
    Ok(h)
}

/// ustar's name (100 bytes) and prefix (155 bytes), split at a `/`.
fn split_name(name: &str) -> Result<(&str, &str), String> {
    if name.len() <= 100 {
        return Ok(("", name));
    }
    let too_long = || format!("path {name} is too long for a tar entry (255 bytes at most)");
    let trimmed = name.strip_suffix('/').unwrap_or(name);
    for (i, _) in trimmed.match_indices('/') {
        let (prefix, rest) = (&name[..i], &name[i + 1..]);
        if prefix.len() <= 155 && rest.len() <= 100 {
            return Ok((prefix, rest));
        }
    }
    Err(too_long())
}

/// Writes `value` as zero-padded octal with a trailing NUL into `field`.
fn octal(field: &mut [u8], value: u64) -> Result<(), String> {
    let width = field.len() - 1;
    let text = format!("{value:0width$o}");
    if text.len() > width {
        return Err(format!("{value} does not fit a tar header field"));
    }
    field[..width].copy_from_slice(text.as_bytes());
    field[width] = 0;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sample() -> Archive {
        let mut a = Archive::new();
        a.insert(
            "/app/kinfra.toml",
            Entry {
                mode: 0o644,
                kind: EntryKind::File(b"[project]\nname = \"x\"\n".to_vec()),
            },
        )
        .expect("insert");
        a.insert(
            "tmp",
            Entry {
                mode: 0o1777,
                kind: EntryKind::Dir,
            },
        )
        .expect("insert");
        a.insert(
            "bin/sh",
            Entry {
                mode: 0o777,
                kind: EntryKind::Symlink("busybox".into()),
            },
        )
        .expect("insert");
        let deep = format!(
            "app/{}/{}/{}",
            "d".repeat(60),
            "e".repeat(60),
            "f".repeat(90)
        );
        a.insert(
            &deep,
            Entry {
                mode: 0o755,
                kind: EntryKind::File(vec![b'x'; 700]),
            },
        )
        .expect("insert");
        a
    }

    #[test]
    fn same_entries_same_bytes_and_parents_first() {
        let a = sample().to_bytes(1_700_000_000).expect("bytes");
        let b = sample().to_bytes(1_700_000_000).expect("bytes");
        assert_eq!(a, b);
        assert_eq!(a.len() % 512, 0);
        let archive = sample();
        let paths: Vec<&str> = archive.paths().map(|p| &p[..p.len().min(8)]).collect();
        assert_eq!(paths[..3], ["app", "app/dddd", "app/dddd"]);
        assert!(sample().contains("/bin"), "parent dirs are added");
    }

    #[test]
    fn bad_paths_are_refused() {
        let mut a = Archive::new();
        let e = Entry {
            mode: 0o644,
            kind: EntryKind::Dir,
        };
        assert!(a.insert("../etc", e.clone()).is_err());
        assert!(a.insert("/", e.clone()).is_err());
        let long = "x".repeat(300);
        a.insert(&long, e).expect("insert");
        assert!(a.to_bytes(0).is_err());
    }

    /// GNU tar reads the archive back: names (long ones through the prefix), modes, sizes,
    /// symlinks and the fixed owner and mtime.
    #[test]
    fn gnu_tar_reads_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("a.tar");
        std::fs::write(&file, sample().to_bytes(1_700_000_000).expect("bytes")).expect("write");
        let out = Command::new("tar")
            .args(["--numeric-owner", "--full-time", "-tvf"])
            .arg(&file)
            .env("TZ", "UTC")
            .output()
            .expect("tar (Debian package tar) runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(listing.contains("-rw-r--r-- 0/0"), "{listing}");
        assert!(listing.contains("drwxrwxrwt 0/0"), "{listing}");
        assert!(listing.contains("bin/sh -> busybox"), "{listing}");
        assert!(
            listing.contains("2023-11-14 22:13:20 app/kinfra.toml"),
            "{listing}"
        );
        let deep = format!(
            "app/{}/{}/{}",
            "d".repeat(60),
            "e".repeat(60),
            "f".repeat(90)
        );
        assert!(
            listing.contains(&format!("700 2023-11-14 22:13:20 {deep}")),
            "{listing}"
        );
    }
}
