//! kinfra's integration tests: one binary, run against the real `kinfra` executable, real
//! processes and real sockets.

mod acme;
mod bench_smoke;
mod bus;
mod cli;
mod cloud_mix;
mod config_check;
mod conveniences;
mod dashboard;
mod deploy_fly;
mod dist;
mod docker;
mod edge;
/// The cloud providers' spec-checking harness (Prism in front of the provider SDK's fake HTTP
/// server), shared by neon.rs and supabase.rs: include it here only, once.
#[allow(dead_code)]
#[path = "../../crates/kinfra-provider/tests/it/fake_http.rs"]
mod fake_http;
/// The scripted faults the Render, Vercel and Railway fakes share (beside `fake_http`).
#[allow(dead_code)]
#[path = "../../crates/kinfra-cloud/tests/support/fault_script.rs"]
mod fault_script;
mod fleet;
mod fleet_acme;
mod fly;
mod image;
mod import;
#[cfg(feature = "kubernetes")]
mod kubernetes;
mod library;
mod neon;
mod ownership;
mod plan;
mod plugin_faults;
#[allow(dead_code)]
#[path = "../../crates/kinfra-cloud/tests/support/prism.rs"]
mod prism;
mod progress;
mod provider_resources;
mod provider_secrets;
mod providers;
mod proxy;
mod railway;
mod readme;
mod reload;
mod render;
mod scale_to_zero;
mod scale_to_zero_resources;
mod scenarios;
mod security;
mod startup;
mod store;
mod store_server;
mod supabase;
mod support;
#[cfg(feature = "systemd")]
mod systemd;
mod tui;
mod tunnel;
mod vercel;
mod vps;
