//! The one rule of the Prometheus text format every `/metrics` contributor shares: how a label
//! value is escaped.

/// A label value escaped for the text format (backslash, double quote and newline).
pub fn label_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_the_format_requires() {
        assert_eq!(label_value("plain-name"), "plain-name");
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
