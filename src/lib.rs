//! claude-agent-http: the Claude Code CLI behind a multi-user HTTP API.
//!
//! Layout: `api` (HTTP handlers) → `sessions` (session logic) → `actors` (registry and, later,
//! one actor per live session) → `cli` (the child process); `storage` (SQLite/PostgreSQL),
//! `auth` (keys and the caller extractor), `settings`, `error`.

pub mod actors;
mod alloc;
pub mod api;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod error;
pub mod memory;
pub mod metrics;
pub mod seed_config;
pub mod sessions;
pub mod settings;
pub mod startup;
pub mod storage;

pub use settings::Settings;
pub use startup::Application;
