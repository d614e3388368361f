//! The delivery worker: leases due outbox rows, POSTs each with the Standard Webhooks headers
//! (one attempt at most `webhooks.timeout`, no redirects followed, to the addresses checked
//! against the SSRF rules at this attempt), and records the outcome: a 2xx is delivered,
//! anything else is retried with exponential backoff until `webhooks.max_retry_hours` have
//! passed since the event, then the row is `failed`. Woken by the storage's outbox bell when
//! a commit adds rows, and every `webhooks.poll_interval` otherwise, so rows left by a previous
//! run (or another instance's expired lease) are picked up.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{sign, target};
use crate::auth::credentials_key::CredentialsKey;
use crate::clock;
use crate::metrics::Metrics;
use crate::settings::WebhookSettings;
use crate::storage::{DeliveryRow, Storage, WebhookRow};

/// Rows leased per round (they are sent concurrently).
const BATCH: i64 = 32;
/// How long a leased row is ours: longer than an attempt can take.
const LEASE_MS: i64 = 120_000;
/// Multiples of `retry_base_ms` for the 1st, 2nd, … retry (5 s, 30 s, 2 min, 6 min, 12 min,
/// 24 min, 1 h with the default base); later ones wait as long as the last.
const BACKOFF: [u64; 7] = [1, 6, 24, 72, 144, 288, 720];
const MAX_BACKOFF_MS: u64 = 3_600_000;
/// The least a round waits when a due row is leased by another instance.
const MIN_WAIT: Duration = Duration::from_millis(100);
/// How often the delivery log is pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
const DAY_MS: i64 = 86_400_000;
/// `budget.reached` marks outlive the longest period (a month) and then some.
const MARKS_KEPT_DAYS: i64 = 62;
/// At most this much of an error is kept in the delivery log.
const MAX_ERROR_CHARS: usize = 300;

/// The delay before retry number `retry` (1-based).
pub fn backoff_ms(base_ms: u64, retry: i64) -> u64 {
    let step = BACKOFF[(retry.max(1) as usize - 1).min(BACKOFF.len() - 1)];
    base_ms.saturating_mul(step).min(MAX_BACKOFF_MS.max(base_ms))
}

/// The running worker: `stop` ends it after the round in progress (no lease is left behind).
pub struct DeliveryWorker {
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Clone)]
struct Ctx {
    storage: Storage,
    key: CredentialsKey,
    settings: Arc<WebhookSettings>,
    metrics: Arc<Metrics>,
}

impl DeliveryWorker {
    pub fn start(
        storage: Storage,
        key: CredentialsKey,
        settings: WebhookSettings,
        metrics: Arc<Metrics>,
    ) -> DeliveryWorker {
        let (stop, stopped) = watch::channel(false);
        let ctx = Ctx { storage, key, settings: Arc::new(settings), metrics };
        let task = actix_web::rt::spawn(run(ctx, stopped));
        DeliveryWorker { stop, task: Some(task) }
    }

    /// Ends the worker and waits for it (at most one attempt's timeout).
    pub async fn stop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

async fn run(ctx: Ctx, mut stopped: watch::Receiver<bool>) {
    let bell = ctx.storage.outbox_bell();
    let poll = Duration::from_secs(ctx.settings.poll_interval.max(1));
    let mut pruned: Option<tokio::time::Instant> = None;
    loop {
        if *stopped.borrow() {
            break;
        }
        if pruned.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            pruned = Some(tokio::time::Instant::now());
            prune(&ctx).await;
        }
        let batch = match ctx.storage.claim_deliveries(clock::now_ms(), LEASE_MS, BATCH).await {
            Ok(batch) => batch,
            Err(e) => {
                log::warn!("webhooks: cannot read the outbox: {e}");
                Vec::new()
            }
        };
        let full = batch.len() as i64 == BATCH;
        futures_util::future::join_all(batch.into_iter().map(|(d, h)| attempt(&ctx, d, h))).await;
        if full {
            continue;
        }
        let wait = match ctx.storage.next_delivery_due().await {
            Ok(Some(at)) => Duration::from_millis((at - clock::now_ms()).max(0) as u64).clamp(MIN_WAIT, poll),
            _ => poll,
        };
        tokio::select! {
            () = bell.notified() => {}
            () = tokio::time::sleep(wait) => {}
            _ = stopped.changed() => break,
        }
    }
}

