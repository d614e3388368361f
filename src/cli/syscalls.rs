//! The seccomp filter of a confined CLI: what Landlock cannot refuse on every kernel.
//!
//! - `socket(AF_UNIX, …)`: before Landlock ABI 9 an agent may `connect` to any pathname unix
//!   socket it can name, a local PostgreSQL's (`/run/postgresql/.s.PGSQL.5432`, trust or peer
//!   auth as root), MariaDB's or Docker's, and before ABI 6 to any abstract one. Refused with
//!   `EACCES`. `socketpair` stays: libuv (the CLI's Node) joins a child's stdio with it, and a
//!   pair cannot reach anything else.
//! - `io_uring_setup`: io_uring requests (`IORING_OP_SOCKET`) never pass through seccomp.
//!   Refused with `EACCES`; libuv falls back to its thread pool.
//!
//! Compiled with seccompiler (rust-vmm's BPF compiler) once, before any fork; installed
//! between fork and exec with its `apply_filter` (`prctl` + `seccomp(2)`, no allocation).
//! A syscall from another architecture (an i386 binary's `int 0x80`) kills the process.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
};

/// The compiled filter, or why this build cannot have one (an architecture seccompiler does
/// not know: then only Landlock applies, and the start-up log says so).
pub fn filter() -> Result<&'static BpfProgram, String> {
    static FILTER: std::sync::OnceLock<Result<BpfProgram, String>> = std::sync::OnceLock::new();
    FILTER.get_or_init(compile).as_ref().map_err(Clone::clone)
}

fn compile() -> Result<BpfProgram, String> {
    let errno_action: u32 = libc::SECCOMP_RET_ERRNO;
    // SAFETY: SECCOMP_GET_ACTION_AVAIL only reads the u32 it is given (Linux 4.14).
    let available =
        unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_GET_ACTION_AVAIL, 0, &errno_action as *const u32) };
    if available != 0 {
        return Err(format!("this kernel has no seccomp filters ({})", std::io::Error::last_os_error()));
    }
    let failed = |e: seccompiler::BackendError| format!("cannot compile the seccomp filter: {e}");
    let arch =
        std::env::consts::ARCH.try_into().map_err(|e| format!("no seccomp filter on this architecture: {e:?}"))?;
    let unix_domain =
        SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, libc::AF_UNIX as u64).map_err(failed)?;
    let unix_rule = SeccompRule::new(vec![unix_domain]).map_err(failed)?;
    let mut rules = vec![(libc::SYS_socket, vec![unix_rule.clone()]), (libc::SYS_io_uring_setup, vec![])];
    // The x32 ABI shares x86_64's audit arch with its own numbers (other arches are killed by
    // the filter's arch check).
    if cfg!(target_arch = "x86_64") {
        const X32: i64 = 0x4000_0000;
        rules.push((X32 | libc::SYS_socket, vec![unix_rule]));
        rules.push((X32 | libc::SYS_io_uring_setup, vec![]));
    }
    let filter = SeccompFilter::new(
        rules.into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        arch,
    )
    .map_err(failed)?;
    filter.try_into().map_err(failed)
}

/// Installs `program` on the calling thread (the child, between fork and exec). Errors are
/// raw OS errors: nothing may allocate after a fork in a threaded process.
///
/// Async-signal-safe: seccompiler's `apply_filter` is `prctl` + `seccomp`, and its errors
/// carry the OS error without allocating.
pub fn install(program: &[seccompiler::sock_filter]) -> std::io::Result<()> {
    seccompiler::apply_filter(program).map_err(|e| match e {
        seccompiler::Error::Prctl(e) | seccompiler::Error::Seccomp(e) => e,
        _ => std::io::Error::from_raw_os_error(libc::EINVAL),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_compiles_on_this_architecture() {
        let program = filter().expect("x86_64 and aarch64 have a filter");
        assert!(!program.is_empty());
    }
}
