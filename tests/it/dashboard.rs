//! The dashboard for real: headless Chromium clicking restart and seeing the change arrive
//! live, SSE resume over a dropped connection, and the token's protection.

use crate::support::webdriver::Browser;
use crate::support::{Project, pids_tagged, stderr, stdout, unique_tag, wait_for};
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn config(tag: &str) -> String {
    format!(
        "[project]\nname = \"dash\"\n[env]\nKINFRA_TEST_TAG = \"{tag}\"\n\
         [dashboard]\nlisten = \"127.0.0.1:0\"\n\
         [services.web]\ncommand = \"echo web up; exec sleep 1000\"\n\
         [services.jobs]\ncommand = \"echo jobs up; exec sleep 1000\"\n"
    )
}

fn artifact(name: &str, png: &[u8]) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&dir).expect("artifact dir");
    let path = dir.join(name);
    std::fs::write(&path, png).expect("write screenshot");
    path
}

#[test]
fn browser_sees_services_clicks_restart_and_gets_the_change_live() {
    let tag = unique_tag("e2e");
    let p = Project::with_config(&config(&tag));
    let mut up = p.up(&[], &[]);
    let out = p.run(&["dashboard", "url"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let login = stdout(&out).trim().to_string();
    assert!(login.contains("/kinfra/login#"), "{login}");
    // The generated token file is private.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(p.path().join(".kinfra/dashboard.token"))
            .expect("token file")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    // The token never shows in the foreground output.
    let token = login.rsplit('#').next().unwrap_or_default().to_string();
    assert!(token.len() >= 32);

    let browser = Browser::start(1280, 900);
    browser.goto(&login);
    browser.wait_js(
        Duration::from_secs(20),
        "the dashboard with both cards, logged in",
        "return location.pathname === '/kinfra' \
           && document.querySelectorAll('.card').length === 2 \
           && document.querySelector('#session').textContent.includes('signed in') \
           && document.querySelector('.card[data-name=\"web\"] .pid').textContent !== '–'",
    );
    let before = browser.js(
        "window.__kept = 'same page'; return document.querySelector('.card[data-name=\"web\"] .pid').textContent",
        json!([]),
    );
    assert_eq!(
        browser.js(
            "return document.querySelector('#stat-running').textContent",
            json!([])
        ),
        "2"
    );
    browser.click(".card[data-name=\"web\"] button[data-action=\"restart\"]");
    let after = browser.wait_js(
        Duration::from_secs(20),
        "a new pid for web, pushed live",
        &format!(
            "const c = document.querySelector('.card[data-name=\"web\"]'); \
             const pid = c.querySelector('.pid').textContent; \
             return (c.dataset.state === 'running' && pid !== '{}' && pid !== '–') ? pid : null",
            before.as_str().unwrap_or("")
        ),
    );
    assert_ne!(after, before);
    // No reload happened: the update came over the event stream.
    assert_eq!(browser.js("return window.__kept", json!([])), "same page");
    // The timeline shows the restart.
    browser.wait_js(
        Duration::from_secs(5),
        "the restart in the timeline",
        "return document.querySelector('#timeline').textContent.includes('web: started pid')",
    );
    let png = browser.screenshot();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let path = artifact("dashboard.png", &png);
    eprintln!("dashboard screenshot: {}", path.display());

    // Phone width: no horizontal scrolling.
    browser.set_window(390, 844);
    browser.wait_js(
        Duration::from_secs(5),
        "a layout without horizontal overflow",
        "return document.documentElement.scrollWidth <= window.innerWidth + 1",
    );
    artifact("dashboard-phone.png", &browser.screenshot());
    drop(browser);

    assert!(
        !up.lines().iter().any(|l| l.contains(&token)),
        "token leaked to output"
    );
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
    assert!(pids_tagged(&tag).is_empty());
}

/// Reads SSE messages from a raw socket until `pred` says stop; returns (event, id, data).
fn read_sse(
    reader: &mut BufReader<TcpStream>,
    mut stop: impl FnMut(&[(String, Option<u64>, String)]) -> bool,
) -> Vec<(String, Option<u64>, String)> {
    let mut out = Vec::new();
    let (mut event, mut id, mut data) = (String::new(), None, String::new());
    let mut line = String::new();
    while !stop(&out) {
        line.clear();
        let n = reader.read_line(&mut line).expect("read SSE line");
        assert!(n > 0, "stream ended early after {out:?}");
        let l = line.trim_end_matches(['\r', '\n']);
        // Chunked transfer: skip the chunk-size lines.
        if !l.contains(':') && !l.is_empty() && l.chars().all(|c| c.is_ascii_hexdigit()) {
            continue;
        }
        if l.is_empty() {
            if !event.is_empty() {
                out.push((
                    std::mem::take(&mut event),
                    id.take(),
                    std::mem::take(&mut data),
                ));
            }
            continue;
        }
        if let Some(v) = l.strip_prefix("event: ") {
            event = v.to_string();
        } else if let Some(v) = l.strip_prefix("id: ") {
            id = v.parse().ok();
        } else if let Some(v) = l.strip_prefix("data: ") {
            data.push_str(v);
        }
    }
    out
}

fn open_events(addr: &str, last_id: Option<u64>) -> BufReader<TcpStream> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let resume = last_id
        .map(|id| format!("Last-Event-ID: {id}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET /__events__ HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{resume}\r\n"
    )
    .expect("request");
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line).expect("headers");
        if line == "\r\n" {
            break;
        }
    }
    reader
}

