//! `kinfra deploy fly` through the binary, against the stateful Fly Machines fake behind
//! Prism (the flyio spec, crates/kinfra-cloud's harness, shared with fly.rs): a first deploy
//! creates the app, the state volume and the machine and waits until it is started; a second
//! one updates the machine under a lease with its current_version (no second machine or
//! volume); a third with the same image leaves it unchanged; a concurrent change is a 409
//! reported and never retried; a dry-run sends nothing that changes state; bad input (no
//! token, an image without a tag, an app that does not exist and no --org, an unknown org)
//! exits 2 naming the thing. deploy/fly.toml stays valid for flyctl and agrees with kinfra's
//! defaults.

use crate::fake_http::Reply;
use crate::fly::fly_fake::{FlyFake, TOKEN, fly};
use crate::support::{Project, stderr, stdout};
use serde_json::{Value, json};

/// The project: the default state dir (`.kinfra`, so `/app/.kinfra` in the image).
const CONFIG: &str = "[project]\nname = \"deploy-it\"\n";

/// Runs `kinfra deploy fly ARGS` with the fake's token and URL (the proxy's port fixed: the
/// test harness sets port 0 otherwise).
fn deploy(p: &Project, url: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec!["deploy", "fly"];
    all.extend_from_slice(args);
    p.run_env(
        &all,
        &[
            ("FLY_API_TOKEN", TOKEN),
            ("KINFRA_FLY_API_URL", url),
            ("KINFRA_PROXY__HTTP", "127.0.0.1:9100"),
        ],
    )
}

fn shown(out: &std::process::Output) -> String {
    format!("{}\n{}", stdout(out), stderr(out))
}

/// The exchanges of `app` Prism found outside the spec, but the 404 of a `GET
/// /v1/apps/{app}` for an app that does not exist (an answer the spec does not declare).
fn assert_clean_but_missing_app(prism: &crate::prism::Prism, app: &str) {
    assert!(!prism.exchanges(app).is_empty(), "nothing reached Prism");
    let bad: Vec<String> = prism
        .violations(app)
        .iter()
        .filter(|e| {
            !(e.status == 404
                && e.method == "GET"
                && e.target == format!("/v1/apps/{app}")
                && e.violation
                    .as_deref()
                    .is_some_and(|v| v.contains("Unable to match the returned status code")))
        })
        .map(|e| {
            format!(
                "{} {} → {}: {:?}",
                e.method, e.target, e.status, e.violation
            )
        })
        .collect();
    assert!(
        bad.is_empty(),
        "exchanges left the spec:\n{}",
        bad.join("\n")
    );
}

fn count(fake: &FlyFake, app: &str, prefix: &str) -> usize {
    fake.requests(app)
        .iter()
        .filter(|r| r.starts_with(prefix))
        .count()
}

fn machines(fake: &FlyFake, app: &str) -> Vec<(String, String, Value, String)> {
    fake.with(app, |a| {
        a.machines
            .iter()
            .filter(|m| m.state != "destroyed")
            .map(|m| {
                (
                    m.id.clone(),
                    m.state.clone(),
                    m.config.clone(),
                    m.version.clone(),
                )
            })
            .collect()
    })
}

