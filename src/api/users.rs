//! `/api/v1/users` (admin key only) and `/api/v1/me`.

use std::collections::HashMap;

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiResult, resource};
use crate::api::extract::JsonBody;
use crate::auth::{Caller, keys};
use crate::clock;
use crate::error::{ApiError, ErrorResponse};
use crate::sessions::workspace::validate_user_id;
use crate::startup::AppState;
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

/// Delete a user (admin key only): its keys stop working at once and its sessions are closed
/// (their rows and files are kept).
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
    let closed = state.storage.delete_user(&path, clock::now_ms()).await?.ok_or(ApiError::UserNotFound)?;
    state.sessions.retire(closed, crate::actors::StopReason::UserDeleted);
    Ok(HttpResponse::NoContent().finish())
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

/// Revoke a key (admin key only); it stops working at once, on every instance.
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
        Caller::User(user_id) => Me { user_id: Some(user_id), role: "user" },
        Caller::Admin => Me { user_id: None, role: "admin" },
        Caller::Open => Me { user_id: None, role: "open" },
    };
    Ok(HttpResponse::Ok().json(me))
}
