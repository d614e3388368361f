//! Chat with the fake CLI: sync and stream, timeouts, interrupts, busy, crashes, respawns.

use std::time::Duration;

use awc::http::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, assert_python_time, auth_none, eventually, spawn_app, spawn_app_with};
use crate::on_both_backends;

on_both_backends!(
    sync_chat_answers_every_field,
    a_tool_turn_reports_its_tool_calls,
    stream_frames_have_ids_the_seed_keys_and_end_with_done,
    each_turn_updates_the_session_row,
    chat_requests_are_validated,
    a_crash_mid_turn_is_502_and_the_next_message_works,
    a_message_sent_the_moment_a_cli_crashed_is_answered_by_a_new_one,
    an_idle_session_is_evicted_and_resumes_transparently,
    a_session_after_a_restart_resumes_its_conversation,
);

async fn session(app: &TestApp) -> (String, String) {
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    (key, id)
}

async fn sync_chat_answers_every_field(backend: Backend) {
    let app = spawn_app(backend).await;
    let (key, id) = session(&app).await;
    let res = app.chat(&key, &id, "hello there").await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    let b = &res.body;
    assert_eq!(b["session_id"], id.as_str());
    assert_eq!(b["text"], "echo: hello there");
    assert_eq!(b["tool_calls"], json!([]));
    assert_python_time(b["timestamp"].as_str().unwrap());
    assert!((b["cost_usd"].as_f64().unwrap() - 0.001).abs() < 1e-9);
    assert!(b["usage"]["input_tokens"].as_i64().unwrap() > 0);
    assert!(b["usage"]["output_tokens"].as_i64().unwrap() > 0);
    assert!(b["duration_ms"].is_i64());
    assert_eq!(b["num_turns"], 1);
    assert_eq!(b["subtype"], "success");
    // The next turn never sees the previous one's leftovers.
    let second = app.chat(&key, &id, "second").await;
    assert_eq!(second.body["text"], "echo: second");
    assert!((second.body["cost_usd"].as_f64().unwrap() - 0.001).abs() < 1e-9, "per-turn cost, not cumulative");
}

async fn a_tool_turn_reports_its_tool_calls(backend: Backend) {
    let app = spawn_app(backend).await;
    let (key, id) = session(&app).await;
    let res = app.chat(&key, &id, "tool").await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    assert_eq!(res.body["text"], "The command printed hi.");
    assert_eq!(
        res.body["tool_calls"],
        json!([{"id": "toolu_fake1", "tool": "Bash", "input": {"command": "echo hi", "description": "Print hi"},
                "output": "hi", "is_error": false}])
    );
    assert_eq!(res.body["num_turns"], 2);
    // A Write that really lands in the session's directory.
    let res = app.chat(&key, &id, "write notes.txt remember the milk").await;
    assert_eq!(res.status, StatusCode::OK);
    let written = app.users_dir().join("alice/notes.txt");
    assert_eq!(std::fs::read_to_string(written).unwrap(), "remember the milk");
}

