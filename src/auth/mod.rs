//! Who is calling: the [`Caller`] extractor every `/api/v1` handler asks for.

pub mod admin;
pub mod credentials;
pub mod credentials_key;
pub mod credentials_rotation;
pub mod key_cache;
pub mod keys;
pub mod limit;
pub mod revocation;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};

use crate::error::ApiError;
use crate::settings::AuthMode;
use crate::storage::Storage;
pub use admin::AdminKey;
use key_cache::KeyCache;
use limit::FailedAuthLimiter;

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A user key: acts as this user only. The key id lets its streams end when it is revoked.
    User { user_id: String, key_id: String },
    /// The admin key: may act for any user.
    Admin,
    /// `auth.mode = "none"`: the seed's trusted mode, the user comes from the request.
    Open,
}

impl Caller {
    /// The user a request acts for. A user key may omit `requested` or repeat its own id
    /// (another one is 403); admin and open callers must name one.
    pub fn acting_user(&self, requested: Option<&str>) -> Result<String, ApiError> {
        let requested = requested.filter(|u| !u.is_empty());
        match (self, requested) {
            (Caller::User { user_id: own, .. }, None) => Ok(own.clone()),
            (Caller::User { user_id: own, .. }, Some(other)) if other == own => Ok(own.clone()),
            (Caller::User { .. }, Some(_)) => {
                Err(ApiError::Forbidden("A user key can only act for its own user".into()))
            }
            (Caller::Admin | Caller::Open, Some(user)) => {
                if !crate::domain::ids::is_valid_user_id(user) {
                    return Err(ApiError::validation("user_id", crate::domain::ids::USER_ID_RULE));
                }
                Ok(user.to_string())
            }
            (Caller::Admin | Caller::Open, None) => Err(ApiError::validation("user_id", "is required")),
        }
    }

    /// The user whose resources a listing may show: a user key sees only its own
    /// (naming another is 403); admin and open callers see all unless they filter.
    pub fn visible_user(&self, requested: Option<&str>) -> Result<Option<String>, ApiError> {
        match self {
            Caller::User { .. } => self.acting_user(requested).map(Some),
            Caller::Admin | Caller::Open => Ok(requested.filter(|u| !u.is_empty()).map(str::to_string)),
        }
    }

    /// Whether the caller may see a resource owned by `owner`. A foreign session must look
    /// exactly like a missing one, so callers turn `false` into a 404.
    pub fn may_access(&self, owner: &str) -> bool {
        match self {
            Caller::User { user_id, .. } => user_id == owner,
            Caller::Admin | Caller::Open => true,
        }
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Open => Err(ApiError::Forbidden("User management needs auth.mode = \"api_key\"".into())),
            Caller::User { .. } => Err(ApiError::Forbidden("This needs the admin key".into())),
        }
    }
}

/// What authentication needs at request time. Registered as its own app data, so the `Caller`
/// extractor does not depend on the application state (which holds it).
#[derive(Clone)]
pub struct Authenticator {
    pub storage: Storage,
    pub mode: AuthMode,
    pub admin: AdminKey,
    pub failed_auth: Arc<FailedAuthLimiter>,
    /// `api.trusted_proxies`, parsed.
    pub trusted_proxies: Arc<[ipnet::IpNet]>,
    /// Keys verified a moment ago; the one [`revocation::Revocations`] drops revoked keys from.
    pub keys: Arc<KeyCache>,
}

impl Authenticator {
    /// Resolves a presented key to a caller. Every failure is the same 401, so a client cannot
    /// tell a revoked key from an unknown one. A `client` address past its allowance of failures
    /// gets 429 `rate_limited` instead, for any key (a missing key is not a guess: not counted).
    pub async fn authenticate(&self, presented: Option<&str>, client: Option<IpAddr>) -> Result<Caller, ApiError> {
        if self.mode == AuthMode::None {
            return Ok(Caller::Open);
        }
        let presented = presented.ok_or_else(|| {
            ApiError::Unauthorized("Missing API key: send `Authorization: Bearer <key>` or `X-API-Key`".into())
        })?;
        if let Some(retry_after_secs) = client.and_then(|ip| self.failed_auth.limited(ip)) {
            return Err(ApiError::RateLimited { retry_after_secs });
        }
        match self.check_key(presented).await {
            Err(ApiError::Unauthorized(message)) => match client.and_then(|ip| self.failed_auth.failed(ip)) {
                Some(retry_after_secs) => Err(ApiError::RateLimited { retry_after_secs }),
                None => Err(ApiError::Unauthorized(message)),
            },
            other => other,
        }
    }

