//! Forks and rewinds of a conversation (`POST /sessions/{id}/fork`, `/rewind`).
//!
//! A fork is a new session whose CLI starts with `--resume=<source> --fork-session
//! --session-id=<its own>` and `--resume-session-at=<the last kept message>` (the pinned CLI
//! copies the source transcript and leaves it untouched), with the source's stored messages up
//! to there copied as its own. A rewind cuts the stored history before a user message and
//! restarts the CLI resumed at the last message kept; with `files`, the CLI's file
//! checkpoints restore what its Edit/Write tools changed since (`rewind_files`).
//!
//! Where a conversation cut after a turn resumes is that turn's last assistant message (its
//! CLI uuid is stored with the assistant's message): a fork at turn k keeps turns 1..=k, a
//! rewind before turn k keeps 1..k-1, so both cut at the same kind of point.

use std::io;

use std::path::Path;

use cap_fs_ext::{DirExt, FollowSymlinks, MetadataExt, OpenOptionsFollowExt};
use cap_std::fs::{Dir, OpenOptions};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Session, SessionService, workspace};
use crate::actors::{RewindCommit, SessionHandle, StopReason, Urgency};
use crate::auth::Caller;
use crate::domain::SessionStatus;
use crate::error::ApiError;
use crate::storage::{MessageRow, RewindTo, SessionRow};

/// Directories deeper than this are not copied (`invalid_path`): the copy recurses.
const MAX_COPY_DEPTH: usize = 128;

/// `POST /sessions/{id}/fork` body. An empty body counts as `{}`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkSession {
    /// The fork's conversation ends with this message's turn (a message id as
    /// `GET /sessions/{id}/messages` shows it: the user message or the answer of a turn keeps
    /// that whole turn). The whole conversation by default.
    pub at_message_id: Option<i64>,
    /// The fork's working directory inside the user's directory (as at creation); the
    /// source's by default.
    pub subdir: Option<String>,
    /// Copy the source's working directory into the fork's (`subdir` must then name another
    /// directory, new or empty). Links are copied as links, never followed.
    #[serde(default)]
    pub copy_files: bool,
}

/// `POST /sessions/{id}/rewind` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RewindSession {
    /// A user message of the session: the conversation continues from before it (it and
    /// everything after it are removed from the stored history).
    pub message_id: i64,
    /// Also restore the files the agent's Edit/Write tools changed since that message
    /// (changes made by shell commands are not tracked).
    #[serde(default)]
    pub files: bool,
    /// Change nothing; answer what would change.
    #[serde(default)]
    pub dry_run: bool,
}

/// What a rewind did (or, in a dry run, would do).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Rewound {
    pub message_id: i64,
    /// The files restored (or that would be), relative to the working directory when inside
    /// it; empty without `files`.
    pub files: Vec<String>,
    pub dry_run: bool,
}

fn no_message() -> ApiError {
    ApiError::NotFound("No message with this id in this session".into())
}

