//! One provider instance's REST API, written once for every cloud provider: the instance's
//! base URL, token and `rate_limit` checked (every problem at once), one HTTP client shared
//! by all instances, a token bucket per instance, retries, dry-run rendering and errors that
//! never carry the token. A provider then writes only its paths and answer shapes.

use crate::http::{
    Auth, HttpClient, HttpConfig, HttpError, HttpRequest, HttpResponse, Method, Url,
};
use crate::provider::{InstanceContext, ProviderError, ResourceProblem};
use crate::ratelimit::{Rate, TokenBucket};
use crate::result::{MASK, PlannedRequest, mask_text};
use crate::retry::{RetryPolicy, send_with_retry};
use kinfra_core::Secret;
use kinfra_core::resource::ResourceError;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

impl ResourceProblem {
    /// A problem with the config key `key`.
    pub fn at(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: Some(key.into()),
            message: message.into(),
        }
    }
}

/// Whether an instance must have a token.
#[derive(Debug, Clone, Copy)]
pub enum TokenNeed<'a> {
    /// It must; the text says what it is ("a Neon API key").
    Required(&'a str),
    /// It may have one.
    Optional,
}

/// An instance's API coordinates, checked.
#[derive(Clone)]
pub struct ApiAccess {
    /// The base URL, without a trailing `/`.
    pub base: String,
    /// The token, when it has one.
    pub token: Option<Secret>,
    /// Its `rate_limit`, when set.
    pub rate: Option<Rate>,
    /// Its `timeout`: the longest wait for one request, when set (else the client's).
    pub timeout: Option<Duration>,
}

