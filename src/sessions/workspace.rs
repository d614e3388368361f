//! Users' directories and session working directories.
//!
//! Every path the service touches for a user is resolved beneath an open handle of that
//! user's directory (`cap-std`: `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` on Linux),
//! never by canonicalising and then using a path: the user's agent changes the tree while the
//! service works in it, so any check made on a path name before using it is a race.
//! The users' root itself is the operator's and is trusted; a user's directory is opened
//! beneath it without following a link at its last component.

use std::io;
use std::path::{Component, Path, PathBuf};

use cap_fs_ext::DirExt;
use cap_std::ambient_authority;
use cap_std::fs::Dir;

use crate::domain::ids;
use crate::error::ApiError;

const MAX_SUBDIR_BYTES: usize = 1024;
const MAX_COMPONENT_BYTES: usize = 255;

/// `user_id`: 1–64 characters of `[A-Za-z0-9_-]`.
pub fn validate_user_id(user_id: &str) -> Result<(), ApiError> {
    if ids::is_valid_user_id(user_id) { Ok(()) } else { Err(ApiError::validation("user_id", ids::USER_ID_RULE)) }
}

/// Normalises a requested `subdir` to plain relative components (`a/./b/` → `a/b`), refusing
/// absolute paths, `..`, NUL and control characters.
pub fn normalize_subdir(subdir: &str) -> Result<String, ApiError> {
    if subdir.chars().any(char::is_control) {
        return Err(ApiError::InvalidPath("subdir contains NUL or control characters".into()));
    }
    normalize_relative(subdir, "subdir")
}

/// Normalises a path of the files API like [`normalize_subdir`], but lets control characters
/// through (they are legal in names an agent makes, and the resolution is confined anyway);
/// NUL is refused.
pub fn normalize_file_path(path: &str) -> Result<String, ApiError> {
    if path.contains('\0') {
        return Err(ApiError::InvalidPath("path contains NUL".into()));
    }
    normalize_relative(path, "path")
}

fn normalize_relative(path: &str, what: &str) -> Result<String, ApiError> {
    if path.len() > MAX_SUBDIR_BYTES {
        return Err(ApiError::InvalidPath(format!("{what} is longer than {MAX_SUBDIR_BYTES} bytes")));
    }
    let mut parts = Vec::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) => {
                let part = part.to_str().ok_or_else(|| ApiError::InvalidPath(format!("{what} is not UTF-8")))?;
                if part.len() > MAX_COMPONENT_BYTES {
                    return Err(ApiError::InvalidPath(format!("a {what} component is too long")));
                }
                parts.push(part);
            }
            Component::CurDir => {}
            Component::ParentDir => return Err(ApiError::InvalidPath(format!("{what} must not contain `..`"))),
            Component::RootDir | Component::Prefix(_) => {
                return Err(ApiError::InvalidPath(format!("{what} must be a relative path")));
            }
        }
    }
    Ok(parts.join("/"))
}

/// Maps an error of a confined filesystem call: a path that led outside the handle (cap-std's
/// escape error, `EXDEV` from `openat2`), a link where none may be (`ELOOP`) or a file where a
/// directory was needed (`ENOTDIR`) is `invalid_path`; a missing one is `not_found`.
pub fn confined_error(what: &str, e: io::Error) -> ApiError {
    match e.raw_os_error() {
        Some(libc::EXDEV) | Some(libc::ELOOP) => {
            return ApiError::InvalidPath(format!("{what} leads outside the directory it must stay in"));
        }
        Some(libc::ENOTDIR) => return ApiError::InvalidPath(format!("a component of {what} is not a directory")),
        _ => {}
    }
    match e.kind() {
        // cap-std's escape error; a genuine EACCES cannot happen to the service on its own tree.
        io::ErrorKind::PermissionDenied => {
            ApiError::InvalidPath(format!("{what} leads outside the directory it must stay in"))
        }
        io::ErrorKind::NotFound => ApiError::NotFound(format!("no such file: {what}")),
        _ => ApiError::Internal(format!("{what}: {e}")),
    }
}

/// Runs filesystem work off the HTTP workers and actor threads.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| ApiError::Internal(format!("filesystem task: {e}")))?
}

