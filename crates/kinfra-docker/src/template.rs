//! Templates: the image, port, environment, data volume, health check and connection string
//! each kind of resource gets by default, and how a `[resources.NAME]` block and a generated
//! password turn into a [`ContainerSpec`].

use crate::DockerError;
use crate::host_check::HostCheck;
use crate::secrets::Secrets;
use crate::spec::{ContainerSpec, HealthCheck, Labels};
use kinfra_core::config::{CommandSpec, ResourceConfig, Template};
use kinfra_core::resource::Connection;
use kinfra_core::secret::Secret;
use std::collections::BTreeMap;

/// What a template contributes before the config's own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateDefaults {
    /// The image.
    pub image: Option<&'static str>,
    /// The port the service listens on inside the container.
    pub container_port: Option<u16>,
    /// Where its data lives (a named volume is mounted there).
    pub data_path: Option<&'static str>,
    /// The environment variable that carries the generated password.
    pub password_var: Option<&'static str>,
    /// The user name in the connection string.
    pub user: Option<&'static str>,
}

/// The defaults of `template`.
pub fn defaults(template: Template) -> TemplateDefaults {
    let d = |image, port, data, pw, user| TemplateDefaults {
        image: Some(image),
        container_port: Some(port),
        data_path: Some(data),
        password_var: Some(pw),
        user,
    };
    match template {
        Template::Postgres => d(
            "postgres:16",
            5432,
            "/var/lib/postgresql/data",
            "POSTGRES_PASSWORD",
            Some("kinfra"),
        ),
        Template::Redis => d("redis:7", 6379, "/data", "REDIS_PASSWORD", None),
        Template::Nats => d("nats:2", 4222, "/data", "NATS_TOKEN", None),
        Template::Mongodb => d(
            "mongo:7",
            27017,
            "/data/db",
            "MONGO_INITDB_ROOT_PASSWORD",
            Some("kinfra"),
        ),
        Template::Mysql => d(
            "mysql:8",
            3306,
            "/var/lib/mysql",
            "MYSQL_ROOT_PASSWORD",
            Some("root"),
        ),
        Template::Docker => TemplateDefaults {
            image: None,
            container_port: None,
            data_path: None,
            password_var: None,
            user: None,
        },
    }
}

fn sh(script: &str) -> Vec<String> {
    vec!["CMD-SHELL".into(), script.into()]
}

/// A resource ready to become a container: its spec and how dependents reach it.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The container to create.
    pub spec: ContainerSpec,
    /// The connection facts (`${resources.NAME.url}` and friends).
    pub connection: Connection,
    /// A health check kinfra runs from the host, for an image that cannot run one itself.
    pub host_check: Option<HostCheck>,
}

