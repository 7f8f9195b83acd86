//! `kinfra-surreal-server`: a real SurrealDB server (the `surrealdb-server` crate, the same
//! version as the store's embedded engine) for kinfra's `ws://` store tests and bench.
//!
//! ```text
//! kinfra-surreal-server [--bind 127.0.0.1:0] [--user U --pass P] [--path memory|DIR]
//! ```
//!
//! The server speaks HTTP and WebSocket on `--bind`; port 0 picks a free port. Once the
//! server accepts connections, the line `kinfra-surreal-server listening on 127.0.0.1:PORT` is
//! printed on stdout, so a test reads the address from it and knows the server is ready. `--path DIR` keeps the
//! data in surrealkv files under DIR (restarting on the same DIR finds it again); the default
//! `memory` keeps nothing. `--user`/`--pass` are the root credentials (`KINFRA_SURREAL_USER` /
//! `KINFRA_SURREAL_PASS` are read when the flags are absent, to keep them off the command
//! line); without them the server runs unauthenticated.
//!
//! The surrealdb-server library reads its own command line (`surreal start`), so this binary
//! turns its flags into that command's environment variables and re-executes itself as
//! `kinfra-surreal-server start` (same PID, which is what a test kills).

// The server's async call graph is deep (as in the surrealdb-server crate itself); a release
// build needs more than the default 128 levels to lay it out.
#![recursion_limit = "256"]

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

/// Environment variable through which the re-executed server learns the address to announce.
const ANNOUNCE_ENV: &str = "KINFRA_SURREAL_SERVER_ANNOUNCE";

/// What the line announcing the bound address starts with (a development build of the
/// server prints a banner on stdout first).
pub const ANNOUNCE_PREFIX: &str = "kinfra-surreal-server listening on ";

/// How long the server may take to accept connections before the announcement gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The flags this binary takes.
struct Args {
    /// Address to listen on; port 0 picks a free port.
    bind: SocketAddr,
    /// Root user, if any.
    user: Option<String>,
    /// Root password, if any.
    pass: Option<String>,
    /// `memory` or a directory for surrealkv files.
    path: String,
}

fn usage() -> &'static str {
    "usage: kinfra-surreal-server [--bind 127.0.0.1:0] [--user U --pass P] [--path memory|DIR]"
}

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args {
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        user: std::env::var("KINFRA_SURREAL_USER").ok(),
        pass: std::env::var("KINFRA_SURREAL_PASS").ok(),
        path: "memory".to_owned(),
    };
    while let Some(flag) = argv.next() {
        let mut value = || argv.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--bind" => {
                let text = value()?;
                args.bind = text.parse().map_err(|e| format!("--bind {text}: {e}"))?;
            }
            "--user" => args.user = Some(value()?),
            "--pass" => args.pass = Some(value()?),
            "--path" => args.path = value()?,
            "-h" | "--help" => return Err(usage().to_owned()),
            other => return Err(format!("unknown argument {other}\n{}", usage())),
        }
    }
    if args.user.is_some() != args.pass.is_some() {
        return Err("--user and --pass go together".to_owned());
    }
    Ok(args)
}

/// Picks the port: the one asked for, or a free one found by binding port 0 and letting go.
fn resolve_bind(bind: SocketAddr) -> Result<SocketAddr, String> {
    if bind.port() != 0 {
        return Ok(bind);
    }
    let listener = TcpListener::bind(bind).map_err(|e| format!("bind {bind}: {e}"))?;
    listener
        .local_addr()
        .map_err(|e| format!("local address of {bind}: {e}"))
}

/// Parses the flags and re-executes this binary as the server (`start`).
fn launch() -> Result<(), String> {
    let args = parse_args(std::env::args().skip(1))?;
    let bind = resolve_bind(args.bind)?;
    let path = if args.path == "memory" {
        "memory".to_owned()
    } else {
        std::fs::create_dir_all(&args.path).map_err(|e| format!("create {}: {e}", args.path))?;
        format!("surrealkv://{}", args.path)
    };
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let mut command = Command::new(exe);
    command
        .arg("start")
        .env("SURREAL_BIND", bind.to_string())
        .env("SURREAL_PATH", path)
        .env("SURREAL_NO_BANNER", "true")
        .env(ANNOUNCE_ENV, bind.to_string())
        .env_remove("KINFRA_SURREAL_USER")
        .env_remove("KINFRA_SURREAL_PASS");
    if std::env::var_os("SURREAL_LOG").is_none() {
        command.env("SURREAL_LOG", "error");
    }
    match (args.user, args.pass) {
        (Some(user), Some(pass)) => {
            command.env("SURREAL_USER", user).env("SURREAL_PASS", pass);
        }
        _ => {
            command.env("SURREAL_UNAUTHENTICATED", "true");
        }
    }
    let error = command.exec();
    Err(format!("exec the server: {error}"))
}

/// Prints `addr` on stdout once the server accepts connections there.
fn announce_when_ready(addr: SocketAddr) {
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{ANNOUNCE_PREFIX}{addr}");
            let _ = out.flush();
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("kinfra-surreal-server: not accepting on {addr} after {READY_TIMEOUT:?}");
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("start") {
        if let Some(addr) = std::env::var(ANNOUNCE_ENV)
            .ok()
            .and_then(|text| text.parse::<SocketAddr>().ok())
        {
            std::thread::spawn(move || announce_when_ready(addr));
        }
        return surrealdb_server::init(surrealdb_server::core::CommunityComposer());
    }
    match launch() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("kinfra-surreal-server: {message}");
            ExitCode::FAILURE
        }
    }
}
