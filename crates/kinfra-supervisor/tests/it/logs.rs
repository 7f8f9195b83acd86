//! logs tests.
