//! Log capture: line splitting of a child's stdout/stderr, an in-memory ring per service, and a
//! log file with size-based rotation.
//!
//! File format: one JSON object per line, the [`LogLine`] shape
//! (`{"timestamp":"…","level":"info","stream":"stdout","message":"…"}`), in
//! `STATE_DIR/logs/NAME.log`; rotated files are `NAME.log.1` (newest) to `NAME.log.KEEP`.
//!
//! Flow and bounds: one reader task per pipe waits until the pipe is readable, reads into its
//! thread's 64 KiB buffer (one per runtime thread, not per pipe: an idle service holds no read
//! buffer) and splits what it read into lines of at most `max_line` bytes (longer lines are
//! split). The lines of one read form a [`Batch`]: one timestamp (taken when the read returned),
//! one text buffer, one entry per line; no allocation per line. A batch takes one of the
//! service's 16 slots on its file writer thread, then, in one step, goes into the ring, to
//! followers and onto the writer's queue, so the ring and the file have the same order (except
//! a line of kinfra's own met by full slots: shown at once, written when there is room). The
//! ring and the writer share the batch (`Arc`); [`LogLine`]s are built only for followers (when
//! someone follows) and for [`LogSink::tail`]. The live log (ring, followers) never waits on the
//! disk: a stalled write holds up only the files, until a service's slots are taken. Then its
//! reader waits, the pipe fills and the *child* blocks in `write`; kinfra's memory stays bounded
//! (16 batches per service, the ring's lines) and its actors never wait on log output.
//!
//! Writer threads: a [`LogWriter`] is a fixed pool of at most two threads (one per core) shared
//! by every service's file, not a thread per service: each sink is given the thread serving the
//! fewest sinks, which keeps its file state (file, buffer, size for rotation) in a map and takes
//! its queue's jobs (open, lines, close; tagged with the sink) all at once. A file that stalls
//! holds up the other files of its thread too (the live logs never).
//!
//! Flush policy: a writer thread encodes each batch's lines as JSON straight into the file's
//! buffer (a rotation falls between two lines), which goes to the file when it holds 128 KiB and
//! whenever that file has nothing more queued, so a lone line is in the file as soon as the
//! writer thread has run (no timer holds it back), and a flood costs one `write` per buffer; the
//! buffer is given back after a burst. EOF of a pipe, a stop and the end of the sink hand over
//! every batch; the sink's close comes after them on the same queue and flushes. No fsync: a
//! line is in the page cache (safe across a kinfra crash, not across a power loss), like
//! supervisord's log files.

use kinfra_core::config::LogConfig;
use kinfra_core::event::now_rfc3339;
use kinfra_core::status::{LogLine, LogStream, ServiceLogLine};
use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, broadcast};
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
#[repr(u8)]
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
    let head = first_chars(message, 80);
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

