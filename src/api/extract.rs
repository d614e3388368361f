//! Request extractors whose every failure is one of our JSON errors (never actix's plain text):
//! a JSON body with field paths for 422, and query strings.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::error::{PayloadError, QueryPayloadError};
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, FieldError};

/// A JSON request body. An empty body counts as `{}` so `curl -X POST` works where every
/// field is optional; a required field then gives a 422 naming it. A body without
/// `Content-Type` is read as JSON, as the seed (FastAPI) did; one that declares another type
/// is 415.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

/// The largest body `JsonBody` reads, set from `api.max_body_kb`.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let limit = req.app_data::<BodyLimit>().map(|l| l.0).unwrap_or(1024 * 1024);
        let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let declared_len = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        // Read here with our limit, not through `web::Bytes`, whose default `PayloadConfig`
        // (256 KiB) would cap every body below `api.max_body_kb`.
        let mut payload = payload.take();
        Box::pin(async move {
            if declared_len.is_some_and(|n| n > limit) {
                return Err(too_large(limit));
            }
            let mut bytes = web::BytesMut::with_capacity(declared_len.unwrap_or(0).min(limit));
            while let Some(chunk) = payload.next().await {
                let chunk = chunk.map_err(|e| match e {
                    PayloadError::Overflow => too_large(limit),
                    e => ApiError::InvalidRequest(format!("cannot read the request body: {e}")),
                })?;
                if bytes.len() + chunk.len() > limit {
                    return Err(too_large(limit));
                }
                bytes.extend_from_slice(&chunk);
            }
            let data: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { &bytes };
            if data != b"{}" && content_type.as_deref().is_some_and(|ct| !ct.trim().is_empty() && !is_json(ct)) {
                return Err(ApiError::UnsupportedMediaType("Content-Type must be application/json".into()));
            }
            // Syntax first (400), then shape (422 with the field's path).
            let json: serde_json::Value =
                serde_json::from_slice(data).map_err(|e| ApiError::InvalidRequest(format!("Malformed JSON: {e}")))?;
            let value = serde_path_to_error::deserialize(json).map_err(|e| {
                let path = e.path().to_string();
                let message = e.into_inner().to_string();
                ApiError::Validation(vec![FieldError::new(field_of(&path, &message), message)])
            })?;
            Ok(JsonBody(value))
        })
    }
}

/// The field a deserialisation error is about. A missing field is reported at its parent, so
/// its name is taken from the message (serde's "missing field `name`").
fn field_of(path: &str, message: &str) -> String {
    let parent = if path.is_empty() || path == "." { "" } else { path };
    let missing = message.strip_prefix("missing field `").and_then(|rest| rest.split('`').next());
    match (parent, missing) {
        ("", Some(name)) => name.to_string(),
        (parent, Some(name)) => format!("{parent}.{name}"),
        ("", None) => "body".to_string(),
        (parent, None) => parent.to_string(),
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::PayloadTooLarge(format!("Request body is larger than {} KiB", limit / 1024))
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Query-string errors as 422 with the message serde gives.
pub fn query_error(err: QueryPayloadError, _: &HttpRequest) -> actix_web::Error {
    let message = match &err {
        QueryPayloadError::Deserialize(e) => e.to_string(),
        other => other.to_string(),
    };
    ApiError::Validation(vec![FieldError::query("query", message)]).into()
}

/// Path-segment errors: the resource does not exist under that name.
pub fn path_error(err: actix_web::error::PathError, _: &HttpRequest) -> actix_web::Error {
    ApiError::NotFound(format!("No such resource: {err}")).into()
}
