//! Persistence of users, conversations and messages.

use async_trait::async_trait;
use confab_domain::{
    Content, Conversation, ConversationId, ConversationPatch, ConversationSummary, DomainError,
    ListOrder, Message, MessageId, MessagePage, MessageStatus, NewConversation, NewUser,
    OffsetDateTime, Page, PageRequest, PasswordHash, SearchQuery, Title, User, UserId,
};

/// A title to give a conversation if it still has `untitled` and is
/// `owner`'s (a rename made meanwhile wins): see
/// [`MessageStore::update_content_titled`].
#[derive(Debug, Clone, Copy)]
pub struct TitleIfUntitled<'a> {
    /// The conversation's owner.
    pub owner: UserId,
    /// The title it has until it is given one (the placeholder).
    pub untitled: &'a Title,
    /// The title to give it.
    pub title: &'a Title,
}

/// Users and their credentials.
#[async_trait]
pub trait UserStore: Send + Sync + 'static {
    /// Stores a new account.
    ///
    /// # Errors
    /// [`DomainError::Duplicate`] on `username` or `email` when taken.
    async fn create(&self, user: NewUser) -> Result<User, DomainError>;

    /// Reads an account.
    ///
    /// # Errors
    /// [`DomainError::NotFound`] when there is none with that id.
    async fn get(&self, id: UserId) -> Result<User, DomainError>;

    /// Finds an account by username or e-mail address (both compared
    /// lower-cased) and returns it with its password hash.
    ///
    /// # Errors
    /// Only on storage failure; an unknown login is `Ok(None)`.
    async fn find_credentials(
        &self,
        login: &str,
    ) -> Result<Option<(User, PasswordHash)>, DomainError>;

    /// Lists accounts, oldest first.
    ///
    /// # Errors
    /// Only on storage failure.
    async fn list(&self, page: PageRequest) -> Result<Page<User>, DomainError>;

    /// Replaces an account's password hash (a rehash with current
    /// parameters, or a new password) if it is still `current`: of two
    /// racing changes made against the same hash exactly one lands.
    /// `Ok(false)` when the account has another hash by now, or is gone.
    ///
    /// # Errors
    /// Only on storage failure.
    async fn replace_password_hash(
        &self,
        id: UserId,
        current: &PasswordHash,
        new: PasswordHash,
        at: OffsetDateTime,
    ) -> Result<bool, DomainError>;

    /// Deletes an account and everything the database holds of it: its
    /// conversations (deleted ones too) with their messages and search
    /// entries, its login sessions and refresh tokens, in one transaction.
    /// The ids of the conversations it deleted, for the stores outside the
    /// database to forget ([`Erasure`](crate::Erasure)); `Ok(None)` when
    /// there was no such account.
    ///
    /// # Errors
    /// Only on storage failure.
    async fn delete(&self, id: UserId) -> Result<Option<Vec<ConversationId>>, DomainError>;

    /// Enables or disables an account.
    ///
    /// # Errors
    /// [`DomainError::NotFound`] when there is none with that id.
    async fn set_disabled(
        &self,
        id: UserId,
        disabled: bool,
        at: OffsetDateTime,
    ) -> Result<User, DomainError>;
}

/// What to list of a user's conversations.
#[derive(Debug, Clone, Default)]
pub struct ConversationQuery {
    /// The window.
    pub page: PageRequest,
    /// The order (newest first either way).
    pub order: ListOrder,
    /// A search of titles and finished messages' text: results ranked,
    /// each with its [`confab_domain::SearchHit`] (see
    /// [`confab_domain::SearchQuery`]).
    pub search: Option<SearchQuery>,
    /// List archived conversations instead of active ones.
    pub archived: bool,
}