impl SessionService {
    /// Forks a session: a new session of the same user, with the source's options and
    /// metadata, whose conversation is the source's up to `at_message_id` (counted against
    /// quotas like a create). The source is untouched.
    pub async fn fork(&self, caller: &Caller, session_id: &str, req: ForkSession) -> Result<Session, ApiError> {
        let source = self.get(caller, session_id).await?;
        if source.status == SessionStatus::Expired {
            return Err(ApiError::SessionExpired);
        }
        let upto = match req.at_message_id {
            None => self.storage.last_message_id(&source.session_id, None).await?,
            Some(id) => {
                let message = self.storage.get_message(&source.session_id, id).await?.ok_or_else(no_message)?;
                self.storage.last_message_id(&source.session_id, Some(&message.turn_id)).await?
            }
        };
        let resume_at = match upto {
            Some(upto) => self.storage.resume_point(&source.session_id, upto).await?,
            None => None,
        };
        let subdir = match req.subdir.as_deref() {
            Some(s) => workspace::normalize_subdir(s)?,
            None => source.subdir.clone(),
        };
        if req.copy_files && subdir == source.subdir {
            return Err(ApiError::validation("subdir", "copy_files needs a directory other than the session's"));
        }
        let (users_root, user, auto_create) =
            (self.users_root.clone(), source.user_id.clone(), self.settings.user.auto_create_dir);
        let (from_subdir, from_cwd, from_cli) =
            (source.subdir.clone(), source.cwd.clone(), source.cli_session_id.clone());
        let (sub, copy) = (subdir.clone(), req.copy_files);
        let (cwd, source_has_transcript) = workspace::blocking(move || {
            let dir = workspace::create_session_dir(&users_root, &user, &sub, auto_create)?;
            if copy {
                let from = workspace::open_session_dir(&users_root, &user, &from_subdir)?;
                copy_session_dir(&from, &dir, from_subdir.is_empty())?;
            }
            let config_dir = users_root.join(&user).join(".claude");
            let has_transcript = crate::cli::command::transcript_path(&config_dir, &from_cwd, &from_cli).is_some();
            let cwd = workspace::current_path(&dir).unwrap_or_else(|| users_root.join(&user).join(&sub));
            Ok((cwd, has_transcript))
        })
        .await?;
        let cwd = cwd.to_str().ok_or_else(|| ApiError::InvalidPath("working directory is not UTF-8".into()))?;
        // A source that is itself a fork not started yet has no transcript of its own: the
        // fork copies the transcript it would have copied.
        let fork_from = match resume_at {
            None => None,
            Some(_) if source_has_transcript => Some(source.cli_session_id.clone()),
            Some(_) => source.fork_from.clone(),
        };
        let row = SessionRow {
            resume_at: fork_from.as_ref().and(resume_at),
            fork_from,
            ..super::new_session_row(
                source.user_id.clone(),
                subdir,
                cwd,
                source.metadata.clone(),
                source.options.clone(),
            )
        };
        // The CLI's file checkpoints of the copied messages are of the source's directory: a
        // fork elsewhere may not restore files to them (that would change the source's files).
        let same_dir = row.subdir == source.subdir;
        let row = self.storage.insert_fork(&row, &source.session_id, upto, same_dir).await?;
        if let Err(e) = self.launch(&row, Urgency::Background).await {
            if let Err(purge) = self.storage.purge_session(&row.session_id).await {
                log::error!(
                    "session {}: launch failed ({e}) and its row could not be removed: {purge}",
                    row.session_id
                );
            }
            return Err(e);
        }
        Ok(row.into())
    }

    /// A fork starts from its source's transcript until it has written one of its own (the
    /// CLI does at its first message): before a purge deletes the source's, each fork still
    /// without its own gets a copy of it under its own id, which its next start resumes (at
    /// the fork's message). A live one is stopped first: it holds the source's in memory only.
    pub(super) async fn keep_forks_of(&self, source: &SessionRow) -> Result<(), ApiError> {
        let forks = self.storage.forks_of(&source.user_id, &source.cli_session_id).await?;
        if forks.is_empty() {
            return Ok(());
        }
        let users_root = self.users_root.clone();
        let config_dir = users_root.join(&source.user_id).join(".claude");
        let (from_cwd, from_cli) = (source.cwd.clone(), source.cli_session_id.clone());
        let looked_in = config_dir.clone();
        let orphans: Vec<SessionRow> = workspace::blocking(move || {
            Ok(forks
                .into_iter()
                .filter(|f| crate::cli::command::transcript_path(&looked_in, &f.cwd, &f.cli_session_id).is_none())
                .collect())
        })
        .await?;
        if orphans.is_empty() {
            return Ok(());
        }
        self.retire(orphans.iter().map(|f| f.session_id.clone()).collect(), StopReason::SourcePurged);
        let user = source.user_id.clone();
        workspace::blocking(move || {
            let Some(from) = crate::cli::command::transcript_path(&config_dir, &from_cwd, &from_cli) else {
                return Ok(());
            };
            for fork in orphans {
                let Some(to) = crate::cli::command::new_transcript_path(&config_dir, &fork.cwd, &fork.cli_session_id)
                else {
                    log::warn!("session {}: no transcript copied for it (its cwd is too long)", fork.session_id);
                    continue;
                };
                workspace::copy_user_file(&users_root, &user, &from, &to)?;
            }
            Ok(())
        })
        .await
    }

