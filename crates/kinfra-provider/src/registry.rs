//! The [`Registry`] of providers by id: built-ins registered in code, plugins from
//! discovery; an id is taken once.

use crate::metadata::ProviderMetadata;
use crate::provider::Provider;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A second provider with an id already registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a provider with id `{0}` is already registered")]
pub struct DuplicateProvider(pub String);

/// Providers by id.
#[derive(Default, Clone)]
pub struct Registry {
    providers: BTreeMap<String, Arc<dyn Provider>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.providers.keys()).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `provider`; refuses an id already taken (the first one stays).
    pub fn register(&mut self, provider: Arc<dyn Provider>) -> Result<(), DuplicateProvider> {
        let id = provider.metadata().id.clone();
        if self.providers.contains_key(&id) {
            return Err(DuplicateProvider(id));
        }
        self.providers.insert(id, provider);
        Ok(())
    }

    /// The provider `id`.
    pub fn get(&self, id: &str) -> Option<&Arc<dyn Provider>> {
        self.providers.get(id)
    }

    /// True when `id` is registered.
    pub fn contains(&self, id: &str) -> bool {
        self.providers.contains_key(id)
    }

    /// The metadata of every provider, by id.
    pub fn list(&self) -> Vec<&ProviderMetadata> {
        self.providers.values().map(|p| p.metadata()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{CommandSpec, ValidatedParams};
    use crate::metadata::Category;
    use crate::provider::{InstanceContext, ProviderError, ResourceDecl, ResourceProblem};
    use crate::result::CommandResult;
    use kinfra_core::resource::{BoxFuture, Resource, ResourceError};

    struct Fixed(ProviderMetadata);

    impl Provider for Fixed {
        fn metadata(&self) -> &ProviderMetadata {
            &self.0
        }
        fn commands(&self) -> &[CommandSpec] {
            &[]
        }
        fn validate_resource<'a>(
            &'a self,
            _: &'a InstanceContext,
            _: &'a ResourceDecl,
        ) -> BoxFuture<'a, Vec<ResourceProblem>> {
            Box::pin(async { Vec::new() })
        }
        fn resource(
            &self,
            _: &InstanceContext,
            _: &ResourceDecl,
        ) -> Result<Box<dyn Resource>, ProviderError> {
            Err(ResourceError::Invalid("none".into()).into())
        }
        fn execute<'a>(
            &'a self,
            _: &'a InstanceContext,
            _: &'a ResourceDecl,
            _: &'a CommandSpec,
            _: ValidatedParams,
            _: bool,
        ) -> BoxFuture<'a, Result<CommandResult, ProviderError>> {
            Box::pin(async { Ok(CommandResult::ok(serde_json::Value::Null)) })
        }
    }

    fn provider(id: &str, version: &str) -> Arc<dyn Provider> {
        Arc::new(Fixed(ProviderMetadata {
            id: id.into(),
            name: id.into(),
            display_name: id.into(),
            description: String::new(),
            version: version.into(),
            category: Category::Custom,
            capabilities: Vec::new(),
            resource_types: Vec::new(),
            auth_methods: Vec::new(),
        }))
    }

    #[test]
    fn duplicates_are_refused_and_the_first_stays() {
        let mut r = Registry::new();
        assert_eq!(r.register(provider("b", "1")), Ok(()));
        assert_eq!(r.register(provider("a", "1")), Ok(()));
        assert_eq!(
            r.register(provider("a", "2")),
            Err(DuplicateProvider("a".into()))
        );
        assert_eq!(r.get("a").map(|p| p.metadata().version.as_str()), Some("1"));
        let ids: Vec<&str> = r.list().iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert!(r.get("c").is_none());
    }
}
