//! Registry credentials from docker's `config.json` (`$DOCKER_CONFIG/config.json`, else
//! `~/.docker/config.json`): the `auths` entry of the registry, `auth` being base64
//! `user:password`. Credential helpers (`credsStore`, `credHelpers`) are not run.

use base64::Engine;
use std::path::{Path, PathBuf};

/// The path of docker's config.json.
pub fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(Path::new(&dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|home| Path::new(&home).join(".docker").join("config.json"))
}

/// The user and password stored for `registry` in the config.json at `path`; `None` when the
/// file, the entry or its `auth` is missing or unreadable.
pub fn docker_config_credentials(path: &Path, registry: &str) -> Option<(String, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let auths = json.get("auths")?.as_object()?;
    let entry = auths.get(registry).or_else(|| {
        auths.iter().find_map(|(key, value)| {
            let key = key
                .trim_start_matches("https://")
                .trim_start_matches("http://");
            (key.split('/').next() == Some(registry)).then_some(value)
        })
    })?;
    let encoded = entry.get("auth")?.as_str()?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_auths_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("ann:s3cret:x");
        std::fs::write(
            &path,
            format!(
                r#"{{"auths":{{"https://reg.example.com/v1/":{{"auth":"{auth}"}},"other:5000":{{}}}}}}"#
            ),
        )
        .expect("write");
        assert_eq!(
            docker_config_credentials(&path, "reg.example.com"),
            Some(("ann".into(), "s3cret:x".into()))
        );
        assert_eq!(docker_config_credentials(&path, "other:5000"), None);
        assert_eq!(docker_config_credentials(&path, "nowhere"), None);
    }
}
