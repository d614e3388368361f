//! Service endpoints outside `/api/v1`: `/health` and `/`.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;
use utoipa::ToSchema;

use super::resource;
use crate::error::{ApiError, ErrorResponse};
use crate::metrics::{ProcessLabel, StatusLabel};
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/health").route(web::get().to(get_health)))
        .service(resource("/metrics").route(web::get().to(get_metrics)))
        .service(resource("/").route(web::get().to(get_root)));
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct CliInfo {
    /// Where the CLI is (or was looked for).
    path: String,
    found: bool,
    /// What `claude --version` answered.
    version: Option<String>,
}

/// The seed's health fields, plus the CLI, the sandbox and the reason when unhealthy.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Health {
    /// `healthy` or `unhealthy`.
    #[schema(value_type = String, pattern = "^(healthy|unhealthy)$")]
    status: &'static str,
    #[schema(value_type = String)]
    version: &'static str,
    /// Open sessions in storage (all instances).
    active_sessions: i64,
    /// Live CLI processes of this instance.
    in_memory_clients: usize,
    /// RSS of the service and its CLIs, MiB.
    memory_mb: u64,
    /// `sqlite`, `postgresql` or `memory`.
    #[schema(value_type = String)]
    storage_type: &'static str,
    uptime_seconds: u64,
    cli: CliInfo,
    /// `landlock` (with the kernel's ABI) or `off`.
    sandbox: Sandbox,
    /// This instance in a cluster (PostgreSQL); absent with SQLite and `memory`.
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<ClusterHealth>,
    /// Why the service is unhealthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ClusterHealth {
    instance_id: String,
    /// The URL other instances forward requests to (absent without `cluster.secret`).
    #[serde(skip_serializing_if = "Option::is_none")]
    advertise_url: Option<String>,
    /// Sessions whose lease this instance holds.
    owned_sessions: usize,
    /// Expired leases of other instances this one took over since it started.
    lease_takeovers: u64,
    /// Leases this instance held and found taken by another (it was paused or cut off).
    leases_lost: u64,
    /// Requests this instance sent on to the instance owning their session.
    forwarded_requests: u64,
    /// Live instances sharing the database, this one included.
    instances: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Sandbox {
    /// `landlock` or `off`.
    #[schema(value_type = String, pattern = "^(landlock|off)$")]
    mode: &'static str,
    /// The kernel's Landlock ABI in use.
    abi: Option<i64>,
}

/// 200 `healthy`, or 503 `unhealthy` with `error` when storage does not answer or the CLI
/// is missing or broken. Needs no key (for load balancers).
#[utoipa::path(
    get, path = "/health", tag = "service",
    security(()),
    responses(
        (status = 200, description = "Healthy", body = Health),
        (status = 503, description = "Unhealthy: `error` says why", body = Health),
    ),
)]
pub(super) async fn get_health(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let stats = state.registry.stats().await.ok();
    let cluster = match &state.cluster {
        Some(c) => Some(ClusterHealth {
            instance_id: c.instance_id().to_string(),
            advertise_url: Some(c.advertise_url().to_string()).filter(|u| !u.is_empty()),
            owned_sessions: c.owned_count(),
            lease_takeovers: c.takeovers(),
            leases_lost: c.leases_lost(),
            forwarded_requests: forwarded(&req),
            instances: c.peers().await.map(|p| p.len() + 1).unwrap_or(1),
        }),
        None => None,
    };
    let (active_sessions, storage_error) = match state.storage.count_open_sessions().await {
        Ok(n) => (n, None),
        Err(e) => (0, Some(e.to_string())),
    };
    let (cli, version) = state.cli_probe.check(&state.settings.cli.path).await;
    let cli_error = match (&cli, &version) {
        (None, _) => Some(format!("the claude CLI was not found at `{}` (cli.path)", state.settings.cli.path)),
        (Some(path), None) => Some(format!("the claude CLI at {} does not answer --version", path.display())),
        _ => None,
    };
    let error = match (storage_error, cli_error) {
        (Some(s), Some(c)) => Some(format!("{s}; {c}")),
        (s, c) => s.or(c),
    };
    let body = Health {
        status: if error.is_none() { "healthy" } else { "unhealthy" },
        version: env!("CARGO_PKG_VERSION"),
        active_sessions,
        in_memory_clients: stats.as_ref().map(|s| s.live_sessions).unwrap_or(0),
        memory_mb: stats.as_ref().map(|s| s.memory.total_mb()).unwrap_or(0),
        storage_type: state.storage.kind().as_str(),
        uptime_seconds: state.started_at.elapsed().as_secs(),
        cli: CliInfo {
            found: cli.is_some(),
            path: cli.map(|p| p.display().to_string()).unwrap_or_else(|| state.settings.cli.path.clone()),
            version,
        },
        sandbox: Sandbox { mode: if state.sandbox.is_some() { "landlock" } else { "off" }, abi: state.sandbox },
        cluster,
        error,
    };
    if body.error.is_some() {
        HttpResponse::ServiceUnavailable().insert_header((header::RETRY_AFTER, 5)).json(body)
    } else {
        HttpResponse::Ok().json(body)
    }
}

