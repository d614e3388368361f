//! Any instance answers any request. One for a session whose lease another live instance
//! holds goes to that instance (its advertised URL), with `cluster.secret`, and its answer
//! streams back as it comes: SSE frames unbuffered, `id:` intact. A request forwarded to us is
//! served here and never forwarded again. When the owner does not answer (it died and its
//! lease has not run out yet), the request waits for the lease to run out and is served here:
//! the session is taken over and its CLI resumed from the transcript.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap, HeaderName};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, ResponseError, web};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use ipnet::IpNet;

use crate::actors::cluster::Cluster;
use crate::auth::limit::ForwardedBy;
use crate::error::{ApiError, MOVED_HEADER, Owner};
use crate::storage::Storage;

/// The instance-to-instance secret.
pub const SECRET_HEADER: HeaderName = HeaderName::from_static("x-cluster-secret");
/// The forwarding instance's id (for the owner's log).
pub const FROM_HEADER: HeaderName = HeaderName::from_static("x-cluster-from");
/// The client's address as the forwarding instance saw it (rate limits stay per client).
pub const CLIENT_HEADER: HeaderName = HeaderName::from_static("x-cluster-client");

/// How often a request for a session whose owner does not answer looks whether the lease ran out.
const LEASE_POLL: Duration = Duration::from_millis(250);

pub struct Forwarder {
    cluster: Arc<Cluster>,
    storage: Storage,
    secret: String,
    client: reqwest::Client,
    /// Bodies up to this size are kept (to find the session in, and to send on); bigger ones
    /// stream through.
    max_kept_body: usize,
    trusted_proxies: Arc<[IpNet]>,
    forwarded: AtomicU64,
    /// Owners looked up a moment ago (a turn forwarded is not one more database read): an
    /// entry goes when its owner fails to answer or answers that it is not the owner any more.
    owners: std::sync::Mutex<HashMap<String, (Owner, Instant)>>,
}

/// Entries of the owners' cache at most: past it the cache starts again empty.
const MAX_CACHED_OWNERS: usize = 10_000;

impl Forwarder {
    pub fn new(
        cluster: Arc<Cluster>,
        storage: Storage,
        secret: String,
        max_kept_body: usize,
        trusted_proxies: Arc<[IpNet]>,
    ) -> Result<Forwarder, String> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| format!("cannot build the forwarding client: {e}"))?;
        Ok(Forwarder {
            cluster,
            storage,
            secret,
            client,
            max_kept_body,
            trusted_proxies,
            forwarded: AtomicU64::new(0),
            owners: Default::default(),
        })
    }

    /// Requests sent on to the instance owning their session.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }

    /// The client address a request forwarded by a peer carries, if its secret is right.
    fn forwarded_client(&self, headers: &HeaderMap) -> Option<IpAddr> {
        let given = headers.get(SECRET_HEADER)?;
        let matches = subtle::ConstantTimeEq::ct_eq(given.as_bytes(), self.secret.as_bytes());
        if self.secret.is_empty() || !bool::from(matches) {
            return None;
        }
        headers.get(CLIENT_HEADER)?.to_str().ok()?.parse().ok()
    }

    /// Sends the request to `base` and streams its answer back; `Err` when the owner cannot
    /// be reached (nothing was sent then).
    async fn send(
        &self,
        req: &HttpRequest,
        base: &str,
        body: reqwest::Body,
        client: Option<IpAddr>,
    ) -> Result<HttpResponse, reqwest::Error> {
        let target =
            format!("{}{}", base.trim_end_matches('/'), req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"));
        let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes()).unwrap_or(reqwest::Method::GET);
        let mut out = self.client.request(method, target);
        for (name, value) in req.headers() {
            if !hop_by_hop(name) && !is_cluster_header(name) && name != header::HOST && name != header::CONTENT_LENGTH {
                out = out.header(name.as_str(), value.as_bytes());
            }
        }
        out = out.header(SECRET_HEADER.as_str(), &self.secret).header(FROM_HEADER.as_str(), self.cluster.instance_id());
        if let Some(ip) = client {
            out = out.header(CLIENT_HEADER.as_str(), ip.to_string());
        }
        let answer = out.body(body).send().await?;
        self.forwarded.fetch_add(1, Ordering::Relaxed);
        let mut response =
            HttpResponse::build(StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY));
        for (name, value) in answer.headers() {
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name.as_str().as_bytes()), header::HeaderValue::from_bytes(value.as_bytes()))
                && !hop_by_hop(&name)
                && name != header::CONTENT_LENGTH
            {
                response.append_header((name, value));
            }
        }
        // Each chunk as it arrives (an SSE frame is written by the owner at once). A break
        // mid-way aborts the client's connection: it reconnects (with Last-Event-ID) rather
        // than reading a cut answer as whole.
        let chunks = futures_util::stream::unfold(answer, |mut answer| async move {
            match answer.chunk().await {
                Ok(Some(chunk)) => Some((Ok::<Bytes, actix_web::Error>(chunk), answer)),
                Ok(None) => None,
                Err(e) => {
                    Some((Err(actix_web::error::ErrorBadGateway(format!("the owner instance went away: {e}"))), answer))
                }
            }
        });
        Ok(response.streaming(chunks))
    }

    /// Resolves once `owner` no longer holds a live lease on the session.
    async fn lease_leaves(&self, session_id: &str, owner: &str) {
        let every = self.cluster.lease_poll();
        loop {
            tokio::time::sleep(every).await;
            if self.cluster.owns(session_id) {
                return;
            }
            match self.lookup(session_id).await {
                Some(o) if o.instance_id == owner => {}
                _ => {
                    self.forget(session_id);
                    return;
                }
            }
        }
    }

    /// The owner of `session_id` if another live instance holds its lease: as looked up less
    /// than a third of the lease TTL ago, or from the database.
    async fn owner_of(&self, session_id: &str) -> Option<Owner> {
        if self.cluster.owns(session_id) {
            return None;
        }
        let fresh_for = self.cluster.lease_ttl() / 3;
        if let Some((owner, at)) = self.cached().get(session_id)
            && at.elapsed() < fresh_for
        {
            return Some(owner.clone());
        }
        let owner = self.lookup(session_id).await;
        let mut cache = self.cached();
        match &owner {
            Some(o) => {
                if cache.len() >= MAX_CACHED_OWNERS {
                    cache.clear();
                }
                cache.insert(session_id.to_string(), (o.clone(), Instant::now()));
            }
            None => {
                cache.remove(session_id);
            }
        }
        owner
    }

    fn cached(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Owner, Instant)>> {
        self.owners.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn forget(&self, session_id: &str) {
        self.cached().remove(session_id);
    }

    /// The owner of `session_id` in the database, if another live instance holds its lease.
    async fn lookup(&self, session_id: &str) -> Option<Owner> {
        match self.storage.owner_elsewhere(session_id, self.cluster.instance_id()).await {
            Ok(Some((instance_id, Some(url)))) => Some(Owner { instance_id, url }),
            Ok(_) => None,
            Err(e) => {
                // Served here: its own storage calls answer 503 if the database is away.
                log::debug!("session {session_id}: owner not looked up: {e}");
                None
            }
        }
    }
}

