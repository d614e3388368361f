//! `/api/v1/users/{id}/budget`: who sets limits, what GET shows as spent, the 402 before a
//! turn at a limit, and the `--max-budget-usd` each CLI starts with (the fake CLI's
//! `cost USD` makes a turn cost USD; with `--max-budget-usd` it ends a turn that reaches it
//! as `error_max_budget_usd`).

use awc::http::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_KEY, Backend, TestApp, assert_python_time, spawn_app, spawn_app_with};
use crate::on_both_backends;

on_both_backends!(
    only_the_admin_sets_a_budget_and_get_shows_what_was_spent,
    a_user_over_the_daily_limit_gets_402_before_the_cli_is_asked,
    the_per_session_limit_counts_the_sessions_total_and_the_default_applies_to_everyone,
);

#[track_caller]
fn assert_usd(value: &Value, expected: f64) {
    let got = value.as_f64().unwrap_or_else(|| panic!("not a number: {value}"));
    assert!((got - expected).abs() < 1e-9, "{got} != {expected}");
}

async fn chat_ok(app: &TestApp, key: &str, session: &str, message: &str) -> Value {
    let res = app.chat(key, session, message).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    res.body
}

async fn only_the_admin_sets_a_budget_and_get_shows_what_was_spent(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    let limits = json!({"daily_usd": 2, "monthly_usd": 10.5});
    app.put_budget(&alice, "alice", limits.clone()).await.assert_error(403, "forbidden");
    app.put_budget(ADMIN_KEY, "ghost", limits.clone()).await.assert_error(404, "user_not_found");
    app.put_budget(ADMIN_KEY, "alice", json!({"daily_usd": -1, "per_session_usd": "x"}))
        .await
        .assert_error(422, "validation_error");
    app.put_budget(ADMIN_KEY, "alice", json!({"daily_usd": -1})).await.assert_error(422, "validation_error");
    let set = app.put_budget(ADMIN_KEY, "alice", limits).await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.text);
    assert_usd(&set.body["daily_usd"], 2.0);
    assert_usd(&set.body["monthly_usd"], 10.5);
    assert_eq!(set.body["per_session_usd"], Value::Null);
    assert_usd(&set.body["own"]["daily_usd"], 2.0);
    assert_usd(&set.body["spent_today_usd"], 0.0);
    for at in ["day_resets_at", "month_resets_at", "updated_at"] {
        assert_python_time(set.body[at].as_str().unwrap_or_else(|| panic!("{at}: {}", set.text)));
    }
    assert!(set.body["day_resets_at"].as_str().unwrap().ends_with("T00:00:00.000+00:00"), "{}", set.text);
    assert!(set.body["month_resets_at"].as_str().unwrap().ends_with("-01T00:00:00.000+00:00"), "{}", set.text);

    app.get_budget(&bob, "alice").await.assert_error(403, "forbidden");
    let session = app.create_session(&alice, json!({})).await;
    app.wait_active(&alice, &session).await;
    assert_usd(&chat_ok(&app, &alice, &session, "cost 0.25").await["cost_usd"], 0.25);
    chat_ok(&app, &alice, &session, "hello").await;
    let own = app.get_budget(&alice, "alice").await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.text);
    assert_usd(&own.body["spent_today_usd"], 0.251);
    assert_usd(&own.body["spent_this_month_usd"], 0.251);
    // A user without limits: what they spent is shown all the same.
    let bobs_session = app.create_session(&bob, json!({})).await;
    chat_ok(&app, &bob, &bobs_session, "cost 0.125").await;
    let bobs = app.get_budget(ADMIN_KEY, "bob").await;
    assert_usd(&bobs.body["spent_today_usd"], 0.125);
    assert_eq!((bobs.body["daily_usd"].clone(), bobs.body["updated_at"].clone()), (Value::Null, Value::Null));

    // What was spent stays spent when the session and its history are purged.
    assert_eq!(app.delete_session(&alice, &session, "?purge=true").await.status, StatusCode::NO_CONTENT);
    assert_usd(&app.get_budget(ADMIN_KEY, "alice").await.body["spent_today_usd"], 0.251);
}

