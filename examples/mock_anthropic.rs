//! A small Anthropic Messages API on loopback, so the real `claude` CLI runs end to end
//! offline: `ANTHROPIC_BASE_URL=http://127.0.0.1:<port>`.
//!
//! `cargo run --example mock_anthropic -- [PORT]` (default 0: any free port; the chosen one
//! is printed as `listening on 127.0.0.1:<port>`).
//!
//! `POST /v1/messages` (streaming or not) answers after the last user text:
//!
//! | user text            | answer |
//! |----------------------|--------|
//! | `write NAME TEXT`    | a `Write` tool_use for `<cwd>/NAME` (cwd from the system prompt), then "Wrote NAME." |
//! | `bash COMMAND`       | a `Bash` tool_use, then "Bash said: <its output>" |
//! | `writeto PATH TEXT`  | a `Write` tool_use for the absolute PATH, then "Write said: <its output>" |
//! | `mcp TEXT`           | a call of the MCP tool `mcp__echo__echo` with TEXT, then "MCP said: <its output>" |
//! | `slow`               | 60 words, one every 100 ms (for interrupts) |
//! | `history`            | every user text of the conversation so far, joined by ` | ` |
//! | `markdown`           | `MARKDOWN`: a heading, bold, a list and a Rust code block (for the console) |
//! | anything else        | `mock: <text>` in several deltas |
//!
//! Tool calls are only made when the request offers tools. `GET /_mock/requests` returns the
//! request bodies received so far (tests check what the CLI sent, e.g. earlier turns);
//! `GET /_mock/api_keys` the `x-api-key` each of them carried (whose credentials were used).

use std::sync::Mutex;
use std::time::Duration;

use actix_web::web::{Bytes, Data, Json};
use actix_web::{App, HttpResponse, HttpServer, web};
use serde_json::{Value, json};

#[derive(Default)]
struct Recorded(Mutex<Vec<Value>>);

/// The `x-api-key` each `/v1/messages` request carried (`""` when none), in order.
#[derive(Default)]
struct ApiKeys(Mutex<Vec<String>>);

/// What the model does this call.
enum Reply {
    Text(String, Duration),
    Tool { name: &'static str, input: Value },
}

fn user_texts(messages: &[Value]) -> Vec<String> {
    let mut texts = Vec::new();
    for m in messages.iter().filter(|m| m["role"] == "user") {
        match &m["content"] {
            Value::String(s) if !s.starts_with('<') => texts.push(s.clone()),
            Value::Array(blocks) => {
                if let Some(t) = blocks
                    .iter()
                    .filter(|b| b["type"] == "text")
                    .filter_map(|b| b["text"].as_str())
                    .rfind(|t| !t.starts_with('<'))
                {
                    texts.push(t.to_string());
                }
            }
            _ => {}
        }
    }
    texts
}

/// The tool result the last user message carries, if this call follows a tool use.
fn last_tool_result(messages: &[Value]) -> Option<String> {
    let last = messages.iter().rev().find(|m| m["role"] == "user")?;
    let block = last["content"].as_array()?.iter().find(|b| b["type"] == "tool_result")?;
    Some(match &block["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join("\n"),
        other => other.to_string(),
    })
}

/// The session's cwd, from the `Primary working directory: <cwd>` line the CLI sends in its
/// system prompt or first user message.
fn working_dir(body: &Value) -> String {
    const MARKER: &str = "Primary working directory: ";
    let mut texts: Vec<&str> = Vec::new();
    collect_text(&body["system"], &mut texts);
    collect_text(&body["messages"], &mut texts);
    texts
        .iter()
        .flat_map(|t| t.lines())
        .find_map(|l| l.find(MARKER).map(|i| l[i + MARKER.len()..].trim().to_string()))
        .unwrap_or_else(|| ".".into())
}

fn collect_text<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|i| collect_text(i, out)),
        Value::Object(map) => map.values().for_each(|i| collect_text(i, out)),
        _ => {}
    }
}