/// Builds the container for `[resources.NAME]` of `project`, with `host_port` already
/// resolved from the port registry. A template's password is taken from the config's `env`
/// when set there, otherwise generated once and kept in `secrets`.
pub fn resolve(
    project: &str,
    name: &str,
    cfg: &ResourceConfig,
    host_port: Option<u16>,
    secrets: &Secrets,
) -> Result<Resolved, DockerError> {
    let t = defaults(cfg.template);
    let image = cfg
        .image
        .clone()
        .or_else(|| t.image.map(str::to_owned))
        .ok_or_else(|| DockerError::Invalid("the `docker` template needs an `image`".into()))?;
    let container_port = cfg.container_port.or(t.container_port);
    if host_port.is_some() && container_port.is_none() {
        return Err(DockerError::Invalid(
            "a published port needs `container_port`, the port inside the container".into(),
        ));
    }
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let password = match t.password_var {
        Some(var) => Some(match cfg.env.get(var) {
            Some(v) => v.clone(),
            None => secrets.get_or_create(&format!("{name}.password"))?,
        }),
        None => None,
    };
    if let (Some(var), Some(pw)) = (t.password_var, &password) {
        env.insert(var.to_owned(), pw.clone());
    }
    let mut command: Option<Vec<String>> = None;
    let mut health: Option<HealthCheck> = None;
    let mut host_check: Option<HostCheck> = None;
    match cfg.template {
        Template::Postgres => {
            env.insert("POSTGRES_USER".into(), "kinfra".into());
            env.insert("POSTGRES_DB".into(), name.into());
            health = Some(HealthCheck::new(sh(
                "pg_isready -U kinfra -d \"$POSTGRES_DB\"",
            )));
        }
        Template::Redis => {
            command = Some(vec![
                "sh".into(),
                "-c".into(),
                "exec redis-server --requirepass \"$REDIS_PASSWORD\" --appendonly yes --dir /data"
                    .into(),
            ]);
            health = Some(HealthCheck::new(sh(
                "REDISCLI_AUTH=\"$REDIS_PASSWORD\" redis-cli ping | grep -q PONG",
            )));
        }
        Template::Nats => {
            // The nats image has no shell: the token goes in as an argument.
            let mut argv = vec!["--auth".to_owned(), password.clone().unwrap_or_default()];
            if cfg.jetstream {
                argv.extend(["-js".into(), "--store_dir".into(), "/data".into()]);
            }
            command = Some(argv);
            // Nor can it run a Docker healthcheck: kinfra logs in on the published port.
            host_check = host_port
                .zip(password.clone())
                .map(|(port, token)| HostCheck::Nats {
                    port,
                    token: Secret::new(token),
                });
        }
        Template::Mongodb => {
            env.insert("MONGO_INITDB_ROOT_USERNAME".into(), "kinfra".into());
            health = Some(HealthCheck::new(sh(
                "mongosh --quiet --eval 'db.adminCommand(\"ping\").ok' | grep -q 1",
            )));
        }
        Template::Mysql => {
            env.insert("MYSQL_DATABASE".into(), name.into());
            health = Some(HealthCheck::new(sh(
                "mysqladmin ping -h 127.0.0.1 -p\"$MYSQL_ROOT_PASSWORD\" --silent",
            )));
        }
        Template::Docker => {}
    }
    for (k, v) in &cfg.env {
        env.insert(k.clone(), v.clone());
    }
    if let Some(cmd) = &cfg.command {
        command = Some(match cmd {
            CommandSpec::Argv(v) => v.clone(),
            CommandSpec::Shell(s) => vec!["sh".into(), "-c".into(), s.clone()],
        });
    }
    let mut volumes = BTreeMap::new();
    if let Some(path) = t.data_path {
        volumes.insert(volume_name(project, name, "data"), path.to_owned());
    }
    for (vol, path) in &cfg.volumes {
        if vol.contains('/') || vol.starts_with('.') || vol.is_empty() {
            return Err(DockerError::Invalid(format!(
                "volume `{vol}` is not a named volume; host paths are not mounted"
            )));
        }
        volumes.insert(volume_name(project, name, vol), path.clone());
    }
    let spec = ContainerSpec {
        name: container_name(project, name),
        image,
        command,
        env,
        container_port,
        host_port,
        volumes,
        health,
        labels: Labels {
            project: project.to_owned(),
            resource: name.to_owned(),
        },
    };
    let connection = connection(cfg.template, name, host_port, &t, password.as_deref());
    Ok(Resolved {
        spec,
        connection,
        host_check,
    })
}

