//! Terminal output: colour choice, per-service colour prefixes, and the status table.

use kinfra::{LogStream, ServiceLogLine, StatusReport};
use kinfra_core::status::RunRecord;
use std::io::IsTerminal;

/// When to colour output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// When stdout is a terminal and NO_COLOR is unset.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

impl ColorChoice {
    /// Resolves `auto` against the terminal and `NO_COLOR`.
    pub fn enabled(self) -> bool {
        match self {
            Self::Always => true,
            Self::Never => false,
            Self::Auto => std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }
}

const PALETTE: &[&str] = &["36", "33", "32", "35", "34", "96", "93", "92", "95", "94"];

/// Prints `name | message` prefixes, one stable colour per service.
#[derive(Debug, Clone)]
pub struct Prefixer {
    color: bool,
    width: usize,
}

impl Prefixer {
    /// A prefixer padding names to the longest of `names`.
    pub fn new<'a>(color: bool, names: impl IntoIterator<Item = &'a str>) -> Self {
        let width = names.into_iter().map(str::len).max().unwrap_or(6).max(6);
        Self { color, width }
    }

    fn colour_of(name: &str) -> &'static str {
        let hash = name.bytes().fold(5381u32, |h, b| {
            h.wrapping_mul(33).wrapping_add(u32::from(b))
        });
        PALETTE[hash as usize % PALETTE.len()]
    }

    /// `name | ` in the service's colour.
    pub fn prefix(&self, name: &str) -> String {
        let padded = format!("{name:<width$}", width = self.width);
        if self.color {
            format!("\x1b[{}m{padded} |\x1b[0m ", Self::colour_of(name))
        } else {
            format!("{padded} | ")
        }
    }

    /// One log line, prefixed; stderr and system lines are marked.
    pub fn log_line(&self, line: &ServiceLogLine) -> String {
        let message = &line.line.message;
        let body = match (line.line.stream, self.color) {
            (LogStream::System, true) => format!("\x1b[2m{message}\x1b[0m"),
            (LogStream::Stderr, true) if line.line.level == "error" => {
                format!("\x1b[31m{message}\x1b[0m")
            }
            _ => message.clone(),
        };
        format!("{}{body}", self.prefix(&line.service))
    }

    /// A line from kinfra itself.
    pub fn kinfra_line(&self, message: &str) -> String {
        if self.color {
            format!(
                "\x1b[1m{:<width$} |\x1b[0m {message}",
                "kinfra",
                width = self.width
            )
        } else {
            format!("{:<width$} | {message}", "kinfra", width = self.width)
        }
    }
}

/// The tunnel's line under the status table: `tunnel NAME: STATE — URLs (N connections)`,
/// or the error.
fn tunnel_line(tunnel: &serde_json::Value) -> String {
    let text = |key: &str| tunnel.get(key).and_then(|v| v.as_str()).unwrap_or("-");
    let urls: Vec<&str> = tunnel
        .get("urls")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|u| u.as_str()).collect())
        .unwrap_or_default();
    let mut line = format!("tunnel {}: {}", text("name"), text("state"));
    if text("state") == "failed" {
        line.push_str(&format!(" — {}\n", text("message")));
        return line;
    }
    if !urls.is_empty() {
        line.push_str(&format!(" — {}", urls.join(" ")));
    }
    let count = |key: &str| tunnel.get(key).and_then(|v| v.as_u64());
    if let Some(n) = count("ready_connections").or_else(|| count("connections")) {
        line.push_str(&format!(" ({n} connections)"));
    }
    if text("state") == "starting" {
        line.push_str(&format!(" — {}", text("message")));
    } else if let Some(error) = tunnel.get("last_error").and_then(|v| v.as_str()) {
        line.push_str(&format!(" (last error: {error})"));
    }
    line.push('\n');
    line
}

