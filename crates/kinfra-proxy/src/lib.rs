//! kinfra's front door: a pingora reverse proxy that knows the state of every service behind
//! it. The only crate of kinfra that knows pingora.
//!
//! - Routes from `[[routes]]` (host before path, longest prefix wins, optional prefix strip) to
//!   supervised services (their port comes from the runtime's status) or fixed upstreams
//!   (round-robin, passive failure detection, one retry on another replica).
//! - Health-aware: a loading page while a service starts, a 503 page naming the service and
//!   its last error when it is down or unhealthy, a maintenance page (per service or global);
//!   JSON for clients that ask. Templates in `embedded/pages/`, overridable by
//!   `proxy.pages_dir`.
//! - Reserved paths (`/kinfra`, `/__status__`, ...) always go to the dashboard.
//! - Scale to zero (`ProxyOptions::activity`): requests and upgraded connections to a target
//!   that sleeps when idle count as its activity while they are open; a request to a sleeping
//!   one wakes it through `RuntimeControl::act(Wake)` (one wake per target at a time):
//!   browsers get the loading page, other requests are held with their body unread until it
//!   is served, then proxied; a wake that fails or times out answers 503 with `Retry-After`.
//! - TLS through rustls with certificates chosen by SNI from a [`CertStore`] that can be
//!   changed at run time; self-signed certificates where none is present; HTTP/2 via ALPN.
//!   Clients' failed handshakes are counted by reason and summed up at warn every 10 s
//!   instead of pingora's ERROR line per connection, once [`TlsHandshakeLog`] is in the
//!   process's `tracing` subscriber.
//! - pingora runs on its own OS threads via `Server::run`, never `run_forever`;
//!   [`ProxyServer::shutdown`] is graceful and joins them.
//!
//! The route table is an immutable snapshot swapped atomically when the runtime's events say
//! something changed; requests never take a lock.

mod access;
mod acme;
mod edge;
mod error;
mod handshake;
mod metrics;
mod pages;
mod routes;
mod server;
mod state;
pub mod tls;
mod upgrade;
mod upstream;
mod wake;

pub use access::ACCESS_TARGET;
pub use acme::{ChallengeLookup, ChallengeStore};
pub use error::ProxyError;
pub use handshake::{PINGORA_LISTENER_TARGET, TlsHandshakeLog};
pub use server::{ProxyMetricsHandle, ProxyOptions, ProxyServer};
pub use tls::{CertStore, CertifiedKey, TlsError};