/// Conversations. Every read and write is scoped to an owner: another
/// user's conversation, or a deleted one, is [`DomainError::NotFound`].
#[async_trait]
pub trait ConversationStore: Send + Sync + 'static {
    /// Stores a new conversation.
    ///
    /// # Errors
    /// [`DomainError::Duplicate`] on `conversation_id` when the id exists.
    async fn create(&self, conversation: NewConversation) -> Result<Conversation, DomainError>;

    /// Reads one of `owner`'s conversations.
    ///
    /// # Errors
    /// [`DomainError::NotFound`] when missing, deleted or someone else's.
    async fn get(&self, owner: UserId, id: ConversationId) -> Result<Conversation, DomainError>;

    /// Lists `owner`'s conversations that are not deleted.
    ///
    /// # Errors
    /// Only on storage failure.
    async fn list(
        &self,
        owner: UserId,
        query: &ConversationQuery,
    ) -> Result<Page<ConversationSummary>, DomainError>;

    /// Applies a partial update and bumps `updated_at` to `at`.
    ///
    /// # Errors
    /// [`DomainError::NotFound`] as for [`ConversationStore::get`].
    async fn update(
        &self,
        owner: UserId,
        id: ConversationId,
        patch: ConversationPatch,
        at: OffsetDateTime,
    ) -> Result<Conversation, DomainError>;

    /// Gives a generated title to a conversation that still has `untitled`
    /// (so a rename made meanwhile wins). `Ok(false)` when it was renamed,
    /// deleted or is someone else's.
    ///
    /// # Errors
    /// Only on storage failure.
    async fn set_generated_title(
        &self,
        owner: UserId,
        id: ConversationId,
        untitled: &Title,
        title: &Title,
        at: OffsetDateTime,
    ) -> Result<bool, DomainError>;

    /// The ids of all of `owner`'s conversations that are not deleted,
    /// archived ones too, newest first: what an export walks.
    ///
    /// # Errors
    /// Only on storage failure.
    async fn ids(&self, owner: UserId) -> Result<Vec<ConversationId>, DomainError>;

    /// Soft-deletes all of `owner`'s conversations at once (as
    /// [`ConversationStore::soft_delete`] does one); the ids it deleted.
    ///
    /// # Errors
    /// Only on storage failure.
    async fn soft_delete_all(
        &self,
        owner: UserId,
        at: OffsetDateTime,
    ) -> Result<Vec<ConversationId>, DomainError>;

    /// Soft-deletes: the rows stay, but the conversation is not found again.
    ///
    /// # Errors
    /// [`DomainError::NotFound`] as for [`ConversationStore::get`].
    async fn soft_delete(
        &self,
        owner: UserId,
        id: ConversationId,
        at: OffsetDateTime,
    ) -> Result<(), DomainError>;
}

