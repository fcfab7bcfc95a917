//! The WebSocket transport: `GET /v1/ws` on `coderclaw serve` upgrades to a
//! socket carrying JSON text messages, one request or reply per message,
//! many tasks at once (see `docs/websocket.md`).
//!
//! A client sends `{"id": ..., "op": "submit", "task": {...}}` and friends
//! ([`Op`]); the server answers each with `{"type": "result", "id", "result"}`
//! or `{"type": "error", "id", "error": {"code", "message"}}` (the REST
//! API's codes), and sends a subscription's events as
//! `{"type": "event", "subscription", "event"}`, then
//! `{"type": "end", "subscription"}` after the final status.
//!
//! - [`server`]: the upgrade behind the REST API's authentication, with
//!   per-socket bounds (in-flight requests, subscriptions, message size) and
//!   a slow reader disconnected rather than buffered.
//! - [`WsTransport`]: the [`crate::Transport`] over one socket.

mod client;
pub mod server;

pub use client::WsTransport;

use coderclaw_core::task::{TaskFilter, TaskSubmitRequest, TaskUpdateEvent};
use coderclaw_tasks::RuntimeError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The subprotocol both ends speak; a browser offers it together with
/// `coderclaw.bearer.<token>` (it cannot send an `Authorization` header),
/// and the server answers with this one only.
pub const SUBPROTOCOL: &str = "coderclaw.v1";

/// The prefix of the subprotocol that carries a browser's session token.
pub const BEARER_SUBPROTOCOL_PREFIX: &str = "coderclaw.bearer.";

/// Longest request id echoed back (a string of at most this many bytes, or
/// a number).
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// One operation a client asks for (the `op` field and its parameters).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
pub enum Op {
    /// Submit a task; the result is its state (PENDING), durable.
    Submit {
        /// What to run.
        task: TaskSubmitRequest,
    },
    /// A task's state.
    Get {
        /// The task.
        task_id: String,
    },
    /// Tasks matching the filter, newest first.
    List {
        /// Which tasks (default: this session's, at most 100).
        #[serde(default)]
        filter: TaskFilter,
    },
    /// A page of a task's history.
    Events {
        /// The task.
        task_id: String,
        /// Events after this sequence number.
        #[serde(default)]
        after: u64,
        /// At most this many (1 to 1000, default 1000).
        #[serde(default)]
        limit: Option<u32>,
    },
    /// Follow a task: its events from the first, then live, sent as
    /// `event` messages under this request's id until `end`.
    Subscribe {
        /// The task.
        task_id: String,
    },
    /// Stop following (the subscribe request's id).
    Unsubscribe {
        /// The id of the `subscribe` request.
        subscription: Value,
    },
    /// Cancel a task; the result is `{"cancelled": bool, "task": state}`.
    Cancel {
        /// The task.
        task_id: String,
    },
    /// Give up a task this session submitted, saying why; the result is
    /// `{"abandoned": bool, "task": state}`.
    Abandon {
        /// The task.
        task_id: String,
        /// Why (kept with the task and in the audit record).
        reason: String,
    },
    /// Answer a WAITING task's question.
    Respond {
        /// The task.
        task_id: String,
        /// The answer.
        answer: String,
    },
    /// Hold a PENDING task in the queue.
    Pause {
        /// The task.
        task_id: String,
    },
    /// Release a paused task.
    Resume {
        /// The task.
        task_id: String,
    },
    /// Installed skills.
    Skills,
    /// Installed agents.
    Agents,
    /// Health and load.
    Status,
}

/// A client's message: an id it chooses (echoed in the reply) and an op.
#[derive(Debug, Clone, Serialize)]
pub struct Request {
    /// Echoed in the reply: a string or a number.
    pub id: Value,
    /// What to do.
    #[serde(flatten)]
    pub op: Op,
}

/// What the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ServerMessage {
    /// A request succeeded.
    Result {
        /// The request's id.
        id: Value,
        /// The answer (see [`Op`]).
        result: Value,
    },
    /// A request failed; `id` is null when the message had no readable id.
    Error {
        /// The request's id.
        id: Value,
        /// The code and what to do.
        error: RuntimeError,
    },
    /// One event of a subscription.
    Event {
        /// The subscribe request's id.
        subscription: Value,
        /// The event.
        event: TaskUpdateEvent,
    },
    /// A subscription ended: after the final status, on `unsubscribe`, or
    /// with `error` when it could not go on.
    End {
        /// The subscribe request's id.
        subscription: Value,
        /// Why it ended early, if it did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<RuntimeError>,
    },
}

