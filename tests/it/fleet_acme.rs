//! Shared certificates across a fleet: three kinfra nodes (separate state dirs, proxies on
//! 127.0.0.1, 127.0.0.2 and 127.0.0.3 on the same ports) on one SurrealDB server, each with
//! its own `[store] database` and the default `shared_database`, and Debian's Pebble as the
//! CA. The domain resolves (pebble-challtestsrv) to b, and b cannot order itself (its
//! `[acme] directory` is unreachable): the order is a's or c's, and b answers the HTTP-01
//! challenge the orderer published in the shared database. Pebble sees one order for the fleet
//! (a and c contend for the order lock: the test holds it while they start, so both are seen
//! waiting on it), all three nodes serve the same certificate over real TLS handshakes, and
//! a's renewal (due first: b and c renew only a second before expiry) is served by b and c
//! without a restart and without an order of their own.

use crate::support::pebble::{Pebble, free_port, handshake};
use crate::support::surreal::{PASSWORD, SurrealServer};
use crate::support::{Project, Up, stdout, wait_for};
use kinfra::store::Store;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const DOMAIN: &str = "fleet.kinfra.test";
/// The order lock of the domain, as kinfra-acme names it.
const LOCK: &str = "cert:fleet.kinfra.test";
/// Certificates live this long: a renews at two thirds (60 s), b and c pick that up within
/// their 15 s watch interval, long before their own renewal (1 s before expiry).
/// b's ACME directory: nothing listens there, so b never places an order. With one order
/// an hour b tries once (holding the lock for a moment) and then only watches the store.
const UNREACHABLE_DIRECTORY: &str = "https://127.0.0.1:1/dir";
const VALIDITY_SECS: u64 = 90;

/// One kinfra node: its project (state dir), its `runtime up`, its loopback address.
struct Node {
    name: &'static str,
    ip: &'static str,
    project: Project,
    up: Up,
}

struct Fleet<'a> {
    server: &'a SurrealServer,
    pebble: &'a Pebble,
    http: u16,
    https: u16,
}

impl Fleet<'_> {
    /// Starts node `name` on `ip`; `renew_before` as `[acme] renew_before`, `directory` instead
    /// of Pebble's (with `orders_per_hour = 1`).
    fn start(
        &self,
        name: &'static str,
        ip: &'static str,
        renew_before: Option<&str>,
        directory: Option<&str>,
    ) -> Node {
        let renew = renew_before
            .map(|r| format!("renew_before = \"{r}\"\n"))
            .unwrap_or_default();
        let pebble_directory = self.pebble.directory();
        let rate = if directory.is_some() {
            "orders_per_hour = 1\n"
        } else {
            ""
        };
        let project = Project::with_config(&format!(
            "[project]\nname = \"fleetacme\"\n\
             [node]\nname = \"{name}\"\n\
             [dashboard]\nlisten = \"{ip}:0\"\n\
             [bus]\nenabled = false\n\
             [proxy]\nhttps = \"{ip}:{https}\"\n\
             [store]\nurl = \"{url}\"\nuser = \"root\"\npassword = \"{PASSWORD}\"\n\
             database = \"node_{name}\"\n\
             [acme]\nemail = \"ops@kinfra.test\"\ndirectory = \"{directory}\"\n\
             domains = [\"{DOMAIN}\"]\nchallenge = \"http-01\"\nca_roots = [\"{ca}\"]\n\
             retry_min = \"1s\"\nretry_max = \"4s\"\n{renew}{rate}\
             [services.web]\ncommand = \"exec sleep 1000\"\n",
            https = self.https,
            url = self.server.url(),
            directory = directory.unwrap_or(&pebble_directory),
            ca = self.pebble.tls.ca_path.display(),
        ));
        let http = format!("{ip}:{}", self.http);
        let up = project.up(
            &[],
            &[
                ("KINFRA_PROXY__HTTP", http.as_str()),
                (
                    "KINFRA_LOG",
                    "info,kinfra_acme=debug,kinfra_proxy::acme=debug",
                ),
            ],
        );
        Node {
            name,
            ip,
            project,
            up,
        }
    }
}

impl Node {
    /// This node's entry for the domain in `runtime status --json`.
    fn certificate(&self) -> Option<serde_json::Value> {
        let out = self.project.run(&["runtime", "status", "--json"]);
        assert!(out.status.success(), "status on {}: {out:?}", self.name);
        let status: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("status JSON");
        status["certificates"]
            .as_array()?
            .iter()
            .find(|c| c["domain"] == DOMAIN)
            .cloned()
    }

    fn state(&self) -> Option<String> {
        self.certificate()
            .and_then(|c| c["state"].as_str().map(str::to_owned))
    }

    /// Orders this node placed for the domain.
    fn orders(&self) -> u64 {
        self.certificate()
            .and_then(|c| c["orders"].as_u64())
            .unwrap_or_else(|| panic!("{} shows no certificate entry", self.name))
    }

