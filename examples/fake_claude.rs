//! A stand-in for the `claude` CLI that speaks its stream-json protocol (see
//! `../shared/protocol.md`), for fast tests, benchmarks and demos without an API key.
//!
//! Run as the service's `cli.path`. It answers `initialize`, emits `system/init`, partial
//! `stream_event` text deltas, `assistant` frames, tool_use → tool_result pairs and a `result`
//! with cost and usage; obeys `interrupt`; keeps each session's history on disk so that
//! `--session-id` / `--resume` behave like the real CLI. The message text picks a behaviour:
//!
//! | message            | behaviour |
//! |--------------------|-----------|
//! | anything else      | answers `echo: <message>` in a few deltas |
//! | `slow N [MS]`      | N words, one every MS ms (default 100); interruptible |
//! | `sleep MS`         | answers after MS ms |
//! | `tool`             | a Bash tool_use, its tool_result, then text |
//! | `tool again MS`    | `tool`, whose `can_use_tool` is sent again with the same request id after MS ms |
//! | `write NAME TEXT`  | a Write tool_use that really writes NAME in the cwd |
//! | `link NAME TARGET` | a Bash tool_use that makes NAME a symlink to TARGET (an agent's own link) |
//! | `crash`            | a delta, then exits with code 3 mid-turn |
//! | `hang`             | never answers, ignores interrupts |
//! | `garbage`          | prints a non-JSON and a malformed line, then echoes |
//! | `huge MB`          | one text delta line of MB MiB |
//! | `spawn`            | starts `sleep 1000` as a grandchild, leaves it running, answers its pid |
//! | `history`          | answers every earlier user message of the session, joined by ` | ` |
//! | `read PATH`        | a grandchild `cat PATH`: answers `read ok: <content>` or `read failed: <error>` |
//! | `put PATH TEXT`    | a grandchild `sh -c` writes TEXT to PATH: answers `put ok` or `put failed: <error>` |
//! | `stamp`            | answers `stamp:<ns since epoch>` taken just before writing the first delta |
//! | `markdown`         | answers `MARKDOWN` (a heading, bold, a list, a Rust code block) in small deltas |
//! | `cost USD`         | answers `cost USD`; the turn costs USD (others cost 0.001) |
//!
//! Steering, as 2.1.330 does it: a user message that arrives during a turn is queued
//! (`command_lifecycle` `queued`, keyed by its `uuid`); each word of a `slow` turn is a tool
//! boundary, where queued messages are handed to the running turn (`started`; the answer
//! goes on with `[steered: TEXT]`, and the result lists their uuids in
//! `user_message_uuids`); those still queued at the end run as the next turn. An `interrupt`
//! with `cancel_queued` drops them (`cancelled`). Every message with a uuid gets `started`
//! when its turn starts and `completed` when it ends.
//!
//! With `--max-budget-usd=X`, a turn after which this process has spent X or more ends with
//! a result of subtype `error_max_budget_usd` (the real CLI checks its cumulative cost too).
//!
//! With `--permission-prompt-tool=stdio`, `tool`, `write` and `link` first ask with a
//! `can_use_tool` control request and obey the answer (an allow's `updatedInput` is used).
//!
//! `set_model`, `set_permission_mode` (`bypassPermissions` only when started in it or with
//! `--allow-dangerously-skip-permissions`, else `bypass_not_launched`) and `get_context_usage`
//! are answered as 2.1.330 does; the next `system/init` reports the model and mode.
//!
//! Environment: `FAKE_CLAUDE_INIT_DELAY_MS` delays the `initialize` answer (a slow start);
//! `FAKE_CLAUDE_ARGV_LOG` appends the argument list and chosen environment to that file.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

const COST_PER_TURN: f64 = 0.001;

