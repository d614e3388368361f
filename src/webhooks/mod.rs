//! Signed webhooks (Standard Webhooks): subscriptions (`/api/v1/webhooks`), their outbox in
//! the database (rows written with the events, see `storage::webhooks`), the delivery worker
//! and the SSRF rules for targets. A user's hooks get their own sessions' events; the admin's
//! hooks without a user get every user's.

pub mod budget;
pub mod sign;
pub mod target;
mod worker;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use worker::{DeliveryWorker, backoff_ms};

use crate::auth::Caller;
use crate::auth::credentials_key::CredentialsKey;
use crate::clock;
use crate::domain::webhooks::WebhookEvent;
use crate::error::ApiError;
use crate::settings::Settings;
use crate::storage::{DeliveryRow, Storage, WebhookRow};

/// Hooks one owner (a user, or the admin's for everyone) may have.
const MAX_HOOKS_PER_OWNER: usize = 20;
/// Deliveries `GET …/deliveries` shows at most (newest first).
pub const MAX_DELIVERIES_LISTED: i64 = 1000;

pub use crate::auth::credentials_key::webhook_secret_aad as secret_aad;

/// `POST /webhooks` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// Where deliveries are POSTed: http or https; internal addresses are refused unless the
    /// host is in `webhooks.allowed_hosts`.
    pub url: String,
    /// Any of `turn.completed`, `turn.failed`, `permission.requested`, `session.idle`,
    /// `session.closed`, `session.expired`, `budget.reached`.
    pub events: Vec<String>,
    /// A Standard Webhooks secret `whsec_<base64 of 24-64 bytes>`; generated when left out
    /// (and shown in this answer only).
    pub secret: Option<String>,
    /// Put the conversation's text in the payloads (the user's message and the answer, a
    /// tool's input); false by default: ids and small fields only.
    #[serde(default)]
    pub include_text: bool,
    /// Whose sessions' events: the admin may name a user (else the hook gets every user's
    /// events); a user key may name only its own user.
    pub user_id: Option<String>,
}

/// A webhook as the API shows it (never its secret, except once in the create answer).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Webhook {
    pub webhook_id: String,
    /// Whose sessions' events it gets; null: every user's (the admin's hook).
    pub user_id: Option<String>,
    pub url: String,
    pub events: Vec<String>,
    pub include_text: bool,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// The signing secret: in the answer to `POST` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// One delivery (an event to this hook) and how its attempts went.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Delivery {
    /// The `webhook-id` header: the same on every attempt (deduplicate on it).
    pub message_id: String,
    pub event_type: String,
    /// `pending`, `delivered` or `failed` (retried for `webhooks.max_retry_hours`).
    pub status: String,
    pub attempts: i64,
    /// The last attempt's HTTP status, if it got an answer.
    pub last_status_code: Option<i64>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// RFC 3339, UTC: when a pending delivery is tried next.
    pub next_attempt_at: Option<String>,
    pub delivered_at: Option<String>,
    pub created_at: String,
}

impl From<DeliveryRow> for Delivery {
    fn from(d: DeliveryRow) -> Self {
        Delivery {
            message_id: d.message_id,
            event_type: d.event_type,
            next_attempt_at: if d.status == crate::storage::PENDING {
                d.next_attempt_at.map(clock::rfc3339)
            } else {
                None
            },
            status: d.status,
            attempts: d.attempts,
            last_status_code: d.last_status_code,
            last_error: d.last_error,
            delivered_at: d.delivered_at.map(clock::rfc3339),
            created_at: clock::rfc3339(d.created_at),
        }
    }
}

fn shown(row: WebhookRow, secret: Option<String>) -> Webhook {
    Webhook {
        events: row.event_names(),
        webhook_id: row.webhook_id,
        user_id: row.user_id,
        url: row.url,
        include_text: row.include_text,
        created_at: clock::rfc3339(row.created_at),
        secret,
    }
}

/// The subscriptions, as the handlers manage them.
#[derive(Clone)]
pub struct Webhooks {
    storage: Storage,
    key: CredentialsKey,
    settings: Arc<Settings>,
}

impl Webhooks {
    pub fn new(storage: Storage, key: CredentialsKey, settings: Arc<Settings>) -> Self {
        Self { storage, key, settings }
    }