    /// This node's log lines about ACME, for failure messages.
    fn acme_lines(&self) -> String {
        self.up
            .lines()
            .into_iter()
            .filter(|l| l.contains("ertificate") || l.contains("ACME") || l.contains("hallenge"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn https(&self, port: u16) -> SocketAddr {
        format!("{}:{port}", self.ip).parse().expect("address")
    }
}

/// The leaf certificate (DER) `node` serves for the domain, verified against `root`.
async fn served(node: &Node, port: u16, root: &str) -> Option<Vec<u8>> {
    handshake(node.https(port), DOMAIN, root).await.ok()
}

/// Waits (bounded) until every node in `nodes` serves `leaf`.
async fn wait_served(nodes: &[&Node], port: u16, root: &str, leaf: &[u8], limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    for node in nodes {
        loop {
            if served(node, port, root).await.as_deref() == Some(leaf) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} does not serve the fleet's certificate within {limit:?}",
                node.name
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A direct handle on the server as a fourth member of the fleet (its own database).
async fn holder(server: &SurrealServer, dir: &Path) -> Store {
    let config = kinfra_core::config::StoreConfig {
        url: Some(server.url()),
        user: Some("root".into()),
        password: Some(kinfra_core::secret::Secret::new(PASSWORD)),
        database: "test_holder".into(),
        ..Default::default()
    };
    Store::open(&config, dir)
        .await
        .expect("the test's store opens")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pebble_issues_one_certificate_for_the_fleet_and_all_three_nodes_serve_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = SurrealServer::start(&dir.path().join("surreal"));
    let (http, https) = (free_port(), free_port());
    // No nonce rejections: every order Pebble sees is one kinfra placed on purpose.
    let pebble = Pebble::start_with(
        dir.path(),
        http,
        https,
        Some(VALIDITY_SECS),
        &[("PEBBLE_WFE_NONCEREJECT", "0")],
    )
    .await;
    let root = pebble.root().await;
    // The CA connects to b, whichever node ordered.
    pebble.set_a(DOMAIN, "127.0.0.2").await;
    let fleet = Fleet {
        server: &server,
        pebble: &pebble,
        http,
        https,
    };

    let holder_dir = dir.path().join("holder");
    std::fs::create_dir_all(&holder_dir).expect("mkdir");
    let holder = holder(&server, &holder_dir).await;
    assert!(
        holder
            .try_acme_lock(LOCK, "the-test", Duration::from_secs(300))
            .await
            .expect("lock"),
        "the test takes the order lock"
    );
    let nodes = tokio::task::block_in_place(|| {
        let b = fleet.start("b", "127.0.0.2", Some("1s"), Some(UNREACHABLE_DIRECTORY));
        let a = fleet.start("a", "127.0.0.1", None, None);
        let c = fleet.start("c", "127.0.0.3", Some("1s"), None);
        // The lock the test holds in the shared database keeps both a and c from ordering.
        for node in [&a, &c] {
            wait_for(
                Duration::from_secs(30),
                &format!("{} to wait for the fleet's order lock", node.name),
                || (node.state().as_deref() == Some("waiting")).then_some(()),
            );
        }
        [a, b, c]
    });
    let [a, b, c] = &nodes;
    holder
        .release_acme_lock(LOCK, "the-test")
        .await
        .expect("release");
    tokio::task::block_in_place(|| {
        wait_for(Duration::from_secs(90), "a's certificate", || {
            (a.state().as_deref() == Some("valid")).then_some(())
        })
    });
    let first = served(a, https, &root)
        .await
        .expect("a serves the fleet's certificate");
    wait_served(&[b, c], https, &root, &first, Duration::from_secs(45)).await;
    let orders = tokio::task::block_in_place(|| [a.orders(), b.orders(), c.orders()]);
    assert_eq!(
        orders[0] + orders[2],
        1,
        "one order for the fleet (a, b, c: {orders:?}); a, b and c said:\n{}\n{}\n{}",
        a.acme_lines(),
        b.acme_lines(),
        c.acme_lines()
    );
    assert_eq!(orders[1], 0, "b never reached the CA (a, b, c: {orders:?})");
    assert_eq!(
        holder.acme_challenge_count().await.ok(),
        Some(0),
        "the published challenge answer was withdrawn after the order"
    );

    // a's renewal is served by b and c, which neither restart nor order.
    let renewed = {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(VALIDITY_SECS);
        loop {
            if let Some(leaf) = served(a, https, &root).await
                && leaf != first
            {
                break leaf;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "a did not renew within {VALIDITY_SECS} s"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    wait_served(&[b, c], https, &root, &renewed, Duration::from_secs(25)).await;
    let renewal = tokio::task::block_in_place(|| [a.orders(), b.orders(), c.orders()]);
    assert_eq!(
        renewal,
        [orders[0] + 1, 0, orders[2]],
        "the renewal is a's alone (a, b, c); a and b said:\n{}\n{}",
        a.acme_lines(),
        b.acme_lines()
    );
    holder.shutdown(Duration::from_secs(5)).await;
}
