//! The container kinfra creates for a resource, its labels and its config hash, and the one
//! place where it becomes an engine request (so the safety rules live in one function).

use bollard::models::{
    ContainerCreateBody, HealthConfig, HostConfig, Mount, MountType, PortBinding, RestartPolicy,
    RestartPolicyNameEnum,
};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Label: the project a container belongs to.
pub const LABEL_PROJECT: &str = "dev.kinfra.project";
/// Label: the resource name.
pub const LABEL_RESOURCE: &str = "dev.kinfra.resource";
/// Label: the hash of the spec the container was created from.
pub const LABEL_HASH: &str = "dev.kinfra.config-hash";
/// Label: marks everything kinfra created.
pub const LABEL_MANAGED: &str = "dev.kinfra.managed";

/// Which project and resource a container or volume belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Labels {
    /// Project name.
    pub project: String,
    /// Resource name.
    pub resource: String,
}

impl Labels {
    /// The engine filter that finds this resource's containers or volumes.
    pub fn filter(&self) -> HashMap<String, Vec<String>> {
        HashMap::from([(
            "label".to_owned(),
            vec![
                format!("{LABEL_PROJECT}={}", self.project),
                format!("{LABEL_RESOURCE}={}", self.resource),
            ],
        )])
    }

    /// The labels, plus the config hash when given.
    pub fn to_map(&self, hash: Option<&str>) -> HashMap<String, String> {
        let mut m = HashMap::from([
            (LABEL_MANAGED.to_owned(), "true".to_owned()),
            (LABEL_PROJECT.to_owned(), self.project.clone()),
            (LABEL_RESOURCE.to_owned(), self.resource.clone()),
        ]);
        if let Some(h) = hash {
            m.insert(LABEL_HASH.to_owned(), h.to_owned());
        }
        m
    }
}

/// A Docker healthcheck (`test` as the engine takes it: `["CMD-SHELL", "..."]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HealthCheck {
    /// The test.
    pub test: Vec<String>,
    /// Time between checks.
    pub interval: Duration,
    /// Longest check.
    pub timeout: Duration,
    /// Failures in a row before `unhealthy`.
    pub retries: u32,
}

impl HealthCheck {
    /// A check every second, 5 s timeout, unhealthy after 5 failures.
    pub fn new(test: Vec<String>) -> Self {
        Self {
            test,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            retries: 5,
        }
    }
}

/// Everything that decides what a resource's container looks like. Its [`hash`] is stored
/// as a label; a different hash at boot means the container is recreated.
///
/// [`hash`]: ContainerSpec::hash
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ContainerSpec {
    /// Container name.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Command (replaces the image's `CMD`; the entrypoint stays).
    pub command: Option<Vec<String>>,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Port inside the container.
    pub container_port: Option<u16>,
    /// Host port on 127.0.0.1 it is published on.
    pub host_port: Option<u16>,
    /// Named volume -> path in the container.
    pub volumes: BTreeMap<String, String>,
    /// Docker healthcheck.
    pub health: Option<HealthCheck>,
    /// Whose it is.
    pub labels: Labels,
}

impl ContainerSpec {
    /// The config hash: SHA-256 over the spec's canonical JSON, hex.
    pub fn hash(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        let digest = Sha256::digest(&json);
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The engine request. Only what kinfra needs: bridge network, ports on 127.0.0.1 only,
    /// named volumes only (no bind mounts), never privileged, no added capabilities, no
    /// engine-side restart (kinfra's policy decides).
    pub fn to_body(&self) -> ContainerCreateBody {
        let port_key = self.container_port.map(|p| format!("{p}/tcp"));
        let port_bindings = match (&port_key, self.host_port) {
            (Some(key), Some(host)) => Some(HashMap::from([(
                key.clone(),
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(host.to_string()),
                }]),
            )])),
            _ => None,
        };
        let mounts: Vec<Mount> = self
            .volumes
            .iter()
            .map(|(volume, path)| Mount {
                target: Some(path.clone()),
                source: Some(volume.clone()),
                typ: Some(MountType::VOLUME),
                read_only: Some(false),
                ..Default::default()
            })
            .collect();
        let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        ContainerCreateBody {
            image: Some(self.image.clone()),
            cmd: self.command.clone(),
            env: Some(self.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            exposed_ports: port_key.map(|k| vec![k]),
            labels: Some(self.labels.to_map(Some(&self.hash()))),
            healthcheck: self.health.as_ref().map(|h| HealthConfig {
                test: Some(h.test.clone()),
                interval: Some(nanos(h.interval)),
                timeout: Some(nanos(h.timeout)),
                retries: Some(i64::from(h.retries)),
                start_period: None,
                start_interval: None,
            }),
            host_config: Some(HostConfig {
                port_bindings,
                mounts: (!mounts.is_empty()).then_some(mounts),
                privileged: Some(false),
                network_mode: Some("bridge".into()),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::NO),
                    maximum_retry_count: None,
                }),
                security_opt: Some(vec!["no-new-privileges".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            name: "kinfra-p-box".into(),
            image: "busybox".into(),
            command: Some(vec!["sleep".into(), "60".into()]),
            env: BTreeMap::from([("A".into(), "1".into())]),
            container_port: Some(8080),
            host_port: Some(18080),
            volumes: BTreeMap::from([("kinfra-p-box-data".into(), "/data".into())]),
            health: None,
            labels: Labels {
                project: "p".into(),
                resource: "box".into(),
            },
        }
    }

    #[test]
    fn hash_follows_every_setting() {
        let a = spec();
        assert_eq!(a.hash(), spec().hash());
        assert_eq!(a.hash().len(), 64);
        let mut b = spec();
        b.env.insert("A".into(), "2".into());
        assert_ne!(a.hash(), b.hash());
        let mut c = spec();
        c.host_port = Some(18081);
        assert_ne!(a.hash(), c.hash());
    }

    #[test]
    fn body_is_safe_and_local() {
        let body = spec().to_body();
        let host = body.host_config.expect("host config");
        assert_eq!(host.privileged, Some(false));
        assert_eq!(host.network_mode.as_deref(), Some("bridge"));
        assert!(host.binds.is_none(), "no bind mounts");
        let mounts = host.mounts.expect("mounts");
        assert!(mounts.iter().all(|m| m.typ == Some(MountType::VOLUME)));
        let bindings = host.port_bindings.expect("ports");
        let b = bindings["8080/tcp"].as_ref().expect("binding");
        assert_eq!(b[0].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(b[0].host_port.as_deref(), Some("18080"));
        let labels = body.labels.expect("labels");
        assert_eq!(labels[LABEL_PROJECT], "p");
        assert_eq!(labels[LABEL_RESOURCE], "box");
        assert_eq!(labels[LABEL_HASH], spec().hash());
    }
}
