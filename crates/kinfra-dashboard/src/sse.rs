//! The live stream `GET /__events__`: a snapshot, then coalesced batches of events with the
//! fresh status of the services they touch, resumable with `Last-Event-ID`.

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use kinfra_core::event::Event;
use kinfra_core::view::RuntimeControl;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

/// Within a burst, at most one batch per this interval (a lone event is sent at once).
const COALESCE: Duration = Duration::from_millis(10);
/// Most events in one batch.
const MAX_BATCH: usize = 500;
/// Keep-alive comment interval.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The last events, kept so a reconnecting client can be sent what it missed.
#[derive(Debug)]
pub struct EventHistory {
    events: Mutex<VecDeque<Event>>,
    capacity: usize,
}

/// What a resume from a given seq can get.
#[derive(Debug, PartialEq)]
pub enum Since {
    /// Every event after the seq, in order (possibly none).
    Events(Vec<Event>),
    /// Some events after the seq are no longer kept: the client must start from a snapshot.
    TooOld,
}

impl EventHistory {
    /// An empty history keeping `capacity` events.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            events: Mutex::new(VecDeque::with_capacity(capacity.min(4096))),
            capacity: capacity.max(1),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Event>> {
        match self.events.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Records one event.
    pub fn push(&self, event: Event) {
        let mut events = self.lock();
        if events.len() == self.capacity {
            events.pop_front();
        }
        events.push_back(event);
    }

    /// The seq of the newest event kept (0 when none).
    pub fn last_seq(&self) -> u64 {
        self.lock().back().map_or(0, |e| e.seq)
    }

    /// The last `n` events.
    pub fn recent(&self, n: usize) -> Vec<Event> {
        let events = self.lock();
        events
            .iter()
            .skip(events.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    /// Events after `seq`.
    pub fn since(&self, seq: u64) -> Since {
        let events = self.lock();
        match events.front() {
            None => Since::Events(Vec::new()),
            Some(first) if first.seq > seq + 1 => Since::TooOld,
            Some(_) => Since::Events(events.iter().filter(|e| e.seq > seq).cloned().collect()),
        }
    }

    /// Keeps recording from `rx` until the channel closes. Lagging drops events from the
    /// history, which later resumes notice as `TooOld` (never as a silent gap).
    pub fn record(
        self: Arc<Self>,
        mut rx: broadcast::Receiver<Event>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(event) => self.push(event),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(
                            skipped = n,
                            "Dashboard event history lagged; resumes before this point will start over."
                        );
                        // Forget everything: a resume across the hole must not look complete.
                        self.lock().clear();
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        })
    }
}

fn json_event(name: &str, data: &impl serde::Serialize) -> Option<SseEvent> {
    match serde_json::to_string(data) {
        Ok(text) => Some(SseEvent::default().event(name).data(text)),
        Err(error) => {
            tracing::error!(%error, "Cannot encode an SSE message.");
            None
        }
    }
}

/// An event as the stream sends it: with this node's name (`[node] name`) when the runtime
/// has one, as on the bus.
#[derive(serde::Serialize)]
struct NodeEvent<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<&'a str>,
    #[serde(flatten)]
    event: &'a Event,
}

fn with_node<'a>(node: Option<&'a str>, events: &'a [Event]) -> Vec<NodeEvent<'a>> {
    events
        .iter()
        .map(|event| NodeEvent { node, event })
        .collect()
}

/// The status of the named services only.
fn services_of(
    control: &dyn RuntimeControl,
    names: &BTreeSet<String>,
) -> BTreeMap<String, kinfra_core::status::ServiceStatus> {
    let mut report = control.status();
    report.services.retain(|name, _| names.contains(name));
    report.services
}

