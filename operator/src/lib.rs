//! The Parley operator: reconciles `ChatCluster` resources.
#![forbid(unsafe_code)]

pub mod build;
pub mod crd;
pub mod render;
pub mod status;
pub mod validate;
