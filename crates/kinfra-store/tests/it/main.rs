//! Integration tests of the store against the real embedded engine (surrealkv on disk and
//! in memory), with real processes for crash recovery.

mod boot;
mod faults;
mod retention;
mod schema;
mod shared;
mod supervisor;
mod support;
mod user_db;
