//! `/api/v1/sessions`: create, list, get, delete, resume, TTL, quotas, paths, restart.

use std::time::Duration;

use awc::http::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{ADMIN_KEY, Backend, assert_python_time, eventually, spawn_app, spawn_app_with};
use crate::on_both_backends;

on_both_backends!(
    create_returns_201_with_every_field,
    create_with_an_empty_body_works_in_the_users_own_directory,
    list_gives_ids_newest_first_and_details_with_filters_and_paging,
    list_parameters_are_validated,
    a_foreign_session_is_404_exactly_like_a_missing_one,
    delete_closes_and_keeps_the_row_purge_removes_it,
    resume_reopens_a_closed_session_and_refuses_an_expired_one,
    the_ttl_sweeper_expires_inactive_sessions,
    path_attacks_are_refused_and_create_nothing_outside,
    options_are_checked_against_the_overridable_list,
    metadata_must_be_an_object,
    per_user_and_global_caps_answer_429_with_retry_after,
    racing_creates_for_the_last_slot_never_both_succeed,
    a_tiny_memory_limit_answers_503_memory_pressure,
    a_session_survives_a_restart_unchanged,
    admin_creates_sessions_for_existing_users_only,
);

async fn create_returns_201_with_every_field(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = app.create_user("alice").await;
    let res = app.post_session(&key, json!({"subdir": "proj/one", "metadata": {"ticket": 7}})).await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text);
    let s = &res.body;
    let id = s["session_id"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok());
    assert_eq!(s["user_id"], "alice");
    assert_eq!(s["subdir"], "proj/one");
    let cwd = app.users_dir().join("alice/proj/one");
    assert_eq!(s["cwd"], cwd.to_str().unwrap());
    assert!(cwd.is_dir());
    assert_eq!(s["status"], "starting", "the CLI starts in the background");
    assert_eq!(s["message_count"], 0);
    assert_eq!(s["total_cost_usd"], 0.0);
    assert_eq!(s["usage"], json!({"input_tokens": 0, "output_tokens": 0}));
    assert_eq!(s["metadata"], json!({"ticket": 7}));
    assert_eq!(s["options"], json!({}));
    for field in ["created_at", "last_active_at"] {
        let t = s[field].as_str().unwrap();
        assert_python_time(t);
    }
    app.wait_active(&key, id).await;
    let mut got = app.get_session(&key, id).await.body;
    got["status"] = "starting".into();
    assert_eq!(got, res.body, "nothing but the status changed: no model turn was spent");
}

async fn create_with_an_empty_body_works_in_the_users_own_directory(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = app.create_user("bob").await;
    let res = app.request_raw(Method::POST, "/api/v1/sessions", Some(&key), None, Vec::new()).await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text);
    assert_eq!(res.body["subdir"], "");
    assert_eq!(res.body["cwd"], app.users_dir().join("bob").to_str().unwrap());
}

async fn list_gives_ids_newest_first_and_details_with_filters_and_paging(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(app.create_session(&alice, json!({"subdir": format!("p{i}")})).await);
        actix_web::rt::time::sleep(Duration::from_millis(3)).await;
    }
    let bobs = app.create_session(&bob, json!({})).await;
    ids.reverse();

    let res = app.list_sessions(&alice, "").await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.body, json!(ids), "only alice's, newest first");

    app.delete_session(&alice, &ids[1], "").await;
    let closed = app.list_sessions(&alice, "?detail=true&status=closed").await;
    let closed = closed.body.as_array().unwrap();
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0]["session_id"], ids[1].as_str());
    assert_eq!(closed[0]["status"], "closed");

    let page = app.list_sessions(&alice, "?limit=1&offset=1").await;
    assert_eq!(page.body, json!([ids[1]]));

    let all = app.list_sessions(ADMIN_KEY, "").await;
    assert_eq!(all.body.as_array().unwrap().len(), 4, "admin sees everyone");
    let only_bob = app.list_sessions(ADMIN_KEY, "?user_id=bob").await;
    assert_eq!(only_bob.body, json!([bobs]));
    let own = app.list_sessions(&alice, "?user_id=alice&detail=true").await;
    assert_eq!(own.body.as_array().unwrap().len(), 3);
}

