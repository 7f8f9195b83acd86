//! The `supabase` provider through `kinfra runtime up`, against the stateful Supabase fake
//! behind Prism (the Management API's own spec, `crates/kinfra-cloud/specs/supabase/`): a
//! project paused outside kinfra shows `stopped`, `on_down = "pause"` pauses it at `runtime
//! down` (and the default `keep` leaves it alone), a restore that ends in RESTORE_FAILED shows
//! `failed` with the reason; the token and the database password show nowhere.

#[allow(dead_code)]
#[path = "../../crates/kinfra-cloud/tests/support/supabase_fake.rs"]
mod supabase_fake;

// The harness, included once in main.rs; the fake reaches it as `super::`.
use crate::{fake_http, prism};

use crate::support::{Project, Up, http_get, stderr, stdout, wait_for};
use serde_json::Value;
use std::time::Duration;
use supabase_fake::{TOKEN, supabase};

const DB_PASSWORD: &str = "sb-root-pw-7Hq2";
const LIMIT: Duration = Duration::from_secs(90);

/// A project with one Supabase resource `db` on `project_ref`, the API at `base`.
fn project(base: &str, project_ref: &str, extra: &str) -> Project {
    Project::with_config(&format!(
        "[project]\nname = \"sb\"\n\
         [dashboard]\nlisten = \"127.0.0.1:0\"\n[proxy]\nenabled = false\n\
         [providers.supa]\nprovider = \"supabase\"\ntoken = \"{TOKEN}\"\nbase_url = \"{base}\"\n\
         [resources.db]\nprovider = \"supa\"\nproject_ref = \"{project_ref}\"\n\
         db_password = \"{DB_PASSWORD}\"\ninterval = \"200ms\"\n{extra}"
    ))
}

/// `/__status__`'s entry of `db`, and the whole body.
fn db(up: &Up) -> Option<(Value, String)> {
    let (code, body) = http_get(&up.dashboard_addr(), "/__status__").ok()?;
    let status: Value = serde_json::from_str(&body).ok()?;
    (code == 200).then(|| (status["services"]["db"].clone(), body))
}

fn wait_db(up: &Up, what: &str, cond: impl Fn(&Value) -> bool) -> (Value, String) {
    wait_for(LIMIT, what, || db(up).filter(|(d, _)| cond(d)))
}

fn assert_no_secret(up: &Up, body: &str) {
    let logs = up.lines().join("\n");
    for text in [body, logs.as_str()] {
        assert!(!text.contains(TOKEN), "the token shows:\n{text}");
        assert!(!text.contains(DB_PASSWORD), "the password shows:\n{text}");
    }
}

#[test]
fn a_project_paused_outside_kinfra_shows_stopped_and_keep_leaves_it_at_down() {
    let (prism, fake) = supabase();
    let r = fake.project("rootoutside", "ACTIVE_HEALTHY");
    let p = project(&prism.url, &r, "");
    let mut up = p.up(&[], &[]);
    let (running, _) = wait_db(&up, "db running and healthy", |d| {
        d["state"] == "running" && d["health"] == "healthy"
    });
    assert_eq!(running["kind"], "supabase", "{running}");
    assert_eq!(running["provider_state"], "ACTIVE_HEALTHY", "{running}");
    assert_eq!(running["status_message"], "ACTIVE_HEALTHY", "{running}");

    fake.set_status(&r, "INACTIVE");
    let (stopped, body) = wait_db(&up, "db stopped", |d| d["state"] == "stopped");
    let message = stopped["status_message"].as_str().unwrap_or_default();
    assert!(message.contains("paused outside kinfra"), "{stopped}");
    assert_eq!(stopped["provider_state"], "INACTIVE", "{stopped}");
    assert_eq!(stopped["restarts"], 0, "not restarted: {stopped}");
    assert_eq!(
        fake.count(&r, "POST"),
        0,
        "kinfra sent nothing: {:?}",
        fake.requests(&r)
    );

    // Resumed outside kinfra again; `runtime down` with the default `keep` sends nothing.
    fake.set_status(&r, "ACTIVE_HEALTHY");
    let started = p.run(&["runtime", "start", "db"]);
    assert!(started.status.success(), "{started:?}");
    wait_db(&up, "db running again", |d| d["state"] == "running");
    assert_no_secret(&up, &body);
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(LIMIT).success());
    assert_eq!(fake.count(&r, "POST"), 0, "keep: {:?}", fake.requests(&r));
    assert_eq!(fake.status(&r), "ACTIVE_HEALTHY");
    prism.assert_clean(&r);
}