impl InstanceContext {
    /// The instance's base URL (its `base_url`, else `default_base`), token,
    /// `rate_limit` and `timeout` (per request, more than zero), with every problem at once
    /// (keys named: `base_url`, `token`, `rate_limit`, `timeout`).
    pub fn api_access(
        &self,
        default_base: Option<&str>,
        token: TokenNeed<'_>,
    ) -> Result<ApiAccess, Vec<ResourceProblem>> {
        let mut problems = Vec::new();
        let base = self
            .base_url
            .clone()
            .or_else(|| {
                self.config
                    .get("base_url")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .or_else(|| default_base.map(str::to_owned));
        let base = match base {
            None => {
                problems.push(ResourceProblem::at("base_url", "missing (required)"));
                String::new()
            }
            Some(b) => match Url::parse(&b) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {
                    b.trim_end_matches('/').to_owned()
                }
                _ => {
                    problems.push(ResourceProblem::at(
                        "base_url",
                        format!("`{b}` is not an http(s) URL"),
                    ));
                    String::new()
                }
            },
        };
        let secret = self.token.clone().filter(|t| !t.expose().is_empty());
        if let (None, TokenNeed::Required(what)) = (&secret, token) {
            problems.push(ResourceProblem::at(
                "token",
                format!(
                    "[providers.{}] needs {what} (token or token_file)",
                    self.instance
                ),
            ));
        }
        let rate = match self.config.get("rate_limit") {
            None => None,
            Some(Value::String(text)) => match text.parse::<Rate>() {
                Ok(r) => Some(r),
                Err(e) => {
                    problems.push(ResourceProblem::at("rate_limit", e.to_string()));
                    None
                }
            },
            Some(_) => {
                problems.push(ResourceProblem::at(
                    "rate_limit",
                    "expected a rate such as \"5/s\"",
                ));
                None
            }
        };
        let timeout = crate::provider::config_duration(&self.config, "timeout", &mut problems);
        if timeout.is_some_and(|t| t.is_zero()) {
            problems.push(ResourceProblem::at("timeout", "must be more than zero"));
        }
        if problems.is_empty() {
            Ok(ApiAccess {
                base,
                token: secret,
                rate,
                timeout,
            })
        } else {
            Err(problems)
        }
    }
}

/// Percent-encodes `text` for one URL path segment (or user info): everything but
/// `A-Z a-z 0-9 - . _ ~`.
pub fn encode_segment(text: &str) -> String {
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

impl HttpRequest {
    /// The request as a dry-run shows it: method, URL, headers (the credentials in clear:
    /// mask the result before showing it) and body.
    pub fn planned(&self) -> PlannedRequest {
        let mut url = self.url.clone();
        let mut headers = Vec::new();
        match &self.auth {
            Auth::None => {}
            Auth::Bearer(t) => {
                headers.push(("Authorization".into(), format!("Bearer {}", t.expose())));
            }
            Auth::Basic { .. } => headers.push(("Authorization".into(), format!("Basic {MASK}"))),
            Auth::Header { name, value } => headers.push((name.clone(), value.expose().to_owned())),
            Auth::Query { name, value } => {
                url.query_pairs_mut().append_pair(name, value.expose());
            }
        }
        headers.extend(self.headers.iter().cloned());
        if self.body.is_some() {
            headers.push(("Content-Type".into(), "application/json".into()));
        }
        PlannedRequest {
            method: self.method.to_string(),
            url: url.to_string(),
            headers,
            body: self.body.clone(),
        }
    }
}

/// What a REST provider keeps for all its instances: one HTTP client (built on first use), a
/// token bucket per instance (its `rate_limit`, shared by all its resources), the retry policy.
pub struct RestClients {
    label: &'static str,
    default_base: Option<&'static str>,
    token: TokenNeed<'static>,
    http_config: HttpConfig,
    http: OnceLock<HttpClient>,
    buckets: Mutex<HashMap<String, TokenBucket>>,
    retry: RetryPolicy,
}

impl std::fmt::Debug for RestClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestClients")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl RestClients {
    /// Clients of the API called `label` in messages ("the Neon API"), at `default_base`
    /// unless an instance says otherwise, with `token` needed or not; default timeouts and a
    /// retry policy of 4 attempts within a minute.
    pub fn new(
        label: &'static str,
        default_base: Option<&'static str>,
        token: TokenNeed<'static>,
    ) -> Self {
        Self {
            label,
            default_base,
            token,
            http_config: HttpConfig::default(),
            http: OnceLock::new(),
            buckets: Mutex::new(HashMap::new()),
            retry: RetryPolicy {
                max_attempts: 4,
                max_elapsed: Duration::from_secs(60),
                ..RetryPolicy::default()
            },
        }
    }

    /// The same with `config`'s timeouts.
    pub fn with_http_config(mut self, config: HttpConfig) -> Self {
        self.http_config = config;
        self.http = OnceLock::new();
        self
    }

    /// The same with `retry` for calls (observe loops keep their own backoff).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The instance's problems (for `validate_resource`): base URL, token, `rate_limit`.
    pub fn check(&self, ctx: &InstanceContext) -> Vec<ResourceProblem> {
        ctx.api_access(self.default_base, self.token)
            .err()
            .unwrap_or_default()
    }

    /// The API of `ctx`'s instance, authenticated with its token as a bearer token (see
    /// [`RestApi::with_auth`] for another scheme).
    pub fn api(&self, ctx: &InstanceContext) -> Result<RestApi, ProviderError> {
        let access = ctx
            .api_access(self.default_base, self.token)
            .map_err(|problems| ProviderError::InvalidResource {
                resource: format!("[providers.{}]", ctx.instance),
                problems,
            })?;
        let http = match self.http.get() {
            Some(c) => c.clone(),
            None => {
                let client = HttpClient::new(self.http_config.clone()).map_err(|e| {
                    ProviderError::InvalidResource {
                        resource: format!("[providers.{}]", ctx.instance),
                        problems: vec![ResourceProblem {
                            key: None,
                            message: e.to_string(),
                        }],
                    }
                })?;
                self.http.get_or_init(|| client).clone()
            }
        };
        let bucket = access.rate.map(|rate| {
            let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
            let bucket = buckets
                .entry(ctx.instance.clone())
                .or_insert_with(|| TokenBucket::new(rate));
            if bucket.rate() != rate {
                // A reload changed the rate: a fresh bucket at the new one.
                *bucket = TokenBucket::new(rate);
            }
            bucket.clone()
        });
        let auth = access.token.clone().map(Auth::Bearer).unwrap_or_default();
        Ok(RestApi {
            instance: ctx.instance.clone(),
            label: self.label,
            base: access.base,
            token: access.token,
            auth,
            http,
            bucket,
            retry: self.retry,
            timeout: access.timeout,
        })
    }
}

/// A failed call: the error, and its text with the token masked (the one to show).
#[derive(Debug, Clone)]
pub struct CallError {
    /// What went wrong.
    pub http: HttpError,
    /// Its text, fit to show.
    pub text: String,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// One instance's API: build requests, show them, send them.
#[derive(Clone)]
pub struct RestApi {
    instance: String,
    label: &'static str,
    base: String,
    token: Option<Secret>,
    auth: Auth,
    http: HttpClient,
    bucket: Option<TokenBucket>,
    retry: RetryPolicy,
    timeout: Option<Duration>,
}

impl std::fmt::Debug for RestApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestApi")
            .field("instance", &self.instance)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl RestApi {
    /// The same API authenticated with `auth` (a project token in its own header, ...).
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    /// How requests are authenticated.
    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// The instance's per-request `timeout`, when it sets one (else the client's default).
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The instance's name.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The base URL (no trailing `/`).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The instance's token, when it has one.
    pub fn token(&self) -> Option<&Secret> {
        self.token.as_ref()
    }

    /// The secrets to mask in anything shown.
    pub fn secrets(&self) -> Vec<&Secret> {
        self.token.iter().collect()
    }

    /// `text` with the token masked.
    pub fn mask(&self, text: &str) -> String {
        let values: Vec<&str> = self.token.iter().map(|t| t.expose()).collect();
        mask_text(text, &values)
    }

    /// `base + path` with `query` appended.
    pub fn url(&self, path: &str, query: &[(&str, &str)]) -> Result<Url, HttpError> {
        let text = format!("{}{path}", self.base);
        let mut url = Url::parse(&text).map_err(|e| HttpError::Invalid {
            url: self.mask(&text),
            reason: e.to_string(),
        })?;
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
        }
        Ok(url)
    }

