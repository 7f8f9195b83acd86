//! Facts the runtime derives from the config for its views: the dashboard token, the hosts
//! it answers to, the secret values to mask, the routes with `${ENV}` resolved.

use super::StartError;
use kinfra_core::Secret;
use kinfra_core::config::Config;
use std::path::Path;

/// Values of secret-named environment variables in the config, masked wherever kinfra
/// publishes text (the bus, for one).
pub(super) fn secret_values(config: &Config) -> Vec<Secret> {
    let globals = config.env.iter();
    let per_service = config.services.values().flat_map(|s| s.env.iter());
    let mut out: Vec<Secret> = globals
        .chain(per_service)
        .filter(|(k, v)| kinfra_core::secret::is_secret_name(k) && v.len() >= 4)
        .map(|(_, v)| Secret::new(v.clone()))
        .collect();
    if let Some(token) = &config.dashboard.token {
        out.push(token.clone());
    }
    out
}

/// The routes with `${ENV}` references in upstream URLs resolved (the proxy takes them as
/// they are). A reference that cannot be resolved is left for the proxy to reject.
pub(super) fn interpolated_routes(config: &Config) -> Vec<kinfra_core::config::RouteConfig> {
    let lookup = |name: &str| {
        config
            .env
            .get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
    };
    config
        .routes
        .iter()
        .cloned()
        .map(|mut route| {
            if let Some(upstreams) = route.upstream.as_mut() {
                for url in upstreams.0.iter_mut() {
                    if let Ok(resolved) =
                        kinfra_core::config::interpolate::interpolate(url, &lookup)
                    {
                        *url = resolved;
                    }
                }
            }
            route
        })
        .collect()
}

/// File name of the generated dashboard token inside the state dir.
pub const TOKEN_FILE: &str = "dashboard.token";

/// The dashboard token and whether the user configured it (`dashboard.token` or
/// `KINFRA_DASHBOARD_TOKEN`) rather than kinfra generating it into the state dir.
pub fn dashboard_token(config: &Config, state_dir: &Path) -> Result<(Secret, bool), StartError> {
    if let Some(token) = config
        .dashboard
        .token
        .as_ref()
        .filter(|t| !t.expose().is_empty())
    {
        return Ok((token.clone(), true));
    }
    if let Some(token) = std::env::var("KINFRA_DASHBOARD_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        return Ok((Secret::new(token.trim()), true));
    }
    let path = state_dir.join(TOKEN_FILE);
    // Never a token from a file someone else could have written.
    crate::ownership::check_private(state_dir)?;
    crate::ownership::check_private(&path)?;
    let err = |source| StartError::Token {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok((Secret::new(text.trim()), false)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let token = kinfra_dashboard::generate_token().map_err(err)?;
    let tmp = state_dir.join(format!("{TOKEN_FILE}.tmp"));
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        writeln!(file, "{token}").map_err(err)?;
        file.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, &path).map_err(err)?;
    Ok((Secret::new(token), false))
}

/// Host names the dashboard answers to besides loopback: configured ones, route hosts and
/// ACME domains (the proxy forwards reserved paths on those names to the dashboard).
pub(super) fn dashboard_hosts(config: &Config) -> Vec<String> {
    let mut hosts = config.dashboard.allowed_hosts.clone();
    hosts.extend(config.routes.iter().filter_map(|r| r.host.clone()));
    if let Some(acme) = &config.acme {
        hosts.extend(acme.domains.iter().cloned());
    }
    hosts.sort();
    hosts.dedup();
    hosts
}
