//! Procfiles (foreman, overmind, Heroku): one service per `name: command` line; the `.env`
//! beside the file becomes the global `[env]`; a command naming `$PORT` (and the `web`
//! process, which foreman and Heroku always give a port) gets `port = "auto"`, which kinfra
//! hands to the process as `$PORT`. Comments above a line stay above its service.

use crate::emit::{Document, Table};
use crate::{ImportError, Source, envfile, kinfra_name, text};

/// `name: command`, as foreman reads it: the name is letters, digits, `_` and `-`.
fn split_line(line: &str) -> Option<(&str, &str)> {
    let (name, command) = line.split_once(':')?;
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    valid.then_some((name, command.trim()))
}

/// Whether every line that is not blank or a comment is `name: command`.
pub fn looks_like(text: &str) -> bool {
    let mut any = false;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match split_line(line) {
            Some((_, command)) if !command.is_empty() => any = true,
            _ => return false,
        }
    }
    any
}

/// Converts a Procfile into services of `doc`.
pub fn import(text: &str, source: &mut Source<'_>, doc: &mut Document) -> Result<(), ImportError> {
    import_env(source, doc)?;
    let mut comments: Vec<String> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    let mut last: Option<usize> = None;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            continue;
        }
        if let Some(comment) = trimmed.strip_prefix('#') {
            comments.push(comment.trim().to_owned());
            continue;
        }
        let Some((name, command)) = split_line(trimmed) else {
            return Err(source.malformed(
                line,
                format!(
                    "expected `name: command` (a name of letters, digits, `_` and `-`), found `{}`",
                    trimmed.chars().take(60).collect::<String>()
                ),
            ));
        };
        if command.is_empty() {
            return Err(source.malformed(line, format!("`{name}` has no command after `:`")));
        }
        if seen.iter().any(|n| n == name) {
            return Err(source.malformed(line, format!("`{name}` is defined twice")));
        }
        seen.push(name.to_owned());
        let service = doc.free_name(&kinfra_name(name));
        if service != name {
            source.changed(
                line,
                name,
                format!("named `{service}`: the name `{name}` is taken or not a kinfra name"),
            );
        }
        let mut table = Table::new("services", &service);
        table.comments = std::mem::take(&mut comments);
        table.set("command", text::shell_command(command));
        if text::uses_port(command) {
            table.set("port", "auto");
        } else if name == "web" {
            table.set("port", "auto");
            source.changed(
                line,
                name,
                "port = \"auto\": foreman and Heroku give the web process $PORT even when its \
                 command does not name it; kinfra does so for a service with a port",
            );
        }
        if name == "release" {
            table.set("restart", "no");
            source.changed(
                line,
                name,
                "restart = \"no\": Heroku runs the release process once per deploy; here it \
                 runs once per `runtime up` (make others wait with \
                 depends_on = { release = \"completed_successfully\" })",
            );
        }
        doc.tables.push(table);
        last = Some(doc.tables.len() - 1);
    }
    if let Some(index) = last
        && !comments.is_empty()
    {
        doc.tables[index].comments.extend(comments);
    }
    if seen.is_empty() {
        return Err(source.malformed(1, "expected at least one `name: command` line"));
    }
    Ok(())
}

/// The `.env` beside the Procfile: foreman gives it to every process, so it becomes `[env]`.
fn import_env(source: &mut Source<'_>, doc: &mut Document) -> Result<(), ImportError> {
    let path = source.dir.join(".env");
    if !path.exists() {
        return Ok(());
    }
    let (path, text) = source.read_beside(".env")?;
    let file = path.display().to_string();
    let vars = envfile::parse(&text).map_err(|e| ImportError::Malformed {
        file: file.clone(),
        line: e.line,
        message: e.message,
    })?;
    doc.env_comments.push(format!("From {file}."));
    let mut env_source = Source {
        file,
        dir: source.dir.clone(),
        notes: &mut *source.notes,
    };
    for var in vars {
        if var.key == "PORT" {
            env_source.not_imported(
                var.line,
                "PORT",
                "each service with a port gets its own $PORT from kinfra (port = \"auto\" or a \
                 number), as foreman gives each process its own",
            );
            continue;
        }
        if envfile::looks_secret(&var.key) {
            env_source.changed(
                var.line,
                &var.key,
                format!(
                    "the value is now in kinfra.toml: keep that file out of version control, or \
                     set {0} in the environment and write {0} = \"${{{0}}}\"",
                    var.key
                ),
            );
        }
        // `.env` values are literal: a `$` must reach the process as written.
        doc.set_env(&var.key, &var.value.replace('$', "$$"));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::NoteKind;

    fn run(text: &str, env: Option<&str>) -> (Document, Vec<crate::Note>) {
        let dir = tempfile::tempdir().unwrap();
        if let Some(env) = env {
            std::fs::write(dir.path().join(".env"), env).unwrap();
        }
        let mut notes = Vec::new();
        let mut doc = Document::default();
        let mut source = Source {
            file: "Procfile".into(),
            dir: dir.path().to_path_buf(),
            notes: &mut notes,
        };
        import(text, &mut source, &mut doc).unwrap();
        (doc, notes)
    }

    #[test]
    fn lines_become_services_with_ports_and_comments() {
        let (doc, notes) = run(
            "# the app server\nweb: bundle exec puma -p $PORT\n\n# jobs\nworker: bundle exec sidekiq\nrelease: bin/rails db:migrate\n",
            None,
        );
        let web = &doc.tables[0];
        assert_eq!(web.name, "web");
        assert_eq!(web.comments, vec!["the app server"]);
        assert_eq!(web.get("port").unwrap().as_str(), Some("auto"));
        let worker = &doc.tables[1];
        assert_eq!(worker.comments, vec!["jobs"]);
        assert!(worker.get("port").is_none());
        assert_eq!(doc.tables[2].get("restart").unwrap().as_str(), Some("no"));
        assert!(notes.iter().any(|n| n.key == "release" && n.line == 6));
    }

    #[test]
    fn web_gets_a_port_even_without_port_in_its_command() {
        let (doc, notes) = run("web: node server.js\n", None);
        assert_eq!(doc.tables[0].get("port").unwrap().as_str(), Some("auto"));
        assert!(
            notes
                .iter()
                .any(|n| n.kind == NoteKind::Changed && n.key == "web")
        );
    }

    #[test]
    fn env_file_becomes_global_env_without_port() {
        let (doc, notes) = run(
            "web: rails s -p $PORT\n",
            Some("RAILS_ENV=development\nPORT=5000\nSECRET_KEY_BASE=abc$1\n"),
        );
        assert_eq!(
            doc.env,
            vec![
                ("RAILS_ENV".to_owned(), "development".to_owned()),
                ("SECRET_KEY_BASE".to_owned(), "abc$$1".to_owned())
            ]
        );
        assert!(
            notes
                .iter()
                .any(|n| n.key == "PORT" && n.kind == NoteKind::NotImported)
        );
        assert!(
            notes
                .iter()
                .any(|n| n.key == "SECRET_KEY_BASE" && n.line == 3)
        );
    }

    #[test]
    fn malformed_lines_name_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut notes = Vec::new();
        let mut source = Source {
            file: "Procfile".into(),
            dir: dir.path().to_path_buf(),
            notes: &mut notes,
        };
        let e = import(
            "web: x\nthis is not a process\n",
            &mut source,
            &mut Document::default(),
        )
        .unwrap_err();
        assert_eq!(e.to_string().split(':').nth(1), Some("2"), "{e}");
        assert!(e.to_string().contains("expected `name: command`"), "{e}");
    }
}