/// Messages. Callers check the conversation's ownership first (through
/// [`ConversationStore::get`]); these methods trust the conversation id.
#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Stores a message and, in the same transaction, makes it the
    /// conversation's latest (its `updated_at`, list preview and current
    /// node).
    ///
    /// # Errors
    /// [`DomainError::Duplicate`] on `id` when the conversation already has
    /// a message with that id; [`DomainError::NotFound`] when the
    /// conversation does not exist.
    async fn insert(&self, message: &Message) -> Result<(), DomainError>;

    /// Stores a user message and the assistant message that answers it in
    /// one transaction (one write where two would serialise twice on
    /// SQLite), the assistant's last (the conversation's current node); as
    /// [`MessageStore::insert`] otherwise.
    ///
    /// # Errors
    /// As [`MessageStore::insert`]; nothing is stored on error.
    async fn insert_exchange(&self, user: &Message, assistant: &Message)
    -> Result<(), DomainError>;

    /// Creates `conversation` and stores its first exchange, `user` then
    /// `assistant`, in one transaction: all of it or nothing. The
    /// conversation comes back as stored: its preview is the user's text,
    /// its `updated_at` the answer's.
    ///
    /// # Errors
    /// [`DomainError::Duplicate`] on `conversation_id` when the id is
    /// taken, on `id` when the two messages share theirs;
    /// [`DomainError::NotFound`] when the owner does not exist; nothing is
    /// stored on error.
    async fn create_with_exchange(
        &self,
        conversation: NewConversation,
        user: &Message,
        assistant: &Message,
    ) -> Result<Conversation, DomainError>;

    /// Replaces the content and status of a message still `in_progress` (a
    /// generation's progress or end) and refreshes the conversation's
    /// preview. Works in a deleted conversation too, so an answer cut by a
    /// delete is still closed. A message closed meanwhile by someone else
    /// (the orphan sweep, a reader that found its generation gone) keeps
    /// what it was closed with.
    ///
    /// # Errors
    /// [`DomainError::NotFound`] when there is no such message in progress.
    async fn update_content(
        &self,
        conversation: ConversationId,
        id: &MessageId,
        content: &Content,
        status: MessageStatus,
        at: OffsetDateTime,
    ) -> Result<(), DomainError>;

    /// [`MessageStore::update_content`] that also gives the conversation a
    /// generated title, as [`ConversationStore::set_generated_title`] does
    /// (only while it still has `title.untitled` and is `title.owner`'s),
    /// in the same change of the conversation's row as the preview's
    /// refresh: a new conversation's first answer ends with one write of
    /// its row, not two. Whether the conversation has `title.title` now
    /// (`false` when it is deleted or was renamed meanwhile to another
    /// title).
    ///
    /// # Errors
    /// As [`MessageStore::update_content`]; nothing is stored on error (the
    /// title neither).
    async fn update_content_titled(
        &self,
        conversation: ConversationId,
        id: &MessageId,
        content: &Content,
        status: MessageStatus,
        at: OffsetDateTime,
        title: TitleIfUntitled<'_>,
    ) -> Result<bool, DomainError>;

    /// Reopens an answer that stopped early so the model can go on with it
    /// (a `continue`): if `id` is an assistant message of the conversation
    /// whose status is `finished_partial_completion`, it becomes
    /// `in_progress` as updated `at` and, in the same transaction, the
    /// conversation's current node. Returns whether it did (`false`: no
    /// such message, or not one that stopped early).
    ///
    /// # Errors
    /// [`DomainError::NotFound`] when the conversation is deleted.
    async fn reopen(
        &self,
        conversation: ConversationId,
        id: &MessageId,
        at: OffsetDateTime,
    ) -> Result<bool, DomainError>;

    /// The newest `limit` messages of a conversation's current branch (the
    /// path from its root message down to its current node, through each
    /// message's `parent_id`), or of the ancestors of the message `before`,
    /// oldest first; and whether older ones precede them. An unknown
    /// conversation has no messages.
    ///
    /// # Errors
    /// [`DomainError::NotFound`] when `before` is not a message of the
    /// conversation.
    async fn page(
        &self,
        conversation: ConversationId,
        before: Option<&MessageId>,
        limit: usize,
    ) -> Result<MessagePage, DomainError>;

    /// The children of each of `parents` (`None`: the conversation's
    /// first messages) as `(parent, child)` pairs, oldest child first: a
    /// page's siblings are read with it.
    ///
    /// # Errors
    /// Only on storage failure.
    async fn children(
        &self,
        conversation: ConversationId,
        parents: &[Option<MessageId>],
    ) -> Result<Vec<(Option<MessageId>, MessageId)>, DomainError>;

    /// The conversation's messages on every branch, in the order they were
    /// stored, at most `limit` from after the message `after` (from the
    /// first, when `None`); and whether more follow: the whole tree, a page
    /// at a time.
    ///
    /// # Errors
    /// [`DomainError::NotFound`] when `after` is not a message of the
    /// conversation.
    async fn in_order(
        &self,
        conversation: ConversationId,
        after: Option<&MessageId>,
        limit: usize,
    ) -> Result<(Vec<Message>, bool), DomainError>;

    /// The conversation's message with id `id`, if it has one.
    ///
    /// # Errors
    /// Only on storage failure.
    async fn find(
        &self,
        conversation: ConversationId,
        id: &MessageId,
    ) -> Result<Option<Message>, DomainError>;

    /// Messages still `in_progress` (their conversation and id), oldest
    /// first, at most `limit`: the candidates of the orphan sweep.
    ///
    /// # Errors
    /// Only on storage failure.
    async fn in_progress(
        &self,
        limit: usize,
    ) -> Result<Vec<(ConversationId, MessageId)>, DomainError>;

    /// Closes `message` as `failed`, keeping the text saved so far, if it is
    /// still `in_progress` (a generation that ended meanwhile keeps its own
    /// status). Returns whether it did.
    ///
    /// # Errors
    /// Only on storage failure.
    async fn fail_if_in_progress(
        &self,
        conversation: ConversationId,
        message: &MessageId,
        at: OffsetDateTime,
    ) -> Result<bool, DomainError>;
}