async fn stream_frames_have_ids_the_seed_keys_and_end_with_done(backend: Backend) {
    let app = spawn_app(backend).await;
    let (key, id) = session(&app).await;
    let first = app.chat_stream(&key, json!({"session_id": id, "message": "tool"})).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.headers.get("content-type").unwrap(), "text/event-stream");
    assert_eq!(first.headers.get("cache-control").unwrap(), "no-cache");
    assert_eq!(first.headers.get("x-accel-buffering").unwrap(), "no");
    assert!(!first.text.contains("event:"), "no event names: EventSource.onmessage sees every frame");
    assert_eq!(first.types(), ["tool_use", "tool_result", "text_delta", "done"]);
    let ids: Vec<i64> = first.frames.iter().map(|(i, _)| *i).collect();
    assert_eq!(ids, [1, 2, 3, 4]);
    for (_, frame) in &first.frames {
        for k in ["type", "text", "tool_name", "tool_input", "error"] {
            assert!(frame.get(k).is_some(), "{k} missing in {frame}");
        }
    }
    let (_, tool_use) = &first.frames[0];
    assert_eq!(tool_use["tool_name"], "Bash");
    assert_eq!(tool_use["tool_use_id"], "toolu_fake1");
    assert_eq!(tool_use["tool_input"]["command"], "echo hi");
    let (_, tool_result) = &first.frames[1];
    assert_eq!(tool_result["tool_use_id"], "toolu_fake1");
    assert_eq!(tool_result["output"], "hi");
    assert_eq!(tool_result["is_error"], false);
    let done = first.last();
    assert_eq!(done["text"], Value::Null, "the answer is in result.text only, so joining every text shows it once");
    assert_eq!(done["result"]["text"], "The command printed hi.");
    let result = &done["result"];
    assert_eq!(result["subtype"], "success");
    assert_eq!(result["is_error"], false);
    assert_eq!(result["num_turns"], 2);
    for k in ["cost_usd", "usage", "duration_ms", "text"] {
        assert!(result.get(k).is_some(), "{k} in done.result");
    }

    // True token deltas, numbered on from the previous turn.
    let second = app.chat_stream(&key, json!({"session_id": id, "message": "a much longer message to echo"})).await;
    let deltas: Vec<&Value> = second.frames.iter().filter(|(_, f)| f["type"] == "text_delta").map(|(_, f)| f).collect();
    assert!(deltas.len() > 2, "several deltas: {:?}", second.types());
    let joined: String = deltas.iter().map(|f| f["text"].as_str().unwrap()).collect();
    assert_eq!(joined, "echo: a much longer message to echo");
    assert_eq!(second.frames[0].0, 5);
    assert_eq!(second.last()["type"], "done");
}

async fn each_turn_updates_the_session_row(backend: Backend) {
    let app = spawn_app(backend).await;
    let (key, id) = session(&app).await;
    app.chat(&key, &id, "one").await;
    app.chat(&key, &id, "two").await;
    let updated =
        eventually(Duration::from_secs(5), || async { app.get_session(&key, &id).await.body["message_count"] == 2 })
            .await;
    assert!(updated);
    let s = app.get_session(&key, &id).await.body;
    assert!((s["total_cost_usd"].as_f64().unwrap() - 0.002).abs() < 1e-9, "{s}");
    assert!(s["usage"]["input_tokens"].as_i64().unwrap() >= 2 * 10);
    assert_eq!(s["status"], "active");
    assert!(s["last_active_at"].as_str().unwrap() > s["created_at"].as_str().unwrap());
}

async fn chat_requests_are_validated(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.session.ttl = 3).await;
    let (key, id) = session(&app).await;
    for (body, field) in [
        (json!({"session_id": id, "message": ""}), "message"),
        (json!({"session_id": id, "message": "   \n"}), "message"),
        (json!({"session_id": id, "message": "x".repeat(100_001)}), "message"),
        (json!({"session_id": id, "message": "hi", "timeout": 0}), "timeout"),
        (json!({"session_id": id, "message": "hi", "timeout": 3601}), "timeout"),
        (json!({"message": "hi"}), "session_id"),
    ] {
        let res = app.post_chat(&key, body).await;
        res.assert_error(422, "validation_error");
        assert_eq!(res.body["error"]["fields"][0]["field"], field, "{}", res.text);
    }
    let max = app.post_chat(&key, json!({"session_id": id, "message": "y".repeat(100_000)})).await;
    assert_eq!(max.status, StatusCode::OK, "100000 characters are allowed: {}", max.text);
    app.chat(&key, &uuid::Uuid::new_v4().to_string(), "hi").await.assert_error(404, "session_not_found");
    let mallory = app.create_user("mallory").await;
    app.chat(&mallory, &id, "hi").await.assert_error(404, "session_not_found");
    app.post_chat(&key, json!({"session_id": id, "message": "hi", "user_id": "mallory"}))
        .await
        .assert_error(403, "forbidden");
    // Errors found before a stream starts are plain HTTP errors, not a 200 stream.
    let stream = app.chat_stream(&mallory, json!({"session_id": id, "message": "hi"})).await;
    assert_eq!(stream.status, StatusCode::NOT_FOUND);
    app.delete_session(&key, &id, "").await;
    app.chat(&key, &id, "hi").await.assert_error(409, "session_closed");
    let other = app.create_session(&key, json!({})).await;
    // The TTL counts from the last activity (its CLI's start too, slow on a loaded machine).
    app.wait_active(&key, &other).await;
    actix_web::rt::time::sleep(Duration::from_millis(3300)).await;
    app.chat(&key, &other, "hi").await.assert_error(410, "session_expired");
}

