//! Issue 18's mixed config through the binary: a Vercel frontend, a Render worker, a Railway
//! API, a Fly machine and a local process in one kinfra.toml. Each provider talks to its
//! stateful fake behind its own spec check (Prism for the REST APIs, graphql-js for Railway),
//! standing in for the real clouds. `kinfra plan` shows what each would do and sends nothing
//! that changes state; `kinfra runtime up` then runs them together, and `runtime down` (their
//! default `on_down = "keep"`) leaves every cloud resource as it is.

use crate::fly::fly_fake;
use crate::railway::railway_fake;
use crate::render::render_fake;
use crate::support::{Project, stderr, stdout, wait_for};
use crate::vercel::vercel_fake;
use std::time::Duration;

fn entry(plan: &serde_json::Value, name: &str) -> serde_json::Value {
    plan["resources"]
        .as_array()
        .and_then(|r| r.iter().find(|e| e["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("{name} not in the plan: {plan}"))
}

#[test]
fn a_mixed_cloud_config_plans_then_runs_together() {
    let (vprism, vercel) = vercel_fake::vercel();
    let (web, _) = vercel.project("mix", None, true, Some("READY"));
    let (rprism, render) = render_fake::render();
    let worker = render.service("mix", Some("live"), &["user"]);
    let railway = railway_fake::railway();
    let api = railway.service("mix", Some("SUCCESS"));
    railway.set_latest(&api.0, "SUCCESS", true);
    let (fprism, fly) = fly_fake::fly();
    let (app, machines) = fly.app("mix", &["stopped"], false);
    let p = Project::with_config(&format!(
        "[project]\nname = \"mix\"\n[dashboard]\nlisten = \"127.0.0.1:0\"\n\
         [proxy]\nenabled = false\n\
         [providers.vercel]\ntoken = \"{}\"\nbase_url = \"{}\"\n\
         [providers.render]\ntoken = \"{}\"\nbase_url = \"{}\"\n\
         [providers.railway]\ntoken = \"{}\"\nbase_url = \"{}\"\n\
         [providers.fly]\ntoken = \"{}\"\nbase_url = \"{}\"\n\
         [resources.web]\nprovider = \"vercel\"\nproject_id = \"{web}\"\ninterval = \"300ms\"\n\
         [resources.worker]\nprovider = \"render\"\nservice_id = \"{worker}\"\ninterval = \"300ms\"\n\
         [resources.api]\nprovider = \"railway\"\nservice_id = \"{}\"\nenvironment_id = \"{}\"\n\
         interval = \"300ms\"\n\
         [resources.machine]\nprovider = \"fly\"\napp = \"{app}\"\nmachine_id = \"{}\"\n\
         interval = \"300ms\"\nwait_timeout = \"1s\"\n\
         [services.local]\ncommand = \"sleep 1000\"\n\
         depends_on = {{ web = \"healthy\", worker = \"healthy\", api = \"healthy\", machine = \"healthy\" }}\n",
        vercel_fake::TOKEN,
        vprism.url,
        render_fake::TOKEN,
        rprism.url,
        railway_fake::ACCOUNT_TOKEN,
        railway.url(),
        fly_fake::TOKEN,
        fprism.url,
        api.0,
        api.1,
        machines[0],
    ));

    // The plan: every cloud resource is down, so each would be resumed with its own call.
    let out = p.run(&["plan", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON plan");
    for (name, kind) in [
        ("web", "vercel"),
        ("worker", "render"),
        ("api", "railway"),
        ("machine", "fly"),
    ] {
        let e = entry(&plan, name);
        assert_eq!(e["kind"], kind, "{plan:#}");
        assert_eq!(e["action"], "resume", "{plan:#}");
        assert!(
            e["calls"].as_array().is_some_and(|c| !c.is_empty()),
            "{name} plans no call: {plan:#}"
        );
    }
    assert_eq!(entry(&plan, "local")["action"], "local", "{plan:#}");
    for token in [
        vercel_fake::TOKEN,
        render_fake::TOKEN,
        railway_fake::ACCOUNT_TOKEN,
        fly_fake::TOKEN,
    ] {
        assert!(!stdout(&out).contains(token), "a token in the plan");
    }

    // Up together: the local process starts once all four are running.
    let mut up = p.up(&[], &[]);
    wait_for(
        Duration::from_secs(90),
        "all four running and local up",
        || {
            let status = crate::cli::status_json(&p);
            let s = &status["services"];
            (["web", "worker", "api", "machine", "local"]
                .iter()
                .all(|n| s[*n]["state"] == "running"))
            .then_some(())
        },
    );
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(60)).success());
    vprism.assert_clean(&web);
    rprism.assert_clean(&worker);
    railway.assert_clean(&api.0);
    fprism.assert_clean(&app);
}
