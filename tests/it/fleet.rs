//! Past one machine: three kinfra nodes on a three-server NATS cluster (Debian's
//! nats-server, routes between 127.0.0.1 ports, token authorization), each node pointing its
//! `[bus] url` at a different server and listening on its own loopback address (127.0.0.1,
//! 127.0.0.2, 127.0.0.3). Fleet status on every node shows all three; a service with
//! `nodes = ["a"]` runs on a only; an action on another node's service goes over the bus
//! (and a client without the token is refused); a SIGKILLed node turns `down` on the
//! others; with one NATS server killed, events still flow between the others. The three also
//! share one SurrealDB server (the `kinfra-surreal-server` test binary, SurrealDB's server as a
//! library, standing in for a `surreal start` deployment), each in its own database; the
//! certificate they share there is tests/it/fleet_acme.rs.

use crate::support::surreal::{PASSWORD, SurrealServer};
use crate::support::{Project, Up, http_get, kill, stdout, wait_for};
use kinfra::bus::async_nats;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const TOKEN: &str = "fleet-test-token-3f9a";
/// The nodes' heartbeat: short, so a stopped node turns down quickly, yet long enough that a
/// node starved of CPU by a busy test machine is not taken for down (2½ s).
const HEARTBEAT_MS: u64 = 1000;

/// A free TCP port on 127.0.0.1 (bound, read, released).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// One nats-server of the cluster. Killed (by PID) on drop.
struct NatsServer {
    child: Child,
    port: u16,
    monitor: u16,
}

impl NatsServer {
    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            kill(self.child.id(), libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// Three nats-servers with routes to each other, token authorization on clients; returns
/// once every server has its two routes.
fn start_cluster(dir: &Path) -> Vec<NatsServer> {
    assert!(
        Command::new("nats-server")
            .arg("--version")
            .output()
            .is_ok(),
        "nats-server is missing: install Debian's nats-server (./x test does)"
    );
    let ports: Vec<(u16, u16, u16)> = (0..3)
        .map(|_| (free_port(), free_port(), free_port()))
        .collect();
    let mut servers = Vec::new();
    for (i, (port, route, monitor)) in ports.iter().enumerate() {
        let routes: Vec<String> = ports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, (_, r, _))| format!("\"nats-route://127.0.0.1:{r}\""))
            .collect();
        let conf = format!(
            "server_name: \"n{i}\"\nlisten: \"127.0.0.1:{port}\"\nhttp: \"127.0.0.1:{monitor}\"\n\
             authorization {{ token: \"{TOKEN}\" }}\n\
             cluster {{\n  name: \"kfleet\"\n  listen: \"127.0.0.1:{route}\"\n  routes: [{}]\n}}\n",
            routes.join(", ")
        );
        let path = dir.join(format!("nats{i}.conf"));
        std::fs::write(&path, conf).expect("write nats config");
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        servers.push(NatsServer {
            child,
            port: *port,
            monitor: *monitor,
        });
    }
    for s in &servers {
        let addr = format!("127.0.0.1:{}", s.monitor);
        wait_for(Duration::from_secs(20), "the NATS cluster's routes", || {
            let (code, body) = http_get(&addr, "/routez").ok()?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            (code == 200 && v["num_routes"].as_u64()? >= 2).then_some(())
        });
    }
    servers
}

/// One kinfra node: its project (state dir), its `runtime up`, its loopback address.
struct Node {
    name: &'static str,
    project: Project,
    up: Up,
}

impl Node {
    /// Node `name` on `ip`, on the bus at `bus_url` and the store at `store_url` (its own
    /// database there: the store's lease is per database).
    fn start(name: &'static str, ip: &str, bus_url: &str, store_url: &str) -> Node {
        let project = Project::with_config(&format!(
            "[project]\nname = \"fleet\"\n\
             [node]\nname = \"{name}\"\nheartbeat = \"{HEARTBEAT_MS}ms\"\n\
             [dashboard]\nlisten = \"{ip}:0\"\n\
             [bus]\nurl = \"{bus_url}\"\ntoken = \"{TOKEN}\"\n\
             [store]\nurl = \"{store_url}\"\nuser = \"root\"\npassword = \"{PASSWORD}\"\n\
             database = \"node_{name}\"\n\
             [services.web]\ncommand = \"exec sleep 1000\"\n\
             [services.db]\ncommand = \"exec sleep 1000\"\nnodes = [\"a\"]\n"
        ));
        let proxy = format!("{ip}:0");
        let up = project.up(&[], &[("KINFRA_PROXY__HTTP", proxy.as_str())]);
        Node { name, project, up }
    }

