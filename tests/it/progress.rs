//! Progress of long work through `kinfra runtime up` (issue 23): a container resource whose
//! multi-layer image is pulled from a real registry on 127.0.0.1 (Debian's `docker-registry`,
//! behind a rate-limited relay so the pull takes a few seconds) shows the pull's bytes and
//! percent in `/__status__`, as `progress` events over SSE (rising, with a total, ending at
//! `complete` and then `null`), as lines in the foreground output and as a bar on the
//! dashboard card in headless Chromium; a Render resource whose deploy builds (the stateful
//! fake behind Prism) shows the provider's phase and elapsed time, with no percent.

use crate::docker::docker_support;
use crate::render::render_fake::{self, TOKEN};
use crate::support::webdriver::Browser;
use crate::support::{Project, Up, stderr, stdout, unique_tag, wait_for};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("docker runs")
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(out.status.success(), "docker {args:?}: {}", stderr(&out));
    stdout(&out).trim().to_owned()
}

/// A `docker-registry serve` on 127.0.0.1 without auth, its storage in a temp dir.
struct Registry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    fn start() -> Self {
        assert!(
            Path::new("/usr/bin/docker-registry").is_file(),
            "no /usr/bin/docker-registry: install docker-registry (`./x test` does)"
        );
        let dir = tempfile::Builder::new()
            .prefix("kinfra-progress-registry-")
            .tempdir()
            .expect("tempdir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let addr = format!("127.0.0.1:{port}");
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {addr}\n  secret: kinfra-progress-secret\n",
            dir.path().join("storage").display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log file");
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let registry = Self {
            child,
            addr,
            _dir: dir,
        };
        wait_for(Duration::from_secs(30), "the registry answers /v2/", || {
            let mut s = TcpStream::connect(&registry.addr).ok()?;
            write!(
                s,
                "GET /v2/ HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                registry.addr
            )
            .ok()?;
            let mut text = String::new();
            s.read_to_string(&mut text).ok()?;
            text.starts_with("HTTP/1.1 200").then_some(())
        });
        registry
    }
}

/// A TCP relay on 127.0.0.1 to `target` that passes the answers on at about 4 MB/s per
/// connection, so a pull of a few tens of MB over loopback takes seconds, not milliseconds.
/// Its threads live as long as the test process (blocked in accept when unused).
fn slow_relay(target: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("relay listener");
    let addr = listener.local_addr().expect("relay addr").to_string();
    std::thread::spawn(move || {
        for client in listener.incoming().map_while(Result::ok) {
            let Ok(upstream) = TcpStream::connect(&target) else {
                continue;
            };
            let (Ok(mut c_read), Ok(mut u_read)) = (client.try_clone(), upstream.try_clone())
            else {
                continue;
            };
            let (mut c_write, mut u_write) = (client, upstream);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_read, &mut u_write);
                let _ = u_write.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                loop {
                    match u_read.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if c_write.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            // 16 KiB per 4 ms: about 4 MB/s.
                            std::thread::sleep(Duration::from_millis(4));
                        }
                    }
                }
                let _ = c_write.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
}

/// Builds an image of the busybox test image plus `layers` layers of `mb` MB of random data
/// each (`docker run` + `docker commit`), pushes it to `registry` as `repo:1` and removes
/// it and its steps from the engine, so that running it needs a pull.
fn push_layered_image(registry: &str, repo: &str, layers: usize, mb: usize) {
    let mut from = docker_support::BUSYBOX.to_owned();
    let mut steps = Vec::new();
    for i in 0..layers {
        let ctr = format!("{}-step{i}", repo.replace('/', "-"));
        let _ = docker(&["rm", "-f", &ctr]);
        docker_ok(&[
            "run",
            "--name",
            &ctr,
            "--network",
            "none",
            &from,
            "sh",
            "-c",
            &format!("head -c {} /dev/urandom > /layer{i}.bin", mb * 1_000_000),
        ]);
        let step = format!("{registry}/{repo}:step{i}");
        docker_ok(&["commit", &ctr, &step]);
        docker_ok(&["rm", "-f", &ctr]);
        steps.push(step.clone());
        from = step;
    }
    let image = format!("{registry}/{repo}:1");
    docker_ok(&["tag", &from, &image]);
    docker_ok(&["push", &image]);
    docker_ok(&["rmi", &image]);
    for step in steps.iter().rev() {
        docker_ok(&["rmi", step]);
    }
}

/// Removes the project's containers and the pulled image, whatever the test did.
struct Cleanup {
    project: String,
    image: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let label = format!("label=dev.kinfra.project={}", self.project);
        let out = docker(&["ps", "-aq", "--filter", &label]);
        for id in stdout(&out).lines() {
            let _ = docker(&["rm", "-f", id]);
        }
        let _ = docker(&["rmi", &self.image]);
    }
}

/// Reads the dashboard's SSE stream in a thread: every `progress` event about `service` and
/// every status of it that came with a batch (the `services` messages).
struct SseLog {
    progress: Arc<Mutex<Vec<Value>>>,
    statuses: Arc<Mutex<Vec<Value>>>,
}

