//! The floor for `bench/`: pingora's HTTP proxy with no hooks beyond choosing the one upstream,
//! so a bench run can tell pingora's own cost from kinfra's.
//!
//! `pingora_floor LISTEN UPSTREAM_ADDR [THREADS]`; SIGINT stops it at once.

use async_trait::async_trait;
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::Server;
use pingora::server::configuration::ServerConf;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Forwards every request to one address.
struct Floor(std::net::SocketAddr);

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.0, false, String::new())))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: pingora_floor LISTEN UPSTREAM_ADDR [THREADS]";
    let listen = args.next().ok_or(usage)?;
    let upstream = args.next().ok_or(usage)?.parse()?;
    let threads = args.next().map(|t| t.parse()).transpose()?.unwrap_or(1);
    let conf = ServerConf {
        threads,
        upstream_keepalive_pool_size: 512,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, Floor(upstream));
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.bootstrap();
    server.run_forever();
}
