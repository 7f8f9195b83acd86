//! The runtime's part of the fleet: which services and resources run on this node
//! (`nodes = [...]`), and actions on another node's service (`api@b`), sent over the bus.
//!
//! A service or resource whose `nodes` does not list this node is left out of the config
//! this runtime runs: it is not in status, not supervised, and not routed here (its routes
//! are left out too; a dependency on it is taken as met elsewhere). The fleet view shows
//! where it runs.

use kinfra_bus::Bus;
use kinfra_core::config::{Config, runs_on};
use kinfra_core::view::{Action, ActionError};
use std::collections::BTreeSet;
use std::time::Duration;

/// How long an action on another node's service may take before it counts as failed.
const REMOTE_ACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// `config` as this node runs it: without the services and resources whose `nodes` leave
/// this node out, without dependencies on them and without routes to them.
pub(super) fn for_this_node(mut config: Config) -> Config {
    let node = config.node.effective_name();
    let mut gone = BTreeSet::new();
    config.services.retain(|name, s| {
        let keep = runs_on(s.nodes.as_deref(), &node);
        if !keep {
            gone.insert(name.clone());
        }
        keep
    });
    config.resources.retain(|name, r| {
        let keep = runs_on(r.nodes.as_deref(), &node);
        if !keep {
            gone.insert(name.clone());
        }
        keep
    });
    if gone.is_empty() {
        return config;
    }
    tracing::info!(node = %node, left_out = ?gone, "Services and resources not on this node are left out.");
    for s in config.services.values_mut() {
        s.depends_on.0.retain(|dep, _| !gone.contains(dep));
    }
    for r in config.resources.values_mut() {
        r.depends_on.0.retain(|dep, _| !gone.contains(dep));
    }
    config
        .routes
        .retain(|r| r.service.as_ref().is_none_or(|s| !gone.contains(s)));
    config
}

/// `api@b` → `("api", "b")`: an action addressed to service `api` on node `b`.
pub(super) fn remote_target(service: &str) -> Option<(&str, &str)> {
    service
        .rsplit_once('@')
        .filter(|(name, node)| !name.is_empty() && !node.is_empty())
}

/// Carries out `action` on `service` of `node` through the bus
/// (`kinfra.<project>.<node>.control.<action>`), with this node's bus credentials.
pub(super) async fn act_remote(
    bus: &Bus,
    action: Action,
    service: &str,
    node: &str,
) -> Result<(), ActionError> {
    let unavailable = |reason: String| ActionError::NotAvailable {
        action: action.as_str().to_owned(),
        service: format!("{service}@{node}"),
        reason,
    };
    let reply = bus
        .request_node(
            node,
            action.as_str(),
            serde_json::json!({ "service": service }),
            REMOTE_ACTION_TIMEOUT,
        )
        .await
        .map_err(|error| match error {
            kinfra_bus::BusError::NoResponders => {
                unavailable(format!("node `{node}` does not answer on the bus"))
            }
            error => unavailable(format!("node `{node}`: {error}")),
        })?;
    if reply.get("success").and_then(serde_json::Value::as_bool) == Some(true) {
        tracing::info!(action = action.as_str(), service = %service, node = %node, "Action on another node over the bus.");
        return Ok(());
    }
    let error = reply
        .get("error")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("no reason given");
    Err(unavailable(format!("node `{node}` answered: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kinfra_core::config::Format;

    #[test]
    fn services_of_other_nodes_are_left_out() {
        let text = r#"
[node]
name = "b"
[services.db]
command = "sleep 60"
nodes = ["a"]
[services.api]
command = "sleep 60"
depends_on = ["db"]
[services.web]
command = "sleep 60"
nodes = ["a", "b"]
[[routes]]
path = "/db"
service = "db"
[[routes]]
path = "/"
service = "api"
"#;
        let config = Config::parse(text, Format::Toml, "test", std::path::Path::new("."), &[])
            .expect("valid config");
        let config = for_this_node(config);
        assert_eq!(
            config.services.keys().collect::<Vec<_>>(),
            vec!["api", "web"]
        );
        assert!(config.services["api"].depends_on.0.is_empty());
        assert_eq!(config.routes.len(), 1);
        assert_eq!(remote_target("api@b"), Some(("api", "b")));
        assert_eq!(remote_target("api"), None);
        assert_eq!(remote_target("@b"), None);
    }
}
