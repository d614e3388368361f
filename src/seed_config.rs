//! `claude-agent-http import-seed-config config.yaml`: the Python service's settings file as
//! the equivalent `Settings.toml`. Every key of the YAML is either written to its key here or
//! named in a comment saying why it was dropped; nothing is left out silently.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Map, Value};

/// The seed's keys that map one to one (same section and name).
const SAME: &[(&str, &[&str])] = &[
    (
        "api",
        &[
            "host",
            "port",
            "cors_origins",
            "max_sessions",
            "max_sessions_per_user",
            "max_concurrent_requests",
            "memory_limit_mb",
            "idle_session_timeout",
        ],
    ),
    ("user", &["base_dir", "auto_create_dir"]),
    ("session", &["storage", "ttl"]),
    (
        "defaults",
        &[
            "system_prompt",
            "permission_mode",
            "allowed_tools",
            "disallowed_tools",
            "setting_sources",
            "model",
            "max_turns",
            "max_budget_usd",
        ],
    ),
];

const PG_KEYS: &[(&str, &str)] = &[
    ("pg_host", "CLAUDE_AGENT_SESSION_PG_HOST"),
    ("pg_port", "CLAUDE_AGENT_SESSION_PG_PORT"),
    ("pg_database", "CLAUDE_AGENT_SESSION_PG_DATABASE"),
    ("pg_user", "CLAUDE_AGENT_SESSION_PG_USER"),
    ("pg_password", "CLAUDE_AGENT_SESSION_PG_PASSWORD"),
];

/// One `[section]` of the output: its lines (keys and comments).
#[derive(Default)]
struct Section {
    lines: Vec<String>,
}

impl Section {
    fn key(&mut self, key: &str, value: &Value, note: Option<&str>) {
        match toml_value(value) {
            Some(v) => {
                let line = format!("{key} = {v}");
                self.lines.push(match note {
                    Some(n) => format!("{line}  # {n}"),
                    None => line,
                });
            }
            // TOML has no null: the seed's null means "not set", which is what leaving it out says.
            None => self.lines.push(format!("# {key}: null in the seed = not set (this service's default)")),
        }
    }

    /// A comment, wrapped at about 100 columns.
    fn comment(&mut self, text: &str) {
        let mut line = String::from("#");
        for word in text.split_whitespace() {
            if line.len() + word.len() > 98 {
                self.lines.push(std::mem::replace(&mut line, String::from("#")));
            }
            line.push(' ');
            line.push_str(word);
        }
        self.lines.push(line);
    }
}