fn connection(
    template: Template,
    name: &str,
    port: Option<u16>,
    t: &TemplateDefaults,
    password: Option<&str>,
) -> Connection {
    let host = "127.0.0.1".to_owned();
    let hp = match port {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    let pw = password.unwrap_or_default();
    let url = match template {
        Template::Postgres => Some(format!("postgres://kinfra:{pw}@{hp}/{name}")),
        Template::Redis => Some(format!("redis://default:{pw}@{hp}")),
        Template::Nats => Some(format!("nats://{pw}@{hp}")),
        Template::Mongodb => Some(format!("mongodb://kinfra:{pw}@{hp}/?authSource=admin")),
        Template::Mysql => Some(format!("mysql://root:{pw}@{hp}/{name}")),
        Template::Docker => port.map(|_| format!("http://{hp}")),
    };
    let mut fields = BTreeMap::new();
    if let Some(pw) = password {
        fields.insert("password".to_owned(), Secret::new(pw));
    }
    if let Some(user) = t.user {
        fields.insert("user".to_owned(), Secret::new(user));
    }
    if matches!(template, Template::Postgres | Template::Mysql) {
        fields.insert("database".to_owned(), Secret::new(name));
    }
    Connection {
        host,
        port,
        url: url.map(Secret::new),
        fields,
    }
}

pub use kinfra_core::docker_names::{container_name, volume_name};

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> (tempfile::TempDir, Secrets) {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Secrets::new(dir.path().join("secrets.json"));
        (dir, s)
    }

    #[test]
    fn redis_template_has_password_volume_health_and_url() {
        let (_d, secrets) = secrets();
        let cfg = ResourceConfig::new(Template::Redis);
        let r = resolve("demo", "cache", &cfg, Some(6400), &secrets).expect("resolve");
        let pw = r.spec.env["REDIS_PASSWORD"].clone();
        assert!(pw.len() >= 24, "generated password is long: {}", pw.len());
        assert_eq!(r.spec.image, "redis:7");
        assert_eq!(r.spec.container_port, Some(6379));
        assert_eq!(r.spec.name, "kinfra-demo-cache");
        assert_eq!(
            r.spec
                .volumes
                .get("kinfra-demo-cache-data")
                .map(String::as_str),
            Some("/data")
        );
        assert!(r.spec.health.is_some());
        assert_eq!(
            r.connection.field("url"),
            Some(format!("redis://default:{pw}@127.0.0.1:6400"))
        );
        // The same password next time (kept in the secrets file), and never printed.
        let again = resolve("demo", "cache", &cfg, Some(6400), &secrets).expect("resolve");
        assert_eq!(again.spec.env["REDIS_PASSWORD"], pw);
        assert!(!format!("{:?}", r.connection).contains(&pw));
        assert_eq!(r.spec.hash(), again.spec.hash());
    }

    #[test]
    fn every_template_has_a_url_and_config_wins() {
        let (_d, secrets) = secrets();
        for (t, scheme) in [
            (Template::Postgres, "postgres://kinfra:"),
            (Template::Nats, "nats://"),
            (Template::Mongodb, "mongodb://kinfra:"),
            (Template::Mysql, "mysql://root:"),
        ] {
            let r =
                resolve("p", "db", &ResourceConfig::new(t), Some(1234), &secrets).expect("resolve");
            let url = r.connection.field("url").expect("url");
            assert!(url.starts_with(scheme), "{url}");
            assert!(url.contains("127.0.0.1:1234"), "{url}");
        }
        let mut cfg = ResourceConfig::new(Template::Postgres);
        cfg.env.insert("POSTGRES_PASSWORD".into(), "chosen".into());
        cfg.image = Some("postgres:15".into());
        let r = resolve("p", "db", &cfg, Some(1), &secrets).expect("resolve");
        assert_eq!(r.spec.image, "postgres:15");
        assert_eq!(
            r.connection.field("url").as_deref(),
            Some("postgres://kinfra:chosen@127.0.0.1:1/db")
        );
        let mut js = ResourceConfig::new(Template::Nats);
        js.jetstream = true;
        let r = resolve("p", "bus", &js, None, &secrets).expect("resolve");
        assert!(r.spec.command.expect("command").contains(&"-js".to_owned()));
        assert_eq!(
            r.host_check, None,
            "nothing to reach without a published port"
        );
        // The nats image cannot run a Docker healthcheck: kinfra logs in with the token.
        let r = resolve("p", "bus", &js, Some(4300), &secrets).expect("resolve");
        assert!(r.spec.health.is_none());
        let token = secrets.get_or_create("bus.password").expect("token");
        assert_eq!(
            r.host_check,
            Some(HostCheck::Nats {
                port: 4300,
                token: Secret::new(token)
            })
        );
    }

    #[test]
    fn docker_template_needs_an_image_and_refuses_host_paths() {
        let (_d, secrets) = secrets();
        let cfg = ResourceConfig::new(Template::Docker);
        assert!(resolve("p", "box", &cfg, None, &secrets).is_err());
        let mut cfg = ResourceConfig::new(Template::Docker);
        cfg.image = Some("example/app:1".into());
        cfg.volumes.insert("/etc".into(), "/host-etc".into());
        let e = resolve("p", "box", &cfg, None, &secrets).expect_err("bind mount");
        assert!(e.to_string().contains("not a named volume"), "{e}");
        let mut cfg = ResourceConfig::new(Template::Docker);
        cfg.image = Some("example/app:1".into());
        cfg.port = Some(kinfra_core::config::PortSpec::Auto);
        assert!(resolve("p", "box", &cfg, Some(9), &secrets).is_err());
        cfg.container_port = Some(8080);
        let r = resolve("p", "box", &cfg, Some(9), &secrets).expect("resolve");
        assert_eq!(
            r.connection.field("url").as_deref(),
            Some("http://127.0.0.1:9")
        );
        assert!(r.spec.env.is_empty() && r.spec.volumes.is_empty());
    }

    #[test]
    fn names_are_docker_safe() {
        assert_eq!(container_name("My App", "db"), "kinfra-My-App-db");
        assert_eq!(volume_name("p", "db", "data"), "kinfra-p-db-data");
    }
}