    /// Rewinds a session to before one of its user messages: that message and every later one
    /// leave the stored history, the CLI restarts resumed at the last message kept, and with
    /// `files` the files the agent changed since are restored. `session_busy` while a turn
    /// runs. A session without a live CLI gets one for `files` (the checkpoints are its).
    pub async fn rewind(&self, caller: &Caller, session_id: &str, req: RewindSession) -> Result<Rewound, ApiError> {
        let row = self.get(caller, session_id).await?;
        match row.status {
            SessionStatus::Closed => return Err(ApiError::SessionClosed),
            SessionStatus::Expired => return Err(ApiError::SessionExpired),
            _ => {}
        }
        let message: MessageRow =
            self.storage.get_message(&row.session_id, req.message_id).await?.ok_or_else(no_message)?;
        if message.role != "user" {
            return Err(ApiError::validation(
                "message_id",
                "must be a user message of the session (the conversation continues from before it)",
            ));
        }
        let files_at = match (req.files, &message.cli_uuid) {
            (false, _) => None,
            (true, Some(uuid)) => Some(uuid.clone()),
            (true, None) => {
                return Err(ApiError::validation(
                    "files",
                    "this session has no file checkpoint for this message (stored before checkpoints were kept, \
                     or copied by a fork from another directory's session)",
                ));
            }
        };
        let to = match self.storage.resume_point(&row.session_id, message.id - 1).await? {
            Some(uuid) => RewindTo::At(uuid),
            // Nothing is kept: the CLI starts a new conversation.
            None => RewindTo::Fresh(uuid::Uuid::new_v4().to_string()),
        };
        let commit = || -> RewindCommit {
            let (storage, id, from, to) = (self.storage.clone(), row.session_id.clone(), message.id, to.clone());
            Box::pin(async move {
                storage.rewind_session(&id, from, &to).await?.ok_or(ApiError::SessionNotFound)?;
                Ok(())
            })
        };
        // A CLI that is stopping meanwhile ran nothing of it: the rewind goes to the next one
        // (`files`), or is only stored (its next start reads the cut).
        let mut files = None;
        for _ in 0..3 {
            let actor = match files_at {
                Some(_) => Some(self.actor_for_rewind(&row).await?),
                None => self.registry.lookup(&row.session_id).await?,
            };
            let Some(actor) = actor else { break };
            match actor.rewind(files_at.clone(), req.dry_run, (!req.dry_run).then(commit)).await {
                Ok(changed) => {
                    files = Some(changed);
                    break;
                }
                Err(ApiError::SessionNotLive) => self.recent.forget(&row.session_id),
                Err(e) => return Err(e),
            }
        }
        let files = match files {
            Some(changed) => {
                if !req.dry_run {
                    self.recent.forget(&row.session_id);
                }
                changed
            }
            None if files_at.is_some() => {
                return Err(ApiError::CliFailed(
                    "the CLI keeps exiting before it is ready; see the service log".into(),
                ));
            }
            None => {
                if !req.dry_run {
                    commit().await?;
                }
                Vec::new()
            }
        };
        let files = files.into_iter().map(|f| relative_to(&f, &row.cwd)).collect();
        Ok(Rewound { message_id: message.id, files, dry_run: req.dry_run })
    }

    /// The session's live actor, its CLI started (resumed) if it has none.
    async fn actor_for_rewind(&self, row: &SessionRow) -> Result<SessionHandle, ApiError> {
        if let Some(actor) = self.registry.lookup(&row.session_id).await? {
            return Ok(actor);
        }
        self.storage
            .transition_session(&row.session_id, &SessionStatus::RESUMABLE, SessionStatus::Starting, None)
            .await?;
        self.launch(row, Urgency::Turn).await
    }
}

/// `path` relative to `cwd` when inside it.
fn relative_to(path: &str, cwd: &str) -> String {
    match Path::new(path).strip_prefix(cwd) {
        Ok(rel) if !rel.as_os_str().is_empty() => rel.to_string_lossy().into_owned(),
        _ => path.to_string(),
    }
}

/// Copies the tree of `from` into `to` (both opened beneath the user's directory), which must
/// be empty. Nothing is reached through a link: entries are read with `O_NOFOLLOW` beneath
/// their parent's handle and a link is copied as a link (its target as text, never followed),
/// so a link the agent planted towards another user's files copies none of them. The
/// destination is skipped when it lies inside the source, and so is `.claude` (transcripts,
/// settings) when the source is the user's own directory. Blocking.
pub(super) fn copy_session_dir(from: &Dir, to: &Dir, from_user_root: bool) -> Result<(), ApiError> {
    let err = |e: io::Error| workspace::confined_error("the copied directory", e);
    if to.entries().map_err(err)?.next().is_some() {
        return Err(ApiError::validation("subdir", "copy_files needs a new or empty directory"));
    }
    let dest = to.dir_metadata().map_err(err)?;
    let skip = (dest.dev(), dest.ino());
    copy_tree(from, to, skip, from_user_root, 0).map_err(err)
}

