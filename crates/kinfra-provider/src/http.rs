//! The one HTTP client every provider speaks through: rustls, a connect timeout and a
//! per-request timeout on every call, `kinfra/<version>` as the user agent, typed errors that
//! never carry a secret.
//!
//! A request is a plain value ([`HttpRequest`]) so it can be retried, shown by a dry-run and
//! logged; its [`Auth`] holds the secret and prints only `***`. Errors name the URL with every
//! query value masked ([`redact_url`]), so an API key sent as a query parameter never reaches a
//! log line, an event or `/__status__`.

use kinfra_core::Secret;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::de::DeserializeOwned;
use std::fmt;
use std::time::{Duration, SystemTime};

pub use reqwest::{Method, Url};

/// How many characters of an error answer's body an [`HttpError::Status`] keeps.
pub const BODY_EXCERPT_CHARS: usize = 200;

/// Timeouts and identity of an [`HttpClient`].
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Longest wait for the TCP + TLS connection.
    pub connect_timeout: Duration,
    /// Longest wait for a whole request (connect, send, the full answer), per call.
    pub request_timeout: Duration,
    /// The `User-Agent` header.
    pub user_agent: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            user_agent: user_agent(),
        }
    }
}

/// `kinfra/<version>`: the user agent of every request kinfra sends to a provider.
pub fn user_agent() -> String {
    format!("kinfra/{}", env!("CARGO_PKG_VERSION"))
}

/// Why a request failed. Clone-able and free of secrets: URLs are redacted, bodies are cut to
/// [`BODY_EXCERPT_CHARS`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// No complete answer within the request (or connect) timeout.
    #[error("{method} {url}: no answer within {after:?}")]
    Timeout {
        /// The request's method.
        method: String,
        /// The redacted URL.
        url: String,
        /// The timeout that expired.
        after: Duration,
    },
    /// The connection could not be made or broke before an answer.
    #[error("{method} {url}: connection failed: {reason}")]
    Connect {
        /// The request's method.
        method: String,
        /// The redacted URL.
        url: String,
        /// What the network stack said (without the URL).
        reason: String,
    },
    /// The server answered 429 Too Many Requests.
    #[error("{method} {url}: rate limited (429){}", retry_after_text(*retry_after))]
    RateLimited {
        /// The request's method.
        method: String,
        /// The redacted URL.
        url: String,
        /// The server's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// The server answered with a status other than 2xx (and other than 429).
    #[error("{method} {url}: HTTP {code}{}: {body_excerpt}", retry_after_text(*retry_after))]
    Status {
        /// The request's method.
        method: String,
        /// The redacted URL.
        url: String,
        /// The HTTP status code.
        code: u16,
        /// The server's `Retry-After`, when it sent one (503 usually does).
        retry_after: Option<Duration>,
        /// The start of the answer's body.
        body_excerpt: String,
    },
    /// The answer was not the JSON the caller expected.
    #[error("{url}: malformed JSON answer: {reason}")]
    Decode {
        /// The redacted URL.
        url: String,
        /// What the parser said.
        reason: String,
    },
    /// The request could not even be built (a header name or value that HTTP does not allow).
    #[error("{url}: invalid request: {reason}")]
    Invalid {
        /// The redacted URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
}

fn retry_after_text(retry_after: Option<Duration>) -> String {
    match retry_after {
        Some(d) => format!(", retry after {d:?}"),
        None => String::new(),
    }
}

impl HttpError {
    /// The HTTP status of the answer, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::RateLimited { .. } => Some(429),
            HttpError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The server's `Retry-After`, when it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            HttpError::RateLimited { retry_after, .. } | HttpError::Status { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }
}

/// How a request authenticates. `Debug` shows the kind and the non-secret names only.
#[derive(Clone, Default)]
pub enum Auth {
    /// No credentials.
    #[default]
    None,
    /// `Authorization: Bearer <token>`.
    Bearer(Secret),
    /// `Authorization: Basic base64(user:password)`.
    Basic {
        /// The user name (not secret).
        user: String,
        /// The password.
        password: Secret,
    },
    /// A custom header carrying the secret (`X-API-Key: <key>`).
    Header {
        /// The header's name.
        name: String,
        /// The header's value.
        value: Secret,
    },
    /// A query parameter carrying the secret (`?api_key=<key>`).
    Query {
        /// The parameter's name.
        name: String,
        /// The parameter's value.
        value: Secret,
    },
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Bearer(_) => f.write_str("Bearer(***)"),
            Auth::Basic { user, .. } => write!(f, "Basic({user}:***)"),
            Auth::Header { name, .. } => write!(f, "Header({name}: ***)"),
            Auth::Query { name, .. } => write!(f, "Query({name}=***)"),
        }
    }
}

