//! `GET /metrics`: every figure moves with the work; the token protects it when set.

use std::time::Duration;

use awc::http::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{Backend, TestApp, eventually, spawn_app_with};

async fn scrape(app: &TestApp, token: Option<&str>) -> String {
    let res = app.request(Method::GET, "/metrics", token, None).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    res.text
}

/// The value of the series whose line starts with `series` (name and labels as written).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[actix_web::test]
async fn metrics_move_with_turns_sessions_refusals_evictions_and_streams() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.metrics.token = Some("scrape-token-123".into());
        s.api.max_sessions_per_user = 1;
        s.api.idle_session_timeout = 1;
    })
    .await;
    app.request(Method::GET, "/metrics", None, None).await.assert_error(401, "unauthorized");
    app.request(Method::GET, "/metrics", Some("wrong"), None).await.assert_error(401, "unauthorized");
    let token = Some("scrape-token-123");
    let before = scrape(&app, token).await;
    assert_eq!(value(&before, "claude_agent_turns_total"), 0.0);

    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    app.chat(&key, &id, "count me").await;
    app.chat(&key, &id, "crash").await.assert_error(502, "cli_failed");
    let live = app.create_session(&key, json!({})).await;
    app.post_session(&key, json!({})).await.assert_error(429, "quota_exceeded"); // the crashed one holds no slot; this one is over
    let after = scrape(&app, token).await;
    assert_eq!(value(&after, "claude_agent_turns_total"), 2.0);
    assert_eq!(value(&after, "claude_agent_turn_errors_total{code=\"cli_failed\"}"), 1.0);
    assert_eq!(value(&after, "claude_agent_turn_duration_seconds_count"), 2.0);
    assert!(value(&after, "claude_agent_tokens_total{kind=\"input\"}") > 0.0);
    assert!(value(&after, "claude_agent_tokens_total{kind=\"output\"}") > 0.0);
    assert!(value(&after, "claude_agent_cost_usd_total") > 0.0);
    assert_eq!(value(&after, "claude_agent_admissions_refused_total{reason=\"quota_user\"}"), 1.0);
    assert_eq!(
        value(&after, "claude_agent_http_requests_total{method=\"POST\",route=\"/api/v1/chat\",status=\"200\"}"),
        1.0
    );
    assert_eq!(
        value(&after, "claude_agent_http_requests_total{method=\"POST\",route=\"/api/v1/sessions\",status=\"429\"}"),
        1.0
    );
    assert!(value(&after, "claude_agent_rss_bytes{process=\"service\"}") > 0.0);
    assert!(value(&after, "claude_agent_cli_processes") >= 1.0);
    assert!(
        value(&after, "claude_agent_sessions{status=\"active\"}")
            + value(&after, "claude_agent_sessions{status=\"idle\"}")
            >= 1.0
    );

    // An open stream counts while it lives.
    let mut stream = app.open_chat_stream(&key, &live, "slow 10 50").await;
    stream.next_frame().await.expect("streaming");
    assert_eq!(value(&scrape(&app, token).await, "claude_agent_sse_clients"), 1.0);
    stream.rest().await;
    drop(stream);
    // Idle sessions are evicted after api.idle_session_timeout, and counted.
    let evicted = eventually(Duration::from_secs(10), || async {
        value(&scrape(&app, token).await, "claude_agent_evictions_total{reason=\"idle\"}") >= 1.0
    })
    .await;
    assert!(evicted);
    let last = scrape(&app, token).await;
    assert_eq!(value(&last, "claude_agent_sse_clients"), 0.0);
}

/// Made-up methods and paths need no key, so they must not each make a series: 3000 of them
/// leave a handful (`other` for the route and the method).
#[actix_web::test]
async fn junk_requests_do_not_grow_the_label_set() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let series = |text: &str| text.lines().filter(|l| l.starts_with("claude_agent_http_requests_total{")).count();
    let before = series(&scrape(&app, None).await);
    for i in 0..3000 {
        let (method, path) = match i % 4 {
            0 => (Method::GET, format!("/junk/{i}")),
            3 => (Method::POST, format!("/api/v1/sessions/{i}/nope{i}")),
            1 => (Method::from_bytes(format!("M{i}").as_bytes()).unwrap(), "/health".to_string()),
            _ => (Method::from_bytes(format!("X{i}").as_bytes()).unwrap(), format!("/api/v1/x{i}")),
        };
        app.request(method, &path, None, None).await;
    }
    let text = scrape(&app, None).await;
    let after = series(&text);
    assert!(after <= before + 6, "{before} series before, {after} after 3000 junk requests");
    assert!(value(&text, "claude_agent_http_requests_total{method=\"GET\",route=\"other\",status=\"404\"}") >= 750.0);
}

/// Guessing the metrics token counts against the address like guessing keys.
#[actix_web::test]
async fn wrong_metrics_tokens_are_rate_limited() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.metrics.token = Some("scrape-token-123".into());
        s.auth.failed_auth_burst = 3;
    })
    .await;
    for _ in 0..3 {
        app.request(Method::GET, "/metrics", Some("guess"), None).await.assert_error(401, "unauthorized");
    }
    let limited = app.request(Method::GET, "/metrics", Some("guess"), None).await;
    limited.assert_error(429, "rate_limited");
    assert!(limited.header("retry-after").is_some());
    app.request(Method::GET, "/metrics", Some("scrape-token-123"), None).await.assert_error(429, "rate_limited");
}
