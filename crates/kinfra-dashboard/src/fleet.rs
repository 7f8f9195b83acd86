//! The fleet on the dashboard: `GET /kinfra/fleet` (a page with every node of the bus, up or
//! down, last seen, its services and their states), `GET /__fleet__` (the same as JSON, the
//! status report's `fleet`) and `GET /__fleet__/events` (an SSE stream of every node's
//! events, each the event's JSON with its `node`, as `event: fleet`). The same read rule as
//! `/__status__`.

use crate::sse::closed;
use crate::{AppState, denied, json_error};
use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::auth::Client;

/// Keep-alive comment interval of the fleet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `GET /__fleet__`: the fleet table as JSON (`{node, nodes: [...]}`), 404 when this
/// runtime keeps none.
pub(crate) async fn fleet_json(
    State(state): State<AppState>,
    Extension(client): Extension<Client>,
    headers: HeaderMap,
) -> Response {
    if let Err(d) = state.policy.check_read(&headers, &client) {
        return denied(&d);
    }
    match state.control.status().fleet {
        Some(fleet) => ([(header::CACHE_CONTROL, "no-store")], axum::Json(fleet)).into_response(),
        None => json_error(StatusCode::NOT_FOUND, "this runtime keeps no fleet view"),
    }
}

/// `GET /__fleet__/events`: every node's events from now on, `event: fleet`, data the
/// event's JSON with its `node`. Lagging readers get `event: lagged` with how many were
/// missed.
pub(crate) async fn fleet_events(
    State(state): State<AppState>,
    Extension(client): Extension<Client>,
    headers: HeaderMap,
) -> Response {
    if let Err(d) = state.policy.check_read(&headers, &client) {
        return denied(&d);
    }
    let Some(mut live) = state.control.subscribe_fleet_events() else {
        return json_error(StatusCode::NOT_FOUND, "this runtime keeps no fleet view");
    };
    let mut closing = state.closing.clone();
    let (tx, rx) = mpsc::channel::<Result<SseEvent, Infallible>>(256);
    tokio::spawn(async move {
        // Said at once, so a client knows the stream is subscribed.
        if tx
            .send(Ok(SseEvent::default().event("ready").data("{}")))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let next = tokio::select! {
                next = live.recv() => next,
                _ = tx.closed() => return,
                _ = closed(&mut closing) => return,
            };
            let event = match next {
                Ok(json) => SseEvent::default().event("fleet").data(&*json),
                Err(broadcast::error::RecvError::Lagged(n)) => SseEvent::default()
                    .event("lagged")
                    .data(format!("{{\"missed\":{n}}}")),
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
    });
    let mut response = Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /kinfra/fleet`: the fleet as a page (no script; it reloads itself every 5 s).
pub(crate) async fn fleet_page(
    State(state): State<AppState>,
    Extension(client): Extension<Client>,
    headers: HeaderMap,
) -> Response {
    if state.policy.check_read(&headers, &client).is_err() {
        return Redirect::to("/kinfra/login").into_response();
    }
    let report = state.control.status();
    crate::page(render(&report.project, report.fleet.as_ref()))
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page: one row per node (name, up/down, last seen), its services with their states.
fn render(project: &str, fleet: Option<&serde_json::Value>) -> String {
    let str_of = |v: &serde_json::Value, key: &str| {
        v.get(key)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let mut rows = String::new();
    let this = fleet.map(|f| str_of(f, "node")).unwrap_or_default();
    let nodes = fleet
        .and_then(|f| f.get("nodes"))
        .and_then(serde_json::Value::as_array)
        .cloned()
        .unwrap_or_default();
    for node in &nodes {
        let name = str_of(node, "node");
        let state = str_of(node, "state");
        let seen = node
            .get("last_seen_s")
            .and_then(serde_json::Value::as_f64)
            .unwrap_or_default();
        let mut services = String::new();
        if let Some(map) = node.get("services").and_then(serde_json::Value::as_object) {
            for (service, s) in map {
                let _ = write!(
                    services,
                    "<li><span class=\"name\">{}</span> <span class=\"state {}\">{}</span></li>",
                    escape(service),
                    escape(&str_of(s, "state")),
                    escape(&str_of(s, "state"))
                );
            }
        }
        let _ = write!(
            rows,
            "<tr data-node=\"{n}\" data-state=\"{st}\"><td>{n}{me}</td><td class=\"state {st}\">{st}</td><td>{seen:.1} s ago</td><td><ul>{services}</ul></td></tr>",
            n = escape(&name),
            st = escape(&state),
            me = if name == this { " (this node)" } else { "" },
        );
    }
    if nodes.is_empty() {
        rows.push_str("<tr><td colspan=\"4\">No node heard yet.</td></tr>");
    }
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">\
         <title>{p} fleet — kinfra</title><link rel=\"stylesheet\" href=\"/kinfra/assets/kinfra.css\"></head>\
         <body><header><h1>{p}: fleet</h1><nav><a href=\"/kinfra\">dashboard</a></nav></header>\
         <main><table class=\"fleet\"><thead><tr><th>node</th><th>state</th><th>last seen</th><th>services</th></tr></thead>\
         <tbody>{rows}</tbody></table></main></body></html>",
        p = escape(project)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_shows_every_node_escaped() {
        let fleet = serde_json::json!({
            "node": "a",
            "nodes": [
                {"node": "a", "state": "up", "last_seen_s": 0.4,
                 "services": {"api": {"state": "running"}}},
                {"node": "b<x>", "state": "down", "last_seen_s": 17.0, "services": {}}
            ]
        });
        let html = render("demo", Some(&fleet));
        assert!(html.contains("data-node=\"a\" data-state=\"up\""));
        assert!(html.contains("a (this node)"));
        assert!(html.contains("<span class=\"name\">api</span>"));
        assert!(html.contains("data-node=\"b&lt;x&gt;\" data-state=\"down\""));
        assert!(!html.contains("<x>"));
        assert!(render("demo", None).contains("No node heard yet."));
    }
}
