//! stop tests.
