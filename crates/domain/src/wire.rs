//! The wire form of messages and of a generation's stream events (delta
//! encoding v1, seed `000`).
//!
//! [`MessageDocument`] is the one JSON form of a message: the `input_message`
//! event, the `add` delta and `GET /conversations/{id}` all render it, so
//! applying a stream's deltas to its `add`ed message gives exactly the
//! message the API returns afterwards. Its fields are declared in the order
//! a client that keeps insertion order would build them in: `end_turn`,
//! which the final delta adds, comes last, and so does `is_complete` in the
//! metadata.

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::{DomainError, EventName, Message, MessageId, MessageRole, MessageStatus};

/// The path of the text a generation appends to.
pub const TEXT_PATH: &str = "/message/content/parts/0";

/// The JSON form of a message.
#[derive(Debug, Clone, Serialize)]
pub struct MessageDocument<'a> {
    id: &'a str,
    author: Author,
    role: MessageRole,
    create_time: f64,
    update_time: f64,
    created_at: String,
    content: &'a crate::Content,
    status: MessageStatus,
    metadata: DocumentMetadata<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    end_turn: Option<bool>,
}

#[derive(Debug, Clone, Copy, Serialize)]
struct Author {
    role: MessageRole,
}

#[derive(Debug, Clone, Serialize)]
struct DocumentMetadata<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    model_slug: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    is_complete: Option<bool>,
}

/// Seconds since the Unix epoch with millisecond precision (`create_time`).
#[must_use]
pub fn epoch_seconds(at: OffsetDateTime) -> f64 {
    // i128 → f64 loses nothing for any date a message can have (< 2^53 ms).
    #[allow(clippy::cast_precision_loss)]
    let millis = (at.unix_timestamp_nanos() / 1_000_000) as f64;
    millis / 1000.0
}

/// RFC 3339 in UTC (`created_at`).
///
/// # Errors
/// [`DomainError::Internal`] for a date RFC 3339 can't express.
pub fn rfc3339(at: OffsetDateTime) -> Result<String, DomainError> {
    at.format(&Rfc3339).map_err(DomainError::internal)
}

impl<'a> MessageDocument<'a> {
    /// The document of `message`. An assistant message that has ended says
    /// whether it ended its turn (`end_turn`) and that it is complete
    /// (`metadata.is_complete`).
    ///
    /// # Errors
    /// [`DomainError::Internal`] for a timestamp RFC 3339 can't express.
    pub fn of(message: &'a Message) -> Result<Self, DomainError> {
        let ended =
            message.role == MessageRole::Assistant && message.status != MessageStatus::InProgress;
        Ok(Self {
            id: message.id.as_str(),
            author: Author { role: message.role },
            role: message.role,
            create_time: epoch_seconds(message.created_at),
            update_time: epoch_seconds(message.updated_at),
            created_at: rfc3339(message.created_at)?,
            content: &message.content,
            status: message.status,
            metadata: DocumentMetadata {
                model_slug: message.model_slug.as_ref().map(crate::ModelSlug::as_str),
                parent_id: message.parent_id.as_ref().map(MessageId::as_str),
                is_complete: ended.then_some(true),
            },
            end_turn: ended.then_some(message.status == MessageStatus::FinishedSuccessfully),
        })
    }
}

/// One event of a generation's stream: the SSE event name, if any, and one
/// line of data. This is what the generation appends to the stream log and
/// what every reader gets back from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireEvent {
    /// The SSE event name; `None` for a plain `data:` event.
    pub name: Option<EventName>,
    /// One line of JSON, or `[DONE]`.
    pub data: String,
}

/// The data of the stream's last event.
const DONE: &str = "[DONE]";

impl WireEvent {
    /// Whether this is the stream's last event, `[DONE]`.
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.name.is_none() && self.data == DONE
    }
}

