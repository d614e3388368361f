//! One CLI child process: spawned in its own process group (with `PR_SET_PDEATHSIG`), stdin fed
//! by one writer task, stdout framed on bytes with a line cap, stderr always drained into the
//! log with its tail kept, and a supervisor task that owns the child until it is reaped.
//!
//! Between fork and exec the child is stripped of what it could use against the service or
//! other sessions, also when the service runs as root: it enters the directory handle the
//! service verified (not a path an agent could swap), gets a private `/proc` that shows only
//! the processes it may ptrace (`hidepid=2`: neither the service nor other sessions), its
//! Landlock ruleset, `no_new_privs`, and no capabilities at all (bounding, ambient,
//! inheritable, permitted and effective sets emptied, so exec as uid 0 regains none).

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::Stream;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::sync::{mpsc, oneshot};

use super::protocol::{CliMessage, parse_line};

/// The longest stdout line accepted (tool results with images can be megabytes).
pub const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;
const STDERR_TAIL_BYTES: usize = 2048;
/// The longest stderr line kept (for the log and the tail); the rest of the line is dropped.
const STDERR_LINE_BYTES: usize = 4096;
const READ_BUFFER_BYTES: usize = 8 * 1024;
/// Open files per CLI process (soft limit; never above the service's own hard limit).
const MAX_OPEN_FILES: libc::rlim_t = 8192;
const LINE_KEEP_BYTES: usize = 64 * 1024;
/// Lines longer than this are parsed on the blocking pool: tens of MiB of JSON take the
/// session thread for tens of ms, stalling every other session on it.
const PARSE_OFF_THREAD_BYTES: usize = 256 * 1024;

/// What a command line needs to start.
pub struct LaunchSpec<'a> {
    pub program: &'a Path,
    pub args: &'a [String],
    pub env: &'a [(String, String)],
    pub cwd: &'a Path,
    /// The working directory as a handle the service opened and checked; entered with
    /// `fchdir`, so a directory swapped for a link after the check is never entered.
    pub cwd_handle: Option<&'a OwnedFd>,
}

/// What the child may shed, read once from the service's own credentials.
struct Shedding {
    /// Capabilities in the bounding set, dropped one by one (needs `CAP_SETPCAP`).
    bounding: Vec<caps::Capability>,
    /// The service may mount (`CAP_SYS_ADMIN`): the child gets its own `/proc` instance.
    private_proc: bool,
}

fn shedding() -> &'static Shedding {
    static SHEDDING: std::sync::OnceLock<Shedding> = std::sync::OnceLock::new();
    SHEDDING.get_or_init(|| {
        use caps::{CapSet, Capability};
        let effective = caps::read(None, CapSet::Effective).unwrap_or_default();
        let bounding = if effective.contains(&Capability::CAP_SETPCAP) {
            caps::read(None, CapSet::Bounding).unwrap_or_default().into_iter().collect()
        } else {
            Vec::new()
        };
        Shedding { bounding, private_proc: effective.contains(&Capability::CAP_SYS_ADMIN) }
    })
}

/// True when the children get a private `/proc` (the service may mount), for the start-up log.
pub fn private_proc() -> bool {
    shedding().private_proc
}

/// In the child between fork and exec: its own mount namespace with a new `/proc` instance
/// that hides every process it may not ptrace, and an empty `/dev/shm` of its own. Best
/// effort: without it the inherited `/proc` stays, where the service is still unreadable
/// (non-dumpable) but listed, and `/dev/shm` is the host's.
///
/// SAFETY (caller): only async-signal-safe syscalls on static strings.
unsafe fn mount_private_proc() {
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return;
        }
        // Private first, or the new mount would propagate back to the host's /proc.
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return;
        }
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        // Its own /dev/shm: the host's is shared with every session and the host's processes.
        libc::mount(
            c"tmpfs".as_ptr(),
            c"/dev/shm".as_ptr(),
            c"tmpfs".as_ptr(),
            flags,
            c"mode=1777,size=512m".as_ptr().cast(),
        );
        // `ptraceable` (Linux 5.8) has no group exemption; `hidepid=2` exempts its `gid`, which
        // defaults to 0: root's group would see everything.
        if libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            flags,
            c"hidepid=ptraceable".as_ptr().cast(),
        ) != 0
        {
            libc::mount(
                c"proc".as_ptr(),
                c"/proc".as_ptr(),
                c"proc".as_ptr(),
                flags,
                c"hidepid=2,gid=65534".as_ptr().cast(),
            );
        }
    }
}