    /// Creates a hook for the caller (or, for the admin, the user named or everyone).
    pub async fn create(&self, caller: &Caller, body: CreateWebhook) -> Result<Webhook, ApiError> {
        let owner = match caller {
            Caller::User { .. } => Some(caller.acting_user(body.user_id.as_deref())?),
            Caller::Admin | Caller::Open => match body.user_id.as_deref().filter(|u| !u.is_empty()) {
                Some(user) => {
                    let user = caller.acting_user(Some(user))?;
                    if self.storage.get_user(&user).await?.is_none() && matches!(caller, Caller::Admin) {
                        return Err(ApiError::UserNotFound);
                    }
                    Some(user)
                }
                None => None,
            },
        };
        if body.events.is_empty() {
            return Err(ApiError::validation("events", "name at least one event"));
        }
        let mut events = Vec::with_capacity(body.events.len());
        for name in &body.events {
            events.push(WebhookEvent::parse(name).ok_or_else(|| ApiError::UnknownWebhookEvent(name.clone()))?);
        }
        if url::Url::parse(&body.url).is_err() {
            return Err(ApiError::validation("url", "must be an http(s) URL"));
        }
        target::check(&body.url, &self.settings.webhooks.allowed_hosts)
            .await
            .map_err(|refused| ApiError::WebhookTargetRefused(refused.0))?;
        let secret = match body.secret {
            Some(secret) => {
                sign::secret_key(&secret).map_err(|why| ApiError::validation("secret", why))?;
                secret
            }
            None => sign::generate_secret().map_err(ApiError::Internal)?,
        };
        if self.storage.list_webhooks(owner.as_deref()).await?.iter().filter(|h| h.user_id == owner).count()
            >= MAX_HOOKS_PER_OWNER
        {
            return Err(ApiError::validation("body", format!("at most {MAX_HOOKS_PER_OWNER} webhooks per owner")));
        }
        let webhook_id = format!("wh_{}", uuid::Uuid::new_v4().simple());
        let sealed_secret = self.key.seal(&secret_aad(&webhook_id), secret.as_bytes()).map_err(ApiError::Internal)?;
        let row = WebhookRow {
            webhook_id,
            user_id: owner,
            url: body.url,
            events: WebhookRow::events_column(&events),
            sealed_secret,
            include_text: body.include_text,
            created_at: clock::now_ms(),
        };
        self.storage.insert_webhook(&row).await?;
        log::info!(
            "webhook {} created for {} ({})",
            row.webhook_id,
            row.user_id.as_deref().unwrap_or("every user"),
            row.event_names().join(", ")
        );
        Ok(shown(row, Some(secret)))
    }

    /// The caller's hooks (the admin: every hook, or a user's with `user_id`).
    pub async fn list(&self, caller: &Caller, user_id: Option<&str>) -> Result<Vec<Webhook>, ApiError> {
        let user = caller.visible_user(user_id)?;
        let rows = self.storage.list_webhooks(user.as_deref()).await?;
        Ok(rows.into_iter().map(|r| shown(r, None)).collect())
    }

    /// A hook the caller may see; another user's (or the admin's for everyone, to a user) is
    /// 404 exactly like a missing one.
    async fn visible(&self, caller: &Caller, webhook_id: &str) -> Result<WebhookRow, ApiError> {
        let missing = || ApiError::NotFound("Webhook not found".into());
        let row = self.storage.get_webhook(webhook_id).await?.ok_or_else(missing)?;
        match (caller, &row.user_id) {
            (Caller::Admin | Caller::Open, _) => Ok(row),
            (Caller::User { user_id, .. }, Some(owner)) if owner == user_id => Ok(row),
            (Caller::User { .. }, _) => Err(missing()),
        }
    }

    pub async fn get(&self, caller: &Caller, webhook_id: &str) -> Result<Webhook, ApiError> {
        Ok(shown(self.visible(caller, webhook_id).await?, None))
    }

    /// Deletes a hook with its delivery log (pending deliveries are not sent).
    pub async fn delete(&self, caller: &Caller, webhook_id: &str) -> Result<(), ApiError> {
        let row = self.visible(caller, webhook_id).await?;
        if self.storage.delete_webhook(&row.webhook_id).await? {
            log::info!("webhook {} deleted", row.webhook_id);
        }
        Ok(())
    }

    /// The hook's latest deliveries, newest first.
    pub async fn deliveries(&self, caller: &Caller, webhook_id: &str, limit: i64) -> Result<Vec<Delivery>, ApiError> {
        let row = self.visible(caller, webhook_id).await?;
        let rows = self.storage.list_deliveries(&row.webhook_id, limit.clamp(1, MAX_DELIVERIES_LISTED)).await?;
        Ok(rows.into_iter().map(Delivery::from).collect())
    }
}
