//! Progress of long work on a resource (an image pull, a cloud operation): one shape for the
//! status report (`progress` on a resource while the work runs), the `progress` event and
//! what `runtime up` prints.
//!
//! Numbers are only what the doer reports: a pull has bytes and a percent once every layer's
//! size is known; a cloud operation has its provider's phase and the time it has taken, and
//! a percent only where the provider reports one.

use serde::{Deserialize, Serialize};

/// Where long work on a resource stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// What the work is: `pull` (an image) or `operation` (a provider's long operation).
    pub task: String,
    /// Where it is, in the doer's words: `waiting`, `downloading`, `extracting` or `complete`
    /// for a pull; the provider's state (`BUILD_IN_PROGRESS`, `provisioning`) for an operation.
    pub phase: String,
    /// What it works on (`postgres:16`), when that says more than the resource's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Units done so far, when counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<u64>,
    /// Units in all, when known (a pull's total grows while layers are still being listed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// What `current` and `total` count: `bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// 0 to 100, only when the doer reports enough to know it (never guessed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Seconds since the work began.
    pub elapsed_s: u64,
}

impl Progress {
    /// The work as one short line, for people: `pulling postgres:16  42% 61.2/145.3 MB`,
    /// `BUILD_IN_PROGRESS  1m 20s`.
    pub fn text(&self) -> String {
        let mut out = match (self.task.as_str(), &self.target) {
            ("pull", Some(target)) if self.phase == "complete" => format!("pulled {target}"),
            ("pull", Some(target)) => format!("pulling {target} ({})", self.phase),
            (_, Some(target)) => format!("{} {target}", self.phase),
            _ => self.phase.clone(),
        };
        if let Some(p) = self.percent {
            out.push_str(&format!("  {p:.0}%"));
        }
        match (self.current, self.total, self.unit.as_deref()) {
            (Some(c), Some(t), Some("bytes")) => {
                out.push_str(&format!(" {}/{} MB", mb(c), mb(t)));
            }
            (Some(c), None, Some("bytes")) => out.push_str(&format!(" {} MB", mb(c))),
            (Some(c), Some(t), unit) => {
                out.push_str(&format!(" {c}/{t}"));
                if let Some(u) = unit {
                    out.push_str(&format!(" {u}"));
                }
            }
            _ => {}
        }
        out.push_str(&format!("  {}", elapsed(self.elapsed_s)));
        out
    }
}

/// Bytes as megabytes (10^6) with one decimal.
fn mb(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1_000_000.0)
}

/// `45s`, `2m`, `1m 20s`.
fn elapsed(secs: u64) -> String {
    let (m, s) = (secs / 60, secs % 60);
    match m {
        0 => format!("{s}s"),
        m if s == 0 => format!("{m}m"),
        m => format!("{m}m {s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pull(phase: &str, current: u64, total: Option<u64>, percent: Option<f64>) -> Progress {
        Progress {
            task: "pull".into(),
            phase: phase.into(),
            target: Some("postgres:16".into()),
            current: Some(current),
            total,
            unit: Some("bytes".into()),
            percent,
            elapsed_s: 3,
        }
    }

    #[test]
    fn the_line_says_bytes_percent_and_time() {
        assert_eq!(
            pull("downloading", 61_200_000, Some(145_300_000), Some(42.1)).text(),
            "pulling postgres:16 (downloading)  42% 61.2/145.3 MB  3s"
        );
        assert_eq!(
            pull("downloading", 1_000_000, None, None).text(),
            "pulling postgres:16 (downloading) 1.0 MB  3s"
        );
        let op = Progress {
            task: "operation".into(),
            phase: "BUILD_IN_PROGRESS".into(),
            target: None,
            current: None,
            total: None,
            unit: None,
            percent: None,
            elapsed_s: 80,
        };
        assert_eq!(op.text(), "BUILD_IN_PROGRESS  1m 20s");
    }

    #[test]
    fn absent_numbers_are_left_out_of_the_json() {
        let op = Progress {
            task: "operation".into(),
            phase: "provisioning".into(),
            target: None,
            current: None,
            total: None,
            unit: None,
            percent: None,
            elapsed_s: 5,
        };
        let json = serde_json::to_value(&op).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"task": "operation", "phase": "provisioning", "elapsed_s": 5})
        );
        let back: Progress = serde_json::from_value(json).expect("back");
        assert_eq!(back, op);
    }
}
