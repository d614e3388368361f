//! `/api/v1/sessions/{id}/files?path=…`: list or download (GET), upload (PUT), delete.

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use utoipa::{IntoParams, ToSchema};

use super::{ApiResult, resource};
use crate::auth::Caller;
use crate::error::{ApiError, ErrorResponse};
use crate::sessions::files::{self, Entry, Target};
use crate::startup::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/sessions/{session_id}/files")
            .route(web::get().to(get_file))
            .route(web::put().to(put_file))
            .route(web::delete().to(delete_file)),
    );
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct FileQuery {
    /// Relative to the session's working directory (`""` = the directory itself); `..` and
    /// links leading outside are refused.
    #[serde(default)]
    path: String,
}

/// A file's raw bytes, in a request or an answer.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)] // names the bytes' schema in the document; bodies are streamed, not built
pub(super) struct FileBytes(Vec<u8>);

/// List a directory (JSON) or download a file (its bytes, as an attachment).
#[utoipa::path(
    get, path = "/api/v1/sessions/{session_id}/files", tag = "files",
    params(("session_id" = String, Path), FileQuery),
    responses(
        (status = 200, description = "A directory's entries (JSON), or a file's bytes (its own content type)",
            content(
                (Vec<Entry> = "application/json"),
                (FileBytes = "*/*"),
            )),
        (status = 400, description = "`invalid_path`: the path leads outside the session's directory", body = ErrorResponse),
        (status = 404, description = "`session_not_found`, or `not_found` for a missing path", body = ErrorResponse),
    ),
)]
pub(super) async fn get_file(
    state: web::Data<AppState>,
    caller: Caller,
    session: web::Path<String>,
    query: web::Query<FileQuery>,
) -> ApiResult {
    let root = state.sessions.working_dir(&caller, &session).await?;
    match files::open(&root, &query.path)? {
        Target::Dir(entries) => Ok(HttpResponse::Ok().json(entries)),
        Target::File(path) => {
            let bytes = tokio::fs::read(&path).await.map_err(|e| ApiError::Internal(e.to_string()))?;
            let mime = mime_guess::from_path(&path).first_or_octet_stream();
            let name = path.file_name().map(|n| n.to_string_lossy().replace('"', "")).unwrap_or_default();
            // Files are the agent's: never let a browser run them on the service's origin.
            Ok(HttpResponse::Ok()
                .content_type(mime.essence_str())
                .insert_header((header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")))
                .insert_header(("X-Content-Type-Options", "nosniff"))
                .insert_header((header::CONTENT_SECURITY_POLICY, "sandbox"))
                .body(bytes))
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Uploaded {
    path: String,
    /// Bytes written.
    size: u64,
}

/// Upload a file (created or replaced; missing directories are created). The body is the
/// file's bytes (any content type), streamed to a temporary file and renamed into place, so a
/// failed or oversized upload leaves nothing behind.
#[utoipa::path(
    put, path = "/api/v1/sessions/{session_id}/files", tag = "files",
    params(("session_id" = String, Path), FileQuery),
    request_body(content = FileBytes, content_type = "*/*", description = "The file's bytes (any content type)"),
    responses(
        (status = 201, body = Uploaded),
        (status = 400, description = "`invalid_path`", body = ErrorResponse),
        (status = 404, description = "`session_not_found`", body = ErrorResponse),
        (status = 413, description = "`payload_too_large`: over `files.max_upload_mb`", body = ErrorResponse),
    ),
)]
pub(super) async fn put_file(
    state: web::Data<AppState>,
    caller: Caller,
    session: web::Path<String>,
    query: web::Query<FileQuery>,
    mut body: web::Payload,
) -> ApiResult {
    let limit = state.settings.files.max_upload_mb.saturating_mul(1024 * 1024);
    let root = state.sessions.working_dir(&caller, &session).await?;
    let target = files::upload_target(&root, &query.path)?;
    let tmp = target.with_file_name(format!(".upload-{}", uuid::Uuid::new_v4().simple()));
    let internal = |e: std::io::Error| ApiError::Internal(format!("upload: {e}"));
    let mut file = tokio::fs::File::create(&tmp).await.map_err(internal)?;
    let mut written: u64 = 0;
    let outcome: Result<(), ApiError> = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| ApiError::InvalidRequest(format!("cannot read the upload: {e}")))?;
            written += chunk.len() as u64;
            if written > limit {
                return Err(ApiError::PayloadTooLarge(format!(
                    "Uploads are limited to {} MiB (files.max_upload_mb)",
                    state.settings.files.max_upload_mb
                )));
            }
            file.write_all(&chunk).await.map_err(internal)?;
        }
        file.flush().await.map_err(internal)?;
        tokio::fs::rename(&tmp, &target).await.map_err(internal)
    }
    .await;
    if let Err(e) = outcome {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    Ok(HttpResponse::Created().json(Uploaded { path: query.into_inner().path, size: written }))
}

/// Delete a file or an empty directory.
#[utoipa::path(
    delete, path = "/api/v1/sessions/{session_id}/files", tag = "files",
    params(("session_id" = String, Path), FileQuery),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "`invalid_path`, or `invalid_request` for a directory that is not empty", body = ErrorResponse),
        (status = 404, description = "`session_not_found`, or `not_found` for a missing path", body = ErrorResponse),
    ),
)]
pub(super) async fn delete_file(
    state: web::Data<AppState>,
    caller: Caller,
    session: web::Path<String>,
    query: web::Query<FileQuery>,
) -> ApiResult {
    let root = state.sessions.working_dir(&caller, &session).await?;
    files::remove(&root, &query.path)?;
    Ok(HttpResponse::NoContent().finish())
}
