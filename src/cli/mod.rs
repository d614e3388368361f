//! The Claude Code CLI as a child process: its protocol, command line and process handling.

pub mod command;
pub mod launch;
pub mod orphans;
pub mod priority;
pub mod probe;
pub mod process;
pub mod protocol;
pub mod sandbox;
pub mod syscalls;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::settings::Settings;

/// Under the system temp dir: one private (0700) temp dir per session.
pub const TEMP_ROOT: &str = "claude-agent-http";

/// The private temp dir of one session (the CLI's `TMPDIR`, its secret files), named after
/// this process too: instances on one host (a cluster's, in turn or at once) never share one,
/// so one's clean-up never removes another's files or kills another's processes.
pub fn session_temp_dir(session_id: &str) -> PathBuf {
    std::env::temp_dir().join(TEMP_ROOT).join(format!("{session_id}-{}", std::process::id()))
}

/// `cli.path`'s default: `claude` on `PATH`.
pub const DEFAULT_PATH: &str = "claude";

/// Where `scripts/install-cli` puts the pinned CLI, relative to the project.
pub const PROJECT_LOCAL: &str = ".cli/node_modules/.bin/claude";

/// Resolves `cli.path`: a path (absolute or relative, containing `/`) is taken as it is, a
/// bare name is looked up on `PATH`. The default `claude`, when not on `PATH`, is also looked
/// for where `scripts/install-cli` puts it in the working directory (so a CLI installed while
/// the service runs is seen). `None` if no executable file is there.
pub fn locate(configured: &str) -> Option<PathBuf> {
    if configured.contains('/') {
        let path = PathBuf::from(configured);
        return is_executable(&path).then(|| std::fs::canonicalize(&path).unwrap_or(path));
    }
    on_path(configured).or_else(|| if configured == DEFAULT_PATH { project_local(Path::new(".")) } else { None })
}

/// With `cli.path` at its default and no `claude` on `PATH`, the CLI `scripts/install-cli`
/// put beside the settings file (or in the working directory) becomes `cli.path`, so the
/// README's run command serves a working agent with no setting. Returns what was chosen.
pub fn adopt_project_local(settings: &mut Settings) -> Option<PathBuf> {
    if settings.cli.path != DEFAULT_PATH || on_path(DEFAULT_PATH).is_some() {
        return None;
    }
    let beside_settings = settings.file.as_deref().and_then(Path::parent);
    let found = beside_settings.into_iter().chain([Path::new(".")]).find_map(project_local)?;
    log::info!("cli.path: `claude` is not on PATH, using the project-local CLI {}", found.display());
    settings.cli.path = found.display().to_string();
    Some(found)
}

/// A service that starts but whose agents cannot answer says so once, at start, with the fix:
/// no key, root without `IS_SANDBOX`, a CLI missing or broken. The CLI is probed in the
/// background (the real one's `--version` takes about half a second). Needs a runtime.
pub fn warn_when_it_cannot_answer(settings: &Settings) {
    if let Some(hint) = missing_key_hint(&settings.cli.env, |name| std::env::var_os(name).is_some()) {
        log::warn!("{hint}");
    }
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root
        && settings.defaults.permission_mode == crate::settings::PermissionMode::BypassPermissions
        && !settings.cli.env.contains_key("IS_SANDBOX")
    {
        log::warn!(
            "running as root: the CLI refuses defaults.permission_mode = \"bypassPermissions\" unless cli.env has \
             IS_SANDBOX = \"1\" (set it in a container or sandbox, or run the service as a normal user)"
        );
    }
    let configured = settings.cli.path.clone();
    actix_web::rt::spawn(async move {
        if let Some(why) = cannot_run(&configured).await {
            log::warn!("{why}");
        }
    });
}

/// Why the CLI will not be able to answer, for the start-up log; `None` when it runs. Names
/// both ways out: `scripts/install-cli` and `cli.path`.
pub async fn cannot_run(configured: &str) -> Option<String> {
    let fix = "install the pinned CLI with `scripts/install-cli` (into .cli/, found there by itself) \
               or set cli.path (CLAUDE_AGENT_CLI__PATH) to a working `claude`; /health answers 503 until then";
    let Some(path) = locate(configured) else {
        return Some(format!("the Claude Code CLI `{configured}` (cli.path) was not found: {fix}"));
    };
    match process::version(&path).await {
        Some(_) => None,
        None => Some(format!("the Claude Code CLI {} (cli.path) does not answer `--version`: {fix}", path.display())),
    }
}

