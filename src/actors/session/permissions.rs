//! Tool approvals: the CLI's `can_use_tool` requests, answered at once for an always-allowed
//! tool, else asked of the client as a `permission_request` event until it answers or the
//! request times out. [`PermissionBroker`] keeps the books without the actor.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use actix::prelude::*;
use serde_json::{Value, json};

use super::SessionActor;
use crate::cli::protocol::{IncomingControlRequest, OutgoingControlResponse, to_line};
use crate::clock;
use crate::domain::frames as events;

/// An open tool-approval request, as `GET .../permissions` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PendingPermission {
    pub tool_name: String,
    pub tool_input: Value,
    pub asked_at: String,
}

/// The open requests of a session and the tools it always allows. `T` is the timer that
/// denies a request nobody answers (the actor's `SpawnHandle`): handed back to be cancelled
/// when the request is answered, cancelled or denied some other way.
#[derive(Debug)]
pub(super) struct PermissionBroker<T> {
    open: HashMap<String, (PendingPermission, T)>,
    /// Tools answered "allow" without asking the client (the session's allowed tools,
    /// including those the client chose to always allow).
    always_allowed: HashSet<String>,
}

/// Who answers a `can_use_tool`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Route {
    /// At once: the tool is always allowed.
    Allow,
    /// At once: nobody could answer.
    Deny(&'static str),
    /// The client, through a `permission_request` event.
    Ask,
}

/// What became of a request handed to [`PermissionBroker::open`].
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Opened<T> {
    /// Open until the client answers or its timer fires.
    Asked,
    /// Open, in place of an open request with the same id: this is that one's timer, to cancel.
    Replaced(T),
    /// Not open: no turn is running. Its timer is handed back, to cancel; deny it now.
    Refused(T),
}

/// A client's answer to an open request.
#[derive(Debug)]
pub(super) struct Answered<T> {
    /// Allow with this input, or deny with this message.
    pub(super) decision: Result<Value, String>,
    /// The tool the client now always allows, if it was not already (to be stored).
    pub(super) newly_always_allowed: Option<String>,
    /// The request's timer, to cancel.
    pub(super) timer: T,
}

impl<T> PermissionBroker<T> {
    pub(super) fn new(always_allowed: impl IntoIterator<Item = String>) -> Self {
        Self { open: HashMap::new(), always_allowed: always_allowed.into_iter().collect() }
    }

    pub(super) fn route(&self, tool_name: &str, turn_running: bool) -> Route {
        if self.always_allowed.contains(tool_name) {
            Route::Allow
        } else if !turn_running {
            Route::Deny("no turn is running")
        } else {
            Route::Ask
        }
    }

    /// A request the client was asked, with the timer that denies it, if a turn still runs
    /// once it is recorded: one that came (or whose turn ended) after the turn's end was
    /// denied with every open request, so it is refused here, to be denied at once. A request
    /// id asked again replaces the open request, whose timer is handed back to cancel (else it
    /// would deny the new one).
    pub(super) fn open(
        &mut self,
        request_id: String,
        request: PendingPermission,
        timer: T,
        turn_running: bool,
    ) -> Opened<T> {
        if !turn_running {
            return Opened::Refused(timer);
        }
        match self.open.insert(request_id, (request, timer)) {
            Some((_, replaced)) => Opened::Replaced(replaced),
            None => Opened::Asked,
        }
    }

    /// Removes an open request (the CLI cancelled it), with its timer.
    pub(super) fn take(&mut self, request_id: &str) -> Option<(PendingPermission, T)> {
        self.open.remove(request_id)
    }

    /// The request's timer fired: whether it was still open (and is now to be denied).
    pub(super) fn expire(&mut self, request_id: &str) -> bool {
        self.open.remove(request_id).is_some()
    }

    /// The client's answer: `None` if the request is not open (answered, cancelled, timed
    /// out, or never asked). Allowing uses the client's input if it gave one, else the
    /// CLI's; `always` allows the tool for the rest of the session.
    pub(super) fn answer(
        &mut self,
        request_id: &str,
        allow: bool,
        always: bool,
        message: Option<String>,
        updated_input: Option<Value>,
    ) -> Option<Answered<T>> {
        let (pending, timer) = self.open.remove(request_id)?;
        let mut newly_always_allowed = None;
        let decision = if allow {
            if always && self.always_allowed.insert(pending.tool_name.clone()) {
                newly_always_allowed = Some(pending.tool_name);
            }
            Ok(updated_input.unwrap_or(pending.tool_input))
        } else {
            Err(message.unwrap_or_else(|| "The user denied this tool use".into()))
        };
        Some(Answered { decision, newly_always_allowed, timer })
    }

    /// Closes every open request (to deny them all), with their timers.
    pub(super) fn drain(&mut self) -> Vec<(String, T)> {
        self.open.drain().map(|(id, (_, timer))| (id, timer)).collect()
    }

    pub(super) fn list(&self) -> Vec<(String, PendingPermission)> {
        self.open.iter().map(|(id, (p, _))| (id.clone(), p.clone())).collect()
    }
}

