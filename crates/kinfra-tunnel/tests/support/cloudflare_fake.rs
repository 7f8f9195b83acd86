//! A stateful fake of the Cloudflare API's tunnel and DNS endpoints, behind Prism (see
//! `prism.rs`, Cloudflare's spec in `crates/kinfra-tunnel/specs/cloudflare/`): accounts with
//! tunnels (`cfd_tunnel`: list by name and `is_deleted`, create with a secret, get, token,
//! connections, cleanup, delete, which refuses a tunnel with live connections) and zones with
//! DNS records (list by name and type, create refusing a second A/AAAA/CNAME on a name, patch,
//! delete). It checks `Authorization: Bearer <TOKEN>` itself (Prism only checks that one is
//! there) and answers in Cloudflare's envelope (`success`, `errors`, `messages`, `result`).
//!
//! Tests share one fake and one Prism per binary: each test makes its own account and zone
//! ([`CloudflareFake::account`]) and looks only at its own exchanges (their targets hold the
//! account or zone id). Faults: the next requests whose `METHOD target` contains a pattern get
//! a scripted [`Reply`] ([`CloudflareFake::inject`]; patterns hold the test's own ids).
//!
//! Include it with `#[path]` beside the SDK's `fake_http.rs` and kinfra-cloud's `prism.rs` as
//! the sibling modules `fake_http` and `prism`.

use super::fake_http::{Reply, Seen};
use super::prism::{self, Prism};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::Duration;

/// The name of every zone of the fake: a record's name outside it gets it appended, as
/// Cloudflare does (`app.example.org` → `app.example.org.example.com`).
pub const ZONE_NAME: &str = "example.com";
/// The token the fake accepts.
pub const TOKEN: &str = "cf_test_token_k7Qz2vX9mB41pL0s";
const TIME: &str = "2026-01-01T00:00:00Z";

/// The spec Prism checks against.
pub fn spec_path() -> PathBuf {
    prism::workspace_root().join("crates/kinfra-tunnel/specs/cloudflare/openapi.trimmed.json")
}

/// One edge connection of a tunnel.
#[derive(Debug, Clone)]
pub struct FakeConnection {
    pub id: String,
    pub colo: String,
    pub client_id: String,
    pub client_version: String,
    pub opened_at: String,
}

/// One tunnel.
#[derive(Debug, Clone)]
pub struct FakeTunnel {
    pub id: String,
    pub name: String,
    /// The secret it was created with (base64), when one was given.
    pub secret: Option<String>,
    pub config_src: String,
    pub deleted: bool,
    pub connections: Vec<FakeConnection>,
}

/// One DNS record.
#[derive(Debug, Clone)]
pub struct FakeRecord {
    pub id: String,
    pub kind: String,
    pub name: String,
    pub content: String,
    pub proxied: bool,
    pub comment: Option<String>,
}

#[derive(Debug, Clone)]
struct Fault {
    pattern: String,
    reply: Reply,
    times: usize,
}

#[derive(Debug, Default)]
struct State {
    /// Tunnels by account id.
    accounts: HashMap<String, Vec<FakeTunnel>>,
    /// Records by zone id.
    zones: HashMap<String, Vec<FakeRecord>>,
    faults: Vec<Fault>,
    /// `METHOD target body` of every request that reached the fake.
    requests: Vec<String>,
}

/// The fake's state.
#[derive(Debug, Default)]
pub struct CloudflareFake {
    state: Mutex<State>,
    next: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An error answer in Cloudflare's envelope.
pub fn error(status: u16, code: u32, message: &str) -> Reply {
    Reply::json(
        status,
        &json!({
            "success": false,
            "errors": [{ "code": code, "message": message }],
            "messages": [],
            "result": null,
        })
        .to_string(),
    )
}

fn ok(result: Value) -> Reply {
    Reply::json(
        200,
        &json!({ "success": true, "errors": [], "messages": [], "result": result }).to_string(),
    )
}

fn ok_list(items: Vec<Value>) -> Reply {
    let count = items.len();
    Reply::json(
        200,
        &json!({
            "success": true,
            "errors": [],
            "messages": [],
            "result": items,
            "result_info": { "page": 1, "per_page": 100, "count": count, "total_count": count },
        })
        .to_string(),
    )
}

/// An answer that is not JSON at all (send it through [`Prism::fake_url`]: Prism refuses it).
pub fn garbage() -> Reply {
    Reply {
        status: 200,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: "<html>upstream hiccup</html>".into(),
        delay: Duration::ZERO,
    }
}

/// The fake and Prism in front of it, once per test binary.
pub fn cloudflare() -> (&'static Prism, &'static CloudflareFake) {
    static FAKE: LazyLock<Arc<CloudflareFake>> =
        LazyLock::new(|| Arc::new(CloudflareFake::default()));
    static PRISM: OnceLock<Prism> = OnceLock::new();
    let fake: &'static CloudflareFake = &FAKE;
    let prism = PRISM.get_or_init(|| {
        let handler = FAKE.clone();
        Prism::start(
            &spec_path(),
            Arc::new(move |seen: &Seen| Some(handler.handle(seen))),
        )
    });
    (prism, fake)
}

/// Percent-decodes a query value (`+` is a space).
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_value(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| decode(v))
}

