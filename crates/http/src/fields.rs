//! The OpenAPI schema of each validated field, built from the rule the
//! domain (or the HTTP edge) checks it by: a length, range or word list is
//! written once, in the type that enforces it, and read here, so the
//! document can't promise what the validation refuses.
//!
//! What utoipa can't express (`not`, `minProperties`, `contains`) is added
//! to the serialised document by [`refine`].

use confab_domain::{
    ApiKeyName, Content, Email, HistoryRequest, KeyLifetime, ListOrder, MessageId, PageRequest,
    Password, Scope, SearchQuery, SystemPrompt, Title, Username,
};
use serde_json::{Value, json};
use utoipa::openapi::schema::{Array, ArrayBuilder, Object, ObjectBuilder, SchemaFormat, Type};

use crate::middleware::MAX_KEY_LEN;

/// The white space `str::trim` drops beyond the control characters
/// (Unicode `White_Space`, as a character-class body).
const SPACES: &str = r" \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";
/// Every white space character `str::trim` drops (Unicode `White_Space`,
/// as a character-class body).
const WHITE_SPACE: &str =
    r"\t\n\u000b\u000c\r\u0085 \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";
/// The control characters (`char::is_control`, as a character-class body).
const CONTROLS: &str = r"\u0000-\u001f\u007f-\u009f";

fn string(min: Option<usize>, max: Option<usize>) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(min)
        .max_length(max)
}

fn integer(min: u32, max: u32) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(
            utoipa::openapi::KnownFormat::Int32,
        )))
        .minimum(Some(min))
        .maximum(Some(max))
}

/// A new account's username ([`Username::parse`]; the reserved names are
/// excluded by [`refine`]).
pub(crate) fn username() -> Object {
    string(Some(Username::MIN_CHARS), Some(Username::MAX_CHARS))
        .pattern(Some("^[A-Za-z0-9_-]+$"))
        .description(Some(format!(
            "{} to {} letters, digits, `_` and `-`; not {} in any case; stored lower-case.",
            Username::MIN_CHARS,
            Username::MAX_CHARS,
            Username::RESERVED.join(", ")
        )))
        .examples(["alice"])
        .build()
}

/// A new account's e-mail address ([`Email::parse`]).
pub(crate) fn email() -> Object {
    string(Some(Email::MIN_CHARS), Some(Email::MAX_CHARS))
        .pattern(Some(Email::PATTERN))
        .description(Some("`local@domain.tld`, ASCII; stored lower-case."))
        .examples(["alice@example.com"])
        .build()
}

/// A new password ([`Password::new_for`]; the common ones are excluded by
/// [`refine`]).
pub(crate) fn new_password() -> Object {
    string(Some(Password::MIN_CHARS), Some(Password::MAX_CHARS))
        .format(Some(SchemaFormat::Custom("password".to_owned())))
        .pattern(Some(r"^[^\u0000]*$"))
        .description(Some(format!(
            "{} to {} characters, no NUL; must not contain the username, equal the e-mail \
             address or be one of the most common passwords (in any case).",
            Password::MIN_CHARS,
            Password::MAX_CHARS
        )))
        .examples(["correct horse battery staple"])
        .build()
}

/// A password presented at login ([`Password::presented`]: only its
/// length is bounded, so an old password can still be checked).
pub(crate) fn presented_password() -> Object {
    string(None, Some(Password::MAX_CHARS))
        .format(Some(SchemaFormat::Custom("password".to_owned())))
        .description(Some(format!("At most {} characters.", Password::MAX_CHARS)))
        .examples(["correct horse battery staple"])
        .build()
}

/// Text with no control character and not only white space.
fn visible_text() -> String {
    format!("^[^{CONTROLS}]*[^{CONTROLS}{SPACES}][^{CONTROLS}]*$")
}

/// An API key's name ([`ApiKeyName::parse`]).
pub(crate) fn api_key_name() -> Object {
    string(Some(1), Some(ApiKeyName::MAX_CHARS))
        .pattern(Some(visible_text()))
        .description(Some(format!(
            "1 to {} characters, no control character, not only white space; unique among the \
             caller's keys; stored without leading and trailing white space.",
            ApiKeyName::MAX_CHARS
        )))
        .examples(["ci-bot"])
        .build()
}

