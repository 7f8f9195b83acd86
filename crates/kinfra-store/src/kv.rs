//! Settings (maintenance mode and the like) and ACME state: written at once (awaited), not
//! through the event queue, because their callers need to know they are stored. ACME
//! credentials and private keys are secrets: no error or log line carries them. The ACME
//! state is in the shared database (`[store] shared_database`), which every node pointing at
//! the same store sees; settings are the node's own.

use crate::error::StoreError;
use crate::records::StoredCertificate;
use crate::{Store, now_ms};
use kinfra_core::secret::{Secret, redact};
use serde::Deserialize;
use serde_json::json;

/// The setting that holds the generated passwords of container resources.
const RESOURCE_SECRETS: &str = "resource_secrets";

/// The settings key of maintenance mode.
pub const MAINTENANCE: &str = "maintenance";

/// The record key of a domain set: lowercased, sorted, without duplicates, comma-joined.
pub fn domain_key(domains: &[String]) -> (String, Vec<String>) {
    let mut d: Vec<String> = domains
        .iter()
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    d.sort();
    d.dedup();
    (d.join(","), d)
}

#[derive(Deserialize)]
struct CertRow {
    domains: Vec<String>,
    cert_pem: String,
    key_pem: String,
    not_after_ms: Option<u64>,
}

impl From<CertRow> for StoredCertificate {
    fn from(r: CertRow) -> Self {
        StoredCertificate {
            domains: r.domains,
            cert_pem: r.cert_pem,
            key_pem: r.key_pem,
            not_after_ms: r.not_after_ms,
        }
    }
}

impl Store {
    async fn exec(
        &self,
        what: &'static str,
        sql: &str,
        vars: serde_json::Value,
    ) -> Result<(), StoreError> {
        self.exec_secret(what, sql, vars, &[]).await
    }

    /// [`Store::exec`], with `secrets` masked in any error the engine returns.
    async fn exec_secret(
        &self,
        what: &'static str,
        sql: &str,
        vars: serde_json::Value,
        secrets: &[&str],
    ) -> Result<(), StoreError> {
        self.exec_in(self.db()?, what, sql, vars, secrets).await
    }

    /// [`Store::exec_secret`] on the session `db` (kinfra's own or the shared database).
    pub(crate) async fn exec_in(
        &self,
        db: crate::Db,
        what: &'static str,
        sql: &str,
        vars: serde_json::Value,
        secrets: &[&str],
    ) -> Result<(), StoreError> {
        let work = async move { db.query(sql).bind(vars).await?.check() };
        self.answered(what, work)
            .await
            .map_err(|e| StoreError::query(what, redact(&e.to_string(), secrets)))?;
        Ok(())
    }

