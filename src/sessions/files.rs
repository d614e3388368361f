//! Files in a session's working directory. Every path is relative and resolved beneath the
//! session directory's open handle (see [`super::workspace`]): a link is followed only while
//! it stays beneath it, whoever made the link and whenever. All functions here block.

use std::io;

use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};
use serde::Serialize;

use super::workspace::{confined_error, normalize_file_path};
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
    /// An opened regular file, its name (the path's last component) and its size when opened.
    File {
        file: std::fs::File,
        name: String,
        len: u64,
    },
}

/// Opens what `rel` names: a directory is listed, a regular file is returned open (read from
/// that handle, never reopened by name). FIFOs, devices and sockets are refused.
pub fn open(session: &Dir, rel: &str) -> Result<Target, ApiError> {
    let rel = normalize_file_path(rel)?;
    let mut options = OpenOptions::new();
    // O_NONBLOCK: opening a FIFO the agent made must not hang the thread; no effect on files.
    options.read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    let opened = session.open_with(if rel.is_empty() { "." } else { &rel }, &options);
    let file = opened.map_err(|e| confined_error(&rel, e))?;
    let meta = file.metadata().map_err(|e| ApiError::Internal(format!("{rel}: {e}")))?;
    if meta.is_dir() {
        return Ok(Target::Dir(list(&Dir::from_std_file(file.into_std()))?));
    }
    if !meta.is_file() {
        return Err(ApiError::InvalidPath(format!("{rel} is not a regular file")));
    }
    let name = rel.rsplit('/').next().unwrap_or_default().to_string();
    Ok(Target::File { file: file.into_std(), name, len: meta.len() })
}

