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

/// One mapping of `/proc/self/smaps` and the figures [`release_startup_code`] looks at.
#[derive(Debug, Default, PartialEq)]
struct Mapping {
    start: usize,
    end: usize,
    perms: String,
    path: String,
    rss_kib: u64,
    anonymous_kib: u64,
}

/// The mappings of an smaps text.
fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else {
            continue;
        };
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(start), Ok(end)) =
                (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            let perms = fields.next().unwrap_or_default().to_owned();
            // offset, device, inode, then the path (which may hold spaces).
            let path = fields.skip(3).collect::<Vec<_>>().join(" ");
            out.push(Mapping {
                start,
                end,
                perms,
                path,
                ..Mapping::default()
            });
            continue;
        }
        let kib = || fields.clone().next().and_then(|v| v.parse::<u64>().ok());
        if let Some(m) = out.last_mut() {
            match first {
                "Rss:" => m.rss_kib = kib().unwrap_or(0),
                "Anonymous:" => m.anonymous_kib = kib().unwrap_or(0),
                _ => {}
            }
        }
    }
    out
}

/// Unmaps the pages of this executable's code and read-only data that are resident, once
/// the runtime has started: starting touches code all over a large binary (parsing, the
/// store's engine, TLS, pingora), and the kernel maps it in 64 KiB windows, so an idle
/// runtime would keep tens of MiB of startup-only code in its resident set. Only mappings of
/// the executable that are not writable and hold no anonymous (copied-on-write) pages are
/// released (`MADV_DONTNEED`): their pages are the file's page cache, so the next use maps
/// them again (a minor fault) with the same contents, and until then they are ordinary cache
/// the kernel may reclaim. (Smaps counts a freshly written binary's pages as dirty until they
/// reach the disk; that is the page cache's state, not a private copy.) Returns the resident
/// KiB released.
pub fn release_startup_code() -> u64 {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return 0;
    };
    let Some(exe) = exe.to_str() else {
        return 0;
    };
    let Ok(text) = std::fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    let mut released = 0;
    for m in parse_smaps(&text) {
        let clean_file_pages = m.path == exe
            && m.perms.starts_with('r')
            && m.perms.get(1..2) == Some("-")
            && m.perms.ends_with('p')
            && m.anonymous_kib == 0;
        if !clean_file_pages || m.rss_kib == 0 || m.end <= m.start {
            continue;
        }
        // SAFETY: the range is one whole mapping of this process's executable, read-only
        // and without private pages; MADV_DONTNEED only drops its page-table entries, and
        // the next access maps the same file pages again, so no memory changes contents.
        let r = unsafe {
            libc::madvise(
                m.start as *mut libc::c_void,
                m.end - m.start,
                libc::MADV_DONTNEED,
            )
        };
        if r == 0 {
            released += m.rss_kib;
        }
    }
    released
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
    fn parses_smaps_mappings() {
        let text = "5594b1909000-5594b70b4000 r-xp 01234000 fd:00 1234 /usr/bin/kin fra\n\
                    Size:              89772 kB\n\
                    Rss:               47152 kB\n\
                    Private_Dirty:         0 kB\n\
                    Anonymous:             0 kB\n\
                    7f00-8000 rw-p 00000000 00:00 0 \n\
                    Rss:                   8 kB\n\
                    Anonymous:             8 kB\n";
        let maps = parse_smaps(text);
        assert_eq!(maps.len(), 2);
        assert_eq!(maps[0].start, 0x5594b1909000);
        assert_eq!(maps[0].end, 0x5594b70b4000);
        assert_eq!(maps[0].perms, "r-xp");
        assert_eq!(maps[0].path, "/usr/bin/kin fra");
        assert_eq!((maps[0].rss_kib, maps[0].anonymous_kib), (47152, 0));
        assert_eq!(maps[1].path, "");
        assert_eq!(maps[1].anonymous_kib, 8);
    }

    /// Releasing the executable's clean code pages leaves the process working: the code
    /// runs again right after (mapped back from the page cache).
    #[test]
    fn released_code_still_runs() {
        let _ = release_startup_code();
        let sampler = ProcessSampler::default();
        sampler.sample(&[std::process::id()]);
        assert!(sampler.get(std::process::id()).is_some());
        assert!(!parse_smaps("").iter().any(|m| m.rss_kib > 0));
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
