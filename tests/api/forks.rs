//! `POST /sessions/{id}/fork` and `POST /sessions/{id}/rewind`: with the real CLI against
//! mock_anthropic where the CLI's conversation matters (its `history` answer is every earlier
//! user text the model was sent), with the fake CLI for directories and errors.

use awc::http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, TestResponse, spawn_app};
use crate::real_cli::{MockApi, spawn_real_app};

async fn fork(app: &TestApp, key: &str, id: &str, body: Value) -> TestResponse {
    app.request(Method::POST, &format!("/api/v1/sessions/{id}/fork"), Some(key), Some(body)).await
}

async fn rewind(app: &TestApp, key: &str, id: &str, body: Value) -> TestResponse {
    app.request(Method::POST, &format!("/api/v1/sessions/{id}/rewind"), Some(key), Some(body)).await
}

async fn messages(app: &TestApp, key: &str, id: &str) -> Vec<Value> {
    let res = app.request(Method::GET, &format!("/api/v1/sessions/{id}/messages"), Some(key), None).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    res.body.as_array().cloned().unwrap_or_else(|| res.body["messages"].as_array().cloned().unwrap_or_default())
}

fn texts(messages: &[Value]) -> Vec<String> {
    messages.iter().map(|m| format!("{}: {}", m["role"].as_str().unwrap(), m["text"].as_str().unwrap())).collect()
}

/// Whether any regular file beneath `dir` (links not followed) holds `text`.
fn holds_a_copy_of(dir: &std::path::Path, text: &str) -> bool {
    std::fs::read_dir(dir).unwrap().flatten().any(|entry| {
        let kind = entry.file_type().unwrap();
        (kind.is_dir() && holds_a_copy_of(&entry.path(), text))
            || (kind.is_file() && std::fs::read_to_string(entry.path()).unwrap_or_default().contains(text))
    })
}

async fn say(app: &TestApp, key: &str, id: &str, text: &str) -> String {
    let res = app.chat(key, id, text).await;
    assert_eq!(res.status, StatusCode::OK, "{text}: {}", res.text);
    res.body["text"].as_str().unwrap().to_string()
}

#[actix_web::test]
async fn a_fork_at_the_second_of_three_turns_carries_two_and_the_original_keeps_three() {
    let mock = MockApi::start();
    let app = spawn_real_app(&mock, |_| {}).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({"subdir": "proj"})).await;
    for text in ["one", "two", "three"] {
        assert_eq!(say(&app, &key, &id, text).await, format!("mock: {text}"));
    }
    let history = messages(&app, &key, &id).await;
    assert_eq!(history.len(), 6);

    // At the second turn's answer (its user message would keep the same turn).
    let res = fork(&app, &key, &id, json!({"at_message_id": history[3]["id"]})).await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text);
    let at_two = res.body["session_id"].as_str().unwrap().to_string();
    assert_ne!(at_two, id);
    assert_eq!(res.body["user_id"], "alice");
    assert_eq!(res.body["subdir"], "proj", "the same directory by default");
    assert_eq!(res.body["message_count"], 2);
    assert_eq!(texts(&messages(&app, &key, &at_two).await), texts(&history[..4]));
    // The whole conversation, into another directory.
    let res = fork(&app, &key, &id, json!({"subdir": "elsewhere"})).await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text);
    let whole = res.body["session_id"].as_str().unwrap().to_string();
    assert_eq!(res.body["subdir"], "elsewhere");

    // What the model is sent: the fork's earlier turns, not the later part.
    assert_eq!(say(&app, &key, &at_two, "history").await, "one | two");
    assert_eq!(say(&app, &key, &whole, "history").await, "one | two | three");
    // The copied checkpoints are of the source's directory: a fork elsewhere restores no file to them.
    let copied = messages(&app, &key, &whole).await[0]["id"].clone();
    let res = rewind(&app, &key, &whole, json!({"message_id": copied, "files": true, "dry_run": true})).await;
    res.assert_error(422, "validation_error");
    // The original is untouched: its conversation, its stored history.
    assert_eq!(say(&app, &key, &id, "history").await, "one | two | three");
    assert_eq!(messages(&app, &key, &id).await.len(), 8);
    assert_eq!(app.get_session(&key, &id).await.body["message_count"], 4);
    // Each goes on its own way, and a fork of a fork works as well.
    assert_eq!(say(&app, &key, &at_two, "four").await, "mock: four");
    assert_eq!(say(&app, &key, &at_two, "history").await, "one | two | history | four");
    let res = fork(&app, &key, &at_two, json!({})).await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text);
    let grandchild = res.body["session_id"].as_str().unwrap().to_string();
    assert_eq!(say(&app, &key, &grandchild, "history").await, "one | two | history | four | history");
    assert_eq!(say(&app, &key, &id, "history").await, "one | two | three | history");
}

