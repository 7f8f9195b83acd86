//! Integration tests of the Docker adapter against a real engine (started by the support
//! code when `docker info` fails), with images built locally by `docker import`.

mod adoption;
mod conformance;
mod health;
mod lifecycle;
mod missing_engine;
mod redis;
mod support;
mod templates;
