//! Tests of the whole loading pipeline.
