//! Landlock confinement of a session's CLI and everything it starts:
//! - files: write access to the user's directory and the session's private temp dir only; read
//!   (and execute) access to the system trees, except the service's own files and the host's
//!   secrets, which are cut out of them (their siblings are granted one by one);
//! - network (ABI 4): `connect` to the allowed TCP ports only, `bind` to none;
//! - scopes (ABI 6): no signals to, and no abstract unix sockets of, processes outside the
//!   session (the service, other sessions);
//! - syscalls (seccomp, every kernel): no unix sockets, no io_uring ([`super::syscalls`]);
//! - ptrace (every ABI): no access to processes outside the session, so no `/proc/<pid>/environ`,
//!   `mem`, `maps` or `fd` of the service or of another session.
//!
//! The ruleset is built before fork and only applied between fork and exec (`restrict_self`
//! makes no allocation on success).

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, NetPort, Ruleset, RulesetAttr, RulesetCreated, RulesetCreatedAttr, RulesetError,
    Scope, path_beneath_rules,
};

use super::process::Confinement;
use crate::settings::{SandboxMode, Settings};

/// The access rights this service asks for; older kernels get the subset they know.
const ABI_HANDLED: ABI = ABI::V9;

/// System trees the agent may read and execute from.
const SYSTEM_READ: &[&str] =
    &["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc", "/opt", "/run", "/proc", "/sys"];
/// System trees searched for what only its owner or group may read: an agent runs as the
/// service's uid (root in many containers), so a root-only 0600 file there (a Redis password,
/// a private key) would be readable to it. /usr and /lib hold world-readable package files;
/// /proc and /sys are not files.
const SEARCHED_FOR_PRIVATE: &[&str] = &["/etc", "/opt", "/run"];
/// Entries looked at by that search, at most (a few thousand on a usual host).
const PRIVATE_SEARCH_LIMIT: usize = 200_000;
/// The device nodes tools use, readable and writable. Not `/dev` whole: an agent running as
/// root owns `/dev/tty1`, `/dev/console` and the admins' `/dev/pts/N` (their keystrokes), and
/// `/dev/shm` is shared with the host's other processes unless the CLI gets its own (see
/// `process::mount_private_proc`).
const SYSTEM_WRITE: &[&str] =
    &["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty", "/dev/shm"];

/// The kernel's Landlock ABI version, if it has Landlock.
pub fn kernel_abi() -> Option<i64> {
    // SAFETY: landlock_create_ruleset(NULL, 0, VERSION) only returns the ABI version.
    let v = unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, std::ptr::null::<u8>(), 0usize, 1u32) };
    (v > 0).then_some(v)
}

/// Decides at start-up whether children are confined. `Err` when `landlock` is required and
/// the kernel cannot do it. Logs what this kernel cannot confine.
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

/// What an agent can still do on a kernel with Landlock ABI `abi` (empty from ABI 9 on);
/// `unix_filtered`: the seccomp filter refuses unix sockets, whatever the ABI.
pub fn unconfined_on(abi: i64, unix_filtered: bool) -> Vec<&'static str> {
    // (ABI that closes it, a unix-socket gap the seccomp filter closes too, what stays open)
    let gaps: [(i64, bool, &str); 6] = [
        (2, false, "renames and links across directories (ABI 2, Linux 5.19)"),
        (3, false, "truncation of readable files (ABI 3, Linux 6.2)"),
        (
            4,
            false,
            "the network: agents may connect to any TCP port, the service's and the database's included (ABI 4, Linux 6.7)",
        ),
        (6, false, "signals: agents may signal the service and other sessions (ABI 6, Linux 6.12)"),
        (6, true, "abstract unix sockets (ABI 6, Linux 6.12)"),
        (
            9,
            true,
            "pathname unix sockets: agents may connect to any socket file they can reach, e.g. a local database's",
        ),
    ];
    gaps.iter().filter(|(since, unix, _)| abi < *since && !(unix_filtered && *unix)).map(|(_, _, gap)| *gap).collect()
}

/// The confinement every session's CLI gets, computed once at start-up.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub abi: i64,
    /// System paths the agent may read, with the hidden ones cut out.
    read: Vec<PathBuf>,
    /// Paths the agent must never read, even where a system tree is granted (absolute, canonical).
    hidden: Vec<PathBuf>,
    /// TCP ports the agent may connect to.
    connect_ports: BTreeSet<u16>,
    /// Ports never granted, whatever asks for them: the service's own, the database's.
    forbidden_ports: BTreeSet<u16>,
    /// No unix sockets, no io_uring (`None`: `sandbox.allow_unix_sockets`, or no filter here).
    syscalls: Option<&'static [seccompiler::sock_filter]>,
}

