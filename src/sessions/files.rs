//! Files in a session's working directory. Every path is relative, resolved with symlinks
//! followed, and must stay inside the directory (by path components), whoever made the link.

use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::workspace::{is_within, normalize_subdir, resolve_session_dir};
use crate::clock;
use crate::error::ApiError;

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Entry {
    pub name: String,
    /// `file`, `dir`, `symlink` (not followed) or `other`.
    #[schema(value_type = String, pattern = "^(file|dir|symlink|other)$")]
    pub kind: &'static str,
    /// Bytes (0 for a directory).
    pub size: u64,
    /// RFC 3339, UTC.
    pub modified_at: Option<String>,
}

/// What a path names inside the session directory.
pub enum Target {
    Dir(Vec<Entry>),
    File(PathBuf),
}

fn outside() -> ApiError {
    ApiError::InvalidPath("the path leads outside the session's directory".into())
}

/// Resolves an existing path: `root` joined with the normalised `rel`, canonicalised and
/// checked to be inside `root` (which must be canonical).
pub fn resolve_existing(root: &Path, rel: &str) -> Result<PathBuf, ApiError> {
    let rel = normalize_subdir(rel)?;
    let joined = root.join(&rel);
    match std::fs::canonicalize(&joined) {
        Ok(resolved) if is_within(root, &resolved) => Ok(resolved),
        Ok(_) => Err(outside()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // A dangling link is refused the same way as one that leads out.
            if std::fs::symlink_metadata(&joined).is_ok() {
                return Err(outside());
            }
            Err(ApiError::NotFound(format!("no such file: {rel}")))
        }
        Err(e) => Err(ApiError::Internal(format!("{}: {e}", joined.display()))),
    }
}

/// A listing of a directory, or the file to send.
pub fn open(root: &Path, rel: &str) -> Result<Target, ApiError> {
    let path = resolve_existing(root, rel)?;
    let meta = std::fs::metadata(&path).map_err(|e| ApiError::Internal(e.to_string()))?;
    if !meta.is_dir() {
        return Ok(Target::File(path));
    }
    let mut entries = Vec::new();
    let read = std::fs::read_dir(&path).map_err(|e| ApiError::Internal(e.to_string()))?;
    for entry in read.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        let kind = if meta.file_type().is_symlink() {
            "symlink"
        } else if meta.is_dir() {
            "dir"
        } else if meta.is_file() {
            "file"
        } else {
            "other"
        };
        let modified_at = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| clock::rfc3339(d.as_millis() as i64));
        entries.push(Entry {
            name: entry.file_name().to_string_lossy().into_owned(),
            kind,
            size: if meta.is_file() { meta.len() } else { 0 },
            modified_at,
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Target::Dir(entries))
}

/// Where an upload goes: its parent directories created safely inside `root`, the final name
/// refused if it is a directory or a link leading out. Returns the path to write.
pub fn upload_target(root: &Path, rel: &str) -> Result<PathBuf, ApiError> {
    let rel = normalize_subdir(rel)?;
    if rel.is_empty() {
        return Err(ApiError::InvalidPath("a file name is needed".into()));
    }
    let (parent, name) = match rel.rsplit_once('/') {
        Some((parent, name)) => (parent, name),
        None => ("", rel.as_str()),
    };
    let dir = resolve_session_dir(root, parent)?;
    let path = dir.join(name);
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            let resolved = std::fs::canonicalize(&path).map_err(|_| outside())?;
            if !is_within(root, &resolved) {
                return Err(outside());
            }
            if resolved.is_dir() {
                return Err(ApiError::InvalidPath(format!("{rel} is a directory")));
            }
            Ok(resolved)
        }
        Ok(meta) if meta.is_dir() => Err(ApiError::InvalidPath(format!("{rel} is a directory"))),
        _ => Ok(path),
    }
}

/// Removes a file, a link, or an empty directory.
pub fn remove(root: &Path, rel: &str) -> Result<(), ApiError> {
    let normalized = normalize_subdir(rel)?;
    if normalized.is_empty() {
        return Err(ApiError::InvalidPath("the session's directory itself cannot be deleted".into()));
    }
    let joined = root.join(&normalized);
    let meta =
        std::fs::symlink_metadata(&joined).map_err(|_| ApiError::NotFound(format!("no such file: {normalized}")))?;
    // A link is removed itself (never what it points to); its parent must be inside.
    let parent = joined.parent().unwrap_or(root);
    let parent = std::fs::canonicalize(parent).map_err(|_| outside())?;
    if !is_within(root, &parent) {
        return Err(outside());
    }
    let target = parent.join(joined.file_name().unwrap_or_default());
    let result = if meta.is_dir() { std::fs::remove_dir(&target) } else { std::fs::remove_file(&target) };
    result.map_err(|e| match e.kind() {
        io::ErrorKind::DirectoryNotEmpty => ApiError::InvalidRequest(format!("{normalized} is not empty")),
        _ => ApiError::Internal(format!("cannot delete {normalized}: {e}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap().join("s");
        std::fs::create_dir(&root).unwrap();
        (dir, root)
    }

    #[test]
    fn links_out_are_refused_links_in_are_followed() {
        let (dir, root) = root();
        std::fs::write(dir.path().join("secret"), "x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("out")).unwrap();
        std::fs::write(root.join("inside"), "y").unwrap();
        std::os::unix::fs::symlink(root.join("inside"), root.join("alias")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("nowhere"), root.join("dangling")).unwrap();
        assert_eq!(resolve_existing(&root, "out").err().unwrap().code(), "invalid_path");
        assert_eq!(resolve_existing(&root, "dangling").err().unwrap().code(), "invalid_path");
        assert_eq!(resolve_existing(&root, "alias").unwrap(), root.join("inside"));
        assert_eq!(upload_target(&root, "out").err().unwrap().code(), "invalid_path");
        assert_eq!(resolve_existing(&root, "missing").err().unwrap().code(), "not_found");
        // Deleting a link removes the link, not its target.
        remove(&root, "out").unwrap();
        assert!(dir.path().join("secret").exists());
    }
}
