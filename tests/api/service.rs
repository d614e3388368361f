//! Service endpoints and the behaviour every request shares: JSON errors for bad bodies,
//! unknown routes and wrong methods, request ids, CORS, storage outages.

use std::time::Duration;

use awc::http::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{Backend, eventually, pg_admin, pg_url_for_database, spawn_app, spawn_app_with};
use crate::on_both_backends;

on_both_backends!(
    health_reports_the_service,
    root_answers_json_or_html,
    unknown_routes_and_wrong_methods_answer_json,
    bad_bodies_answer_json_errors,
    every_response_carries_a_request_id,
    cors_allows_only_configured_origins,
);

async fn health_reports_the_service(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = app.create_user("alice").await;
    app.create_session(&key, serde_json::json!({})).await;
    let res = app.get_health().await;
    assert_eq!(res.status, StatusCode::OK);
    let h = &res.body;
    assert_eq!(h["status"], "healthy");
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(h["active_sessions"], 1);
    assert_eq!(h["in_memory_clients"], 1);
    assert!(h["memory_mb"].as_u64().unwrap() > 0);
    let storage = if backend == Backend::Postgres { "postgresql" } else { "sqlite" };
    assert_eq!(h["storage_type"], storage);
    assert!(h["uptime_seconds"].is_u64());
    assert_eq!(h["cli"]["found"], true);
    assert_eq!(h["cli"]["path"], app.settings.cli.path.as_str());
    assert_eq!(h["cli"]["version"], "2.1.330-fake (Claude Code)");
}

async fn root_answers_json_or_html(backend: Backend) {
    let app = spawn_app(backend).await;
    let json = app.get_root("application/json").await;
    assert_eq!(json.status, StatusCode::OK);
    assert_eq!(json.body["name"], "claude-agent-http");
    assert_eq!(json.body["health"], "/health");
    let html = app.get_root("text/html,application/xhtml+xml").await;
    assert_eq!(html.status, StatusCode::OK);
    assert!(html.header("content-type").unwrap().starts_with("text/html"));
    assert!(html.text.contains("<html"));
}

async fn unknown_routes_and_wrong_methods_answer_json(backend: Backend) {
    let app = spawn_app(backend).await;
    app.request(Method::GET, "/api/v1/nothing-here", None, None).await.assert_error(404, "not_found");
    app.request(Method::GET, "/favicon.ico", None, None).await.assert_error(404, "not_found");
    let res = app.request(Method::PUT, "/health", None, None).await;
    res.assert_error(405, "method_not_allowed");
    assert_eq!(res.header("allow"), Some("GET"));
    let key = app.create_user("alice").await;
    let res = app.request(Method::PATCH, "/api/v1/sessions", Some(&key), None).await;
    res.assert_error(405, "method_not_allowed");
    assert_eq!(res.header("allow"), Some("GET, POST"));
    let res = app.request(Method::POST, "/api/v1/sessions/x/files", Some(&key), None).await;
    assert_eq!(res.header("allow"), Some("GET, PUT, DELETE"));
}

async fn bad_bodies_answer_json_errors(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.api.max_body_kb = 4).await;
    let key = app.create_user("alice").await;
    let post = |ct: Option<&'static str>, body: &[u8]| {
        app.request_raw(Method::POST, "/api/v1/sessions", Some(&key), ct, body.to_vec())
    };
    post(Some("application/json"), b"{\"subdir\": ").await.assert_error(400, "invalid_request");
    post(Some("application/json"), b"[1,2").await.assert_error(400, "invalid_request");
    post(Some("application/json"), b"{} trailing").await.assert_error(400, "invalid_request");
    post(Some("text/plain"), b"{\"subdir\":\"a\"}").await.assert_error(415, "unsupported_media_type");
    // No Content-Type at all is read as JSON, as the seed (FastAPI) did.
    assert_eq!(post(None, b"{\"subdir\":\"a\"}").await.status, StatusCode::CREATED);
    let big = format!("{{\"subdir\":\"{}\"}}", "a".repeat(8 * 1024));
    post(Some("application/json"), big.as_bytes()).await.assert_error(413, "payload_too_large");
    let typed = post(Some("application/json"), b"{\"subdir\": 5}").await;
    typed.assert_error(422, "validation_error");
    assert_eq!(typed.body["error"]["fields"][0]["field"], "subdir");
    // FastAPI's `detail` list beside the stable `error` object.
    assert_eq!(typed.body["detail"][0]["loc"], json!(["body", "subdir"]));
    assert_eq!(typed.body["detail"][0]["type"], "type_error");
    assert!(typed.body["detail"][0]["msg"].as_str().is_some_and(|m| !m.is_empty()));
    let ok = post(Some("application/json; charset=utf-8"), b"{\"subdir\":\"a\"}").await;
    assert_eq!(ok.status, StatusCode::CREATED);
}

