//! Control in: request/reply on `kinfra.<project>.control.<action>`.
//!
//! `status` replies with the `/__status__` document; `restart`, `stop` and `start` take
//! `{"service": "api"}` and reply `{"success": true, "service": "api"}` or
//! `{"success": false, "error": "..."}`. `command` takes the body of
//! `POST /__action__/command/{resource}` plus the resource,
//! `{"resource", "command", "params", "dry_run", "yes"}`, and replies with the command's result
//! or `{"success": false, "error": "...", "problems": [...]}`. Every bad request gets a JSON error reply. At most
//! [`MAX_IN_FLIGHT`] requests are handled at once; a request beyond that is answered at once
//! with a "busy" error, so a flood costs neither unbounded memory nor tasks.

use crate::redact::Redactor;
use crate::state::Shared;
use crate::transport::{BusMessage, Subscription, Transport};
use bytes::Bytes;
use kinfra_core::view::{Action, CommandCall, CommandError, RuntimeControl};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Requests handled concurrently.
pub const MAX_IN_FLIGHT: usize = 32;
/// Largest request body accepted.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The actions served, for error messages.
const ACTIONS: &str = "status, restart, stop, start or command";

#[derive(Debug, Deserialize)]
struct ServiceRequest {
    service: String,
}

/// What the control loop needs, cloned into each handler task.
#[derive(Clone)]
pub(crate) struct ControlContext {
    pub(crate) control: Arc<dyn RuntimeControl>,
    pub(crate) transport: Transport,
    pub(crate) prefix: String,
    pub(crate) redactor: Redactor,
    pub(crate) shared: Arc<Shared>,
}

/// Serves control requests from `sub` until `stop` fires or the subscription ends.
pub(crate) async fn serve(ctx: ControlContext, mut sub: Subscription, stop: CancellationToken) {
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let msg = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            msg = sub.next() => match msg {
                Some(msg) => msg,
                None => break,
            },
        };
        let Some(reply) = msg.reply.clone() else {
            tracing::debug!(subject = %msg.subject, "Control message without a reply subject; ignored.");
            continue;
        };
        ctx.shared.control_requests.fetch_add(1, Ordering::Relaxed);
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    let body = handle(&ctx, &msg).await;
                    ctx.send_reply(reply, body).await;
                    drop(permit);
                });
            }
            Err(_) => {
                let body = error_reply(None, "busy: too many control requests in flight; retry");
                ctx.send_reply(reply, body).await;
            }
        }
    }
    tracing::debug!("Bus control loop stopped.");
}

impl ControlContext {
    async fn send_reply(&self, reply: String, body: String) {
        let body = Bytes::from(self.redactor.apply(body));
        if let Err(error) = self.transport.publish(reply, None, body).await {
            tracing::debug!(%error, "Cannot send a control reply.");
        }
    }
}

fn error_reply(service: Option<&str>, error: &str) -> String {
    match service {
        Some(service) => json!({"success": false, "service": service, "error": error}),
        None => json!({"success": false, "error": error}),
    }
    .to_string()
}

/// The reply body for one request.
pub(crate) async fn handle(ctx: &ControlContext, msg: &BusMessage) -> String {
    let action = msg
        .subject
        .strip_prefix(ctx.prefix.as_str())
        .unwrap_or(msg.subject.as_str());
    if msg.payload.len() > MAX_REQUEST_BYTES {
        return error_reply(
            None,
            &format!(
                "request too large ({} bytes; at most {MAX_REQUEST_BYTES})",
                msg.payload.len()
            ),
        );
    }
    let body = match parse_body(&msg.payload) {
        Ok(body) => body,
        Err(error) => return error_reply(None, &error),
    };
    tracing::debug!(action, "Bus control request.");
    if action == "status" {
        return match serde_json::to_string(&ctx.control.status()) {
            Ok(json) => json,
            Err(error) => error_reply(None, &format!("cannot serialise the status: {error}")),
        };
    }
    if action == "command" {
        return command(ctx, body).await;
    }
    let parsed: Result<Action, _> = action.parse();
    let Ok(action) = parsed else {
        return error_reply(
            None,
            &format!("unknown action `{action}` (expected {ACTIONS})"),
        );
    };
    let request: ServiceRequest = match serde_json::from_value(body) {
        Ok(r) => r,
        Err(error) => {
            return error_reply(
                None,
                &format!("bad request: {error}; expected {{\"service\": \"NAME\"}}"),
            );
        }
    };
    match ctx.control.act(action, &request.service).await {
        Ok(()) => {
            tracing::info!(action = action.as_str(), service = %request.service, "Action over the bus.");
            json!({"success": true, "service": request.service, "action": action.as_str()})
                .to_string()
        }
        Err(error) => error_reply(Some(&request.service), &error.to_string()),
    }
}

/// Runs a provider resource's command: the reply is the result, or every problem.
async fn command(ctx: &ControlContext, body: serde_json::Value) -> String {
    let call: CommandCall = match serde_json::from_value(body) {
        Ok(call) => call,
        Err(error) => {
            let problem = format!(
                "bad request: {error}; expected {{\"resource\", \"command\", \"params\", \"dry_run\", \"yes\"}}"
            );
            return json!({"success": false, "error": problem, "problems": [problem]}).to_string();
        }
    };
    let (resource, name) = (call.resource.clone(), call.command.clone());
    match ctx.control.command(call).await {
        Ok(result) => {
            tracing::info!(resource = %resource, command = %name, "Command over the bus.");
            result.to_string()
        }
        Err(CommandError::Input(problems)) => {
            json!({"success": false, "error": problems.join("; "), "problems": problems})
                .to_string()
        }
        Err(CommandError::Failed(error)) => {
            json!({"success": false, "error": error, "problems": []}).to_string()
        }
    }
}

/// An empty body is `{}`; anything else must be a JSON object.
fn parse_body(payload: &[u8]) -> Result<serde_json::Value, String> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Value::Object(Default::default()));
    }
    match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(value @ serde_json::Value::Object(_)) => Ok(value),
        Ok(_) => Err("bad request: the body must be a JSON object".into()),
        Err(error) => Err(format!("malformed JSON: {error}")),
    }
}