/// The id of a message that will not be answered otherwise (one over the
/// size limit), so the refusal reaches the call that sent it; null when it
/// has none. Other fields are skipped, not kept.
pub fn request_id(text: &str) -> Value {
    #[derive(Deserialize)]
    struct IdOnly {
        id: Option<Value>,
    }
    match serde_json::from_str::<IdOnly>(text) {
        Ok(IdOnly { id: Some(id @ Value::Number(_)) }) => id,
        Ok(IdOnly { id: Some(Value::String(s)) }) if s.len() <= MAX_REQUEST_ID_BYTES => Value::String(s),
        _ => Value::Null,
    }
}

/// Reads a client's message: its id (when readable) and its op, or the
/// error to answer it with.
pub fn parse_request(text: &str) -> (Value, Result<Op, String>) {
    let mut object = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(o)) => o,
        Ok(_) => return (Value::Null, Err("a message is a JSON object with `id` and `op`".into())),
        Err(e) => return (Value::Null, Err(format!("the message is not JSON: {e}"))),
    };
    let id = match object.remove("id") {
        Some(id @ Value::Number(_)) => id,
        Some(Value::String(s)) if s.len() <= MAX_REQUEST_ID_BYTES => Value::String(s),
        Some(Value::String(_)) => {
            return (Value::Null, Err(format!("`id` is longer than {MAX_REQUEST_ID_BYTES} bytes")));
        }
        Some(_) => return (Value::Null, Err("`id` must be a string or a number".into())),
        None => return (Value::Null, Err("the message has no `id`: every request carries one".into())),
    };
    let op = serde_json::from_value::<Op>(Value::Object(object)).map_err(|e| {
        format!(
            "not a request this server knows: {e} (ops: submit, get, list, events, subscribe, unsubscribe, \
             cancel, abandon, respond, pause, resume, skills, agents, status)"
        )
    });
    (id, op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_parse_with_their_ids_and_bad_ones_say_why() {
        let (id, op) = parse_request(r#"{"id": "a1", "op": "get", "taskId": "t"}"#);
        assert_eq!((id, op.unwrap()), (json!("a1"), Op::Get { task_id: "t".into() }));
        let (id, op) = parse_request(r#"{"id": 7, "op": "status"}"#);
        assert_eq!((id, op.unwrap()), (json!(7), Op::Status));
        let (id, op) = parse_request(r#"{"id": 7, "op": "get", "taskId": "t", "extra": 1}"#);
        assert_eq!(id, json!(7));
        assert!(op.unwrap_err().contains("extra"));
        let (id, op) = parse_request(r#"{"id": 8, "op": "launch"}"#);
        assert_eq!(id, json!(8));
        assert!(op.unwrap_err().contains("launch"));
        for bad in ["[1]", "{nope", r#"{"op": "status"}"#, r#"{"id": {}, "op": "status"}"#] {
            let (id, op) = parse_request(bad);
            assert_eq!(id, Value::Null, "{bad}");
            assert!(op.is_err(), "{bad}");
        }
        let long = format!(r#"{{"id": "{}", "op": "status"}}"#, "x".repeat(MAX_REQUEST_ID_BYTES + 1));
        assert!(parse_request(&long).1.unwrap_err().contains("longer"));
    }

    #[test]
    fn an_oversized_requests_id_is_found_without_keeping_the_rest() {
        let text = format!(r#"{{"op": "submit", "task": {{"input": "{}"}}, "id": 9}}"#, "x".repeat(1000));
        assert_eq!(request_id(&text), json!(9));
        assert_eq!(request_id("{nope"), Value::Null);
        assert_eq!(request_id(r#"{"id": [1]}"#), Value::Null);
    }

    #[test]
    fn a_request_serialises_to_what_the_server_parses() {
        let req = Request { id: json!(3), op: Op::Events { task_id: "t".into(), after: 4, limit: Some(5) } };
        let text = serde_json::to_string(&req).unwrap();
        assert_eq!(parse_request(&text), (json!(3), Ok(req.op)));
    }
}
