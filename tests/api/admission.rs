//! Launch admission: CLI starts bounded and ordered, memory counted per CLI (also while it
//! starts), idle sessions evicted to make room instead of refusing.
//!
//! Memory is made deterministic with `memory.cli_rss_mb`: every fake CLI counts 2000 MiB, and
//! `api.memory_limit_mb` = 2000 × N + 1000 leaves room for exactly N of them next to the test
//! process (which runs the service, well under 1000 MiB).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use awc::http::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, eventually, spawn_app_with};

const CLI_MB: u64 = 2000;

/// An app with room for `room` CLIs, each taking `init_ms` to answer `initialize`; its CLIs
/// carry a mark in their environment so they can be counted from outside.
async fn app_with_room(
    room: u64,
    init_ms: u64,
    customize: impl FnOnce(&mut claude_agent_http::Settings),
) -> (TestApp, String) {
    let mark = uuid::Uuid::new_v4().to_string();
    let env_mark = mark.clone();
    let app = spawn_app_with(Backend::Sqlite, move |s| {
        s.memory.cli_rss_mb = CLI_MB;
        s.api.memory_limit_mb = CLI_MB * room + 1000;
        s.cli.env.insert("FAKE_CLAUDE_INIT_DELAY_MS".into(), init_ms.to_string());
        s.cli.env.insert("ADMISSION_TEST_MARK".into(), env_mark);
        customize(s);
    })
    .await;
    (app, mark)
}

