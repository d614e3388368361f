//! Prometheus metrics (`GET /metrics`), kept with `prometheus-client`. Counters move where the
//! work happens; gauges of state (sessions by status, processes, memory) are read at scrape.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProcessLabel {
    pub process: String,
}

/// A user's spend in a period (`day`, `month`: UTC).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UserPeriodLabels {
    pub user_id: String,
    pub period: String,
}

/// A spending limit (`daily`, `monthly`, `per_session`), a user's own.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UserLimitLabels {
    pub user_id: String,
    pub limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    pub limit: String,
}

/// How a webhook delivery attempt went: `delivered`, `retried` (failed, tried again later) or
/// `failed` (failed for good).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabel {
    pub instance_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

/// The label of whatever a client may make up: a method outside the standard ones, a path that
/// matched no route. Anyone can send those, so each counts as one series, not one per value.
pub const OTHER: &str = "other";

impl HttpLabels {
    /// Labels with a bounded set of values: standard methods, route templates, status codes.
    pub fn bounded(method: &actix_web::http::Method, route: Option<String>, status: u16) -> Self {
        use actix_web::http::Method;
        let standard = [
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
            Method::OPTIONS,
            Method::CONNECT,
            Method::TRACE,
        ];
        let method = if standard.contains(method) { method.as_str() } else { OTHER };
        let route = route.unwrap_or_else(|| OTHER.into());
        HttpLabels { method: method.into(), route, status }
    }
}

pub struct Metrics {
    registry: Registry,
    pub sessions: Family<StatusLabel, Gauge>,
    pub live_processes: Gauge,
    pub rss_bytes: Family<ProcessLabel, Gauge>,
    pub evictions: Family<ReasonLabel, Counter>,
    pub refusals: Family<ReasonLabel, Counter>,
    pub turns: Counter,
    pub turn_errors: Family<CodeLabel, Counter>,
    pub turn_seconds: Histogram,
    pub tokens: Family<KindLabel, Counter>,
    pub cost_usd: Counter<f64, AtomicU64>,
    pub sse_clients: Gauge,
    pub event_followers: Gauge,
    pub http_requests: Family<HttpLabels, Counter>,
    pub user_spent_usd: Family<UserPeriodLabels, Gauge<f64, AtomicU64>>,
    pub user_budget_usd: Family<UserLimitLabels, Gauge<f64, AtomicU64>>,
    pub default_budget_usd: Family<LimitLabel, Gauge<f64, AtomicU64>>,
    pub webhook_attempts: Family<OutcomeLabel, Counter>,
    pub instance_info: Family<InstanceLabel, Gauge>,
    pub owned_sessions: Gauge,
    /// Counters kept by the cluster, copied at scrape.
    pub lease_takeovers: Gauge,
    pub leases_lost: Gauge,
    pub forwarded_requests: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("claude_agent"),
            sessions: Family::default(),
            live_processes: Gauge::default(),
            rss_bytes: Family::default(),
            evictions: Family::default(),
            refusals: Family::default(),
            turns: Counter::default(),
            turn_errors: Family::default(),
            // 10 ms … ~5.5 min
            turn_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            tokens: Family::default(),
            cost_usd: Counter::default(),
            sse_clients: Gauge::default(),
            event_followers: Gauge::default(),
            http_requests: Family::default(),
            user_spent_usd: Family::default(),
            user_budget_usd: Family::default(),
            default_budget_usd: Family::default(),
            webhook_attempts: Family::default(),
            instance_info: Family::default(),
            owned_sessions: Gauge::default(),
            lease_takeovers: Gauge::default(),
            leases_lost: Gauge::default(),
            forwarded_requests: Gauge::default(),
        };
        let r = &mut m.registry;
        r.register("sessions", "Sessions by status", m.sessions.clone());
        r.register("cli_processes", "Live CLI processes", m.live_processes.clone());
        r.register("rss_bytes", "Resident memory of the service and of all its descendants", m.rss_bytes.clone());
        r.register("evictions", "Sessions whose CLI was stopped to save resources, by reason", m.evictions.clone());
        r.register("admissions_refused", "Launches and turns refused, by reason", m.refusals.clone());
        r.register("turns", "Turns ended", m.turns.clone());
        r.register("turn_errors", "Turns that failed, by error code", m.turn_errors.clone());
        r.register("turn_duration_seconds", "Duration of turns", m.turn_seconds.clone());
        r.register("tokens", "Model tokens, by kind (input, output)", m.tokens.clone());
        r.register("cost_usd", "Model cost reported by the CLI", m.cost_usd.clone());
        r.register("sse_clients", "Open server-sent event streams", m.sse_clients.clone());
        r.register(
            "event_followers",
            "Live /events followers (tasks subscribed to a session)",
            m.event_followers.clone(),
        );
        r.register("http_requests", "HTTP requests by method, route template and status", m.http_requests.clone());
        // Bounded by the users: one series per user who spent this month or has own limits.
        r.register(
            "user_spent_usd",
            "What each user spent this UTC day and month (users who spent)",
            m.user_spent_usd.clone(),
        );
        r.register("user_budget_usd", "Users' own spending limits", m.user_budget_usd.clone());
        r.register(
            "default_budget_usd",
            "The spending limits of users without their own ([budgets])",
            m.default_budget_usd.clone(),
        );
        r.register("instance_info", "This instance's id in the cluster (always 1)", m.instance_info.clone());
        r.register("owned_sessions", "Sessions whose lease this instance holds", m.owned_sessions.clone());
        r.register(
            "lease_takeovers",
            "Expired leases of other instances taken over (since start)",
            m.lease_takeovers.clone(),
        );
        r.register("leases_lost", "Leases found taken by another instance (since start)", m.leases_lost.clone());
        r.register(
            "forwarded_requests",
            "Requests sent on to the instance owning their session (since start)",
            m.forwarded_requests.clone(),
        );
        r.register(
            "webhook_attempts",
            "Webhook delivery attempts by outcome (delivered, retried, failed)",
            m.webhook_attempts.clone(),
        );
        m
    }
}

impl Metrics {
    pub fn webhook_attempt(&self, outcome: &str) {
        self.webhook_attempts.get_or_create(&OutcomeLabel { outcome: outcome.into() }).inc();
    }

    pub fn refused(&self, reason: &str) {
        self.refusals.get_or_create(&ReasonLabel { reason: reason.into() }).inc();
    }

    pub fn evicted(&self, reason: &str) {
        self.evictions.get_or_create(&ReasonLabel { reason: reason.into() }).inc();
    }

    pub fn turn_ended(&self, seconds: f64, error_code: Option<&str>, input_tokens: i64, output_tokens: i64, cost: f64) {
        self.turns.inc();
        self.turn_seconds.observe(seconds);
        if let Some(code) = error_code {
            self.turn_errors.get_or_create(&CodeLabel { code: code.into() }).inc();
        }
        self.tokens.get_or_create(&KindLabel { kind: "input".into() }).inc_by(input_tokens.max(0) as u64);
        self.tokens.get_or_create(&KindLabel { kind: "output".into() }).inc_by(output_tokens.max(0) as u64);
        if cost > 0.0 {
            self.cost_usd.inc_by(cost);
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Counts an open SSE stream for as long as it lives.
pub struct SseClientGuard(std::sync::Arc<Metrics>);

impl SseClientGuard {
    pub fn new(metrics: std::sync::Arc<Metrics>) -> Self {
        metrics.sse_clients.inc();
        SseClientGuard(metrics)
    }
}

impl Drop for SseClientGuard {
    fn drop(&mut self) {
        self.0.sse_clients.dec();
    }
}
