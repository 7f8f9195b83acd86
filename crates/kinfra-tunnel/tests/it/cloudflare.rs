//! The tunnel API client against the stateful Cloudflare fake behind Prism (Cloudflare's own
//! spec): a tunnel created with its credentials file and adopted on the next start (no second
//! tunnel), adopted with its token where the file is missing; proxied CNAMEs created, fixed
//! and never duplicated; DNS removal that only touches this tunnel's records; connections; and
//! the faults: a refused token, an unknown account or zone, 429 with `Retry-After` and 5xx
//! retried, Cloudflare's `errors[]` shown, a malformed answer, an unreachable API, a timeout.
//! Every test's exchanges are checked against the spec at its end, and no error shows the token.

use crate::cloudflare_fake::{self, TOKEN, cloudflare, error, garbage};
use crate::fake_http::Reply;
use kinfra_core::Secret;
use kinfra_tunnel::cloudflare::cname_target;
use kinfra_tunnel::{
    CloudflareSettings, CloudflareTunnels, DnsAction, DnsChange, TunnelError, TunnelHandle,
};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

fn client(base: &str, account: &str, zone: &str, token: &str) -> CloudflareTunnels {
    CloudflareTunnels::new(CloudflareSettings {
        account_id: account.into(),
        zone_id: zone.into(),
        token: Secret::new(token),
        base_url: Some(base.into()),
        timeout: None,
    })
    .expect("valid settings")
}

/// The error's Display and Debug, checked to hold no token.
fn shown(error: &TunnelError, token: &str) -> String {
    let text = format!("{error} | {error:?}");
    assert!(!text.contains(token), "the token leaked: {text}");
    text
}

fn actions(changes: &[DnsChange]) -> Vec<(String, DnsAction)> {
    changes
        .iter()
        .map(|c| (c.hostname.clone(), c.action))
        .collect()
}

#[tokio::test]
async fn a_tunnel_is_created_with_its_credentials_then_adopted_on_the_next_start() {
    let (prism, fake) = cloudflare();
    let (account, zone) = fake.account();
    let api = client(&prism.url, &account, &zone, TOKEN);
    let dir = tempfile::tempdir().expect("tempdir");
    let creds = dir.path().join("cloudflared");

    let first: TunnelHandle = api
        .ensure_tunnel("kinfra-app", &creds)
        .await
        .expect("create");
    assert!(first.created, "{first:?}");
    assert!(first.run_token.is_none());
    let file = first.credentials_file.clone().expect("a credentials file");
    assert_eq!(file, creds.join(format!("{}.json", first.id)));
    let mode = std::fs::metadata(&file).expect("file").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "credentials readable by others");
    let dir_mode = std::fs::metadata(&creds).expect("dir").permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700);
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("json");
    assert_eq!(written["AccountTag"], account.as_str());
    assert_eq!(written["TunnelID"], first.id.as_str());
    let tunnels = fake.tunnels(&account);
    assert_eq!(tunnels.len(), 1);
    assert_eq!(tunnels[0].config_src, "local");
    // The secret Cloudflare got is the one cloudflared will present.
    assert_eq!(
        tunnels[0].secret.as_deref(),
        written["TunnelSecret"].as_str(),
        "the file's secret is not the tunnel's"
    );

    // The next start: the same tunnel, its local file, nothing created.
    let second = api
        .ensure_tunnel("kinfra-app", &creds)
        .await
        .expect("adopt");
    assert!(!second.created);
    assert_eq!(second.id, first.id);
    assert_eq!(second.credentials_file.as_deref(), Some(file.as_path()));
    assert!(second.run_token.is_none());

    // Another machine (no credentials file): adopted and run with the tunnel's token.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let third = api
        .ensure_tunnel("kinfra-app", elsewhere.path())
        .await
        .expect("adopt with the token");
    assert!(!third.created);
    assert_eq!(third.id, first.id);
    assert!(third.credentials_file.is_none());
    let token = third.run_token.clone().expect("a run token");
    assert!(token.expose().starts_with("eyJ"), "{}", token.expose());
    assert!(!format!("{third:?}").contains(token.expose()));

    assert_eq!(
        fake.tunnels(&account).len(),
        1,
        "a second tunnel was created"
    );
    assert_eq!(
        fake.requests(&format!("POST /accounts/{account}/cfd_tunnel "))
            .len(),
        1
    );
    prism.assert_clean(&account);
}

