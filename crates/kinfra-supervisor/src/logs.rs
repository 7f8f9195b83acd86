//! Log capture: line splitting of a child's stdout/stderr, an in-memory ring per service, and a
//! log file with size-based rotation.
//!
//! File format: one JSON object per line, the [`LogLine`] shape
//! (`{"timestamp":"…","level":"info","stream":"stdout","message":"…"}`), in
//! `STATE_DIR/logs/NAME.log`; rotated files are `NAME.log.1` (newest) to `NAME.log.KEEP`.
//!
//! Flow and bounds: one reader task per pipe reads into a buffer of at most `max_line` bytes
//! (longer lines are split). Each line takes a slot in a bounded channel to the service's
//! file writer thread, then, in one step, goes into the ring, to followers and into that
//! slot, so the ring and the file have the same order (except a line of kinfra's own met by
//! a full channel: shown at once, written when there is room). The live log (ring,
//! followers) never waits on the disk: a stalled write holds up only the file, until the
//! channel is full. Then the reader waits, the pipe fills and the *child* blocks in `write`;
//! kinfra's memory stays bounded and its actors never wait on log output.

use kinfra_core::config::LogConfig;
use kinfra_core::event::now_rfc3339;
use kinfra_core::status::{LogLine, LogStream, ServiceLogLine};
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncReadExt;
use tokio::sync::{broadcast, mpsc};
use tracing::warn;

/// Lines a reader may be ahead of the writer before it waits.
const CHANNEL_LINES: usize = 1024;

/// Guesses a level from a line's text: `error`, `warn`, `debug` or `info`.
pub fn guess_level(message: &str) -> &'static str {
    let head: String = message
        .chars()
        .take(80)
        .collect::<String>()
        .to_ascii_lowercase();
    if head.contains("error") || head.contains("fatal") || head.contains("panic") {
        "error"
    } else if head.contains("warn") {
        "warn"
    } else if head.contains("debug") || head.contains("trace") {
        "debug"
    } else {
        "info"
    }
}

/// Makes a [`LogLine`] stamped now.
pub fn make_line(stream: LogStream, message: String) -> LogLine {
    LogLine {
        timestamp: now_rfc3339(),
        level: guess_level(&message).to_owned(),
        stream,
        message,
    }
}

/// The per-service log: ring, file and followers. Cheap to clone.
#[derive(Clone)]
pub struct LogSink {
    service: Arc<str>,
    ring: Arc<Mutex<VecDeque<LogLine>>>,
    ring_cap: usize,
    followers: broadcast::Sender<ServiceLogLine>,
    tx: mpsc::Sender<LogLine>,
}

impl LogSink {
    /// Starts the writer thread for `service`, appending to `dir/NAME.log`.
    pub fn new(
        service: &str,
        dir: &Path,
        cfg: LogConfig,
        followers: broadcast::Sender<ServiceLogLine>,
    ) -> io::Result<LogSink> {
        fs::create_dir_all(dir)?;
        let path = dir.join(format!("{service}.log"));
        let file = LogFile::open(path, cfg.max_size.0, cfg.keep)?;
        let ring = Arc::new(Mutex::new(VecDeque::with_capacity(cfg.ring.min(4096))));
        let (tx, rx) = mpsc::channel(CHANNEL_LINES);
        let writer = Writer {
            service: service.to_owned(),
            file,
        };
        std::thread::Builder::new()
            .name(format!("kinfra-log-{service}"))
            .spawn(move || writer.run(rx))?;
        Ok(LogSink {
            service: service.into(),
            ring,
            ring_cap: cfg.ring.max(1),
            followers,
            tx,
        })
    }

    /// Puts `line` in the ring and sends it to followers and, through `permit`, to the file
    /// writer, all under the ring's lock: ring and file get lines in the same order.
    fn publish(&self, line: LogLine, permit: Option<mpsc::Permit<'_, LogLine>>) {
        let mut ring = match self.ring.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        while ring.len() >= self.ring_cap {
            ring.pop_front();
        }
        ring.push_back(line.clone());
        let _ = self.followers.send(ServiceLogLine {
            service: self.service.to_string(),
            line: line.clone(),
        });
        if let Some(permit) = permit {
            permit.send(line);
        }
    }

    /// Records a line, waiting for room in the file writer's channel first (never for the
    /// disk). False when the writer is gone.
    async fn record(&self, line: LogLine) -> bool {
        match self.tx.reserve().await {
            Ok(permit) => {
                self.publish(line, Some(permit));
                true
            }
            Err(_) => {
                self.publish(line, None);
                false
            }
        }
    }

    /// The service name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Records a line kinfra writes about the service. Never waits.
    pub fn system(&self, message: impl Into<String>) {
        let mut line = make_line(LogStream::System, message.into());
        line.level = "info".into();
        self.push_nowait(line);
    }

