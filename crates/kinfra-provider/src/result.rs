//! What a command returns: a [`CommandResult`], and for a dry-run the exact
//! [`PlannedRequest`]s it would send, with every secret masked.

use kinfra_core::Secret;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a secret is replaced with in planned requests.
pub const MASK: &str = "****";

/// Headers whose values are always masked, whatever they hold (compared without case).
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "x-auth-token",
    "cookie",
    "set-cookie",
];

/// One request a command would send (a dry-run's answer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The full URL.
    pub url: String,
    /// The headers, in order.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The body (a JSON value, or a string for other bodies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

impl PlannedRequest {
    /// A copy fit to show: every value of `secrets` replaced by [`MASK`] in the URL (also in
    /// its percent-encoded form), the header values and the body, and the whole value of every
    /// credential header (`Authorization`, `X-API-Key`, `Cookie`, ... and any header whose
    /// name looks secret, e.g. `X-Auth-Token`).
    pub fn masked(&self, secrets: &[&Secret]) -> PlannedRequest {
        let values: Vec<&str> = secrets
            .iter()
            .map(|s| s.expose())
            .filter(|s| !s.is_empty())
            .collect();
        PlannedRequest {
            method: self.method.clone(),
            url: mask_text(&self.url, &values),
            headers: self
                .headers
                .iter()
                .map(|(name, value)| {
                    let lower = name.to_ascii_lowercase();
                    if SECRET_HEADERS.contains(&lower.as_str())
                        || kinfra_core::secret::is_secret_name(name)
                    {
                        (name.clone(), MASK.to_owned())
                    } else {
                        (name.clone(), mask_text(value, &values))
                    }
                })
                .collect(),
            body: self.body.as_ref().map(|b| mask_json(b, &values)),
        }
    }
}

/// `text` with every secret value (and its percent-encoded form) replaced by [`MASK`].
/// Longer values are replaced first so one secret inside another cannot leave a tail.
pub fn mask_text(text: &str, secrets: &[&str]) -> String {
    let mut sorted: Vec<&str> = secrets.iter().copied().filter(|s| !s.is_empty()).collect();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_owned();
    for secret in sorted {
        out = out.replace(secret, MASK);
        let encoded = percent_encode(secret);
        if encoded != secret {
            out = out.replace(&encoded, MASK);
        }
    }
    out
}

fn mask_json(value: &Value, secrets: &[&str]) -> Value {
    match value {
        Value::String(s) => Value::String(mask_text(s, secrets)),
        Value::Array(items) => Value::Array(items.iter().map(|v| mask_json(v, secrets)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (mask_text(k, secrets), mask_json(v, secrets)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What a command returns: `{success, data, warnings, dry_run, operation, requests}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    /// True when it did (or, for a dry-run, would do) what was asked.
    pub success: bool,
    /// The provider's answer.
    #[serde(default)]
    pub data: Value,
    /// Things worth knowing that did not stop it.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// True when nothing was sent.
    #[serde(default)]
    pub dry_run: bool,
    /// The id of the asynchronous operation it started, when there is one.
    #[serde(default)]
    pub operation: Option<String>,
    /// The state that operation ended in (provider's words), when it was followed to its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_state: Option<String>,
    /// For a dry-run: the requests it would send, masked.
    #[serde(default)]
    pub requests: Vec<PlannedRequest>,
}

impl CommandResult {
    /// A successful result carrying `data`.
    pub fn ok(data: Value) -> Self {
        Self {
            success: true,
            data,
            warnings: Vec::new(),
            dry_run: false,
            operation: None,
            operation_state: None,
            requests: Vec::new(),
        }
    }

    /// A dry-run's result: the requests, masked with `secrets`.
    pub fn planned(requests: &[PlannedRequest], secrets: &[&Secret]) -> Self {
        Self {
            success: true,
            data: Value::Null,
            warnings: Vec::new(),
            dry_run: true,
            operation: None,
            operation_state: None,
            requests: requests.iter().map(|r| r.masked(secrets)).collect(),
        }
    }

    /// The same result with every value of `secrets` masked in its data, warnings and
    /// planned requests (for results that come from elsewhere, e.g. a plugin).
    pub fn mask(mut self, secrets: &[&Secret]) -> Self {
        let values: Vec<&str> = secrets.iter().map(|s| s.expose()).collect();
        self.data = mask_json(&self.data, &values);
        self.warnings = self
            .warnings
            .iter()
            .map(|w| mask_text(w, &values))
            .collect();
        self.operation = self.operation.map(|o| mask_text(&o, &values));
        self.operation_state = self.operation_state.map(|o| mask_text(&o, &values));
        self.requests = self.requests.iter().map(|r| r.masked(secrets)).collect();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_and_credential_headers_are_masked_everywhere() -> Result<(), serde_json::Error> {
        let token = Secret::new("tok/en+1");
        let pw = Secret::new("hunter22");
        let req = PlannedRequest {
            method: "POST".into(),
            url: "https://api.example/v1/x?api_key=tok%2Fen%2B1&q=hunter22".into(),
            headers: vec![
                ("Authorization".into(), "Basic dXNlcjpwYXNz".into()),
                ("x-api-key".into(), "whatever".into()),
                ("X-Custom-Token".into(), "abc".into()),
                ("X-Echo".into(), "pw is hunter22".into()),
                ("Content-Type".into(), "application/json".into()),
            ],
            body: Some(
                json!({"password": "hunter22", "nested": ["a tok/en+1 b", 3], "hunter22": 1}),
            ),
        };
        let result = CommandResult::planned(&[req], &[&token, &pw]);
        let text = serde_json::to_string(&result)?;
        for leak in [
            "tok/en+1",
            "tok%2Fen%2B1",
            "hunter22",
            "dXNlcjpwYXNz",
            "whatever",
            "abc",
        ] {
            assert!(!text.contains(leak), "{leak} in {text}");
        }
        let r = &result.requests[0];
        assert_eq!(r.url, "https://api.example/v1/x?api_key=****&q=****");
        assert_eq!(r.headers[0].1, "****");
        assert_eq!(r.headers[3].1, "pw is ****");
        assert_eq!(r.headers[4].1, "application/json");
        assert_eq!(
            r.body,
            Some(json!({"password": "****", "nested": ["a **** b", 3], "****": 1}))
        );
        let v = serde_json::to_value(&result)?;
        for key in [
            "success",
            "data",
            "warnings",
            "dry_run",
            "operation",
            "requests",
        ] {
            assert!(v.get(key).is_some(), "{key} missing in {v}");
        }
        assert_eq!(v["dry_run"], json!(true));
        Ok(())
    }

    #[test]
    fn a_foreign_result_is_masked_throughout() {
        let token = Secret::new("tok-123456");
        let mut result = CommandResult::ok(json!({"url": "db://u:tok-123456@h", "n": 1}));
        result.warnings.push("token tok-123456 expires soon".into());
        let masked = result.mask(&[&token]);
        assert_eq!(masked.data, json!({"url": "db://u:****@h", "n": 1}));
        assert_eq!(masked.warnings, ["token **** expires soon"]);
    }

    #[test]
    fn overlapping_secrets_leave_no_tail() {
        assert_eq!(mask_text("x abcdef y", &["abc", "abcdef"]), "x **** y");
    }
}
