//! The schemas of a delta-encoding v1 stream's events, for the OpenAPI
//! document.
//!
//! OpenAPI 3.1 reads a `text/event-stream` response's `schema` as the schema
//! of one event. An event is modelled as an object: `id` (what a reader
//! resumes after with `Last-Event-ID`), `event` (its name; `message` when the
//! server sent none) and `data` (its text). Each kind of event is a
//! component of its own whose `data` names the JSON it holds with
//! `contentMediaType` and `contentSchema`, so a client generator gets a type
//! per event, and the end-to-end suite checks every event of real streams
//! against these schemas (`tests/e2e/stream.rs`).

use confab_domain::{ErrorCode, EventName, TEXT_PATH};
use serde_json::{Map, Value, json};

/// A component reference.
fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// An event named `name` (`None`: sent without a name) whose `data` is the
/// JSON `content` describes.
fn event(description: &str, name: Option<EventName>, content: &Value) -> Value {
    let (event, required) = match name {
        Some(n) => (json!({ "const": n.as_str() }), json!(["event", "data"])),
        None => (json!({ "const": "message" }), json!(["data"])),
    };
    json!({
        "type": "object",
        "description": description,
        "required": required,
        "properties": {
            "id": { "type": "string", "description": "Resume after this event with `Last-Event-ID`." },
            "event": event,
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": content,
            }
        },
        "additionalProperties": false
    })
}

/// A JSON object with exactly these properties, the listed ones required.
fn object(description: &str, required: &[&str], properties: &Value) -> Value {
    json!({
        "type": "object",
        "description": description,
        "required": required,
        "properties": properties,
        "additionalProperties": false
    })
}

fn conversation_id() -> Value {
    json!({ "type": "string", "format": "uuid", "description": "The conversation the stream belongs to." })
}

/// The kind of a plain event's data (`type`).
fn kind(value: &str) -> Value {
    json!({ "const": value })
}

