//! Shared foundation of the Parley services.
//!
//! Each service crate builds an axum [`Router`](axum::Router) from these parts:
//! typed configuration ([`config`]), logging ([`telemetry`]), JWT signing and
//! verification with a key ring and revocation list ([`auth`], [`keys`]), the HTTP
//! layers every public path shares ([`http`]), the PostgreSQL pool and migration
//! runner ([`db`]), the transactional outbox and RabbitMQ connection ([`events`]),
//! and the operational endpoints ([`ops`]). The `parley` binary composes the
//! services and runs them with graceful shutdown ([`server`]).
#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod consumer;
pub mod db;
pub mod events;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod ops;
pub mod server;
pub mod telemetry;
#[cfg(feature = "test-support")]
pub mod testing;
#[cfg(feature = "test-support")]
pub mod testing_smtp;
#[cfg(feature = "test-support")]
pub mod testing_socketio;
