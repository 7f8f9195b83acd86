//! The fleet: every kinfra node on one bus, as each node sees it from the heartbeats.
//!
//! Each node publishes a heartbeat on `kinfra.<project>.<node>.heartbeat` every `[node]
//! heartbeat` (its services with their states and health), and listens on
//! `kinfra.<project>.*.heartbeat` to keep a table of every node heard, itself included. A
//! node not heard from for 2½ of its own intervals is `down` (so within 3 heartbeats of its
//! last one). The same task relays every node's node-scoped events
//! (`kinfra.<project>.<node>.events.>`) to local readers (the dashboard's fleet stream).

use crate::state::Shared;
use crate::subject;
use crate::transport::Transport;
use bytes::Bytes;
use kinfra_core::event::now_rfc3339;
use kinfra_core::view::RuntimeControl;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Heartbeat intervals (in tenths) after which a silent node is `down`: 2½ intervals, so a
/// node that stopped is shown down within 3 of its heartbeats.
const DOWN_AFTER_TENTHS: u32 = 25;
/// Fleet events kept for a slow local reader.
const EVENT_CHANNEL: usize = 1024;

/// One service or resource in a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceSummary {
    /// `process`, `container`, …
    #[serde(default)]
    pub kind: String,
    /// Its state (`running`, `failed`, …).
    pub state: String,
    /// Its health (`healthy`, `unknown`, …).
    #[serde(default)]
    pub health: String,
}

/// What a node publishes every heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The node's name.
    pub node: String,
    /// When it was sent, RFC 3339 UTC.
    pub timestamp: String,
    /// The node's heartbeat interval in milliseconds.
    pub interval_ms: u64,
    /// Its kinfra process.
    #[serde(default)]
    pub pid: u32,
    /// Its services and resources, by name.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceSummary>,
    /// The node's last heartbeat: it is shutting down.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaving: bool,
}

/// One node of the fleet as this node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetNode {
    /// The node's name.
    pub node: String,
    /// `up` or `down`.
    pub state: String,
    /// When its last heartbeat arrived, RFC 3339 UTC.
    pub last_seen: String,
    /// Seconds since then.
    pub last_seen_s: f64,
    /// Its heartbeat interval in milliseconds.
    pub interval_ms: u64,
    /// Its kinfra process.
    pub pid: u32,
    /// Its services and resources with their states, from its last heartbeat.
    pub services: BTreeMap<String, ServiceSummary>,
    /// It said it was shutting down (and is `down` since).
    #[serde(default)]
    pub left: bool,
}

/// The fleet table: `status.fleet`, `kinfra fleet status`, the dashboard's fleet section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetView {
    /// This node.
    pub node: String,
    /// Every node heard (this one included), by name.
    pub nodes: Vec<FleetNode>,
}

struct Peer {
    seen: Instant,
    seen_at: String,
    beat: Heartbeat,
}

/// The fleet table and the relay of fleet events, shared by the bus's fleet tasks.
pub(crate) struct Fleet {
    node: String,
    interval: Duration,
    peers: Mutex<BTreeMap<String, Peer>>,
    events: broadcast::Sender<Arc<str>>,
}

impl Fleet {
    pub(crate) fn new(node: String, interval: Duration) -> Self {
        Self {
            node,
            interval: interval.max(Duration::from_millis(10)),
            peers: Mutex::new(BTreeMap::new()),
            events: broadcast::channel(EVENT_CHANNEL).0,
        }
    }

    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Peer>> {
        match self.peers.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn record(&self, beat: Heartbeat) {
        let peer = Peer {
            seen: Instant::now(),
            seen_at: now_rfc3339(),
            beat,
        };
        self.peers().insert(peer.beat.node.clone(), peer);
    }

    pub(crate) fn subscribe_events(&self) -> broadcast::Receiver<Arc<str>> {
        self.events.subscribe()
    }

    pub(crate) fn view(&self) -> FleetView {
        let now = Instant::now();
        let nodes = self
            .peers()
            .values()
            .map(|p| {
                let interval = Duration::from_millis(p.beat.interval_ms.max(1));
                let age = now.saturating_duration_since(p.seen);
                let up = !p.beat.leaving && age <= interval * DOWN_AFTER_TENTHS / 10;
                FleetNode {
                    node: p.beat.node.clone(),
                    state: if up { "up" } else { "down" }.into(),
                    last_seen: p.seen_at.clone(),
                    last_seen_s: (age.as_millis() as f64 / 1000.0 * 10.0).round() / 10.0,
                    interval_ms: p.beat.interval_ms,
                    pid: p.beat.pid,
                    services: p.beat.services.clone(),
                    left: p.beat.leaving,
                }
            })
            .collect();
        FleetView {
            node: self.node.clone(),
            nodes,
        }
    }

    fn heartbeat(&self, control: &dyn RuntimeControl) -> Heartbeat {
        let report = control.status_unobserved();
        let services = report
            .services
            .iter()
            .map(|(name, s)| {
                let word = |v: serde_json::Value| v.as_str().unwrap_or_default().to_owned();
                (
                    name.clone(),
                    ServiceSummary {
                        kind: s.kind.clone(),
                        state: word(serde_json::to_value(s.state).unwrap_or_default()),
                        health: word(serde_json::to_value(s.health).unwrap_or_default()),
                    },
                )
            })
            .collect();
        Heartbeat {
            node: self.node.clone(),
            timestamp: now_rfc3339(),
            interval_ms: u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX),
            pid: std::process::id(),
            services,
            leaving: false,
        }
    }
}

