//! Masking of secret values in everything the bus publishes (events and control replies).

use kinfra_core::Secret;
use std::sync::Arc;

/// Replaces known secret values with `***` in outgoing JSON. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct Redactor {
    /// Each secret as it is, and as it appears inside a JSON string when escaping changes it.
    needles: Arc<Vec<String>>,
}

impl Redactor {
    pub(crate) fn new(secrets: &[Secret]) -> Self {
        let mut needles = Vec::new();
        for secret in secrets {
            let raw = secret.expose();
            if raw.len() < 4 {
                continue;
            }
            needles.push(raw.to_owned());
            if let Ok(quoted) = serde_json::to_string(raw) {
                let escaped = &quoted[1..quoted.len() - 1];
                if escaped != raw {
                    needles.push(escaped.to_owned());
                }
            }
        }
        // Longest first, so a secret that contains another is masked whole.
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        needles.dedup();
        Self {
            needles: Arc::new(needles),
        }
    }

    pub(crate) fn apply(&self, text: String) -> String {
        if self.needles.is_empty() {
            return text;
        }
        let refs: Vec<&str> = self.needles.iter().map(String::as_str).collect();
        kinfra_core::secret::redact(&text, &refs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_raw_and_json_escaped_values() {
        let r = Redactor::new(&[
            Secret::new("hunter22"),
            Secret::new("a\"quote\"b"),
            Secret::new("abc"),
        ]);
        let json = serde_json::json!({"m": "pw hunter22 and a\"quote\"b, abc"}).to_string();
        let out = r.apply(json);
        assert_eq!(out, r#"{"m":"pw *** and ***, abc"}"#);
    }
}
