//! Keys: missing, wrong, revoked, foreign; the generated admin key; `auth.mode = "none"`.

use std::os::unix::fs::PermissionsExt;

use awc::http::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{ADMIN_KEY, Backend, auth_none, spawn_app, spawn_app_with};
use crate::on_both_backends;

on_both_backends!(
    no_key_or_a_wrong_key_is_401,
    a_revoked_key_is_401_and_other_keys_keep_working,
    a_user_key_naming_another_user_is_403,
    user_keys_cannot_manage_users,
    x_api_key_header_is_accepted,
    the_admin_key_is_generated_once_into_the_data_dir,
    auth_none_takes_the_user_from_the_request,
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
