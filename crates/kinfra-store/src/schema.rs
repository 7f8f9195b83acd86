//! kinfra's schema, versioned: each version is a list of SurrealQL statements applied in one
//! transaction together with the new version number, so an upgrade either completes or leaves
//! the previous version in place. The version lives in `meta:schema`.
//!
//! Two schemas: the node's (`[store] database`, below) and the shared one
//! (`[store] shared_database`, [`SHARED_MIGRATIONS`], its version in `meta:shared_schema`),
//! which every node pointing at the same store shares: `acme_account`, `acme_certificate`,
//! `acme_lock` and `acme_challenge` (HTTP-01 token → key authorization while an order
//! validates). Before the shared database existed the ACME tables lived in the node's; they are
//! defined there still (an older kinfra may read them) and their rows are moved to the shared
//! database at boot (`Store::open`).
//!
//! Tables (in kinfra's namespace/database; the user's code gets another one):
//! - `service`: current state per service, restart count, last exit, user stop.
//! - `run`: one row per process start: pid, `/proc` start time, start/end, exit, reason.
//! - `event`: every runtime event (bounded by count and age).
//! - `port`: the auto-port registry.
//! - `boot`: one row per start of kinfra.
//! - `acme_account`, `acme_certificate`: ACME state (secrets; never logged); `acme_lock`: who
//!   is ordering a certificate, until when (instances sharing a remote store).
//! - `setting`: key → JSON value (maintenance mode and the like).
//! - `meta`: the schema version.

use crate::error::StoreError;
use crate::{Db, json_of};
use tracing::info;

/// The newest schema version this build knows.
pub const CURRENT_VERSION: u32 = 3;

/// Version 1: services, runs, events, ports and settings.
const V1: &str = r#"
DEFINE TABLE IF NOT EXISTS meta SCHEMALESS;

DEFINE TABLE IF NOT EXISTS service SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS name ON service TYPE string;
DEFINE FIELD IF NOT EXISTS state ON service TYPE option<string>;
DEFINE FIELD IF NOT EXISTS message ON service TYPE option<string>;
DEFINE FIELD IF NOT EXISTS health ON service TYPE option<string>;
DEFINE FIELD IF NOT EXISTS pid ON service TYPE option<int>;
DEFINE FIELD IF NOT EXISTS restarts ON service TYPE int DEFAULT 0;
DEFINE FIELD IF NOT EXISTS updated_ms ON service TYPE option<int>;

DEFINE TABLE IF NOT EXISTS run SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS n ON run TYPE int;
DEFINE FIELD IF NOT EXISTS boot ON run TYPE string;
DEFINE FIELD IF NOT EXISTS service ON run TYPE string;
DEFINE FIELD IF NOT EXISTS pid ON run TYPE int;
DEFINE FIELD IF NOT EXISTS started_ms ON run TYPE int;
DEFINE FIELD IF NOT EXISTS started_at ON run TYPE string;
DEFINE FIELD IF NOT EXISTS ended_ms ON run TYPE option<int>;
DEFINE FIELD IF NOT EXISTS ended_at ON run TYPE option<string>;
DEFINE FIELD IF NOT EXISTS exit_code ON run TYPE option<int>;
DEFINE FIELD IF NOT EXISTS exit_signal ON run TYPE option<int>;
DEFINE INDEX IF NOT EXISTS run_service ON run FIELDS service;

DEFINE TABLE IF NOT EXISTS event SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS n ON event TYPE int;
DEFINE FIELD IF NOT EXISTS boot ON event TYPE string;
DEFINE FIELD IF NOT EXISTS seq ON event TYPE int;
DEFINE FIELD IF NOT EXISTS ts ON event TYPE string;
DEFINE FIELD IF NOT EXISTS ts_ms ON event TYPE int;
DEFINE FIELD IF NOT EXISTS kind ON event TYPE string;
DEFINE FIELD IF NOT EXISTS resource ON event TYPE string;
DEFINE FIELD IF NOT EXISTS data ON event TYPE string;

DEFINE TABLE IF NOT EXISTS port SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS service ON port TYPE string;
DEFINE FIELD IF NOT EXISTS port ON port TYPE int;

DEFINE TABLE IF NOT EXISTS setting SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS key ON setting TYPE string;
DEFINE FIELD IF NOT EXISTS value ON setting TYPE string;
"#;

