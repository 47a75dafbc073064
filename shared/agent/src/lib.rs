//! `hashfleet-agent`: the sentry runtime both sentries share.
//!
//! It owns the connect → enroll → challenge loop, the on-disk heartbeat
//! outbox, failover across commanders, approved actions (verified, run at
//! most once, answered) and the runtime status. A sentry binary supplies a
//! [`Collector`] (where snapshots come from), an [`Executor`] (how actions
//! run) and an [`AgentConfig`], and calls [`Agent::run`].
//!
//! Layout:
//! - [`actions`]: the `Executor` trait, the exactly-once journal and the
//!   action handler;
//! - [`cli`]: `run` flags, the common config file and `identity` subcommands;
//! - [`config`]: the runtime's settings and the shared `[[commander]]` table;
//! - [`outbox`]: unacknowledged heartbeats on disk, and the persisted seq;
//! - [`endpoint`]: the QUIC client endpoint and transport settings;
//! - [`framing`]: frames over quinn streams (the commander uses it too);
//! - [`session`]: one authenticated session (also used by tests to send
//!   hand-made frames);
//! - [`runtime`]: the producer and connector tasks;
//! - [`rotation`]: node key and wallet rotation, commander pins, the
//!   control socket;
//! - [`status`]: what the runtime reports about itself.

pub mod actions;
pub mod cli;
pub mod config;
pub mod endpoint;
pub mod framing;
pub mod outbox;
pub mod rotation;
pub mod runtime;
pub mod session;
pub mod status;
pub mod status_api;
pub mod text;

pub use actions::{ActionHandler, Executor, NoActions};
pub use config::{AgentConfig, CommanderTarget, ConfigError};
pub use runtime::{Agent, Collector};
pub use session::{Session, SessionError};
pub use status::{AgentStatus, StatusHandle};
pub use status_api::CollectorStates;
