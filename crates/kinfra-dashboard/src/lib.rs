//! kinfra's dashboard listener: the `/kinfra` page, the JSON status API, the live event
//! stream, actions, log views and metrics.
//!
//! It knows nothing of the supervisor, store or proxy: everything it shows or does goes
//! through [`kinfra_core::view::RuntimeControl`]. Access rules are in [`auth`]; the server
//! loop with its timeouts and connection cap in `server`.

pub mod accept;
pub mod auth;
mod command;
mod fleet;
pub mod history;
pub mod metrics;
mod server;
pub mod sse;

use auth::{AccessPolicy, Client, ConnectionEnds, Denied};
use axum::Router;
use axum::extract::{Extension, Form, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Json, Redirect, Response};
use axum::routing::{get, post};
use kinfra_core::status::{BacklogJoin, ServiceLogLine};
use kinfra_core::view::{Action, ActionError, RuntimeControl};
use serde::Deserialize;
use sse::EventHistory;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

pub use auth::generate_token;
pub use server::ConnectionLimits;

/// The pages and assets, from `web/`, compiled into the binary.
mod assets {
    pub const DASHBOARD_HTML: &str = include_str!("../../../web/kinfra.html");
    pub const DASHBOARD_JS: &str = include_str!("../../../web/kinfra.js");
    pub const STYLE_CSS: &str = include_str!("../../../web/kinfra.css");
    pub const LOGS_HTML: &str = include_str!("../../../web/logs.html");
    pub const LOGS_JS: &str = include_str!("../../../web/logs.js");
    pub const LOGIN_HTML: &str = include_str!("../../../web/login.html");
    pub const LOGIN_JS: &str = include_str!("../../../web/login.js");
}

/// Content-Security-Policy of every page: scripts and styles only from the dashboard itself.
const CSP: &str = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Why the dashboard could not start.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    /// The listen address is not `host:port`.
    #[error("dashboard.listen `{addr}` is not a valid address: {reason}")]
    BadAddress {
        /// The address as configured.
        addr: String,
        /// Why it does not parse.
        reason: String,
    },
    /// Binding beyond loopback without a configured token.
    #[error(
        "dashboard.listen `{addr}` is reachable from other machines: set dashboard.token (or KINFRA_DASHBOARD_TOKEN) to allow that"
    )]
    TokenRequired {
        /// The address.
        addr: SocketAddr,
    },
    /// Binding failed (port taken, no permission).
    #[error("cannot listen on {addr} for the dashboard: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Shared by every handler.
#[derive(Clone)]
struct AppState {
    control: Arc<dyn RuntimeControl>,
    policy: Arc<AccessPolicy>,
    history: Arc<EventHistory>,
    /// The plots' points, recorded while the page reads them.
    plots: Arc<history::PlotHistory>,
    /// Becomes true when the server shuts down: open streams end.
    closing: watch::Receiver<bool>,
}

/// What the dashboard needs besides the runtime.
#[derive(Debug, Clone)]
pub struct DashboardOptions {
    /// Access rules.
    pub policy: AccessPolicy,
    /// Event history for resuming streams; fed by [`EventHistory::record`].
    pub history: Arc<EventHistory>,
    /// Timeouts and the connection cap of the server.
    pub limits: ConnectionLimits,
}

/// The HTTP routes, on top of a runtime.
pub fn router(control: Arc<dyn RuntimeControl>, options: DashboardOptions) -> Router {
    let (closing_tx, closing) = watch::channel(false);
    // A router without a server never closes its streams by itself.
    std::mem::forget(closing_tx);
    router_closing(control, options, closing)
}

fn router_closing(
    control: Arc<dyn RuntimeControl>,
    options: DashboardOptions,
    closing: watch::Receiver<bool>,
) -> Router {
    let state = AppState {
        control,
        policy: Arc::new(options.policy),
        history: options.history,
        plots: Arc::default(),
        closing,
    };
    let guarded = Router::new()
        .route("/kinfra", get(dashboard_page))
        .route("/kinfra/", get(dashboard_page))
        .route("/kinfra/assets/{file}", get(asset))
        .route("/kinfra/login", get(login_page).post(login))
        .route("/kinfra/logout", post(logout))
        .route("/kinfra/session", get(session))
        .route("/__status__", get(status))
        .route("/__events__", get(events))
        .route("/kinfra/fleet", get(fleet::fleet_page))
        .route("/__fleet__", get(fleet::fleet_json))
        .route("/__fleet__/events", get(fleet::fleet_events))
        .route("/kinfra/history", get(plot_history))
        .route("/__action__/command/{resource}", post(command::command))
        .route("/__commands__/{resource}", get(command::commands))
        .route("/__action__/{action}/{service}", post(action))
        .route("/__logs__/{service}", get(logs))
        .route("/__logs__/{service}/stream", get(log_stream))
        .route("/metrics", get(metrics_text))
        .layer(middleware::from_fn_with_state(state.clone(), check_host));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(guarded)
        .with_state(state)
}

