//! The image of a kinfra project: from a loaded config, the static binary and the host's CA
//! bundle, the [`ImageSpec`] `kinfra image build` builds. Two layers: the runtime (`/kinfra`,
//! `/etc/ssl/certs/ca-certificates.crt`, `/tmp`, and a static busybox as `/bin/sh` with its
//! applets when the config needs a shell) and the app (`/app/<config file>`, the `[image]
//! include` paths under `/app`, the state dir). Entrypoint `kinfra runtime up -c
//! /app/<config file>`, working dir `/app`, the state dir a volume, the proxy's and the
//! dashboard's ports exposed, labels with the version, the commit and the creation time.

use crate::ImageError;
use crate::elf;
use crate::image::{ImageSpec, LayerSpec, RuntimeSettings, rfc3339};
use crate::tar::{Archive, Entry, EntryKind};
use kinfra_core::config::{CommandSpec, Config};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the project's files go in the image.
pub const APP_DIR: &str = "/app";
/// Where the CA bundle goes (and where `SSL_CERT_FILE` points).
pub const CA_BUNDLE_PATH: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The version, commit and time an image is labelled with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInfo {
    /// `org.opencontainers.image.version`.
    pub version: String,
    /// `org.opencontainers.image.revision`: the commit, when the project is a git checkout.
    pub revision: Option<String>,
    /// The creation time (and every file's mtime), seconds since 1970.
    pub created: u64,
}

impl SourceInfo {
    /// `version`, the commit of the git checkout `dir` is in (if any), and the creation
    /// time: `source_date_epoch` (`SOURCE_DATE_EPOCH`) when given, else the commit's time,
    /// else 1970 — never the clock, so rebuilding gives the same digest.
    pub fn detect(
        dir: &Path,
        version: &str,
        source_date_epoch: Option<&str>,
    ) -> Result<Self, ImageError> {
        let git = |args: &[&str]| -> Option<String> {
            let out = Command::new("git")
                .arg("-C")
                .arg(dir)
                .args(args)
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
                .filter(|s| !s.is_empty())
        };
        let revision = git(&["rev-parse", "HEAD"]);
        let created = match source_date_epoch {
            Some(text) => text.trim().parse::<u64>().map_err(|_| {
                ImageError::Input(format!(
                    "SOURCE_DATE_EPOCH `{text}` is not a number of seconds since 1970"
                ))
            })?,
            None => revision
                .as_ref()
                .and_then(|_| git(&["log", "-1", "--format=%ct"]))
                .and_then(|t| t.parse().ok())
                .unwrap_or(0),
        };
        Ok(Self {
            version: version.to_owned(),
            revision,
            created,
        })
    }
}

/// What an image of a project is made from.
#[derive(Debug, Clone)]
pub struct BuildInputs<'a> {
    /// The loaded config.
    pub config: &'a Config,
    /// Its file (copied into the image as it is).
    pub config_file: &'a Path,
    /// The static kinfra binary.
    pub binary: &'a Path,
    /// The CA bundle to put at [`CA_BUNDLE_PATH`].
    pub ca_bundle: &'a Path,
    /// A static busybox, used when the config needs a shell.
    pub busybox: &'a Path,
    /// Version, commit, time.
    pub source: SourceInfo,
}

/// True when the image needs `/bin/sh`: `[image] shell`, else whether any command of the
/// config (a service's, or an `exec` probe's) is a shell string.
pub fn needs_shell(config: &Config) -> bool {
    if let Some(shell) = config.image.as_ref().and_then(|i| i.shell) {
        return shell;
    }
    config.services.values().any(|s| {
        matches!(s.command, CommandSpec::Shell(_))
            || [&s.health, &s.liveness]
                .into_iter()
                .flatten()
                .any(|p| matches!(p.exec, Some(CommandSpec::Shell(_))))
    })
}

