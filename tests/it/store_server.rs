//! The store on a real SurrealDB server (`[store] url = "ws://..."`): the server is
//! `kinfra-surreal-server` (the `surrealdb-server` crate at the embedded engine's version,
//! surrealkv on disk), started on 127.0.0.1 by each test. Schema upgrade, history, restart
//! counts across restarts of kinfra and the user's database work as embedded; killing the
//! server makes the store's failure visible while kinfra keeps running, and kinfra reconnects
//! by itself when the server returns, with every event it acknowledged, and every event it
//! emitted during the outage, on the server afterwards. Two runtimes share one server on their
//! own databases.

use crate::support::surreal::{PASSWORD, SurrealServer, direct};
use crate::support::{Project, kill, stdout, unique_tag, wait_for};
use kinfra::store::Store;
use kinfra::{Config, ServiceState};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

/// The `seq`s of the events `boot` wrote, read straight from the server.
async fn stored_seqs(db: &kinfra::store::Db, boot: &str) -> BTreeSet<u64> {
    let mut resp = db
        .query("SELECT VALUE seq FROM event WHERE boot = $boot")
        .bind(("boot", boot.to_owned()))
        .await
        .expect("select events");
    let seqs: Vec<u64> = resp.take(0).expect("seqs");
    seqs.into_iter().collect()
}

fn store_toml(server: &SurrealServer, database: &str) -> String {
    format!(
        "[store]\nurl = \"{}\"\nuser = \"root\"\npassword = \"{PASSWORD}\"\ndatabase = \"{database}\"\n",
        server.url()
    )
}

fn library_config(dir: &Path, tag: &str, server: &SurrealServer, database: &str) -> Config {
    let toml = format!(
        r#"
[project]
name = "storeserver"
state_dir = "{state}"

[env]
KINFRA_TEST_TAG = "{tag}"

[dashboard]
enabled = false

[proxy]
enabled = false

[services.flaky]
command = "echo started; sleep 0.2; exit 3"
restart = "on-failure"
backoff = {{ initial = "50ms", max = "100ms" }}
crash_loop = {{ max_failures = 0 }}

[services.steady]
command = "exec sleep 1000"

{store}"#,
        state = dir.join("state").display(),
        store = store_toml(server, database),
    );
    Config::parse(&toml, kinfra::config::Format::Toml, "store.toml", dir, &[])
        .expect("valid config")
}

