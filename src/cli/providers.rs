//! `kinfra providers`: the providers this kinfra knows (built in and discovered plugins),
//! one provider's metadata and commands, and what plugin discovery found and skipped.

use super::{ConfigArg, InputError, load};
use kinfra::providers::sdk::command::{CommandSpec, ParamKind};
use kinfra::providers::sdk::metadata::ProviderMetadata;
use kinfra::providers::{Catalog, ProviderSource, catalog};
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