/// Variables by which the CLI can reach a model without an interactive login.
const CREDENTIAL_ENV: &[&str] = &[
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "CLAUDE_CODE_USE_BEDROCK",
    "CLAUDE_CODE_USE_VERTEX",
];

/// A hint for the start-up log when neither the service's environment (`is_set`) nor
/// `cli.env` gives the CLI a key: every chat would then fail (see [`auth_failure`]).
pub fn missing_key_hint(
    cli_env: &std::collections::BTreeMap<String, String>,
    is_set: impl Fn(&str) -> bool,
) -> Option<String> {
    let has_key = CREDENTIAL_ENV.iter().any(|name| is_set(name) || cli_env.get(*name).is_some_and(|v| !v.is_empty()));
    (!has_key).then(|| {
        "no ANTHROPIC_API_KEY in the environment or in cli.env: the service is healthy, but chats answer \
         502 cli_failed unless a user's CLI is logged in"
            .to_string()
    })
}

/// A turn the CLI ended because it could not authenticate (no key, or a wrong one): it answers
/// an error result such as "Not logged in · Please run /login", which says nothing of the
/// service's settings. `Some` with a message naming the key to set; `None` for other results.
pub fn auth_failure(is_error: bool, text: &str) -> Option<String> {
    const SIGNS: &[&str] = &["Not logged in", "Invalid API key", "authentication_failed", "API Error: 401"];
    (is_error && SIGNS.iter().any(|sign| text.contains(sign))).then(|| {
        format!(
            "the Claude Code CLI could not authenticate (it said: {text}): set ANTHROPIC_API_KEY in the \
             service's environment or in cli.env"
        )
    })
}

fn on_path(name: &str) -> Option<PathBuf> {
    let search = std::env::var_os("PATH")?;
    std::env::split_paths(&search).map(|dir| dir.join(name)).find(|candidate| is_executable(candidate))
}

/// The CLI of `scripts/install-cli` under a project directory, absolute.
fn project_local(dir: &Path) -> Option<PathBuf> {
    let path = dir.join(PROJECT_LOCAL);
    is_executable(&path).then(|| std::fs::canonicalize(&path).unwrap_or(path))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_binaries_on_path_and_by_path() {
        assert!(locate("sh").is_some());
        assert!(locate("/bin/sh").is_some());
        assert!(locate("surely-no-such-binary-here").is_none());
        assert!(locate("/nonexistent/claude").is_none());
    }

    #[test]
    fn the_project_local_cli_beside_the_settings_file_is_adopted_for_the_default_only() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join(PROJECT_LOCAL);
        std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut settings =
            crate::settings::Settings { file: Some(dir.path().join("Settings.toml")), ..Default::default() };
        if on_path(DEFAULT_PATH).is_some() {
            assert_eq!(adopt_project_local(&mut settings), None, "a `claude` on PATH wins");
            return;
        }
        let adopted = adopt_project_local(&mut settings).expect("adopted");
        assert_eq!(adopted, std::fs::canonicalize(&bin).unwrap());
        assert_eq!(settings.cli.path, adopted.display().to_string());

        let mut chosen =
            crate::settings::Settings { file: Some(dir.path().join("Settings.toml")), ..Default::default() };
        chosen.cli.path = "/opt/claude".into();
        assert_eq!(adopt_project_local(&mut chosen), None, "an explicit cli.path is kept");
        assert_eq!(chosen.cli.path, "/opt/claude");
    }

    #[test]
    fn a_missing_key_is_named() {
        let mut env = std::collections::BTreeMap::new();
        assert!(missing_key_hint(&env, |_| false).is_some_and(|h| h.contains("ANTHROPIC_API_KEY")));
        assert!(missing_key_hint(&env, |n| n == "ANTHROPIC_API_KEY").is_none());
        env.insert("ANTHROPIC_API_KEY".to_string(), "sk".to_string());
        assert!(missing_key_hint(&env, |_| false).is_none());
    }

    #[test]
    fn only_an_authentication_failure_is_explained() {
        // What the real CLI 2.1.330 answers with no key.
        let why = auth_failure(true, "Not logged in · Please run /login").expect("explained");
        assert!(why.contains("ANTHROPIC_API_KEY") && why.contains("cli.env"), "{why}");
        assert!(auth_failure(false, "Not logged in is what I would say").is_none(), "an answer is an answer");
        assert!(auth_failure(true, "Reached maximum number of turns").is_none());
    }
}
