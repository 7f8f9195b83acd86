//! The one reader of `/proc/PID/stat`: process identity (PID plus start time), parent and
//! group links, CPU time and resident memory. The supervisor (stopping, leftovers), the store
//! (the start time recorded with a run) and the runtime's CPU/memory sampler all read it here.

use std::fs;

/// The fields of `/proc/PID/stat` kinfra uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcStat {
    /// The process ID.
    pub pid: i32,
    /// One-letter state (`R`, `S`, `Z`, ...).
    pub state: char,
    /// Parent PID.
    pub ppid: i32,
    /// Process group ID.
    pub pgid: i32,
    /// Session ID.
    pub sid: i32,
    /// CPU time in user mode, in clock ticks (field 14).
    pub utime: u64,
    /// CPU time in kernel mode, in clock ticks (field 15).
    pub stime: u64,
    /// Start time after boot in clock ticks (field 22): with the PID, it names a process
    /// uniquely, so a reused PID is never mistaken for the one recorded.
    pub start_time: u64,
    /// Resident set size in pages (field 24).
    pub rss_pages: u64,
}

impl ProcStat {
    /// True when the process has exited and only waits to be reaped.
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z' || self.state == 'X'
    }
}

/// Parses the text of `/proc/PID/stat`. The command name is in parentheses and may itself
/// contain spaces and parentheses, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid: i32 = text.get(..open)?.trim().parse().ok()?;
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); field N is rest[N - 3].
    let field = |n: usize| rest.get(n - 3).copied();
    let number = |n: usize| field(n)?.parse::<u64>().ok();
    Some(ProcStat {
        pid,
        state: field(3)?.chars().next()?,
        ppid: field(4)?.parse().ok()?,
        pgid: field(5)?.parse().ok()?,
        sid: field(6)?.parse().ok()?,
        utime: number(14)?,
        stime: number(15)?,
        start_time: number(22)?,
        rss_pages: number(24)?,
    })
}

/// Reads `/proc/PID/stat`; `None` when the process is gone.
pub fn stat(pid: i32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// True when `pid` still names the process that had `start_time`, and it has not exited.
pub fn is_same_alive(pid: i32, start_time: u64) -> bool {
    stat(pid).is_some_and(|s| s.start_time == start_time && !s.is_zombie())
}

/// Every process visible in `/proc`.
pub fn all() -> Vec<ProcStat> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter_map(stat)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let text = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 987654 1000 250 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_stat(text),
            Some(ProcStat {
                pid: 4242,
                state: 'S',
                ppid: 1,
                pgid: 4242,
                sid: 4242,
                utime: 7,
                stime: 3,
                start_time: 987654,
                rss_pages: 250,
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("12 (cut) S 1 12"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let me = std::process::id() as i32;
        let s = stat(me);
        assert!(s.is_some_and(|s| s.pid == me && s.start_time > 0 && s.rss_pages > 0));
        let st = s.map_or(0, |s| s.start_time);
        assert!(is_same_alive(me, st));
        assert!(!is_same_alive(me, st + 1));
        assert!(all().iter().any(|p| p.pid == me));
    }
}
