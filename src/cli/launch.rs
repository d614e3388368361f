//! The launch recipe of one session's CLI (program, directories, options, argv and env, the
//! Landlock ruleset) and where each step runs, so no actor thread or HTTP worker ever blocks
//! on it: the filesystem work on tokio's blocking pool, the fork on one dedicated launcher
//! thread. That thread lives as long as the service, because the parent-death signal follows
//! the *thread* that forks: a blocking-pool thread exits when idle and would take its CLIs
//! with it. The child's pipes and supervisor are registered on the runtime of the session
//! thread that will own the actor, not on the launcher's.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::mpsc;

use serde_json::{Map, Value};

use super::command::{AgentOptions, Continuation, SecretFiles, StartMode, build_args, build_env, transcript_path};
use super::orphans::GroupRecord;
use super::process::{self, CliProcess, Confinement, LaunchSpec};
use super::sandbox::Sandbox;
use crate::error::ApiError;
use crate::settings::Settings;

/// What one launch needs, owned (it crosses threads).
pub struct LaunchRequest {
    pub session_id: String,
    pub user_id: String,
    pub cli_session_id: String,
    /// A fork's source CLI session, until the fork has a transcript of its own.
    pub fork_from: Option<String>,
    /// `--resume-session-at` (a fork's or a rewind's last kept message).
    pub resume_at: Option<String>,
    /// The stored path of the working directory (for the transcript lookup and the log).
    pub cwd: String,
    /// The working directory as a handle opened and checked beneath the user's directory.
    pub cwd_handle: OwnedFd,
    /// The session's stored option overrides (JSON).
    pub options: String,
    pub settings: Arc<Settings>,
    pub users_root: PathBuf,
    pub sandbox: Option<Arc<Sandbox>>,
    pub groups: Arc<GroupRecord>,
    /// Where the user's own provider credentials are read from, at this launch.
    pub credentials: Arc<dyn UserEnv>,
}

/// The variables a user's CLI gets in place of the service's secrets, read when one starts
/// (so a change applies from the user's next CLI start). `None`: the service's apply.
pub trait UserEnv: Send + Sync {
    fn for_launch<'a>(&'a self, user_id: &'a str) -> UserEnvLookup<'a>;

    /// What the user may still spend in this session (their budgets), read at the same
    /// launch: the CLI's `--max-budget-usd` is the smaller of it and the session's option.
    fn budget_left<'a>(&'a self, _user_id: &'a str, _session_id: &'a str) -> BudgetLookup<'a> {
        Box::pin(async { Ok(None) })
    }
}

/// What [`UserEnv::budget_left`] answers: USD, or `None` without a limit.
pub type BudgetLookup<'a> = std::pin::Pin<Box<dyn Future<Output = Result<Option<f64>, ApiError>> + 'a>>;

/// What [`UserEnv::for_launch`] answers: the user's variables, if they have any.
pub type UserEnvLookup<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<Option<BTreeMap<String, String>>, ApiError>> + 'a>>;

/// A started CLI, and what its actor needs from the launch.
pub struct Launched {
    pub child: CliProcess,
    pub tmp_dir: PathBuf,
    pub always_allowed: Vec<String>,
    /// The CLI's `--max-budget-usd` (what it may spend in its life), if it has one.
    pub max_budget_usd: Option<f64>,
}

/// Everything computed before the fork.
struct Prepared {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    cwd: PathBuf,
    cwd_handle: OwnedFd,
    confinement: Option<Confinement>,
    tmp_dir: PathBuf,
    always_allowed: Vec<String>,
    max_budget_usd: Option<f64>,
    mode: StartMode,
}