/// Whether `text` is standard base64 of exactly 32 bytes.
fn is_secret_of_32_bytes(text: &str) -> bool {
    text.len() == 44
        && text.ends_with('=')
        && !text.ends_with("==")
        && text[..43]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

fn tunnel_json(account: &str, t: &FakeTunnel) -> Value {
    let mut v = json!({
        "id": t.id,
        "account_tag": account,
        "name": t.name,
        "created_at": TIME,
        "status": if t.connections.is_empty() { "inactive" } else { "healthy" },
        "tun_type": "cfd_tunnel",
        "remote_config": t.config_src == "cloudflare",
        "metadata": {},
        "connections": t.connections.iter().map(connection_json).collect::<Vec<_>>(),
    });
    if !t.connections.is_empty() {
        v["conns_active_at"] = json!(TIME);
    }
    if t.deleted {
        v["deleted_at"] = json!(TIME);
    }
    v
}

fn connection_json(c: &FakeConnection) -> Value {
    json!({
        "id": c.id,
        "uuid": c.id,
        "colo_name": c.colo,
        "client_id": c.client_id,
        "client_version": c.client_version,
        "opened_at": c.opened_at,
        "origin_ip": "198.51.100.7",
        "is_pending_reconnect": false,
    })
}

fn record_json(zone: &str, r: &FakeRecord) -> Value {
    let mut v = json!({
        "id": r.id,
        "type": r.kind,
        "name": r.name,
        "content": r.content,
        "proxied": r.proxied,
        "proxiable": true,
        "ttl": 1,
        "created_on": "2026-01-01T00:00:00.000000Z",
        "modified_on": "2026-01-01T00:00:00.000000Z",
        "meta": { "source": "primary" },
        "tags": [],
    });
    if let Some(c) = &r.comment {
        v["comment"] = json!(c);
    }
    let _ = zone;
    v
}

impl CloudflareFake {
    fn n(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn hex32(&self, kind: u8) -> String {
        format!("{kind:02x}{:014x}{:016x}", std::process::id(), self.n())
    }

    fn uuid(&self) -> String {
        let n = self.n();
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            std::process::id(),
            n & 0xffff,
            (n >> 16) & 0xfff,
            n & 0xfff,
            n
        )
    }

    /// A new account and zone of the fake: `(account_id, zone_id)`, 32 hex digits each.
    pub fn account(&self) -> (String, String) {
        let account = self.hex32(0xac);
        let zone = self.hex32(0x20);
        let mut state = lock(&self.state);
        state.accounts.insert(account.clone(), Vec::new());
        state.zones.insert(zone.clone(), Vec::new());
        (account, zone)
    }

    /// A tunnel made outside kinfra (no secret known locally); returns its id.
    pub fn add_tunnel(&self, account: &str, name: &str) -> String {
        let id = self.uuid();
        let mut state = lock(&self.state);
        let tunnels = state
            .accounts
            .get_mut(account)
            .unwrap_or_else(|| panic!("no fake account {account}"));
        tunnels.push(FakeTunnel {
            id: id.clone(),
            name: name.into(),
            secret: None,
            config_src: "local".into(),
            deleted: false,
            connections: Vec::new(),
        });
        id
    }

    /// The account's tunnels, deleted ones included.
    pub fn tunnels(&self, account: &str) -> Vec<FakeTunnel> {
        lock(&self.state)
            .accounts
            .get(account)
            .cloned()
            .unwrap_or_default()
    }

    /// cloudflared connecting tunnel `id` to the edge at `colo`; returns the connection id.
    pub fn connect(&self, account: &str, id: &str, colo: &str, version: &str) -> String {
        let conn = self.uuid();
        let client = self.uuid();
        let mut state = lock(&self.state);
        let tunnel = state
            .accounts
            .get_mut(account)
            .and_then(|ts| ts.iter_mut().find(|t| t.id == id))
            .unwrap_or_else(|| panic!("no fake tunnel {id}"));
        tunnel.connections.push(FakeConnection {
            id: conn.clone(),
            colo: colo.into(),
            client_id: client,
            client_version: version.into(),
            opened_at: "2026-01-01T00:00:01Z".into(),
        });
        conn
    }

    /// A record made outside kinfra; returns its id.
    pub fn add_record(
        &self,
        zone: &str,
        kind: &str,
        name: &str,
        content: &str,
        proxied: bool,
    ) -> String {
        let id = self.hex32(0xd5);
        let mut state = lock(&self.state);
        state
            .zones
            .get_mut(zone)
            .unwrap_or_else(|| panic!("no fake zone {zone}"))
            .push(FakeRecord {
                id: id.clone(),
                kind: kind.into(),
                name: name.into(),
                content: content.into(),
                proxied,
                comment: None,
            });
        id
    }

    /// The zone's records.
    pub fn records(&self, zone: &str) -> Vec<FakeRecord> {
        lock(&self.state)
            .zones
            .get(zone)
            .cloned()
            .unwrap_or_default()
    }

    /// The zone's records called `name`.
    pub fn records_named(&self, zone: &str, name: &str) -> Vec<FakeRecord> {
        self.records(zone)
            .into_iter()
            .filter(|r| r.name.eq_ignore_ascii_case(name))
            .collect()
    }

    /// The next `times` requests whose `METHOD target` contains `pattern` get `reply`.
    pub fn inject(&self, pattern: &str, reply: Reply, times: usize) {
        lock(&self.state).faults.push(Fault {
            pattern: pattern.into(),
            reply,
            times,
        });
    }

    /// Drops the faults not yet used whose pattern contains `needle`.
    pub fn clear_faults(&self, needle: &str) {
        lock(&self.state)
            .faults
            .retain(|f| !f.pattern.contains(needle));
    }

    /// `METHOD target body` of every request that reached the fake and contains `needle`.
    pub fn requests(&self, needle: &str) -> Vec<String> {
        lock(&self.state)
            .requests
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// Answers one request (the fake's whole API).
    pub fn handle(&self, seen: &Seen) -> Reply {
        let (path, query) = seen
            .target
            .split_once('?')
            .unwrap_or((seen.target.as_str(), ""));
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let mut state = lock(&self.state);
        state
            .requests
            .push(format!("{} {} {}", seen.method, seen.target, seen.body));
        let line = format!("{} {}", seen.method, seen.target);
        if let Some(i) = state.faults.iter().position(|f| line.contains(&f.pattern)) {
            let fault = &mut state.faults[i];
            let reply = fault.reply.clone();
            fault.times -= 1;
            if fault.times == 0 {
                state.faults.remove(i);
            }
            return reply;
        }
        let expected = format!("Bearer {TOKEN}");
        if seen.header("authorization") != Some(expected.as_str()) {
            return error(401, 10000, "Authentication error");
        }
        let body: Value = serde_json::from_str(&seen.body).unwrap_or(Value::Null);
        let no_route = || {
            error(
                404,
                7003,
                &format!("Could not route to {path}, perhaps your object identifier is invalid?"),
            )
        };
        match parts.as_slice() {
            ["accounts", account, "cfd_tunnel", rest @ ..] => {
                let account = (*account).to_owned();
                let token_of = |t: &FakeTunnel| {
                    format!("eyJhIjoi{}IiwidCI6Ij{}", account, t.id.replace('-', ""))
                };
                let Some(tunnels) = state.accounts.get_mut(&account) else {
                    return no_route();
                };
                match (seen.method.as_str(), rest) {
                    ("GET", []) => {
                        let name = query_value(query, "name");
                        let deleted = query_value(query, "is_deleted");
                        let list = tunnels
                            .iter()
                            .filter(|t| name.as_ref().is_none_or(|n| *n == t.name))
                            .filter(|t| match deleted.as_deref() {
                                Some("true") => t.deleted,
                                Some("false") => !t.deleted,
                                _ => true,
                            })
                            .map(|t| tunnel_json(&account, t))
                            .collect();
                        ok_list(list)
                    }
                    ("POST", []) => {
                        let Some(name) = body.get("name").and_then(Value::as_str) else {
                            return error(400, 1001, "name is required");
                        };
                        let secret = body.get("tunnel_secret").and_then(Value::as_str);
                        if let Some(s) = secret
                            && !is_secret_of_32_bytes(s)
                        {
                            return error(400, 1005, "tunnel_secret must be 32 bytes, base64");
                        }
                        if tunnels.iter().any(|t| t.name == name && !t.deleted) {
                            return error(409, 1013, "You already have a tunnel with this name");
                        }
                        let config_src = body
                            .get("config_src")
                            .and_then(Value::as_str)
                            .unwrap_or("local")
                            .to_owned();
                        let tunnel = FakeTunnel {
                            id: self.uuid(),
                            name: name.into(),
                            secret: secret.map(str::to_owned),
                            config_src,
                            deleted: false,
                            connections: Vec::new(),
                        };
                        let answer = tunnel_json(&account, &tunnel);
                        tunnels.push(tunnel);
                        ok(answer)
                    }
                    (method, [id, tail @ ..]) => {
                        let Some(t) = tunnels.iter_mut().find(|t| t.id == *id && !t.deleted) else {
                            return error(404, 1003, &format!("Tunnel {id} not found"));
                        };
                        match (method, tail) {
                            ("GET", []) => ok(tunnel_json(&account, t)),
                            ("GET", ["token"]) => ok(json!(token_of(t))),
                            ("GET", ["connections"]) => {
                                let mut clients: Vec<(String, Vec<&FakeConnection>)> = Vec::new();
                                for c in &t.connections {
                                    match clients.iter_mut().find(|(id, _)| *id == c.client_id) {
                                        Some((_, cs)) => cs.push(c),
                                        None => clients.push((c.client_id.clone(), vec![c])),
                                    }
                                }
                                ok_list(
                                    clients
                                        .into_iter()
                                        .map(|(id, cs)| {
                                            json!({
                                                "id": id,
                                                "arch": "linux_amd64",
                                                "version": cs[0].client_version,
                                                "run_at": TIME,
                                                "config_version": 0,
                                                "features": [],
                                                "conns": cs.iter().map(|c| connection_json(c)).collect::<Vec<_>>(),
                                            })
                                        })
                                        .collect(),
                                )
                            }
                            ("DELETE", ["connections"]) => {
                                t.connections.clear();
                                ok(json!({}))
                            }
                            ("DELETE", []) => {
                                if !t.connections.is_empty() {
                                    return error(
                                        400,
                                        1022,
                                        "Cannot delete tunnel because it has active connections",
                                    );
                                }
                                t.deleted = true;
                                ok(tunnel_json(&account, t))
                            }
                            _ => no_route(),
                        }
                    }
                    _ => no_route(),
                }
            }
            ["zones", zone, "dns_records", rest @ ..] => {
                let zone = (*zone).to_owned();
                let Some(records) = state.zones.get_mut(&zone) else {
                    return no_route();
                };
                match (seen.method.as_str(), rest) {
                    ("GET", []) => {
                        let name = query_value(query, "name");
                        let kind = query_value(query, "type");
                        let list = records
                            .iter()
                            .filter(|r| {
                                name.as_ref()
                                    .is_none_or(|n| n.eq_ignore_ascii_case(&r.name))
                            })
                            .filter(|r| kind.as_ref().is_none_or(|k| *k == r.kind))
                            .map(|r| record_json(&zone, r))
                            .collect();
                        ok_list(list)
                    }
                    ("POST", []) => {
                        let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_owned);
                        let (Some(kind), Some(name), Some(content)) =
                            (text("type"), text("name"), text("content"))
                        else {
                            return error(400, 9000, "type, name and content are required");
                        };
                        let name = if name == "@" {
                            ZONE_NAME.to_owned()
                        } else if name.eq_ignore_ascii_case(ZONE_NAME)
                            || name
                                .to_ascii_lowercase()
                                .ends_with(&format!(".{ZONE_NAME}"))
                        {
                            name
                        } else {
                            format!("{name}.{ZONE_NAME}")
                        };
                        let exclusive = ["A", "AAAA", "CNAME"];
                        if exclusive.contains(&kind.as_str())
                            && records.iter().any(|r| {
                                r.name.eq_ignore_ascii_case(&name)
                                    && exclusive.contains(&r.kind.as_str())
                            })
                        {
                            return error(
                                400,
                                81053,
                                "An A, AAAA, or CNAME record with that host already exists.",
                            );
                        }
                        let record = FakeRecord {
                            id: self.hex32(0xd5),
                            kind,
                            name,
                            content,
                            proxied: body
                                .get("proxied")
                                .and_then(Value::as_bool)
                                .unwrap_or(false),
                            comment: text("comment"),
                        };
                        let answer = record_json(&zone, &record);
                        records.push(record);
                        ok(answer)
                    }
                    (method, [id]) => {
                        let Some(i) = records.iter().position(|r| r.id == *id) else {
                            return error(404, 81044, "Record does not exist.");
                        };
                        match method {
                            "GET" => ok(record_json(&zone, &records[i])),
                            "PATCH" | "PUT" => {
                                let r = &mut records[i];
                                if let Some(c) = body.get("content").and_then(Value::as_str) {
                                    r.content = c.into();
                                }
                                if let Some(p) = body.get("proxied").and_then(Value::as_bool) {
                                    r.proxied = p;
                                }
                                if let Some(n) = body.get("name").and_then(Value::as_str) {
                                    r.name = n.into();
                                }
                                if let Some(c) = body.get("comment").and_then(Value::as_str) {
                                    r.comment = Some(c.into());
                                }
                                ok(record_json(&zone, r))
                            }
                            "DELETE" => {
                                let r = records.remove(i);
                                ok(json!({ "id": r.id }))
                            }
                            _ => no_route(),
                        }
                    }
                    _ => no_route(),
                }
            }
            _ => no_route(),
        }
    }
}