fn decide(body: &Value) -> Reply {
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let texts = user_texts(&messages);
    let prompt = texts.last().cloned().unwrap_or_default();
    let has_tools = body["tools"].as_array().is_some_and(|t| !t.is_empty());
    let words: Vec<&str> = prompt.split_whitespace().collect();
    if let Some(output) = last_tool_result(&messages) {
        // The CLI may append its own <system-reminder> to a tool's output.
        let output = output.split("<system-reminder>").next().unwrap_or("").to_string();
        return match words.first().copied() {
            Some("write") => Reply::Text(format!("Wrote {}.", words.get(1).unwrap_or(&"it")), Duration::ZERO),
            Some("mcp") => Reply::Text(format!("MCP said: {}", output.trim()), Duration::ZERO),
            Some("writeto") => Reply::Text(format!("Write said: {}", output.trim()), Duration::ZERO),
            _ => Reply::Text(format!("Bash said: {}", output.trim()), Duration::ZERO),
        };
    }
    match words.first().copied() {
        Some("write") if has_tools => {
            let name = words.get(1).copied().unwrap_or("out.txt");
            let content = words.get(2..).map(|w| w.join(" ")).unwrap_or_default();
            let path = format!("{}/{name}", working_dir(body));
            Reply::Tool { name: "Write", input: json!({"file_path": path, "content": content}) }
        }
        Some("mcp") if has_tools => {
            Reply::Tool { name: "mcp__echo__echo", input: json!({"text": words[1..].join(" ")}) }
        }
        Some("writeto") if has_tools => {
            let path = words.get(1).copied().unwrap_or("/tmp/out.txt");
            let content = words.get(2..).map(|w| w.join(" ")).unwrap_or_default();
            Reply::Tool { name: "Write", input: json!({"file_path": path, "content": content}) }
        }
        Some("bash") if has_tools => {
            let command = words[1..].join(" ");
            Reply::Tool { name: "Bash", input: json!({"command": command, "description": "Run a command"}) }
        }
        Some("slow") => {
            let words: Vec<String> = (0..60).map(|i| format!("w{i} ")).collect();
            Reply::Text(words.concat(), Duration::from_millis(100))
        }
        Some("history") => Reply::Text(texts[..texts.len() - 1].join(" | "), Duration::ZERO),
        Some("markdown") => Reply::Text(MARKDOWN.into(), Duration::ZERO),
        _ => Reply::Text(format!("mock: {prompt}"), Duration::ZERO),
    }
}

/// What an agent's answer looks like, for the console's Markdown rendering.
const MARKDOWN: &str = "## Plan\n\nThis is **bold** and `inline code`.\n\n- first\n- second\n\n\
    ```rust\nfn main() {\n    println!(\"hello\");\n}\n```\n";

