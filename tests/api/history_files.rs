//! The stored conversation (`/messages`) and the files of a session (`/files`).

use awc::http::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{Backend, assert_python_time, spawn_app, spawn_app_with};
use crate::on_both_backends;

on_both_backends!(
    history_is_stored_paginated_and_survives_a_restart,
    files_are_listed_downloaded_uploaded_and_deleted_inside_the_session,
    file_path_attacks_are_refused,
);

async fn history_is_stored_paginated_and_survives_a_restart(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    app.chat(&key, &id, "first").await;
    app.chat(&key, &id, "tool").await;
    let all = crate::helpers::eventually(std::time::Duration::from_secs(5), || async {
        app.request(Method::GET, &format!("/api/v1/sessions/{id}/messages"), Some(&key), None)
            .await
            .body
            .as_array()
            .map(Vec::len)
            == Some(4)
    })
    .await;
    assert!(all, "two turns, four messages");
    let res = app.request(Method::GET, &format!("/api/v1/sessions/{id}/messages"), Some(&key), None).await;
    let m = res.body.as_array().unwrap();
    let roles: Vec<&str> = m.iter().map(|x| x["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant", "user", "assistant"], "oldest first");
    assert_eq!(m[0]["text"], "first");
    assert_eq!(m[1]["text"], "echo: first");
    assert_eq!(m[0]["turn_id"], m[1]["turn_id"]);
    assert_ne!(m[1]["turn_id"], m[3]["turn_id"]);
    assert_eq!(m[3]["tool_calls"][0]["tool"], "Bash");
    assert_eq!(m[3]["tool_calls"][0]["output"], "hi");
    assert!((m[3]["cost_usd"].as_f64().unwrap() - 0.001).abs() < 1e-9);
    assert!(m[0]["cost_usd"].is_null());
    assert_python_time(m[0]["created_at"].as_str().unwrap());

    let page = app.request(Method::GET, &format!("/api/v1/sessions/{id}/messages?limit=2"), Some(&key), None).await;
    assert_eq!(page.body.as_array().unwrap(), &m[2..4], "the latest two");
    let before = m[2]["id"].as_i64().unwrap();
    let older = app
        .request(Method::GET, &format!("/api/v1/sessions/{id}/messages?limit=2&before={before}"), Some(&key), None)
        .await;
    assert_eq!(older.body.as_array().unwrap(), &m[0..2], "the two before the cursor");
    app.request(Method::GET, &format!("/api/v1/sessions/{id}/messages?limit=0"), Some(&key), None)
        .await
        .assert_error(422, "validation_error");
    let mallory = app.create_user("mallory").await;
    app.request(Method::GET, &format!("/api/v1/sessions/{id}/messages"), Some(&mallory), None)
        .await
        .assert_error(404, "session_not_found");

    let app = app.restart().await;
    let after = app.request(Method::GET, &format!("/api/v1/sessions/{id}/messages"), Some(&key), None).await;
    assert_eq!(after.body, res.body, "identical after a restart");
}

