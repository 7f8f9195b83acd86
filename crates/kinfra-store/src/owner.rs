//! Who writes kinfra's tables on a SurrealDB server: one kinfra per namespace/database. Two
//! runtimes on the same tables would number their events and runs over each other, and one
//! booting would take the other's live runs for ones a killed instance left (and stop those
//! processes when they run on the same host). On a server, the data directory's lock of the
//! embedded engine is replaced by a lease, `meta:owner`: claimed at open, refreshed by the
//! writer every [`REFRESH_EVERY`], released at shutdown. A claim fails with
//! [`StoreError::InUse`] while another runtime's lease is fresh (seen within [`LEASE`]),
//! unless that lease is this host's and state dir's and its process is gone (a kinfra killed
//! a moment ago, restarted).

use crate::error::StoreError;
use crate::{Db, json_of, now_ms};
use serde::Deserialize;
use serde_json::json;
use std::path::Path;
use std::time::Duration;
use tracing::warn;

/// A lease not refreshed for this long is free.
pub(crate) const LEASE: Duration = Duration::from_secs(15);

/// How often the writer refreshes its lease.
pub(crate) const REFRESH_EVERY: Duration = Duration::from_secs(2);

/// The statement refreshing this boot's lease (`$owner_boot`, `$owner_seen`).
pub(crate) const REFRESH_SQL: &str =
    "UPDATE meta:owner SET seen_ms = $owner_seen WHERE boot = $owner_boot RETURN NONE;\n";

#[derive(Debug, Deserialize)]
struct Lease {
    boot: String,
    host: String,
    state_dir: String,
    pid: u32,
    seen_ms: u64,
}

/// This host's name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Claims kinfra's tables on the server for `boot`, or says who holds them.
pub(crate) async fn claim(
    db: &Db,
    boot: &str,
    state_dir: &Path,
    url: &str,
    namespace: &str,
    database: &str,
) -> Result<(), StoreError> {
    let host = host_name();
    // Absolute, so two projects with the same relative state dir are told apart.
    let state_dir = std::fs::canonicalize(state_dir)
        .or_else(|_| std::path::absolute(state_dir))
        .unwrap_or_else(|_| state_dir.to_path_buf())
        .display()
        .to_string();
    let remote = |message: String| StoreError::Remote {
        url: url.to_owned(),
        message,
    };
    // Read and write in one transaction, so two runtimes starting at once cannot both win.
    let mut resp = db
        .query(
            "BEGIN TRANSACTION;\n\
             LET $held = (SELECT * FROM ONLY meta:owner);\n\
             IF $held = NONE OR $held.boot = $boot OR $held.seen_ms < $stale {\n\
                 UPSERT meta:owner CONTENT { boot: $boot, host: $host, state_dir: $state_dir, \
                 pid: $pid, seen_ms: $now } RETURN NONE;\n\
             };\n\
             RETURN $held;\n\
             COMMIT TRANSACTION;",
        )
        .bind(json!({
            "boot": boot,
            "host": host,
            "state_dir": state_dir,
            "pid": std::process::id(),
            "now": now_ms(),
            "stale": now_ms().saturating_sub(LEASE.as_millis() as u64),
        }))
        .await
        .map_err(|e| remote(format!("cannot claim kinfra's tables: {e}")))?;
    let held: Option<Lease> = json_of(&mut resp, 3, "store owner")?;
    let Some(held) = held else {
        return Ok(());
    };
    let fresh = held.seen_ms >= now_ms().saturating_sub(LEASE.as_millis() as u64);
    if held.boot == boot || !fresh {
        return Ok(());
    }
    // Ours from before (same host and state dir) and its process is gone: take it over.
    let ours_before = held.host == host && held.state_dir == state_dir;
    let gone = ours_before
        && held.pid != std::process::id()
        && kinfra_core::procstat::stat(held.pid as i32).is_none_or(|s| s.is_zombie());
    if gone {
        db.query(
            "UPSERT meta:owner CONTENT { boot: $boot, host: $host, state_dir: $state_dir, \
             pid: $pid, seen_ms: $now } RETURN NONE",
        )
        .bind(json!({
            "boot": boot,
            "host": host,
            "state_dir": state_dir,
            "pid": std::process::id(),
            "now": now_ms(),
        }))
        .await
        .and_then(|r| r.check())
        .map_err(|e| remote(format!("cannot claim kinfra's tables: {e}")))?;
        return Ok(());
    }
    Err(StoreError::InUse {
        url: url.to_owned(),
        namespace: namespace.to_owned(),
        database: database.to_owned(),
        holder: format!(
            "pid {} on {} (state dir {}), seen {} s ago",
            held.pid,
            held.host,
            held.state_dir,
            now_ms().saturating_sub(held.seen_ms) / 1000
        ),
    })
}

/// Gives the tables up at shutdown, so the next runtime need not wait for the lease to expire
/// (waiting at most `limit` for the server).
pub(crate) async fn release(db: &Db, boot: &str, limit: Duration) {
    let work = async {
        db.query("DELETE meta:owner WHERE boot = $boot RETURN NONE")
            .bind(("boot", boot.to_owned()))
            .await?
            .check()
    };
    match tokio::time::timeout(limit, work).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            warn!(error = %e, "Could not give up the store's lease; it expires by itself.")
        }
        Err(_) => warn!(
            ?limit,
            "The server did not answer the lease's release; it expires by itself."
        ),
    }
}
