//! `kinfra fleet`: every kinfra node on the bus, as the local runtime sees them, and actions
//! on another node's services (sent over the bus by the local runtime).

use super::client::connect;
use super::{ConfigArg, InputError, load};
use clap::{Args, Subcommand};
use kinfra::{Action, ControlRequest, ControlResponse};
use kinfra_bus::FleetView;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

/// `kinfra fleet ...`
#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Every node heard on the bus (this one included): up or down, when it was last heard,
    /// its services and their states. A node is `down` once it missed its heartbeats for
    /// 2½ of its intervals.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// JSON: `{node, nodes: [{node, state, last_seen, last_seen_s, interval_ms, pid,
        /// services: {NAME: {kind, state, health}}, left}]}` (`left`: it said it was
        /// shutting down).
        #[arg(long)]
        json: bool,
    },
    /// Restart a service on a node (over the bus, with the local runtime's bus credentials).
    Restart(NodeServiceArgs),
    /// Stop a service on a node.
    Stop(NodeServiceArgs),
    /// Start a service on a node.
    Start(NodeServiceArgs),
}

/// A node and one of its services.
#[derive(Debug, Args)]
pub struct NodeServiceArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The node (`[node] name`).
    node: String,
    /// The service or resource on that node.
    service: String,
}

/// Runs a `kinfra fleet` command.
pub async fn run(cmd: FleetCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        FleetCommand::Status { config, json } => status(&config, json).await,
        FleetCommand::Restart(args) => act(args, Action::Restart).await,
        FleetCommand::Stop(args) => act(args, Action::Stop).await,
        FleetCommand::Start(args) => act(args, Action::Start).await,
    }
}

async fn status(arg: &ConfigArg, json: bool) -> anyhow::Result<ExitCode> {
    let state_dir = load::state_dir(arg)?;
    let mut conn = connect(&state_dir).await?;
    conn.send(&ControlRequest::Status).await?;
    let report = match conn.next_within(Duration::from_secs(10)).await? {
        Some(ControlResponse::Status { report }) => report,
        Some(ControlResponse::Error { error }) => anyhow::bail!("{error}"),
        other => anyhow::bail!("unexpected reply from the runtime: {other:?}"),
    };
    let Some(fleet) = report.fleet else {
        anyhow::bail!("this runtime keeps no fleet view (an older kinfra, or no node name)");
    };
    let fleet: FleetView = serde_json::from_value(fleet)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&fleet)?);
    } else {
        print!("{}", table(&fleet));
    }
    Ok(ExitCode::SUCCESS)
}

/// The fleet as a table: one line per node, its services beneath.
fn table(fleet: &FleetView) -> String {
    let mut out = String::new();
    let width = fleet
        .nodes
        .iter()
        .map(|n| n.node.len() + 2)
        .max()
        .unwrap_or(4)
        .max(6);
    let _ = writeln!(
        out,
        "{:width$} {:5} {:>10}  SERVICES",
        "NODE", "STATE", "LAST SEEN"
    );
    for n in &fleet.nodes {
        let me = if n.node == fleet.node { " *" } else { "" };
        let services = n
            .services
            .iter()
            .map(|(name, s)| format!("{name}={}", s.state))
            .collect::<Vec<_>>()
            .join(" ");
        let _ = writeln!(
            out,
            "{:width$} {:5} {:>9.1}s  {}",
            format!("{}{me}", n.node),
            n.state,
            n.last_seen_s,
            if services.is_empty() { "-" } else { &services }
        );
    }
    out
}

async fn act(args: NodeServiceArgs, action: Action) -> anyhow::Result<ExitCode> {
    let state_dir = load::state_dir(&args.config)?;
    let mut conn = connect(&state_dir).await?;
    conn.send(&ControlRequest::Action {
        action,
        service: format!("{}@{}", args.service, args.node),
    })
    .await?;
    match conn.next_within(Duration::from_secs(60)).await? {
        Some(ControlResponse::Ok { .. }) => {
            println!("{} on {}: {}", args.service, args.node, action.as_str());
            Ok(ExitCode::SUCCESS)
        }
        Some(ControlResponse::Error { error }) if error.contains("unknown service") => {
            Err(InputError(error).into())
        }
        Some(ControlResponse::Error { error }) => anyhow::bail!("{error}"),
        other => anyhow::bail!("unexpected reply from the runtime: {other:?}"),
    }
}
