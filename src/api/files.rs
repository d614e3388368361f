//! `/api/v1/sessions/{id}/files?path=…`: list or download (GET), upload (PUT), delete.

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use super::{ApiResult, resource};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::sessions::files::{self, Target};
use crate::startup::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/sessions/{session_id}/files")
            .route(web::get().to(get_file))
            .route(web::put().to(put_file))
            .route(web::delete().to(delete_file)),
    );
}

#[derive(Debug, Deserialize)]
struct FileQuery {
    #[serde(default)]
    path: String,
}

async fn get_file(
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

/// The body is the file's bytes (any content type), streamed to a temporary file and renamed
/// into place, so a failed or oversized upload leaves nothing behind.
async fn put_file(
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
    Ok(HttpResponse::Created().json(serde_json::json!({ "path": query.path, "size": written })))
}

async fn delete_file(
    state: web::Data<AppState>,
    caller: Caller,
    session: web::Path<String>,
    query: web::Query<FileQuery>,
) -> ApiResult {
    let root = state.sessions.working_dir(&caller, &session).await?;
    files::remove(&root, &query.path)?;
    Ok(HttpResponse::NoContent().finish())
}