/// Opens the directory of a user beneath `users_root` (which must be canonical), creating it
/// when `auto_create` allows. A link at the user's own name is refused, even one that stays
/// inside the root (`users/mallory -> bob`). Blocking.
pub fn open_user_dir(users_root: &Path, user_id: &str, auto_create: bool) -> Result<Dir, ApiError> {
    try_open_user_dir(users_root, user_id, auto_create)?.ok_or_else(|| {
        ApiError::InvalidPath(format!("the directory of user {user_id} does not exist (user.auto_create_dir is off)"))
    })
}

/// [`open_user_dir`], with a missing directory as `None`.
fn try_open_user_dir(users_root: &Path, user_id: &str, auto_create: bool) -> Result<Option<Dir>, ApiError> {
    validate_user_id(user_id)?;
    let root = Dir::open_ambient_dir(users_root, ambient_authority())
        .map_err(|e| ApiError::Internal(format!("cannot open the users' root {}: {e}", users_root.display())))?;
    let open = || root.open_dir_nofollow(user_id);
    let opened = match open() {
        Err(e) if e.kind() == io::ErrorKind::NotFound && auto_create => match root.create_dir(user_id) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                return Err(ApiError::Internal(format!("cannot create the directory of user {user_id}: {e}")));
            }
            _ => open(),
        },
        other => other,
    };
    match opened {
        Ok(dir) => Ok(Some(dir)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(match confined_error(user_id, e) {
            ApiError::InvalidPath(_) => {
                ApiError::InvalidPath(format!("the directory of user {user_id} is a link or not a directory"))
            }
            other => other,
        }),
    }
}

/// Opens the working directory of a session: `subdir` (from [`normalize_subdir`], as stored
/// in the session's row) resolved beneath the user's directory handle, never from the stored
/// absolute `cwd`. A directory replaced by a link that leaves the user's directory is
/// `invalid_path`; a missing one `not_found`. Blocking.
///
/// The returned handle is the verified directory: whoever starts a process in it should
/// `fchdir` to its descriptor rather than `chdir` to a path name.
pub fn open_session_dir(users_root: &Path, user_id: &str, subdir: &str) -> Result<Dir, ApiError> {
    let user = try_open_user_dir(users_root, user_id, false)?;
    open_beneath(&user.ok_or_else(|| ApiError::NotFound("the session's directory is gone".into()))?, subdir)
}

/// Like [`open_session_dir`], but creates missing directories (the user's when `auto_create`
/// allows, and every component of `subdir`), each beneath the handle of its parent. Blocking.
pub fn create_session_dir(users_root: &Path, user_id: &str, subdir: &str, auto_create: bool) -> Result<Dir, ApiError> {
    let user = open_user_dir(users_root, user_id, auto_create)?;
    match open_beneath(&user, subdir) {
        Err(ApiError::NotFound(_)) => {
            user.create_dir_all(subdir).map_err(|e| confined_error("subdir", e))?;
            // Opened again beneath the handle: whatever the agent swapped in meanwhile is checked.
            open_beneath(&user, subdir)
        }
        other => other,
    }
}

fn open_beneath(user: &Dir, subdir: &str) -> Result<Dir, ApiError> {
    let rel = if subdir.is_empty() { "." } else { subdir };
    user.open_dir(rel).map_err(|e| match confined_error("subdir", e) {
        ApiError::NotFound(_) => ApiError::NotFound("the session's directory is gone".into()),
        other => other,
    })
}

/// The path a directory handle is at now, as the kernel names it (`/proc/self/fd`). For
/// display and bookkeeping only: never used to reach the directory again.
pub fn current_path(dir: &Dir) -> Option<PathBuf> {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd())).ok()
}

/// Removes a file at `absolute` (a path inside `<users_root>/<user_id>` computed by the
/// service, such as a transcript) beneath the user's directory handle; a link there is removed
/// itself. Missing is fine. Blocking.
pub fn remove_user_file(users_root: &Path, user_id: &str, absolute: &Path) -> Result<(), ApiError> {
    let rel = absolute
        .strip_prefix(users_root.join(user_id))
        .map_err(|_| ApiError::InvalidPath(format!("{} is not in the user's directory", absolute.display())))?;
    let user = open_user_dir(users_root, user_id, false)?;
    match user.remove_file_or_symlink(rel) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other.map_err(|e| confined_error("transcript", e)),
    }
}

