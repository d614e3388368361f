//! `/api/v1/usage` and `/api/v1/me/usage`: the totals equal the sum of the turns' costs and
//! tokens (as each `/chat` answer reported them), grouped by day, user and session; who sees
//! what; CSV on request.

use awc::http::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_KEY, Backend, TestApp, spawn_app};
use crate::on_both_backends;

on_both_backends!(usage_totals_equal_the_sum_of_the_turns_costs, a_user_sees_only_their_own_usage_and_csv_on_request);

#[derive(Default, Debug)]
struct Sum {
    turns: i64,
    input: i64,
    output: i64,
    cost: f64,
}

/// Runs a turn and adds what its answer reported to `sum`.
async fn turn(app: &TestApp, key: &str, session: &str, message: &str, sum: &mut Sum) {
    let res = app.chat(key, session, message).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    sum.turns += 1;
    sum.input += res.body["usage"]["input_tokens"].as_i64().unwrap();
    sum.output += res.body["usage"]["output_tokens"].as_i64().unwrap();
    sum.cost += res.body["cost_usd"].as_f64().unwrap();
}

#[track_caller]
fn assert_row(row: &Value, sum: &Sum) {
    assert_eq!(row["turns"], sum.turns, "{row} vs {sum:?}");
    assert_eq!(row["input_tokens"], sum.input, "{row} vs {sum:?}");
    assert_eq!(row["output_tokens"], sum.output, "{row} vs {sum:?}");
    assert!((row["cost_usd"].as_f64().unwrap() - sum.cost).abs() < 1e-9, "{row} vs {sum:?}");
}

async fn usage_totals_equal_the_sum_of_the_turns_costs(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    let (mut alice_sum, mut bob_sum, mut first_sum) = (Sum::default(), Sum::default(), Sum::default());
    let first = app.create_session(&alice, json!({})).await;
    let second = app.create_session(&alice, json!({})).await;
    let bobs = app.create_session(&bob, json!({})).await;
    for message in ["cost 0.25", "hello there"] {
        turn(&app, &alice, &first, message, &mut first_sum).await;
    }
    turn(&app, &alice, &second, "cost 0.5", &mut alice_sum).await;
    turn(&app, &bob, &bobs, "cost 0.125", &mut bob_sum).await;
    alice_sum.turns += first_sum.turns;
    alice_sum.input += first_sum.input;
    alice_sum.output += first_sum.output;
    alice_sum.cost += first_sum.cost;

    let by_user = app.get_usage(ADMIN_KEY, "?group_by=user", false).await;
    assert_eq!(by_user.status, StatusCode::OK, "{}", by_user.text);
    let rows = by_user.body.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{}", by_user.text);
    assert_eq!((rows[0]["user_id"].clone(), rows[1]["user_id"].clone()), (json!("alice"), json!("bob")));
    assert_row(&rows[0], &alice_sum);
    assert_row(&rows[1], &bob_sum);
    assert!(rows[0]["period"].as_str().unwrap().contains("+00:00/"), "{}", by_user.text);

    let by_day = app.get_usage(ADMIN_KEY, "", false).await;
    let days = by_day.body.as_array().unwrap();
    let everyone = Sum {
        turns: alice_sum.turns + bob_sum.turns,
        input: alice_sum.input + bob_sum.input,
        output: alice_sum.output + bob_sum.output,
        cost: alice_sum.cost + bob_sum.cost,
    };
    assert_eq!(days.len(), 1, "one UTC day: {}", by_day.text);
    assert_row(&days[0], &everyone);
    assert_eq!(days[0]["period"].as_str().unwrap().len(), 10, "{}", by_day.text);

    let by_session = app.get_usage(ADMIN_KEY, "?group_by=session&user_id=alice", false).await;
    let sessions = by_session.body.as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{}", by_session.text);
    let row = sessions.iter().find(|r| r["session_id"] == first.as_str()).expect("the first session's row");
    assert_row(row, &first_sum);

    // A range that ends before any turn has none; a bad one is refused.
    let empty = app.get_usage(ADMIN_KEY, "?from=2020-01-01&to=2020-02-01", false).await;
    assert_eq!(empty.body, json!([]), "{}", empty.text);
    app.get_usage(ADMIN_KEY, "?from=2020-02-01&to=2020-01-01", false).await.assert_error(422, "validation_error");
    app.get_usage(ADMIN_KEY, "?from=yesterday", false).await.assert_error(422, "validation_error");

    // Alice's own view: today and this month against her limits.
    assert_eq!(app.put_budget(ADMIN_KEY, "alice", json!({"daily_usd": 2.0})).await.status, StatusCode::OK);
    let mine = app.get_my_usage(&alice).await;
    assert_eq!(mine.status, StatusCode::OK, "{}", mine.text);
    assert_row(&mine.body["today"], &alice_sum);
    assert_row(&mine.body["this_month"], &alice_sum);
    assert_eq!(mine.body["today"]["limit_usd"], 2.0);
    let left = mine.body["today"]["left_usd"].as_f64().unwrap();
    assert!((left - (2.0 - alice_sum.cost)).abs() < 1e-9, "{}", mine.text);
    assert_eq!(mine.body["this_month"]["limit_usd"], Value::Null);
}

async fn a_user_sees_only_their_own_usage_and_csv_on_request(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    let (mut alice_sum, mut bob_sum) = (Sum::default(), Sum::default());
    let session = app.create_session(&alice, json!({})).await;
    turn(&app, &alice, &session, "cost 0.25", &mut alice_sum).await;
    let bobs = app.create_session(&bob, json!({})).await;
    turn(&app, &bob, &bobs, "cost 0.5", &mut bob_sum).await;

    let own = app.get_usage(&alice, "?group_by=user", false).await;
    assert_eq!(own.body.as_array().unwrap().len(), 1, "{}", own.text);
    assert_row(&own.body[0], &alice_sum);
    app.get_usage(&alice, "?user_id=bob", false).await.assert_error(403, "forbidden");
    app.get_my_usage(ADMIN_KEY).await.assert_error(403, "forbidden");

    let csv = app.get_usage(ADMIN_KEY, "?group_by=session", true).await;
    assert_eq!(csv.status, StatusCode::OK);
    assert!(csv.header("content-type").unwrap().starts_with("text/csv"), "{:?}", csv.headers);
    let lines: Vec<&str> = csv.text.lines().collect();
    assert_eq!(lines[0], "period,user_id,session_id,turns,input_tokens,output_tokens,cost_usd");
    assert_eq!(lines.len(), 3, "{}", csv.text);
    let bob_line = lines.iter().find(|l| l.contains(&bobs)).expect("Bob's session");
    let fields: Vec<&str> = bob_line.split(',').collect();
    assert_eq!(fields[1], "bob");
    assert_eq!(fields[3], "1");
    assert!((fields[6].parse::<f64>().unwrap() - bob_sum.cost).abs() < 1e-9, "{bob_line}");
}
