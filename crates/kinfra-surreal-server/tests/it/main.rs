//! The server binary as tests and the bench use it: it announces its address once it accepts
//! connections, answers SurrealDB's `/health` there, and refuses a flag it does not know.
//!
//! Having this integration test also makes `cargo test --workspace` build the program itself
//! (`target/debug/kinfra-surreal-server`, which tests/it/store_server.rs runs) with the
//! workspace's features, not only its unit-test harness.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_kinfra-surreal-server");

/// Kills the server (by PID) when the test ends, however it ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn it_announces_its_address_and_answers_health_there() {
    let mut child = Command::new(BIN)
        .args(["--bind", "127.0.0.1:0", "--path", "memory"])
        .env("KINFRA_SURREAL_USER", "root")
        .env("KINFRA_SURREAL_PASS", "a-test-password")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn kinfra-surreal-server");
    let out = child.stdout.take().expect("stdout");
    let _server = Killed(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("kinfra-surreal-server listening on ") {
                let _ = tx.send(addr.trim().to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("no 'listening on' line within 120 s");
    let mut s = TcpStream::connect(&addr).expect("the announced address accepts connections");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    write!(
        s,
        "GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("write the request");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read the answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
fn an_unknown_flag_is_refused_with_the_usage() {
    let out = Command::new(BIN)
        .arg("--nope")
        .output()
        .expect("run kinfra-surreal-server");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown argument --nope") && err.contains("usage:"),
        "{err}"
    );
}