/// Copies the file at `from` to a new file at `to` (both inside `<users_root>/<user_id>`,
/// computed by the service), beneath the user's directory handle: neither path leaves it,
/// through a link or otherwise, and an existing `to` is never overwritten. Its directories
/// are made as needed. `false` when `from` is missing or `to` exists already. Blocking.
pub fn copy_user_file(users_root: &Path, user_id: &str, from: &Path, to: &Path) -> Result<bool, ApiError> {
    let home = users_root.join(user_id);
    let inside = |path: &Path| {
        path.strip_prefix(&home)
            .map(Path::to_path_buf)
            .map_err(|_| ApiError::InvalidPath(format!("{} is not in the user's directory", path.display())))
    };
    let (from, to) = (inside(from)?, inside(to)?);
    let user = open_user_dir(users_root, user_id, false)?;
    let err = |e: io::Error| confined_error("transcript", e);
    let mut source = match user.open(&from) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        other => other.map_err(err)?,
    };
    if let Some(parent) = to.parent().filter(|p| !p.as_os_str().is_empty()) {
        // A name on the way that exists but is no directory beneath the handle (a file, a
        // link out) is where the copy would leave the user's directory.
        user.create_dir_all(parent).map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => {
                ApiError::InvalidPath("a directory of the transcript's path is not one".into())
            }
            _ => err(e),
        })?;
    }
    let mut options = cap_std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    let mut target = match user.open_with(&to, &options) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        other => other.map_err(err)?,
    };
    io::copy(&mut source, &mut target).map_err(err)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> (tempfile::TempDir, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let users = std::fs::canonicalize(root.path()).unwrap().join("users");
        std::fs::create_dir(&users).unwrap();
        (root, users)
    }

    #[test]
    fn user_ids() {
        assert!(validate_user_id("alice_01-x").is_ok());
        for bad in ["", "a b", "../x", "é", &"a".repeat(65)] {
            assert!(validate_user_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn subdirs_are_normalised_or_refused() {
        assert_eq!(normalize_subdir("").unwrap(), "");
        assert_eq!(normalize_subdir("a/./b/").unwrap(), "a/b");
        for bad in ["/etc", "a/../../b", "..", "a\0b", "a\nb"] {
            assert_eq!(normalize_subdir(bad).unwrap_err().code(), "invalid_path", "{bad:?}");
        }
        assert_eq!(normalize_file_path("a\u{1}b").unwrap(), "a\u{1}b");
        assert_eq!(normalize_file_path("a\0b").unwrap_err().code(), "invalid_path");
    }

    #[test]
    fn symlink_out_of_the_user_dir_is_refused_and_nothing_is_created_outside() {
        let (root, users) = users();
        let outside = root.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        create_session_dir(&users, "alice", "", true).unwrap();
        std::os::unix::fs::symlink(&outside, users.join("alice/link")).unwrap();
        std::os::unix::fs::symlink("../../outside", users.join("alice/rel")).unwrap();
        for subdir in ["link", "link/new", "rel/new"] {
            let e = create_session_dir(&users, "alice", subdir, true).unwrap_err();
            assert_eq!(e.code(), "invalid_path", "{subdir}");
        }
        assert!(!outside.join("new").exists());
        let ok = create_session_dir(&users, "alice", "proj/sub", true).unwrap();
        assert_eq!(current_path(&ok).unwrap(), users.join("alice/proj/sub"));
        open_session_dir(&users, "alice", "proj/sub").unwrap();
        assert_eq!(open_session_dir(&users, "alice", "gone").unwrap_err().code(), "not_found");
        assert_eq!(open_session_dir(&users, "nobody", "").unwrap_err().code(), "not_found");
    }

    #[test]
    fn a_session_dir_swapped_for_a_link_to_another_user_is_refused() {
        let (_root, users) = users();
        create_session_dir(&users, "bob", "", true).unwrap();
        create_session_dir(&users, "alice", "proj", true).unwrap();
        std::fs::rename(users.join("alice/proj"), users.join("alice/proj.old")).unwrap();
        std::os::unix::fs::symlink("../bob", users.join("alice/proj")).unwrap();
        assert_eq!(open_session_dir(&users, "alice", "proj").unwrap_err().code(), "invalid_path");
        assert_eq!(create_session_dir(&users, "alice", "proj", true).unwrap_err().code(), "invalid_path");
        // A link that stays inside the user's directory is followed.
        std::fs::remove_file(users.join("alice/proj")).unwrap();
        std::os::unix::fs::symlink("proj.old", users.join("alice/proj")).unwrap();
        open_session_dir(&users, "alice", "proj").unwrap();
    }

    #[test]
    fn a_user_dir_that_is_a_link_is_refused_even_inside_the_root() {
        let (root, users) = users();
        create_session_dir(&users, "bob", "", true).unwrap();
        std::os::unix::fs::symlink(root.path(), users.join("mallory")).unwrap();
        std::os::unix::fs::symlink("bob", users.join("eve")).unwrap();
        for user in ["mallory", "eve"] {
            assert_eq!(open_user_dir(&users, user, true).unwrap_err().code(), "invalid_path", "{user}");
            assert_eq!(open_session_dir(&users, user, "").unwrap_err().code(), "invalid_path", "{user}");
        }
    }

    #[test]
    fn copying_a_user_file_stays_beneath_the_users_directory() {
        let (root, users) = users();
        create_session_dir(&users, "alice", "", true).unwrap();
        let home = users.join("alice");
        std::fs::create_dir_all(home.join(".claude/projects/a")).unwrap();
        std::fs::write(home.join(".claude/projects/a/t.jsonl"), "transcript").unwrap();
        let (from, to) = (home.join(".claude/projects/a/t.jsonl"), home.join(".claude/projects/b/u.jsonl"));
        assert!(copy_user_file(&users, "alice", &from, &to).unwrap());
        assert_eq!(std::fs::read_to_string(&to).unwrap(), "transcript");
        std::fs::write(&to, "its own").unwrap();
        assert!(!copy_user_file(&users, "alice", &from, &to).unwrap(), "never overwrites");
        assert_eq!(std::fs::read_to_string(&to).unwrap(), "its own");
        assert!(!copy_user_file(&users, "alice", &home.join("gone"), &home.join("x")).unwrap());
        // A directory on the way swapped for a link out: nothing is written outside.
        let outside = root.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, home.join(".claude/projects/c")).unwrap();
        let out = home.join(".claude/projects/c/v.jsonl");
        assert_eq!(copy_user_file(&users, "alice", &from, &out).unwrap_err().code(), "invalid_path");
        assert!(std::fs::read_dir(&outside).unwrap().next().is_none());
        // Nor is anything read through one.
        std::fs::write(outside.join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), home.join("s")).unwrap();
        assert_eq!(
            copy_user_file(&users, "alice", &home.join("s"), &home.join("y")).unwrap_err().code(),
            "invalid_path"
        );
        assert!(copy_user_file(&users, "alice", &outside.join("secret"), &home.join("z")).is_err());
    }

    #[test]
    fn removing_a_user_file_never_follows_a_link_out() {
        let (root, users) = users();
        create_session_dir(&users, "alice", "", true).unwrap();
        let secret = root.path().join("secret");
        std::fs::write(&secret, "x").unwrap();
        std::fs::create_dir_all(root.path().join("theirs/projects/p")).unwrap();
        std::fs::write(root.path().join("theirs/projects/p/t.jsonl"), "t").unwrap();
        std::os::unix::fs::symlink(root.path().join("theirs"), users.join("alice/.claude")).unwrap();
        let transcript = users.join("alice/.claude/projects/p/t.jsonl");
        assert_eq!(remove_user_file(&users, "alice", &transcript).unwrap_err().code(), "invalid_path");
        assert!(root.path().join("theirs/projects/p/t.jsonl").exists());
        std::os::unix::fs::symlink(&secret, users.join("alice/t.jsonl")).unwrap();
        remove_user_file(&users, "alice", &users.join("alice/t.jsonl")).unwrap();
        assert!(secret.exists() && !users.join("alice/t.jsonl").exists());
    }
}