/// An API key's scopes ([`Scopes::parse`]).
pub(crate) fn api_key_scopes() -> Array {
    let names: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(names.clone())),
        )
        .min_items(Some(1))
        .description(Some(format!(
            "What the key may do, at least one of: {}.",
            names.join(", ")
        )))
        .examples([json!(["conversations:read"])])
        .build()
}

/// A new API key's lifetime ([`KeyLifetime::days`]).
pub(crate) fn api_key_days() -> Object {
    integer(1, KeyLifetime::MAX_DAYS)
        .description(Some(
            "Days until the key stops working; absent: until it is revoked.",
        ))
        .build()
}

/// The name a login gives: a username or an e-mail address
/// ([`Accounts::login`](confab_app::Accounts::login)).
pub(crate) fn login_name() -> Object {
    string(Some(1), Some(confab_app::Accounts::MAX_LOGIN_CHARS))
        .pattern(Some(visible_text()))
        .description(Some(format!(
            "A username or an e-mail address, in any case: 1 to {} characters, no control \
             character, not only white space.",
            confab_app::Accounts::MAX_LOGIN_CHARS
        )))
        .build()
}

/// A conversation title ([`Title::parse`]).
pub(crate) fn title() -> Object {
    string(Some(1), Some(Title::MAX_CHARS))
        .pattern(Some(visible_text()))
        .description(Some(format!(
            "1 to {} characters, no control character, not only white space; stored \
             without leading and trailing white space.",
            Title::MAX_CHARS
        )))
        .build()
}

/// A conversation's system prompt ([`SystemPrompt::parse`]); with
/// `clear`, `""` too (back to the service's).
pub(crate) fn system_prompt_with(clear: bool) -> Object {
    let (min, pattern, description) = if clear {
        (
            0,
            format!(r"^([^\u0000]*[^{WHITE_SPACE}\u0000][^\u0000]*)?$"),
            "The conversation's own system prompt: 1 to {} characters, not only white space, no \
             NUL; `\"\"` goes back to the service's.",
        )
    } else {
        (
            1,
            format!(r"^[^\u0000]*[^{WHITE_SPACE}\u0000][^\u0000]*$"),
            "The conversation's own system prompt: 1 to {} characters, not only white space, no \
             NUL.",
        )
    };
    string(Some(min), Some(SystemPrompt::MAX_CHARS))
        .pattern(Some(pattern))
        .description(Some(
            description.replace("{}", &SystemPrompt::MAX_CHARS.to_string()),
        ))
        .build()
}

/// [`system_prompt_with`] as a new conversation takes it.
pub(crate) fn system_prompt() -> Object {
    system_prompt_with(false)
}

/// [`system_prompt_with`] as `PATCH` takes it.
pub(crate) fn system_prompt_or_clear() -> Object {
    system_prompt_with(true)
}

/// A message's text parts ([`Content::text`]; that one is not blank is
/// added by [`refine`]).
pub(crate) fn parts() -> Array {
    ArrayBuilder::new()
        .items(string(None, Some(Content::MAX_CHARS)).pattern(Some(r"^[^\u0000]*$")))
        .min_items(Some(1))
        .max_items(Some(Content::MAX_PARTS))
        .description(Some(format!(
            "The text, in 1 to {} parts, at most {} characters in all, not only white space.",
            Content::MAX_PARTS,
            Content::MAX_CHARS
        )))
        .build()
}

/// One allowed string.
fn only(value: &'static str) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some([value]))
        .build()
}

/// A sent message's `role`: `user`.
pub(crate) fn user_role() -> Object {
    only("user")
}

/// A sent message's `content_type`: `text`.
pub(crate) fn text_type() -> Object {
    only("text")
}

/// A day of a usage report, `YYYY-MM-DD` (UTC).
pub(crate) fn day() -> Object {
    string(Some(10), Some(10))
        .format(Some(SchemaFormat::KnownFormat(
            utoipa::openapi::KnownFormat::Date,
        )))
        .pattern(Some("^[0-9]{4}-[0-9]{2}-[0-9]{2}$"))
        .description(Some("A day, `YYYY-MM-DD` (UTC)."))
        .build()
}

/// A list's `offset` ([`PageRequest::new`]).
pub(crate) fn offset() -> Object {
    integer(0, PageRequest::MAX_OFFSET)
        .description(Some("Items to skip."))
        .default(Some(json!(0)))
        .build()
}

