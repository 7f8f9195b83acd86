//! The request path: pingora's `ProxyHttp` hooks. Routing reads one snapshot per request (no
//! lock); pages are answered here; everything else is forwarded with the usual proxy headers.

use crate::access::{AccessEntry, AccessLog};
use crate::acme::{CHALLENGE_PREFIX, ChallengeStore};
use crate::metrics::{NO_ROUTE, ProxyMetrics};
use crate::pages::{Page, PageKind, Templates, wants_json};
use crate::routes::normalize_host;
use crate::state::{Decision, RouteState};
use crate::upgrade;
use crate::upstream::{Backend, Pool};
use crate::wake::{Flight, WakeOutcome, Wakes};
use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, header};
use kinfra_core::activity::{ActivityGuard, TargetActivity};
use kinfra_core::{Health, ServiceState};
use pingora::ErrorType;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, Result};
use std::borrow::Cow;
use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};

/// The header of the proxy's own readiness probe (answered only with the right token).
pub(crate) const PROBE_HEADER: &str = "x-kinfra-proxy-probe";

/// The dashboard's session cookie (`kinfra_dashboard::auth::SESSION_COOKIE`): a credential
/// of kinfra's own, never forwarded to a service.
pub(crate) const SESSION_COOKIE: &str = "kinfra_session";

/// The header naming the client for the dashboard (`kinfra_dashboard::auth::CLIENT_HEADER`):
/// set on requests to the dashboard, removed from every request a client sent.
pub(crate) const CLIENT_HEADER: &str = "x-kinfra-client";

/// Longest path kept in an access log line.
const MAX_LOGGED_PATH: usize = 256;

/// Header names the request path looks up, parsed once (a `&str` name is parsed on every
/// lookup).
static PROBE_NAME: HeaderName = HeaderName::from_static(PROBE_HEADER);
static CLIENT_NAME: HeaderName = HeaderName::from_static(CLIENT_HEADER);
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Client addresses as header text, most recent first: requests on a keep-alive connection
/// (and clients behind the same address) reuse the text instead of formatting the address
/// for each request.
const CLIENT_TEXTS: usize = 8;

thread_local! {
    static CLIENT_TEXT: RefCell<Vec<(IpAddr, HeaderValue)>> =
        RefCell::new(Vec::with_capacity(CLIENT_TEXTS));
}

/// `ip` as header text (`X-Forwarded-For`, `X-Kinfra-Client`): `192.0.2.1`, `2001:db8::1`;
/// an IPv4-mapped IPv6 address is named as the IPv4 address. Made once per address and
/// thread while it stays among the last few seen; the value shares one buffer.
fn client_text(ip: IpAddr) -> HeaderValue {
    let ip = ip.to_canonical();
    CLIENT_TEXT.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(i) = cache.iter().position(|(seen, _)| *seen == ip) {
            if i > 0 {
                cache[..=i].rotate_right(1);
            }
            return cache[0].1.clone();
        }
        // An address's text is always a valid header value.
        let text = HeaderValue::from_maybe_shared(Bytes::from(ip.to_string()))
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        if cache.len() == CLIENT_TEXTS {
            cache.pop();
        }
        cache.insert(0, (ip, text.clone()));
        text
    })
}

/// Settings read on the request path.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_body: u64,
    /// Redirect plain HTTP to HTTPS on this port.
    pub redirect_https_port: Option<u16>,
}

/// Counts requests being handled, so a graceful shutdown can wait for them.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

impl InFlight {
    fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.clone())
    }

    /// Requests being handled now.
    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Resolves when no request is being handled.
    pub(crate) async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Held by each request's context; the count drops when the request is done (or dropped).
#[derive(Debug)]
pub(crate) struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Everything the hooks share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub routes: Arc<RouteState>,
    pub templates: Templates,
    pub settings: Settings,
    pub inflight: Arc<InFlight>,
    pub access: AccessLog,
    pub challenges: Arc<ChallengeStore>,
    pub probe_token: String,
    /// Requests and latency by route and status class.
    pub metrics: ProxyMetrics,
    /// Wakes of sleeping targets started by requests.
    pub wakes: Arc<Wakes>,
}

/// The pingora application.
pub(crate) struct Edge {
    pub shared: Arc<Shared>,
}

/// Per-request state.
#[derive(Debug)]
pub(crate) struct Ctx {
    _inflight: InFlightGuard,
    started: Instant,
    tls: bool,
    pool: Option<Arc<Pool>>,
    service: Option<Arc<str>>,
    dashboard: bool,
    backend: Option<Arc<Backend>>,
    /// A backend that refused a connection; the retry goes elsewhere.
    exclude: Option<SocketAddr>,
    connect_failures: u8,
    body_bytes: u64,
    upgrade: bool,
    /// The upgrade request's body is held open until the `101` (see [`crate::upgrade`]).
    upgrade_held: bool,
    /// Status of a response the proxy wrote itself.
    own_status: Option<u16>,
    probe: bool,
    /// Open on a target that sleeps when idle, until the request (or the upgraded connection)
    /// ends.
    activity: Option<ActivityGuard>,
}

