//! The providers this kinfra knows: the built-ins (registered in code) and the external
//! plugins discovered on disk, with what discovery skipped and why. The SDK itself is
//! `kinfra_provider`, re-exported as [`sdk`] so an application can write its own provider and
//! register it beside the built-ins.

use kinfra_provider::discovery::{DiscoveryReport, discover, search_dirs};
use kinfra_provider::plugin::{PluginOptions, PluginProvider};
use kinfra_provider::provider::Provider;
use kinfra_provider::registry::Registry;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a provider sees of a `[providers.X]` instance and of a `[resources.NAME]` table, as
/// the runtime builds them (`kinfra config check` and `kinfra providers instances` use them too).
pub use crate::runtime::providers::{
    BuiltResource, build_resource, instance_context, resource_decl,
};
pub use kinfra_provider as sdk;

/// Where a provider comes from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum ProviderSource {
    /// Compiled into kinfra (or registered by the application).
    Builtin,
    /// An external executable speaking JSON-RPC over stdio.
    Plugin {
        /// The executable.
        path: PathBuf,
    },
}

/// Every provider known here, and what discovery said.
pub struct Catalog {
    /// Providers by id: the built-ins, then the plugins (a plugin cannot replace a built-in).
    pub registry: Registry,
    /// Where each provider in the registry comes from, by id.
    pub sources: Vec<(String, ProviderSource)>,
    /// What plugin discovery found and skipped.
    pub discovery: DiscoveryReport,
    /// The directories discovery searched, in order.
    pub searched: Vec<PathBuf>,
}

/// The providers compiled into kinfra: `command` (CLI tools as resources), `http-api` (any
/// HTTP/REST API described in config) and the cloud providers of `kinfra_cloud` (`neon`,
/// `supabase`).
pub fn builtin() -> Vec<Arc<dyn Provider>> {
    vec![
        kinfra_provider::builtin::command::provider(),
        kinfra_provider::builtin::http_api::provider(),
        kinfra_cloud::fly::provider(),
        kinfra_cloud::neon::provider(),
        kinfra_cloud::railway::provider(),
        kinfra_cloud::render::provider(),
        kinfra_cloud::supabase::provider(),
        kinfra_cloud::vercel::provider(),
        #[cfg(feature = "kubernetes")]
        kinfra_cloud::kubernetes::provider(),
        #[cfg(feature = "systemd")]
        kinfra_system::systemd::provider(),
        #[cfg(all(feature = "systemd", target_os = "macos"))]
        kinfra_system::launchd::provider(),
    ]
}

/// The built-ins plus the plugins found in `plugin_dirs`, `<state_dir>/providers` and `PATH`.
/// A plugin whose id a built-in already has is reported as skipped, never used.
pub async fn catalog(
    state_dir: &Path,
    plugin_dirs: &[PathBuf],
    extra: Vec<Arc<dyn Provider>>,
) -> Catalog {
    let mut registry = Registry::new();
    let mut sources = Vec::new();
    for provider in builtin().into_iter().chain(extra) {
        let id = provider.metadata().id.clone();
        if registry.register(provider).is_ok() {
            sources.push((id, ProviderSource::Builtin));
        }
    }
    let searched = search_dirs(state_dir, plugin_dirs);
    let options = PluginOptions {
        timeout: std::time::Duration::from_secs(10),
        ..PluginOptions::default()
    };
    let mut discovery = discover(&searched, options).await;
    let mut kept = Vec::new();
    for plugin in std::mem::take(&mut discovery.found) {
        if registry.contains(&plugin.id) {
            discovery
                .skipped
                .push(kinfra_provider::discovery::SkippedPlugin {
                    id: plugin.id.clone(),
                    path: plugin.path.clone(),
                    reason: kinfra_provider::discovery::SkipReason::Duplicate {
                        first: PathBuf::from("(built in)"),
                    },
                });
            continue;
        }
        let provider = PluginProvider::new(plugin.description.clone(), &plugin.path, options);
        if registry.register(Arc::new(provider)).is_ok() {
            sources.push((
                plugin.id.clone(),
                ProviderSource::Plugin {
                    path: plugin.path.clone(),
                },
            ));
            kept.push(plugin);
        }
    }
    discovery.found = kept;
    Catalog {
        registry,
        sources,
        discovery,
        searched,
    }
}

impl Catalog {
    /// Where provider `id` comes from.
    pub fn source(&self, id: &str) -> Option<&ProviderSource> {
        self.sources.iter().find(|(i, _)| i == id).map(|(_, s)| s)
    }
}
