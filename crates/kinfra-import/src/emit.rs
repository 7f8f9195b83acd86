//! The imported config as ordered tables, and its TOML text: services and resources in the
//! order of their source files, each with the comments that went with it.

use toml::Value;

/// One `[services.NAME]` or `[resources.NAME]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// `services` or `resources`.
    pub section: &'static str,
    /// The service or resource name.
    pub name: String,
    /// Comment lines written above the table (without `#`).
    pub comments: Vec<String>,
    /// Keys in the order they are written.
    pub entries: Vec<(String, Value)>,
}

impl Table {
    /// An empty table.
    pub fn new(section: &'static str, name: impl Into<String>) -> Self {
        Self {
            section,
            name: name.into(),
            comments: Vec::new(),
            entries: Vec::new(),
        }
    }

    /// Sets `key` (replacing an earlier value).
    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        let value = value.into();
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key.to_owned(), value)),
        }
    }

    /// The value of `key`, when set.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

/// The whole imported config.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Document {
    /// `[project] name`.
    pub project: Option<String>,
    /// The global `[env]`, in order, with the file each value came from.
    pub env: Vec<(String, String)>,
    /// Comment lines above `[env]`.
    pub env_comments: Vec<String>,
    /// Services and resources, in source order.
    pub tables: Vec<Table>,
    /// The files the config was imported from (named in the header comment).
    pub sources: Vec<String>,
    /// Where each dependency was written, to report one that cannot be kept.
    pub dependencies: Vec<Dependency>,
}

/// One `depends_on` entry and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Dependency {
    /// The service or resource that waits.
    pub from: String,
    /// What it waits for.
    pub target: String,
    /// The source file.
    pub file: String,
    /// The line in it.
    pub line: usize,
    /// The source key.
    pub key: String,
}

impl Document {
    /// Whether a service or resource of this name exists.
    pub fn has_name(&self, name: &str) -> bool {
        self.tables.iter().any(|t| t.name == name)
    }

    /// A name not taken yet: `name`, else `name-2`, `name-3`, ...
    pub fn free_name(&self, name: &str) -> String {
        if !self.has_name(name) {
            return name.to_owned();
        }
        (2..)
            .map(|i| format!("{name}-{i}"))
            .find(|n| !self.has_name(n))
            .unwrap_or_else(|| name.to_owned())
    }

    /// Sets a global variable (a later file wins).
    pub fn set_env(&mut self, key: &str, value: &str) {
        match self.env.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value.to_owned(),
            None => self.env.push((key.to_owned(), value.to_owned())),
        }
    }

    /// The TOML text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "# Imported by `kinfra import` from {}.\n# Check it with `kinfra config check`; \
             the import's report lists what did not map.\n\n",
            self.sources.join(", ")
        ));
        if let Some(name) = &self.project {
            out.push_str("[project]\n");
            out.push_str(&format!("name = {}\n\n", Value::String(name.clone())));
        }
        if !self.env.is_empty() {
            for c in &self.env_comments {
                out.push_str(&comment(c));
            }
            out.push_str("[env]\n");
            for (k, v) in &self.env {
                out.push_str(&format!("{} = {}\n", key(k), Value::String(v.clone())));
            }
            out.push('\n');
        }
        for table in &self.tables {
            for c in &table.comments {
                out.push_str(&comment(c));
            }
            let header = format!("{}.{}", table.section, key(&table.name));
            out.push_str(&format!("[{header}]\n"));
            // Big tables (env of many variables) as their own sub-tables, after the keys.
            let (subtables, inline): (Vec<_>, Vec<_>) = table
                .entries
                .iter()
                .partition(|(_, v)| matches!(v, Value::Table(t) if t.len() > 3));
            for (k, v) in inline {
                out.push_str(&format!("{} = {v}\n", key(k)));
            }
            for (k, v) in subtables {
                if let Value::Table(t) = v {
                    out.push_str(&format!("\n[{header}.{}]\n", key(k)));
                    for (k2, v2) in t {
                        out.push_str(&format!("{} = {v2}\n", key(k2)));
                    }
                }
            }
            out.push('\n');
        }
        while out.ends_with("\n\n") {
            out.pop();
        }
        out
    }
}

fn comment(text: &str) -> String {
    if text.is_empty() {
        "#\n".to_owned()
    } else {
        format!("# {text}\n")
    }
}

/// A TOML key: bare when it can be, quoted otherwise.
pub fn key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_owned()
    } else {
        Value::String(k.to_owned()).to_string()
    }
}

/// A TOML inline table from pairs.
pub fn table<K: Into<String>>(pairs: impl IntoIterator<Item = (K, Value)>) -> Value {
    Value::Table(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())
}

/// A TOML array of strings.
pub fn strings<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> Value {
    Value::Array(
        items
            .into_iter()
            .map(|s| Value::String(s.as_ref().to_owned()))
            .collect(),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn renders_in_order_with_comments_and_quoted_keys() {
        let mut doc = Document {
            project: Some("shop".into()),
            sources: vec!["Procfile".into()],
            ..Document::default()
        };
        doc.set_env("A.B", "1");
        let mut web = Table::new("services", "web");
        web.comments.push("the app".into());
        web.set("command", "bin/web");
        web.set("port", "auto");
        doc.tables.push(web);
        doc.tables.push(Table::new("services", "a"));
        let text = doc.render();
        let web_at = text.find("[services.web]").unwrap();
        assert!(text.find("[services.a]").unwrap() > web_at, "{text}");
        assert!(text.contains("# the app\n[services.web]\ncommand = \"bin/web\"\n"));
        assert!(text.contains("\"A.B\" = \"1\""), "{text}");
    }

    #[test]
    fn big_tables_become_sub_tables() {
        let mut t = Table::new("services", "web");
        t.set("command", "x");
        t.set(
            "env",
            table((0..5).map(|i| (format!("K{i}"), Value::String(i.to_string())))),
        );
        let doc = Document {
            tables: vec![t],
            ..Document::default()
        };
        let text = doc.render();
        assert!(text.contains("[services.web.env]\nK0 = \"0\""), "{text}");
    }
}