/// The stream's components: every event and the JSON its data holds.
fn components() -> Vec<(&'static str, Value)> {
    let delta = Some(EventName::Delta);
    // The API's codes as clients see them (their serde spelling).
    let codes: Vec<String> = ErrorCode::ALL.iter().map(ToString::to_string).collect();
    vec![
        (
            "DeltaEncodingEvent",
            event(
                "The stream's first event: the delta encoding in use.",
                Some(EventName::DeltaEncoding),
                &json!({ "const": "v1" }),
            ),
        ),
        (
            "ResumeTokenEvent",
            event(
                "The token a reader presents (as `resume_token`) to read this stream again.",
                None,
                &reference("ResumeTokenData"),
            ),
        ),
        (
            "ResumeTokenData",
            object(
                "A stream's resume token.",
                &["type", "token", "conversation_id"],
                &json!({
                    "type": kind("resume_conversation_token"),
                    "token": { "type": "string" },
                    "conversation_id": conversation_id(),
                }),
            ),
        ),
        (
            "InputMessageEvent",
            event(
                "The person's message, as stored.",
                None,
                &reference("InputMessageData"),
            ),
        ),
        (
            "InputMessageData",
            object(
                "The stored user message.",
                &["type", "input_message", "conversation_id"],
                &json!({
                    "type": kind("input_message"),
                    "input_message": reference("MessageView"),
                    "conversation_id": conversation_id(),
                }),
            ),
        ),
        (
            "DeltaAddEvent",
            event(
                "The answer being generated, added empty and `in_progress`: the document the \
                 following deltas change.",
                delta,
                &reference("DeltaAdd"),
            ),
        ),
        (
            "DeltaAdd",
            object(
                "Adds the document the stream's deltas apply to.",
                &["o", "v"],
                &json!({
                    "o": kind("add"),
                    "v": object(
                        "The answer and its conversation.",
                        &["message", "conversation_id"],
                        &json!({
                            "message": reference("MessageView"),
                            "conversation_id": conversation_id(),
                        }),
                    ),
                }),
            ),
        ),
        (
            "DeltaPatchEvent",
            event(
                "Changes to the answer: more text, then its end.",
                delta,
                &reference("DeltaPatch"),
            ),
        ),
        (
            "DeltaPatch",
            object(
                "Operations applied in order to the added document.",
                &["v"],
                &json!({
                    "v": { "type": "array", "minItems": 1, "items": reference("DeltaOperation") },
                }),
            ),
        ),
        (
            "DeltaOperation",
            object(
                &format!(
                    "One change: `append` adds text to a string (the answer's text is at \
                     `{TEXT_PATH}`) or merges an object's members; `replace` sets a value."
                ),
                &["p", "o", "v"],
                &json!({
                    "p": { "type": "string", "pattern": "^/message(/[^/]+)*$", "description": "A JSON Pointer into the added document." },
                    "o": { "type": "string", "enum": ["append", "replace"] },
                    "v": { "description": "The text, object or value the operation applies." },
                }),
            ),
        ),
        (
            "MessageMarkerEvent",
            event(
                "Sent before the first visible text of the answer.",
                None,
                &reference("MessageMarkerData"),
            ),
        ),
        (
            "MessageMarkerData",
            object(
                "A marker in the answer's progress.",
                &["type", "conversation_id", "message_id", "marker", "event"],
                &json!({
                    "type": kind("message_marker"),
                    "conversation_id": conversation_id(),
                    "message_id": { "type": "string" },
                    "marker": kind("user_visible_token"),
                    "event": kind("first"),
                }),
            ),
        ),
        (
            "TitleGenerationEvent",
            event(
                "The title given to a new conversation, after its first answer.",
                None,
                &reference("TitleGenerationData"),
            ),
        ),
        (
            "TitleGenerationData",
            object(
                "A new conversation's title.",
                &["type", "title", "conversation_id"],
                &json!({
                    "type": kind("title_generation"),
                    "title": { "type": "string", "minLength": 1 },
                    "conversation_id": conversation_id(),
                }),
            ),
        ),
        (
            "StreamErrorEvent",
            event(
                "The answer failed or could not be followed to its end; `[DONE]` follows.",
                None,
                &reference("StreamErrorData"),
            ),
        ),
        (
            "StreamErrorData",
            object(
                "What went wrong, without upstream detail.",
                &["type", "error", "conversation_id"],
                &json!({
                    "type": kind("error"),
                    "error": object(
                        "The error.",
                        &["code", "message"],
                        &json!({
                            "code": { "type": "string", "enum": codes, "description": "An error code of the API: in a stream, `UPSTREAM_ERROR`, `UPSTREAM_TIMEOUT`, `UNAVAILABLE` or `INTERNAL_ERROR`." },
                            "message": { "type": "string" },
                        }),
                    ),
                    "conversation_id": conversation_id(),
                }),
            ),
        ),
        (
            "StreamCompleteEvent",
            event(
                "No more deltas are coming; `[DONE]` follows.",
                None,
                &reference("StreamCompleteData"),
            ),
        ),
        (
            "StreamCompleteData",
            object(
                "The end of the answer's deltas.",
                &["type", "conversation_id"],
                &json!({
                    "type": kind("message_stream_complete"),
                    "conversation_id": conversation_id(),
                }),
            ),
        ),
        (
            "DoneEvent",
            json!({
                "type": "object",
                "description": "The stream's last event; its data is not JSON.",
                "required": ["data"],
                "properties": {
                    "id": { "type": "string", "description": "Resume after this event with `Last-Event-ID`." },
                    "event": { "const": "message" },
                    "data": { "const": "[DONE]" },
                },
                "additionalProperties": false
            }),
        ),
    ]
}

/// The events a stream is made of, in the order they come.
const EVENTS: [&str; 10] = [
    "DeltaEncodingEvent",
    "ResumeTokenEvent",
    "InputMessageEvent",
    "DeltaAddEvent",
    "MessageMarkerEvent",
    "DeltaPatchEvent",
    "TitleGenerationEvent",
    "StreamErrorEvent",
    "StreamCompleteEvent",
    "DoneEvent",
];

/// Adds the stream's components to `schemas`, and `StreamEvent`: any one of
/// its events.
pub(crate) fn add_to(schemas: &mut Map<String, Value>) {
    for (name, schema) in components() {
        schemas.insert(name.to_owned(), schema);
    }
    let any: Vec<Value> = EVENTS.iter().map(|name| reference(name)).collect();
    schemas.insert(
        "StreamEvent".to_owned(),
        json!({
            "description": "One server-sent event of a delta-encoding v1 stream (see docs/api.md): \
                            `id` to resume after (`Last-Event-ID`), `event` its name (`message` \
                            when the server sent none), `data` its text. Which event it is \
                            follows from `event` and the `type` (or `o`) of its data.",
            "anyOf": any
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_component_is_listed_once() {
        let names: Vec<&str> = components()
            .into_iter()
            .map(|(name, _)| name)
            .filter(|name| name.ends_with("Event"))
            .collect();
        let mut listed = EVENTS.to_vec();
        let mut found = names.clone();
        listed.sort_unstable();
        found.sort_unstable();
        assert_eq!(listed, found);
    }
}