#[test]
fn sse_resume_after_a_dropped_connection_has_no_gap_or_duplicate() {
    let tag = unique_tag("sse");
    let p = Project::with_config(&config(&tag));
    let mut up = p.up(&[], &[]);
    let addr = up.dashboard_addr();
    wait_for(Duration::from_secs(20), "both running", || {
        let (_, body) = crate::support::http_get(&addr, "/__status__").ok()?;
        (body.matches("\"running\"").count() >= 2).then_some(())
    });
    let mut first = open_events(&addr, None);
    let msgs = read_sse(&mut first, |m| !m.is_empty());
    assert_eq!(msgs[0].0, "snapshot");
    let seen = msgs[0].1.expect("snapshot id");
    drop(first); // the connection drops

    // Events happen while no one listens.
    for service in ["web", "jobs"] {
        let out = p.run(&["runtime", "restart", service]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let mut again = open_events(&addr, Some(seen));
    let msgs = read_sse(&mut again, |m| {
        m.iter().any(|(e, _, d)| {
            e == "events" && d.contains("\"service\":\"jobs\"") && d.contains("\"to\":\"running\"")
        })
    });
    let mut seqs = Vec::new();
    for (event, _, data) in &msgs {
        assert_ne!(
            event, "snapshot",
            "a resume within the history must not start over"
        );
        if event == "events" {
            let v: Vec<serde_json::Value> = serde_json::from_str(data).expect("events json");
            seqs.extend(v.iter().filter_map(|e| e["seq"].as_u64()));
        }
    }
    assert_eq!(seqs.first(), Some(&(seen + 1)), "first resumed event");
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "gap or duplicate in {seqs:?}"
    );
    drop(again);
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
}

#[test]
fn real_server_refuses_foreign_origin_and_missing_token() {
    let tag = unique_tag("deny");
    let p = Project::with_config(&config(&tag));
    let mut up = p.up(&[], &[]);
    let addr = up.dashboard_addr();
    let token = std::fs::read_to_string(p.path().join(".kinfra/dashboard.token"))
        .expect("token")
        .trim()
        .to_string();
    let post = |headers: &str| -> u16 {
        let mut s = TcpStream::connect(&addr).expect("connect");
        write!(
            s,
            "POST /__action__/restart/web HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .expect("write");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("read");
        text.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(post(""), 401);
    assert_eq!(
        post(&format!(
            "Authorization: Bearer {token}\r\nOrigin: http://evil.example\r\n"
        )),
        403
    );
    // The token is no session: as a cookie it is nothing, with or without an Origin.
    assert_eq!(post(&format!("Cookie: kinfra_session={token}\r\n")), 401);
    assert_eq!(
        post(&format!(
            "Cookie: kinfra_session={token}\r\nOrigin: http://{addr}\r\n"
        )),
        401
    );
    assert_eq!(post(&format!("Authorization: Bearer {token}\r\n")), 200);
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
}

/// 200 services: the page shows them all, search narrows them, and an event updates one
/// card in place (no card is re-created).
#[test]
fn two_hundred_services_stay_usable() {
    let tag = unique_tag("many");
    let mut config = format!(
        "[project]\nname = \"many\"\n[env]\nKINFRA_TEST_TAG = \"{tag}\"\n\
         [dashboard]\nlisten = \"127.0.0.1:0\"\n"
    );
    for i in 0..200 {
        config.push_str(&format!(
            "[services.s{i:03}]\ncommand = \"exec sleep 1000\"\nstop_grace = \"2s\"\n"
        ));
    }
    let p = Project::with_config(&config);
    let mut up = p.up(&[], &[]);
    let addr = up.dashboard_addr();
    wait_for(Duration::from_secs(60), "200 running", || {
        (pids_tagged(&tag).len() == 200).then_some(())
    });
    let browser = Browser::start(1280, 900);
    browser.goto(&format!("http://{addr}/kinfra"));
    browser.wait_js(
        Duration::from_secs(30),
        "200 cards, all running",
        "return document.querySelectorAll('.card[data-state=\"running\"]').length === 200",
    );
    assert_eq!(
        browser.js(
            "return document.querySelector('#stat-total').textContent",
            json!([])
        ),
        "200"
    );
    // The store's state is on the page (engine location and committed writes).
    browser.wait_js(
        Duration::from_secs(10),
        "the store line",
        "return [...document.querySelectorAll('#infra li')].some(li => \
         li.textContent.startsWith('store: ') && li.textContent.includes(' written'))",
    );
    // Mark every card node; a full re-render would lose the marks.
    browser.js(
        "document.querySelectorAll('.card').forEach(c => c.__mark = 1); return true",
        json!([]),
    );
    let before = browser.js(
        "return document.querySelector('.card[data-name=\"s123\"] .pid').textContent",
        json!([]),
    );
    let out = p.run(&["runtime", "restart", "s123"]);
    assert!(out.status.success(), "{}", stderr(&out));
    browser.wait_js(
        Duration::from_secs(20),
        "s123's new pid on the page",
        &format!(
            "const c = document.querySelector('.card[data-name=\"s123\"]'); \
             return c.dataset.state === 'running' && c.querySelector('.pid').textContent !== '{}'",
            before.as_str().unwrap_or("")
        ),
    );
    assert_eq!(
        browser.js(
            "return [...document.querySelectorAll('.card')].filter(c => c.__mark === 1).length",
            json!([])
        ),
        200,
        "cards were re-created instead of updated"
    );
    // Search narrows to matching cards; the state chips filter too.
    browser.js(
        "const s = document.querySelector('#search'); s.value = 's19'; \
         s.dispatchEvent(new Event('input')); return true",
        json!([]),
    );
    let visible = browser.js(
        "return [...document.querySelectorAll('.card')].filter(c => !c.hidden).map(c => c.dataset.name)",
        json!([]),
    );
    let names: Vec<&str> = visible
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names.len(), 10, "{names:?}");
    assert!(names.iter().all(|n| n.starts_with("s19")));
    browser.click("button[data-filter=\"stopped\"]");
    browser.wait_js(
        Duration::from_secs(5),
        "no stopped service matches",
        "return [...document.querySelectorAll('.card')].every(c => c.hidden) \
           && !document.querySelector('#empty').hidden",
    );
    drop(browser);
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(60)).success());
    wait_for(Duration::from_secs(10), "nothing left", || {
        pids_tagged(&tag).is_empty().then_some(())
    });
}

