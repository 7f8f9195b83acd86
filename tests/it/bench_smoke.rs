//! The benchmark harness (`bench/run`) runs in its smallest mode against this build of kinfra
//! and writes well-formed results. No performance figure is asserted: only that every section
//! ran, peers included, and produced positive numbers. The peers (wrk, nginx, Caddy,
//! supervisord) must be installed (`./x test` does); `--smoke` installs nothing. The providers
//! section (http-api resources against the harness's fake API) must poll every resource, and a
//! partial run (`--only providers`) must keep the other sections of the previous results.

use crate::support::{kill, kinfra_bin};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn positive(v: &serde_json::Value, path: &str) -> f64 {
    let mut cur = v;
    for key in path.split('.') {
        cur = &cur[key];
    }
    let n = cur
        .as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number: {cur}"));
    assert!(n > 0.0, "{path} = {n}, expected > 0");
    n
}

/// Fails the test naming the Debian package of each peer the harness needs and cannot find
/// (bench/run looks on PATH and in /usr/sbin).
fn require_peers() {
    let missing: Vec<String> = [
        ("wrk", "wrk"),
        ("nginx", "nginx-light"),
        ("caddy", "caddy"),
        ("supervisord", "supervisor"),
    ]
    .into_iter()
    .filter(|(command, _)| {
        let on_path = std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(command).is_file()));
        !on_path && !std::path::Path::new("/usr/sbin").join(command).is_file()
    })
    .map(|(command, package)| format!("{command} (Debian package {package})"))
    .collect();
    assert!(
        missing.is_empty(),
        "the bench smoke test compares kinfra with its peers; missing: {}. \
         Install with apt-get install wrk nginx-light caddy supervisor, or run ./x test",
        missing.join(", ")
    );
}