impl Sandbox {
    /// `service_port` is the port the service actually listens on.
    pub fn new(abi: i64, settings: &Settings, service_port: u16) -> Sandbox {
        let hidden = hidden_paths(settings);
        let read = SYSTEM_READ.iter().flat_map(|root| readable_beneath(Path::new(root), &hidden, &list_dir)).collect();
        let mut forbidden_ports = BTreeSet::from([service_port]);
        if let Some(port) = settings.database_port() {
            forbidden_ports.insert(port);
        }
        let syscalls = if settings.sandbox.allow_unix_sockets {
            log::warn!("sandbox.allow_unix_sockets: the agents may connect to unix sockets they can name");
            None
        } else {
            match super::syscalls::filter() {
                Ok(program) => Some(program.as_slice()),
                Err(e) => {
                    log::warn!("{e}: the agents may connect to unix sockets they can name");
                    None
                }
            }
        };
        for gap in unconfined_on(abi, syscalls.is_some()) {
            log::warn!("this kernel's Landlock (ABI {abi}) cannot confine {gap}");
        }
        let mut sandbox = Sandbox { abi, read, hidden, connect_ports: BTreeSet::new(), forbidden_ports, syscalls };
        let wanted: Vec<u16> = settings
            .sandbox
            .allowed_tcp_ports
            .iter()
            .copied()
            .chain(anthropic_port(settings))
            .chain(mcp_ports(settings.mcp_servers.values()))
            .collect();
        sandbox.connect_ports = sandbox.allowed(wanted.iter().copied());
        if abi >= 4 {
            log::info!("the agents may connect to TCP ports {:?} only, and bind none", sandbox.connect_ports);
        }
        sandbox
    }

    /// `ports` without the forbidden ones (logged: a setting asked for them).
    fn allowed(&self, ports: impl Iterator<Item = u16>) -> BTreeSet<u16> {
        ports
            .filter(|p| {
                let refused = self.forbidden_ports.contains(p);
                if refused {
                    log::warn!(
                        "sandbox: TCP port {p} is the service's or the database's: the agents may not connect to it"
                    );
                }
                !refused
            })
            .collect()
    }

    pub fn connect_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.connect_ports.iter().copied()
    }

    /// The ruleset of one session's CLI. `read_exec` adds directories to read from (the CLI's
    /// install, MCP servers); `read_write` are the user's directory and the session's temp dir;
    /// `mcp_servers` are the session's own servers, whose URL ports are granted.
    pub fn ruleset<'a>(
        &self,
        read_exec: &[PathBuf],
        read_write: &[PathBuf],
        mcp_servers: impl Iterator<Item = &'a serde_json::Value>,
    ) -> Result<Confinement, String> {
        let existing = |paths: Vec<PathBuf>| -> Vec<PathBuf> { paths.into_iter().filter(|p| p.exists()).collect() };
        let extra_read = read_exec.iter().flat_map(|p| readable_beneath(p, &self.hidden, &list_dir));
        let read = existing(self.read.iter().cloned().chain(extra_read).collect());
        let write = existing(SYSTEM_WRITE.iter().map(PathBuf::from).chain(read_write.iter().cloned()).collect());
        let mut ports = self.connect_ports.clone();
        ports.extend(self.allowed(mcp_ports(mcp_servers).into_iter()));
        let build = || -> Result<RulesetCreated, RulesetError> {
            Ruleset::default()
                .handle_access(AccessFs::from_all(ABI_HANDLED))?
                .handle_access(AccessNet::from_all(ABI_HANDLED))?
                .scope(Scope::from_all(ABI_HANDLED))?
                .create()?
                .add_rules(path_beneath_rules(&read, AccessFs::from_read(ABI_HANDLED)))?
                .add_rules(path_beneath_rules(&write, AccessFs::from_all(ABI_HANDLED)))?
                .add_rules(ports.iter().map(|p| Ok::<_, RulesetError>(NetPort::new(*p, AccessNet::ConnectTcp))))
        };
        let ruleset = build().map_err(|e| format!("cannot build the Landlock ruleset: {e}"))?;
        let ruleset: Option<std::os::fd::OwnedFd> = ruleset.into();
        let ruleset = ruleset.ok_or("this kernel has no Landlock")?;
        // What the ruleset handles on this kernel: a right it does not handle would be refused.
        let proc_read = (AccessFs::from_read(ABI_HANDLED) & AccessFs::from_read(ABI::from(self.abi as i32))).bits();
        Ok(Confinement { ruleset, proc_read, syscalls: self.syscalls })
    }
}

