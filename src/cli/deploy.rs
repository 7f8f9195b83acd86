//! `kinfra deploy fly`: the project's image as a Fly.io machine through the Machines API
//! (kinfra-cloud's `fly_deploy`, on the `fly` provider's client). The token comes from
//! `FLY_API_TOKEN`, `--token-file` or a `[providers.X]` instance of provider `fly`; it is
//! never an argument and never shown.

use super::load;
use super::{ConfigArg, InputError};
use anyhow::Context;
use clap::{Args, Subcommand};
use kinfra::Config;
use kinfra_cloud::fly_deploy::{
    DEFAULT_REGION, DEFAULT_VOLUME_GB, DeployError, DeploySpec, FlyDeploy, MachineOutcome,
};
use kinfra_core::Secret;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The variable holding the Fly API token.
const TOKEN_VAR: &str = "FLY_API_TOKEN";
/// The variable overriding the Machines API's base URL (as `--api-url` does).
const API_URL_VAR: &str = "KINFRA_FLY_API_URL";
/// The image's app dir (kinfra image build puts the config there; a relative state dir is
/// under it).
const APP_DIR: &str = "/app";
/// The proxy's port when the config sets no `[proxy] http`.
const DEFAULT_HTTP_PORT: u16 = 9100;

/// `kinfra deploy ...`
#[derive(Debug, Subcommand)]
pub enum DeployCommand {
    /// Deploy the project's image to Fly.io as one machine: ensures the app (created in
    /// --org when missing) and a volume `kinfra_state` for the state dir, creates the machine
    /// or updates it under a lease with its current_version, waits until it is started and
    /// prints the app's URL. The token comes from FLY_API_TOKEN (or --token-file, or a
    /// `[providers.X]` instance of provider `fly`). --dry-run reads and prints every request
    /// it would send, sending none that changes anything.
    Fly(FlyArgs),
}

/// `kinfra deploy fly`'s arguments.
#[derive(Debug, Args)]
pub struct FlyArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The Fly app (created when missing, with --org).
    #[arg(long, value_name = "NAME")]
    app: String,
    /// The image to run, with a tag (e.g. registry.fly.io/NAME:v1, pushed with `kinfra image
    /// build --push`). Without it an existing machine keeps its image.
    #[arg(long, value_name = "REF")]
    image: Option<String>,
    /// The organization to create the app in when it does not exist.
    #[arg(long, value_name = "SLUG")]
    org: Option<String>,
    /// The region of the volume and the machine.
    #[arg(long, value_name = "R", default_value = DEFAULT_REGION)]
    region: String,
    /// The state volume's size in GB, when it is created.
    #[arg(long, value_name = "GB", default_value_t = DEFAULT_VOLUME_GB)]
    volume_size: u32,
    /// Print the requests the deploy would send (token masked) and send none that changes
    /// anything (the app, its volumes and machines are read).
    #[arg(long)]
    dry_run: bool,
    /// A file holding the Fly API token (instead of FLY_API_TOKEN).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The Machines API's base URL (default https://api.machines.dev; also
    /// KINFRA_FLY_API_URL).
    #[arg(long, value_name = "URL")]
    api_url: Option<String>,
}

/// Runs `kinfra deploy ...`.
pub async fn run(command: DeployCommand) -> anyhow::Result<ExitCode> {
    match command {
        DeployCommand::Fly(args) => fly(args).await,
    }
}

/// The token: --token-file, else FLY_API_TOKEN, else a `fly` provider instance's.
fn token(args: &FlyArgs, config: &Config) -> anyhow::Result<Secret> {
    let from_file = |path: &Path, what: &str| -> anyhow::Result<Secret> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| InputError(format!("{what} {}: {e}", path.display())))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(InputError(format!("{what} {} is empty", path.display())).into());
        }
        Ok(Secret::new(token))
    };
    if let Some(path) = &args.token_file {
        return from_file(path, "--token-file");
    }
    if let Ok(token) = std::env::var(TOKEN_VAR)
        && !token.trim().is_empty()
    {
        return Ok(Secret::new(token.trim()));
    }
    for (name, instance) in &config.providers.instances {
        if instance.provider_id(name) != kinfra_cloud::fly::ID {
            continue;
        }
        if let Some(token) = &instance.token {
            return Ok(token.clone());
        }
        if let Some(path) = &instance.token_file {
            let path = if path.is_absolute() {
                path.clone()
            } else {
                config.base_dir.join(path)
            };
            return from_file(&path, &format!("[providers.{name}] token_file"));
        }
    }
    Err(InputError(format!(
        "no Fly API token: set {TOKEN_VAR}, pass --token-file FILE, or give a \
         [providers.NAME] instance of provider `fly` a token"
    ))
    .into())
}

