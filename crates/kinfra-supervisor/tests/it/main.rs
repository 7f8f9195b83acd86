//! Integration tests of the supervisor against real processes.

fn main() {}
