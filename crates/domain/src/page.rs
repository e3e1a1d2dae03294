//! Pagination and ordering of lists, and pages of a history.

use crate::{DomainError, Field, Message, MessageId};

/// A window into a list: `limit` 1..=100 items from `offset` (at most
/// 100,000, so a deep offset can't make the database scan forever).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    offset: u32,
    limit: u32,
}

impl PageRequest {
    /// Largest page.
    pub const MAX_LIMIT: u32 = 100;
    /// Deepest offset.
    pub const MAX_OFFSET: u32 = 100_000;
    /// Page size when the client names none.
    pub const DEFAULT_LIMIT: u32 = 20;

    /// Validates a window.
    ///
    /// # Errors
    /// [`DomainError::Invalid`] on `limit` or `offset` when out of bounds.
    pub fn new(offset: u32, limit: u32) -> Result<Self, DomainError> {
        if !(1..=Self::MAX_LIMIT).contains(&limit) {
            return Err(DomainError::invalid(
                Field::Limit,
                "must be between 1 and 100",
            ));
        }
        if offset > Self::MAX_OFFSET {
            return Err(DomainError::invalid(
                Field::Offset,
                "must be between 0 and 100000",
            ));
        }
        Ok(Self { offset, limit })
    }

    /// Items to skip.
    #[must_use]
    pub const fn offset(&self) -> u32 {
        self.offset
    }

    /// Items to return at most.
    #[must_use]
    pub const fn limit(&self) -> u32 {
        self.limit
    }
}

impl Default for PageRequest {
    fn default() -> Self {
        Self {
            offset: 0,
            limit: Self::DEFAULT_LIMIT,
        }
    }
}

/// One page of a list and the size of the whole list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items in this window.
    pub items: Vec<T>,
    /// How many items the whole list has.
    pub total: u64,
    /// The window that was asked for.
    pub request: PageRequest,
}

/// Which of a conversation's messages to read: the newest `limit`
/// (1..=500) of those before the message `before`, or of all of them.
/// A history is read backwards from its end, a page at a time, so no read
/// loads a whole long conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRequest {
    before: Option<MessageId>,
    limit: u32,
}

impl HistoryRequest {
    /// Largest page.
    pub const MAX_LIMIT: u32 = 500;
    /// Page size when the client names none.
    pub const DEFAULT_LIMIT: u32 = 100;

    /// Validates a request.
    ///
    /// # Errors
    /// [`DomainError::Invalid`] on `limit` when out of bounds.
    pub fn new(before: Option<MessageId>, limit: u32) -> Result<Self, DomainError> {
        if !(1..=Self::MAX_LIMIT).contains(&limit) {
            return Err(DomainError::invalid(
                Field::Limit,
                "must be between 1 and 500",
            ));
        }
        Ok(Self { before, limit })
    }

    /// The message whose predecessors are read; `None`: the newest.
    #[must_use]
    pub const fn before(&self) -> Option<&MessageId> {
        self.before.as_ref()
    }

    /// Messages to return at most.
    #[must_use]
    pub const fn limit(&self) -> u32 {
        self.limit
    }
}

impl Default for HistoryRequest {
    /// The newest [`HistoryRequest::DEFAULT_LIMIT`] messages.
    fn default() -> Self {
        Self {
            before: None,
            limit: Self::DEFAULT_LIMIT,
        }
    }
}

/// Some of a conversation's consecutive messages, oldest first, and
/// whether older ones precede them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MessagePage {
    /// The messages, oldest first.
    pub messages: Vec<Message>,
    /// Whether the conversation has messages before the first of these.
    pub has_more: bool,
    /// The children of the page's messages and of the first one's parent
    /// (so every message's siblings are among them), one group per parent
    /// that has any, in the page's order. Filled by a read that shows the
    /// page; a store's page leaves it empty.
    pub children: Vec<Children>,
}

/// The children of one message (or the first messages of a conversation,
/// when `parent` is `None`): the answers to a question, or the questions
/// asked after an answer (edits). Two or more are siblings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Children {
    /// Their parent (`None`: the conversation's first messages).
    pub parent: Option<MessageId>,
    /// Their ids, oldest first: one or more.
    pub ids: Vec<MessageId>,
}

impl Children {
    /// The groups of the messages `pairs` name (each a parent and a
    /// child, oldest child first), in the order of their first child.
    #[must_use]
    pub fn group(pairs: Vec<(Option<MessageId>, MessageId)>) -> Vec<Self> {
        let mut groups: Vec<Self> = Vec::new();
        for (parent, child) in pairs {
            match groups.iter_mut().find(|g| g.parent == parent) {
                Some(group) => group.ids.push(child),
                None => groups.push(Self {
                    parent,
                    ids: vec![child],
                }),
            }
        }
        groups
    }

