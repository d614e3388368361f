//! Building and running the application: storage, admin key, registry actor, HTTP server.

use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use actix::Actor;
use actix_cors::Cors;
use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::{Condition, from_fn};
use actix_web::{App, HttpServer, web};

use crate::actors::{Registry, RegistryHandle};
use crate::api::extract::{BodyLimit, path_error, query_error};
use crate::api::middleware::{REQUEST_ID_HEADER, log_requests};
use crate::auth::Authenticator;
use crate::auth::admin::ensure_admin_key;
use crate::sessions::SessionService;
use crate::settings::{AuthMode, Settings};
pub use crate::state::AppState;
use crate::storage::Storage;

/// Why the application could not start: one line for the operator.
#[derive(Debug)]
pub struct StartupError(pub String);

impl std::fmt::Display for StartupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartupError {}

pub struct Application {
    port: u16,
    server: Server,
    state: web::Data<AppState>,
    webhook_worker: crate::webhooks::DeliveryWorker,
}

impl Application {
    /// Opens storage (running migrations), makes sure an admin key exists, starts the registry
    /// and binds the server. Must run inside an actix `System`.
    pub async fn build(mut settings: Settings) -> Result<Application, StartupError> {
        crate::cli::adopt_project_local(&mut settings);
        let settings = Arc::new(settings);
        check_exposure(&settings)?;
        protect_process();
        create_private_dir(&settings.data.dir, "data.dir")?;
        create_dir(&settings.user.base_dir, "user.base_dir")?;
        let users_root = std::fs::canonicalize(&settings.user.base_dir)
            .map_err(|e| StartupError(format!("user.base_dir {}: {e}", settings.user.base_dir.display())))?;
        // Bound first: the port names this instance in a cluster, and the agents' confinement
        // keeps them from it.
        let listener = TcpListener::bind(settings.bind_address())
            .map_err(|e| StartupError(format!("cannot listen on {}: {e}", settings.bind_address())))?;
        let port = listener.local_addr().map_err(|e| StartupError(e.to_string()))?.port();

        let storage = Storage::connect(&settings.session).await.map_err(|e| {
            StartupError(format!(
                "cannot open {} storage ({}): {e}",
                settings.session.storage.as_str(),
                describe_storage(&settings)
            ))
        })?;
        let cluster = join_cluster(&settings, &storage, port).await?;
        let reset = match &cluster {
            Some(cluster) => cluster.join().await,
            None => storage.mark_live_sessions_idle().await,
        }
        .map_err(|e| StartupError(format!("cannot update sessions at start-up: {e}")))?;
        if reset > 0 {
            log::info!(
                "{reset} session(s) left live by the previous run are now idle (they resume on their next message)"
            );
        }
        let admin = match settings.auth.mode {
            AuthMode::ApiKey => ensure_admin_key(settings.auth.admin_key.as_deref(), &storage, &settings.data.dir)
                .await
                .map_err(StartupError)?,
            AuthMode::None => {
                log::warn!("auth.mode = \"none\": requests are not authenticated (trusted network only)");
                crate::auth::AdminKey::Stored
            }
        };

        let credentials_key = crate::auth::credentials_key::CredentialsKey::load(
            settings.auth.credentials_key.as_deref(),
            &settings.data.dir,
        )
        .map_err(StartupError)?;
        let credentials = crate::auth::credentials::UserCredentials::new(
            storage.clone(),
            credentials_key.clone(),
            settings.auth.require_user_credentials,
        );
        let webhooks = crate::webhooks::Webhooks::new(storage.clone(), credentials_key.clone(), settings.clone());
        let hub = Arc::new(crate::actors::EventHub::default());
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let groups = Arc::new(match &cluster {
            Some(c) => crate::cli::orphans::GroupRecord::for_instance(&settings.data.dir, c.instance_id()),
            None => crate::cli::orphans::GroupRecord::new(&settings.data.dir),
        });
        // A /proc scan and a bounded wait for the killed: before anything is served.
        let reaping = groups.clone();
        let reaped = tokio::task::spawn_blocking(move || reaping.reap_previous_run()).await.unwrap_or(0);
        if reaped > 0 {
            log::warn!("killed {reaped} process(es) a previous run left behind (it was killed without shutting down)");
        }
        let sandbox = crate::cli::sandbox::decide(settings.sandbox.mode).map_err(StartupError)?;
        if let (None, Some(shared)) = (sandbox, &settings.cli.shared_config_dir) {
            log::warn!(
                "cli.shared_config_dir {}: without the sandbox only its own permissions keep agents from writing it",
                shared.display()
            );
        }
        let confinement = sandbox.map(|abi| Arc::new(crate::cli::sandbox::Sandbox::new(abi, &settings, port)));
        if crate::cli::process::private_proc() {
            log::info!("each CLI gets its own /proc (hidepid=2): the service and other sessions are invisible to it");
        } else {
            log::warn!(
                "the service may not mount: the CLIs share its /proc (mount it with hidepid=2 so agents cannot list other processes)"
            );
        }
        // Session actors run on their own threads (one per core by default); the registry stays
        // on this one, off the path of every turn.
        let threads = crate::actors::threads::SessionThreads::start(settings.runtime.session_threads())
            .map_err(|e| StartupError(format!("cannot start the session threads: {e}")))?;
        let threads = Arc::new(threads);
        log::info!("session actors run on {} thread(s) (runtime.workers)", threads.len());
        let registry = Registry::new(
            settings.clone(),
            storage.clone(),
            hub.clone(),
            metrics.clone(),
            groups,
            confinement,
            users_root.clone(),
            threads,
        )
        .with_cluster(cluster.clone())
        .start();
        let registry = RegistryHandle::new(registry);
        if let Some(cluster) = &cluster {
            let retiring = registry.clone();
            cluster.start_heartbeat(Box::new(move |lost| retiring.retire(lost, crate::actors::StopReason::LeaseLost)));
        }
        let sessions = SessionService::new(
            settings.clone(),
            storage.clone(),
            registry.clone(),
            hub.clone(),
            users_root,
            credentials.clone(),
        )
        .with_cluster(cluster.clone());
        let trusted_proxies = settings
            .api
            .trusted_proxy_nets()
            .map_err(|bad| StartupError(format!("api.trusted_proxies: `{bad}` is not an IP address or CIDR range")))?;
        let failed_auth = Arc::new(crate::auth::limit::FailedAuthLimiter::from_settings(&settings));
        failed_auth.start_housekeeping();
        crate::api::users::remove_leftover_user_dirs(sessions.users_root());
        let revocations = crate::auth::revocation::Revocations::default();
        if cluster.is_some() {
            let told = revocations.clone();
            storage.listen_for_revocations(move |notice| {
                if let Some(revoked) = crate::auth::revocation::Revoked::from_notice(notice) {
                    told.announce(revoked);
                }
            });
        }
        let state = web::Data::new(AppState {
            authenticator: Authenticator {
                storage: storage.clone(),
                mode: settings.auth.mode,
                admin,
                failed_auth,
                trusted_proxies: trusted_proxies.into(),
                keys: revocations.key_cache(),
            },
            revocations,
            webhooks,
            credentials,
            settings: settings.clone(),
            storage,
            registry,
            sessions,
            hub,
            metrics,
            sandbox,
            started_at: Instant::now(),
            cli_probe: Default::default(),
            cluster: cluster.clone(),
        });

        let forwarder = match &cluster {
            Some(cluster) if !settings.cluster.secret.is_empty() => Some(web::Data::new(
                crate::api::forward::Forwarder::new(
                    cluster.clone(),
                    state.storage.clone(),
                    settings.cluster.secret.clone(),
                    settings.api.max_body_kb * 1024,
                    state.authenticator.trusted_proxies.clone(),
                )
                .map_err(StartupError)?,
            )),
            _ => None,
        };
        let server = build_server(listener, state.clone(), forwarder)?;
        // Delivers what the outbox holds: this run's events and those a previous run left.
        let webhook_worker = crate::webhooks::DeliveryWorker::start(
            state.storage.clone(),
            credentials_key,
            settings.webhooks.clone(),
            state.metrics.clone(),
        );
        crate::cli::warn_when_it_cannot_answer(&settings);
        log::info!(
            "claude-agent-http {} listening on {}:{port} ({} storage)",
            env!("CARGO_PKG_VERSION"),
            settings.api.host,
            settings.session.storage.as_str()
        );
        Ok(Application { port, server, state, webhook_worker })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (gracefully with `stop(true)`), for tests and signal handling.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    /// Serves until the server is stopped (SIGTERM/SIGINT or a handle), then stops every
    /// session's CLI and waits until all are reaped.
    pub async fn run_until_stopped(mut self) -> std::io::Result<()> {
        notify_systemd(&self.state);
        let served = self.server.await;
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        log::info!("stopping every session's CLI (a second SIGTERM or SIGINT stops them at once)");
        let registry = self.state.registry.clone();
        tokio::select! {
            result = registry.shutdown(false) => {
                if let Err(e) = result {
                    log::error!("registry unavailable at shutdown: {e}");
                }
            }
            () = second_signal() => {
                log::warn!("second signal: killing every CLI now");
                let _ = registry.shutdown(true).await;
            }
        }
        // Drain: what this instance owned is idle and free at once, for any other to resume.
        if let Some(cluster) = &self.state.cluster {
            cluster.leave().await;
        }
        // After the sessions' last status changes are stored: what is left in the outbox
        // waits for the next run.
        self.webhook_worker.stop().await;
        served
    }
}

fn build_server(
    listener: TcpListener,
    state: web::Data<AppState>,
    forwarder: Option<web::Data<crate::api::forward::Forwarder>>,
) -> Result<Server, StartupError> {
    let settings = state.settings.clone();
    let authenticator = web::Data::new(state.authenticator.clone());
    let (workers, grace) = (settings.api.workers, settings.api.shutdown_grace);
    let body_limit = BodyLimit(settings.api.max_body_kb * 1024);
    let server = HttpServer::new(move || {
        // Called once on each worker thread, in its runtime.
        crate::alloc::flush_thread_cache_periodically();
        let cors_origins = &settings.api.cors_origins;
        let forwarding = forwarder.clone();
        App::new()
            .app_data(state.clone())
            .app_data(authenticator.clone())
            .app_data(body_limit)
            .app_data(web::QueryConfig::default().error_handler(query_error))
            .app_data(web::PathConfig::default().error_handler(path_error))
            .configure(crate::api::configure)
            .default_service(web::to(crate::api::not_found))
            .wrap(Condition::new(forwarding.is_some(), from_fn(crate::api::forward::to_owner)))
            .configure(|cfg| {
                if let Some(forwarder) = forwarding {
                    cfg.app_data(forwarder);
                }
            })
            .wrap(Condition::new(!cors_origins.is_empty(), cors(cors_origins)))
            .wrap(from_fn(log_requests))
    })
    // Frames are small and must leave at once: without TCP_NODELAY, Nagle's algorithm and
    // the client's delayed ACK hold an SSE frame back ~40 ms.
    .on_connect(|connection, _| {
        if let Some(tcp) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
            let _ = tcp.set_nodelay(true);
        }
    })
    // A client that closes its side has left: end the response at once, so a quiet `/events`
    // stream (and its follower task) goes now, not when a ping 15-30 s later fails to write.
    .h1_allow_half_closed(false)
    .workers(workers)
    .shutdown_timeout(grace)
    .listen(listener)
    .map_err(|e| StartupError(format!("cannot serve: {e}")))?
    .run();
    Ok(server)
}

