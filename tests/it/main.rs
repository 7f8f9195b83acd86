//! kinfra's integration tests: one binary, run against the real `kinfra` executable, real
//! processes and real sockets.

mod acme;
mod bench_smoke;
mod bus;
mod cli;
mod config_check;
mod dashboard;
mod docker;
mod edge;
mod library;
mod ownership;
mod plan;
mod plugin_faults;
mod provider_resources;
mod provider_secrets;
mod providers;
mod proxy;
mod reload;
mod scenarios;
mod security;
mod startup;
mod store;
mod support;
