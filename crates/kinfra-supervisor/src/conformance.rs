//! The driver conformance suite: what every [`Resource`] adapter must do, checked against a
//! real one. kinfra-supervisor runs it for the process adapter, kinfra-docker for containers.
//!
//! Every wait is bounded and on a condition; a failed check is an `Err` naming it.

use kinfra_core::resource::{Observed, Resource, Run};
use kinfra_core::state::Health;
use std::sync::Arc;
use std::time::Duration;

/// The marker the long-running fixture prints.
pub const HELLO: &str = "kinfra-conformance-hello";

/// The resources the suite needs, built by the adapter's own test.
pub struct Fixtures {
    /// Prints [`HELLO`] on stdout, then runs until stopped (and ends on SIGTERM).
    pub long_running: Arc<dyn Resource>,
    /// Prints a line, then exits with code 3.
    pub exits_3: Arc<dyn Resource>,
    /// How long one start may take (an image pull, a container create).
    pub start_timeout: Duration,
}

async fn within<T>(
    what: &str,
    limit: Duration,
    fut: impl std::future::Future<Output = T>,
) -> Result<T, String> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| format!("{what}: not within {limit:?}"))
}

async fn wait_for_line(run: &mut Run, needle: &str, limit: Duration) -> Result<(), String> {
    within(&format!("output `{needle}`"), limit, async {
        while let Some(line) = run.output.recv().await {
            if line.text.contains(needle) {
                return Ok(());
            }
        }
        Err(format!("output ended before `{needle}`"))
    })
    .await?
}

/// Runs every check; the first failure is returned.
pub async fn run_all(f: &Fixtures) -> Result<(), String> {
    lifecycle(f.long_running.as_ref(), f.start_timeout).await?;
    exit_code(f.exits_3.as_ref(), f.start_timeout).await?;
    for r in [&f.long_running, &f.exits_3] {
        r.remove(false)
            .await
            .map_err(|e| format!("remove {}: {e}", r.name()))?;
        let after = r
            .status()
            .await
            .map_err(|e| format!("status after remove: {e}"))?;
        if after == Observed::Running {
            return Err(format!("{} still runs after remove", r.name()));
        }
    }
    Ok(())
}

/// start → output → running → second start adopts → stop ends the run → logs kept.
pub async fn lifecycle(r: &dyn Resource, start_timeout: Duration) -> Result<(), String> {
    let mut run = within("start", start_timeout, r.start())
        .await?
        .map_err(|e| format!("start: {e}"))?;
    wait_for_line(&mut run, HELLO, Duration::from_secs(10)).await?;
    let st = r.status().await.map_err(|e| format!("status: {e}"))?;
    if st != Observed::Running {
        return Err(format!("status after start is {st:?}, not Running"));
    }
    let again = within("second start", start_timeout, r.start())
        .await?
        .map_err(|e| format!("second start: {e}"))?;
    if !again.adopted || again.id != run.id {
        return Err(format!(
            "a second start must adopt the live run {} (got {}, adopted = {})",
            run.id, again.id, again.adopted
        ));
    }
    drop(again);
    let h = r.health().await.map_err(|e| format!("health: {e}"))?;
    if !r.has_own_health() && h != Health::Unknown {
        return Err(format!("health is {h} without a health check of its own"));
    }
    within(
        "stop",
        Duration::from_secs(20),
        r.stop(Duration::from_secs(5)),
    )
    .await?
    .map_err(|e| format!("stop: {e}"))?;
    let exit = within("exit after stop", Duration::from_secs(10), &mut run.exit)
        .await?
        .map_err(|_| "the run's exit was dropped without a value".to_string())?;
    let st = r.status().await.map_err(|e| format!("status: {e}"))?;
    if st == Observed::Running {
        return Err(format!("still running after stop ({exit})"));
    }
    within(
        "second stop",
        Duration::from_secs(10),
        r.stop(Duration::from_secs(1)),
    )
    .await?
    .map_err(|e| format!("stopping a stopped resource must succeed: {e}"))?;
    let logs = r.logs(50).await.map_err(|e| format!("logs: {e}"))?;
    if !logs.iter().any(|l| l.text.contains(HELLO)) {
        return Err(format!("logs lack `{HELLO}`: {logs:?}"));
    }
    Ok(())
}

/// A run that exits reports its exit code, through the run and through status.
pub async fn exit_code(r: &dyn Resource, start_timeout: Duration) -> Result<(), String> {
    let mut run = within("start", start_timeout, r.start())
        .await?
        .map_err(|e| format!("start: {e}"))?;
    let exit = within("exit", Duration::from_secs(20), &mut run.exit)
        .await?
        .map_err(|_| "the run's exit was dropped without a value".to_string())?;
    if exit.code != Some(3) {
        return Err(format!("expected exit code 3, got {exit}"));
    }
    let st = r.status().await.map_err(|e| format!("status: {e}"))?;
    match st {
        Observed::Exited(e) if e.code == Some(3) => Ok(()),
        other => Err(format!("status after exit is {other:?}, not Exited(3)")),
    }
}
