//! `kinfra providers`: the providers this kinfra knows (built in and discovered plugins),
//! one provider's metadata and commands, and what plugin discovery found and skipped.

use super::{ConfigArg, InputError, load};
use kinfra::providers::sdk::command::{CommandSpec, ParamKind};
use kinfra::providers::sdk::lifecycle::InstanceState;
use kinfra::providers::sdk::metadata::ProviderMetadata;
use kinfra::providers::{Catalog, ProviderSource, catalog, instance_context};
use std::path::PathBuf;
use std::process::ExitCode;

/// The catalog for the config in `arg` (its state dir and `[providers] plugin_dirs`), with
/// the command line's `plugin_dirs` searched first.
async fn load_catalog(arg: &ConfigArg, plugin_dirs: &[PathBuf]) -> anyhow::Result<Catalog> {
    let (config, _) = load::load(arg)?;
    let mut dirs = plugin_dirs.to_vec();
    dirs.extend(config.provider_plugin_dirs());
    Ok(catalog(&config.state_dir(), &dirs, Vec::new()).await)
}

fn source_text(source: Option<&ProviderSource>) -> String {
    match source {
        Some(ProviderSource::Builtin) | None => "built in".into(),
        Some(ProviderSource::Plugin { path }) => path.display().to_string(),
    }
}