    /// An authenticated request to `path`.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> Result<HttpRequest, CallError> {
        let url = self
            .url(path, query)
            .map_err(|http| self.call_error(http))?;
        let mut request = HttpRequest::new(method, url).auth(self.auth.clone());
        request.body = body;
        request.timeout = self.timeout;
        Ok(request)
    }

    /// `http` as a [`CallError`], its text with the token masked.
    pub fn call_error(&self, http: HttpError) -> CallError {
        CallError {
            text: self.mask(&http.to_string()),
            http,
        }
    }

    /// The request as a dry-run shows it for a path only known in words once sent
    /// (`/branches/<id of branch `dev`>`): `path_text` goes after the base URL as it is.
    pub fn planned_at(
        &self,
        method: Method,
        path_text: &str,
        body: Option<Value>,
    ) -> PlannedRequest {
        let Ok(base) = Url::parse(&self.base) else {
            return PlannedRequest {
                method: method.to_string(),
                url: format!("{}{path_text}", self.base),
                headers: Vec::new(),
                body,
            };
        };
        let mut request = HttpRequest::new(method, base).auth(self.auth.clone());
        request.body = body;
        let mut planned = request.planned();
        // The auth's query pair (an api-key in the query), if any, stays on the URL.
        let query = Url::parse(&planned.url)
            .ok()
            .and_then(|u| u.query().map(str::to_owned));
        planned.url = match query {
            Some(q) => format!("{}{path_text}?{q}", self.base),
            None => format!("{}{path_text}", self.base),
        };
        planned
    }

    /// Waits for a token from the instance's bucket (when it has a `rate_limit`) and takes
    /// it: for a request not sent by [`RestApi::send`] or [`RestApi::send_once`], such as a
    /// log stream's (re)connect, which must count against the rate limit all the same.
    pub async fn take_token(&self) {
        if let Some(bucket) = &self.bucket {
            bucket.acquire().await;
        }
    }

    /// Sends `request` once through the instance's token bucket, without retries (a poll
    /// whose loop has its own backoff). The request is sent as it is (its own auth).
    pub async fn send_once(&self, request: &HttpRequest) -> Result<HttpResponse, CallError> {
        if let Some(bucket) = &self.bucket {
            bucket.acquire().await;
        }
        self.http
            .send(request)
            .await
            .map_err(|http| self.call_error(http))
    }

    /// Sends `request` through the instance's token bucket, with retries.
    pub async fn send(&self, request: &HttpRequest) -> Result<HttpResponse, CallError> {
        send_with_retry(&self.http, self.bucket.as_ref(), request, &self.retry)
            .await
            .map_err(|http| self.call_error(http))
    }

