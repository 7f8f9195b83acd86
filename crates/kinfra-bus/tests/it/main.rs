//! Integration tests of the bus against a real nats-server started by each test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod control;
mod events;
mod inprocess;
mod managed;
mod reconnect;
mod support;