/// Prepares off-thread, then forks on the launcher thread with the child's I/O registered on
/// `runtime` (the session thread's).
pub async fn launch(request: LaunchRequest, runtime: tokio::runtime::Handle) -> Result<Launched, ApiError> {
    let groups = request.groups.clone();
    let session_id = request.session_id.clone();
    // Two independent reads on the start's critical path: at once, not one after the other.
    let (own, left) = tokio::join!(
        request.credentials.for_launch(&request.user_id),
        request.credentials.budget_left(&request.user_id, &request.session_id)
    );
    let (own, left) = (own?, left?);
    let prepared = tokio::task::spawn_blocking(move || prepare(request, own, left))
        .await
        .map_err(|e| ApiError::Internal(format!("the launch preparation failed: {e}")))??;
    let forked = on_launcher_thread(move || {
        let _context = runtime.enter();
        let spec = LaunchSpec {
            program: &prepared.program,
            args: &prepared.args,
            env: &prepared.env,
            cwd: &prepared.cwd,
            cwd_handle: Some(&prepared.cwd_handle),
        };
        let label = format!("session {session_id}");
        let child = process::spawn(&spec, &label, prepared.confinement).map_err(|e| {
            ApiError::CliFailed(format!("cannot start the claude CLI at {}: {e}", prepared.program.display()))
        })?;
        // Recorded before the actor exists, so its `Ended` (which removes it) always comes after.
        groups.add(child.pid as i32, &prepared.tmp_dir, crate::clock::now_ms());
        log::info!("session {session_id}: started the CLI (pid {}, {:?})", child.pid, prepared.mode);
        Ok(Launched {
            child,
            tmp_dir: prepared.tmp_dir,
            always_allowed: prepared.always_allowed,
            max_budget_usd: prepared.max_budget_usd,
        })
    });
    forked.await.map_err(|_| ApiError::Internal("the CLI launcher thread failed".into()))?
}

/// The blocking part of the recipe: locate the program, make the directories, write the
/// secret files, look for a transcript to resume, build the confinement.
fn prepare(
    request: LaunchRequest,
    own: Option<BTreeMap<String, String>>,
    budget_left: Option<f64>,
) -> Result<Prepared, ApiError> {
    let settings = &request.settings;
    let program = crate::cli::locate(&settings.cli.path).ok_or_else(|| {
        ApiError::CliFailed(format!("the claude CLI was not found at `{}` (cli.path)", settings.cli.path))
    })?;
    let user_dir = request.users_root.join(&request.user_id);
    let config_dir = user_dir.join(".claude");
    let tmp_dir = crate::cli::session_temp_dir(&request.session_id);
    private_dir(&tmp_dir).map_err(|e| ApiError::Internal(format!("cannot create {}: {e}", tmp_dir.display())))?;
    std::fs::create_dir_all(&config_dir)
        .map_err(|e| ApiError::Internal(format!("cannot create {}: {e}", config_dir.display())))?;
    let shared = settings.cli.shared_config_dir.as_deref().and_then(|dir| link_shared(dir, &config_dir));
    // Fail closed: the defaults may be laxer than what the session asked for (e.g.
    // `bypassPermissions` where it chose to be asked before each tool).
    let overrides: Map<String, Value> = serde_json::from_str(&request.options).map_err(|e| {
        ApiError::CliFailed(format!(
            "the session's stored options are unreadable ({e}); it is not started with the service defaults"
        ))
    })?;
    let mut options = AgentOptions::resolve(settings, &overrides);
    options.max_budget_usd = smaller_budget(options.max_budget_usd, budget_left);
    let mode = if transcript_path(&config_dir, &request.cwd, &request.cli_session_id).is_some() {
        StartMode::Resume
    } else if request.fork_from.is_some() {
        // The CLI writes a fork's transcript at its first message: until then it forks anew.
        StartMode::Fork
    } else {
        StartMode::New
    };
    let from = Continuation { fork_from: request.fork_from.as_deref(), resume_at: request.resume_at.as_deref() };
    let files = SecretFiles::write(&tmp_dir, &options)
        .map_err(|e| ApiError::Internal(format!("cannot write the session's files in {}: {e}", tmp_dir.display())))?;
    let args = build_args(&options, &settings.plugins, &request.cli_session_id, mode, &files, from);
    let env = build_env(std::env::vars(), &settings.cli.env, own.as_ref(), &config_dir, &tmp_dir);
    let confinement = match &request.sandbox {
        Some(sandbox) => {
            let mut read = crate::cli::sandbox::program_dirs(&program);
            // Read only: the links in the user's (writable) directory lead out of it, and
            // Landlock judges the directory they lead to.
            read.extend(shared);
            for server in options.mcp_servers.values() {
                if let Some(found) = server.get("command").and_then(Value::as_str).and_then(crate::cli::locate) {
                    read.extend(crate::cli::sandbox::program_dirs(&found));
                }
            }
            Some(
                sandbox
                    .ruleset(&read, &[user_dir.clone(), tmp_dir.clone()], options.mcp_servers.values())
                    .map_err(ApiError::Internal)?,
            )
        }
        None => None,
    };
    Ok(Prepared {
        program,
        args,
        env,
        cwd: PathBuf::from(request.cwd),
        cwd_handle: request.cwd_handle,
        confinement,
        tmp_dir,
        always_allowed: options.allowed_tools.clone(),
        max_budget_usd: options.max_budget_usd,
        mode,
    })
}