    /// Where `id` is among them.
    #[must_use]
    pub fn index_of(&self, id: &MessageId) -> Option<usize> {
        self.ids.iter().position(|s| s == id)
    }
}

impl MessagePage {
    /// The id to read on from (as [`HistoryRequest`]'s `before`): the
    /// oldest message's, when older ones precede it.
    #[must_use]
    pub fn cursor(&self) -> Option<&MessageId> {
        self.messages
            .first()
            .filter(|_| self.has_more)
            .map(|m| &m.id)
    }
}

/// The order of a conversation list, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ListOrder {
    /// By last change.
    #[default]
    Updated,
    /// By creation.
    Created,
}

impl ListOrder {
    /// Every order's query value.
    pub const NAMES: [&'static str; 2] = ["updated", "created"];

    /// Parses the `order` query value.
    ///
    /// # Errors
    /// [`DomainError::Invalid`] on `order` for anything but `updated` or `created`.
    pub fn parse(value: &str) -> Result<Self, DomainError> {
        match value {
            "updated" => Ok(Self::Updated),
            "created" => Ok(Self::Created),
            _ => Err(DomainError::invalid(
                Field::Order,
                "must be 'updated' or 'created'",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_bounds() {
        assert!(PageRequest::new(0, 0).is_err());
        assert!(PageRequest::new(0, 1).is_ok());
        assert!(PageRequest::new(0, 100).is_ok());
        assert!(PageRequest::new(0, 101).is_err());
    }

    #[test]
    fn offset_bound() {
        assert!(PageRequest::new(100_000, 10).is_ok());
        let err = PageRequest::new(100_001, 10).unwrap_err();
        assert!(matches!(err, DomainError::Invalid { ref field, .. } if *field == Field::Offset));
    }

    #[test]
    fn history_page_bounds() {
        assert!(HistoryRequest::new(None, 0).is_err());
        assert!(HistoryRequest::new(None, 1).is_ok());
        let id = MessageId::parse("m1").unwrap();
        let page = HistoryRequest::new(Some(id.clone()), 500).unwrap();
        assert_eq!((page.before(), page.limit()), (Some(&id), 500));
        let err = HistoryRequest::new(None, 501).unwrap_err();
        assert!(matches!(err, DomainError::Invalid { ref field, .. } if *field == Field::Limit));
        let default = HistoryRequest::default();
        assert_eq!((default.before(), default.limit()), (None, 100));
    }

    #[test]
    fn a_page_has_a_cursor_only_when_older_messages_precede_it() {
        let message = |id: &str| crate::Message {
            id: MessageId::parse(id).unwrap(),
            conversation_id: crate::ConversationId::generate(),
            parent_id: None,
            role: crate::MessageRole::User,
            content: crate::Content::text(vec!["hi".to_owned()]).unwrap(),
            status: crate::MessageStatus::FinishedSuccessfully,
            model_slug: None,
            metadata: crate::MessageMetadata::new(),
            created_at: time::OffsetDateTime::UNIX_EPOCH,
            updated_at: time::OffsetDateTime::UNIX_EPOCH,
        };
        let mut page = MessagePage {
            messages: vec![message("a"), message("b")],
            has_more: true,
            children: Vec::new(),
        };
        assert_eq!(page.cursor().map(MessageId::as_str), Some("a"));
        page.has_more = false;
        assert_eq!(page.cursor(), None);
        assert_eq!(MessagePage::default().cursor(), None);
    }

    #[test]
    fn children_are_grouped_by_parent() {
        let id = |s: &str| MessageId::parse(s).unwrap();
        let groups = Children::group(vec![
            (None, id("u1")),
            (Some(id("u1")), id("a1")),
            (Some(id("a1")), id("u2")),
            (Some(id("u1")), id("a1b")),
            (Some(id("u1")), id("a1c")),
        ]);
        assert_eq!(groups.len(), 3);
        assert_eq!(groups[0].parent, None);
        assert_eq!(groups[0].ids, [id("u1")]);
        assert_eq!(groups[1].parent, Some(id("u1")));
        assert_eq!(groups[1].ids, [id("a1"), id("a1b"), id("a1c")]);
        assert_eq!(groups[1].index_of(&id("a1b")), Some(1));
        assert_eq!(groups[1].index_of(&id("u2")), None);
        assert_eq!(groups[2].ids, [id("u2")]);
        assert!(Children::group(Vec::new()).is_empty());
    }

    #[test]
    fn order_parses() {
        assert_eq!(ListOrder::parse("created").unwrap(), ListOrder::Created);
        assert!(ListOrder::parse("random").is_err());
    }
}