/// `struct __user_cap_header_struct` and `__user_cap_data_struct` (capability.h).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAPS_VERSION_3: u32 = 0x2008_0522;

/// In the child between fork and exec: `no_new_privs` and every capability set emptied.
/// Raw syscalls, errors as raw OS errors: the caps crate builds a `String` on failure, and
/// nothing may allocate after a fork in a threaded process.
///
/// SAFETY (caller): async-signal-safe syscalls only.
unsafe fn shed_privileges(bounding: &[libc::c_ulong]) -> std::io::Result<()> {
    let denied = || std::io::Error::from_raw_os_error(libc::EPERM);
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(denied());
        }
        for cap in bounding {
            if libc::prctl(libc::PR_CAPBSET_DROP, *cap, 0, 0, 0) != 0 {
                return Err(denied());
            }
        }
        let ambient = libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong;
        if libc::prctl(libc::PR_CAP_AMBIENT, ambient, 0, 0, 0) != 0 {
            return Err(denied());
        }
        // Inheritable, permitted and effective emptied at once (lowering is always allowed).
        let header = CapHeader { version: CAPS_VERSION_3, pid: 0 };
        let none = [CapData { effective: 0, permitted: 0, inheritable: 0 }; 2];
        if libc::syscall(libc::SYS_capset, &header as *const CapHeader, none.as_ptr()) != 0 {
            return Err(denied());
        }
    }
    Ok(())
}

/// A Landlock ruleset applied to the child between fork and exec.
pub struct Confinement {
    /// The ruleset, built (with the landlock crate) before the fork.
    pub ruleset: OwnedFd,
    /// Read rights on the child's own `/proc` instance, a mount that only exists after the
    /// fork, so its rule is added in the child.
    pub proc_read: u64,
    /// The seccomp filter ([`super::syscalls`]), installed after the ruleset.
    pub syscalls: Option<&'static [seccompiler::sock_filter]>,
}

/// `struct landlock_path_beneath_attr` (packed in the kernel's UAPI).
#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

impl Confinement {
    /// In the child between fork and exec: the rule for whatever `/proc` is now, then
    /// `no_new_privs`, the ruleset and the seccomp filter. Raw syscalls: the landlock crate's
    /// calls may allocate.
    ///
    /// SAFETY (caller): async-signal-safe syscalls only.
    unsafe fn apply(&self) -> std::io::Result<()> {
        let last = std::io::Error::last_os_error;
        unsafe {
            let proc = libc::open(c"/proc".as_ptr(), libc::O_PATH | libc::O_CLOEXEC | libc::O_DIRECTORY);
            if proc >= 0 {
                let attr = PathBeneathAttr { allowed_access: self.proc_read, parent_fd: proc };
                let added = libc::syscall(
                    libc::SYS_landlock_add_rule,
                    self.ruleset.as_raw_fd(),
                    1, // LANDLOCK_RULE_PATH_BENEATH
                    &attr as *const PathBeneathAttr,
                    0,
                );
                libc::close(proc);
                if added != 0 {
                    return Err(last());
                }
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(last());
            }
            if libc::syscall(libc::SYS_landlock_restrict_self, self.ruleset.as_raw_fd(), 0) != 0 {
                return Err(last());
            }
            if let Some(program) = self.syscalls {
                super::syscalls::install(program)?;
            }
        }
        Ok(())
    }
}

/// The last bytes the CLI wrote to stderr, for error messages.
#[derive(Debug, Default)]
pub struct StderrTail(VecDeque<u8>);

impl StderrTail {
    fn push_line(&mut self, line: &str) {
        self.0.extend(line.as_bytes());
        self.0.push_back(b'\n');
        let excess = self.0.len().saturating_sub(STDERR_TAIL_BYTES);
        self.0.drain(..excess);
    }

    pub fn text(&self) -> String {
        let bytes: Vec<u8> = self.0.iter().copied().collect();
        String::from_utf8_lossy(&bytes).trim().to_string()
    }
}

/// How a child ended.
#[derive(Debug, Clone)]
pub struct ExitInfo {
    pub status: Option<ExitStatus>,
}

impl ExitInfo {
    pub fn describe(&self) -> String {
        match self.status {
            Some(s) => match (s.code(), s.signal()) {
                (Some(code), _) => format!("exited with code {code}"),
                (None, Some(sig)) => format!("was killed by signal {sig}"),
                _ => "exited".into(),
            },
            None => "could not be waited for".into(),
        }
    }
}

