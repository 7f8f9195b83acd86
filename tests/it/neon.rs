//! The `neon` provider through `kinfra runtime up`, against the stateful Neon fake behind
//! Prism (crates/kinfra-cloud's harness): a dependent service waits for the endpoint to be
//! active and gets `${resources.db.url}`; `runtime stop db` suspends it; an endpoint
//! suspended outside kinfra shows sleeping, and running again once woken there; `runtime down` (on_down = keep) leaves it alone;
//! `kinfra providers show neon` lists every command with its parameters.

#[allow(dead_code)]
#[path = "../../crates/kinfra-cloud/tests/support/neon_fake.rs"]
pub(crate) mod neon_fake;

// The harness, included once in main.rs; the fake reaches it as `super::`.
use crate::{fake_http, prism};

use crate::support::{Project, pids_tagged, stderr, stdout, unique_tag, wait_for};
use neon_fake::{PASSWORD, TOKEN, neon};
use std::time::Duration;

fn config(tag: &str, base_url: &str, project: &str, endpoint: &str) -> String {
    format!(
        "[project]\nname = \"neon-it\"\n[env]\nKINFRA_TEST_TAG = \"{tag}\"\n\
         [dashboard]\nlisten = \"127.0.0.1:0\"\n[proxy]\nenabled = false\n\
         [providers.neon]\ntoken = \"{TOKEN}\"\nbase_url = \"{base_url}\"\n\
         [resources.db]\nprovider = \"neon\"\nproject_id = \"{project}\"\n\
         endpoint_id = \"{endpoint}\"\ninterval = \"300ms\"\n\
         [services.app]\ncommand = \"env > app.env && exec sleep 1000\"\n\
         env = {{ DATABASE_URL = \"${{resources.db.url}}\" }}\n\
         depends_on = {{ db = \"healthy\" }}\n"
    )
}

fn state(p: &Project, name: &str) -> serde_json::Value {
    crate::cli::status_json(p)["services"][name].clone()
}