struct Session {
    id: String,
    cwd: String,
    history_file: PathBuf,
    history: Vec<String>,
    total_cost: f64,
    result_index: u64,
    queued: Vec<Value>,
    ask_permissions: bool,
    asked: u64,
    /// The next `can_use_tool` is sent again, with its id, after this many ms (`tool again MS`).
    ask_again_ms: Option<u64>,
    /// What this turn costs, when the message chose it (`cost USD`).
    turn_cost: Option<f64>,
    /// `--max-budget-usd`, and what this process has spent (the CLI's budget is per process).
    max_budget_usd: Option<f64>,
    process_cost: f64,
    /// The uuids of the messages the running turn answers (its own and those steered into it).
    answering: Vec<String>,
    /// `--model` (or `fake`), changed by `set_model`; `system/init` reports it.
    model: String,
    /// `--permission-mode`, changed by `set_permission_mode`.
    permission_mode: String,
    /// Like the real CLI, `bypassPermissions` can be switched to only by a process started
    /// in it or with `--allow-dangerously-skip-permissions`.
    bypass_allowed: bool,
}

/// The host's answer to a `can_use_tool`.
enum Permission {
    Allow(Value),
    Deny(String),
    Interrupted,
}

enum Input {
    Line(Value),
    Eof,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--version" || a == "-v") {
        println!("2.1.330-fake (Claude Code)");
        return;
    }
    if let Ok(path) = std::env::var("FAKE_CLAUDE_ARGV_LOG") {
        let env: Vec<String> = std::env::vars().map(|(k, _)| k).filter(|k| !k.starts_with("FAKE_CLAUDE")).collect();
        let line = json!({"args": args, "env": env, "pid": std::process::id()});
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            // One write: concurrent CLIs append to the same log (O_APPEND keeps each line whole).
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
    }
    let flag = |name: &str| args.iter().find_map(|a| a.strip_prefix(&format!("--{name}=")).map(str::to_owned));
    let cwd = std::env::current_dir().map(|p| p.display().to_string()).unwrap_or_default();
    let config_dir = std::env::var("CLAUDE_CONFIG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".claude"));
    let sanitized: String = cwd.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    let project_dir = config_dir.join("projects").join(sanitized);

    let (id, resume) = match (flag("session-id"), flag("resume")) {
        (Some(id), _) => (id, false),
        (None, Some(id)) => (id, true),
        (None, None) => (format!("{:032x}", std::process::id()), false),
    };
    let history_file = project_dir.join(format!("{id}.jsonl"));
    let ask_permissions = args.iter().any(|a| a == "--permission-prompt-tool=stdio");
    let mut session = Session {
        id,
        cwd,
        history_file,
        history: Vec::new(),
        total_cost: 0.0,
        result_index: 0,
        queued: Vec::new(),
        answering: Vec::new(),
        ask_permissions,
        asked: 0,
        ask_again_ms: None,
        turn_cost: None,
        max_budget_usd: flag("max-budget-usd").and_then(|x| x.parse().ok()),
        process_cost: 0.0,
        model: flag("model").unwrap_or_else(|| "fake".into()),
        permission_mode: flag("permission-mode").unwrap_or_else(|| "default".into()),
        bypass_allowed: flag("permission-mode").as_deref() == Some("bypassPermissions")
            || args
                .iter()
                .any(|a| a == "--allow-dangerously-skip-permissions" || a == "--dangerously-skip-permissions"),
    };
    if resume {
        match std::fs::read_to_string(&session.history_file) {
            Ok(text) => {
                for line in text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()) {
                    if let Some(t) = line["text"].as_str() {
                        session.history.push(t.to_string());
                    }
                    session.total_cost = line["cost_total"].as_f64().unwrap_or(session.total_cost);
                }
            }
            Err(_) => {
                eprintln!("No conversation found with session ID: {}", session.id);
                emit(&json!({"type":"result","subtype":"error_during_execution","is_error":true,"num_turns":0,
                    "duration_ms":0,"total_cost_usd":0,"usage":{"input_tokens":0,"output_tokens":0},
                    "session_id":"00000000-0000-4000-8000-000000000000",
                    "errors":[format!("No conversation found with session ID: {}", session.id)]}));
                std::process::exit(1);
            }
        }
    } else if session.history_file.exists() {
        eprintln!("Error: Session ID {} is already in use.", session.id);
        std::process::exit(1);
    }

    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Value>(&line) {
                Ok(v) => {
                    if tx.send(Input::Line(v)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    // Like the real CLI: invalid input is fatal.
                    eprintln!("Error parsing streaming input line: {e}");
                    std::process::exit(1);
                }
            }
        }
        let _ = tx.send(Input::Eof);
    });

    loop {
        let next = if session.queued.is_empty() { rx.recv().ok() } else { Some(Input::Line(session.queued.remove(0))) };
        match next {
            None | Some(Input::Eof) => return,
            Some(Input::Line(v)) => handle(&mut session, v, &rx),
        }
    }
}