/// A list's `limit` ([`PageRequest::new`]).
pub(crate) fn limit() -> Object {
    integer(1, PageRequest::MAX_LIMIT)
        .description(Some("Items to return."))
        .default(Some(json!(PageRequest::DEFAULT_LIMIT)))
        .build()
}

/// A message id ([`MessageId::parse`]).
fn message_id_builder() -> ObjectBuilder {
    string(Some(1), Some(MessageId::MAX_LEN))
        .pattern(Some(format!("^[A-Za-z0-9_-]{{1,{}}}$", MessageId::MAX_LEN)))
}

/// A sent message's `id` ([`MessageId::parse`]).
pub(crate) fn message_id() -> Object {
    message_id_builder()
        .description(Some("Its id; generated when absent."))
        .build()
}

/// A history page's `limit` ([`HistoryRequest::new`]).
pub(crate) fn history_limit() -> Object {
    integer(1, HistoryRequest::MAX_LIMIT)
        .description(Some("Messages to return at most (the newest ones)."))
        .default(Some(json!(HistoryRequest::DEFAULT_LIMIT)))
        .build()
}

/// A history page's `before` ([`MessageId::parse`]; must be one of the
/// conversation's messages).
pub(crate) fn before() -> Object {
    message_id_builder()
        .description(Some(
            "Return the messages before this one (a page's `cursor`); absent: the newest.",
        ))
        .build()
}

/// A tree page's `after` ([`MessageId::parse`]; must be one of the
/// conversation's messages).
pub(crate) fn after() -> Object {
    message_id_builder()
        .description(Some(
            "Return the messages stored after this one (a page's `cursor`); absent: from the first.",
        ))
        .build()
}

/// The message a sent message follows.
pub(crate) fn parent_message_id() -> Object {
    message_id_builder()
        .description(Some(
            "`next`: the message of this conversation the sent one follows (absent: its current \
             node; `client-created-root`: none, a new first question); `variant`: the question \
             to answer again (absent: the current node's); `continue`: the answer to go on with.",
        ))
        .build()
}

/// What a send asks for ([`confab_app::SendAction`]).
pub(crate) fn action() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["next", "variant", "continue"]))
        .description(Some(
            "`next`: a new question under the parent, then its answer (the default); \
             `variant`: a new answer to the question named (regenerate); `continue`: more of \
             the answer named, which stopped early (`finished_partial_completion`).",
        ))
        .build()
}

/// An export's `format`.
pub(crate) fn export_format() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["json", "markdown"]))
        .description(Some(
            "`json` (the default): the whole tree; `markdown`: the current branch, to read.",
        ))
        .build()
}

/// A delete-all's confirmation.
pub(crate) fn confirm_all() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["all"]))
        .description(Some(
            "Must be `all`: every conversation of the caller goes.",
        ))
        .build()
}

/// The message a conversation's current branch is to end at.
pub(crate) fn current_node() -> Object {
    message_id_builder()
        .description(Some(
            "Switch branch: the message of this conversation the current branch is to end at.",
        ))
        .build()
}

/// A conversation list's `order` ([`ListOrder::parse`]).
pub(crate) fn order() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(ListOrder::NAMES))
        .description(Some("Newest first, by last change or by creation."))
        .default(Some(json!(ListOrder::NAMES[0])))
        .build()
}

/// A conversation list's `q` ([`SearchQuery::parse`]; blank is no search).
pub(crate) fn search() -> Object {
    string(None, Some(SearchQuery::MAX_CHARS))
        .pattern(Some(r"^[^\u0000]*$"))
        .description(Some(
            "A search of titles and message text (case-insensitive; any syntax is text); blank is no search.",
        ))
        .build()
}

/// An `Idempotency-Key` (`valid_key` in the idempotency middleware).
pub(crate) fn idempotency_key() -> Object {
    string(Some(1), Some(MAX_KEY_LEN))
        .pattern(Some(IDEMPOTENCY_KEY_PATTERN))
        .build()
}

/// The keys the idempotency middleware accepts: printable ASCII, no white
/// space at either end (a header value's ends are trimmed in transit).
pub(crate) const IDEMPOTENCY_KEY_PATTERN: &str = "^[!-~]([ -~]{0,253}[!-~])?$";

