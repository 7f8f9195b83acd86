//! The Cloudflare API calls a tunnel needs (`cfd_tunnel` and `dns_records`, the operations of
//! `specs/cloudflare/openapi.trimmed.json`), on the provider SDK's REST plumbing: one HTTP
//! client, 429/503 and other 5xx retried within the SDK's retry policy (`Retry-After`
//! honoured), errors with the token masked.
//!
//! - [`CloudflareTunnels::ensure_tunnel`] adopts the account's non-deleted tunnel of that name
//!   or creates one (`config_src = "local"`, a fresh 32-byte secret) and writes its credentials
//!   file (`{AccountTag, TunnelID, TunnelSecret}`, mode 0600), which cloudflared runs with; an
//!   adopted tunnel without a local credentials file runs with its token instead.
//! - [`CloudflareTunnels::ensure_dns`] keeps one proxied CNAME `<hostname> →
//!   <tunnel-id>.cfargotunnel.com` per hostname: created when missing, fixed when it points
//!   elsewhere or is not proxied, left alone when right; never a second one.
//! - [`CloudflareTunnels::remove_dns`] deletes only the records that point at this tunnel.
//!
//! Every answer is Cloudflare's envelope (`success`, `errors[]`, `result`); `errors[]`'
//! messages are shown in [`TunnelError`]s, the token never.

use kinfra_core::Secret;
use kinfra_provider::http::{HttpConfig, HttpError, Method};
use kinfra_provider::provider::{InstanceContext, ProviderError};
use kinfra_provider::rest::{CallError, RestApi, RestClients, TokenNeed, encode_segment};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tracing::{debug, warn};

/// Cloudflare's API, unless the settings say otherwise.
pub const DEFAULT_BASE_URL: &str = "https://api.cloudflare.com/client/v4";

/// What messages call the API.
const LABEL: &str = "the Cloudflare API";

/// Where the API's calls come from: the account, the zone of the public hostnames, the token.
#[derive(Debug, Clone)]
pub struct CloudflareSettings {
    /// The account the tunnel belongs to (32 hex digits).
    pub account_id: String,
    /// The zone (DNS domain) the public hostnames are in (its id, 32 hex digits).
    pub zone_id: String,
    /// An API token allowed `Account: Cloudflare Tunnel: Edit` and `Zone: DNS: Edit`.
    pub token: Secret,
    /// Another base URL (a test's fake); default [`DEFAULT_BASE_URL`].
    pub base_url: Option<String>,
    /// The longest wait for one request; default the SDK's (30 s).
    pub timeout: Option<Duration>,
}

/// A tunnel ready to run.
#[derive(Debug, Clone)]
pub struct TunnelHandle {
    /// The tunnel's UUID.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Whether this call created it (else an existing one was adopted).
    pub created: bool,
    /// Its credentials file, when there is one locally (cloudflared's `credentials-file`).
    pub credentials_file: Option<PathBuf>,
    /// Its token, for `cloudflared tunnel run --token` (an adopted tunnel without a local
    /// credentials file).
    pub run_token: Option<Secret>,
}

/// What [`CloudflareTunnels::ensure_dns`] or [`CloudflareTunnels::remove_dns`] did to one
/// hostname's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsAction {
    /// The record was missing and was created.
    Created,
    /// The record pointed elsewhere or was not proxied, and was fixed.
    Updated,
    /// The record was already right.
    Unchanged,
    /// The record pointed at this tunnel and was deleted.
    Deleted,
    /// The record points elsewhere (not this tunnel's) and was left alone.
    Kept,
}

/// One hostname's DNS record and what was done to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsChange {
    /// The hostname.
    pub hostname: String,
    /// The record's id.
    pub record_id: String,
    /// What was done.
    pub action: DnsAction,
}

/// One connection between cloudflared and Cloudflare's edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelConnection {
    /// The connection's id.
    pub id: String,
    /// The Cloudflare data center (`DFW`).
    pub colo: String,
    /// When it was opened (RFC 3339), when known.
    pub opened_at: Option<String>,
    /// The connector (cloudflared instance) holding it.
    pub client_id: Option<String>,
    /// The connector's cloudflared version.
    pub client_version: Option<String>,
    /// The connector's public IP.
    pub origin_ip: Option<String>,
    /// Whether the edge is waiting for it to reconnect.
    pub pending_reconnect: bool,
}