fn json_error(status: StatusCode, error: impl Into<String>) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        Json(serde_json::json!({ "success": false, "error": error.into() })),
    )
        .into_response()
}

fn denied(d: &Denied) -> Response {
    json_error(d.status(), d.message())
}

/// Refuses foreign `Host`s and notes who the client is (for the read rule).
async fn check_host(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    if let Err(d) = state.policy.check_host(request.headers()) {
        return denied(&d);
    }
    let ends = request.extensions().get::<ConnectionEnds>().copied();
    let client = Client::of(ends, request.headers());
    request.extensions_mut().insert(client);
    next.run(request).await
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// An HTML page with the dashboard's security headers (no caching, no framing, the CSP).
pub(crate) fn page(html: impl Into<axum::body::Body>) -> Response {
    let html: axum::body::Body = html.into();
    (
        StatusCode::OK,
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::REFERRER_POLICY, "same-origin"),
        ],
        Html(html),
    )
        .into_response()
}

async fn dashboard_page(
    State(state): State<AppState>,
    Extension(client): Extension<Client>,
    headers: HeaderMap,
) -> Response {
    if state.policy.check_read(&headers, &client).is_err() {
        return Redirect::to("/kinfra/login").into_response();
    }
    page(assets::DASHBOARD_HTML)
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "kinfra.js" => (assets::DASHBOARD_JS, "text/javascript; charset=utf-8"),
        "kinfra.css" => (assets::STYLE_CSS, "text/css; charset=utf-8"),
        "logs.js" => (assets::LOGS_JS, "text/javascript; charset=utf-8"),
        "login.js" => (assets::LOGIN_JS, "text/javascript; charset=utf-8"),
        _ => return json_error(StatusCode::NOT_FOUND, format!("no asset `{file}`")),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn login_page() -> Response {
    page(assets::LOGIN_HTML)
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    State(state): State<AppState>,
    Extension(client): Extension<Client>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if let Err(d) = state.policy.check_same_origin(&headers, true) {
        return denied(&d);
    }
    if !state.policy.accepts_token(&form.token) {
        tracing::warn!("Dashboard login with a wrong token.");
        return json_error(StatusCode::UNAUTHORIZED, "wrong token");
    }
    let id = match state.policy.open_session() {
        Ok(id) => id,
        Err(error) => {
            tracing::error!(%error, "Cannot create a dashboard session.");
            return json_error(StatusCode::INTERNAL_SERVER_ERROR, "cannot create a session");
        }
    };
    with_cookies(
        Redirect::to("/kinfra").into_response(),
        state.policy.session_cookies(&id, client.https),
    )
}

/// Adds `Set-Cookie` headers to a response.
fn with_cookies(mut response: Response, cookies: Vec<String>) -> Response {
    for cookie in cookies {
        match HeaderValue::from_str(&cookie) {
            Ok(value) => {
                response.headers_mut().append(header::SET_COOKIE, value);
            }
            Err(_) => {
                return json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot set the session cookie",
                );
            }
        }
    }
    response
}

async fn logout(
    State(state): State<AppState>,
    Extension(client): Extension<Client>,
    headers: HeaderMap,
) -> Response {
    if let Err(d) = state.policy.check_same_origin(&headers, true) {
        return denied(&d);
    }
    state.policy.close_sessions(&headers);
    with_cookies(
        Redirect::to("/kinfra/login").into_response(),
        state.policy.clearing_cookies(client.https),
    )
}

async fn session(
    State(state): State<AppState>,
    Extension(client): Extension<Client>,
    headers: HeaderMap,
) -> Response {
    Json(serde_json::json!({
        "authenticated": state.policy.is_authenticated(&headers),
        "can_read": state.policy.check_read(&headers, &client).is_ok(),
    }))
    .into_response()
}

