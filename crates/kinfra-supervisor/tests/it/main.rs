//! Integration tests of the supervisor against real processes (sh and python3 scripts).

mod basic;
mod deps;
mod logs;
mod ports;
mod probes;
mod progress;
mod reload;
mod resources;
mod restart;
mod sleep;
mod stop;
mod support;
