//! `hashfleet-commander`: enrolls and verifies sentries over QUIC, stores
//! their heartbeats durably in an embedded sled store, and serves the HTTP
//! API.
//!
//! Layout:
//! - [`actions`]: the approved-actions state machine (pure; dispatch comes next);
//! - [`app`]: start-up order, shared state, `run(config, shutdown)`;
//! - [`config`]: `serve` settings (TOML + flags), validated before binding;
//! - [`keys`]: the commander identity and the admin token in the data dir;
//! - [`quic`]: the endpoint and one task per sentry session;
//! - [`enroll`]: admitting a verified sentry (tokens, pending, revoked);
//! - [`ingest`]: the group-commit writer that acknowledges after flush;
//! - [`store`]: the `Store` trait, its records and the sled implementation;
//! - [`convert`]: wire snapshot → store record;
//! - [`fleet`]: device registry, status classes, rollups, retention (derived from heartbeats);
//! - [`sessions`]: live sessions and revoked keys;
//! - [`http`]: the HTTP API and `/metrics`; [`metrics`]: counters;
//! - [`query`]: Mongo-style filters, projection and sort over device documents;
//! - [`demo`]: a commander and a sentry in one process for a first look;
//! - [`info`]: the `info` subcommand; [`upkeep`]: periodic checkpoints and retention.
//! - [`backup_cli`]: the `backup` and `restore` subcommands.
//! - [`cli`]: the operator subcommands (`token`, `user`, `sentry`, `action`) over the HTTP API.
//! - [`permissions`]: `type:level` permissions and roles (pure);
//!   [`accounts`]: username/password rules, Argon2id hashes, the login throttle.

pub mod accounts;
pub mod actions;
pub mod app;
pub mod backup_cli;
pub mod cli;
pub mod config;
pub mod convert;
pub mod demo;
pub mod enroll;
pub mod fleet;
pub mod http;
pub mod info;
pub mod ingest;
pub mod key_rotation;
pub mod keys;
pub mod metrics;
pub mod permissions;
pub mod query;
pub mod quic;
pub mod rotation;
pub mod sessions;
pub mod store;
pub mod upkeep;
pub mod verifier;

pub use app::{run, start, App, Running};
pub use config::CommanderConfig;

/// Resolves when the process receives SIGTERM or SIGINT.
pub use hashfleet_agent::cli::shutdown_signal;
