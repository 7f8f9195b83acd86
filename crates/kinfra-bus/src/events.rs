//! Events out: every runtime event, as JSON, on `kinfra.<project>.events.<resource>.<kind>`.
//!
//! Two tasks with a bounded buffer between them. The intake task reads the event channel
//! and never waits on the network, so the bus never makes the runtime's channel lag; it
//! serialises each event (with secrets masked) into the buffer, dropping the oldest when the
//! buffer is full (counted). The sender task publishes from the buffer, in `seq` order, only
//! while the connection is up, and flushes after each batch so no event sits in the client's
//! write buffer.

use crate::redact::Redactor;
use crate::state::{BusState, Shared};
use crate::subject;
use crate::transport::Transport;
use bytes::Bytes;
use kinfra_core::event::Event;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

/// Events published between two flushes, at most.
const BATCH: usize = 256;
/// How long a flush may take before the sender goes on.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// One serialised event waiting to be published.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) subject: String,
    /// The same event's node-scoped subject, published right after `subject` (when the bus
    /// has a node name).
    pub(crate) node_subject: Option<String>,
    pub(crate) payload: Bytes,
}

/// The bounded buffer between intake and sender.
pub(crate) struct Outbox {
    queue: Mutex<VecDeque<Outgoing>>,
    capacity: usize,
    notify: Notify,
    pub(crate) dropped: AtomicU64,
    pub(crate) published: AtomicU64,
    intake_done: AtomicBool,
}