async fn a_user_over_the_daily_limit_gets_402_before_the_cli_is_asked(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    assert_eq!(app.put_budget(ADMIN_KEY, "alice", json!({"daily_usd": 1.0})).await.status, StatusCode::OK);
    let session = app.create_session(&alice, json!({})).await;
    app.wait_active(&alice, &session).await;
    assert_eq!(chat_ok(&app, &alice, &session, "cost 0.3").await["subtype"], "success");
    // The CLI started with --max-budget-usd=0.5 (half of what the day leaves, the other half
    // for turns of her other sessions): the turn that reaches it says so.
    let stopped = chat_ok(&app, &alice, &session, "cost 0.3").await;
    assert_eq!(stopped["subtype"], "error_max_budget_usd", "{stopped}");
    // Restarted with half of the 0.4 left; the CLI's granularity is a whole turn here.
    let stopped = chat_ok(&app, &alice, &session, "cost 0.5").await;
    assert_eq!(stopped["subtype"], "error_max_budget_usd", "{stopped}");

    let refused = app.chat(&alice, &session, "hello").await;
    refused.assert_error(402, "budget_exceeded");
    let budget = &refused.body["error"]["budget"];
    assert_eq!(budget["limit"], "daily", "{}", refused.text);
    assert_usd(&budget["limit_usd"], 1.0);
    assert_usd(&budget["spent_usd"], 1.1);
    let resets = budget["resets_at"].as_str().expect("a daily limit resets");
    assert_python_time(resets);
    assert_eq!(resets, app.get_budget(&alice, "alice").await.body["day_resets_at"], "the next UTC midnight");
    assert!(refused.body["error"]["message"].as_str().unwrap().contains(resets), "{}", refused.text);
    assert!(
        refused.header("retry-after").is_some_and(|s| s.parse::<u64>().unwrap() <= 86_400),
        "{:?}",
        refused.headers
    );

    // The CLI was not asked: no turn was stored.
    let row = app.get_session(&alice, &session).await;
    assert_eq!(row.body["message_count"], 3, "{}", row.text);
    let stream = app.chat_stream(&alice, json!({"session_id": session, "message": "hello"})).await;
    assert_eq!(stream.status.as_u16(), 402, "{}", stream.text);
    let started = app.post_message(&alice, &session, "hello").await;
    started.assert_error(402, "budget_exceeded");
    // The limit is the user's, whatever the session; Bob has none.
    let another = app.create_session(&alice, json!({})).await;
    app.chat(&alice, &another, "hello").await.assert_error(402, "budget_exceeded");
    let bobs = app.create_session(&bob, json!({})).await;
    chat_ok(&app, &bob, &bobs, "hello").await;

    // Raised by the admin: Alice chats again, also in the session whose CLI had used up the
    // budget it started with (it was restarted with what is left now).
    assert_eq!(app.put_budget(ADMIN_KEY, "alice", json!({"daily_usd": 5.0})).await.status, StatusCode::OK);
    let fresh = app.create_session(&alice, json!({})).await;
    assert_eq!(chat_ok(&app, &alice, &fresh, "hello").await["subtype"], "success");
    assert_eq!(chat_ok(&app, &alice, &session, "hello").await["subtype"], "success");
}

async fn the_per_session_limit_counts_the_sessions_total_and_the_default_applies_to_everyone(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.budgets.per_session_usd = Some(0.5)).await;
    let alice = app.create_user("alice").await;
    let shown = app.get_budget(&alice, "alice").await;
    assert_usd(&shown.body["per_session_usd"], 0.5);
    assert_eq!(shown.body["own"]["per_session_usd"], Value::Null, "{}", shown.text);

    let session = app.create_session(&alice, json!({})).await;
    app.wait_active(&alice, &session).await;
    chat_ok(&app, &alice, &session, "cost 0.4").await;
    assert_eq!(chat_ok(&app, &alice, &session, "cost 0.4").await["subtype"], "error_max_budget_usd");
    let refused = app.chat(&alice, &session, "hello").await;
    refused.assert_error(402, "budget_exceeded");
    assert_eq!(refused.body["error"]["budget"]["limit"], "per_session", "{}", refused.text);
    assert_usd(&refused.body["error"]["budget"]["spent_usd"], 0.8);
    assert_eq!(refused.body["error"]["budget"]["resets_at"], Value::Null);
    assert!(refused.header("retry-after").is_none(), "waiting does not help");

    // Another session starts from nothing.
    let other = app.create_session(&alice, json!({})).await;
    assert_eq!(chat_ok(&app, &alice, &other, "hello").await["subtype"], "success");
    // The user's own limit beats the default.
    assert_eq!(app.put_budget(ADMIN_KEY, "alice", json!({"per_session_usd": 10})).await.status, StatusCode::OK);
    assert_eq!(chat_ok(&app, &alice, &session, "hello").await["subtype"], "success");
}

