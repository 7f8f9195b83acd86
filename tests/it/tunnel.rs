//! `[tunnel]` through `kinfra runtime up`: the Cloudflare API is the stateful fake of
//! kinfra-tunnel's tests (`crates/kinfra-tunnel/tests/support/cloudflare_fake.rs`) behind
//! Prism with Cloudflare's spec; cloudflared is NOT installed here, so a stand-in stands in
//! for it: a small Python script the test writes (see [`STANDIN`]) that takes cloudflared's
//! command line (`tunnel --no-autoupdate --config FILE --metrics ADDR run`), reads the config
//! file and exits 1 unless it has the shape cloudflared requires (rules with a hostname and
//! kinfra's proxy as the service, the `http_status:404` catch-all last and only last, the
//! credentials file of the tunnel it names), serves `/ready` on the metrics address (200,
//! `{"readyConnections": 4}`) like cloudflared's metrics server, prints log lines, records
//! each start (PID, arguments, config text) and exits on SIGTERM. It does not connect to any
//! edge: what cloudflared does with Cloudflare is out of reach here.
//!
//! Checked: up publishes two routes under one hostname (config rules, origin = the proxy,
//! one proxied CNAME), status and `runtime status` show the tunnel and its URLs; a reload with
//! a new route rewrites the config and restarts cloudflared once; a second up adopts the
//! tunnel and its record (no duplicates); a tunnel made elsewhere runs with its token in
//! cloudflared's environment; `on_down = "delete"` removes the record at down; a
//! missing cloudflared and a refused token each fail the tunnel alone; the token shows
//! nowhere (status, logs, output, cloudflared's arguments); the dashboard shows the tunnel's
//! panel (Chromium); `config check` names the key.

#[allow(dead_code)]
#[path = "../../crates/kinfra-tunnel/tests/support/cloudflare_fake.rs"]
pub(crate) mod cloudflare_fake;

// The harness, included once in main.rs; the fake reaches it as `super::`.
use crate::{fake_http, prism};

use crate::support::{Project, Up, stderr, stdout, wait_for};
use cloudflare_fake::{TOKEN, cloudflare};
use serde_json::Value;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(40);

/// The cloudflared stand-in (Python). `@RECORD@` is replaced by the file each start is
/// appended to, as one JSON line.
const STANDIN: &str = r##"#!/usr/bin/env python3
# Stands in for cloudflared, which is not installed here (see tests/it/tunnel.rs).
import http.server, json, os, signal, sys, threading

def fail(why):
    print("ERR stand-in: " + why, file=sys.stderr, flush=True)
    sys.exit(1)

args = sys.argv[1:]
if not args or args[0] != "tunnel" or args[-1] != "run" or "--no-autoupdate" not in args:
    fail("expected `tunnel --no-autoupdate ... run`, got %r" % args)
def flag(name):
    if name not in args:
        fail("no " + name)
    return args[args.index(name) + 1]
config_path, metrics = flag("--config"), flag("--metrics")
text = open(config_path).read()
top, rules, in_ingress = {}, [], False
for line in text.splitlines():
    if not line.strip() or line.lstrip().startswith("#"):
        continue
    if line.startswith("ingress:"):
        in_ingress = True
        continue
    key, _, value = line.strip().lstrip("- ").partition(": ")
    value = json.loads(value) if value.startswith('"') else value
    if not in_ingress:
        top[key] = value
    elif line.startswith("  - "):
        rules.append({key: value})
    else:
        rules[-1][key] = value
if len(rules) < 2:
    fail("too few rules: %r" % rules)
if rules[-1] != {"service": "http_status:404"}:
    fail("the last rule is not the catch-all: %r" % rules[-1])
for rule in rules[:-1]:
    if "hostname" not in rule or not rule["service"].startswith("http://127.0.0.1:"):
        fail("a rule without a hostname or not to the proxy: %r" % rule)
tunnel = top.get("tunnel", "")
creds = top.get("credentials-file")
if creds is not None and json.load(open(creds)).get("TunnelID") != tunnel:
    fail("the credentials file is not the tunnel's")
if creds is None and not os.environ.get("TUNNEL_TOKEN"):
    fail("neither a credentials file nor TUNNEL_TOKEN")
