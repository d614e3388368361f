//! Keys: missing, wrong, revoked, foreign; the generated admin key; `auth.mode = "none"`.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use awc::http::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{ADMIN_KEY, Backend, SseReader, TestApp, auth_none, spawn_app, spawn_app_with};
use crate::on_both_backends;

on_both_backends!(
    no_key_or_a_wrong_key_is_401,
    a_revoked_key_is_401_and_other_keys_keep_working,
    a_user_key_naming_another_user_is_403,
    user_keys_cannot_manage_users,
    x_api_key_header_is_accepted,
    the_admin_key_is_generated_once_into_the_data_dir,
    auth_none_takes_the_user_from_the_request,
    a_revoked_keys_open_streams_end_and_other_keys_streams_go_on,
);

async fn no_key_or_a_wrong_key_is_401(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = app.create_user("alice").await;
    let none = app.request(Method::GET, "/api/v1/sessions", None, None).await;
    none.assert_error(401, "unauthorized");
    for wrong in ["nope", "cah_0123456789abcdef_0000000000000000000000000000000000000000000000000000000000000000"] {
        app.list_sessions(wrong, "").await.assert_error(401, "unauthorized");
    }
    // Right id, wrong secret.
    let forged = format!("{}{}", &key[..key.len() - 4], "0000");
    app.list_sessions(&forged, "").await.assert_error(401, "unauthorized");
    let scheme = app
        .client
        .get(format!("{}/api/v1/sessions", app.address))
        .insert_header(("Authorization", format!("Basic {key}")))
        .send()
        .await
        .unwrap();
    assert_eq!(scheme.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.list_sessions(&key, "").await.status, StatusCode::OK);
}

async fn a_revoked_key_is_401_and_other_keys_keep_working(backend: Backend) {
    let app = spawn_app(backend).await;
    let first = app.create_user("alice").await;
    let second = app.post_key(ADMIN_KEY, "alice").await;
    assert_eq!(second.status, StatusCode::CREATED);
    let second_key = second.body["api_key"].as_str().unwrap().to_string();
    let users = app.list_users(ADMIN_KEY).await;
    let first_id = users.body[0]["keys"][0]["key_id"].as_str().unwrap().to_string();
    // Used just before: the authenticator has it cached, and the revocation must reach that too.
    assert_eq!(app.list_sessions(&first, "").await.status, StatusCode::OK);

    assert_eq!(app.delete_key(ADMIN_KEY, "alice", &first_id).await.status, StatusCode::NO_CONTENT);
    app.list_sessions(&first, "").await.assert_error(401, "unauthorized");
    assert_eq!(app.list_sessions(&second_key, "").await.status, StatusCode::OK);
    app.delete_key(ADMIN_KEY, "alice", &first_id).await.assert_error(404, "not_found");
}

async fn a_user_key_naming_another_user_is_403(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.create_user("alice").await;
    app.create_user("bob").await;
    app.post_session(&alice, json!({"user_id": "bob"})).await.assert_error(403, "forbidden");
    app.list_sessions(&alice, "?user_id=bob").await.assert_error(403, "forbidden");
    let own = app.post_session(&alice, json!({"user_id": "alice"})).await;
    assert_eq!(own.status, StatusCode::CREATED);
}

async fn user_keys_cannot_manage_users(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.create_user("alice").await;
    app.post_user(&alice, json!({"user_id": "eve"})).await.assert_error(403, "forbidden");
    app.list_users(&alice).await.assert_error(403, "forbidden");
    app.delete_user(&alice, "alice").await.assert_error(403, "forbidden");
    app.post_key(&alice, "alice").await.assert_error(403, "forbidden");
    let me = app.get_me(&alice).await;
    assert_eq!(me.body, json!({"user_id": "alice", "role": "user"}));
    assert_eq!(app.get_me(ADMIN_KEY).await.body["role"], "admin");
}

async fn x_api_key_header_is_accepted(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = app.create_user("alice").await;
    let res =
        app.client.get(format!("{}/api/v1/me", app.address)).insert_header(("X-API-Key", key)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

async fn the_admin_key_is_generated_once_into_the_data_dir(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.auth.admin_key = None).await;
    let file = app.settings.data.dir.join("admin.key");
    let mode = std::fs::metadata(&file).expect("admin.key written").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let key = std::fs::read_to_string(&file).unwrap().trim().to_string();
    assert_eq!(app.list_users(&key).await.status, StatusCode::OK);
    // The configured test key is not valid here.
    app.list_users(ADMIN_KEY).await.assert_error(401, "unauthorized");

    let app = app.restart().await;
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), key, "not regenerated");
    assert_eq!(app.list_users(&key).await.status, StatusCode::OK);
}

async fn auth_none_takes_the_user_from_the_request(backend: Backend) {
    let app = spawn_app_with(backend, auth_none).await;
    let res = app.request(Method::POST, "/api/v1/sessions", None, Some(json!({"user_id": "alice"}))).await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text);
    let id = res.body["session_id"].as_str().unwrap();
    let missing_user = app.request(Method::POST, "/api/v1/sessions", None, Some(json!({}))).await;
    missing_user.assert_error(422, "validation_error");
    let listed = app.request(Method::GET, "/api/v1/sessions?user_id=alice", None, None).await;
    assert_eq!(listed.body, json!([id]));
    let got = app.request(Method::GET, &format!("/api/v1/sessions/{id}"), None, None).await;
    assert_eq!(got.status, StatusCode::OK);
    // No user management without keys.
    app.request(Method::GET, "/api/v1/users", None, None).await.assert_error(403, "forbidden");
}

/// The key id inside `cah_<key_id>_<secret>`.
fn key_id_of(key: &str) -> &str {
    key.split('_').nth(1).expect("a cah_ key")
}

