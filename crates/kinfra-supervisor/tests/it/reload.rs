//! reload tests.
