//! No process outlives its session or the server: checked in /proc, not in our bookkeeping.

use serde_json::json;

use crate::helpers::{Backend, all_gone, process_alive, spawn_app};

/// The pid the fake CLI reports for the grandchild it leaves running.
fn grandchild_pid(text: &str) -> u32 {
    text.strip_prefix("spawned ").and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no pid in {text:?}"))
}

#[actix_web::test]
async fn closing_a_session_leaves_no_process() {
    let app = spawn_app(Backend::Sqlite).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    let res = app.chat(&key, &id, "spawn").await;
    let grandchild = grandchild_pid(res.body["text"].as_str().unwrap());
    let mut pids = app.cli_pids().await;
    assert_eq!(pids.len(), 1);
    assert!(process_alive(pids[0]) && process_alive(grandchild));
    pids.push(grandchild);
    app.delete_session(&key, &id, "").await;
    assert!(all_gone(&pids).await, "CLI and its grandchild are gone after close");
}

#[actix_web::test]
async fn a_crash_that_left_a_grandchild_leaves_no_process() {
    let app = spawn_app(Backend::Sqlite).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    let res = app.chat(&key, &id, "spawn").await;
    let mut pids = vec![grandchild_pid(res.body["text"].as_str().unwrap())];
    pids.extend(app.cli_pids().await);
    app.chat(&key, &id, "crash").await.assert_error(502, "cli_failed");
    assert!(all_gone(&pids).await, "the crashed CLI's process group was killed");
}

#[actix_web::test]
async fn server_shutdown_leaves_no_process_and_sessions_resume_afterwards() {
    let mut app = spawn_app(Backend::Sqlite).await;
    let key = app.create_user("alice").await;
    let mut pids = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = app.create_session(&key, json!({})).await;
        let res = app.chat(&key, &id, "spawn").await;
        pids.push(grandchild_pid(res.body["text"].as_str().unwrap()));
        ids.push(id);
    }
    pids.extend(app.cli_pids().await);
    assert_eq!(pids.len(), 6);
    app.stop().await;
    assert!(pids.iter().all(|p| !process_alive(*p)), "every process was reaped before the server returned");
    let app = app.restart().await;
    for id in &ids {
        assert_eq!(app.get_session(&key, id).await.body["status"], "idle");
        let res = app.chat(&key, id, "history").await;
        assert_eq!(res.body["text"], "spawn", "{}", res.text);
    }
}