/// CLI processes alive now (starting or live) whose environment carries `mark`.
fn clis_with_mark(mark: &str) -> usize {
    let needle = format!("ADMISSION_TEST_MARK={mark}");
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    entries
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
        .filter(|e| {
            std::fs::read(e.path().join("environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == needle.as_bytes()))
        })
        .count()
}

/// Counts the marked CLIs every few ms until dropped; the most seen at once.
struct PeakCounter {
    peak: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl PeakCounter {
    fn start(mark: &str) -> PeakCounter {
        let peak = Arc::new(AtomicUsize::new(0));
        let (seen, mark) = (peak.clone(), mark.to_string());
        let task = tokio::task::spawn_blocking(move || {
            while Arc::strong_count(&seen) > 1 {
                seen.fetch_max(clis_with_mark(&mark), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(3));
            }
        });
        PeakCounter { peak, task }
    }

    async fn stop(self) -> usize {
        let peak = self.peak.load(Ordering::Relaxed);
        drop(self.peak);
        let _ = self.task.await;
        peak
    }
}

#[actix_web::test]
async fn a_burst_of_creates_never_runs_more_clis_than_memory_has_room_for() {
    let (app, mark) = app_with_room(3, 150, |s| s.api.max_sessions_per_user = 20).await;
    let key = app.create_user("alice").await;
    let counter = PeakCounter::start(&mark);
    let clients = (0..8).map(|i| {
        let (app, key) = (&app, key.clone());
        async move {
            let created = app.post_session(&key, json!({})).await;
            assert_eq!(created.status, StatusCode::CREATED, "create {i}: {}", created.text);
            let id = created.body["session_id"].as_str().unwrap().to_string();
            let res = app.chat(&key, &id, &format!("hello {i}")).await;
            assert_eq!(res.status, StatusCode::OK, "turn {i}: {}", res.text);
            assert_eq!(res.body["text"], format!("echo: hello {i}"));
        }
    });
    futures_util::future::join_all(clients).await;
    let peak = counter.stop().await;
    assert!(peak <= 3, "at most 3 CLIs alive or starting at once, saw {peak}");
    assert!(peak >= 2, "the counter sees the CLIs (saw {peak})");
}

#[actix_web::test]
async fn round_robin_over_more_sessions_than_fit_answers_every_turn_without_503() {
    let (app, mark) = app_with_room(2, 50, |_| {}).await;
    let key = app.create_user("alice").await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(app.create_session(&key, json!({})).await);
    }
    let counter = PeakCounter::start(&mark);
    for round in 0..3 {
        for id in &ids {
            let res = app.chat(&key, id, &format!("round {round}")).await;
            assert_eq!(res.status, StatusCode::OK, "round {round} on {id}: {}", res.text);
        }
    }
    let peak = counter.stop().await;
    // Room for 2, and by design (`admission::decide`, `Room::exiting`) a start may overlap the
    // exit of the CLI evicted for it: one more for the tens of ms that exit takes, never two.
    assert!(peak <= 3, "at most 2 CLIs at once, plus one exiting, saw {peak}");
    let idle = app.list_sessions(&key, "?status=idle").await.body.as_array().map_or(0, Vec::len);
    assert!(idle >= 4, "the others were evicted to make room ({idle} idle)");
}

#[actix_web::test]
async fn memory_pressure_is_503_only_once_every_live_cli_stays_in_a_turn() {
    let (app, _) = app_with_room(2, 0, |s| s.api.queue_timeout = 1).await;
    let key = app.create_user("alice").await;
    let a = app.create_session(&key, json!({})).await;
    let b = app.create_session(&key, json!({})).await;
    let mut turn_a = app.open_chat_stream(&key, &a, "slow 30 100").await;
    let mut turn_b = app.open_chat_stream(&key, &b, "slow 30 100").await;
    turn_a.next_frame().await.expect("a's turn runs");
    turn_b.next_frame().await.expect("b's turn runs");
    let waited = std::time::Instant::now();
    let res = app.post_session(&key, json!({})).await;
    res.assert_error(503, "memory_pressure");
    assert!(res.header("retry-after").is_some());
    assert!(waited.elapsed() >= Duration::from_millis(900), "it waited api.queue_timeout for room first");
    assert_eq!(app.get_session(&key, &a).await.body["status"], "busy", "a busy session is never evicted");
    // Once a turn ends, its session makes room: the same create waits and succeeds.
    app.interrupt(&key, &a).await;
    turn_a.rest().await;
    let created = app.post_session(&key, json!({})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let gone =
        eventually(Duration::from_secs(10), || async { app.get_session(&key, &a).await.body["status"] == "idle" })
            .await;
    assert!(gone, "a was evicted to make room");
    assert_eq!(app.get_session(&key, &b).await.body["status"], "busy");
    app.interrupt(&key, &b).await;
    turn_b.rest().await;
}

#[actix_web::test]
async fn a_cli_a_message_waits_for_starts_before_a_create_queued_earlier() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("argv.log");
    let log_path = log.clone();
    let (app, _) = app_with_room(10, 400, move |s| {
        s.cli.max_concurrent_starts = 1;
        s.api.idle_session_timeout = 1;
        s.cli.env.insert("FAKE_CLAUDE_ARGV_LOG".into(), log_path.display().to_string());
        // The log is outside what a confined CLI may write.
        s.sandbox.mode = claude_agent_http::settings::SandboxMode::Off;
    })
    .await;
    let key = app.create_user("alice").await;
    // `waiting` has been used and evicted for idleness: its next message respawns it.
    let waiting = app.create_session(&key, json!({})).await;
    app.chat(&key, &waiting, "first").await;
    let idle = eventually(Duration::from_secs(10), || async {
        app.get_session(&key, &waiting).await.body["status"] == "idle"
    })
    .await;
    assert!(idle);
    // `holder` holds the only start permit for 400 ms; `later` queues behind it, then the
    // message for `waiting` arrives.
    let holder = app.create_session(&key, json!({})).await;
    let later = app.post_session(&key, json!({}));
    let message = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        app.chat(&key, &waiting, "second").await
    };
    let (later, answer) = futures_util::future::join(later, message).await;
    assert_eq!(later.status, StatusCode::CREATED, "{}", later.text);
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    let later = later.body["session_id"].as_str().unwrap().to_string();
    // The create answers once the CLI is forked; its first act is writing the log line.
    let logged = eventually(Duration::from_secs(5), || async {
        std::fs::read_to_string(&log).unwrap_or_default().lines().count() >= 4
    })
    .await;
    assert!(logged, "four CLI starts logged");
    let started: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter_map(|l| {
            l["args"].as_array()?.iter().find_map(|a| {
                let a = a.as_str()?;
                a.strip_prefix("--session-id=").or_else(|| a.strip_prefix("--resume=")).map(str::to_owned)
            })
        })
        .collect();
    assert_eq!(started, [waiting.clone(), holder, waiting, later], "the respawn for a message went first");
}