/// Version 2: last exit and user stops per service, `/proc` start time and exit reason per
/// run (so a run left live by a killed instance can be checked), boots, ACME, indexes for
/// retention.
const V2: &str = r#"
DEFINE FIELD IF NOT EXISTS last_exit_code ON service TYPE option<int>;
DEFINE FIELD IF NOT EXISTS last_exit_signal ON service TYPE option<int>;
DEFINE FIELD IF NOT EXISTS user_stopped ON service TYPE bool DEFAULT false;
UPDATE service SET user_stopped = false WHERE user_stopped = NONE;

DEFINE FIELD IF NOT EXISTS start_time ON run TYPE option<int>;
DEFINE FIELD IF NOT EXISTS reason ON run TYPE option<string>;
UPDATE run SET reason = 'unknown' WHERE ended_ms != NONE AND reason = NONE;
DEFINE INDEX IF NOT EXISTS run_n ON run FIELDS n UNIQUE;
DEFINE INDEX IF NOT EXISTS run_open ON run FIELDS ended_ms;

DEFINE INDEX IF NOT EXISTS event_n ON event FIELDS n UNIQUE;
DEFINE INDEX IF NOT EXISTS event_ts ON event FIELDS ts_ms;

DEFINE FIELD IF NOT EXISTS assigned_ms ON port TYPE option<int>;

DEFINE TABLE IF NOT EXISTS boot SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS pid ON boot TYPE int;
DEFINE FIELD IF NOT EXISTS project ON boot TYPE option<string>;
DEFINE FIELD IF NOT EXISTS started_ms ON boot TYPE int;
DEFINE FIELD IF NOT EXISTS started_at ON boot TYPE string;
DEFINE FIELD IF NOT EXISTS stopping_ms ON boot TYPE option<int>;
DEFINE FIELD IF NOT EXISTS stop_reason ON boot TYPE option<string>;

DEFINE TABLE IF NOT EXISTS acme_account SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS directory ON acme_account TYPE string;
DEFINE FIELD IF NOT EXISTS credentials ON acme_account TYPE string;
DEFINE FIELD IF NOT EXISTS updated_ms ON acme_account TYPE int;

DEFINE TABLE IF NOT EXISTS acme_certificate SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS domains ON acme_certificate TYPE array<string>;
DEFINE FIELD IF NOT EXISTS cert_pem ON acme_certificate TYPE string;
DEFINE FIELD IF NOT EXISTS key_pem ON acme_certificate TYPE string;
DEFINE FIELD IF NOT EXISTS not_after_ms ON acme_certificate TYPE option<int>;
DEFINE FIELD IF NOT EXISTS updated_ms ON acme_certificate TYPE int;
"#;

/// Version 3: the ACME order lock (owner and expiry, taken over when stale).
const V3: &str = r#"
DEFINE TABLE IF NOT EXISTS acme_lock SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS name ON acme_lock TYPE string;
DEFINE FIELD IF NOT EXISTS owner ON acme_lock TYPE string;
DEFINE FIELD IF NOT EXISTS expires_ms ON acme_lock TYPE int;
"#;

/// Every version's statements; index 0 is version 1.
pub const MIGRATIONS: &[&str] = &[V1, V2, V3];

/// The newest version of the shared schema this build knows.
pub const SHARED_VERSION: u32 = 1;

/// Shared version 1: ACME material every node of a fleet shares, and the HTTP-01 challenge
/// answers of an order in flight (not secret; deleted after the order, ignored once expired).
const SHARED_V1: &str = r#"
DEFINE TABLE IF NOT EXISTS meta SCHEMALESS;

DEFINE TABLE IF NOT EXISTS acme_account SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS directory ON acme_account TYPE string;
DEFINE FIELD IF NOT EXISTS credentials ON acme_account TYPE string;
DEFINE FIELD IF NOT EXISTS updated_ms ON acme_account TYPE int;

DEFINE TABLE IF NOT EXISTS acme_certificate SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS domains ON acme_certificate TYPE array<string>;
DEFINE FIELD IF NOT EXISTS cert_pem ON acme_certificate TYPE string;
DEFINE FIELD IF NOT EXISTS key_pem ON acme_certificate TYPE string;
DEFINE FIELD IF NOT EXISTS not_after_ms ON acme_certificate TYPE option<int>;
DEFINE FIELD IF NOT EXISTS updated_ms ON acme_certificate TYPE int;

