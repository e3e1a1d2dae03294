//! Delta encoding v1: the operations a stream sends to build a message, and
//! the applier that replays them.
//!
//! A frame is `{"p": path, "o": op, "v": value}`. `p` is a JSON Pointer
//! (RFC 6901) into the document; `o` is one of `add`, `append`, `replace`,
//! `truncate`, `patch`. A frame without `p` or `o` inherits them from the
//! frame before it, so a stream of text can be `{"p": "/message/content/parts/0",
//! "o": "append", "v": "Hel"}` then `{"v": "lo"}`. A frame without `o` whose
//! `v` is a list of operations is a `patch` (the form seed `000` uses).
//!
//! Operations:
//! - `add`, `replace`: set the value at `p` (the whole document for `""`);
//! - `append`: concatenate a string, push onto an array, or merge an object's
//!   keys into an object;
//! - `truncate`: cut a string (to that many characters) or an array (to that
//!   many elements);
//! - `patch`: apply the listed operations in order.
//!
//! Applying every frame of a stream in order to an empty document gives the
//! document the stream describes; [`DeltaApplier`] is that pure function.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One delta operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeltaOp {
    /// Set the value at the path.
    Add,
    /// Concatenate a string, push onto an array, or merge into an object.
    Append,
    /// Set the value at the path.
    Replace,
    /// Cut a string or an array to a length.
    Truncate,
    /// Apply a list of operations.
    Patch,
}

/// A delta frame as sent on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeltaFrame {
    /// The path; inherited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p: Option<String>,
    /// The operation; inherited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub o: Option<DeltaOp>,
    /// The operand.
    pub v: Value,
}

impl DeltaFrame {
    /// An explicit frame: `{"p": path, "o": op, "v": value}`.
    #[must_use]
    pub fn new(path: impl Into<String>, op: DeltaOp, value: Value) -> Self {
        Self {
            p: Some(path.into()),
            o: Some(op),
            v: value,
        }
    }
}

