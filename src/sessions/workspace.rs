//! Users' directories and session working directories. Every path is resolved canonically
//! (symlinks followed) and compared by path components against the user's own directory.

use std::io;
use std::path::{Component, Path, PathBuf};

use crate::error::ApiError;

const MAX_SUBDIR_BYTES: usize = 1024;
const MAX_COMPONENT_BYTES: usize = 255;

/// `user_id`: 1–64 characters of `[A-Za-z0-9_-]`.
pub fn validate_user_id(user_id: &str) -> Result<(), ApiError> {
    let ok = (1..=64).contains(&user_id.len())
        && user_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok { Ok(()) } else { Err(ApiError::validation("user_id", "must be 1-64 characters of A-Z, a-z, 0-9, _ and -")) }
}

/// Normalises a requested `subdir` to plain relative components (`a/./b/` → `a/b`), refusing
/// absolute paths, `..`, NUL and control characters.
pub fn normalize_subdir(subdir: &str) -> Result<String, ApiError> {
    if subdir.len() > MAX_SUBDIR_BYTES {
        return Err(ApiError::InvalidPath(format!("subdir is longer than {MAX_SUBDIR_BYTES} bytes")));
    }
    if subdir.chars().any(char::is_control) {
        return Err(ApiError::InvalidPath("subdir contains NUL or control characters".into()));
    }
    let path = Path::new(subdir);
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => {
                let part = part.to_str().ok_or_else(|| ApiError::InvalidPath("subdir is not UTF-8".into()))?;
                if part.len() > MAX_COMPONENT_BYTES {
                    return Err(ApiError::InvalidPath("a subdir component is too long".into()));
                }
                parts.push(part);
            }
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(ApiError::InvalidPath("subdir must not contain `..`".into()));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(ApiError::InvalidPath("subdir must be a relative path".into()));
            }
        }
    }
    Ok(parts.join("/"))
}

/// True if `path` is `root` or lies below it, compared component by component.
pub fn is_within(root: &Path, path: &Path) -> bool {
    path.starts_with(root)
}

/// The canonical directory of a user, created when `auto_create` allows it.
/// `users_root` must already be canonical.
pub fn user_dir(users_root: &Path, user_id: &str, auto_create: bool) -> Result<PathBuf, ApiError> {
    validate_user_id(user_id)?;
    let dir = users_root.join(user_id);
    match std::fs::symlink_metadata(&dir) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound && auto_create => {
            std::fs::create_dir(&dir)
                .or_else(|e| if e.kind() == io::ErrorKind::AlreadyExists { Ok(()) } else { Err(e) })
                .map_err(|e| ApiError::Internal(format!("cannot create {}: {e}", dir.display())))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ApiError::InvalidPath(format!(
                "the directory of user {user_id} does not exist (user.auto_create_dir is off)"
            )));
        }
        Err(e) => {
            return Err(ApiError::Internal(format!("cannot inspect {}: {e}", dir.display())));
        }
    }
    let canonical = std::fs::canonicalize(&dir).map_err(|e| ApiError::Internal(format!("{}: {e}", dir.display())))?;
    // The user's directory itself must not be a link out of the users' root.
    if !is_within(users_root, &canonical) || canonical == users_root {
        return Err(ApiError::InvalidPath(format!("the directory of user {user_id} points outside the users' root")));
    }
    Ok(canonical)
}

/// Resolves (and creates) `<user dir>/<subdir>` one component at a time, so that a symlink
/// planted anywhere on the way cannot lead the creation, or the result, outside the user's
/// directory. `subdir` must come from [`normalize_subdir`]. Returns the canonical path.
pub fn resolve_session_dir(user_dir: &Path, subdir: &str) -> Result<PathBuf, ApiError> {
    let outside = || ApiError::InvalidPath("subdir resolves outside the user's directory".into());
    let mut current = user_dir.to_path_buf();
    for part in subdir.split('/').filter(|p| !p.is_empty()) {
        let next = current.join(part);
        match std::fs::symlink_metadata(&next) {
            Ok(_) => {
                let resolved = std::fs::canonicalize(&next).map_err(|_| outside())?;
                if !is_within(user_dir, &resolved) {
                    return Err(outside());
                }
                if !resolved.is_dir() {
                    return Err(ApiError::InvalidPath(format!("subdir component `{part}` is not a directory")));
                }
                current = resolved;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir(&next)
                    .or_else(|e| if e.kind() == io::ErrorKind::AlreadyExists { Ok(()) } else { Err(e) })
                    .map_err(|e| ApiError::Internal(format!("cannot create {}: {e}", next.display())))?;
                current = std::fs::canonicalize(&next).map_err(|_| outside())?;
                if !is_within(user_dir, &current) {
                    return Err(outside());
                }
            }
            Err(e) => {
                return Err(ApiError::Internal(format!("cannot inspect {}: {e}", next.display())));
            }
        }
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[test]
    fn symlink_out_of_the_user_dir_is_refused_and_nothing_is_created_outside() {
        let root = tempfile::tempdir().unwrap();
        let users = std::fs::canonicalize(root.path()).unwrap().join("users");
        std::fs::create_dir(&users).unwrap();
        let outside = root.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let alice = user_dir(&users, "alice", true).unwrap();
        std::os::unix::fs::symlink(&outside, alice.join("link")).unwrap();
        let e = resolve_session_dir(&alice, "link/new").unwrap_err();
        assert_eq!(e.code(), "invalid_path");
        assert!(!outside.join("new").exists());
        let ok = resolve_session_dir(&alice, "proj/sub").unwrap();
        assert_eq!(ok, alice.join("proj/sub"));
    }

    #[test]
    fn a_user_dir_that_is_a_link_outside_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let users = std::fs::canonicalize(root.path()).unwrap().join("users");
        std::fs::create_dir(&users).unwrap();
        std::os::unix::fs::symlink(root.path(), users.join("mallory")).unwrap();
        assert_eq!(user_dir(&users, "mallory", true).unwrap_err().code(), "invalid_path");
    }
}
