//! The README's configuration examples, checked: every `toml` block is a kinfra.toml that
//! `kinfra config check` accepts (with the environment variables it names set), and the hybrid
//! example (a local Redis container, a Neon database, a Supabase project) stays under 25 lines.

use crate::support::{Project, stderr};

/// The README's `toml` code blocks, in order.
fn toml_blocks() -> Vec<String> {
    let readme = include_str!("../../README.md");
    let mut blocks = Vec::new();
    let mut rest = readme;
    while let Some(start) = rest.find("```toml\n") {
        let body = &rest[start + "```toml\n".len()..];
        let Some(end) = body.find("```") else {
            panic!("README: a toml block is not closed");
        };
        blocks.push(body[..end].to_owned());
        rest = &body[end..];
    }
    blocks
}

/// The `${NAME}` environment variables a block refers to (not `${resources...}`, `${PORT}`).
fn env_names(block: &str) -> Vec<String> {
    block
        .split("${")
        .skip(1)
        .filter_map(|s| s.split_once('}'))
        .map(|(name, _)| name.split(":-").next().unwrap_or(name).to_owned())
        .filter(|n| n != "PORT" && !n.contains('.'))
        .collect()
}

#[test]
fn every_readme_config_example_passes_config_check() {
    let blocks = toml_blocks();
    assert!(blocks.len() >= 5, "README toml blocks: {}", blocks.len());
    for block in &blocks {
        let p = Project::with_config(block);
        let names = env_names(block);
        let env: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "x-value")).collect();
        let out = p.run_env(&["config", "check"], &env);
        assert!(
            out.status.success(),
            "README block rejected:\n{block}\n{}",
            stderr(&out)
        );
    }
    let hybrid = blocks
        .iter()
        .find(|b| b.contains("provider = \"neon\"") && b.contains("provider = \"supabase\""))
        .expect("the README shows a Neon + Supabase + container config");
    assert!(hybrid.contains("template = \"redis\""), "{hybrid}");
    assert!(
        hybrid.lines().count() < 25,
        "hybrid example too long:\n{hybrid}"
    );
}