async fn files_are_listed_downloaded_uploaded_and_deleted_inside_the_session(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.files.max_upload_mb = 1).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({"subdir": "proj"})).await;
    let dir = app.users_dir().join("alice/proj");

    let up = app.files(&key, Method::PUT, &id, "notes/today.txt", Some(b"buy milk")).await;
    assert_eq!(up.status, StatusCode::CREATED, "{}", up.text);
    assert_eq!(std::fs::read_to_string(dir.join("notes/today.txt")).unwrap(), "buy milk");
    app.files(&key, Method::PUT, &id, "data.json", Some(b"{\"a\":1}")).await;

    let root = app.files(&key, Method::GET, &id, "", None).await;
    assert_eq!(root.status, StatusCode::OK);
    let names: Vec<&str> = root.body.as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["data.json", "notes"]);
    assert_eq!(root.body[1]["kind"], "dir");
    assert_eq!(root.body[0]["kind"], "file");
    assert_eq!(root.body[0]["size"], 7);
    assert!(root.body[0]["modified_at"].is_string());

    let txt = app.files(&key, Method::GET, &id, "notes/today.txt", None).await;
    assert_eq!(txt.status, StatusCode::OK);
    assert_eq!(txt.text, "buy milk");
    assert_eq!(txt.header("content-type"), Some("text/plain"));
    assert!(txt.header("content-disposition").unwrap().starts_with("attachment"));
    assert_eq!(txt.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(
        app.files(&key, Method::GET, &id, "data.json", None).await.header("content-type"),
        Some("application/json")
    );

    // Replacing a file and the size limit: an oversized upload leaves the old file and no temp file.
    let big = vec![b'x'; 1024 * 1024 + 1];
    app.files(&key, Method::PUT, &id, "data.json", Some(&big)).await.assert_error(413, "payload_too_large");
    assert_eq!(std::fs::read_to_string(dir.join("data.json")).unwrap(), "{\"a\":1}");
    assert!(std::fs::read_dir(&dir).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().starts_with(".upload")));

    assert_eq!(app.files(&key, Method::DELETE, &id, "notes/today.txt", None).await.status, StatusCode::NO_CONTENT);
    app.files(&key, Method::GET, &id, "notes/today.txt", None).await.assert_error(404, "not_found");
    app.files(&key, Method::DELETE, &id, "notes/today.txt", None).await.assert_error(404, "not_found");
    app.files(&key, Method::PUT, &id, "notes", Some(b"x")).await.assert_error(400, "invalid_path");

    let mallory = app.create_user("mallory").await;
    app.files(&mallory, Method::GET, &id, "", None).await.assert_error(404, "session_not_found");
    app.files(&mallory, Method::PUT, &id, "x.txt", Some(b"x")).await.assert_error(404, "session_not_found");
}

async fn file_path_attacks_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({"subdir": "proj"})).await;
    let bob = app.create_user("bob").await;
    app.create_session(&bob, json!({})).await;
    std::fs::write(app.users_dir().join("bob/secret.txt"), "bob's").unwrap();
    let dir = app.users_dir().join("alice/proj");

    for path in ["../../bob/secret.txt", "..", "a/../../x", "/etc/passwd", "/tmp/x", "a\u{0}b"] {
        app.files(&key, Method::GET, &id, path, None).await.assert_error(400, "invalid_path");
        app.files(&key, Method::PUT, &id, path, Some(b"x")).await.assert_error(400, "invalid_path");
        app.files(&key, Method::DELETE, &id, path, None).await.assert_error(400, "invalid_path");
    }
    // A symlink planted in the directory, pointing out of it.
    std::os::unix::fs::symlink(app.users_dir().join("bob"), dir.join("to-bob")).unwrap();
    app.files(&key, Method::GET, &id, "to-bob/secret.txt", None).await.assert_error(400, "invalid_path");
    app.files(&key, Method::GET, &id, "to-bob", None).await.assert_error(400, "invalid_path");
    app.files(&key, Method::PUT, &id, "to-bob/evil.txt", Some(b"x")).await.assert_error(400, "invalid_path");
    assert!(!app.users_dir().join("bob/evil.txt").exists());
    // A symlink the agent made itself (through its Bash tool).
    let made = app.chat(&key, &id, &format!("link leak {}", app.users_dir().join("bob/secret.txt").display())).await;
    assert_eq!(made.body["text"], "Linked leak.", "{}", made.text);
    app.files(&key, Method::GET, &id, "leak", None).await.assert_error(400, "invalid_path");
    app.files(&key, Method::PUT, &id, "leak", Some(b"overwrite")).await.assert_error(400, "invalid_path");
    assert_eq!(std::fs::read_to_string(app.users_dir().join("bob/secret.txt")).unwrap(), "bob's");
    // Listed as a link (never followed); deleting it removes the link only.
    let listing = app.files(&key, Method::GET, &id, "", None).await;
    let leak = listing.body.as_array().unwrap().iter().find(|e| e["name"] == "leak").unwrap();
    assert_eq!(leak["kind"], "symlink");
    assert_eq!(app.files(&key, Method::DELETE, &id, "leak", None).await.status, StatusCode::NO_CONTENT);
    assert!(app.users_dir().join("bob/secret.txt").exists());
}