#[tokio::test]
async fn a_tunnel_made_elsewhere_is_adopted_and_a_deleted_one_is_not() {
    let (prism, fake) = cloudflare();
    let (account, zone) = fake.account();
    let api = client(&prism.url, &account, &zone, TOKEN);
    let dir = tempfile::tempdir().expect("tempdir");
    let outside = fake.add_tunnel(&account, "made-by-hand");
    // A stale credentials file of another tunnel under its name is not used.
    std::fs::write(
        dir.path().join(format!("{outside}.json")),
        r#"{"AccountTag":"x","TunnelID":"11111111-2222-4333-8444-555555555555","TunnelSecret":"c2VjcmV0"}"#,
    )
    .expect("write");
    let adopted = api
        .ensure_tunnel("made-by-hand", dir.path())
        .await
        .expect("adopt");
    assert_eq!(adopted.id, outside);
    assert!(!adopted.created && adopted.run_token.is_some());
    assert!(adopted.credentials_file.is_none(), "{adopted:?}");

    // Deleted (its stale connection cleaned up first), the name is free again: a new tunnel.
    fake.connect(&account, &outside, "DFW", "2026.8.2");
    api.delete_tunnel(&outside).await.expect("delete");
    assert!(fake.tunnels(&account).iter().all(|t| t.deleted));
    let fresh = api
        .ensure_tunnel("made-by-hand", dir.path())
        .await
        .expect("create");
    assert!(fresh.created);
    assert_ne!(fresh.id, outside);
    let deleting_twice = api.delete_tunnel(&outside).await.expect_err("gone");
    assert!(
        matches!(&deleting_twice, TunnelError::NotFound { what, .. } if what.contains(&outside)),
        "{deleting_twice}"
    );
    prism.assert_clean(&account);
}

#[tokio::test]
async fn a_tunnel_created_meanwhile_under_the_name_is_adopted() {
    let (prism, fake) = cloudflare();
    let (account, zone) = fake.account();
    let api = client(&prism.url, &account, &zone, TOKEN);
    let dir = tempfile::tempdir().expect("tempdir");
    // Another kinfra creates it between this one's lookup and its create: the lookup saw
    // none, the create gets Cloudflare's 409.
    let other = fake.add_tunnel(&account, "raced");
    fake.inject(
        &format!("GET /accounts/{account}/cfd_tunnel?"),
        Reply::json(
            200,
            r#"{"success":true,"errors":[],"messages":[],"result":[],"result_info":{"count":0}}"#,
        ),
        1,
    );
    let handle = api.ensure_tunnel("raced", dir.path()).await.expect("adopt");
    assert_eq!(handle.id, other);
    assert!(!handle.created);
    assert_eq!(fake.tunnels(&account).len(), 1);
    assert_eq!(
        fake.requests(&format!("POST /accounts/{account}/cfd_tunnel "))
            .len(),
        1,
        "no create was tried"
    );
    prism.assert_clean(&account);
}

#[tokio::test]
async fn connections_show_their_colo_opening_time_and_version() {
    let (prism, fake) = cloudflare();
    let (account, zone) = fake.account();
    let api = client(&prism.url, &account, &zone, TOKEN);
    let dir = tempfile::tempdir().expect("tempdir");
    let tunnel = api
        .ensure_tunnel("conns", dir.path())
        .await
        .expect("create");
    assert!(api.connections(&tunnel.id).await.expect("none").is_empty());
    fake.connect(&account, &tunnel.id, "DFW", "2026.8.2");
    fake.connect(&account, &tunnel.id, "AMS", "2026.8.2");
    let conns = api.connections(&tunnel.id).await.expect("connections");
    let mut colos: Vec<&str> = conns.iter().map(|c| c.colo.as_str()).collect();
    colos.sort();
    assert_eq!(colos, ["AMS", "DFW"]);
    for c in &conns {
        assert_eq!(c.client_version.as_deref(), Some("2026.8.2"));
        assert_eq!(c.opened_at.as_deref(), Some("2026-01-01T00:00:01Z"));
        assert!(!c.id.is_empty() && c.client_id.is_some());
    }
    prism.assert_clean(&account);
}

