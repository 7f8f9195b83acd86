//! Reads: the port registry, service history, runs, recent events.

use crate::error::StoreError;
use crate::records::{RunRecord, StoredEvent};
use crate::{Store, json_of};
use kinfra_core::event::EventKind;
use kinfra_core::event::{Event, ExitInfo};
use kinfra_core::persist::ServiceHistory;
use kinfra_core::status::CommandRecord;
use serde::Deserialize;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};

/// Columns selected for a run.
pub(crate) const RUN_FIELDS: &str =
    "n, boot, service, pid, start_time, started_at, ended_at, exit_code, exit_signal, reason";

/// A `run` row as stored.
#[derive(Debug, Deserialize)]
pub(crate) struct RunRow {
    n: u64,
    boot: String,
    service: String,
    pid: u32,
    start_time: Option<u64>,
    started_at: String,
    ended_at: Option<String>,
    exit_code: Option<i32>,
    exit_signal: Option<i32>,
    reason: Option<String>,
}

impl From<RunRow> for RunRecord {
    fn from(r: RunRow) -> Self {
        let exit = (r.exit_code.is_some() || r.exit_signal.is_some()).then_some(ExitInfo {
            code: r.exit_code,
            signal: r.exit_signal,
        });
        RunRecord {
            n: r.n,
            boot: r.boot,
            service: r.service,
            pid: r.pid,
            start_time: r.start_time,
            started_at: r.started_at,
            ended_at: r.ended_at,
            exit,
            reason: r.reason,
        }
    }
}

#[derive(Debug, Deserialize)]
struct ServiceRow {
    name: String,
    restarts: Option<u32>,
    last_exit_code: Option<i32>,
    last_exit_signal: Option<i32>,
    user_stopped: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct PortRow {
    service: String,
    port: u16,
}

#[derive(Debug, Deserialize)]
struct EventRow {
    n: u64,
    boot: String,
    data: String,
}

impl Store {
    /// Runs `sql` with `vars` and decodes statement 0.
    pub(crate) async fn select<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        sql: &str,
        vars: serde_json::Value,
    ) -> Result<T, StoreError> {
        self.select_in(self.db()?, what, sql, vars).await
    }

    /// [`Store::select`] on the session `db` (kinfra's own or the shared database).
    pub(crate) async fn select_in<T: serde::de::DeserializeOwned>(
        &self,
        db: crate::Db,
        what: &'static str,
        sql: &str,
        vars: serde_json::Value,
    ) -> Result<T, StoreError> {
        let mut resp = self
            .answered(what, db.query(sql).bind(vars).into_future())
            .await?;
        json_of(&mut resp, 0, what)
    }

    /// The auto-port registry: service → port.
    pub async fn ports(&self) -> Result<BTreeMap<String, u16>, StoreError> {
        let rows: Vec<PortRow> = self
            .select("ports", "SELECT service, port FROM port", json!({}))
            .await?;
        Ok(rows.into_iter().map(|r| (r.service, r.port)).collect())
    }

    async fn service_rows(&self) -> Result<Vec<ServiceRow>, StoreError> {
        self.select(
            "services",
            "SELECT name, restarts, last_exit_code, last_exit_signal, user_stopped FROM service",
            json!({}),
        )
        .await
    }

    /// Restart count and last exit per service, as of the last committed write.
    pub async fn service_history(&self) -> Result<BTreeMap<String, ServiceHistory>, StoreError> {
        Ok(self
            .service_rows()
            .await?
            .into_iter()
            .map(|r| {
                let last_exit = (r.last_exit_code.is_some() || r.last_exit_signal.is_some())
                    .then_some(ExitInfo {
                        code: r.last_exit_code,
                        signal: r.last_exit_signal,
                    });
                (
                    r.name,
                    ServiceHistory {
                        restarts: r.restarts.unwrap_or(0),
                        last_exit,
                    },
                )
            })
            .collect())
    }

    /// Services a user stopped (kept stopped under `unless-stopped`).
    pub async fn user_stopped(&self) -> Result<BTreeSet<String>, StoreError> {
        Ok(self
            .service_rows()
            .await?
            .into_iter()
            .filter(|r| r.user_stopped == Some(true))
            .map(|r| r.name)
            .collect())
    }

    /// Runs with no recorded end (of this instance, and of a killed one until
    /// [`Store::recover_stale_runs`] closes them).
    pub async fn live_runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        let rows: Vec<RunRow> = self
            .select(
                "live runs",
                &format!("SELECT {RUN_FIELDS} FROM run WHERE ended_ms = NONE ORDER BY n"),
                json!({}),
            )
            .await?;
        Ok(rows.into_iter().map(RunRecord::from).collect())
    }

    /// The most recent runs, newest first, of one service or of all
    /// (`kinfra runtime history [SERVICE]`).
    pub async fn history(
        &self,
        service: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let rows: Vec<RunRow> = match service {
            Some(s) => {
                self.select(
                    "history",
                    &format!(
                        "SELECT {RUN_FIELDS} FROM run WHERE service = $s ORDER BY n DESC LIMIT $l"
                    ),
                    json!({"s": s, "l": limit}),
                )
                .await?
            }
            None => {
                self.select(
                    "history",
                    &format!("SELECT {RUN_FIELDS} FROM run ORDER BY n DESC LIMIT $l"),
                    json!({"l": limit}),
                )
                .await?
            }
        };
        Ok(rows.into_iter().map(RunRecord::from).collect())
    }

    /// The most recent events, oldest first, across restarts of kinfra.
    pub async fn recent_events(&self, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        let mut rows: Vec<EventRow> = self
            .select(
                "events",
                "SELECT n, boot, data FROM event ORDER BY n DESC LIMIT $l",
                json!({"l": limit}),
            )
            .await?;
        rows.reverse();
        rows.into_iter()
            .map(|r| {
                let event: Event =
                    serde_json::from_str(&r.data).map_err(|e| StoreError::malformed("event", e))?;
                Ok(StoredEvent {
                    n: r.n,
                    boot: r.boot,
                    event,
                })
            })
            .collect()
    }

    /// The most recent executions of `resource`'s commands, newest first (kept as
    /// `command_executed` events, so bounded as events are).
    pub async fn command_history(
        &self,
        resource: &str,
        limit: usize,
    ) -> Result<Vec<CommandRecord>, StoreError> {
        let rows: Vec<EventRow> = self
            .select(
                "command history",
                "SELECT n, boot, data FROM event WHERE kind = 'command_executed' \
                 AND resource = $r ORDER BY n DESC LIMIT $l",
                json!({"r": resource, "l": limit}),
            )
            .await?;
        let mut records = Vec::with_capacity(rows.len());
        for row in rows {
            let event: Event =
                serde_json::from_str(&row.data).map_err(|e| StoreError::malformed("event", e))?;
            if let EventKind::CommandExecuted {
                resource,
                command,
                params,
                dry_run,
                success,
                operation,
                error,
            } = event.kind
            {
                records.push(CommandRecord {
                    timestamp: event.timestamp,
                    resource,
                    command,
                    params,
                    dry_run,
                    success,
                    operation,
                    error,
                });
            }
        }
        Ok(records)
    }

    /// How many events are stored.
    pub async fn event_count(&self) -> Result<u64, StoreError> {
        #[derive(Deserialize)]
        struct Count {
            count: u64,
        }
        let v: Vec<Count> = self
            .select(
                "event count",
                "SELECT count() FROM event GROUP ALL",
                json!({}),
            )
            .await?;
        Ok(v.first().map_or(0, |c| c.count))
    }
}
