//! File watch: `watch = { paths, ignore, debounce }` turns file changes into one restart per
//! burst. The state dir, `target/`, `node_modules/` and `.git/` are always ignored.

use kinfra_core::config::WatchConfig;
use notify::{RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Directory names never watched.
const ALWAYS_IGNORED: &[&str] = &["target", "node_modules", ".git"];

/// A running watch; dropping it stops watching.
pub struct FileWatch {
    _watcher: notify::RecommendedWatcher,
    debouncer: JoinHandle<()>,
}

impl Drop for FileWatch {
    fn drop(&mut self) {
        self.debouncer.abort();
    }
}

/// Matches `text` against a glob: `*` (no `/`), `**` (anything), `?` (one character).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    fn go(p: &[char], t: &[char]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some('*') if p.get(1) == Some(&'*') => {
                let rest = if p.get(2) == Some(&'/') {
                    &p[3..]
                } else {
                    &p[2..]
                };
                (0..=t.len()).any(|i| go(rest, &t[i..]))
            }
            Some('*') => {
                let mut i = 0;
                loop {
                    if go(&p[1..], &t[i..]) {
                        return true;
                    }
                    if i >= t.len() || t[i] == '/' {
                        return false;
                    }
                    i += 1;
                }
            }
            Some('?') => !t.is_empty() && t[0] != '/' && go(&p[1..], &t[1..]),
            Some(c) => t.first() == Some(c) && go(&p[1..], &t[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    go(&p, &t)
}

/// The ignore rules of one watch.
#[derive(Debug, Clone)]
pub struct IgnoreRules {
    base: PathBuf,
    state_dir: PathBuf,
    patterns: Vec<String>,
}

impl IgnoreRules {
    /// Rules for paths under `base`, always ignoring `state_dir`.
    pub fn new(base: &Path, state_dir: &Path, patterns: &[String]) -> Self {
        let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        Self {
            base: canon(base),
            state_dir: canon(state_dir),
            patterns: patterns.to_vec(),
        }
    }

    /// True when a change of `path` must not cause a restart.
    pub fn ignored(&self, path: &Path) -> bool {
        if path.starts_with(&self.state_dir) {
            return true;
        }
        let rel = path.strip_prefix(&self.base).unwrap_or(path);
        if rel
            .components()
            .any(|c| ALWAYS_IGNORED.iter().any(|n| c.as_os_str() == *n))
        {
            return true;
        }
        let rel_text = rel.to_string_lossy();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.patterns.iter().any(|p| {
            let p = p.trim_end_matches('/');
            glob_match(p, &rel_text)
                || glob_match(p, &name)
                || glob_match(&format!("{p}/**"), &rel_text)
        })
    }
}

impl FileWatch {
    /// Starts watching `cfg.paths` (relative to `cwd`). Each burst of changes, once quiet for
    /// `cfg.debounce`, arrives as one batch of paths on the returned receiver.
    pub fn start(
        cfg: &WatchConfig,
        cwd: &Path,
        state_dir: &Path,
    ) -> Result<(FileWatch, mpsc::Receiver<Vec<PathBuf>>), String> {
        let rules = IgnoreRules::new(cwd, state_dir, &cfg.ignore);
        let (raw_tx, mut raw_rx) = mpsc::channel::<PathBuf>(1024);
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(event) = res else { return };
            if matches!(event.kind, notify::EventKind::Access(_)) {
                return;
            }
            for path in event.paths {
                if !rules.ignored(&path) {
                    // A full channel means a restart is coming anyway.
                    let _ = raw_tx.try_send(path);
                }
            }
        })
        .map_err(|e| e.to_string())?;
        for p in &cfg.paths {
            let full = if p.is_absolute() {
                p.clone()
            } else {
                cwd.join(p)
            };
            watcher
                .watch(&full, RecursiveMode::Recursive)
                .map_err(|e| format!("{}: {e}", full.display()))?;
        }
        let (tx, rx) = mpsc::channel(4);
        let debounce = cfg.debounce.0.max(Duration::from_millis(10));
        let debouncer = tokio::spawn(async move {
            while let Some(first) = raw_rx.recv().await {
                let mut batch = vec![first];
                loop {
                    match tokio::time::timeout(debounce, raw_rx.recv()).await {
                        Ok(Some(p)) => {
                            if batch.len() < 100 && !batch.contains(&p) {
                                batch.push(p);
                            }
                        }
                        Ok(None) => return,
                        Err(_) => break,
                    }
                }
                if tx.send(batch).await.is_err() {
                    return;
                }
            }
        });
        Ok((
            FileWatch {
                _watcher: watcher,
                debouncer,
            },
            rx,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*.log", "a.log"));
        assert!(!glob_match("*.log", "dir/a.log"));
        assert!(glob_match("**/*.log", "dir/sub/a.log"));
        assert!(glob_match("**/*.log", "a.log"));
        assert!(glob_match("build/**", "build/x/y"));
        assert!(glob_match("?.txt", "a.txt"));
        assert!(!glob_match("?.txt", "ab.txt"));
    }

    #[test]
    fn ignore_rules() {
        let rules = IgnoreRules::new(
            Path::new("/proj"),
            Path::new("/proj/.kinfra"),
            &["*.tmp".to_string(), "dist".to_string()],
        );
        assert!(rules.ignored(Path::new("/proj/.kinfra/logs/a.log")));
        assert!(rules.ignored(Path::new("/proj/target/debug/x")));
        assert!(rules.ignored(Path::new("/proj/web/node_modules/y.js")));
        assert!(rules.ignored(Path::new("/proj/.git/HEAD")));
        assert!(rules.ignored(Path::new("/proj/src/a.tmp")));
        assert!(rules.ignored(Path::new("/proj/dist/app.js")));
        assert!(!rules.ignored(Path::new("/proj/src/main.rs")));
    }
}
