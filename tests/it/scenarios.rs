//! Whole-runtime scenarios: a five-service project, kinfra killed with SIGKILL, following logs,
//! CPU and memory sampled once someone reads status.

use crate::support::{
    Project, alive, http_get, kill, pids_tagged, stderr, stdout, unique_tag, wait_for,
};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn status(p: &Project) -> serde_json::Value {
    let out = p.run(&["runtime", "status", "--json"]);
    assert!(out.status.success(), "status: {}", stderr(&out));
    serde_json::from_str(&stdout(&out)).expect("status JSON")
}

/// The example project comes up in dependency order; the crashing service ends `failed` by
/// the crash-loop guard while the others keep running.
#[test]
fn five_services_with_dependencies_probes_and_a_crasher() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/five-services/kinfra.toml"
    );
    let text = std::fs::read_to_string(example).expect("example config");
    let tag = unique_tag("five");
    let p = Project::with_config(&format!(
        "{}\n[env]\nKINFRA_TEST_TAG = \"{tag}\"\n",
        text.replace("127.0.0.1:9000", "127.0.0.1:0")
    ));
    let mut up = p.up(&[], &[]);
    let report = wait_for(Duration::from_secs(60), "the project to settle", || {
        let v = status(&p);
        let s = &v["services"];
        let settled = s["db"]["health"] == "healthy"
            && s["migrate"]["state"] == "completed"
            && s["api"]["health"] == "healthy"
            && s["worker"]["state"] == "running"
            && s["flaky"]["state"] == "failed";
        settled.then_some(v)
    });
    let s = &report["services"];
    assert_eq!(s["migrate"]["last_exit"]["code"], 0);
    assert_eq!(s["flaky"]["last_exit"]["code"], 3);
    assert!(
        s["flaky"]["restarts"].as_u64().unwrap_or(0) >= 3,
        "{}",
        s["flaky"]
    );
    assert!(
        s["flaky"]["status_message"]
            .as_str()
            .unwrap_or("")
            .to_lowercase()
            .contains("crash"),
        "{}",
        s["flaky"]
    );
    assert_eq!(report["stats"]["error"], 1);

    // Order: the migration ran against the healthy db, the API came after it, the worker
    // after the API. The foreground output shows the interpolated ports.
    let lines = up.lines();
    let pos = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle:?} not in output:\n{}", lines.join("\n")))
    };
    let db_port = s["db"]["port"].as_u64().expect("db port");
    assert!(pos(&format!("migrating against port {db_port}")) > pos("db: healthy"));
    assert!(pos("api: starting") > pos("migrations applied"));
    assert!(pos("worker: running") > pos("api: healthy"));
    up.wait_for_line(Duration::from_secs(5), "flaky: crash loop");

    // A manual start clears the guard and tries again.
    let out = p.run(&["runtime", "start", "flaky"]);
    assert!(out.status.success(), "{}", stderr(&out));

    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
    wait_for(Duration::from_secs(5), "nothing left", || {
        pids_tagged(&tag).is_empty().then_some(())
    });
}

/// kinfra killed with SIGKILL: its children die with it (parent-death signal), a process that
/// escaped into its own session is killed by the guardian, and the next `runtime up` starts
/// afresh.
#[test]
fn sigkill_of_kinfra_leaves_nothing_after_next_up() {
    let tag = unique_tag("sigkill");
    let p = Project::with_config(&format!(
        "[env]\nKINFRA_TEST_TAG = \"{tag}\"\n[dashboard]\nlisten = \"127.0.0.1:0\"\n\
         [services.plain]\ncommand = \"exec sleep 1000\"\n\
         [services.escaper]\ncommand = \"setsid sleep 1000 & echo escaped; exec sleep 1000\"\n"
    ));
    let mut up = p.up(&[], &[]);
    up.wait_for_line(Duration::from_secs(20), "escaper | escaped");
    let before = wait_for(Duration::from_secs(20), "three processes", || {
        let pids = pids_tagged(&tag);
        (pids.len() >= 3).then_some(pids)
    });
    up.signal(libc::SIGKILL);
    let _ = up.wait_exit(Duration::from_secs(10));
    // Direct children go with kinfra.
    wait_for(Duration::from_secs(5), "direct children gone", || {
        (pids_tagged(&tag).len() < before.len()).then_some(())
    });
    // The one that escaped into its own session is killed too, by the supervisor's guardian
    // (were there no guardian, the next start would stop it: the supervisor's tests cover
    // that). Every process of the killed instance is gone, then the next start starts afresh.
    for pid in &before {
        wait_for(
            Duration::from_secs(10),
            "a process of the killed kinfra stopped",
            || (!alive(*pid)).then_some(()),
        );
    }
    let mut up2 = p.up(&[], &[]);
    up2.wait_for_line(Duration::from_secs(20), "escaper | escaped");
    up2.signal(libc::SIGTERM);
    assert!(up2.wait_exit(Duration::from_secs(30)).success());
    wait_for(Duration::from_secs(5), "nothing left", || {
        pids_tagged(&tag).is_empty().then_some(())
    });
}