#[test]
fn deploy_creates_app_volume_and_machine_then_updates_under_a_lease_then_is_unchanged() {
    let (prism, fake) = fly();
    let app = fake.new_app_name("deploy");
    let p = Project::with_config(CONFIG);
    let v1 = format!("registry.fly.io/{app}:v1");

    // The app does not exist and no --org says where to create it.
    let out = deploy(&p, &prism.url, &["--app", &app, "--image", &v1]);
    assert_eq!(out.status.code(), Some(2), "{}", shown(&out));
    assert!(
        stderr(&out).contains(&format!("`{app}` does not exist")) && stderr(&out).contains("--org"),
        "{}",
        shown(&out)
    );
    // An organization Fly does not know: its refusal, naming it.
    let out = deploy(
        &p,
        &prism.url,
        &["--app", &app, "--image", &v1, "--org", "no-such-org"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", shown(&out));
    assert!(stderr(&out).contains("no-such-org"), "{}", shown(&out));
    assert!(!fake.has_app(&app), "an app was created");

    // The first deploy: app, volume and machine, started.
    let out = deploy(
        &p,
        &prism.url,
        &["--app", &app, "--image", &v1, "--org", "personal"],
    );
    assert!(out.status.success(), "{}", shown(&out));
    let text = stdout(&out);
    assert!(text.contains(&format!("https://{app}.fly.dev")), "{text}");
    assert!(text.contains("created Fly app"), "{text}");
    let volumes = fake.with(&app, |a| a.volumes.clone());
    assert_eq!(volumes.len(), 1, "{volumes:?}");
    assert_eq!(volumes[0]["name"], "kinfra_state");
    assert_eq!(volumes[0]["region"], "ams");
    let volume = volumes[0]["id"].as_str().expect("volume id").to_owned();
    let ms = machines(fake, &app);
    assert_eq!(ms.len(), 1, "{ms:?}");
    let (id, state, config, version) = ms[0].clone();
    assert_eq!(state, "started", "the deploy did not wait for started");
    assert_eq!(config["image"], v1.as_str());
    assert_eq!(
        config["mounts"],
        json!([{ "volume": volume, "path": "/app/.kinfra" }])
    );
    assert_eq!(config["services"][0]["internal_port"], 9100);
    assert_eq!(config["env"]["KINFRA_PROXY__HTTP"], "0.0.0.0:9100");
    assert_eq!(volumes[0]["attached_machine_id"], id.as_str());
    assert!(
        count(
            fake,
            &app,
            &format!("GET /v1/apps/{app}/machines/{id}/wait?state=started")
        ) >= 1,
        "{:#?}",
        fake.requests(&app)
    );
    assert_eq!(count(fake, &app, "POST /v1/apps "), 1);

    // The second deploy, another image: an update under a lease with its current_version.
    let v2 = format!("registry.fly.io/{app}:v2");
    let out = deploy(&p, &prism.url, &["--app", &app, "--image", &v2]);
    assert!(out.status.success(), "{}", shown(&out));
    assert!(stdout(&out).contains("updated"), "{}", shown(&out));
    let ms = machines(fake, &app);
    assert_eq!(ms.len(), 1, "a second machine: {ms:?}");
    assert_eq!(ms[0].0, id);
    assert_eq!(ms[0].1, "started");
    assert_eq!(ms[0].2["image"], v2.as_str());
    assert_eq!(fake.with(&app, |a| a.volumes.len()), 1, "a second volume");
    let seen = fake.requests(&app);
    let update: Vec<&String> = seen
        .iter()
        .filter(|r| r.starts_with(&format!("POST /v1/apps/{app}/machines/{id} ")))
        .collect();
    assert_eq!(update.len(), 1, "{seen:#?}");
    assert!(
        update[0].contains("[nonce-")
            && update[0].contains(&format!("\"current_version\":\"{version}\"")),
        "not under a lease with current_version: {}",
        update[0]
    );
    assert_eq!(
        count(
            fake,
            &app,
            &format!("POST /v1/apps/{app}/machines/{id}/lease")
        ),
        1
    );
    assert_eq!(
        count(
            fake,
            &app,
            &format!("DELETE /v1/apps/{app}/machines/{id}/lease")
        ),
        1
    );
    assert!(
        fake.with(&app, |a| a.machines[0].lease.is_none()),
        "lease kept"
    );

    // The same image again: nothing to change.
    let before = fake.requests(&app).len();
    let out = deploy(&p, &prism.url, &["--app", &app, "--image", &v2]);
    assert!(out.status.success(), "{}", shown(&out));
    assert!(stdout(&out).contains("unchanged"), "{}", shown(&out));
    let after: Vec<String> = fake.requests(&app)[before..].to_vec();
    assert!(
        after.iter().all(|r| r.starts_with("GET ")),
        "an unchanged deploy changed something: {after:#?}"
    );
    assert_eq!(machines(fake, &app).len(), 1);
    assert_eq!(fake.with(&app, |a| a.volumes.len()), 1);
    assert!(
        !fake.log(&app).is_empty() && !shown(&out).contains(TOKEN),
        "the token is shown"
    );
    assert_clean_but_missing_app(prism, &app);
}

#[test]
fn a_concurrent_change_is_a_409_reported_and_not_retried() {
    let (prism, fake) = fly();
    let (app, ids) = fake.app("deploy-409", &["started"], false);
    let id = ids[0].clone();
    let p = Project::with_config(CONFIG);
    let moved = fake.with(&app, |a| a.machines[0].version.clone());
    // The machine changes between kinfra's read under the lease and its update.
    fake.inject(
        &app,
        &format!("GET /v1/apps/{app}/machines/{id}$"),
        Reply::json(
            200,
            &json!({ "id": id, "state": "started", "version": "01JOLDVERSION", "config": {} })
                .to_string(),
        ),
        1,
    );
    let image = format!("registry.fly.io/{app}:v9");
    let out = deploy(&p, &prism.url, &["--app", &app, "--image", &image]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let error = stderr(&out);
    assert!(error.contains("refused (409 Conflict)"), "{error}");
    assert!(error.contains(&moved), "Fly's reason is reported: {error}");
    let seen = fake.requests(&app);
    let updates = seen
        .iter()
        .filter(|r| r.starts_with(&format!("POST /v1/apps/{app}/machines/{id} ")))
        .count();
    assert_eq!(updates, 1, "a 409 was retried: {seen:#?}");
    assert!(
        fake.with(&app, |a| a.machines[0].lease.is_none()),
        "lease kept"
    );
    assert_eq!(machines(fake, &app).len(), 1, "a machine was created");
    prism.assert_clean(&app);
}

#[test]
fn a_dry_run_reads_and_shows_every_request_but_sends_none_that_changes_state() {
    let (prism, fake) = fly();
    let app = fake.new_app_name("deploy-dry");
    let p = Project::with_config(CONFIG);
    let image = format!("registry.fly.io/{app}:v1");
    let out = deploy(
        &p,
        &prism.url,
        &[
            "--app",
            &app,
            "--image",
            &image,
            "--org",
            "personal",
            "--dry-run",
        ],
    );
    assert!(out.status.success(), "{}", shown(&out));
    let text = stdout(&out);
    for line in [
        format!("POST {}/v1/apps\n", prism.url),
        format!("POST {}/v1/apps/{app}/volumes\n", prism.url),
        format!("POST {}/v1/apps/{app}/machines\n", prism.url),
        "/wait?state=started".to_owned(),
        "\"kinfra_state\"".to_owned(),
        "\"path\":\"/app/.kinfra\"".to_owned(),
    ] {
        assert!(text.contains(&line), "{line} missing:\n{text}");
    }
    assert!(!shown(&out).contains(TOKEN), "the token is shown:\n{text}");
    assert!(text.contains("Authorization: ****"), "{text}");
    let log = fake.log(&app);
    assert!(!log.is_empty(), "the dry-run read nothing");
    assert!(
        log.iter().all(|l| l.starts_with("GET ")),
        "the dry-run changed something: {log:#?}"
    );
    assert!(!fake.has_app(&app));

    // Over a deployed app: the lease, the update and its release are shown, none sent.
    let (app, _) = fake.app("deploy-dry-up", &["started"], false);
    let out = deploy(
        &p,
        &prism.url,
        &["--app", &app, "--image", &image, "--dry-run"],
    );
    assert!(out.status.success(), "{}", shown(&out));
    let text = stdout(&out);
    assert!(
        text.contains("/lease") && text.contains("fly-machine-lease-nonce"),
        "{text}"
    );
    assert!(text.contains("current_version"), "{text}");
    let log = fake.log(&app);
    assert!(
        log.iter().all(|l| l.starts_with("GET ")),
        "the dry-run changed something: {log:#?}"
    );
    assert!(fake.with(&app, |a| a.volumes.is_empty()));
    prism.assert_clean(&app);
}

#[test]
fn bad_input_exits_2_naming_the_thing_and_sends_nothing() {
    let (prism, fake) = fly();
    let app = fake.new_app_name("deploy-bad");
    let p = Project::with_config(CONFIG);
    let base = [
        ("KINFRA_FLY_API_URL", prism.url.as_str()),
        ("KINFRA_PROXY__HTTP", "127.0.0.1:9100"),
    ];
    // No token anywhere.
    let mut env = base.to_vec();
    env.push(("FLY_API_TOKEN", ""));
    let image = format!("registry.fly.io/{app}:v1");
    let out = p.run_env(&["deploy", "fly", "--app", &app, "--image", &image], &env);
    assert_eq!(out.status.code(), Some(2), "{}", shown(&out));
    assert!(stderr(&out).contains("FLY_API_TOKEN"), "{}", shown(&out));
    // An image without a tag.
    let untagged = format!("registry.fly.io/{app}");
    let out = deploy(&p, &prism.url, &["--app", &app, "--image", &untagged]);
    assert_eq!(out.status.code(), Some(2), "{}", shown(&out));
    assert!(
        stderr(&out).contains(&format!("`{untagged}` has no tag")),
        "{}",
        shown(&out)
    );
    // A name Fly would refuse.
    let out = deploy(&p, &prism.url, &["--app", "Bad_App", "--image", &image]);
    assert_eq!(out.status.code(), Some(2), "{}", shown(&out));
    assert!(stderr(&out).contains("`Bad_App`"), "{}", shown(&out));
    // A token file that is not there.
    let out = deploy(
        &p,
        &prism.url,
        &[
            "--app",
            &app,
            "--image",
            &image,
            "--token-file",
            "missing.token",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", shown(&out));
    assert!(stderr(&out).contains("missing.token"), "{}", shown(&out));
    assert!(fake.log(&app).is_empty(), "{:#?}", fake.log(&app));
}

#[test]
fn deploy_fly_toml_is_valid_and_agrees_with_kinfras_defaults() {
    let path = crate::prism::workspace_root().join("deploy/fly.toml");
    let text = std::fs::read_to_string(&path).expect("deploy/fly.toml");
    let doc: toml::Table = toml::from_str(&text).expect("fly.toml is valid TOML");
    assert!(
        doc["app"].as_str().is_some_and(|a| !a.is_empty()),
        "{doc:#?}"
    );
    assert!(doc["primary_region"].as_str().is_some(), "{doc:#?}");
    let proxy_port = kinfra_core::config::ProxyConfig::default()
        .http
        .and_then(|a| a.rsplit_once(':').map(|(_, p)| p.to_owned()))
        .expect("the proxy's default port");
    let internal = doc["http_service"]["internal_port"]
        .as_integer()
        .expect("[http_service] internal_port");
    assert_eq!(
        internal.to_string(),
        proxy_port,
        "internal_port ≠ the proxy's port"
    );
    assert_eq!(
        doc["env"]["KINFRA_PROXY__HTTP"].as_str(),
        Some(format!("0.0.0.0:{proxy_port}").as_str()),
        "the proxy must listen on all interfaces in the machine"
    );
    let state_dir = kinfra_core::config::ProjectConfig::default().state_dir;
    assert_eq!(
        doc["mounts"]["destination"].as_str(),
        Some(format!("/app/{}", state_dir.display()).as_str()),
        "the mount is not the state dir"
    );
    assert_eq!(doc["mounts"]["source"].as_str(), Some("kinfra_state"));
}

#[test]
fn the_token_and_url_can_come_from_a_fly_provider_instance_of_the_config() {
    let (prism, fake) = fly();
    let (app, _) = fake.app("deploy-config", &["started"], false);
    let p = Project::with_config(&format!(
        "{CONFIG}[providers.flyio]\nprovider = \"fly\"\ntoken = \"{TOKEN}\"\nbase_url = \"{}\"\n",
        prism.url
    ));
    let image = format!("registry.fly.io/{app}:v1");
    let out = p.run_env(
        &[
            "deploy",
            "fly",
            "--app",
            &app,
            "--image",
            &image,
            "--dry-run",
        ],
        &[
            ("FLY_API_TOKEN", ""),
            ("KINFRA_PROXY__HTTP", "127.0.0.1:9100"),
        ],
    );
    assert!(out.status.success(), "{}", shown(&out));
    assert!(!shown(&out).contains(TOKEN), "the token is shown");
    assert!(
        fake.log(&app).iter().any(|l| l.starts_with("GET ")),
        "nothing was read with the config's token"
    );
    // A wrong token from the environment wins over the config's, and is refused (exit 2).
    let out = p.run_env(
        &[
            "deploy",
            "fly",
            "--app",
            &app,
            "--image",
            &image,
            "--dry-run",
        ],
        &[
            ("FLY_API_TOKEN", "wrong-token-0x5e"),
            ("KINFRA_PROXY__HTTP", "127.0.0.1:9100"),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", shown(&out));
    assert!(
        stderr(&out).contains("refused the token (401)"),
        "{}",
        shown(&out)
    );
    assert!(!shown(&out).contains("wrong-token-0x5e"), "{}", shown(&out));
}
