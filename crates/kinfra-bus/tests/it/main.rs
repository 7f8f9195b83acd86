//! Integration tests of the bus against a real nats-server started by each test.

#![allow(clippy::unwrap_used)]

mod control;
mod events;
mod inprocess;
mod managed;
mod reconnect;
mod support;
