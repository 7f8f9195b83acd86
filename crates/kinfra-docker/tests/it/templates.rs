//! The postgres, mysql and nats templates against images with the official images'
//! interface, made with `docker import` from Debian's packages (PostgreSQL, MariaDB for
//! mysql, nats-server): each container reaches healthy with its generated password, and a
//! client on the host logs in with the template's connection string while a wrong password
//! is refused. mongodb is not packaged in Debian, so its template has no such test.

use crate::support::*;
use kinfra_core::config::{ResourceConfig, Template};
use kinfra_core::resource::Resource;
use kinfra_core::secret::Secret;
use kinfra_core::state::Health;
use kinfra_docker::{DockerResource, HostCheck};

/// Starts the `template` resource `db` of `project` from `image` on a free host port and
/// waits (bounded) until its health check passes; the resource and its URL.
async fn healthy(project: &Project, template: Template, image: &str) -> (DockerResource, String) {
    let mut cfg = ResourceConfig::new(template);
    cfg.image = Some(image.to_owned());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let res = DockerResource::from_config(
        &project.name,
        "db",
        &cfg,
        Some(port),
        &project.secrets(),
        project.engine(),
    )
    .expect("resolve");
    res.start().await.expect("start");
    assert!(res.has_own_health(), "the template has a health check");
    let mut last = Health::Unknown;
    let deadline = std::time::Instant::now() + SECS(60);
    while std::time::Instant::now() < deadline {
        last = res.health().await.expect("health");
        if last == Health::Healthy {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let logs = res.logs(50).await.unwrap_or_default();
    assert_eq!(last, Health::Healthy, "container log: {logs:#?}");
    let url = res.connection().field("url").expect("url");
    (res, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_template_logs_in_with_its_generated_password() {
    let project = Project::new("pg").await;
    let tag = image(&POSTGRES_IMAGE).await;
    let (_res, url) = healthy(&project, Template::Postgres, tag).await;
    let out = host(&format!(
        "psql '{url}' -tAc 'select current_user, current_database()'"
    ))
    .expect("psql with the url");
    assert_eq!(out.trim(), "kinfra|db");
    let wrong = url.replacen("kinfra:", "kinfra:wrong", 1);
    let refused = host(&format!("psql '{wrong}' -tAc 'select 1'")).expect_err("wrong password");
    assert!(
        refused.contains("password authentication failed"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_template_logs_in_with_its_generated_password() {
    let project = Project::new("my").await;
    let tag = image(&MYSQL_IMAGE).await;
    let (_res, url) = healthy(&project, Template::Mysql, tag).await;
    let (user, pw, port, db) = url_parts(&url);
    assert_eq!((user.as_str(), db.as_str()), ("root", "db"));
    let query = |pw: &str| {
        host(&format!(
            "MYSQL_PWD='{pw}' mariadb -h 127.0.0.1 -P {port} -u {user} -N -B {db} \
             -e 'select current_user(), database()'"
        ))
    };
    assert_eq!(
        query(&pw).expect("mariadb with the url's password").trim(),
        "root@%\tdb"
    );
    let refused = query("wrong").expect_err("wrong password");
    assert!(refused.contains("Access denied"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_template_logs_in_with_its_generated_token() {
    let project = Project::new("nats").await;
    let tag = image(&NATS_IMAGE).await;
    let (_res, url) = healthy(&project, Template::Nats, tag).await;
    let rest = url.strip_prefix("nats://").expect("nats url");
    let (token, addr) = rest.split_once('@').expect("token in the url");
    let port: u16 = addr
        .rsplit_once(':')
        .expect("port")
        .1
        .parse()
        .expect("port");
    let lines = nats_exchange(port, token);
    assert!(lines[0].starts_with("INFO "), "{lines:?}");
    assert!(lines[0].contains("\"auth_required\":true"), "{lines:?}");
    assert_eq!(
        lines[1..],
        ["+OK", "+OK", "+OK", "MSG greeting 1 5", "hello", "PONG"],
        "connected with the token, message round trip"
    );
    let refused = nats_exchange(port, "wrong");
    assert!(
        refused
            .iter()
            .any(|l| l.contains("Authorization Violation")),
        "{refused:?}"
    );
    // kinfra's own check logs in the same way: a wrong token fails it.
    let wrong = HostCheck::Nats {
        port,
        token: Secret::new("wrong"),
    };
    let error = wrong
        .run()
        .await
        .expect_err("a wrong token fails the check");
    assert!(error.contains("Authorization Violation"), "{error}");
}
