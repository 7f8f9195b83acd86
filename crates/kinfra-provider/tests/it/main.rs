//! kinfra-provider's integration tests: one binary, real processes and sockets.

mod command_provider;
mod fake_http;
mod http;
mod http_api_provider;
mod observe;
mod operation;
mod plugin;