/// A running child, seen from its owner (the session actor).
pub struct CliProcess {
    pub pid: u32,
    /// Lines for stdin. Dropping the sender closes stdin (the CLI's "no more input").
    pub stdin: mpsc::UnboundedSender<Vec<u8>>,
    pub stderr_tail: Arc<Mutex<StderrTail>>,
    /// Sending (or dropping) starts the stop ladder: wait `grace` for the exit that closing
    /// stdin asks for, SIGTERM the group, wait `grace`, SIGKILL the group.
    pub stop: Option<oneshot::Sender<Duration>>,
    /// Resolves once the child is reaped and its process group is gone.
    pub exited: Option<oneshot::Receiver<ExitInfo>>,
    pub stdout: Option<ChildStdout>,
}

/// Starts the CLI. Must be called on a thread that lives as long as the service (the
/// parent-death signal follows the thread that forks): the launcher thread of
/// [`super::launch`]. Its pipes and tasks go to the tokio runtime entered on that thread.
pub fn spawn(
    spec: &LaunchSpec<'_>,
    session_label: &str,
    confinement: Option<Confinement>,
) -> std::io::Result<CliProcess> {
    let mut cmd = Command::new(spec.program);
    cmd.args(spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let cwd_fd = spec.cwd_handle.map(|fd| fd.as_raw_fd());
    if cwd_fd.is_none() {
        cmd.current_dir(spec.cwd);
    }
    let shedding = shedding();
    let bounding: Vec<libc::c_ulong> = shedding.bounding.iter().map(|c| libc::c_ulong::from(c.index())).collect();
    let private_proc = shedding.private_proc;
    // SAFETY: only syscalls between fork and exec (prctl, close_range, setrlimit, fchdir,
    // unshare, mount, capset, Landlock's, seccomp) on data prepared before the fork; errors are
    // raw OS errors.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Every descriptor past stdio closes at exec, also one the service inherited
            // without close-on-exec from whoever started it (best effort: Linux 5.11).
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
            // No core dumps (they would hold conversation and keys), and a bounded fd table.
            let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            let mut files = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut files) == 0 {
                files.rlim_cur = files.rlim_max.min(MAX_OPEN_FILES);
                libc::setrlimit(libc::RLIMIT_NOFILE, &files);
            }
            if let Some(fd) = cwd_fd
                && libc::fchdir(fd) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // Mounting needs the capabilities shed below, and is refused under Landlock.
            if private_proc {
                mount_private_proc();
            }
            if let Some(confinement) = &confinement {
                confinement.apply()?;
            }
            shed_privileges(&bounding)
        });
    }
    let mut child = cmd.spawn()?;
    let pid = child.id().unwrap_or(0);
    let stdin = child.stdin.take().ok_or_else(|| std::io::Error::other("no stdin pipe"))?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take().ok_or_else(|| std::io::Error::other("no stderr pipe"))?;
    let stderr_tail = Arc::new(Mutex::new(StderrTail::default()));

    let (stdin_tx, stdin_rx) = mpsc::unbounded_channel();
    tokio::spawn(write_stdin(stdin, stdin_rx));
    tokio::spawn(drain_stderr(stderr, stderr_tail.clone(), session_label.to_string()));
    let (stop_tx, stop_rx) = oneshot::channel();
    let (exit_tx, exit_rx) = oneshot::channel();
    let escapees = spec.env.iter().find(|(k, _)| k == "TMPDIR").map(|(_, dir)| Escapees {
        tmp_dir: dir.into(),
        since_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
    });
    tokio::spawn(supervise(child, pid as i32, escapees, stop_rx, exit_tx));
    Ok(CliProcess { pid, stdin: stdin_tx, stderr_tail, stop: Some(stop_tx), exited: Some(exit_rx), stdout })
}

/// The single writer: lines in order; the channel closing closes stdin.
async fn write_stdin(mut stdin: ChildStdin, mut lines: mpsc::UnboundedReceiver<Vec<u8>>) {
    while let Some(line) = lines.recv().await {
        // A write error means the child is gone; the supervisor reports the exit.
        if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
            break;
        }
    }
}

/// stderr is always read (an undrained pipe blocks the CLI at ~64 KiB), as bytes: a non-UTF-8
/// byte or an endless line must not stop the drain (`lines()` would end at the first, and
/// grow without bound on the second). Lines are cut at [`STDERR_LINE_BYTES`]; the rest of a
/// long line is read and dropped.
async fn drain_stderr(stderr: ChildStderr, tail: Arc<Mutex<StderrTail>>, label: String) {
    let mut reader = BufReader::with_capacity(1024, stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match read_stderr_line(&mut reader, &mut line, STDERR_LINE_BYTES).await {
            Ok(true) => {}
            Ok(false) | Err(_) => break,
        }
        let text = String::from_utf8_lossy(&line);
        log::debug!(target: "cli", "{label} stderr: {text}");
        if let Ok(mut t) = tail.lock() {
            t.push_line(&text);
        }
    }
}

