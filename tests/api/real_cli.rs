//! The real Claude Code CLI (pinned, installed by scripts/install-cli) driven through the
//! service against examples/mock_anthropic.rs. These never skip: without the CLI they fail.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use awc::http::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, eventually, spawn_app_with};

pub fn real_cli_path() -> PathBuf {
    let path = std::env::var("REAL_CLAUDE_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cli/node_modules/.bin/claude"));
    assert!(
        path.exists(),
        "the real CLI is missing at {}: run scripts/install-cli (scripts/test does)",
        path.display()
    );
    path
}

/// examples/mock_anthropic.rs on a free loopback port; killed on drop.
pub struct MockApi {
    child: Child,
    pub url: String,
}

impl MockApi {
    pub fn start() -> MockApi {
        let bin = crate::helpers::fake_cli_path().with_file_name("mock_anthropic");
        let mut child = Command::new(&bin)
            .arg("0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line.trim().strip_prefix("listening on ").expect("mock prints its address").to_string();
        MockApi { child, url: format!("http://{addr}") }
    }

    /// Every request body the mock received.
    pub async fn requests(&self, client: &awc::Client) -> Vec<Value> {
        let mut res = client.get(format!("{}/_mock/requests", self.url)).send().await.unwrap();
        res.json::<Vec<Value>>().limit(256 * 1024 * 1024).await.unwrap()
    }
}

impl MockApi {
    /// The `x-api-key` of every `/v1/messages` request so far, in order.
    pub async fn api_keys(&self, client: &awc::Client) -> Vec<String> {
        let mut res = client.get(format!("{}/_mock/api_keys", self.url)).send().await.unwrap();
        res.json::<Vec<String>>().await.unwrap()
    }
}

impl Drop for MockApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An app whose sessions run the real CLI against `mock`.
pub async fn spawn_real_app(mock: &MockApi, customize: impl FnOnce(&mut claude_agent_http::Settings)) -> TestApp {
    let url = mock.url.clone();
    spawn_app_with(Backend::Sqlite, move |s| {
        s.cli.path = real_cli_path().display().to_string();
        for (k, v) in [
            ("ANTHROPIC_BASE_URL", url.as_str()),
            ("ANTHROPIC_API_KEY", "test-key-offline"),
            ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
            ("DISABLE_TELEMETRY", "1"),
            ("CLAUDE_CODE_MAX_RETRIES", "0"),
            // bypassPermissions as root (CI runs as root) needs exactly IS_SANDBOX=1.
            ("IS_SANDBOX", "1"),
        ] {
            s.cli.env.insert(k.into(), v.into());
        }
        s.defaults.model = Some("claude-sonnet-4-5".into());
        s.cli.stop_grace = 5;
        customize(s);
    })
    .await
}

#[actix_web::test]
async fn the_real_cli_chats_streams_tokens_and_writes_a_file_in_the_session_directory() {
    let mock = MockApi::start();
    let app = spawn_real_app(&mock, |_| {}).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({"subdir": "proj"})).await;
    app.wait_active(&key, &id).await;

    let res = app.chat(&key, &id, "hello").await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    assert_eq!(res.body["text"], "mock: hello");
    assert_eq!(res.body["subtype"], "success");
    assert!(res.body["cost_usd"].as_f64().unwrap() > 0.0);

    let stream = app.chat_stream(&key, json!({"session_id": id, "message": "tell me a longer story please"})).await;
    assert_eq!(stream.status, StatusCode::OK);
    let deltas: Vec<&str> = stream
        .frames
        .iter()
        .filter(|(_, f)| f["type"] == "text_delta")
        .map(|(_, f)| f["text"].as_str().unwrap())
        .collect();
    assert!(deltas.len() >= 4, "token deltas: {:?}", stream.types());
    assert_eq!(deltas.concat(), "mock: tell me a longer story please");
    assert_eq!(stream.last()["type"], "done");

    let res = app.chat(&key, &id, "write note.txt written by the real cli").await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    assert_eq!(res.body["tool_calls"][0]["tool"], "Write");
    assert_eq!(res.body["tool_calls"][0]["is_error"], false);
    assert_eq!(res.body["text"], "Wrote note.txt.");
    let written = app.users_dir().join("alice/proj/note.txt");
    assert_eq!(std::fs::read_to_string(&written).unwrap(), "written by the real cli");
}

#[actix_web::test]
async fn the_real_cli_obeys_an_interrupt() {
    let mock = MockApi::start();
    let app = spawn_real_app(&mock, |_| {}).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    let mut stream = app.open_chat_stream(&key, &id, "slow").await;
    let (_, first) = stream.next_frame().await.expect("first frame");
    assert_eq!(first["type"], "text_delta");
    let started = std::time::Instant::now();
    assert_eq!(app.interrupt(&key, &id).await.status, StatusCode::ACCEPTED);
    let rest = stream.rest().await;
    assert!(started.elapsed() < Duration::from_secs(5), "ended within 5 s");
    let last = &rest.last().expect("a last frame").1;
    assert_eq!(last["type"], "done", "{last}");
    assert_eq!(last["result"]["subtype"], "interrupted");
    // The process stayed usable.
    assert_eq!(app.chat(&key, &id, "after").await.body["text"], "mock: after");
}