/// Which session a request is for, as far as the forwarding layer can tell.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// `/api/v1/sessions/{id}` and everything below it.
    Session(String),
    /// A chat whose JSON body names the session.
    ChatBody,
    /// A request that may start a CLI for a session found while it runs (OpenAI's chat):
    /// sent on only if that session turns out to be another instance's.
    Any,
    None,
}

fn target(method: &Method, path: &str) -> Target {
    if let Some(rest) = path.strip_prefix("/api/v1/sessions/") {
        let id = rest.split('/').next().unwrap_or("");
        if !id.is_empty() {
            return Target::Session(id.to_string());
        }
    }
    match (method, path) {
        (&Method::POST, "/api/v1/chat" | "/api/v1/chat/stream") => Target::ChatBody,
        (&Method::POST, "/v1/chat/completions") => Target::Any,
        _ => Target::None,
    }
}

/// `session_id` of a chat request's JSON body.
fn session_in(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Named {
        session_id: String,
    }
    serde_json::from_slice::<Named>(body).ok().map(|n| n.session_id)
}

fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

fn is_cluster_header(name: &HeaderName) -> bool {
    *name == SECRET_HEADER || *name == FROM_HEADER || *name == CLIENT_HEADER
}

/// Whether the whole body is small enough to keep (a known length under the cap, or none).
fn keepable(req: &ServiceRequest, cap: usize) -> bool {
    match req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok()) {
        Some(n) => n <= cap,
        None => !req.headers().contains_key(header::TRANSFER_ENCODING),
    }
}

