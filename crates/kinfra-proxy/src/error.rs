//! The errors of starting the proxy.

use crate::tls::TlsError;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// `proxy.enabled = false`.
    #[error("the proxy is disabled in the config (proxy.enabled = false)")]
    Disabled,
    /// Neither `proxy.http` nor `proxy.https` is set.
    #[error("the proxy has no listener: set proxy.http and/or proxy.https")]
    NoListener,
    /// A listen address that is not `IP:port`.
    #[error("invalid listen address `{addr}` in {key}: expected IP:port such as 127.0.0.1:9100")]
    InvalidListen {
        /// `proxy.http` or `proxy.https`.
        key: &'static str,
        /// The value.
        addr: String,
    },
    /// A listen address that cannot be bound (taken, or not allowed).
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        /// `proxy.http` or `proxy.https`.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// A route that cannot be used.
    #[error("routes[{index}]: {reason}")]
    InvalidRoute {
        /// Position in `[[routes]]`.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A page template in `proxy.pages_dir` cannot be read.
    #[error("fallback pages in {dir}: {source}")]
    Pages {
        /// The directory.
        dir: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A certificate cannot be loaded or made.
    #[error("certificate for `{name}`: {source}")]
    Certificate {
        /// The host name.
        name: String,
        /// The error.
        source: TlsError,
    },
    /// pingora refused a setting.
    #[error("proxy setup failed: {0}")]
    Setup(String),
    /// The proxy thread could not be started.
    #[error("cannot start the proxy thread: {0}")]
    Thread(std::io::Error),
    /// The proxy did not answer after it was started.
    #[error("the proxy did not come up: {0}")]
    NotReady(String),
}
