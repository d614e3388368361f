//! A rewind of the conversation in the live CLI: the files the agent changed since a user
//! message restored (`rewind_files`, from the CLI's file checkpoints), the stored history cut,
//! and the process stopped so that its next start resumes before that message. Between the
//! busy check and the stop no turn can start (the actor is `reserved` meanwhile).

use std::future::Future;
use std::pin::Pin;

use actix::prelude::*;
use serde::Deserialize;
use serde_json::json;

use tokio::sync::oneshot;

use super::{INITIALIZE_TIMEOUT, SETTINGS_TIMEOUT, SessionActor, StopReason};
use crate::error::ApiError;

/// What cuts the stored history, run by the actor once the files are restored and before its
/// CLI stops (so a turn can neither slip in between nor start from the old conversation).
pub type RewindCommit = Pin<Box<dyn Future<Output = Result<(), ApiError>> + Send>>;

/// Restore the files changed since the user message `files_at` (its CLI uuid; `None`: the
/// files stay as they are), then run `commit` and stop the CLI. With `dry_run` nothing
/// changes and nothing stops. Answers the files changed (or that would change), as the CLI
/// names them. `session_busy` while a turn runs or is about to.
#[derive(Message)]
#[rtype(result = "Result<Vec<String>, ApiError>")]
pub struct RewindFiles {
    pub files_at: Option<String>,
    pub dry_run: bool,
    pub commit: Option<RewindCommit>,
}

/// The CLI's answer to `rewind_files`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RewindAnswer {
    #[serde(default)]
    can_rewind: bool,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    files_changed: Vec<String>,
}

impl SessionActor {
    /// Sends `rewind_files` and reads its answer.
    fn rewind_files(
        &mut self,
        uuid: &str,
        dry_run: bool,
    ) -> impl Future<Output = Result<Vec<String>, ApiError>> + use<> {
        let answer = self.control(json!({ "subtype": "rewind_files", "user_message_id": uuid, "dry_run": dry_run }));
        async move {
            let answer = match tokio::time::timeout(SETTINGS_TIMEOUT, answer).await {
                Ok(Ok(Ok(answer))) => answer,
                Ok(Ok(Err(e))) => return Err(ApiError::CliFailed(format!("the CLI refused rewind_files: {e}"))),
                Ok(Err(_)) => return Err(ApiError::SessionNotLive),
                Err(_) => {
                    return Err(ApiError::CliFailed(format!("no answer to rewind_files within {SETTINGS_TIMEOUT:?}")));
                }
            };
            let answer: RewindAnswer = serde_json::from_value(answer)
                .map_err(|e| ApiError::CliFailed(format!("the CLI's rewind_files answer is not understood: {e}")))?;
            if !answer.can_rewind {
                let why = answer.error.unwrap_or_else(|| "the CLI cannot restore them".into());
                return Err(ApiError::validation(
                    "files",
                    format!("the files cannot be restored to this message: {why}"),
                ));
            }
            Ok(answer.files_changed)
        }
    }
}

impl Handler<RewindFiles> for SessionActor {
    type Result = ResponseActFuture<Self, Result<Vec<String>, ApiError>>;

    fn handle(&mut self, msg: RewindFiles, _: &mut Context<Self>) -> Self::Result {
        if self.stopping.is_some() || self.stop_after_turn.is_some() {
            return Box::pin(fut::ready(Err(ApiError::SessionNotLive)));
        }
        if self.turn.is_some() || self.reserved || self.committing.is_some() {
            return Box::pin(fut::ready(Err(ApiError::SessionBusy)));
        }
        // No turn starts until the rewind is done (StartTurn answers `session_busy`).
        self.reserved = true;
        let RewindFiles { files_at, dry_run, commit } = msg;
        // A CLI just started for the rewind answers once it is ready (its start may take
        // longer than a control request's own timeout).
        let ready = (!self.ready).then(|| {
            let (tx, rx) = oneshot::channel();
            self.ready_waiters.push(tx);
            rx
        });
        let wait_ready = async move {
            let Some(ready) = ready else { return Ok(()) };
            match tokio::time::timeout(INITIALIZE_TIMEOUT, ready).await {
                Ok(Ok(started)) => started,
                Ok(Err(_)) => Err(ApiError::SessionNotLive),
                Err(_) => Err(ApiError::CliFailed("the CLI did not become ready for the rewind".into())),
            }
        };
        let files_at_list = files_at.clone();
        Box::pin(
            wait_ready
                .into_actor(self)
                // The list first (the restoring answer does not name the files), then the restore.
                .then(move |ready, act, _| {
                    let listed = match (&ready, files_at_list.as_deref()) {
                        (Ok(()), Some(uuid)) => Some(act.rewind_files(uuid, true)),
                        _ => None,
                    };
                    async move {
                        ready?;
                        match listed {
                            Some(listed) => listed.await,
                            None => Ok(Vec::new()),
                        }
                    }
                    .into_actor(act)
                })
                .then(move |listed, act, _| {
                    let restore = match (&listed, files_at.as_deref(), dry_run) {
                        (Ok(_), Some(uuid), false) => Some(act.rewind_files(uuid, false)),
                        _ => None,
                    };
                    async move {
                        let files = listed?;
                        if let Some(restore) = restore {
                            restore.await?;
                        }
                        if !dry_run && let Some(commit) = commit {
                            commit.await?;
                        }
                        Ok::<_, ApiError>(files)
                    }
                    .into_actor(act)
                })
                .map(move |done, act, ctx| {
                    act.reserved = false;
                    if done.is_ok() && !dry_run {
                        act.begin_stop(StopReason::Rewound, ctx);
                    }
                    done
                }),
        )
    }
}
