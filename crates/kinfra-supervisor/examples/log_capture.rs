//! Micro-benchmark of the log capture path alone: N writer processes (`seq`) → pipes →
//! [`LogSink::capture`] (reader, line splitter, ring, followers, file writer) → JSON log files.
//!
//! ```text
//! cargo run --release -p kinfra-supervisor --example log_capture -- \
//!     [--writers 4] [--lines 250000] [--runs 3] [--follow] [--max-size BYTES] [--ring N]
//! ```
//!
//! Per run it prints the lines/s from the writers' spawn to the last line of every writer in
//! its file (the same end point as `bench/run`'s Logs section, without the harness's 10 ms
//! polling), and checks zero loss: every number 1..L of every writer is in its files (rotated
//! files included) exactly once, in order, each file line parses as a `LogLine`, and the ring's
//! last line is the writer's last. `--follow` keeps a live subscriber (like `runtime logs -f`
//! or an open dashboard) reading the broadcast during the run; `--idle-subscriber` holds a
//! subscription it never reads (what `runtime up --quiet` did before it stopped subscribing).
//! `--floor` drains the pipes and
//! throws the bytes away instead (no capture): what the writers alone can do on this machine.
//! `--idle N` measures instead what N idle services cost: N sinks, each capturing a process
//! that prints one line and sleeps; it prints the process's threads and RSS
//! (`/proc/self/status`) before the sinks and once every line is in its file.

use kinfra_core::config::{ByteSize, LogConfig};
use kinfra_core::status::{LogLine, LogStream, ServiceLogLine};
use kinfra_supervisor::logs::{LogSink, LogWriter};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// The kinfra binary runs with mimalloc; so does this benchmark.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Command-line options.
struct Options {
    writers: usize,
    lines: u64,
    runs: usize,
    follow: bool,
    idle_subscriber: bool,
    floor: bool,
    max_size: u64,
    ring: usize,
    idle: usize,
}

fn options() -> Options {
    let mut o = Options {
        writers: 4,
        lines: 250_000,
        runs: 3,
        follow: false,
        idle_subscriber: false,
        floor: false,
        max_size: LogConfig::default().max_size.0,
        ring: LogConfig::default().ring,
        idle: 0,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        let number = || -> u64 {
            value
                .parse()
                .unwrap_or_else(|_| panic!("{} needs a number, got {value:?}", args[i]))
        };
        match args[i].as_str() {
            "--writers" => o.writers = number() as usize,
            "--lines" => o.lines = number(),
            "--runs" => o.runs = number() as usize,
            "--max-size" => o.max_size = number(),
            "--ring" => o.ring = number() as usize,
            "--idle" => o.idle = number() as usize,
            "--follow" | "--floor" | "--idle-subscriber" => {
                match args[i].as_str() {
                    "--follow" => o.follow = true,
                    "--floor" => o.floor = true,
                    _ => o.idle_subscriber = true,
                }
                i += 1;
                continue;
            }
            other => panic!("unknown option {other}"),
        }
        i += 2;
    }
    o
}

/// The log files of `name`, oldest first (`NAME.log.K` … `NAME.log.1`, `NAME.log`).
fn log_files(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut rotated: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| {
            let file = p.file_name()?.to_str()?.to_owned();
            let n = file.strip_prefix(&format!("{name}.log."))?.parse().ok()?;
            Some((n, p))
        })
        .collect();
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut out: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    out.push(dir.join(format!("{name}.log")));
    out
}

/// True when the tail of `path` holds `needle`.
fn tail_has(path: &Path, needle: &[u8]) -> bool {
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let len = f.seek(SeekFrom::End(0)).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(4096)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    buf.windows(needle.len()).any(|w| w == needle)
}

/// Counts the writer's numbers in its files: (captured, lost, out of order or duplicated).
fn check_files(dir: &Path, name: &str, lines: u64) -> (u64, u64, u64) {
    let prefix = format!("{name} ");
    let (mut captured, mut bad) = (0u64, 0u64);
    let mut next = 1u64;
    for path in log_files(dir, name) {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for l in text.lines() {
            let line: LogLine = match serde_json::from_str(l) {
                Ok(line) => line,
                Err(e) => panic!("{}: not a LogLine ({e}): {l}", path.display()),
            };
            let Some(n) = line.message.strip_prefix(&prefix) else {
                continue;
            };
            let n: u64 = n.parse().unwrap_or(0);
            if n == next {
                captured += 1;
                next += 1;
            } else {
                bad += 1;
            }
        }
    }
    (captured, lines - captured, bad)
}

/// Reads `fd` to EOF and throws the bytes away.
async fn drain(fd: OwnedFd) {
    use tokio::io::AsyncReadExt;
    let mut pipe =
        tokio::net::unix::pipe::Receiver::from_owned_fd(fd).unwrap_or_else(|e| panic!("pipe: {e}"));
    let mut buf = vec![0u8; 64 * 1024];
    while pipe.read(&mut buf).await.is_ok_and(|n| n > 0) {}
}

