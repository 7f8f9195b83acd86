//! kinfra's dashboard listener: the `/kinfra` page, the JSON status API and health check.
//!
//! It knows nothing of the supervisor, store or proxy: everything it shows or does goes
//! through [`kinfra_core::view::RuntimeControl`].

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use kinfra_core::view::RuntimeControl;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The dashboard page, from `web/`, compiled into the binary.
const DASHBOARD_HTML: &str = include_str!("../../../web/kinfra.html");

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
    /// Binding failed (port taken, no permission).
    #[error("cannot listen on {addr} for the dashboard: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The HTTP routes, on top of a runtime.
pub fn router(control: Arc<dyn RuntimeControl>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/__status__", get(status))
        .route("/kinfra", get(page))
        .route("/kinfra/", get(page))
        .with_state(control)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn status(State(control): State<Arc<dyn RuntimeControl>>) -> Response {
    let report = control.status();
    ([(header::CACHE_CONTROL, "no-store")], Json(report)).into_response()
}

async fn page() -> Response {
    (
        StatusCode::OK,
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        Html(DASHBOARD_HTML),
    )
        .into_response()
}

/// A running dashboard listener.
#[derive(Debug)]
pub struct DashboardServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl DashboardServer {
    /// Binds the listen address, without serving yet (so a taken port is found before
    /// anything else starts).
    pub async fn bind(listen: &str) -> Result<tokio::net::TcpListener, DashboardError> {
        let addr: SocketAddr =
            listen
                .parse()
                .map_err(|e: std::net::AddrParseError| DashboardError::BadAddress {
                    addr: listen.to_owned(),
                    reason: e.to_string(),
                })?;
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| DashboardError::Bind { addr, source })
    }

    /// Serves the dashboard on a bound listener until [`DashboardServer::shutdown`].
    pub fn serve(
        listener: tokio::net::TcpListener,
        control: Arc<dyn RuntimeControl>,
    ) -> Result<DashboardServer, DashboardError> {
        let addr = listener
            .local_addr()
            .map_err(|source| DashboardError::Bind {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                source,
            })?;
        let (stop, stopped) = oneshot::channel::<()>();
        let app = router(control);
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(error) = serve.await {
                tracing::error!(%error, "Dashboard server failed.");
            }
        });
        tracing::debug!(%addr, "Dashboard listening.");
        Ok(DashboardServer {
            addr,
            stop: Some(stop),
            task,
        })
    }

    /// The bound address (with the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets in-flight requests finish for up to `grace`, then aborts.
    pub async fn shutdown(mut self, grace: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(grace, &mut self.task).await.is_err() {
            tracing::warn!(addr = %self.addr, "Dashboard did not stop in time; aborting it.");
            self.task.abort();
        }
    }
}
