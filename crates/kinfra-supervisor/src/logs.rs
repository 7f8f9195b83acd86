//! Log capture: line splitting of a child's stdout/stderr, an in-memory ring per service, and a
//! log file with size-based rotation.
//!
//! File format: one JSON object per line, the [`LogLine`] shape
//! (`{"timestamp":"…","level":"info","stream":"stdout","message":"…"}`), in
//! `STATE_DIR/logs/NAME.log`; rotated files are `NAME.log.1` (newest) to `NAME.log.KEEP`.
//!
//! Flow and bounds: one reader task per pipe waits until the pipe is readable, reads into its
//! thread's 64 KiB buffer (one per runtime thread, not per pipe: an idle service holds no read
//! buffer) and splits what it read into lines of at most `max_line` bytes (longer lines are split). The lines of one read
//! form a [`Batch`]: one timestamp (taken when the read returned), one text buffer, one entry
//! per line; no allocation per line. A batch takes a slot in a bounded channel to the
//! service's file writer thread, then, in one step, goes into the ring, to followers and into
//! that slot, so the ring and the file have the same order (except a line of kinfra's own met
//! by a full channel: shown at once, written when there is room). The ring and the writer
//! share the batch (`Arc`); [`LogLine`]s are built only for followers (when someone follows)
//! and for [`LogSink::tail`]. The live log (ring, followers) never waits on the disk: a stalled
//! write holds up only the file, until the channel is full. Then the reader waits, the pipe
//! fills and the *child* blocks in `write`; kinfra's memory stays bounded (the channel's
//! batches, the ring's lines) and its actors never wait on log output.
//!
//! Flush policy: the writer thread encodes each batch's lines as JSON into a buffer of up to
//! 128 KiB (given back after a burst), which goes to the file when it is full and whenever the
//! writer has nothing more queued, so
//! a lone line is in the file as soon as the writer thread has run (no timer holds it back),
//! and a flood costs one `write` per buffer. Rotation flushes first; EOF of a pipe, a stop and
//! the end of the sink hand over every batch before the writer exits, which flushes. No fsync:
//! a line is in the page cache (safe across a kinfra crash, not across a power loss), like
//! supervisord's log files.

use kinfra_core::config::LogConfig;
use kinfra_core::event::now_rfc3339;
use kinfra_core::status::{LogLine, LogStream, ServiceLogLine};
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, mpsc};
use tracing::warn;

/// Batches a reader may be ahead of the writer before it waits (each at most one pipe read,
/// 64 KiB, plus a partial line).
const CHANNEL_BATCHES: usize = 16;

/// Bytes read from a pipe at once.
const READ_BUFFER: usize = 64 * 1024;

/// Bytes of encoded lines the writer holds before a `write`.
const WRITE_BUFFER: usize = 128 * 1024;

/// A guessed level of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// `error`: the line says error, fatal or panic.
    Error,
    /// `warn`: the line says warn.
    Warn,
    /// `info`: the default.
    Info,
    /// `debug`: the line says debug or trace.
    Debug,
}

impl Level {
    /// The contract name (`error`, `warn`, `info`, `debug`).
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

/// Guesses a level from a line's text: `error`, `warn`, `debug` or `info`.
pub fn guess_level(message: &str) -> &'static str {
    guess(message).as_str()
}