async fn every_response_carries_a_request_id(backend: Backend) {
    let app = spawn_app(backend).await;
    let res = app.get_health().await;
    let id = res.header("x-request-id").expect("request id").to_string();
    assert!(id.len() >= 16);
    assert_ne!(app.get_health().await.header("x-request-id").unwrap(), id);
    let err = app.request(Method::GET, "/api/v1/sessions", None, None).await;
    assert!(err.header("x-request-id").is_some());
    let mine = app.client.get(format!("{}/health", app.address)).insert_header(("X-Request-Id", "trace-42")).send();
    assert_eq!(mine.await.unwrap().headers().get("x-request-id").unwrap(), "trace-42");
}

async fn cors_allows_only_configured_origins(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.api.cors_origins = vec!["https://console.example".into()]).await;
    let preflight = |origin: &'static str| {
        app.client
            .request(Method::OPTIONS, format!("{}/api/v1/sessions", app.address))
            .insert_header(("Origin", origin))
            .insert_header(("Access-Control-Request-Method", "POST"))
            .insert_header(("Access-Control-Request-Headers", "authorization,content-type"))
            .send()
    };
    let allowed = preflight("https://console.example").await.unwrap();
    assert_eq!(allowed.headers().get("access-control-allow-origin").unwrap(), "https://console.example");
    assert!(allowed.headers().get("access-control-allow-credentials").is_none());
    let other = preflight("https://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    // A browser page may PATCH a session's live settings, and an OpenAI-style client sends and
    // reads `X-Session-Id`.
    let patch = app
        .client
        .request(Method::OPTIONS, format!("{}/v1/chat/completions", app.address))
        .insert_header(("Origin", "https://console.example"))
        .insert_header(("Access-Control-Request-Method", "PATCH"))
        .insert_header(("Access-Control-Request-Headers", "authorization,x-session-id"))
        .send()
        .await
        .unwrap();
    assert_eq!(patch.headers().get("access-control-allow-origin").unwrap(), "https://console.example");
    let allowed_methods = patch.headers().get("access-control-allow-methods").unwrap().to_str().unwrap();
    assert!(allowed_methods.contains("PATCH"), "{allowed_methods}");
    let answer = app
        .client
        .get(format!("{}/health", app.address))
        .insert_header(("Origin", "https://console.example"))
        .send()
        .await
        .unwrap();
    let exposed = answer.headers().get("access-control-expose-headers").unwrap().to_str().unwrap().to_lowercase();
    assert!(exposed.contains("x-session-id"), "{exposed}");

    let closed = spawn_app(backend).await;
    let res = closed.client.get(format!("{}/health", closed.address)).insert_header(("Origin", "https://x")).send();
    assert!(res.await.unwrap().headers().get("access-control-allow-origin").is_none(), "no CORS by default");
}

