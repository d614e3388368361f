//! Tool approvals: the CLI's `can_use_tool` requests, answered at once for an always-allowed
//! tool, else asked of the client as a `permission_request` event until it answers or the
//! request times out.

use std::time::Duration;

use actix::prelude::*;
use serde_json::{Value, json};

use super::SessionActor;
use crate::cli::protocol::{IncomingControlRequest, OutgoingControlResponse, to_line};
use crate::clock;
use crate::domain::frames as events;

impl SessionActor {

    /// `can_use_tool`: answered at once for a tool the client always allows, else a
    /// `permission_request` event that waits for `POST .../permissions/{id}` or the timeout.
    pub(super) fn on_permission_request(&mut self, req: IncomingControlRequest, ctx: &mut Context<Self>) {
        let tool_name = req.request.get("tool_name").and_then(Value::as_str).unwrap_or("").to_string();
        let input = req.request.get("input").cloned().unwrap_or(Value::Null);
        if self.always_allowed.contains(&tool_name) {
            self.answer_permission(&req.request_id, Ok(input));
            return;
        }
        if self.turn.is_none() {
            self.answer_permission(&req.request_id, Err("no turn is running".into()));
            return;
        }
        self.emit(events::permission_request(&req.request_id, &tool_name, &input), None, ctx);
        let request_id = req.request_id.clone();
        self.permissions.insert(
            req.request_id.clone(),
            PendingPermission { tool_name, tool_input: input, asked_at: clock::rfc3339(clock::now_ms()) },
        );
        let timer = self.timer(ctx, Duration::from_secs(self.settings.permissions.timeout), move |act, _| {
            act.permission_timers.remove(&request_id);
            if act.permissions.remove(&request_id).is_some() {
                act.answer_permission(&request_id, Err("nobody answered the permission request in time".into()));
            }
        });
        self.permission_timers.insert(req.request_id, timer);
    }

    /// Removes an open permission request and cancels its timer.
    pub(super) fn take_permission(&mut self, request_id: &str, ctx: &mut Context<Self>) -> Option<PendingPermission> {
        if let Some(timer) = self.permission_timers.remove(request_id) {
            ctx.cancel_future(timer);
        }
        self.permissions.remove(request_id)
    }

    /// Allow (with the input to use) or deny (with a message) one `can_use_tool`.
    pub(super) fn answer_permission(&self, request_id: &str, decision: Result<Value, String>) {
        let response = match decision {
            Ok(input) => json!({ "behavior": "allow", "updatedInput": input }),
            Err(message) => json!({ "behavior": "deny", "message": message, "interrupt": false }),
        };
        self.write(to_line(&OutgoingControlResponse::success(request_id, response)));
    }

    /// Denies every open request (the turn ended, or the session is stopping).
    pub(super) fn deny_pending(&mut self, why: &str, ctx: &mut Context<Self>) {
        for (_, timer) in self.permission_timers.drain() {
            ctx.cancel_future(timer);
        }
        let ids: Vec<String> = self.permissions.drain().map(|(id, _)| id).collect();
        for id in ids {
            self.answer_permission(&id, Err(why.to_string()));
        }
    }
}

/// An open tool-approval request, as `GET .../permissions` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PendingPermission {
    pub tool_name: String,
    pub tool_input: Value,
    pub asked_at: String,
}