async fn status(
    State(state): State<AppState>,
    Extension(client): Extension<Client>,
    headers: HeaderMap,
) -> Response {
    if let Err(d) = state.policy.check_read(&headers, &client) {
        return denied(&d);
    }
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(state.control.status()),
    )
        .into_response()
}

#[derive(Deserialize)]
struct SinceQuery {
    /// Unix seconds: only points read at or after this.
    since: Option<f64>,
}

/// The plots' points (`GET /kinfra/history?since=T`; under `/kinfra`, so the proxy's reserved
/// paths and the session cookie already cover it): a read records the current step (so the
/// history grows while the page is open and asks, and nothing is sampled otherwise) and
/// returns the points since `since`.
async fn plot_history(
    State(state): State<AppState>,
    Extension(client): Extension<Client>,
    headers: HeaderMap,
    Query(query): Query<SinceQuery>,
) -> Response {
    if let Err(d) = state.policy.check_read(&headers, &client) {
        return denied(&d);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    state
        .plots
        .record(now, &state.control.status(), &state.control.route_totals());
    let since = query.since.filter(|s| s.is_finite()).unwrap_or(0.0);
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(state.plots.view(now, since)),
    )
        .into_response()
}

#[derive(Deserialize)]
struct ResumeQuery {
    last_event_id: Option<u64>,
}