/// CORS for the configured origins. `*` allows any origin; credentials are never allowed
/// (keys travel in headers, not cookies), so a wildcard never meets credentials.
fn cors(origins: &[String]) -> Cors {
    let mut cors = Cors::default()
        .allowed_methods(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
        // `x-session-id` picks (and names, in answers) the session of an OpenAI-style chat.
        .allowed_headers([
            "authorization",
            "x-api-key",
            "content-type",
            "last-event-id",
            "x-request-id",
            "x-session-id",
        ])
        .expose_headers([REQUEST_ID_HEADER.as_str(), "retry-after", "x-session-id"])
        .max_age(3600);
    for origin in origins {
        cors = if origin == "*" { cors.allow_any_origin().send_wildcard() } else { cors.allowed_origin(origin) };
    }
    cors
}

/// `auth.mode = "none"` serves only loopback unless explicitly allowed.
fn check_exposure(settings: &Settings) -> Result<(), StartupError> {
    if settings.auth.mode != AuthMode::None {
        return Ok(());
    }
    let host = settings.api.host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if loopback {
        Ok(())
    } else if settings.auth.allow_unauthenticated_remote {
        log::warn!(
            "serving without authentication on {host} (auth.allow_unauthenticated_remote): anyone who reaches \
             the port acts as any user"
        );
        Ok(())
    } else {
        Err(StartupError(format!(
            "refusing to serve without authentication on {host}: auth.mode = \"none\" is for loopback only \
             (set auth.allow_unauthenticated_remote = true to override)"
        )))
    }
}

/// What the agents could use against the service even as the same user: its memory and
/// environment (`/proc/<pid>/environ`, `mem`, `maps`, `fd` are closed to every process without
/// `CAP_SYS_PTRACE` once it is not dumpable), and files it creates readable by others.
fn protect_process() {
    // SAFETY: plain prctl and umask calls.
    unsafe {
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            log::warn!("cannot make the service non-dumpable: {}", std::io::Error::last_os_error());
        }
        libc::umask(0o077);
    }
}