async fn a_crash_mid_turn_is_502_and_the_next_message_works(backend: Backend) {
    let app = spawn_app(backend).await;
    let (key, id) = session(&app).await;
    app.chat(&key, &id, "before").await;
    let res = app.chat(&key, &id, "crash").await;
    res.assert_error(502, "cli_failed");
    assert!(res.body["error"]["message"].as_str().unwrap().contains("code 3"), "{}", res.text);
    assert!(res.body["error"]["message"].as_str().unwrap().contains("crashing on purpose"), "stderr tail included");
    // The next message respawns the CLI with --resume and the conversation goes on.
    let next = app.chat(&key, &id, "history").await;
    assert_eq!(next.status, StatusCode::OK, "{}", next.text);
    assert!(next.body["text"].as_str().unwrap().starts_with("before"), "{}", next.text);
    // In a stream the crash is an `error` frame with a code.
    let stream = app.chat_stream(&key, json!({"session_id": id, "message": "crash"})).await;
    assert_eq!(stream.status, StatusCode::OK);
    assert_eq!(stream.last()["type"], "error");
    assert_eq!(stream.last()["code"], "cli_failed");
    assert!(stream.last()["error"].is_string());
    assert_eq!(app.chat(&key, &id, "again").await.body["text"], "echo: again");
}

/// The crashed CLI's actor lingers while its last events are stored: a message that reaches
/// it then must go to a new CLI, not to the dead one's stdin (it came back as a 200 stream
/// with no frame at all).
async fn a_message_sent_the_moment_a_cli_crashed_is_answered_by_a_new_one(backend: Backend) {
    let app = spawn_app(backend).await;
    let (key, id) = session(&app).await;
    for round in 0..5 {
        let crash = app.chat_stream(&key, json!({"session_id": id, "message": "crash"})).await;
        assert_eq!(crash.last()["code"], "cli_failed", "round {round}");
        let next = app.chat_stream(&key, json!({"session_id": id, "message": format!("after {round}")})).await;
        assert_eq!(next.status, StatusCode::OK, "round {round}");
        assert!(!next.frames.is_empty(), "round {round}: a stream with no frame");
        assert_eq!(next.last()["type"], "done", "round {round}: {}", next.text);
        let sync = app.chat(&key, &id, "crash").await;
        sync.assert_error(502, "cli_failed");
        let answer = app.chat(&key, &id, "again").await;
        assert_eq!(answer.status, StatusCode::OK, "round {round}: {}", answer.text);
        assert_eq!(answer.body["text"], "echo: again");
    }
}

async fn an_idle_session_is_evicted_and_resumes_transparently(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.api.idle_session_timeout = 1).await;
    let (key, id) = session(&app).await;
    app.chat(&key, &id, "remember me").await;
    let evicted =
        eventually(Duration::from_secs(10), || async { app.get_session(&key, &id).await.body["status"] == "idle" })
            .await;
    assert!(evicted, "status idle after api.idle_session_timeout");
    assert!(app.cli_pids().await.is_empty(), "its process is gone");
    let res = app.chat(&key, &id, "history").await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    assert_eq!(res.body["text"], "remember me", "resumed with the earlier conversation");
}

async fn a_session_after_a_restart_resumes_its_conversation(backend: Backend) {
    let app = spawn_app(backend).await;
    let (key, id) = session(&app).await;
    app.chat(&key, &id, "first words").await;
    let app = app.restart().await;
    assert_eq!(app.get_session(&key, &id).await.body["status"], "idle");
    let res = app.chat(&key, &id, "history").await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    assert_eq!(res.body["text"], "first words");
}