#[actix_web::test]
async fn a_rewind_restores_the_files_the_agent_wrote_and_a_dry_run_changes_nothing() {
    let mock = MockApi::start();
    let app = spawn_real_app(&mock, |_| {}).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({"subdir": "proj"})).await;
    let file = app.users_dir().join("alice/proj/a.txt");
    say(&app, &key, &id, "one").await;
    say(&app, &key, &id, "write a.txt first").await;
    say(&app, &key, &id, "write a.txt second").await;
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "second");
    let history = messages(&app, &key, &id).await;
    assert_eq!(history.len(), 6);
    let (second, third) = (history[2]["id"].clone(), history[4]["id"].clone());

    let res = rewind(&app, &key, &id, json!({"message_id": second, "files": true, "dry_run": true})).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    assert_eq!(res.body, json!({"message_id": second, "files": ["a.txt"], "dry_run": true}));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "second", "a dry run changes no file");
    assert_eq!(messages(&app, &key, &id).await.len(), 6, "nor the history");

    let res = rewind(&app, &key, &id, json!({"message_id": third, "files": true})).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    assert_eq!(res.body, json!({"message_id": third, "files": ["a.txt"], "dry_run": false}));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "first", "back to before the third message");
    assert_eq!(texts(&messages(&app, &key, &id).await), texts(&history[..4]));
    assert_eq!(app.get_session(&key, &id).await.body["message_count"], 2);
    assert_eq!(say(&app, &key, &id, "history").await, "one | write a.txt first");

    // Without files: the conversation goes back, the files stay.
    say(&app, &key, &id, "write b.txt kept").await;
    let b = messages(&app, &key, &id).await;
    let res = rewind(&app, &key, &id, json!({"message_id": b[b.len() - 2]["id"]})).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    assert_eq!(res.body["files"], json!([]));
    assert_eq!(std::fs::read_to_string(app.users_dir().join("alice/proj/b.txt")).unwrap(), "kept");
    assert_eq!(say(&app, &key, &id, "history").await, "one | write a.txt first | history");

    // To before the second message: a.txt did not exist then. A restart between changes
    // nothing (the checkpoints and the cut are kept).
    let app = app.restart().await;
    let res = rewind(&app, &key, &id, json!({"message_id": second, "files": true})).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    assert!(!file.exists(), "a file the agent created is removed");
    assert_eq!(texts(&messages(&app, &key, &id).await), texts(&history[..2]));
    assert_eq!(say(&app, &key, &id, "history").await, "one");

    // To before the first: nothing is left, a new conversation starts.
    let first = messages(&app, &key, &id).await[0]["id"].clone();
    let res = rewind(&app, &key, &id, json!({"message_id": first})).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    assert!(messages(&app, &key, &id).await.is_empty());
    assert_eq!(app.get_session(&key, &id).await.body["message_count"], 0);
    say(&app, &key, &id, "hello").await;
    assert_eq!(say(&app, &key, &id, "history").await, "hello");
}