fn json<T: Serialize>(name: Option<EventName>, value: &T) -> Result<WireEvent, DomainError> {
    let mut data = serde_json::to_string(value).map_err(DomainError::internal)?;
    // An event lives as long as its stream's log: it keeps only its bytes,
    // not the up to twice as many the encoder grew its buffer to.
    data.shrink_to_fit();
    Ok(WireEvent { name, data })
}

/// Builders for every event of the stream, in the order they are sent.
pub mod events {
    use serde::Serialize;
    use serde_json::json as value;
    use time::OffsetDateTime;

    use super::{DONE, MessageDocument, TEXT_PATH, WireEvent, json};
    use crate::{ConversationId, DomainError, ErrorCode, EventName, MessageId, MessageStatus};

    const DELTA: Option<EventName> = Some(EventName::Delta);

    /// `event: delta_encoding` / `data: "v1"`.
    #[must_use]
    pub fn delta_encoding() -> WireEvent {
        WireEvent {
            name: Some(EventName::DeltaEncoding),
            data: "\"v1\"".to_owned(),
        }
    }

    /// The token a reader presents to resume this stream.
    ///
    /// # Errors
    /// [`DomainError::Internal`] if it can't be encoded.
    pub fn resume_token(
        token: &str,
        conversation: ConversationId,
    ) -> Result<WireEvent, DomainError> {
        json(
            None,
            &value!({"type": "resume_conversation_token", "token": token, "conversation_id": conversation.to_string()}),
        )
    }

