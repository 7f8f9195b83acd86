//! The dashboard's own HTTP/1.1 server loop (hyper), because `axum::serve` cannot bound
//! connections: a cap on open connections, a header-read timeout, an idle keep-alive timeout,
//! a body-read timeout, and a back-off when `accept` fails.
//!
//! Per connection, a watchdog closes it when it waits too long for the client:
//! - before the first request, and from the first byte of any later request until its
//!   header is complete: [`ConnectionLimits::header_timeout`];
//! - between requests (keep-alive) with nothing received: [`ConnectionLimits::idle_timeout`];
//! - while a handler reads the request body, the body must be complete within
//!   [`ConnectionLimits::body_timeout`] (the handler then answers 400 and the connection
//!   closes, its body unread).
//!
//! While a request is being answered (a handler running, a response or an event stream being
//! written) the watchdog leaves the connection alone. Beyond
//! [`ConnectionLimits::max_connections`] open connections, a new connection is closed at once
//! (not queued: a queued client would hang with no answer).

use crate::accept::AcceptBackoff;
use crate::auth::ConnectionEnds;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use http_body::Frame;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower_service::Service;

/// How long the dashboard waits for its clients, and how many it serves at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Time for a request's header to arrive (from the connection's start, or from the first
    /// byte of a later request). Default 10 s.
    pub header_timeout: Duration,
    /// Time a kept-alive connection may wait for its next request. Default 60 s.
    pub idle_timeout: Duration,
    /// Time for a request body to arrive once a handler reads it. Default 30 s.
    pub body_timeout: Duration,
    /// Most connections open at once; more are closed at once. Default 512.
    pub max_connections: usize,
}

impl ConnectionLimits {
    /// The limits of a `[dashboard]` section.
    pub fn from_config(config: &kinfra_core::config::DashboardConfig) -> Self {
        Self {
            header_timeout: config.header_timeout.0,
            idle_timeout: config.idle_timeout.0,
            body_timeout: config.body_timeout.0,
            max_connections: usize::try_from(config.max_connections).unwrap_or(usize::MAX),
        }
    }
}

impl Default for ConnectionLimits {
    /// The defaults of `[dashboard]`.
    fn default() -> Self {
        Self::from_config(&kinfra_core::config::DashboardConfig::default())
    }
}

