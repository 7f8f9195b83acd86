//! kinfra's Cloudflare tunnels: [`cloudflare`] creates or adopts a named tunnel and keeps a
//! proxied CNAME per public hostname through the Cloudflare API (on the provider SDK's REST
//! plumbing: one HTTP client, retries, errors with the token masked); [`ingress`] writes the
//! `cloudflared` config file from kinfra's routes, every rule pointing at kinfra's own proxy,
//! and checks a config against cloudflared's documented ingress rules.
//!
//! **Invariant:** this crate knows the Cloudflare API and cloudflared's config file, nothing
//! of kinfra's runtime (the runtime supervises cloudflared and calls this crate).

pub mod cloudflare;
pub mod ingress;

pub use cloudflare::{
    CloudflareSettings, CloudflareTunnels, DnsAction, DnsChange, TunnelConnection, TunnelError,
    TunnelHandle,
};
pub use ingress::{IngressConfig, IngressError, IngressRule, ParsedRule, parse_rules, validate};