#[tokio::test]
async fn dns_records_are_created_fixed_and_never_duplicated() {
    let (prism, fake) = cloudflare();
    let (account, zone) = fake.account();
    let api = client(&prism.url, &account, &zone, TOKEN);
    let dir = tempfile::tempdir().expect("tempdir");
    let tunnel = api.ensure_tunnel("dns", dir.path()).await.expect("create");
    let target = cname_target(&tunnel.id);
    // One wrong record (another tunnel, not proxied) and one already right.
    fake.add_record(
        &zone,
        "CNAME",
        "api.example.com",
        "0000.cfargotunnel.com",
        false,
    );
    fake.add_record(&zone, "CNAME", "docs.example.com", &target, true);
    let hosts: Vec<String> = ["app.example.com", "api.example.com", "docs.example.com"]
        .map(String::from)
        .to_vec();
    let changes = api.ensure_dns(&tunnel.id, &hosts).await.expect("dns");
    assert_eq!(
        actions(&changes),
        [
            ("app.example.com".to_owned(), DnsAction::Created),
            ("api.example.com".to_owned(), DnsAction::Updated),
            ("docs.example.com".to_owned(), DnsAction::Unchanged),
        ]
    );
    for host in &hosts {
        let records = fake.records_named(&zone, host);
        assert_eq!(records.len(), 1, "{host}: {records:?}");
        assert_eq!(records[0].kind, "CNAME");
        assert_eq!(records[0].content, target);
        assert!(records[0].proxied, "{host} not proxied");
    }

    // A restart: nothing created or changed, no duplicate.
    let writes = |fake: &cloudflare_fake::CloudflareFake| {
        fake.requests(&zone)
            .iter()
            .filter(|l| !l.starts_with("GET "))
            .count()
    };
    let before = writes(fake);
    let again = api.ensure_dns(&tunnel.id, &hosts).await.expect("dns again");
    assert!(
        again.iter().all(|c| c.action == DnsAction::Unchanged),
        "{again:?}"
    );
    assert_eq!(writes(fake), before, "a restart wrote DNS records");
    assert_eq!(fake.records(&zone).len(), 3);
    prism.assert_clean(&zone);
    prism.assert_clean(&account);
}

#[tokio::test]
async fn remove_dns_deletes_only_the_records_pointing_at_this_tunnel() {
    let (prism, fake) = cloudflare();
    let (account, zone) = fake.account();
    let api = client(&prism.url, &account, &zone, TOKEN);
    let dir = tempfile::tempdir().expect("tempdir");
    let tunnel = api.ensure_tunnel("rm", dir.path()).await.expect("create");
    let ours: Vec<String> = ["a.example.com", "b.example.com"]
        .map(String::from)
        .to_vec();
    api.ensure_dns(&tunnel.id, &ours).await.expect("dns");
    let foreign = fake.add_record(
        &zone,
        "CNAME",
        "c.example.com",
        "elsewhere.example.net",
        true,
    );
    let mut all = ours.clone();
    all.push("c.example.com".into());
    all.push("nothing.example.com".into());
    let changes = api.remove_dns(&tunnel.id, &all).await.expect("remove");
    assert_eq!(
        actions(&changes),
        [
            ("a.example.com".to_owned(), DnsAction::Deleted),
            ("b.example.com".to_owned(), DnsAction::Deleted),
            ("c.example.com".to_owned(), DnsAction::Kept),
        ]
    );
    let left = fake.records(&zone);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].id, foreign);
    prism.assert_clean(&zone);
}

#[tokio::test]
async fn a_refused_token_is_named_and_never_shown() {
    let (prism, fake) = cloudflare();
    let (account, zone) = fake.account();
    let wrong = "cf-wrong-token-Zr8yQ2";
    let api = client(&prism.url, &account, &zone, wrong);
    let dir = tempfile::tempdir().expect("tempdir");
    let e = api
        .ensure_tunnel("t", dir.path())
        .await
        .expect_err("refused");
    let text = shown(&e, wrong);
    assert!(
        matches!(e, TunnelError::TokenRefused { status: 401, .. }),
        "{text}"
    );
    assert!(
        text.contains("token") && text.contains("Authentication error"),
        "{text}"
    );
    // Refused tokens are not retried: one request.
    assert_eq!(fake.requests(&account).len(), 1);
    let e = api
        .ensure_dns(
            "5f0c0e4e-0000-4000-8000-000000000000",
            &["x.example.com".into()],
        )
        .await
        .expect_err("refused");
    shown(&e, wrong);
    assert!(matches!(e, TunnelError::TokenRefused { .. }), "{e}");
    prism.assert_clean(&account);
}