fn follow_events(addr: &str, service: &'static str) -> SseLog {
    let mut s = TcpStream::connect(addr).expect("connect to the dashboard");
    write!(
        s,
        "GET /__events__ HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .expect("request");
    let log = SseLog {
        progress: Arc::default(),
        statuses: Arc::default(),
    };
    let (progress, statuses) = (log.progress.clone(), log.statuses.clone());
    std::thread::spawn(move || {
        let mut event = String::new();
        for line in BufReader::new(s).lines().map_while(Result::ok) {
            let line = line.trim_end();
            if let Some(v) = line.strip_prefix("event: ") {
                event = v.to_owned();
            } else if let Some(data) = line.strip_prefix("data: ") {
                let Ok(value) = serde_json::from_str::<Value>(data) else {
                    continue;
                };
                match event.as_str() {
                    "events" => {
                        for e in value.as_array().into_iter().flatten() {
                            if e["type"] == "progress" && e["service"] == service {
                                progress.lock().expect("lock").push(e["progress"].clone());
                            }
                        }
                    }
                    "services" if !value[service].is_null() => {
                        statuses.lock().expect("lock").push(value[service].clone());
                    }
                    _ => {}
                }
            }
        }
    });
    log
}

#[test]
fn an_image_pull_shows_its_bytes_in_status_events_output_and_the_dashboard_card() {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(docker_support::docker());
    let registry = Registry::start();
    let relay = slow_relay(registry.addr.clone());
    let name = unique_tag("progress").replace('_', "-");
    let repo = format!("kinfra-progress/{name}");
    // Three layers of 6 MB: several seconds through the relay.
    push_layered_image(&registry.addr, &repo, 3, 6);
    let image = format!("{relay}/{repo}:1");
    let _cleanup = Cleanup {
        project: name.clone(),
        image: image.clone(),
    };
    assert!(
        !docker(&["image", "inspect", &image]).status.success(),
        "the image must not be present before the test"
    );
    // The resource waits for `gate`, which ends once the test has the dashboard open: the
    // whole pull happens while the test watches.
    let p = Project::with_config(&format!(
        r#"
[project]
name = "{name}"

[dashboard]
listen = "127.0.0.1:0"

[proxy]
enabled = false

[services.gate]
command = "while [ ! -e go ]; do sleep 0.1; done"
restart = "no"

[resources.big]
template = "docker"
image = "{image}"
command = "exec sleep 1000"
depends_on = {{ gate = "completed_successfully" }}
"#
    ));
    let mut up: Up = p.up(&[], &[]);
    let addr = up.dashboard_addr();
    let sse = follow_events(&addr, "big");
    let browser = Browser::start(1280, 900);
    browser.goto(&format!("http://{addr}/kinfra"));
    browser.wait_js(
        Duration::from_secs(20),
        "the card of big",
        "return document.querySelector('.card[data-name=\"big\"]') !== null",
    );
    // Record what the card's bar shows whenever it is visible.
    browser.js(
        "window.__bars = []; setInterval(() => { \
           const p = document.querySelector('.card[data-name=\"big\"] .progress'); \
           if (p && !p.hidden) window.__bars.push([p.querySelector('progress').getAttribute('value'), \
             p.querySelector('.progress-text').textContent, p.getBoundingClientRect().width]); \
         }, 50); return true;",
        json!([]),
    );
    std::fs::write(p.path().join("go"), "").expect("open the gate");

    // Status carries the pull while it runs.
    let during = wait_for(LIMIT, "big's status with the pull's progress", || {
        let out = p.run(&["runtime", "status", "--json"]);
        let status: Value = serde_json::from_str(&stdout(&out)).ok()?;
        let progress = status["services"]["big"]["progress"].clone();
        (progress["task"] == "pull" && progress["current"].as_u64().unwrap_or(0) > 0)
            .then_some(progress)
    });
    assert_eq!(during["target"], image.as_str(), "{during}");
    assert_eq!(during["unit"], "bytes", "{during}");
    // Running, and the progress is gone from status.
    wait_for(LIMIT, "big running without progress", || {
        let out = p.run(&["runtime", "status", "--json"]);
        let status: Value = serde_json::from_str(&stdout(&out)).ok()?;
        let big = &status["services"]["big"];
        (big["state"] == "running" && big.get("progress").is_none()).then_some(())
    });

    // The events: rising bytes with a total, a percent once every size is known, ending at
    // complete and then null.
    let events = wait_for(Duration::from_secs(20), "the last progress event", || {
        let events = sse.progress.lock().expect("lock").clone();
        events.last().is_some_and(Value::is_null).then_some(events)
    });
    let shown: Vec<&Value> = events.iter().filter(|e| !e.is_null()).collect();
    assert!(shown.len() >= 4, "several updates: {events:#?}");
    let currents: Vec<u64> = shown.iter().filter_map(|e| e["current"].as_u64()).collect();
    assert!(
        currents.windows(2).all(|w| w[0] <= w[1]),
        "bytes only grow: {currents:?}"
    );
    let percents: Vec<f64> = shown.iter().filter_map(|e| e["percent"].as_f64()).collect();
    assert!(
        percents.iter().any(|p| *p > 0.0 && *p < 100.0),
        "a percent between 0 and 100 along the way: {events:#?}"
    );
    assert!(
        percents.windows(2).all(|w| w[0] <= w[1]),
        "the percent never goes back: {percents:?}"
    );
    let downloading = shown
        .iter()
        .filter(|e| e["phase"] == "downloading" && e["total"].as_u64().unwrap_or(0) > 0)
        .count();
    assert!(downloading >= 2, "downloads with a total: {events:#?}");
    let last = shown.last().expect("a progress event");
    assert_eq!(last["phase"], "complete", "{events:#?}");
    assert_eq!(last["percent"], 100.0, "{last}");
    assert_eq!(last["current"], last["total"], "{last}");
    assert!(
        last["total"].as_u64().unwrap_or(0) >= 18_000_000,
        "three layers of 6 MB: {last}"
    );
    // The statuses sent with the events carried it too.
    let statuses = sse.statuses.lock().expect("lock").clone();
    assert!(
        statuses
            .iter()
            .any(|s| s["progress"]["phase"] == "downloading"),
        "no status with the download came over SSE"
    );

    // The foreground output: progress lines (not a flood: stdout is a pipe here).
    let lines = up.lines();
    let pulling: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains(&format!("big: pulling {image} (downloading)")))
        .collect();
    assert!(
        !pulling.is_empty(),
        "no progress line:\n{}",
        lines.join("\n")
    );
    assert!(
        pulling.len() <= 12,
        "every 10 % or 5 s at most:\n{}",
        lines.join("\n")
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("big: pulled {image}  100%"))),
        "no completion line:\n{}",
        lines.join("\n")
    );

    // The dashboard card showed a bar with its text, then hid it.
    let bars = browser.js("return window.__bars", json!([]));
    let bars = bars.as_array().cloned().unwrap_or_default();
    assert!(
        bars.iter().any(|b| {
            b[0].as_str().and_then(|v| v.parse::<f64>().ok()).is_some()
                && b[1]
                    .as_str()
                    .is_some_and(|t| t.contains("pulling") && t.contains(" MB"))
                && b[2].as_f64().unwrap_or(0.0) > 0.0
        }),
        "the card never showed a bar with a value and text: {bars:?}"
    );
    browser.wait_js(
        Duration::from_secs(20),
        "the bar hidden once big runs",
        "const c = document.querySelector('.card[data-name=\"big\"]'); \
         return c.dataset.state === 'running' && c.querySelector('.progress').hidden",
    );
    // The token and the generated secrets never show in what was sent.
    assert!(!events.iter().any(|e| e.to_string().contains("password")));

    up.signal(libc::SIGTERM);
    let status = up.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{}", up.lines().join("\n"));
}

