//! `/api/v1/sessions/{id}/files?path=…`: list or download (GET), upload (PUT), delete.

use std::sync::Arc;

use actix_web::body::SizedStream;
use actix_web::http::header::{self, Charset, ContentDisposition, DispositionParam, DispositionType, ExtendedValue};
use actix_web::{HttpResponse, web};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;
use utoipa::{IntoParams, ToSchema};

use super::{ApiResult, resource};
use crate::auth::Caller;
use crate::error::{ApiError, ErrorResponse};
use crate::sessions::files::{self, Entry, Target};
use crate::sessions::workspace::blocking;
use crate::state::AppState;

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
    /// Relative to the session's working directory (`""` = the directory itself); `..`,
    /// absolute links and links leading outside are refused.
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
    let dir = state.sessions.session_dir(&caller, &session).await?;
    let path = query.into_inner().path;
    match blocking(move || files::open(&dir, &path)).await? {
        Target::Dir(entries) => Ok(HttpResponse::Ok().json(entries)),
        Target::File { file, name, len } => {
            let mime = mime_guess::from_path(&name).first_or_octet_stream();
            // Streamed from the handle that was opened beneath the session directory; `take`
            // keeps the body at the announced length if the agent appends meanwhile.
            let reader = tokio::fs::File::from_std(file).take(len);
            let body = SizedStream::new(len, ReaderStream::new(reader));
            // Files are the agent's: never let a browser run them on the service's origin.
            Ok(HttpResponse::Ok()
                .content_type(mime.essence_str())
                .insert_header(attachment(&name))
                .insert_header(("X-Content-Type-Options", "nosniff"))
                .insert_header((header::CONTENT_SECURITY_POLICY, "sandbox"))
                .body(body))
        }
    }
}

/// `attachment; filename="<ASCII fallback>"; filename*=UTF-8''<name>` (RFC 6266): the
/// fallback has every character a quoted-string cannot carry replaced by `_`.
fn attachment(name: &str) -> ContentDisposition {
    let fallback: String = name
        .chars()
        .map(|c| if c == ' ' || (c.is_ascii_graphic() && c != '"' && c != '\\') { c } else { '_' })
        .collect();
    let mut parameters = vec![DispositionParam::Filename(fallback.clone())];
    if fallback != name {
        parameters.push(DispositionParam::FilenameExt(ExtendedValue {
            charset: Charset::Ext("UTF-8".into()),
            language_tag: None,
            value: name.as_bytes().to_vec(),
        }));
    }
    ContentDisposition { disposition: DispositionType::Attachment, parameters }
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
    let dir = state.sessions.session_dir(&caller, &session).await?;
    let path = query.into_inner().path;
    let target = path.clone();
    let (upload, file) = blocking(move || files::begin_upload(&dir, &target)).await?;
    let upload = Arc::new(upload);
    let internal = |e: std::io::Error| ApiError::Internal(format!("upload: {e}"));
    // tokio's File does its writes on the blocking pool.
    let mut file = tokio::fs::File::from_std(file);
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
        drop(file);
        let upload = upload.clone();
        blocking(move || upload.commit()).await
    }
    .await;
    if let Err(e) = outcome {
        let _ = blocking(move || {
            upload.abort();
            Ok(())
        })
        .await;
        return Err(e);
    }
    Ok(HttpResponse::Created().json(Uploaded { path, size: written }))
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
    let dir = state.sessions.session_dir(&caller, &session).await?;
    let path = query.into_inner().path;
    blocking(move || files::remove(&dir, &path)).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[cfg(test)]
mod tests {
    use super::attachment;
    use actix_web::http::header::TryIntoHeaderValue;

    #[test]
    fn content_disposition_is_a_valid_header_for_any_name() {
        let plain = attachment("notes.txt").try_into_value().unwrap();
        assert_eq!(plain.to_str().unwrap(), "attachment; filename=\"notes.txt\"");
        let odd = attachment("r\u{e9}sum\u{e9} \"x\"\n\u{1}\u{9}\\.txt").try_into_value().unwrap();
        assert_eq!(
            odd.to_str().unwrap(),
            "attachment; filename=\"r_sum_ _x_____.txt\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%22x%22%0A%01%09%5C.txt"
        );
    }
}
