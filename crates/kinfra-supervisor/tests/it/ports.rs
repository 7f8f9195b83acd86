//! ports tests.
