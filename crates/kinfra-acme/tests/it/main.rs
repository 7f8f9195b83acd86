//! Integration tests of automatic HTTPS against Debian's real Pebble: issuance with HTTP-01
//! and TLS-ALPN-01 (Pebble's nonce rejection on), TLS handshakes to the proxy verified
//! against Pebble's root, restart without a new order, renewal under load, Pebble stopped
//! mid-order, a domain that fails validation, the order lock, and a renewal by one instance
//! served by another sharing its store.

#![allow(clippy::unwrap_used)]

mod alpn;
mod issue;
mod lock;
mod outage;
mod renew;
mod shared;
mod support;
