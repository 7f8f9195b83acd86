//! `GET /metrics`: the runtime's state in Prometheus text format.

use kinfra_core::metrics::label_value as label;
use kinfra_core::state::{Health, ServiceState};
use kinfra_core::status::StatusReport;
use std::fmt::Write;

const STATES: &[ServiceState] = &[
    ServiceState::Pending,
    ServiceState::Starting,
    ServiceState::Running,
    ServiceState::Stopping,
    ServiceState::Stopped,
    ServiceState::Backoff,
    ServiceState::Failed,
    ServiceState::Completed,
    ServiceState::Maintenance,
    ServiceState::Sleeping,
];

/// Renders the metrics page. `next_seq` is the seq the next event will get; `extra` is
/// appended as it is (metrics of other subsystems, already in the text format).
pub fn render(report: &StatusReport, next_seq: u64, extra: &str) -> String {
    let mut out = String::with_capacity(256 + report.services.len() * 512);
    let _ = writeln!(
        out,
        "# HELP kinfra_services Number of services and resources."
    );
    let _ = writeln!(out, "# TYPE kinfra_services gauge");
    let _ = writeln!(out, "kinfra_services {}", report.stats.total);
    let _ = writeln!(
        out,
        "# HELP kinfra_events_total Events emitted since the runtime started."
    );
    let _ = writeln!(out, "# TYPE kinfra_events_total counter");
    let _ = writeln!(out, "kinfra_events_total {}", next_seq.saturating_sub(1));

    let _ = writeln!(
        out,
        "# HELP kinfra_service_state Current lifecycle state (1 for the current one)."
    );
    let _ = writeln!(out, "# TYPE kinfra_service_state gauge");
    for (name, s) in &report.services {
        for state in STATES {
            let _ = writeln!(
                out,
                "kinfra_service_state{{service=\"{}\",kind=\"{}\",state=\"{}\"}} {}",
                label(name),
                label(&s.kind),
                state.as_str(),
                u8::from(s.state == *state)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP kinfra_service_up 1 when the service is running."
    );
    let _ = writeln!(out, "# TYPE kinfra_service_up gauge");
    for (name, s) in &report.services {
        let _ = writeln!(
            out,
            "kinfra_service_up{{service=\"{}\"}} {}",
            label(name),
            u8::from(s.state == ServiceState::Running)
        );
    }
    let _ = writeln!(
        out,
        "# HELP kinfra_service_healthy Readiness probe result: 1 healthy, 0 unhealthy, -1 unknown."
    );
    let _ = writeln!(out, "# TYPE kinfra_service_healthy gauge");
    for (name, s) in &report.services {
        let v = match s.health {
            Health::Healthy => 1,
            Health::Unhealthy => 0,
            Health::Unknown => -1,
        };
        let _ = writeln!(
            out,
            "kinfra_service_healthy{{service=\"{}\"}} {v}",
            label(name)
        );
    }
    let _ = writeln!(
        out,
        "# HELP kinfra_service_restarts_total Restarts since kinfra started managing it."
    );
    let _ = writeln!(out, "# TYPE kinfra_service_restarts_total counter");
    for (name, s) in &report.services {
        let _ = writeln!(
            out,
            "kinfra_service_restarts_total{{service=\"{}\"}} {}",
            label(name),
            s.restarts
        );
    }
    let _ = writeln!(
        out,
        "# HELP kinfra_service_uptime_seconds Time since the current process started."
    );
    let _ = writeln!(out, "# TYPE kinfra_service_uptime_seconds gauge");
    for (name, s) in &report.services {
        let _ = writeln!(
            out,
            "kinfra_service_uptime_seconds{{service=\"{}\"}} {}",
            label(name),
            s.uptime_s.unwrap_or(0)
        );
    }
    let _ = writeln!(
        out,
        "# HELP kinfra_service_cpu_percent CPU of the service's process tree, percent of one core."
    );
    let _ = writeln!(out, "# TYPE kinfra_service_cpu_percent gauge");
    for (name, s) in &report.services {
        if let Some(cpu) = s.cpu_percent {
            let _ = writeln!(
                out,
                "kinfra_service_cpu_percent{{service=\"{}\"}} {cpu}",
                label(name)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP kinfra_service_memory_bytes Resident memory of the service's process tree."
    );
    let _ = writeln!(out, "# TYPE kinfra_service_memory_bytes gauge");
    for (name, s) in &report.services {
        if let Some(mem) = s.memory_bytes {
            let _ = writeln!(
                out,
                "kinfra_service_memory_bytes{{service=\"{}\"}} {mem}",
                label(name)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP kinfra_resource_last_sync_ok 1 when the resource's last sync with its provider worked."
    );
    let _ = writeln!(out, "# TYPE kinfra_resource_last_sync_ok gauge");
    for (name, s) in &report.services {
        if let Some(sync) = &s.last_sync {
            let _ = writeln!(
                out,
                "kinfra_resource_last_sync_ok{{resource=\"{}\"}} {}",
                label(name),
                u8::from(sync.ok)
            );
        }
    }
    out.push_str(extra);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kinfra_core::status::ServiceStatus;
    use std::collections::BTreeMap;

    #[test]
    fn renders_one_hot_state_and_escapes_labels() {
        let s = ServiceStatus {
            kind: "process".into(),
            state: ServiceState::Backoff,
            health: Health::Unhealthy,
            status_message: String::new(),
            port: None,
            pid: None,
            uptime_s: Some(7),
            uptime: None,
            restarts: 4,
            last_exit: None,
            logs: vec![],
            cpu_percent: None,
            memory_bytes: None,
            last_sync: None,
            provider_state: None,
            sleep: None,
            progress: None,
        };
        let report = StatusReport::new("p", BTreeMap::from([("we\"ird".to_string(), s)]));
        let text = render(&report, 11, "");
        assert!(text.contains("kinfra_events_total 10\n"));
        assert!(text.contains(
            "kinfra_service_state{service=\"we\\\"ird\",kind=\"process\",state=\"backoff\"} 1\n"
        ));
        assert!(text.contains(
            "kinfra_service_state{service=\"we\\\"ird\",kind=\"process\",state=\"running\"} 0\n"
        ));
        assert!(text.contains("kinfra_service_restarts_total{service=\"we\\\"ird\"} 4\n"));
        assert!(text.contains("kinfra_service_healthy{service=\"we\\\"ird\"} 0\n"));
        assert!(text.contains("kinfra_service_uptime_seconds{service=\"we\\\"ird\"} 7\n"));
        assert!(text.contains(
            "kinfra_service_state{service=\"we\\\"ird\",kind=\"process\",state=\"sleeping\"} 0\n"
        ));
        assert!(
            !text.contains("kinfra_resource_last_sync_ok{"),
            "only for resources that sync"
        );
    }

    #[test]
    fn last_sync_is_a_gauge_per_resource_that_syncs() {
        let mk = |ok| ServiceStatus {
            kind: "http-api".into(),
            state: ServiceState::Running,
            health: Health::Unknown,
            status_message: String::new(),
            port: None,
            pid: None,
            uptime_s: None,
            uptime: None,
            restarts: 0,
            last_exit: None,
            logs: vec![],
            cpu_percent: None,
            memory_bytes: None,
            last_sync: Some(kinfra_core::status::LastSync {
                at: "2026-01-01T00:00:00Z".into(),
                ok,
                error: (!ok).then(|| "HTTP 500".into()),
            }),
            provider_state: Some("ACTIVE".into()),
            sleep: None,
            progress: None,
        };
        let report = StatusReport::new(
            "p",
            BTreeMap::from([
                ("good".to_string(), mk(true)),
                ("bad".to_string(), mk(false)),
            ]),
        );
        let text = render(&report, 1, "");
        assert!(text.contains("kinfra_resource_last_sync_ok{resource=\"good\"} 1\n"));
        assert!(text.contains("kinfra_resource_last_sync_ok{resource=\"bad\"} 0\n"));
    }
}