/// The CLI's `--max-budget-usd`: the session's option or what the user's budgets leave,
/// whichever is smaller.
fn smaller_budget(option: Option<f64>, left: Option<f64>) -> Option<f64> {
    match (option, left) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Links `shared`'s `skills` and `plugins` into a user's config dir, where the CLI looks for
/// them; returns `shared` resolved (what the sandbox grants to read). A user's own `skills`
/// or `plugins` directory is left alone (theirs wins); a link is renewed.
fn link_shared(shared: &std::path::Path, config_dir: &std::path::Path) -> Option<PathBuf> {
    let real = match std::fs::canonicalize(shared) {
        Ok(real) => real,
        Err(e) => {
            log::warn!("cli.shared_config_dir {}: {e}; the agents do not get it", shared.display());
            return None;
        }
    };
    // The agent may have replaced `.claude` with a link: open it without following one, and
    // work beneath that handle, so the links are never made (or removed) anywhere else.
    let opened = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW).open(config_dir)
    };
    let handle = match opened {
        Ok(handle) => handle,
        Err(e) => {
            log::warn!("{}: {e}; the shared skills and plugins are not linked there", config_dir.display());
            return Some(real);
        }
    };
    let beneath = PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&handle)));
    for name in ["skills", "plugins"] {
        let target = real.join(name);
        let link = beneath.join(name);
        if !target.is_dir() {
            continue;
        }
        match std::fs::symlink_metadata(&link) {
            Ok(meta) if meta.file_type().is_symlink() => {
                if std::fs::read_link(&link).is_ok_and(|to| to == target) {
                    continue;
                }
                let _ = std::fs::remove_file(&link);
            }
            Ok(_) => {
                log::info!("{}: the user has its own {name}; the shared ones are not linked", config_dir.display());
                continue;
            }
            Err(_) => {}
        }
        if let Err(e) = std::os::unix::fs::symlink(&target, &link) {
            log::warn!("cannot link {}/{name} to {}: {e}", config_dir.display(), target.display());
        }
    }
    Some(real)
}

/// Creates `dir` and its parent (the temp root) readable by their owner only.
fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    for d in [Some(dir), dir.parent()].into_iter().flatten() {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

type Job = Box<dyn FnOnce() + Send>;

/// Runs `job` on the launcher thread (started on first use, never ended). A panicking job is
/// caught: the thread, and with it every CLI's parent-death signal, must survive it. When the
/// thread cannot be started the receiver errs (its sender is dropped), and the launch fails
/// with an error rather than a panic; the next launch tries again.
fn on_launcher_thread<T: Send + 'static>(
    job: impl FnOnce() -> T + Send + 'static,
) -> tokio::sync::oneshot::Receiver<T> {
    static LAUNCHER: Mutex<Option<mpsc::Sender<Job>>> = Mutex::new(None);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(job());
    });
    let mut launcher = LAUNCHER.lock().unwrap_or_else(|p| p.into_inner());
    if launcher.is_none() {
        let (sender, jobs) = mpsc::channel::<Job>();
        let started = std::thread::Builder::new().name("cli-launcher".into()).spawn(move || {
            for job in jobs {
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                    log::error!("a CLI launch panicked; the launcher goes on");
                }
            }
        });
        match started {
            Ok(_) => *launcher = Some(sender),
            Err(e) => log::error!("cannot start the CLI launcher thread: {e}"),
        }
    }
    if let Some(sender) = launcher.as_ref() {
        let _ = sender.send(job);
    }
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fork's thread must outlive the call: a child of a thread that exits is killed by
    /// its parent-death signal. Two launches run on the same long-lived thread.
    #[test]
    fn the_smaller_budget_wins() {
        assert_eq!(smaller_budget(Some(5.0), Some(1.5)), Some(1.5));
        assert_eq!(smaller_budget(Some(0.5), Some(1.5)), Some(0.5));
        assert_eq!(smaller_budget(None, Some(1.5)), Some(1.5));
        assert_eq!(smaller_budget(Some(2.0), None), Some(2.0));
        assert_eq!(smaller_budget(None, None), None);
    }

    #[test]
    fn jobs_run_on_one_long_lived_thread_and_survive_a_panic() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let first = on_launcher_thread(|| std::thread::current().id()).await.unwrap();
            let panicked = on_launcher_thread(|| -> u8 { panic!("boom") }).await;
            assert!(panicked.is_err());
            let second = on_launcher_thread(|| std::thread::current().id()).await.unwrap();
            assert_eq!(first, second);
            assert_ne!(first, std::thread::current().id());
        });
    }
}