fn emit(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn control_success(request_id: &str, response: Value) {
    emit(
        &json!({"type":"control_response","response":{"subtype":"success","request_id":request_id,"response":response}}),
    );
}

fn handle(session: &mut Session, v: Value, rx: &Receiver<Input>) {
    match v["type"].as_str() {
        Some("control_request") => {
            let request_id = v["request_id"].as_str().unwrap_or("");
            match v["request"]["subtype"].as_str() {
                Some("initialize") => {
                    if let Some(ms) = std::env::var("FAKE_CLAUDE_INIT_DELAY_MS").ok().and_then(|s| s.parse().ok()) {
                        std::thread::sleep(Duration::from_millis(ms));
                    }
                    control_success(
                        request_id,
                        json!({"claude_code_version":"2.1.330-fake","pid":std::process::id(),"commands":[],"models":[]}),
                    );
                }
                Some("interrupt") => interrupt_ack(session, &v),
                // Like the real CLI: the running total this process reports from (restored on resume).
                Some("get_usage") => {
                    control_success(request_id, json!({"session": {"total_cost_usd": session.total_cost}}))
                }
                // As 2.1.330: a replayed local-command line, then the model; null or "default" resets.
                Some("set_model") => {
                    session.model = match v["request"]["model"].as_str() {
                        None | Some("default") => "fake".into(),
                        Some(m) => m.to_string(),
                    };
                    emit(&json!({"type":"user","isReplay":true,"session_id":session.id,"parent_tool_use_id":null,
                        "message":{"role":"user","content":format!("<local-command-stdout>Set model to {}</local-command-stdout>", session.model)}}));
                    control_success(request_id, json!({"model": session.model}));
                }
                Some("set_permission_mode") => {
                    let mode = v["request"]["mode"].as_str().unwrap_or("");
                    if mode == "bypassPermissions" && !session.bypass_allowed {
                        emit(&json!({"type":"control_response","response":{"subtype":"error","request_id":request_id,
                            "error":"Cannot set permission mode to bypassPermissions because the session was not launched with --dangerously-skip-permissions",
                            "error_code":"bypass_not_launched"}}));
                    } else if !["default", "acceptEdits", "plan", "bypassPermissions", "dontAsk", "auto"]
                        .contains(&mode)
                    {
                        emit(&json!({"type":"control_response","response":{"subtype":"error","request_id":request_id,
                            "error":format!("Invalid permission mode: {mode}")}}));
                    } else {
                        session.permission_mode = mode.to_string();
                        control_success(request_id, json!({"mode": mode}));
                        emit(&json!({"type":"system","subtype":"status","status":null,"permissionMode":mode,
                            "session_id":session.id}));
                    }
                }
                // The real CLI's shape (2.1.330), with figures that grow with the conversation.
                Some("get_context_usage") => {
                    const WINDOW: i64 = 200_000;
                    let messages: i64 = session.history.iter().map(|t| t.len() as i64 / 4 + 10).sum();
                    let used = 2_000 + 9_000 + messages;
                    control_success(
                        request_id,
                        json!({"categories":[
                            {"id":"system_prompt","name":"System prompt","tokens":2_000,"color":"promptBorder","kind":"used"},
                            {"id":"system_tools","name":"System tools","tokens":9_000,"color":"inactive","kind":"used"},
                            {"id":"messages","name":"Messages","tokens":messages,"color":"purple","kind":"used"},
                            {"id":"free_space","name":"Free space","tokens":WINDOW - used,"color":"promptBorder","kind":"free"}],
                            "totalTokens":used,"maxTokens":WINDOW,"rawMaxTokens":WINDOW,"percentage":used * 100 / WINDOW,
                            "model":session.model,"gridRows":[],"memoryFiles":[],"mcpTools":[],"agents":[],"apiUsage":null}),
                    );
                }
                Some(other) => emit(&json!({"type":"control_response","response":{"subtype":"error",
                    "request_id":request_id,"error":format!("Unsupported control request subtype: {other}")}})),
                None => {}
            }
        }
        Some("control_response") => {}
        Some("user") => {
            let text = user_text(&v);
            let uuid = v["uuid"].as_str().unwrap_or("").to_string();
            lifecycle(&uuid, "started");
            session.answering = vec![uuid.clone()];
            turn(session, &text, &uuid, rx);
            lifecycle(&uuid, "completed");
        }
        _ => {}
    }
}

/// What interrupted a turn's waiting, if anything.
enum Wait {
    Elapsed,
    Interrupted,
    Eof,
}

/// Sleeps `d` while answering control requests; an interrupt cuts it short.
fn wait(session: &mut Session, d: Duration, rx: &Receiver<Input>, obey: bool) -> Wait {
    let deadline = Instant::now() + d;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Err(RecvTimeoutError::Timeout) => return Wait::Elapsed,
            Err(RecvTimeoutError::Disconnected) | Ok(Input::Eof) => return Wait::Eof,
            Ok(Input::Line(v)) => {
                if v["type"] == "control_request" && v["request"]["subtype"] == "interrupt" {
                    if obey {
                        interrupt_ack(session, &v);
                        return Wait::Interrupted;
                    }
                } else if v["type"] == "control_request" {
                    handle(session, v, rx);
                } else {
                    queue_input(session, v);
                }
            }
        }
    }
}