/// Accepts and serves connections on `listener` until `stop` becomes true; then stops
/// accepting and lets every connection finish its requests (event streams end on their own,
/// as they watch the same signal). Returns when all connections are done.
pub(crate) async fn run(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    let mut backoff = AcceptBackoff::new("dashboard");
    let mut refused = RefusalReport::default();
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    backoff.succeeded();
                    while connections.try_join_next().is_some() {}
                    if connections.len() >= limits.max_connections {
                        refused.note(limits.max_connections);
                        drop(stream);
                        continue;
                    }
                    connections.spawn(serve_connection(
                        stream,
                        peer,
                        app.clone(),
                        limits,
                        stop.clone(),
                    ));
                }
                Err(error) if AcceptBackoff::is_connection_error(&error) => {}
                Err(error) => {
                    let pause = backoff.failed(&error);
                    tokio::select! {
                        _ = stopped(&mut stop) => break,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// Returns once `stop` says stop (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Warns about connections closed at the cap, at most once per interval.
#[derive(Debug, Default)]
struct RefusalReport {
    unreported: u64,
    last: Option<Instant>,
}

impl RefusalReport {
    fn note(&mut self, cap: usize) {
        self.unreported += 1;
        let now = Instant::now();
        if self
            .last
            .is_none_or(|last| now.duration_since(last) >= crate::accept::REPORT_INTERVAL)
        {
            tracing::warn!(
                max_connections = cap,
                refused = self.unreported,
                "Dashboard connection limit reached; closing new connections."
            );
            self.unreported = 0;
            self.last = Some(now);
        }
    }
}

/// Where one connection stands, for its watchdog.
#[derive(Debug)]
struct Phase {
    /// Requests dispatched whose response has not finished (been written or dropped).
    in_flight: usize,
    /// When the connection last became idle (opened, or its last response finished).
    idle_since: Instant,
    /// When the first byte of the next request arrived while idle.
    request_started: Option<Instant>,
    /// A request has been dispatched on this connection.
    served_one: bool,
}

/// Shared by a connection's reader, its requests and its watchdog.
#[derive(Debug)]
struct Activity {
    phase: Mutex<Phase>,
    changed: Notify,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            phase: Mutex::new(Phase {
                in_flight: 0,
                idle_since: Instant::now(),
                request_started: None,
                served_one: false,
            }),
            changed: Notify::new(),
        })
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes arrived from the client.
    fn received(&self) {
        let mut phase = self.phase();
        if phase.in_flight == 0 && phase.request_started.is_none() {
            phase.request_started = Some(Instant::now());
            drop(phase);
            self.changed.notify_one();
        }
    }

    /// A request was dispatched; the returned guard ends it when dropped.
    fn request_dispatched(self: &Arc<Self>) -> InFlight {
        let mut phase = self.phase();
        phase.in_flight += 1;
        phase.request_started = None;
        phase.served_one = true;
        drop(phase);
        self.changed.notify_one();
        InFlight(self.clone())
    }

    /// When the connection has waited too long, given the limits; `None` while a request is
    /// being answered.
    fn deadline(&self, limits: &ConnectionLimits) -> Option<Instant> {
        let phase = self.phase();
        if phase.in_flight > 0 {
            return None;
        }
        Some(match phase.request_started {
            // The first request's header counts from the connection's start.
            _ if !phase.served_one => phase.idle_since + limits.header_timeout,
            Some(started) => started + limits.header_timeout,
            None => phase.idle_since + limits.idle_timeout,
        })
    }

    /// Returns when the connection has waited longer than the limits allow.
    async fn expired(&self, limits: &ConnectionLimits) {
        loop {
            match self.deadline(limits) {
                Some(deadline) if deadline <= Instant::now() => return,
                Some(deadline) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => {}
                        _ = self.changed.notified() => {}
                    }
                }
                None => self.changed.notified().await,
            }
        }
    }
}

/// A request being answered; finished when dropped (with its response body).
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut phase = self.0.phase();
        phase.in_flight = phase.in_flight.saturating_sub(1);
        if phase.in_flight == 0 {
            phase.idle_since = Instant::now();
        }
        drop(phase);
        self.0.changed.notify_one();
    }
}

/// The TCP stream, telling the watchdog when bytes arrive.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.received();
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Serves one connection until it ends, the watchdog closes it, or the server stops (then
/// the request in progress finishes and the connection closes).
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
) {
    let activity = Activity::new();
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let io = TokioIo::new(Watched {
        stream,
        activity: activity.clone(),
    });
    let requests = activity.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let in_flight = requests.request_dispatched();
        let mut request = request.map(|body| {
            Body::new(TimedBody {
                inner: Body::new(body),
                limit: limits.body_timeout,
                timer: None,
            })
        });
        request.extensions_mut().insert(ConnectInfo(peer));
        request
            .extensions_mut()
            .insert(ConnectionEnds { peer, local });
        let mut app = app.clone();
        async move {
            let response = match app.call(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            Ok::<_, Infallible>(response.map(|body| {
                Body::new(FinishingBody {
                    inner: body,
                    _in_flight: in_flight,
                })
            }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The watchdog times the header (hyper's own timer would also cut idle keep-alive).
    builder.header_read_timeout(None);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut stopping = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "Dashboard connection ended with an error.");
                }
                return;
            }
            _ = stopped(&mut stop), if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = activity.expired(&limits) => {
                tracing::debug!(%peer, "Dashboard connection waited too long for the client; closing it.");
                return;
            }
        }
    }
}

/// Why a request body was not read.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
struct BodyTimeout(Duration);

/// A request body that must arrive within a time limit, counted from the first read.
struct TimedBody {
    inner: Body,
    limit: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let limit = self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(limit)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that marks its request finished when it is dropped (written or
/// abandoned).
struct FinishingBody {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for FinishingBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