DEFINE TABLE IF NOT EXISTS acme_lock SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS name ON acme_lock TYPE string;
DEFINE FIELD IF NOT EXISTS owner ON acme_lock TYPE string;
DEFINE FIELD IF NOT EXISTS expires_ms ON acme_lock TYPE int;

DEFINE TABLE IF NOT EXISTS acme_challenge SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS token ON acme_challenge TYPE string;
DEFINE FIELD IF NOT EXISTS key_authorization ON acme_challenge TYPE string;
DEFINE FIELD IF NOT EXISTS expires_ms ON acme_challenge TYPE int;
"#;

/// Every shared version's statements; index 0 is version 1.
pub const SHARED_MIGRATIONS: &[&str] = &[SHARED_V1];

/// Which of the two schemas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Schema {
    /// The node's own tables (`[store] database`).
    Node,
    /// What the nodes share (`[store] shared_database`).
    Shared,
}

impl Schema {
    fn record(self) -> &'static str {
        match self {
            Schema::Node => "meta:schema",
            Schema::Shared => "meta:shared_schema",
        }
    }

    fn migrations(self) -> &'static [&'static str] {
        match self {
            Schema::Node => MIGRATIONS,
            Schema::Shared => SHARED_MIGRATIONS,
        }
    }

    fn current(self) -> u32 {
        match self {
            Schema::Node => CURRENT_VERSION,
            Schema::Shared => SHARED_VERSION,
        }
    }
}

/// The schema version recorded in the database; 0 when there is none.
pub(crate) async fn version(db: &Db) -> Result<u32, StoreError> {
    version_of(db, Schema::Node).await
}

/// The version of `schema` recorded in the database; 0 when there is none.
pub(crate) async fn version_of(db: &Db, schema: Schema) -> Result<u32, StoreError> {
    let mut resp = db
        .query(format!(
            "SELECT VALUE version FROM ONLY {}",
            schema.record()
        ))
        .await
        .map_err(|e| StoreError::query("schema version", e))?;
    match json_of::<serde_json::Value>(&mut resp, 0, "schema version") {
        Ok(value) => Ok(value.as_u64().map(|v| v as u32).unwrap_or(0)),
        // A fresh database has no `meta` table (nor, maybe, the database itself) yet.
        Err(StoreError::Query { message, .. }) if message.contains("does not exist") => Ok(0),
        Err(e) => Err(e),
    }
}

/// Applies every version after the recorded one, each in its own transaction. Refuses a
/// database written by a newer schema.
pub(crate) async fn upgrade(db: &Db, location: &str) -> Result<(u32, u32), StoreError> {
    upgrade_schema(db, location, Schema::Node).await
}

/// [`upgrade`] for the shared database, which other nodes may be upgrading at the same moment:
/// a failed version (a write conflict with another node's identical transaction) is tried
/// again from the version then recorded, a few times.
pub(crate) async fn upgrade_shared(db: &Db, location: &str) -> Result<(u32, u32), StoreError> {
    let mut attempt: u32 = 0;
    loop {
        match upgrade_schema(db, location, Schema::Shared).await {
            Err(StoreError::Migration { message, .. }) if attempt < 4 => {
                attempt += 1;
                tracing::debug!(attempt, %message, "Shared schema upgrade conflicted; trying again.");
                tokio::time::sleep(std::time::Duration::from_millis(50 * u64::from(attempt))).await;
            }
            other => return other,
        }
    }
}

async fn upgrade_schema(db: &Db, location: &str, schema: Schema) -> Result<(u32, u32), StoreError> {
    let current = schema.current();
    let found = version_of(db, schema).await?;
    if found > current {
        return Err(StoreError::SchemaTooNew {
            location: location.to_owned(),
            found,
            supported: current,
        });
    }
    let record = schema.record();
    for v in (found + 1)..=current {
        let Some(statements) = schema.migrations().get(v as usize - 1) else {
            break;
        };
        let sql = format!(
            "BEGIN TRANSACTION;\n{statements}\nUPSERT {record} SET version = {v};\nCOMMIT TRANSACTION;"
        );
        let failed = |message: String| StoreError::Migration {
            location: location.to_owned(),
            version: v,
            message,
        };
        let resp = db.query(sql).await.map_err(|e| failed(e.to_string()))?;
        resp.check().map_err(|e| failed(e.to_string()))?;
        if found > 0 {
            info!(location, schema = ?schema, from = v - 1, to = v, "Store schema upgraded.");
        }
    }
    Ok((found, current))
}