/// Asks the host whether a tool may run (only when started with the stdio prompt tool).
fn ask(session: &mut Session, rx: &Receiver<Input>, tool: &str, input: &Value, tool_use_id: &str) -> Permission {
    if !session.ask_permissions {
        return Permission::Allow(input.clone());
    }
    session.asked += 1;
    let request_id = format!("perm-{}-{}", std::process::id(), session.asked);
    let request = json!({"type":"control_request","request_id":request_id,"request":{"subtype":"can_use_tool",
        "tool_name":tool,"input":input,"tool_use_id":tool_use_id}});
    emit(&request);
    if let Some(ms) = session.ask_again_ms.take() {
        std::thread::sleep(Duration::from_millis(ms));
        emit(&request);
    }
    loop {
        let Ok(Input::Line(v)) = rx.recv() else { std::process::exit(0) };
        if v["type"] == "control_response" && v["response"]["request_id"] == request_id.as_str() {
            let r = &v["response"];
            if r["subtype"] != "success" {
                return Permission::Deny(r["error"].as_str().unwrap_or("error").to_string());
            }
            return match r["response"]["behavior"].as_str() {
                Some("allow") => Permission::Allow(r["response"]["updatedInput"].clone()),
                _ => Permission::Deny(r["response"]["message"].as_str().unwrap_or("denied").to_string()),
            };
        }
        if v["type"] == "control_request" && v["request"]["subtype"] == "interrupt" {
            interrupt_ack(session, &v);
            emit(&json!({"type":"control_cancel_request","request_id":request_id}));
            return Permission::Interrupted;
        }
        if v["type"] == "control_request" {
            handle(session, v, rx);
        } else if v["type"] != "control_response" {
            queue_input(session, v);
        }
    }
}

fn lifecycle(uuid: &str, state: &str) {
    if !uuid.is_empty() {
        emit(&json!({"type":"command_lifecycle","command_uuid":uuid,"state":state}));
    }
}

/// A line that arrived during a turn: kept for the next tool boundary or turn.
fn queue_input(session: &mut Session, v: Value) {
    if v["type"] == "user" {
        lifecycle(v["uuid"].as_str().unwrap_or(""), "queued");
    }
    session.queued.push(v);
}

/// Acknowledges an interrupt; with `cancel_queued` the queued user messages are dropped.
fn interrupt_ack(session: &mut Session, v: &Value) {
    let mut cancelled = Vec::new();
    if v["request"]["cancel_queued"] == true {
        session.queued.retain(|q| {
            if q["type"] != "user" {
                return true;
            }
            let uuid = q["uuid"].as_str().unwrap_or("").to_string();
            lifecycle(&uuid, "cancelled");
            cancelled.push(uuid);
            false
        });
    }
    control_success(v["request_id"].as_str().unwrap_or(""), json!({"still_queued": [], "cancelled": cancelled}));
}