/// `runtime logs SERVICE -f -n N` prints the last N lines, then new ones as they come.
#[test]
fn logs_follow_streams_new_lines() {
    let tag = unique_tag("follow");
    let p = Project::with_config(&format!(
        "[env]\nKINFRA_TEST_TAG = \"{tag}\"\n[dashboard]\nlisten = \"127.0.0.1:0\"\n\
         [services.talker]\ncommand = \"i=0; while true; do i=$((i+1)); echo line $i; sleep 0.1; done\"\n\
         [services.quiet]\ncommand = \"echo quiet-line; exec sleep 1000\"\n"
    ));
    let mut up = p.up(&[], &[]);
    up.wait_for_line(Duration::from_secs(20), "talker | line 5");
    let mut follower = Command::new(crate::support::kinfra_bin())
        .args([
            "runtime", "logs", "talker", "-f", "-n", "2", "--color", "never",
        ])
        .current_dir(p.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn follower");
    let fpid = follower.id();
    let out = follower.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut got = Vec::new();
    while got.len() < 12 {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => got.push(line),
            Err(_) => break,
        }
    }
    kill(fpid, libc::SIGINT);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let ended_by_sigint = loop {
        if let Some(status) = follower.try_wait().expect("try_wait") {
            break status.success();
        }
        if std::time::Instant::now() > deadline {
            kill(fpid, libc::SIGKILL);
            let _ = follower.wait();
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        ended_by_sigint,
        "the follower did not end cleanly on Ctrl-C"
    );
    assert!(got.len() >= 12, "follower printed only {got:?}");
    assert!(got.iter().all(|l| l.starts_with("talker")), "{got:?}");
    // Consecutive line numbers: no line lost or repeated at the backlog/live seam.
    let numbers: Vec<u64> = got
        .iter()
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "gap or repeat in {numbers:?}"
    );
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
}

/// CPU and memory are sampled on demand: a status read starts sampling, and `/__status__`
/// then shows both for a running service (a busy one shows its CPU) within a bounded time
/// of the first read. Nothing is asserted about timing: the bound only catches a sampler that
/// never wakes.
#[test]
fn status_shows_cpu_and_memory_once_someone_reads_it() {
    let tag = unique_tag("sampled");
    let p = Project::with_config(&format!(
        "[env]\nKINFRA_TEST_TAG = \"{tag}\"\n[dashboard]\nlisten = \"127.0.0.1:0\"\n\
         [services.busy]\ncommand = \"while :; do :; done\"\n\
         [services.idle]\ncommand = \"exec sleep 1000\"\n"
    ));
    let mut up = p.up(&[], &[]);
    let addr = up.dashboard_addr();
    let read = || -> serde_json::Value {
        let (code, body) = http_get(&addr, "/__status__").expect("GET /__status__");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status JSON")
    };
    let sampled = wait_for(Duration::from_secs(30), "CPU and memory in status", || {
        let v = read();
        let s = &v["services"];
        let running = s["busy"]["state"] == "running" && s["idle"]["state"] == "running";
        let memory = |n: &str| s[n]["memory_bytes"].as_u64().unwrap_or(0) > 0;
        let busy_cpu = s["busy"]["cpu_percent"].as_f64().unwrap_or(0.0) > 1.0;
        (running && memory("busy") && memory("idle") && busy_cpu).then_some(v)
    });
    assert!(sampled["services"]["idle"]["cpu_percent"].is_number());
    // `runtime status` (the control socket) reads the same samples.
    let out = p.run(&["runtime", "status", "--json"]);
    assert!(out.status.success(), "status: {}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("status JSON");
    assert!(v["services"]["busy"]["memory_bytes"].as_u64().unwrap_or(0) > 0);
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
    wait_for(Duration::from_secs(5), "nothing left", || {
        pids_tagged(&tag).is_empty().then_some(())
    });
}
