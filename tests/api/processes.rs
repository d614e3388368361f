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

/// Idle CLIs yield the CPU to those a client waits for (`cli.idle_nice`), their children too;
/// a turn gets full priority back before its message is written.
#[actix_web::test]
async fn an_idle_cli_runs_niced_and_a_turn_at_full_priority() {
    use claude_agent_http::cli::priority::nice_of;
    let app = spawn_app(Backend::Sqlite).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    let res = app.chat(&key, &id, "spawn").await;
    let grandchild = grandchild_pid(res.body["text"].as_str().unwrap());
    let cli = app.cli_pids().await[0];
    assert_eq!((nice_of(cli), nice_of(grandchild)), (Some(19), Some(19)), "idle after its turn");
    let stream = {
        let (app, key, id) = (&app, key.clone(), id.clone());
        async move { app.chat_stream(&key, json!({"session_id": id, "message": "slow 10 100"})).await }
    };
    let probe = async {
        let busy =
            crate::helpers::eventually(std::time::Duration::from_secs(5), || async { nice_of(cli) == Some(0) }).await;
        assert!(busy, "full priority during the turn");
    };
    let (done, ()) = futures_util::join!(stream, probe);
    assert_eq!(done.last()["type"], "done");
    assert_eq!(nice_of(cli), Some(19), "idle again once the turn ended");
    app.delete_session(&key, &id, "").await;
    assert!(all_gone(&[cli, grandchild]).await);
}