    /// Records a warning line kinfra writes about the service. Never waits.
    pub fn system_warn(&self, message: impl Into<String>) {
        let mut line = make_line(LogStream::System, message.into());
        line.level = "warn".into();
        self.push_nowait(line);
    }

    fn push_nowait(&self, line: LogLine) {
        match self.tx.try_reserve() {
            Ok(permit) => self.publish(line, Some(permit)),
            Err(mpsc::error::TrySendError::Full(())) => {
                // Shown now; written to the file when the writer has room, without making
                // the caller wait.
                self.publish(line.clone(), None);
                let tx = self.tx.clone();
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    handle.spawn(async move {
                        let _ = tx.send(line).await;
                    });
                }
            }
            Err(mpsc::error::TrySendError::Closed(())) => self.publish(line, None),
        }
    }

    /// Records a line of output from a resource driven through an adapter; waits while the
    /// file writer's channel is full, so lines keep their order.
    pub async fn write(&self, stream: LogStream, message: String) {
        self.record(make_line(stream, message)).await;
    }

    /// The last `n` lines in the ring, oldest first.
    pub fn tail(&self, n: usize) -> Vec<LogLine> {
        let ring = match self.ring.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let skip = ring.len().saturating_sub(n);
        ring.iter().skip(skip).cloned().collect()
    }

    /// Starts a task reading `fd` line by line into this log until EOF. The handle resolves
    /// when every line up to EOF has been handed to the writer.
    pub fn capture(
        &self,
        fd: OwnedFd,
        stream: LogStream,
        max_line: usize,
    ) -> tokio::task::JoinHandle<()> {
        let sink = self.clone();
        tokio::spawn(async move {
            if let Err(error) = read_lines(fd, stream, max_line, &sink).await {
                warn!(service = %sink.service, %error, "Reading process output failed.");
            }
        })
    }
}

/// Splits a byte stream into lines of at most `max_line` bytes.
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
    max_line: usize,
}

impl LineSplitter {
    /// A splitter cutting lines longer than `max_line` bytes (at least 16).
    pub fn new(max_line: usize) -> Self {
        Self {
            pending: Vec::new(),
            max_line: max_line.max(16),
        }
    }

    /// Feeds bytes, returning the complete lines they finish.
    pub fn feed(&mut self, mut data: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let room = self.max_line - self.pending.len();
            let window = &data[..data.len().min(room)];
            if let Some(nl) = window.iter().position(|b| *b == b'\n') {
                self.pending.extend_from_slice(&window[..nl]);
                out.push(self.take());
                data = &data[nl + 1..];
            } else if window.len() == room {
                // Full line without newline: cut at a UTF-8 boundary when there is one.
                self.pending.extend_from_slice(window);
                data = &data[window.len()..];
                let cut = utf8_cut(&self.pending);
                let rest = self.pending.split_off(cut);
                out.push(self.take());
                self.pending = rest;
            } else {
                self.pending.extend_from_slice(window);
                data = &[];
            }
        }
        out
    }

    /// The partial last line (without newline), if any, at end of stream.
    pub fn finish(&mut self) -> Option<String> {
        if self.pending.is_empty() {
            None
        } else {
            Some(self.take())
        }
    }

    fn take(&mut self) -> String {
        let mut bytes = std::mem::take(&mut self.pending);
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }
}

/// Where to cut a full buffer so no UTF-8 sequence is split (the whole buffer when it ends
/// on a boundary or is not UTF-8 anyway).
fn utf8_cut(buf: &[u8]) -> usize {
    let len = buf.len();
    for back in 1..=3.min(len) {
        let b = buf[len - back];
        if b & 0xC0 == 0xC0 {
            // A lead byte: does its sequence fit?
            let need = if b >= 0xF0 {
                4
            } else if b >= 0xE0 {
                3
            } else {
                2
            };
            return if back >= need { len } else { len - back };
        }
        if b & 0x80 == 0 {
            return len;
        }
    }
    len
}

async fn read_lines(
    fd: OwnedFd,
    stream: LogStream,
    max_line: usize,
    sink: &LogSink,
) -> io::Result<()> {
    let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?;
    let mut splitter = LineSplitter::new(max_line);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if let Some(last) = splitter.finish() {
                    sink.record(make_line(stream, last)).await;
                }
                return Err(e);
            }
        };
        for line in splitter.feed(&buf[..n]) {
            if !sink.record(make_line(stream, line)).await {
                return Ok(());
            }
        }
    }
    if let Some(last) = splitter.finish() {
        sink.record(make_line(stream, last)).await;
    }
    Ok(())
}