async fn list_parameters_are_validated(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = app.create_user("alice").await;
    app.list_sessions(&key, "?limit=0").await.assert_error(422, "validation_error");
    app.list_sessions(&key, "?limit=1001").await.assert_error(422, "validation_error");
    app.list_sessions(&key, "?offset=-1").await.assert_error(422, "validation_error");
    app.list_sessions(&key, "?status=sleeping").await.assert_error(422, "validation_error");
    app.list_sessions(&key, "?limit=many").await.assert_error(422, "validation_error");
}

async fn a_foreign_session_is_404_exactly_like_a_missing_one(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.create_user("alice").await;
    let mallory = app.create_user("mallory").await;
    let id = app.create_session(&alice, json!({})).await;
    let missing = uuid::Uuid::new_v4().to_string();
    for target in [id.as_str(), missing.as_str(), "not-a-uuid"] {
        let get = app.get_session(&mallory, target).await;
        get.assert_error(404, "session_not_found");
        assert_eq!(get.body["error"]["message"], "Session not found");
        app.delete_session(&mallory, target, "").await.assert_error(404, "session_not_found");
        app.delete_session(&mallory, target, "?purge=true").await.assert_error(404, "session_not_found");
        app.resume_session(&mallory, target).await.assert_error(404, "session_not_found");
    }
    // Untouched for its owner.
    app.wait_active(&alice, &id).await;
}

async fn delete_closes_and_keeps_the_row_purge_removes_it(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({"subdir": "keep"})).await;
    let res = app.delete_session(&key, &id, "").await;
    assert_eq!(res.status, StatusCode::NO_CONTENT);
    let closed = app.get_session(&key, &id).await;
    assert_eq!(closed.body["status"], "closed");
    // Closing twice is harmless.
    assert_eq!(app.delete_session(&key, &id, "").await.status, StatusCode::NO_CONTENT);

    let purged = app.delete_session(&key, &id, "?purge=true").await;
    assert_eq!(purged.status, StatusCode::NO_CONTENT);
    app.get_session(&key, &id).await.assert_error(404, "session_not_found");
    app.resume_session(&key, &id).await.assert_error(404, "session_not_found");
    assert!(app.users_dir().join("alice/keep").is_dir(), "the working directory is never deleted");
}

async fn resume_reopens_a_closed_session_and_refuses_an_expired_one(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.session.ttl = 3).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    app.delete_session(&key, &id, "").await;
    let resumed = app.resume_session(&key, &id).await;
    assert_eq!(resumed.status, StatusCode::OK, "{}", resumed.text);
    assert_eq!(resumed.body["status"], "starting");
    app.wait_active(&key, &id).await;
    // Resuming a live session changes nothing.
    let again = app.resume_session(&key, &id).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["status"], "active");

    actix_web::rt::time::sleep(Duration::from_millis(3300)).await;
    app.resume_session(&key, &id).await.assert_error(410, "session_expired");
    let expired = app.get_session(&key, &id).await;
    assert_eq!(expired.body["status"], "expired");
    // A closed session is not subject to the TTL: it can be resumed days later.
    let other = app.create_session(&key, json!({})).await;
    app.delete_session(&key, &other, "").await;
    actix_web::rt::time::sleep(Duration::from_millis(3300)).await;
    assert_eq!(app.resume_session(&key, &other).await.status, StatusCode::OK);
}

async fn the_ttl_sweeper_expires_inactive_sessions(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.session.ttl = 1).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    // The sweeper, not a read, expires it: watch through the listing, which does not touch rows.
    let expired = eventually(Duration::from_secs(5), || async {
        let res = app.list_sessions(&key, "?status=expired").await;
        res.body.as_array().is_some_and(|a| a.iter().any(|v| v == id.as_str()))
    })
    .await;
    assert!(expired, "the session expired within the sweep interval");
    // Its live slot is given back.
    let released =
        eventually(Duration::from_secs(5), || async { app.get_health().await.body["in_memory_clients"] == 0 }).await;
    assert!(released, "the expired session no longer holds a live slot");
}

