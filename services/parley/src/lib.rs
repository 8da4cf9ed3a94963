//! The `parley` binary's library half: command-line types and the composition
//! of services into one process (`serve --target …`).
#![forbid(unsafe_code)]

pub mod cli;
pub mod platform;
