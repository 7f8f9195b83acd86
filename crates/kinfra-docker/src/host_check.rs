//! Health checks kinfra runs itself, from the host, for images that cannot run one inside
//! the container: the official nats image has nothing but `nats-server` (no shell, no
//! client), so its template is checked by logging in on the published port.

use kinfra_core::secret::Secret;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// How long one check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// A check run from the host against a resource's published port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostCheck {
    /// A NATS login with the token: the server's `INFO`, then `CONNECT` and `PING` answered
    /// by `PONG`. A port that accepts connections but where no server answers (Docker's
    /// port proxy before `nats-server` listens) fails, and so does a refused token.
    Nats {
        /// The host port (on 127.0.0.1).
        port: u16,
        /// The token the server requires.
        token: Secret,
    },
}

impl HostCheck {
    /// Runs the check once; `Err` says why it failed.
    pub async fn run(&self) -> Result<(), String> {
        let check = async {
            match self {
                HostCheck::Nats { port, token } => nats_login(*port, token).await,
            }
        };
        tokio::time::timeout(CHECK_TIMEOUT, check)
            .await
            .map_err(|_| format!("no answer within {CHECK_TIMEOUT:?}"))?
    }
}

async fn nats_login(port: u16, token: &Secret) -> Result<(), String> {
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect to 127.0.0.1:{port}: {e}"))?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let next = |line: std::io::Result<Option<String>>| -> Result<String, String> {
        line.map_err(|e| e.to_string())?
            .ok_or_else(|| "the connection closed".to_owned())
    };
    let info = next(lines.next_line().await)?;
    if !info.starts_with("INFO ") {
        return Err("not a NATS server (no INFO)".into());
    }
    let connect = serde_json::json!({
        "auth_token": token.expose(),
        "verbose": false,
        "pedantic": false,
        "name": "kinfra-health",
    });
    write
        .write_all(format!("CONNECT {connect}\r\nPING\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let line = next(lines.next_line().await)?;
        if line == "PONG" {
            return Ok(());
        }
        if line.starts_with("-ERR") {
            return Err(line);
        }
        // INFO updates and the server's own PING come before our PONG: read on.
    }
}