#[actix_web::test]
async fn a_timeout_interrupts_the_turn_with_504_and_the_session_stays_usable() {
    let app = spawn_app(Backend::Sqlite).await;
    let (key, id) = session(&app).await;
    let started = std::time::Instant::now();
    let res = app.post_chat(&key, json!({"session_id": id, "message": "slow 100 100", "timeout": 1})).await;
    res.assert_error(504, "turn_timeout");
    assert!(started.elapsed() < Duration::from_secs(4), "interrupted, not waited out");
    assert_eq!(app.chat(&key, &id, "after").await.body["text"], "echo: after");
    // A stream that times out ends with an `error` frame.
    let stream = app.chat_stream(&key, json!({"session_id": id, "message": "slow 100 100", "timeout": 1})).await;
    assert_eq!(stream.last()["type"], "error");
    assert_eq!(stream.last()["code"], "turn_timeout");
}

#[actix_web::test]
async fn a_hung_cli_is_killed_after_the_interrupt_grace_and_the_session_respawns() {
    let app = spawn_app(Backend::Sqlite).await;
    let (key, id) = session(&app).await;
    app.chat(&key, &id, "before the hang").await;
    let pids = app.cli_pids().await;
    let res = app.post_chat(&key, json!({"session_id": id, "message": "hang", "timeout": 1})).await;
    res.assert_error(504, "turn_timeout");
    assert!(crate::helpers::all_gone(&pids).await, "the hung CLI was killed");
    let next = app.chat(&key, &id, "history").await;
    assert_eq!(next.status, StatusCode::OK, "{}", next.text);
    assert!(next.body["text"].as_str().unwrap().starts_with("before the hang"));
}

#[actix_web::test]
async fn interrupt_ends_the_turn_with_done_interrupted() {
    let app = spawn_app(Backend::Sqlite).await;
    let (key, id) = session(&app).await;
    app.interrupt(&key, &id).await.assert_error(409, "no_turn_running");
    let mut stream = app.open_chat_stream(&key, &id, "slow 200 50").await;
    let (_, first) = stream.next_frame().await.expect("a first frame");
    assert_eq!(first["type"], "text_delta");
    let res = app.interrupt(&key, &id).await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.text);
    assert!(res.body["turn_id"].is_string());
    let started = std::time::Instant::now();
    let rest = stream.rest().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let last = &rest.last().expect("a last frame").1;
    assert_eq!(last["type"], "done");
    assert_eq!(last["result"]["subtype"], "interrupted");
    assert_eq!(app.chat(&key, &id, "next").await.body["text"], "echo: next");
    let mallory = app.create_user("mallory").await;
    app.interrupt(&mallory, &id).await.assert_error(404, "session_not_found");
}

#[actix_web::test]
async fn a_second_message_during_a_turn_is_429_session_busy() {
    let app = spawn_app(Backend::Sqlite).await;
    let (key, id) = session(&app).await;
    let mut stream = app.open_chat_stream(&key, &id, "slow 20 50").await;
    stream.next_frame().await.expect("the turn runs");
    let busy = app.chat(&key, &id, "me too").await;
    busy.assert_error(429, "session_busy");
    assert!(busy.header("retry-after").is_some());
    let rest = stream.rest().await;
    assert_eq!(rest.last().unwrap().1["type"], "done");
    assert_eq!(app.chat(&key, &id, "now").await.body["text"], "echo: now");
}

#[actix_web::test]
async fn a_client_that_disconnects_leaves_the_session_healthy() {
    let app = spawn_app(Backend::Sqlite).await;
    let (key, id) = session(&app).await;
    let mut stream = app.open_chat_stream(&key, &id, "slow 10 50").await;
    stream.next_frame().await.expect("first frame");
    drop(stream);
    // The turn runs to its end on its own; the next turn is clean.
    let finished =
        eventually(Duration::from_secs(5), || async { app.get_session(&key, &id).await.body["message_count"] == 1 })
            .await;
    assert!(finished, "the abandoned turn completed and was counted");
    let res = app.chat(&key, &id, "history").await;
    assert_eq!(res.body["text"], "slow 10 50");
}