fn request_host(req: &RequestHeader) -> Option<Cow<'_, str>> {
    if let Some(host) = req.uri.host() {
        return Some(normalize_host(host));
    }
    req.headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(normalize_host)
        .filter(|h| !h.is_empty())
}

/// `X-Forwarded-For`: the client's address appended to what came before it, or the address
/// alone (the cached value itself, no copy) when nothing did.
fn forwarded_for(prev: Option<&HeaderValue>, client: HeaderValue) -> HeaderValue {
    match prev {
        Some(prev) if !prev.as_bytes().trim_ascii().is_empty() => {
            let mut joined = Vec::with_capacity(prev.len() + 2 + client.len());
            joined.extend_from_slice(prev.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(client.as_bytes());
            HeaderValue::from_maybe_shared(Bytes::from(joined)).unwrap_or(client)
        }
        _ => client,
    }
}

/// The `Host` as the client sent it (with port), for `X-Forwarded-Host` (the same buffer,
/// not a copy).
fn original_host(req: &RequestHeader) -> Option<HeaderValue> {
    match req.headers.get(header::HOST) {
        Some(host) => Some(host.clone()),
        None => req
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    }
}

fn is_tls(digest: Option<&Digest>) -> bool {
    digest.is_some_and(|d| d.ssl_digest.is_some())
}

/// Removes the fields named in `Connection` (and the standard hop-by-hop fields) from a
/// response; keeps `Connection`/`Upgrade` on a `101 Switching Protocols`.
fn strip_response_hop_by_hop(resp: &mut ResponseHeader) {
    let switching = resp.status == http::StatusCode::SWITCHING_PROTOCOLS;
    // Names nominated by `Connection` other than its own tokens: rare, so parsed (and
    // allocated) only when there are some.
    let mut nominated: Vec<HeaderName> = Vec::new();
    for value in resp.headers.get_all(header::CONNECTION) {
        for token in value.as_bytes().split(|b| *b == b',') {
            let token = token.trim_ascii();
            if token.is_empty()
                || token.eq_ignore_ascii_case(b"close")
                || token.eq_ignore_ascii_case(b"keep-alive")
                || token.eq_ignore_ascii_case(b"upgrade")
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token) {
                nominated.push(name);
            }
        }
    }
    for name in &nominated {
        resp.remove_header(name);
    }
    // One pass over the (few) names present finds the fixed hop-by-hop ones; a remove of
    // a name that is not there costs as much as a lookup.
    let (mut keep_alive, mut proxy_connection, mut proxy_authenticate) = (false, false, false);
    let (mut connection, mut upgrade) = (false, false);
    for name in resp.headers.keys() {
        if *name == header::CONNECTION {
            connection = true;
        } else if *name == header::UPGRADE {
            upgrade = true;
        } else if *name == header::PROXY_AUTHENTICATE {
            proxy_authenticate = true;
        } else if *name == KEEP_ALIVE {
            keep_alive = true;
        } else if *name == PROXY_CONNECTION {
            proxy_connection = true;
        }
    }
    if keep_alive {
        resp.remove_header(&KEEP_ALIVE);
    }
    if proxy_connection {
        resp.remove_header(&PROXY_CONNECTION);
    }
    if proxy_authenticate {
        resp.remove_header(&header::PROXY_AUTHENTICATE);
    }
    if connection && !switching {
        resp.remove_header(&header::CONNECTION);
    }
    if upgrade && !switching {
        resp.remove_header(&header::UPGRADE);
    }
}

/// The `Cookie` value without kinfra's session cookie: `None` when the cookie is not there
/// (nothing to change), `Some("")` when nothing else is left.
fn without_session_cookie<'a>(values: impl Iterator<Item = &'a HeaderValue>) -> Option<String> {
    let mut found = false;
    let mut kept: Vec<&[u8]> = Vec::new();
    for value in values {
        for pair in value.as_bytes().split(|b| *b == b';') {
            let pair = pair.trim_ascii();
            if pair.is_empty() {
                continue;
            }
            let name = pair
                .split(|b| *b == b'=')
                .next()
                .unwrap_or(pair)
                .trim_ascii();
            if name == SESSION_COOKIE.as_bytes() {
                found = true;
            } else {
                kept.push(pair);
            }
        }
    }
    found.then(|| String::from_utf8_lossy(&kept.join(&b"; "[..])).into_owned())
}

/// Removes kinfra's session cookie from a request for a service, keeping every other cookie
/// (merged into one `Cookie` field); the field goes when nothing is left.
fn strip_session_cookie(req: &mut RequestHeader) -> Result<()> {
    let Some(rest) = without_session_cookie(req.headers.get_all(header::COOKIE).iter()) else {
        return Ok(());
    };
    req.remove_header(&header::COOKIE);
    if !rest.is_empty() {
        req.insert_header(header::COOKIE, rest)?;
    }
    Ok(())
}