/// The status table for people.
pub fn status_table(report: &StatusReport) -> String {
    // A SLEEP column only when something has `scale_to_zero`.
    let sleeps = report.services.values().any(|s| s.sleep.is_some());
    let mut header = vec![
        "NAME".to_string(),
        "KIND".into(),
        "STATE".into(),
        "HEALTH".into(),
        "PID".into(),
        "PORT".into(),
        "UPTIME".into(),
        "RESTARTS".into(),
    ];
    if sleeps {
        header.push("SLEEP".into());
    }
    header.push("MESSAGE".into());
    let mut rows = vec![header];
    for (name, s) in &report.services {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        let mut row = vec![
            name.clone(),
            s.kind.clone(),
            s.state.to_string(),
            s.health.to_string(),
            opt(s.pid.map(|p| p.to_string())),
            opt(s.port.map(|p| p.to_string())),
            opt(s.uptime.clone()),
            s.restarts.to_string(),
        ];
        if sleeps {
            row.push(sleep_cell(s));
        }
        row.push(s.status_message.clone());
        rows.push(row);
    }
    let node = report
        .node
        .as_deref()
        .map(|n| format!(" on node {n}"))
        .unwrap_or_default();
    let header = format!(
        "project {}{node} — {} services: {} running, {} starting, {} errors\n",
        report.project,
        report.stats.total,
        report.stats.running,
        report.stats.starting,
        report.stats.error
    );
    let mut out = header + &table(&rows);
    if !report.pending_restart.is_empty() {
        out.push_str(&format!(
            "pending restart: {} (changed in the config; kinfra runs the old values until it restarts)\n",
            report.pending_restart.join(", ")
        ));
    }
    if let Some(tunnel) = &report.tunnel {
        out.push_str(&tunnel_line(tunnel));
    }
    if !report.providers.is_empty() {
        let mut rows = vec![[
            "PROVIDER INSTANCE".to_string(),
            "PROVIDER".into(),
            "STATE".into(),
            "RESOURCES".into(),
        ]];
        for (name, p) in &report.providers {
            rows.push([
                name.clone(),
                p.provider.clone(),
                match &p.reason {
                    Some(reason) => format!("{}: {reason}", p.state),
                    None => p.state.clone(),
                },
                p.resources.join(", "),
            ]);
        }
        out.push('\n');
        out.push_str(&table(&rows));
    }
    out
}

/// Where a `scale_to_zero` target stands: `sleeps in 4m 10s`, `asleep`, `awake: 2 open
/// connections`, or `-` for the rest.
pub(super) fn sleep_cell(s: &kinfra_core::status::ServiceStatus) -> String {
    let Some(sleep) = &s.sleep else {
        return "-".into();
    };
    if s.state == kinfra_core::state::ServiceState::Sleeping {
        return "asleep".into();
    }
    if let Some(left) = sleep.sleeps_in_s {
        return format!("sleeps in {}", human_secs(left));
    }
    if let Some(why) = &sleep.kept_awake_by {
        return format!("awake: {why}");
    }
    "-".into()
}

/// `4m 10s`, `1h 5m`, `12s`.
fn human_secs(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

/// Lines of left-aligned columns two spaces apart; the last column is not padded.
pub fn table<R: AsRef<[String]>>(rows: &[R]) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (i, cell) in row.as_ref().iter().enumerate() {
            if widths.len() <= i {
                widths.push(0);
            }
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let row = row.as_ref();
        let line: Vec<String> = row
            .iter()
            .zip(widths.iter())
            .enumerate()
            .map(|(i, (cell, w))| {
                if i == row.len() - 1 {
                    cell.clone()
                } else {
                    format!("{cell:<w$}")
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `kinfra runtime history` as a table, newest run first.
pub fn history_table(runs: &[RunRecord]) -> String {
    let mut rows = vec![vec![
        "SERVICE".to_string(),
        "RUN".into(),
        "PID".into(),
        "STARTED".into(),
        "ENDED".into(),
        "EXIT".into(),
        "REASON".into(),
    ]];
    for r in runs {
        let exit = r.exit.map_or_else(|| "-".to_string(), |e| e.to_string());
        rows.push(vec![
            r.service.clone(),
            r.n.to_string(),
            r.pid.to_string(),
            r.started_at.clone(),
            r.ended_at.clone().unwrap_or_else(|| "running".into()),
            exit,
            r.reason.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    table(&rows)
}