/// `kinfra providers [--json]`
pub async fn list(
    arg: &ConfigArg,
    plugin_dirs: &[PathBuf],
    json: bool,
) -> anyhow::Result<ExitCode> {
    let catalog = load_catalog(arg, plugin_dirs).await?;
    let providers = catalog.registry.list();
    if json {
        let out: Vec<serde_json::Value> = providers
            .iter()
            .map(|m| {
                serde_json::json!({
                    "id": m.id,
                    "display_name": m.display_name,
                    "version": m.version,
                    "category": m.category,
                    "capabilities": m.capabilities,
                    "resource_types": m.resource_types.iter().map(|t| &t.name).collect::<Vec<_>>(),
                    "from": catalog.source(&m.id),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    if providers.is_empty() {
        println!("no providers");
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![[
        "ID".to_owned(),
        "VERSION".into(),
        "CATEGORY".into(),
        "NAME".into(),
        "FROM".into(),
    ]];
    for m in providers {
        rows.push([
            m.id.clone(),
            m.version.clone(),
            serde_json::to_value(m.category)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            m.display_name.clone(),
            source_text(catalog.source(&m.id)),
        ]);
    }
    print!("{}", super::output::table(&rows));
    if !catalog.discovery.skipped.is_empty() {
        println!(
            "{} plugin(s) skipped: see `kinfra providers discover`",
            catalog.discovery.skipped.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `kinfra providers show ID [--json]`
pub async fn show(
    arg: &ConfigArg,
    plugin_dirs: &[PathBuf],
    id: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let catalog = load_catalog(arg, plugin_dirs).await?;
    let Some(provider) = catalog.registry.get(id) else {
        let known: Vec<String> = catalog
            .registry
            .list()
            .iter()
            .map(|m| m.id.clone())
            .collect();
        return Err(InputError(format!(
            "unknown provider `{id}` (known: {})",
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        ))
        .into());
    };
    let m = provider.metadata();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "metadata": m,
                "commands": provider.commands(),
                "from": catalog.source(id),
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    print!(
        "{}",
        describe(m, provider.commands(), &source_text(catalog.source(id)))
    );
    Ok(ExitCode::SUCCESS)
}

/// A provider for people: metadata, resource types with their keys, commands with their
/// parameters.
fn describe(m: &ProviderMetadata, commands: &[CommandSpec], from: &str) -> String {
    let names = |v: serde_json::Value| match v {
        serde_json::Value::Array(items) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_owned))
            .collect::<Vec<_>>()
            .join(", "),
        serde_json::Value::String(s) => s,
        _ => String::new(),
    };
    let mut out = format!(
        "{} ({}) {}\n{}\nfrom: {from}\ncategory: {}\ncapabilities: {}\nauth: {}\n",
        m.display_name,
        m.id,
        m.version,
        m.description,
        names(serde_json::to_value(m.category).unwrap_or_default()),
        names(serde_json::to_value(&m.capabilities).unwrap_or_default()),
        names(serde_json::to_value(&m.auth_methods).unwrap_or_default()),
    );
    for t in &m.resource_types {
        out.push_str(&format!(
            "\nresource type `{}`: {}\n",
            t.name, t.description
        ));
        for k in &t.config {
            out.push_str(&format!(
                "  {}{}  {}  {}\n",
                k.name,
                if k.required { " (required)" } else { "" },
                names(serde_json::to_value(k.kind).unwrap_or_default()),
                k.description
            ));
        }
    }
    if !commands.is_empty() {
        out.push_str("\ncommands:\n");
    }
    for c in commands {
        out.push_str(&format!(
            "  {}{}{}  {}\n",
            c.id,
            if c.dry_run { " [dry-run]" } else { "" },
            if c.confirm { " [needs --yes]" } else { "" },
            c.description
        ));
        for p in &c.params {
            out.push_str(&format!(
                "    --param {}=<{}>{}  {}\n",
                p.name,
                kind_text(&p.kind),
                if p.required { " (required)" } else { "" },
                p.description
            ));
        }
    }
    out
}

fn kind_text(kind: &ParamKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| match v {
            serde_json::Value::String(s) => Some(s),
            serde_json::Value::Object(o) => o
                .get("kind")
                .or_else(|| o.get("type"))
                .and_then(|k| k.as_str().map(str::to_owned))
                .or_else(|| o.keys().next().cloned()),
            _ => None,
        })
        .unwrap_or_else(|| "value".into())
}

/// `kinfra providers discover [--json]`
pub async fn discover(
    arg: &ConfigArg,
    plugin_dirs: &[PathBuf],
    json: bool,
) -> anyhow::Result<ExitCode> {
    let catalog = load_catalog(arg, plugin_dirs).await?;
    let d = &catalog.discovery;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "searched": catalog.searched,
                "found": d.found.iter().map(|p| serde_json::json!({
                    "id": p.id, "path": p.path, "version": p.description.metadata.version,
                })).collect::<Vec<_>>(),
                "skipped": d.skipped.iter().map(|s| serde_json::json!({
                    "id": s.id, "path": s.path, "reason": s.reason.to_string(),
                })).collect::<Vec<_>>(),
                "unreadable_dirs": d.unreadable_dirs.iter().map(|(p, e)| serde_json::json!({
                    "path": p, "error": e,
                })).collect::<Vec<_>>(),
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "searched {} directories (plugin dirs, the state dir's providers/, PATH) for kinfra-provider-<id>",
        catalog.searched.len()
    );
    for p in &d.found {
        println!(
            "found   {} {} at {}",
            p.id,
            p.description.metadata.version,
            p.path.display()
        );
    }
    for s in &d.skipped {
        println!("skipped {} at {}: {}", s.id, s.path.display(), s.reason);
    }
    for (path, error) in &d.unreadable_dirs {
        println!("cannot read {}: {error}", path.display());
    }
    if d.found.is_empty() && d.skipped.is_empty() {
        println!("no plugins found");
    }
    Ok(ExitCode::SUCCESS)
}

/// One `[providers.X]` instance as `kinfra providers instances` shows it: the same shape
/// whether read from a running runtime (`live`) or computed from the config.
#[derive(serde::Serialize)]
struct InstanceRow {
    /// The instance's name.
    name: String,
    /// The provider's id.
    provider: String,
    /// Where the provider comes from (`{"source": "builtin"}`, `{"source": "plugin",
    /// "path": ...}`); `{"source": "missing"}` when it is nowhere.
    from: serde_json::Value,
    /// The `[resources.NAME]` that use the instance.
    resources: Vec<String>,
    /// The lifecycle state.
    state: String,
    /// Why it is in that state (always set when `failed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// When it entered the state (live rows only: the config alone cannot say).
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<String>,
    /// Read from a running runtime (true) or computed from the config (false).
    live: bool,
}

/// `kinfra providers instances [--json]`: the configured instances with their provider,
/// where it comes from, the resources that use each, and its lifecycle state. A runtime
/// running for this config is asked (over its control socket) and its live states are
/// shown; with none running, the states are computed offline from the config (`ready` when
/// the provider is installed and the token, if any, readable; `failed` with the reason
/// otherwise), and the table says so.
pub async fn instances(
    arg: &ConfigArg,
    plugin_dirs: &[PathBuf],
    json: bool,
) -> anyhow::Result<ExitCode> {
    let (config, _) = load::load(arg)?;
    let rows = match live_rows(&config.state_dir()).await? {
        Some(rows) => rows,
        None if config.providers.instances.is_empty() => Vec::new(),
        None => {
            let mut dirs = plugin_dirs.to_vec();
            dirs.extend(config.provider_plugin_dirs());
            let catalog = catalog(&config.state_dir(), &dirs, Vec::new()).await;
            instance_rows(&config, &catalog)
        }
    };
    let live = rows.first().is_some_and(|r| r.live);
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("no provider instances ([providers.NAME] tables) in the config");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = vec![[
        "INSTANCE".to_owned(),
        "PROVIDER".into(),
        "FROM".into(),
        "RESOURCES".into(),
        "STATE".into(),
    ]];
    for row in &rows {
        table.push([
            row.name.clone(),
            row.provider.clone(),
            match row.from.get("source").and_then(|s| s.as_str()) {
                Some("plugin") => row
                    .from
                    .get("path")
                    .and_then(|p| p.as_str())
                    .unwrap_or("plugin")
                    .to_owned(),
                Some("builtin") => "built in".into(),
                _ => "missing".into(),
            },
            if row.resources.is_empty() {
                "-".to_owned()
            } else {
                row.resources.join(", ")
            },
            match &row.reason {
                Some(reason) => format!("{}: {reason}", row.state),
                None => row.state.clone(),
            },
        ]);
    }
    print!("{}", super::output::table(&table));
    if live {
        println!("(live states read from the running runtime)");
    } else {
        println!("(states computed from the config, not read from a running runtime)");
    }
    Ok(ExitCode::SUCCESS)
}

/// The instances as the runtime running on `state_dir` lives them; `None` when no runtime
/// runs there (its control socket is absent or refuses connections, or this user cannot
/// reach it).
async fn live_rows(state_dir: &std::path::Path) -> anyhow::Result<Option<Vec<InstanceRow>>> {
    let mut conn = match super::client::connect(state_dir).await {
        Ok(conn) => conn,
        Err(error) if error.is::<super::NotRunning>() => return Ok(None),
        Err(error) => return Err(error),
    };
    conn.send(&kinfra::ControlRequest::Status).await?;
    let report = match conn.next_within(std::time::Duration::from_secs(10)).await? {
        Some(kinfra::ControlResponse::Status { report }) => report,
        Some(kinfra::ControlResponse::Error { error }) => anyhow::bail!("{error}"),
        other => anyhow::bail!("unexpected reply from the runtime: {other:?}"),
    };
    Ok(Some(
        report
            .providers
            .into_iter()
            .map(|(name, instance)| {
                let mut from = serde_json::json!({ "source": instance.source });
                if let Some(path) = instance.path {
                    from["path"] = path.into();
                }
                InstanceRow {
                    name,
                    provider: instance.provider,
                    from,
                    resources: instance.resources,
                    state: instance.state,
                    reason: instance.reason,
                    since: Some(instance.since),
                    live: true,
                }
            })
            .collect(),
    ))
}

fn instance_rows(config: &kinfra::Config, catalog: &Catalog) -> Vec<InstanceRow> {
    config
        .providers
        .instances
        .iter()
        .map(|(name, instance)| {
            let id = instance.provider_id(name);
            let resources = config
                .resources
                .iter()
                .filter(|(_, r)| r.provider.as_deref() == Some(name.as_str()))
                .map(|(resource, _)| resource.clone())
                .collect();
            let source = catalog.source(id);
            let from = match source {
                Some(source) => serde_json::to_value(source).unwrap_or_default(),
                None => serde_json::json!({ "source": "missing" }),
            };
            let reason = if source.is_none() {
                Some(format!(
                    "provider `{id}` is not built in and no plugin kinfra-provider-{id} was found"
                ))
            } else {
                instance_context(config, name, &[]).err()
            };
            InstanceRow {
                name: name.clone(),
                provider: id.to_owned(),
                from,
                resources,
                state: if reason.is_some() {
                    InstanceState::Failed
                } else {
                    InstanceState::Ready
                }
                .as_str()
                .to_owned(),
                reason,
                since: None,
                live: false,
            }
        })
        .collect()
}