#[test]
fn on_down_pause_restores_at_up_and_pauses_the_project_at_runtime_down() {
    let (prism, fake) = supabase();
    let r = fake.project("rootpause", "INACTIVE");
    let p = project(&prism.url, &r, "on_down = \"pause\"\n");
    let mut up = p.up(&[], &[]);
    let (starting, _) = wait_db(&up, "db starting with the restore's progress", |d| {
        d["state"] == "starting"
            && d["status_message"]
                .as_str()
                .is_some_and(|m| m.contains("restore requested"))
    });
    assert_eq!(starting["provider_state"], "COMING_UP", "{starting}");
    let (_, body) = wait_db(&up, "db running", |d| {
        d["state"] == "running" && d["health"] == "healthy"
    });
    assert_eq!(fake.count(&r, "/restore"), 1, "{:?}", fake.requests(&r));
    assert_no_secret(&up, &body);
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(LIMIT).success());
    assert_eq!(fake.count(&r, "/pause"), 1, "{:?}", fake.requests(&r));
    assert_eq!(
        fake.status(&r),
        "INACTIVE",
        "paused by the time kinfra exits"
    );
    prism.assert_clean(&r);
}

#[test]
fn a_restore_that_ends_in_restore_failed_shows_failed_with_the_reason() {
    let (prism, fake) = supabase();
    let r = fake.project("rootfailed", "INACTIVE");
    fake.with(&r, |p| p.fail_next_restore = true);
    let p = project(&prism.url, &r, "");
    let mut up = p.up(&[], &[]);
    let (failed, body) = wait_db(&up, "db failed", |d| d["state"] == "failed");
    let message = failed["status_message"].as_str().unwrap_or_default();
    assert!(message.contains("RESTORE_FAILED"), "{failed}");
    assert!(message.contains(&r), "names the project: {failed}");
    assert_eq!(failed["provider_state"], "RESTORE_FAILED", "{failed}");
    assert_eq!(failed["restarts"], 0, "not restarted: {failed}");
    assert_eq!(
        fake.count(&r, "/restore"),
        1,
        "one restore: {:?}",
        fake.requests(&r)
    );
    assert_no_secret(&up, &body);
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(LIMIT).success());
    prism.assert_clean(&r);
}

#[test]
fn providers_show_supabase_lists_every_command_with_its_parameters() {
    let p = Project::new();
    let out = p.run(&["providers", "show", "supabase", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let shown: Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    let text = shown.to_string();
    let commands = shown["commands"].as_array().expect("commands");
    let ids: Vec<&str> = commands.iter().filter_map(|c| c["id"].as_str()).collect();
    assert_eq!(
        ids,
        [
            "list-branches",
            "create-branch",
            "delete-branch",
            "cancel-restore"
        ],
        "{text}"
    );
    let params = |id: &str| -> Vec<String> {
        commands
            .iter()
            .find(|c| c["id"] == id)
            .and_then(|c| c["params"].as_array())
            .map(|ps| {
                ps.iter()
                    .filter_map(|p| p["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(params("create-branch"), ["name"]);
    assert_eq!(params("delete-branch"), ["id"]);
    assert!(params("list-branches").is_empty() && params("cancel-restore").is_empty());
    let confirm: Vec<bool> = commands.iter().map(|c| c["confirm"] == true).collect();
    assert_eq!(confirm, [false, false, true, false], "{text}");
    assert!(commands.iter().all(|c| c["dry_run"] == true), "{text}");
    let out = p.run(&["providers", "show", "supabase"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let human = stdout(&out);
    for word in [
        "list-branches",
        "create-branch",
        "delete-branch",
        "cancel-restore",
        "project_ref",
        "db_password",
    ] {
        assert!(human.contains(word), "{word} missing:\n{human}");
    }
}

#[test]
fn a_dependent_started_once_the_project_is_restored_gets_its_direct_and_pooler_urls() {
    let (prism, fake) = supabase();
    let r = fake.project("rooturls", "INACTIVE");
    let tag = crate::support::unique_tag("supabase-urls");
    let p = project(
        &prism.url,
        &r,
        &format!(
            "[env]\nKINFRA_TEST_TAG = \"{tag}\"\n\
             [services.app]\ncommand = \"env > app.env && exec sleep 1000\"\n\
             env = {{ DIRECT = \"${{resources.db.url}}\", POOLER = \"${{resources.db.pooler_url}}\" }}\n\
             depends_on = {{ db = \"healthy\" }}\n"
        ),
    );
    let mut up = p.up(&[], &[]);
    wait_for(LIMIT, "app running with its env written", || {
        let (code, body) = http_get(&up.dashboard_addr(), "/__status__").ok()?;
        let status: Value = serde_json::from_str(&body).ok()?;
        (code == 200 && status["services"]["app"]["state"] == "running").then_some(())?;
        std::fs::read_to_string(p.path().join("app.env"))
            .ok()
            .filter(|e| e.contains("POOLER="))
    });
    let env = std::fs::read_to_string(p.path().join("app.env")).expect("app.env");
    assert!(
        env.contains(&format!(
            "DIRECT=postgresql://postgres:{DB_PASSWORD}@db.{r}.supabase.co:5432/postgres\n"
        )),
        "{env}"
    );
    assert!(
        env.contains(&format!(
            "POOLER=postgresql://postgres.{r}:{DB_PASSWORD}@aws-0-eu-central-1.pooler.supabase.com:6543/postgres\n"
        )),
        "{env}"
    );
    let (_, body) = db(&up).expect("status");
    assert_no_secret(&up, &body);
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(LIMIT).success());
    assert!(crate::support::pids_tagged(&tag).is_empty());
    prism.assert_clean(&r);
}
