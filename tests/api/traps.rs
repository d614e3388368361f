//! Small traps: the body limit above 256 KiB, a CLI's stderr that is not UTF-8, corrupted
//! stored options, one log line per eviction, and processes that left their CLI's group.

use std::path::PathBuf;
use std::time::Duration;

use awc::http::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{Backend, TestApp, all_gone, eventually, fake_cli_path, process_alive, spawn_app_with};
use crate::on_both_backends;
use crate::shutdown::{Service, user};

on_both_backends!(the_body_limit_is_max_body_kb_also_above_256_kib);

/// Writes `body` as an executable `#!/bin/sh` script in a fresh directory and returns its path.
/// A copy of the fake CLI is there too, as `$FAKE`: the sandbox lets a CLI run what is beside
/// it (and the system's tools), not what is elsewhere.
fn script(body: &str) -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let fake = dir.path().join("fake_claude");
    std::fs::copy(fake_cli_path(), &fake).unwrap();
    let body = body.replace("$FAKE", &fake.display().to_string());
    let path = dir.path().join("claude");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, path)
}

async fn the_body_limit_is_max_body_kb_also_above_256_kib(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.api.max_body_kb = 1024).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    // 100,000 CJK characters: the longest message allowed, ~300 KB of UTF-8.
    let message = "漢".repeat(100_000);
    let body = serde_json::to_vec(&json!({"session_id": id, "message": message})).unwrap();
    assert!(body.len() > 256 * 1024 && body.len() < 1024 * 1024);
    let res = app.request_raw(Method::POST, "/api/v1/chat", Some(&key), Some("application/json"), body).await;
    assert_eq!(res.status, StatusCode::OK, "{}", &res.text[..res.text.len().min(300)]);
    assert_eq!(res.body["text"].as_str().unwrap().chars().count(), "echo: ".len() + 100_000);

    let over = serde_json::to_vec(&json!({"session_id": id, "message": "a".repeat(1024 * 1024)})).unwrap();
    let res = app.request_raw(Method::POST, "/api/v1/chat", Some(&key), Some("application/json"), over.clone()).await;
    res.assert_error(413, "payload_too_large");
    // Chunked, so no Content-Length announces it: the limit holds while reading.
    let chunks = over.chunks(64 * 1024).map(|c| Ok::<_, std::io::Error>(actix_web::web::Bytes::copy_from_slice(c)));
    let mut res = app
        .client
        .post(format!("{}/api/v1/chat", app.address))
        .insert_header(("Authorization", format!("Bearer {key}")))
        .insert_header(("Content-Type", "application/json"))
        .send_stream(futures_util::stream::iter(chunks.collect::<Vec<_>>()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let err: serde_json::Value = serde_json::from_slice(&res.body().await.unwrap()).unwrap();
    assert_eq!(err["error"]["code"], "payload_too_large");
}

/// A CLI that first writes bytes that are not UTF-8 and then an endless-looking line of
/// 300 KB to stderr: if the drain stopped at the bad byte, the write would block on the full
/// pipe and the CLI would never start.
#[actix_web::test]
async fn a_cli_writing_non_utf8_and_long_lines_to_stderr_keeps_working() {
    let (_dir, cli) = script(
        "printf 'bad \\377\\376 bytes\\n' >&2\nhead -c 300000 /dev/zero | tr '\\0' x >&2\nprintf '\\n' >&2\nexec $FAKE \"$@\"",
    );
    let app = spawn_app_with(Backend::Sqlite, |s| s.cli.path = cli.display().to_string()).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    let res = app.post_chat(&key, json!({"session_id": id, "message": "hello", "timeout": 20})).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    assert_eq!(res.body["text"], "echo: hello");
}

async fn corrupt_options(app: &TestApp, session_id: &str) {
    use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
    let url = app.settings.session.database_url.clone().expect("a PostgreSQL app");
    let mut conn = AsyncPgConnection::establish(&url).await.unwrap();
    let sql = format!("UPDATE sessions SET options = '{{\"permission_mode\": \"def' WHERE session_id = '{session_id}'");
    conn.batch_execute(&sql).await.unwrap();
}

/// Options that no longer parse must not start the CLI with the service defaults (which may
/// be `bypassPermissions`): the launch is refused.
#[actix_web::test]
async fn corrupted_stored_options_refuse_the_launch() {
    let app = spawn_app_with(Backend::Postgres, |_| {}).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({"options": {"permission_mode": "default"}})).await;
    assert_eq!(app.chat(&key, &id, "hi").await.status, StatusCode::OK);
    corrupt_options(&app, &id).await;
    let app = app.restart().await;
    let res = app.post_chat(&key, json!({"session_id": id, "message": "hi again"})).await;
    res.assert_error(502, "cli_failed");
    assert!(res.code() == "cli_failed" && res.text.contains("stored options"), "{}", res.text);
    assert!(app.cli_pids().await.is_empty(), "no CLI was started");
}

