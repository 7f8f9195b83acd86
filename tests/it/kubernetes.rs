//! The `kubernetes` provider through `kinfra runtime up`, against the stateful fake of the
//! Kubernetes API server (`crates/kinfra-cloud/tests/support/kubernetes_fake.rs`). No cluster
//! is available here: the fake speaks the API server's real paths and JSON shapes (apps/v1
//! Deployment, its `/scale` subresource, PATCH with the content types kube sends, `Status`
//! errors) and records as a violation anything the real server would refuse.
//!
//! Covered: start scales the Deployment to the configured replicas and shows it running once
//! every replica is ready, `resource web scale|restart` with and without `--dry-run`, `runtime
//! stop` scales to 0, a Deployment scaled to 0 outside kinfra shows stopped (no restart),
//! `runtime down` (on_down = keep) sends nothing, the resource's log holds the scale calls, a
//! refused credential fails naming the context and a missing Deployment names namespace/name,
//! an unreachable API fails the start naming the context, 429 with and without Retry-After, a
//! 5xx, an answer slower than the instance's `timeout` and malformed JSON show in last_sync
//! with the state kept, the kubeconfig's token shows nowhere; a relative `kubeconfig` is read
//! beside the config file whatever the working directory; `providers show kubernetes` lists
//! both commands.

#[allow(dead_code)]
#[path = "../../crates/kinfra-cloud/tests/support/kubernetes_fake.rs"]
mod kubernetes_fake;

// The fake HTTP server, included once in main.rs; the fake reaches it as `super::`.
use crate::fake_http;

use crate::support::{Project, Up, stderr, stdout};
use kubernetes_fake::{BAD_TOKEN, TOKEN, kube, kubeconfig_file};
use serde_json::Value;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

/// A project whose instance `k8s` uses the fake's kubeconfig for `namespace`; `resources` is
/// appended as it is.
fn project(namespace: &str, resources: &str) -> Project {
    let kubeconfig = kubeconfig_file(&kube().url, namespace);
    Project::with_config(&format!(
        "[project]\nname = \"k8s-it\"\n\
         [dashboard]\nlisten = \"127.0.0.1:0\"\n[proxy]\nenabled = false\n\
         [providers.k8s]\nprovider = \"kubernetes\"\nkubeconfig = \"{}\"\ntimeout = \"5s\"\n\
         [providers.k8s-revoked]\nprovider = \"kubernetes\"\nkubeconfig = \"{}\"\n\
         context = \"revoked\"\n{resources}",
        kubeconfig.display(),
        kubeconfig.display()
    ))
}

fn service(p: &Project, name: &str) -> Value {
    crate::cli::status_json(p)["services"][name].clone()
}

