//! Integration tests of the proxy: real pingora in-process, real sockets and backends, TLS
//! clients; only the runtime is a test double whose status the tests set.

#![allow(clippy::unwrap_used)]

mod access;
mod conformance;
mod credentials;
mod faults;
mod lifecycle;
mod pages;
mod reload;
mod routing;
mod streaming;
mod support;
mod tls;
mod wake;
