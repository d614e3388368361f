//! `/api/v1/users` and their keys (admin only).

use std::time::{Duration, Instant};

use awc::http::{Method, StatusCode};
use serde_json::json;

use crate::auth::ends_within;
use crate::helpers::{ADMIN_KEY, Backend, all_gone, eventually, spawn_app};
use crate::on_both_backends;

on_both_backends!(
    create_user_shows_the_key_once_and_lists_only_key_ids,
    user_ids_are_validated_and_unique,
    keys_of_unknown_users_are_404,
    deleting_a_user_purges_it_and_a_user_created_again_starts_empty,
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

async fn deleting_a_user_purges_it_and_a_user_created_again_starts_empty(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({"subdir": "proj"})).await;
    app.chat(&key, &id, "remember me").await;
    std::fs::write(app.users_dir().join("alice/proj/notes.txt"), "old alice").unwrap();
    let mut events = app.open_events(&format!("/api/v1/sessions/{id}/events?access_token={key}"), None, None).await;
    let live = app.create_session(&key, json!({})).await;
    let mut chat = app.open_chat_stream(&key, &live, "slow 200 100").await;
    chat.take(2).await;
    let pids = app.cli_pids().await;
    assert_eq!(pids.len(), 2);

    let deleted_at = Instant::now();
    assert_eq!(app.delete_user(ADMIN_KEY, "alice").await.status, StatusCode::NO_CONTENT);
    for (name, stream) in [("events", &mut events), ("chat/stream", &mut chat)] {
        let took = ends_within(stream, deleted_at).await;
        assert!(took < Duration::from_secs(3), "{name} ended {took:?} after the deletion");
    }
    assert!(all_gone(&pids).await, "the user's CLIs are stopped");
    app.list_sessions(&key, "").await.assert_error(401, "unauthorized");
    assert_eq!(app.list_users(ADMIN_KEY).await.body, json!([]));

    let again = app.create_user("alice").await;
    assert_eq!(app.list_sessions(&again, "").await.body, json!([]), "no sessions");
    assert_eq!(app.list_sessions(ADMIN_KEY, "?user_id=alice").await.body, json!([]));
    app.get_session(&again, &id).await.assert_error(404, "session_not_found");
    app.get_session(ADMIN_KEY, &id).await.assert_error(404, "session_not_found");
    app.request(Method::GET, &format!("/api/v1/sessions/{id}/messages"), Some(ADMIN_KEY), None)
        .await
        .assert_error(404, "session_not_found");
    let keys = &app.list_users(ADMIN_KEY).await.body[0]["keys"];
    assert_eq!(keys.as_array().map(Vec::len), Some(1), "only the new key: {keys}");
    let dir = app.users_dir().join("alice");
    let leftovers: Vec<_> =
        std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(leftovers.is_empty(), "the new alice's directory is empty: {leftovers:?}");
    // The old directory, moved aside, is removed once the CLIs have stopped.
    let root = app.users_dir();
    let only_alice = || async { std::fs::read_dir(&root).unwrap().flatten().all(|e| e.file_name() == "alice") };
    assert!(eventually(Duration::from_secs(15), only_alice).await, "the old directory is removed");
}
