//! `POST /__action__/command/{resource}`: runs a provider resource's typed command. The body
//! is `{"command", "params", "dry_run", "yes"}`; the same rules as the other actions apply
//! (the token, or a session from the same origin). Input errors answer 400 with every
//! problem; a command that ran and failed answers 502; otherwise the result JSON
//! (`{success, data, warnings, dry_run, operation, requests}`, secrets masked).
//!
//! `GET /__commands__/{resource}`: the resource's commands (`{"resource", "commands"}`, each
//! a `CommandSpec`), read like the status (a client on this machine, or the token).

use super::{AppState, denied};
use crate::auth::Client;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use kinfra_core::view::{CommandCall, CommandError};
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// The body of a command request.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandBody {
    command: String,
    #[serde(default)]
    params: Map<String, Value>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    yes: bool,
}

fn refused(problems: Vec<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({ "success": false, "error": problems.join("; "), "problems": problems })),
    )
        .into_response()
}

/// Runs the command named in the body on `resource`.
pub(super) async fn command(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(resource): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(d) = state.policy.check_write(&headers) {
        return denied(&d);
    }
    let body: CommandBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(error) => {
            return refused(vec![format!(
                "the body must be {{\"command\", \"params\", \"dry_run\", \"yes\"}}: {error}"
            )]);
        }
    };
    let call = CommandCall {
        resource,
        command: body.command,
        params: body.params,
        dry_run: body.dry_run,
        yes: body.yes,
    };
    match state.control.command(call).await {
        Ok(result) => ([(header::CACHE_CONTROL, "no-store")], Json(result)).into_response(),
        Err(CommandError::Input(problems)) => refused(problems),
        Err(CommandError::Failed(error)) => super::json_error(StatusCode::BAD_GATEWAY, error),
    }
}