/// A provider resource's card lists its commands when "Commands" is opened; "Dry run" shows
/// the planned request (a process's card has no command list). A command's parameters are
/// typed inputs (required ones marked, defaults filled in): a dry-run with a required one
/// left empty shows the missing-parameter problem, filled in it shows the planned request;
/// "Run" on a command that needs confirmation asks first and sends `yes`.
#[test]
fn a_provider_resource_card_lists_its_commands_and_dry_runs_one() {
    let tag = unique_tag("e2e-cmd");
    // Nothing listens on the API's port: dry-runs send nothing, and the one real run fails
    // to connect (after confirmation).
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let p = Project::with_config(&format!(
        "[project]\nname = \"dash\"\n[env]\nKINFRA_TEST_TAG = \"{tag}\"\n\
         [dashboard]\nlisten = \"127.0.0.1:0\"\n[proxy]\nenabled = false\n\
         [providers.sh]\nprovider = \"command\"\n\
         [providers.cloud]\nprovider = \"http-api\"\nbase_url = \"http://{closed}/v1\"\nauth = \"none\"\n\
         [resources.flag]\nprovider = \"sh\"\ninterval = \"200ms\"\n\
         start = \"touch flag.state\"\nstop = \"rm -f flag.state\"\nstatus = \"test -f flag.state\"\n\
         [resources.db]\nprovider = \"cloud\"\nproject_id = \"p1\"\ncommands = [\n\
           {{ id = \"scale\", method = \"POST\", path = \"/projects/{{project_id}}/scale\", \
              description = \"Set the size.\", params = [\n\
               {{ name = \"replicas\", kind = \"integer\", required = true, description = \"How many.\" }},\n\
               {{ name = \"tier\", kind = \"enum\", values = [\"small\", \"large\"], default = \"small\" }},\n\
               {{ name = \"force\", kind = \"boolean\" }},\n\
               {{ name = \"key\", kind = \"secret\" }},\n\
           ] }},\n\
           {{ id = \"drop\", method = \"DELETE\", path = \"/projects/{{project_id}}\", confirm = true }},\n\
         ]\n\
         [services.web]\ncommand = \"echo web up; exec sleep 1000\"\n"
    ));
    let mut up = p.up(&[], &[]);
    let out = p.run(&["dashboard", "url"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let login = stdout(&out).trim().to_string();

    let browser = Browser::start(1280, 900);
    browser.goto(&login);
    browser.wait_js(
        Duration::from_secs(20),
        "three cards, logged in",
        "return location.pathname === '/kinfra' \
           && document.querySelectorAll('.card').length === 3 \
           && document.querySelector('#session').textContent.includes('signed in')",
    );
    assert_eq!(
        browser.js(
            "return [document.querySelector('.card[data-name=\"web\"] .cmds').hidden, \
                     document.querySelector('.card[data-name=\"flag\"] .cmds').hidden, \
                     document.querySelector('.card[data-name=\"db\"] .cmds').hidden]",
            json!([])
        ),
        json!([true, false, false])
    );
    browser.click(".card[data-name=\"flag\"] .cmds summary");
    browser.wait_js(
        Duration::from_secs(10),
        "flag's commands, start among them",
        "return [...document.querySelectorAll('.card[data-name=\"flag\"] .cmd-list li')] \
           .some(li => li.dataset.command === 'start')",
    );
    browser.click(".card[data-name=\"flag\"] li[data-command=\"start\"] button.dry");
    let shown = browser.wait_js(
        Duration::from_secs(10),
        "the planned EXEC of start",
        "const o = document.querySelector('.card[data-name=\"flag\"] li[data-command=\"start\"] .cmd-result'); \
         return (!o.hidden && o.textContent.includes('EXEC')) ? o.textContent : null",
    );
    let shown = shown.as_str().unwrap_or_default();
    assert!(
        shown.contains("start (dry run)") && shown.contains("touch flag.state"),
        "{shown}"
    );

    // The http-api resource's declared commands: one input per parameter, by kind.
    browser.click(".card[data-name=\"db\"] .cmds summary");
    browser.wait_js(
        Duration::from_secs(10),
        "db's scale form",
        "return document.querySelector('.card[data-name=\"db\"] li[data-command=\"scale\"] form') !== null",
    );
    let scale = ".card[data-name=\"db\"] li[data-command=\"scale\"]";
    let inputs = browser.js(
        &format!(
            "const li = document.querySelector('{scale}'); \
             const i = (n) => li.querySelector(`[name=\"${{n}}\"]`); \
             return {{ replicas: [i('replicas').type, i('replicas').required, \
                        li.querySelector('label[data-param=\"replicas\"] .req') !== null], \
                      tier: [i('tier').tagName, i('tier').value], \
                      force: [i('force').type, i('force').checked], \
                      key: i('key').type, \
                      dropRun: document.querySelector('.card[data-name=\"db\"] li[data-command=\"drop\"] button.run').className }}"
        ),
        json!([]),
    );
    assert_eq!(
        inputs,
        json!({
            "replicas": ["number", true, true],
            "tier": ["SELECT", "small"],
            "force": ["checkbox", false],
            "key": "password",
            "dropRun": "run danger",
        })
    );
    // A dry-run with the required parameter left empty: the runtime's problem, named.
    browser.click(&format!("{scale} button.dry"));
    let problem = browser.wait_js(
        Duration::from_secs(10),
        "the missing-parameter problem",
        &format!(
            "const o = document.querySelector('{scale} .cmd-result'); \
             return (!o.hidden && o.classList.contains('problem')) ? o.textContent : null"
        ),
    );
    let problem = problem.as_str().unwrap_or_default();
    assert!(
        problem.contains("scale: refused")
            && problem.contains("parameter `replicas`: missing (required)"),
        "{problem}"
    );
    // Filled in: the planned request, typed body with the default.
    browser.js(
        &format!("document.querySelector('{scale} [name=\"replicas\"]').value = '3'; return true"),
        json!([]),
    );
    browser.click(&format!("{scale} button.dry"));
    let planned = browser.wait_js(
        Duration::from_secs(10),
        "the planned POST of scale",
        &format!(
            "const o = document.querySelector('{scale} .cmd-result'); \
             return (!o.hidden && !o.classList.contains('problem') && o.textContent.includes('POST')) \
               ? o.textContent : null"
        ),
    );
    let planned = planned.as_str().unwrap_or_default();
    assert!(
        planned.contains("scale (dry run)")
            && planned.contains(&format!("POST http://{closed}/v1/projects/p1/scale"))
            && planned.contains(r#"{"replicas":3,"tier":"small"}"#),
        "{planned}"
    );

    // Each execution shows in the timeline, in words.
    browser.wait_js(
        Duration::from_secs(10),
        "the dry-run in the timeline",
        "return [...document.querySelectorAll('#timeline li')] \
           .some(li => li.textContent.includes('db: scale (dry run) ok'))",
    );

    // "Run" on a command that needs confirmation asks; declined, nothing is sent.
    let drop_cmd = ".card[data-name=\"db\"] li[data-command=\"drop\"]";
    browser.js(
        "window.__asked = []; window.confirm = (q) => { window.__asked.push(q); return false; }; return true",
        json!([]),
    );
    browser.click(&format!("{drop_cmd} button.run"));
    assert_eq!(
        browser.js(
            &format!(
                "return [window.__asked.length, document.querySelector('{drop_cmd} .cmd-result').hidden]"
            ),
            json!([])
        ),
        json!([1, true])
    );
    // Accepted: it is sent with `yes` (no confirmation problem) and fails to reach the API.
    browser.js(
        "window.confirm = (q) => { window.__asked.push(q); return true; }; return true",
        json!([]),
    );
    browser.click(&format!("{drop_cmd} button.run"));
    let failed = browser.wait_js(
        Duration::from_secs(60),
        "the run's failure",
        &format!(
            "const o = document.querySelector('{drop_cmd} .cmd-result'); \
             return (!o.hidden) ? o.textContent : null"
        ),
    );
    let failed = failed.as_str().unwrap_or_default();
    assert!(
        failed.starts_with("drop: ")
            && !failed.contains("needs confirmation")
            && failed.contains("connection failed"),
        "{failed}"
    );
    artifact("dashboard-commands.png", &browser.screenshot());
    drop(browser);
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
    assert!(pids_tagged(&tag).is_empty());
}

/// The value of a plot's newest point (`data-last`, line `line`), or null.
fn plot_last(card: &str, kind: &str, line: usize) -> String {
    format!(
        "const f = document.querySelector('{card} .plot[data-kind=\"{kind}\"]'); \
         const last = f ? JSON.parse(f.dataset.last || '[]')[{line}] : null; \
         return last ? last.v : null"
    )
}

#[test]
fn plots_draw_the_last_hour_and_move_with_restarts_and_requests() {
    let tag = unique_tag("plot");
    let p = Project::with_config(&format!(
        "[project]\nname = \"plots\"\n[env]\nKINFRA_TEST_TAG = \"{tag}\"\n\
         [dashboard]\nlisten = \"127.0.0.1:0\"\n[proxy]\nhttp = \"127.0.0.1:0\"\n\
         [services.app]\ncommand = [\"python3\", \"-m\", \"http.server\", \"--bind\", \"127.0.0.1\", \"${{PORT}}\"]\n\
         port = \"auto\"\nhealth = {{ http = \"/\", interval = \"300ms\" }}\n\
         [[routes]]\npath = \"/\"\nservice = \"app\"\n"
    ));
    p.write("served.txt", "served\n");
    let mut up = p.up(&[], &[]);
    let proxy = {
        let line = up.wait_for_line(Duration::from_secs(10), "proxy       http://");
        line.split("http://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .expect("proxy address in the banner")
            .to_string()
    };
    let out = p.run(&["dashboard", "url"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let login = stdout(&out).trim().to_string();

    let browser = Browser::start(1280, 900);
    browser.goto(&login);
    let app = ".card[data-name=\"app\"]";
    // Each service's card draws CPU, memory and restarts as SVG with points in it.
    browser.wait_js(
        Duration::from_secs(30),
        "the app card's plots with a point each",
        &format!(
            "const c = document.querySelector('{app}'); \
             if (!c || c.dataset.state !== 'running') return null; \
             const figs = [...c.querySelectorAll('.plot')]; \
             const kinds = figs.map((f) => f.dataset.kind).join(','); \
             const drawn = figs.every((f) => +f.dataset.points >= 1 \
               && f.querySelector('svg path.line, svg circle.dot')); \
             return kinds === 'cpu,memory,restarts' && drawn ? kinds : null"
        ),
    );
    assert_eq!(
        browser.js(&plot_last(app, "restarts", 0), json!([])),
        json!(0)
    );
    let first_points = browser
        .js(
            &format!(
                "return +document.querySelector('{app} .plot[data-kind=\"restarts\"]').dataset.points"
            ),
            json!([]),
        )
        .as_u64()
        .unwrap_or(0);
    let memory = browser.js(&plot_last(app, "memory", 0), json!([]));
    assert!(memory.as_f64().unwrap_or(0.0) > 1_000_000.0, "{memory}");
    // No request went through the proxy yet: the traffic box says so.
    browser.wait_js(
        Duration::from_secs(10),
        "the traffic box's empty state",
        "const b = document.querySelector('#traffic-box'); \
         return !b.hidden && b.textContent.includes('No requests through the proxy yet.') ? true : null",
    );

    // Requests through the route: the route's rate, error rate and latency plots appear
    // and show them.
    for _ in 0..20 {
        let (code, _, body) = crate::proxy::get(&proxy, "/served.txt", "text/plain");
        assert_eq!((code, body.as_str()), (200, "served\n"));
    }
    let route = "#traffic .route-plots[data-route=\"app\"]";
    let rate = browser.wait_js(
        Duration::from_secs(30),
        "a request rate above zero on the app route",
        &format!(
            "const v = (() => {{ {} }})(); return v > 0 ? v : null",
            plot_last(route, "rate", 0)
        ),
    );
    assert!(rate.as_f64().unwrap_or(0.0) > 0.0);
    assert_eq!(
        browser.js(&plot_last(route, "errors", 0), json!([])),
        json!(0)
    );
    let p50 = browser.js(&plot_last(route, "latency", 0), json!([]));
    let p99 = browser.js(&plot_last(route, "latency", 1), json!([]));
    assert!(
        p50.as_f64().unwrap_or(-1.0) > 0.0 && p99.as_f64() >= p50.as_f64(),
        "p50 {p50} p99 {p99}"
    );

    // A restart moves the restarts plot.
    browser.wait_js(
        Duration::from_secs(10),
        "signed in",
        "return document.querySelector('#session').textContent.includes('signed in') || null",
    );
    browser.click(&format!("{app} button[data-action=\"restart\"]"));
    browser.wait_js(
        Duration::from_secs(30),
        "the restart on the restarts plot",
        &format!(
            "const v = (() => {{ {} }})(); return v === 1 ? v : null",
            plot_last(app, "restarts", 0)
        ),
    );
    // The history is a dashboard path through the proxy too (reserved under /kinfra).
    let (code, _, body) = crate::proxy::get(&proxy, "/kinfra/history", "application/json");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("history json");
    assert!(v["routes"]["app"].is_array(), "{body}");
    // The page keeps asking while it is open: a new 10 s step adds a point.
    browser.wait_js(
        Duration::from_secs(40),
        "a new point on the restarts plot",
        &format!(
            "const n = +document.querySelector('{app} .plot[data-kind=\"restarts\"]').dataset.points; \
             return n > {first_points} ? n : null"
        ),
    );
    // The newest point is drawn at the right edge (the viewBox is 120 wide), the older ones
    // to its left.
    let right = browser.js(
        &format!(
            "const b = document.querySelector('{app} .plot[data-kind=\"restarts\"] path.line').getBBox(); \
             return [b.x, b.x + b.width]"
        ),
        json!([]),
    );
    let (from, to) = (right[0].as_f64(), right[1].as_f64());
    assert!(
        to.is_some_and(|to| to > 110.0) && from < to,
        "restarts drawn from {from:?} to {to:?}"
    );
    artifact("dashboard-plots.png", &browser.screenshot());
    drop(browser);

    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
    assert!(pids_tagged(&tag).is_empty());
}
