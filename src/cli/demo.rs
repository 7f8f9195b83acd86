//! The demo programs the built-in default config runs: a tiny web app and a ticking worker.
//! They exist so that a first `kinfra runtime up` shows real supervised processes.

use clap::Subcommand;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The demo programs.
#[derive(Debug, Subcommand)]
pub enum DemoCommand {
    /// A small web app: a page at /, `ok` at /healthz; logs every request.
    Hello {
        /// Port to listen on (127.0.0.1).
        #[arg(long)]
        port: u16,
    },
    /// Prints a line every so often, at varying levels and on both streams.
    Ticker {
        /// Time between lines, e.g. 3s.
        #[arg(long, default_value = "3s", value_parser = parse_every)]
        every: Duration,
    },
}

fn parse_every(text: &str) -> Result<Duration, String> {
    kinfra::config::parse_duration(text)
}

/// Runs a demo program until it is killed.
pub async fn run(cmd: DemoCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DemoCommand::Hello { port } => hello(port).await,
        DemoCommand::Ticker { every } => ticker(every).await,
    }
}

async fn hello(port: u16) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("hello: listening on http://127.0.0.1:{port}/");
    loop {
        let (mut stream, peer) = listener.accept().await?;
        tokio::spawn(async move {
            // Read the whole request head (bounded), so closing never resets unread input.
            let mut buf = Vec::with_capacity(1024);
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
                match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                    Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let request = String::from_utf8_lossy(&buf);
            let first = request.lines().next().unwrap_or("");
            let path = first.split_whitespace().nth(1).unwrap_or("/");
            let (status, body, kind) = match path {
                "/healthz" => ("200 OK", "ok\n".to_string(), "text/plain"),
                "/" => (
                    "200 OK",
                    "<!doctype html><title>hello</title><h1>Hello from kinfra</h1>\
                     <p>This page is served by the <code>hello</code> demo service, supervised by \
                     kinfra. See the dashboard at <code>/kinfra</code>.</p>\n"
                        .to_string(),
                    "text/html; charset=utf-8",
                ),
                _ => ("404 Not Found", "not found\n".to_string(), "text/plain"),
            };
            if path != "/healthz" {
                println!("hello: {peer} \"{first}\" {}", &status[..3]);
            }
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

async fn ticker(every: Duration) -> anyhow::Result<ExitCode> {
    let every = every.max(Duration::from_millis(10));
    let mut n: u64 = 0;
    loop {
        n += 1;
        if n.is_multiple_of(7) {
            eprintln!("ERROR tick {n}: a pretend failure, written to stderr");
        } else if n.is_multiple_of(5) {
            println!("WARN tick {n}: running a little behind");
        } else {
            println!("INFO tick {n}");
        }
        let _ = std::io::stdout().flush();
        tokio::time::sleep(every).await;
    }
}
