//! Maintenance mode: which services (or everything) the proxy answers with the maintenance
//! page. Runtime state, kept in `<state_dir>/maintenance.json` so it survives a restart.

use kinfra_core::config::Config;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

/// File name inside the state dir.
pub const FILE: &str = "maintenance.json";

/// What is in maintenance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Maintenance {
    /// Everything is in maintenance.
    pub global: bool,
    /// These services are.
    pub services: BTreeSet<String>,
}

impl Maintenance {
    /// What the config asks for (`services.NAME.maintenance`, `proxy.maintenance`).
    pub fn from_config(config: &Config) -> Self {
        Self {
            global: config.proxy.maintenance,
            services: config
                .services
                .iter()
                .filter(|(_, s)| s.maintenance)
                .map(|(n, _)| n.clone())
                .collect(),
        }
    }

    /// True when `service` gets the maintenance page.
    pub fn covers(&self, service: &str) -> bool {
        self.global || self.services.contains(service)
    }

    /// The saved state, or the config's when nothing was saved (or the file is unreadable,
    /// which is logged).
    pub fn load(state_dir: &Path, config: &Config) -> Self {
        let path = state_dir.join(FILE);
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(m) => m,
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "Ignoring an unreadable maintenance file.");
                    Self::from_config(config)
                }
            },
            Err(_) => Self::from_config(config),
        }
    }

    /// Writes the state atomically.
    pub fn save(&self, state_dir: &Path) -> std::io::Result<PathBuf> {
        let path = state_dir.join(FILE);
        let tmp = state_dir.join(format!("{FILE}.tmp"));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }

    /// Applies a reload: settings whose config value changed take the new value; the rest
    /// (including what was switched at run time) stay.
    pub fn reconcile(&mut self, old: &Config, new: &Config) {
        if old.proxy.maintenance != new.proxy.maintenance {
            self.global = new.proxy.maintenance;
        }
        for (name, service) in &new.services {
            let before = old.services.get(name).map(|s| s.maintenance);
            if before != Some(service.maintenance) {
                if service.maintenance {
                    self.services.insert(name.clone());
                } else {
                    self.services.remove(name);
                }
            }
        }
        self.services.retain(|n| new.services.contains_key(n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_state_wins_over_config_and_reloads_apply_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::default();
        config.services.insert(
            "a".into(),
            kinfra_core::config::ServiceConfig::new("sleep 1"),
        );
        let mut b = kinfra_core::config::ServiceConfig::new("sleep 1");
        b.maintenance = true;
        config.services.insert("b".into(), b);
        let m = Maintenance::load(dir.path(), &config);
        assert!(m.covers("b") && !m.covers("a"));
        let mut m2 = m.clone();
        m2.services.insert("a".into());
        m2.save(dir.path()).expect("save");
        assert_eq!(Maintenance::load(dir.path(), &config), m2);
        // A reload that turns b's config off applies; a's runtime switch stays.
        let mut new = config.clone();
        if let Some(b) = new.services.get_mut("b") {
            b.maintenance = false;
        }
        m2.reconcile(&config, &new);
        assert!(m2.covers("a") && !m2.covers("b"));
        new.proxy.maintenance = true;
        m2.reconcile(&config, &new);
        assert!(m2.covers("zzz"));
    }
}
