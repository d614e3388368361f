//! Settings: `Settings.toml` (or `--config` / `CLAUDE_AGENT_CONFIG`), overridden by the
//! environment (`CLAUDE_AGENT_<SECTION>__<KEY>` and the seed's variable names).
//! Precedence is total: environment > file > built-in defaults.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::domain::AgentOption;

/// Environment variable that names the settings file.
pub const CONFIG_ENV: &str = "CLAUDE_AGENT_CONFIG";
/// File read when neither `--config` nor `CLAUDE_AGENT_CONFIG` names one (if it exists).
pub const DEFAULT_CONFIG_FILE: &str = "Settings.toml";
/// The Python service's settings file, named in the start-up error when found instead.
pub const SEED_CONFIG_FILE: &str = "config.yaml";
const ENV_PREFIX: &str = "CLAUDE_AGENT_";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// SDK-level plugins passed to every session (the CLI's `--plugin-dir` entries).
    pub plugins: Vec<String>,
    pub api: ApiSettings,
    pub user: UserSettings,
    pub session: SessionSettings,
    pub defaults: AgentDefaults,
    /// MCP servers given to every session, in the CLI's `mcpServers` shape.
    pub mcp_servers: BTreeMap<String, serde_json::Value>,
    pub auth: AuthSettings,
    pub cli: CliSettings,
    pub sandbox: SandboxSettings,
    pub permissions: PermissionSettings,
    pub files: FileSettings,
    pub events: EventSettings,
    pub memory: MemorySettings,
    pub runtime: RuntimeSettings,
    pub data: DataSettings,
    pub metrics: MetricsSettings,
    pub budgets: BudgetSettings,
    pub webhooks: WebhookSettings,
    pub cluster: ClusterSettings,
    /// The settings file these came from (set by [`Settings::load`]); hidden from the agents.
    #[serde(skip)]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    pub host: String,
    pub port: u16,
    pub cors_origins: Vec<String>,
    pub max_sessions: u32,
    pub max_sessions_per_user: u32,
    pub max_concurrent_requests: u32,
    pub memory_limit_mb: u64,
    pub idle_session_timeout: u64,
    pub queue_timeout: u64,
    pub shutdown_grace: u64,
    pub max_body_kb: usize,
    pub workers: usize,
    /// Proxies (addresses or CIDR ranges) whose `X-Forwarded-For` names the client; from any
    /// other peer the header is ignored, so a client cannot pick its own address.
    pub trusted_proxies: Vec<String>,
    /// The frames streams send unless a request asks (`?frames=`): `full` or the seed's set.
    pub frames: crate::domain::frames::FrameSet,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8000,
            cors_origins: Vec::new(),
            max_sessions: 20,
            max_sessions_per_user: 5,
            max_concurrent_requests: 5,
            memory_limit_mb: 7168,
            idle_session_timeout: 600,
            queue_timeout: 30,
            shutdown_grace: 30,
            max_body_kb: 1024,
            workers: 2,
            trusted_proxies: Vec::new(),
            frames: crate::domain::frames::FrameSet::Full,
        }
    }
}