#[actix_web::test]
async fn concurrent_turns_beyond_the_limit_wait_then_get_503_overloaded() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.api.max_concurrent_requests = 1;
        s.api.queue_timeout = 1;
    })
    .await;
    let key = app.create_user("alice").await;
    let a = app.create_session(&key, json!({})).await;
    let b = app.create_session(&key, json!({})).await;
    let mut long = app.open_chat_stream(&key, &a, "slow 40 100").await;
    long.next_frame().await.expect("turn a runs");
    let waited = std::time::Instant::now();
    let res = app.chat(&key, &b, "hi").await;
    res.assert_error(503, "overloaded");
    assert!(res.header("retry-after").is_some());
    assert!(waited.elapsed() >= Duration::from_millis(900), "it waited api.queue_timeout first");
    app.interrupt(&key, &a).await;
    long.rest().await;
    // A turn that waits while the slot frees up gets it.
    let mut again = app.open_chat_stream(&key, &a, "slow 3 100").await;
    again.next_frame().await;
    let res = app.chat(&key, &b, "queued").await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
}

#[actix_web::test]
async fn memory_pressure_evicts_idle_sessions_least_recently_used_but_never_a_busy_one() {
    let app = spawn_app(Backend::Sqlite).await;
    let key = app.create_user("alice").await;
    let idle_old = app.create_session(&key, json!({})).await;
    let busy = app.create_session(&key, json!({})).await;
    let idle_new = app.create_session(&key, json!({})).await;
    for id in [&idle_old, &busy, &idle_new] {
        app.chat(&key, id, "warm up").await;
    }
    let mut turn = app.open_chat_stream(&key, &busy, "slow 30 100").await;
    turn.next_frame().await.expect("busy turn runs");
    // Pressure from now on: every idle session must go, the busy one stays.
    app.app_state.registry.addr().send(claude_agent_http::actors::registry::SetMemoryLimit { mb: 1 }).await.unwrap();
    let evicted = eventually(Duration::from_secs(10), || async {
        app.get_session(&key, &idle_old).await.body["status"] == "idle"
            && app.get_session(&key, &idle_new).await.body["status"] == "idle"
    })
    .await;
    assert!(evicted, "idle sessions were evicted under memory pressure");
    assert_eq!(app.get_session(&key, &busy).await.body["status"], "busy", "a session in a turn is never evicted");
    let rest = turn.rest().await;
    assert_eq!(rest.last().unwrap().1["type"], "done", "the busy turn finished normally");
    // While memory stays above the limit, respawns are refused.
    app.chat(&key, &idle_old, "hi").await.assert_error(503, "memory_pressure");
}

#[actix_web::test]
async fn a_garbage_line_is_skipped_and_a_big_line_passes() {
    let app = spawn_app(Backend::Sqlite).await;
    let (key, id) = session(&app).await;
    assert_eq!(app.chat(&key, &id, "garbage").await.body["text"], "echo: garbage");
    let big = app.chat_stream(&key, json!({"session_id": id, "message": "huge 3"})).await;
    let delta = big.frames.iter().find(|(_, f)| f["type"] == "text_delta").expect("delta");
    assert_eq!(delta.1["text"].as_str().unwrap().len(), 3 * 1024 * 1024);
    assert_eq!(big.last()["type"], "done");
}

#[actix_web::test]
async fn a_line_over_64_mib_fails_the_turn_and_the_session_recovers() {
    let app = spawn_app(Backend::Sqlite).await;
    let (key, id) = session(&app).await;
    let res = app.chat(&key, &id, "huge 65").await;
    res.assert_error(502, "cli_failed");
    assert!(res.body["error"]["message"].as_str().unwrap().contains("64 MiB"), "{}", res.text);
    assert_eq!(app.chat(&key, &id, "fine").await.body["text"], "echo: fine");
}

