//! CPU and memory of each service's process tree, sampled from `/proc` on demand: while
//! someone reads status (the dashboard, `/metrics`, `runtime status`, the bus), at most every
//! [`INTERVAL`]; nothing is read while nobody looks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// How often the trees are sampled while status is being read.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// How long after the last read of status sampling goes on: a reader polling at least this
/// often keeps it going; a slower one sees the sample its previous read started.
pub const READERS_KEEP: Duration = INTERVAL;

/// After a pause in sampling, a second sample this long after the first, so the CPU shown
/// covers the last moment rather than the whole pause.
const CATCH_UP: Duration = Duration::from_secs(1);

/// utime + stime (clock ticks) and resident pages of one tree.
fn tree(root: u32) -> Option<(u64, u64)> {
    let root_pid = i32::try_from(root).ok()?;
    let top = kinfra_core::procstat::stat(root_pid)?;
    let (mut ticks, mut pages) = (top.utime + top.stime, top.rss_pages);
    let members = match kinfra_supervisor::procfs::descendant_pids(root_pid) {
        Some(pids) => pids
            .into_iter()
            .filter_map(kinfra_core::procstat::stat)
            .collect(),
        None => {
            kinfra_supervisor::procfs::descendants(&kinfra_supervisor::procfs::snapshot(), root_pid)
        }
    };
    for p in members {
        ticks += p.utime + p.stime;
        pages += p.rss_pages;
    }
    Some((ticks, pages))
}

/// Latest CPU% and memory by root PID, sampled while someone reads them.
#[derive(Debug, Clone)]
pub struct ProcessSampler {
    inner: Arc<Inner>,
}

impl Default for ProcessSampler {
    fn default() -> Self {
        Self::with_timing(INTERVAL, READERS_KEEP)
    }
}