/// "Always allow" while the stored options are corrupted must not rewrite them as
/// `{allowed_tools}`: that would turn the next launch, which fails closed, into one on the
/// service defaults (`bypassPermissions` here).
#[actix_web::test]
async fn always_allow_does_not_heal_corrupted_options_into_the_defaults() {
    use claude_agent_http::settings::PermissionMode;
    let app =
        spawn_app_with(Backend::Postgres, |s| s.defaults.permission_mode = PermissionMode::BypassPermissions).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({"options": {"permission_mode": "default"}})).await;
    let mut follower = app.open_events(&format!("/api/v1/sessions/{id}/events"), Some(&key), None).await;
    app.post_message(&key, &id, "tool").await;
    let request = loop {
        let (_, frame) = follower.next_frame().await.expect("a permission request");
        if frame["type"] == "permission_request" {
            break frame;
        }
    };
    corrupt_options(&app, &id).await;
    let rid = request["request_id"].as_str().unwrap();
    let path = format!("/api/v1/sessions/{id}/permissions/{rid}");
    let res = app.request(Method::POST, &path, Some(&key), Some(json!({"behavior": "allow", "always": true}))).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    follower.until_turn_end().await;
    let app = app.restart().await;
    let res = app.post_chat(&key, json!({"session_id": id, "message": "hi again"})).await;
    res.assert_error(502, "cli_failed");
    assert!(app.cli_pids().await.is_empty(), "no CLI was started on the defaults");
}

/// The memory sample and the idle sweep run in the same tick here (both every second): the
/// eviction is still asked and logged once.
#[actix_web::test]
async fn an_eviction_is_logged_once() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("CLAUDE_AGENT_API__IDLE_SESSION_TIMEOUT", "4"), ("CLAUDE_AGENT_MEMORY__CHECK_INTERVAL", "1")];
    let service = Service::start_with(dir.path(), &fake_cli_path(), &env);
    let key = user(&service).await;
    let s = service.call(Method::POST, "/api/v1/sessions", &key, Some(json!({}))).await;
    let id = s["session_id"].as_str().unwrap().to_string();
    let evictions = || service.log.lock().unwrap().iter().filter(|l| l.contains("evicting")).count();
    assert!(eventually(Duration::from_secs(15), || async { evictions() > 0 }).await, "the idle session was evicted");
    actix_web::rt::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(evictions(), 1, "{:#?}", service.log.lock().unwrap());
    let s = service.call(Method::GET, &format!("/api/v1/sessions/{id}"), &key, None).await;
    assert_eq!(s["status"], "idle", "{s}");
    service.signal("TERM");
}

/// A CLI that starts a process which leaves its process group (`setsid`), then is the fake CLI
/// (not for `/health`'s `--version` probe, which is no session's).
fn cli_with_an_escapee(marker: &str) -> (tempfile::TempDir, PathBuf) {
    script(&format!(
        "case \"$*\" in *--version*) exec $FAKE \"$@\";; esac\nsetsid sleep {marker} </dev/null >/dev/null 2>&1 &\nexec $FAKE \"$@\""
    ))
}

/// Processes whose command line is `sleep <marker>`.
fn sleeping(marker: &str) -> Vec<u32> {
    let wanted = format!("sleep\0{marker}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted.as_bytes()))
        .filter(|pid| process_alive(*pid))
        .collect()
}

fn pgrp(pid: u32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat[stat.rfind(')').unwrap() + 2..].split_whitespace().nth(2).unwrap().parse().unwrap()
}

async fn escapee(marker: &str, cli_pid: Option<u32>) -> u32 {
    assert!(eventually(Duration::from_secs(10), || async { sleeping(marker).len() == 1 }).await, "escapee started");
    let pid = sleeping(marker)[0];
    if let Some(cli) = cli_pid {
        assert_ne!(pgrp(pid), pgrp(cli), "the escapee left the CLI's process group");
    }
    pid
}

/// Closing a session also kills what its CLI started outside the CLI's process group.
#[actix_web::test]
async fn closing_a_session_kills_a_process_that_left_the_group() {
    let marker = "4241.5";
    let (_dir, cli) = cli_with_an_escapee(marker);
    let app = spawn_app_with(Backend::Sqlite, |s| s.cli.path = cli.display().to_string()).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    assert_eq!(app.chat(&key, &id, "hi").await.status, StatusCode::OK);
    let pid = escapee(marker, app.cli_pids().await.first().copied()).await;
    app.delete_session(&key, &id, "").await;
    assert!(all_gone(&[pid]).await, "the escapee died with its session");
}

/// After `kill -9` of the service, its CLIs die (parent-death signal) but a process that left
/// their group lives on; the next start kills it before it serves anything.
#[actix_web::test]
async fn a_restart_after_kill_9_reaps_a_process_that_left_the_group() {
    let marker = "4242.5";
    let (_cli_dir, cli) = cli_with_an_escapee(marker);
    let dir = tempfile::tempdir().unwrap();
    let mut service = Service::start_with(dir.path(), &cli, &[]);
    let key = user(&service).await;
    let s = service.call(Method::POST, "/api/v1/sessions", &key, Some(json!({}))).await;
    let id = s["session_id"].as_str().unwrap();
    let res = service.call(Method::POST, "/api/v1/chat", &key, Some(json!({"session_id": id, "message": "hi"}))).await;
    assert_eq!(res["text"], "echo: hi", "{res}");
    let pid = escapee(marker, None).await;
    service.signal("KILL");
    service.wait(Duration::from_secs(5));
    actix_web::rt::time::sleep(Duration::from_millis(300)).await;
    assert!(process_alive(pid), "kill -9 leaves the escapee behind");
    let service = Service::start_with(dir.path(), &cli, &[]);
    // Start-up returned ("listening" logged), nothing answered yet: the escapee is gone.
    assert!(!process_alive(pid), "the next start reaped the escapee before serving");
    let health = service.client.get(format!("{}/health", service.url)).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    service.signal("TERM");
}
