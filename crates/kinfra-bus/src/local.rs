//! The in-process bus: subject routing with NATS wildcard semantics, inside one process.
//!
//! Used when no NATS server is configured and none can be started. Each subscription has a
//! bounded queue; a subscriber that falls behind loses messages (counted as slow-consumer
//! drops), as it would with a real NATS server, so a publisher never waits on a reader.

use crate::subject;
use crate::transport::BusMessage;
use bytes::Bytes;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;

/// Messages queued per subscription before new ones are dropped.
pub(crate) const SUBSCRIPTION_CAPACITY: usize = 8192;

struct LocalSub {
    id: u64,
    pattern: String,
    tx: mpsc::Sender<BusMessage>,
}

/// The router. Shared by every handle of an in-process [`crate::Bus`].
#[derive(Default)]
pub(crate) struct LocalBus {
    subs: Mutex<Vec<LocalSub>>,
    next_id: AtomicU64,
    slow_drops: AtomicU64,
}

impl LocalBus {
    fn subs(&self) -> std::sync::MutexGuard<'_, Vec<LocalSub>> {
        match self.subs.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Delivers a message to every matching subscription; returns how many got it.
    pub(crate) fn publish(&self, subject: &str, reply: Option<&str>, payload: Bytes) -> usize {
        let mut delivered = 0;
        let mut subs = self.subs();
        subs.retain(|sub| !sub.tx.is_closed());
        for sub in subs.iter() {
            if !subject::matches(&sub.pattern, subject) {
                continue;
            }
            let msg = BusMessage {
                subject: subject.to_owned(),
                reply: reply.map(str::to_owned),
                payload: payload.clone(),
            };
            match sub.tx.try_send(msg) {
                Ok(()) => delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.slow_drops.fetch_add(1, Ordering::Relaxed);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        delivered
    }

    /// True when at least one subscription matches `subject`.
    pub(crate) fn has_subscriber(&self, subject: &str) -> bool {
        self.subs()
            .iter()
            .any(|sub| !sub.tx.is_closed() && subject::matches(&sub.pattern, subject))
    }

    /// A new subscription; its id is for [`LocalBus::unsubscribe`].
    pub(crate) fn subscribe(&self, pattern: &str) -> (u64, mpsc::Receiver<BusMessage>) {
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_CAPACITY);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.subs().push(LocalSub {
            id,
            pattern: pattern.to_owned(),
            tx,
        });
        (id, rx)
    }

    /// Removes a subscription.
    pub(crate) fn unsubscribe(&self, id: u64) {
        self.subs().retain(|sub| sub.id != id);
    }

    /// Messages dropped because a subscription's queue was full.
    pub(crate) fn slow_drops(&self) -> u64 {
        self.slow_drops.load(Ordering::Relaxed)
    }

    /// Closes every subscription (their streams end).
    pub(crate) fn close(&self) {
        self.subs().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn routes_by_pattern_and_drops_when_full() {
        let bus = LocalBus::default();
        let (_, mut all) = bus.subscribe("a.>");
        let (id, mut one) = bus.subscribe("a.*.c");
        assert_eq!(bus.publish("a.b.c", Some("r"), Bytes::from_static(b"x")), 2);
        assert_eq!(bus.publish("a.b", None, Bytes::from_static(b"y")), 1);
        assert_eq!(bus.publish("b", None, Bytes::new()), 0);
        let m = all.recv().await;
        assert_eq!(
            m.map(|m| (m.subject, m.reply)),
            Some(("a.b.c".into(), Some("r".into())))
        );
        assert_eq!(one.recv().await.map(|m| m.payload), Some(Bytes::from("x")));
        bus.unsubscribe(id);
        assert!(!bus.has_subscriber("x.b.c"));
        assert!(bus.has_subscriber("a.q"));
        for _ in 0..SUBSCRIPTION_CAPACITY + 5 {
            bus.publish("a.b", None, Bytes::new());
        }
        assert_eq!(bus.slow_drops(), 5 + 1);
    }
}
