//! Reading `/proc`: process identity (PID plus start time), parent links, process groups
//! (`/proc/PID/stat` through [`kinfra_core::procstat`]), the kinfra tag in a process's
//! environment, and which process holds a listening port.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

pub use kinfra_core::procstat::{ProcStat, all, is_same_alive, parse_stat, stat};

/// How old a shared [`snapshot`] may be. Every service's actor walks the process table
/// (periodically, and while stopping); with hundreds of services, one read of `/proc` per
/// interval serves them all instead of one each.
pub const SNAPSHOT_TTL: std::time::Duration = std::time::Duration::from_millis(25);

struct Cache {
    taken: std::time::Instant,
    procs: std::sync::Arc<Vec<ProcStat>>,
    /// Value of one environment variable per (pid, start time); `None` when it has none.
    env: std::collections::HashMap<(i32, u64), Option<std::sync::Arc<str>>>,
}

fn cache() -> &'static std::sync::Mutex<Option<Cache>> {
    static CACHE: std::sync::OnceLock<std::sync::Mutex<Option<Cache>>> = std::sync::OnceLock::new();
    CACHE.get_or_init(|| std::sync::Mutex::new(None))
}

/// The process table, read at most [`SNAPSHOT_TTL`] ago. For decisions that must see the
/// newest state (cleanup of a previous instance at start), use [`all`].
pub fn snapshot() -> std::sync::Arc<Vec<ProcStat>> {
    let mut guard = match cache().lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    if let Some(c) = guard.as_ref()
        && c.taken.elapsed() < SNAPSHOT_TTL
    {
        return c.procs.clone();
    }
    let procs = std::sync::Arc::new(all());
    let mut env = guard.take().map(|c| c.env).unwrap_or_default();
    env.retain(|(pid, start), _| {
        procs
            .iter()
            .any(|p| p.pid == *pid && p.start_time == *start)
    });
    *guard = Some(Cache {
        taken: std::time::Instant::now(),
        procs: procs.clone(),
        env,
    });
    procs
}

/// True when the process's environment has `NAME=VALUE` with VALUE starting with `prefix`,
/// remembering the value per process (an environment is fixed once a process runs) so
/// repeated sweeps read each process's `environ` once. `name` must be the same on every
/// call (the supervisor's tag variable).
pub fn environ_has_cached(p: &ProcStat, name: &str, prefix: &str) -> bool {
    let key = (p.pid, p.start_time);
    {
        let guard = match cache().lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(value) = guard.as_ref().and_then(|c| c.env.get(&key)) {
            return value.as_deref().is_some_and(|v| v.starts_with(prefix));
        }
    }
    let value = environ_value(p.pid, name).map(std::sync::Arc::<str>::from);
    let hit = value.as_deref().is_some_and(|v| v.starts_with(prefix));
    let mut guard = match cache().lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some(c) = guard.as_mut() {
        c.env.insert(key, value);
    }
    hit
}

/// The value of `name` in a process's environment.
pub fn environ_value(pid: i32, name: &str) -> Option<String> {
    let bytes = fs::read(format!("/proc/{pid}/environ")).ok()?;
    let mut needle = Vec::with_capacity(name.len() + 1);
    needle.extend_from_slice(name.as_bytes());
    needle.push(b'=');
    bytes
        .split(|b| *b == 0)
        .find_map(|entry| entry.strip_prefix(needle.as_slice()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// All descendants (children, grandchildren, ...) of `root` among `procs`.
pub fn descendants(procs: &[ProcStat], root: i32) -> Vec<ProcStat> {
    let mut children: BTreeMap<i32, Vec<&ProcStat>> = BTreeMap::new();
    for p in procs {
        children.entry(p.ppid).or_default().push(p);
    }
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        if let Some(kids) = children.get(&pid) {
            for k in kids {
                if k.pid != root && seen.insert(k.pid) {
                    out.push(**k);
                    stack.push(k.pid);
                }
            }
        }
    }
    out
}

/// Whether this kernel lists a task's children in `/proc/PID/task/TID/children`
/// (`CONFIG_PROC_CHILDREN`), checked once.
fn children_files() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let pid = std::process::id();
        Path::new(&format!("/proc/{pid}/task/{pid}/children")).exists()
    })
}

/// The PIDs of `root`'s descendants (children, grandchildren, ...), walked down from `root`
/// through `/proc/PID/task/*/children`: the cost grows with the tree, not with the whole
/// process table. `None` when the kernel has no children files (use [`snapshot`] and
/// [`descendants`] instead). A process forking or exiting during the walk may be missed.
pub fn descendant_pids(root: i32) -> Option<Vec<i32>> {
    if !children_files() {
        return None;
    }
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.filter_map(|t| t.ok()) {
            let Ok(text) = fs::read_to_string(task.path().join("children")) else {
                continue;
            };
            for child in text
                .split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok())
            {
                if child != root && out.len() < 100_000 && seen.insert(child) {
                    out.push(child);
                    stack.push(child);
                }
            }
        }
    }
    Some(out)
}