/// One request, as a value: retried as it is, shown by a dry-run with [`HttpRequest::redacted_url`].
#[derive(Debug, Clone)]
pub struct HttpRequest {
    /// The method.
    pub method: Method,
    /// The URL (without the auth query parameter; [`Auth::Query`] adds it when sending).
    pub url: Url,
    /// Extra headers (not secret: they appear in `Debug`).
    pub headers: Vec<(String, String)>,
    /// A JSON body, sent with `Content-Type: application/json`.
    pub body: Option<serde_json::Value>,
    /// The credentials.
    pub auth: Auth,
    /// Longest wait for the whole request; `None`: the client's
    /// [`HttpConfig::request_timeout`].
    pub timeout: Option<Duration>,
}

impl HttpRequest {
    /// A request without headers, body or auth.
    pub fn new(method: Method, url: Url) -> Self {
        Self {
            method,
            url,
            headers: Vec::new(),
            body: None,
            auth: Auth::None,
            timeout: None,
        }
    }

    /// Sets the longest wait for the whole request (else the client's default).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// A GET of `url`.
    pub fn get(url: Url) -> Self {
        Self::new(Method::GET, url)
    }

    /// Sets the credentials.
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    /// Sets a JSON body.
    pub fn json(mut self, body: serde_json::Value) -> Self {
        self.body = Some(body);
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The URL as it may be shown: the auth parameter included, every query value masked.
    pub fn redacted_url(&self) -> String {
        let mut url = self.url.clone();
        if let Auth::Query { name, .. } = &self.auth {
            url.query_pairs_mut().append_pair(name, "***");
        }
        redact_url(&url)
    }
}

/// `url` without user info and with every query value replaced by `***` (names kept).
pub fn redact_url(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    let names: Vec<String> = url.query_pairs().map(|(k, _)| k.into_owned()).collect();
    if names.is_empty() {
        shown.set_query(None);
    } else {
        shown.set_query(None);
        let mut pairs = shown.query_pairs_mut();
        for name in &names {
            pairs.append_pair(name, "***");
        }
    }
    shown.to_string()
}

/// A 2xx answer, read in full.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code (2xx).
    pub status: u16,
    /// The answer's headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Vec<u8>,
    /// The redacted URL the answer came from (for error messages).
    pub url: String,
}

impl HttpResponse {
    /// The body parsed as JSON; a malformed or differently shaped body is [`HttpError::Decode`]
    /// naming the (redacted) URL.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HttpError> {
        serde_json::from_slice(&self.body).map_err(|e| HttpError::Decode {
            url: self.url.clone(),
            reason: e.to_string(),
        })
    }

    /// A header's value, when present and valid text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as a command's result shows it: its JSON, the text itself when it is not
    /// JSON, `null` when there is none.
    pub fn data(&self) -> serde_json::Value {
        if self.body.is_empty() {
            return serde_json::Value::Null;
        }
        serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&self.body).into_owned())
        })
    }
}

/// The shared client: one connection pool, the timeouts of [`HttpConfig`] on every call.
/// Cheap to clone (the pool is shared).
#[derive(Debug, Clone)]
pub struct HttpClient {
    inner: reqwest::Client,
    config: HttpConfig,
}

/// The client could not be built (no usable TLS configuration).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client: {0}")]
pub struct HttpClientError(String);

impl HttpClient {
    /// Builds a client with `config`'s timeouts and user agent. Installs kinfra's rustls crypto
    /// provider first (see `kinfra_core::tls`).
    pub fn new(config: HttpConfig) -> Result<Self, HttpClientError> {
        kinfra_core::tls::install_crypto_provider();
        let inner = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .user_agent(config.user_agent.clone())
            .build()
            .map_err(|e| HttpClientError(error_chain(&e.without_url())))?;
        Ok(Self { inner, config })
    }

    /// The timeouts and identity this client was built with.
    pub fn config(&self) -> &HttpConfig {
        &self.config
    }

