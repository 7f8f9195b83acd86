//! Probes: http (status and body), tcp, exec, a hanging probe, liveness restarts.

use crate::support::*;
use kinfra_core::config::{Dur, PortSpec, ProbeConfig, StatusRange, TcpTarget};
use kinfra_core::state::{Health, ServiceState};

const SERVER: &str = r#"
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = os.path.exists("ready")
        body = b"all ok" if ok else b"not yet"
        self.send_response(200 if ok else 503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

fn fast(p: ProbeConfig) -> ProbeConfig {
    ProbeConfig {
        interval: Dur::from_millis(50),
        timeout: Dur::from_millis(500),
        ..p
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_probe_checks_status_and_body() {
    let p = Project::new();
    p.write("server.py", SERVER);
    let mut svc = sh("exec python3 server.py");
    svc.port = Some(PortSpec::Auto);
    svc.health = Some(fast(ProbeConfig {
        http: Some("/healthz".into()),
        status: StatusRange { min: 200, max: 299 },
        body: Some("ok".into()),
        ..ProbeConfig::default()
    }));
    let s = p.start(&services(vec![("web", svc)])).await;
    expect_state(&s, "web", ServiceState::Starting, SECS(5)).await;
    // 503 keeps it starting, and the reason is shown after failure_threshold.
    assert!(
        wait_for(SECS(10), || status_of(&s, "web")
            .status_message
            .contains("HTTP 503"))
        .await,
        "{:#?}",
        status_of(&s, "web")
    );
    assert_eq!(status_of(&s, "web").health, Health::Unhealthy);
    std::fs::write(p.path().join("ready"), "").unwrap_or_else(|e| panic!("{e}"));
    expect_state(&s, "web", ServiceState::Running, SECS(10)).await;
    assert_eq!(status_of(&s, "web").health, Health::Healthy);
    s.shutdown(SECS(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_probe_body_mismatch_and_full_url() {
    let p = Project::new();
    p.write("server.py", SERVER);
    std::fs::write(p.path().join("ready"), "").unwrap_or_else(|e| panic!("{e}"));
    let mut server = sh("exec python3 server.py");
    server.port = Some(PortSpec::Auto);
    let s = p.start(&services(vec![("server", server)])).await;
    let port = s.port_of("server").unwrap_or(0);
    let mut wrong = sh("exec sleep 30");
    wrong.health = Some(fast(ProbeConfig {
        http: Some(format!("http://127.0.0.1:{port}/")),
        body: Some("banana".into()),
        failure_threshold: 1,
        ..ProbeConfig::default()
    }));
    let mut right = sh("exec sleep 30");
    right.health = Some(fast(ProbeConfig {
        http: Some(format!("http://127.0.0.1:{port}/")),
        body: Some("all ok".into()),
        ..ProbeConfig::default()
    }));
    let mut list = services(vec![("wrong", wrong), ("right", right)]);
    list.insert("server".into(), {
        let mut c = sh("exec python3 server.py");
        c.port = Some(PortSpec::Auto);
        c
    });
    s.apply(&list).await.unwrap_or_else(|e| panic!("{e}"));
    expect_state(&s, "right", ServiceState::Running, SECS(10)).await;
    assert!(
        wait_for(SECS(10), || status_of(&s, "wrong")
            .status_message
            .contains("does not contain `banana`"))
        .await,
        "{:#?}",
        status_of(&s, "wrong")
    );
    assert_eq!(state_of(&s, "wrong"), ServiceState::Starting);
    s.shutdown(SECS(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_exec_probes() {
    let p = Project::new();
    let mut tcp = sh("sleep 0.3; exec python3 -m http.server --bind 127.0.0.1 $PORT");
    tcp.port = Some(PortSpec::Auto);
    tcp.health = Some(fast(ProbeConfig {
        tcp: Some(TcpTarget::OwnPort(true)),
        ..ProbeConfig::default()
    }));
    let mut exec = sh("exec sleep 30");
    exec.health = Some(fast(ProbeConfig {
        exec: Some("test -f exec-ready".into()),
        failure_threshold: 1,
        ..ProbeConfig::default()
    }));
    let s = p.start(&services(vec![("tcp", tcp), ("exec", exec)])).await;
    expect_state(&s, "tcp", ServiceState::Running, SECS(10)).await;
    assert!(
        wait_for(SECS(5), || status_of(&s, "exec").health
            == Health::Unhealthy)
        .await
    );
    assert_eq!(state_of(&s, "exec"), ServiceState::Starting);
    std::fs::write(p.path().join("exec-ready"), "").unwrap_or_else(|e| panic!("{e}"));
    expect_state(&s, "exec", ServiceState::Running, SECS(5)).await;
    s.shutdown(SECS(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_probe_times_out_and_others_keep_working() {
    let p = Project::new();
    let mut hang = sh("exec sleep 30");
    hang.health = Some(ProbeConfig {
        exec: Some("echo $$$$ >> probe.pids; exec sleep 30".into()),
        timeout: Dur::from_millis(200),
        interval: Dur::from_millis(50),
        failure_threshold: 2,
        ..ProbeConfig::default()
    });
    let s = p
        .start(&services(vec![
            ("hang", hang),
            ("other", sh("exec sleep 30")),
        ]))
        .await;
    expect_state(&s, "other", ServiceState::Running, SECS(5)).await;
    assert!(
        wait_for(SECS(5), || status_of(&s, "hang")
            .status_message
            .contains("timed out after 200ms"))
        .await,
        "{:#?}",
        status_of(&s, "hang")
    );
    // Timed-out probe commands are killed.
    let pids: Vec<i32> = std::fs::read_to_string(p.path().join("probe.pids"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert!(pids.len() >= 2);
    assert!(
        wait_for(SECS(2), || !alive(pids[0])).await,
        "probe process not killed"
    );
    s.shutdown(SECS(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_liveness_probe_restarts_the_service() {
    let p = Project::new();
    // It exits 0 on SIGTERM: a liveness failure still counts as a failure for on-failure.
    let mut svc = sh("trap 'exit 0' TERM; while true; do sleep 0.05; done");
    svc.liveness = Some(fast(ProbeConfig {
        exec: Some("test ! -f dead".into()),
        failure_threshold: 2,
        ..ProbeConfig::default()
    }));
    let s = p.start(&services(vec![("live", svc)])).await;
    expect_state(&s, "live", ServiceState::Running, SECS(5)).await;
    let pid = status_of(&s, "live").pid;
    std::fs::write(p.path().join("dead"), "").unwrap_or_else(|e| panic!("{e}"));
    assert!(
        wait_for(SECS(10), || {
            let st = status_of(&s, "live");
            st.restarts >= 1 && st.pid.is_some() && st.pid != pid
        })
        .await,
        "{:#?}",
        status_of(&s, "live")
    );
    assert!(
        messages(&s, "live")
            .iter()
            .any(|m| m.starts_with("Liveness probe failed"))
    );
    s.shutdown(SECS(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_probe_output_is_reported_and_failing_code_shown() {
    let p = Project::new();
    let mut svc = sh("exec sleep 30");
    svc.health = Some(fast(ProbeConfig {
        exec: Some("echo not ready: $${REASON}; exit 3".into()),
        failure_threshold: 1,
        ..ProbeConfig::default()
    }));
    svc.env.insert("REASON".into(), "warming up".into());
    let s = p.start(&services(vec![("e", svc)])).await;
    assert!(
        wait_for(SECS(5), || status_of(&s, "e").status_message
            == "Readiness probe failing: exited with code 3: not ready: warming up")
        .await,
        "{:#?}",
        status_of(&s, "e")
    );
    s.shutdown(SECS(5)).await;
}
