//! Connecting to a NATS server with async-nats: options from `[bus]`, reconnect backoff, and
//! the connection events that drive [`crate::BusState`].

use crate::BusError;
use crate::state::{BusState, Shared};
use kinfra_core::config::BusConfig;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where to connect and how to authenticate.
pub(crate) struct Target {
    /// Server URL(s), comma-separated, possibly with credentials in them.
    pub(crate) url: String,
    /// A token that is not part of the config (the managed server's).
    pub(crate) token: Option<kinfra_core::Secret>,
}

/// The URL for people: user names and passwords removed (`nats://***@host:4222`).
pub fn display_url(url: &str) -> String {
    url.split(',')
        .map(|one| {
            let one = one.trim();
            let (scheme, rest) = match one.split_once("://") {
                Some((s, r)) => (Some(s), r),
                None => (None, one),
            };
            let host = match rest.rsplit_once('@') {
                Some((_, host)) => format!("***@{host}"),
                None => rest.to_owned(),
            };
            match scheme {
                Some(s) => format!("{s}://{host}"),
                None => host,
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Passwords and tokens written into the URL (`nats://user:pass@host`, `nats://token@host`),
/// so they can be masked in what the bus publishes.
pub(crate) fn url_secrets(url: &str) -> Vec<kinfra_core::Secret> {
    url.split(',')
        .filter_map(|one| {
            let rest = one.trim().split_once("://").map_or(one.trim(), |(_, r)| r);
            let (userinfo, _) = rest.rsplit_once('@')?;
            let secret = userinfo.split_once(':').map_or(userinfo, |(_, pass)| pass);
            Some(kinfra_core::Secret::new(secret))
        })
        .collect()
}

/// The reconnect delay after `attempts` failed attempts: none for the first, then 50 ms
/// doubling up to `max`, with up to 25 % jitter so a fleet does not reconnect in step.
pub(crate) fn reconnect_delay(attempts: usize, max: Duration) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let exp = u32::try_from(attempts - 2).unwrap_or(u32::MAX).min(16);
    let base = Duration::from_millis(50).saturating_mul(1 << exp).min(max);
    let jitter_ms = (base.as_millis() as u64) / 4;
    let jitter = if jitter_ms == 0 {
        0
    } else {
        crate::random_u64() % jitter_ms
    };
    base.saturating_sub(Duration::from_millis(jitter))
}

fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

/// Builds the client options. Files named in the config are read here, so a missing
/// credentials file is an error at start rather than a silent reconnect loop.
pub(crate) async fn options(
    config: &BusConfig,
    base_dir: &Path,
    project: &str,
    target: &Target,
    shared: Arc<Shared>,
) -> Result<async_nats::ConnectOptions, BusError> {
    // async-nats builds its TLS config from rustls' process-wide provider.
    kinfra_core::tls::install_crypto_provider();
    let mut opts = async_nats::ConnectOptions::new()
        .name(format!("kinfra-{project}"))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .ping_interval(Duration::from_secs(10))
        .request_timeout(Some(Duration::from_secs(10)));
    let max_delay: Duration = config.reconnect_max_delay.into();
    opts = opts.reconnect_delay_callback(move |attempts| reconnect_delay(attempts, max_delay));
    if let Some(token) = &target.token {
        // The managed server: its own token, no TLS, nothing else from `[bus]`.
        opts = opts.token(token.expose().to_owned());
    } else {
        opts = url_auth(opts, &target.url);
        opts = external_auth(opts, config, base_dir).await?;
    }
    let display = display_url(&target.url);
    Ok(opts.event_callback(move |event| {
        on_event(&shared, &display, event);
        std::future::ready(())
    }))
}

/// Credentials written into the URL (`nats://user:pass@host`, `nats://token@host`): the
/// client does not send those by itself. `[bus]` user, password and token win over them.
fn url_auth(opts: async_nats::ConnectOptions, url: &str) -> async_nats::ConnectOptions {
    let first = url
        .split(',')
        .filter_map(|u| u.trim().parse::<async_nats::ServerAddr>().ok())
        .find(|addr| addr.has_user_pass());
    match first {
        Some(addr) => match (addr.username(), addr.password()) {
            (Some(user), Some(pass)) => opts.user_and_password(user.to_owned(), pass.to_owned()),
            (Some(token), None) => opts.token(token.to_owned()),
            _ => opts,
        },
        None => opts,
    }
}

/// User/password, token, nkey, credentials file and TLS from `[bus]`.
async fn external_auth(
    mut opts: async_nats::ConnectOptions,
    config: &BusConfig,
    base_dir: &Path,
) -> Result<async_nats::ConnectOptions, BusError> {
    if let Some(token) = &config.token {
        opts = opts.token(token.expose().to_owned());
    }
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        opts = opts.user_and_password(user.clone(), password.expose().to_owned());
    } else if let Some(user) = &config.user {
        opts = opts.user_and_password(user.clone(), String::new());
    }
    if let Some(path) = &config.nkey_file {
        let path = resolve(base_dir, path);
        let seed =
            tokio::fs::read_to_string(&path)
                .await
                .map_err(|source| BusError::Credentials {
                    path: path.clone(),
                    source,
                })?;
        opts = opts.nkey(seed.trim().to_owned());
    }
    if let Some(path) = &config.credentials {
        let path = resolve(base_dir, path);
        opts = opts
            .credentials_file(&path)
            .await
            .map_err(|source| BusError::Credentials { path, source })?;
    }
    if let Some(ca) = &config.tls_ca {
        let ca = resolve(base_dir, ca);
        check_readable(&ca)?;
        opts = opts.add_root_certificates(ca).require_tls(true);
    }
    match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            let (cert, key) = (resolve(base_dir, cert), resolve(base_dir, key));
            check_readable(&cert)?;
            check_readable(&key)?;
            opts = opts.add_client_certificate(cert, key).require_tls(true);
        }
        (None, None) => {}
        _ => {
            return Err(BusError::Config(
                "bus.tls_cert and bus.tls_key must be given together".into(),
            ));
        }
    }
    Ok(opts)
}