#[derive(Debug)]
struct Inner {
    /// How often to sample while status is read.
    interval: Duration,
    /// How long after the last read sampling goes on.
    keep: Duration,
    samples: RwLock<Samples>,
    /// When status was last read.
    read_at: Mutex<Option<Instant>>,
    /// The sampling task is asleep until a read wakes it.
    waiting: AtomicBool,
    wake: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Samples {
    /// root pid -> (cpu percent, memory bytes)
    latest: HashMap<u32, (f64, u64)>,
    /// root pid -> (ticks, when) at the previous sample
    previous: HashMap<u32, (u64, Instant)>,
    /// When the last sample was taken.
    taken: Option<Instant>,
}

impl ProcessSampler {
    /// A sampler that samples every `interval` until `keep` after the last read.
    pub fn with_timing(interval: Duration, keep: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                interval,
                keep,
                samples: RwLock::default(),
                read_at: Mutex::default(),
                waiting: AtomicBool::default(),
                wake: tokio::sync::Notify::new(),
            }),
        }
    }

    /// CPU% and memory of the tree rooted at `pid`, once it has been sampled.
    pub fn get(&self, pid: u32) -> Option<(f64, u64)> {
        match self.inner.samples.read() {
            Ok(s) => s.latest.get(&pid).copied(),
            Err(p) => p.into_inner().latest.get(&pid).copied(),
        }
    }

    /// Someone reads status: sampling runs (or goes on) for [`READERS_KEEP`]. The first read
    /// after a quiet time shows the last sample (if any) and wakes the sampler.
    pub fn wanted(&self) {
        *lock(&self.inner.read_at) = Some(Instant::now());
        if self.inner.waiting.swap(false, Ordering::SeqCst) {
            self.inner.wake.notify_one();
        }
    }

    /// True when status was read within [`READERS_KEEP`].
    fn readers(&self) -> bool {
        lock(&self.inner.read_at).is_some_and(|at| at.elapsed() < self.inner.keep)
    }

    /// When the last sample was taken.
    fn taken(&self) -> Option<Instant> {
        match self.inner.samples.read() {
            Ok(s) => s.taken,
            Err(p) => p.into_inner().taken,
        }
    }

    /// Waits until status is read (at once when it was read within [`READERS_KEEP`]).
    pub async fn until_wanted(&self) {
        loop {
            // Set before looking at the last read: a read after the look sees the flag and
            // leaves a wake-up (stored by `Notify` when nobody waits yet).
            self.inner.waiting.store(true, Ordering::SeqCst);
            if self.readers() {
                self.inner.waiting.store(false, Ordering::SeqCst);
                return;
            }
            self.inner.wake.notified().await;
        }
    }

    /// Samples the trees of `roots` once (walking each tree down from its root).
    pub fn sample(&self, roots: &[u32]) {
        let trees: Vec<(u32, (u64, u64))> = roots
            .iter()
            .filter_map(|&root| tree(root).map(|t| (root, t)))
            .collect();
        // SAFETY: sysconf has no preconditions.
        let (hz, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK).max(1) as f64,
                libc::sysconf(libc::_SC_PAGESIZE).max(1) as u64,
            )
        };
        let now = Instant::now();
        let mut guard = match self.inner.samples.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let samples = &mut *guard;
        let mut latest = HashMap::new();
        let mut previous = HashMap::new();
        for (root, (ticks, pages)) in trees {
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
        samples.taken = Some(now);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Samples every [`INTERVAL`] while status is read (see [`ProcessSampler::wanted`]) and
/// sleeps otherwise. `roots` gives the root PIDs of the running services; sampling runs off
/// the async threads. Ends when the blocking pool is gone.
pub async fn sample_on_demand(sampler: ProcessSampler, roots: impl Fn() -> Vec<u32>) {
    loop {
        sampler.until_wanted().await;
        let interval = sampler.inner.interval;
        let paused = sampler.taken().is_none_or(|at| at.elapsed() > interval * 2);
        if !sample_once(&sampler, roots()).await {
            return;
        }
        if paused {
            tokio::time::sleep(CATCH_UP.min(interval)).await;
            if !sample_once(&sampler, roots()).await {
                return;
            }
        }
        tokio::time::sleep(interval).await;
    }
}

async fn sample_once(sampler: &ProcessSampler, roots: Vec<u32>) -> bool {
    let sampler = sampler.clone();
    tokio::task::spawn_blocking(move || sampler.sample(&roots))
        .await
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing is sampled while nobody reads; a read starts sampling, which stops again
    /// once reads stop (counted calls, no timing asserted).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn samples_only_while_status_is_read() {
        use std::sync::atomic::AtomicUsize;
        let interval = Duration::from_millis(50);
        let keep = Duration::from_millis(200);
        let sampler = ProcessSampler::with_timing(interval, keep);
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let me = std::process::id();
        let task = tokio::spawn(sample_on_demand(sampler.clone(), move || {
            counted.fetch_add(1, Ordering::SeqCst);
            vec![me]
        }));
        tokio::time::sleep(interval * 10).await;
        assert_eq!(calls.load(Ordering::SeqCst), 0, "sampled with no reader");
        assert!(sampler.get(me).is_none());

        sampler.wanted();
        let deadline = Instant::now() + Duration::from_secs(30);
        while sampler.get(me).is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (_, memory) = sampler.get(me).expect("a sample after the first read");
        assert!(memory > 0);
        assert!(calls.load(Ordering::SeqCst) >= 1);

        // Reads stop: after the keep time, sampling stops.
        let deadline = Instant::now() + Duration::from_secs(30);
        let settled = loop {
            let before = calls.load(Ordering::SeqCst);
            tokio::time::sleep(keep + interval * 4).await;
            let after = calls.load(Ordering::SeqCst);
            if after == before || Instant::now() > deadline {
                break after;
            }
        };
        tokio::time::sleep(interval * 10).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            settled,
            "still sampling with no reader"
        );

        // A new read starts it again.
        sampler.wanted();
        let deadline = Instant::now() + Duration::from_secs(30);
        while calls.load(Ordering::SeqCst) == settled && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            calls.load(Ordering::SeqCst) > settled,
            "a read did not wake the sampler"
        );
        task.abort();
    }

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
