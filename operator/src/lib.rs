//! The Parley operator: reconciles `ChatCluster` resources.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod build;
pub mod crd;
pub mod metrics;
pub mod reconcile;
pub mod render;
pub mod run;
pub mod status;
pub mod validate;
