//! Rendered bodies of cached reads, kept per worker under the name of the
//! cache entry they were rendered from.
//!
//! A cache entry's name (`Cached::entry`) carries its key's version, and a
//! change bumps the version before anyone can read the changed value, so a
//! body kept under a name is the body of that name's value for as long as
//! anyone asks for it. Serialising the page and hashing it for the `ETag`
//! was most of the cost of a cached read; a hit here skips both.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use actix_web::web::Bytes;
use confab_app::Kept;
use confab_domain::UserId;

/// What one worker keeps at most, in body bytes. Past it, everything kept
/// is dropped at once: names of old versions are never asked for again,
/// so there is nothing better to keep than what is asked for next.
const BUDGET: usize = 8 * 1024 * 1024;

/// A body and its strong validator.
#[derive(Clone)]
pub(crate) struct Rendered {
    /// The owner of the value it was rendered from: it is sent to no one
    /// else.
    pub(crate) owner: UserId,
    /// The JSON body.
    pub(crate) body: Bytes,
    /// Its `ETag`, quoted.
    pub(crate) etag: String,
}

#[derive(Default)]
struct Held {
    bodies: HashMap<String, Rendered>,
    bytes: usize,
}

/// The bodies one worker rendered, by shape and cache entry name.
#[derive(Default)]
pub(crate) struct RenderedBodies {
    kept: Mutex<Held>,
}

/// The bodies of one shape, as the reads see them.
pub(crate) struct Shape<'a> {
    /// Every shape's bodies.
    pub(crate) bodies: &'a RenderedBodies,
    /// This one's name.
    pub(crate) shape: &'static str,
}

impl Kept for Shape<'_> {
    type Item = Rendered;

    fn find(&self, entry: &str) -> Option<(UserId, Rendered)> {
        let rendered = self.bodies.get(self.shape, entry)?;
        Some((rendered.owner, rendered))
    }
}

impl RenderedBodies {
    /// The body of `shape` rendered from the value named `entry`.
    pub(crate) fn get(&self, shape: &str, entry: &str) -> Option<Rendered> {
        let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        kept.bodies.get(&name(shape, entry)).cloned()
    }

    /// Keeps `rendered` as the body of `shape` for the value named `entry`.
    pub(crate) fn keep(&self, shape: &str, entry: &str, rendered: Rendered) {
        let size = rendered.body.len();
        if size > BUDGET / 16 {
            // A long conversation's history: rare, and not worth
            // evicting everything else for.
            return;
        }
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.bytes + size > BUDGET {
            kept.bodies.clear();
            kept.bytes = 0;
        }
        if let Some(old) = kept.bodies.insert(name(shape, entry), rendered) {
            kept.bytes -= old.body.len();
        }
        kept.bytes += size;
    }
}

fn name(shape: &str, entry: &str) -> String {
    let mut name = String::with_capacity(shape.len() + 1 + entry.len());
    name.push_str(shape);
    name.push('|');
    name.push_str(entry);
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(text: &'static str) -> Rendered {
        Rendered {
            owner: UserId::generate(),
            body: Bytes::from_static(text.as_bytes()),
            etag: format!("\"{}\"", text.len()),
        }
    }

    #[test]
    fn a_body_is_found_under_its_shape_and_entry_only() {
        let kept = RenderedBodies::default();
        kept.keep("list", "conv:list:u1:7:false", body("[1]"));
        let found = kept.get("list", "conv:list:u1:7:false").expect("kept");
        assert_eq!(found.body, Bytes::from_static(b"[1]"));
        assert!(kept.get("list", "conv:list:u1:8:false").is_none());
        assert!(kept.get("history", "conv:list:u1:7:false").is_none());
    }

    #[test]
    fn a_shape_finds_its_bodies_with_their_owner() {
        let kept = RenderedBodies::default();
        let rendered = body("{}");
        let owner = rendered.owner;
        kept.keep("history", "conv:c1:history:9", rendered);
        let history = Shape {
            bodies: &kept,
            shape: "history",
        };
        let (found, _) = history.find("conv:c1:history:9").expect("kept");
        assert_eq!(found, owner);
        let list = Shape {
            bodies: &kept,
            shape: "list",
        };
        assert!(list.find("conv:c1:history:9").is_none());
    }

    #[test]
    fn past_the_budget_everything_kept_is_dropped() {
        let kept = RenderedBodies::default();
        let big = Bytes::from(vec![b'x'; BUDGET / 16]);
        let count = 16;
        for i in 0..count {
            let rendered = Rendered {
                owner: UserId::generate(),
                body: big.clone(),
                etag: String::new(),
            };
            kept.keep("list", &i.to_string(), rendered);
        }
        assert!(
            kept.get("list", "0").is_some(),
            "16 fill the budget exactly"
        );
        kept.keep("list", "one more", body("x"));
        assert!(kept.get("list", "0").is_none(), "the old ones are gone");
        assert!(kept.get("list", "one more").is_some());
        let too_big = Rendered {
            owner: UserId::generate(),
            body: Bytes::from(vec![b'x'; BUDGET / 16 + 1]),
            etag: String::new(),
        };
        kept.keep("history", "long", too_big);
        assert!(kept.get("history", "long").is_none(), "too big to keep");
    }
}