    /// The stored user message.
    ///
    /// # Errors
    /// [`DomainError::Internal`] if it can't be encoded.
    pub fn input_message(
        message: &MessageDocument<'_>,
        conversation: ConversationId,
    ) -> Result<WireEvent, DomainError> {
        #[derive(Serialize)]
        struct Input<'a> {
            r#type: &'static str,
            input_message: &'a MessageDocument<'a>,
            conversation_id: String,
        }
        json(
            None,
            &Input {
                r#type: "input_message",
                input_message: message,
                conversation_id: conversation.to_string(),
            },
        )
    }

    /// The `add` of the assistant message, empty and `in_progress`.
    ///
    /// # Errors
    /// [`DomainError::Internal`] if it can't be encoded.
    pub fn add_message(
        message: &MessageDocument<'_>,
        conversation: ConversationId,
    ) -> Result<WireEvent, DomainError> {
        #[derive(Serialize)]
        struct Added<'a> {
            message: &'a MessageDocument<'a>,
            conversation_id: String,
        }
        #[derive(Serialize)]
        struct Add<'a> {
            o: &'static str,
            v: Added<'a>,
        }
        json(
            DELTA,
            &Add {
                o: "add",
                v: Added {
                    message,
                    conversation_id: conversation.to_string(),
                },
            },
        )
    }

    /// The marker before the first visible text.
    ///
    /// # Errors
    /// [`DomainError::Internal`] if it can't be encoded.
    pub fn first_token_marker(
        conversation: ConversationId,
        message: &MessageId,
    ) -> Result<WireEvent, DomainError> {
        json(
            None,
            &value!({"type": "message_marker", "conversation_id": conversation.to_string(),
                     "message_id": message.as_str(), "marker": "user_visible_token", "event": "first"}),
        )
    }

    /// More text.
    ///
    /// # Errors
    /// [`DomainError::Internal`] if it can't be encoded.
    pub fn append_text(text: &str) -> Result<WireEvent, DomainError> {
        /// One operation of a patch, written straight from the text: no
        /// JSON tree is built for every delta of every stream.
        #[derive(Serialize)]
        struct Op<'a> {
            p: &'static str,
            o: &'static str,
            v: &'a str,
        }
        #[derive(Serialize)]
        struct Patch<'a> {
            v: [Op<'a>; 1],
        }
        json(
            DELTA,
            &Patch {
                v: [Op {
                    p: TEXT_PATH,
                    o: "append",
                    v: text,
                }],
            },
        )
    }

    /// The whole text so far, replacing what the reader has: the text an
    /// answer was closed with when its generation was lost.
    ///
    /// # Errors
    /// [`DomainError::Internal`] if it can't be encoded.
    pub fn replace_text(text: &str) -> Result<WireEvent, DomainError> {
        json(
            DELTA,
            &value!({"v": [{"p": TEXT_PATH, "o": "replace", "v": text}]}),
        )
    }

    /// The end of the message: its final status, when it was last updated
    /// (`at`, the time stored with the final text), whether it ended its
    /// turn, and `is_complete`.
    ///
    /// # Errors
    /// [`DomainError::Internal`] if it can't be encoded.
    pub fn finish(status: MessageStatus, at: OffsetDateTime) -> Result<WireEvent, DomainError> {
        json(
            DELTA,
            &value!({"v": [
                {"p": "/message/status", "o": "replace", "v": status.as_str()},
                {"p": "/message/update_time", "o": "replace", "v": super::epoch_seconds(at)},
                {"p": "/message/end_turn", "o": "replace", "v": status == MessageStatus::FinishedSuccessfully},
                {"p": "/message/metadata", "o": "append", "v": {"is_complete": true}},
            ]}),
        )
    }

    /// The title chosen for a new conversation.
    ///
    /// # Errors
    /// [`DomainError::Internal`] if it can't be encoded.
    pub fn title(title: &str, conversation: ConversationId) -> Result<WireEvent, DomainError> {
        json(
            None,
            &value!({"type": "title_generation", "title": title, "conversation_id": conversation.to_string()}),
        )
    }

    /// A failed generation: what went wrong, without upstream detail.
    ///
    /// # Errors
    /// [`DomainError::Internal`] if it can't be encoded.
    pub fn error(
        code: ErrorCode,
        message: &str,
        conversation: ConversationId,
    ) -> Result<WireEvent, DomainError> {
        json(
            None,
            &value!({"type": "error", "error": {"code": code, "message": message},
                     "conversation_id": conversation.to_string()}),
        )
    }

    /// No more deltas are coming.
    ///
    /// # Errors
    /// [`DomainError::Internal`] if it can't be encoded.
    pub fn stream_complete(conversation: ConversationId) -> Result<WireEvent, DomainError> {
        json(
            None,
            &value!({"type": "message_stream_complete", "conversation_id": conversation.to_string()}),
        )
    }

    /// The end of the stream.
    #[must_use]
    pub fn done() -> WireEvent {
        WireEvent {
            name: None,
            data: DONE.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Content, ConversationId, DeltaApplier, ErrorCode, ModelSlug};

    fn at(millis: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000).unwrap()
    }

    fn assistant(status: MessageStatus, text: &str) -> Message {
        Message {
            id: MessageId::parse("msg_002").unwrap(),
            conversation_id: ConversationId::generate(),
            parent_id: Some(MessageId::parse("msg_001").unwrap()),
            role: MessageRole::Assistant,
            content: Content::text(vec![text.to_owned()]).unwrap(),
            status,
            model_slug: Some(ModelSlug::parse("gpt-4o").unwrap()),
            metadata: serde_json::Map::new(),
            created_at: at(1_762_484_547_338),
            updated_at: at(1_762_484_547_338),
        }
    }

    #[test]
    fn create_time_has_millisecond_precision() {
        assert_eq!(
            serde_json::to_string(&epoch_seconds(at(1_762_484_546_479))).unwrap(),
            "1762484546.479"
        );
    }

    #[test]
    fn replaying_a_stream_gives_the_final_document_byte_for_byte() {
        let started = assistant(MessageStatus::InProgress, "");
        let conversation = started.conversation_id;
        let mut frames = vec![
            events::add_message(&MessageDocument::of(&started).unwrap(), conversation).unwrap(),
        ];
        for piece in ["Redis", " caching", " \"quoted\"\n\ndata: [DONE]"] {
            frames.push(events::append_text(piece).unwrap());
        }
        let ended = at(1_762_484_549_017);
        frames.push(events::finish(MessageStatus::FinishedSuccessfully, ended).unwrap());
        let mut applier = DeltaApplier::new();
        for frame in &frames {
            assert_eq!(frame.name, Some(EventName::Delta));
            assert!(!frame.data.contains('\n'), "an event's data is one line");
            applier
                .apply_json(&serde_json::from_str(&frame.data).unwrap())
                .unwrap();
        }
        let mut done = assistant(
            MessageStatus::FinishedSuccessfully,
            "Redis caching \"quoted\"\n\ndata: [DONE]",
        );
        done.updated_at = ended;
        let expected = serde_json::to_value(MessageDocument::of(&done).unwrap()).unwrap();
        assert_eq!(applier.document()["message"], expected);
        assert_eq!(
            applier.document()["conversation_id"],
            conversation.to_string()
        );
    }

    #[test]
    fn field_order_matches_insertion_order() {
        let done = assistant(MessageStatus::FinishedPartialCompletion, "x");
        let text = serde_json::to_string(&MessageDocument::of(&done).unwrap()).unwrap();
        let keys = [
            "\"id\"",
            "\"author\"",
            "\"create_time\"",
            "\"update_time\"",
            "\"created_at\"",
            "\"content\"",
            "\"status\"",
            "\"metadata\"",
            "\"end_turn\":false",
        ];
        let positions: Vec<usize> = keys.iter().map(|k| text.find(k).unwrap()).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert!(
            text.contains(
                r#""metadata":{"model_slug":"gpt-4o","parent_id":"msg_001","is_complete":true}"#
            ),
            "{text}"
        );
    }

    #[test]
    fn user_messages_have_no_turn_fields() {
        let mut user = assistant(MessageStatus::FinishedSuccessfully, "hi");
        user.role = MessageRole::User;
        user.model_slug = None;
        user.parent_id = None;
        let text = serde_json::to_string(&MessageDocument::of(&user).unwrap()).unwrap();
        assert!(
            !text.contains("end_turn") && text.contains(r#""metadata":{}"#),
            "{text}"
        );
    }

    #[test]
    fn events_are_single_lines_of_the_seed_shape() {
        let c = ConversationId::generate();
        assert_eq!(events::delta_encoding().data, "\"v1\"");
        assert_eq!(events::done().data, "[DONE]");
        assert!(events::done().is_done());
        assert!(!events::stream_complete(c).unwrap().is_done());
        let e = events::error(ErrorCode::UpstreamError, "The model's server failed.", c).unwrap();
        let v: serde_json::Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(
            v["error"]["code"],
            serde_json::to_value(ErrorCode::UpstreamError).unwrap()
        );
        let t = events::title("Line\nbreak", c).unwrap();
        assert!(!t.data.contains('\n'));
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::{EventName, TEXT_PATH, events};

    proptest! {
        /// A text delta is the patch `{"v":[{"p":…,"o":"append","v":text}]}`,
        /// byte for byte as a JSON tree of it prints, whatever the text
        /// (quotes, control characters, any Unicode).
        #[test]
        fn a_text_delta_is_the_append_patch_byte_for_byte(
            text in prop_oneof![any::<String>(), "[\"\\\\\n\r\t\u{0}\u{1f}é✓𝄞 a-z]{0,40}"],
        ) {
            let event = events::append_text(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let tree = serde_json::json!({"v": [{"p": TEXT_PATH, "o": "append", "v": text}]});
            prop_assert_eq!(event.name, Some(EventName::Delta));
            prop_assert_eq!(&event.data, &serde_json::to_string(&tree).map_err(|e| TestCaseError::fail(e.to_string()))?);
            prop_assert_eq!(event.data.capacity(), event.data.len());
        }
    }
}