impl ApiSettings {
    /// `trusted_proxies` parsed; a plain address counts as a one-address range. `Err` names the
    /// first entry that is neither.
    pub fn trusted_proxy_nets(&self) -> Result<Vec<ipnet::IpNet>, String> {
        self.trusted_proxies
            .iter()
            .map(|entry| {
                let entry = entry.trim();
                entry
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| entry.to_string())
            })
            .collect()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UserSettings {
    pub base_dir: PathBuf,
    pub auto_create_dir: bool,
}

impl Default for UserSettings {
    fn default() -> Self {
        Self { base_dir: "users".into(), auto_create_dir: true }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    Sqlite,
    Postgresql,
    Memory,
}

impl StorageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StorageKind::Sqlite => "sqlite",
            StorageKind::Postgresql => "postgresql",
            StorageKind::Memory => "memory",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionSettings {
    pub storage: StorageKind,
    pub ttl: u64,
    pub sqlite_path: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    pub pool_size: usize,
    pub overridable: Vec<String>,
    /// Messages a session holds for after its running turn (`mode: "queue"`), at most.
    pub max_queued: usize,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            storage: StorageKind::Sqlite,
            ttl: 3600,
            sqlite_path: "data/claude-agent-http.db".into(),
            database_url: None,
            pool_size: 8,
            overridable: AgentOption::default_overridable(),
            max_queued: 10,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PermissionMode {
    Default,
    AcceptEdits,
    Plan,
    BypassPermissions,
    DontAsk,
    Auto,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentDefaults {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub append_system_prompt: Option<String>,
    pub permission_mode: PermissionMode,
    pub allowed_tools: Vec<String>,
    pub disallowed_tools: Vec<String>,
    pub setting_sources: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub max_turns: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_budget_usd: Option<f64>,
}

impl Default for AgentDefaults {
    fn default() -> Self {
        Self {
            system_prompt: None,
            append_system_prompt: None,
            permission_mode: PermissionMode::BypassPermissions,
            allowed_tools: Vec::new(),
            disallowed_tools: Vec::new(),
            setting_sources: vec!["user".into(), "project".into()],
            model: None,
            max_turns: 50,
            max_budget_usd: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    ApiKey,
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    pub mode: AuthMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_key: Option<String>,
    pub allow_unauthenticated_remote: bool,
    /// Failed authentications a client address earns back per minute.
    pub failed_auth_per_minute: u32,
    /// Failed authentications a client address may make at once before it is refused (429).
    pub failed_auth_burst: u32,
    /// Base64 of the 32-byte key sealing users' credentials; unset: `<data.dir>/credentials.key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_key: Option<String>,
    /// A user without their own credentials cannot start a CLI (409 `credentials_required`).
    pub require_user_credentials: bool,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            mode: AuthMode::ApiKey,
            admin_key: None,
            allow_unauthenticated_remote: false,
            failed_auth_per_minute: 10,
            failed_auth_burst: 20,
            credentials_key: None,
            require_user_credentials: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CliSettings {
    pub path: String,
    pub env: BTreeMap<String, String>,
    pub stop_grace: u64,
    pub max_rss_mb: u64,
    /// A directory whose `skills/` and `plugins/` every user's CLI sees in its own config dir
    /// (linked there), read-only under the sandbox: what the seed's shared `~/.claude` gave.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_config_dir: Option<PathBuf>,
    /// CLIs starting at once (fork until `initialize` answered); 0 = one per core.
    pub max_concurrent_starts: usize,
    /// A CLI that finds a message waiting when it is ready keeps its start permit through
    /// that first turn, for at most this many ms (0 = released at ready): the CLI's first turn
    /// is still start-up work on the CPU, and the client waiting for it is served before the
    /// next start competes for the cores.
    pub start_holds_first_turn_ms: u64,
    /// The niceness of an idle CLI's process group (0 to 19; 0 = never lowered): CLIs a client
    /// waits for (starting, or in a turn) run at full priority before the housekeeping of idle
    /// ones. Only where the service may raise it back (root, `CAP_SYS_NICE`, `RLIMIT_NICE`).
    pub idle_nice: i32,
}

impl CliSettings {
    /// `max_concurrent_starts`, with 0 resolved to the number of cores.
    pub fn concurrent_starts(&self) -> usize {
        match self.max_concurrent_starts {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n => n,
        }
    }
}

impl Default for CliSettings {
    fn default() -> Self {
        Self {
            path: "claude".into(),
            env: BTreeMap::new(),
            stop_grace: 5,
            max_rss_mb: 2048,
            shared_config_dir: None,
            max_concurrent_starts: 0,
            start_holds_first_turn_ms: 500,
            idle_nice: 19,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxMode {
    Auto,
    Landlock,
    Off,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxSettings {
    pub mode: SandboxMode,
    /// TCP ports the agents may connect to (Landlock ABI 4), besides those of
    /// `ANTHROPIC_BASE_URL` and of HTTP MCP servers; never the service's or the database's.
    pub allowed_tcp_ports: Vec<u16>,
    /// Paths the agents may never read, even inside a readable system tree. The settings
    /// file, data dir, users' root and database are always hidden too.
    pub hidden_paths: Vec<String>,
    /// Whether the agents may create unix sockets. Off by default: before Landlock ABI 9 a
    /// unix socket reaches any socket file the agent can name (a local database's, Docker's).
    pub allow_unix_sockets: bool,
}

/// Host secrets an agent has no business reading, and where the deployment files put the
/// service's settings and environment file.
pub const DEFAULT_HIDDEN_PATHS: &[&str] = &[
    "/etc/claude-agent-http",
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/etc/ssh",
    "/etc/ssl/private",
    "/etc/postgresql",
    "/run/secrets",
    // Kernel debugging and tracing (0700 root where mounted: an agent running as root owns them).
    "/sys/kernel/debug",
    "/sys/kernel/tracing",
];

impl Default for SandboxSettings {
    fn default() -> Self {
        Self {
            mode: SandboxMode::Auto,
            allowed_tcp_ports: vec![443],
            hidden_paths: DEFAULT_HIDDEN_PATHS.iter().map(|s| s.to_string()).collect(),
            allow_unix_sockets: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PermissionSettings {
    pub timeout: u64,
}

impl Default for PermissionSettings {
    fn default() -> Self {
        Self { timeout: 300 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileSettings {
    pub max_upload_mb: u64,
}

impl Default for FileSettings {
    fn default() -> Self {
        Self { max_upload_mb: 50 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventSettings {
    pub replay: u32,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self { replay: 1000 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemorySettings {
    pub check_interval: u64,
    /// RSS (MiB) a CLI is counted at while it starts, and at least once measured; 0 = the
    /// mean measured RSS of the live CLIs.
    pub cli_rss_mb: u64,
}

impl Default for MemorySettings {
    fn default() -> Self {
        Self { check_interval: 5, cli_rss_mb: 0 }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSettings {
    /// Threads (actix arbiters) the session actors are spread over; 0 = one per core.
    pub workers: usize,
}

impl RuntimeSettings {
    /// `workers`, with 0 resolved to the number of cores.
    pub fn session_threads(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n => n,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// When set, `GET /metrics` needs `Authorization: Bearer <token>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// The spending limits of a user who has none of their own (`PUT /users/{id}/budget`), in
/// USD; unset: no limit. Days and months are UTC.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daily_usd: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monthly_usd: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_session_usd: Option<f64>,
}

/// Webhook deliveries (`/api/v1/webhooks`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    /// Hosts (`name` or `name:port`, IP literals too) a webhook may target even though they
    /// resolve to loopback, private, link-local or other internal addresses.
    pub allowed_hosts: Vec<String>,
    /// Seconds one delivery attempt may take (connect, send, answer).
    pub timeout: u64,
    /// Hours a delivery is retried before it is marked failed.
    pub max_retry_hours: u64,
    /// The first retry's delay in milliseconds; later ones grow (×6, ×24, ×72, … up to an hour).
    pub retry_base_ms: u64,
    /// Seconds between looks at the outbox when nothing rings (new rows wake it at once).
    pub poll_interval: u64,
    /// Days a delivered or failed delivery stays in the log (0: forever).
    pub log_retention_days: u64,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            allowed_hosts: Vec::new(),
            timeout: 10,
            max_retry_hours: 24,
            retry_base_ms: 5000,
            poll_interval: 5,
            log_retention_days: 7,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSettings {
    pub dir: PathBuf,
}

impl Default for DataSettings {
    fn default() -> Self {
        Self { dir: "data".into() }
    }
}

/// Several instances on one PostgreSQL (ignored by SQLite and `memory`, which are single-instance).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSettings {
    /// This instance's id in the `instances` table and in session leases; empty: `<hostname>-<port>`.
    pub instance_id: String,
    /// The URL other instances forward requests to; empty: `http://<api.host or hostname>:<port>`.
    pub advertise_url: String,
    /// Seconds a session lease (and an instance's heartbeat) lasts without renewal.
    pub lease_ttl: u64,
    /// Shared by the instances to authenticate forwarded requests; required when several
    /// instances share a database.
    pub secret: String,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self { instance_id: String::new(), advertise_url: String::new(), lease_ttl: 15, secret: String::new() }
    }
}

/// Why the settings could not be loaded: always one line that names the key or file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsError(pub String);

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SettingsError {}

fn err(msg: impl Into<String>) -> SettingsError {
    SettingsError(msg.into().replace('\n', " "))
}

/// The seed's variable names and the key each one sets.
const SEED_ENV: &[(&str, &str, &str)] = &[
    ("CLAUDE_AGENT_USER_BASE_DIR", "user", "base_dir"),
    ("CLAUDE_AGENT_SESSION_STORAGE", "session", "storage"),
    ("CLAUDE_AGENT_SESSION_TTL", "session", "ttl"),
    ("CLAUDE_AGENT_SESSION_SQLITE_PATH", "session", "sqlite_path"),
    ("CLAUDE_AGENT_API_PORT", "api", "port"),
    ("CLAUDE_AGENT_MAX_SESSIONS", "api", "max_sessions"),
    ("CLAUDE_AGENT_MAX_SESSIONS_PER_USER", "api", "max_sessions_per_user"),
    ("CLAUDE_AGENT_MAX_CONCURRENT", "api", "max_concurrent_requests"),
    ("CLAUDE_AGENT_MEMORY_LIMIT_MB", "api", "memory_limit_mb"),
    ("CLAUDE_AGENT_IDLE_SESSION_TIMEOUT", "api", "idle_session_timeout"),
    ("CLAUDE_AGENT_CLI_PATH", "cli", "path"),
    ("CLAUDE_AGENT_ADMIN_KEY", "auth", "admin_key"),
];

/// Seed variables that together make `session.database_url` when it is not set, and the
/// seed's default for each (its shipped `config.yaml`).
const SEED_PG_ENV: &[(&str, &str)] = &[
    ("CLAUDE_AGENT_SESSION_PG_HOST", "localhost"),
    ("CLAUDE_AGENT_SESSION_PG_PORT", "5432"),
    ("CLAUDE_AGENT_SESSION_PG_DATABASE", "claude_agent"),
    ("CLAUDE_AGENT_SESSION_PG_USER", "postgres"),
    ("CLAUDE_AGENT_SESSION_PG_PASSWORD", "postgres"),
];

/// Seed-only keys accepted in the file (and as `CLAUDE_AGENT_<SECTION>__<KEY>`) for the key
/// they stand for. `session.pg_*` are the file forms of [`SEED_PG_ENV`].
const SEED_KEY_ALIASES: &[(Key, Key)] = &[(("defaults", "cli_path"), ("cli", "path"))];

/// A settings key: (section, name).
type Key = (&'static str, &'static str);

/// The seed variable a `session.pg_*` key stands for.
fn seed_pg_name(section: &str, key: &str) -> Option<&'static str> {
    if section != "session" {
        return None;
    }
    let wanted = format!("CLAUDE_AGENT_SESSION_{}", key.to_ascii_uppercase());
    SEED_PG_ENV.iter().map(|(name, _)| *name).find(|name| *name == wanted)
}

/// The key a seed-only key stands for, if it is one.
fn seed_alias(section: &str, key: &str) -> Option<(&'static str, &'static str)> {
    SEED_KEY_ALIASES.iter().find(|((s, k), _)| *s == section && *k == key).map(|(_, to)| *to)
}

/// Variables with the prefix that are not settings keys.
const NON_KEY_ENV: &[&str] = &[CONFIG_ENV];

impl Settings {
    /// Loads settings from the process environment and the file it names (or `explicit`).
    pub fn load(explicit: Option<&Path>) -> Result<Settings, SettingsError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let file = match explicit {
            Some(p) => Some(p.to_path_buf()),
            None => match env.iter().find(|(k, _)| k == CONFIG_ENV) {
                Some((_, v)) if !v.is_empty() => Some(PathBuf::from(v)),
                _ => {
                    let p = PathBuf::from(DEFAULT_CONFIG_FILE);
                    if !p.exists() && Path::new(SEED_CONFIG_FILE).exists() {
                        // The seed read config.yaml from here: ignoring it silently would
                        // serve on other settings than the ones its owner wrote.
                        return Err(err(format!(
                            "found the Python service's {SEED_CONFIG_FILE} but no {DEFAULT_CONFIG_FILE} here; \
                             convert it with `claude-agent-http import-seed-config {SEED_CONFIG_FILE} > \
                             {DEFAULT_CONFIG_FILE}` (or name a settings file with --config)"
                        )));
                    }
                    p.exists().then_some(p)
                }
            },
        };
        if let Some(p) = file.as_deref().filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml")) {
            return Err(err(format!(
                "{} is YAML (the Python service's format?): settings are TOML; convert it with \
                 `claude-agent-http import-seed-config {} > {DEFAULT_CONFIG_FILE}`",
                p.display(),
                p.display()
            )));
        }
        let text = match &file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| err(format!("cannot read settings file {}: {e}", p.display())))?,
            ),
            None => None,
        };
        let mut settings = Self::from_sources(text.as_deref(), file.as_deref(), &env)?;
        settings.file = file.map(|p| std::fs::canonicalize(&p).unwrap_or(p));
        Ok(settings)
    }

    /// Builds settings from a file's text (if any) and environment pairs; pure, for tests.
    pub fn from_sources(
        file_text: Option<&str>,
        file_name: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<Settings, SettingsError> {
        let file_label = file_name.map(|p| p.display().to_string()).unwrap_or_else(|| "settings".into());
        let mut table = match file_text {
            Some(text) => parse_file(text, &file_label)?,
            None => toml::Table::new(),
        };
        // Seed-only keys of the file: `session.pg_*` become parts of the URL, the others move to
        // the key they stand for (which wins when both are given).
        let mut pg: BTreeMap<&str, String> = BTreeMap::new();
        for (section, body) in table.iter_mut() {
            let Some(body) = body.as_table_mut() else { continue };
            let keys: Vec<String> = body.keys().cloned().collect();
            for key in keys {
                if let Some(name) = seed_pg_name(section, &key) {
                    let value = body.remove(&key).unwrap_or(toml::Value::String(String::new()));
                    pg.insert(name, value.as_str().map(str::to_string).unwrap_or_else(|| value.to_string()));
                }
            }
        }
        for &((section, key), (to_section, to_key)) in SEED_KEY_ALIASES {
            let Some(value) = table.get_mut(section).and_then(|s| s.as_table_mut()).and_then(|t| t.remove(key)) else {
                continue;
            };
            let target = table.entry(to_section).or_insert_with(|| toml::Value::Table(Default::default()));
            if let Some(t) = target.as_table_mut() {
                t.entry(to_key).or_insert(value);
            }
        }
        let defaults = toml::Table::try_from(Settings::default())
            .map_err(|e| err(format!("internal: cannot serialise defaults: {e}")))?;

        // The `__` form is more specific than a seed name, so it is applied last and wins.
        let mut seed = Vec::new();
        let mut specific = Vec::new();
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if let Some(&(_, section, key)) = SEED_ENV.iter().find(|(n, _, _)| n == name) {
                seed.push((name.as_str(), section.to_string(), key.to_string(), value.as_str()));
            } else if let Some(&(pg_name, _)) = SEED_PG_ENV.iter().find(|(n, _)| n == name) {
                pg.insert(pg_name, value.clone());
            } else if let Some((section, key)) = rest.split_once("__") {
                let (section, key) = (section.to_lowercase(), key.to_lowercase());
                if let Some(pg_name) = seed_pg_name(&section, &key) {
                    pg.insert(pg_name, value.clone());
                } else if let Some((to_section, to_key)) = seed_alias(&section, &key) {
                    // Less specific than the key it stands for: applied first, so that one wins.
                    seed.push((name.as_str(), to_section.to_string(), to_key.to_string(), value.as_str()));
                } else {
                    specific.push((name.as_str(), section, key, value.as_str()));
                }
            } else if !NON_KEY_ENV.contains(&name.as_str()) {
                log::debug!("ignoring environment variable {name}: not a settings key");
            }
        }
        for (name, section, key, value) in seed.into_iter().chain(specific) {
            apply_env(&mut table, &defaults, name, &section, &key, value)?;
        }
        let has_url = table
            .get("session")
            .and_then(|s| s.get("database_url"))
            .and_then(|v| v.as_str())
            .is_some_and(|s| !s.is_empty());
        if !pg.is_empty() && !has_url {
            let url = postgres_url_from_seed(&pg);
            let session = table.entry("session").or_insert_with(|| toml::Value::Table(Default::default()));
            if let Some(t) = session.as_table_mut() {
                t.insert("database_url".into(), toml::Value::String(url));
            }
        }

        let mut settings: Settings = serde_path_to_error::deserialize(table).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            if path.is_empty() || path == "." {
                err(format!("invalid settings ({file_label}): {inner}"))
            } else {
                err(format!("invalid setting `{path}` ({file_label} or environment): {inner}"))
            }
        })?;
        if settings.session.storage == StorageKind::Postgresql
            && settings.session.database_url.as_deref().is_none_or(str::is_empty)
        {
            // What the seed did: its PG_* defaults (postgres:postgres@localhost:5432/claude_agent).
            let url = postgres_url_from_seed(&BTreeMap::new());
            log::warn!(
                "session.storage = \"postgresql\" without session.database_url: using the seed's defaults ({})",
                url.replace(":postgres@", ":***@")
            );
            settings.session.database_url = Some(url);
        }
        settings.validate()?;
        Ok(settings)
    }

    /// Range and consistency checks serde cannot express.
    fn validate(&self) -> Result<(), SettingsError> {
        let positive: &[(&str, u64)] = &[
            ("api.max_sessions", self.api.max_sessions.into()),
            ("api.max_sessions_per_user", self.api.max_sessions_per_user.into()),
            ("api.max_concurrent_requests", self.api.max_concurrent_requests.into()),
            ("api.memory_limit_mb", self.api.memory_limit_mb),
            ("api.max_body_kb", self.api.max_body_kb as u64),
            ("api.workers", self.api.workers as u64),
            ("session.pool_size", self.session.pool_size as u64),
            ("memory.check_interval", self.memory.check_interval),
            ("permissions.timeout", self.permissions.timeout),
            ("files.max_upload_mb", self.files.max_upload_mb),
            ("auth.failed_auth_per_minute", self.auth.failed_auth_per_minute.into()),
            ("auth.failed_auth_burst", self.auth.failed_auth_burst.into()),
            ("cluster.lease_ttl", self.cluster.lease_ttl),
        ];
        for (key, value) in positive {
            if *value == 0 {
                return Err(err(format!("invalid setting `{key}`: must be greater than 0")));
            }
        }
        if self.api.host.trim().is_empty() {
            return Err(err("invalid setting `api.host`: must not be empty"));
        }
        if let Err(bad) = self.api.trusted_proxy_nets() {
            return Err(err(format!(
                "invalid setting `api.trusted_proxies`: `{bad}` is not an IP address or CIDR range"
            )));
        }
        if self.cli.path.trim().is_empty() {
            return Err(err("invalid setting `cli.path`: must not be empty"));
        }
        for name in &self.session.overridable {
            if AgentOption::parse(name).is_none() {
                return Err(err(format!(
                    "invalid setting `session.overridable`: unknown option `{name}` (known: {})",
                    AgentOption::names()
                )));
            }
        }
        if let Some(max) = self.defaults.max_budget_usd
            && (max.is_nan() || max <= 0.0)
        {
            return Err(err("invalid setting `defaults.max_budget_usd`: must be greater than 0"));
        }
        let budgets = [
            ("budgets.daily_usd", self.budgets.daily_usd),
            ("budgets.monthly_usd", self.budgets.monthly_usd),
            ("budgets.per_session_usd", self.budgets.per_session_usd),
        ];
        for (key, value) in budgets {
            if let Some(usd) = value
                && !(usd.is_finite() && usd >= 0.0)
            {
                return Err(err(format!("invalid setting `{key}`: must be a number of USD, 0 or more")));
            }
        }
        Ok(())
    }

    /// The `host:port` the server binds.
    /// The database's TCP port when storage is PostgreSQL (5432 when the URL names none).
    pub fn database_port(&self) -> Option<u16> {
        if self.session.storage != StorageKind::Postgresql {
            return None;
        }
        let url = self.session.database_url.as_deref()?;
        // A URL that does not parse, or names no port, means PostgreSQL's default port.
        Some(url::Url::parse(url).ok().and_then(|u| u.port()).unwrap_or(5432))
    }

    pub fn bind_address(&self) -> String {
        format!("{}:{}", self.api.host, self.api.port)
    }
}

fn parse_file(text: &str, label: &str) -> Result<toml::Table, SettingsError> {
    text.parse::<toml::Table>().map_err(|e| {
        let line = e.span().map(|s| text[..s.start.min(text.len())].lines().count().max(1)).unwrap_or(0);
        err(format!("invalid settings file {label} (line {line}): {}", e.message().trim()))
    })
}

/// Applies one environment override, typed after the key's default (or file) value.
fn apply_env(
    table: &mut toml::Table,
    defaults: &toml::Table,
    name: &str,
    section: &str,
    key: &str,
    raw: &str,
) -> Result<(), SettingsError> {
    let template = defaults.get(section).and_then(|s| s.as_table()).and_then(|t| t.get(key));
    let known_section = defaults.get(section).is_some_and(|s| s.is_table());
    if !known_section {
        return Err(err(format!("unknown settings section `{section}` in environment variable {name}")));
    }
    let value = typed_env_value(template, raw)
        .map_err(|why| err(format!("invalid value for `{section}.{key}` in {name}: {why}")))?;
    let entry = table.entry(section.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
    match entry.as_table_mut() {
        Some(t) => {
            t.insert(key.to_string(), value);
            Ok(())
        }
        None => Err(err(format!("settings `{section}` is not a table, cannot apply {name}"))),
    }
}

fn typed_env_value(template: Option<&toml::Value>, raw: &str) -> Result<toml::Value, String> {
    use toml::Value;
    let literal =
        || -> Option<Value> { format!("v = {raw}").parse::<toml::Table>().ok().and_then(|mut t| t.remove("v")) };
    Ok(match template {
        Some(Value::String(_)) => Value::String(raw.to_string()),
        Some(Value::Integer(_)) => {
            Value::Integer(raw.trim().parse().map_err(|_| format!("expected an integer, got {raw:?}"))?)
        }
        Some(Value::Float(_)) => {
            Value::Float(raw.trim().parse().map_err(|_| format!("expected a number, got {raw:?}"))?)
        }
        Some(Value::Boolean(_)) => Value::Boolean(match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => return Err(format!("expected true or false, got {raw:?}")),
        }),
        Some(Value::Array(_)) => match literal() {
            Some(v @ Value::Array(_)) => v,
            _ => Value::Array(
                raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| Value::String(s.to_string())).collect(),
            ),
        },
        Some(Value::Table(_)) => match literal() {
            Some(v @ Value::Table(_)) => v,
            _ => return Err("expected an inline table like {a = \"b\"}".into()),
        },
        // No default to copy the type from (an optional key): a TOML literal, else a string.
        _ => match literal() {
            Some(v) => v,
            None => Value::String(raw.to_string()),
        },
    })
}

/// The PostgreSQL URL of the seed's `PG_*` parts (by their variable names), each missing one
/// at the seed's default.
pub(crate) fn postgres_url_from_seed(pg: &BTreeMap<&str, String>) -> String {
    let get = |k: &str| {
        let default = SEED_PG_ENV.iter().find(|(n, _)| *n == k).map(|(_, d)| *d).unwrap_or("");
        pg.get(k).map(String::as_str).filter(|v| !v.is_empty()).unwrap_or(default).to_string()
    };
    let host = get("CLAUDE_AGENT_SESSION_PG_HOST");
    let port = get("CLAUDE_AGENT_SESSION_PG_PORT");
    let db = get("CLAUDE_AGENT_SESSION_PG_DATABASE");
    let user = get("CLAUDE_AGENT_SESSION_PG_USER");
    let password = get("CLAUDE_AGENT_SESSION_PG_PASSWORD");
    let auth = if password.is_empty() {
        percent_encode(&user)
    } else {
        format!("{}:{}", percent_encode(&user), percent_encode(&password))
    };
    format!("postgres://{auth}@{host}:{port}/{}", percent_encode(&db))
}

/// Percent-encodes everything but unreserved characters (RFC 3986) for a URL's userinfo or path.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_load_without_a_file() {
        let s = Settings::from_sources(None, None, &[]).expect("defaults are valid");
        assert_eq!(s.api.port, 8000);
        assert_eq!(s.session.storage, StorageKind::Sqlite);
    }

    #[test]
    fn shipped_settings_file_equals_the_defaults() {
        let text = include_str!("../Settings.toml");
        let s = Settings::from_sources(Some(text), None, &[]).expect("Settings.toml is valid");
        let a = toml::Table::try_from(&s).unwrap();
        let b = toml::Table::try_from(Settings::default()).unwrap();
        assert_eq!(a, b, "Settings.toml must state exactly the built-in defaults");
        // And states them, rather than leaving them to the defaults.
        let stated: toml::Table = toml::from_str(text).unwrap();
        assert_eq!(stated["runtime"], b["runtime"], "Settings.toml must state [runtime]");
    }

    #[test]
    fn runtime_workers_zero_means_one_per_core() {
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(RuntimeSettings { workers: 0 }.session_threads(), cores);
        assert_eq!(RuntimeSettings { workers: 3 }.session_threads(), 3);
    }

    #[test]
    fn unknown_file_key_is_named() {
        let e = Settings::from_sources(Some("[api]\nprot = 1\n"), None, &[]).unwrap_err();
        assert!(e.0.contains("prot"), "{e}");
        assert!(!e.0.contains('\n'));
    }

    #[test]
    fn bad_value_is_named() {
        let e = Settings::from_sources(Some("[api]\nport = \"x\"\n"), None, &[]).unwrap_err();
        assert!(e.0.contains("api.port"), "{e}");
    }

    #[test]
    fn syntax_error_gives_the_line() {
        let e = Settings::from_sources(Some("[api]\nport = = 1\n"), None, &[]).unwrap_err();
        assert!(e.0.contains("line 2"), "{e}");
    }

    #[test]
    fn environment_overrides_file_and_seed_names_work() {
        let s = Settings::from_sources(
            Some("[api]\nport = 9000\nmax_sessions = 3\n"),
            None,
            &env(&[
                ("CLAUDE_AGENT_API__PORT", "9100"),
                ("CLAUDE_AGENT_MAX_SESSIONS", "7"),
                ("CLAUDE_AGENT_API__CORS_ORIGINS", "http://a, http://b"),
                ("CLAUDE_AGENT_DEFAULTS__MODEL", "claude-x"),
            ]),
        )
        .unwrap();
        assert_eq!(s.api.port, 9100);
        assert_eq!(s.api.max_sessions, 7);
        assert_eq!(s.api.cors_origins, vec!["http://a", "http://b"]);
        assert_eq!(s.defaults.model.as_deref(), Some("claude-x"));
    }

    #[test]
    fn budget_defaults_come_from_the_file_and_the_environment() {
        let s = Settings::from_sources(
            Some("[budgets]\nmonthly_usd = 100.0\n"),
            None,
            &env(&[("CLAUDE_AGENT_BUDGETS__DAILY_USD", "5"), ("CLAUDE_AGENT_BUDGETS__PER_SESSION_USD", "0.5")]),
        )
        .unwrap();
        assert_eq!(
            (s.budgets.daily_usd, s.budgets.monthly_usd, s.budgets.per_session_usd),
            (Some(5.0), Some(100.0), Some(0.5))
        );
        let e = Settings::from_sources(Some("[budgets]\ndaily_usd = -1.0\n"), None, &[]).unwrap_err();
        assert!(e.0.contains("budgets.daily_usd"), "{e}");
    }

    #[test]
    fn specific_env_name_beats_seed_name() {
        let s = Settings::from_sources(
            None,
            None,
            &env(&[("CLAUDE_AGENT_API__PORT", "9200"), ("CLAUDE_AGENT_API_PORT", "9300")]),
        )
        .unwrap();
        assert_eq!(s.api.port, 9200);
    }

    #[test]
    fn unknown_env_key_and_bad_env_value_are_named() {
        let e = Settings::from_sources(None, None, &env(&[("CLAUDE_AGENT_API__PROT", "1")])).unwrap_err();
        assert!(e.0.contains("prot"), "{e}");
        let e = Settings::from_sources(None, None, &env(&[("CLAUDE_AGENT_NOPE__X", "1")])).unwrap_err();
        assert!(e.0.contains("CLAUDE_AGENT_NOPE__X"), "{e}");
        let e = Settings::from_sources(None, None, &env(&[("CLAUDE_AGENT_API_PORT", "eighty")])).unwrap_err();
        assert!(e.0.contains("api.port") && e.0.contains("CLAUDE_AGENT_API_PORT"), "{e}");
    }

    #[test]
    fn seed_postgres_variables_make_a_url() {
        let s = Settings::from_sources(
            None,
            None,
            &env(&[
                ("CLAUDE_AGENT_SESSION_STORAGE", "postgresql"),
                ("CLAUDE_AGENT_SESSION_PG_HOST", "db"),
                ("CLAUDE_AGENT_SESSION_PG_USER", "app"),
                ("CLAUDE_AGENT_SESSION_PG_PASSWORD", "p@ss"),
                ("CLAUDE_AGENT_SESSION_PG_DATABASE", "agents"),
            ]),
        )
        .unwrap();
        assert_eq!(s.session.database_url.as_deref(), Some("postgres://app:p%40ss@db:5432/agents"));
    }

    #[test]
    fn postgres_without_url_uses_the_seeds_defaults() {
        let s = Settings::from_sources(Some("[session]\nstorage = \"postgresql\"\n"), None, &[]).unwrap();
        assert_eq!(s.session.database_url.as_deref(), Some("postgres://postgres:postgres@localhost:5432/claude_agent"));
        assert_eq!(s.database_port(), Some(5432));
    }

    #[test]
    fn seed_only_keys_are_aliases_in_the_file_and_the_environment() {
        let file = "[defaults]\ncli_path = \"/usr/local/bin/claude\"\n\
                    [session]\nstorage = \"postgresql\"\npg_host = \"db\"\npg_port = 6543\npg_user = \"app\"\n";
        let s = Settings::from_sources(Some(file), None, &[]).unwrap();
        assert_eq!(s.cli.path, "/usr/local/bin/claude");
        assert_eq!(s.session.database_url.as_deref(), Some("postgres://app:postgres@db:6543/claude_agent"));
        // Their environment forms, over the file's; the key they stand for wins over them.
        let s = Settings::from_sources(
            Some(file),
            None,
            &env(&[
                ("CLAUDE_AGENT_SESSION__PG_PASSWORD", "s3cret"),
                ("CLAUDE_AGENT_DEFAULTS__CLI_PATH", "/opt/claude"),
            ]),
        )
        .unwrap();
        assert_eq!(s.cli.path, "/opt/claude");
        assert_eq!(s.session.database_url.as_deref(), Some("postgres://app:s3cret@db:6543/claude_agent"));
        let s = Settings::from_sources(
            Some("[cli]\npath = \"/a\"\n[defaults]\ncli_path = \"/b\"\n"),
            None,
            &env(&[("CLAUDE_AGENT_DEFAULTS__CLI_PATH", "/c")]),
        )
        .unwrap();
        assert_eq!(s.cli.path, "/c", "environment over file");
        let s = Settings::from_sources(
            None,
            None,
            &env(&[("CLAUDE_AGENT_DEFAULTS__CLI_PATH", "/c"), ("CLAUDE_AGENT_CLI__PATH", "/d")]),
        )
        .unwrap();
        assert_eq!(s.cli.path, "/d", "the key itself over its alias");
        // An explicit URL wins over the parts.
        let s = Settings::from_sources(
            Some("[session]\npg_host = \"db\"\ndatabase_url = \"postgres://u@x/y\"\n"),
            None,
            &[],
        )
        .unwrap();
        assert_eq!(s.session.database_url.as_deref(), Some("postgres://u@x/y"));
    }

    #[test]
    fn zero_limits_are_refused() {
        let e = Settings::from_sources(Some("[api]\nmax_sessions = 0\n"), None, &[]).unwrap_err();
        assert!(e.0.contains("api.max_sessions"), "{e}");
    }

    #[test]
    fn overridable_names_are_checked() {
        let e = Settings::from_sources(Some("[session]\noverridable = [\"cwd\"]\n"), None, &[]).unwrap_err();
        assert!(e.0.contains("cwd"), "{e}");
    }
}
