//! The providers built into kinfra that know no particular cloud: `command` (CLI tools as
//! resources) and `http-api` (any HTTP/REST API described in config). Cloud providers live in
//! their own crate; both kinds register in the same [`crate::registry::Registry`].

pub mod command;
pub mod http_api;
