//! The one rustls crypto provider of the process (ring), installed once before any TLS is
//! spoken, whichever subsystem gets there first.
//!
//! Several TLS stacks share the process: the bus (async-nats), the store's `wss://` client
//! (SurrealDB), ACME (instant-acme) and the proxy (pingora). Both of rustls' providers are
//! compiled in (SurrealDB's dependencies bring aws-lc-rs), so rustls cannot pick one by
//! itself; each of those crates calls [`install_crypto_provider`] and so does
//! `kinfra::start`, so the choice never depends on start order. A provider installed by the
//! embedding application before kinfra starts is kept.

use std::sync::Once;

/// Installs ring as rustls' process-wide crypto provider unless one is installed already.
/// Cheap after the first call.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Losing a race with the application's own install is fine: it chose.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
    });
}

/// True when the process-wide provider is the one [`install_crypto_provider`] installs: the
/// cipher suites and key-exchange groups of ring's default provider (aws-lc-rs's default
/// adds a post-quantum hybrid group).
pub fn is_kinfra_provider() -> bool {
    let ring = rustls::crypto::ring::default_provider();
    rustls::crypto::CryptoProvider::get_default().is_some_and(|p| {
        p.cipher_suites.len() == ring.cipher_suites.len()
            && p.cipher_suites
                .iter()
                .zip(&ring.cipher_suites)
                .all(|(a, b)| a.suite() == b.suite())
            && p.kx_groups.len() == ring.kx_groups.len()
            && p.kx_groups
                .iter()
                .zip(&ring.kx_groups)
                .all(|(a, b)| a.name() == b.name())
    })
}
