//! `kinfra resource NAME COMMAND [--param K=V]... [--dry-run] [--yes] [--json]`: runs a
//! provider resource's typed command in the running runtime. Parameters travel as text; the
//! runtime types them by the command's spec (it has the spec) and reports every problem.

use super::client::connect;
use super::{ConfigArg, InputError, load};
use kinfra::{ControlRequest, ControlResponse};
use serde_json::{Map, Value};
use std::process::ExitCode;
use std::time::Duration;

/// How long a command may take before the CLI gives up waiting (a plugin's own call timeout
/// ends a hung command well before).
const ANSWER_LIMIT: Duration = Duration::from_secs(600);

/// What `kinfra resource` was asked to do.
pub struct CommandArgs {
    /// The resource.
    pub resource: String,
    /// The command's id.
    pub command: String,
    /// `K=V` texts.
    pub params: Vec<String>,
    /// Send nothing; print the planned requests.
    pub dry_run: bool,
    /// Confirm a command that needs it.
    pub yes: bool,
    /// Print the result as JSON.
    pub json: bool,
}

/// `kinfra resource NAME COMMAND ...`
pub async fn run(arg: &ConfigArg, args: CommandArgs) -> anyhow::Result<ExitCode> {
    let mut params = Map::new();
    let mut malformed = Vec::new();
    for text in &args.params {
        match kinfra::providers::sdk::command::split_cli_param(text) {
            Ok((key, value)) => {
                params.insert(key.to_owned(), Value::String(value.to_owned()));
            }
            Err(problem) => malformed.push(problem.to_string()),
        }
    }
    if !malformed.is_empty() {
        return Err(InputError(malformed.join("; ")).into());
    }
    let state_dir = load::state_dir(arg)?;
    let mut conn = connect(&state_dir).await?;
    conn.send(&ControlRequest::Command {
        resource: args.resource.clone(),
        command: args.command.clone(),
        params,
        dry_run: args.dry_run,
        yes: args.yes,
    })
    .await?;
    match conn.next_within(ANSWER_LIMIT).await? {
        Some(ControlResponse::CommandResult { result }) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&result)?);
            } else {
                print!("{}", result_text(&args.resource, &args.command, &result));
            }
            let success = result.get("success").and_then(Value::as_bool) == Some(true);
            Ok(if success {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Some(ControlResponse::CommandRefused { problems }) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({ "error": "input", "problems": problems })
                );
            }
            for problem in &problems {
                eprintln!("error: {problem}");
            }
            Ok(ExitCode::from(2))
        }
        Some(ControlResponse::Error { error }) => {
            anyhow::bail!("resource `{}`: {error}", args.resource)
        }
        other => anyhow::bail!("unexpected reply from the runtime: {other:?}"),
    }
}

/// A command's result for people: the outcome, the data as pretty JSON, the warnings, and a
/// dry-run's requests (`METHOD URL` and the masked body).
fn result_text(resource: &str, command: &str, result: &Value) -> String {
    let mut out = String::new();
    let success = result.get("success").and_then(Value::as_bool) == Some(true);
    let dry_run = result.get("dry_run").and_then(Value::as_bool) == Some(true);
    out.push_str(&match (success, dry_run) {
        (true, true) => format!("{resource}: {command} (dry run): nothing was sent\n"),
        (true, false) => format!("{resource}: {command}: done\n"),
        (false, _) => format!("{resource}: {command}: failed\n"),
    });
    if let Some(op) = result.get("operation").and_then(Value::as_str) {
        out.push_str(&format!("operation: {op}\n"));
    }
    if let Some(data) = result.get("data").filter(|d| !d.is_null())
        && let Ok(text) = serde_json::to_string_pretty(data)
    {
        out.push_str(&format!("data:\n{text}\n"));
    }
    for warning in result
        .get("warnings")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.push_str(&format!(
            "warning: {}\n",
            warning
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| warning.to_string())
        ));
    }
    let requests = result
        .get("requests")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if !requests.is_empty() {
        out.push_str(if dry_run {
            "would send:\n"
        } else {
            "requests:\n"
        });
    }
    for request in &requests {
        let field = |k: &str| request.get(k).and_then(Value::as_str).unwrap_or("?");
        out.push_str(&format!("  {} {}\n", field("method"), field("url")));
        if let Some(body) = request.get("body").filter(|b| !b.is_null()) {
            let text = match body {
                Value::String(s) => s.clone(),
                other => serde_json::to_string_pretty(other).unwrap_or_default(),
            };
            for line in text.lines() {
                out.push_str(&format!("    {line}\n"));
            }
        }
    }
    out
}
