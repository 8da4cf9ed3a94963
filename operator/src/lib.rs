//! The Parley operator: reconciles `ChatCluster` resources.
#![forbid(unsafe_code)]

pub mod crd;