async fn one_run(o: &Options, run: usize) -> f64 {
    let dir = tempfile::Builder::new()
        .prefix("kinfra-log-capture")
        .tempdir()
        .unwrap_or_else(|e| panic!("tempdir: {e}"));
    let (tx, _) = broadcast::channel::<ServiceLogLine>(4096);
    let followed = Arc::new(AtomicU64::new(0));
    let follower = o.follow.then(|| {
        let mut rx = tx.subscribe();
        let followed = followed.clone();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(_) => {
                        followed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        })
    });
    let idle = o.idle_subscriber.then(|| tx.subscribe());
    let cfg = LogConfig {
        max_size: ByteSize(o.max_size),
        ring: o.ring,
        ..LogConfig::default()
    };
    let max_line = cfg.max_line.0 as usize;
    let names: Vec<String> = (0..o.writers).map(|i| format!("w{i}")).collect();
    let writer = LogWriter::new();
    let sinks: Vec<LogSink> = names
        .iter()
        .map(|n| {
            LogSink::new(n, dir.path(), cfg, tx.clone(), &writer)
                .unwrap_or_else(|e| panic!("sink {n}: {e}"))
        })
        .collect();
    let t0 = Instant::now();
    let mut children = Vec::new();
    let mut readers = Vec::new();
    for (name, sink) in names.iter().zip(&sinks) {
        let mut child = Command::new("seq")
            .args(["-f", &format!("{name} %.0f"), "1", &o.lines.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("seq: {e}"));
        let fd = OwnedFd::from(child.stdout.take().unwrap_or_else(|| panic!("no stdout")));
        readers.push(if o.floor {
            tokio::spawn(drain(fd))
        } else {
            sink.capture(fd, LogStream::Stdout, max_line)
        });
        children.push(child);
    }
    if o.floor {
        for r in readers {
            let _ = r.await;
        }
        let secs = t0.elapsed().as_secs_f64();
        for mut c in children {
            let _ = c.wait();
        }
        let total = o.writers as u64 * o.lines;
        let rate = total as f64 / secs;
        println!("run {run}: floor (pipes drained, nothing kept): {secs:.3} s, {rate:.0} lines/s");
        return rate;
    }
    for r in readers {
        let _ = r.await;
    }
    let handed = t0.elapsed();
    // The end point: the last line of every writer is in its current file.
    let deadline = Instant::now() + Duration::from_secs(120);
    for name in &names {
        let needle = format!("\"message\":\"{name} {}\"", o.lines);
        while !tail_has(&dir.path().join(format!("{name}.log")), needle.as_bytes()) {
            assert!(Instant::now() < deadline, "{name}: last line never written");
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    let in_file = t0.elapsed();
    for mut c in children {
        let _ = c.wait();
    }
    let total = o.writers as u64 * o.lines;
    let (mut captured, mut lost, mut bad) = (0, 0, 0);
    for (name, sink) in names.iter().zip(&sinks) {
        let (c, l, b) = check_files(dir.path(), name, o.lines);
        captured += c;
        lost += l;
        bad += b;
        let last = sink.tail(1);
        let want = format!("{name} {}", o.lines);
        assert_eq!(
            last.last().map(|l| l.message.as_str()),
            Some(want.as_str()),
            "{name}: the ring does not end with the last line"
        );
    }
    let rotated = names
        .iter()
        .map(|n| log_files(dir.path(), n).len() - 1)
        .sum::<usize>();
    drop(sinks);
    drop(idle);
    drop(tx);
    if let Some(f) = follower {
        let _ = f.await;
    }
    let rate = total as f64 / in_file.as_secs_f64();
    println!(
        "run {run}: {total} lines, captured {captured}, lost {lost}, out of order {bad}, \
         rotated files {rotated}, handed over {:.3} s, in files {:.3} s, {:.0} lines/s{}",
        handed.as_secs_f64(),
        in_file.as_secs_f64(),
        rate,
        if o.follow {
            format!(", follower got {}", followed.load(Ordering::Relaxed))
        } else {
            String::new()
        }
    );
    assert_eq!(lost + bad, 0, "lines lost or out of order");
    rate
}

/// `Threads` and `VmRSS` of this process.
fn threads_and_rss() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .filter(|l| l.starts_with("Threads:") || l.starts_with("VmRSS:"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `--idle N`: the cost of N idle services' logs.
async fn idle_services(o: &Options) {
    let dir = tempfile::Builder::new()
        .prefix("kinfra-log-idle")
        .tempdir()
        .unwrap_or_else(|e| panic!("tempdir: {e}"));
    let (tx, _) = broadcast::channel::<ServiceLogLine>(4096);
    let cfg = LogConfig::default();
    let max_line = cfg.max_line.0 as usize;
    println!("before the sinks: {}", threads_and_rss());
    let writer = LogWriter::new();
    let names: Vec<String> = (0..o.idle).map(|i| format!("idle{i}")).collect();
    let mut sinks = Vec::new();
    let mut children = Vec::new();
    for name in &names {
        let sink = LogSink::new(name, dir.path(), cfg, tx.clone(), &writer)
            .unwrap_or_else(|e| panic!("sink {name}: {e}"));
        let mut child = Command::new("sh")
            .args(["-c", &format!("echo {name} started; exec sleep 3600")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("sh: {e}"));
        let fd = OwnedFd::from(child.stdout.take().unwrap_or_else(|| panic!("no stdout")));
        let _reader = sink.capture(fd, LogStream::Stdout, max_line);
        sinks.push(sink);
        children.push(child);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for name in &names {
        let needle = format!("\"message\":\"{name} started\"");
        while !tail_has(&dir.path().join(format!("{name}.log")), needle.as_bytes()) {
            assert!(Instant::now() < deadline, "{name}: line never written");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("{} idle services: {}", o.idle, threads_and_rss());
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    drop(sinks);
}

fn main() {
    let o = options();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    if o.idle > 0 {
        rt.block_on(idle_services(&o));
        return;
    }
    let mut rates = Vec::new();
    for run in 1..=o.runs {
        rates.push(rt.block_on(one_run(&o, run)));
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "writers {}, lines/writer {}, follow {}, idle subscriber {}, floor {}: median {:.0} lines/s (min {:.0}, max {:.0})",
        o.writers,
        o.lines,
        o.follow,
        o.idle_subscriber,
        o.floor,
        rates[rates.len() / 2],
        rates[0],
        rates[rates.len() - 1]
    );
}
