//! Landlock: the agent's processes (here the fake CLI's grandchildren, and the real CLI's
//! tools) write only in the user's directory and read neither other users' files nor the
//! service's data. The same checks pass under `sandbox.mode = "off"`, so they test something.

use serde_json::json;

use crate::helpers::{Backend, TestApp, spawn_app_with};
use crate::real_cli::{MockApi, spawn_real_app};
use claude_agent_http::settings::SandboxMode;

async fn prepared(mode: SandboxMode) -> (TestApp, String, String) {
    let app = spawn_app_with(Backend::Sqlite, move |s| s.sandbox.mode = mode).await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    app.create_session(&bob, json!({})).await;
    std::fs::write(app.users_dir().join("bob/secret.txt"), "bob's secret").unwrap();
    let id = app.create_session(&alice, json!({})).await;
    (app, alice, id)
}

async fn say(app: &TestApp, key: &str, id: &str, message: &str) -> String {
    let res = app.chat(key, id, message).await;
    res.body["text"].as_str().unwrap_or_else(|| panic!("{}", res.text)).to_string()
}

#[actix_web::test]
async fn under_landlock_the_agents_processes_stay_in_their_users_directory() {
    let (app, alice, id) = prepared(SandboxMode::Landlock).await;
    let bob_secret = app.users_dir().join("bob/secret.txt");
    let outside = app.dir.path().join("outside.txt");
    let database = std::fs::canonicalize(&app.settings.session.sqlite_path).unwrap();
    let mine = app.users_dir().join("alice/mine.txt");

    assert!(say(&app, &alice, &id, &format!("read {}", bob_secret.display())).await.starts_with("read failed"));
    assert!(say(&app, &alice, &id, &format!("read {}", database.display())).await.starts_with("read failed"));
    assert!(say(&app, &alice, &id, &format!("put {} x", outside.display())).await.starts_with("put failed"));
    assert!(!outside.exists());
    assert!(say(&app, &alice, &id, &format!("put {} hello", mine.display())).await.starts_with("put ok"));
    assert_eq!(say(&app, &alice, &id, &format!("read {}", mine.display())).await, "read ok: hello");
    assert!(say(&app, &alice, &id, "read /etc/hostname").await.starts_with("read ok"), "the system stays readable");
    let health = app.get_health().await;
    assert_eq!(health.body["sandbox"]["mode"], "landlock");
    assert!(health.body["sandbox"]["abi"].as_i64().unwrap() >= 1);
}

#[actix_web::test]
async fn with_the_sandbox_off_the_same_checks_see_everything() {
    let (app, alice, id) = prepared(SandboxMode::Off).await;
    let bob_secret = app.users_dir().join("bob/secret.txt");
    let outside = app.dir.path().join("outside.txt");
    assert_eq!(say(&app, &alice, &id, &format!("read {}", bob_secret.display())).await, "read ok: bob's secret");
    assert!(say(&app, &alice, &id, &format!("put {} x", outside.display())).await.starts_with("put ok"));
    assert!(outside.exists());
    assert_eq!(app.get_health().await.body["sandbox"]["mode"], "off");
}

#[actix_web::test]
async fn the_real_cli_works_confined_and_its_tools_cannot_leave_the_users_directory() {
    let mock = MockApi::start();
    let app = spawn_real_app(&mock, |s| s.sandbox.mode = SandboxMode::Landlock).await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    app.create_session(&bob, json!({})).await;
    std::fs::write(app.users_dir().join("bob/secret.txt"), "bob's secret").unwrap();
    let id = app.create_session(&alice, json!({})).await;

    let read = app.chat(&alice, &id, &format!("bash cat {}", app.users_dir().join("bob/secret.txt").display())).await;
    let text = read.body["text"].as_str().unwrap_or_default().to_string();
    assert!(!text.contains("bob's secret"), "{}", read.text);
    assert!(text.contains("Permission denied") || read.body["tool_calls"][0]["is_error"] == true, "{}", read.text);

    let outside = app.dir.path().join("escaped.txt");
    let write = app.chat(&alice, &id, &format!("writeto {} out of bounds", outside.display())).await;
    assert_eq!(write.body["tool_calls"][0]["is_error"], true, "{}", write.text);
    assert!(!outside.exists(), "a Write outside the user's directory fails");

    let inside = app.users_dir().join("alice/inside.txt");
    let ok = app.chat(&alice, &id, &format!("writeto {} in bounds", inside.display())).await;
    assert_eq!(ok.body["tool_calls"][0]["is_error"], false, "{}", ok.text);
    assert_eq!(std::fs::read_to_string(&inside).unwrap(), "in bounds");
    // And the conversation goes on (the confined CLI keeps its transcript in the user's dir).
    assert_eq!(app.chat(&alice, &id, "hello").await.body["text"], "mock: hello");
}
