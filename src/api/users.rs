//! `/api/v1/users` (admin key only) and `/api/v1/me`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiResult, resource};
use crate::api::extract::JsonBody;
use crate::auth::revocation::Revoked;
use crate::auth::{Caller, keys};
use crate::clock;
use crate::error::{ApiError, ErrorResponse};
use crate::sessions::workspace::validate_user_id;
use crate::state::AppState;
use crate::storage::{ApiKeyRow, StorageError, UserRow};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/users").route(web::post().to(create_user)).route(web::get().to(list_users)))
        .service(resource("/users/{user_id}").route(web::delete().to(delete_user)))
        .service(resource("/users/{user_id}/keys").route(web::post().to(create_key)))
        .service(resource("/users/{user_id}/keys/{key_id}").route(web::delete().to(revoke_key)))
        .service(resource("/me").route(web::get().to(get_me)));
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateUser {
    /// 1-64 characters of A-Z, a-z, 0-9, `_` and `-` (it names the user's directory).
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    user_id: String,
}

/// A new user and its first key. The key is shown only here: store it now.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct CreatedUser {
    user_id: String,
    /// `cah_<key_id>_<secret>`; send it as `Authorization: Bearer` or `X-API-Key`.
    api_key: String,
    key_id: String,
}

/// A new key. It is shown only here: store it now.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct CreatedKey {
    user_id: String,
    key_id: String,
    api_key: String,
}

/// A key without its secret (only its hash is stored).
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct KeyInfo {
    key_id: String,
    /// RFC 3339, UTC.
    created_at: String,
    /// RFC 3339, UTC; null while the key works.
    revoked_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct UserInfo {
    user_id: String,
    /// RFC 3339, UTC.
    created_at: String,
    keys: Vec<KeyInfo>,
}

fn new_key_row(user_id: &str, issued: &keys::IssuedKey, now: i64) -> ApiKeyRow {
    ApiKeyRow {
        key_id: issued.key_id.clone(),
        user_id: Some(user_id.to_string()),
        is_admin: false,
        key_hash: issued.hash.clone(),
        created_at: now,
        revoked_at: None,
    }
}

/// Create a user and its first key (admin key only).
#[utoipa::path(
    post, path = "/api/v1/users", tag = "users",
    request_body = CreateUser,
    responses(
        (status = 201, body = CreatedUser),
        (status = 403, description = "`forbidden`: not the admin key", body = ErrorResponse),
        (status = 409, description = "`user_exists`", body = ErrorResponse),
    ),
)]
pub(super) async fn create_user(
    state: web::Data<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateUser>,
) -> ApiResult {
    caller.require_admin()?;
    validate_user_id(&body.user_id)?;
    let now = clock::now_ms();
    let issued = keys::issue_key();
    let user = UserRow { user_id: body.user_id.clone(), created_at: now };
    match state.storage.insert_user_with_key(&user, &new_key_row(&body.user_id, &issued, now)).await {
        Ok(()) => {}
        Err(StorageError::Conflict(_)) => return Err(ApiError::UserExists),
        Err(e) => return Err(e.into()),
    }
    Ok(HttpResponse::Created().json(CreatedUser {
        user_id: body.user_id,
        api_key: issued.api_key,
        key_id: issued.key_id,
    }))
}

/// Every user with its keys (admin key only).
#[utoipa::path(
    get, path = "/api/v1/users", tag = "users",
    responses(
        (status = 200, body = Vec<UserInfo>),
        (status = 403, description = "`forbidden`: not the admin key", body = ErrorResponse),
    ),
)]
pub(super) async fn list_users(state: web::Data<AppState>, caller: Caller) -> ApiResult {
    caller.require_admin()?;
    let users = state.storage.list_users().await?;
    let mut keys_by_user: HashMap<String, Vec<KeyInfo>> = HashMap::new();
    for key in state.storage.list_user_keys().await? {
        if let Some(user_id) = key.user_id {
            keys_by_user.entry(user_id).or_default().push(KeyInfo {
                key_id: key.key_id,
                created_at: clock::rfc3339(key.created_at),
                revoked_at: key.revoked_at.map(clock::rfc3339),
            });
        }
    }
    let infos: Vec<UserInfo> = users
        .into_iter()
        .map(|u| UserInfo {
            keys: keys_by_user.remove(&u.user_id).unwrap_or_default(),
            created_at: clock::rfc3339(u.created_at),
            user_id: u.user_id,
        })
        .collect();
    Ok(HttpResponse::Ok().json(infos))
}

/// Delete a user (admin key only), for good: its keys stop working and its open streams end at
/// once, its CLIs are stopped, and its sessions, history, keys and directory are removed. A user
/// created again with the same id starts with nothing.
#[utoipa::path(
    delete, path = "/api/v1/users/{user_id}", tag = "users",
    params(("user_id" = String, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "`forbidden`: not the admin key", body = ErrorResponse),
        (status = 404, description = "`user_not_found`", body = ErrorResponse),
    ),
)]
pub(super) async fn delete_user(state: web::Data<AppState>, caller: Caller, path: web::Path<String>) -> ApiResult {
    caller.require_admin()?;
    let user_id = path.into_inner();
    let sessions = state.storage.delete_user(&user_id).await?.ok_or(ApiError::UserNotFound)?;
    state.revocations.announce_everywhere(Revoked::User(user_id.clone()), &state.storage).await;
    state.sessions.retire(sessions, crate::actors::StopReason::UserDeleted);
    // Moved aside before answering, so a user created again at once gets a fresh directory;
    // removed once the CLIs (whose working directories are inside) have had time to stop.
    let root = state.sessions.users_root().to_path_buf();
    let moved = web::block(move || move_user_dir_aside(&root, &user_id))
        .await
        .map_err(|e| ApiError::Internal(format!("moving a deleted user's directory: {e}")))?;
    if let Some(moved) = moved {
        let stop_time = Duration::from_secs(2 * state.settings.cli.stop_grace + 1);
        actix_web::rt::spawn(remove_dir_later(moved, stop_time));
    }
    Ok(HttpResponse::NoContent().finish())
}