/// A database that goes away answers 503 `storage_unavailable` with Retry-After, and the
/// service recovers by itself when it returns.
#[actix_web::test]
async fn postgres_going_away_gives_503_and_the_service_recovers() {
    let db = format!("t_down_{}", uuid::Uuid::new_v4().simple());
    pg_admin(&format!("CREATE DATABASE {db}")).await;
    let url = pg_url_for_database(&db);
    let app = spawn_app_with(Backend::Postgres, |s| s.session.database_url = Some(url)).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;

    pg_admin(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false")).await;
    // Terminate on every try: a connection that was being opened while ALTER committed can pass
    // the check and outlive one round of terminations (seen under CI load).
    let terminate = format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'");
    let down = eventually(Duration::from_secs(20), || async {
        pg_admin(&terminate).await;
        app.get_session(&key, &id).await.code() == "storage_unavailable"
    })
    .await;
    assert!(down, "requests answer storage_unavailable while the database is away");
    let res = app.get_session(&key, &id).await;
    res.assert_error(503, "storage_unavailable");
    assert!(res.header("retry-after").is_some());
    let health = app.get_health().await;
    assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(health.body["status"], "unhealthy");
    assert!(health.body["error"].is_string());

    pg_admin(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true")).await;
    let back =
        eventually(Duration::from_secs(20), || async { app.get_session(&key, &id).await.status == StatusCode::OK })
            .await;
    assert!(back, "the service recovers by itself");
    assert_eq!(app.get_health().await.status, StatusCode::OK);
    drop(app);
    pg_admin(&format!("DROP DATABASE {db} WITH (FORCE)")).await;
}

/// `/health` needs no key: a CLI that fails `--version` is asked again only after a few seconds,
/// not on every call (else anyone could fork processes at will).
#[actix_web::test]
async fn health_does_not_run_a_failing_cli_on_every_call() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = tempfile::tempdir().unwrap();
    let (cli, calls) = (scratch.path().join("claude"), scratch.path().join("calls"));
    std::fs::write(&cli, format!("#!/bin/sh\necho x >> {}\nexit 1\n", calls.display())).unwrap();
    std::fs::set_permissions(&cli, std::fs::Permissions::from_mode(0o755)).unwrap();
    let app = spawn_app_with(Backend::Sqlite, |s| s.cli.path = cli.display().to_string()).await;
    for _ in 0..20 {
        let health = app.get_health().await;
        assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE, "{}", health.text);
    }
    let runs = std::fs::read_to_string(&calls).unwrap_or_default().lines().count();
    // One run, or two if the 20 calls straddled the end of the few seconds a failure is kept.
    assert!((1..=2).contains(&runs), "the CLI ran {runs} times for 20 health checks");
}

/// The console's page allows only the service's own scripts; its script and the vendored
/// libraries come with their types, licence headers and cache rules; other names are JSON 404s.
#[actix_web::test]
async fn the_console_and_its_assets_are_served_with_types_caching_and_a_strict_csp() {
    let app = spawn_app(Backend::Sqlite).await;
    let page = app.get_root("text/html").await;
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.contains("script-src 'self';"), "no inline script may run: {csp}");
    for script in ["console.js", "marked-18.2.1.min.js", "purify-3.5.0.min.js", "highlight-11.12.0.min.js"] {
        assert!(page.text.contains(&format!("<script src=\"/assets/{script}\"></script>")), "{script}");
    }
    let vendored = [
        ("marked-18.2.1.min.js", "text/javascript; charset=utf-8", "marked v18.2.1"),
        ("purify-3.5.0.min.js", "text/javascript; charset=utf-8", "@license DOMPurify 3.5.0"),
        ("highlight-11.12.0.min.js", "text/javascript; charset=utf-8", "License: BSD-3-Clause"),
        ("highlight-github-11.12.0.min.css", "text/css; charset=utf-8", "Theme: GitHub"),
    ];
    for (name, content_type, licence) in vendored {
        let res = app.get_asset(name).await;
        assert_eq!(res.status, StatusCode::OK, "{name}");
        assert_eq!(res.header("content-type"), Some(content_type), "{name}");
        assert_eq!(res.header("cache-control"), Some("public, max-age=31536000, immutable"), "{name}");
        assert_eq!(res.header("x-content-type-options"), Some("nosniff"), "{name}");
        assert!(res.text.contains(licence), "{name} keeps its licence header");
    }
    let script = app.get_asset("console.js").await;
    assert_eq!(script.header("content-type"), Some("text/javascript; charset=utf-8"));
    assert_eq!(script.header("cache-control"), Some("no-cache"), "changes with the binary");
    assert!(script.text.contains("DOMPurify.sanitize"));
    app.get_asset("console.html").await.assert_error(404, "not_found");
    app.get_asset("LICENSE-marked").await.assert_error(404, "not_found");
    app.get_asset("..%2Fmod.rs").await.assert_error(404, "not_found");
}
