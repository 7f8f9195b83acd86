//! Provider metadata: what a provider is, what it can do, which resource types it runs and
//! which keys their config takes, and how it authenticates. Serde names are DESIGN's.

use serde::{Deserialize, Serialize};

/// How a provider describes itself (Espada's model).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderMetadata {
    /// Stable id, e.g. `neon`, `http-api`; plugins are `kinfra-provider-<id>`.
    pub id: String,
    /// Short name.
    pub name: String,
    /// Name for people.
    pub display_name: String,
    /// One or two sentences.
    #[serde(default)]
    pub description: String,
    /// The provider's own version.
    pub version: String,
    /// What kind of thing it manages.
    pub category: Category,
    /// What it can do.
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    /// The resource types it can run.
    #[serde(default)]
    pub resource_types: Vec<ResourceTypeSpec>,
    /// How an instance authenticates.
    #[serde(default)]
    pub auth_methods: Vec<AuthMethod>,
}

impl ProviderMetadata {
    /// The resource type named `name`, if the provider has it.
    pub fn resource_type(&self, name: &str) -> Option<&ResourceTypeSpec> {
        self.resource_types.iter().find(|t| t.name == name)
    }
}

/// A provider's category.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    /// A general cloud.
    Cloud,
    /// Containers.
    Container,
    /// Kubernetes.
    Kubernetes,
    /// Functions and serverless apps.
    Serverless,
    /// Databases.
    Database,
    /// Storage.
    Storage,
    /// Networking (DNS, tunnels, load balancers).
    Network,
    /// Security.
    Security,
    /// Monitoring.
    Monitoring,
    /// CI/CD.
    CiCd,
    /// Anything else.
    Custom,
}

/// Something a provider can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// Create resources.
    Provision,
    /// Delete resources.
    Deprovision,
    /// Scale resources.
    Scale,
    /// Observe resources.
    Monitor,
    /// Back up.
    Backup,
    /// Restore a backup.
    Restore,
    /// Migrate.
    Migrate,
    /// Audit.
    Audit,
    /// Cost analysis.
    CostAnalysis,
    /// Security scans.
    SecurityScan,
    /// Dry-runs of its commands.
    DryRun,
    /// Roll back.
    Rollback,
    /// Snapshots.
    Snapshot,
    /// Replication.
    Replicate,
}

/// How a provider instance authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMethod {
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// An API key in a header or the query.
    ApiKey,
    /// HTTP basic auth.
    Basic,
    /// A header of the provider's choosing.
    CustomHeader,
    /// No authentication.
    None,
}

/// A resource type a provider runs, and the config keys a resource of that type takes, so
/// config validation can be generic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceTypeSpec {
    /// The type's name, e.g. `endpoint`.
    pub name: String,
    /// What it is.
    #[serde(default)]
    pub description: String,
    /// The keys of `[resources.NAME]` this type takes (beside kinfra's own keys).
    #[serde(default)]
    pub config: Vec<ConfigKeySpec>,
}

/// One config key of a resource type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigKeySpec {
    /// The key.
    pub name: String,
    /// True when a resource must set it.
    #[serde(default)]
    pub required: bool,
    /// The value's kind.
    pub kind: ConfigKind,
    /// What it means.
    #[serde(default)]
    pub description: String,
}

impl ConfigKeySpec {
    /// A key every resource of the type must set.
    pub fn required(
        name: impl Into<String>,
        kind: ConfigKind,
        description: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            required: true,
            kind,
            description: description.into(),
        }
    }

    /// A key a resource of the type may set.
    pub fn optional(
        name: impl Into<String>,
        kind: ConfigKind,
        description: impl Into<String>,
    ) -> Self {
        Self {
            required: false,
            ..Self::required(name, kind, description)
        }
    }
}

/// The kind of a config value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConfigKind {
    /// A string.
    String,
    /// An integer.
    Integer,
    /// A number.
    Number,
    /// `true` or `false`.
    Boolean,
    /// A duration such as `30s`.
    Duration,
    /// A secret string.
    Secret,
    /// A table.
    Table,
    /// An array.
    Array,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn serde_names_are_designs() -> Result<(), serde_json::Error> {
        let cats: Vec<Category> = serde_json::from_value(json!([
            "cloud",
            "container",
            "kubernetes",
            "serverless",
            "database",
            "storage",
            "network",
            "security",
            "monitoring",
            "ci-cd",
            "custom"
        ]))?;
        assert_eq!(cats.len(), 11);
        let caps: Vec<Capability> = serde_json::from_value(json!([
            "provision",
            "deprovision",
            "scale",
            "monitor",
            "backup",
            "restore",
            "migrate",
            "audit",
            "cost-analysis",
            "security-scan",
            "dry-run",
            "rollback",
            "snapshot",
            "replicate"
        ]))?;
        assert_eq!(caps.len(), 14);
        let auth: Vec<AuthMethod> = serde_json::from_value(json!([
            "bearer",
            "api-key",
            "basic",
            "custom-header",
            "none"
        ]))?;
        assert_eq!(auth.len(), 5);
        assert_eq!(serde_json::to_value(Category::CiCd)?, json!("ci-cd"));
        Ok(())
    }
}
