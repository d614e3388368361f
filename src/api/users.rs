//! `/api/v1/users` (admin key only) and `/api/v1/me`.

use std::collections::HashMap;

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};

use super::{ApiResult, resource};
use crate::api::extract::JsonBody;
use crate::auth::{Caller, keys};
use crate::clock;
use crate::error::ApiError;
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    user_id: String,
}

#[derive(Debug, Serialize)]
struct CreatedUser {
    user_id: String,
    api_key: String,
    key_id: String,
}

#[derive(Debug, Serialize)]
struct CreatedKey {
    user_id: String,
    key_id: String,
    api_key: String,
}

#[derive(Debug, Serialize)]
struct KeyInfo {
    key_id: String,
    created_at: String,
    revoked_at: Option<String>,
}

#[derive(Debug, Serialize)]
struct UserInfo {
    user_id: String,
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

async fn create_user(state: web::Data<AppState>, caller: Caller, JsonBody(body): JsonBody<CreateUser>) -> ApiResult {
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

async fn list_users(state: web::Data<AppState>, caller: Caller) -> ApiResult {
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

async fn delete_user(state: web::Data<AppState>, caller: Caller, path: web::Path<String>) -> ApiResult {
    caller.require_admin()?;
    let closed = state.storage.delete_user(&path, clock::now_ms()).await?.ok_or(ApiError::UserNotFound)?;
    state.sessions.retire(closed, crate::actors::StopReason::UserDeleted);
    Ok(HttpResponse::NoContent().finish())
}

async fn create_key(state: web::Data<AppState>, caller: Caller, path: web::Path<String>) -> ApiResult {
    caller.require_admin()?;
    let user_id = path.into_inner();
    if state.storage.get_user(&user_id).await?.is_none() {
        return Err(ApiError::UserNotFound);
    }
    let issued = keys::issue_key();
    state.storage.insert_key(&new_key_row(&user_id, &issued, clock::now_ms())).await?;
    Ok(HttpResponse::Created().json(CreatedKey { user_id, key_id: issued.key_id, api_key: issued.api_key }))
}

async fn revoke_key(state: web::Data<AppState>, caller: Caller, path: web::Path<(String, String)>) -> ApiResult {
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

#[derive(Debug, Serialize)]
struct Me {
    user_id: Option<String>,
    role: &'static str,
}

async fn get_me(caller: Caller) -> ApiResult {
    let me = match caller {
        Caller::User(user_id) => Me { user_id: Some(user_id), role: "user" },
        Caller::Admin => Me { user_id: None, role: "admin" },
        Caller::Open => Me { user_id: None, role: "open" },
    };
    Ok(HttpResponse::Ok().json(me))
}