#[actix_web::test]
async fn a_fork_can_copy_the_directory_without_following_a_link_out_of_it() {
    let app = spawn_app(Backend::Sqlite).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({"subdir": "proj"})).await;
    let users = app.users_dir();
    // Another user's secret, and a link the agent planted towards it.
    std::fs::create_dir_all(users.join("bob")).unwrap();
    std::fs::write(users.join("bob/secret.txt"), "bob's secret").unwrap();
    std::fs::create_dir_all(users.join("alice/proj/src")).unwrap();
    std::fs::write(users.join("alice/proj/src/main.rs"), "fn main() {}").unwrap();
    std::os::unix::fs::symlink(users.join("bob/secret.txt"), users.join("alice/proj/leak.txt")).unwrap();
    std::os::unix::fs::symlink(users.join("bob"), users.join("alice/proj/bobdir")).unwrap();

    let res = fork(&app, &key, &id, json!({"subdir": "proj-copy", "copy_files": true})).await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text);
    assert_eq!(res.body["subdir"], "proj-copy");
    let copy = users.join("alice/proj-copy");
    assert_eq!(std::fs::read_to_string(copy.join("src/main.rs")).unwrap(), "fn main() {}");
    assert!(!holds_a_copy_of(&copy, "bob's secret"), "no byte of bob's file is copied");
    for link in ["leak.txt", "bobdir"] {
        let meta = std::fs::symlink_metadata(copy.join(link)).unwrap();
        assert!(meta.file_type().is_symlink(), "{link} is copied as a link, not as what it leads to");
    }
    // Nor can the fork read it through the files API (as for any link leading out).
    let fork_id = res.body["session_id"].as_str().unwrap().to_string();
    let res = app.files(&key, Method::GET, &fork_id, "leak.txt", None).await;
    assert_ne!(res.status, StatusCode::OK, "{}", res.text);
    // The source is untouched.
    assert!(std::fs::symlink_metadata(users.join("alice/proj/leak.txt")).unwrap().is_symlink());

    // Into its own directory, or one with files in it: refused, nothing started.
    fork(&app, &key, &id, json!({"copy_files": true})).await.assert_error(422, "validation_error");
    fork(&app, &key, &id, json!({"subdir": "proj-copy", "copy_files": true}))
        .await
        .assert_error(422, "validation_error");
    fork(&app, &key, &id, json!({"subdir": "../bob"})).await.assert_error(400, "invalid_path");
    // A copy's destination that is a link out of the user's directory is refused.
    std::os::unix::fs::symlink(users.join("bob"), users.join("alice/out")).unwrap();
    fork(&app, &key, &id, json!({"subdir": "out", "copy_files": true})).await.assert_error(400, "invalid_path");
    assert!(!users.join("bob/src").exists());
}

#[actix_web::test]
async fn forks_and_rewinds_refuse_what_is_not_theirs_to_change() {
    let app = spawn_app(Backend::Sqlite).await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    let id = app.create_session(&alice, json!({})).await;
    assert_eq!(app.chat(&alice, &id, "one").await.status, StatusCode::OK);
    let history = messages(&app, &alice, &id).await;
    let (user_msg, answer) = (history[0]["id"].clone(), history[1]["id"].clone());

    // Another user's session, or a message of another session: not found.
    fork(&app, &bob, &id, json!({})).await.assert_error(404, "session_not_found");
    rewind(&app, &bob, &id, json!({"message_id": user_msg})).await.assert_error(404, "session_not_found");
    let bobs = app.create_session(&bob, json!({})).await;
    rewind(&app, &bob, &bobs, json!({"message_id": user_msg})).await.assert_error(404, "not_found");
    fork(&app, &bob, &bobs, json!({"at_message_id": user_msg})).await.assert_error(404, "not_found");
    rewind(&app, &alice, &id, json!({"message_id": 999_999})).await.assert_error(404, "not_found");
    // An answer is not a user message.
    rewind(&app, &alice, &id, json!({"message_id": answer})).await.assert_error(422, "validation_error");
    rewind(&app, &alice, &id, json!({})).await.assert_error(422, "validation_error");
    rewind(&app, &alice, &id, json!({"message_id": user_msg, "colour": 1})).await.assert_error(422, "validation_error");

    // While a turn runs: busy, and nothing changed.
    let mut stream = app.open_chat_stream(&alice, &id, "slow 30 100").await;
    stream.next_frame().await.expect("the slow turn started");
    rewind(&app, &alice, &id, json!({"message_id": user_msg})).await.assert_error(429, "session_busy");
    stream.until_turn_end().await;
    assert_eq!(messages(&app, &alice, &id).await.len(), 4);

    // A dry run without files changes nothing; a closed session must be resumed first.
    let res = rewind(&app, &alice, &id, json!({"message_id": user_msg, "dry_run": true})).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    assert_eq!(messages(&app, &alice, &id).await.len(), 4);
    assert_eq!(app.delete_session(&alice, &id, "").await.status, StatusCode::NO_CONTENT);
    rewind(&app, &alice, &id, json!({"message_id": user_msg})).await.assert_error(409, "session_closed");
    // A closed session can still be forked (its conversation is kept).
    let res = fork(&app, &alice, &id, json!({})).await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text);
    assert_eq!(res.body["message_count"], 2);
}