/// The TOML text for `yaml`, the content of `source` (named in the header).
pub fn import(yaml: &str, source: &Path) -> Result<String, String> {
    let doc: Value = serde_yaml_ng::from_str(yaml).map_err(|e| format!("{}: not valid YAML: {e}", source.display()))?;
    let mut doc = match doc {
        Value::Object(map) => map,
        Value::Null => Map::new(),
        _ => return Err(format!("{}: expected a mapping of sections at the top", source.display())),
    };
    let host = doc.get("api").and_then(|a| a.get("host")).and_then(Value::as_str).map(str::to_string);
    let mut top = Section::default();
    let mut sections: Vec<(&str, Section)> =
        ["api", "user", "session", "defaults", "auth", "cli", "mcp_servers"].map(|n| (n, Section::default())).into();
    let section = |sections: &mut Vec<(&str, Section)>, name: &str| -> usize {
        sections.iter().position(|(n, _)| *n == name).unwrap_or(0)
    };
    let mut dropped: Vec<String> = Vec::new();

    for &(name, keys) in SAME {
        let i = section(&mut sections, name);
        let Some(Value::Object(seed)) = doc.get_mut(name) else { continue };
        for key in keys {
            if let Some(value) = seed.remove(*key) {
                match (name, *key, &value) {
                    ("user", "base_dir", Value::String(dir)) => {
                        let expanded = expand_home(dir);
                        let note =
                            (expanded != *dir).then(|| format!("seed: {dir:?} (this service does not expand ~)"));
                        sections[i].1.key(key, &Value::String(expanded), note.as_deref());
                    }
                    _ => sections[i].1.key(key, &value, None),
                }
            }
        }
    }

    // session.pg_* → one URL.
    let session = section(&mut sections, "session");
    if let Some(Value::Object(seed)) = doc.get_mut("session") {
        let mut parts = std::collections::BTreeMap::new();
        for (key, var) in PG_KEYS {
            if let Some(v) = seed.remove(*key) {
                let text = match v {
                    Value::String(s) => s,
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                parts.insert(*var, text);
            }
        }
        if !parts.is_empty() {
            let url = crate::settings::postgres_url_from_seed(&parts);
            sections[session].1.key(
                "database_url",
                &Value::String(url),
                Some("seed: session.pg_host, pg_port, pg_database, pg_user, pg_password"),
            );
        }
    }

    // defaults.cli_path → cli.path.
    let cli = section(&mut sections, "cli");
    if let Some(path) = doc.get_mut("defaults").and_then(Value::as_object_mut).and_then(|d| d.remove("cli_path")) {
        sections[cli].1.key("path", &path, Some("seed: defaults.cli_path"));
    }
    sections[cli].1.comment(
        "The seed's agents saw the service account's ~/.claude (skills, plugins); here each user has its own \
         <user dir>/.claude. To give every user the same skills and plugins, read-only:",
    );
    sections[cli].1.comment("shared_config_dir = \"/srv/claude-shared\"   # holding skills/ and plugins/");

    // mcp_servers: the seed's entries are already the CLI's mcpServers shape.
    let mcp = section(&mut sections, "mcp_servers");
    match doc.remove("mcp_servers") {
        Some(Value::Object(servers)) => {
            for (name, server) in servers {
                sections[mcp].1.key(&toml_key(&name), &server, None);
            }
        }
        Some(Value::Null) | None => {}
        Some(other) => dropped.push(format!("mcp_servers = {other}: not a mapping of servers")),
    }

    // plugins: the seed's `{type: local, path}` are plugin directories here.
    let mut plugins = Vec::new();
    match doc.remove("plugins") {
        Some(Value::Array(list)) => {
            for p in list {
                match &p {
                    Value::String(path) => plugins.push(Value::String(path.clone())),
                    Value::Object(o) if o.get("type").and_then(Value::as_str).unwrap_or("local") == "local" => {
                        match o.get("path").and_then(Value::as_str) {
                            Some(path) => plugins.push(Value::String(path.to_string())),
                            None => dropped.push(format!("plugins entry {p}: a local plugin without a path")),
                        }
                    }
                    _ => dropped.push(format!("plugins entry {p}: only local plugin directories are supported")),
                }
            }
        }
        Some(Value::Null) | None => {}
        Some(other) => dropped.push(format!("plugins = {other}: not a list")),
    }
    top.key("plugins", &Value::Array(plugins), None);

    // What the seed did without a key for it: no authentication, and its own frames.
    let api = section(&mut sections, "api");
    sections[api].1.key(
        "frames",
        &Value::from("seed"),
        Some("the seed's frame types only, for its clients; \"full\" adds tool_result and permission_request"),
    );
    let auth = section(&mut sections, "auth");
    sections[auth].1.comment(
        "The seed had no authentication (it trusted the user_id in each request): \"none\" keeps its clients \
         working. Prefer \"api_key\" (the default) once they send keys.",
    );
    sections[auth].1.key("mode", &Value::from("none"), None);
    let loopback = host
        .as_deref()
        .is_none_or(|h| h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback()));
    if !loopback {
        sections[auth].1.comment(
            "WARNING: the seed listened on a public address without authentication; this service refuses to \
             unless told so. Anyone who reaches the port acts as any user.",
        );
        sections[auth].1.key("allow_unauthenticated_remote", &Value::Bool(true), None);
    }

    // Whatever is left was not mapped: named, with why.
    for (name, rest) in doc {
        match rest {
            Value::Object(keys) => {
                for (key, value) in keys {
                    dropped.push(format!("{name}.{key} = {value}: {}", why_dropped(&name, &key)));
                }
            }
            value => dropped.push(format!("{name} = {value}: {}", why_dropped(&name, ""))),
        }
    }

    let mut out = String::new();
    let _ = writeln!(out, "# Settings.toml made by `claude-agent-http import-seed-config {}`", source.display());
    out.push_str(
        "# from the Python service's config. Every key of that file is set below, or named at the end with\n\
         # why it was dropped. Keys not written here keep their defaults (see the project's Settings.toml).\n\
         # Environment variables still override (CLAUDE_AGENT_<SECTION>__<KEY> and the seed's names).\n\n",
    );
    for line in &top.lines {
        let _ = writeln!(out, "{line}");
    }
    for (name, s) in &sections {
        if s.lines.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n[{name}]");
        for line in &s.lines {
            let _ = writeln!(out, "{line}");
        }
    }
    if !dropped.is_empty() {
        let mut notes = Section::default();
        notes.comment("Dropped from the seed's file:");
        for d in dropped {
            notes.comment(&format!("- {d}"));
        }
        out.push('\n');
        for line in notes.lines {
            let _ = writeln!(out, "{line}");
        }
    }
    Ok(out)
}

fn why_dropped(section: &str, key: &str) -> &'static str {
    match (section, key) {
        ("session", "sqlite_path") => {
            "the seed's database has another schema and is not read (its sessions do not carry over); this \
             service keeps its own at session.sqlite_path (default data/claude-agent-http.db)"
        }
        ("defaults", "add_dirs") => "no equivalent: sessions work in their own directory only",
        ("defaults", "mcp_servers" | "plugins") => "set them at the top level (mcp_servers, plugins)",
        _ => "unknown to this service",
    }
}