#[test]
fn a_render_deploy_shows_its_phase_and_elapsed_time_without_a_percent() {
    let (prism, fake) = render_fake::render();
    let id = fake.service("progress", Some("build_in_progress"), &[]);
    let p = Project::with_config(&format!(
        "[project]\nname = \"rndprog\"\n\
         [dashboard]\nlisten = \"127.0.0.1:0\"\n[proxy]\nenabled = false\n\
         [providers.render]\ntoken = \"{TOKEN}\"\nbase_url = \"{base}\"\n\
         [resources.web]\nprovider = \"render\"\nservice_id = \"{id}\"\ninterval = \"200ms\"\n",
        base = prism.url
    ));
    let mut up = p.up(&[], &[]);
    let status = |p: &Project| -> Option<Value> {
        let out = p.run(&["runtime", "status", "--json"]);
        let status: Value = serde_json::from_str(&stdout(&out)).ok()?;
        Some(status["services"]["web"].clone())
    };
    let building = wait_for(LIMIT, "web building, with its elapsed time", || {
        let web = status(&p)?;
        (web["state"] == "starting"
            && web["progress"]["phase"] == "build_in_progress"
            && web["progress"]["elapsed_s"].as_u64().unwrap_or(0) >= 1)
            .then_some(web)
    });
    let progress = &building["progress"];
    assert_eq!(progress["task"], "operation", "{building}");
    for absent in ["percent", "current", "total"] {
        assert!(progress.get(absent).is_none(), "no {absent}: {building}");
    }
    fake.set_latest(&id, "update_in_progress");
    wait_for(LIMIT, "web updating", || {
        let web = status(&p)?;
        (web["progress"]["phase"] == "update_in_progress").then_some(())
    });
    fake.set_latest(&id, "live");
    let running = wait_for(LIMIT, "web running, the progress gone", || {
        let web = status(&p)?;
        (web["state"] == "running" && web.get("progress").is_none()).then_some(web)
    });
    assert_eq!(running["provider_state"], "live", "{running}");
    // The foreground output showed each phase.
    for phase in ["web: build_in_progress  ", "web: update_in_progress  "] {
        up.wait_for_line(Duration::from_secs(10), phase);
    }
    let text = up.lines().join("\n");
    assert!(!text.contains(TOKEN), "the token shows");
    up.signal(libc::SIGTERM);
    let status = up.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{text}");
}