/// The base URL: --api-url, else KINFRA_FLY_API_URL, else a `fly` instance's base_url.
fn api_url(args: &FlyArgs, config: &Config) -> Option<String> {
    args.api_url
        .clone()
        .or_else(|| std::env::var(API_URL_VAR).ok().filter(|u| !u.is_empty()))
        .or_else(|| {
            config
                .providers
                .instances
                .iter()
                .find(|(name, i)| i.provider_id(name) == kinfra_cloud::fly::ID)
                .and_then(|(_, i)| i.base_url.clone())
        })
}

/// The port of a listen address (`0.0.0.0:9100`, `[::]:443`).
fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
}

/// Where the state dir is inside the image (as `kinfra image build` lays it out).
pub fn state_dir_in_image(config: &Config) -> String {
    let dir = &config.project.state_dir;
    if dir.is_absolute() {
        return dir.to_string_lossy().into_owned();
    }
    let relative = dir.to_string_lossy();
    let relative = relative.trim_start_matches("./").trim_end_matches('/');
    format!("{APP_DIR}/{relative}")
}

/// The deploy's spec from the arguments and the config: the proxy's ports (listening on
/// all interfaces in the machine, so Fly's proxy reaches them) and the state dir.
fn spec(args: &FlyArgs, config: &Config) -> anyhow::Result<DeploySpec> {
    if !config.proxy.enabled {
        return Err(InputError(
            "the config's proxy is disabled ([proxy] enabled = false): Fly's ports 80/443 \
             would have nothing to reach"
                .into(),
        )
        .into());
    }
    let http_port = match &config.proxy.http {
        Some(addr) => port_of(addr)
            .with_context(|| format!("[proxy] http `{addr}`: no port"))
            .map_err(|e| InputError(e.to_string()))?,
        None => DEFAULT_HTTP_PORT,
    };
    if http_port == 0 {
        return Err(InputError(
            "[proxy] http listens on port 0 (any free port): Fly's services need a fixed \
             internal port; set one (e.g. 0.0.0.0:9100)"
                .into(),
        )
        .into());
    }
    let https_port = config.proxy.https.as_deref().and_then(port_of);
    let mut env = BTreeMap::new();
    env.insert(
        "KINFRA_PROXY__HTTP".to_owned(),
        format!("0.0.0.0:{http_port}"),
    );
    if let Some(port) = https_port {
        env.insert("KINFRA_PROXY__HTTPS".to_owned(), format!("0.0.0.0:{port}"));
    }
    Ok(DeploySpec {
        app: args.app.clone(),
        image: args.image.clone(),
        org: args.org.clone(),
        region: args.region.clone(),
        volume_size_gb: args.volume_size,
        state_dir: state_dir_in_image(config),
        http_port,
        https_port,
        env,
    })
}

fn deploy_error(error: DeployError) -> anyhow::Error {
    match error {
        DeployError::Input(text) => InputError(text).into(),
        DeployError::Api(text) => anyhow::anyhow!(text),
    }
}

async fn fly(args: FlyArgs) -> anyhow::Result<ExitCode> {
    let (config, _source) = load::load(&args.config)?;
    let spec = spec(&args, &config)?;
    // The input is judged before the token is looked for: a bad name fails the same way
    // with or without one.
    spec.check().map_err(deploy_error)?;
    let token = token(&args, &config)?;
    let deployer = FlyDeploy::new(token, api_url(&args, &config)).map_err(deploy_error)?;
    if args.dry_run {
        let plan = deployer.plan(&spec).await.map_err(deploy_error)?;
        println!("dry run: nothing that changes state is sent; these reads were made:");
        for read in &plan.reads {
            println!("  {read}");
        }
        for note in &plan.notes {
            println!("- {note}");
        }
        println!("would send:");
        if plan.requests.is_empty() {
            println!("  (nothing)");
        }
        for request in &plan.requests {
            println!("  {} {}", request.method, request.url);
            for (name, value) in &request.headers {
                println!("    {name}: {value}");
            }
            if let Some(body) = &request.body {
                println!("    {body}");
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut progress = |line: String| println!("{line}");
    let deployed = deployer
        .deploy(&spec, &mut progress)
        .await
        .map_err(deploy_error)?;
    let what = match deployed.outcome {
        MachineOutcome::Created => "created",
        MachineOutcome::Updated => "updated",
        MachineOutcome::Unchanged => "unchanged",
    };
    println!(
        "deployed {} to Fly app `{}` (machine {} {what}, volume {}): {}",
        deployed.image, args.app, deployed.machine, deployed.volume, deployed.url
    );
    Ok(ExitCode::SUCCESS)
}