/// The service's own files (settings, data, users' root, temp root, database) and
/// `sandbox.hidden_paths`, absolute and with links resolved where they exist.
fn hidden_paths(settings: &Settings) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = settings.sandbox.hidden_paths.iter().map(PathBuf::from).collect();
    paths.extend(settings.file.iter().cloned());
    paths.push(settings.data.dir.clone());
    paths.push(settings.user.base_dir.clone());
    paths.push(std::env::temp_dir().join(crate::cli::TEMP_ROOT));
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut db = settings.session.sqlite_path.clone().into_os_string();
        db.push(suffix);
        paths.push(PathBuf::from(db));
    }
    let mut budget = PRIVATE_SEARCH_LIMIT;
    for root in SEARCHED_FOR_PRIVATE {
        private_entries(Path::new(root), &mut paths, &mut budget);
    }
    if budget == 0 {
        log::warn!(
            "sandbox: stopped looking for private files in {SEARCHED_FOR_PRIVATE:?} after {PRIVATE_SEARCH_LIMIT} entries"
        );
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let mut out: Vec<PathBuf> = paths
        .into_iter()
        .map(|p| cwd.join(p))
        .flat_map(|p| {
            // Both the path as named and where its links lead are hidden.
            let real = std::fs::canonicalize(&p).ok();
            std::iter::once(lexically_normal(&p)).chain(real)
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Adds to `out` what beneath `dir` others may not read: files without `o+r`, directories
/// without `o+x` (not entered further). Links are not followed (where they lead is judged
/// there). Looks at `budget` entries at most.
fn private_entries(dir: &Path, out: &mut Vec<PathBuf>, budget: &mut usize) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if *budget == 0 {
            return;
        }
        *budget -= 1;
        let Ok(meta) = entry.metadata() else { continue };
        let mode = meta.permissions().mode();
        if meta.is_dir() {
            if mode & 0o001 == 0 {
                out.push(entry.path());
            } else {
                private_entries(&entry.path(), out, budget);
            }
        } else if meta.is_file() && mode & 0o004 == 0 {
            out.push(entry.path());
        }
    }
}

/// `a/./b/../c` → `a/c`, without touching the filesystem.
fn lexically_normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn list_dir(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries.flatten().map(|e| e.path()).collect(),
        Err(_) => Vec::new(),
    }
}

/// The paths to grant so that everything beneath `root` is readable except the `hidden` ones:
/// `root` itself when nothing hidden lies beneath it, else its entries one by one (recursing
/// into the ones that contain a hidden path). An entry whose links lead into a hidden path is
/// left out.
fn readable_beneath(root: &Path, hidden: &[PathBuf], list: &dyn Fn(&Path) -> Vec<PathBuf>) -> Vec<PathBuf> {
    let real = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let is_hidden = |p: &Path| hidden.iter().any(|h| p.starts_with(h));
    if is_hidden(root) || is_hidden(&real) {
        return Vec::new();
    }
    let contains_hidden = hidden.iter().any(|h| h.starts_with(root) || h.starts_with(&real));
    if !contains_hidden {
        return vec![root.to_path_buf()];
    }
    list(root).iter().flat_map(|child| readable_beneath(child, hidden, list)).collect()
}

fn port_of_url(url: &str) -> Option<u16> {
    url::Url::parse(url).ok()?.port_or_known_default()
}

/// The port of `ANTHROPIC_BASE_URL` (from `cli.env`, else the service's environment).
fn anthropic_port(settings: &Settings) -> Option<u16> {
    let url = settings.cli.env.get("ANTHROPIC_BASE_URL").cloned().or_else(|| std::env::var("ANTHROPIC_BASE_URL").ok());
    url.as_deref().and_then(port_of_url)
}

/// The ports of HTTP/SSE MCP servers (`{"url": …}`).
fn mcp_ports<'a>(servers: impl Iterator<Item = &'a serde_json::Value>) -> Vec<u16> {
    servers.filter_map(|s| s.get("url").and_then(serde_json::Value::as_str)).filter_map(port_of_url).collect()
}

