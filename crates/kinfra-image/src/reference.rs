//! `REGISTRY/REPO:TAG`, checked: the registry is named (a host with a dot or a port, or
//! `localhost`), the repository is lowercase path components, and the tag is present (a push
//! without one would silently become `latest`).

use crate::ImageError;
use std::fmt;

/// A checked image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `host[:port]`.
    pub registry: String,
    /// `team/app`.
    pub repository: String,
    /// `v1`.
    pub tag: String,
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.registry, self.repository, self.tag)
    }
}

impl ImageRef {
    /// Parses `REGISTRY/REPO:TAG`; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, ImageError> {
        let bad = |why: &str| {
            ImageError::Input(format!(
                "image reference `{text}`: {why} (expected REGISTRY/REPO:TAG, e.g. \
                 registry.example.com/team/app:v1)"
            ))
        };
        if text.contains('@') {
            return Err(bad("a digest cannot be pushed to; give a tag"));
        }
        let Some((registry, rest)) = text.split_once('/') else {
            return Err(bad("no registry"));
        };
        let is_registry =
            registry.contains('.') || registry.contains(':') || registry == "localhost";
        if !is_registry || registry.is_empty() {
            return Err(bad(
                "the first part is not a registry host (it needs a dot or a port)",
            ));
        }
        let Some((repository, tag)) = rest.rsplit_once(':') else {
            return Err(bad("no tag"));
        };
        if !is_valid_tag(tag) {
            return Err(bad("the tag is empty or holds characters a tag cannot"));
        }
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.chars().all(|ch| {
                    ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_' | '-')
                })
                && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
        };
        if repository.is_empty() || !repository.split('/').all(component_ok) {
            return Err(bad(
                "the repository must be lowercase letters, digits, `.`, `_`, `-` and `/`",
            ));
        }
        Ok(Self {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            tag: tag.to_owned(),
        })
    }

    /// The registry's host without the port.
    pub fn host(&self) -> &str {
        match self.registry.rsplit_once(':') {
            Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
            _ => &self.registry,
        }
    }

    /// True when the registry is on this machine (`127.0.0.0/8`, `localhost`, `[::1]`), the
    /// only registries plain HTTP is allowed for.
    pub fn is_loopback(&self) -> bool {
        let host = self.host().trim_start_matches('[').trim_end_matches(']');
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

/// True for a tag the distribution spec allows: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn is_valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with(['.', '-'])
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_references() {
        let r = ImageRef::parse("127.0.0.1:5000/team/app:v1.2").expect("parse");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "team/app");
        assert_eq!(r.tag, "v1.2");
        assert_eq!(r.host(), "127.0.0.1");
        assert!(r.is_loopback());
        assert_eq!(r.to_string(), "127.0.0.1:5000/team/app:v1.2");
        let r = ImageRef::parse("ghcr.io/me/kinfra:latest").expect("parse");
        assert!(!r.is_loopback());
        assert!(
            ImageRef::parse("localhost/app:1")
                .expect("parse")
                .is_loopback()
        );
    }

    #[test]
    fn bad_references_say_why() {
        for (text, why) in [
            ("127.0.0.1:5000/team/app", "no tag"),
            ("team/app:v1", "not a registry host"),
            ("app:v1", "no registry"),
            ("ghcr.io/Me/app:v1", "lowercase"),
            ("ghcr.io/me/app:", "tag is empty"),
            ("ghcr.io/me/app@sha256:abc", "digest"),
        ] {
            let error = ImageRef::parse(text).expect_err(text).to_string();
            assert!(error.contains(why), "{text}: {error}");
            assert!(error.contains(text), "{error}");
        }
    }
}