/// Waits (bounded) until `name`'s status satisfies `cond`; the failure shows the status and
/// the runtime's output.
fn wait_service(
    p: &Project,
    up: &Up,
    name: &str,
    what: &str,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let s = service(p, name);
        if cond(&s) {
            return s;
        }
        if std::time::Instant::now() > deadline {
            panic!("{name} never {what}: {s:#}\n{}", up.lines().join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Checks that neither token shows in status or the runtime's output, stops the runtime and
/// checks that no exchange of `namespace` left what the API server accepts.
fn down_showing_no_token(p: &Project, mut up: Up, namespace: &str) {
    let shown = format!(
        "{}\n{}",
        stdout(&p.run(&["runtime", "status", "--json"])),
        up.lines().join("\n")
    );
    assert!(
        !shown.contains(BAD_TOKEN) && !shown.contains(TOKEN),
        "a token shows:\n{shown}"
    );
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
    kube().assert_clean(namespace);
}

fn run_json(p: &Project, args: &[&str]) -> Value {
    let out = p.run(args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    serde_json::from_str(&stdout(&out)).expect("a JSON result")
}

#[test]
fn a_deployment_scales_up_at_start_takes_commands_stops_at_zero_and_keep_leaves_it_at_down() {
    let fake = kube();
    let ns = fake.namespace("root");
    fake.deployment(&ns, "web", 0);
    let p = project(
        &ns,
        &format!(
            "[resources.web]\nprovider = \"k8s\"\nnamespace = \"{ns}\"\nname = \"web\"\n\
             replicas = 2\ninterval = \"200ms\"\n"
        ),
    );
    let mut up = p.up(&[], &[]);
    let web = wait_service(&p, &up, "web", "running", |s| s["state"] == "running");
    assert_eq!(web["kind"], "kubernetes", "{web}");
    assert_eq!(fake.get(&ns, "web").map(|d| d.desired), Some(2));
    let web = wait_service(&p, &up, "web", "healthy with 2/2 ready", |s| {
        s["health"] == "healthy"
            && s["provider_state"]
                .as_str()
                .is_some_and(|t| t.starts_with("ready 2/2"))
    });
    assert_eq!(web["last_sync"]["ok"], true, "{web}");

    // Commands: a dry-run sends nothing and shows the exact request, the token masked.
    let writes = fake.writes(&ns).len();
    let planned = run_json(
        &p,
        &[
            "resource",
            "web",
            "scale",
            "--param",
            "replicas=3",
            "--dry-run",
            "--json",
        ],
    );
    assert_eq!(planned["dry_run"], true, "{planned}");
    let request = &planned["requests"][0];
    assert_eq!(request["method"], "PATCH", "{planned}");
    assert_eq!(
        request["url"],
        format!(
            "{}/apis/apps/v1/namespaces/{ns}/deployments/web/scale?fieldManager=kinfra",
            fake.url
        ),
        "{planned}"
    );
    assert_eq!(request["body"]["spec"]["replicas"], 3, "{planned}");
    let planned_restart = run_json(&p, &["resource", "web", "restart", "--dry-run", "--json"]);
    assert!(
        planned_restart
            .to_string()
            .contains("kubectl.kubernetes.io/restartedAt"),
        "{planned_restart}"
    );
    assert_eq!(fake.writes(&ns).len(), writes, "a dry-run sent a request");
    let done = run_json(
        &p,
        &[
            "resource",
            "web",
            "scale",
            "--param",
            "replicas=3",
            "--json",
        ],
    );
    assert_eq!(done["data"]["replicas"], 3, "{done}");
    assert_eq!(fake.get(&ns, "web").map(|d| d.desired), Some(3));
    let done = run_json(&p, &["resource", "web", "restart", "--json"]);
    let restarted = fake.get(&ns, "web").expect("the deployment");
    assert_eq!(
        restarted
            .annotations
            .get("kubectl.kubernetes.io/restartedAt"),
        Some(&done["data"]["restartedAt"]),
        "{done}"
    );
    let out = p.run(&["resource", "web", "scale", "--param", "replicas=many"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    // `runtime stop` scales to 0; `runtime start` scales back to the configured replicas.
    let out = p.run(&["runtime", "stop", "web"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_service(&p, &up, "web", "stopped", |s| s["state"] == "stopped");
    assert_eq!(fake.get(&ns, "web").map(|d| d.desired), Some(0));
    let out = p.run(&["runtime", "start", "web"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_service(&p, &up, "web", "running again", |s| s["state"] == "running");
    assert_eq!(fake.get(&ns, "web").map(|d| d.desired), Some(2));

    // Scaled to 0 outside kinfra: stopped, not restarted.
    fake.scale_outside(&ns, "web", 0);
    let web = wait_service(&p, &up, "web", "stopped (outside)", |s| {
        s["state"] == "stopped"
    });
    assert!(
        web["status_message"]
            .as_str()
            .is_some_and(|m| m.contains("outside kinfra")),
        "{web}"
    );
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        fake.get(&ns, "web").map(|d| d.desired),
        Some(0),
        "kinfra scaled it up again"
    );

    // The resource's log holds the scale calls; the token shows nowhere.
    let logs = stdout(&p.run(&["runtime", "logs", "web"]));
    assert!(
        logs.contains(&format!("scale Deployment `{ns}/web` to 2")),
        "{logs}"
    );
    let shown = format!(
        "{}\n{logs}\n{planned}\n{planned_restart}\n{}",
        stdout(&p.run(&["runtime", "status", "--json"])),
        up.lines().join("\n")
    );
    assert!(!shown.contains(TOKEN), "the token shows:\n{shown}");

    // `runtime down` with on_down = keep sends nothing.
    fake.scale_outside(&ns, "web", 2);
    let writes = fake.writes(&ns).len();
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
    assert_eq!(
        fake.writes(&ns).len(),
        writes,
        "runtime down changed a kept Deployment"
    );
    fake.assert_clean(&ns);
}

#[test]
fn a_refused_credential_names_the_context_and_a_missing_deployment_names_it() {
    let fake = kube();
    let ns = fake.namespace("rootfault");
    fake.deployment(&ns, "api", 1);
    let p = project(
        &ns,
        &format!(
            "[resources.denied]\nprovider = \"k8s-revoked\"\nnamespace = \"{ns}\"\nname = \"api\"\n\
             interval = \"200ms\"\n\
             [resources.gone]\nprovider = \"k8s\"\nnamespace = \"{ns}\"\nname = \"nowhere\"\n\
             interval = \"200ms\"\n"
        ),
    );
    let up = p.up(&[], &[]);
    let denied = wait_service(&p, &up, "denied", "failed", |s| s["state"] == "failed");
    let message = denied["status_message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains("context `revoked`") && message.contains("401"),
        "{denied}"
    );
    let gone = wait_service(&p, &up, "gone", "failed", |s| s["state"] == "failed");
    assert!(
        gone["status_message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("Deployment `{ns}/nowhere` not found"))),
        "{gone}"
    );
    down_showing_no_token(&p, up, &ns);
}

#[test]
fn passing_faults_show_in_last_sync_with_the_state_kept_and_an_unreachable_api_fails_the_start() {
    let fake = kube();
    let ns = fake.namespace("rootpassing");
    fake.deployment(&ns, "web", 1);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let nowhere = kubeconfig_file(&format!("http://{closed}"), &format!("{ns}-gone"));
    // `k8s` has `timeout = "5s"`: `k8s-quick` answers within 1s or not at all.
    let p = project(
        &ns,
        &format!(
            "[providers.k8s-quick]\nprovider = \"kubernetes\"\nkubeconfig = \"{}\"\n\
             timeout = \"1s\"\n\
             [providers.k8s-gone]\nprovider = \"kubernetes\"\nkubeconfig = \"{}\"\n\
             timeout = \"1s\"\n\
             [resources.web]\nprovider = \"k8s-quick\"\nnamespace = \"{ns}\"\nname = \"web\"\n\
             interval = \"200ms\"\n\
             [resources.gone]\nprovider = \"k8s-gone\"\nnamespace = \"{ns}\"\nname = \"web\"\n\
             interval = \"200ms\"\n",
            kubeconfig_file(&fake.url, &ns).display(),
            nowhere.display(),
        ),
    );
    let up = p.up(&[], &[]);
    // Unreachable: the start fails naming the context, never a crash loop.
    let gone = wait_service(&p, &up, "gone", "failed", |s| s["state"] == "failed");
    assert!(
        gone["status_message"]
            .as_str()
            .is_some_and(|m| m.contains("context `fake`")),
        "{gone}"
    );
    wait_service(&p, &up, "web", "healthy", |s| s["health"] == "healthy");
    let read = format!("GET /apis/apps/v1/namespaces/{ns}/deployments/web");
    let faults = [
        (
            kubernetes_fake::status(429, "TooManyRequests", "slow down").header("Retry-After", "1"),
            "429",
        ),
        (
            kubernetes_fake::status(429, "TooManyRequests", "slow down"),
            "429",
        ),
        (
            kubernetes_fake::status(500, "InternalError", "etcdserver: leader changed"),
            "500",
        ),
        (
            fake_http::Reply::json(200, "{}").delayed(Duration::from_secs(3)),
            "no answer within 1s",
        ),
        (
            fake_http::Reply::json(200, "{\"kind\": \"Deployment\", "),
            "malformed JSON",
        ),
    ];
    for (reply, shown) in faults {
        fake.inject(&ns, &read, reply, 1);
        let seen = wait_service(&p, &up, "web", &format!("{shown} in last_sync"), |s| {
            s["last_sync"]["ok"] == false
                && s["last_sync"]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains(shown))
        });
        assert_eq!(seen["state"], "running", "kept: {seen}");
        assert_eq!(seen["restarts"], 0, "not a crash: {seen}");
        assert!(
            seen["provider_state"]
                .as_str()
                .is_some_and(|t| t.starts_with("ready 1/1")),
            "kept: {seen}"
        );
        wait_service(&p, &up, "web", "synced again", |s| {
            s["last_sync"]["ok"] == true
        });
    }
    down_showing_no_token(&p, up, &ns);
}

#[test]
fn a_relative_kubeconfig_is_read_beside_the_config_file_whatever_the_working_directory() {
    let fake = kube();
    let ns = fake.namespace("relative");
    fake.deployment(&ns, "web", 0);
    // kinfra runs in the project's parent directory, its config in `proj/`, the kubeconfig
    // in `proj/kube/config`, named `kube/config`.
    let p = Project::new();
    std::fs::create_dir_all(p.path().join("proj/kube")).expect("dirs");
    p.write(
        "proj/kube/config",
        &kubernetes_fake::kubeconfig(&fake.url, &ns),
    );
    p.write(
        "proj/kinfra.toml",
        &format!(
            "[project]\nname = \"k8s-relative\"\n\
             [dashboard]\nlisten = \"127.0.0.1:0\"\n[proxy]\nenabled = false\n\
             [providers.k8s]\nprovider = \"kubernetes\"\nkubeconfig = \"kube/config\"\n\
             [resources.web]\nprovider = \"k8s\"\nnamespace = \"{ns}\"\nname = \"web\"\n\
             replicas = 2\ninterval = \"200ms\"\n"
        ),
    );
    let mut up = p.up(&["-c", "proj/kinfra.toml"], &[]);
    let status = || {
        let out = p.run(&["runtime", "status", "--json", "-c", "proj/kinfra.toml"]);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_str::<Value>(&stdout(&out)).expect("status JSON")
    };
    let deadline = std::time::Instant::now() + LIMIT;
    while status()["services"]["web"]["state"] != "running" {
        assert!(
            std::time::Instant::now() < deadline,
            "web never running: {:#}\n{}",
            status(),
            up.lines().join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(fake.get(&ns, "web").map(|d| d.desired), Some(2));
    // `kinfra plan` run from elsewhere reads the same file.
    let plan = run_json(&p, &["plan", "--json", "-c", "proj/kinfra.toml"]);
    assert!(
        plan["resources"].as_array().is_some_and(|r| r
            .iter()
            .any(|e| e["name"] == "web" && e["kind"] == "kubernetes")),
        "{plan}"
    );
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
    fake.assert_clean(&ns);
}

#[test]
fn providers_show_kubernetes_lists_both_commands() {
    let p = Project::new();
    let shown = run_json(&p, &["providers", "show", "kubernetes", "--json"]);
    let text = shown.to_string();
    let commands = shown["commands"].as_array().expect("commands");
    let ids: Vec<&str> = commands.iter().filter_map(|c| c["id"].as_str()).collect();
    assert_eq!(ids, ["scale", "restart"], "{text}");
    assert_eq!(commands[0]["params"][0]["name"], "replicas", "{text}");
    assert!(commands.iter().all(|c| c["dry_run"] == true), "{text}");
    let out = p.run(&["providers", "show", "kubernetes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let human = stdout(&out);
    for word in ["scale", "restart", "replicas", "namespace", "kubeconfig"] {
        assert!(human.contains(word), "`{word}` missing:\n{human}");
    }
}

#[test]
fn plan_shows_the_scale_a_scaled_down_deployment_would_get_and_sends_nothing() {
    let fake = kube();
    let ns = fake.namespace("rootplan");
    fake.deployment(&ns, "web", 0);
    let p = project(
        &ns,
        &format!(
            "[resources.web]\nprovider = \"k8s\"\nnamespace = \"{ns}\"\nname = \"web\"\nreplicas = 4\n"
        ),
    );
    let plan = run_json(&p, &["plan", "--json"]);
    let text = plan.to_string();
    assert!(!text.contains(TOKEN), "{text}");
    let web = plan["resources"]
        .as_array()
        .and_then(|r| r.iter().find(|e| e["name"] == "web"))
        .cloned()
        .expect("web in the plan");
    assert_eq!(web["kind"], "kubernetes", "{web}");
    assert_eq!(web["action"], "resume", "{web}");
    let call = &web["calls"][0];
    assert_eq!(call["method"], "PATCH", "{web}");
    assert_eq!(
        call["url"],
        format!(
            "{}/apis/apps/v1/namespaces/{ns}/deployments/web/scale?fieldManager=kinfra",
            fake.url
        ),
        "{web}"
    );
    assert_eq!(call["body"]["spec"]["replicas"], 4, "{web}");
    assert!(
        fake.writes(&ns).is_empty(),
        "plan sent {:#?}",
        fake.writes(&ns)
    );
    assert_eq!(fake.get(&ns, "web").map(|d| d.desired), Some(0));
    fake.assert_clean(&ns);
}