/// Writes the log file; the ring and followers are fed before a line gets here.
struct Writer {
    service: String,
    file: LogFile,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<LogLine>) {
        while let Some(line) = rx.blocking_recv() {
            self.handle(line);
            // Drain what is queued before flushing, so a flood costs one flush per batch.
            while let Ok(line) = rx.try_recv() {
                self.handle(line);
            }
            if let Err(error) = self.file.flush() {
                warn!(service = %self.service, %error, "Writing the log file failed.");
            }
        }
        let _ = self.file.flush();
    }

    fn handle(&mut self, line: LogLine) {
        if let Err(error) = self.file.append(&line) {
            warn!(service = %self.service, %error, "Writing the log file failed.");
        }
    }
}

/// An append-only log file rotated by size.
pub struct LogFile {
    path: PathBuf,
    out: Option<BufWriter<File>>,
    size: u64,
    max_size: u64,
    keep: u32,
}

impl LogFile {
    /// Opens (appending) or creates `path`.
    pub fn open(path: PathBuf, max_size: u64, keep: u32) -> io::Result<LogFile> {
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(LogFile {
            path,
            out: Some(BufWriter::with_capacity(64 * 1024, file)),
            size,
            max_size: max_size.max(1024),
            keep,
        })
    }

    /// Appends one line as JSON, rotating first when it would pass the size limit.
    pub fn append(&mut self, line: &LogLine) -> io::Result<()> {
        let mut bytes = serde_json::to_vec(line).map_err(io::Error::other)?;
        bytes.push(b'\n');
        if self.size > 0 && self.size + bytes.len() as u64 > self.max_size {
            self.rotate()?;
        }
        let out = match &mut self.out {
            Some(o) => o,
            None => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?;
                self.out.insert(BufWriter::with_capacity(64 * 1024, file))
            }
        };
        out.write_all(&bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// Flushes buffered lines to the file.
    pub fn flush(&mut self) -> io::Result<()> {
        match &mut self.out {
            Some(o) => o.flush(),
            None => Ok(()),
        }
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut s = self.path.clone().into_os_string();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    fn rotate(&mut self) -> io::Result<()> {
        if let Some(mut out) = self.out.take() {
            out.flush()?;
        }
        if self.keep == 0 {
            let _ = fs::remove_file(&self.path);
        } else {
            let _ = fs::remove_file(self.rotated(self.keep));
            for n in (1..self.keep).rev() {
                let from = self.rotated(n);
                if from.exists() {
                    fs::rename(&from, self.rotated(n + 1))?;
                }
            }
            fs::rename(&self.path, self.rotated(1))?;
        }
        self.size = 0;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.out = Some(BufWriter::with_capacity(64 * 1024, file));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_and_keeps_partial() {
        let mut s = LineSplitter::new(100);
        assert_eq!(s.feed(b"a\nb"), vec!["a".to_string()]);
        assert_eq!(s.feed(b"c\r\nd"), vec!["bc".to_string()]);
        assert_eq!(s.finish(), Some("d".to_string()));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn splits_long_lines() {
        let mut s = LineSplitter::new(16);
        let input = "x".repeat(40) + "\n";
        let lines = s.feed(input.as_bytes());
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].len(), 16);
        assert_eq!(lines[2].len(), 8);
        assert_eq!(lines.concat(), "x".repeat(40));
    }

    #[test]
    fn never_cuts_inside_a_character() {
        let mut s = LineSplitter::new(16);
        // 15 ASCII bytes, then a 3-byte character straddling the limit.
        let input = format!("{}€tail\n", "a".repeat(15));
        let lines = s.feed(input.as_bytes());
        assert_eq!(lines[0], "a".repeat(15));
        assert_eq!(lines[1], "€tail");
    }

    #[test]
    fn levels() {
        assert_eq!(guess_level("ERROR: boom"), "error");
        assert_eq!(guess_level("[warn] slow"), "warn");
        assert_eq!(guess_level("hello"), "info");
    }

    #[test]
    fn rotates_and_keeps_n() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("svc.log");
        let mut f = LogFile::open(path.clone(), 1024, 2)?;
        for i in 0..100 {
            f.append(&make_line(LogStream::Stdout, format!("line {i:04}")))?;
        }
        f.flush()?;
        assert!(path.exists());
        assert!(dir.path().join("svc.log.1").exists());
        assert!(dir.path().join("svc.log.2").exists());
        assert!(!dir.path().join("svc.log.3").exists());
        for p in ["svc.log", "svc.log.1", "svc.log.2"] {
            let len = fs::metadata(dir.path().join(p))?.len();
            assert!(len <= 1024, "{p} is {len} bytes");
        }
        let last = fs::read_to_string(&path)?;
        assert!(last.contains("line 0099"));
        Ok(())
    }
}