/// The `--max-budget-usd` of each CLI (by its `--session-id`), from the fake CLI's log.
fn started_with(log: &std::path::Path, session: &str) -> Option<f64> {
    let text = std::fs::read_to_string(log).expect("the CLI log");
    let line = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["args"].as_array().unwrap().iter().any(|a| a == &json!(format!("--session-id={session}"))))
        .unwrap_or_else(|| panic!("no CLI for {session} in {text}"));
    let args = line["args"].as_array().unwrap();
    args.iter().find_map(|a| a.as_str()?.strip_prefix("--max-budget-usd=")?.parse().ok())
}

/// The `--max-budget-usd` of every CLI started for `session` (`--session-id` or `--resume`),
/// in order.
fn budgets_of(log: &std::path::Path, session: &str) -> Vec<Option<f64>> {
    let text = std::fs::read_to_string(log).expect("the CLI log");
    let ours = [format!("--session-id={session}"), format!("--resume={session}")];
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["args"].as_array().unwrap().iter().any(|a| ours.iter().any(|o| a == o.as_str())))
        .map(|l| {
            let args = l["args"].as_array().unwrap().clone();
            args.iter().find_map(|a| a.as_str()?.strip_prefix("--max-budget-usd=")?.parse().ok())
        })
        .collect()
}

/// Two sessions of a user with $1 left start turns at the same moment: their CLIs together may
/// spend no more than the $1 (each CLI's `--max-budget-usd` is what its turn holds), and a
/// third turn while they run finds nothing unheld: 402, to retry once they end.
#[actix_web::test]
async fn concurrent_turns_of_one_user_together_stay_within_what_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("argv.log");
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.cli.env.insert("FAKE_CLAUDE_ARGV_LOG".into(), log.display().to_string());
        s.sandbox.mode = claude_agent_http::settings::SandboxMode::Off;
    })
    .await;
    let alice = app.create_user("alice").await;
    assert_eq!(app.put_budget(ADMIN_KEY, "alice", json!({"daily_usd": 1.0})).await.status, StatusCode::OK);
    let (a, b, c) = (
        app.create_session(&alice, json!({})).await,
        app.create_session(&alice, json!({})).await,
        app.create_session(&alice, json!({})).await,
    );
    for id in [&a, &b, &c] {
        app.wait_active(&alice, id).await;
    }
    let (ra, rb, ()) = tokio::join!(app.chat(&alice, &a, "sleep 1500"), app.chat(&alice, &b, "sleep 1500"), async {
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        let third = app.chat(&alice, &c, "hello").await;
        third.assert_error(402, "budget_exceeded");
        assert_eq!(third.header("retry-after"), Some("1"), "{:?}", third.headers);
        assert_usd(&third.body["error"]["budget"]["spent_usd"], 1.0);
    });
    for res in [&ra, &rb] {
        assert_eq!(res.status, StatusCode::OK, "{}", res.text);
        assert_eq!(res.body["subtype"], "success", "{}", res.text);
    }
    // The budget of the CLI each turn ran in (the last one started for its session).
    let ran_with: Vec<f64> =
        [&a, &b].iter().map(|id| budgets_of(&log, id).last().copied().flatten().expect("a budget")).collect();
    assert!(ran_with.iter().sum::<f64>() <= 1.0 + 1e-9, "together within the $1 left: {ran_with:?}");
    // Once they ended, what they held is free again.
    assert_eq!(chat_ok(&app, &alice, &c, "hello").await["subtype"], "success");
}