/// The stored side on both backends (the fake CLI reports no transcript uuids: each rewind
/// there starts a new CLI conversation, and a fork starts one with the copied history).
#[actix_web::test]
async fn fork_and_rewind_store_the_same_on_sqlite_and_postgresql() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let app = spawn_app(backend).await;
        let key = app.create_user("alice").await;
        let id = app.create_session(&key, json!({"metadata": {"ticket": 7}})).await;
        for text in ["one", "two", "three"] {
            assert_eq!(app.chat(&key, &id, text).await.status, StatusCode::OK);
        }
        let history = messages(&app, &key, &id).await;
        let res = fork(&app, &key, &id, json!({"at_message_id": history[2]["id"]})).await;
        assert_eq!(res.status, StatusCode::CREATED, "{}", res.text);
        assert_eq!((&res.body["message_count"], &res.body["metadata"]), (&json!(2), &json!({"ticket": 7})));
        let forked = res.body["session_id"].as_str().unwrap().to_string();
        assert_eq!(texts(&messages(&app, &key, &forked).await), texts(&history[..4]));

        let res = rewind(&app, &key, &id, json!({"message_id": history[2]["id"]})).await;
        assert_eq!(res.status, StatusCode::OK, "{}", res.text);
        assert_eq!(texts(&messages(&app, &key, &id).await), texts(&history[..2]));
        assert_eq!(app.get_session(&key, &id).await.body["message_count"], 1);
        assert_eq!(messages(&app, &key, &forked).await.len(), 4, "the fork keeps its copy");
        assert_eq!(app.chat(&key, &id, "again").await.status, StatusCode::OK);
        assert_eq!(messages(&app, &key, &id).await.len(), 4);
    }
}

#[actix_web::test]
async fn a_fork_counts_against_the_quotas_like_a_create_and_a_refused_one_leaves_nothing() {
    let app = crate::helpers::spawn_app_with(Backend::Sqlite, |s| s.api.max_sessions_per_user = 1).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    assert_eq!(app.chat(&key, &id, "one").await.status, StatusCode::OK);
    let refused = fork(&app, &key, &id, json!({})).await;
    refused.assert_error(429, "quota_exceeded");
    let listed = app.list_sessions(&key, "").await;
    assert_eq!(listed.body, json!([id]), "no row of the refused fork is left");
    // Once the source is closed there is room.
    assert_eq!(app.delete_session(&key, &id, "").await.status, StatusCode::NO_CONTENT);
    let res = fork(&app, &key, &id, json!({})).await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text);
    assert_eq!(app.get_session(&key, &id).await.body["status"], "closed", "the source stays closed");
}

/// A fork writes a transcript of its own only at its first message; until then it starts from
/// its source's. Purging the source first must not take the fork's conversation with it: the
/// purge leaves each such fork a copy (at its fork point), its live CLI stopped.
#[actix_web::test]
async fn a_fork_outlives_the_purge_of_its_source_before_its_first_message() {
    let mock = MockApi::start();
    let app = spawn_real_app(&mock, |s| s.api.idle_session_timeout = 1).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    for text in ["one", "two", "three"] {
        assert_eq!(say(&app, &key, &id, text).await, format!("mock: {text}"));
    }
    let history = messages(&app, &key, &id).await;
    let at_two = fork(&app, &key, &id, json!({"at_message_id": history[3]["id"]})).await;
    assert_eq!(at_two.status, StatusCode::CREATED, "{}", at_two.text);
    let at_two = at_two.body["session_id"].as_str().unwrap().to_string();
    let elsewhere = fork(&app, &key, &id, json!({"subdir": "elsewhere"})).await;
    assert_eq!(elsewhere.status, StatusCode::CREATED, "{}", elsewhere.text);
    let elsewhere = elsewhere.body["session_id"].as_str().unwrap().to_string();
    // One fork's CLI is evicted before the purge; the other's is live through it.
    let evicted = crate::helpers::eventually(std::time::Duration::from_secs(15), || async {
        app.get_session(&key, &at_two).await.body["status"] == "idle"
    })
    .await;
    assert!(evicted, "the fork's CLI went idle");
    let res = app.request(Method::DELETE, &format!("/api/v1/sessions/{id}?purge=true"), Some(&key), None).await;
    assert!(res.status.is_success(), "{}", res.text);
    assert_eq!(say(&app, &key, &at_two, "history").await, "one | two");
    assert_eq!(say(&app, &key, &elsewhere, "history").await, "one | two | three");
    assert_eq!(say(&app, &key, &at_two, "history").await, "one | two | history");
}