/// Drops what the delivery log keeps no longer (`webhooks.log_retention_days`), and the
/// `budget.reached` marks of periods long over.
async fn prune(ctx: &Ctx) {
    let now = clock::now_ms();
    let days = ctx.settings.log_retention_days;
    let before = if days == 0 { i64::MIN } else { now - days as i64 * DAY_MS };
    match ctx.storage.prune_deliveries(before, now - MARKS_KEPT_DAYS * DAY_MS).await {
        Ok(0) => {}
        Ok(n) => log::info!("webhooks: removed {n} delivery log entries older than {days} days"),
        Err(e) => log::warn!("webhooks: cannot prune the delivery log: {e}"),
    }
}

/// One attempt of one delivery, and its outcome recorded.
async fn attempt(ctx: &Ctx, d: DeliveryRow, hook: WebhookRow) {
    let outcome = send(ctx, &d, &hook).await;
    let now = clock::now_ms();
    let (delivered, code, error, next) = match outcome {
        Ok(code) => {
            log::debug!("webhook {}: {} {} delivered ({code})", hook.webhook_id, d.event_type, d.message_id);
            (true, Some(code), None, None)
        }
        Err((code, why)) => {
            let retry_at = now + backoff_ms(ctx.settings.retry_base_ms, d.attempts + 1) as i64;
            let give_up_at = d.created_at + ctx.settings.max_retry_hours as i64 * 3_600_000;
            let next = (retry_at <= give_up_at).then_some(retry_at);
            let why: String = why.chars().take(MAX_ERROR_CHARS).collect();
            match next {
                Some(at) => log::info!(
                    "webhook {}: {} {} attempt {} failed ({why}); next at {}",
                    hook.webhook_id,
                    d.event_type,
                    d.message_id,
                    d.attempts + 1,
                    clock::rfc3339(at)
                ),
                None => log::warn!(
                    "webhook {}: {} {} failed for good after {} attempts ({why})",
                    hook.webhook_id,
                    d.event_type,
                    d.message_id,
                    d.attempts + 1
                ),
            }
            (false, code, Some(why), next)
        }
    };
    ctx.metrics.webhook_attempt(match (delivered, next) {
        (true, _) => "delivered",
        (false, Some(_)) => "retried",
        (false, None) => "failed",
    });
    if let Err(e) = ctx.storage.record_attempt(d.id, delivered, code, error, next, now).await {
        // The lease runs out and the row is tried again: at least once, never lost.
        log::warn!("webhook {}: cannot record the attempt of {}: {e}", hook.webhook_id, d.message_id);
    }
}

/// POSTs the delivery: the answer's status if 2xx, else the status (if any) and why.
async fn send(ctx: &Ctx, d: &DeliveryRow, hook: &WebhookRow) -> Result<i64, (Option<i64>, String)> {
    let fail = |why: String| -> (Option<i64>, String) { (None, why) };
    let secret = ctx.key.open(&super::secret_aad(&hook.webhook_id), &hook.sealed_secret).map_err(fail)?;
    let secret = String::from_utf8(secret).map_err(|_| fail("the stored secret is not text".into()))?;
    let key = sign::secret_key(&secret).map_err(fail)?;
    let timeout = Duration::from_secs(ctx.settings.timeout.max(1));
    // Checked at every attempt, and the connection goes to the addresses checked.
    let target = tokio::time::timeout(timeout, target::check(&hook.url, &ctx.settings.allowed_hosts))
        .await
        .map_err(|_| fail("resolving the host timed out".into()))?
        .map_err(|refused| fail(format!("target refused: {refused}")))?;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(timeout)
        .resolve_to_addrs(&target.host, &target.addrs)
        .user_agent(concat!("claude-agent-http/", env!("CARGO_PKG_VERSION"), " webhooks"))
        .build()
        .map_err(|e| fail(format!("HTTP client: {e}")))?;
    let timestamp = clock::now_ms() / 1000;
    let signature = sign::signature(&key, &d.message_id, timestamp, &d.payload).map_err(fail)?;
    let answer = client
        .post(target.url)
        .header("content-type", "application/json")
        .header("webhook-id", &d.message_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(d.payload.clone())
        .send()
        .await
        .map_err(|e| fail(describe(&e)))?;
    let code = i64::from(answer.status().as_u16());
    if answer.status().is_success() { Ok(code) } else { Err((Some(code), format!("answered {code}"))) }
}

/// A transport error with its causes.
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() { "timed out".to_string() } else { e.to_string() };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_up_to_an_hour() {
        let delays: Vec<u64> = (1..=9).map(|n| backoff_ms(5000, n)).collect();
        assert_eq!(delays, [5_000, 30_000, 120_000, 360_000, 720_000, 1_440_000, 3_600_000, 3_600_000, 3_600_000]);
        assert_eq!(backoff_ms(100, 2), 600, "a test's short base scales the same way");
    }
}
