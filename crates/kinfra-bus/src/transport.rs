//! One API over the two kinds of bus: a NATS connection or the in-process router.

use crate::BusError;
use crate::local::LocalBus;
use bytes::Bytes;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;

/// A message received from the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusMessage {
    /// The subject it was published on.
    pub subject: String,
    /// Where to send a reply, for requests.
    pub reply: Option<String>,
    /// The body.
    pub payload: Bytes,
}

impl From<async_nats::Message> for BusMessage {
    fn from(msg: async_nats::Message) -> Self {
        Self {
            subject: msg.subject.to_string(),
            reply: msg.reply.map(|r| r.to_string()),
            payload: msg.payload,
        }
    }
}

/// A stream of messages on one subject (which may hold wildcards). Dropping it unsubscribes.
/// Use [`Subscription::next`], or it as a `futures::Stream`.
pub struct Subscription {
    inner: SubInner,
}

enum SubInner {
    Nats(async_nats::Subscriber),
    Local {
        rx: mpsc::Receiver<BusMessage>,
        _guard: LocalGuard,
    },
}

struct LocalGuard {
    bus: Weak<LocalBus>,
    id: u64,
}

impl Drop for LocalGuard {
    fn drop(&mut self) {
        if let Some(bus) = self.bus.upgrade() {
            bus.unsubscribe(self.id);
        }
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.inner {
            SubInner::Nats(_) => "nats",
            SubInner::Local { .. } => "in_process",
        };
        f.debug_struct("Subscription").field("kind", &kind).finish()
    }
}

impl Subscription {
    /// The next message; `None` once the subscription or the bus is closed.
    pub async fn next(&mut self) -> Option<BusMessage> {
        std::future::poll_fn(|cx| self.poll_message(cx)).await
    }

    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<BusMessage>> {
        match &mut self.inner {
            SubInner::Nats(sub) => {
                futures_core::Stream::poll_next(Pin::new(sub), cx).map(|m| m.map(BusMessage::from))
            }
            SubInner::Local { rx, .. } => rx.poll_recv(cx),
        }
    }
}

impl futures_core::Stream for Subscription {
    type Item = BusMessage;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<BusMessage>> {
        self.get_mut().poll_message(cx)
    }
}

/// The connection the bus runs on.
#[derive(Clone)]
pub(crate) enum Transport {
    /// A real NATS server.
    Nats(async_nats::Client),
    /// The in-process router.
    Local(Arc<LocalBus>),
}

impl Transport {
    /// Publishes, with an optional reply subject. Subjects are not validated here.
    pub(crate) async fn publish(
        &self,
        subject: String,
        reply: Option<String>,
        payload: Bytes,
    ) -> Result<(), BusError> {
        match self {
            Self::Nats(client) => {
                let result = match reply {
                    Some(reply) => client.publish_with_reply(subject, reply, payload).await,
                    None => client.publish(subject, payload).await,
                };
                result.map_err(|e| BusError::Publish(e.to_string()))
            }
            Self::Local(bus) => {
                bus.publish(&subject, reply.as_deref(), payload);
                Ok(())
            }
        }
    }

    /// Subscribes to a subject (wildcards allowed).
    pub(crate) async fn subscribe(&self, subject: String) -> Result<Subscription, BusError> {
        match self {
            Self::Nats(client) => client
                .subscribe(subject)
                .await
                .map(|sub| Subscription {
                    inner: SubInner::Nats(sub),
                })
                .map_err(|e| BusError::Subscribe(e.to_string())),
            Self::Local(bus) => {
                let (id, rx) = bus.subscribe(&subject);
                Ok(Subscription {
                    inner: SubInner::Local {
                        rx,
                        _guard: LocalGuard {
                            bus: Arc::downgrade(bus),
                            id,
                        },
                    },
                })
            }
        }
    }

    /// Sends a request and waits for the first reply.
    pub(crate) async fn request(
        &self,
        subject: String,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, BusError> {
        match self {
            Self::Nats(client) => {
                let request = async_nats::Request::new()
                    .payload(payload)
                    .timeout(Some(timeout));
                match client.send_request(subject, request).await {
                    Ok(msg) => Ok(msg.payload),
                    Err(e) => Err(match e.kind() {
                        async_nats::RequestErrorKind::TimedOut => BusError::Timeout(timeout),
                        async_nats::RequestErrorKind::NoResponders => BusError::NoResponders,
                        _ => BusError::Request(e.to_string()),
                    }),
                }
            }
            Self::Local(bus) => {
                if !bus.has_subscriber(&subject) {
                    return Err(BusError::NoResponders);
                }
                let inbox = format!("_INBOX.{}", crate::random_hex(12));
                let mut sub = self.subscribe(inbox.clone()).await?;
                bus.publish(&subject, Some(&inbox), payload);
                match tokio::time::timeout(timeout, sub.next()).await {
                    Ok(Some(msg)) => Ok(msg.payload),
                    Ok(None) => Err(BusError::Closed),
                    Err(_) => Err(BusError::Timeout(timeout)),
                }
            }
        }
    }

    /// Pushes buffered messages to the socket.
    pub(crate) async fn flush(&self) -> Result<(), BusError> {
        match self {
            Self::Nats(client) => client
                .flush()
                .await
                .map_err(|e| BusError::Publish(e.to_string())),
            Self::Local(_) => Ok(()),
        }
    }
}
