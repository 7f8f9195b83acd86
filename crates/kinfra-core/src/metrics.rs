//! The one rule of the Prometheus text format every `/metrics` contributor shares: how a label
//! value is escaped; and [`RouteTotals`], the proxy's per-route counters as data (for the
//! dashboard's plots).

/// The proxy's running totals for one route (labelled by service, as in `/metrics`) since
/// kinfra started: what the dashboard's history turns into rates and percentiles.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RouteTotals {
    /// The route's label (its service, or `dashboard` / `none`).
    pub route: String,
    /// Requests answered.
    pub requests: u64,
    /// Of those, 5xx answers and requests that got no answer.
    pub errors: u64,
    /// Latency histogram, not cumulative: `(upper bound in seconds, requests)` per bucket,
    /// ascending; the last bound is `f64::INFINITY` (requests beyond every bucket).
    pub latency_buckets: Vec<(f64, u64)>,
}

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