    /// A setting, decoded from its stored JSON; `None` when unset.
    pub async fn setting<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let v: Vec<String> = self
            .select(
                "setting",
                "SELECT VALUE value FROM setting WHERE key = $k",
                json!({"k": key}),
            )
            .await?;
        match v.first() {
            None => Ok(None),
            Some(text) => serde_json::from_str(text)
                .map(Some)
                .map_err(|e| StoreError::malformed("setting", e)),
        }
    }

    /// Stores a setting as JSON.
    pub async fn set_setting<T: serde::Serialize>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let text = serde_json::to_string(value).map_err(|e| StoreError::malformed("setting", e))?;
        self.exec(
            "setting",
            "UPSERT type::record('setting', $k) SET key = $k, value = $v RETURN NONE",
            json!({"k": key, "v": text}),
        )
        .await
    }

    /// Removes a setting.
    pub async fn clear_setting(&self, key: &str) -> Result<(), StoreError> {
        self.exec(
            "setting",
            "DELETE type::record('setting', $k) RETURN NONE",
            json!({"k": key}),
        )
        .await
    }

    /// Whether maintenance mode is on (off when never set).
    pub async fn maintenance(&self) -> Result<bool, StoreError> {
        Ok(self.setting::<bool>(MAINTENANCE).await?.unwrap_or(false))
    }

    /// Turns maintenance mode on or off; survives restarts of kinfra.
    pub async fn set_maintenance(&self, on: bool) -> Result<(), StoreError> {
        self.set_setting(MAINTENANCE, &on).await
    }

    /// The generated passwords of container resources (template secrets), by key; empty when
    /// none were stored. Secret values: never logged.
    pub async fn resource_secrets(
        &self,
    ) -> Result<std::collections::BTreeMap<String, Secret>, StoreError> {
        let map: Option<std::collections::BTreeMap<String, String>> =
            self.setting(RESOURCE_SECRETS).await?;
        Ok(map
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, Secret::new(v)))
            .collect())
    }

    /// Stores the generated passwords of container resources (replacing the earlier set).
    /// Errors never hold the values.
    pub async fn save_resource_secrets(
        &self,
        secrets: &std::collections::BTreeMap<String, Secret>,
    ) -> Result<(), StoreError> {
        let plain: std::collections::BTreeMap<&str, &str> = secrets
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose()))
            .collect();
        let text =
            serde_json::to_string(&plain).map_err(|e| StoreError::malformed("setting", e))?;
        let values: Vec<&str> = plain.values().copied().collect();
        self.exec_secret(
            "resource secrets",
            "UPSERT type::record('setting', $k) SET key = $k, value = $v RETURN NONE",
            json!({"k": RESOURCE_SECRETS, "v": text}),
            &values,
        )
        .await
    }

    /// The ACME account credentials (as serialized by the ACME client) for a directory URL.
    pub async fn acme_account(&self, directory: &str) -> Result<Option<Secret>, StoreError> {
        let v: Vec<String> = self
            .select_in(
                self.acme_db()?,
                "acme account",
                "SELECT VALUE credentials FROM acme_account WHERE directory = $d",
                json!({"d": directory}),
            )
            .await?;
        Ok(v.into_iter().next().map(Secret::new))
    }

    /// Stores the ACME account credentials for a directory URL (replacing earlier ones).
    pub async fn save_acme_account(
        &self,
        directory: &str,
        credentials: &Secret,
    ) -> Result<(), StoreError> {
        self.exec_in(
            self.acme_db()?,
            "acme account",
            "UPSERT type::record('acme_account', $d) SET directory = $d, credentials = $c, \
             updated_ms = $ms RETURN NONE",
            json!({"d": directory, "c": credentials.expose(), "ms": now_ms()}),
            &[credentials.expose()],
        )
        .await
    }

    /// The certificate and key for exactly this domain set (order and case do not matter).
    pub async fn certificate(
        &self,
        domains: &[String],
    ) -> Result<Option<StoredCertificate>, StoreError> {
        let (key, _) = domain_key(domains);
        let rows: Vec<CertRow> = self
            .select_in(
                self.acme_db()?,
                "certificate",
                "SELECT domains, cert_pem, key_pem, not_after_ms FROM \
                 type::record('acme_certificate', $k)",
                json!({"k": key}),
            )
            .await?;
        Ok(rows.into_iter().next().map(StoredCertificate::from))
    }

    /// Every stored certificate (to load the TLS listener's certificate store at boot).
    pub async fn certificates(&self) -> Result<Vec<StoredCertificate>, StoreError> {
        let rows: Vec<CertRow> = self
            .select_in(
                self.acme_db()?,
                "certificates",
                "SELECT domains, cert_pem, key_pem, not_after_ms FROM acme_certificate",
                json!({}),
            )
            .await?;
        Ok(rows.into_iter().map(StoredCertificate::from).collect())
    }

    /// Stores a certificate and its key under its domain set (replacing an earlier one).
    pub async fn save_certificate(&self, cert: &StoredCertificate) -> Result<(), StoreError> {
        let (key, domains) = domain_key(&cert.domains);
        let not_after = cert.not_after_ms.map_or("NONE", |_| "$na");
        self.exec_in(
            self.acme_db()?,
            "certificate",
            &format!(
                "UPSERT type::record('acme_certificate', $k) SET domains = $d, cert_pem = $c, \
                 key_pem = $p, not_after_ms = {not_after}, updated_ms = $ms RETURN NONE"
            ),
            json!({
                "k": key,
                "d": domains,
                "c": cert.cert_pem,
                "p": cert.key_pem,
                "na": cert.not_after_ms,
                "ms": now_ms(),
            }),
            &[cert.key_pem.as_str()],
        )
        .await
    }

    /// Takes or extends the lock `name` for `owner` until `ttl` from now. Succeeds when the lock
    /// is free, already `owner`'s, or expired (a stale owner is taken over); returns whether
    /// `owner` holds it now. One conditional write, so two instances cannot both win.
    pub async fn try_acme_lock(
        &self,
        name: &str,
        owner: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let expires = now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        let owners: Vec<String> = self
            .select_in(
                self.acme_db()?,
                "acme lock",
                "UPSERT type::record('acme_lock', $n) SET name = $n, owner = $o, expires_ms = $e \
                 WHERE owner = NONE OR owner = $o OR expires_ms < $now RETURN VALUE owner",
                json!({"n": name, "o": owner, "e": expires, "now": now}),
            )
            .await?;
        Ok(owners.iter().any(|o| o == owner))
    }

    /// The holder of the lock `name` and when it expires (ms since the Unix epoch), if any.
    pub async fn acme_lock(&self, name: &str) -> Result<Option<(String, u64)>, StoreError> {
        #[derive(Deserialize)]
        struct LockRow {
            owner: String,
            expires_ms: u64,
        }
        let rows: Vec<LockRow> = self
            .select_in(
                self.acme_db()?,
                "acme lock",
                "SELECT owner, expires_ms FROM type::record('acme_lock', $n)",
                json!({"n": name}),
            )
            .await?;
        Ok(rows.into_iter().next().map(|r| (r.owner, r.expires_ms)))
    }

    /// Releases the lock `name` when `owner` holds it.
    pub async fn release_acme_lock(&self, name: &str, owner: &str) -> Result<(), StoreError> {
        self.exec_in(
            self.acme_db()?,
            "acme lock",
            "DELETE type::record('acme_lock', $n) WHERE owner = $o RETURN NONE",
            json!({"n": name, "o": owner}),
            &[],
        )
        .await
    }

    /// Removes the certificate of a domain set.
    pub async fn delete_certificate(&self, domains: &[String]) -> Result<(), StoreError> {
        let (key, _) = domain_key(domains);
        self.delete_acme_record("certificate", "acme_certificate", &key)
            .await
    }

    /// Deletes the record `key` of the ACME table `table` (in the shared database); `what`
    /// names it in errors.
    pub(crate) async fn delete_acme_record(
        &self,
        what: &'static str,
        table: &'static str,
        key: &str,
    ) -> Result<(), StoreError> {
        self.exec_in(
            self.acme_db()?,
            what,
            "DELETE type::record($table, $k) RETURN NONE",
            json!({"table": table, "k": key}),
            &[],
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_sets_are_normalised() {
        let (k, d) = domain_key(&["b.example".into(), "A.example".into(), "b.example".into()]);
        assert_eq!(k, "a.example,b.example");
        assert_eq!(d, vec!["a.example", "b.example"]);
    }
}
