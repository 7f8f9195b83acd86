//! What happens at boot, before the supervisor starts: the state-dir files the supervisor used
//! to keep (`ports.json`, `stopped.json`) move into the store; runs a killed instance left
//! recorded as live are checked (PID plus `/proc` start time) and closed, and the processes
//! still running are handed back ([`Recovery::left_running`]) for the supervisor to stop
//! (`kinfra_supervisor::stop_left_running`: the store does not know the supervisor); and the
//! supervisor's [`Persistence`] is loaded. Also the [`StoreSink`] through which the
//! supervisor reports changes.

use crate::error::StoreError;
use crate::read::{RUN_FIELDS, RunRow};
use crate::records::RunRecord;
use crate::writer::{Op, Shared};
use crate::{Store, json_of, now_ms};
use kinfra_core::event::now_rfc3339;
use kinfra_core::persist::{LeftRunning, Persistence, ServiceHistory, StateSink};
use kinfra_core::procstat;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tracing::{info, warn};

/// Queues the supervisor's changes for the writer; never waits.
#[derive(Debug)]
pub(crate) struct StoreSink {
    pub shared: Arc<Shared>,
}

impl StateSink for StoreSink {
    fn history_changed(&self, service: &str, history: ServiceHistory) {
        self.shared.push(Op::History {
            service: service.to_owned(),
            history,
        });
    }

    fn user_stopped_changed(&self, service: &str, stopped: bool) {
        self.shared.push(Op::UserStopped {
            service: service.to_owned(),
            stopped,
        });
    }
}

/// What [`Store::migrate_state_files`] moved into the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Migrated {
    /// Ports taken from `ports.json`.
    pub ports: BTreeMap<String, u16>,
    /// Services taken from `stopped.json`.
    pub user_stopped: BTreeSet<String>,
}

/// What [`Store::recover_stale_runs`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Runs whose process was still alive (same PID and start time), closed as `killed at
    /// boot`: the caller stops them ([`Recovery::left_running`]) before anything starts.
    pub killed: Vec<RunRecord>,
    /// Runs whose process was already gone.
    pub lost: Vec<RunRecord>,
}

impl Recovery {
    /// The processes of [`Recovery::killed`], for the supervisor to stop
    /// (`kinfra_supervisor::stop_left_running`).
    pub fn left_running(&self) -> Vec<LeftRunning> {
        self.killed
            .iter()
            .filter_map(|run| {
                Some(LeftRunning {
                    pid: i32::try_from(run.pid).ok()?,
                    start_time: run.start_time?,
                })
            })
            .collect()
    }
}

/// Everything [`Store::boot`] did, and what the supervisor starts from.
#[derive(Debug, Clone)]
pub struct Boot {
    /// State-dir files moved into the store.
    pub migrated: Migrated,
    /// Stale runs handled.
    pub recovery: Recovery,
    /// What the supervisor starts from (`kinfra_supervisor::SupervisorOptions::persistence`).
    pub persistence: Persistence,
}

fn migrated_name(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".migrated");
    PathBuf::from(p)
}

/// Reads a JSON state file; `None` when it does not exist. An undecodable one is renamed
/// `NAME.invalid` and reported, never taken as empty without a word.
fn read_state_file<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StoreError::StateFile {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(v) => Ok(Some(v)),
        Err(error) => {
            let mut bad = path.as_os_str().to_owned();
            bad.push(".invalid");
            warn!(path = %path.display(), %error, "Cannot read a state file to migrate; renamed it `.invalid`.");
            std::fs::rename(path, &bad).map_err(|source| StoreError::StateFile {
                path: path.to_path_buf(),
                source,
            })?;
            Ok(None)
        }
    }
}

impl Store {
    /// Moves `ports.json` and `stopped.json` from `state_dir` into the store, then renames
    /// each to `NAME.migrated`. A file is renamed only after its contents are committed, so
    /// a crash in between migrates it again (the same values) on the next boot.
    pub async fn migrate_state_files(&self, state_dir: &Path) -> Result<Migrated, StoreError> {
        let db = self.db()?;
        let mut out = Migrated::default();
        let ports_path = state_dir.join("ports.json");
        if let Some(ports) = read_state_file::<BTreeMap<String, u16>>(&ports_path)? {
            for (service, port) in &ports {
                db.query(
                    "UPSERT type::record('port', $s) SET service = $s, port = $p, \
                     assigned_ms = $ms RETURN NONE",
                )
                .bind(json!({"s": service, "p": port, "ms": now_ms()}))
                .await
                .and_then(|r| r.check())
                .map_err(|e| StoreError::query("migrating ports.json", e))?;
            }
            rename_migrated(&ports_path)?;
            info!(path = %ports_path.display(), ports = ports.len(), "Moved the port registry into the store.");
            out.ports = ports;
        }
        let stopped_path = state_dir.join("stopped.json");
        if let Some(names) = read_state_file::<BTreeSet<String>>(&stopped_path)? {
            for service in &names {
                db.query(
                    "UPSERT type::record('service', $s) SET name = $s, user_stopped = true \
                     RETURN NONE",
                )
                .bind(json!({"s": service}))
                .await
                .and_then(|r| r.check())
                .map_err(|e| StoreError::query("migrating stopped.json", e))?;
            }
            rename_migrated(&stopped_path)?;
            info!(path = %stopped_path.display(), services = names.len(), "Moved the user-stopped services into the store.");
            out.user_stopped = names;
        }
        Ok(out)
    }

