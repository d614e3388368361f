//! The CLI's command line and environment for one session.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::settings::Settings;

/// The agent options of one session: the settings' defaults with its overrides applied.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentOptions {
    pub system_prompt: Option<String>,
    pub append_system_prompt: Option<String>,
    pub permission_mode: String,
    pub allowed_tools: Vec<String>,
    pub disallowed_tools: Vec<String>,
    pub setting_sources: Vec<String>,
    pub model: Option<String>,
    pub max_turns: Option<u64>,
    pub max_budget_usd: Option<f64>,
    pub mcp_servers: Map<String, Value>,
}

impl AgentOptions {
    /// `overrides` were checked by `sessions::options::validate_options` when stored.
    pub fn resolve(settings: &Settings, overrides: &Map<String, Value>) -> Self {
        let d = &settings.defaults;
        let text = |key: &str, default: &Option<String>| {
            overrides.get(key).and_then(Value::as_str).map(str::to_owned).or_else(|| default.clone())
        };
        let list = |key: &str, default: &[String]| match overrides.get(key).and_then(Value::as_array) {
            Some(items) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            None => default.to_vec(),
        };
        let mut mcp_servers: Map<String, Value> =
            settings.mcp_servers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if let Some(Value::Object(own)) = overrides.get("mcp_servers") {
            mcp_servers.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let default_mode = serde_json::to_value(d.permission_mode)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "default".into());
        AgentOptions {
            system_prompt: text("system_prompt", &d.system_prompt),
            append_system_prompt: text("append_system_prompt", &d.append_system_prompt),
            permission_mode: overrides
                .get("permission_mode")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or(default_mode),
            allowed_tools: list("allowed_tools", &d.allowed_tools),
            disallowed_tools: list("disallowed_tools", &d.disallowed_tools),
            setting_sources: list("setting_sources", &d.setting_sources),
            model: text("model", &d.model),
            max_turns: overrides
                .get("max_turns")
                .and_then(Value::as_u64)
                .or(Some(d.max_turns as u64))
                .filter(|n| *n > 0),
            max_budget_usd: overrides.get("max_budget_usd").and_then(Value::as_f64).or(d.max_budget_usd),
            mcp_servers,
        }
    }
}

/// How the CLI process picks up its conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartMode {
    /// A new conversation with this id (`--session-id`).
    New,
    /// Continue the stored transcript (`--resume`).
    Resume,
    /// A fork's first start: a new conversation with this id copying another CLI session's
    /// (`--resume=<it> --fork-session --session-id=<id>`; the original is untouched).
    Fork,
}

/// Where a started CLI's conversation comes from, beyond its own id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Continuation<'a> {
    /// The CLI session a fork copies.
    pub fork_from: Option<&'a str>,
    /// The last message kept (`--resume-session-at`, inclusive) when resuming or forking.
    pub resume_at: Option<&'a str>,
}

/// Files in the session's private temp dir that carry what must not be in argv: every process
/// on the host can read any other's `/proc/<pid>/cmdline`, so prompts and MCP configurations
/// (which may hold credentials) reach the CLI as 0600 files instead.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SecretFiles {
    pub system_prompt: Option<PathBuf>,
    pub append_system_prompt: Option<PathBuf>,
    pub mcp_config: Option<PathBuf>,
}

impl SecretFiles {
    /// Writes the files `options` needs into `dir` (which must be private to the session).
    pub fn write(dir: &Path, options: &AgentOptions) -> std::io::Result<SecretFiles> {
        let put = |name: &str, text: &str| -> std::io::Result<PathBuf> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let path = dir.join(name);
            let mut file =
                std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path)?;
            file.write_all(text.as_bytes())?;
            Ok(path)
        };
        let mcp = (!options.mcp_servers.is_empty())
            .then(|| serde_json::json!({ "mcpServers": options.mcp_servers }).to_string());
        Ok(SecretFiles {
            system_prompt: options.system_prompt.as_deref().map(|p| put("system-prompt.txt", p)).transpose()?,
            append_system_prompt: options
                .append_system_prompt
                .as_deref()
                .map(|p| put("append-system-prompt.txt", p))
                .transpose()?,
            mcp_config: mcp.as_deref().map(|c| put("mcp-config.json", c)).transpose()?,
        })
    }
}

