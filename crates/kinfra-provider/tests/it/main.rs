//! kinfra-provider's integration tests: one binary, real processes and sockets.

mod fake_http;
mod http;
mod http_api_provider;
mod observe;
mod operation;
mod plugin;