/// One stderr line into `line`, keeping at most `cap` bytes of it; false at EOF.
async fn read_stderr_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    cap: usize,
) -> std::io::Result<bool> {
    let mut read_any = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(read_any);
        }
        read_any = true;
        let (chunk, used, ended) = match available.iter().position(|&b| b == b'\n') {
            Some(pos) => (&available[..pos], pos + 1, true),
            None => (available, available.len(), false),
        };
        let room = cap.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        reader.consume(used);
        if ended {
            return Ok(true);
        }
    }
}

fn signal_group(pgid: i32, signal: i32) {
    if pgid > 0 {
        // SAFETY: plain syscall; ESRCH (group already gone) is fine.
        unsafe {
            libc::kill(-pgid, signal);
        }
    }
}

fn group_exists(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    pgid > 0 && unsafe { libc::kill(-pgid, 0) } == 0
}

/// What a CLI started outside its process group is found by: its session's `TMPDIR`.
struct Escapees {
    tmp_dir: std::path::PathBuf,
    since_ms: i64,
}

/// Owns the child until it is reaped; afterwards kills whatever is left in its process group
/// (tools, shells, MCP servers the CLI started) and what left the group.
async fn supervise(
    mut child: Child,
    pgid: i32,
    escapees: Option<Escapees>,
    stop: oneshot::Receiver<Duration>,
    exited: oneshot::Sender<ExitInfo>,
) {
    let status = tokio::select! {
        status = child.wait() => status.ok(),
        grace = stop => {
            let grace = grace.unwrap_or(Duration::from_secs(5));
            match tokio::time::timeout(grace, child.wait()).await {
                Ok(status) => status.ok(),
                Err(_) => {
                    signal_group(pgid, libc::SIGTERM);
                    match tokio::time::timeout(grace, child.wait()).await {
                        Ok(status) => status.ok(),
                        Err(_) => {
                            signal_group(pgid, libc::SIGKILL);
                            child.wait().await.ok()
                        }
                    }
                }
            }
        }
    };
    signal_group(pgid, libc::SIGKILL);
    if let Some(e) = escapees {
        // A /proc scan: off the actor's thread.
        let _ = tokio::task::spawn_blocking(move || super::orphans::kill_escapees(&e.tmp_dir, e.since_ms)).await;
    }
    // SIGKILL is delivered asynchronously: "exited" means the whole group is gone, so wait
    // (briefly, bounded) until no member is left for init to reap.
    for _ in 0..100 {
        if !group_exists(pgid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = exited.send(ExitInfo { status });
}

/// What the stdout reader yields.
#[derive(Debug)]
pub enum StdoutItem {
    Message(CliMessage),
    /// A `{` line that did not parse: logged and skipped.
    Malformed(String),
    /// A line over [`MAX_LINE_BYTES`]: the stream cannot resync, the session fails.
    TooLong,
}

/// stdout as a stream of parsed lines, framed on `\n` in a byte buffer (never on chunk
/// boundaries), with the cap checked while the line is still partial.
pub fn stdout_messages(stdout: ChildStdout, max_line: usize) -> impl Stream<Item = StdoutItem> {
    // Small buffers: an idle session should cost little; long lines are assembled in `line`.
    let state = (BufReader::with_capacity(READ_BUFFER_BYTES, stdout), Vec::new(), false);
    futures_util::stream::unfold(state, move |(mut reader, mut line, done)| async move {
        if done {
            return None;
        }
        loop {
            line.clear();
            // Do not keep a megabyte buffer for the rest of the session after one huge line.
            if line.capacity() > LINE_KEEP_BYTES {
                line.shrink_to(LINE_KEEP_BYTES);
            }
            match read_capped_line(&mut reader, &mut line, max_line).await {
                Ok(LineRead::Eof) => return None,
                Ok(LineRead::TooLong) => return Some((StdoutItem::TooLong, (reader, line, true))),
                Ok(LineRead::Line) => match parse(&mut line).await {
                    Ok(Some(message)) => return Some((StdoutItem::Message(message), (reader, line, false))),
                    Ok(None) => {
                        if !line.trim_ascii().is_empty() {
                            log::debug!(target: "cli", "non-JSON stdout line skipped: {}", excerpt(&line));
                        }
                    }
                    Err(e) => {
                        let text = format!("{e}: {}", excerpt(&line));
                        return Some((StdoutItem::Malformed(text), (reader, line, false)));
                    }
                },
                Err(_) => return None,
            }
        }
    })
}

/// `parse_line`, on the blocking pool for a long line (the buffer goes there and back).
async fn parse(line: &mut Vec<u8>) -> Result<Option<CliMessage>, serde_json::Error> {
    if line.len() < PARSE_OFF_THREAD_BYTES {
        return parse_line(line);
    }
    let taken = std::mem::take(line);
    match tokio::task::spawn_blocking(move || (parse_line(&taken), taken)).await {
        Ok((parsed, taken)) => {
            *line = taken;
            parsed
        }
        // Cancelled (the runtime is shutting down) or panicked: the line counts as malformed.
        Err(e) => Err(serde_json::Error::io(std::io::Error::other(e.to_string()))),
    }
}

enum LineRead {
    Line,
    Eof,
    TooLong,
}

async fn read_capped_line(
    reader: &mut BufReader<ChildStdout>,
    line: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<LineRead> {
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            // EOF: a complete last line without its newline still counts.
            return Ok(if line.is_empty() { LineRead::Eof } else { LineRead::Line });
        }
        if let Some(pos) = available.iter().position(|&b| b == b'\n') {
            if line.len() + pos > max {
                return Ok(LineRead::TooLong);
            }
            line.extend_from_slice(&available[..pos]);
            reader.consume(pos + 1);
            return Ok(LineRead::Line);
        }
        let n = available.len();
        if line.len() + n > max {
            return Ok(LineRead::TooLong);
        }
        line.extend_from_slice(available);
        reader.consume(n);
    }
}

fn excerpt(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(&line[..line.len().min(200)]);
    text.into_owned()
}

/// Runs `program --version` with a timeout; for `/health`.
pub async fn version(program: &Path) -> Option<String> {
    let mut child = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let mut out = String::new();
    let mut stdout = child.stdout.take()?;
    let read = async {
        stdout.read_to_string(&mut out).await.ok()?;
        child.wait().await.ok()
    };
    let status = tokio::time::timeout(Duration::from_secs(10), read).await.ok()??;
    if !status.success() {
        return None;
    }
    out.lines().next().map(|l| l.trim().to_string()).filter(|l| !l.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The child runs in the directory handle it was given, whatever the path now names.
    #[actix_web::test]
    async fn the_child_enters_the_checked_handle_not_the_path() {
        let root = tempfile::tempdir().unwrap();
        let (checked, swapped) = (root.path().join("checked"), root.path().join("elsewhere"));
        std::fs::create_dir(&checked).unwrap();
        std::fs::create_dir(&swapped).unwrap();
        let handle = OwnedFd::from(std::fs::File::open(&checked).unwrap());
        let args = vec!["-P".to_string()];
        let spec = LaunchSpec {
            program: Path::new("/bin/pwd"),
            args: &args,
            env: &[],
            cwd: &swapped,
            cwd_handle: Some(&handle),
        };
        let mut child = spawn(&spec, "test", None).unwrap();
        let mut out = String::new();
        child.stdout.take().unwrap().read_to_string(&mut out).await.unwrap();
        assert_eq!(out.trim(), std::fs::canonicalize(&checked).unwrap().to_str().unwrap());
    }

    /// Bytes that are not UTF-8 and a line over the cap neither stop the reader nor grow it.
    #[actix_web::test]
    async fn stderr_lines_are_read_as_bytes_and_capped() {
        let mut input: &[u8] = b"bad \xff\xfe\nxxxxxxxxxx\nlast";
        let mut line = Vec::new();
        let mut lines = Vec::new();
        while read_stderr_line(&mut input, &mut line, 8).await.unwrap() {
            lines.push(String::from_utf8_lossy(&line).into_owned());
            line.clear();
        }
        assert_eq!(lines, ["bad \u{fffd}\u{fffd}", "xxxxxxxx", "last"]);
    }

    #[test]
    fn stderr_tail_keeps_the_end() {
        let mut tail = StderrTail::default();
        for i in 0..1000 {
            tail.push_line(&format!("line {i}"));
        }
        let text = tail.text();
        assert!(text.ends_with("line 999"));
        assert!(text.len() <= STDERR_TAIL_BYTES);
    }
}