async fn events(
    State(state): State<AppState>,
    Extension(client): Extension<Client>,
    headers: HeaderMap,
    Query(query): Query<ResumeQuery>,
) -> Response {
    if let Err(d) = state.policy.check_read(&headers, &client) {
        return denied(&d);
    }
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .or(query.last_event_id);
    let mut response = sse::stream(
        state.control.clone(),
        state.history.clone(),
        last,
        state.closing.clone(),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn action(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((action, service)): Path<(String, String)>,
) -> Response {
    if let Err(d) = state.policy.check_write(&headers) {
        return denied(&d);
    }
    let action: Action = match action.parse() {
        Ok(a) => a,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, ActionError::to_string(&e)),
    };
    match state.control.act(action, &service).await {
        Ok(()) => Json(serde_json::json!({ "success": true, "service": service })).into_response(),
        Err(e) => {
            let code = match e {
                ActionError::UnknownService(_) => StatusCode::NOT_FOUND,
                ActionError::UnknownAction(_) => StatusCode::BAD_REQUEST,
                ActionError::NotAvailable { .. } => StatusCode::CONFLICT,
                ActionError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            };
            json_error(code, e.to_string())
        }
    }
}

#[derive(Deserialize)]
struct LogsQuery {
    format: Option<String>,
    lines: Option<usize>,
    download: Option<u8>,
}

fn known_service(state: &AppState, service: &str) -> bool {
    state.control.status().services.contains_key(service)
}

async fn logs(
    State(state): State<AppState>,
    Extension(client): Extension<Client>,
    headers: HeaderMap,
    Path(service): Path<String>,
    Query(query): Query<LogsQuery>,
) -> Response {
    if let Err(d) = state.policy.check_read(&headers, &client) {
        return denied(&d);
    }
    if !known_service(&state, &service) {
        return json_error(
            StatusCode::NOT_FOUND,
            format!("unknown service `{service}`"),
        );
    }
    let lines = query.lines.unwrap_or(1000).min(100_000);
    match query.format.as_deref() {
        None | Some("html") => page(assets::LOGS_HTML),
        Some("json") => match state.control.logs(Some(&service), lines) {
            Ok(lines) => ([(header::CACHE_CONTROL, "no-store")], Json(lines)).into_response(),
            Err(e) => json_error(StatusCode::NOT_FOUND, e.to_string()),
        },
        Some("text") => match state.control.logs(Some(&service), lines) {
            Ok(lines) => {
                let mut text = String::new();
                for l in lines {
                    text.push_str(&format!(
                        "{} {} {} {}\n",
                        l.line.timestamp,
                        l.line.stream.as_str(),
                        l.line.level,
                        l.line.message
                    ));
                }
                let mut response =
                    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response();
                if query.download == Some(1) {
                    let disposition = format!("attachment; filename=\"{service}.log\"");
                    if let Ok(v) = HeaderValue::from_str(&disposition) {
                        response
                            .headers_mut()
                            .insert(header::CONTENT_DISPOSITION, v);
                    }
                }
                response
            }
            Err(e) => json_error(StatusCode::NOT_FOUND, e.to_string()),
        },
        Some(other) => json_error(
            StatusCode::BAD_REQUEST,
            format!("unknown format `{other}` (html, json or text)"),
        ),
    }
}

#[derive(Deserialize)]
struct StreamQuery {
    backlog: Option<usize>,
}

async fn log_stream(
    State(state): State<AppState>,
    Extension(client): Extension<Client>,
    headers: HeaderMap,
    Path(service): Path<String>,
    Query(query): Query<StreamQuery>,
) -> Response {
    use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
    if let Err(d) = state.policy.check_read(&headers, &client) {
        return denied(&d);
    }
    // Subscribe before reading the backlog; skip the overlap.
    let mut live = state.control.subscribe_logs();
    let backlog = match state
        .control
        .logs(Some(&service), query.backlog.unwrap_or(1000).min(100_000))
    {
        Ok(b) => b,
        Err(e) => return json_error(StatusCode::NOT_FOUND, e.to_string()),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<SseEvent, std::convert::Infallible>>(256);
    let mut closing = state.closing.clone();
    tokio::spawn(async move {
        let mut join = BacklogJoin::new(&backlog);
        let encode = |l: &ServiceLogLine| {
            serde_json::to_string(l)
                .ok()
                .map(|d| SseEvent::default().event("line").data(d))
        };
        for line in &backlog {
            if let Some(ev) = encode(line)
                && tx.send(Ok(ev)).await.is_err()
            {
                return;
            }
        }
        loop {
            tokio::select! {
                line = live.recv() => match line {
                    Ok(line) if line.service == service && !join.is_replay(&line) => {
                        if let Some(ev) = encode(&line)
                            && tx.send(Ok(ev)).await.is_err() {
                                return;
                            }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let ev = SseEvent::default().event("skipped").data(n.to_string());
                        if tx.send(Ok(ev)).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tx.closed() => return,
                _ = sse::closed(&mut closing) => return,
            }
        }
    });
    let mut response = Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn metrics_text(
    State(state): State<AppState>,
    Extension(client): Extension<Client>,
    headers: HeaderMap,
) -> Response {
    if let Err(d) = state.policy.check_read(&headers, &client) {
        return denied(&d);
    }
    let report = state.control.status();
    let extra = state.control.extra_metrics();
    let text = metrics::render(&report, state.history.last_seq() + 1, &extra);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// A running dashboard listener.
#[derive(Debug)]
pub struct DashboardServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl DashboardServer {
    /// Binds the listen address, without serving yet (so a taken port is found before
    /// anything else starts). An address beyond loopback needs `token_configured`.
    pub async fn bind(
        listen: &str,
        token_configured: bool,
    ) -> Result<tokio::net::TcpListener, DashboardError> {
        let addr: SocketAddr =
            listen
                .parse()
                .map_err(|e: std::net::AddrParseError| DashboardError::BadAddress {
                    addr: listen.to_owned(),
                    reason: e.to_string(),
                })?;
        if !addr.ip().is_loopback() && !token_configured {
            return Err(DashboardError::TokenRequired { addr });
        }
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| DashboardError::Bind { addr, source })
    }

    /// Serves the dashboard on a bound listener until [`DashboardServer::shutdown`], with the
    /// timeouts and connection cap of `options.limits`.
    pub fn serve(
        listener: tokio::net::TcpListener,
        control: Arc<dyn RuntimeControl>,
        options: DashboardOptions,
    ) -> Result<DashboardServer, DashboardError> {
        let addr = listener
            .local_addr()
            .map_err(|source| DashboardError::Bind {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                source,
            })?;
        let (stop, closing) = watch::channel(false);
        let limits = options.limits;
        let app = router_closing(control, options, closing.clone());
        let task = tokio::spawn(server::run(listener, app, limits, closing));
        tracing::debug!(%addr, "Dashboard listening.");
        Ok(DashboardServer { addr, stop, task })
    }

    /// The bound address (with the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets in-flight requests finish for up to `grace`, then aborts (open
    /// event streams never finish on their own).
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(grace, &mut self.task).await.is_err() {
            tracing::debug!(addr = %self.addr, "Dashboard connections still open; closing them.");
            self.task.abort();
        }
    }
}

#[cfg(test)]
mod tests;
