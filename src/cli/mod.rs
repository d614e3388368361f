//! The Claude Code CLI as a child process: its protocol, command line and process handling.

pub mod command;
pub mod launch;
pub mod orphans;
pub mod process;
pub mod protocol;
pub mod sandbox;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Under the system temp dir: one private (0700) temp dir per session.
pub const TEMP_ROOT: &str = "claude-agent-http";

/// The private temp dir of one session (the CLI's `TMPDIR`, its secret files).
pub fn session_temp_dir(session_id: &str) -> PathBuf {
    std::env::temp_dir().join(TEMP_ROOT).join(session_id)
}

/// Resolves `cli.path`: a path (absolute or relative, containing `/`) is taken as it is, a
/// bare name is looked up on `PATH`. `None` if no executable file is there.
pub fn locate(configured: &str) -> Option<PathBuf> {
    if configured.contains('/') {
        let path = PathBuf::from(configured);
        return is_executable(&path).then(|| std::fs::canonicalize(&path).unwrap_or(path));
    }
    let search = std::env::var_os("PATH")?;
    std::env::split_paths(&search).map(|dir| dir.join(configured)).find(|candidate| is_executable(candidate))
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
}