/// Why a request is refused before routing, as RFC 9112 asks: `(status, code, title, text)`.
type Refusal = (u16, &'static str, &'static str, &'static str);

/// Checks what pingora lets through but RFC 9112 refuses: a transfer coding other than a
/// single `chunked` (§6.1: 501; pingora already answers 400 when `chunked` is not last), and
/// an HTTP/1.1 request without `Host` (§3.2: 400; pingora refuses two `Host` fields).
fn refusal(req: &RequestHeader) -> Option<Refusal> {
    let mut codings = req
        .headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty());
    if let Some(first) = codings.next()
        && (!first.eq_ignore_ascii_case(b"chunked") || codings.next().is_some())
    {
        return Some((
            501,
            "unsupported_transfer_coding",
            "This transfer coding is not supported",
            "The proxy only accepts request bodies sent as they are or with the chunked \
             transfer coding alone.",
        ));
    }
    if req.version == http::Version::HTTP_11 && !req.headers.contains_key(header::HOST) {
        return Some((
            400,
            "missing_host",
            "The request has no Host",
            "An HTTP/1.1 request must name the host it is for.",
        ));
    }
    None
}

/// `Via` with this proxy appended; a static value when there was none (no allocation).
fn append_via(existing: Option<&HeaderValue>, version: http::Version) -> HeaderValue {
    let me = match version {
        http::Version::HTTP_2 => "2 kinfra",
        http::Version::HTTP_10 => "1.0 kinfra",
        _ => "1.1 kinfra",
    };
    match existing.and_then(|v| v.to_str().ok()) {
        Some(v) if !v.is_empty() => HeaderValue::from_str(&format!("{v}, {me}"))
            .unwrap_or_else(|_| HeaderValue::from_static(me)),
        _ => HeaderValue::from_static(me),
    }
}

impl Edge {
    /// Writes a page (HTML, or JSON when asked) as the whole response.
    async fn respond_page(&self, session: &mut Session, page: &Page, ctx: &mut Ctx) -> Result<()> {
        let json = wants_json(
            session
                .req_header()
                .headers
                .get(header::ACCEPT)
                .map(|v| v.as_bytes()),
        );
        let body = if json {
            page.to_json()
        } else {
            self.shared.templates.render(page)
        };
        let mut resp = ResponseHeader::build(page.status, Some(6))?;
        resp.insert_header(
            header::CONTENT_TYPE,
            if json {
                "application/json"
            } else {
                "text/html; charset=utf-8"
            },
        )?;
        resp.insert_header(header::CACHE_CONTROL, "no-store")?;
        if matches!(page.status, 502..=504 | 429) {
            resp.insert_header(header::RETRY_AFTER, page.retry_after.to_string())?;
        }
        resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
        resp.insert_header("x-kinfra-page", page.code)?;
        ctx.own_status = Some(page.status);
        let head = session.req_header().method == http::Method::HEAD;
        session.write_response_header(Box::new(resp), head).await?;
        if !head {
            session
                .write_response_body(Some(Bytes::from(body)), true)
                .await?;
        }
        Ok(())
    }

    /// Writes a short plain response (probe, redirect, ACME).
    async fn respond_plain(
        &self,
        session: &mut Session,
        status: u16,
        headers: &[(http::HeaderName, String)],
        body: &str,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let mut resp = ResponseHeader::build(status, Some(4))?;
        for (name, value) in headers {
            resp.insert_header(name.clone(), value.as_str())?;
        }
        resp.insert_header(header::CACHE_CONTROL, "no-store")?;
        resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
        ctx.own_status = Some(status);
        let head = session.req_header().method == http::Method::HEAD || body.is_empty();
        session.write_response_header(Box::new(resp), head).await?;
        if !head {
            session
                .write_response_body(Some(Bytes::copy_from_slice(body.as_bytes())), true)
                .await?;
        }
        Ok(())
    }