    /// The same per-address limit for a secret outside the key table (the metrics token):
    /// `correct` is whether the presented secret matched.
    pub fn admit(&self, client: Option<IpAddr>, correct: bool, refusal: ApiError) -> Result<(), ApiError> {
        if let Some(retry_after_secs) = client.and_then(|ip| self.failed_auth.limited(ip)) {
            return Err(ApiError::RateLimited { retry_after_secs });
        }
        if correct {
            return Ok(());
        }
        match client.and_then(|ip| self.failed_auth.failed(ip)) {
            Some(retry_after_secs) => Err(ApiError::RateLimited { retry_after_secs }),
            None => Err(refusal),
        }
    }

    async fn check_key(&self, presented: &str) -> Result<Caller, ApiError> {
        let invalid = || ApiError::Unauthorized("Invalid or revoked API key".into());
        let hash = keys::hash_key(presented);
        if let AdminKey::Configured { hash: admin_hash } = &self.admin
            && keys::hashes_match(&hash, admin_hash)
        {
            return Ok(Caller::Admin);
        }
        let key_id = keys::key_id_of(presented).ok_or_else(invalid)?;
        let now = Instant::now();
        if let Some((key_hash, caller)) = self.keys.get(key_id, now) {
            // The stored hash never changes: a wrong secret is refused as storage would refuse it.
            return if keys::hashes_match(&hash, &key_hash) { Ok(caller) } else { Err(invalid()) };
        }
        let ticket = self.keys.ticket();
        let row = self.storage.find_key(key_id).await?.ok_or_else(invalid)?;
        if row.revoked_at.is_some() || !keys::hashes_match(&hash, &row.key_hash) {
            return Err(invalid());
        }
        let caller = match (row.is_admin, row.user_id) {
            (true, _) if matches!(self.admin, AdminKey::Stored) => Caller::Admin,
            (false, Some(user_id)) => Caller::User { user_id, key_id: row.key_id },
            _ => return Err(invalid()),
        };
        self.keys.insert(ticket, key_id, &row.key_hash, caller.clone(), now);
        Ok(caller)
    }
}

/// The key a request carries: `Authorization: Bearer <key>` or `X-API-Key: <key>`; on the
/// events stream also `?access_token=<key>` (EventSource cannot send headers).
pub fn presented_key(req: &HttpRequest) -> Option<String> {
    header_key(req).map(str::to_owned).or_else(|| {
        if req.method() != actix_web::http::Method::GET || !req.path().ends_with("/events") {
            return None;
        }
        web::Query::<AccessToken>::from_query(req.query_string()).ok().and_then(|q| q.0.access_token)
    })
}

#[derive(serde::Deserialize)]
struct AccessToken {
    access_token: Option<String>,
}

fn header_key(req: &HttpRequest) -> Option<&str> {
    let headers = req.headers();
    if let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let mut parts = value.splitn(2, ' ');
        if let (Some(scheme), Some(token)) = (parts.next(), parts.next())
            && scheme.eq_ignore_ascii_case("bearer")
        {
            return Some(token.trim()).filter(|t| !t.is_empty());
        }
    }
    headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim).filter(|t| !t.is_empty())
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Caller, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let authenticator = req.app_data::<web::Data<Authenticator>>().cloned();
        let presented = presented_key(req);
        let client = authenticator.as_ref().and_then(|a| limit::client_address(req, &a.trusted_proxies));
        Box::pin(async move {
            let authenticator = authenticator.ok_or_else(|| ApiError::Internal("authenticator missing".into()))?;
            authenticator.authenticate(presented.as_deref(), client).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_keys_act_only_for_their_user() {
        let c = Caller::User { user_id: "alice".into(), key_id: "k1".into() };
        assert_eq!(c.acting_user(None).unwrap(), "alice");
        assert_eq!(c.acting_user(Some("alice")).unwrap(), "alice");
        assert_eq!(c.acting_user(Some("bob")).unwrap_err().code(), "forbidden");
        assert!(c.may_access("alice") && !c.may_access("bob"));
        assert_eq!(Caller::Admin.acting_user(None).unwrap_err().code(), "validation_error");
        assert_eq!(Caller::Open.acting_user(Some("../x")).unwrap_err().code(), "validation_error");
    }
}