#[actix_web::test]
async fn the_real_cli_resumes_its_conversation_after_its_process_was_stopped() {
    let mock = MockApi::start();
    let app = spawn_real_app(&mock, |s| s.api.idle_session_timeout = 2).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    assert_eq!(app.chat(&key, &id, "alpha").await.body["text"], "mock: alpha");
    let stopped =
        eventually(Duration::from_secs(20), || async { app.get_session(&key, &id).await.body["status"] == "idle" })
            .await;
    assert!(stopped, "the idle CLI was stopped");
    assert!(app.cli_pids().await.is_empty());
    let res = app.chat(&key, &id, "history").await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    assert_eq!(res.body["text"], "alpha", "the respawned CLI sent the earlier turn to the model");
    let requests = mock.requests(&app.client).await;
    let last = requests.iter().rev().find(|r| r["tools"].as_array().is_some_and(|t| !t.is_empty())).unwrap();
    assert!(last["messages"].to_string().contains("alpha"), "the mock saw the earlier turn");
}

#[actix_web::test]
async fn the_real_cli_asks_before_writing_and_obeys_allow_and_deny_given_over_http() {
    let mock = MockApi::start();
    let app = spawn_real_app(&mock, |s| {
        s.defaults.permission_mode = claude_agent_http::settings::PermissionMode::Default;
    })
    .await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    let mut follower = app.open_events(&format!("/api/v1/sessions/{id}/events"), Some(&key), None).await;
    let dir = app.users_dir().join("alice");
    for (file, behavior) in [("yes.txt", "allow"), ("no.txt", "deny")] {
        let res = app.post_message(&key, &id, &format!("write {file} content of {file}")).await;
        assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.text);
        let request = loop {
            let (_, frame) = follower.next_frame().await.expect("frames");
            assert_ne!(frame["type"], "done", "the CLI wrote without asking");
            if frame["type"] == "permission_request" {
                break frame;
            }
        };
        assert_eq!(request["tool_name"], "Write");
        let rid = request["request_id"].as_str().unwrap();
        let answer = app
            .request(
                awc::http::Method::POST,
                &format!("/api/v1/sessions/{id}/permissions/{rid}"),
                Some(&key),
                Some(json!({"behavior": behavior, "message": "not this one"})),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        let frames = follower.until_turn_end().await;
        assert_eq!(frames.last().unwrap().1["type"], "done");
        let result = frames.iter().find(|(_, f)| f["type"] == "tool_result").expect("tool_result").1.clone();
        assert_eq!(result["is_error"], behavior == "deny", "{result}");
    }
    assert_eq!(std::fs::read_to_string(dir.join("yes.txt")).unwrap(), "content of yes.txt");
    assert!(!dir.join("no.txt").exists(), "a denied Write writes nothing");
}

#[actix_web::test]
async fn the_real_cli_gets_a_configured_stdio_mcp_server_and_calls_its_tool() {
    let mock = MockApi::start();
    let server = crate::helpers::fake_cli_path().with_file_name("mcp_echo");
    let app = spawn_real_app(&mock, move |s| {
        s.mcp_servers.insert("echo".into(), json!({"command": server.display().to_string()}));
    })
    .await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    let res = app.chat(&key, &id, "mcp hello from the mcp test").await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    assert_eq!(res.body["tool_calls"][0]["tool"], "mcp__echo__echo");
    assert_eq!(res.body["tool_calls"][0]["is_error"], false, "{}", res.text);
    assert_eq!(res.body["text"], "MCP said: echo: hello from the mcp test");
    let agent = app.request(awc::http::Method::GET, &format!("/api/v1/sessions/{id}/agent"), Some(&key), None).await;
    assert_eq!(agent.status, StatusCode::OK, "{}", agent.text);
    let servers = agent.body["mcp_servers"].as_array().unwrap();
    assert!(servers.iter().any(|s| s["name"] == "echo" && s["status"] == "connected"), "{}", agent.text);
    assert!(agent.body["tools"].as_array().unwrap().iter().any(|t| t == "mcp__echo__echo"));
}

