//! Dependency graph checks and orders: cycles, start order, and reverse (stop) order.

use kinfra_core::config::ServiceConfig;
use std::collections::{BTreeMap, BTreeSet};

/// Orders `services` so every service comes after the services it depends on (names outside
/// the set are ignored). Returns the names on a cycle when there is one.
pub fn topo_order(services: &BTreeMap<String, ServiceConfig>) -> Result<Vec<String>, Vec<String>> {
    let mut order = Vec::with_capacity(services.len());
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut visiting: Vec<&str> = Vec::new();
    fn visit<'a>(
        name: &'a str,
        services: &'a BTreeMap<String, ServiceConfig>,
        done: &mut BTreeSet<&'a str>,
        visiting: &mut Vec<&'a str>,
        order: &mut Vec<String>,
    ) -> Result<(), Vec<String>> {
        if done.contains(name) {
            return Ok(());
        }
        if let Some(pos) = visiting.iter().position(|n| *n == name) {
            let mut cycle: Vec<String> = visiting[pos..].iter().map(|s| s.to_string()).collect();
            cycle.push(name.to_string());
            return Err(cycle);
        }
        let Some(cfg) = services.get(name) else {
            return Ok(());
        };
        visiting.push(name);
        for dep in cfg.depends_on.0.keys() {
            if let Some((key, _)) = services.get_key_value(dep) {
                visit(key, services, done, visiting, order)?;
            }
        }
        visiting.pop();
        done.insert(name);
        order.push(name.to_string());
        Ok(())
    }
    for name in services.keys() {
        visit(name, services, &mut done, &mut visiting, &mut order)?;
    }
    Ok(order)
}

/// For each service, the services that depend on it (within the set).
pub fn dependents(services: &BTreeMap<String, ServiceConfig>) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> =
        services.keys().map(|k| (k.clone(), Vec::new())).collect();
    for (name, cfg) in services {
        for dep in cfg.depends_on.0.keys() {
            if let Some(list) = out.get_mut(dep) {
                list.push(name.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kinfra_core::config::DependCondition;

    fn svc(deps: &[&str]) -> ServiceConfig {
        let mut c = ServiceConfig::new("true");
        for d in deps {
            c.depends_on
                .0
                .insert(d.to_string(), DependCondition::Started);
        }
        c
    }

    #[test]
    fn orders_dependencies_first() {
        let s = BTreeMap::from([
            ("api".to_string(), svc(&["db", "cache"])),
            ("db".to_string(), svc(&[])),
            ("cache".to_string(), svc(&["db"])),
            ("web".to_string(), svc(&["api", "external"])),
        ]);
        let order = topo_order(&s).unwrap_or_default();
        let pos = |n: &str| order.iter().position(|x| x == n).unwrap_or(usize::MAX);
        assert_eq!(order.len(), 4);
        assert!(pos("db") < pos("cache") && pos("cache") < pos("api") && pos("api") < pos("web"));
        let deps = dependents(&s);
        assert_eq!(
            deps.get("db").cloned().unwrap_or_default(),
            vec!["api", "cache"]
        );
    }

    #[test]
    fn finds_cycles() {
        let s = BTreeMap::from([
            ("a".to_string(), svc(&["b"])),
            ("b".to_string(), svc(&["c"])),
            ("c".to_string(), svc(&["a"])),
        ]);
        let err = topo_order(&s).err().unwrap_or_default();
        assert_eq!(err.len(), 4);
        assert_eq!(err.first(), err.last());
    }
}
