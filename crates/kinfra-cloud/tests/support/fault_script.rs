//! What the stateful provider fakes share (Render, Vercel, Railway): the scripted faults of one
//! fake object (the next requests that match a pattern get a given reply, a set number of
//! times), the poison-tolerant lock of their state, and a reply without a body.
//!
//! Included once per test binary beside `fake_http` (the fakes reach it as
//! `super::fault_script`, like `super::fake_http`).

use super::fake_http::Reply;
use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// One scripted fault: the next `times` requests matching `pattern` get `reply`.
#[derive(Debug, Clone)]
struct Fault {
    pattern: String,
    reply: Reply,
    times: usize,
}

/// The faults waiting for one fake object (a service, a project), oldest first.
#[derive(Debug, Default)]
pub struct FaultScript {
    faults: VecDeque<Fault>,
}

impl FaultScript {
    /// The next `times` requests matching `pattern` (as the fake's matcher reads it) get
    /// `reply`.
    pub fn push(&mut self, pattern: &str, reply: Reply, times: usize) {
        self.faults.push_back(Fault {
            pattern: pattern.to_owned(),
            reply,
            times,
        });
    }

    /// The reply of the oldest fault whose pattern `matches` says yes, counted down (and let
    /// go once used up); `None` when no fault matches.
    pub fn take(&mut self, matches: impl Fn(&str) -> bool) -> Option<Reply> {
        let i = self.faults.iter().position(|f| matches(&f.pattern))?;
        let fault = &mut self.faults[i];
        let reply = fault.reply.clone();
        fault.times = fault.times.saturating_sub(1);
        if fault.times == 0 {
            self.faults.remove(i);
        }
        Some(reply)
    }

    /// Drops every fault still waiting.
    pub fn clear(&mut self) {
        self.faults.clear();
    }
}

/// Locks `m`, going on when a panicking test poisoned it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An answer with `status` and no body (what the specs declare for pause, suspend, restart).
pub fn empty(status: u16) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        body: String::new(),
        delay: Duration::ZERO,
    }
}
