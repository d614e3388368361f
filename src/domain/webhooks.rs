//! Webhook event types and the payload envelope (Standard Webhooks: `{type, timestamp, data}`).

use serde_json::{Map, Value};

/// The events a webhook can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WebhookEvent {
    TurnCompleted,
    TurnFailed,
    PermissionRequested,
    SessionIdle,
    SessionClosed,
    SessionExpired,
    BudgetReached,
}

impl WebhookEvent {
    pub const ALL: [WebhookEvent; 7] = [
        WebhookEvent::TurnCompleted,
        WebhookEvent::TurnFailed,
        WebhookEvent::PermissionRequested,
        WebhookEvent::SessionIdle,
        WebhookEvent::SessionClosed,
        WebhookEvent::SessionExpired,
        WebhookEvent::BudgetReached,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::TurnCompleted => "turn.completed",
            WebhookEvent::TurnFailed => "turn.failed",
            WebhookEvent::PermissionRequested => "permission.requested",
            WebhookEvent::SessionIdle => "session.idle",
            WebhookEvent::SessionClosed => "session.closed",
            WebhookEvent::SessionExpired => "session.expired",
            WebhookEvent::BudgetReached => "budget.reached",
        }
    }

    pub fn parse(name: &str) -> Option<WebhookEvent> {
        Self::ALL.into_iter().find(|e| e.as_str() == name)
    }

    /// The event a session's move to `status` is, if any.
    pub fn of_status(status: crate::domain::SessionStatus) -> Option<WebhookEvent> {
        use crate::domain::SessionStatus as S;
        match status {
            S::Idle => Some(WebhookEvent::SessionIdle),
            S::Closed => Some(WebhookEvent::SessionClosed),
            S::Expired => Some(WebhookEvent::SessionExpired),
            _ => None,
        }
    }
}

/// One event as the outbox stores it before it is matched to subscriptions: its payload
/// without the conversation's text, and with it (for hooks with `include_text`).
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    pub event: WebhookEvent,
    /// The `webhook-id` of its deliveries (`msg_<uuid>`), the same on every attempt.
    pub message_id: String,
    pub payload: String,
    pub payload_with_text: String,
}

impl OutboxEvent {
    /// `{type, timestamp, data}`; `text` fields are added to `data` in the text variant only.
    pub fn new(
        event: WebhookEvent,
        message_id: String,
        timestamp: String,
        data: Map<String, Value>,
        text: Map<String, Value>,
    ) -> Self {
        let envelope = |data: Map<String, Value>| {
            let mut body = Map::new();
            body.insert("type".into(), Value::from(event.as_str()));
            body.insert("timestamp".into(), Value::from(timestamp.clone()));
            body.insert("data".into(), Value::Object(data));
            Value::Object(body).to_string()
        };
        let mut with_text = data.clone();
        with_text.extend(text);
        OutboxEvent { event, message_id, payload: envelope(data), payload_with_text: envelope(with_text) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_text_is_only_in_the_text_variant() {
        for e in WebhookEvent::ALL {
            assert_eq!(WebhookEvent::parse(e.as_str()), Some(e));
        }
        assert_eq!(WebhookEvent::parse("turn.done"), None);
        let data = serde_json::json!({"session_id": "s"}).as_object().cloned().unwrap();
        let text = serde_json::json!({"text": "secret answer"}).as_object().cloned().unwrap();
        let e = OutboxEvent::new(WebhookEvent::TurnCompleted, "msg_1".into(), "t".into(), data, text);
        assert!(!e.payload.contains("secret answer"));
        assert!(e.payload_with_text.contains("secret answer"));
        let v: Value = serde_json::from_str(&e.payload).unwrap();
        assert_eq!(v["type"], "turn.completed");
        assert_eq!(v["data"]["session_id"], "s");
    }
}