    /// Sends `request` once and reads the whole answer. 2xx is `Ok`; 429 is
    /// [`HttpError::RateLimited`]; any other status is [`HttpError::Status`].
    pub async fn send(&self, request: &HttpRequest) -> Result<HttpResponse, HttpError> {
        let shown = request.redacted_url();
        let method = request.method.to_string();
        let invalid = |reason: String| HttpError::Invalid {
            url: shown.clone(),
            reason,
        };
        let mut url = request.url.clone();
        if let Auth::Query { name, value } = &request.auth {
            url.query_pairs_mut().append_pair(name, value.expose());
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &request.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| invalid(format!("header name {name:?}")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| invalid(format!("value of header {name}")))?;
            headers.append(name, value);
        }
        let timeout = request.timeout.unwrap_or(self.config.request_timeout);
        let mut builder = self
            .inner
            .request(request.method.clone(), url)
            .timeout(timeout)
            .headers(headers);
        match &request.auth {
            Auth::None | Auth::Query { .. } => {}
            Auth::Bearer(token) => builder = builder.bearer_auth(token.expose()),
            Auth::Basic { user, password } => {
                builder = builder.basic_auth(user, Some(password.expose()));
            }
            Auth::Header { name, value } => {
                let name = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| invalid(format!("auth header name {name:?}")))?;
                let mut value = HeaderValue::from_str(value.expose())
                    .map_err(|_| invalid(format!("value of auth header {name}")))?;
                value.set_sensitive(true);
                builder = builder.header(name, value);
            }
        }
        if let Some(body) = &request.body {
            builder = builder.json(body);
        }
        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                HttpError::Timeout {
                    method: method.clone(),
                    url: shown.clone(),
                    after: timeout,
                }
            } else {
                HttpError::Connect {
                    method: method.clone(),
                    url: shown.clone(),
                    reason: error_chain(&e.without_url()),
                }
            }
        };
        let response = builder.send().await.map_err(transport)?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(transport)?.to_vec();
        let retry_after = headers
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| crate::retry::parse_retry_after(v, SystemTime::now()));
        match status {
            200..=299 => Ok(HttpResponse {
                status,
                headers,
                body,
                url: shown,
            }),
            429 => Err(HttpError::RateLimited {
                method,
                url: shown,
                retry_after,
            }),
            code => Err(HttpError::Status {
                method,
                url: shown,
                code,
                retry_after,
                body_excerpt: excerpt(&body),
            }),
        }
    }
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(BODY_EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// An error and its sources, joined with `: ` (reqwest's own message is terse).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_data_is_json_else_text_else_null() {
        let response = |body: &[u8]| HttpResponse {
            status: 200,
            headers: HeaderMap::new(),
            body: body.to_vec(),
            url: String::new(),
        };
        assert_eq!(
            response(br#"{"id":"x"}"#).data(),
            serde_json::json!({"id": "x"})
        );
        assert_eq!(response(b"queued").data(), serde_json::json!("queued"));
        assert_eq!(response(b"").data(), serde_json::Value::Null);
    }

    #[test]
    fn redact_url_masks_query_values_and_user_info() {
        let url =
            Url::parse("https://user:pw@api.example.com/v1/x?api_key=SECRET&page=2").expect("url");
        let shown = redact_url(&url);
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(!shown.contains("pw"), "{shown}");
        assert!(shown.contains("api_key=***"), "{shown}");
        assert!(shown.contains("/v1/x"), "{shown}");
    }

    #[test]
    fn auth_debug_hides_the_secret() {
        let auths = [
            Auth::Bearer(Secret::new("SECRET")),
            Auth::Basic {
                user: "u".into(),
                password: Secret::new("SECRET"),
            },
            Auth::Header {
                name: "X-Key".into(),
                value: Secret::new("SECRET"),
            },
            Auth::Query {
                name: "key".into(),
                value: Secret::new("SECRET"),
            },
        ];
        for auth in auths {
            let request = HttpRequest::get(Url::parse("http://h/p").expect("url")).auth(auth);
            let shown = format!("{request:?} {}", request.redacted_url());
            assert!(!shown.contains("SECRET"), "{shown}");
        }
    }

    #[test]
    fn excerpt_cuts_long_bodies() {
        let body = "x".repeat(1000);
        assert_eq!(
            excerpt(body.as_bytes()).chars().count(),
            BODY_EXCERPT_CHARS + 1
        );
    }
}