async fn path_attacks_are_refused_and_create_nothing_outside(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = app.create_user("alice").await;
    for subdir in ["..", "../bob", "a/../../x", "/etc", "/tmp/evil", "a\u{0}b", "x\ny"] {
        let res = app.post_session(&key, json!({ "subdir": subdir })).await;
        res.assert_error(400, "invalid_path");
    }
    // A symlink planted inside the user's directory that points outside it.
    app.create_session(&key, json!({})).await;
    let outside = app.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let alice_dir = app.users_dir().join("alice");
    std::os::unix::fs::symlink(&outside, alice_dir.join("escape")).unwrap();
    for subdir in ["escape", "escape/deeper"] {
        app.post_session(&key, json!({ "subdir": subdir })).await.assert_error(400, "invalid_path");
    }
    assert!(!outside.join("deeper").exists(), "nothing was created through the link");
    // A link to another user's directory is outside too.
    let bob = app.create_user("bob").await;
    app.create_session(&bob, json!({"subdir": "secret"})).await;
    std::os::unix::fs::symlink(app.users_dir().join("bob"), alice_dir.join("to-bob")).unwrap();
    app.post_session(&key, json!({"subdir": "to-bob/secret"})).await.assert_error(400, "invalid_path");
    // A relative link that stays inside is fine; an absolute one cannot be resolved beneath
    // the user's directory handle (RESOLVE_BENEATH) and is refused even if it points inside.
    std::fs::create_dir(alice_dir.join("real")).unwrap();
    std::os::unix::fs::symlink(alice_dir.join("real"), alice_dir.join("absolute")).unwrap();
    app.post_session(&key, json!({"subdir": "absolute/sub"})).await.assert_error(400, "invalid_path");
    std::os::unix::fs::symlink("real", alice_dir.join("alias")).unwrap();
    let res = app.post_session(&key, json!({"subdir": "alias/sub"})).await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text);
    assert_eq!(res.body["cwd"], alice_dir.join("real/sub").to_str().unwrap());
    // A user_id that is not a name.
    let res = app.post_session(ADMIN_KEY, json!({"user_id": "../root"})).await;
    res.assert_error(422, "validation_error");
    assert_eq!(res.body["error"]["fields"][0]["field"], "user_id");
}

async fn options_are_checked_against_the_overridable_list(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.session.overridable = vec!["model".into(), "max_turns".into()]).await;
    let key = app.create_user("alice").await;
    let res = app.post_session(&key, json!({"options": {"model": "claude-sonnet-4-5", "max_turns": 5}})).await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text);
    assert_eq!(res.body["options"], json!({"model": "claude-sonnet-4-5", "max_turns": 5}));
    app.post_session(&key, json!({"options": {"system_prompt": "x"}})).await.assert_error(403, "forbidden");
    let unknown = app.post_session(&key, json!({"options": {"cwd": "/"}})).await;
    unknown.assert_error(422, "validation_error");
    assert_eq!(unknown.body["error"]["fields"][0]["field"], "options.cwd");
    app.post_session(&key, json!({"options": {"max_turns": -1}})).await.assert_error(422, "validation_error");
    app.post_session(&key, json!({"options": "fast"})).await.assert_error(422, "validation_error");
    app.post_session(&key, json!({"surprise": 1})).await.assert_error(422, "validation_error");
}

async fn metadata_must_be_an_object(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = app.create_user("alice").await;
    let res = app.post_session(&key, json!({"metadata": [1, 2]})).await;
    res.assert_error(422, "validation_error");
    assert_eq!(res.body["error"]["fields"][0]["field"], "metadata");
    let big = "x".repeat(20_000);
    app.post_session(&key, json!({"metadata": {"big": big}})).await.assert_error(422, "validation_error");
}