/// The image of the project `inputs` describes.
pub fn image_spec(inputs: &BuildInputs<'_>) -> Result<ImageSpec, ImageError> {
    let config = inputs.config;
    let read = |what: &str, path: &Path| {
        std::fs::read(path).map_err(|source| ImageError::File {
            what: what.to_owned(),
            path: path.to_path_buf(),
            source,
        })
    };
    let binary = read(
        "the kinfra binary (build the static one with `./x dist`, or give --binary)",
        inputs.binary,
    )?;
    let facts = elf::require_static(&binary).map_err(|reason| ImageError::Binary {
        path: inputs.binary.to_path_buf(),
        reason,
    })?;
    let mut runtime = Archive::new();
    let input = ImageError::Input;
    runtime
        .insert("kinfra", file(binary, 0o755))
        .map_err(input)?;
    let ca = read(
        "the CA bundle (Debian package ca-certificates)",
        inputs.ca_bundle,
    )?;
    runtime
        .insert(CA_BUNDLE_PATH, file(ca, 0o644))
        .map_err(input)?;
    runtime
        .insert(
            "tmp",
            Entry {
                mode: 0o1777,
                kind: EntryKind::Dir,
            },
        )
        .map_err(input)?;
    if needs_shell(config) {
        add_busybox(&mut runtime, inputs.busybox)?;
    }

    let mut app = Archive::new();
    let config_name = inputs
        .config_file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            ImageError::Input(format!(
                "{} is not a config file name",
                inputs.config_file.display()
            ))
        })?;
    let config_bytes = read("the config file", inputs.config_file)?;
    app.insert(&format!("app/{config_name}"), file(config_bytes, 0o644))
        .map_err(input)?;
    // The directory the config's own relative paths (the state dir) resolve against, so an
    // include of `.` can leave the state dir out.
    let base = if config.base_dir.as_os_str().is_empty() {
        config_dir(inputs.config_file)
    } else {
        config.base_dir.clone()
    };
    let state_dir = config.state_dir();
    for include in config.image.iter().flat_map(|i| i.include.iter()) {
        add_include(&mut app, &base, include, &state_dir)?;
    }
    let state_in_image = if config.project.state_dir.is_absolute() {
        config.project.state_dir.to_string_lossy().into_owned()
    } else {
        format!("{APP_DIR}/{}", config.project.state_dir.to_string_lossy())
    };
    app.insert(
        &state_in_image,
        Entry {
            mode: 0o700,
            kind: EntryKind::Dir,
        },
    )
    .map_err(input)?;

    let mut labels = BTreeMap::new();
    labels.insert(
        "org.opencontainers.image.version".to_owned(),
        inputs.source.version.clone(),
    );
    if let Some(revision) = &inputs.source.revision {
        labels.insert(
            "org.opencontainers.image.revision".to_owned(),
            revision.clone(),
        );
    }
    labels.insert(
        "org.opencontainers.image.created".to_owned(),
        rfc3339(inputs.source.created),
    );
    labels.insert(
        "org.opencontainers.image.title".to_owned(),
        config.project.name.clone(),
    );
    labels.insert("dev.kinfra.project".to_owned(), config.project.name.clone());

    Ok(ImageSpec {
        layers: vec![
            LayerSpec {
                comment: "kinfra runtime".into(),
                files: runtime,
            },
            LayerSpec {
                comment: format!("app {}", config.project.name),
                files: app,
            },
        ],
        runtime: RuntimeSettings {
            entrypoint: vec![
                "/kinfra".into(),
                "runtime".into(),
                "up".into(),
                "-c".into(),
                format!("{APP_DIR}/{config_name}"),
            ],
            env: vec![
                "PATH=/bin".into(),
                format!("SSL_CERT_FILE={CA_BUNDLE_PATH}"),
            ],
            working_dir: APP_DIR.into(),
            exposed_ports: exposed_ports(config),
            volumes: vec![state_in_image],
            labels,
        },
        architecture: facts.architecture,
        created: inputs.source.created,
    })
}