/// The service's own data (database, admin key): 0700 whatever existed before.
fn create_private_dir(dir: &Path, key: &str) -> Result<PathBuf, StartupError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let failed = |e: std::io::Error| StartupError(format!("cannot create {key} {}: {e}", dir.display()));
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(failed)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(failed)?;
    Ok(dir.to_path_buf())
}

fn create_dir(dir: &Path, key: &str) -> Result<PathBuf, StartupError> {
    std::fs::create_dir_all(dir).map_err(|e| StartupError(format!("cannot create {key} {}: {e}", dir.display())))?;
    Ok(dir.to_path_buf())
}

/// On PostgreSQL: this instance in the cluster of those sharing the database (checked: every
/// instance of a cluster has `cluster.secret`). SQLite and `memory` are single-instance.
async fn join_cluster(
    settings: &Settings,
    storage: &crate::storage::Storage,
    port: u16,
) -> Result<Option<Arc<crate::actors::cluster::Cluster>>, StartupError> {
    use crate::actors::cluster::{Cluster, default_advertise_url, default_instance_id};
    if storage.kind() != crate::settings::StorageKind::Postgresql {
        log::info!(
            "{} storage: a single instance (several instances need session.storage = \"postgresql\")",
            settings.session.storage.as_str()
        );
        return Ok(None);
    }
    let c = &settings.cluster;
    let instance_id = if c.instance_id.trim().is_empty() { default_instance_id(port) } else { c.instance_id.clone() };
    let url = match (c.secret.is_empty(), c.advertise_url.trim().is_empty()) {
        (true, _) => String::new(),
        (false, true) => default_advertise_url(&settings.api.host, port),
        (false, false) => c.advertise_url.clone(),
    };
    let ttl = std::time::Duration::from_secs(c.lease_ttl);
    let caps = (settings.api.max_sessions_per_user, settings.api.max_sessions);
    let cluster = Cluster::new(instance_id, url, ttl, storage.clone(), caps);
    let read_peers =
        || async { cluster.peers().await.map_err(|e| StartupError(format!("cannot read the instances table: {e}"))) };
    let mut peers = read_peers().await?;
    // Without a secret this instance may only run alone: an instance killed just before
    // (whose row has not gone stale yet) is waited for, up to one lease TTL.
    let alone_by = std::time::Instant::now() + ttl + std::time::Duration::from_secs(1);
    while c.secret.is_empty() && !peers.is_empty() && std::time::Instant::now() < alone_by {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        peers = read_peers().await?;
    }
    let names = || peers.iter().map(|p| p.instance_id.as_str()).collect::<Vec<_>>().join(", ");
    if c.secret.is_empty() && !peers.is_empty() {
        return Err(StartupError(format!(
            "cluster.secret is required: other instances share this database ({})",
            names()
        )));
    }
    if let Some(lone) = peers.iter().find(|p| p.advertise_url.is_none()) {
        return Err(StartupError(format!(
            "instance {} shares this database without cluster.secret: give every instance the same secret",
            lone.instance_id
        )));
    }
    if c.secret.is_empty() {
        log::warn!(
            "PostgreSQL without cluster.secret: this instance ({}) runs alone; another one would refuse to start",
            cluster.instance_id()
        );
    }
    log::info!(
        "cluster: instance {} at {} (lease_ttl {} s), {} other live instance(s){}",
        cluster.instance_id(),
        cluster.advertise_url(),
        c.lease_ttl,
        peers.len(),
        if peers.is_empty() { String::new() } else { format!(": {}", names()) }
    );
    Ok(Some(cluster))
}

