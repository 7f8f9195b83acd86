//! Automatic HTTPS for kinfra: certificates from an ACME CA (Let's Encrypt by default) with
//! `instant-acme`, served by the proxy and renewed before they expire.
//!
//! - One account per directory URL, created once and kept in the store (a CA that forgot it
//!   gets a new one).
//! - One certificate per configured domain, validated with HTTP-01 (answered by the proxy's
//!   HTTP listener) or TLS-ALPN-01 (answered by its TLS listener); keys are P-256, new for
//!   every certificate.
//! - A stored certificate that is still valid is served at start and no order is placed;
//!   renewal is due when a third of the lifetime remains (or `renew_before`), checked at
//!   least every `check_interval`. The old certificate is served until the new one is stored.
//! - Failures are retried on a capped exponential backoff (`retry_min` .. `retry_max`);
//!   transient ones (bad nonce, lost connection, server error) first a few times at once; a
//!   rate guard limits orders per hour per account.
//! - Instances sharing a store take a lock with an owner and an expiry before ordering; a
//!   crashed holder's lock is taken over when it expires. The account, certificates and lock
//!   are in the store's shared database, so the nodes of a fleet on one SurrealDB server
//!   order once and all serve the certificate; an HTTP-01 answer is published there too, and
//!   a node asked for a token it does not hold looks it up (TLS-ALPN-01 answers stay on the
//!   ordering node: a fleet validates with HTTP-01).
//! - `CertIssued` and `CertRenewalFailed` events; [`AcmeHandle::status`] for `/__status__`.
//!   Keys never appear in logs, events, errors or `Debug` output.

mod cert;
mod challenge;
mod client;
mod error;
mod export;
mod order;
mod service;

pub use cert::CertInfo;
pub use client::ensure_crypto_provider;
pub use error::AcmeError;
pub use service::{AcmeHandle, AcmeOptions, AcmeService, CertState, CertStatus};