#[actix_web::test]
async fn a_users_skill_is_listed_for_that_user_only_and_project_skills_for_their_session() {
    let mock = MockApi::start();
    let app = spawn_real_app(&mock, |_| {}).await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    let skill = |dir: PathBuf, name: &str| {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        std::fs::write(
            dir.join(name).join("SKILL.md"),
            format!("---\nname: {name}\ndescription: A test skill called {name}.\n---\nSay the word {name}.\n"),
        )
        .unwrap();
    };
    let a = app.create_session(&alice, json!({"subdir": "proj"})).await;
    let b = app.create_session(&bob, json!({})).await;
    skill(app.users_dir().join("alice/.claude/skills"), "alice-greeting");
    skill(app.users_dir().join("alice/proj/.claude/skills"), "proj-checklist");
    let names = |body: &Value| -> Vec<String> {
        body["skills"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().map(str::to_owned).unwrap_or_else(|| s["name"].as_str().unwrap_or("").to_owned()))
            .collect()
    };
    for (key, id) in [(&alice, &a), (&bob, &b)] {
        assert_eq!(app.chat(key, id, "hi").await.status, StatusCode::OK);
    }
    let alice_agent =
        app.request(awc::http::Method::GET, &format!("/api/v1/sessions/{a}/agent"), Some(&alice), None).await;
    let bob_agent = app.request(awc::http::Method::GET, &format!("/api/v1/sessions/{b}/agent"), Some(&bob), None).await;
    let (alice_skills, bob_skills) = (names(&alice_agent.body), names(&bob_agent.body));
    assert!(alice_skills.contains(&"alice-greeting".to_string()), "{alice_skills:?}");
    assert!(alice_skills.contains(&"proj-checklist".to_string()), "{alice_skills:?}");
    assert!(!bob_skills.contains(&"alice-greeting".to_string()), "{bob_skills:?}");
    app.request(awc::http::Method::GET, &format!("/api/v1/sessions/{a}/agent"), Some(&bob), None)
        .await
        .assert_error(404, "session_not_found");
}

/// What the session spent is what the model was asked for, whatever the CLI's running total
/// does across processes: 2.1.330 restores, on `--resume`, the total its transcript saved at
/// its last clean exit, so after a kill it restarts from 0 (here below the session's total,
/// then above it within one turn) and after a clean stop from what that process had reached.
/// Each mock answer costs 12 input and 7 output tokens at Sonnet 4.5's $3 and $15 per million.
#[actix_web::test]
async fn the_real_clis_costs_add_up_across_a_kill_and_a_resume() {
    const PER_CALL: f64 = (12.0 * 3.0 + 7.0 * 15.0) / 1e6;
    let mock = MockApi::start();
    let app = spawn_real_app(&mock, |s| s.api.idle_session_timeout = 3).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    let chat = async |message: &str| {
        let res = app.chat(&key, &id, message).await;
        assert_eq!(res.status, StatusCode::OK, "{}", res.text);
        res.body["cost_usd"].as_f64().unwrap()
    };
    let mut turn_costs = vec![chat("alpha").await, chat("beta").await];
    // Killed: the CLI saves no total, its successor starts from 0 below the session's 2 calls.
    for pid in app.cli_pids().await {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    let idle =
        eventually(Duration::from_secs(20), || async { app.get_session(&key, &id).await.body["status"] == "idle" })
            .await;
    assert!(idle, "the killed CLI's session is idle");
    turn_costs.push(chat("write note.txt two calls").await); // a Write tool call: two model calls
    // Stopped cleanly (idle): the next CLI restores what this one reached (2 calls), below
    // the session's 4.
    let stopped =
        eventually(Duration::from_secs(20), || async { app.get_session(&key, &id).await.body["status"] == "idle" })
            .await;
    assert!(stopped, "the idle CLI was stopped");
    turn_costs.push(chat("gamma").await);

    let calls: Vec<Value> =
        mock.requests(&app.client).await.into_iter().filter(|r| r.get("messages").is_some()).collect();
    assert!(calls.iter().all(|r| r["model"] == "claude-sonnet-4-5"), "priced as Sonnet 4.5");
    assert_eq!(calls.len(), 5, "alpha, beta, two for the write, gamma");
    let expected = calls.len() as f64 * PER_CALL;
    let near = |got: f64, what: &str| assert!((got - expected).abs() < 1e-9, "{what}: {got} != {expected}");
    near(turn_costs.iter().sum(), &format!("the turns' costs {turn_costs:?}"));
    for (cost, calls) in turn_costs.iter().zip([1.0, 1.0, 2.0, 1.0]) {
        assert!((cost - calls * PER_CALL).abs() < 1e-9, "each turn costs its calls: {turn_costs:?}");
    }
    near(app.get_session(&key, &id).await.body["total_cost_usd"].as_f64().unwrap(), "the session's total");
    let usage = app.get_usage(&key, "?group_by=session", false).await;
    assert_eq!(usage.status, StatusCode::OK, "{}", usage.text);
    near(usage.body[0]["cost_usd"].as_f64().unwrap(), "the usage ledger");
}
