//! A tiny MCP server over stdio (newline-delimited JSON-RPC), for tests and demos: one tool,
//! `echo`, that answers `echo: <text>`. Configure it in `[mcp_servers]`:
//!
//! ```toml
//! [mcp_servers.echo]
//! command = "/path/to/target/debug/examples/mcp_echo"
//! ```

use std::io::{BufRead, Write};

use serde_json::{Value, json};

fn main() {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let Ok(request) = serde_json::from_str::<Value>(&line) else { continue };
        let Some(id) = request.get("id").cloned() else { continue }; // a notification
        let result = match request["method"].as_str() {
            Some("initialize") => json!({
                "protocolVersion": request["params"]["protocolVersion"].as_str().unwrap_or("2025-06-18"),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "mcp-echo", "version": "1.0.0"}
            }),
            Some("tools/list") => json!({"tools": [{
                "name": "echo",
                "description": "Repeats the given text",
                "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
            }]}),
            Some("tools/call") => {
                let text = request["params"]["arguments"]["text"].as_str().unwrap_or("");
                json!({"content": [{"type": "text", "text": format!("echo: {text}")}]})
            }
            Some("ping") => json!({}),
            _ => {
                let error =
                    json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "method not found"}});
                let _ = writeln!(out, "{error}");
                let _ = out.flush();
                continue;
            }
        };
        let _ = writeln!(out, "{}", json!({"jsonrpc": "2.0", "id": id, "result": result}));
        let _ = out.flush();
    }
}
