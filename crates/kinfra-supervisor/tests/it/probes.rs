//! probes tests.
