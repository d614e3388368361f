//! Landlock confinement of a session's CLI and everything it starts: write access to the
//! user's directory and the session's private temp dir only; read (and execute) access to the
//! system and the CLI's install; nothing at all of other users' directories, the service's
//! data dir (database, admin key) or its settings. The ruleset is built before fork and only
//! applied between fork and exec (`restrict_self` makes no allocation on success).

use std::path::{Path, PathBuf};

use landlock::{ABI, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreated, RulesetCreatedAttr, path_beneath_rules};

use crate::settings::SandboxMode;

/// The access rights this service asks for; older kernels get the subset they know.
const ABI_HANDLED: ABI = ABI::V5;

/// System trees the agent may read and execute from.
const SYSTEM_READ: &[&str] =
    &["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc", "/opt", "/run", "/proc", "/sys"];
/// Device nodes (`/dev/null`, `/dev/tty`, …) must be writable.
const SYSTEM_WRITE: &[&str] = &["/dev"];

/// The kernel's Landlock ABI version, if it has Landlock.
pub fn kernel_abi() -> Option<i64> {
    // SAFETY: landlock_create_ruleset(NULL, 0, VERSION) only returns the ABI version.
    let v = unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, std::ptr::null::<u8>(), 0usize, 1u32) };
    (v > 0).then_some(v)
}

/// Decides at start-up whether children are confined. `Err` when `landlock` is required and
/// the kernel cannot do it.
pub fn decide(mode: SandboxMode) -> Result<Option<i64>, String> {
    match (mode, kernel_abi()) {
        (SandboxMode::Off, _) => {
            log::warn!("sandbox.mode = \"off\": the agents' processes are not confined");
            Ok(None)
        }
        (_, Some(abi)) => {
            log::info!("confining the agents with Landlock (kernel ABI {abi})");
            Ok(Some(abi))
        }
        (SandboxMode::Auto, None) => {
            log::warn!("this kernel has no Landlock: the agents' processes are not confined (sandbox.mode = \"auto\")");
            Ok(None)
        }
        (SandboxMode::Landlock, None) => {
            Err("sandbox.mode = \"landlock\" but this kernel has no Landlock (or it is disabled)".into())
        }
    }
}

/// The ruleset of one session's CLI. `read_exec` adds directories to read from (the CLI's
/// install, MCP servers); `read_write` are the user's directory and the session's temp dir.
pub fn ruleset(read_exec: &[PathBuf], read_write: &[PathBuf]) -> Result<RulesetCreated, String> {
    let existing = |paths: Vec<PathBuf>| -> Vec<PathBuf> { paths.into_iter().filter(|p| p.exists()).collect() };
    let read: Vec<PathBuf> = existing(SYSTEM_READ.iter().map(PathBuf::from).chain(read_exec.iter().cloned()).collect());
    let write: Vec<PathBuf> =
        existing(SYSTEM_WRITE.iter().map(PathBuf::from).chain(read_write.iter().cloned()).collect());
    let build = || -> Result<RulesetCreated, landlock::RulesetError> {
        Ruleset::default()
            .handle_access(AccessFs::from_all(ABI_HANDLED))?
            .create()?
            .add_rules(path_beneath_rules(&read, AccessFs::from_read(ABI_HANDLED)))?
            .add_rules(path_beneath_rules(&write, AccessFs::from_all(ABI_HANDLED)))
    };
    build().map_err(|e| format!("cannot build the Landlock ruleset: {e}"))
}

/// The directories holding a program (its own and its parent, for package layouts like npm's).
pub fn program_dirs(program: &Path) -> Vec<PathBuf> {
    let real = std::fs::canonicalize(program).unwrap_or_else(|_| program.to_path_buf());
    let dir = real.parent().map(Path::to_path_buf);
    let parent = dir.as_deref().and_then(Path::parent).map(Path::to_path_buf);
    dir.into_iter().chain(parent).collect()
}