/// Names of deleted users' directories waiting for removal (a `user_id` never starts with `.`).
const DELETED_PREFIX: &str = ".deleted-";

/// Renames `<root>/<user_id>` to a unique hidden name beside it; `None` if it did not exist.
fn move_user_dir_aside(root: &Path, user_id: &str) -> Option<PathBuf> {
    let dir = root.join(user_id);
    let aside = root.join(format!("{DELETED_PREFIX}{user_id}-{}", uuid::Uuid::new_v4().simple()));
    match std::fs::rename(&dir, &aside) {
        Ok(()) => Some(aside),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            // Left in place: then at least its contents go now.
            log::error!("cannot move the deleted user's directory {} aside: {e}", dir.display());
            remove_dir(&dir);
            None
        }
    }
}

/// `remove_dir_all` does not follow symbolic links, so a link the agent left points nowhere.
fn remove_dir(dir: &Path) -> bool {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => {
            log::warn!("cannot remove the deleted user's directory {}: {e}", dir.display());
            false
        }
    }
}

async fn remove_dir_later(dir: PathBuf, stop_time: Duration) {
    tokio::time::sleep(stop_time).await;
    // A CLI still writing into it makes a removal fail now and then: try a few times.
    for _ in 0..5 {
        let target = dir.clone();
        if web::block(move || remove_dir(&target)).await.unwrap_or(false) {
            return;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// At start-up: removes directories of deleted users a previous run left (stopped before it
/// got to them), off the actor thread.
pub(crate) fn remove_leftover_user_dirs(root: &Path) {
    let root = root.to_path_buf();
    actix_web::rt::task::spawn_blocking(move || {
        let Ok(entries) = std::fs::read_dir(&root) else { return };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(DELETED_PREFIX) {
                remove_dir(&entry.path());
            }
        }
    });
}

/// Issue another key for a user (admin key only).
#[utoipa::path(
    post, path = "/api/v1/users/{user_id}/keys", tag = "users",
    params(("user_id" = String, Path)),
    responses(
        (status = 201, body = CreatedKey),
        (status = 403, description = "`forbidden`: not the admin key", body = ErrorResponse),
        (status = 404, description = "`user_not_found`", body = ErrorResponse),
    ),
)]
pub(super) async fn create_key(state: web::Data<AppState>, caller: Caller, path: web::Path<String>) -> ApiResult {
    caller.require_admin()?;
    let user_id = path.into_inner();
    if state.storage.get_user(&user_id).await?.is_none() {
        return Err(ApiError::UserNotFound);
    }
    let issued = keys::issue_key();
    state.storage.insert_key(&new_key_row(&user_id, &issued, clock::now_ms())).await?;
    Ok(HttpResponse::Created().json(CreatedKey { user_id, key_id: issued.key_id, api_key: issued.api_key }))
}

/// Revoke a key (admin key only); it stops working at once, on every instance, and the streams
/// opened with it on this instance end.
#[utoipa::path(
    delete, path = "/api/v1/users/{user_id}/keys/{key_id}", tag = "users",
    params(("user_id" = String, Path), ("key_id" = String, Path)),
    responses(
        (status = 204, description = "Revoked"),
        (status = 403, description = "`forbidden`: not the admin key", body = ErrorResponse),
        (status = 404, description = "`user_not_found`, or `not_found`: no such active key", body = ErrorResponse),
    ),
)]
pub(super) async fn revoke_key(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> ApiResult {
    caller.require_admin()?;
    let (user_id, key_id) = path.into_inner();
    if state.storage.get_user(&user_id).await?.is_none() {
        return Err(ApiError::UserNotFound);
    }
    if !state.storage.revoke_key(&user_id, &key_id, clock::now_ms()).await? {
        return Err(ApiError::NotFound("No such active key for this user".into()));
    }
    state.revocations.announce_everywhere(Revoked::Key(key_id), &state.storage).await;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Me {
    /// Null for the admin key and in `auth.mode = "none"`.
    user_id: Option<String>,
    /// `user`, `admin`, or `open` (`auth.mode = "none"`).
    #[schema(value_type = String, pattern = "^(user|admin|open)$")]
    role: &'static str,
}

/// Who the key belongs to.
#[utoipa::path(
    get, path = "/api/v1/me", tag = "users",
    responses((status = 200, body = Me)),
)]
pub(super) async fn get_me(caller: Caller) -> ApiResult {
    let me = match caller {
        Caller::User { user_id, .. } => Me { user_id: Some(user_id), role: "user" },
        Caller::Admin => Me { user_id: None, role: "admin" },
        Caller::Open => Me { user_id: None, role: "open" },
    };
    Ok(HttpResponse::Ok().json(me))
}
