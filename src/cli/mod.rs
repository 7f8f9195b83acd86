//! Argument parsing and dispatch for the `kinfra` command.

mod client;
mod completions;
mod config_cmd;
mod demo;
mod deploy;
mod fleet;
mod image;
mod import;
mod load;
mod output;
mod plan;
mod providers;
mod resource;
mod tui;
mod up;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// `kinfra --version`: the version, the git commit it was built from and the build date
/// (build.rs; `unknown` commit outside a git checkout).
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("KINFRA_GIT_COMMIT"),
    ", built ",
    env!("KINFRA_BUILD_DATE"),
    ")"
);

/// kinfra: your services, a database, a message bus, an HTTPS proxy and a live dashboard,
/// in one process.
#[derive(Debug, Parser)]
#[command(
    name = "kinfra",
    version = LONG_VERSION,
    about,
    long_about = "kinfra runs your local processes and containers under one supervisor, with an \
embedded database, a NATS bus, a reverse proxy with automatic HTTPS and a live web dashboard, \
all in one process.\n\nStart with `kinfra runtime up` in a directory with a kinfra.toml (without \
one, a built-in demo runs). Check a config with `kinfra config check`.",
    after_help = "Exit codes: 0 success, 1 runtime failure, 2 usage or config error.\n\
Logging: set KINFRA_LOG (e.g. KINFRA_LOG=debug) for kinfra's own log level, \
--log-format json (or KINFRA_LOG_FORMAT=json) for one JSON object a line."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Format of kinfra's own log lines on stderr: text (readable) or json (one object a
    /// line, for log shippers). Services' output is not affected.
    #[arg(
        long,
        global = true,
        env = "KINFRA_LOG_FORMAT",
        default_value = "text",
        value_name = "FORMAT"
    )]
    log_format: up::LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run, inspect and control a runtime.
    #[command(subcommand)]
    Runtime(RuntimeCommand),
    /// Work with config files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The web dashboard.
    #[command(subcommand)]
    Dashboard(DashboardCommand),
    /// The providers kinfra knows: built in, and plugins (`kinfra-provider-<id>` executables)
    /// found in plugin dirs, the state dir's `providers/` and `PATH`.
    Providers(ProvidersArgs),
    /// Run a provider resource's command in the running runtime, e.g. `kinfra resource db
    /// scale --param replicas=2 --dry-run`. Parameters are typed by the command's spec; see
    /// `kinfra providers show ID` for a provider's commands.
    Resource(ResourceArgs),
    /// What `runtime up` would do with each provider resource (noop, create, resume) and the
    /// calls it would make, read from each resource's status and its start command's dry-run;
    /// sends nothing that changes state. Also says what `runtime down` would do (on_down).
    Plan {
        #[command(flatten)]
        config: ConfigArg,
        /// JSON: `{resources: [{name, kind, action, reason, calls, on_down}]}`.
        #[arg(long)]
        json: bool,
    },
    /// Every kinfra node sharing the bus: `kinfra fleet status [--json]`, and actions on
    /// another node's services (`kinfra fleet restart NODE SERVICE`).
    #[command(subcommand)]
    Fleet(fleet::FleetCommand),
    /// OCI images of the project, built without Docker (`kinfra image build`).
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Deploy the project (`kinfra deploy fly`: Fly.io Machines).
    #[command(subcommand)]
    Deploy(deploy::DeployCommand),
    /// A kinfra.toml from a Procfile (with its .env), a process-compose.yaml or a
    /// compose.yaml; every key that does not map is reported with its file and line.
    Import(import::ImportArgs),
    /// Print a shell completion script: `source <(kinfra completions bash)`, or save it where
    /// your shell looks (zsh: a `_kinfra` file in `$fpath`; fish: ~/.config/fish/completions/).
    Completions {
        /// The shell.
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Print kinfra's man page (roff): `kinfra man | man -l -`. With --dir, write one page per
    /// command into DIR instead.
    Man {
        /// Write kinfra.1, kinfra-runtime.1, ... into this directory.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Small programs the built-in demo config runs (not needed for your own config).
    #[command(subcommand, hide = true)]
    Demo(demo::DemoCommand),
}

/// Which config file to use.
#[derive(Debug, Clone, Args)]
pub struct ConfigArg {
    /// Config file (TOML, YAML or JSON by extension). Default: kinfra.toml (or .yaml, .yml,
    /// .json) in the working directory; without one, the built-in demo config.
    #[arg(short = 'c', long = "config", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum RuntimeCommand {
    /// Start the runtime in the foreground: services, dashboard, control socket. Streams the
    /// services' logs; Ctrl-C or SIGTERM stops everything gracefully (a second Ctrl-C forces).
    Up {
        #[command(flatten)]
        config: ConfigArg,
        /// Colour the log prefixes: auto (when stdout is a terminal), always, never.
        #[arg(long, default_value = "auto", value_name = "WHEN")]
        color: output::ColorChoice,
        /// Do not stream service logs; print only state changes.
        #[arg(long)]
        quiet: bool,
    },
    /// Stop a runtime started in another terminal, and wait until it has stopped.
    Down {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show every service: state, health, PID, port, uptime, restarts.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Print the same JSON as GET /__status__.
        #[arg(long)]
        json: bool,
    },
    /// Print the recent logs of one service, or of all; -f keeps following.
    Logs {
        #[command(flatten)]
        config: ConfigArg,
        /// Service name; all services when absent.
        service: Option<String>,
        /// Keep printing new lines until Ctrl-C.
        #[arg(short = 'f', long)]
        follow: bool,
        /// How many past lines to print first.
        #[arg(short = 'n', long = "lines", default_value_t = 100, value_name = "N")]
        lines: usize,
        /// Colour the prefixes: auto, always, never.
        #[arg(long, default_value = "auto", value_name = "WHEN")]
        color: output::ColorChoice,
    },
    /// Show recent runs (PID, start, end, exit, why) of one service or of all, newest first.
    /// Kept in the store: it survives restarts of kinfra.
    History {
        #[command(flatten)]
        config: ConfigArg,
        /// Service name; all services when absent.
        service: Option<String>,
        /// How many runs to show.
        #[arg(short = 'n', long = "limit", default_value_t = 20, value_name = "N")]
        limit: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Re-read the config file and apply it: new services start, removed ones stop, changed
    /// ones restart, the rest are not touched. An invalid file is rejected and nothing
    /// changes. `kill -HUP <pid of runtime up>` does the same.
    Reload {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Restart one service.
    Restart {
        #[command(flatten)]
        config: ConfigArg,
        /// Service name.
        service: String,
    },
    /// Stop one service; it stays stopped until `kinfra runtime start`.
    Stop {
        #[command(flatten)]
        config: ConfigArg,
        /// Service name.
        service: String,
    },
    /// Start a stopped or failed service.
    Start {
        #[command(flatten)]
        config: ConfigArg,
        /// Service name.
        service: String,
    },
    /// Wake a sleeping service or resource (`scale_to_zero`), its sleeping dependencies
    /// first; returns once it is ready, or fails after its `wake_timeout`.
    Wake {
        #[command(flatten)]
        config: ConfigArg,
        /// Service or resource name.
        service: String,
    },
    /// Put a service or resource with `scale_to_zero` to sleep now; the next request (or
    /// `kinfra runtime wake`) wakes it.
    Sleep {
        #[command(flatten)]
        config: ConfigArg,
        /// Service or resource name.
        service: String,
    },
    /// A terminal UI on the running runtime: services and resources (state, health, CPU,
    /// memory, restarts, port, PID) refreshed every second, the selected one's live log with
    /// search (`/`, `n`), a list filter (`f`), restart/stop/start/maintenance keys (`r`, `s`,
    /// `S`, `m`); `?` for help, `q` to quit. It talks only to the 0600 control socket (the
    /// dashboard token's authority) and opens no listener; it exits with status 1 when the
    /// runtime stops.
    Tui {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Switch maintenance mode: the proxy answers with a maintenance page (processes keep
    /// running). Without SERVICE, for everything.
    Maintenance {
        #[command(flatten)]
        config: ConfigArg,
        /// on or off.
        mode: OnOff,
        /// Service name; all services when absent.
        service: Option<String>,
    },
}

/// `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnOff {
    /// Switch on.
    On,
    /// Switch off.
    Off,
}

#[derive(Debug, Args)]
struct ProvidersArgs {
    #[command(subcommand)]
    command: Option<ProvidersCommand>,
    #[command(flatten)]
    config: ConfigArg,
    /// Also look for plugins in this directory (repeatable; searched first).
    #[arg(long = "plugin-dir", value_name = "DIR", global = true)]
    plugin_dirs: Vec<PathBuf>,
    /// JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Args)]
struct ResourceArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The resource (a `[resources.NAME]` with a `provider`).
    resource: String,
    /// The command's id.
    command: String,
    /// A parameter, `KEY=VALUE` (repeatable).
    #[arg(long = "param", value_name = "KEY=VALUE")]
    params: Vec<String>,
    /// Send nothing; print the requests it would send (secrets masked).
    #[arg(long)]
    dry_run: bool,
    /// Confirm a command that needs it (a delete, say).
    #[arg(long)]
    yes: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum ProvidersCommand {
    /// One provider: metadata, resource types with their config keys, commands with their
    /// parameters.
    Show {
        /// The provider's id.
        id: String,
    },
    /// Scan for plugins and say what was found, and why anything else was not used.
    Discover,
    /// The config's `[providers.X]` instances: provider id, where it comes from, the
    /// resources that use it, and its lifecycle state: live from the runtime running for this
    /// config, else computed offline from the config (`ready` when the provider is installed
    /// and the token readable, else `failed` with the reason).
    Instances,
}

#[derive(Debug, Subcommand)]
enum DashboardCommand {
    /// Print a link that opens the dashboard and logs in (the token travels in the URL
    /// fragment, which browsers never send to the server).
    Url {
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a config file and report every problem with its file, line, column and key.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Also print the config as kinfra understood it (secrets masked), in TOML.
        #[arg(long)]
        print: bool,
    },
    /// Print the JSON Schema (draft 2020-12) of kinfra.toml, .yaml and .json, for editors
    /// (taplo, the YAML language server). embedded/kinfra.schema.json holds the same.
    Schema,
}

/// An error caused by the user's input (bad config, unknown service): exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

/// The runtime is not running: exit code 1 with a plain message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotRunning(pub String);

fn exit_code(error: &anyhow::Error) -> u8 {
    if error.downcast_ref::<InputError>().is_some()
        || error.downcast_ref::<kinfra::ConfigErrors>().is_some()
        || error
            .downcast_ref::<kinfra::StartError>()
            .is_some_and(kinfra::StartError::is_config_error)
    {
        2
    } else {
        1
    }
}

/// Parses arguments, runs the command, and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    kinfra_core::status::set_build_info(kinfra_core::status::BuildInfo {
        version: env!("CARGO_PKG_VERSION").into(),
        commit: env!("KINFRA_GIT_COMMIT").into(),
        date: env!("KINFRA_BUILD_DATE").into(),
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("kinfra")
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(run(cli));
    // Do not wait for stray blocking tasks (a follower stuck on stdin, say).
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(error) => {
            // A config with several problems: one `error:` line each.
            let config_errors = error.downcast_ref::<kinfra::ConfigErrors>().or_else(|| {
                match error.downcast_ref::<kinfra::StartError>() {
                    Some(kinfra::StartError::Config(errors)) => Some(errors),
                    _ => None,
                }
            });
            match config_errors {
                Some(errors) => {
                    for e in &errors.0 {
                        eprintln!("error: {e}");
                    }
                }
                None => match error.downcast_ref::<kinfra::StartError>() {
                    // One problem a line, each its own `error:` line.
                    Some(kinfra::StartError::ProviderResources(problems)) => {
                        for line in problems.lines() {
                            eprintln!("error: {line}");
                        }
                    }
                    _ => eprintln!("error: {error:#}"),
                },
            }
            ExitCode::from(exit_code(&error))
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Runtime(RuntimeCommand::Up {
            config,
            color,
            quiet,
        }) => up::run(&config, color, quiet, cli.log_format).await,
        Command::Runtime(RuntimeCommand::Down { config }) => client::down(&config).await,
        Command::Runtime(RuntimeCommand::Status { config, json }) => {
            client::status(&config, json).await
        }
        Command::Runtime(RuntimeCommand::Logs {
            config,
            service,
            follow,
            lines,
            color,
        }) => client::logs(&config, service, lines, follow, color).await,
        Command::Runtime(RuntimeCommand::Reload { config }) => client::reload(&config).await,
        Command::Runtime(RuntimeCommand::Tui { config }) => tui::run(&config).await,
        Command::Runtime(RuntimeCommand::History {
            config,
            service,
            limit,
            json,
        }) => client::history(&config, service, limit, json).await,
        Command::Runtime(RuntimeCommand::Restart { config, service }) => {
            client::action(&config, kinfra::Action::Restart, &service).await
        }
        Command::Runtime(RuntimeCommand::Stop { config, service }) => {
            client::action(&config, kinfra::Action::Stop, &service).await
        }
        Command::Runtime(RuntimeCommand::Start { config, service }) => {
            client::action(&config, kinfra::Action::Start, &service).await
        }
        Command::Runtime(RuntimeCommand::Wake { config, service }) => {
            client::action(&config, kinfra::Action::Wake, &service).await
        }
        Command::Runtime(RuntimeCommand::Sleep { config, service }) => {
            client::action(&config, kinfra::Action::Sleep, &service).await
        }
        Command::Runtime(RuntimeCommand::Maintenance {
            config,
            mode,
            service,
        }) => {
            let action = match mode {
                OnOff::On => kinfra::Action::MaintenanceOn,
                OnOff::Off => kinfra::Action::MaintenanceOff,
            };
            let service = service.unwrap_or_else(|| kinfra_core::view::ALL_SERVICES.to_owned());
            client::action(&config, action, &service).await
        }
        Command::Config(ConfigCommand::Check { config, print }) => {
            config_cmd::check(&config, print).await
        }
        Command::Config(ConfigCommand::Schema) => completions::config_schema(),
        Command::Completions { shell } => completions::completions(shell),
        Command::Man { dir } => completions::man(dir.as_deref()),
        Command::Dashboard(DashboardCommand::Url { config }) => {
            client::dashboard_url(&config).await
        }
        Command::Providers(args) => match &args.command {
            None => providers::list(&args.config, &args.plugin_dirs, args.json).await,
            Some(ProvidersCommand::Show { id }) => {
                providers::show(&args.config, &args.plugin_dirs, id, args.json).await
            }
            Some(ProvidersCommand::Discover) => {
                providers::discover(&args.config, &args.plugin_dirs, args.json).await
            }
            Some(ProvidersCommand::Instances) => {
                providers::instances(&args.config, &args.plugin_dirs, args.json).await
            }
        },
        Command::Resource(args) => {
            resource::run(
                &args.config,
                resource::CommandArgs {
                    resource: args.resource,
                    command: args.command,
                    params: args.params,
                    dry_run: args.dry_run,
                    yes: args.yes,
                    json: args.json,
                },
            )
            .await
        }
        Command::Plan { config, json } => plan::run(&config, json).await,
        Command::Fleet(cmd) => fleet::run(cmd).await,
        Command::Image(cmd) => image::run(cmd).await,
        Command::Deploy(cmd) => deploy::run(cmd).await,
        Command::Import(args) => import::run(args),
        Command::Demo(cmd) => demo::run(cmd).await,
    }
}