/// The bytes of the first `n` characters of `text`. Short or ASCII heads (nearly every log
/// line) are found without walking the characters.
fn first_chars(text: &str, n: usize) -> &[u8] {
    let bytes = text.as_bytes();
    if bytes.len() <= n {
        return bytes;
    }
    if bytes[..n].is_ascii() {
        return &bytes[..n];
    }
    match text.char_indices().nth(n) {
        Some((at, _)) => &bytes[..at],
        None => bytes,
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
    /// Per line: where it starts and ends in `text` and its level (lines may be separated
    /// by their newlines in `text`).
    lines: Vec<(usize, usize, Level)>,
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
        b.lines.push((0, b.text.len(), level));
        b
    }

    /// Adds a line (bytes; invalid UTF-8 is replaced), its level guessed.
    pub fn push(&mut self, line: &[u8]) {
        let start = self.text.len();
        match std::str::from_utf8(line) {
            Ok(s) => self.text.push_str(s),
            Err(_) => self.text.push_str(&String::from_utf8_lossy(line)),
        }
        let level = guess(&self.text[start..]);
        self.lines.push((start, self.text.len(), level));
    }

    /// Adds the lines of `text` up to its last newline, each shorter than `max_line` bytes,
    /// copying `text` once: what [`LineSplitter::feed_with`] would hand over for it with nothing
    /// pending. `None` (and nothing added) when `text` has no newline or a line (or the rest
    /// after the last newline) is `max_line` bytes or longer; else the bytes taken.
    fn push_text(&mut self, text: &str, max_line: usize) -> Option<usize> {
        let bytes = text.as_bytes();
        let last = memchr::memrchr(b'\n', bytes)?;
        if bytes.len() - (last + 1) >= max_line {
            return None;
        }
        let (base, entries) = (self.text.len(), self.lines.len());
        self.text.push_str(&text[..=last]);
        let mut start = base;
        for nl in memchr::memchr_iter(b'\n', &bytes[..=last]) {
            let newline = base + nl;
            if newline - start >= max_line {
                self.text.truncate(base);
                self.lines.truncate(entries);
                return None;
            }
            let end = if newline > start && self.text.as_bytes()[newline - 1] == b'\r' {
                newline - 1
            } else {
                newline
            };
            let level = guess(&self.text[start..end]);
            self.lines.push((start, end, level));
            start = newline + 1;
        }
        Some(last + 1)
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
        let (start, end, level) = self.lines[i];
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

/// The file writer threads of a runtime, shared by every service's log: a small fixed pool
/// (at most two threads, one per core), each serving the files of the sinks assigned to it.
/// Cheap to clone. The threads start with the first sink that needs them and end when the
/// writer and every sink are gone, after writing every line handed to them.
#[derive(Clone)]
pub struct LogWriter {
    pool: Arc<Pool>,
}

struct Pool {
    workers: Vec<Worker>,
    /// The threads' name before their number (`kinfra-log-0`).
    name: &'static str,
}

/// One writer thread: its queue, whether it runs, and how many sinks it serves.
struct Worker {
    queue: Arc<Queue>,
    started: Mutex<bool>,
    sinks: AtomicUsize,
}

impl Default for LogWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl LogWriter {
    /// A pool of `min(2, cores)` writer threads (started on first use).
    pub fn new() -> LogWriter {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        LogWriter::with_threads(cores.min(2))
    }

    /// A pool of `threads` writer threads (at least one, started on first use).
    pub fn with_threads(threads: usize) -> LogWriter {
        LogWriter::named(threads, "kinfra-log")
    }

    /// A pool of `threads` writer threads named `NAME-0`, `NAME-1`, … (at most 15 bytes in
    /// all, or Linux cuts the name).
    fn named(threads: usize, name: &'static str) -> LogWriter {
        let workers = (0..threads.max(1))
            .map(|_| Worker {
                queue: Arc::new(Queue::default()),
                started: Mutex::new(false),
                sinks: AtomicUsize::new(0),
            })
            .collect();
        LogWriter {
            pool: Arc::new(Pool { workers, name }),
        }
    }

    /// The writer thread serving the fewest sinks, started if it was not yet.
    fn assign(&self) -> io::Result<usize> {
        let (index, worker) = self
            .pool
            .workers
            .iter()
            .enumerate()
            .min_by_key(|(_, w)| w.sinks.load(Ordering::Relaxed))
            .ok_or_else(|| io::Error::other("a log writer without threads"))?;
        let mut started = lock(&worker.started);
        if !*started {
            let queue = worker.queue.clone();
            std::thread::Builder::new()
                .name(format!("{}-{index}", self.pool.name))
                .spawn(move || run_writer(queue))?;
            *started = true;
        }
        worker.sinks.fetch_add(1, Ordering::Relaxed);
        Ok(index)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // No sink is left (each holds the pool): the threads write what is queued and end.
        for w in &self.workers {
            w.queue.close();
        }
    }
}

/// Work for a writer thread, in the order the sinks handed it over.
enum Job {
    /// A sink's file, from now on written by this thread.
    Open {
        id: u64,
        service: Arc<str>,
        file: Box<LogFile>,
    },
    /// Lines for a sink's file; `_slot` is the sink's channel slot, free again once written.
    Lines {
        id: u64,
        batch: Arc<Batch>,
        _slot: OwnedSemaphorePermit,
    },
    /// The sink is gone: flush its file and close it.
    Close { id: u64 },
}

/// A writer thread's queue: every job of every sink it serves.
#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    ready: Condvar,
}

#[derive(Default)]
struct QueueState {
    jobs: VecDeque<Job>,
    /// No job comes any more (the pool is gone) or none is taken any more (the thread died).
    closed: bool,
    /// The thread died: jobs are refused.
    dead: bool,
}

impl Queue {
    /// Queues `job`; false (and the job dropped) when the writer thread is gone.
    fn push(&self, job: Job) -> bool {
        let mut state = lock(&self.state);
        if state.dead {
            return false;
        }
        let wake = state.jobs.is_empty();
        state.jobs.push_back(job);
        drop(state);
        if wake {
            self.ready.notify_one();
        }
        true
    }

    fn close(&self) {
        lock(&self.state).closed = true;
        self.ready.notify_one();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sink ids, unique in the process (a map key on the writer thread).
static NEXT_SINK: AtomicU64 = AtomicU64::new(0);

/// A sink's link to its file on a writer thread; closes the file when the last clone of the
/// sink (and the last line waiting for a slot) is gone, after every batch it handed over.
struct SinkFile {
    id: u64,
    worker: usize,
    slots: Arc<Semaphore>,
    writer: LogWriter,
}

impl SinkFile {
    fn queue(&self) -> &Queue {
        &self.writer.pool.workers[self.worker].queue
    }

    /// Hands `batch` to the writer thread with the channel slot it took.
    fn send(&self, batch: Arc<Batch>, slot: OwnedSemaphorePermit) -> bool {
        self.queue().push(Job::Lines {
            id: self.id,
            batch,
            _slot: slot,
        })
    }
}

impl Drop for SinkFile {
    fn drop(&mut self) {
        self.queue().push(Job::Close { id: self.id });
        self.writer.pool.workers[self.worker]
            .sinks
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// The per-service log: ring, file and followers. Cheap to clone.
#[derive(Clone)]
pub struct LogSink {
    service: Arc<str>,
    ring: Arc<Mutex<Ring>>,
    followers: broadcast::Sender<ServiceLogLine>,
    file: Arc<SinkFile>,
}

impl LogSink {
    /// Opens (appending) `dir/NAME.log` for `service`, written by one of `writer`'s threads.
    pub fn new(
        service: &str,
        dir: &Path,
        cfg: LogConfig,
        followers: broadcast::Sender<ServiceLogLine>,
        writer: &LogWriter,
    ) -> io::Result<LogSink> {
        fs::create_dir_all(dir)?;
        let path = dir.join(format!("{service}.log"));
        let log_file = LogFile::open(path, cfg.max_size.0, cfg.keep)?;
        let ring = Arc::new(Mutex::new(Ring::new(cfg.ring)));
        let worker = writer.assign()?;
        let file = SinkFile {
            id: NEXT_SINK.fetch_add(1, Ordering::Relaxed),
            worker,
            slots: Arc::new(Semaphore::new(CHANNEL_BATCHES)),
            writer: writer.clone(),
        };
        let service: Arc<str> = service.into();
        if !file.queue().push(Job::Open {
            id: file.id,
            service: service.clone(),
            file: Box::new(log_file),
        }) {
            return Err(io::Error::other("the log writer thread is gone"));
        }
        Ok(LogSink {
            service,
            ring,
            followers,
            file: Arc::new(file),
        })
    }

    /// Puts `batch` in the ring and sends its lines to followers (when someone follows) and,
    /// with `slot`, to the file writer, all under the ring's lock: ring and file get lines in
    /// the same order. False when the line could not go to the writer.
    fn publish(&self, batch: Arc<Batch>, slot: Option<OwnedSemaphorePermit>) -> bool {
        let mut ring = lock(&self.ring);
        ring.push(batch.clone());
        if self.followers.receiver_count() > 0 {
            for i in 0..batch.len() {
                let _ = self.followers.send(ServiceLogLine {
                    service: self.service.to_string(),
                    line: batch.log_line(i),
                });
            }
        }
        match slot {
            Some(slot) => self.file.send(batch, slot),
            None => false,
        }
    }

    /// Records a batch, waiting for a free slot of the file writer first (never for the disk).
    /// False when the writer is gone.
    async fn record(&self, batch: Batch) -> bool {
        let batch = Arc::new(batch);
        match self.file.slots.clone().acquire_owned().await {
            Ok(slot) => self.publish(batch, Some(slot)),
            Err(_) => self.publish(batch, None),
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
        match self.file.slots.clone().try_acquire_owned() {
            Ok(slot) => {
                self.publish(batch, Some(slot));
            }
            Err(TryAcquireError::NoPermits) => {
                // Shown now; written to the file when the writer has room, without making
                // the caller wait. The task keeps the file open until then.
                self.publish(batch.clone(), None);
                let file = self.file.clone();
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    handle.spawn(async move {
                        if let Ok(slot) = file.slots.clone().acquire_owned().await {
                            file.send(batch, slot);
                        }
                    });
                }
            }
            Err(TryAcquireError::Closed) => {
                self.publish(batch, None);
            }
        }
    }

    /// Records a line of output from a resource driven through an adapter; waits while the
    /// file writer's channel is full, so lines keep their order.
    pub async fn write(&self, stream: LogStream, message: String) {
        self.record(Batch::one(stream, &message, None)).await;
    }

    /// The last `n` lines in the ring, oldest first.
    pub fn tail(&self, n: usize) -> Vec<LogLine> {
        lock(&self.ring).tail(n)
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
        Ok(Read::Lines(split_read(&buf[..n], stream, splitter)))
    })
}

/// The batch of the lines one read (`chunk`) finished: one batch, one timestamp, one channel
/// slot for all of them. Once the line pending from the last read is finished, valid UTF-8 (the
/// common case) is checked and copied at once, not line by line.
fn split_read(chunk: &[u8], stream: LogStream, splitter: &mut LineSplitter) -> Batch {
    let mut batch = Batch::new(stream, chunk.len() + splitter.pending.len());
    // Room for lines of 16 bytes on average; longer ones leave some unused, shorter ones grow
    // it once or twice (cheaper than a counting pass over every read).
    batch.lines.reserve(chunk.len() / 16 + 1);
    let mut chunk = chunk;
    if !splitter.pending.is_empty() {
        // The read most often starts inside the line the last one ended in: finish that line
        // through the splitter, then take the rest whole.
        let Some(nl) = memchr::memchr(b'\n', chunk) else {
            splitter.feed_with(chunk, |line| batch.push(line));
            return batch;
        };
        splitter.feed_with(&chunk[..=nl], |line| batch.push(line));
        chunk = &chunk[nl + 1..];
    }
    if splitter.pending.is_empty()
        && let Ok(text) = std::str::from_utf8(chunk)
        && let Some(taken) = batch.push_text(text, splitter.max_line)
    {
        splitter.pending.extend_from_slice(&chunk[taken..]);
        return batch;
    }
    splitter.feed_with(chunk, |line| batch.push(line));
    batch
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

/// A sink's file on its writer thread.
struct OpenFile {
    service: Arc<str>,
    file: Box<LogFile>,
    /// Lines are buffered, not yet written.
    dirty: bool,
}

/// Marks the queue dead if the writer thread unwinds, so no sink waits on it for ever: the
/// queued jobs (and the channel slots they hold) are dropped, later ones refused.
struct DeathGuard(Arc<Queue>);

impl Drop for DeathGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut state = lock(&self.0.state);
            state.dead = true;
            state.closed = true;
            state.jobs.clear();
        }
    }
}

/// A writer thread: takes every queued job at once, encodes each batch into its file's buffer,
/// then writes out the buffer of every file that has nothing more queued.
fn run_writer(queue: Arc<Queue>) {
    let _guard = DeathGuard(queue.clone());
    let mut files: HashMap<u64, OpenFile> = HashMap::new();
    let mut jobs = VecDeque::new();
    let mut dirty: Vec<u64> = Vec::new();
    let mut queued: Vec<u64> = Vec::new();
    let mut encoder = Encoder::default();
    loop {
        {
            let mut state = lock(&queue.state);
            while state.jobs.is_empty() {
                if state.closed {
                    return;
                }
                state = queue
                    .ready
                    .wait(state)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            std::mem::swap(&mut jobs, &mut state.jobs);
        }
        for job in jobs.drain(..) {
            match job {
                Job::Open { id, service, file } => {
                    files.insert(
                        id,
                        OpenFile {
                            service,
                            file,
                            dirty: false,
                        },
                    );
                }
                Job::Lines { id, batch, .. } => {
                    let Some(f) = files.get_mut(&id) else {
                        continue;
                    };
                    if let Err(error) = f.file.append_batch(&batch, &mut encoder) {
                        warn!(service = %f.service, %error, "Writing the log file failed.");
                    }
                    if !f.dirty {
                        f.dirty = true;
                        dirty.push(id);
                    }
                }
                Job::Close { id } => {
                    if let Some(mut f) = files.remove(&id)
                        && let Err(error) = f.file.flush_to(&mut encoder.spare)
                    {
                        warn!(service = %f.service, %error, "Writing the log file failed.");
                    }
                }
            }
        }
        if dirty.is_empty() {
            continue;
        }
        // Write out every file with nothing more queued: a lone line goes to the file at once,
        // a flood in buffers of WRITE_BUFFER.
        queued.clear();
        {
            let state = lock(&queue.state);
            queued.extend(state.jobs.iter().filter_map(|j| match j {
                Job::Lines { id, .. } => Some(*id),
                _ => None,
            }));
        }
        queued.sort_unstable();
        queued.dedup();
        dirty.retain(|id| {
            if queued.binary_search(id).is_ok() {
                return true;
            }
            if let Some(f) = files.get_mut(id) {
                f.dirty = false;
                if let Err(error) = f.file.flush_to(&mut encoder.spare) {
                    warn!(service = %f.service, %error, "Writing the log file failed.");
                }
            }
            false
        });
    }
}

/// Encodes a batch's lines as the JSON of [`LogLine`], byte for byte what `serde_json` makes of
/// it, with the parts shared by the batch's lines (timestamp, stream) encoded once.
#[derive(Default)]
struct Encoder {
    /// Per level (in [`Level`]'s order): everything before the message's text,
    /// `{"timestamp":"…","level":"…","stream":"…","message":"`.
    prefix: [Vec<u8>; 4],
    /// The writer thread's one spare full-size buffer: a file's buffer given back after a
    /// burst, lent to the next file that gets a burst (no allocation and page faults per burst).
    spare: Vec<u8>,
}

impl Encoder {
    fn start(&mut self, batch: &Batch) {
        let levels = [Level::Error, Level::Warn, Level::Info, Level::Debug];
        for (prefix, level) in self.prefix.iter_mut().zip(levels) {
            prefix.clear();
            prefix.extend_from_slice(b"{\"timestamp\":");
            json_str(prefix, &batch.timestamp);
            prefix.extend_from_slice(b",\"level\":");
            json_str(prefix, level.as_str());
            prefix.extend_from_slice(b",\"stream\":");
            json_str(prefix, batch.stream.as_str());
            prefix.extend_from_slice(b",\"message\":\"");
        }
    }

    /// Appends line `i` of `batch` (after [`Encoder::start`] with it), with its newline.
    fn line(&self, out: &mut Vec<u8>, batch: &Batch, i: usize) {
        let (message, level) = batch.line(i);
        out.extend_from_slice(&self.prefix[level as usize]);
        json_str_contents(out, message);
        out.extend_from_slice(b"\"}\n");
    }

    /// Bytes of a line around its message (for sizing a buffer).
    fn overhead(&self) -> usize {
        self.prefix[0].len() + 8
    }
}

/// How `serde_json` escapes each byte of a string: 0 not at all, `u` as `\u00XX`, else a
/// backslash and that byte.
static ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = b'u';
        b += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0a] = b'n';
    t[0x0c] = b'f';
    t[0x0d] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

/// Appends `s` as a JSON string, escaped as `serde_json` escapes it (unit-tested against it).
fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    json_str_contents(out, s);
    out.push(b'"');
}

/// Appends `s` escaped for the inside of a JSON string.
fn json_str_contents(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape = ESCAPE[b as usize];
        if escape == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        if escape == b'u' {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 0xf) as usize]);
        } else {
            out.push(b'\\');
            out.push(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
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
        self.reserve(bytes.len());
        let start = self.buf.len();
        self.buf.extend_from_slice(bytes);
        self.appended(start)
    }

    /// Appends the lines of `batch` as JSON, encoded straight into the buffer.
    fn append_batch(&mut self, batch: &Batch, encoder: &mut Encoder) -> io::Result<()> {
        encoder.start(batch);
        let bytes = batch.text.len() + batch.len() * encoder.overhead();
        if bytes > IDLE_BUFFER
            && self.buf.is_empty()
            && encoder.spare.capacity() > self.buf.capacity()
        {
            std::mem::swap(&mut self.buf, &mut encoder.spare);
        }
        self.reserve(bytes);
        let mut result = Ok(());
        for i in 0..batch.len() {
            let start = self.buf.len();
            encoder.line(&mut self.buf, batch, i);
            // An error drops what could not be written (as a full disk would); later lines
            // still go on.
            if let Err(e) = self.appended(start) {
                result = Err(e);
            }
        }
        result
    }

    /// Room for about `bytes` more in the buffer: at least a few KiB, at most what fills it
    /// to one full buffer and a bit (it is written once full).
    fn reserve(&mut self, bytes: usize) {
        let len = self.buf.len();
        let want = bytes
            .max(IDLE_BUFFER)
            .min(WRITE_BUFFER + IDLE_BUFFER - len.min(WRITE_BUFFER));
        if self.buf.capacity() - len < want {
            self.buf.reserve_exact(want);
        }
    }

    /// Accounts for the line just encoded at `start..` of the buffer: when it would take the
    /// file past its size limit, what came before it is written and the file rotated first;
    /// a full buffer is written.
    fn appended(&mut self, start: usize) -> io::Result<()> {
        let len = (self.buf.len() - start) as u64;
        if self.size > 0 && self.size + len > self.max_size {
            let rotated = self.write_prefix(start).and_then(|()| self.rotate());
            if let Err(e) = rotated {
                // The line is dropped with the rest (as a failed write drops its lines).
                self.buf.clear();
                return Err(e);
            }
        }
        self.size += len;
        if self.buf.len() >= WRITE_BUFFER {
            self.write_out()?;
        }
        Ok(())
    }

    /// Writes the first `n` bytes of the buffer and keeps the rest at its front.
    fn write_prefix(&mut self, n: usize) -> io::Result<()> {
        if n == 0 {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let written = self.file().and_then(|f| f.write_all(&buf[..n]));
        self.buf = buf;
        self.buf.drain(..n);
        written
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
        self.flush_to(&mut Vec::new())
    }

    /// Flushes buffered lines to the file; a buffer grown past a few KiB goes to `spare` when
    /// it is larger than the one there (else it is freed).
    fn flush_to(&mut self, spare: &mut Vec<u8>) -> io::Result<()> {
        let written = self.write_out();
        if self.buf.capacity() > IDLE_BUFFER {
            let buf = std::mem::take(&mut self.buf);
            if buf.capacity() > spare.capacity() {
                *spare = buf;
            }
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

    /// Renames the files one up and opens a new one; the buffer must hold no line of the old
    /// file.
    fn rotate(&mut self) -> io::Result<()> {
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
    use crate::test_support::eventually;

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
                // ASCII up to the limit, then non-ASCII (the fast path's edge).
                format!("{}é error", "a".repeat(79)),
                format!("{}éerror", "a".repeat(74)),
                format!("{}error", "a".repeat(80)),
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
            let mut got = Vec::new();
            encoder.line(&mut got, &batch, i);
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

    /// A read's lines, whether taken whole (valid UTF-8, nothing pending) or line by line,
    /// are the lines the splitter hands over.
    #[test]
    fn a_read_splits_into_the_lines_the_splitter_hands_over() {
        let inputs: [&[u8]; 4] = [
            b"a\r\nbb\n\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xacxyz\nERROR long line without newline that goes on and on\n\r\nend",
            b"exactly sixteen.\nfifteen bytes..\nseventeen bytes..\n\n\nwarn x\r\r\n",
            b"bad \xff utf-8\nok\nx\xe2\x82",
            b"\xac split char\nno newline at all in this piece",
        ];
        for chunk in [1, 2, 3, 7, 16, 17, 64, 1000] {
            let (mut a, mut b) = (LineSplitter::new(16), LineSplitter::new(16));
            let (mut fed, mut read) = (Vec::new(), Vec::new());
            for input in inputs {
                for c in input.chunks(chunk) {
                    fed.extend(a.feed(c));
                    let batch = split_read(c, LogStream::Stdout, &mut b);
                    for i in 0..batch.len() {
                        let line = batch.log_line(i);
                        assert_eq!(line.level, guess_level(&line.message));
                        read.push(line.message);
                    }
                }
            }
            assert_eq!(fed, read, "chunks of {chunk}");
            assert_eq!(a.finish(), b.finish());
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

    #[test]
    fn strings_escape_as_serde_json_does() {
        let mut cases: Vec<String> = (0u8..0x80).map(|b| format!("a{}b", b as char)).collect();
        cases.extend(
            [
                "",
                "\"\\",
                "ünïcödé € 𝄞",
                "\u{7f}\u{80}\u{2028}",
                "x\ny\r\n",
            ]
            .map(str::to_owned),
        );
        for c in cases {
            let mut got = Vec::new();
            json_str(&mut got, &c);
            let want = serde_json::to_string(&c).unwrap_or_default();
            assert_eq!(String::from_utf8_lossy(&got), want, "{c:?}");
        }
    }

    /// Encoded straight into the file's buffer, a batch crossing the size limit is split
    /// between files at a line: every line once, in order, no file past the limit.
    #[test]
    fn a_batch_rotates_between_its_lines() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("b.log");
        let mut f = LogFile::open(path.clone(), 1024, 100)?;
        let mut encoder = Encoder::default();
        let mut want = Vec::new();
        for round in 0..3 {
            let mut batch = Batch::new(LogStream::Stdout, 0);
            for i in 0..70 {
                batch.push(format!("round {round} line {i:03} \"quoted\"").as_bytes());
            }
            for i in 0..batch.len() {
                want.extend(serde_json::to_vec(&batch.log_line(i)).unwrap_or_default());
                want.push(b'\n');
            }
            f.append_batch(&batch, &mut encoder)?;
        }
        f.flush()?;
        let files = rotated_files(dir.path(), "b", 100);
        assert!(files.len() > 10, "{} files", files.len());
        let mut got = Vec::new();
        for p in &files {
            let bytes = fs::read(p)?;
            assert!(
                bytes.len() <= 1024,
                "{} is {} bytes",
                p.display(),
                bytes.len()
            );
            assert!(bytes.ends_with(b"\n"), "{} ends inside a line", p.display());
            got.extend(bytes);
        }
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want)
        );
        Ok(())
    }

    /// The log files of `name` that exist, oldest first.
    fn rotated_files(dir: &Path, name: &str, keep: u32) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = (1..=keep)
            .rev()
            .map(|n| dir.join(format!("{name}.log.{n}")))
            .filter(|p| p.exists())
            .collect();
        out.push(dir.join(format!("{name}.log")));
        out
    }

    /// The messages in the files of `name`, oldest first.
    fn messages_in_files(dir: &Path, name: &str, keep: u32) -> Vec<String> {
        rotated_files(dir, name, keep)
            .iter()
            .flat_map(|p| {
                fs::read_to_string(p)
                    .unwrap_or_default()
                    .lines()
                    .map(|l| {
                        serde_json::from_str::<LogLine>(l)
                            .unwrap_or_else(|e| panic!("not a LogLine ({e}): {l}"))
                            .message
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Threads of this process whose name starts with `prefix`.
    fn threads_named(prefix: &str) -> usize {
        fs::read_dir("/proc/self/task")
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|t| {
                        fs::read_to_string(t.path().join("comm"))
                            .is_ok_and(|c| c.starts_with(prefix))
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    /// Fifty services' logs on one pool of two writer threads: each captures a process that
    /// prints M lines and exits; every file set has exactly its M lines, in order, across
    /// rotations, and the pool never has more than two threads.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_sinks_share_the_writer_threads_and_lose_nothing() {
        const SINKS: usize = 50;
        const M: usize = 3000;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let (tx, _) = broadcast::channel(16);
        let writer = LogWriter::named(2, "logtest-many");
        let cfg = LogConfig {
            max_size: kinfra_core::config::ByteSize(16 * 1024),
            keep: 1000,
            ..LogConfig::default()
        };
        let names: Vec<String> = (0..SINKS).map(|i| format!("s{i:02}")).collect();
        let sinks: Vec<LogSink> = names
            .iter()
            .map(|n| {
                LogSink::new(n, dir.path(), cfg, tx.clone(), &writer)
                    .unwrap_or_else(|e| panic!("sink {n}: {e}"))
            })
            .collect();
        assert!(
            threads_named("logtest-many") <= 2,
            "{} writer threads for {SINKS} sinks",
            threads_named("logtest-many")
        );
        let mut children = Vec::new();
        let mut readers = Vec::new();
        for (name, sink) in names.iter().zip(&sinks) {
            let mut child = std::process::Command::new("seq")
                .args(["-f", &format!("{name} %.0f"), "1", &M.to_string()])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("seq (coreutils): {e}"));
            let out = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
            readers.push(sink.capture(OwnedFd::from(out), LogStream::Stdout, 4096));
            children.push(child);
        }
        for r in readers {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(60), r).await;
        }
        for mut c in children {
            let _ = c.wait();
        }
        assert!(threads_named("logtest-many") <= 2);
        drop(sinks);
        let want = |name: &str| -> Vec<String> { (1..=M).map(|i| format!("{name} {i}")).collect() };
        let complete = eventually(30, || {
            names
                .iter()
                .all(|n| messages_in_files(dir.path(), n, 1000).len() >= M)
        })
        .await;
        assert!(complete, "some lines never reached the files");
        for name in &names {
            assert!(
                dir.path().join(format!("{name}.log.1")).exists(),
                "{name}: no rotation"
            );
            assert_eq!(
                messages_in_files(dir.path(), name, 1000),
                want(name),
                "{name}"
            );
        }
        // The sinks are gone and so is the writer handle: the threads end.
        drop(writer);
        assert!(
            eventually(10, || threads_named("logtest-many") == 0).await,
            "the writer threads outlived every sink"
        );
    }

    /// A sink dropped while others write on the same writer thread: its lines are all in its
    /// file, and the others go on (their lines, and then a lone line, reach their files).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sink_dropped_while_others_write_loses_nothing_and_stalls_nobody() {
        const N: usize = 20_000;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let (tx, _) = broadcast::channel(16);
        let writer = LogWriter::named(1, "logtest-drop");
        let cfg = LogConfig {
            max_size: kinfra_core::config::ByteSize(64 * 1024),
            keep: 1000,
            ..LogConfig::default()
        };
        let open = |name: &str| {
            LogSink::new(name, dir.path(), cfg, tx.clone(), &writer)
                .unwrap_or_else(|e| panic!("sink {name}: {e}"))
        };
        let (dropped, b, c) = (open("dropped"), open("b"), open("c"));
        let flood = |sink: LogSink, name: &'static str| {
            tokio::spawn(async move {
                for i in 1..=N {
                    sink.write(LogStream::Stdout, format!("{name} {i}")).await;
                }
                sink
            })
        };
        let (fb, fc) = (flood(b, "b"), flood(c, "c"));
        for i in 1..=N / 4 {
            dropped
                .write(LogStream::Stdout, format!("dropped {i}"))
                .await;
        }
        drop(dropped);
        let (b, c) = match tokio::time::timeout(std::time::Duration::from_secs(60), async {
            (fb.await, fc.await)
        })
        .await
        {
            Ok((Ok(b), Ok(c))) => (b, c),
            other => panic!("the other sinks stalled: {:?}", other.is_ok()),
        };
        let lines = |name: &str, n: usize| -> Vec<String> {
            (1..=n).map(|i| format!("{name} {i}")).collect()
        };
        assert!(
            eventually(30, || messages_in_files(dir.path(), "dropped", 1000).len()
                >= N / 4
                && messages_in_files(dir.path(), "b", 1000).len() >= N
                && messages_in_files(dir.path(), "c", 1000).len() >= N)
            .await,
            "lines never reached the files"
        );
        assert_eq!(
            messages_in_files(dir.path(), "dropped", 1000),
            lines("dropped", N / 4)
        );
        assert_eq!(messages_in_files(dir.path(), "b", 1000), lines("b", N));
        assert_eq!(messages_in_files(dir.path(), "c", 1000), lines("c", N));
        // b lives on: a lone line of it reaches its file without any more output.
        b.system("still here");
        assert!(
            eventually(10, || messages_in_files(dir.path(), "b", 1000)
                .last()
                .is_some_and(|m| m == "still here"))
            .await,
            "a lone line after the drop never reached the file"
        );
        drop((b, c));
    }
}
