//! The embedded store wired into the runtime: `Runtime::db()` for the user's records apart
//! from kinfra's tables, run history and restart counts across restarts of kinfra,
//! `kinfra runtime history`, and a SIGKILL in the middle of a burst of events.

use crate::support::{Project, kill, stdout, unique_tag, wait_for};
use kinfra::store::Store;
use kinfra::{Config, ServiceState};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

fn library_config(dir: &Path, tag: &str) -> Config {
    let toml = format!(
        r#"
[project]
name = "storelib"
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
"#,
        state = dir.join("state").display()
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
async fn user_db_is_apart_and_history_and_restart_counts_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tag = unique_tag("storelib");
    let rt = kinfra::start(library_config(dir.path(), &tag))
        .await
        .expect("runtime starts");

    // The user's own records, through the handle kinfra gives out.
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
    // kinfra's tables are not in the user's database.
    let runs: Vec<serde_json::Value> = resp.take(1).unwrap_or_default();
    let events: Vec<serde_json::Value> = resp.take(2).unwrap_or_default();
    assert!(
        runs.is_empty(),
        "kinfra's runs leak into the user db: {runs:?}"
    );
    assert!(events.is_empty(), "kinfra's events leak into the user db");
    // A handle the app still holds keeps the engine (and its lock) open after shutdown.
    drop(db);

    // A crashing service piles up restarts and runs.
    let restarts = wait_until(Duration::from_secs(30), "3 restarts of flaky", || {
        let rt = &rt;
        async move {
            let s = rt.status().await;
            let f = s.services.get("flaky")?;
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
    let ended: Vec<_> = runs.iter().filter(|r| !r.is_live()).collect();
    assert!(
        ended
            .iter()
            .all(|r| r.exit.and_then(|e| e.code) == Some(3)
                && r.reason.as_deref() == Some("crashed")),
        "{ended:?}"
    );
    // Newest first, numbered in order.
    assert!(runs.windows(2).all(|w| w[0].n > w[1].n), "{runs:?}");
    let status = rt.status().await;
    let store = status.store.expect("store in the status report");
    assert_eq!(store["failures"], 0, "{store}");
    rt.shutdown().await.expect("shutdown");

    // Second boot on the same state dir: counts and history come back, and the note.
    let rt = kinfra::start(library_config(dir.path(), &tag))
        .await
        .expect("runtime restarts");
    let s = rt.status().await;
    let flaky = s.services.get("flaky").expect("flaky");
    assert!(
        flaky.restarts >= restarts,
        "restarts {} after a restart of kinfra, {restarts} before",
        flaky.restarts
    );
    // Exit code 3, or the signal of the shutdown when it was running then.
    assert!(flaky.last_exit.is_some(), "last exit lost: {flaky:?}");
    wait_until(Duration::from_secs(20), "runs of both boots", || {
        let rt = &rt;
        async move {
            let runs = rt.history(Some("flaky"), 500).await.ok()?;
            let boots: std::collections::BTreeSet<&str> =
                runs.iter().map(|r| r.boot.as_str()).collect();
            (boots.len() >= 2).then_some(())
        }
    })
    .await;
    // Nothing of the first boot is still marked live: shutdown recorded every end. The second
    // boot's run of steady is written as it starts, which may be after `start` returned.
    let steady = wait_until(
        Duration::from_secs(20),
        "the second boot's run of steady",
        || {
            let rt = &rt;
            async move {
                let pid = rt.status().await.services.get("steady")?.pid?;
                let runs = rt.history(Some("steady"), 10).await.ok()?;
                runs.iter()
                    .any(|r| r.is_live() && r.pid == pid)
                    .then_some(runs)
            }
        },
    )
    .await;
    assert_eq!(
        steady.iter().filter(|r| r.is_live()).count(),
        1,
        "{steady:?}"
    );
    assert!(
        steady
            .iter()
            .filter(|r| !r.is_live())
            .all(|r| r.reason.as_deref() == Some("shutdown")),
        "{steady:?}"
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_store_runs_without_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = library_config(dir.path(), &unique_tag("nostore"));
    config.store.enabled = false;
    let rt = kinfra::start(config).await.expect("runtime starts");
    let err = rt.db().expect_err("no user db without a store");
    assert!(err.to_string().contains("disabled"), "{err}");
    assert!(rt.status().await.store.is_none());
    wait_until(Duration::from_secs(20), "steady running", || {
        let rt = &rt;
        async move {
            let s = rt.status().await;
            (s.services.get("steady")?.state == ServiceState::Running).then_some(())
        }
    })
    .await;
    rt.shutdown().await.expect("shutdown");
}

fn status_json(p: &Project) -> Option<serde_json::Value> {
    let out = p.run(&["runtime", "status", "--json"]);
    if !out.status.success() {
        return None;
    }
    serde_json::from_str(&stdout(&out)).ok()
}

/// The events of each boot, by boot, read from the store after kinfra has stopped.
async fn stored_events_by_boot(state_dir: &Path) -> BTreeMap<String, Vec<u64>> {
    let store = Store::open(&kinfra_core::config::StoreConfig::default(), state_dir)
        .await
        .expect("open the store after kinfra stopped");
    let events = store.recent_events(1_000_000).await.expect("events");
    store.shutdown(Duration::from_secs(5)).await;
    let mut by_boot: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in events {
        by_boot.entry(e.boot).or_default().push(e.event.seq);
    }
    by_boot
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_burst_loses_no_acknowledged_write_and_the_next_boot_cleans_up() {
    let tag = unique_tag("storekill");
    // Ten services that crash and restart at once: a steady burst of events (a few hundred a
    // second, so retention does not touch the killed boot's events).
    let mut toml = format!(
        "[project]\nname = \"storekill\"\n[env]\nKINFRA_TEST_TAG = \"{tag}\"\n\
         [dashboard]\nenabled = false\n"
    );
    for i in 0..10 {
        toml.push_str(&format!(
            "[services.burst{i}]\ncommand = \"sleep 0.1; exit 1\"\nrestart = \"always\"\n\
             backoff = {{ initial = \"10ms\", max = \"20ms\" }}\n\
             crash_loop = {{ max_failures = 0 }}\n"
        ));
    }
    toml.push_str("[services.steady]\ncommand = \"exec sleep 1000\"\n");
    let p = Project::with_config(&toml);
    let mut up = p.up(&[], &[]);

    // Wait until a good number of events is acknowledged, then kill kinfra mid-burst.
    let acked = wait_for(Duration::from_secs(60), "300 acknowledged events", || {
        let s = status_json(&p)?;
        let acked = s["store"]["acknowledged_seq"].as_u64()?;
        (acked >= 300).then_some(acked)
    });
    let steady_pid = wait_for(Duration::from_secs(10), "steady's pid", || {
        status_json(&p)?["services"]["steady"]["pid"].as_u64()
    });
    kill(up.pid(), libc::SIGKILL);
    let _ = up.wait_exit(Duration::from_secs(10));

    // The next boot: recovery, then a clean shutdown.
    let mut up = p.up(&[], &[]);
    let history = p.run(&["runtime", "history", "steady", "--json"]);
    assert!(
        history.status.success(),
        "{}",
        crate::support::stderr(&history)
    );
    // One shape whatever the data: `{runs, commands}`, `commands` empty for a service.
    let both: serde_json::Value = serde_json::from_str(&stdout(&history)).expect("history json");
    assert_eq!(both["commands"], serde_json::json!([]), "{both}");
    let runs: Vec<kinfra::store::RunRecord> =
        serde_json::from_value(both["runs"].clone()).expect("history runs");
    let old = runs
        .iter()
        .find(|r| u64::from(r.pid) == steady_pid)
        .expect("the killed instance's run of steady is on record");
    assert!(!old.is_live(), "the stale run was not closed: {old:?}");
    assert!(
        matches!(old.reason.as_deref(), Some("killed at boot" | "lost")),
        "{old:?}"
    );
    assert!(!crate::support::alive(steady_pid as u32));
    let table = p.run(&["runtime", "history"]);
    assert!(stdout(&table).contains("burst0"), "{}", stdout(&table));
    let unknown = p.run(&["runtime", "history", "nope"]);
    assert_eq!(
        unknown.status.code(),
        Some(2),
        "{}",
        crate::support::stderr(&unknown)
    );
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(60)).success());

    // Every event up to the acknowledged one of the killed boot is on disk, without a gap.
    let by_boot = stored_events_by_boot(&p.path().join(".kinfra")).await;
    let killed_boot = by_boot
        .values()
        .find(|seqs| seqs.contains(&1) && seqs.iter().max() >= Some(&acked))
        .expect("the killed boot's events");
    let mut seqs = killed_boot.clone();
    seqs.sort_unstable();
    seqs.dedup();
    let prefix: Vec<u64> = seqs.iter().copied().take_while(|s| *s <= acked).collect();
    assert_eq!(prefix.len() as u64, acked, "a gap below seq {acked}");
}

#[test]
fn metrics_carry_the_store_and_bus_series() {
    use crate::bus::metric;
    let tag = unique_tag("storemetrics");
    let p = Project::with_config(&format!(
        "[project]\nname = \"storemetrics\"\n[env]\nKINFRA_TEST_TAG = \"{tag}\"\n\
         [dashboard]\nlisten = \"127.0.0.1:0\"\n[bus]\nmanaged = false\n\
         [services.steady]\ncommand = \"exec sleep 1000\"\n"
    ));
    let mut up = p.up(&[], &[]);
    let addr = up.dashboard_addr();
    // The store writes the boot's events (runtime started, steady starting and running).
    let metrics = wait_for(Duration::from_secs(20), "store writes in /metrics", || {
        let (code, body) = crate::support::http_get(&addr, "/metrics").ok()?;
        assert_eq!(code, 200, "{body}");
        let written = metric(&body, "kinfra_store_writes_total ", &[])?;
        (written >= 3.0).then_some(body)
    });
    let value = |start: &str| {
        metric(&metrics, start, &[]).unwrap_or_else(|| panic!("no {start:?} in\n{metrics}"))
    };
    assert!(value("kinfra_store_commits_total ") >= 1.0, "{metrics}");
    for zero in [
        "kinfra_store_write_failures_total ",
        "kinfra_store_abandoned_total ",
        "kinfra_store_dropped_total ",
        "kinfra_store_lagged_total ",
    ] {
        assert_eq!(value(zero), 0.0, "{zero}in\n{metrics}");
    }
    assert!(value("kinfra_store_queued ") >= 0.0);
    // The bus runs in-process: the events went through it, and it is no connection.
    assert!(
        value("kinfra_bus_events_published_total ") >= 3.0,
        "{metrics}"
    );
    assert_eq!(value("kinfra_bus_events_dropped_total "), 0.0);
    assert_eq!(value("kinfra_bus_reconnects_total "), 0.0);
    assert_eq!(
        metric(
            &metrics,
            "kinfra_bus_connected{",
            &["mode=\"in_process\"", "state=\"in_process\""]
        ),
        Some(0.0),
        "{metrics}"
    );
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
}
