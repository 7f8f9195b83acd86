//! deps tests.