/// An `If-Match` value (RFC 9110 §13.1.1): `*`, or a list of entity tags
/// (`"…"` or `W/"…"`), as `routes::conversations::entity_tags` reads it.
pub(crate) const IF_MATCH_PATTERN: &str = r#"^(\*|(W/)?"[!#-~]*"([ \t]*,[ \t]*(W/)?"[!#-~]*")*)$"#;

/// `^(?:w1|w2|…)$` matching each word in any case, for a `not`.
fn any_case(words: &[&str]) -> String {
    let alternatives: Vec<String> = words
        .iter()
        .map(|word| {
            word.chars()
                .map(|c| {
                    if c.is_ascii_alphabetic() {
                        format!("[{}{}]", c.to_ascii_lowercase(), c.to_ascii_uppercase())
                    } else if r"\^$.|?*+()[]{}/".contains(c) {
                        format!("\\{c}")
                    } else {
                        c.to_string()
                    }
                })
                .collect()
        })
        .collect();
    format!("^(?:{})$", alternatives.join("|"))
}

/// Adds to the serialised document what utoipa's builders can't say.
pub(crate) fn refine(doc: &mut Value) {
    // Each event of a `text/event-stream` answer (OpenAPI 3.1 reads a
    // stream's `schema` as one event's).
    if let Some(paths) = doc["paths"].as_object_mut() {
        for op in paths.values_mut().filter_map(Value::as_object_mut) {
            for operation in op.values_mut() {
                let Some(responses) = operation["responses"].as_object_mut() else {
                    continue;
                };
                for response in responses.values_mut() {
                    if let Some(media) = response
                        .get_mut("content")
                        .and_then(|c| c.get_mut("text/event-stream"))
                    {
                        media["schema"] = json!({ "$ref": "#/components/schemas/StreamEvent" });
                    }
                }
            }
        }
    }
    // `If-Match` holds entity tags (utoipa's tuple parameters take no
    // pattern).
    if let Some(paths) = doc["paths"].as_object_mut() {
        let operations = paths.values_mut().filter_map(Value::as_object_mut);
        for operation in operations.flat_map(|item| item.values_mut()) {
            let Some(parameters) = operation
                .get_mut("parameters")
                .and_then(Value::as_array_mut)
            else {
                continue;
            };
            for parameter in parameters.iter_mut().filter(|p| p["name"] == "If-Match") {
                parameter["schema"] = json!({ "type": "string", "pattern": IF_MATCH_PATTERN });
            }
        }
    }
    // A delete-all's confirmation is required (utoipa drops that with
    // `schema_with`).
    if let Some(parameters) =
        doc["paths"]["/api/v1/conversations"]["delete"]["parameters"].as_array_mut()
    {
        for parameter in parameters.iter_mut().filter(|p| p["name"] == "confirm") {
            parameter["required"] = json!(true);
        }
    }
    if let Some(schemas) = doc["components"]["schemas"].as_object_mut() {
        crate::stream_schema::add_to(schemas);
        // A message says exactly what its schema says, in every response
        // and event (the stream's schema test relies on it).
        for view in [
            "MessageView",
            "AuthorView",
            "ContentView",
            "MessageMetadataView",
        ] {
            if let Some(schema) = schemas.get_mut(view) {
                schema["additionalProperties"] = json!(false);
            }
        }
    }
    let schemas = &mut doc["components"]["schemas"];
    schemas["RegisterRequest"]["properties"]["username"]["not"] =
        json!({ "pattern": any_case(Username::RESERVED) });
    schemas["RegisterRequest"]["properties"]["password"]["not"] =
        json!({ "pattern": any_case(Password::COMMON) });
    schemas["PasswordChangeRequest"]["properties"]["new_password"]["not"] =
        json!({ "pattern": any_case(Password::COMMON) });
    schemas["ConversationPatchBody"]["minProperties"] = json!(1);
    // Login names the account once: by username or by e-mail address.
    schemas["LoginRequest"]["oneOf"] =
        json!([{ "required": ["username"] }, { "required": ["email"] }]);
    // A send's messages and parent follow its action: `next` sends one
    // message; `variant` and `continue` send none, and `continue` names
    // its answer; on the seed's route, both need the conversation.
    for (body, needs_conversation) in [("MessageBody", false), ("SendBody", true)] {
        let answer_again = |action: &str, mut required: Vec<&str>| {
            let mut properties = json!({
                "action": { "const": action },
                "messages": { "maxItems": 0 },
            });
            if needs_conversation {
                // Present and not `null`.
                required.push("conversation_id");
                properties["conversation_id"] = json!({ "type": "string" });
            }
            json!({ "properties": properties, "required": required })
        };
        schemas[body]["oneOf"] = json!([
            {
                "properties": { "action": { "const": "next" }, "messages": { "minItems": 1 } },
                "required": ["messages"],
            },
            answer_again("variant", vec!["action"]),
            answer_again("continue", vec!["action", "parent_message_id"]),
        ]);
    }
    // A person's message: at least one part that is not only white space.
    schemas["ContentInput"]["properties"]["parts"]["contains"] =
        json!({ "type": "string", "pattern": format!("[^{WHITE_SPACE}]") });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use confab_domain::{Email, Password, Title, Username};
    use regex::Regex;

    use super::*;

    /// Strings near each rule's edges, from a small alphabet.
    fn samples(alphabet: &[&str], lengths: &[usize]) -> Vec<String> {
        let mut out = vec![String::new()];
        for _ in 0..3 {
            out = out
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .chain(out.iter().cloned())
                .collect();
        }
        for &len in lengths {
            for c in alphabet {
                out.push(c.repeat(len));
                out.push(format!("{}x", c.repeat(len.saturating_sub(1))));
            }
        }
        out
    }

    fn matches(schema: &Object, value: &str) -> bool {
        let pattern = schema.pattern.as_deref().unwrap();
        let chars = value.chars().count();
        Regex::new(pattern).unwrap().is_match(value)
            && schema.min_length.is_none_or(|min| chars >= min)
            && schema.max_length.is_none_or(|max| chars <= max)
    }

    fn not_pattern(words: &[&str], value: &str) -> bool {
        !Regex::new(&any_case(words)).unwrap().is_match(value)
    }

    #[test]
    fn the_documented_title_is_the_domains() {
        let schema = title();
        let alphabet = [
            "a", " ", "\t", "\u{a0}", "\u{85}", "é", "\u{1}", "\0", "\u{3000}",
        ];
        for value in samples(&alphabet, &[199, 200, 201]) {
            assert_eq!(
                Title::parse(&value).is_ok(),
                matches(&schema, &value),
                "{value:?}"
            );
        }
    }

    #[test]
    fn the_documented_username_is_the_domains() {
        let schema = username();
        let mut values = samples(&["a", "Z", "_", "-", "0", " ", "é"], &[31, 32, 33]);
        values.extend(["admin", "ROOT", "Null", "undefined", "admins"].map(str::to_owned));
        for value in values {
            let documented = matches(&schema, &value) && not_pattern(Username::RESERVED, &value);
            assert_eq!(Username::parse(&value).is_ok(), documented, "{value:?}");
        }
    }

    #[test]
    fn the_documented_email_is_the_domains() {
        let schema = email();
        let mut values = samples(&["a", "@", ".", "-", "+", "é"], &[]);
        values.extend(
            [
                "alice@example.com",
                "a.b+c_d-e@x-y.example.org",
                "a..b@x.io",
                ".a@x.io",
                "a.@x.io",
                "a@-x.io",
                "a@x-.io",
                "a@x.i",
                "a@x.i0",
                "a@x",
                "a@@x.io",
                "a@x..io",
                "|a@x.io",
            ]
            .map(str::to_owned),
        );
        values.push(format!("{}@x.io", "a".repeat(250)));
        values.push(format!("{}@x.io", "a".repeat(249)));
        for value in values {
            assert_eq!(
                Email::parse(&value).is_ok(),
                matches(&schema, &value),
                "{value:?}"
            );
        }
    }

    #[test]
    fn the_documented_password_is_the_domains() {
        let schema = new_password();
        let username = Username::parse("zed").unwrap();
        let email = Email::parse("zed@example.com").unwrap();
        let mut values = samples(&["a", "1", " ", "\0", "é"], &[7, 8, 128, 129]);
        values.extend(Password::COMMON.iter().map(|p| p.to_uppercase()));
        values.extend(Password::COMMON.iter().map(|p| (*p).to_owned()));
        for value in values {
            // The rules that name the account are the document's prose.
            if value.to_lowercase().contains("zed") {
                continue;
            }
            let documented = matches(&schema, &value) && not_pattern(Password::COMMON, &value);
            assert_eq!(
                Password::new_for(&value, &username, &email).is_ok(),
                documented,
                "{value:?}"
            );
        }
    }
}