with open("@RECORD@", "a") as record:
    record.write(json.dumps({"pid": os.getpid(), "argv": sys.argv, "config": text}) + "\n")

class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"status": 200, "readyConnections": 4}).encode()
        self.send_response(200 if self.path == "/ready" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

host, port = metrics.rsplit(":", 1)
server = http.server.ThreadingHTTPServer((host, int(port)), Ready)
def stop(signum, frame):
    print("INF Initiating graceful shutdown due to signal terminated", flush=True)
    os._exit(0)
signal.signal(signal.SIGTERM, stop)
print("INF Starting tunnel tunnelID=%s" % tunnel, flush=True)
print("INF Registered tunnel connection connIndex=0 location=standin", flush=True)
server.serve_forever()
"##;

/// The stand-in written into the project as `cloudflared-standin` (0755); its record file.
fn standin(p: &Project) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let record = p.path().join("standin.jsonl");
    let script = p.write(
        "cloudflared-standin",
        &STANDIN.replace("@RECORD@", &record.display().to_string()),
    );
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
        .expect("chmod the stand-in");
    record
}

/// Each start of the stand-in, as recorded.
fn starts(record: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(record)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Two services behind two routes (`/` and `/api`, any host) and a tunnel with one hostname.
fn config(base: &str, account: &str, zone: &str, cloudflared: &str, extra: &str) -> String {
    format!(
        "[project]\nname = \"tun\"\n\
         [dashboard]\nlisten = \"127.0.0.1:0\"\n\
         [services.web]\ncommand = \"sleep 1000\"\nport = \"auto\"\n\
         [services.api]\ncommand = \"sleep 1000\"\nport = \"auto\"\n\
         [[routes]]\npath = \"/\"\nservice = \"web\"\n\
         [[routes]]\npath = \"/api\"\nservice = \"api\"\n\
         [tunnel]\nprovider = \"cloudflare\"\naccount_id = \"{account}\"\nzone_id = \"{zone}\"\n\
         hostnames = [\"app.example.com\"]\ntoken = \"${{CF_TOKEN}}\"\nbase_url = \"{base}\"\n\
         cloudflared = \"{cloudflared}\"\n{extra}"
    )
}

fn up(p: &Project) -> Up {
    p.up(&[], &[("CF_TOKEN", TOKEN)])
}

/// Waits (bounded) until the status's `tunnel` block satisfies `cond`.
fn wait_tunnel(p: &Project, up: &Up, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let status = crate::cli::status_json(p);
        if cond(&status["tunnel"]) {
            return status;
        }
        if std::time::Instant::now() > deadline {
            panic!("never {what}: {status:#}\n{}", up.lines().join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The ingress rules of a config text: (hostname, path, service) per rule, in order.
fn rules(text: &str) -> Vec<(Option<String>, Option<String>, String)> {
    let mut out: Vec<(Option<String>, Option<String>, String)> = Vec::new();
    let mut ingress = false;
    for line in text.lines() {
        if line.starts_with("ingress:") {
            ingress = true;
            continue;
        }
        if !ingress || line.trim().is_empty() {
            continue;
        }
        let (key, value) = line
            .trim()
            .trim_start_matches("- ")
            .split_once(": ")
            .unwrap_or_else(|| panic!("not a key: {line}"));
        let value: String = serde_json::from_str(value).unwrap_or_else(|_| value.to_owned());
        if line.starts_with("  - ") {
            out.push((None, None, String::new()));
        }
        let rule = out.last_mut().expect("a rule");
        match key {
            "hostname" => rule.0 = Some(value),
            "path" => rule.1 = Some(value),
            "service" => rule.2 = value,
            other => panic!("unexpected key {other} in {text}"),
        }
    }
    out
}

/// The proxy's address from the banner.
fn proxy_addr(up: &Up) -> String {
    let line = up.wait_for_line(Duration::from_secs(5), "proxy       http://");
    line.split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("proxy address in the banner")
        .to_owned()
}

fn down(p: &Project, up: &mut Up) {
    let out = p.run(&["runtime", "down"]);
    assert!(out.status.success(), "down: {}", stderr(&out));
    up.wait_exit(LIMIT);
}

/// The token in none of: status, `runtime status`, the tunnel's logs, kinfra's output,
/// cloudflared's arguments (`/proc/PID/cmdline`), its config file.
fn assert_token_nowhere(p: &Project, up: &Up, status: &Value, pid: u64) {
    let logs = stdout(&p.run(&["runtime", "logs", "tunnel", "-n", "500"]));
    let table = stdout(&p.run(&["runtime", "status"]));
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cloudflared's cmdline");
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(cmdline.contains("--config"), "{cmdline}");
    let config_file = status["tunnel"]["config_file"]
        .as_str()
        .expect("config_file");
    let config = std::fs::read_to_string(config_file).expect("config.yml");
    for (what, text) in [
        ("status", status.to_string()),
        ("runtime status", table),
        ("runtime logs tunnel", logs),
        ("kinfra's output", up.lines().join("\n")),
        ("cloudflared's arguments", cmdline),
        ("config.yml", config),
    ] {
        assert!(!text.contains(TOKEN), "the token shows in {what}: {text}");
    }
}

#[test]
fn a_tunnel_publishes_two_routes_follows_a_reload_and_is_adopted_at_the_next_up() {
    let (prism, fake) = cloudflare();
    let (account, zone) = fake.account();
    let p = Project::new();
    let record = standin(&p);
    let text = config(&prism.url, &account, &zone, "./cloudflared-standin", "");
    p.write("kinfra.toml", &text);
    let mut first = up(&p);
    let proxy = proxy_addr(&first);
    let status = wait_tunnel(&p, &first, "running with its connections", |t| {
        t["state"] == "running" && t["ready_connections"] == 4
    });
    let tunnel = &status["tunnel"];
    assert_eq!(tunnel["name"], "kinfra-tun", "{tunnel:#}");
    assert_eq!(tunnel["created"], true, "{tunnel:#}");
    assert_eq!(tunnel["origin"], format!("http://{proxy}"), "{tunnel:#}");
    let id = tunnel["id"].as_str().expect("tunnel id").to_owned();
    assert_eq!(
        tunnel["urls"],
        serde_json::json!(["https://app.example.com/", "https://app.example.com/api"]),
        "{tunnel:#}"
    );
    assert_eq!(tunnel["hostnames"][0]["urls"], tunnel["urls"], "{tunnel:#}");
    // cloudflared is the supervised service `tunnel`, ready by its /ready.
    let service = &status["services"]["tunnel"];
    assert_eq!(service["state"], "running", "{service:#}");
    assert_eq!(service["health"], "healthy", "{service:#}");
    let pid = service["pid"].as_u64().expect("cloudflared's pid");
    // The service joining the set kinfra runs is not a reload of the user's config.
    let lines = first.lines();
    assert!(
        !lines.iter().any(|l| l.contains("config reloaded")),
        "{lines:#?}"
    );

    // The config: both routes under the one hostname, every rule to the proxy, the catch-all
    // last; cloudflared's documented rules hold.
    let config_file = tunnel["config_file"].as_str().expect("config_file");
    let written = std::fs::read_to_string(config_file).expect("config.yml");
    let origin = format!("http://{proxy}");
    let host = Some("app.example.com".to_owned());
    assert_eq!(
        rules(&written),
        vec![
            (host.clone(), Some("^/api(/|$)".to_owned()), origin.clone()),
            (host.clone(), None, origin.clone()),
            (None, None, "http_status:404".to_owned()),
        ],
        "{written}"
    );
    assert!(kinfra_tunnel::validate(&written).is_empty(), "{written}");
    assert!(written.contains(&format!("tunnel: \"{id}\"")), "{written}");
    let started = starts(&record);
    assert_eq!(started.len(), 1, "{started:?}");
    assert_eq!(started[0]["pid"].as_u64(), Some(pid));
    let argv: Vec<&str> = started[0]["argv"]
        .as_array()
        .expect("argv")
        .iter()
        .filter_map(Value::as_str)
        .skip(1)
        .collect();
    let metrics = tunnel["metrics"].as_str().expect("metrics");
    assert_eq!(
        argv,
        [
            "tunnel",
            "--no-autoupdate",
            "--config",
            config_file,
            "--metrics",
            metrics,
            "run"
        ]
    );
    // One tunnel, one proxied CNAME to it.
    let tunnels = fake.tunnels(&account);
    assert_eq!(tunnels.len(), 1, "{tunnels:?}");
    assert_eq!(tunnels[0].name, "kinfra-tun");
    let records = fake.records_named(&zone, "app.example.com");
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].kind, "CNAME");
    assert_eq!(records[0].content, format!("{id}.cfargotunnel.com"));
    assert!(records[0].proxied, "{records:?}");
    // `runtime status` has its line.
    let table = stdout(&p.run(&["runtime", "status"]));
    assert!(
        table.contains("tunnel kinfra-tun: running — https://app.example.com/ https://app.example.com/api (4 connections)"),
        "{table}"
    );
    assert_token_nowhere(&p, &first, &status, pid);

    // A reload with a new route: the config is rewritten and cloudflared restarted once.
    p.write(
        "kinfra.toml",
        &text.replace(
            "[tunnel]",
            "[services.docs]\ncommand = \"sleep 1000\"\nport = \"auto\"\n\
             [[routes]]\npath = \"/docs\"\nservice = \"docs\"\n[tunnel]",
        ),
    );
    // The edge sees a connection (the stand-in does not connect anywhere): status shows it once
    // the API is read again, which a new cloudflared process triggers.
    fake.connect(&account, &id, "DFW", "2026.8.2");
    let out = p.run(&["runtime", "reload"]);
    assert!(out.status.success(), "reload: {}", stderr(&out));
    wait_tunnel(&p, &first, "running again with the new route", |t| {
        t["state"] == "running"
            && t["urls"]
                .as_array()
                .is_some_and(|u| u.iter().any(|u| u == "https://app.example.com/docs"))
    });
    let rewritten = std::fs::read_to_string(config_file).expect("config.yml");
    assert_eq!(
        rules(&rewritten),
        vec![
            (host.clone(), Some("^/docs(/|$)".to_owned()), origin.clone()),
            (host.clone(), Some("^/api(/|$)".to_owned()), origin.clone()),
            (host.clone(), None, origin.clone()),
            (None, None, "http_status:404".to_owned()),
        ],
        "{rewritten}"
    );
    let new_pid = wait_for(LIMIT, "cloudflared running again", || {
        crate::cli::running_pid(&p, "tunnel").filter(|&n| n != pid)
    });
    let started = starts(&record);
    assert_eq!(started.len(), 2, "one restart: {started:?}");
    assert_eq!(started[1]["pid"].as_u64(), Some(new_pid));
    assert!(
        started[1]["config"]
            .as_str()
            .is_some_and(|c| c.contains("^/docs")),
        "{started:?}"
    );
    let status = wait_tunnel(&p, &first, "showing the API's connection", |t| {
        t["connections"] == 1 && t["colos"] == serde_json::json!(["DFW"])
    });
    assert_token_nowhere(&p, &first, &status, new_pid);
    // A reload that changes nothing the tunnel publishes leaves cloudflared alone.
    let out = p.run(&["runtime", "reload"]);
    assert!(out.status.success(), "reload: {}", stderr(&out));
    assert_eq!(crate::cli::running_pid(&p, "tunnel"), Some(new_pid));
    assert_eq!(starts(&record).len(), 2);
    down(&p, &mut first);
    // on_down = "keep" (the default): the record stays.
    assert_eq!(fake.records_named(&zone, "app.example.com").len(), 1);

    // The next up adopts the tunnel (its credentials are in the state dir) and its record.
    let mut second = up(&p);
    let status = wait_tunnel(&p, &second, "running again", |t| t["state"] == "running");
    assert_eq!(status["tunnel"]["created"], false, "{status:#}");
    assert_eq!(status["tunnel"]["id"], id.as_str(), "{status:#}");
    assert_eq!(
        status["tunnel"]["dns"],
        serde_json::json!([{"hostname": "app.example.com", "action": "unchanged"}]),
        "{status:#}"
    );
    assert_eq!(fake.tunnels(&account).len(), 1);
    assert_eq!(fake.records_named(&zone, "app.example.com").len(), 1);
    down(&p, &mut second);
    prism.assert_clean(&account);
    prism.assert_clean(&zone);
}

/// A tunnel made elsewhere (no credentials file here) is adopted and run with its token,
/// which cloudflared gets in its environment (`TUNNEL_TOKEN`), never in its arguments.
#[test]
fn an_adopted_tunnel_without_credentials_runs_with_its_token_in_the_environment() {
    let (prism, fake) = cloudflare();
    let (account, zone) = fake.account();
    let id = fake.add_tunnel(&account, "kinfra-tun");
    let run_token = format!("eyJhIjoi{account}IiwidCI6Ij{}", id.replace('-', ""));
    let p = Project::new();
    let record = standin(&p);
    p.write(
        "kinfra.toml",
        &config(&prism.url, &account, &zone, "./cloudflared-standin", ""),
    );
    let mut up = up(&p);
    let status = wait_tunnel(&p, &up, "running", |t| t["state"] == "running");
    assert_eq!(status["tunnel"]["created"], false, "{status:#}");
    assert_eq!(status["tunnel"]["id"], id.as_str(), "{status:#}");
    assert_eq!(fake.tunnels(&account).len(), 1);
    let pid = status["services"]["tunnel"]["pid"]
        .as_u64()
        .expect("cloudflared's pid");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("cloudflared's environ");
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        environ
            .split('\0')
            .any(|v| v == format!("TUNNEL_TOKEN={run_token}")),
        "no TUNNEL_TOKEN in cloudflared's environment"
    );
    let written = std::fs::read_to_string(
        status["tunnel"]["config_file"]
            .as_str()
            .expect("config_file"),
    )
    .expect("config.yml");
    assert!(!written.contains("credentials-file"), "{written}");
    assert_eq!(starts(&record).len(), 1);
    let logs = stdout(&p.run(&["runtime", "logs", "tunnel", "-n", "500"]));
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cloudflared's cmdline");
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    for (what, text) in [
        ("status", status.to_string()),
        ("runtime logs tunnel", logs),
        ("kinfra's output", up.lines().join("\n")),
        ("cloudflared's arguments", cmdline),
        ("config.yml", written),
    ] {
        assert!(
            !text.contains(&run_token) && !text.contains(TOKEN),
            "a token shows in {what}: {text}"
        );
    }
    down(&p, &mut up);
    prism.assert_clean(&account);
}

#[test]
fn on_down_delete_removes_the_dns_record_at_down() {
    let (prism, fake) = cloudflare();
    let (account, zone) = fake.account();
    let p = Project::new();
    standin(&p);
    // The token from a file this time (the user's own, 0600).
    let token_file = p.write("cf.token", &format!("{TOKEN}\n"));
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod the token file");
    p.write(
        "kinfra.toml",
        &config(
            &prism.url,
            &account,
            &zone,
            "./cloudflared-standin",
            "on_down = \"delete\"\n",
        )
        .replace("token = \"${CF_TOKEN}\"", "token_file = \"cf.token\""),
    );
    let mut up = p.up(&[], &[]);
    wait_tunnel(&p, &up, "running", |t| t["state"] == "running");
    assert_eq!(fake.records_named(&zone, "app.example.com").len(), 1);
    // The dashboard shows the tunnel's panel (its state and URLs) and cloudflared's card.
    let browser = crate::support::webdriver::Browser::start(1280, 900);
    browser.goto(&format!("http://{}/kinfra", up.dashboard_addr()));
    browser.wait_js(
        Duration::from_secs(20),
        "the tunnel panel running with both URLs, and the tunnel's card",
        "const box = document.querySelector('#tunnel-box'); \
         const links = [...box.querySelectorAll('a')].map((a) => a.href); \
         return !box.hidden && box.dataset.state === 'running' \
           && document.querySelector('#tunnel-state').textContent === 'running' \
           && links.includes('https://app.example.com/') \
           && links.includes('https://app.example.com/api') \
           && box.textContent.includes('kinfra-tun') \
           && document.querySelector('.card[data-name=\"tunnel\"]')?.dataset.state === 'running'",
    );
    // A record of the same zone that is not the tunnel's stays.
    fake.add_record(
        &zone,
        "CNAME",
        "other.example.com",
        "elsewhere.example.net",
        true,
    );
    down(&p, &mut up);
    assert!(
        fake.records_named(&zone, "app.example.com").is_empty(),
        "{:?}\n{}",
        fake.records(&zone),
        up.lines().join("\n")
    );
    assert_eq!(fake.records_named(&zone, "other.example.com").len(), 1);
    prism.assert_clean(&zone);
}

#[test]
fn a_missing_cloudflared_or_a_refused_token_fails_the_tunnel_alone() {
    let (prism, fake) = cloudflare();
    let (account, zone) = fake.account();
    // No cloudflared anywhere: the tunnel fails with the install hint, before any API call.
    let p = Project::with_config(&config(
        &prism.url,
        &account,
        &zone,
        "cloudflared-not-installed-here",
        "",
    ));
    let mut first = up(&p);
    first.wait_for_line(
        LIMIT,
        "tunnel: failed — tunnel: `cloudflared-not-installed-here` is not on PATH (install cloudflared: https://pkg.cloudflare.com",
    );
    let status = wait_tunnel(&p, &first, "failed", |t| t["state"] == "failed");
    let message = status["tunnel"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("`cloudflared-not-installed-here` is not on PATH")
            && message.contains("install cloudflared: https://pkg.cloudflare.com"),
        "{status:#}"
    );
    // Everything else runs.
    wait_for(LIMIT, "web running", || {
        crate::cli::running_pid(&p, "web").map(|_| ())
    });
    assert!(status["services"].get("tunnel").is_none(), "{status:#}");
    assert!(fake.tunnels(&account).is_empty());
    let table = stdout(&p.run(&["runtime", "status"]));
    assert!(
        table.contains("tunnel kinfra-tun: failed — `cloudflared-not-installed-here`"),
        "{table}"
    );
    down(&p, &mut first);

    // Installed later: a reload (nothing changed) tries the failed tunnel again.
    let p = Project::with_config(&config(
        &prism.url,
        &account,
        &zone,
        "./cloudflared-standin",
        "",
    ));
    let mut later = up(&p);
    let status = wait_tunnel(&p, &later, "failed", |t| t["state"] == "failed");
    let message = status["tunnel"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("cloudflared not found at")
            && message.contains("cloudflared-standin")
            && message.contains("install cloudflared: https://pkg.cloudflare.com"),
        "{status:#}"
    );
    standin(&p);
    let out = p.run(&["runtime", "reload"]);
    assert!(out.status.success(), "reload: {}", stderr(&out));
    wait_tunnel(&p, &later, "running after the reload", |t| {
        t["state"] == "running"
    });
    down(&p, &mut later);
    // That tunnel is the account's only one (the refused token below creates none).
    assert_eq!(fake.tunnels(&account).len(), 1);

    // A refused token: the tunnel fails with Cloudflare's answer; the token shows nowhere.
    let p = Project::new();
    standin(&p);
    p.write(
        "kinfra.toml",
        &config(&prism.url, &account, &zone, "./cloudflared-standin", ""),
    );
    let mut second = p.up(&[], &[("CF_TOKEN", "cf_wrong_token_0000000000")]);
    let status = wait_tunnel(&p, &second, "failed", |t| t["state"] == "failed");
    let message = status["tunnel"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("refused the token"), "{status:#}");
    assert!(!status.to_string().contains("cf_wrong_token"), "{status:#}");
    assert!(!second.lines().join("\n").contains("cf_wrong_token"));
    wait_for(LIMIT, "web running", || {
        crate::cli::running_pid(&p, "web").map(|_| ())
    });
    down(&p, &mut second);
    assert_eq!(fake.tunnels(&account).len(), 1);
    prism.assert_clean(&account);
}

#[test]
fn config_check_names_the_tunnel_key() {
    for (extra, key, fragment) in [
        (
            "hostnames = [\"https://app.example.com\"]\n",
            "tunnel.hostnames[0]",
            "has a scheme",
        ),
        (
            "hostnames = []\n",
            "tunnel.hostnames",
            "at least one hostname",
        ),
        (
            "hostnames = [\"app.example.com\"]\nmetrics = \"nope\"\n",
            "tunnel.metrics",
            "invalid address",
        ),
        (
            "hostnames = [\"app.example.com\"]\non_down = \"pause\"\n",
            "tunnel.on_down",
            "expected one of: keep, delete",
        ),
    ] {
        let p = Project::with_config(&format!(
            "[project]\nname = \"tun\"\n[tunnel]\naccount_id = \"a\"\nzone_id = \"z\"\ntoken = \"t\"\n{extra}"
        ));
        let out = p.run(&["config", "check"]);
        let text = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{extra}: {text}");
        assert!(
            text.contains(key) && text.contains(fragment),
            "{key} / {fragment} not in: {text}"
        );
    }
}