async fn read_body(payload: &mut Payload, cap: usize) -> Result<Bytes, ApiError> {
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::InvalidRequest(format!("cannot read the request body: {e}")))?;
        if body.len() + chunk.len() > cap {
            return Err(ApiError::PayloadTooLarge(format!("the request body is over {cap} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// A request body that streams on to the owner (an upload bigger than what is kept).
fn streamed_body(payload: Payload) -> reqwest::Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    actix_web::rt::spawn(async move {
        let mut payload = payload;
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| std::io::Error::other(e.to_string()));
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    reqwest::Body::wrap_stream(stream)
}

/// The middleware (innermost of the app's): see the module's comment.
pub async fn to_owner(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(fwd) = req.app_data::<web::Data<Forwarder>>().cloned() else {
        return next.call(req).await.map(ServiceResponse::map_into_boxed_body);
    };
    if let Some(client) = fwd.forwarded_client(req.headers()) {
        // A peer sent it: served here, whatever this instance knows of the session.
        req.extensions_mut().insert(ForwardedBy(client));
        return next.call(req).await.map(ServiceResponse::map_into_boxed_body);
    }
    let target = target(req.method(), req.path());
    if target == Target::None {
        return next.call(req).await.map(ServiceResponse::map_into_boxed_body);
    }
    let client = crate::auth::limit::client_address(req.request(), &fwd.trusted_proxies);
    let kept = if keepable(&req, fwd.max_kept_body) {
        let mut payload = req.take_payload();
        match read_body(&mut payload, fwd.max_kept_body).await {
            Ok(body) => Some(body),
            Err(e) => return Ok(req.into_response(e.error_response())),
        }
    } else {
        None
    };
    let session = match &target {
        Target::Session(id) => Some(id.clone()),
        Target::ChatBody => kept.as_deref().and_then(session_in),
        Target::Any | Target::None => None,
    };
    if let Some(id) = &session {
        let deadline = tokio::time::Instant::now() + fwd.cluster.lease_ttl() + Duration::from_secs(2);
        let mut moves = 0;
        while let Some(owner) = fwd.owner_of(id).await {
            let body = match &kept {
                Some(b) => reqwest::Body::from(b.clone()),
                None => streamed_body(req.take_payload()),
            };
            // A paused owner accepts the connection and never answers: once its lease is
            // gone the request is served here (or by the new owner) instead.
            let answer = tokio::select! {
                answer = fwd.send(req.request(), &owner.url, body, client) => answer,
                () = fwd.lease_leaves(id, &owner.instance_id) => {
                    log::warn!("session {id}: owner {} did not answer and lost the lease", owner.instance_id);
                    if kept.is_none() {
                        let refused = ApiError::SessionElsewhere { owner: owner.instance_id, url: None };
                        return Ok(req.into_response(refused.error_response()));
                    }
                    continue;
                }
            };
            match answer {
                // Not the owner any more (it lost the lease): looked up again, sent again.
                Ok(response) if response.headers().contains_key(MOVED_HEADER) && kept.is_some() && moves < 2 => {
                    moves += 1;
                    fwd.forget(id);
                    tokio::time::sleep(LEASE_POLL / 5).await;
                }
                Ok(response) => return Ok(req.into_response(response)),
                // A body already streamed cannot be sent again.
                Err(e) if kept.is_none() || tokio::time::Instant::now() >= deadline => {
                    log::warn!("session {id}: owner {} at {} unreachable: {e}", owner.instance_id, owner.url);
                    let refused = ApiError::SessionElsewhere { owner: owner.instance_id, url: None };
                    return Ok(req.into_response(refused.error_response()));
                }
                Err(e) => {
                    // Dead or restarting: its lease runs out within the TTL, then it is ours.
                    fwd.forget(id);
                    log::debug!("session {id}: owner {} unreachable ({e}); waiting for its lease", owner.instance_id);
                    tokio::time::sleep(LEASE_POLL).await;
                }
            }
        }
    }
    if let Some(body) = &kept {
        req.set_payload(Payload::from(body.clone()));
    }
    let res = next.call(req).await?;
    // The session was taken by another instance between the look-up and the launch: the
    // request goes there (with the body it had).
    let owner = res.response().extensions().get::<Owner>().cloned();
    if let (Some(owner), Some(body)) = (owner, kept) {
        let (request, refused) = res.into_parts();
        return match fwd.send(&request, &owner.url, reqwest::Body::from(body), client).await {
            Ok(response) => Ok(ServiceResponse::new(request, response)),
            Err(e) => {
                log::warn!("owner {} at {} unreachable: {e}", owner.instance_id, owner.url);
                Ok(ServiceResponse::new(request, refused.map_into_boxed_body()))
            }
        };
    }
    Ok(res.map_into_boxed_body())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_is_read_from_the_path_or_a_chat_body() {
        assert_eq!(target(&Method::GET, "/api/v1/sessions/abc/events"), Target::Session("abc".into()));
        assert_eq!(target(&Method::DELETE, "/api/v1/sessions/abc"), Target::Session("abc".into()));
        assert_eq!(target(&Method::POST, "/api/v1/sessions"), Target::None);
        assert_eq!(target(&Method::GET, "/api/v1/sessions/"), Target::None);
        assert_eq!(target(&Method::POST, "/api/v1/chat/stream"), Target::ChatBody);
        assert_eq!(target(&Method::GET, "/api/v1/chat"), Target::None);
        assert_eq!(target(&Method::POST, "/v1/chat/completions"), Target::Any);
        assert_eq!(target(&Method::GET, "/health"), Target::None);
        assert_eq!(session_in(br#"{"session_id":"s1","message":"hi"}"#).as_deref(), Some("s1"));
        assert_eq!(session_in(b"not json"), None);
    }

    #[test]
    fn hop_by_hop_and_cluster_headers_are_not_sent_on() {
        assert!(hop_by_hop(&header::CONNECTION));
        assert!(hop_by_hop(&header::TRANSFER_ENCODING));
        assert!(!hop_by_hop(&header::AUTHORIZATION));
        assert!(is_cluster_header(&SECRET_HEADER));
        assert!(!is_cluster_header(&header::HeaderName::from_static("last-event-id")));
    }
}
