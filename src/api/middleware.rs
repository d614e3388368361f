//! One log line per request, with a request id (also sent back as `X-Request-Id`). The query
//! string is never logged (it may carry `access_token`), nor any header or body.

use std::time::Instant;

use actix_web::Error;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;

use crate::metrics::HttpLabels;

pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// A client's own id is kept when it is short and plain; otherwise a new one is made.
fn request_id(req: &ServiceRequest) -> String {
    req.headers()
        .get(&REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}

pub async fn log_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let id = request_id(&req);
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.path().to_owned();
    let result = next.call(req).await;
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    match result {
        Ok(mut res) => {
            if let Ok(value) = HeaderValue::from_str(&id) {
                res.headers_mut().insert(REQUEST_ID_HEADER, value);
            }
            // By route template (`/api/v1/sessions/{session_id}`), so ids do not explode the series.
            if let Some(state) = res.request().app_data::<actix_web::web::Data<crate::state::AppState>>() {
                let labels = HttpLabels::bounded(&method, res.request().match_pattern(), res.status().as_u16());
                state.metrics.http_requests.get_or_create(&labels).inc();
            }
            log::info!(target: "access", "{id} {method} {path} {} {elapsed_ms:.2}ms", res.status().as_u16());
            Ok(res)
        }
        Err(e) => {
            log::info!(target: "access", "{id} {method} {path} error {elapsed_ms:.2}ms: {e}");
            Err(e)
        }
    }
}
