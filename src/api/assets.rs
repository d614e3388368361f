//! `GET /assets/{name}`: the console's script and the libraries it vendors (marked, DOMPurify,
//! highlight.js; see `assets/README.md`), compiled into the binary so the console works
//! offline and loads nothing from outside the service.

use actix_web::http::header;
use actix_web::{HttpResponse, web};

use super::{ApiResult, resource};
use crate::error::ApiError;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/assets/{name}").route(web::get().to(get_asset)));
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
/// A vendored file's name carries its version: it never changes under the same name.
const FOREVER: &str = "public, max-age=31536000, immutable";
/// The console's own script changes with the binary: revalidate every time.
const REVALIDATE: &str = "no-cache";

struct Asset {
    name: &'static str,
    content_type: &'static str,
    cache: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset { name: "console.js", content_type: JS, cache: REVALIDATE, body: include_str!("assets/console.js") },
    Asset {
        name: "marked-18.2.1.min.js",
        content_type: JS,
        cache: FOREVER,
        body: include_str!("assets/marked-18.2.1.min.js"),
    },
    Asset {
        name: "purify-3.5.0.min.js",
        content_type: JS,
        cache: FOREVER,
        body: include_str!("assets/purify-3.5.0.min.js"),
    },
    Asset {
        name: "highlight-11.12.0.min.js",
        content_type: JS,
        cache: FOREVER,
        body: include_str!("assets/highlight-11.12.0.min.js"),
    },
    Asset {
        name: "highlight-github-11.12.0.min.css",
        content_type: CSS,
        cache: FOREVER,
        body: include_str!("assets/highlight-github-11.12.0.min.css"),
    },
];

/// One of the console's files, or the JSON 404 for any other name.
pub(super) async fn get_asset(name: web::Path<String>) -> ApiResult {
    let asset = ASSETS
        .iter()
        .find(|a| a.name == name.as_str())
        .ok_or_else(|| ApiError::NotFound(format!("No asset named {name}")))?;
    Ok(HttpResponse::Ok()
        .content_type(asset.content_type)
        .insert_header((header::CACHE_CONTROL, asset.cache))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .body(asset.body))
}