/// Reads `stream` to its end; how long that took after `since` (panics past 10 s: the stream
/// did not end by itself).
pub async fn ends_within(stream: &mut SseReader, since: Instant) -> Duration {
    tokio::time::timeout(Duration::from_secs(10), stream.rest()).await.expect("the stream ends");
    since.elapsed()
}

async fn a_revoked_keys_open_streams_end_and_other_keys_streams_go_on(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = app.create_user("alice").await;
    let other = app.post_key(ADMIN_KEY, "alice").await.body["api_key"].as_str().unwrap().to_string();
    let id = app.create_session(&key, json!({})).await;
    let events = format!("/api/v1/sessions/{id}/events");
    let mut by_header = app.open_events(&events, Some(&key), None).await;
    let mut by_query = app.open_events(&format!("{events}?access_token={key}"), None, None).await;
    let mut by_other_key = app.open_events(&events, Some(&other), None).await;
    // A 20 s turn: without revocation none of these streams would end soon.
    let mut chat = app.open_chat_stream(&key, &id, "slow 200 100").await;
    chat.take(2).await;
    by_header.take(2).await;

    let revoked_at = Instant::now();
    let res = app.delete_key(ADMIN_KEY, "alice", key_id_of(&key)).await;
    assert_eq!(res.status, StatusCode::NO_CONTENT, "{}", res.text);
    for (name, stream) in
        [("events (header)", &mut by_header), ("events (access_token)", &mut by_query), ("chat/stream", &mut chat)]
    {
        let took = ends_within(stream, revoked_at).await;
        assert!(took < Duration::from_secs(3), "{name} ended {took:?} after the revocation");
    }
    // The session and the user's other key are untouched: their stream still gets the turn's frames.
    // 40 frames are 4 s of the turn: most were made after the revocation.
    assert_eq!(by_other_key.take(40).await.len(), 40);
    app.request(Method::GET, &events, Some(&key), None).await.assert_error(401, "unauthorized");
}

/// Failed authentication from one address: a burst of wrong keys, then 429 with Retry-After
/// for every key from there, a correct one too; the same correct key from another address works.
#[actix_web::test]
async fn wrong_keys_from_one_address_are_rate_limited_and_other_addresses_are_not() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.auth.failed_auth_burst = 5;
        s.auth.failed_auth_per_minute = 1;
    })
    .await;
    let key = app.create_user("alice").await;
    for _ in 0..5 {
        app.list_sessions("cah_0123456789abcdef_wrong", "").await.assert_error(401, "unauthorized");
    }
    let limited = app.list_sessions("cah_0123456789abcdef_wrong", "").await;
    limited.assert_error(429, "rate_limited");
    let wait: u64 = limited.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    app.list_sessions(&key, "").await.assert_error(429, "rate_limited");
    app.list_sessions(ADMIN_KEY, "").await.assert_error(429, "rate_limited");
    // Without a trusted proxy, X-Forwarded-For is the client's own word: it changes nothing.
    let spoofed = app.get_with(&app.client, "/api/v1/sessions", &key, Some("203.0.113.9")).await;
    assert_eq!(spoofed, StatusCode::TOO_MANY_REQUESTS);
    // Another client address (127.0.0.2 is loopback too) is not affected.
    let elsewhere = client_from("127.0.0.2".parse().unwrap());
    assert_eq!(app.get_with(&elsewhere, "/api/v1/sessions", &key, None).await, StatusCode::OK);
}

/// Behind a trusted proxy, the client is the address it forwards; the proxy itself is not limited.
#[actix_web::test]
async fn behind_a_trusted_proxy_the_forwarded_address_is_limited() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.auth.failed_auth_burst = 3;
        s.auth.failed_auth_per_minute = 1;
        s.api.trusted_proxies = vec!["127.0.0.0/8".into()];
    })
    .await;
    let key = app.create_user("alice").await;
    let (attacker, client) = (Some("192.0.2.1, 203.0.113.5"), Some("203.0.113.6"));
    for _ in 0..3 {
        assert_eq!(
            app.get_with(&app.client, "/api/v1/me", "cah_0123456789abcdef_x", attacker).await,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        app.get_with(&app.client, "/api/v1/me", "cah_0123456789abcdef_x", attacker).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(app.get_with(&app.client, "/api/v1/me", &key, attacker).await, StatusCode::TOO_MANY_REQUESTS);
    // Changing the spoofable left part does not help: the right-most untrusted entry counts.
    assert_eq!(
        app.get_with(&app.client, "/api/v1/me", &key, Some("198.51.100.1, 203.0.113.5")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(app.get_with(&app.client, "/api/v1/me", &key, client).await, StatusCode::OK);
    assert_eq!(app.get_with(&app.client, "/api/v1/me", &key, None).await, StatusCode::OK, "the proxy's own address");
}

fn client_from(source: IpAddr) -> awc::Client {
    awc::Client::builder()
        .connector(awc::Connector::new().local_address(source))
        .timeout(Duration::from_secs(30))
        .finish()
}

trait GetWith {
    async fn get_with(&self, client: &awc::Client, path: &str, key: &str, forwarded_for: Option<&str>) -> StatusCode;
}

impl GetWith for TestApp {
    async fn get_with(&self, client: &awc::Client, path: &str, key: &str, forwarded_for: Option<&str>) -> StatusCode {
        let mut req =
            client.get(format!("{}{path}", self.address)).insert_header(("Authorization", format!("Bearer {key}")));
        if let Some(xff) = forwarded_for {
            req = req.insert_header(("X-Forwarded-For", xff));
        }
        req.send().await.expect("answered").status()
    }
}
