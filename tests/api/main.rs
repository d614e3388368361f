//! Black-box tests of the HTTP API: each test starts the app on port 0 with a fresh database.

mod admission;
mod auth;
mod browser;
mod budgets;
mod chat;
mod confinement;
mod consistency;
mod credentials;
mod escape;
mod events;
mod helpers;
mod history_files;
mod metrics;
mod openapi;
mod permissions;
mod processes;
pub mod real_cli;
mod seed;
mod service;
mod sessions;
mod shared_config;
mod shutdown;
mod startup;
mod timeouts;
mod traps;
mod usage;
mod users;
