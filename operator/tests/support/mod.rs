//! Test support for the operator's scenario tests.

pub mod entropy;
pub mod fake_api;