/// Guesses a level from the first 80 characters of `message`, ASCII case-insensitively, in one
/// pass and without allocating.
fn guess(message: &str) -> Level {
    let head = match message.char_indices().nth(80) {
        Some((at, _)) => &message.as_bytes()[..at],
        None => message.as_bytes(),
    };
    let at = |i: usize, word: &[u8]| {
        head.get(i..i + word.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(word))
    };
    let (mut warn, mut debug) = (false, false);
    for (i, b) in head.iter().enumerate() {
        match b | 0x20 {
            b'e' if at(i, b"error") => return Level::Error,
            b'f' if at(i, b"fatal") => return Level::Error,
            b'p' if at(i, b"panic") => return Level::Error,
            b'w' if at(i, b"warn") => warn = true,
            b'd' if at(i, b"debug") => debug = true,
            b't' if at(i, b"trace") => debug = true,
            _ => {}
        }
    }
    if warn {
        Level::Warn
    } else if debug {
        Level::Debug
    } else {
        Level::Info
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

/// Lines of one stream taken at one time (one pipe read): one text buffer, one entry per line.
#[derive(Debug)]
pub struct Batch {
    timestamp: String,
    stream: LogStream,
    text: String,
    /// Per line: where it ends in `text` and its level.
    lines: Vec<(usize, Level)>,
}

impl Batch {
    /// An empty batch stamped now, with room for `bytes` of text.
    pub fn new(stream: LogStream, bytes: usize) -> Batch {
        Batch {
            timestamp: now_rfc3339(),
            stream,
            text: String::with_capacity(bytes),
            lines: Vec::new(),
        }
    }

    /// A batch of the one line `message` at `level`, stamped now.
    pub fn one(stream: LogStream, message: &str, level: Option<Level>) -> Batch {
        let mut b = Batch::new(stream, message.len());
        b.text.push_str(message);
        let level = level.unwrap_or_else(|| guess(message));
        b.lines.push((b.text.len(), level));
        b
    }

    /// Adds a line (bytes; invalid UTF-8 is replaced), its level guessed.
    pub fn push(&mut self, line: &[u8]) {
        match std::str::from_utf8(line) {
            Ok(s) => self.text.push_str(s),
            Err(_) => self.text.push_str(&String::from_utf8_lossy(line)),
        }
        let start = self.lines.last().map_or(0, |l| l.0);
        let level = guess(&self.text[start..]);
        self.lines.push((self.text.len(), level));
    }

    /// Lines in the batch.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// True when the batch has no line.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Line `i`: its text and level.
    fn line(&self, i: usize) -> (&str, Level) {
        let start = if i == 0 { 0 } else { self.lines[i - 1].0 };
        let (end, level) = self.lines[i];
        (&self.text[start..end], level)
    }

    /// Line `i` as a [`LogLine`].
    pub fn log_line(&self, i: usize) -> LogLine {
        let (message, level) = self.line(i);
        LogLine {
            timestamp: self.timestamp.clone(),
            level: level.as_str().to_owned(),
            stream: self.stream,
            message: message.to_owned(),
        }
    }
}

/// The last `cap` lines, kept as the batches they came in (shared with the file writer). The
/// front batch may be partly out of the ring: its first `skip` lines are not counted.
struct Ring {
    batches: VecDeque<Arc<Batch>>,
    skip: usize,
    len: usize,
    cap: usize,
}

impl Ring {
    fn new(cap: usize) -> Ring {
        Ring {
            batches: VecDeque::new(),
            skip: 0,
            len: 0,
            cap: cap.max(1),
        }
    }

    fn push(&mut self, batch: Arc<Batch>) {
        if batch.is_empty() {
            return;
        }
        self.len += batch.len();
        self.batches.push_back(batch);
        while self.len > self.cap {
            let Some(front) = self.batches.front() else {
                break;
            };
            let counted = front.len() - self.skip;
            let excess = self.len - self.cap;
            if excess >= counted {
                self.batches.pop_front();
                self.skip = 0;
                self.len -= counted;
            } else {
                self.skip += excess;
                self.len -= excess;
            }
        }
    }

    /// The last `n` lines, oldest first.
    fn tail(&self, n: usize) -> Vec<LogLine> {
        let mut want = n.min(self.len);
        let mut out = Vec::with_capacity(want);
        // Find the first batch (from the back) and line to start at, then walk forward.
        let mut first = self.batches.len();
        let mut from = 0;
        while want > 0 && first > 0 {
            first -= 1;
            let b = &self.batches[first];
            let counted = if first == 0 {
                b.len() - self.skip
            } else {
                b.len()
            };
            if counted >= want {
                from = b.len() - want;
                want = 0;
            } else {
                want -= counted;
                from = b.len() - counted;
            }
        }
        for (k, b) in self.batches.iter().enumerate().skip(first) {
            let start = if k == first { from } else { 0 };
            out.extend((start..b.len()).map(|i| b.log_line(i)));
        }
        out
    }
}

/// The per-service log: ring, file and followers. Cheap to clone.
#[derive(Clone)]
pub struct LogSink {
    service: Arc<str>,
    ring: Arc<Mutex<Ring>>,
    followers: broadcast::Sender<ServiceLogLine>,
    tx: mpsc::Sender<Arc<Batch>>,
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
        let ring = Arc::new(Mutex::new(Ring::new(cfg.ring)));
        let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
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
            followers,
            tx,
        })
    }

    /// Puts `batch` in the ring and sends its lines to followers (when someone follows) and,
    /// through `permit`, to the file writer, all under the ring's lock: ring and file get lines
    /// in the same order.
    fn publish(&self, batch: Arc<Batch>, permit: Option<mpsc::Permit<'_, Arc<Batch>>>) {
        let mut ring = match self.ring.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        ring.push(batch.clone());
        if self.followers.receiver_count() > 0 {
            for i in 0..batch.len() {
                let _ = self.followers.send(ServiceLogLine {
                    service: self.service.to_string(),
                    line: batch.log_line(i),
                });
            }
        }
        if let Some(permit) = permit {
            permit.send(batch);
        }
    }

    /// Records a batch, waiting for room in the file writer's channel first (never for the
    /// disk). False when the writer is gone.
    async fn record(&self, batch: Batch) -> bool {
        let batch = Arc::new(batch);
        match self.tx.reserve().await {
            Ok(permit) => {
                self.publish(batch, Some(permit));
                true
            }
            Err(_) => {
                self.publish(batch, None);
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
        let message = message.into();
        self.push_nowait(Batch::one(LogStream::System, &message, Some(Level::Info)));
    }

    /// Records a warning line kinfra writes about the service. Never waits.
    pub fn system_warn(&self, message: impl Into<String>) {
        let message = message.into();
        self.push_nowait(Batch::one(LogStream::System, &message, Some(Level::Warn)));
    }

    fn push_nowait(&self, batch: Batch) {
        let batch = Arc::new(batch);
        match self.tx.try_reserve() {
            Ok(permit) => self.publish(batch, Some(permit)),
            Err(mpsc::error::TrySendError::Full(())) => {
                // Shown now; written to the file when the writer has room, without making
                // the caller wait.
                self.publish(batch.clone(), None);
                let tx = self.tx.clone();
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    handle.spawn(async move {
                        let _ = tx.send(batch).await;
                    });
                }
            }
            Err(mpsc::error::TrySendError::Closed(())) => self.publish(batch, None),
        }
    }

    /// Records a line of output from a resource driven through an adapter; waits while the
    /// file writer's channel is full, so lines keep their order.
    pub async fn write(&self, stream: LogStream, message: String) {
        self.record(Batch::one(stream, &message, None)).await;
    }

    /// The last `n` lines in the ring, oldest first.
    pub fn tail(&self, n: usize) -> Vec<LogLine> {
        let ring = match self.ring.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        ring.tail(n)
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

/// `line` without one trailing `\r`.
fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
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
    pub fn feed(&mut self, data: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        self.feed_with(data, |line| out.push(lossy(line)));
        out
    }

    /// Feeds bytes, calling `emit` with each complete line they finish (without its newline
    /// and one trailing `\r`; bytes, maybe not UTF-8). Lines within `data` are not copied.
    pub fn feed_with(&mut self, mut data: &[u8], mut emit: impl FnMut(&[u8])) {
        while !data.is_empty() {
            let room = self.max_line - self.pending.len();
            let window = &data[..data.len().min(room)];
            if let Some(nl) = memchr::memchr(b'\n', window) {
                if self.pending.is_empty() {
                    emit(trim_cr(&window[..nl]));
                } else {
                    self.pending.extend_from_slice(&window[..nl]);
                    emit(trim_cr(&self.pending));
                    self.pending.clear();
                }
                data = &data[nl + 1..];
            } else if window.len() == room {
                // Full line without newline: cut at a UTF-8 boundary when there is one.
                self.pending.extend_from_slice(window);
                data = &data[window.len()..];
                let cut = utf8_cut(&self.pending);
                emit(trim_cr(&self.pending[..cut]));
                self.pending.drain(..cut);
            } else {
                self.pending.extend_from_slice(window);
                data = &[];
            }
        }
    }

    /// The partial last line (without newline), if any, at end of stream.
    pub fn finish(&mut self) -> Option<String> {
        if self.pending.is_empty() {
            None
        } else {
            let line = lossy(trim_cr(&self.pending));
            self.pending.clear();
            Some(line)
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

/// What one read of a pipe gave.
enum Read {
    /// The lines it finished (maybe none).
    Lines(Batch),
    /// Nothing to read after all (a spurious readiness).
    NotReady,
    /// End of file.
    Eof,
}

thread_local! {
    /// The pipe read buffer of this thread, shared by every pipe read on it: a read fills it,
    /// its lines are copied into a batch, and it is free again before the task awaits. So an
    /// idle service holds no read buffer, whatever the number of services.
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Reads what `pipe` has into this thread's buffer and splits it into a batch of the lines it
/// finished.
fn read_once(
    pipe: &tokio::net::unix::pipe::Receiver,
    stream: LogStream,
    splitter: &mut LineSplitter,
) -> io::Result<Read> {
    READ_BUF.with_borrow_mut(|buf| {
        if buf.len() < READ_BUFFER {
            buf.resize(READ_BUFFER, 0);
        }
        let n = match pipe.try_read(buf) {
            Ok(0) => return Ok(Read::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Read::NotReady),
            Err(e) => return Err(e),
        };
        // One batch, one timestamp, one channel slot for everything this read finished.
        let mut batch = Batch::new(stream, n + splitter.pending.len());
        batch
            .lines
            .reserve(memchr::memchr_iter(b'\n', &buf[..n]).count() + 1);
        splitter.feed_with(&buf[..n], |line| batch.push(line));
        Ok(Read::Lines(batch))
    })
}

async fn read_lines(
    fd: OwnedFd,
    stream: LogStream,
    max_line: usize,
    sink: &LogSink,
) -> io::Result<()> {
    let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?;
    let mut splitter = LineSplitter::new(max_line);
    loop {
        let read = match pipe.readable().await {
            Ok(()) => read_once(&pipe, stream, &mut splitter),
            Err(e) => Err(e),
        };
        let batch = match read {
            Ok(Read::Lines(batch)) => batch,
            Ok(Read::NotReady) => continue,
            Ok(Read::Eof) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if let Some(last) = splitter.finish() {
                    sink.record(Batch::one(stream, &last, None)).await;
                }
                return Err(e);
            }
        };
        if !batch.is_empty() && !sink.record(batch).await {
            return Ok(());
        }
    }
    if let Some(last) = splitter.finish() {
        sink.record(Batch::one(stream, &last, None)).await;
    }
    Ok(())
}

/// Writes the log file; the ring and followers are fed before a batch gets here.
struct Writer {
    service: String,
    file: LogFile,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Arc<Batch>>) {
        let mut encoder = Encoder::default();
        while let Some(batch) = rx.blocking_recv() {
            self.handle(&batch, &mut encoder);
            // Drain what is queued before flushing, so a flood costs one write per buffer.
            while let Ok(batch) = rx.try_recv() {
                self.handle(&batch, &mut encoder);
            }
            if let Err(error) = self.file.flush() {
                warn!(service = %self.service, %error, "Writing the log file failed.");
            }
        }
        let _ = self.file.flush();
    }

    fn handle(&mut self, batch: &Batch, encoder: &mut Encoder) {
        encoder.start(batch);
        for i in 0..batch.len() {
            let line = encoder.line(batch, i);
            if let Err(error) = self.file.append_encoded(line) {
                warn!(service = %self.service, %error, "Writing the log file failed.");
            }
        }
    }
}

/// Encodes a batch's lines as the JSON of [`LogLine`], byte for byte what `serde_json` makes of
/// it, with the parts shared by the batch's lines (timestamp, stream) encoded once.
#[derive(Default)]
struct Encoder {
    /// `{"timestamp":"…","level":"`
    head: Vec<u8>,
    /// `","stream":"…","message":`
    middle: Vec<u8>,
    /// The line being encoded.
    out: Vec<u8>,
}

impl Encoder {
    fn start(&mut self, batch: &Batch) {
        self.head.clear();
        self.head.extend_from_slice(b"{\"timestamp\":");
        json_str(&mut self.head, &batch.timestamp);
        self.head.extend_from_slice(b",\"level\":\"");
        self.middle.clear();
        self.middle.extend_from_slice(b"\",\"stream\":");
        json_str(&mut self.middle, batch.stream.as_str());
        self.middle.extend_from_slice(b",\"message\":");
    }

    fn line(&mut self, batch: &Batch, i: usize) -> &[u8] {
        let (message, level) = batch.line(i);
        self.out.clear();
        self.out.extend_from_slice(&self.head);
        self.out.extend_from_slice(level.as_str().as_bytes());
        self.out.extend_from_slice(&self.middle);
        json_str(&mut self.out, message);
        self.out.extend_from_slice(b"}\n");
        &self.out
    }
}

/// Appends `s` as a JSON string, escaped by `serde_json`.
fn json_str(out: &mut Vec<u8>, s: &str) {
    use serde::Serializer;
    // Writing into a Vec cannot fail.
    let _ = (&mut serde_json::Serializer::new(out)).serialize_str(s);
}

/// An append-only log file rotated by size.
///
/// Lines are gathered in a buffer of up to [`WRITE_BUFFER`] bytes and written in one `write`;
/// once flushed, a buffer that grew past [`IDLE_BUFFER`] is given back, so a quiet service
/// holds almost nothing between bursts.
pub struct LogFile {
    path: PathBuf,
    file: Option<File>,
    buf: Vec<u8>,
    size: u64,
    max_size: u64,
    keep: u32,
}

/// Bytes of write buffer a log file keeps between bursts.
const IDLE_BUFFER: usize = 4 * 1024;

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl LogFile {
    /// Opens (appending) or creates `path`.
    pub fn open(path: PathBuf, max_size: u64, keep: u32) -> io::Result<LogFile> {
        let file = open_append(&path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(LogFile {
            path,
            file: Some(file),
            buf: Vec::new(),
            size,
            max_size: max_size.max(1024),
            keep,
        })
    }

    /// Appends one line as JSON, rotating first when it would pass the size limit.
    pub fn append(&mut self, line: &LogLine) -> io::Result<()> {
        let mut bytes = serde_json::to_vec(line).map_err(io::Error::other)?;
        bytes.push(b'\n');
        self.append_encoded(&bytes)
    }

    /// Appends one encoded line (with its newline), rotating first when it would pass the
    /// size limit.
    fn append_encoded(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.size > 0 && self.size + bytes.len() as u64 > self.max_size {
            self.rotate()?;
        }
        if self.buf.len() + bytes.len() > WRITE_BUFFER {
            self.write_out()?;
        }
        if bytes.len() >= WRITE_BUFFER {
            self.file()?.write_all(bytes)?;
        } else {
            if self.buf.capacity() == 0 {
                self.buf.reserve(IDLE_BUFFER.max(bytes.len()));
            }
            self.buf.extend_from_slice(bytes);
        }
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// The open file, reopened when an earlier rotation could not open it.
    fn file(&mut self) -> io::Result<&mut File> {
        match self.file {
            Some(ref mut f) => Ok(f),
            None => {
                let f = open_append(&self.path)?;
                Ok(self.file.insert(f))
            }
        }
    }

    /// Writes the buffer to the file, keeping its capacity.
    fn write_out(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let written = self.file().and_then(|f| f.write_all(&buf));
        self.buf = buf;
        // Lines that could not be written are dropped, as a full disk would: the writer
        // goes on with the next ones.
        self.buf.clear();
        written
    }

    /// Flushes buffered lines to the file and gives back a buffer grown past a few KiB.
    pub fn flush(&mut self) -> io::Result<()> {
        let written = self.write_out();
        if self.buf.capacity() > IDLE_BUFFER {
            self.buf = Vec::new();
        }
        written
    }

    /// Bytes of buffer held now (for tests).
    #[cfg(test)]
    fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut s = self.path.clone().into_os_string();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.write_out()?;
        self.file = None;
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
        self.file = Some(open_append(&self.path)?);
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

    /// The level guess of the first version (allocating), the reference for [`guess`].
    fn guess_reference(message: &str) -> &'static str {
        let head = message
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

    #[test]
    fn level_guess_matches_the_reference() {
        let long_then_error = format!("{}error", "é".repeat(76));
        let past_80_chars = format!("{}error", "é".repeat(80));
        let cases = [
            "",
            "plain",
            "Error: x",
            "a FATAL thing",
            "PaNiC",
            "WARNING slow",
            "warn and then error",
            "trace id 5",
            "DEBUG",
            "errr warm debuf",
            "ünïcödé WARN",
            "a perfectly ordinary line of output, nothing to see, seventy-nine characters.",
            long_then_error.as_str(),
            past_80_chars.as_str(),
            "E\u{301}rror",
        ]
        .map(str::to_owned);
        for c in cases.iter().chain(
            [
                format!("{}warn", "a".repeat(76)),
                format!("{}warn", "a".repeat(77)),
            ]
            .iter(),
        ) {
            assert_eq!(guess_level(c), guess_reference(c), "{c:?}");
        }
    }

    #[test]
    fn batch_lines_encode_as_serde_json_does() {
        let messages = [
            "plain",
            "quote \" backslash \\ slash /",
            "tab\tcr\rnul\u{0}bell\u{7}esc\u{1b}del\u{7f}",
            "ünïcödé € 𝄞",
            "ERROR: boom",
            "",
        ];
        let mut batch = Batch::new(LogStream::Stderr, 0);
        for m in messages {
            batch.push(m.as_bytes());
        }
        batch.push(b"bad \xff utf-8");
        let mut encoder = Encoder::default();
        encoder.start(&batch);
        for i in 0..batch.len() {
            let line = batch.log_line(i);
            let mut want = serde_json::to_vec(&line).unwrap_or_default();
            want.push(b'\n');
            let got = encoder.line(&batch, i).to_vec();
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want)
            );
            if i < messages.len() {
                assert_eq!(line.message, messages[i]);
            }
        }
        assert_eq!(batch.log_line(4).level, "error");
        assert_eq!(batch.log_line(6).message, "bad \u{fffd} utf-8");
    }

    #[test]
    fn ring_keeps_the_last_lines_in_order_across_batches() {
        for cap in [1, 2, 5, 7, 30] {
            let mut ring = Ring::new(cap);
            let mut reference: VecDeque<String> = VecDeque::new();
            let mut n = 0;
            for size in [1, 3, 0, 8, 2, 1, 12, 1, 1, 5] {
                let mut batch = Batch::new(LogStream::Stdout, 0);
                for _ in 0..size {
                    n += 1;
                    batch.push(format!("line {n}").as_bytes());
                    reference.push_back(format!("line {n}"));
                    while reference.len() > cap {
                        reference.pop_front();
                    }
                }
                ring.push(Arc::new(batch));
                assert_eq!(ring.len, reference.len());
                for want in [0, 1, 2, cap / 2, cap, cap + 3] {
                    let got: Vec<String> = ring.tail(want).into_iter().map(|l| l.message).collect();
                    let skip = reference.len().saturating_sub(want);
                    let expected: Vec<String> = reference.iter().skip(skip).cloned().collect();
                    assert_eq!(got, expected, "cap {cap}, tail {want}");
                }
            }
        }
    }

    #[test]
    fn feed_with_hands_over_the_same_lines_as_feed() {
        let input =
            "a\r\nbb\n€€€€€€€€€€€€xyz\nlong line without newline that goes on and on\n\r\nend";
        for chunk in [1, 2, 3, 7, 64] {
            let (mut a, mut b) = (LineSplitter::new(16), LineSplitter::new(16));
            let (mut fed, mut with) = (Vec::new(), Vec::new());
            for c in input.as_bytes().chunks(chunk) {
                fed.extend(a.feed(c));
                b.feed_with(c, |l| with.push(String::from_utf8_lossy(l).into_owned()));
            }
            assert_eq!(fed, with, "chunks of {chunk}");
            assert_eq!(a.finish(), b.finish());
            assert!(fed.iter().all(|l| l.len() <= 16), "{fed:?}");
        }
    }

    /// A burst fills the write buffer; once flushed, the file holds every byte and the buffer
    /// is given back, so an idle service keeps only a few KiB.
    #[test]
    fn the_write_buffer_is_given_back_after_a_burst() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("burst.log");
        let mut f = LogFile::open(path.clone(), 64 << 20, 1)?;
        let line = format!("{}\n", "x".repeat(999));
        for _ in 0..300 {
            f.append_encoded(line.as_bytes())?;
        }
        assert!(f.buffer_capacity() > IDLE_BUFFER, "the burst was buffered");
        f.flush()?;
        assert!(
            f.buffer_capacity() <= IDLE_BUFFER,
            "{}",
            f.buffer_capacity()
        );
        assert_eq!(fs::read(&path)?.len(), 300 * 1000);
        f.append_encoded(line.as_bytes())?;
        f.flush()?;
        assert_eq!(fs::read(&path)?.len(), 301 * 1000);
        Ok(())
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