/// argv after the program, every valued flag in the `--flag=value` form so that no value
/// can be read as another flag. Secrets are passed by file (`files`).
pub fn build_args(
    options: &AgentOptions,
    plugins: &[String],
    session_id: &str,
    mode: StartMode,
    files: &SecretFiles,
    from: Continuation<'_>,
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--output-format=stream-json".into(),
        "--verbose".into(),
        "--input-format=stream-json".into(),
        "--include-partial-messages".into(),
    ];
    if let Some(p) = &files.system_prompt {
        args.push(format!("--system-prompt-file={}", p.display()));
    }
    if let Some(p) = &files.append_system_prompt {
        args.push(format!("--append-system-prompt-file={}", p.display()));
    }
    args.push(format!("--permission-mode={}", options.permission_mode));
    // Tools the rules say to ask about are asked over stdio, and so over HTTP (§3.3).
    if options.permission_mode != "bypassPermissions" {
        args.push("--permission-prompt-tool=stdio".into());
    }
    if let Some(m) = &options.model {
        args.push(format!("--model={m}"));
    }
    if let Some(n) = options.max_turns {
        args.push(format!("--max-turns={n}"));
    }
    if let Some(x) = options.max_budget_usd {
        args.push(format!("--max-budget-usd={x}"));
    }
    if !options.allowed_tools.is_empty() {
        args.push(format!("--allowedTools={}", options.allowed_tools.join(",")));
    }
    if !options.disallowed_tools.is_empty() {
        args.push(format!("--disallowedTools={}", options.disallowed_tools.join(",")));
    }
    args.push(format!("--setting-sources={}", options.setting_sources.join(",")));
    if let Some(p) = &files.mcp_config {
        args.push(format!("--mcp-config={}", p.display()));
    }
    for dir in plugins {
        args.push(format!("--plugin-dir={dir}"));
    }
    match (mode, from.fork_from) {
        (StartMode::Fork, Some(source)) => {
            args.push(format!("--resume={source}"));
            args.push("--fork-session".into());
            args.push(format!("--session-id={session_id}"));
        }
        (StartMode::Resume, _) => args.push(format!("--resume={session_id}")),
        _ => args.push(format!("--session-id={session_id}")),
    }
    if mode != StartMode::New
        && let Some(at) = from.resume_at
    {
        args.push(format!("--resume-session-at={at}"));
    }
    args
}

/// Where the CLI looks for a transcript it has not written yet (`None` for a cwd whose
/// project directory name the CLI shortens with a hash of its own).
pub fn new_transcript_path(config_dir: &Path, cwd: &str, session_id: &str) -> Option<PathBuf> {
    let sanitized = project_dir_name(cwd);
    (sanitized.len() <= 200).then(|| config_dir.join("projects").join(sanitized).join(format!("{session_id}.jsonl")))
}

/// The CLI's directory name for a cwd under `projects/`: every non-alphanumeric char as `-`.
fn project_dir_name(cwd: &str) -> String {
    cwd.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect()
}

/// Variables passed through from the service's environment; everything else stays behind
/// (the admin key, database URLs, the service's own settings).
const PASSED_THROUGH: &[&str] = &["PATH", "LANG", "LC_ALL", "LC_CTYPE", "HOME", "TZ", "TERM"];
const PASSED_PREFIXES: &[&str] = &["ANTHROPIC_", "CLAUDE_CODE_"];

/// The service's variables that carry a credential: not passed to the CLI of a user who has
/// their own, so the service's secret never sits beside theirs (a user on Bedrock does not
/// also get the service's Anthropic key).
pub const SERVICE_SECRETS: &[&str] = &[
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_BEARER_TOKEN_BEDROCK",
    "GOOGLE_APPLICATION_CREDENTIALS",
];