/// Why a tunnel call failed. Never holds the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TunnelError {
    /// The settings cannot be used (an empty account, zone or token, a bad base URL).
    #[error("the Cloudflare tunnel settings are invalid: {0}")]
    Settings(String),
    /// 401/403: the token is wrong or lacks a permission.
    #[error(
        "{op}: {LABEL} refused the token ({status}: {}); check the tunnel's `token`: a \
         Cloudflare API token with `Account: Cloudflare Tunnel: Edit` and `Zone: DNS: Edit`",
        .messages.join("; ")
    )]
    TokenRefused {
        /// What was being done.
        op: String,
        /// 401 or 403.
        status: u16,
        /// Cloudflare's `errors[]` messages.
        messages: Vec<String>,
    },
    /// 404: the account, zone or tunnel does not exist (or the token cannot see it).
    #[error("{op}: {what} not found (404: {})", .messages.join("; "))]
    NotFound {
        /// What was being done.
        op: String,
        /// What was not found ("account `…`").
        what: String,
        /// Cloudflare's `errors[]` messages.
        messages: Vec<String>,
    },
    /// 429 on every attempt of the retry policy.
    #[error("{op}: {LABEL} kept rate-limiting the calls (429){}", retry_text(*.retry_after))]
    RateLimited {
        /// What was being done.
        op: String,
        /// The last `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// The API could not be reached (connection refused, DNS, timeout), after retries.
    #[error("{op}: {LABEL} is unreachable: {reason}")]
    Unreachable {
        /// What was being done.
        op: String,
        /// What the network said.
        reason: String,
    },
    /// An answer that is not Cloudflare's envelope or lacks what was asked for.
    #[error("{op}: malformed answer from {LABEL}: {reason}")]
    Malformed {
        /// What was being done.
        op: String,
        /// What was wrong with it.
        reason: String,
    },
    /// Any other refusal (400, 409, a 5xx after retries, `success: false`).
    #[error("{op}: {LABEL} answered {status}: {}", .messages.join("; "))]
    Api {
        /// What was being done.
        op: String,
        /// The HTTP status.
        status: u16,
        /// Cloudflare's `errors[]` messages (or the start of the body).
        messages: Vec<String>,
    },
    /// The tunnel's credentials file could not be written.
    #[error("the tunnel's credentials file {}: {reason}", .path.display())]
    Credentials {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

fn retry_text(after: Option<Duration>) -> String {
    after
        .map(|d| format!(", last asked to retry after {d:?}"))
        .unwrap_or_default()
}

/// The CNAME target of a tunnel: `<tunnel-id>.cfargotunnel.com`.
pub fn cname_target(tunnel_id: &str) -> String {
    format!("{}.cfargotunnel.com", tunnel_id.to_ascii_lowercase())
}

/// Where [`CloudflareTunnels::ensure_tunnel`] keeps a tunnel's credentials: `<dir>/<id>.json`
/// (cloudflared's own naming).
pub fn credentials_path(dir: &Path, tunnel_id: &str) -> PathBuf {
    dir.join(format!("{tunnel_id}.json"))
}

/// The tunnel and DNS calls of one account and zone.
#[derive(Debug, Clone)]
pub struct CloudflareTunnels {
    api: RestApi,
    account_id: String,
    zone_id: String,
}

/// Cloudflare's answer envelope.
#[derive(Debug, Deserialize)]
struct Envelope {
    success: bool,
    #[serde(default)]
    errors: Vec<CfMessage>,
    #[serde(default)]
    result: Value,
}

#[derive(Debug, Deserialize)]
struct CfMessage {
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    message: String,
}

impl CfMessage {
    fn text(&self) -> String {
        match self.code {
            Some(code) => format!("{} (code {code})", self.message),
            None => self.message.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct CfTunnel {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    deleted_at: Option<String>,
    /// Configured from Cloudflare's dashboard (`config_src = "cloudflare"`): cloudflared then
    /// follows the remote ingress, not the local file.
    #[serde(default)]
    remote_config: bool,
}

#[derive(Debug, Deserialize)]
struct CfConnector {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    conns: Vec<CfConnection>,
}

#[derive(Debug, Deserialize)]
struct CfConnection {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    colo_name: Option<String>,
    #[serde(default)]
    opened_at: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    client_version: Option<String>,
    #[serde(default)]
    origin_ip: Option<String>,
    #[serde(default)]
    is_pending_reconnect: bool,
}

#[derive(Debug, Deserialize)]
struct CfRecord {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    content: String,
    #[serde(default)]
    proxied: bool,
}

/// A local credentials file, as cloudflared reads it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Credentials {
    #[serde(rename = "TunnelID")]
    tunnel_id: String,
    tunnel_secret: String,
}

fn normalize_host(hostname: &str) -> String {
    hostname.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn same_target(content: &str, target: &str) -> bool {
    content
        .trim()
        .trim_end_matches('.')
        .eq_ignore_ascii_case(target)
}

/// The messages of an error answer's body: its `errors[]`, else any `"message"` strings in it
/// (the body may be cut), else the text itself.
fn body_messages(body: &str) -> Vec<String> {
    if let Ok(envelope) = serde_json::from_str::<Envelope>(body) {
        let messages: Vec<String> = envelope.errors.iter().map(CfMessage::text).collect();
        if !messages.is_empty() {
            return messages;
        }
    }
    let mut found = Vec::new();
    let mut rest = body;
    while let Some(at) = rest.find("\"message\"") {
        rest = &rest[at + "\"message\"".len()..];
        let Some(open) = rest.trim_start().strip_prefix(':') else {
            continue;
        };
        let Some(value) = open.trim_start().strip_prefix('"') else {
            continue;
        };
        let mut text = String::new();
        let mut escaped = false;
        for c in value.chars() {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => break,
                (_, c) => {
                    escaped = false;
                    text.push(c);
                }
            }
        }
        if !text.is_empty() {
            found.push(text);
        }
    }
    if found.is_empty() && !body.trim().is_empty() {
        found.push(body.trim().to_owned());
    }
    found
}

impl CloudflareTunnels {
    /// The calls of `settings`' account and zone; refuses empty ids, an empty token or a base
    /// URL that is not http(s).
    pub fn new(settings: CloudflareSettings) -> Result<Self, TunnelError> {
        let mut problems = Vec::new();
        if settings.account_id.trim().is_empty() {
            problems.push("`account_id` is empty".to_owned());
        }
        if settings.zone_id.trim().is_empty() {
            problems.push("`zone_id` is empty".to_owned());
        }
        if settings.token.expose().trim().is_empty() {
            problems.push("the API token is empty".to_owned());
        }
        if settings.timeout.is_some_and(|t| t.is_zero()) {
            problems.push("`timeout` must be more than zero".to_owned());
        }
        if !problems.is_empty() {
            return Err(TunnelError::Settings(problems.join("; ")));
        }
        let mut http = HttpConfig::default();
        if let Some(timeout) = settings.timeout {
            http.request_timeout = timeout;
        }
        let clients = RestClients::new(
            LABEL,
            Some(DEFAULT_BASE_URL),
            TokenNeed::Required("a Cloudflare API token"),
        )
        .with_http_config(http);
        let ctx = InstanceContext {
            instance: "tunnel".to_owned(),
            token: Some(settings.token),
            base_url: settings.base_url,
            ..InstanceContext::default()
        };
        let api = clients.api(&ctx).map_err(|e| {
            TunnelError::Settings(match e {
                ProviderError::InvalidResource { problems, .. } => problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
                other => other.to_string(),
            })
        })?;
        Ok(Self {
            api,
            account_id: settings.account_id.trim().to_owned(),
            zone_id: settings.zone_id.trim().to_owned(),
        })
    }

    fn account_path(&self, rest: &str) -> String {
        format!(
            "/accounts/{}/cfd_tunnel{rest}",
            encode_segment(&self.account_id)
        )
    }

    fn zone_path(&self, rest: &str) -> String {
        format!("/zones/{}/dns_records{rest}", encode_segment(&self.zone_id))
    }

    fn account_what(&self) -> String {
        format!("account `{}`", self.account_id)
    }

    fn tunnel_what(&self, id: &str) -> String {
        format!("tunnel `{id}` of account `{}`", self.account_id)
    }

    fn zone_what(&self) -> String {
        format!("zone `{}`", self.zone_id)
    }

    /// `error` of operation `op` as a [`TunnelError`] (`what`: what a 404 means).
    fn error(&self, op: &str, what: &str, error: CallError) -> TunnelError {
        let op = op.to_owned();
        let messages = |body: &str| body_messages(&self.api.mask(body));
        match &error.http {
            HttpError::Status {
                code: status @ (401 | 403),
                body_excerpt,
                ..
            } => TunnelError::TokenRefused {
                op,
                status: *status,
                messages: messages(body_excerpt),
            },
            HttpError::Status {
                code: 404,
                body_excerpt,
                ..
            } => TunnelError::NotFound {
                op,
                what: what.to_owned(),
                messages: messages(body_excerpt),
            },
            HttpError::Status {
                code, body_excerpt, ..
            } => TunnelError::Api {
                op,
                status: *code,
                messages: messages(body_excerpt),
            },
            HttpError::RateLimited { retry_after, .. } => TunnelError::RateLimited {
                op,
                retry_after: *retry_after,
            },
            HttpError::Timeout { .. } | HttpError::Connect { .. } => TunnelError::Unreachable {
                op,
                reason: error.text,
            },
            HttpError::Decode { reason, .. } => TunnelError::Malformed {
                op,
                reason: self.api.mask(reason),
            },
            HttpError::Invalid { .. } => TunnelError::Settings(format!("{op}: {}", error.text)),
        }
    }

    /// One call: the request sent with retries, the envelope checked, its `result` read as `T`.
    async fn call<T: DeserializeOwned>(
        &self,
        op: &str,
        what: &str,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> Result<T, TunnelError> {
        let request = self
            .api
            .request(method, path, query, body)
            .map_err(|e| self.error(op, what, e))?;
        let answer = self
            .api
            .send(&request)
            .await
            .map_err(|e| self.error(op, what, e))?;
        let malformed = |reason: String| TunnelError::Malformed {
            op: op.to_owned(),
            reason: self.api.mask(&reason),
        };
        let envelope: Envelope = answer
            .json()
            .map_err(|e| malformed(format!("not Cloudflare's answer envelope: {e}")))?;
        if !envelope.success {
            let mut messages: Vec<String> = envelope.errors.iter().map(CfMessage::text).collect();
            if messages.is_empty() {
                messages.push("success: false without errors".to_owned());
            }
            return Err(TunnelError::Api {
                op: op.to_owned(),
                status: answer.status,
                messages: messages.iter().map(|m| self.api.mask(m)).collect(),
            });
        }
        serde_json::from_value(envelope.result)
            .map_err(|e| malformed(format!("unexpected `result`: {e}")))
    }

    /// Adopts the account's non-deleted tunnel called `name`, else creates one (a locally
    /// configured tunnel with a fresh 32-byte secret) and writes its credentials file into
    /// `credentials_dir` (created 0700 if missing; the file 0600). An adopted tunnel whose
    /// credentials file is in `credentials_dir` runs with it; one without runs with its token
    /// (`GET …/token`). A create refused because the name was taken meanwhile (409, another
    /// kinfra starting at the same moment) adopts that tunnel.
    pub async fn ensure_tunnel(
        &self,
        name: &str,
        credentials_dir: &Path,
    ) -> Result<TunnelHandle, TunnelError> {
        let name = name.trim();
        if name.is_empty() {
            return Err(TunnelError::Settings("the tunnel name is empty".into()));
        }
        if let Some(tunnel) = self.find_tunnel(name).await? {
            return self.adopt(tunnel, credentials_dir).await;
        }
        let mut secret = [0u8; 32];
        kinfra_core::random::fill(&mut secret).map_err(|e| TunnelError::Credentials {
            path: credentials_dir.to_path_buf(),
            reason: format!("no randomness for the tunnel secret: {e}"),
        })?;
        use base64::Engine as _;
        let secret = Secret::new(base64::engine::general_purpose::STANDARD.encode(secret));
        let op = format!("create tunnel `{name}`");
        let created: Result<CfTunnel, TunnelError> = self
            .call(
                &op,
                &self.account_what(),
                Method::POST,
                &self.account_path(""),
                &[],
                Some(json!({
                    "name": name,
                    "config_src": "local",
                    "tunnel_secret": secret.expose(),
                })),
            )
            .await;
        let created = match created {
            Ok(created) => created,
            // Made meanwhile (another kinfra starting at the same moment): adopt it.
            Err(error @ TunnelError::Api { status: 409, .. }) => {
                return match self.find_tunnel(name).await? {
                    Some(tunnel) => self.adopt(tunnel, credentials_dir).await,
                    None => Err(error),
                };
            }
            Err(error) => return Err(error),
        };
        let path = credentials_path(credentials_dir, &created.id);
        let file = json!({
            "AccountTag": self.account_id,
            "TunnelID": created.id,
            "TunnelSecret": secret.expose(),
        });
        write_private(credentials_dir, &path, file.to_string().as_bytes()).map_err(|reason| {
            TunnelError::Credentials {
                path: path.clone(),
                reason: format!(
                    "{reason} (tunnel `{name}` ({}) was created; the next start adopts it and \
                     runs it with its token)",
                    created.id
                ),
            }
        })?;
        debug!(tunnel = %name, id = %created.id, "Created a Cloudflare tunnel.");
        Ok(TunnelHandle {
            id: created.id,
            name: name.to_owned(),
            created: true,
            credentials_file: Some(path),
            run_token: None,
        })
    }

    /// The account's non-deleted tunnel called `name`, if any.
    async fn find_tunnel(&self, name: &str) -> Result<Option<CfTunnel>, TunnelError> {
        let found: Vec<CfTunnel> = self
            .call(
                &format!("find tunnel `{name}`"),
                &self.account_what(),
                Method::GET,
                &self.account_path(""),
                &[("name", name), ("is_deleted", "false")],
                None,
            )
            .await?;
        Ok(found
            .into_iter()
            .find(|t| t.name == name && t.deleted_at.is_none()))
    }

    async fn adopt(
        &self,
        tunnel: CfTunnel,
        credentials_dir: &Path,
    ) -> Result<TunnelHandle, TunnelError> {
        if tunnel.remote_config {
            warn!(tunnel = %tunnel.name, id = %tunnel.id, "The adopted tunnel is configured from Cloudflare's dashboard: cloudflared follows that ingress, not kinfra's routes.");
        }
        let path = credentials_path(credentials_dir, &tunnel.id);
        let local = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Credentials>(&bytes) {
                Ok(c)
                    if c.tunnel_id.eq_ignore_ascii_case(&tunnel.id)
                        && !c.tunnel_secret.is_empty() =>
                {
                    true
                }
                Ok(_) => {
                    warn!(file = %path.display(), tunnel = %tunnel.name, "The credentials file is for another tunnel or has no secret; running with the tunnel's token.");
                    false
                }
                Err(error) => {
                    warn!(file = %path.display(), %error, "The credentials file is unreadable; running with the tunnel's token.");
                    false
                }
            },
            Err(_) => false,
        };
        if local {
            return Ok(TunnelHandle {
                id: tunnel.id,
                name: tunnel.name,
                created: false,
                credentials_file: Some(path),
                run_token: None,
            });
        }
        let op = format!("read the token of tunnel `{}`", tunnel.name);
        let token: String = self
            .call(
                &op,
                &self.tunnel_what(&tunnel.id),
                Method::GET,
                &self.account_path(&format!("/{}/token", encode_segment(&tunnel.id))),
                &[],
                None,
            )
            .await?;
        if token.trim().is_empty() {
            return Err(TunnelError::Malformed {
                op,
                reason: "an empty token".into(),
            });
        }
        Ok(TunnelHandle {
            id: tunnel.id,
            name: tunnel.name,
            created: false,
            credentials_file: None,
            run_token: Some(Secret::new(token)),
        })
    }

    /// The CNAME records called `hostname`.
    async fn records(&self, hostname: &str) -> Result<Vec<CfRecord>, TunnelError> {
        self.call(
            &format!("list the DNS records of {hostname}"),
            &self.zone_what(),
            Method::GET,
            &self.zone_path(""),
            &[("type", "CNAME"), ("name", hostname), ("per_page", "100")],
            None,
        )
        .await
    }

    /// One proxied CNAME `<hostname> → <tunnel_id>.cfargotunnel.com` per hostname: created
    /// when missing, fixed (PATCH) when it points elsewhere or is not proxied, left alone when
    /// right; a hostname with several CNAMEs (Cloudflare allows none) has its first one fixed.
    /// A hostname outside the zone is an error (Cloudflare would have made a record of
    /// `<hostname>.<zone>`; it is deleted again).
    pub async fn ensure_dns(
        &self,
        tunnel_id: &str,
        hostnames: &[String],
    ) -> Result<Vec<DnsChange>, TunnelError> {
        let target = cname_target(tunnel_id);
        let mut changes = Vec::new();
        let mut done: Vec<String> = Vec::new();
        for hostname in hostnames {
            let hostname = normalize_host(hostname);
            if hostname.is_empty() || done.contains(&hostname) {
                continue;
            }
            done.push(hostname.clone());
            let body = json!({
                "type": "CNAME",
                "name": hostname,
                "content": target,
                "proxied": true,
                "ttl": 1,
                "comment": "kinfra tunnel",
            });
            let existing = self.records(&hostname).await?;
            let change = match existing.first() {
                Some(r) if same_target(&r.content, &target) && r.proxied => DnsChange {
                    hostname: hostname.clone(),
                    record_id: r.id.clone(),
                    action: DnsAction::Unchanged,
                },
                Some(r) => {
                    let updated: CfRecord = self
                        .call(
                            &format!("point the DNS record of {hostname} at the tunnel"),
                            &self.zone_what(),
                            Method::PATCH,
                            &self.zone_path(&format!("/{}", encode_segment(&r.id))),
                            &[],
                            Some(body),
                        )
                        .await?;
                    DnsChange {
                        hostname: hostname.clone(),
                        record_id: updated.id,
                        action: DnsAction::Updated,
                    }
                }
                None => {
                    let created: CfRecord = self
                        .call(
                            &format!("create the DNS record of {hostname}"),
                            &self.zone_what(),
                            Method::POST,
                            &self.zone_path(""),
                            &[],
                            Some(body),
                        )
                        .await?;
                    if !created.name.is_empty() && normalize_host(&created.name) != hostname {
                        // Cloudflare appends the zone's name to a name outside it: the
                        // hostname is not in this zone. The stray record goes again.
                        self.delete_record(&hostname, &created.id).await?;
                        return Err(TunnelError::Settings(format!(
                            "hostname `{hostname}` is not in zone `{}` (Cloudflare named its \
                             record `{}`); use a zone_id of the zone it belongs to",
                            self.zone_id, created.name
                        )));
                    }
                    DnsChange {
                        hostname: hostname.clone(),
                        record_id: created.id,
                        action: DnsAction::Created,
                    }
                }
            };
            changes.push(change);
        }
        Ok(changes)
    }

    /// Deletes the CNAMEs of `hostnames` that point at `tunnel_id` (`Deleted`); records that
    /// point elsewhere are left alone (`Kept`); a hostname without a record is not listed.
    pub async fn remove_dns(
        &self,
        tunnel_id: &str,
        hostnames: &[String],
    ) -> Result<Vec<DnsChange>, TunnelError> {
        let target = cname_target(tunnel_id);
        let mut changes = Vec::new();
        let mut done: Vec<String> = Vec::new();
        for hostname in hostnames {
            let hostname = normalize_host(hostname);
            if hostname.is_empty() || done.contains(&hostname) {
                continue;
            }
            done.push(hostname.clone());
            for record in self.records(&hostname).await? {
                if !same_target(&record.content, &target) {
                    changes.push(DnsChange {
                        hostname: hostname.clone(),
                        record_id: record.id,
                        action: DnsAction::Kept,
                    });
                    continue;
                }
                self.delete_record(&hostname, &record.id).await?;
                changes.push(DnsChange {
                    hostname: hostname.clone(),
                    record_id: record.id,
                    action: DnsAction::Deleted,
                });
            }
        }
        Ok(changes)
    }

    async fn delete_record(&self, hostname: &str, id: &str) -> Result<(), TunnelError> {
        let _: Value = self
            .call(
                &format!("delete the DNS record of {hostname}"),
                &self.zone_what(),
                Method::DELETE,
                &self.zone_path(&format!("/{}", encode_segment(id))),
                &[],
                Some(json!({})),
            )
            .await?;
        Ok(())
    }

    /// Deletes the tunnel (after cleaning up its stale connections; stop cloudflared first).
    pub async fn delete_tunnel(&self, tunnel_id: &str) -> Result<(), TunnelError> {
        let what = self.tunnel_what(tunnel_id);
        let base = self.account_path(&format!("/{}", encode_segment(tunnel_id)));
        let cleanup: Result<Value, TunnelError> = self
            .call(
                &format!("clean up the connections of tunnel `{tunnel_id}`"),
                &what,
                Method::DELETE,
                &format!("{base}/connections"),
                &[],
                Some(json!({})),
            )
            .await;
        match cleanup {
            Ok(_) => {}
            Err(e @ TunnelError::TokenRefused { .. }) => return Err(e),
            Err(error) => {
                debug!(%error, "Cleaning up a tunnel's connections failed; deleting it anyway.")
            }
        }
        let _: Value = self
            .call(
                &format!("delete tunnel `{tunnel_id}`"),
                &what,
                Method::DELETE,
                &base,
                &[],
                Some(json!({})),
            )
            .await?;
        Ok(())
    }

    /// The tunnel's live connections to the edge (`GET …/connections`), one per edge
    /// connection of each connector.
    pub async fn connections(&self, tunnel_id: &str) -> Result<Vec<TunnelConnection>, TunnelError> {
        let connectors: Vec<CfConnector> = self
            .call(
                &format!("list the connections of tunnel `{tunnel_id}`"),
                &self.tunnel_what(tunnel_id),
                Method::GET,
                &self.account_path(&format!("/{}/connections", encode_segment(tunnel_id))),
                &[],
                None,
            )
            .await?;
        Ok(connectors
            .into_iter()
            .flat_map(|client| {
                let client_id = client.id;
                let version = client.version;
                client.conns.into_iter().map(move |c| TunnelConnection {
                    id: c.id.unwrap_or_default(),
                    colo: c.colo_name.unwrap_or_default(),
                    opened_at: c.opened_at,
                    client_id: c.client_id.or_else(|| client_id.clone()),
                    client_version: c.client_version.or_else(|| version.clone()),
                    origin_ip: c.origin_ip,
                    pending_reconnect: c.is_pending_reconnect,
                })
            })
            .collect())
    }
}

/// Writes `bytes` to `path` readable by its owner only (a temporary file renamed over it, so
/// cloudflared never reads half a file); `dir` is created 0700 if missing.
fn write_private(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let tmp = path.with_extension("json.tmp");
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write it: {e}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_give_cloudflares_messages() {
        let body = r#"{"success":false,"errors":[{"code":10000,"message":"Authentication error"}],"messages":[],"result":null}"#;
        assert_eq!(body_messages(body), ["Authentication error (code 10000)"]);
        // A body cut short still gives its messages.
        let cut = r#"{"success":false,"errors":[{"code":1003,"message":"Invalid or missing zone id."},{"code":9,"message":"x\"y"}],"mess"#;
        assert_eq!(body_messages(cut), ["Invalid or missing zone id.", "x\"y"]);
        assert_eq!(body_messages("Bad Gateway"), ["Bad Gateway"]);
    }

    #[test]
    fn settings_problems_are_reported_at_once_without_the_token() {
        let error = CloudflareTunnels::new(CloudflareSettings {
            account_id: " ".into(),
            zone_id: String::new(),
            token: Secret::new(""),
            base_url: None,
            timeout: None,
        })
        .expect_err("invalid");
        let text = error.to_string();
        assert!(
            text.contains("account_id") && text.contains("zone_id") && text.contains("token"),
            "{text}"
        );
        let error = CloudflareTunnels::new(CloudflareSettings {
            account_id: "a".into(),
            zone_id: "z".into(),
            token: Secret::new("cf-secret-token"),
            base_url: Some("ftp://example.com".into()),
            timeout: None,
        })
        .expect_err("bad base");
        let text = format!("{error} {error:?}");
        assert!(!text.contains("providers"), "{text}");
        assert!(
            text.contains("base_url") && !text.contains("cf-secret-token"),
            "{text}"
        );
    }

    #[test]
    fn debug_output_never_holds_the_token() {
        let settings = CloudflareSettings {
            account_id: "acc".into(),
            zone_id: "zone".into(),
            token: Secret::new("cf-secret-token-9q"),
            base_url: Some("http://127.0.0.1:9".into()),
            timeout: Some(Duration::from_secs(5)),
        };
        let client = CloudflareTunnels::new(settings.clone()).expect("valid");
        let handle = TunnelHandle {
            id: "id".into(),
            name: "n".into(),
            created: false,
            credentials_file: None,
            run_token: Some(Secret::new("cf-run-token-7x")),
        };
        let shown = format!("{settings:?} {client:?} {handle:?}");
        assert!(!shown.contains("cf-secret-token-9q"), "{shown}");
        assert!(!shown.contains("cf-run-token-7x"), "{shown}");
    }

    #[test]
    fn cname_target_and_credentials_path() {
        assert_eq!(cname_target("ABC"), "abc.cfargotunnel.com");
        assert_eq!(
            credentials_path(Path::new("/x"), "id"),
            PathBuf::from("/x/id.json")
        );
        assert!(same_target("ID.cfargotunnel.com.", "id.cfargotunnel.com"));
    }
}