/// Lists `resource`'s commands; an unknown resource answers 404.
pub(super) async fn commands(
    State(state): State<AppState>,
    Extension(client): Extension<Client>,
    headers: HeaderMap,
    Path(resource): Path<String>,
) -> Response {
    if let Err(d) = state.policy.check_read(&headers, &client) {
        return denied(&d);
    }
    match state.control.commands(&resource) {
        Ok(commands) => (
            [(header::CACHE_CONTROL, "no-store")],
            Json(json!({ "resource": resource, "commands": commands })),
        )
            .into_response(),
        Err(error) => super::json_error(StatusCode::NOT_FOUND, error),
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use crate::auth::ConnectionEnds;
    use axum::body::Body;
    use axum::http::Request as HttpRequest;
    use http_body_util::BodyExt;
    use kinfra_core::Secret;
    use kinfra_core::event::EventSender;
    use kinfra_core::status::StatusReport;
    use kinfra_core::view::{BoxFuture, CommandCall, CommandError};
    use serde_json::{Value, json};
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use tower::ServiceExt;

    const TOKEN: &str = "test-token-0123456789";

    /// Runs `scale` on `db` (a dry-run answers with a planned request); records every call.
    struct Fake {
        events: EventSender,
        calls: Mutex<Vec<CommandCall>>,
    }

    impl RuntimeControl for Fake {
        fn status(&self) -> StatusReport {
            StatusReport::new("demo", BTreeMap::new())
        }
        fn logs(
            &self,
            _service: Option<&str>,
            _lines: usize,
        ) -> Result<Vec<ServiceLogLine>, ActionError> {
            Ok(Vec::new())
        }
        fn subscribe_events(&self) -> broadcast::Receiver<kinfra_core::Event> {
            self.events.subscribe()
        }
        fn subscribe_logs(&self) -> broadcast::Receiver<ServiceLogLine> {
            broadcast::channel(1).1
        }
        fn act(&self, _action: Action, _service: &str) -> BoxFuture<'_, Result<(), ActionError>> {
            Box::pin(async { Ok(()) })
        }
        fn request_shutdown(&self, _reason: &str) {}
        fn commands(&self, resource: &str) -> Result<Vec<Value>, String> {
            match resource {
                "db" => Ok(vec![json!({
                    "id": "scale", "name": "Scale", "description": "", "category": "",
                    "params": [{"name": "replicas", "kind": {"type": "integer"}, "required": true}],
                    "dry_run": true, "confirm": false,
                })]),
                "web" => Ok(Vec::new()),
                other => Err(format!("unknown resource `{other}`")),
            }
        }
        fn command(&self, call: CommandCall) -> BoxFuture<'_, Result<Value, CommandError>> {
            Box::pin(async move {
                if let Ok(mut calls) = self.calls.lock() {
                    calls.push(call.clone());
                }
                if call.resource != "db" {
                    return Err(CommandError::Input(vec![format!(
                        "unknown resource `{}`",
                        call.resource
                    )]));
                }
                match (call.command.as_str(), call.params.get("replicas")) {
                    ("scale", Some(Value::Number(n))) => Ok(json!({
                        "success": true, "data": null, "warnings": [], "dry_run": call.dry_run,
                        "operation": null,
                        "requests": [{"method": "POST", "url": "https://x/scale", "headers": [],
                                      "body": {"replicas": n}}],
                    })),
                    ("scale", _) => Err(CommandError::Input(vec![
                        "parameter `replicas`: missing (required)".into(),
                        "parameter `colour`: unknown parameter".into(),
                    ])),
                    ("crash", _) => Err(CommandError::Failed("plugin crashed".into())),
                    (other, _) => Err(CommandError::Input(vec![format!(
                        "resource `db` has no command `{other}`"
                    )])),
                }
            })
        }
    }

    fn app() -> (Arc<Fake>, Router) {
        let fake = Arc::new(Fake {
            events: EventSender::new(16),
            calls: Mutex::new(Vec::new()),
        });
        let app = router(
            fake.clone(),
            DashboardOptions {
                policy: AccessPolicy::new(Secret::new(TOKEN), Vec::new()),
                history: sse::EventHistory::new(10),
                limits: ConnectionLimits::default(),
            },
        );
        (fake, app)
    }

    async fn post(
        app: &Router,
        uri: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (StatusCode, Value) {
        let mut b = HttpRequest::builder()
            .method("POST")
            .uri(uri)
            .header("host", "127.0.0.1:9000")
            .header("content-type", "application/json");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let request = b
            .extension(ConnectionEnds {
                peer: SocketAddr::from(([127, 0, 0, 1], 40000)),
                local: SocketAddr::from(([127, 0, 0, 1], 9000)),
            })
            .body(Body::from(body.to_owned()))
            .expect("request");
        let response = app.clone().oneshot(request).await.expect("response");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    const BEARER: (&str, &str) = ("authorization", "Bearer test-token-0123456789");

    async fn get(
        app: &Router,
        uri: &str,
        peer: [u8; 4],
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let mut b = HttpRequest::builder()
            .method("GET")
            .uri(uri)
            .header("host", "127.0.0.1:9000");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let request = b
            .extension(ConnectionEnds {
                peer: SocketAddr::from((peer, 40000)),
                local: SocketAddr::from(([127, 0, 0, 1], 9000)),
            })
            .body(Body::empty())
            .expect("request");
        let response = app.clone().oneshot(request).await.expect("response");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[tokio::test]
    async fn a_resource_s_commands_are_read_like_the_status() {
        let (_, app) = app();
        const HERE: [u8; 4] = [127, 0, 0, 1];
        const ELSEWHERE: [u8; 4] = [10, 0, 0, 7];
        // From this machine no token is needed.
        let (code, body) = get(&app, "/__commands__/db", HERE, &[]).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        assert_eq!(body["resource"], "db", "{body}");
        assert_eq!(body["commands"][0]["id"], "scale", "{body}");
        assert_eq!(body["commands"][0]["dry_run"], true, "{body}");
        // From another machine only with the token.
        let (code, _) = get(&app, "/__commands__/db", ELSEWHERE, &[]).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        let (code, body) = get(&app, "/__commands__/db", ELSEWHERE, &[BEARER]).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        assert_eq!(body["commands"].as_array().map(Vec::len), Some(1), "{body}");
        // A resource without commands has none; an unknown one is not found.
        let (code, body) = get(&app, "/__commands__/web", HERE, &[]).await;
        assert_eq!(
            (code, body["commands"].clone()),
            (StatusCode::OK, json!([]))
        );
        let (code, body) = get(&app, "/__commands__/nope", HERE, &[]).await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
        assert!(
            body["error"].as_str().is_some_and(|e| e.contains("`nope`")),
            "{body}"
        );
    }

    #[tokio::test]
    async fn commands_need_the_token_and_same_origin_and_answer_by_kind() {
        let (fake, app) = app();
        let uri = "/__action__/command/db";
        let scale = r#"{"command": "scale", "params": {"replicas": 2}, "dry_run": true}"#;
        let (code, _) = post(&app, uri, &[], scale).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        let (code, _) = post(
            &app,
            uri,
            &[BEARER, ("origin", "http://evil.example")],
            scale,
        )
        .await;
        assert_eq!(code, StatusCode::FORBIDDEN);
        assert!(fake.calls.lock().map(|c| c.is_empty()).unwrap_or(false));

        let (code, body) = post(&app, uri, &[BEARER], scale).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        assert_eq!(body["dry_run"], true, "{body}");
        assert_eq!(body["requests"][0]["body"]["replicas"], 2, "{body}");
        let calls = fake.calls.lock().map(|c| c.clone()).unwrap_or_default();
        assert_eq!(calls.len(), 1);
        assert_eq!(
            (calls[0].resource.as_str(), calls[0].dry_run, calls[0].yes),
            ("db", true, false)
        );

        let (code, body) = post(
            &app,
            uri,
            &[BEARER],
            r#"{"command": "scale", "params": {"colour": 1}}"#,
        )
        .await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(
            body["problems"],
            json!([
                "parameter `replicas`: missing (required)",
                "parameter `colour`: unknown parameter"
            ])
        );
        let (code, body) = post(&app, "/__action__/command/nope", &[BEARER], scale).await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(
            body["error"].as_str().is_some_and(|e| e.contains("`nope`")),
            "{body}"
        );
        let (code, body) = post(&app, uri, &[BEARER], r#"{"params": {}}"#).await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("command")),
            "{body}"
        );
        let (code, body) = post(&app, uri, &[BEARER], r#"{"command": "crash"}"#).await;
        assert_eq!(code, StatusCode::BAD_GATEWAY);
        assert_eq!(body["error"], "plugin crashed");
        // The other actions still route.
        let (code, _) = post(&app, "/__action__/restart/db", &[BEARER], "").await;
        assert_eq!(code, StatusCode::OK);
    }
}