    /// A request for a target that sleeps (or is on its way to sleep, or waking): a browser
    /// gets `page` (loading, refreshing itself) while the wake goes on in the background;
    /// any other request waits, unanswered and with its body unread, until the wake succeeded
    /// and the snapshot serves the target (then it is routed again), the wake failed or timed
    /// out (a 503 page), or the client went away (an error, nothing written).
    #[allow(clippy::too_many_arguments)]
    async fn wake(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        host: Option<&str>,
        path: &str,
        service: Arc<str>,
        page: Arc<Page>,
        activity: Arc<TargetActivity>,
        asleep: bool,
    ) -> Result<Decision> {
        let shared = &*self.shared;
        ctx.activity = Some(activity.begin());
        if asleep
            && let Some(page) = shared
                .wakes
                .recent_failure(&service)
                .and_then(|failed| failed.page(&service))
        {
            return Ok(Decision::Page(Arc::new(page)));
        }
        let timeout = activity.wake_timeout();
        // A target already starting is only waited for (or the wake in flight joined).
        let mut flight = shared.wakes.join(&service, timeout, asleep);
        if is_browser(session.req_header()) {
            return Ok(Decision::Page(page));
        }
        shared.wakes.metrics.held(&service);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut routes = shared.routes.subscribe();
        // Nothing to wait for but the target itself, when there is no wake.
        let mut resolved = flight.is_none();
        let gone = client_gone(session, ctx.upgrade);
        tokio::pin!(gone);
        loop {
            routes.borrow_and_update();
            let outcome = flight.as_mut().and_then(|f| f.borrow_and_update().clone());
            if let Some(page) = outcome.as_ref().and_then(|o| o.page(&service)) {
                return Ok(Decision::Page(Arc::new(page)));
            }
            resolved = resolved || outcome.is_some();
            let decision = shared.routes.load().decide(host, path);
            if flight.is_none()
                && let Decision::Wake {
                    service: to,
                    asleep: true,
                    ..
                } = &decision
                && *to == service
            {
                // It went (back) to sleep while this request waited for it to start.
                if let Some(page) = shared
                    .wakes
                    .recent_failure(&service)
                    .and_then(|failed| failed.page(&service))
                {
                    return Ok(Decision::Page(Arc::new(page)));
                }
                flight = shared.wakes.join(&service, timeout, true);
                resolved = false;
                continue;
            }
            let settled = match &decision {
                // Served (and woken), or routed elsewhere by a reload.
                Decision::Proxy { service: to, .. } => resolved || to.as_deref() != Some(&*service),
                // Maintenance wins; a page for another target (the route changed) too. Any
                // other page (a crash while starting, say) waits for the wake's own outcome.
                Decision::Page(page) => {
                    resolved
                        || page.kind == PageKind::Maintenance
                        || page.service.as_deref() != Some(&*service)
                }
                Decision::Wake { service: to, .. } => *to != service,
            };
            if settled {
                return Ok(decision);
            }
            tokio::select! {
                changed = flight_changed(&mut flight), if !resolved => {
                    if changed.is_err() {
                        let abandoned = WakeOutcome::Failed("The wake was abandoned.".into());
                        return Ok(Decision::Page(Arc::new(
                            abandoned.page(&service).unwrap_or_else(|| (*page).clone()),
                        )));
                    }
                }
                _ = routes.changed() => {}
                () = tokio::time::sleep_until(deadline) => {
                    let late = WakeOutcome::TimedOut(format!(
                        "It was not ready within {timeout:?}."
                    ));
                    return Ok(Decision::Page(Arc::new(
                        late.page(&service).unwrap_or_else(|| (*page).clone()),
                    )));
                }
                () = &mut gone => {
                    let mut e = Error::explain(
                        ErrorType::ConnectionClosed,
                        "the client went away while its request waited for a wake",
                    );
                    e.as_down();
                    return Err(e);
                }
            }
        }
    }

    /// Settles the decision for a target that sleeps when idle: wakes it (or waits for it)
    /// when it is not servable, and counts the request as open before it reads the sleep
    /// flag (see `TargetActivity::try_drain`): a target the runtime decided to put to sleep
    /// gets no new request; this one waits for the wake after the sleep (or gets the
    /// sleeping page, for a target requests do not wake).
    async fn settle(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        host: Option<&str>,
        path: &str,
        mut decision: Decision,
    ) -> Result<Decision> {
        loop {
            decision = match decision {
                Decision::Wake {
                    service,
                    page,
                    activity,
                    asleep,
                } => {
                    self.wake(session, ctx, host, path, service, page, activity, asleep)
                        .await?
                }
                other => other,
            };
            let Decision::Proxy {
                service: Some(service),
                activity: Some(activity),
                ..
            } = &decision
            else {
                return Ok(decision);
            };
            if ctx.activity.is_none() {
                ctx.activity = Some(activity.begin());
            }
            if !activity.is_draining() {
                return Ok(decision);
            }
            let page = Arc::new(
                Page::for_service(service, ServiceState::Sleeping, Health::Unknown, "")
                    .unwrap_or_else(|| Page::maintenance(Some(service))),
            );
            decision = if activity.wakes_on_request() {
                Decision::Wake {
                    service: service.clone(),
                    page,
                    activity: activity.clone(),
                    asleep: true,
                }
            } else {
                Decision::Page(page)
            };
        }
    }

    fn page_for_error(&self, ctx: &Ctx, code: u16, e: &Error) -> Page {
        match code {
            413 => Page::plain(
                413,
                "body_too_large",
                "The request is too large",
                "The request body is larger than this server accepts.",
            ),
            400 => Page::plain(
                400,
                "bad_request",
                "The request could not be understood",
                "The request was malformed.",
            ),
            502..=504 => {
                let who = if ctx.dashboard {
                    Some("The kinfra dashboard")
                } else {
                    ctx.service.as_deref()
                };
                Page::unreachable(who, code, friendly_error(e))
            }
            _ => Page::plain(
                code,
                "proxy_error",
                "Something went wrong",
                "The proxy could not handle this request.",
            ),
        }
    }
}

