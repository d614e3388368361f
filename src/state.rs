//! What every handler shares (`web::Data<AppState>`), built by `startup`. Its own module so that
//! the handlers depend on it and not on start-up, which depends on them.

use std::sync::Arc;
use std::time::Instant;

use crate::actors::{EventHub, RegistryHandle};
use crate::auth::Authenticator;
use crate::auth::revocation::Revocations;
use crate::cli::probe::CliProbe;
use crate::metrics::Metrics;
use crate::sessions::SessionService;
use crate::settings::Settings;
use crate::storage::Storage;

/// Shared by every handler (`web::Data<AppState>`).
pub struct AppState {
    pub settings: Arc<Settings>,
    pub storage: Storage,
    pub registry: RegistryHandle,
    pub sessions: SessionService,
    pub authenticator: Authenticator,
    /// Webhook subscriptions (their deliveries are the worker's).
    pub webhooks: crate::webhooks::Webhooks,
    /// Users' own provider credentials, sealed in storage.
    pub credentials: crate::auth::credentials::UserCredentials,
    /// Ends open streams when their key is revoked or their user deleted.
    pub revocations: Revocations,
    pub hub: Arc<EventHub>,
    pub metrics: Arc<Metrics>,
    /// The kernel's Landlock ABI when the agents are confined.
    pub sandbox: Option<i64>,
    pub started_at: Instant,
    /// `cli.path --version` for `/health`, remembered.
    pub cli_probe: CliProbe,
    /// With several instances on one PostgreSQL: this instance and the leases it holds.
    pub cluster: Option<Arc<crate::actors::cluster::Cluster>>,
}