/// The directories holding a program (its own and its parent, for package layouts like npm's).
pub fn program_dirs(program: &Path) -> Vec<PathBuf> {
    let real = std::fs::canonicalize(program).unwrap_or_else(|_| program.to_path_buf());
    let dir = real.parent().map(Path::to_path_buf);
    let parent = dir.as_deref().and_then(Path::parent).map(Path::to_path_buf);
    dir.into_iter().chain(parent).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_paths_are_cut_out_and_their_siblings_granted_one_by_one() {
        let tree = |dir: &Path| -> Vec<PathBuf> {
            match dir.to_str().unwrap() {
                "/etc" => vec!["/etc/hostname".into(), "/etc/claude-agent-http".into(), "/etc/ssl".into()],
                "/etc/ssl" => vec!["/etc/ssl/certs".into(), "/etc/ssl/private".into()],
                _ => vec![],
            }
        };
        let hidden = vec![PathBuf::from("/etc/claude-agent-http"), PathBuf::from("/etc/ssl/private")];
        let granted = readable_beneath(Path::new("/etc"), &hidden, &tree);
        assert_eq!(granted, vec![PathBuf::from("/etc/hostname"), PathBuf::from("/etc/ssl/certs")]);
        // A tree with nothing hidden beneath it is granted whole; a hidden one not at all.
        assert_eq!(readable_beneath(Path::new("/usr"), &hidden, &tree), vec![PathBuf::from("/usr")]);
        assert!(readable_beneath(Path::new("/etc/claude-agent-http"), &hidden, &tree).is_empty());
    }

    #[test]
    fn files_and_directories_others_may_not_read_are_found() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let mode = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        let at = |name: &str| root.path().join(name);
        std::fs::create_dir_all(at("open/deep")).unwrap();
        std::fs::create_dir_all(at("closed/inner")).unwrap();
        std::fs::write(at("public.conf"), "").unwrap();
        std::fs::write(at("open/deep/secret.key"), "").unwrap();
        mode(&at("open/deep/secret.key"), 0o640);
        std::fs::write(at("closed/inner/x"), "").unwrap();
        mode(&at("closed"), 0o750);
        std::os::unix::fs::symlink("/etc/shadow", at("link")).unwrap();
        let mut found = Vec::new();
        let mut budget = 100;
        private_entries(root.path(), &mut found, &mut budget);
        found.sort();
        assert_eq!(found, vec![at("closed"), at("open/deep/secret.key")]);
        let mut none = Vec::new();
        private_entries(root.path(), &mut none, &mut 0);
        assert!(none.is_empty(), "no budget, no search");
    }

    #[test]
    fn url_ports() {
        assert_eq!(port_of_url("http://127.0.0.1:4567"), Some(4567));
        assert_eq!(port_of_url("https://api.anthropic.com/v1"), Some(443));
        assert_eq!(port_of_url("http://user:pw@[::1]:8080/x"), Some(8080));
        assert_eq!(port_of_url("http://[::1]/x"), Some(80));
        assert_eq!(port_of_url("not a url"), None);
    }

    #[test]
    fn the_service_and_database_ports_are_never_granted() {
        let mut settings = Settings::default();
        settings.sandbox.allowed_tcp_ports = vec![443, 8000, 5432, 9999];
        settings.session.database_url = Some("postgres://u@db:5432/x".into());
        settings.session.storage = crate::settings::StorageKind::Postgresql;
        let sandbox = Sandbox::new(7, &settings, 8000);
        assert_eq!(sandbox.connect_ports().collect::<Vec<_>>(), vec![443, 9999]);
        let own = serde_json::json!({"url": "http://127.0.0.1:5432/mcp"});
        assert!(sandbox.allowed(mcp_ports([&own].into_iter()).into_iter()).is_empty());
    }

    #[test]
    fn older_kernels_say_what_they_cannot_confine() {
        assert!(unconfined_on(9, false).is_empty());
        assert_eq!(unconfined_on(7, false).len(), 1);
        assert!(unconfined_on(7, true).is_empty(), "the seccomp filter refuses unix sockets");
        assert!(unconfined_on(3, false).iter().any(|g| g.contains("network")));
        assert!(unconfined_on(5, true).iter().all(|g| !g.contains("unix sockets")));
        assert_eq!(unconfined_on(5, false).iter().filter(|g| g.contains("unix sockets")).count(), 2);
    }
}