async fn per_user_and_global_caps_answer_429_with_retry_after(backend: Backend) {
    let app = spawn_app_with(backend, |s| {
        s.api.max_sessions_per_user = 2;
        s.api.max_sessions = 3;
    })
    .await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    let first = app.create_session(&alice, json!({})).await;
    app.create_session(&alice, json!({})).await;
    let refused = app.post_session(&alice, json!({})).await;
    refused.assert_error(429, "quota_exceeded");
    assert!(refused.header("retry-after").is_some());

    app.create_session(&bob, json!({})).await;
    let global = app.post_session(&bob, json!({})).await;
    global.assert_error(429, "quota_exceeded");
    assert!(global.header("retry-after").is_some());

    // Closing frees a slot; resuming takes it again and counts like a create.
    app.delete_session(&alice, &first, "").await;
    let id = app.create_session(&bob, json!({})).await;
    app.resume_session(&alice, &first).await.assert_error(429, "quota_exceeded");
    app.delete_session(&bob, &id, "").await;
    assert_eq!(app.resume_session(&alice, &first).await.status, StatusCode::OK);
}

async fn racing_creates_for_the_last_slot_never_both_succeed(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.api.max_sessions_per_user = 1).await;
    let key = app.create_user("alice").await;
    let attempts = (0..12).map(|_| app.post_session(&key, json!({})));
    let results = futures_util::future::join_all(attempts).await;
    let created = results.iter().filter(|r| r.status == StatusCode::CREATED).count();
    let refused = results.iter().filter(|r| r.code() == "quota_exceeded").count();
    assert_eq!(created, 1, "exactly one create wins the last slot");
    assert_eq!(refused, 11);
    let listed = app.list_sessions(&key, "").await;
    assert_eq!(listed.body.as_array().unwrap().len(), 1, "no half-created session left behind");
}

async fn a_tiny_memory_limit_answers_503_memory_pressure(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.api.memory_limit_mb = 1).await;
    let key = app.create_user("alice").await;
    let res = app.post_session(&key, json!({})).await;
    res.assert_error(503, "memory_pressure");
    assert!(res.header("retry-after").is_some());
    assert_eq!(app.list_sessions(&key, "").await.body, json!([]));
}

async fn a_session_survives_a_restart_unchanged(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({"subdir": "p", "metadata": {"a": [1, 2]}})).await;
    let closed_id = app.create_session(&key, json!({})).await;
    app.delete_session(&key, &closed_id, "").await;
    app.wait_active(&key, &id).await;
    let before = app.get_session(&key, &id).await.body;
    let closed_before = app.get_session(&key, &closed_id).await.body;

    let app = app.restart().await;
    let after = app.get_session(&key, &id).await;
    assert_eq!(after.status, StatusCode::OK, "{}", after.text);
    let mut after = after.body;
    // No CLI survives a restart: a live session comes back idle (it resumes on its next message).
    assert_eq!(after["status"], "idle");
    after["status"] = before["status"].clone();
    assert_eq!(after, before, "every other field is unchanged");
    assert_eq!(app.get_session(&key, &closed_id).await.body, closed_before, "closed stays closed");
    assert_eq!(app.resume_session(&key, &id).await.body["status"], "starting");
    app.wait_active(&key, &id).await;
}

async fn admin_creates_sessions_for_existing_users_only(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_user("alice").await;
    let res = app.post_session(ADMIN_KEY, json!({"user_id": "alice"})).await;
    assert_eq!(res.status, StatusCode::CREATED);
    assert_eq!(res.body["user_id"], "alice");
    app.post_session(ADMIN_KEY, json!({"user_id": "ghost"})).await.assert_error(404, "user_not_found");
    let res = app.post_session(ADMIN_KEY, json!({})).await;
    res.assert_error(422, "validation_error");
    assert_eq!(res.body["error"]["fields"][0]["field"], "user_id");
}

#[actix_web::test]
async fn memory_storage_serves_sessions_and_keeps_nothing_on_disk() {
    let app = spawn_app(Backend::Memory).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    app.wait_active(&key, &id).await;
    assert_eq!(app.get_health().await.body["storage_type"], "memory");
    assert!(!app.settings.session.sqlite_path.exists());
}