    /// Runs that an earlier instance recorded as live and never closed (it was killed): every
    /// such run is closed, as `killed at boot` when its process is still the same one (PID and
    /// `/proc` start time), else as `lost`. The store only looks: the caller stops
    /// [`Recovery::left_running`] (`kinfra_supervisor::stop_left_running`) before anything
    /// starts, so no stale process holds a port or a file.
    pub async fn recover_stale_runs(&self) -> Result<Recovery, StoreError> {
        let db = self.db()?;
        let mut resp = db
            .query(format!(
                "SELECT {RUN_FIELDS} FROM run WHERE ended_ms = NONE AND boot != $boot ORDER BY n"
            ))
            .bind(json!({"boot": self.boot_id()}))
            .await
            .map_err(|e| StoreError::query("stale runs", e))?;
        let rows: Vec<RunRow> = json_of(&mut resp, 0, "stale runs")?;
        let runs = rows.into_iter().map(RunRecord::from);
        let mut out = Recovery::default();
        for mut run in runs {
            let pid = i32::try_from(run.pid).unwrap_or(0);
            let alive = run
                .start_time
                .is_some_and(|st| pid > 1 && procstat::is_same_alive(pid, st));
            let reason = if alive {
                warn!(service = %run.service, pid, boot = %run.boot, "A process left running by a killed kinfra is to be stopped.");
                "killed at boot"
            } else {
                if run.start_time.is_none() && procstat::stat(pid).is_some() {
                    warn!(service = %run.service, pid, "A stale run has no start time; not touching pid {pid}, which may be another process now.");
                }
                "lost"
            };
            let now = now_rfc3339();
            db.query(
                "UPDATE type::record('run', $n) SET ended_ms = $ms, ended_at = $at, \
                 reason = $reason RETURN NONE",
            )
            .bind(json!({"n": run.n, "ms": now_ms(), "at": now, "reason": reason}))
            .await
            .and_then(|r| r.check())
            .map_err(|e| StoreError::query("closing stale runs", e))?;
            run.ended_at = Some(now);
            run.reason = Some(reason.to_owned());
            if alive {
                out.killed.push(run);
            } else {
                out.lost.push(run);
            }
        }
        db.query("UPDATE service SET pid = NONE WHERE pid != NONE RETURN NONE")
            .await
            .and_then(|r| r.check())
            .map_err(|e| StoreError::query("clearing stale pids", e))?;
        if !out.killed.is_empty() || !out.lost.is_empty() {
            info!(
                killed = out.killed.len(),
                lost = out.lost.len(),
                "Closed runs left open by a previous kinfra."
            );
        }
        Ok(out)
    }

    /// What the supervisor starts from: known ports, restart counts and last exits, user
    /// stops, and the sink for changes.
    pub async fn persistence(&self) -> Result<Persistence, StoreError> {
        Ok(Persistence {
            ports: self.ports().await?,
            history: self.service_history().await?,
            user_stopped: self.user_stopped().await?,
            sink: self.state_sink(),
        })
    }

    /// Everything to do before the supervisor starts, in order:
    /// [`Store::migrate_state_files`], [`Store::recover_stale_runs`], [`Store::persistence`].
    pub async fn boot(&self, state_dir: &Path) -> Result<Boot, StoreError> {
        let migrated = self.migrate_state_files(state_dir).await?;
        let recovery = self.recover_stale_runs().await?;
        let persistence = self.persistence().await?;
        Ok(Boot {
            migrated,
            recovery,
            persistence,
        })
    }
}

fn rename_migrated(path: &Path) -> Result<(), StoreError> {
    std::fs::rename(path, migrated_name(path)).map_err(|source| StoreError::StateFile {
        path: path.to_path_buf(),
        source,
    })
}