/// Prometheus text format. Protected by `metrics.token` when set (sent as a bearer token or
/// `X-API-Key`); open otherwise.
#[utoipa::path(
    get, path = "/metrics", tag = "service",
    security((), ("metrics_token" = [])),
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4", content_type = "text/plain; version=0.0.4; charset=utf-8", body = String),
        (status = 401, description = "`unauthorized`: `metrics.token` is set and was not presented", body = ErrorResponse),
        (status = 429, description = "`rate_limited`: too many wrong tokens or keys from this address", body = ErrorResponse),
    ),
)]
pub(super) async fn get_metrics(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    if let Some(token) = state.settings.metrics.token.as_deref().filter(|t| !t.is_empty()) {
        let refusal = || ApiError::Unauthorized("GET /metrics needs the metrics token".into());
        let presented = crate::auth::presented_key(&req).ok_or_else(refusal)?;
        let (given, wanted) = (crate::auth::keys::hash_key(&presented), crate::auth::keys::hash_key(token));
        // Wrong tokens count against the client address like wrong keys.
        let authenticator = &state.authenticator;
        let client = crate::auth::limit::client_address(&req, &authenticator.trusted_proxies);
        authenticator.admit(client, crate::auth::keys::hashes_match(&given, &wanted), refusal())?;
    }
    let m = &state.metrics;
    for status in crate::domain::SessionStatus::ALL {
        m.sessions.get_or_create(&StatusLabel { status: status.as_str().into() }).set(0);
    }
    for (status, n) in state.storage.count_sessions_by_status().await? {
        m.sessions.get_or_create(&StatusLabel { status }).set(n);
    }
    m.event_followers.set(state.hub.followers() as i64);
    if let Ok(stats) = state.registry.stats().await {
        m.live_processes.set(stats.processes.len() as i64);
        m.rss_bytes.get_or_create(&ProcessLabel { process: "service".into() }).set(stats.memory.service_bytes as i64);
        m.rss_bytes.get_or_create(&ProcessLabel { process: "children".into() }).set(stats.memory.children_bytes as i64);
    }
    if let Some(c) = &state.cluster {
        m.instance_info.get_or_create(&crate::metrics::InstanceLabel { instance_id: c.instance_id().into() }).set(1);
        m.owned_sessions.set(c.owned_count() as i64);
        m.lease_takeovers.set(c.takeovers() as i64);
        m.leases_lost.set(c.leases_lost() as i64);
        m.forwarded_requests.set(forwarded(&req) as i64);
    }
    budget_gauges(&state).await?;
    Ok(HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(m.encode()))
}

/// Requests this instance forwarded to others.
fn forwarded(req: &HttpRequest) -> u64 {
    req.app_data::<web::Data<crate::api::forward::Forwarder>>().map_or(0, |f| f.forwarded())
}

/// Per-user spend (today, this month) and limits, read at scrape: series of users who no
/// longer spend or lost their limits go (the families are rebuilt).
async fn budget_gauges(state: &AppState) -> Result<(), ApiError> {
    use crate::metrics::{LimitLabel, UserLimitLabels, UserPeriodLabels};
    let m = &state.metrics;
    let ((day_start, _), (month_start, _)) = crate::sessions::budgets::periods(crate::clock::now_ms());
    let today = state.storage.spent_by_user_since(day_start).await?;
    let month = state.storage.spent_by_user_since(month_start).await?;
    let budgets = state.storage.list_budgets().await?;
    m.user_spent_usd.clear();
    m.user_budget_usd.clear();
    m.default_budget_usd.clear();
    let spent = |user_id: &str, period: &str, usd: f64| {
        m.user_spent_usd.get_or_create(&UserPeriodLabels { user_id: user_id.into(), period: period.into() }).set(usd);
    };
    for (user_id, usd) in &month {
        spent(user_id, "month", *usd);
        // One who spent this month but not today shows 0 for today.
        spent(user_id, "day", 0.0);
    }
    for (user_id, usd) in &today {
        spent(user_id, "day", *usd);
    }
    for row in &budgets {
        for (limit, usd) in
            [("daily", row.daily_usd), ("monthly", row.monthly_usd), ("per_session", row.per_session_usd)]
        {
            if let Some(usd) = usd {
                m.user_budget_usd
                    .get_or_create(&UserLimitLabels { user_id: row.user_id.clone(), limit: limit.into() })
                    .set(usd);
            }
        }
    }
    let d = &state.settings.budgets;
    for (limit, usd) in [("daily", d.daily_usd), ("monthly", d.monthly_usd), ("per_session", d.per_session_usd)] {
        if let Some(usd) = usd {
            m.default_budget_usd.get_or_create(&LimitLabel { limit: limit.into() }).set(usd);
        }
    }
    Ok(())
}

/// The seed's answer to `GET /`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ServiceInfo {
    #[schema(value_type = String)]
    name: &'static str,
    #[schema(value_type = String)]
    version: &'static str,
    /// Where the API's documentation is.
    #[schema(value_type = String)]
    docs: &'static str,
    #[schema(value_type = String)]
    health: &'static str,
}

/// The web console's page; its script and libraries are `/assets/*` (no CDN: nothing outside
/// the service is reachable).
const CONSOLE: &str = include_str!("console.html");

/// Browsers (`Accept: text/html`) get the web console; other clients the seed's JSON.
#[utoipa::path(
    get, path = "/", tag = "service",
    security(()),
    responses(
        (status = 200, description = "The service's name and links, or the console page for browsers",
            content(
                (ServiceInfo = "application/json"),
                (String = "text/html"),
            )),
    ),
)]
pub(super) async fn get_root(req: HttpRequest) -> HttpResponse {
    let wants_html = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    if wants_html {
        HttpResponse::Ok()
            .content_type("text/html; charset=utf-8")
            .insert_header((
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                 img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'",
            ))
            .insert_header(("X-Content-Type-Options", "nosniff"))
            .body(CONSOLE)
    } else {
        HttpResponse::Ok().json(ServiceInfo {
            name: "claude-agent-http",
            version: env!("CARGO_PKG_VERSION"),
            docs: "/docs",
            health: "/health",
        })
    }
}