#[actix_web::test]
async fn each_cli_starts_with_what_the_budgets_leave_or_the_sessions_option_if_smaller() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("argv.log");
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.cli.env.insert("FAKE_CLAUDE_ARGV_LOG".into(), log.display().to_string());
        // The log lies outside the user's directory, which confinement rightly forbids.
        s.sandbox.mode = claude_agent_http::settings::SandboxMode::Off;
    })
    .await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    let limits = json!({"monthly_usd": 3.5, "per_session_usd": 1.5});
    assert_eq!(app.put_budget(ADMIN_KEY, "alice", limits).await.status, StatusCode::OK);

    let first = app.create_session(&alice, json!({"options": {"max_budget_usd": 5}})).await;
    app.wait_active(&alice, &first).await;
    assert_eq!(started_with(&log, &first), Some(1.5), "the per-session limit is the smallest");
    chat_ok(&app, &alice, &first, "cost 0.75").await;
    let second = app.create_session(&alice, json!({})).await;
    app.wait_active(&alice, &second).await;
    assert_eq!(started_with(&log, &second), Some(1.375), "half of what the month leaves");
    let third = app.create_session(&alice, json!({"options": {"max_budget_usd": 0.5}})).await;
    app.wait_active(&alice, &third).await;
    assert_eq!(started_with(&log, &third), Some(0.5), "the session's option, smaller");
    let bobs = app.create_session(&bob, json!({})).await;
    app.wait_active(&bob, &bobs).await;
    assert_eq!(started_with(&log, &bobs), None, "no limit, no flag");
}

/// The real CLI against the mock: a turn started with little budget left is stopped by the
/// CLI itself, and the next one is refused before the CLI (or the model) is asked.
#[actix_web::test]
async fn with_the_real_cli_a_turn_with_little_budget_left_ends_as_error_max_budget_usd() {
    let mock = crate::real_cli::MockApi::start();
    let app = crate::real_cli::spawn_real_app(&mock, |_| {}).await;
    let alice = app.create_user("alice").await;
    // One mock answer costs $0.000141 at Sonnet 4.5's prices; a tool call takes two.
    assert_eq!(app.put_budget(ADMIN_KEY, "alice", json!({"daily_usd": 0.0002})).await.status, StatusCode::OK);
    let session = app.create_session(&alice, json!({})).await;
    app.wait_active(&alice, &session).await;
    let stopped = app.chat(&alice, &session, "bash echo hi").await;
    assert_eq!(stopped.status, StatusCode::OK, "{}", stopped.text);
    assert_eq!(stopped.body["subtype"], "error_max_budget_usd", "{}", stopped.text);

    // The restarted CLI gets half of the less than one call left: its one call passes it.
    let last = app.chat(&alice, &session, "hello").await;
    assert_eq!(last.status, StatusCode::OK, "{}", last.text);

    let asked = mock.requests(&app.client).await.len();
    let refused = app.chat(&alice, &session, "hello").await;
    refused.assert_error(402, "budget_exceeded");
    assert!(refused.body["error"]["budget"]["spent_usd"].as_f64().unwrap() >= 0.0002, "{}", refused.text);
    assert_eq!(mock.requests(&app.client).await.len(), asked, "the model was not asked");
}

/// `/metrics`: each user's spend today and this month, their own limits and the defaults.
#[actix_web::test]
async fn metrics_show_each_users_spend_and_limits() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.budgets.monthly_usd = Some(100.0)).await;
    let alice = app.create_user("alice").await;
    app.create_user("bob").await;
    assert_eq!(app.put_budget(ADMIN_KEY, "alice", json!({"daily_usd": 2.0})).await.status, StatusCode::OK);
    let session = app.create_session(&alice, json!({})).await;
    chat_ok(&app, &alice, &session, "cost 0.25").await;
    let text = app.request(awc::http::Method::GET, "/metrics", None, None).await.text;
    let value = |series: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(series)).unwrap_or_else(|| panic!("no {series} in {text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value(r#"claude_agent_user_spent_usd{user_id="alice",period="day"}"#), 0.25);
    assert_eq!(value(r#"claude_agent_user_spent_usd{user_id="alice",period="month"}"#), 0.25);
    assert_eq!(value(r#"claude_agent_user_budget_usd{user_id="alice",limit="daily"}"#), 2.0);
    assert_eq!(value(r#"claude_agent_default_budget_usd{limit="monthly"}"#), 100.0);
    assert!(!text.contains(r#"user_id="bob""#), "no series for a user who neither spent nor has limits");
}