/// True when the process's environment has `NAME=VALUE` with VALUE starting with `prefix`.
pub fn environ_has(pid: i32, name: &str, prefix: &str) -> bool {
    let Ok(bytes) = fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let mut needle = Vec::with_capacity(name.len() + 1 + prefix.len());
    needle.extend_from_slice(name.as_bytes());
    needle.push(b'=');
    needle.extend_from_slice(prefix.as_bytes());
    bytes
        .split(|b| *b == 0)
        .any(|entry| entry.starts_with(&needle))
}

/// The command line of a process, for messages (`None` when unreadable).
pub fn cmdline(pid: i32) -> Option<String> {
    let bytes = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let parts: Vec<String> = bytes
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    if parts.is_empty() {
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        return Some(format!("[{}]", comm.trim()));
    }
    Some(parts.join(" "))
}

/// Socket inodes listening (TCP state 0A) on `port`, from `/proc/net/tcp` and `tcp6`.
pub fn listening_inodes(port: u16) -> Vec<u64> {
    let mut out = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = fs::read_to_string(file) {
            out.extend(parse_net_tcp_listeners(&text, port));
        }
    }
    out
}

/// Parses the text of `/proc/net/tcp{,6}`, returning the inodes of sockets listening on `port`.
pub fn parse_net_tcp_listeners(text: &str, port: u16) -> Vec<u64> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 10 {
            continue;
        }
        let Some((_, port_hex)) = cols[1].rsplit_once(':') else {
            continue;
        };
        if u16::from_str_radix(port_hex, 16) != Ok(port) || cols[3] != "0A" {
            continue;
        }
        if let Ok(inode) = cols[9].parse::<u64>()
            && inode != 0
        {
            out.push(inode);
        }
    }
    out
}

/// The PID of a process holding one of the socket `inodes`, found through `/proc/*/fd`.
pub fn socket_holder(inodes: &[u64]) -> Option<i32> {
    if inodes.is_empty() {
        return None;
    }
    let wanted: BTreeSet<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let dir = fs::read_dir("/proc").ok()?;
    for entry in dir.filter_map(|e| e.ok()) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(Path::new("/proc").join(pid.to_string()).join("fd")) else {
            continue;
        };
        for fd in fds.filter_map(|e| e.ok()) {
            if let Ok(target) = fs::read_link(fd.path())
                && let Some(t) = target.to_str()
                && wanted.contains(t)
            {
                return Some(pid);
            }
        }
    }
    None
}

/// Clock ticks per second, for turning start times into durations.
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 { v as u64 } else { 100 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_descendants() {
        let p = |pid, ppid| ProcStat {
            pid,
            state: 'S',
            ppid,
            pgid: pid,
            sid: pid,
            start_time: 1,
            ..ProcStat::default()
        };
        let procs = vec![p(10, 1), p(11, 10), p(12, 11), p(13, 1), p(14, 12)];
        let mut d: Vec<i32> = descendants(&procs, 10).iter().map(|p| p.pid).collect();
        d.sort();
        assert_eq!(d, vec![11, 12, 14]);
    }

    #[test]
    fn walks_descendants_through_children_files() {
        // sh -> sh -> sleep: both below the outer shell are found, the outer one is not.
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sh -c 'sleep 30; true' & wait"])
            .process_group(0)
            .spawn()
            .expect("spawn sh");
        let root = child.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let found = loop {
            let found = descendant_pids(root).expect("children files (CONFIG_PROC_CHILDREN)");
            if found.len() >= 2 || std::time::Instant::now() > deadline {
                break found;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        // SAFETY: killing the process group of a child this test started.
        unsafe { libc::kill(-root, libc::SIGKILL) };
        let _ = child.wait();
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(!found.contains(&root));
    }

    #[test]
    fn parses_net_tcp() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:1F90 0100007F:C000 01 00000000:00000000 00:00000000 00000000     0        0 555 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(parse_net_tcp_listeners(text, 8080), vec![12345]);
        assert!(parse_net_tcp_listeners(text, 8081).is_empty());
    }

    #[test]
    fn finds_the_holder_of_a_listening_port() {
        let Ok(l) = std::net::TcpListener::bind("127.0.0.1:0") else {
            return;
        };
        let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
        let holder = socket_holder(&listening_inodes(port));
        assert_eq!(holder, Some(std::process::id() as i32));
    }
}
