//! Stopping what a killed instance of kinfra left running, at boot and before anything
//! starts: each process still the same one (PID and `/proc` start time) is SIGKILLed with its
//! group, then given a moment to finish dying so its ports and files are free. Where the
//! list comes from (the store's open runs) is the caller's business.

use crate::{procfs, spawn};
pub use kinfra_core::persist::LeftRunning;
use std::time::Duration;

/// How long the killed get to finish dying (a dying process holds its sockets until it is a
/// zombie).
const DYING: Duration = Duration::from_secs(3);

/// Kills every process of `left` that is still the one recorded, with its process group when
/// it leads one, and waits (bounded) until they are gone. Returns the ones it killed; a PID
/// that now names another process is never touched.
pub async fn stop_left_running(left: &[LeftRunning]) -> Vec<LeftRunning> {
    let mut killed = Vec::new();
    for p in left {
        if p.pid <= 1 || !procfs::is_same_alive(p.pid, p.start_time) {
            continue;
        }
        let leads_group = procfs::stat(p.pid).is_some_and(|s| s.pgid == p.pid);
        spawn::signal_exact(p.pid, p.start_time, libc::SIGKILL);
        if leads_group {
            spawn::signal_group(p.pid, libc::SIGKILL);
        }
        killed.push(*p);
    }
    let deadline = tokio::time::Instant::now() + DYING;
    while killed
        .iter()
        .any(|p| procfs::is_same_alive(p.pid, p.start_time))
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    fn sleeper() -> std::process::Child {
        Command::new("sleep")
            .arg("300")
            .process_group(0)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn sleep: {e}"))
    }

    #[tokio::test]
    async fn kills_the_same_process_and_spares_a_reused_pid() {
        let mut victim = sleeper();
        let mut bystander = sleeper();
        let start =
            |c: &std::process::Child| procfs::stat(c.id() as i32).map_or(0, |s| s.start_time);
        let victim_left = LeftRunning {
            pid: victim.id() as i32,
            start_time: start(&victim),
        };
        // Same PID, another start time: the PID was reused by another process.
        let reused = LeftRunning {
            pid: bystander.id() as i32,
            start_time: start(&bystander) + 1,
        };
        let killed = stop_left_running(&[victim_left, reused]).await;
        let victim_status = victim.wait();
        let bystander_alive = matches!(bystander.try_wait(), Ok(None));
        let _ = bystander.kill();
        let _ = bystander.wait();
        assert_eq!(killed, vec![victim_left]);
        assert!(
            victim_status.is_ok_and(|s| {
                use std::os::unix::process::ExitStatusExt;
                s.signal() == Some(libc::SIGKILL)
            }),
            "the leftover was not killed"
        );
        assert!(bystander_alive, "a reused PID was killed");
    }
}