/// The answer to a `can_use_tool`: allow (with the input to use) or deny (with a message),
/// without interrupting the turn.
pub(super) fn response(decision: Result<Value, String>) -> Value {
    match decision {
        Ok(input) => json!({ "behavior": "allow", "updatedInput": input }),
        Err(message) => json!({ "behavior": "deny", "message": message, "interrupt": false }),
    }
}

impl SessionActor {
    /// `can_use_tool`: answered at once for a tool the client always allows, else a
    /// `permission_request` event that waits for `POST .../permissions/{id}` or the timeout.
    pub(super) fn on_permission_request(&mut self, req: IncomingControlRequest, ctx: &mut Context<Self>) {
        let tool_name = req.request.get("tool_name").and_then(Value::as_str).unwrap_or("").to_string();
        let input = req.request.get("input").cloned().unwrap_or(Value::Null);
        match self.permissions.route(&tool_name, self.turn.is_some()) {
            Route::Allow => return self.answer_permission(&req.request_id, Ok(input)),
            Route::Deny(why) => return self.answer_permission(&req.request_id, Err(why.into())),
            Route::Ask => {}
        }
        self.emit(events::permission_request(&req.request_id, &tool_name, &input), None, ctx);
        self.webhook_permission_requested(&req.request_id, &tool_name, &input);
        let request_id = req.request_id.clone();
        let pending = PendingPermission { tool_name, tool_input: input, asked_at: clock::rfc3339(clock::now_ms()) };
        let timer = self.timer(ctx, Duration::from_secs(self.settings.permissions.timeout), move |act, _| {
            if act.permissions.expire(&request_id) {
                act.answer_permission(&request_id, Err("nobody answered the permission request in time".into()));
            }
        });
        // Recording the request may have ended the turn (its events could not be stored).
        match self.permissions.open(req.request_id.clone(), pending, timer, self.turn.is_some()) {
            Opened::Asked => {}
            Opened::Replaced(old) => {
                log::debug!("session {}: permission request {} asked again", self.id, req.request_id);
                ctx.cancel_future(old);
            }
            Opened::Refused(timer) => {
                ctx.cancel_future(timer);
                self.answer_permission(&req.request_id, Err("the turn ended".into()));
            }
        }
    }

    /// Removes an open permission request and cancels its timer.
    pub(super) fn take_permission(&mut self, request_id: &str, ctx: &mut Context<Self>) -> Option<PendingPermission> {
        let (pending, timer) = self.permissions.take(request_id)?;
        ctx.cancel_future(timer);
        Some(pending)
    }

    /// Allow (with the input to use) or deny (with a message) one `can_use_tool`.
    pub(super) fn answer_permission(&self, request_id: &str, decision: Result<Value, String>) {
        self.write(to_line(&OutgoingControlResponse::success(request_id, response(decision))));
    }