/// Builds the SSE response for a client that last saw `last_event_id` (if any).
pub fn stream(
    control: Arc<dyn RuntimeControl>,
    history: Arc<EventHistory>,
    last_event_id: Option<u64>,
    mut closing: tokio::sync::watch::Receiver<bool>,
) -> axum::response::Response {
    let (tx, rx) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
    // Subscribe before looking at the history so nothing falls between the two.
    let mut live = control.subscribe_events();
    let mut logs = control.subscribe_logs();
    tokio::spawn(async move {
        let node = control.status_unobserved().node;
        let node = node.as_deref();
        let mut sent_up_to = match last_event_id.map(|id| (id, history.since(id))) {
            Some((id, Since::Events(missed))) => {
                let mut last = id;
                for chunk in missed.chunks(MAX_BATCH) {
                    last = chunk.last().map_or(last, |e| e.seq);
                    if !send_batch(&tx, &*control, node, chunk, last).await {
                        return;
                    }
                }
                last
            }
            _ => {
                // A new client, or one that missed too much: start from a snapshot.
                let seq = history.last_seq();
                let Some(snapshot) = json_event("snapshot", &control.status()) else {
                    return;
                };
                if tx.send(Ok(snapshot.id(seq.to_string()))).await.is_err() {
                    return;
                }
                let Some(timeline) = json_event("events", &with_node(node, &history.recent(50)))
                else {
                    return;
                };
                if tx.send(Ok(timeline)).await.is_err() {
                    return;
                }
                seq
            }
        };
        let mut batch: Vec<Event> = Vec::new();
        let mut last_sent = tokio::time::Instant::now() - COALESCE;
        let mut log_batch: Vec<kinfra_core::status::ServiceLogLine> = Vec::new();
        loop {
            // Wait for something, then gather more for a short while.
            let first = tokio::select! {
                event = live.recv() => Some(event),
                line = logs.recv() => { if let Ok(line) = line { log_batch.push(line); } None }
                _ = tx.closed() => return,
                _ = closed(&mut closing) => return,
            };
            let mut lagged = false;
            match first {
                Some(Ok(event)) => batch.push(event),
                Some(Err(broadcast::error::RecvError::Lagged(_))) => lagged = true,
                Some(Err(broadcast::error::RecvError::Closed)) => return,
                None => {}
            }
            // Take what is already queued without waiting. Only within a burst (a batch went
            // out less than COALESCE ago) wait to gather more: a lone event goes out at once.
            loop {
                if batch.len() >= MAX_BATCH || lagged {
                    break;
                }
                match live.try_recv() {
                    Ok(event) => batch.push(event),
                    Err(broadcast::error::TryRecvError::Lagged(_)) => lagged = true,
                    Err(broadcast::error::TryRecvError::Closed) => return,
                    Err(broadcast::error::TryRecvError::Empty) => break,
                }
            }
            while let Ok(line) = logs.try_recv() {
                log_batch.push(line);
            }
            let deadline = last_sent + COALESCE;
            while batch.len() < MAX_BATCH && !lagged && tokio::time::Instant::now() < deadline {
                tokio::select! {
                    event = live.recv() => match event {
                        Ok(event) => batch.push(event),
                        Err(broadcast::error::RecvError::Lagged(_)) => lagged = true,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    line = logs.recv() => if let Ok(line) = line { log_batch.push(line); },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            last_sent = tokio::time::Instant::now();
            if lagged {
                // This client fell behind: give it a fresh snapshot rather than a gap.
                batch.clear();
                let seq = history.last_seq().max(sent_up_to);
                let Some(snapshot) = json_event("snapshot", &control.status()) else {
                    return;
                };
                if tx.send(Ok(snapshot.id(seq.to_string()))).await.is_err() {
                    return;
                }
                sent_up_to = seq;
                continue;
            }
            batch.retain(|e| e.seq > sent_up_to);
            if !fill_gap(&history, sent_up_to, &mut batch).await {
                // What the client missed is gone: start it over from a snapshot.
                batch.clear();
                let seq = history.last_seq().max(sent_up_to);
                let Some(snapshot) = json_event("snapshot", &control.status()) else {
                    return;
                };
                if tx.send(Ok(snapshot.id(seq.to_string()))).await.is_err() {
                    return;
                }
                sent_up_to = seq;
                continue;
            }
            if let Some(last) = batch.last().map(|e| e.seq) {
                if !send_batch(&tx, &*control, node, &batch, last).await {
                    return;
                }
                sent_up_to = last;
                batch.clear();
            }
            if !log_batch.is_empty() {
                // Cards show the last few lines: send at most 20 per service per batch.
                let mut per_service: BTreeMap<&str, usize> = BTreeMap::new();
                let keep: Vec<_> = log_batch
                    .iter()
                    .rev()
                    .filter(|l| {
                        let n = per_service.entry(l.service.as_str()).or_default();
                        *n += 1;
                        *n <= 20
                    })
                    .cloned()
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                log_batch.clear();
                if let Some(msg) = json_event("logs", &keep)
                    && tx.send(Ok(msg)).await.is_err()
                {
                    return;
                }
            }
        }
    });
    use axum::response::IntoResponse;
    Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

/// Resolves once `closing` turns true (or its sender is gone).
pub async fn closed(closing: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = closing.wait_for(|c| *c).await;
}

/// Makes `batch` start right after `sent_up_to`, taking the missing events from the history
/// (which records them in its own task and may be a moment behind). False when they are gone.
async fn fill_gap(history: &EventHistory, sent_up_to: u64, batch: &mut Vec<Event>) -> bool {
    let Some(first) = batch.first().map(|e| e.seq) else {
        return true;
    };
    if first <= sent_up_to + 1 {
        return true;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(250);
    while history.last_seq() + 1 < first && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    match history.since(sent_up_to) {
        Since::Events(missed) => {
            let missed: Vec<Event> = missed.into_iter().filter(|e| e.seq < first).collect();
            let complete = missed.len() as u64 == first - sent_up_to - 1;
            if complete {
                batch.splice(0..0, missed);
            }
            complete
        }
        Since::TooOld => false,
    }
}

/// Sends the fresh status of the services a batch touches, then the batch itself with the
/// id of its last event.
async fn send_batch(
    tx: &mpsc::Sender<Result<SseEvent, Infallible>>,
    control: &dyn RuntimeControl,
    node: Option<&str>,
    batch: &[Event],
    last: u64,
) -> bool {
    let touched: BTreeSet<String> = batch
        .iter()
        .map(|e| e.kind.resource().to_owned())
        .filter(|r| r != "runtime")
        .collect();
    if !touched.is_empty()
        && let Some(msg) = json_event("services", &services_of(control, &touched))
        && tx.send(Ok(msg)).await.is_err()
    {
        return false;
    }
    match json_event("events", &with_node(node, batch)) {
        Some(msg) => tx.send(Ok(msg.id(last.to_string()))).await.is_ok(),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kinfra_core::event::{EventKind, EventSender};

    #[test]
    fn history_resume() {
        let history = EventHistory::new(3);
        let tx = EventSender::new(16);
        for _ in 0..5 {
            history.push(tx.emit(EventKind::PortAssigned {
                service: "a".into(),
                port: 1,
            }));
        }
        // Kept: 3, 4, 5.
        assert_eq!(history.last_seq(), 5);
        let seqs = |s: Since| match s {
            Since::Events(v) => v.iter().map(|e| e.seq).collect::<Vec<_>>(),
            Since::TooOld => vec![u64::MAX],
        };
        assert_eq!(seqs(history.since(2)), vec![3, 4, 5]);
        assert_eq!(seqs(history.since(4)), vec![5]);
        assert_eq!(seqs(history.since(5)), Vec::<u64>::new());
        assert_eq!(history.since(1), Since::TooOld);
        assert_eq!(
            history.recent(2).iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![4, 5]
        );
    }
}
