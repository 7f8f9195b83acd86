//! NATS subject names: kinfra's own subjects, validation of user subjects, and wildcard
//! matching for the in-process bus.

use crate::BusError;

/// Makes `text` usable as one subject token: every character other than ASCII letters,
/// digits, `_` and `-` becomes `_` (so a project called `my app.v2` publishes on
/// `kinfra.my_app_v2.…`). An empty name becomes `_`.
pub fn token(text: &str) -> String {
    if text.is_empty() {
        return "_".into();
    }
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `kinfra.<project>.events.<resource>.<kind>`; `project` must already be a token.
pub fn events_subject(project: &str, resource: &str, kind: &str) -> String {
    format!(
        "kinfra.{project}.events.{}.{}",
        token(resource),
        token(kind)
    )
}

/// `kinfra.<project>.events.>`: every event of a project.
pub fn events_wildcard(project: &str) -> String {
    format!("kinfra.{project}.events.>")
}

/// `kinfra.<project>.control.<action>`; `project` must already be a token.
pub fn control_subject(project: &str, action: &str) -> String {
    format!("kinfra.{project}.control.{action}")
}

/// `kinfra.<project>.<node>.events.<resource>.<kind>`: the same event on its node's subject,
/// published beside [`events_subject`]; `project` and `node` must already be tokens.
pub fn node_events_subject(project: &str, node: &str, resource: &str, kind: &str) -> String {
    format!(
        "kinfra.{project}.{node}.events.{}.{}",
        token(resource),
        token(kind)
    )
}

/// `kinfra.<project>.*.events.>`: every node's node-scoped events.
pub fn node_events_wildcard(project: &str) -> String {
    format!("kinfra.{project}.*.events.>")
}

/// `kinfra.<project>.<node>.control.<action>`: control addressed to one node.
pub fn node_control_subject(project: &str, node: &str, action: &str) -> String {
    format!("kinfra.{project}.{node}.control.{action}")
}

/// `kinfra.<project>.<node>.heartbeat`: a node's heartbeat.
pub fn heartbeat_subject(project: &str, node: &str) -> String {
    format!("kinfra.{project}.{node}.heartbeat")
}

/// `kinfra.<project>.*.heartbeat`: every node's heartbeat.
pub fn heartbeat_wildcard(project: &str) -> String {
    format!("kinfra.{project}.*.heartbeat")
}

fn check_common(subject: &str) -> Result<(), BusError> {
    let bad = |why: &str| {
        Err(BusError::InvalidSubject {
            subject: subject.to_owned(),
            reason: why.to_owned(),
        })
    };
    if subject.is_empty() {
        return bad("it is empty");
    }
    if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("it contains whitespace or a control character");
    }
    if subject.split('.').any(str::is_empty) {
        return bad("it has an empty token (a leading, trailing or doubled `.`)");
    }
    Ok(())
}

/// A subject one may publish to: no empty tokens, no whitespace, no wildcards.
pub(crate) fn validate_publish(subject: &str) -> Result<(), BusError> {
    check_common(subject)?;
    if subject.split('.').any(|t| t == "*" || t == ">") {
        return Err(BusError::InvalidSubject {
            subject: subject.to_owned(),
            reason: "wildcards (`*`, `>`) are only allowed in subscriptions".into(),
        });
    }
    Ok(())
}

/// A subject one may subscribe to: as for publishing, plus `*` tokens and a final `>`.
pub(crate) fn validate_subscribe(subject: &str) -> Result<(), BusError> {
    check_common(subject)?;
    let tokens: Vec<&str> = subject.split('.').collect();
    if let Some(pos) = tokens.iter().position(|t| *t == ">")
        && pos + 1 != tokens.len()
    {
        return Err(BusError::InvalidSubject {
            subject: subject.to_owned(),
            reason: "`>` must be the last token".into(),
        });
    }
    Ok(())
}

/// True when `subject` (a concrete subject) matches `pattern` (which may hold `*` for one
/// token and a final `>` for one or more tokens), with NATS semantics.
pub(crate) fn matches(pattern: &str, subject: &str) -> bool {
    let mut pat = pattern.split('.');
    let mut sub = subject.split('.');
    loop {
        match (pat.next(), sub.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(p), Some(s)) if p == s => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_sanitised() {
        assert_eq!(token("demo"), "demo");
        assert_eq!(token("my app.v2"), "my_app_v2");
        assert_eq!(token("a*b>c"), "a_b_c");
        assert_eq!(token(""), "_");
        assert_eq!(
            events_subject("demo", "api", "state_changed"),
            "kinfra.demo.events.api.state_changed"
        );
        assert_eq!(
            control_subject("demo", "restart"),
            "kinfra.demo.control.restart"
        );
        assert_eq!(
            node_events_subject("demo", "a", "api", "state_changed"),
            "kinfra.demo.a.events.api.state_changed"
        );
        assert_eq!(
            node_control_subject("demo", "a", "restart"),
            "kinfra.demo.a.control.restart"
        );
        assert!(matches(
            &node_events_wildcard("demo"),
            "kinfra.demo.a.events.api.state_changed"
        ));
        assert!(!matches(
            &node_events_wildcard("demo"),
            "kinfra.demo.events.api.state_changed"
        ));
        assert!(matches(
            &heartbeat_wildcard("demo"),
            "kinfra.demo.b.heartbeat"
        ));
    }

    #[test]
    fn wildcard_matching() {
        assert!(matches("a.b.c", "a.b.c"));
        assert!(!matches("a.b.c", "a.b"));
        assert!(!matches("a.b", "a.b.c"));
        assert!(matches("a.*.c", "a.x.c"));
        assert!(!matches("a.*.c", "a.x.y.c"));
        assert!(matches("a.>", "a.b"));
        assert!(matches("a.>", "a.b.c.d"));
        assert!(!matches("a.>", "a"));
        assert!(matches("*.>", "x.y"));
        assert!(matches(">", "x"));
    }

    #[test]
    fn validation() {
        assert!(validate_publish("a.b").is_ok());
        assert!(validate_publish("").is_err());
        assert!(validate_publish("a b").is_err());
        assert!(validate_publish("a..b").is_err());
        assert!(validate_publish(".a").is_err());
        assert!(validate_publish("a.*").is_err());
        assert!(validate_publish("a.>").is_err());
        assert!(validate_subscribe("a.*.>").is_ok());
        assert!(validate_subscribe("a.>.b").is_err());
        assert!(validate_subscribe("a.\n").is_err());
    }
}