impl Outbox {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            notify: Notify::new(),
            dropped: AtomicU64::new(0),
            published: AtomicU64::new(0),
            intake_done: AtomicBool::new(false),
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Outgoing>> {
        match self.queue.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Adds an event, dropping the oldest one when full.
    pub(crate) fn push(&self, item: Outgoing) {
        let dropped = {
            let mut q = self.queue();
            let dropped = if q.len() >= self.capacity {
                q.pop_front();
                true
            } else {
                false
            };
            q.push_back(item);
            dropped
        };
        if dropped {
            let total = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // One line per power of two keeps an outage from flooding the log.
            if total.is_power_of_two() {
                tracing::warn!(
                    dropped = total,
                    capacity = self.capacity,
                    "Bus event buffer full; dropping the oldest events."
                );
            }
        }
        self.notify.notify_one();
    }

    pub(crate) fn len(&self) -> usize {
        self.queue().len()
    }

    fn take_batch(&self) -> Vec<Outgoing> {
        let mut q = self.queue();
        let n = q.len().min(BATCH);
        q.drain(..n).collect()
    }

    /// Puts unsent events back at the front, keeping order (and the capacity).
    fn put_back(&self, items: Vec<Outgoing>) {
        let mut q = self.queue();
        for item in items.into_iter().rev() {
            if q.len() >= self.capacity {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            q.push_front(item);
        }
    }

    fn finish_intake(&self) {
        self.intake_done.store(true, Ordering::Release);
        self.notify.notify_one();
    }
}

/// Serialises one event for the bus; with a `node`, the JSON gets a `node` field and the
/// event also goes out on the node's subject.
pub(crate) fn encode(
    project: &str,
    node: Option<&str>,
    event: &Event,
    redactor: &Redactor,
) -> Option<Outgoing> {
    let (resource, kind) = (event.kind.resource(), event.kind.name());
    let subject = subject::events_subject(project, resource, kind);
    let node_subject = node.map(|n| subject::node_events_subject(project, n, resource, kind));
    match serde_json::to_string(event) {
        Ok(json) => {
            let json = match node {
                // Serialised events are JSON objects: `{"seq":…}` becomes `{"node":"a","seq":…}`.
                Some(node) if json.starts_with('{') => {
                    let name = serde_json::Value::from(node);
                    format!("{{\"node\":{name},{}", &json[1..])
                }
                _ => json,
            };
            Some(Outgoing {
                subject,
                node_subject,
                payload: Bytes::from(redactor.apply(json)),
            })
        }
        Err(error) => {
            tracing::warn!(seq = event.seq, %error, "Cannot serialise an event for the bus.");
            None
        }
    }
}

/// Reads the runtime's event channel into the outbox until `closing` fires; then takes what
/// is already in the channel and stops.
pub(crate) async fn intake(
    mut rx: broadcast::Receiver<Event>,
    outbox: Arc<Outbox>,
    project: String,
    node: Option<String>,
    redactor: Redactor,
    closing: CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            () = closing.cancelled() => break,
            received = rx.recv() => match received {
                Ok(event) => {
                    if let Some(item) = encode(&project, node.as_deref(), &event, &redactor) {
                        outbox.push(item);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    outbox.dropped.fetch_add(n, Ordering::Relaxed);
                    tracing::warn!(missed = n, "The bus fell behind the event channel.");
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    // Whatever was emitted before the shutdown still goes out.
    loop {
        match rx.try_recv() {
            Ok(event) => {
                if let Some(item) = encode(&project, node.as_deref(), &event, &redactor) {
                    outbox.push(item);
                }
            }
            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                outbox.dropped.fetch_add(n, Ordering::Relaxed);
            }
            Err(_) => break,
        }
    }
    outbox.finish_intake();
}

/// Publishes from the outbox while the bus is up, until the intake is done and the outbox
/// empty, or until `abort` fires.
pub(crate) async fn sender(
    outbox: Arc<Outbox>,
    transport: Transport,
    shared: Arc<Shared>,
    abort: CancellationToken,
) {
    let mut state = shared.watch();
    loop {
        let notified = outbox.notify.notified();
        if outbox.len() == 0 {
            if outbox.intake_done.load(Ordering::Acquire) {
                break;
            }
            tokio::select! {
                () = notified => {}
                () = abort.cancelled() => break,
            }
            continue;
        }
        if !state.borrow_and_update().is_up() {
            tokio::select! {
                changed = state.wait_for(|s| s.is_up() || *s == BusState::Closed) => {
                    if changed.map(|s| *s == BusState::Closed).unwrap_or(true) {
                        break;
                    }
                }
                () = abort.cancelled() => break,
            }
            continue;
        }
        let mut batch = outbox.take_batch().into_iter();
        let mut failed = false;
        while let Some(item) = batch.next() {
            let sent = tokio::select! {
                r = publish(&transport, &item) => r,
                () = abort.cancelled() => return,
            };
            match sent {
                Ok(()) => {
                    outbox.published.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    tracing::warn!(%error, "Publishing an event failed; keeping it buffered.");
                    let mut rest = vec![item];
                    rest.extend(batch.by_ref());
                    outbox.put_back(rest);
                    failed = true;
                    break;
                }
            }
        }
        let flushed = tokio::select! {
            r = tokio::time::timeout(FLUSH_TIMEOUT, transport.flush()) => r,
            () = abort.cancelled() => return,
        };
        if let Ok(Err(error)) = flushed {
            tracing::debug!(%error, "Flushing the bus connection failed.");
        }
        if failed {
            // The connection is gone for good (closed client); wait for a state change or
            // the abort rather than spinning.
            tokio::select! {
                _ = state.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
                () = abort.cancelled() => break,
            }
        }
    }
}

/// Publishes one event on its subject, then on its node's subject.
async fn publish(transport: &Transport, item: &Outgoing) -> Result<(), crate::BusError> {
    transport
        .publish(item.subject.clone(), None, item.payload.clone())
        .await?;
    if let Some(node_subject) = &item.node_subject {
        transport
            .publish(node_subject.clone(), None, item.payload.clone())
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: u32) -> Outgoing {
        Outgoing {
            node_subject: None,
            subject: format!("s.{n}"),
            payload: Bytes::new(),
        }
    }

    #[test]
    fn a_node_gets_its_field_and_its_subject() {
        let tx = kinfra_core::event::EventSender::new(16);
        let event = tx.emit(kinfra_core::event::EventKind::PortAssigned {
            service: "api".into(),
            port: 1,
        });
        let redactor = Redactor::new(&[]);
        let plain = encode("demo", None, &event, &redactor).expect("encoded");
        assert_eq!(plain.node_subject, None);
        let with_node = encode("demo", Some("a"), &event, &redactor).expect("encoded");
        assert_eq!(with_node.subject, plain.subject);
        assert_eq!(
            with_node.node_subject.as_deref(),
            Some("kinfra.demo.a.events.api.port_assigned")
        );
        let mut v: serde_json::Value =
            serde_json::from_slice(&with_node.payload).expect("JSON with a node");
        assert_eq!(v["node"], "a");
        v.as_object_mut().expect("object").remove("node");
        let old: serde_json::Value = serde_json::from_slice(&plain.payload).expect("JSON");
        assert_eq!(v, old, "only the node field is added");
    }

    #[test]
    fn outbox_drops_oldest_and_counts() {
        let outbox = Outbox::new(3);
        for n in 0..5 {
            outbox.push(item(n));
        }
        assert_eq!(outbox.dropped.load(Ordering::Relaxed), 2);
        let batch: Vec<String> = outbox.take_batch().into_iter().map(|i| i.subject).collect();
        assert_eq!(batch, vec!["s.2", "s.3", "s.4"]);
        outbox.put_back(vec![item(7), item(8)]);
        let batch: Vec<String> = outbox.take_batch().into_iter().map(|i| i.subject).collect();
        assert_eq!(batch, vec!["s.7", "s.8"]);
    }
}
