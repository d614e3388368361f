//! claude-agent-http: the Claude Code CLI behind a multi-user HTTP API.
//!
//! Layers, each importing only those below it (README "Layout"; `scripts/check-layers`):
//! `startup` → `api` → `state` → `sessions` → `actors`, `auth` → `cli`, `storage`, `memory`,
//! `metrics` → `settings` → `error`, `clock`, `domain` (the leaf).

pub mod actors;
mod alloc;
pub mod api;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod domain;
pub mod error;
pub mod memory;
pub mod metrics;
pub mod seed_config;
pub mod sessions;
pub mod settings;
pub mod startup;
pub mod state;
pub mod storage;
pub mod webhooks;

pub use settings::Settings;
pub use startup::Application;