#[actix_web::test]
async fn a_missing_binary_is_502_cli_failed_and_health_says_so() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.cli.path = "/nonexistent/claude".into()).await;
    let key = app.create_user("alice").await;
    let res = app.post_session(&key, json!({})).await;
    res.assert_error(502, "cli_failed");
    assert!(res.body["error"]["message"].as_str().unwrap().contains("/nonexistent/claude"));
    assert_eq!(app.list_sessions(&key, "").await.body, json!([]), "no half-created session");
    let health = app.get_health().await;
    assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(health.body["status"], "unhealthy");
    assert_eq!(health.body["cli"]["found"], false);
    assert!(health.body["error"].as_str().unwrap().contains("not found"));
}

#[actix_web::test]
async fn a_broken_binary_fails_the_first_message_with_502() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.cli.path = "/bin/false".into()).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    let res = app.chat(&key, &id, "hi").await;
    res.assert_error(502, "cli_failed");
    let failed =
        eventually(Duration::from_secs(5), || async { app.get_session(&key, &id).await.body["status"] == "failed" })
            .await;
    assert!(failed);
    assert_eq!(app.get_health().await.status, StatusCode::SERVICE_UNAVAILABLE, "--version fails too");
}

#[actix_web::test]
async fn the_cli_gets_its_flags_and_an_allowlisted_environment() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("argv.log");
    let log_path = log.clone();
    let app = spawn_app_with(Backend::Sqlite, move |s| {
        log_cli_arguments(s, &log_path);
        s.defaults.model = Some("claude-test".into());
        s.api.idle_session_timeout = 1;
    })
    .await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({"options": {"max_turns": 7, "allowed_tools": ["Read", "Write"]}})).await;
    app.chat(&key, &id, "one").await;
    eventually(Duration::from_secs(10), || async { app.get_session(&key, &id).await.body["status"] == "idle" }).await;
    app.chat(&key, &id, "two").await;
    let lines: Vec<Value> =
        std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "spawned at create, respawned after eviction");
    let args = |i: usize| -> Vec<String> {
        lines[i]["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect()
    };
    let first = args(0);
    assert!(first.contains(&format!("--session-id={id}")), "{first:?}");
    for flag in ["--model=claude-test", "--max-turns=7", "--allowedTools=Read,Write", "--include-partial-messages"] {
        assert!(first.iter().any(|a| a == flag), "{flag} in {first:?}");
    }
    assert!(args(1).contains(&format!("--resume={id}")), "respawn resumes: {:?}", args(1));
    let env: Vec<&str> = lines[0]["env"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    for name in &env {
        let allowed = [
            "PATH",
            "LANG",
            "LC_ALL",
            "LC_CTYPE",
            "HOME",
            "TZ",
            "TERM",
            "CLAUDE_CONFIG_DIR",
            "TMPDIR",
            "CLAUDE_CODE_ENTRYPOINT",
            "DISABLE_AUTOUPDATER",
            "PWD",
            "OLDPWD",
            "SHLVL",
            "_",
        ]
        .contains(name)
            || name.starts_with("ANTHROPIC_")
            || name.starts_with("CLAUDE_CODE_");
        assert!(allowed, "{name} leaked into the CLI's environment");
    }
    assert!(env.contains(&"CLAUDE_CONFIG_DIR"));
    let config = app.users_dir().join("alice/.claude/projects");
    assert!(config.is_dir(), "the transcript lives in the user's own config dir");
}

#[actix_web::test]
async fn seed_clients_chat_with_user_id_in_the_body_under_auth_none() {
    let app = spawn_app_with(Backend::Sqlite, auth_none).await;
    let created =
        app.request(awc::http::Method::POST, "/api/v1/sessions", None, Some(json!({"user_id": "seed"}))).await;
    let id = created.body["session_id"].as_str().unwrap().to_string();
    let res = app
        .request(
            awc::http::Method::POST,
            "/api/v1/chat",
            None,
            Some(json!({"session_id": id, "message": "old client", "user_id": "seed"})),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    assert_eq!(res.body["text"], "echo: old client");
}

#[actix_web::test]
async fn the_agent_endpoint_reports_the_clis_init_and_sessions_may_bring_mcp_servers() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("argv.log");
    let log_path = log.clone();
    let app = spawn_app_with(Backend::Sqlite, move |s| {
        log_cli_arguments(s, &log_path);
        s.session.overridable.push("mcp_servers".into());
        s.mcp_servers.insert("global".into(), json!({"command": "global-mcp"}));
    })
    .await;
    let key = app.create_user("alice").await;
    let id = app
        .create_session(&key, json!({"options": {"mcp_servers": {"mine": {"command": "my-mcp", "args": ["-v"]}}}}))
        .await;
    let path = format!("/api/v1/sessions/{id}/agent");
    app.request(awc::http::Method::GET, &path, Some(&key), None).await.assert_error(404, "not_found");
    app.chat(&key, &id, "hi").await;
    let agent = app.request(awc::http::Method::GET, &path, Some(&key), None).await;
    assert_eq!(agent.status, StatusCode::OK, "{}", agent.text);
    assert_eq!(agent.body["tools"], json!(["Bash", "Write"]));
    assert_eq!(agent.body["model"], "fake");
    assert_eq!(agent.body["claude_code_version"], "2.1.330-fake");
    let line: Value = serde_json::from_str(std::fs::read_to_string(&log).unwrap().lines().next().unwrap()).unwrap();
    let config = line["args"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|a| a.as_str().unwrap().strip_prefix("--mcp-config="))
        .expect("--mcp-config given");
    // A file in the session's private temp dir, never the JSON itself in argv.
    assert!(!config.contains('{'), "{config}");
    let config: Value = serde_json::from_str(&std::fs::read_to_string(config).unwrap()).unwrap();
    assert_eq!(config["mcpServers"]["global"]["command"], "global-mcp", "the settings' servers");
    assert_eq!(config["mcpServers"]["mine"]["args"], json!(["-v"]), "and the session's own");
}

/// Makes the fake CLI append its arguments and environment names to `log`. The log lies
/// outside the user's directory, which confinement rightly forbids, so the sandbox is off.
fn log_cli_arguments(s: &mut claude_agent_http::Settings, log: &std::path::Path) {
    s.cli.env.insert("FAKE_CLAUDE_ARGV_LOG".into(), log.display().to_string());
    s.sandbox.mode = claude_agent_http::settings::SandboxMode::Off;
}

/// A turn's `busy` reaches the database only once the turn outlasts the writer's grace (a short
/// turn costs no write of its own), yet the session reads busy at once, and active after.
#[actix_web::test]
async fn a_session_reads_busy_from_its_turns_start_and_is_stored_busy_once_the_turn_lasts() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let app = spawn_app(backend).await;
        let (key, id) = session(&app).await;
        // The stream's head comes once the turn has started, before its first frame (100 ms).
        let mut stream = app.open_chat_stream(&key, &id, "slow 10 100").await;
        assert_eq!(app.get_session(&key, &id).await.body["status"], "busy", "{backend:?}: read at once");
        assert_eq!(app.list_sessions(&key, "?status=active").await.body, json!([]), "{backend:?}");
        stream.next_frame().await.expect("the turn runs");
        // Past the grace the row itself says busy (the status filter runs in the database).
        actix_web::rt::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(app.list_sessions(&key, "?status=busy").await.body, json!([id]), "{backend:?}: listed busy");
        let stored = app.app_state.storage.get_session(&id).await.unwrap().unwrap();
        assert_eq!(stored.status.as_str(), "busy", "{backend:?}: a long turn is stored busy");
        assert_eq!(stream.rest().await.last().unwrap().1["type"], "done");
        assert_eq!(app.get_session(&key, &id).await.body["status"], "active", "{backend:?}");
        // A short turn: active before and after, in the row too.
        assert_eq!(app.chat(&key, &id, "quick").await.body["text"], "echo: quick");
        let stored = app.app_state.storage.get_session(&id).await.unwrap().unwrap();
        assert_eq!(stored.status.as_str(), "active", "{backend:?}");
        assert_eq!(stored.message_count, 2, "{backend:?}");
    }
}
