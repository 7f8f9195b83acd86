//! `kinfra image build`: the project as an OCI image, without Docker (kinfra-image): the
//! static binary, a CA bundle, the config and its `[image] include` files, written as an OCI
//! image layout (`--output DIR`) or pushed to a registry (`--push REGISTRY/REPO:TAG`).

use super::load::{self, ConfigSource};
use super::{ConfigArg, InputError};
use clap::{Args, Subcommand};
use kinfra_core::secret::Secret;
use kinfra_image::{
    BuildInputs, Credentials, Image, ImageError, ImageRef, PushOptions, SourceInfo,
};
use std::path::PathBuf;
use std::process::ExitCode;

/// The binary `./x dist` builds.
const DEFAULT_BINARY: &str = "dist/kinfra-x86_64-unknown-linux-musl";
/// The host's CA bundle (Debian's ca-certificates).
const DEFAULT_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Debian's busybox-static.
const DEFAULT_BUSYBOX: &str = "/bin/busybox";
/// The variable holding the registry password (never an argument).
const PASSWORD_VAR: &str = "KINFRA_REGISTRY_PASSWORD";

/// `kinfra image ...`
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build the project's OCI image without Docker: the static kinfra binary, a CA bundle,
    /// the config and the files `[image] include` lists (a static busybox as /bin/sh when a
    /// command is a shell string). Entrypoint `kinfra runtime up`, the state dir a volume, the
    /// proxy's and dashboard's ports exposed. Reproducible: the same inputs give the same
    /// digest (file times and `created` from SOURCE_DATE_EPOCH or the git commit).
    Build(BuildArgs),
}

/// `kinfra image build`'s arguments.
#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The static kinfra binary (a dynamically linked one is refused).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_BINARY)]
    binary: PathBuf,
    /// Write the image as an OCI image layout into DIR (replacing a layout there).
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "push",
        conflicts_with = "push"
    )]
    output: Option<PathBuf>,
    /// Push the image to REGISTRY/REPO:TAG through the OCI distribution API (the tag is set
    /// only once every blob is there).
    #[arg(long, value_name = "REF")]
    push: Option<String>,
    /// The tag the layout's index.json names the image by.
    #[arg(
        long,
        value_name = "T",
        default_value = "latest",
        conflicts_with = "push"
    )]
    tag: String,
    /// Registry user; the password comes from KINFRA_REGISTRY_PASSWORD. Without it, docker's
    /// config.json is read for the registry (else the push is anonymous).
    #[arg(long, value_name = "USER")]
    username: Option<String>,
    /// Plain HTTP to the registry (only for one on this machine: 127.0.0.1, localhost).
    #[arg(long)]
    insecure: bool,
    /// The CA bundle to put in the image.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CA_BUNDLE)]
    ca_bundle: PathBuf,
    /// The static busybox used as /bin/sh when the config needs a shell.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_BUSYBOX)]
    busybox: PathBuf,
}

/// Runs `kinfra image ...`.
pub async fn run(command: ImageCommand) -> anyhow::Result<ExitCode> {
    match command {
        ImageCommand::Build(args) => build(args).await,
    }
}

async fn build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let reference = args
        .push
        .as_deref()
        .map(ImageRef::parse)
        .transpose()
        .map_err(input)?;
    if args.push.is_none() && !kinfra_image::reference::is_valid_tag(&args.tag) {
        return Err(InputError(format!(
            "--tag `{}`: a tag is letters, digits, `_`, `.` and `-` (not first), 128 at most",
            args.tag
        ))
        .into());
    }
    let (config, source) = load::load(&args.config)?;
    let ConfigSource::File(config_file) = source else {
        return Err(InputError(
            "kinfra image build needs a config file (kinfra.toml in this directory, or -c FILE)"
                .into(),
        )
        .into());
    };
    let credentials = match &reference {
        Some(r) => credentials(args.username.as_deref(), r)?,
        None => None,
    };
    let dir = match config_file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let epoch = std::env::var("SOURCE_DATE_EPOCH").ok();
    let source =
        SourceInfo::detect(&dir, env!("CARGO_PKG_VERSION"), epoch.as_deref()).map_err(input)?;
    let inputs = BuildInputs {
        config: &config,
        config_file: &config_file,
        binary: &args.binary,
        ca_bundle: &args.ca_bundle,
        busybox: &args.busybox,
        source,
    };
    let spec = kinfra_image::image_spec(&inputs).map_err(input)?;
    let image = Image::build(&spec).map_err(input)?;
    match (&reference, &args.output) {
        (Some(reference), _) => {
            let options = PushOptions {
                credentials,
                insecure: args.insecure,
                ca_pem: Vec::new(),
            };
            let digest = kinfra_image::push(&image, reference, &options)
                .await
                .map_err(input)?;
            println!("pushed {reference} ({digest})");
        }
        (None, Some(dir)) => {
            kinfra_image::write_layout(&image, dir, &args.tag).map_err(input)?;
            println!(
                "wrote {} ({}, tag {})",
                dir.display(),
                image.digest(),
                args.tag
            );
        }
        (None, None) => {
            return Err(InputError("give --output DIR or --push REGISTRY/REPO:TAG".into()).into());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--username` with the password from the environment, else docker's config.json entry for
/// the registry, else none.
fn credentials(
    username: Option<&str>,
    reference: &ImageRef,
) -> anyhow::Result<Option<Credentials>> {
    if let Some(user) = username {
        let Some(password) = std::env::var(PASSWORD_VAR).ok().filter(|p| !p.is_empty()) else {
            return Err(InputError(format!(
                "--username {user} needs the password in {PASSWORD_VAR} (it is never an argument)"
            ))
            .into());
        };
        return Ok(Some(Credentials {
            user: user.to_owned(),
            password: Secret::new(password),
        }));
    }
    let from_docker = kinfra_image::auth::docker_config_path()
        .and_then(|path| kinfra_image::auth::docker_config_credentials(&path, &reference.registry));
    Ok(from_docker.map(|(user, password)| Credentials {
        user,
        password: Secret::new(password),
    }))
}

/// Input problems (exit 2) as [`InputError`], the rest (a registry that refuses, an
/// unwritable dir) as they are (exit 1).
fn input(error: ImageError) -> anyhow::Error {
    if error.is_input() {
        InputError(error.to_string()).into()
    } else {
        error.into()
    }
}