/// The directory of the config file (`.` for a bare name).
fn config_dir(config_file: &Path) -> PathBuf {
    match config_file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn file(data: Vec<u8>, mode: u32) -> Entry {
    Entry {
        mode,
        kind: EntryKind::File(data),
    }
}

/// The proxy's (http, https) and the dashboard's listen ports, `PORT/tcp`.
fn exposed_ports(config: &Config) -> Vec<String> {
    let mut listens = Vec::new();
    if config.proxy.enabled {
        listens.extend(config.proxy.http.iter().chain(config.proxy.https.iter()));
    }
    if config.dashboard.enabled {
        listens.push(&config.dashboard.listen);
    }
    let mut ports: Vec<u16> = listens
        .into_iter()
        .filter_map(|l| l.rsplit_once(':')?.1.parse::<u16>().ok())
        .filter(|p| *p != 0)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports.into_iter().map(|p| format!("{p}/tcp")).collect()
}

/// `/bin/busybox` (a static one) with `/bin/sh` and its other applets as links to it.
fn add_busybox(archive: &mut Archive, busybox: &Path) -> Result<(), ImageError> {
    let hint = "a static busybox for /bin/sh (Debian package busybox-static)";
    let bytes = std::fs::read(busybox).map_err(|source| ImageError::File {
        what: hint.to_owned(),
        path: busybox.to_path_buf(),
        source,
    })?;
    elf::require_static(&bytes).map_err(|reason| ImageError::Binary {
        path: busybox.to_path_buf(),
        reason: format!("{reason} ({hint})"),
    })?;
    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|source| ImageError::File {
            what: hint.to_owned(),
            path: busybox.to_path_buf(),
            source,
        })?;
    archive
        .insert("bin/busybox", file(bytes, 0o755))
        .map_err(ImageError::Input)?;
    let applets = String::from_utf8_lossy(&list.stdout);
    for applet in applets
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && !a.contains('/') && *a != "busybox")
        .chain(std::iter::once("sh"))
    {
        archive
            .insert(
                &format!("bin/{applet}"),
                Entry {
                    mode: 0o777,
                    kind: EntryKind::Symlink("busybox".into()),
                },
            )
            .map_err(ImageError::Input)?;
    }
    Ok(())
}

/// One `[image] include` path: a file, a symlink, or a directory with everything below it
/// (except the state dir), under `app/`.
fn add_include(
    archive: &mut Archive,
    base: &Path,
    include: &Path,
    state_dir: &Path,
) -> Result<(), ImageError> {
    let full = base.join(include);
    let missing = |source| ImageError::File {
        what: format!("[image] include `{}`:", include.display()),
        path: full.clone(),
        source,
    };
    std::fs::symlink_metadata(&full).map_err(missing)?;
    let mut stack = vec![(full.clone(), PathBuf::from(include))];
    while let Some((path, rel)) = stack.pop() {
        if path == state_dir {
            continue;
        }
        let meta = std::fs::symlink_metadata(&path).map_err(|source| ImageError::File {
            what: "an included file".into(),
            path: path.clone(),
            source,
        })?;
        let name = format!("app/{}", rel.to_string_lossy());
        let unreadable = |source| ImageError::File {
            what: "an included file".into(),
            path: path.clone(),
            source,
        };
        let entry = if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).map_err(unreadable)?;
            Entry {
                mode: 0o777,
                kind: EntryKind::Symlink(target.to_string_lossy().into_owned()),
            }
        } else if meta.is_dir() {
            for child in std::fs::read_dir(&path).map_err(unreadable)? {
                let child = child.map_err(unreadable)?;
                stack.push((child.path(), rel.join(child.file_name())));
            }
            Entry {
                mode: 0o755,
                kind: EntryKind::Dir,
            }
        } else if meta.is_file() {
            let data = std::fs::read(&path).map_err(unreadable)?;
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            file(data, mode)
        } else {
            continue;
        };
        archive.insert(&name, entry).map_err(ImageError::Input)?;
    }
    Ok(())
}
