//! The database every node pointing at the same store shares (`[store] shared_database`):
//! the ACME account, certificates and order lock (their methods are in [`crate::kv`]), and the
//! HTTP-01 challenge answers of an order in flight, so the node the CA happens to connect to
//! answers a challenge another node put up. At boot, ACME rows an older kinfra kept in the
//! node's own database are moved here (a newer certificate wins over an older one).

use crate::error::StoreError;
use crate::{Db, Store, json_of, now_ms};
use kinfra_core::secret::redact;
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;
use tracing::info;

#[derive(Deserialize)]
struct AccountRow {
    directory: String,
    credentials: String,
    updated_ms: Option<u64>,
}

#[derive(Deserialize)]
struct CertRow {
    domains: Vec<String>,
    cert_pem: String,
    key_pem: String,
    not_after_ms: Option<u64>,
    updated_ms: Option<u64>,
}

/// What [`move_acme_rows`] moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Moved {
    pub(crate) accounts: usize,
    pub(crate) certificates: usize,
}

/// Runs `sql` on `db`, masking `secrets` in an error.
async fn run(
    db: &Db,
    what: &'static str,
    sql: &str,
    vars: serde_json::Value,
    secrets: &[&str],
) -> Result<surrealdb::IndexedResults, StoreError> {
    db.query(sql)
        .bind(vars)
        .await
        .and_then(|r| r.check())
        .map_err(|e| StoreError::query(what, redact(&e.to_string(), secrets)))
}

/// Moves the ACME accounts and certificates of the node's database `node` into `shared`
/// (where `shared` has none for the same key, or an older one) and deletes them from `node`.
/// Locks are not moved: they are short-lived and an order in flight at the upgrade is retried.
/// Copied first, deleted after: an interrupted move leaves rows in both, and running it again
/// never copies an older row over a newer one.
pub(crate) async fn move_acme_rows(node: &Db, shared: &Db) -> Result<Moved, StoreError> {
    let mut resp = run(
        node,
        "acme upgrade",
        "SELECT directory, credentials, updated_ms FROM acme_account",
        json!({}),
        &[],
    )
    .await?;
    let accounts: Vec<AccountRow> = json_of(&mut resp, 0, "acme upgrade")?;
    let mut resp = run(
        node,
        "acme upgrade",
        "SELECT domains, cert_pem, key_pem, not_after_ms, updated_ms FROM acme_certificate",
        json!({}),
        &[],
    )
    .await?;
    let certs: Vec<CertRow> = json_of(&mut resp, 0, "acme upgrade")?;
    if accounts.is_empty() && certs.is_empty() {
        return Ok(Moved::default());
    }
    for a in &accounts {
        run(
            shared,
            "acme upgrade",
            "UPSERT type::record('acme_account', $d) SET directory = $d, credentials = $c, \
             updated_ms = $ms WHERE updated_ms = NONE OR updated_ms < $ms RETURN NONE",
            json!({"d": a.directory, "c": a.credentials, "ms": a.updated_ms.unwrap_or(0)}),
            &[a.credentials.as_str()],
        )
        .await?;
    }
    for c in &certs {
        let (key, domains) = crate::kv::domain_key(&c.domains);
        let not_after = c.not_after_ms.map_or("NONE", |_| "$na");
        run(
            shared,
            "acme upgrade",
            &format!(
                "UPSERT type::record('acme_certificate', $k) SET domains = $d, cert_pem = $c, \
                 key_pem = $p, not_after_ms = {not_after}, updated_ms = $ms \
                 WHERE updated_ms = NONE OR updated_ms < $ms RETURN NONE"
            ),
            json!({
                "k": key,
                "d": domains,
                "c": c.cert_pem,
                "p": c.key_pem,
                "na": c.not_after_ms,
                "ms": c.updated_ms.unwrap_or(0),
            }),
            &[c.key_pem.as_str()],
        )
        .await?;
    }
    run(
        node,
        "acme upgrade",
        "BEGIN TRANSACTION; DELETE acme_account RETURN NONE; \
         DELETE acme_certificate RETURN NONE; DELETE acme_lock RETURN NONE; COMMIT TRANSACTION;",
        json!({}),
        &[],
    )
    .await?;
    let moved = Moved {
        accounts: accounts.len(),
        certificates: certs.len(),
    };
    info!(
        accounts = moved.accounts,
        certificates = moved.certificates,
        "ACME account and certificates moved to the shared database."
    );
    Ok(moved)
}

impl Store {
    /// The name of the shared database (`[store] shared_database`).
    pub fn shared_database(&self) -> &str {
        &self.inner.shared_database
    }

    /// The shared database's schema version.
    pub async fn shared_schema_version(&self) -> Result<u32, StoreError> {
        crate::schema::version_of(&self.acme_db()?, crate::schema::Schema::Shared).await
    }

    /// Publishes the HTTP-01 answer `key_authorization` for `token` to every node sharing the
    /// store, until `ttl` from now (or [`Store::delete_acme_challenge`]). Expired answers are
    /// deleted on the way. Key authorizations are not secret.
    pub async fn save_acme_challenge(
        &self,
        token: &str,
        key_authorization: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let expires = now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        self.exec_in(
            self.acme_db()?,
            "acme challenge",
            "DELETE acme_challenge WHERE expires_ms < $now RETURN NONE;\n\
             UPSERT type::record('acme_challenge', $t) SET token = $t, key_authorization = $k, \
             expires_ms = $e RETURN NONE;",
            json!({"t": token, "k": key_authorization, "e": expires, "now": now}),
            &[],
        )
        .await
    }

    /// The HTTP-01 answer for `token` some node published and that has not expired.
    pub async fn acme_challenge(&self, token: &str) -> Result<Option<String>, StoreError> {
        let v: Vec<String> = self
            .select_in(
                self.acme_db()?,
                "acme challenge",
                "SELECT VALUE key_authorization FROM type::record('acme_challenge', $t) \
                 WHERE expires_ms >= $now",
                json!({"t": token, "now": now_ms()}),
            )
            .await?;
        Ok(v.into_iter().next())
    }

    /// Withdraws the HTTP-01 answer for `token`.
    pub async fn delete_acme_challenge(&self, token: &str) -> Result<(), StoreError> {
        self.delete_acme_record("acme challenge", "acme_challenge", token)
            .await
    }

    /// How many HTTP-01 answers are published (expired ones included), for tests.
    #[doc(hidden)]
    pub async fn acme_challenge_count(&self) -> Result<u64, StoreError> {
        #[derive(Deserialize)]
        struct Count {
            count: u64,
        }
        let v: Vec<Count> = self
            .select_in(
                self.acme_db()?,
                "acme challenge",
                "SELECT count() FROM acme_challenge GROUP ALL",
                json!({}),
            )
            .await?;
        Ok(v.first().map_or(0, |c| c.count))
    }
}