/// Why a frame could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    /// The frame is not `{p?, o?, v}` with a known op.
    #[error("malformed delta frame: {0}")]
    Malformed(String),
    /// Nothing to inherit: the first frame must name its operation.
    #[error("the first frame must name its operation")]
    NoOperation,
    /// The path does not lead into the document.
    #[error("no such path: {0}")]
    NoSuchPath(String),
    /// The operation does not apply to what is at the path.
    #[error("cannot {op:?} at {path}: {reason}")]
    Mismatch {
        /// The operation.
        op: DeltaOp,
        /// The path.
        path: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Replays delta frames onto a document.
#[derive(Debug, Clone, Default)]
pub struct DeltaApplier {
    document: Value,
    path: Option<String>,
    op: Option<DeltaOp>,
}

impl DeltaApplier {
    /// An applier over an empty (`null`) document.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The document so far.
    #[must_use]
    pub fn document(&self) -> &Value {
        &self.document
    }

    /// The document, consuming the applier.
    #[must_use]
    pub fn into_document(self) -> Value {
        self.document
    }

    /// Applies one frame given as JSON (the `data:` of an SSE `delta` event).
    ///
    /// # Errors
    /// [`DeltaError`] when the frame is malformed or does not fit the
    /// document; the document is then unchanged.
    pub fn apply_json(&mut self, frame: &Value) -> Result<(), DeltaError> {
        let frame: DeltaFrame = serde_json::from_value(frame.clone())
            .map_err(|e| DeltaError::Malformed(e.to_string()))?;
        self.apply(&frame)
    }

    /// Applies one frame.
    ///
    /// # Errors
    /// As [`DeltaApplier::apply_json`]; the document is then unchanged.
    pub fn apply(&mut self, frame: &DeltaFrame) -> Result<(), DeltaError> {
        let mut next = self.clone();
        next.step(frame)?;
        *self = next;
        Ok(())
    }

    fn step(&mut self, frame: &DeltaFrame) -> Result<(), DeltaError> {
        let implied_patch = frame.o.is_none() && frame.p.is_none() && is_op_list(&frame.v);
        let op = match (frame.o, implied_patch) {
            (Some(op), _) => op,
            (None, true) => DeltaOp::Patch,
            (None, false) => self.op.ok_or(DeltaError::NoOperation)?,
        };
        let path = match (&frame.p, op) {
            (Some(p), _) => p.clone(),
            (None, DeltaOp::Patch | DeltaOp::Add) if frame.o.is_some() || implied_patch => {
                String::new()
            }
            (None, _) => self.path.clone().unwrap_or_default(),
        };
        if op == DeltaOp::Patch {
            let Value::Array(ops) = &frame.v else {
                return Err(DeltaError::Mismatch {
                    op,
                    path,
                    reason: "a patch takes a list of operations",
                });
            };
            for inner in ops {
                let inner: DeltaFrame = serde_json::from_value(inner.clone())
                    .map_err(|e| DeltaError::Malformed(e.to_string()))?;
                self.step(&inner)?;
            }
            return Ok(());
        }
        apply_op(&mut self.document, &path, op, &frame.v)?;
        self.path = Some(path);
        self.op = Some(op);
        Ok(())
    }
}

fn is_op_list(v: &Value) -> bool {
    matches!(v, Value::Array(items) if !items.is_empty()
        && items.iter().all(|i| i.as_object().is_some_and(|o| o.contains_key("o") || o.contains_key("p"))))
}

/// Unescapes one RFC 6901 token.
fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn set(document: &mut Value, path: &str, value: Value, op: DeltaOp) -> Result<(), DeltaError> {
    if path.is_empty() {
        *document = value;
        return Ok(());
    }
    let (parent, last) = path
        .rsplit_once('/')
        .ok_or_else(|| DeltaError::NoSuchPath(path.to_owned()))?;
    let target = document
        .pointer_mut(parent)
        .ok_or_else(|| DeltaError::NoSuchPath(path.to_owned()))?;
    let key = unescape(last);
    match target {
        Value::Object(map) => {
            map.insert(key, value);
            Ok(())
        }
        Value::Array(items) => {
            if key == "-" {
                items.push(value);
                return Ok(());
            }
            let index: usize = key
                .parse()
                .map_err(|_| DeltaError::NoSuchPath(path.to_owned()))?;
            match index.cmp(&items.len()) {
                std::cmp::Ordering::Less => items[index] = value,
                std::cmp::Ordering::Equal => items.push(value),
                std::cmp::Ordering::Greater => return Err(DeltaError::NoSuchPath(path.to_owned())),
            }
            Ok(())
        }
        _ => Err(DeltaError::Mismatch {
            op,
            path: path.to_owned(),
            reason: "the parent is not an object or array",
        }),
    }
}

fn apply_op(document: &mut Value, path: &str, op: DeltaOp, v: &Value) -> Result<(), DeltaError> {
    let mismatch = |reason| DeltaError::Mismatch {
        op,
        path: path.to_owned(),
        reason,
    };
    match op {
        DeltaOp::Add | DeltaOp::Replace => set(document, path, v.clone(), op),
        DeltaOp::Append => {
            let target = document
                .pointer_mut(path)
                .ok_or_else(|| DeltaError::NoSuchPath(path.to_owned()))?;
            match (target, v) {
                (Value::String(s), Value::String(more)) => s.push_str(more),
                (Value::Array(items), item) => items.push(item.clone()),
                (Value::Object(map), Value::Object(more)) => {
                    map.extend(more.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
                _ => {
                    return Err(mismatch(
                        "append needs a string to a string, anything to an array, or an object to an object",
                    ));
                }
            }
            Ok(())
        }
        DeltaOp::Truncate => {
            let length = v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| mismatch("truncate takes a length"))?;
            let target = document
                .pointer_mut(path)
                .ok_or_else(|| DeltaError::NoSuchPath(path.to_owned()))?;
            match target {
                Value::String(s) => {
                    if let Some((byte, _)) = s.char_indices().nth(length) {
                        s.truncate(byte);
                    }
                }
                Value::Array(items) => items.truncate(length),
                _ => return Err(mismatch("truncate needs a string or an array")),
            }
            Ok(())
        }
        DeltaOp::Patch => Err(mismatch("a patch is not applied at a path")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The `delta` events of seed `000`'s stream, in order.
    fn seed_stream() -> Vec<Value> {
        let mut frames = vec![json!({"o": "add", "v": {"message": {
            "id": "msg_002", "author": {"role": "assistant"}, "create_time": 1_762_484_547.338,
            "update_time": 1_762_484_547.817, "content": {"content_type": "text", "parts": [""]},
            "status": "in_progress", "metadata": {"model_slug": "gpt-4-turbo-preview", "parent_id": "msg_001"}},
            "conversation_id": "690d5b6c-02d8-8321-a91e-65ea55b781f7"}})];
        for word in [
            "Redis",
            " caching",
            " stores",
            " frequently",
            " used",
            " data",
            " in",
            " memory",
            " for",
            " fast",
            " access.",
        ] {
            frames
                .push(json!({"v": [{"p": "/message/content/parts/0", "o": "append", "v": word}]}));
        }
        frames.push(json!({"v": [
            {"p": "/message/status", "o": "replace", "v": "finished_successfully"},
            {"p": "/message/end_turn", "o": "replace", "v": true},
            {"p": "/message/metadata", "o": "append", "v": {"is_complete": true}},
        ]}));
        frames
    }

    #[test]
    fn the_seed_stream_builds_the_finished_message() {
        let mut applier = DeltaApplier::new();
        for frame in seed_stream() {
            applier.apply_json(&frame).unwrap();
        }
        let message = &applier.document()["message"];
        assert_eq!(
            message["content"]["parts"][0],
            "Redis caching stores frequently used data in memory for fast access."
        );
        assert_eq!(message["status"], "finished_successfully");
        assert_eq!(message["end_turn"], true);
        assert_eq!(
            message["metadata"],
            json!({"model_slug": "gpt-4-turbo-preview", "parent_id": "msg_001", "is_complete": true})
        );
        assert_eq!(
            applier.document()["conversation_id"],
            "690d5b6c-02d8-8321-a91e-65ea55b781f7"
        );
    }

    #[test]
    fn frames_without_path_or_op_inherit_them() {
        let mut a = DeltaApplier::new();
        a.apply_json(&json!({"p": "", "o": "add", "v": {"text": ""}}))
            .unwrap();
        a.apply_json(&json!({"p": "/text", "o": "append", "v": "Hel"}))
            .unwrap();
        a.apply_json(&json!({"v": "lo"})).unwrap();
        a.apply_json(&json!({"v": ", world"})).unwrap();
        assert_eq!(a.document(), &json!({"text": "Hello, world"}));
        // A new path with no op keeps appending.
        a.apply_json(&json!({"p": "", "o": "add", "v": {"a": "x", "b": "y"}}))
            .unwrap();
        a.apply_json(&json!({"p": "/a", "o": "append", "v": "1"}))
            .unwrap();
        a.apply_json(&json!({"p": "/b", "v": "2"})).unwrap();
        assert_eq!(a.document(), &json!({"a": "x1", "b": "y2"}));
    }

    #[test]
    fn explicit_patch_and_nested_inheritance() {
        let mut a = DeltaApplier::new();
        a.apply(&DeltaFrame::new(
            "",
            DeltaOp::Add,
            json!({"parts": ["ab"], "n": 1}),
        ))
        .unwrap();
        a.apply_json(&json!({"p": "", "o": "patch", "v": [
            {"p": "/parts/0", "o": "append", "v": "c"},
            {"v": "d"},
            {"p": "/n", "o": "replace", "v": 2},
        ]}))
        .unwrap();
        assert_eq!(a.document(), &json!({"parts": ["abcd"], "n": 2}));
    }

    #[test]
    fn truncate_counts_characters_and_elements() {
        let mut a = DeltaApplier::new();
        a.apply_json(&json!({"o": "add", "v": {"s": "héllo🎉!", "xs": [1, 2, 3]}}))
            .unwrap();
        a.apply_json(&json!({"p": "/s", "o": "truncate", "v": 6}))
            .unwrap();
        a.apply_json(&json!({"p": "/xs", "o": "truncate", "v": 1}))
            .unwrap();
        assert_eq!(a.document(), &json!({"s": "héllo🎉", "xs": [1]}));
    }

    #[test]
    fn add_and_append_to_arrays_and_escaped_keys() {
        let mut a = DeltaApplier::new();
        a.apply_json(&json!({"o": "add", "v": {"parts": [], "a/b": {}}}))
            .unwrap();
        a.apply_json(&json!({"p": "/parts", "o": "append", "v": "first"}))
            .unwrap();
        a.apply_json(&json!({"p": "/parts/-", "o": "add", "v": "second"}))
            .unwrap();
        a.apply_json(&json!({"p": "/a~1b/k~0", "o": "add", "v": 1}))
            .unwrap();
        assert_eq!(
            a.document(),
            &json!({"parts": ["first", "second"], "a/b": {"k~": 1}})
        );
    }

    #[test]
    fn bad_frames_are_errors_and_leave_the_document_alone() {
        let mut a = DeltaApplier::new();
        assert_eq!(
            a.apply_json(&json!({"v": "orphan"})),
            Err(DeltaError::NoOperation)
        );
        a.apply_json(&json!({"o": "add", "v": {"s": "x", "n": 1}}))
            .unwrap();
        let before = a.document().clone();
        for bad in [
            json!({"p": "/missing/deep", "o": "add", "v": 1}),
            json!({"p": "/n", "o": "append", "v": "text"}),
            json!({"p": "/s", "o": "truncate", "v": -1}),
            json!({"p": "/s", "o": "explode", "v": 1}),
            json!({"p": "/s", "o": "patch", "v": "not a list"}),
            json!({"p": "", "o": "patch", "v": [{"p": "/s", "o": "append", "v": "ok"}, {"p": "/n", "o": "append", "v": "boom"}]}),
            json!("not even an object"),
        ] {
            assert!(a.apply_json(&bad).is_err(), "{bad}");
            assert_eq!(
                a.document(),
                &before,
                "a failed frame changes nothing: {bad}"
            );
        }
    }
}

#[cfg(test)]
mod properties {
    //! Any sequence of valid operations, applied as frames, builds the
    //! document the same edits build directly.

    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::DeltaApplier;

    /// One edit of a message, as a model of what a stream may send.
    #[derive(Debug, Clone)]
    enum Edit {
        AppendText(String),
        TruncateText(usize),
        PushPart(String),
        ReplaceStatus(String),
        MergeMetadata(BTreeMap<String, i64>),
        SetMetadataKey(String, i64),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            4 => any::<String>().prop_map(Edit::AppendText),
            1 => (0_usize..40).prop_map(Edit::TruncateText),
            1 => any::<String>().prop_map(Edit::PushPart),
            1 => "[a-z_]{1,12}".prop_map(Edit::ReplaceStatus),
            1 => proptest::collection::btree_map(any::<String>(), any::<i64>(), 0..4)
                .prop_map(Edit::MergeMetadata),
            // Keys with `/` and `~` exercise RFC 6901 escaping.
            1 => ("[a-z/~]{1,6}", any::<i64>()).prop_map(|(k, v)| Edit::SetMetadataKey(k, v)),
        ]
    }

    /// The document the edits build, directly.
    fn built(edits: &[Edit]) -> Value {
        let mut text = String::new();
        let mut parts: Vec<String> = Vec::new();
        let mut status = "in_progress".to_owned();
        let mut metadata = serde_json::Map::new();
        for edit in edits {
            match edit {
                Edit::AppendText(more) => text.push_str(more),
                Edit::TruncateText(n) => text = text.chars().take(*n).collect(),
                Edit::PushPart(part) => parts.push(part.clone()),
                Edit::ReplaceStatus(s) => status.clone_from(s),
                Edit::MergeMetadata(more) => {
                    metadata.extend(more.iter().map(|(k, v)| (k.clone(), json!(v))));
                }
                Edit::SetMetadataKey(k, v) => {
                    metadata.insert(k.clone(), json!(v));
                }
            }
        }
        let mut all = vec![Value::String(text)];
        all.extend(parts.into_iter().map(Value::String));
        json!({"message": {"content": {"parts": all}, "status": status, "metadata": metadata}})
    }

    /// The frames a stream would send for the edits: consecutive text
    /// appends after the first inherit `p` and `o`; edits are grouped into
    /// patches where `group` says so.
    fn frames(edits: &[Edit], group: &[bool]) -> Vec<Value> {
        let mut frames = vec![json!({"o": "add", "v": {"message": {
            "content": {"parts": [""]}, "status": "in_progress", "metadata": {}}}})];
        let mut batch: Vec<Value> = Vec::new();
        let mut last_was_append = false;
        for (i, edit) in edits.iter().enumerate() {
            let text = "/message/content/parts/0";
            let op = match edit {
                Edit::AppendText(more) if last_was_append && batch.is_empty() => {
                    json!({"v": more})
                }
                Edit::AppendText(more) => json!({"p": text, "o": "append", "v": more}),
                Edit::TruncateText(n) => json!({"p": text, "o": "truncate", "v": n}),
                Edit::PushPart(part) => {
                    json!({"p": "/message/content/parts", "o": "append", "v": part})
                }
                Edit::ReplaceStatus(s) => json!({"p": "/message/status", "o": "replace", "v": s}),
                Edit::MergeMetadata(more) => {
                    json!({"p": "/message/metadata", "o": "append", "v": more})
                }
                Edit::SetMetadataKey(k, v) => {
                    let token = k.replace('~', "~0").replace('/', "~1");
                    json!({"p": format!("/message/metadata/{token}"), "o": "add", "v": v})
                }
            };
            let grouped = group.get(i).copied().unwrap_or(false) && op.get("o").is_some();
            if grouped {
                batch.push(op);
                last_was_append = false;
                continue;
            }
            if !batch.is_empty() {
                frames.push(json!({"v": std::mem::take(&mut batch)}));
            }
            last_was_append = matches!(edit, Edit::AppendText(_));
            // A frame that inherits needs the previous frame to be the text
            // append it continues.
            frames.push(op);
        }
        if !batch.is_empty() {
            frames.push(json!({"v": batch}));
        }
        frames
    }

    proptest! {
        #[test]
        fn applying_the_frames_builds_the_document_the_edits_build(
            edits in proptest::collection::vec(edit(), 0..24),
            group in proptest::collection::vec(any::<bool>(), 24),
        ) {
            let mut applier = DeltaApplier::new();
            for frame in frames(&edits, &group) {
                applier.apply_json(&frame).map_err(|e| TestCaseError::fail(format!("{e}: {frame}")))?;
            }
            prop_assert_eq!(applier.into_document(), built(&edits));
        }
    }
}