fn list(dir: &Dir) -> Result<Vec<Entry>, ApiError> {
    let mut entries = Vec::new();
    for entry in dir.entries().map_err(|e| ApiError::Internal(e.to_string()))?.flatten() {
        // Not followed: a link is listed as a link.
        let Ok(meta) = entry.metadata() else { continue };
        let kind = if meta.is_symlink() {
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
            .and_then(|t| t.into_std().duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| clock::rfc3339(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)));
        entries.push(Entry {
            name: entry.file_name().to_string_lossy().into_owned(),
            kind,
            size: if meta.is_file() { meta.len() } else { 0 },
            modified_at,
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

/// An upload in progress: a temporary file beneath the handle of the target's directory,
/// renamed over the target (beneath the same handle) once complete.
pub struct Upload {
    dir: Dir,
    name: String,
    temp_name: String,
}

/// Starts an upload to `rel`: missing parent directories are created beneath the session's
/// handle, and the final name may not be a directory or a link (a rename would replace the
/// link, never write through it, but a link there is refused to say so). Returns the upload
/// and its temporary file, open for writing.
pub fn begin_upload(session: &Dir, rel: &str) -> Result<(Upload, std::fs::File), ApiError> {
    let rel = normalize_file_path(rel)?;
    let (parent, name) = match rel.rsplit_once('/') {
        Some((parent, name)) => (parent, name),
        None if rel.is_empty() => return Err(ApiError::InvalidPath("a file name is needed".into())),
        None => (".", rel.as_str()),
    };
    let dir = match session.open_dir(parent) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            session.create_dir_all(parent).map_err(|e| confined_error(parent, e))?;
            session.open_dir(parent)
        }
        other => other,
    }
    .map_err(|e| confined_error(parent, e))?;
    match dir.symlink_metadata(name) {
        Ok(meta) if meta.is_dir() => return Err(ApiError::InvalidPath(format!("{rel} is a directory"))),
        Ok(meta) if meta.is_symlink() => {
            return Err(ApiError::InvalidPath(format!("{rel} is a symbolic link; delete it first")));
        }
        _ => {}
    }
    let temp_name = format!(".upload-{}", uuid::Uuid::new_v4().simple());
    let mut options = OpenOptions::new();
    options.write(true).create_new(true).mode(0o644);
    let file = dir.open_with(&temp_name, &options).map_err(|e| ApiError::Internal(format!("upload: {e}")))?;
    Ok((Upload { dir, name: name.to_string(), temp_name }, file.into_std()))
}

impl Upload {
    /// Puts the complete file in place (replacing a file of that name).
    pub fn commit(&self) -> Result<(), ApiError> {
        let renamed = self.dir.rename(&self.temp_name, &self.dir, &self.name);
        renamed.map_err(|e| {
            self.abort();
            match e.raw_os_error() {
                Some(libc::EISDIR) | Some(libc::ENOTEMPTY) | Some(libc::EEXIST) => {
                    ApiError::InvalidPath(format!("{} is a directory", self.name))
                }
                _ => ApiError::Internal(format!("upload: {e}")),
            }
        })
    }

    /// Removes the temporary file.
    pub fn abort(&self) {
        let _ = self.dir.remove_file(&self.temp_name);
    }
}

/// Removes a file, a link (itself, never what it points to), or an empty directory.
pub fn remove(session: &Dir, rel: &str) -> Result<(), ApiError> {
    let rel = normalize_file_path(rel)?;
    if rel.is_empty() {
        return Err(ApiError::InvalidPath("the session's directory itself cannot be deleted".into()));
    }
    let meta = session.symlink_metadata(&rel).map_err(|e| confined_error(&rel, e))?;
    let result = if meta.is_dir() { session.remove_dir(&rel) } else { session.remove_file(&rel) };
    result.map_err(|e| match e.kind() {
        io::ErrorKind::DirectoryNotEmpty => ApiError::InvalidRequest(format!("{rel} is not empty")),
        _ => confined_error(&rel, e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn session() -> (tempfile::TempDir, std::path::PathBuf, Dir) {
        session_in(std::env::temp_dir())
    }

    fn session_in(parent: std::path::PathBuf) -> (tempfile::TempDir, std::path::PathBuf, Dir) {
        let dir = tempfile::tempdir_in(parent).unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap().join("s");
        std::fs::create_dir(&root).unwrap();
        let handle = Dir::open_ambient_dir(&root, cap_std::ambient_authority()).unwrap();
        (dir, root, handle)
    }

    fn read(target: Target) -> String {
        let Target::File { mut file, .. } = target else { panic!("not a file") };
        let mut text = String::new();
        io::Read::read_to_string(&mut file, &mut text).unwrap();
        text
    }

    #[test]
    fn links_out_are_refused_links_in_are_followed() {
        let (dir, root, session) = session();
        std::fs::write(dir.path().join("secret"), "x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("out")).unwrap();
        std::os::unix::fs::symlink("../secret", root.join("rel-out")).unwrap();
        std::fs::write(root.join("inside"), "y").unwrap();
        std::os::unix::fs::symlink("inside", root.join("alias")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("nowhere"), root.join("dangling")).unwrap();
        for bad in ["out", "rel-out", "dangling", "out/x"] {
            assert_eq!(open(&session, bad).err().unwrap().code(), "invalid_path", "{bad}");
        }
        assert_eq!(read(open(&session, "alias").unwrap()), "y");
        assert_eq!(begin_upload(&session, "out").err().unwrap().code(), "invalid_path");
        assert_eq!(begin_upload(&session, "rel-out/x").err().unwrap().code(), "invalid_path");
        assert_eq!(open(&session, "missing").err().unwrap().code(), "not_found");
        // Deleting a link removes the link, not its target.
        remove(&session, "out").unwrap();
        assert!(dir.path().join("secret").exists());
        assert_eq!(remove(&session, "rel-out/x").unwrap_err().code(), "invalid_path");
    }

    #[test]
    fn uploads_land_by_rename_and_fifos_are_refused() {
        let (_dir, root, session) = session();
        let (upload, mut file) = begin_upload(&session, "a/b/c.txt").unwrap();
        file.write_all(b"hello").unwrap();
        upload.commit().unwrap();
        assert_eq!(std::fs::read_to_string(root.join("a/b/c.txt")).unwrap(), "hello");
        assert_eq!(std::fs::read_dir(root.join("a/b")).unwrap().count(), 1, "no temporary file left");
        let (upload, _file) = begin_upload(&session, "a/b/d.txt").unwrap();
        upload.abort();
        assert_eq!(std::fs::read_dir(root.join("a/b")).unwrap().count(), 1);
        assert_eq!(begin_upload(&session, "a").err().unwrap().code(), "invalid_path");
        let fifo = std::ffi::CString::new(root.join("fifo").to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert_eq!(open(&session, "fifo").err().unwrap().code(), "invalid_path");
    }

    #[test]
    fn a_far_future_mtime_is_listed_not_a_panic() {
        // tmpfs keeps such a time; ext4 would clamp it to 2446.
        let (_dir, root, session) = session_in("/dev/shm".into());
        let file = std::fs::File::create(root.join("f")).unwrap();
        let far = std::time::UNIX_EPOCH + std::time::Duration::from_secs(300_000_000_000);
        file.set_modified(far).unwrap();
        let Target::Dir(entries) = open(&session, "").unwrap() else { panic!("not a dir") };
        assert_eq!(entries[0].modified_at.as_deref(), Some("9999-12-31T23:59:59.999+00:00"));
    }
}