/// Waits (bounded) until `name` is in state `want`; the failure shows the status and the
/// runtime's output.
fn wait_state(p: &Project, up: &crate::support::Up, name: &str, want: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = crate::cli::status_json(p);
        let s = status["services"][name].clone();
        if s["state"] == want {
            return s;
        }
        if std::time::Instant::now() > deadline {
            panic!("{name} never {want}: {status:#}\n{}", up.lines().join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_dependent_waits_for_the_active_endpoint_gets_its_url_and_stop_suspends_it() {
    let (prism, fake) = neon();
    let (project, endpoint, _) = fake.project("runtime", "idle");
    // A start operation slow enough to see the dependent wait.
    fake.with(&project, |p| {
        p.operation_time = Some(Duration::from_secs(2))
    });
    let tag = unique_tag("neon");
    let p = Project::with_config(&config(&tag, &prism.url, &project, &endpoint));

    // `kinfra plan` first: the idle endpoint would be resumed with its start call, not sent.
    let out = p.run(&["plan", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON plan");
    let db = plan["resources"]
        .as_array()
        .and_then(|r| r.iter().find(|e| e["name"] == "db"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(db["action"], "resume", "{plan}");
    assert_eq!(db["calls"][0]["method"], "POST", "{plan}");
    assert!(
        db["calls"][0]["url"].as_str().is_some_and(
            |u| u.ends_with(&format!("/projects/{project}/endpoints/{endpoint}/start"))
        ),
        "{plan}"
    );
    assert!(!stdout(&out).contains(TOKEN), "{plan}");
    assert_eq!(fake.state(&project, &endpoint), "idle", "plan started it");

    let mut up = p.up(&[], &[]);

    // While the endpoint starts, the dependent waits.
    wait_for(Duration::from_secs(30), "db starting, app pending", || {
        let status = crate::cli::status_json(&p);
        let db = &status["services"]["db"]["state"];
        let app = &status["services"]["app"];
        (db == "starting" && app["state"] == "pending").then_some(())
    });
    assert_ne!(fake.state(&project, &endpoint), "active");
    wait_state(&p, &up, "db", "running");
    let pid = wait_for(Duration::from_secs(30), "app running", || {
        crate::cli::running_pid(&p, "app")
    });
    assert!(pid > 0);
    assert_eq!(fake.state(&project, &endpoint), "active");
    let written = wait_for(Duration::from_secs(10), "app.env", || {
        std::fs::read_to_string(p.path().join("app.env"))
            .ok()
            .filter(|t| t.contains("DATABASE_URL="))
    });
    let url = written
        .lines()
        .find_map(|l| l.strip_prefix("DATABASE_URL="))
        .expect("DATABASE_URL")
        .to_owned();
    assert!(
        url.starts_with("postgresql://neondb_owner:")
            && url.contains(PASSWORD)
            && url.contains(&endpoint),
        "{url}"
    );
    let db = state(&p, "db");
    assert_eq!(db["provider_state"], "active", "{db}");
    assert_eq!(db["last_sync"]["ok"], true, "{db}");

    // `runtime stop db` suspends the endpoint.
    let out = p.run(&["runtime", "stop", "db"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_state(&p, &up, "db", "stopped");
    assert_eq!(fake.state(&project, &endpoint), "idle");
    let suspends = |fake: &neon_fake::NeonFake| {
        fake.requests(&project)
            .iter()
            .filter(|r| r.contains("/suspend"))
            .count()
    };
    assert_eq!(suspends(fake), 1);

    // Started again, then suspended outside kinfra: it shows sleeping.
    let out = p.run(&["runtime", "start", "db"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_state(&p, &up, "db", "running");
    fake.set_state(&project, &endpoint, "idle");
    let db = wait_state(&p, &up, "db", "sleeping");
    assert_eq!(db["provider_state"], "idle", "{db}");
    // Woken by a connection (outside kinfra): observed and taken up again, no restart.
    fake.set_state(&project, &endpoint, "active");
    let db = wait_state(&p, &up, "db", "running");
    assert_eq!(db["restarts"], 0, "{db}");
    fake.set_state(&project, &endpoint, "idle");
    wait_state(&p, &up, "db", "sleeping");

    // Nothing kinfra shows holds the token, the password or the URL.
    let shown = format!(
        "{}\n{}\n{}",
        stdout(&p.run(&["runtime", "status", "--json"])),
        stdout(&p.run(&["runtime", "logs", "db"])),
        up.lines().join("\n")
    );
    for secret in [TOKEN, PASSWORD, url.as_str()] {
        assert!(!shown.contains(secret), "`{secret}` shown:\n{shown}");
    }

    // `runtime down` with on_down = keep leaves the endpoint as it is.
    fake.set_state(&project, &endpoint, "active");
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
    assert_eq!(suspends(fake), 1, "runtime down suspended a kept endpoint");
    assert_eq!(fake.state(&project, &endpoint), "active");
    assert!(pids_tagged(&tag).is_empty());
    prism.assert_clean(&project);
}

#[test]
fn providers_show_neon_lists_every_command_with_its_parameters() {
    let p = Project::new();
    let out = p.run(&["providers", "show", "neon", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let shown: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    let text = shown.to_string();
    let commands = shown["commands"].as_array().expect("commands");
    let by_id = |id: &str| {
        commands
            .iter()
            .find(|c| c["id"] == id)
            .unwrap_or_else(|| panic!("no {id} in {text}"))
    };
    let params = |id: &str| -> Vec<String> {
        by_id(id)["params"]
            .as_array()
            .expect("params")
            .iter()
            .filter_map(|p| p["name"].as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(params("create-branch"), ["name", "parent"]);
    assert!(params("list-branches").is_empty());
    assert_eq!(params("delete-branch"), ["name"]);
    assert_eq!(params("restore-branch"), ["name", "timestamp", "source"]);
    assert_eq!(params("set-suspend-timeout"), ["seconds"]);
    assert_eq!(by_id("delete-branch")["confirm"], true);
    assert!(commands.iter().all(|c| c["dry_run"] == true), "{text}");
    let out = p.run(&["providers", "show", "neon"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let human = stdout(&out);
    for word in [
        "create-branch",
        "list-branches",
        "delete-branch",
        "restore-branch",
        "set-suspend-timeout",
        "project_id",
        "endpoint_id",
        "timestamp",
    ] {
        assert!(human.contains(word), "{word} missing:\n{human}");
    }
}