#[tokio::test]
async fn an_unknown_account_or_zone_is_named() {
    let (prism, fake) = cloudflare();
    let (account, zone) = fake.account();
    let unknown_account = "0badacc0000000000000000000000001";
    let unknown_zone = "0bad2000000000000000000000000001";
    let dir = tempfile::tempdir().expect("tempdir");
    let api = client(&prism.url, unknown_account, &zone, TOKEN);
    let e = api.ensure_tunnel("t", dir.path()).await.expect_err("404");
    let text = shown(&e, TOKEN);
    assert!(
        matches!(&e, TunnelError::NotFound { what, .. } if what.contains(unknown_account)),
        "{text}"
    );
    assert!(
        text.contains("perhaps your object identifier is invalid"),
        "{text}"
    );
    let api = client(&prism.url, &account, unknown_zone, TOKEN);
    let e = api
        .ensure_dns(
            "5f0c0e4e-0000-4000-8000-000000000000",
            &["x.example.com".into()],
        )
        .await
        .expect_err("404");
    let text = shown(&e, TOKEN);
    assert!(
        matches!(&e, TunnelError::NotFound { what, .. } if what.contains(unknown_zone)),
        "{text}"
    );
    prism.assert_clean(unknown_account);
    prism.assert_clean(unknown_zone);
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried_then_reported() {
    let (prism, fake) = cloudflare();
    let (account, zone) = fake.account();
    let api = client(&prism.url, &account, &zone, TOKEN);
    let dir = tempfile::tempdir().expect("tempdir");
    let list = format!("GET /accounts/{account}/cfd_tunnel?");
    fake.inject(
        &list,
        error(429, 10429, "Rate limited").header("Retry-After", "1"),
        1,
    );
    let tunnel = api
        .ensure_tunnel("busy", dir.path())
        .await
        .expect("after a 429");
    assert_eq!(fake.requests(&list).len(), 2, "the 429 was not retried");
    let create = format!("POST /zones/{zone}/dns_records");
    fake.inject(&create, error(502, 10502, "Bad gateway"), 1);
    let changes = api
        .ensure_dns(&tunnel.id, &["busy.example.com".into()])
        .await
        .expect("after a 502");
    assert_eq!(changes[0].action, DnsAction::Created);
    assert_eq!(
        fake.records(&zone).len(),
        1,
        "a retried create duplicated the record"
    );

    // Failing every attempt: reported, with Cloudflare's message and the status.
    let conns = format!(
        "GET /accounts/{account}/cfd_tunnel/{}/connections",
        tunnel.id
    );
    fake.inject(
        &conns,
        error(500, 10500, "Internal error in the tunnel service"),
        10,
    );
    let e = api.connections(&tunnel.id).await.expect_err("500s");
    let text = shown(&e, TOKEN);
    assert!(matches!(e, TunnelError::Api { status: 500, .. }), "{text}");
    assert!(
        text.contains("Internal error in the tunnel service"),
        "{text}"
    );
    let tries = fake.requests(&conns).len();
    assert!((2..=5).contains(&tries), "{tries} attempts");
    fake.clear_faults(&conns);
    fake.inject(
        &conns,
        error(429, 10429, "Rate limited").header("Retry-After", "1"),
        10,
    );
    let e = api.connections(&tunnel.id).await.expect_err("429s");
    let text = shown(&e, TOKEN);
    assert!(
        matches!(e, TunnelError::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(1)),
        "{text}"
    );
    assert_clean_but_undeclared_5xx(&zone);
    assert_clean_but_undeclared_5xx(&account);
}

/// [`Prism::assert_clean`] for a test that scripts 5xx answers: the spec declares no 5xx
/// (Cloudflare sends them all the same), so Prism's only complaint allowed is that one, on them.
fn assert_clean_but_undeclared_5xx(needle: &str) {
    let (prism, _) = cloudflare();
    assert!(
        !prism.exchanges(needle).is_empty(),
        "no exchange matched {needle}"
    );
    let bad: Vec<String> = prism
        .violations(needle)
        .into_iter()
        .filter(|x| {
            let undeclared = x.violation.as_deref().is_some_and(|v| {
                v.contains("Unable to match the returned status code") && !v.contains("\"Error\"")
            });
            !(x.status >= 500 && undeclared)
        })
        .map(|x| {
            format!(
                "{} {} → {}: {:?}",
                x.method, x.target, x.status, x.violation
            )
        })
        .collect();
    assert!(
        bad.is_empty(),
        "exchanges left the spec:\n{}",
        bad.join("\n")
    );
}

#[tokio::test]
async fn cloudflares_error_messages_are_shown() {
    let (prism, fake) = cloudflare();
    let (account, zone) = fake.account();
    let api = client(&prism.url, &account, &zone, TOKEN);
    let dir = tempfile::tempdir().expect("tempdir");
    let tunnel = api
        .ensure_tunnel("conflict", dir.path())
        .await
        .expect("create");
    // An A record on the name: Cloudflare refuses a CNAME beside it; kinfra replaces nothing.
    fake.add_record(&zone, "A", "taken.example.com", "198.51.100.4", false);
    let e = api
        .ensure_dns(&tunnel.id, &["taken.example.com".into()])
        .await
        .expect_err("conflict");
    let text = shown(&e, TOKEN);
    assert!(matches!(e, TunnelError::Api { status: 400, .. }), "{text}");
    assert!(
        text.contains("An A, AAAA, or CNAME record with that host already exists. (code 81053)"),
        "{text}"
    );
    assert!(text.contains("taken.example.com"), "{text}");

    // A hostname outside the zone: named, and no stray `….example.com` record is left.
    let e = api
        .ensure_dns(&tunnel.id, &["app.example.org".into()])
        .await
        .expect_err("outside the zone");
    let text = shown(&e, TOKEN);
    assert!(
        matches!(e, TunnelError::Settings(_))
            && text.contains("`app.example.org` is not in zone")
            && text.contains(&zone),
        "{text}"
    );
    assert_eq!(fake.records(&zone).len(), 1, "{:?}", fake.records(&zone));
    prism.assert_clean(&account);
}

#[tokio::test]
async fn a_malformed_answer_is_an_error() {
    // Straight to the fake: Prism itself refuses to pass an answer that is not JSON.
    let (prism, fake) = cloudflare();
    let (account, zone) = fake.account();
    let api = client(&prism.fake_url, &account, &zone, TOKEN);
    let dir = tempfile::tempdir().expect("tempdir");
    let list = format!("GET /accounts/{account}/cfd_tunnel?");
    fake.inject(&list, garbage(), 1);
    let e = api
        .ensure_tunnel("m", dir.path())
        .await
        .expect_err("garbage");
    let text = shown(&e, TOKEN);
    assert!(matches!(e, TunnelError::Malformed { .. }), "{text}");
    fake.inject(
        &list,
        Reply::json(
            200,
            r#"{"success":true,"errors":[],"messages":[],"result":"nope"}"#,
        ),
        1,
    );
    let e = api
        .ensure_tunnel("m", dir.path())
        .await
        .expect_err("wrong shape");
    assert!(matches!(e, TunnelError::Malformed { .. }), "{e}");
    fake.inject(
        &list,
        Reply::json(200, r#"{"success":false,"errors":[{"code":1234,"message":"odd"}],"messages":[],"result":null}"#),
        1,
    );
    let e = api
        .ensure_tunnel("m", dir.path())
        .await
        .expect_err("success false");
    assert!(
        matches!(&e, TunnelError::Api { status: 200, messages, .. } if messages == &["odd (code 1234)"]),
        "{e}"
    );
    assert!(fake.tunnels(&account).is_empty());
}

#[tokio::test]
async fn an_unreachable_or_silent_api_is_named() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let api = client(
        &format!("http://127.0.0.1:{port}"),
        "0000000000000000000000000000000a",
        "0000000000000000000000000000000b",
        TOKEN,
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let e = api
        .ensure_tunnel("u", dir.path())
        .await
        .expect_err("unreachable");
    let text = shown(&e, TOKEN);
    assert!(matches!(e, TunnelError::Unreachable { .. }), "{text}");
    assert!(text.contains("unreachable"), "{text}");

    // A timeout from the settings: an answer later than it is no answer.
    let (prism, fake) = cloudflare();
    let (account, zone) = fake.account();
    let slow = CloudflareTunnels::new(CloudflareSettings {
        account_id: account.clone(),
        zone_id: zone,
        token: Secret::new(TOKEN),
        base_url: Some(prism.fake_url.clone()),
        timeout: Some(Duration::from_millis(300)),
    })
    .expect("settings");
    fake.inject(
        &format!("GET /accounts/{account}/cfd_tunnel?"),
        error(200, 0, "late").delayed(Duration::from_secs(3)),
        10,
    );
    let e = slow
        .ensure_tunnel("s", dir.path())
        .await
        .expect_err("timeout");
    let text = shown(&e, TOKEN);
    assert!(matches!(e, TunnelError::Unreachable { .. }), "{text}");
    assert!(text.contains("no answer within 300ms"), "{text}");
}