    /// Denies every open request (the turn ended, or the session is stopping).
    pub(super) fn deny_pending(&mut self, why: &str, ctx: &mut Context<Self>) {
        let open = self.permissions.drain();
        for (_, timer) in &open {
            ctx.cancel_future(*timer);
        }
        for (id, _) in open {
            self.answer_permission(&id, Err(why.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(tool: &str, input: Value) -> PendingPermission {
        PendingPermission { tool_name: tool.into(), tool_input: input, asked_at: "t".into() }
    }

    fn broker() -> PermissionBroker<u32> {
        PermissionBroker::new(["Read".to_string()])
    }

    #[test]
    fn always_allowed_tools_are_answered_at_once_and_others_ask_the_client_during_a_turn() {
        let b = broker();
        assert_eq!(b.route("Read", true), Route::Allow);
        assert_eq!(b.route("Read", false), Route::Allow, "no client needed");
        assert_eq!(b.route("Bash", true), Route::Ask);
        assert_eq!(b.route("Bash", false), Route::Deny("no turn is running"), "nobody could answer");
    }

    #[test]
    fn an_allow_uses_the_clients_input_if_given_else_the_clis() {
        let mut b = broker();
        assert_eq!(b.open("r1".into(), asked("Bash", json!({"command": "ls"})), 1, true), Opened::Asked);
        assert_eq!(b.open("r2".into(), asked("Bash", json!({"command": "ls"})), 2, true), Opened::Asked);
        let a = b.answer("r1", true, false, None, Some(json!({"command": "pwd"}))).unwrap();
        assert_eq!((a.decision, a.newly_always_allowed, a.timer), (Ok(json!({"command": "pwd"})), None, 1));
        let a = b.answer("r2", true, false, None, None).unwrap();
        assert_eq!(a.decision, Ok(json!({"command": "ls"})));
        assert_eq!(b.route("Bash", true), Route::Ask, "allowed once, not always");
    }

    #[test]
    fn a_deny_carries_the_clients_message_or_a_default() {
        let mut b = broker();
        assert_eq!(b.open("r1".into(), asked("Bash", Value::Null), 1, true), Opened::Asked);
        assert_eq!(b.open("r2".into(), asked("Bash", Value::Null), 2, true), Opened::Asked);
        assert_eq!(b.answer("r1", false, true, Some("no".into()), None).unwrap().decision, Err("no".into()));
        let a = b.answer("r2", false, true, None, None).unwrap();
        assert_eq!(a.decision, Err("The user denied this tool use".into()));
        assert_eq!(a.newly_always_allowed, None, "a deny never allows the tool");
        assert_eq!(b.route("Bash", true), Route::Ask);
    }

    #[test]
    fn always_allow_answers_the_next_request_at_once_and_is_stored_once() {
        let mut b = broker();
        assert_eq!(b.open("r1".into(), asked("Bash", Value::Null), 1, true), Opened::Asked);
        assert_eq!(b.open("r2".into(), asked("Bash", Value::Null), 2, true), Opened::Asked);
        assert_eq!(b.answer("r1", true, true, None, None).unwrap().newly_always_allowed, Some("Bash".into()));
        assert_eq!(b.route("Bash", true), Route::Allow);
        let again = b.answer("r2", true, true, None, None).unwrap();
        assert_eq!(again.newly_always_allowed, None, "already allowed: nothing new to store");
    }

    #[test]
    fn a_request_is_answered_once_whoever_comes_first() {
        let mut b = broker();
        assert_eq!(b.open("r1".into(), asked("Bash", Value::Null), 7, true), Opened::Asked);
        assert_eq!(b.list().len(), 1);
        assert_eq!(b.answer("r1", true, false, None, None).unwrap().timer, 7, "its timer is handed back to cancel");
        assert!(!b.expire("r1"), "a timer that fires after the answer denies nothing");
        assert!(b.answer("r1", false, false, None, None).is_none(), "a second answer finds nothing");
        assert_eq!(b.open("r2".into(), asked("Bash", Value::Null), 8, true), Opened::Asked);
        assert!(b.expire("r2"), "nobody answered: the timer denies it");
        assert!(b.answer("r2", true, false, None, None).is_none(), "an answer after the timeout finds nothing");
        assert!(b.take("r2").is_none());
        assert!(b.list().is_empty());
    }

    #[test]
    fn the_turns_end_closes_every_open_request_with_its_timer() {
        let mut b = broker();
        assert_eq!(b.open("r1".into(), asked("Bash", Value::Null), 1, true), Opened::Asked);
        assert_eq!(b.open("r2".into(), asked("Edit", Value::Null), 2, true), Opened::Asked);
        let (cancelled, _) = b.take("r2").unwrap();
        assert_eq!(cancelled.tool_name, "Edit");
        assert_eq!(b.open("r3".into(), asked("Write", Value::Null), 3, true), Opened::Asked);
        let mut drained = b.drain();
        drained.sort();
        assert_eq!(drained, vec![("r1".to_string(), 1), ("r3".to_string(), 3)]);
        assert!(b.list().is_empty() && !b.expire("r1"));
    }

    #[test]
    fn a_request_recorded_once_the_turn_has_ended_is_refused_and_not_listed() {
        let mut b = broker();
        assert_eq!(b.open("r1".into(), asked("Bash", Value::Null), 1, true), Opened::Asked);
        assert_eq!(b.drain(), vec![("r1".to_string(), 1)], "the turn ends: r1 is denied");
        // r2 came while the turn was ending (its permission_request ended the turn, say).
        assert_eq!(b.open("r2".into(), asked("Bash", Value::Null), 2, false), Opened::Refused(2));
        assert!(b.list().is_empty(), "nothing is pending once no turn runs");
        assert!(!b.expire("r2"), "its timer (cancelled) would find nothing either");
        assert!(b.answer("r2", true, false, None, None).is_none(), "nor would a client's answer");
    }

    #[test]
    fn a_request_id_asked_again_replaces_the_open_one_and_hands_back_its_timer() {
        let mut b = broker();
        assert_eq!(b.open("r1".into(), asked("Bash", json!({"command": "ls"})), 1, true), Opened::Asked);
        assert_eq!(b.open("r1".into(), asked("Bash", json!({"command": "pwd"})), 2, true), Opened::Replaced(1));
        let listed = b.list();
        assert_eq!(listed.len(), 1, "one request per id");
        assert_eq!(listed[0].1.tool_input, json!({"command": "pwd"}), "the later request is the open one");
        let a = b.answer("r1", true, false, None, None).unwrap();
        assert_eq!((a.decision, a.timer), (Ok(json!({"command": "pwd"})), 2), "with the later request's timer");
    }

    #[test]
    fn the_cli_gets_allow_with_the_input_or_deny_without_an_interrupt() {
        assert_eq!(response(Ok(json!({"a": 1}))), json!({"behavior": "allow", "updatedInput": {"a": 1}}));
        assert_eq!(response(Err("no".into())), json!({"behavior": "deny", "message": "no", "interrupt": false}));
    }
}