fn check_readable(path: &Path) -> Result<(), BusError> {
    std::fs::metadata(path)
        .map(|_| ())
        .map_err(|source| BusError::Credentials {
            path: path.to_path_buf(),
            source,
        })
}

fn on_event(shared: &Shared, url: &str, event: async_nats::Event) {
    use async_nats::Event;
    match event {
        Event::Connected => shared.set_state(BusState::Connected, &format!("connected to {url}")),
        Event::Disconnected => {
            if shared.state() != BusState::Closed {
                shared.set_state(
                    BusState::Reconnecting,
                    &format!("lost the connection to {url}; reconnecting"),
                );
            }
        }
        Event::Closed => shared.set_state(BusState::Closed, "connection closed"),
        Event::LameDuckMode => {
            tracing::info!(url, "The NATS server is entering lame duck mode.");
        }
        Event::Draining => tracing::debug!(url, "Bus connection draining."),
        Event::SlowConsumer(sid) => {
            tracing::warn!(
                sid,
                "A bus subscription fell behind; messages were dropped."
            );
        }
        Event::ServerError(error) => {
            tracing::warn!(url, %error, "NATS server error.");
            shared.set_last_error(error.to_string());
        }
        Event::ClientError(error) => {
            tracing::debug!(url, %error, "NATS connection attempt failed.");
            shared.set_last_error(error.to_string());
        }
    }
}

/// Connects (in the background: an unreachable server is not an error here).
pub(crate) async fn connect(
    target: &Target,
    options: async_nats::ConnectOptions,
) -> Result<async_nats::Client, BusError> {
    let addrs: Vec<async_nats::ServerAddr> = target
        .url
        .split(',')
        .map(|u| u.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<_, _>>()
        .map_err(|e| BusError::Config(format!("bad bus.url: {e}")))?;
    options.connect(addrs).await.map_err(|e| BusError::Connect {
        url: display_url(&target.url),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(
            display_url("nats://user:pw@host:4222"),
            "nats://***@host:4222"
        );
        assert_eq!(display_url("nats://host:4222"), "nats://host:4222");
        assert_eq!(
            display_url("tls://t0k3n@a:1, nats://b:2"),
            "tls://***@a:1,nats://b:2"
        );
        assert_eq!(display_url("localhost:4222"), "localhost:4222");
    }

    #[test]
    fn url_credentials_are_secrets() {
        let secrets = url_secrets("nats://u:pw1234@a:1,tls://tok5678@b:2,nats://c:3");
        let exposed: Vec<&str> = secrets.iter().map(|s| s.expose()).collect();
        assert_eq!(exposed, vec!["pw1234", "tok5678"]);
    }

    #[test]
    fn backoff_grows_to_the_cap() {
        let max = Duration::from_secs(2);
        assert_eq!(reconnect_delay(0, max), Duration::ZERO);
        assert_eq!(reconnect_delay(1, max), Duration::ZERO);
        let d2 = reconnect_delay(2, max);
        assert!(d2 <= Duration::from_millis(50) && d2 >= Duration::from_millis(38));
        let d30 = reconnect_delay(30, max);
        assert!(d30 <= max && d30 >= Duration::from_millis(1500));
        assert!(reconnect_delay(usize::MAX, max) <= max);
    }
}