fn user_text(v: &Value) -> String {
    match &v["message"]["content"] {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks.iter().filter_map(|b| b["text"].as_str()).collect::<Vec<_>>().join("\n"),
        _ => String::new(),
    }
}

/// A tool boundary: queued user messages are handed to the running turn; their texts.
fn take_steers(session: &mut Session) -> Vec<String> {
    let mut taken = Vec::new();
    let mut rest = Vec::new();
    for q in std::mem::take(&mut session.queued) {
        if q["type"] == "user" && q["priority"] != "later" {
            let uuid = q["uuid"].as_str().unwrap_or("").to_string();
            lifecycle(&uuid, "started");
            let text = user_text(&q);
            session.history.push(text.clone());
            session.answering.push(uuid);
            taken.push(text);
        } else {
            rest.push(q);
        }
    }
    session.queued = rest;
    taken
}

fn delta(session: &Session, text: &str) {
    emit(&json!({"type":"stream_event","event":{"type":"content_block_delta","index":0,
        "delta":{"type":"text_delta","text":text}},"session_id":session.id,"parent_tool_use_id":null}));
}

fn assistant(session: &Session, content: Value) {
    emit(&json!({"type":"assistant","message":{"id":"msg_fake","type":"message","role":"assistant",
        "model":"fake","content":content},"parent_tool_use_id":null,"session_id":session.id}));
}

fn tool_result(session: &Session, id: &str, content: &str, is_error: bool) {
    emit(&json!({"type":"user","message":{"role":"user","content":[{"tool_use_id":id,"type":"tool_result",
        "content":content,"is_error":is_error}]},"parent_tool_use_id":null,"session_id":session.id}));
}

fn finish(session: &mut Session, user_text: &str, uuid: &str, subtype: &str, text: &str, started: Instant, turns: i64) {
    let cost = session.turn_cost.take().unwrap_or(COST_PER_TURN);
    session.total_cost += cost;
    session.process_cost += cost;
    let over_budget = session.max_budget_usd.is_some_and(|max| session.process_cost >= max);
    let subtype = if over_budget && subtype == "success" { "error_max_budget_usd" } else { subtype };
    session.history.push(user_text.to_string());
    if let Some(dir) = session.history_file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(&session.history_file) {
        let _ = writeln!(f, "{}", json!({"type":"user","text":user_text,"cost_total":session.total_cost}));
    }
    let is_error = subtype != "success";
    let mut result = json!({"type":"result","subtype":subtype,"is_error":is_error,
        "duration_ms":started.elapsed().as_millis() as u64,"duration_api_ms":1,"num_turns":turns,
        "session_id":session.id,"total_cost_usd":session.total_cost,
        "usage":{"input_tokens":10 + user_text.len() as i64,"output_tokens":text.split_whitespace().count() as i64},
        "result_index":session.result_index,"user_message_uuid":uuid,
        "user_message_uuids":std::mem::take(&mut session.answering)});
    if !is_error {
        result["result"] = Value::String(text.to_string());
    }
    session.result_index += 1;
    emit(&result);
}

