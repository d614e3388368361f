//! `/api/v1/users` and their keys (admin only).

use awc::http::StatusCode;
use serde_json::json;

use crate::helpers::{ADMIN_KEY, Backend, spawn_app};
use crate::on_both_backends;

on_both_backends!(
    create_user_shows_the_key_once_and_lists_only_key_ids,
    user_ids_are_validated_and_unique,
    keys_of_unknown_users_are_404,
    deleting_a_user_closes_its_sessions_and_revokes_its_keys,
);

async fn create_user_shows_the_key_once_and_lists_only_key_ids(backend: Backend) {
    let app = spawn_app(backend).await;
    let res = app.post_user(ADMIN_KEY, json!({"user_id": "alice"})).await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text);
    assert_eq!(res.body["user_id"], "alice");
    let key = res.body["api_key"].as_str().unwrap();
    let key_id = res.body["key_id"].as_str().unwrap();
    assert!(key.starts_with("cah_") && key.contains(key_id));
    let list = app.list_users(ADMIN_KEY).await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.body[0]["user_id"], "alice");
    assert_eq!(list.body[0]["keys"][0]["key_id"], key_id);
    assert_eq!(list.body[0]["keys"][0]["revoked_at"], serde_json::Value::Null);
    assert!(!list.text.contains(key), "a key is never shown again");
}

async fn user_ids_are_validated_and_unique(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_user("alice").await;
    app.post_user(ADMIN_KEY, json!({"user_id": "alice"})).await.assert_error(409, "user_exists");
    for bad in ["", "a/b", "..", "with space", &"x".repeat(65)] {
        app.post_user(ADMIN_KEY, json!({ "user_id": bad })).await.assert_error(422, "validation_error");
    }
    app.post_user(ADMIN_KEY, json!({})).await.assert_error(422, "validation_error");
}

async fn keys_of_unknown_users_are_404(backend: Backend) {
    let app = spawn_app(backend).await;
    app.post_key(ADMIN_KEY, "ghost").await.assert_error(404, "user_not_found");
    app.delete_key(ADMIN_KEY, "ghost", "0123456789abcdef").await.assert_error(404, "user_not_found");
    app.delete_user(ADMIN_KEY, "ghost").await.assert_error(404, "user_not_found");
    app.create_user("alice").await;
    app.delete_key(ADMIN_KEY, "alice", "0123456789abcdef").await.assert_error(404, "not_found");
}

async fn deleting_a_user_closes_its_sessions_and_revokes_its_keys(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    assert_eq!(app.delete_user(ADMIN_KEY, "alice").await.status, StatusCode::NO_CONTENT);
    app.list_sessions(&key, "").await.assert_error(401, "unauthorized");
    let session = app.get_session(ADMIN_KEY, &id).await;
    assert_eq!(session.body["status"], "closed", "history stays, the session is closed");
    assert_eq!(app.list_users(ADMIN_KEY).await.body, json!([]));
}