/// Runs `bench/run --smoke` with `extra` arguments, writing under `out` (its stderr to
/// `out/harness.log`); kills it after a bound that catches a hang.
fn run_harness(out: &std::path::Path, extra: &[&str], what: &str) -> std::process::ExitStatus {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/run");
    let mut child = Command::new("python3")
        .arg(script)
        .args(["--smoke", "--no-install", "--kinfra", kinfra_bin(), "--out"])
        .arg(out)
        .args(extra)
        .env_remove("KINFRA_BIN")
        .env_remove("BENCH_LOAD")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // To a file, not a pipe: nobody reads a pipe until the harness exits.
        .stderr(std::fs::File::create(out.join("harness.log")).expect("harness log"))
        .spawn()
        .expect("run bench/run");
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for bench/run") {
            return status;
        }
        if started.elapsed() > Duration::from_secs(300) {
            // The harness kills what it started when it gets SIGTERM.
            kill(child.id(), libc::SIGTERM);
            let _ = child.wait();
            panic!("{what} did not finish within 300 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn harness_smoke_mode_writes_well_formed_results() {
    require_peers();
    let out = tempfile::tempdir().expect("temp dir");
    let log = out.path().join("harness.log");
    let status = run_harness(out.path(), &[], "bench/run --smoke");
    assert!(
        status.success(),
        "bench/run --smoke failed: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    let text =
        std::fs::read_to_string(out.path().join("results/latest.json")).expect("latest.json");
    let r: serde_json::Value = serde_json::from_str(&text).expect("well-formed JSON");
    assert_eq!(r["mode"], "smoke");
    // git_commit is null when the sources are not a git checkout.
    assert!(r["machine"].get("git_commit").is_some(), "{}", r["machine"]);
    for key in ["date", "kernel", "cpu"] {
        assert!(
            r["machine"][key].is_string(),
            "machine.{key}: {}",
            r["machine"]
        );
    }
    positive(&r, "machine.cpus");
    positive(&r, "duration_s");

    // Proxy: kinfra against nginx and Caddy, all driven by wrk.
    assert!(r["proxy"]["skipped"].is_null(), "proxy: {}", r["proxy"]);
    for target in ["direct", "kinfra", "nginx", "caddy"] {
        positive(&r, &format!("proxy.sizes.1k.targets.{target}.rps"));
        positive(&r, &format!("proxy.sizes.1k.targets.{target}.requests"));
        positive(
            &r,
            &format!("proxy.sizes.1k.targets.{target}.cpu_s_per_100k"),
        );
    }
    assert!(r["proxy"]["sizes"]["1k"]["ratios"]["kinfra/nginx"]["rps"].is_number());

    // Supervisor, logs and boot for kinfra and for supervisord.
    positive(&r, "supervisor.crash_respawn.kinfra.p50_ms");
    positive(&r, "supervisor.crash_respawn.kinfra.respawned");
    positive(&r, "supervisor.boot.10.kinfra.all_running_ms_median");
    positive(&r, "supervisor.idle.10.kinfra.rss_mib");
    positive(&r, "logs.kinfra.lines_per_s");
    positive(&r, "logs.kinfra.captured");
    positive(&r, "boot.kinfra.p50_ms");
    for peer in ["supervisord", "nginx", "caddy"] {
        positive(&r, &format!("boot.{peer}.p50_ms"));
    }
    positive(&r, "supervisor.boot.10.supervisord.all_running_ms_median");
    positive(&r, "supervisor.crash_respawn.supervisord.p50_ms");
    assert!(
        r["supervisor"]["ratios"]["crash_respawn_p50"].is_number(),
        "{}",
        r["supervisor"]
    );

    // Providers: the observe loop of http-api resources against the harness's fake API.
    let resources = positive(&r, "providers.unlimited.resources");
    for case in ["unlimited", "rate_limited"] {
        positive(&r, &format!("providers.{case}.requests"));
        positive(&r, &format!("providers.{case}.rps"));
        positive(&r, &format!("providers.{case}.expected_rps"));
        positive(&r, &format!("providers.{case}.max_in_1s"));
        positive(&r, &format!("providers.{case}.period_median_s"));
        positive(&r, &format!("providers.{case}.rss_mib"));
        assert!(
            r["providers"][case]["cpu_percent"].is_number(),
            "{}",
            r["providers"][case]
        );
        let p = &r["providers"][case];
        assert_eq!(p["non_200"], 0, "the fake refused requests: {p}");
        assert_eq!(
            p["running_at_end"].as_f64(),
            Some(resources),
            "not every resource was running: {p}"
        );
        assert_eq!(
            p["resources_polled"].as_f64(),
            Some(resources),
            "not every resource was polled in the window: {p}"
        );
    }
    assert_eq!(r["providers"]["rate_limited"]["rate_limit"], "5/s");
    positive(&r, "providers.baseline.rss_mib");
    // Every section names the run that measured it.
    for section in ["proxy", "supervisor", "logs", "boot", "sse", "providers"] {
        assert_eq!(
            r[section]["run"]["mode"], "smoke",
            "{section}: {}",
            r[section]
        );
        assert!(r[section]["run"]["date"].is_string(), "{section}");
    }

    let md = std::fs::read_to_string(out.path().join("RESULTS.md")).expect("RESULTS.md");
    assert!(md.starts_with("# Benchmark results"), "{md}");
    assert!(
        md.contains("## Supervisor") && md.contains("## Boot") && md.contains("## Providers"),
        "{md}"
    );

    // A partial run replaces its own sections and keeps the others, each with its run.
    let status = run_harness(
        out.path(),
        &["--only", "providers"],
        "bench/run --smoke --only providers",
    );
    assert!(
        status.success(),
        "bench/run --smoke --only providers failed: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let text =
        std::fs::read_to_string(out.path().join("results/latest.json")).expect("latest.json");
    let merged: serde_json::Value = serde_json::from_str(&text).expect("well-formed JSON");
    assert_eq!(
        merged["kept_from_previous"],
        serde_json::json!(["proxy", "supervisor", "logs", "boot", "sse"]),
        "{}",
        merged["kept_from_previous"]
    );
    assert_eq!(
        merged["proxy"], r["proxy"],
        "the proxy section was not kept as it was"
    );
    assert_ne!(
        merged["providers"]["run"], r["providers"]["run"],
        "the providers section was not measured again"
    );
    positive(&merged, "providers.unlimited.requests");
    let md = std::fs::read_to_string(out.path().join("RESULTS.md")).expect("RESULTS.md");
    assert!(
        md.contains("## Proxy")
            && md.contains("## Providers")
            && md.contains("kept from earlier runs"),
        "{md}"
    );
}