fn turn(session: &mut Session, text: &str, uuid: &str, rx: &Receiver<Input>) {
    let started = Instant::now();
    emit(&json!({"type":"system","subtype":"init","session_id":session.id,"cwd":session.cwd,"tools":["Bash","Write"],
        "mcp_servers":[],"model":session.model,"permissionMode":session.permission_mode,"claude_code_version":"2.1.330-fake",
        "user_message_uuids":[uuid]}));
    let words: Vec<&str> = text.split_whitespace().collect();
    let arg = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok());
    match words.first().copied().unwrap_or("") {
        "slow" => {
            let (n, ms) = (arg(1).unwrap_or(10), arg(2).unwrap_or(100));
            let mut said = String::new();
            for i in 0..n {
                match wait(session, Duration::from_millis(ms), rx, true) {
                    Wait::Elapsed => {}
                    Wait::Interrupted => {
                        assistant(session, json!([{"type":"text","text":said}]));
                        finish(session, text, uuid, "error_during_execution", &said, started, 1);
                        return;
                    }
                    Wait::Eof => std::process::exit(0),
                }
                let word = format!("w{i} ");
                delta(session, &word);
                said.push_str(&word);
                for steer in take_steers(session) {
                    let note = format!("[steered: {steer}] ");
                    delta(session, &note);
                    said.push_str(&note);
                }
            }
            assistant(session, json!([{"type":"text","text":said}]));
            finish(session, text, uuid, "success", &said, started, 1);
        }
        "sleep" => {
            if let Wait::Interrupted = wait(session, Duration::from_millis(arg(1).unwrap_or(100)), rx, true) {
                finish(session, text, uuid, "error_during_execution", "", started, 1);
                return;
            }
            let answer = "slept";
            delta(session, answer);
            assistant(session, json!([{"type":"text","text":answer}]));
            finish(session, text, uuid, "success", answer, started, 1);
        }
        "tool" => {
            if words.get(1) == Some(&"again") {
                session.ask_again_ms = Some(arg(2).unwrap_or(1000));
            }
            let input = json!({"command":"echo hi","description":"Print hi"});
            assistant(session, json!([{"type":"tool_use","id":"toolu_fake1","name":"Bash","input":input}]));
            let answer = match ask(session, rx, "Bash", &input, "toolu_fake1") {
                Permission::Allow(_) => {
                    tool_result(session, "toolu_fake1", "hi", false);
                    "The command printed hi.".to_string()
                }
                Permission::Deny(why) => {
                    tool_result(session, "toolu_fake1", &format!("Permission denied: {why}"), true);
                    format!("I was not allowed to run it: {why}")
                }
                Permission::Interrupted => {
                    finish(session, text, uuid, "error_during_execution", "", started, 1);
                    return;
                }
            };
            let answer = answer.as_str();
            delta(session, answer);
            assistant(session, json!([{"type":"text","text":answer}]));
            finish(session, text, uuid, "success", answer, started, 2);
        }
        "write" => {
            let name = words.get(1).copied().unwrap_or("out.txt");
            let content = words.get(2..).map(|w| w.join(" ")).unwrap_or_default();
            let path = format!("{}/{name}", session.cwd);
            let input = json!({"file_path":path,"content":content});
            assistant(session, json!([{"type":"tool_use","id":"toolu_fake2","name":"Write","input":input}]));
            let answer = match ask(session, rx, "Write", &input, "toolu_fake2") {
                Permission::Allow(input) => {
                    let content = input["content"].as_str().unwrap_or_default().to_string();
                    match std::fs::write(&path, &content) {
                        Ok(()) => {
                            tool_result(session, "toolu_fake2", &format!("File created successfully at: {path}"), false)
                        }
                        Err(e) => tool_result(session, "toolu_fake2", &format!("Error: {e}"), true),
                    }
                    format!("Wrote {name}.")
                }
                Permission::Deny(why) => {
                    tool_result(session, "toolu_fake2", &format!("Permission denied: {why}"), true);
                    format!("Could not write {name}: {why}")
                }
                Permission::Interrupted => {
                    finish(session, text, uuid, "error_during_execution", "", started, 1);
                    return;
                }
            };
            delta(session, &answer);
            assistant(session, json!([{"type":"text","text":answer}]));
            finish(session, text, uuid, "success", &answer, started, 2);
        }
        "link" => {
            let name = words.get(1).copied().unwrap_or("link");
            let target = words.get(2).copied().unwrap_or("/");
            let command = format!("ln -s {target} {name}");
            assistant(
                session,
                json!([{"type":"tool_use","id":"toolu_fake3","name":"Bash","input":{"command":command}}]),
            );
            let linked = std::os::unix::fs::symlink(target, format!("{}/{name}", session.cwd));
            tool_result(session, "toolu_fake3", &format!("{linked:?}"), linked.is_err());
            let answer = format!("Linked {name}.");
            delta(session, &answer);
            assistant(session, json!([{"type":"text","text":answer}]));
            finish(session, text, uuid, "success", &answer, started, 2);
        }
        "crash" => {
            delta(session, "about to crash");
            eprintln!("fake claude: crashing on purpose");
            std::process::exit(3);
        }
        "hang" => loop {
            if let Wait::Eof = wait(session, Duration::from_secs(3600), rx, false) {
                // Even stdin closing does not end a hung CLI: only a signal does.
                std::thread::sleep(Duration::from_secs(3600));
            }
        },
        "garbage" => {
            emit_raw("[debug] this is not JSON");
            emit_raw("{\"type\": broken json");
            echo(session, text, uuid, started);
        }
        "huge" => {
            let mb = arg(1).unwrap_or(1) as usize;
            let big = "x".repeat(mb * 1024 * 1024);
            delta(session, &big);
            assistant(session, json!([{"type":"text","text":"huge"}]));
            finish(session, text, uuid, "success", "huge", started, 1);
        }
        "spawn" => {
            let child = std::process::Command::new("sleep").arg("1000").spawn();
            let answer = match child {
                Ok(c) => format!("spawned {}", c.id()),
                Err(e) => format!("spawn failed: {e}"),
            };
            delta(session, &answer);
            assistant(session, json!([{"type":"text","text":answer}]));
            finish(session, text, uuid, "success", &answer, started, 1);
        }
        "read" | "put" => {
            let path = words.get(1).copied().unwrap_or("");
            let output = if words[0] == "read" {
                std::process::Command::new("cat").arg(path).output()
            } else {
                let content = words.get(2..).map(|w| w.join(" ")).unwrap_or_default();
                std::process::Command::new("sh")
                    .arg("-c")
                    .arg("printf %s \"$1\" > \"$2\"")
                    .arg("sh")
                    .arg(content)
                    .arg(path)
                    .output()
            };
            let answer = match output {
                Ok(o) if o.status.success() => format!("{} ok: {}", words[0], String::from_utf8_lossy(&o.stdout)),
                Ok(o) => format!("{} failed: {}", words[0], String::from_utf8_lossy(&o.stderr).trim()),
                Err(e) => format!("{} failed: {e}", words[0]),
            };
            delta(session, &answer);
            assistant(session, json!([{"type":"text","text":answer}]));
            finish(session, text, uuid, "success", &answer, started, 1);
        }
        "history" => {
            let answer = session.history.join(" | ");
            delta(session, &answer);
            assistant(session, json!([{"type":"text","text":answer}]));
            finish(session, text, uuid, "success", &answer, started, 1);
        }
        "stamp" => {
            let ns = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
            let answer = format!("stamp:{ns}");
            delta(session, &answer);
            assistant(session, json!([{"type":"text","text":answer}]));
            finish(session, text, uuid, "success", &answer, started, 1);
        }
        "cost" => {
            session.turn_cost = words.get(1).and_then(|w| w.parse::<f64>().ok());
            delta(session, text);
            assistant(session, json!([{"type":"text","text":text}]));
            finish(session, text, uuid, "success", text, started, 1);
        }
        "markdown" => answer_in_pieces(session, text, uuid, started, MARKDOWN),
        _ => echo(session, text, uuid, started),
    }
}

/// What an agent's answer looks like: for the console's Markdown rendering.
const MARKDOWN: &str = "## Plan\n\nThis is **bold** and `inline code`.\n\n- first\n- second\n\n\
    ```rust\nfn main() {\n    println!(\"hello\");\n}\n```\n";

fn emit_raw(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn echo(session: &mut Session, text: &str, uuid: &str, started: Instant) {
    answer_in_pieces(session, text, uuid, started, &format!("echo: {text}"));
}

/// `answer` as deltas of 8 characters, then the assistant frame and the result.
fn answer_in_pieces(session: &mut Session, text: &str, uuid: &str, started: Instant, answer: &str) {
    let mut rest = answer;
    while !rest.is_empty() {
        let cut = rest.char_indices().nth(8).map(|(i, _)| i).unwrap_or(rest.len());
        delta(session, &rest[..cut]);
        rest = &rest[cut..];
    }
    assistant(session, json!([{"type":"text","text":answer}]));
    finish(session, text, uuid, "success", answer, started, 1);
}