fn copy_tree(from: &Dir, to: &Dir, skip: (u64, u64), top_of_user_root: bool, depth: usize) -> io::Result<()> {
    if depth > MAX_COPY_DEPTH {
        return Err(io::Error::from_raw_os_error(libc::ELOOP));
    }
    for entry in from.entries()? {
        let name = entry?.file_name();
        if top_of_user_root && name == ".claude" {
            continue;
        }
        let meta = from.symlink_metadata(&name)?;
        if (meta.dev(), meta.ino()) == skip {
            continue;
        }
        let kind = meta.file_type();
        if kind.is_symlink() {
            to.symlink_contents(from.read_link_contents(&name)?, &name)?;
        } else if kind.is_dir() {
            let sub_from = from.open_dir_nofollow(&name)?;
            to.create_dir(&name)?;
            let sub_to = to.open_dir_nofollow(&name)?;
            copy_tree(&sub_from, &sub_to, skip, false, depth + 1)?;
            sub_to.set_permissions(".", meta.permissions())?;
        } else if kind.is_file() {
            // Swapped for a link since the look above: O_NOFOLLOW refuses it.
            let mut source = from.open_with(&name, OpenOptions::new().read(true).follow(FollowSymlinks::No))?;
            let mut copy =
                to.open_with(&name, OpenOptions::new().write(true).create_new(true).follow(FollowSymlinks::No))?;
            io::copy(&mut source, &mut copy)?;
            copy.set_permissions(meta.permissions())?;
        }
        // Sockets, FIFOs and devices are not copied.
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> (tempfile::TempDir, std::path::PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let users = std::fs::canonicalize(root.path()).unwrap().join("users");
        std::fs::create_dir(&users).unwrap();
        (root, users)
    }

    #[test]
    fn a_copy_keeps_files_and_links_but_follows_no_link_out() {
        let (root, users) = users();
        std::fs::write(root.path().join("secret"), "other user's secret").unwrap();
        let src = workspace::create_session_dir(&users, "alice", "proj", true).unwrap();
        std::fs::create_dir_all(users.join("alice/proj/src/deep")).unwrap();
        std::fs::write(users.join("alice/proj/src/deep/a.rs"), "fn a() {}").unwrap();
        std::os::unix::fs::symlink(root.path().join("secret"), users.join("alice/proj/leak")).unwrap();
        std::os::unix::fs::symlink("src", users.join("alice/proj/inside")).unwrap();
        let dst = workspace::create_session_dir(&users, "alice", "copy", true).unwrap();
        copy_session_dir(&src, &dst, false).unwrap();
        assert_eq!(std::fs::read_to_string(users.join("alice/copy/src/deep/a.rs")).unwrap(), "fn a() {}");
        let leak = users.join("alice/copy/leak");
        assert!(std::fs::symlink_metadata(&leak).unwrap().file_type().is_symlink(), "a link stays a link");
        assert_eq!(std::fs::read_link(users.join("alice/copy/inside")).unwrap(), Path::new("src"));
        // Not empty any more: a second copy is refused.
        assert_eq!(copy_session_dir(&src, &dst, false).unwrap_err().code(), "validation_error");
    }

    #[test]
    fn a_copy_of_the_user_root_skips_itself_and_the_config_dir() {
        let (_root, users) = users();
        let src = workspace::create_session_dir(&users, "alice", "", true).unwrap();
        std::fs::create_dir_all(users.join("alice/.claude/projects")).unwrap();
        std::fs::write(users.join("alice/notes.md"), "n").unwrap();
        let dst = workspace::create_session_dir(&users, "alice", "fork", true).unwrap();
        copy_session_dir(&src, &dst, true).unwrap();
        assert!(users.join("alice/fork/notes.md").exists());
        assert!(!users.join("alice/fork/fork").exists() && !users.join("alice/fork/.claude").exists());
    }

    #[test]
    fn paths_inside_the_working_directory_are_relative() {
        assert_eq!(relative_to("/u/alice/proj/a.txt", "/u/alice/proj"), "a.txt");
        assert_eq!(relative_to("/u/alice/other/a.txt", "/u/alice/proj"), "/u/alice/other/a.txt");
    }
}