async fn wait_until<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_store_upgrades_its_schema_keeps_history_and_restart_counts_and_the_user_db() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = SurrealServer::start(&dir.path().join("surreal"));
    let tag = unique_tag("storesrv");

    // A fresh server: no schema before kinfra's first connect (the query fails, the namespace
    // does not exist yet, or finds nothing).
    let raw = direct(&server, "runtime").await;
    let before: Vec<serde_json::Value> = match raw.query("SELECT * FROM meta").await {
        Ok(mut resp) => resp.take(0).unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    assert!(
        before.is_empty(),
        "a schema before kinfra connected: {before:?}"
    );

    let rt = kinfra::start(library_config(dir.path(), &tag, &server, "runtime"))
        .await
        .expect("runtime starts on the server");
    let status = rt.status().await;
    let store = status.store.expect("store in the status report");
    assert_eq!(store["location"], server.url(), "{store}");
    assert!(!store.to_string().contains(PASSWORD), "{store}");

    let db = rt.db().expect("user db");
    db.query("CREATE note:first SET text = 'hello from the app'")
        .await
        .expect("create")
        .check()
        .expect("create ok");
    let mut resp = db
        .query("SELECT VALUE text FROM note; SELECT * FROM run; SELECT * FROM event")
        .await
        .expect("select");
    let texts: Vec<String> = resp.take(0).expect("texts");
    assert_eq!(texts, vec!["hello from the app".to_string()]);
    let runs: Vec<serde_json::Value> = resp.take(1).unwrap_or_default();
    let events: Vec<serde_json::Value> = resp.take(2).unwrap_or_default();
    assert!(
        runs.is_empty(),
        "kinfra's runs leak into the user db: {runs:?}"
    );
    assert!(events.is_empty(), "kinfra's events leak into the user db");
    drop(db);

    let restarts = wait_until(Duration::from_secs(30), "3 restarts of flaky", || {
        let rt = &rt;
        async move {
            let f = rt.status().await.services.get("flaky")?.clone();
            (f.restarts >= 3).then_some(f.restarts)
        }
    })
    .await;
    let runs = wait_until(Duration::from_secs(20), "ended runs on record", || {
        let rt = &rt;
        async move {
            let runs = rt.history(Some("flaky"), 50).await.ok()?;
            (runs.iter().filter(|r| !r.is_live()).count() >= 3).then_some(runs)
        }
    })
    .await;
    assert!(
        runs.iter()
            .filter(|r| !r.is_live())
            .all(|r| r.exit.and_then(|e| e.code) == Some(3)
                && r.reason.as_deref() == Some("crashed")),
        "{runs:?}"
    );
    assert!(runs.windows(2).all(|w| w[0].n > w[1].n), "{runs:?}");
    let store = rt.status().await.store.expect("store");
    assert_eq!(store["failures"], 0, "{store}");
    rt.shutdown().await.expect("shutdown");

    // The schema is on the server, at the current version, and the data is there.
    let schema: Vec<serde_json::Value> = {
        let mut resp = raw.query("SELECT * FROM meta").await.expect("select meta");
        resp.take(0).unwrap_or_default()
    };
    assert!(!schema.is_empty(), "no schema record on the server");
    let config = kinfra_core::config::StoreConfig {
        url: Some(server.url()),
        user: Some("root".into()),
        password: Some(kinfra_core::secret::Secret::new(PASSWORD)),
        ..Default::default()
    };
    let store = Store::open(&config, dir.path()).await.expect("open again");
    assert_eq!(
        store.schema_version().await.expect("schema version"),
        kinfra::store::schema::CURRENT_VERSION
    );
    store.shutdown(Duration::from_secs(5)).await;

    // A second boot: counts, history of both boots and the note come back from the server.
    let rt = kinfra::start(library_config(dir.path(), &tag, &server, "runtime"))
        .await
        .expect("runtime restarts");
    let flaky = rt
        .status()
        .await
        .services
        .get("flaky")
        .cloned()
        .expect("flaky");
    assert!(
        flaky.restarts >= restarts,
        "restarts {} after a restart of kinfra, {restarts} before",
        flaky.restarts
    );
    assert!(flaky.last_exit.is_some(), "last exit lost: {flaky:?}");
    wait_until(Duration::from_secs(20), "runs of both boots", || {
        let rt = &rt;
        async move {
            let runs = rt.history(Some("flaky"), 500).await.ok()?;
            let boots: BTreeSet<&str> = runs.iter().map(|r| r.boot.as_str()).collect();
            (boots.len() >= 2).then_some(())
        }
    })
    .await;
    let mut resp = rt
        .db()
        .expect("user db")
        .query("SELECT VALUE text FROM note")
        .await
        .expect("select");
    let texts: Vec<String> = resp.take(0).expect("texts");
    assert_eq!(texts.len(), 1);
    rt.shutdown().await.expect("shutdown");
}

fn status_json(p: &Project) -> Option<serde_json::Value> {
    let out = p.run(&["runtime", "status", "--json"]);
    if !out.status.success() {
        return None;
    }
    serde_json::from_str(&stdout(&out)).ok()
}

fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_server_fails_the_store_visibly_and_kinfra_reconnects_without_losing_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = SurrealServer::start(&dir.path().join("surreal"));
    let tag = unique_tag("storesrvkill");
    // A service that crashes and restarts every ~300 ms: events keep coming, also while the
    // server is down.
    let p = Project::with_config(&format!(
        "[project]\nname = \"storesrvkill\"\n[env]\nKINFRA_TEST_TAG = \"{tag}\"\n\
         [dashboard]\nlisten = \"127.0.0.1:0\"\n[bus]\nmanaged = false\n\
         [services.steady]\ncommand = \"exec sleep 1000\"\n\
         [services.blink]\ncommand = \"sleep 0.3; exit 1\"\nrestart = \"always\"\n\
         backoff = {{ initial = \"10ms\", max = \"20ms\" }}\ncrash_loop = {{ max_failures = 0 }}\n\
         {}",
        store_toml(&server, "runtime")
    ));
    let mut up = p.up(&[], &[]);
    let addr = up.dashboard_addr();
    let before = wait_for(Duration::from_secs(60), "20 acknowledged events", || {
        let s = status_json(&p)?;
        let acked = s["store"]["acknowledged_seq"].as_u64()?;
        (acked >= 20).then_some(s)
    });
    let acked_before = before["store"]["acknowledged_seq"].as_u64().expect("acked");
    assert_eq!(before["store"]["failures"], 0, "{}", before["store"]);
    let steady_pid = before["services"]["steady"]["pid"]
        .as_u64()
        .expect("steady pid");

    server.kill();

    // The failure shows: in the status report's store block and in /metrics.
    let failing = wait_for(
        Duration::from_secs(60),
        "the store failing in status",
        || {
            let s = status_json(&p)?;
            let store = &s["store"];
            (store["failures"].as_u64()? > 0 && store["last_error"].is_string()).then_some(s)
        },
    );
    wait_for(
        Duration::from_secs(30),
        "write failures in /metrics",
        || {
            let (code, body) = crate::support::http_get(&addr, "/metrics").ok()?;
            assert_eq!(code, 200, "{body}");
            (metric(&body, "kinfra_store_write_failures_total ")? > 0.0).then_some(())
        },
    );
    // kinfra and its services keep running; events keep coming and queue up.
    assert_eq!(
        failing["services"]["steady"]["pid"].as_u64(),
        Some(steady_pid),
        "{failing}"
    );
    assert_eq!(failing["services"]["steady"]["state"], "running");
    let during = wait_for(
        Duration::from_secs(30),
        "events queued in the outage",
        || {
            let s = status_json(&p)?;
            (s["store"]["queued"].as_u64()? >= 5).then_some(s)
        },
    );
    let acked_during = during["store"]["acknowledged_seq"].as_u64().expect("acked");
    assert!(acked_during >= acked_before);

    // The server returns on the same port with the same data; kinfra reconnects by itself.
    server.restart();
    let after = wait_for(Duration::from_secs(90), "the store writing again", || {
        let s = status_json(&p)?;
        let store = &s["store"];
        (store["last_error"].is_null() && store["acknowledged_seq"].as_u64()? > acked_during + 5)
            .then_some(s)
    });
    assert!(
        after["store"]["failures"].as_u64() >= failing["store"]["failures"].as_u64(),
        "{after}"
    );
    assert_eq!(
        after["services"]["steady"]["pid"].as_u64(),
        Some(steady_pid)
    );
    let history = p.run(&["runtime", "history", "blink", "--json"]);
    assert!(
        history.status.success(),
        "{}",
        crate::support::stderr(&history)
    );

    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(60)).success());
    let output = up.lines().join("\n");
    assert!(
        !output.contains(PASSWORD),
        "the password shows in kinfra's output"
    );

    // On the server: every event of the boot up to the last acknowledged one, without a gap,
    // the ones emitted while the server was down included (they were queued and retried).
    let boot = {
        let db = direct(&server, "runtime").await;
        let mut resp = db
            .query("SELECT VALUE boot FROM event ORDER BY n DESC LIMIT 1")
            .await
            .expect("last boot");
        let boots: Vec<String> = resp.take(0).expect("boots");
        let boot = boots.into_iter().next().expect("a boot on record");
        let seqs = stored_seqs(&db, &boot).await;
        let last = *seqs.iter().max().expect("events");
        assert!(last > acked_during + 5, "last stored {last}");
        let missing: Vec<u64> = (1..=last).filter(|s| !seqs.contains(s)).collect();
        assert!(missing.is_empty(), "events lost: {missing:?} of 1..={last}");
        boot
    };
    assert!(!boot.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runtimes_share_one_server_on_their_own_databases() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = SurrealServer::start(&dir.path().join("surreal"));
    let a_dir = dir.path().join("a");
    let b_dir = dir.path().join("b");
    let a = kinfra::start(library_config(
        &a_dir,
        &unique_tag("storesrv_a"),
        &server,
        "node_a",
    ))
    .await
    .expect("runtime a starts");
    let b = kinfra::start(library_config(
        &b_dir,
        &unique_tag("storesrv_b"),
        &server,
        "node_b",
    ))
    .await
    .expect("runtime b starts");

    // The user's database is shared: what one writes, the other reads.
    a.db()
        .expect("a's user db")
        .query("CREATE note:from_a SET text = 'a'")
        .await
        .expect("create")
        .check()
        .expect("create ok");
    b.db()
        .expect("b's user db")
        .query("CREATE note:from_b SET text = 'b'")
        .await
        .expect("create")
        .check()
        .expect("create ok");
    for rt in [&a, &b] {
        let mut resp = rt
            .db()
            .expect("user db")
            .query("SELECT VALUE text FROM note ORDER BY text")
            .await
            .expect("select");
        let texts: Vec<String> = resp.take(0).expect("texts");
        assert_eq!(texts, vec!["a".to_string(), "b".to_string()]);
    }

    // Each keeps its own history while both write at once.
    for rt in [&a, &b] {
        wait_until(
            Duration::from_secs(30),
            "3 ended runs of flaky",
            || async move {
                let runs = rt.history(Some("flaky"), 50).await.ok()?;
                (runs.iter().filter(|r| !r.is_live()).count() >= 3).then_some(())
            },
        )
        .await;
        wait_until(Duration::from_secs(20), "steady running", || async move {
            let s = rt.status().await;
            (s.services.get("steady")?.state == ServiceState::Running).then_some(())
        })
        .await;
    }
    let steady_of = |runs: Vec<kinfra::store::RunRecord>| -> BTreeSet<u32> {
        runs.iter().filter(|r| r.is_live()).map(|r| r.pid).collect()
    };
    let a_steady = steady_of(a.history(Some("steady"), 10).await.expect("a history"));
    let b_steady = steady_of(b.history(Some("steady"), 10).await.expect("b history"));
    assert_eq!(a_steady.len(), 1, "{a_steady:?}");
    assert_eq!(b_steady.len(), 1, "{b_steady:?}");
    assert!(
        a_steady.is_disjoint(&b_steady),
        "one's runs show in the other's history"
    );
    assert_eq!(
        a.status().await.services.get("steady").and_then(|s| s.pid),
        a_steady.iter().next().copied()
    );
    for (rt, name) in [(&a, "a"), (&b, "b")] {
        let store = rt.status().await.store.expect("store");
        assert_eq!(store["failures"], 0, "{name}: {store}");
    }
    // Both databases hold their own boot's events, numbered from 1 without collisions.
    for (rt, database) in [(&a, "node_a"), (&b, "node_b")] {
        let seq = rt.status().await.store.expect("store")["acknowledged_seq"]
            .as_u64()
            .expect("acked");
        let db = direct(&server, database).await;
        let mut resp = db
            .query("SELECT VALUE boot FROM event ORDER BY n DESC LIMIT 1")
            .await
            .expect("boot");
        let boots: Vec<String> = resp.take(0).expect("boots");
        let boot = boots.into_iter().next().expect("a boot");
        let seqs = stored_seqs(&db, &boot).await;
        let missing: Vec<u64> = (1..=seq).filter(|s| !seqs.contains(s)).collect();
        assert!(missing.is_empty(), "{database}: missing {missing:?}");
    }
    a.shutdown().await.expect("a shutdown");
    b.shutdown().await.expect("b shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_runtime_on_the_same_database_is_refused_naming_the_holder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = SurrealServer::start(&dir.path().join("surreal"));
    let a_dir = dir.path().join("a");
    let b_dir = dir.path().join("b");
    let a = kinfra::start(library_config(
        &a_dir,
        &unique_tag("storesrv_own_a"),
        &server,
        "shared",
    ))
    .await
    .expect("runtime a starts");
    // Another state dir, same tables: refused while a runs, naming a and what to change.
    let err = kinfra::start(library_config(
        &b_dir,
        &unique_tag("storesrv_own_b"),
        &server,
        "shared",
    ))
    .await
    .expect_err("a second runtime on the same tables");
    let text = format!("{err:#}");
    assert!(text.contains("in use by another kinfra"), "{text}");
    assert!(text.contains(&std::process::id().to_string()), "{text}");
    assert!(text.contains("[store] database"), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");
    // a was not disturbed: its steady service runs and its store writes.
    wait_until(Duration::from_secs(20), "a's steady running", || {
        let a = &a;
        async move {
            let s = a.status().await;
            (s.services.get("steady")?.state == ServiceState::Running).then_some(())
        }
    })
    .await;
    assert_eq!(a.status().await.store.expect("store")["failures"], 0);
    // Once a is shut down, its lease is given back: b starts at once.
    a.shutdown().await.expect("a shutdown");
    let b = kinfra::start(library_config(
        &b_dir,
        &unique_tag("storesrv_own_b"),
        &server,
        "shared",
    ))
    .await
    .expect("runtime b starts after a stopped");
    b.shutdown().await.expect("b shutdown");
}

#[test]
fn a_kinfra_killed_and_restarted_at_once_takes_its_lease_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = SurrealServer::start(&dir.path().join("surreal"));
    let tag = unique_tag("storesrvlease");
    let p = Project::with_config(&format!(
        "[project]\nname = \"storesrvlease\"\n[env]\nKINFRA_TEST_TAG = \"{tag}\"\n\
         [dashboard]\nenabled = false\n[bus]\nmanaged = false\n\
         [services.steady]\ncommand = \"exec sleep 1000\"\n{}",
        store_toml(&server, "runtime")
    ));
    let mut up = p.up(&[], &[]);
    let steady_pid = wait_for(Duration::from_secs(20), "steady's pid", || {
        status_json(&p)?["services"]["steady"]["pid"].as_u64()
    });
    // Its run is on the server before kinfra is killed.
    wait_for(Duration::from_secs(20), "steady's run on record", || {
        let out = p.run(&["runtime", "history", "steady", "--json"]);
        let both: serde_json::Value = serde_json::from_str(&stdout(&out)).ok()?;
        both["runs"]
            .as_array()?
            .iter()
            .any(|r| r["pid"].as_u64() == Some(steady_pid))
            .then_some(())
    });
    kill(up.pid(), libc::SIGKILL);
    let _ = up.wait_exit(Duration::from_secs(10));
    // Within the lease (15 s) of the killed one: the same host and state dir, its process
    // gone, so the new one takes the tables over instead of being refused.
    let mut up = p.up(&[], &[]);
    let history = p.run(&["runtime", "history", "steady", "--json"]);
    assert!(
        history.status.success(),
        "{}",
        crate::support::stderr(&history)
    );
    let both: serde_json::Value = serde_json::from_str(&stdout(&history)).expect("history json");
    let runs: Vec<kinfra::store::RunRecord> =
        serde_json::from_value(both["runs"].clone()).expect("runs");
    let old = runs
        .iter()
        .find(|r| u64::from(r.pid) == steady_pid)
        .expect("the killed instance's run of steady");
    assert!(!old.is_live(), "{old:?}");
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(60)).success());
}