    /// `kinfra fleet status --json` on this node.
    fn fleet(&self) -> serde_json::Value {
        let out = self.project.run(&["fleet", "status", "--json"]);
        assert!(
            out.status.success(),
            "fleet status on {}: {out:?}",
            self.name
        );
        serde_json::from_str(&stdout(&out)).expect("fleet status JSON")
    }

    /// `kinfra runtime status --json` on this node.
    fn status(&self) -> serde_json::Value {
        let out = self.project.run(&["runtime", "status", "--json"]);
        assert!(out.status.success(), "status on {}: {out:?}", self.name);
        serde_json::from_str(&stdout(&out)).expect("status JSON")
    }

    /// The state of `node` in this node's fleet view, if it has heard of it.
    fn sees(&self, node: &str) -> Option<String> {
        self.fleet()["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["node"] == node)
            .and_then(|n| n["state"].as_str().map(str::to_owned))
    }
}

/// A raw SSE reader of `GET path`: lines go to a channel.
fn sse_stream(addr: &str, path: &str) -> std::sync::mpsc::Receiver<String> {
    let mut stream = TcpStream::connect(addr).expect("connect to the dashboard");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .expect("send request");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits (bounded) for a `data:` line of the stream for which `pred` holds.
fn wait_event(
    rx: &std::sync::mpsc::Receiver<String>,
    limit: Duration,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("timed out after {limit:?} waiting for {what}"));
        if let Some(data) = line.strip_prefix("data:")
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(data.trim())
            && pred(&v)
        {
            return v;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_a_nats_cluster() {
    let cluster_dir = tempfile::tempdir().expect("tempdir");
    let mut servers = start_cluster(cluster_dir.path());
    let store = SurrealServer::start(&cluster_dir.path().join("surreal"));
    let nodes: Vec<Node> = tokio::task::block_in_place(|| {
        vec![
            Node::start("a", "127.0.0.1", &servers[0].url(), &store.url()),
            Node::start("b", "127.0.0.2", &servers[1].url(), &store.url()),
            Node::start("c", "127.0.0.3", &servers[2].url(), &store.url()),
        ]
    });
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    for (node, ip) in [(a, "127.0.0.1:"), (b, "127.0.0.2:"), (c, "127.0.0.3:")] {
        assert!(
            node.up.dashboard_addr().starts_with(ip),
            "{} listens on {}",
            node.name,
            node.up.dashboard_addr()
        );
    }

    // Every node sees all three up.
    tokio::task::block_in_place(|| {
        for node in &nodes {
            wait_for(
                Duration::from_secs(20),
                &format!("node {} to see a, b and c up", node.name),
                || {
                    ["a", "b", "c"]
                        .iter()
                        .all(|n| node.sees(n).as_deref() == Some("up"))
                        .then_some(())
                },
            );
        }
    });

    // The node identity in status; `db` (nodes = ["a"]) runs on a only.
    let (sa, sb) = tokio::task::block_in_place(|| (a.status(), b.status()));
    assert_eq!(sa["node"], "a");
    assert_eq!(sb["node"], "b");
    // All three keep their state on the one SurrealDB server, each in its own database.
    for s in [&sa, &sb] {
        assert_eq!(s["store"]["location"], store.url(), "{}", s["store"]);
        assert_eq!(s["store"]["failures"], 0, "{}", s["store"]);
    }
    assert_eq!(sa["services"]["db"]["state"], "running", "{sa}");
    assert!(sb["services"].get("db").is_none(), "{sb}");
    assert_eq!(sb["services"]["web"]["state"], "running", "{sb}");
    let fleet = tokio::task::block_in_place(|| c.fleet());
    let of = |n: &str| {
        fleet["nodes"]
            .as_array()
            .and_then(|ns| ns.iter().find(|x| x["node"] == n).cloned())
            .unwrap_or_default()
    };
    assert_eq!(of("a")["services"]["db"]["state"], "running", "{fleet}");
    assert!(of("b")["services"].get("db").is_none(), "{fleet}");
    assert_eq!(of("b")["services"]["web"]["state"], "running", "{fleet}");

    // The dashboard's fleet page on c shows every node.
    let (code, page) = http_get(&c.up.dashboard_addr(), "/kinfra/fleet").expect("fleet page");
    assert_eq!(code, 200, "{page}");
    for n in ["a", "b", "c"] {
        assert!(
            page.contains(&format!("data-node=\"{n}\" data-state=\"up\"")),
            "{page}"
        );
    }
    // The node's name on the events of its own dashboard stream.
    let local = sse_stream(&b.up.dashboard_addr(), "/__events__");
    tokio::task::block_in_place(|| {
        wait_event(
            &local,
            Duration::from_secs(10),
            "b's recent events with its node name",
            |v| {
                v.as_array().is_some_and(|events| {
                    !events.is_empty() && events.iter().all(|e| e["node"] == "b")
                })
            },
        )
    });
    // The node's name on its own metrics.
    let (_, metrics) = http_get(&b.up.dashboard_addr(), "/metrics").expect("metrics");
    assert!(
        metrics.contains("kinfra_node_info{node=\"b\"} 1"),
        "{metrics}"
    );

    // An action on b's service from a, through the bus.
    let pid_before = sb["services"]["web"]["pid"].as_u64().expect("web pid on b");
    let out = tokio::task::block_in_place(|| a.project.run(&["fleet", "restart", "b", "web"]));
    assert!(out.status.success(), "fleet restart b web: {out:?}");
    tokio::task::block_in_place(|| {
        wait_for(Duration::from_secs(20), "web restarted on b", || {
            let s = b.status();
            let pid = s["services"]["web"]["pid"].as_u64()?;
            (pid != pid_before && s["services"]["web"]["state"] == "running").then_some(())
        })
    });
    // An unknown service on b is b's error, said on a.
    let out = tokio::task::block_in_place(|| a.project.run(&["fleet", "restart", "b", "nope"]));
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown service"),
        "{out:?}"
    );
    // The same subject without the token: the cluster refuses the client.
    let refused = match async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(servers[0].url())
        .await
    {
        Ok(_) => panic!("a client without the token was let in"),
        Err(error) => error,
    };
    assert_eq!(
        refused.kind(),
        async_nats::ConnectErrorKind::AuthorizationViolation,
        "{refused}"
    );
    // With the token, node-addressed control answers.
    let client = async_nats::ConnectOptions::with_token(TOKEN.into())
        .connect(servers[0].url())
        .await
        .expect("client with the token");
    let reply = client
        .request("kinfra.fleet.b.control.status", "{}".into())
        .await
        .expect("b's status over its node subject");
    let v: serde_json::Value = serde_json::from_slice(&reply.payload).expect("json");
    assert_eq!(v["node"], "b", "{v}");

    // SIGKILL node c: a and b show it down.
    kill(c.up.pid(), libc::SIGKILL);
    tokio::task::block_in_place(|| {
        for node in [a, b] {
            wait_for(
                Duration::from_secs(15),
                &format!("node {} to see c down", node.name),
                || (node.sees("c").as_deref() == Some("down")).then_some(()),
            );
            assert_eq!(node.sees("a").as_deref(), Some("up"));
            assert_eq!(node.sees("b").as_deref(), Some("up"));
        }
    });

    // Kill the NATS server c used (neither a's nor b's): events keep flowing from b to a.
    let events = sse_stream(&a.up.dashboard_addr(), "/__fleet__/events");
    wait_for(Duration::from_secs(5), "the fleet stream's ready", || {
        events
            .recv_timeout(Duration::from_millis(100))
            .ok()
            .filter(|l| l.starts_with("event: ready"))
    });
    let gone = servers.remove(2);
    drop(gone);
    let out = tokio::task::block_in_place(|| b.project.run(&["runtime", "restart", "web"]));
    assert!(out.status.success(), "{out:?}");
    let e = tokio::task::block_in_place(|| {
        wait_event(
            &events,
            Duration::from_secs(15),
            "b's web event on a's fleet stream",
            |v| v["node"] == "b" && v["service"] == "web" && v["type"] == "state_changed",
        )
    });
    assert!(e["seq"].as_u64().is_some(), "{e}");
    // And a's heartbeats still reach b.
    tokio::task::block_in_place(|| {
        assert_eq!(b.sees("a").as_deref(), Some("up"));
    });

    // A node that stops gracefully says so: a shows b down, as having left.
    b.up.signal(libc::SIGTERM);
    tokio::task::block_in_place(|| {
        wait_for(Duration::from_secs(30), "a to see b leave", || {
            let fleet = a.fleet();
            let entry = fleet["nodes"]
                .as_array()?
                .iter()
                .find(|n| n["node"] == "b")?
                .clone();
            (entry["state"] == "down").then_some(entry)
        })
    });
    let fleet = tokio::task::block_in_place(|| a.fleet());
    let b_entry = fleet["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["node"] == "b").cloned())
        .unwrap_or_default();
    assert_eq!(b_entry["left"], true, "{fleet}");
}

#[test]
fn a_bad_node_name_is_named_in_config_check() {
    let p = Project::with_config(
        "[node]\nname = \"my node.1\"\n[services.web]\ncommand = \"sleep 1\"\nnodes = \"a\"\n",
    );
    let out = p.run(&["config", "check"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let text = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("nodes"), "{text}");

    let p = Project::with_config(
        "[node]\nname = \"my node.1\"\n[services.web]\ncommand = \"sleep 1\"\nnodes = [\"a\", \"events\"]\n",
    );
    let out = p.run(&["config", "check"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let text = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("node.name"), "{text}");
    assert!(text.contains("subject token"), "{text}");
    assert!(text.contains("services.web.nodes[1]"), "{text}");
    assert!(text.contains("reserved"), "{text}");
}

#[test]
fn a_reload_follows_nodes_and_keeps_the_running_node_name() {
    let config = |name: &str, nodes: &str| {
        format!(
            "[project]\nname = \"fleet-reload\"\n[node]\nname = \"{name}\"\n\
             [dashboard]\nlisten = \"127.0.0.1:0\"\n[bus]\nenabled = false\n[store]\nenabled = false\n\
             [services.web]\ncommand = \"exec sleep 1000\"\nnodes = {nodes}\n\
             [services.api]\ncommand = \"exec sleep 1000\"\n"
        )
    };
    let p = Project::with_config(&config("a", "[\"b\"]"));
    let _up = p.up(&[], &[]);
    let status = || -> serde_json::Value {
        let out = p.run(&["runtime", "status", "--json"]);
        assert!(out.status.success(), "{out:?}");
        serde_json::from_str(&stdout(&out)).expect("status JSON")
    };
    let s = status();
    assert_eq!(s["node"], "a");
    assert!(s["services"].get("web").is_none(), "{s}");
    assert_eq!(s["services"]["api"]["state"], "running", "{s}");

    // `web` now lists this node too: a reload starts it.
    p.write("kinfra.toml", &config("a", "[\"a\", \"b\"]"));
    let out = p.run(&["runtime", "reload"]);
    assert!(out.status.success(), "{out:?}");
    wait_for(
        Duration::from_secs(15),
        "web running after the reload",
        || (status()["services"]["web"]["state"] == "running").then_some(()),
    );

    // A new node name waits for a restart: `web` stays, the name is pending.
    p.write("kinfra.toml", &config("z", "[\"a\"]"));
    let out = p.run(&["runtime", "reload"]);
    assert!(out.status.success(), "{out:?}");
    let s = status();
    assert_eq!(s["node"], "a", "{s}");
    assert_eq!(s["services"]["web"]["state"], "running", "{s}");
    let pending = s["pending_restart"].to_string();
    assert!(pending.contains("node.name"), "{s}");
}