/// `~` and `~/x` with the importing user's home (the seed expanded them; this service does not).
fn expand_home(dir: &str) -> String {
    let home = std::env::var("HOME").unwrap_or_default();
    match dir.strip_prefix('~') {
        Some(rest) if !home.is_empty() && (rest.is_empty() || rest.starts_with('/')) => format!("{home}{rest}"),
        _ => dir.to_string(),
    }
}

/// A bare TOML key when it can be one, else a quoted one.
fn toml_key(name: &str) -> String {
    if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        name.to_string()
    } else {
        Value::String(name.to_string()).to_string()
    }
}

/// `value` written as a TOML value (inline tables for objects); `None` for null, which TOML
/// lacks (nulls inside lists and tables are left out).
fn toml_value(value: &Value) -> Option<String> {
    Some(match value {
        Value::Null => return None,
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        // JSON's string escapes are valid in TOML basic strings.
        Value::String(s) => Value::String(s.clone()).to_string(),
        Value::Array(items) => format!("[{}]", items.iter().filter_map(toml_value).collect::<Vec<_>>().join(", ")),
        Value::Object(map) => {
            let entries: Vec<String> =
                map.iter().filter_map(|(k, v)| toml_value(v).map(|v| format!("{} = {v}", toml_key(k)))).collect();
            if entries.is_empty() { "{}".to_string() } else { format!("{{ {} }}", entries.join(", ")) }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;

    #[test]
    fn the_seeds_shipped_config_becomes_settings_that_load() {
        let yaml = include_str!("../tests/fixtures/seed/config.yaml");
        let toml = import(yaml, Path::new("config.yaml")).unwrap();
        let s = Settings::from_sources(Some(&toml), None, &[]).unwrap_or_else(|e| panic!("{e}\n{toml}"));
        assert_eq!(s.api.host, "0.0.0.0");
        assert_eq!(s.api.cors_origins, ["*"]);
        assert_eq!(s.api.max_concurrent_requests, 5);
        assert_eq!(s.api.frames, crate::domain::frames::FrameSet::Seed);
        assert_eq!(s.session.storage, crate::settings::StorageKind::Memory);
        assert_eq!(s.session.ttl, 1800);
        assert_eq!(s.session.database_url.as_deref(), Some("postgres://postgres:postgres@localhost:5432/claude_agent"));
        assert_eq!(s.cli.path, "/usr/local/bin/claude");
        assert_eq!(s.defaults.allowed_tools, ["Bash", "Read", "Write", "Edit", "Glob", "Grep", "Skill"]);
        assert_eq!(s.defaults.system_prompt.as_deref(), Some("You are a helpful AI assistant."));
        assert_eq!(s.defaults.model, None);
        assert_eq!(
            s.mcp_servers["remote_exec"],
            serde_json::json!({"type": "sse", "url": "http://127.0.0.1:8931/mcp/sse"})
        );
        assert_eq!(s.mcp_servers["filesystem"]["args"], serde_json::json!(["/data/claude-users"]));
        assert_eq!(s.auth.mode, crate::settings::AuthMode::None);
        assert!(s.auth.allow_unauthenticated_remote, "0.0.0.0 without keys, as the seed");
        assert!(!s.user.base_dir.starts_with("~"), "{}", s.user.base_dir.display());
        assert!(toml.contains("# model: null"), "{toml}");
        assert!(toml.contains("session.sqlite_path = \"sessions.db\": the seed's database"), "{toml}");
        assert!(toml.lines().all(|l| l.len() <= 120 || !l.starts_with('#')), "comments are wrapped");
    }

    #[test]
    fn every_key_is_mapped_or_named_as_dropped() {
        let yaml = "api:\n  port: 9000\n  workers_x: 3\nsession:\n  pg_host: db\nlogging: debug\n\
                    plugins:\n  - {type: local, path: /app/skills}\n  - {type: npm, name: x}\n\
                    defaults:\n  add_dirs: [a]\n  cli_path: /bin/claude\n";
        let toml = import(yaml, Path::new("c.yaml")).unwrap();
        assert!(toml.contains("api.workers_x = 3: unknown to this service"), "{toml}");
        assert!(toml.contains("logging = \"debug\": unknown to this service"), "{toml}");
        assert!(toml.contains("defaults.add_dirs"), "{toml}");
        assert!(toml.contains("only local plugin directories"), "{toml}");
        let s = Settings::from_sources(Some(&toml), None, &[]).unwrap_or_else(|e| panic!("{e}\n{toml}"));
        assert_eq!(s.api.port, 9000);
        assert_eq!(s.plugins, ["/app/skills"]);
        assert_eq!(s.cli.path, "/bin/claude");
        assert_eq!(s.session.database_url.as_deref(), Some("postgres://postgres:postgres@db:5432/claude_agent"));
        assert!(!s.auth.allow_unauthenticated_remote, "no host: the loopback default");
        assert!(import("- a\n", Path::new("x.yaml")).is_err());
    }
}