/// The child's whole environment: the allowlist, `cli.env`, the user's own credentials
/// (`own`: in place of the service's), and the per-user config dir and private temp dir.
pub fn build_env(
    inherited: impl Iterator<Item = (String, String)>,
    extra: &std::collections::BTreeMap<String, String>,
    own: Option<&std::collections::BTreeMap<String, String>>,
    config_dir: &Path,
    tmp_dir: &Path,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = inherited
        .filter(|(k, _)| PASSED_THROUGH.contains(&k.as_str()) || PASSED_PREFIXES.iter().any(|p| k.starts_with(p)))
        .collect();
    env.push(("CLAUDE_CODE_ENTRYPOINT".into(), "sdk-rust".into()));
    env.push(("DISABLE_AUTOUPDATER".into(), "1".into()));
    // The agent's Edit/Write changes are checkpointed per user message: a rewind restores them.
    env.push(("CLAUDE_CODE_ENABLE_SDK_FILE_CHECKPOINTING".into(), "true".into()));
    env.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    if let Some(own) = own {
        // The service's secrets are dropped rather than shadowed: a user on Bedrock must not
        // find the service's Anthropic key in their process either.
        env.retain(|(k, _)| !SERVICE_SECRETS.contains(&k.as_str()));
        env.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    // HOME is the user's directory: tools keep their dotfiles there, not in the service's home.
    if let Some(home) = config_dir.parent() {
        env.push(("HOME".into(), home.display().to_string()));
    }
    env.push(("CLAUDE_CONFIG_DIR".into(), config_dir.display().to_string()));
    env.push(("TMPDIR".into(), tmp_dir.display().to_string()));
    // Later entries win when the child's environment is built.
    env
}

/// Where the CLI keeps a session's transcript: `<config dir>/projects/<cwd with every
/// non-alphanumeric character as ->/<session id>.jsonl`. Long paths are cut and hashed by
/// the CLI, so those are found by prefix.
pub fn transcript_path(config_dir: &Path, cwd: &str, session_id: &str) -> Option<PathBuf> {
    let sanitized = project_dir_name(cwd);
    let projects = config_dir.join("projects");
    let file = format!("{session_id}.jsonl");
    if sanitized.len() <= 200 {
        let path = projects.join(&sanitized).join(&file);
        return path.exists().then_some(path);
    }
    let prefix = &sanitized[..200];
    std::fs::read_dir(&projects).ok()?.flatten().find_map(|entry| {
        let name = entry.file_name();
        let path = entry.path().join(&file);
        (name.to_string_lossy().starts_with(prefix) && path.exists()).then_some(path)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn overrides_win_over_defaults_and_flags_use_equals() {
        let mut settings = Settings::default();
        settings.defaults.model = Some("base-model".into());
        let overrides = json!({"model": "-evil", "max_turns": 3, "allowed_tools": ["Read", "Bash(git:*)"]});
        let options = AgentOptions::resolve(&settings, overrides.as_object().unwrap());
        let args =
            build_args(&options, &[], "abc", StartMode::Resume, &SecretFiles::default(), Continuation::default());
        assert!(args.contains(&"--model=-evil".to_string()));
        assert!(args.contains(&"--max-turns=3".to_string()));
        assert!(args.contains(&"--allowedTools=Read,Bash(git:*)".to_string()));
        assert!(args.contains(&"--permission-mode=bypassPermissions".to_string()));
        assert_eq!(args.last().unwrap(), "--resume=abc");
        assert!(args.iter().all(|a| a.starts_with("--")));
    }

    #[test]
    fn a_fork_copies_its_source_and_a_rewind_resumes_at_a_message() {
        let options = AgentOptions::resolve(&Settings::default(), &Map::new());
        let files = SecretFiles::default();
        let fork = Continuation { fork_from: Some("src"), resume_at: Some("u1") };
        let args = build_args(&options, &[], "new", StartMode::Fork, &files, fork);
        assert_eq!(
            args[args.len() - 4..],
            ["--resume=src", "--fork-session", "--session-id=new", "--resume-session-at=u1"]
        );
        let at = Continuation { fork_from: None, resume_at: Some("u2") };
        let args = build_args(&options, &[], "s", StartMode::Resume, &files, at);
        assert_eq!(args[args.len() - 2..], ["--resume=s", "--resume-session-at=u2"]);
        // A new conversation has nothing to resume at.
        let args = build_args(&options, &[], "s", StartMode::New, &files, at);
        assert_eq!(args.last().unwrap(), "--session-id=s");
    }

    #[test]
    fn prompts_and_mcp_configuration_go_by_private_file_never_in_argv() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::default();
        settings.mcp_servers.insert("db".into(), json!({"command": "mcp-db", "env": {"TOKEN": "mcp-secret"}}));
        let overrides = json!({"system_prompt": "prompt-secret", "append_system_prompt": "more-secret"});
        let options = AgentOptions::resolve(&settings, overrides.as_object().unwrap());
        let files = SecretFiles::write(dir.path(), &options).unwrap();
        let args = build_args(&options, &[], "abc", StartMode::New, &files, Continuation::default()).join(" ");
        for secret in ["prompt-secret", "more-secret", "mcp-secret"] {
            assert!(!args.contains(secret), "{secret} in argv: {args}");
        }
        let prompt = files.system_prompt.unwrap();
        assert!(args.contains(&format!("--system-prompt-file={}", prompt.display())));
        assert_eq!(std::fs::read_to_string(&prompt).unwrap(), "prompt-secret");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&prompt).unwrap().permissions().mode() & 0o777, 0o600);
        let mcp: Value = serde_json::from_str(&std::fs::read_to_string(files.mcp_config.unwrap()).unwrap()).unwrap();
        assert_eq!(mcp["mcpServers"]["db"]["env"]["TOKEN"], "mcp-secret");
    }

    #[test]
    fn environment_is_an_allowlist() {
        let inherited = vec![
            ("PATH".to_string(), "/bin".to_string()),
            ("CLAUDE_AGENT_ADMIN_KEY".to_string(), "secret".to_string()),
            ("DATABASE_URL".to_string(), "postgres://x".to_string()),
            ("CLAUDECODE".to_string(), "1".to_string()),
            ("ANTHROPIC_BASE_URL".to_string(), "http://127.0.0.1:1".to_string()),
        ];
        let extra = [("IS_SANDBOX".to_string(), "1".to_string())].into_iter().collect();
        let env = build_env(inherited.into_iter(), &extra, None, Path::new("/u/.claude"), Path::new("/t"));
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert!(names.contains(&"PATH") && names.contains(&"ANTHROPIC_BASE_URL") && names.contains(&"IS_SANDBOX"));
        assert!(!names.contains(&"CLAUDE_AGENT_ADMIN_KEY") && !names.contains(&"DATABASE_URL"));
        assert!(!names.contains(&"CLAUDECODE"));
        assert!(env.contains(&("CLAUDE_CONFIG_DIR".into(), "/u/.claude".into())));
    }

    #[test]
    fn a_users_own_credentials_replace_the_services() {
        let inherited = vec![("ANTHROPIC_AUTH_TOKEN".to_string(), "service-token".to_string())];
        let extra = [
            ("ANTHROPIC_API_KEY".to_string(), "service-key".to_string()),
            ("ANTHROPIC_BASE_URL".to_string(), "http://gw".to_string()),
        ]
        .into_iter()
        .collect();
        let own = [("ANTHROPIC_API_KEY".to_string(), "alice-key".to_string())].into_iter().collect();
        let env =
            build_env(inherited.clone().into_iter(), &extra, Some(&own), Path::new("/u/.claude"), Path::new("/t"));
        let get = |name: &str| env.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
        assert_eq!(get("ANTHROPIC_API_KEY"), ["alice-key"]);
        assert!(get("ANTHROPIC_AUTH_TOKEN").is_empty());
        assert_eq!(get("ANTHROPIC_BASE_URL"), ["http://gw"], "what is not a secret stays");
        let env = build_env(inherited.into_iter(), &extra, None, Path::new("/u/.claude"), Path::new("/t"));
        assert!(env.contains(&("ANTHROPIC_API_KEY".into(), "service-key".into())), "the fallback");
    }
}