/// A new id per tool use: the CLI takes a repeated id for the same call and interrupts it.
fn tool_use_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    format!("toolu_mock{:02}", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

fn sse(event: &str, data: Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// The stream of one answer: message_start, one content block with its deltas, message_delta, message_stop.
fn stream_events(reply: &Reply, model: &str) -> Vec<(Bytes, Duration)> {
    let id =
        format!("msg_mock{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    let usage =
        json!({"input_tokens": 12, "output_tokens": 1, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0});
    let mut out = vec![(
        sse(
            "message_start",
            json!({"type":"message_start","message":{"id":id,"type":"message","role":"assistant",
            "model":model,"content":[],"stop_reason":null,"stop_sequence":null,"usage":usage}}),
        ),
        Duration::ZERO,
    )];
    let stop_reason = match reply {
        Reply::Text(text, pause) => {
            out.push((
                sse(
                    "content_block_start",
                    json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
                ),
                Duration::ZERO,
            ));
            for chunk in chunks(text) {
                out.push((
                    sse(
                        "content_block_delta",
                        json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":chunk}}),
                    ),
                    *pause,
                ));
            }
            "end_turn"
        }
        Reply::Tool { name, input } => {
            out.push((
                sse(
                    "content_block_start",
                    json!({"type":"content_block_start","index":0,"content_block":{"type":"tool_use",
                    "id":tool_use_id(),"name":name,"input":{}}}),
                ),
                Duration::ZERO,
            ));
            out.push((
                sse(
                    "content_block_delta",
                    json!({"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta",
                    "partial_json":input.to_string()}}),
                ),
                Duration::ZERO,
            ));
            "tool_use"
        }
    };
    out.push((sse("content_block_stop", json!({"type":"content_block_stop","index":0})), Duration::ZERO));
    out.push((
        sse(
            "message_delta",
            json!({"type":"message_delta","delta":{"stop_reason":stop_reason,"stop_sequence":null},
            "usage":{"output_tokens":7}}),
        ),
        Duration::ZERO,
    ));
    out.push((sse("message_stop", json!({"type":"message_stop"})), Duration::ZERO));
    out
}

/// Word-sized pieces, so the CLI sees real token deltas.
fn chunks(text: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        current.push(c);
        if c == ' ' {
            pieces.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        pieces.push(current);
    }
    pieces
}

async fn messages(
    request: actix_web::HttpRequest,
    body: Json<Value>,
    recorded: Data<Recorded>,
    keys: Data<ApiKeys>,
) -> HttpResponse {
    let key = request.headers().get("x-api-key").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if let Ok(mut all) = keys.0.lock() {
        all.push(key.to_string());
    }
    let body = body.into_inner();
    let reply = decide(&body);
    let model = body["model"].as_str().unwrap_or("claude-sonnet-4-5").to_string();
    if let Ok(mut all) = recorded.0.lock() {
        all.push(body.clone());
    }
    if body["stream"].as_bool().unwrap_or(false) {
        let events = stream_events(&reply, &model);
        let stream = futures_util::stream::unfold(events.into_iter(), |mut events| async move {
            let (bytes, pause) = events.next()?;
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            Some((Ok::<_, actix_web::Error>(bytes), events))
        });
        return HttpResponse::Ok().content_type("text/event-stream").streaming(stream);
    }
    let (content, stop) = match &reply {
        Reply::Text(text, _) => (json!([{"type":"text","text":text}]), "end_turn"),
        Reply::Tool { name, input } => {
            (json!([{"type":"tool_use","id":tool_use_id(),"name":name,"input":input}]), "tool_use")
        }
    };
    HttpResponse::Ok().json(json!({"id":"msg_mock","type":"message","role":"assistant","model":model,"content":content,
        "stop_reason":stop,"stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":7}}))
}

async fn requests(recorded: Data<Recorded>) -> HttpResponse {
    let all = recorded.0.lock().map(|r| r.clone()).unwrap_or_default();
    HttpResponse::Ok().json(all)
}

async fn api_keys(keys: Data<ApiKeys>) -> HttpResponse {
    let all = keys.0.lock().map(|r| r.clone()).unwrap_or_default();
    HttpResponse::Ok().json(all)
}

async fn anything_else() -> HttpResponse {
    HttpResponse::NotFound().json(json!({"type":"error","error":{"type":"not_found_error","message":"not here"}}))
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    let recorded = Data::new(Recorded::default());
    let keys = Data::new(ApiKeys::default());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(recorded.clone())
            .app_data(keys.clone())
            .app_data(web::JsonConfig::default().limit(64 * 1024 * 1024))
            .route("/v1/messages", web::post().to(messages))
            .route("/_mock/requests", web::get().to(requests))
            .route("/_mock/api_keys", web::get().to(api_keys))
            .route("/", web::head().to(HttpResponse::Ok))
            .default_service(web::to(anything_else))
    })
    .workers(1)
    .bind(("127.0.0.1", port))?;
    let addr = server.addrs()[0];
    println!("listening on {addr}");
    use std::io::Write;
    std::io::stdout().flush()?;
    server.run().await
}