    /// Sends a request to `path` and reads the answer as `T`.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> Result<T, CallError> {
        let request = self.request(method, path, query, body)?;
        let answer = self.send(&request).await?;
        answer.json::<T>().map_err(|http| self.call_error(http))
    }

    /// `error` as a resource's error for operation `op`: a refused token (401/403) fails for
    /// good naming the instance, a 404 names `what`, an unreachable API is the engine being
    /// unavailable (those resources only); the rest is an operation error (restart policy).
    pub fn resource_error(&self, op: &str, what: &str, error: &CallError) -> ResourceError {
        match &error.http {
            HttpError::Status {
                code: code @ (401 | 403),
                ..
            } => ResourceError::Invalid(format!(
                "{op}: {} refused the token of provider instance `{}` ({code}): {}",
                self.label, self.instance, error.text
            )),
            HttpError::Status { code: 404, .. } => {
                ResourceError::Invalid(format!("{op}: {what} not found (404): {}", error.text))
            }
            HttpError::Connect { reason, .. } => ResourceError::EngineUnavailable {
                engine: format!("{} of provider instance `{}`", self.label, self.instance),
                reason: self.mask(reason),
            },
            _ => ResourceError::op(op, &error.text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx(config: Value, token: Option<&str>) -> InstanceContext {
        let Value::Object(config) = config else {
            panic!("not a table");
        };
        InstanceContext {
            instance: "acct".into(),
            token: token.map(Secret::new),
            base_url: None,
            config,
        }
    }

    #[test]
    fn every_instance_problem_is_reported_at_once() {
        let bad = ctx(
            json!({"base_url": "ftp://x", "rate_limit": "fast", "timeout": "soon"}),
            None,
        );
        let problems = bad
            .api_access(None, TokenNeed::Required("an API key"))
            .err()
            .expect("problems");
        let keys: Vec<_> = problems.iter().filter_map(|p| p.key.as_deref()).collect();
        assert_eq!(
            keys,
            ["base_url", "token", "rate_limit", "timeout"],
            "{problems:?}"
        );
        let zero = ctx(json!({"timeout": "0s"}), None)
            .api_access(Some("http://x"), TokenNeed::Optional)
            .err()
            .expect("a zero timeout is refused");
        assert_eq!(zero[0].key.as_deref(), Some("timeout"), "{zero:?}");
        assert!(
            problems[1]
                .message
                .contains("[providers.acct] needs an API key")
        );

        let good = ctx(json!({"rate_limit": "5/s", "timeout": "2s"}), Some("tok"));
        let access = good
            .api_access(
                Some("https://api.example.com/v2/"),
                TokenNeed::Required("a key"),
            )
            .expect("valid");
        assert_eq!(access.base, "https://api.example.com/v2");
        assert!(access.rate.is_some());
        assert_eq!(access.timeout, Some(Duration::from_secs(2)));
        let missing = ctx(json!({}), None)
            .api_access(None, TokenNeed::Optional)
            .err()
            .expect("no base");
        assert_eq!(missing[0].key.as_deref(), Some("base_url"));
    }

    #[test]
    fn one_bucket_per_instance_and_the_token_never_in_errors() {
        let clients = RestClients::new(
            "the Test API",
            Some("http://127.0.0.1:9"),
            TokenNeed::Optional,
        );
        let instance = ctx(
            json!({"rate_limit": "2/s", "timeout": "750ms"}),
            Some("tok-secret-1"),
        );
        let a = clients.api(&instance).expect("api");
        let b = clients.api(&instance).expect("api");
        let (Some(x), Some(y)) = (&a.bucket, &b.bucket) else {
            panic!("no bucket");
        };
        assert!(x.try_acquire() && x.try_acquire());
        assert!(
            !y.try_acquire(),
            "the two resources do not share the bucket"
        );
        let error = a.call_error(HttpError::Invalid {
            url: "http://127.0.0.1:9/?t=tok-secret-1".into(),
            reason: "tok-secret-1".into(),
        });
        assert!(!error.text.contains("tok-secret-1"), "{}", error.text);
        let request = a
            .request(Method::GET, "/things/a%20b", &[("q", "1")], None)
            .expect("request");
        assert_eq!(
            request.timeout,
            Some(Duration::from_millis(750)),
            "the instance's timeout rides on every request"
        );
        let planned = request.planned();
        assert_eq!(planned.url, "http://127.0.0.1:9/things/a%20b?q=1");
        assert_eq!(planned.headers[0].1, "Bearer tok-secret-1");
        assert_eq!(encode_segment("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn a_path_known_only_in_words_is_shown_as_it_is_with_the_auth() {
        let clients = RestClients::new(
            "the Test API",
            Some("http://127.0.0.1:9/v2"),
            TokenNeed::Optional,
        );
        let api = clients.api(&ctx(json!({}), Some("tok-2"))).expect("api");
        let planned = api.planned_at(Method::DELETE, "/b/<id of branch `x`>", None);
        assert_eq!(planned.url, "http://127.0.0.1:9/v2/b/<id of branch `x`>");
        assert_eq!(planned.headers[0].1, "Bearer tok-2");
        let keyed = api.with_auth(Auth::Query {
            name: "key".into(),
            value: Secret::new("tok-2"),
        });
        let planned = keyed.planned_at(Method::GET, "/b/<x>", Some(json!({"a": 1})));
        assert_eq!(planned.url, "http://127.0.0.1:9/v2/b/<x>?key=tok-2");
        assert_eq!(
            planned.headers,
            [("Content-Type".to_owned(), "application/json".to_owned())]
        );
    }
}
