//! CPU and memory of each service's process tree, sampled from `/proc` every few seconds.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// How often the process table is read.
pub const INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy)]
struct Proc {
    ppid: u32,
    /// utime + stime, in clock ticks.
    ticks: u64,
    rss_pages: u64,
}

/// The process table from `/proc/*/stat` ([`kinfra_core::procstat`]), by PID.
fn read_all() -> HashMap<u32, Proc> {
    kinfra_core::procstat::all()
        .into_iter()
        .filter_map(|s| {
            let proc = Proc {
                ppid: u32::try_from(s.ppid).ok()?,
                ticks: s.utime + s.stime,
                rss_pages: s.rss_pages,
            };
            Some((u32::try_from(s.pid).ok()?, proc))
        })
        .collect()
}

/// The tree of `root`: it and all its descendants.
fn tree(procs: &HashMap<u32, Proc>, children: &HashMap<u32, Vec<u32>>, root: u32) -> (u64, u64) {
    let (mut ticks, mut pages) = (0, 0);
    let mut stack = vec![root];
    let mut seen = 0;
    while let Some(pid) = stack.pop() {
        seen += 1;
        if seen > 100_000 {
            break;
        }
        if let Some(p) = procs.get(&pid) {
            ticks += p.ticks;
            pages += p.rss_pages;
        }
        if let Some(kids) = children.get(&pid) {
            stack.extend(kids);
        }
    }
    (ticks, pages)
}

/// Latest CPU% and memory by root PID.
#[derive(Debug, Default, Clone)]
pub struct ProcessSampler {
    inner: Arc<RwLock<Samples>>,
}

#[derive(Debug, Default)]
struct Samples {
    /// root pid -> (cpu percent, memory bytes)
    latest: HashMap<u32, (f64, u64)>,
    /// root pid -> (ticks, when) at the previous sample
    previous: HashMap<u32, (u64, Instant)>,
}

impl ProcessSampler {
    /// CPU% and memory of the tree rooted at `pid`, once it has been sampled.
    pub fn get(&self, pid: u32) -> Option<(f64, u64)> {
        match self.inner.read() {
            Ok(s) => s.latest.get(&pid).copied(),
            Err(p) => p.into_inner().latest.get(&pid).copied(),
        }
    }

    /// Samples the trees of `roots` once.
    pub fn sample(&self, roots: &[u32]) {
        let procs = read_all();
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        for (pid, p) in &procs {
            children.entry(p.ppid).or_default().push(*pid);
        }
        // SAFETY: sysconf has no preconditions.
        let (hz, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK).max(1) as f64,
                libc::sysconf(libc::_SC_PAGESIZE).max(1) as u64,
            )
        };
        let now = Instant::now();
        let mut guard = match self.inner.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let samples = &mut *guard;
        let mut latest = HashMap::new();
        let mut previous = HashMap::new();
        for &root in roots {
            if !procs.contains_key(&root) {
                continue;
            }
            let (ticks, pages) = tree(&procs, &children, root);
            let cpu = match samples.previous.get(&root) {
                Some((before, at)) if ticks >= *before => {
                    let secs = now.duration_since(*at).as_secs_f64().max(0.001);
                    (ticks - before) as f64 / hz / secs * 100.0
                }
                _ => 0.0,
            };
            latest.insert(root, ((cpu * 10.0).round() / 10.0, pages * page));
            previous.insert(root, (ticks, now));
        }
        samples.latest = latest;
        samples.previous = previous;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_a_busy_tree() {
        // A shell whose child burns CPU: the tree's CPU and memory show up under the shell.
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done & wait"])
            .process_group(0)
            .spawn()
            .expect("spawn");
        let sampler = ProcessSampler::default();
        let pid = child.id();
        sampler.sample(&[pid]);
        // On a loaded machine the busy loop gets only its share of a core: sample until the
        // share shows (bounded), rather than expecting a fixed figure after a fixed sleep.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let (cpu, mem) = loop {
            std::thread::sleep(Duration::from_millis(300));
            sampler.sample(&[pid]);
            let (cpu, mem) = sampler.get(pid).expect("sampled");
            if cpu > 5.0 || std::time::Instant::now() > deadline {
                break (cpu, mem);
            }
        };
        // SAFETY: killing the process group of a child we started.
        unsafe {
            libc::kill(-(pid as i32), libc::SIGKILL);
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(cpu > 5.0, "cpu {cpu}");
        assert!(mem > 100 * 1024, "memory {mem}");
        assert!(sampler.get(999_999_999).is_none());
    }
}