/// A browser navigating: `GET`/`HEAD` accepting HTML. It gets the loading page, which
/// refreshes itself, instead of waiting without a word.
fn is_browser(req: &RequestHeader) -> bool {
    (req.method == http::Method::GET || req.method == http::Method::HEAD)
        && req.headers.get_all(header::ACCEPT).iter().any(|v| {
            v.as_bytes()
                .windows(9)
                .any(|w| w.eq_ignore_ascii_case(b"text/html"))
        })
}

/// Resolves when the outcome of the wake (if any) is announced; `Err` when the wake was
/// dropped without one.
async fn flight_changed(flight: &mut Option<Flight>) -> Result<(), watch::error::RecvError> {
    match flight {
        Some(flight) => flight.changed().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the client of a waiting request has gone away: an HTTP/2 stream reset, or
/// an HTTP/1 connection closed while no body is expected. A request with a body (whose body
/// must stay unread) or an upgrade is not watched; its wait ends with the wake timeout.
async fn client_gone(session: &mut Session, upgrade: bool) {
    if let Some(reset) = session.watch_h2_stream_close() {
        let _ = reset.await;
        return;
    }
    if upgrade || !session.is_body_empty() {
        return std::future::pending().await;
    }
    // Pends while the connection is open (bytes of a pipelined request are kept for later);
    // fails when the client closed it.
    let _ = session.read_body_or_idle(true).await;
}

/// A short reason for people, without internals.
fn friendly_error(e: &Error) -> &'static str {
    match e.etype() {
        ErrorType::ConnectRefused => "The connection was refused.",
        ErrorType::ConnectTimedout => "Connecting timed out.",
        ErrorType::ConnectNoRoute => "There is no route to it.",
        ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert | ErrorType::HandshakeError => {
            "The secure connection to it failed."
        }
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => "It did not answer in time.",
        ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError => {
            "The connection to it was closed unexpectedly."
        }
        ErrorType::InvalidHTTPHeader | ErrorType::H1Error | ErrorType::H2Error => {
            "It sent a response that is not valid HTTP."
        }
        _ => "It could not be reached.",
    }
}

/// The status for a final error: connect failures are 503 (the service is not there), time-outs
/// 504, other upstream failures 502; 0 when the client is gone.
fn status_for(e: &Error) -> u16 {
    match e.etype() {
        ErrorType::HTTPStatus(code) => *code,
        ErrorType::ConnectRefused
        | ErrorType::ConnectTimedout
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::SocketError
        | ErrorType::BindError => 503,
        ErrorType::TLSHandshakeFailure
        | ErrorType::TLSHandshakeTimedout
        | ErrorType::InvalidCert
        | ErrorType::HandshakeError => match e.esource() {
            ErrorSource::Downstream => 0,
            _ => 502,
        },
        etype => match e.esource() {
            ErrorSource::Upstream => match etype {
                ErrorType::ReadTimedout | ErrorType::WriteTimedout => 504,
                _ => 502,
            },
            ErrorSource::Downstream => match etype {
                ErrorType::WriteError
                | ErrorType::ReadError
                | ErrorType::ConnectionClosed
                | ErrorType::ReadTimedout
                | ErrorType::WriteTimedout => 0,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

#[async_trait]
impl ProxyHttp for Edge {
    type CTX = Ctx;

    /// No downstream modules: kinfra does not compress responses, so requests skip the
    /// (disabled) compression module pingora would add by default.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> Ctx {
        Ctx {
            _inflight: self.shared.inflight.enter(),
            started: Instant::now(),
            tls: false,
            pool: None,
            service: None,
            dashboard: false,
            backend: None,
            exclude: None,
            connect_failures: 0,
            body_bytes: 0,
            upgrade: false,
            upgrade_held: false,
            own_status: None,
            probe: false,
            activity: None,
        }
    }

    /// Serve pipelined HTTP/1.1 requests one after the other (RFC 9112 §9.3.2) instead of
    /// pingora's default of dropping what follows the first request and closing.
    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut Ctx) -> Result<()> {
        session.set_pipelining_enabled(true);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let shared = &*self.shared;
        if let Some((status, code, title, text)) = refusal(session.req_header()) {
            // The body's framing cannot be trusted: answer and close without reading it.
            session.set_keepalive(None);
            let page = Page::plain(status, code, title, text);
            self.respond_page(session, &page, ctx).await?;
            return Ok(true);
        }
        let req = session.req_header();
        if let Some(token) = req.headers.get(&PROBE_NAME)
            && token.as_bytes() == shared.probe_token.as_bytes()
        {
            ctx.probe = true;
            self.respond_plain(session, 204, &[], "", ctx).await?;
            return Ok(true);
        }
        ctx.tls = is_tls(session.digest());
        ctx.upgrade = session.is_upgrade_req();
        let req = session.req_header();
        let host = request_host(req);
        let path = req.uri.path();

        if !ctx.tls && path.starts_with(CHALLENGE_PREFIX) && shared.challenges.may_answer() {
            let token = &path[CHALLENGE_PREFIX.len()..];
            if let Some(answer) = shared.challenges.answer(token).await {
                let ct = [(header::CONTENT_TYPE, "text/plain".to_owned())];
                self.respond_plain(session, 200, &ct, &answer, ctx).await?;
                return Ok(true);
            }
        }

        if let (false, Some(port), Some(h)) = (ctx.tls, shared.settings.redirect_https_port, &host)
            && !path.starts_with(CHALLENGE_PREFIX)
        {
            let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
            let location = if port == 443 {
                format!("https://{h}{pq}")
            } else {
                format!("https://{h}:{port}{pq}")
            };
            let loc = [(header::LOCATION, location)];
            self.respond_plain(session, 308, &loc, "", ctx).await?;
            return Ok(true);
        }

        let declared = req
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|len| len > shared.settings.max_body) {
            let page = Page::plain(
                413,
                "body_too_large",
                "The request is too large",
                "The request body is larger than this server accepts.",
            );
            session.set_keepalive(None);
            self.respond_page(session, &page, ctx).await?;
            return Ok(true);
        }

        let decision = match shared.routes.load().decide(host.as_deref(), path) {
            // Only requests for targets that sleep pay for owned copies.
            decision @ (Decision::Wake { .. }
            | Decision::Proxy {
                activity: Some(_), ..
            }) => {
                let host = host.map(Cow::into_owned);
                let path = path.to_owned();
                self.settle(session, ctx, host.as_deref(), &path, decision)
                    .await?
            }
            other => other,
        };
        match decision {
            Decision::Page(page) | Decision::Wake { page, .. } => {
                // Counted (and logged) under the service the page stands in for.
                ctx.service = page.service.as_deref().map(Arc::from);
                self.respond_page(session, &page, ctx).await?;
                Ok(true)
            }
            Decision::Proxy {
                pool,
                service,
                new_path,
                dashboard,
                activity,
            } => {
                if let Some(activity) = activity
                    && ctx.activity.is_none()
                {
                    ctx.activity = Some(activity.begin());
                }
                ctx.pool = Some(pool);
                ctx.service = service;
                ctx.dashboard = dashboard;
                if ctx.upgrade {
                    ctx.upgrade_held = upgrade::hold_body_open(session);
                }
                if let Some(new_path) = new_path {
                    let req = session.req_header_mut();
                    let pq = match req.uri.query() {
                        Some(q) => format!("{new_path}?{q}"),
                        None => new_path,
                    };
                    let mut parts = req.uri.clone().into_parts();
                    parts.path_and_query = Some(
                        pq.parse()
                            .map_err(|_| Error::explain(ErrorType::HTTPStatus(400), "bad path"))?,
                    );
                    let uri = http::Uri::from_parts(parts)
                        .map_err(|_| Error::explain(ErrorType::HTTPStatus(400), "bad uri"))?;
                    req.set_uri(uri);
                }
                Ok(false)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(pool) = ctx.pool.as_ref() else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no upstream chosen",
            ));
        };
        let Some(backend) = pool.pick(ctx.exclude) else {
            return Err(Error::explain(
                ErrorType::ConnectRefused,
                "no other upstream to try",
            ));
        };
        let s = &self.shared.settings;
        let mut peer = HttpPeer::new(backend.addr, backend.tls, backend.sni.clone());
        peer.options.connection_timeout = Some(s.connect_timeout);
        peer.options.total_connection_timeout = Some(s.connect_timeout * 2);
        peer.options.idle_timeout = Some(s.idle_timeout);
        if !ctx.upgrade {
            peer.options.read_timeout = Some(s.read_timeout);
            peer.options.write_timeout = Some(s.read_timeout);
        }
        ctx.backend = Some(backend);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.connect_failures = ctx.connect_failures.saturating_add(1);
        let retry = match (&ctx.pool, &ctx.backend) {
            (Some(pool), Some(backend)) => {
                pool.mark_failed(backend);
                ctx.exclude = Some(backend.addr);
                ctx.connect_failures < 2 && pool.has_other(backend.addr)
            }
            _ => false,
        };
        e.set_retry(retry);
        e
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(backend) = &ctx.backend {
            Pool::mark_ok(backend);
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if ctx.upgrade {
            return Ok(());
        }
        if let Some(chunk) = body {
            ctx.body_bytes += chunk.len() as u64;
            if ctx.body_bytes > self.shared.settings.max_body {
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body larger than proxy.max_body_size",
                ));
            }
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // The client's address as text, made once per address (not per request).
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| client_text(a.ip()));
        // Whatever a client says about itself in this header is not believed anywhere.
        upstream.remove_header(&CLIENT_NAME);
        if ctx.dashboard {
            // The dashboard decides who may read by the client's address as seen here; an
            // unknown one is sent as such (unparsable, so the dashboard counts it remote).
            let named = client
                .clone()
                .unwrap_or_else(|| HeaderValue::from_static("unknown"));
            upstream.insert_header(CLIENT_HEADER, named)?;
        } else {
            strip_session_cookie(upstream)?;
        }
        if let Some(text) = client {
            let xff = forwarded_for(upstream.headers.get(&X_FORWARDED_FOR), text);
            upstream.insert_header("x-forwarded-for", xff)?;
        }
        upstream.insert_header(
            "x-forwarded-proto",
            HeaderValue::from_static(if ctx.tls { "https" } else { "http" }),
        )?;
        match original_host(session.req_header()) {
            Some(host) => upstream.insert_header("x-forwarded-host", host)?,
            None => {
                upstream.remove_header(&X_FORWARDED_HOST);
            }
        }
        let via = append_via(
            upstream.headers.get(header::VIA),
            session.req_header().version,
        );
        upstream.insert_header(header::VIA, via)?;
        if ctx.upgrade_held {
            upgrade::frame_upstream(upstream)?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if ctx.upgrade_held {
            upgrade::answered(session, resp);
        }
        strip_response_hop_by_hop(resp);
        let via = append_via(resp.headers.get(header::VIA), session.req_header().version);
        resp.insert_header(header::VIA, via)?;
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let code = status_for(e);
        tracing::debug!(
            service = ctx.service.as_deref().unwrap_or("-"),
            upstream = ?ctx.backend.as_ref().map(|b| b.addr),
            error = %e,
            status = code,
            "Proxying failed."
        );
        if code > 0 && session.response_written().is_none() {
            let page = self.page_for_error(ctx, code, e);
            if code >= 500 || code == 413 {
                session.set_keepalive(None);
            }
            if let Err(write_error) = self.respond_page(session, &page, ctx).await {
                tracing::debug!(error = %write_error, "Could not send an error page.");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, _error: &Error) -> bool {
        true
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        // The request (or the upgraded connection) is over for its target.
        ctx.activity = None;
        if ctx.probe {
            return;
        }
        let status = ctx
            .own_status
            .or_else(|| session.response_written().map(|r| r.status.as_u16()))
            .unwrap_or(0);
        let micros = ctx.started.elapsed().as_micros() as u64;
        let route = match (&ctx.service, ctx.dashboard) {
            (_, true) => "dashboard",
            (Some(service), false) => service,
            (None, false) => NO_ROUTE,
        };
        self.shared.metrics.record(route, status, micros);
        if !AccessLog::enabled() {
            return;
        }
        let req = session.req_header();
        let mut path: String = req
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .chars()
            .take(MAX_LOGGED_PATH)
            .collect();
        if path.is_empty() {
            path.push('/');
        }
        self.shared.access.send(AccessEntry {
            method: req.method.clone(),
            host: request_host(req).map(Cow::into_owned),
            path,
            status,
            micros,
            client: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
            upstream: ctx.backend.as_ref().map(|b| b.addr),
            service: ctx.service.clone(),
            bytes: session.body_bytes_sent(),
            error: e.map(|e| e.etype().as_str().to_owned()),
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn via_is_appended() {
        assert_eq!(append_via(None, http::Version::HTTP_11), "1.1 kinfra");
        let prev = HeaderValue::from_static("1.1 edge");
        assert_eq!(
            append_via(Some(&prev), http::Version::HTTP_2),
            "1.1 edge, 2 kinfra"
        );
    }

    #[test]
    fn client_text_is_right_for_every_address_it_is_asked_for() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let mapped: IpAddr = "::ffff:198.51.100.2".parse().unwrap();
        // Twice each (the second from the cache), interleaved, and more addresses than the
        // cache keeps, so entries are evicted and made again.
        for round in 0..3 {
            assert_eq!(client_text(v4), "192.0.2.7", "round {round}");
            assert_eq!(client_text(v6), "2001:db8::1", "round {round}");
            assert_eq!(client_text(mapped), "198.51.100.2", "round {round}");
            assert_eq!(client_text(v4), "192.0.2.7", "round {round}");
            for n in 0..(CLIENT_TEXTS as u8 + 2) {
                let ip = IpAddr::from([10, 0, round, n]);
                assert_eq!(client_text(ip), format!("10.0.{round}.{n}"));
            }
        }
        // Another thread has its own cache and the same answers.
        std::thread::spawn(move || assert_eq!(client_text(v6), "2001:db8::1"))
            .join()
            .unwrap();
    }

    #[test]
    fn forwarding_headers_are_right_on_every_request() {
        // The values reused across requests (the client's text, the static Via and
        // X-Forwarded-Proto) must not carry anything from one request into the next.
        let build = |xff: Option<&'static str>| {
            let mut req = RequestHeader::build("GET", b"/", None).unwrap();
            req.insert_header("host", "a.test:8080").unwrap();
            if let Some(xff) = xff {
                req.insert_header("x-forwarded-for", xff).unwrap();
            }
            req
        };
        let ip: IpAddr = "203.0.113.5".parse().unwrap();
        for (prev, want) in [
            (None, "203.0.113.5"),
            (Some("198.51.100.1"), "198.51.100.1, 203.0.113.5"),
            (Some("  "), "203.0.113.5"),
            (None, "203.0.113.5"),
        ] {
            let mut req = build(prev);
            let xff = forwarded_for(req.headers.get(&X_FORWARDED_FOR), client_text(ip));
            req.insert_header("x-forwarded-for", xff).unwrap();
            assert_eq!(req.headers["x-forwarded-for"], want);
            assert_eq!(original_host(&req).unwrap(), "a.test:8080");
        }
    }

    #[test]
    fn only_the_session_cookie_is_removed() {
        let strip = |values: &[&'static str]| {
            let values: Vec<HeaderValue> =
                values.iter().map(|v| HeaderValue::from_static(v)).collect();
            without_session_cookie(values.iter())
        };
        assert_eq!(strip(&["a=1; b=2"]), None);
        assert_eq!(strip(&["kinfra_session=x"]), Some(String::new()));
        assert_eq!(
            strip(&["a=1; kinfra_session=x;b=2", "kinfra_session=y; c=3"]),
            Some("a=1; b=2; c=3".into())
        );
        assert_eq!(
            strip(&["kinfra_sessionx=1; kinfra_session=2"]),
            Some("kinfra_sessionx=1".into())
        );
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("cookie", "kinfra_session=x; a=1")
            .unwrap();
        req.append_header("cookie", "b=2").unwrap();
        strip_session_cookie(&mut req).unwrap();
        assert_eq!(req.headers.get_all("cookie").iter().count(), 1);
        assert_eq!(req.headers["cookie"], "a=1; b=2");
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("cookie", " kinfra_session=x ").unwrap();
        strip_session_cookie(&mut req).unwrap();
        assert!(req.headers.get("cookie").is_none());
    }

    #[test]
    fn transfer_codings_and_host() {
        let req = |version: http::Version, headers: &[(&str, &str)]| {
            let mut r = RequestHeader::build("POST", b"/", None).unwrap();
            r.set_version(version);
            for (k, v) in headers {
                r.append_header(k.to_string(), *v).unwrap();
            }
            r
        };
        let status = |r: &RequestHeader| refusal(r).map(|(status, ..)| status);
        let v11 = http::Version::HTTP_11;
        assert_eq!(status(&req(v11, &[("host", "a")])), None);
        assert_eq!(
            status(&req(
                v11,
                &[("host", "a"), ("transfer-encoding", "Chunked")]
            )),
            None
        );
        for te in ["gzip, chunked", "chunked, chunked", "identity", "gzip"] {
            let r = req(v11, &[("host", "a"), ("transfer-encoding", te)]);
            assert_eq!(status(&r), Some(501), "{te}");
        }
        let r = req(
            v11,
            &[
                ("host", "a"),
                ("transfer-encoding", "gzip"),
                ("transfer-encoding", "chunked"),
            ],
        );
        assert_eq!(status(&r), Some(501));
        assert_eq!(status(&req(v11, &[])), Some(400));
        assert_eq!(status(&req(http::Version::HTTP_10, &[])), None);
        assert_eq!(status(&req(http::Version::HTTP_2, &[])), None);
    }

    #[test]
    fn response_hop_by_hop_is_removed() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("connection", "Keep-Alive, X-Secret, ,close")
            .unwrap();
        resp.insert_header("x-secret", "1").unwrap();
        resp.insert_header("keep-alive", "timeout=5").unwrap();
        resp.insert_header("x-kept", "1").unwrap();
        strip_response_hop_by_hop(&mut resp);
        assert!(resp.headers.get("x-secret").is_none());
        assert!(resp.headers.get("keep-alive").is_none());
        assert!(resp.headers.get("connection").is_none());
        assert!(resp.headers.get("x-kept").is_some());
        let mut up = ResponseHeader::build(101, None).unwrap();
        up.insert_header("connection", "upgrade").unwrap();
        up.insert_header("upgrade", "websocket").unwrap();
        strip_response_hop_by_hop(&mut up);
        assert!(up.headers.get("connection").is_some());
        assert!(up.headers.get("upgrade").is_some());
    }

    #[test]
    fn error_statuses() {
        let e = Error::explain(ErrorType::ConnectRefused, "x");
        assert_eq!(status_for(&e), 503);
        let mut e = Error::explain(ErrorType::ReadTimedout, "x");
        e.as_up();
        assert_eq!(status_for(&e), 504);
        let mut e = Error::explain(ErrorType::ReadError, "x");
        e.as_down();
        assert_eq!(status_for(&e), 0);
        let e = Error::explain(ErrorType::HTTPStatus(413), "x");
        assert_eq!(status_for(&e), 413);
    }
}