/// Publishes this node's heartbeat every interval (only while the bus is up: a heartbeat
/// queued through an outage would say a node is alive when it was not), until `stop`; then
/// a last one saying the node is leaving, so the others show it down at once.
pub(crate) async fn beat(
    fleet: Arc<Fleet>,
    control: Arc<dyn RuntimeControl>,
    transport: Transport,
    shared: Arc<Shared>,
    project: String,
    stop: CancellationToken,
) {
    let subject = subject::heartbeat_subject(&project, fleet.node());
    let mut tick = tokio::time::interval(fleet.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let beat = fleet.heartbeat(control.as_ref());
        if !shared.state().is_up() {
            // Still shown to ourselves: this node is alive even when the bus is not.
            fleet.record(beat);
            continue;
        }
        match serde_json::to_vec(&beat) {
            Ok(body) => {
                fleet.record(beat);
                if let Err(error) = transport
                    .publish(subject.clone(), None, Bytes::from(body))
                    .await
                {
                    tracing::debug!(%error, "Cannot publish the heartbeat.");
                }
            }
            Err(error) => tracing::warn!(%error, "Cannot serialise the heartbeat."),
        }
    }
    if shared.state().is_up() {
        let beat = Heartbeat {
            leaving: true,
            ..fleet.heartbeat(control.as_ref())
        };
        if let Ok(body) = serde_json::to_vec(&beat) {
            let _ = transport.publish(subject, None, Bytes::from(body)).await;
        }
    }
}

/// Keeps the fleet table from every node's heartbeats and relays node-scoped events, until
/// `stop` or the subscriptions end.
pub(crate) async fn listen(
    fleet: Arc<Fleet>,
    transport: Transport,
    project: String,
    stop: CancellationToken,
) {
    let beats = transport
        .subscribe(subject::heartbeat_wildcard(&project))
        .await;
    let events = transport
        .subscribe(subject::node_events_wildcard(&project))
        .await;
    let (mut beats, mut events) = match (beats, events) {
        (Ok(b), Ok(e)) => (b, e),
        (Err(error), _) | (_, Err(error)) => {
            tracing::warn!(%error, "Cannot subscribe to the fleet's heartbeats; the fleet view stays empty.");
            return;
        }
    };
    let old_events = format!("kinfra.{project}.events.");
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            msg = beats.next() => {
                let Some(msg) = msg else { break };
                match serde_json::from_slice::<Heartbeat>(&msg.payload) {
                    Ok(beat) if beat.node == fleet.node => {}
                    Ok(beat) => fleet.record(beat),
                    Err(error) => {
                        tracing::debug!(subject = %msg.subject, %error, "Malformed heartbeat ignored.");
                    }
                }
            }
            msg = events.next() => {
                let Some(msg) = msg else { break };
                // `kinfra.<project>.events.events.<kind>` is a project-wide subject of a
                // resource called `events`, not a node's (no node is called `events`).
                if msg.subject.starts_with(&old_events) || fleet.events.receiver_count() == 0 {
                    continue;
                }
                if let Ok(text) = std::str::from_utf8(&msg.payload) {
                    let _ = fleet.events.send(Arc::from(text));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(node: &str, interval_ms: u64) -> Heartbeat {
        Heartbeat {
            node: node.into(),
            timestamp: now_rfc3339(),
            interval_ms,
            pid: 1,
            services: BTreeMap::new(),
            leaving: false,
        }
    }

    #[test]
    fn a_silent_node_turns_down_within_three_heartbeats() {
        let fleet = Fleet::new("a".into(), Duration::from_millis(40));
        fleet.record(beat("a", 40));
        fleet.record(beat("b", 40));
        let states = |f: &Fleet| -> Vec<(String, String)> {
            f.view()
                .nodes
                .into_iter()
                .map(|n| (n.node, n.state))
                .collect()
        };
        assert_eq!(
            states(&fleet),
            vec![("a".into(), "up".into()), ("b".into(), "up".into())]
        );
        std::thread::sleep(Duration::from_millis(120));
        fleet.record(beat("a", 40));
        assert_eq!(
            states(&fleet),
            vec![("a".into(), "up".into()), ("b".into(), "down".into())]
        );
        // A node that says it leaves is down at once.
        fleet.record(Heartbeat {
            leaving: true,
            ..beat("b", 40)
        });
        assert_eq!(
            states(&fleet),
            vec![("a".into(), "up".into()), ("b".into(), "down".into())]
        );
        assert!(fleet.view().nodes[1].left);
    }
}