/// Where the storage is, without credentials.
fn describe_storage(settings: &Settings) -> String {
    match settings.session.storage {
        crate::settings::StorageKind::Sqlite => settings.session.sqlite_path.display().to_string(),
        crate::settings::StorageKind::Memory => "in memory".into(),
        crate::settings::StorageKind::Postgresql => {
            let url = settings.session.database_url.as_deref().unwrap_or("");
            // Drop `user:password@` so no secret reaches the log.
            match (url.find("://"), url.rfind('@')) {
                (Some(scheme), Some(at)) if at > scheme => {
                    format!("{}{}", &url[..scheme + 3], &url[at + 1..])
                }
                _ => url.to_string(),
            }
        }
    }
}

/// Under systemd (`Type=notify`): READY once serving, and watchdog pings while the registry
/// actor answers (a wedged actor system stops the pings and systemd restarts the service).
/// Without `NOTIFY_SOCKET` these are no-ops.
fn notify_systemd(state: &web::Data<AppState>) {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let Some(interval) = sd_notify::watchdog_enabled() else { return };
    let registry = state.registry.clone();
    actix_web::rt::spawn(async move {
        let mut ticks = tokio::time::interval(interval / 2);
        loop {
            ticks.tick().await;
            if registry.stats().await.is_ok() {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
        }
    });
}

/// Resolves on the next SIGTERM or SIGINT (never, if they cannot be watched).
async fn second_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
