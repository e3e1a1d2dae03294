//! Conversations: list, read, rename, archive, delete; send a message and
//! run its generation; resume and stop a generation's stream.
//!
//! Reads go through the cache port: a reader takes the version of the
//! list or history, reads the database, and stores the result under that
//! version; every write bumps the versions it affects after the database
//! has it, so a read that follows a write never sees the older state.

mod generation;
mod prompt;
mod send;
mod stream;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use confab_domain::{
    Allowance, Children, Conversation, ConversationId, ConversationPatch, ConversationSummary,
    DomainError, Field, HistoryRequest, Message, MessageId, MessagePage, ModelSlug, OffsetDateTime,
    Page, Role, TokensUsed, UserId,
};
use confab_ports::{
    AccessClaims, Cache, CachedValue, ChatModel, Clock, ConversationQuery, ConversationStore,
    MessageStore, ModelStatus, RateLimiter, RatePolicy, ReadFrom, ResumeTokenCodec, StreamLog,
    TokenBlocklist, UsageStore, entry_key,
};
use tokio::sync::{Notify, watch};

pub use generation::AnswerEnd;

/// A read the cache can serve: the value, and the name of the cache entry
/// it was read from or filled (the key, its current version and the
/// query), when the cache was reachable. The name changes whenever the
/// value may have: a caller may keep what it derives from the value (a
/// rendered body) under it, and hand it back through [`Kept`].
#[derive(Debug, Clone)]
pub struct Cached<T> {
    /// What was read.
    pub value: T,
    /// The cache entry's name; `None` when the cache was down.
    pub entry: Option<String>,
}

/// What a caller keeps, derived from cached values, under the names of
/// their entries (an HTTP worker's rendered bodies). A read whose current
/// entry the caller keeps something for does not fetch the value: it
/// reads the entry's version only.
pub trait Kept {
    /// What is kept for one entry.
    type Item;
    /// What is kept under `entry`, with the owner of the value it was
    /// derived from (a conversation's owner), so that it is handed back
    /// only to that owner.
    fn find(&self, entry: &str) -> Option<(UserId, Self::Item)>;
}

/// Nothing kept: every read fetches its value.
#[derive(Debug, Clone, Copy, Default)]
pub struct NothingKept;

impl Kept for NothingKept {
    type Item = std::convert::Infallible;

    fn find(&self, _: &str) -> Option<(UserId, Self::Item)> {
        None
    }
}

/// A read through a [`Kept`].
#[derive(Debug)]
pub enum Read<T, K> {
    /// The caller keeps what it derived from the current value, and the
    /// value is the caller's: it was not fetched.
    Kept(K),
    /// The value, from the cache or the database.
    Fetched(Cached<T>),
}

pub use send::{SendAction, SendMessage, Started};

use crate::known::KnownUsers;
use crate::{AppError, ReaderScope};

/// Everything the conversation use cases need from outside.
#[derive(Clone)]
pub struct ConversationPorts {
    /// Conversations.
    pub conversations: Arc<dyn ConversationStore>,
    /// Messages.
    pub messages: Arc<dyn MessageStore>,
    /// The chat model; `None` when none is configured (sending answers 503).
    pub model: Option<Arc<dyn ChatModel>>,
    /// Generation event logs.
    pub log: Arc<dyn StreamLog>,
    /// Read cache.
    pub cache: Arc<dyn Cache>,
    /// Resume token signing.
    pub resume_tokens: Arc<dyn ResumeTokenCodec>,
    /// Rate limits.
    pub limiter: Arc<dyn RateLimiter>,
    /// The time stored on conversations and messages.
    pub clock: Arc<dyn Clock>,
    /// Where every answer's token usage is recorded.
    pub usage: Arc<dyn UsageStore>,
    /// Account-state versions: a changed allowance bumps its user's, so
    /// every instance reads it again at the user's next send.
    pub blocklist: Arc<dyn TokenBlocklist>,
}

/// A user's token allowance and what they used of it
/// ([`Conversations::allowance`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowanceView {
    /// What an admin set for the user (`None` fields: the default).
    pub own: Allowance,
    /// What applies: their own where set, the configured default
    /// elsewhere (`None`: no limit).
    pub effective: Allowance,
    /// What their answers used today and this month.
    pub used: TokensUsed,
    /// When it was read.
    pub at: OffsetDateTime,
}

/// A model a send may name ([`Conversations::models`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// Its name, as a send's `model` gives it.
    pub id: ModelSlug,
    /// Whether a send that names none gets it.
    pub is_default: bool,
    /// Who serves it, whether it answers now, its context length.
    pub status: ModelStatus,
}

/// Tunable rules of the conversation use cases.
#[derive(Debug, Clone)]
pub struct ConversationRules {
    /// The model used when a request names none (or `default`).
    pub default_model: ModelSlug,
    /// Other models a request may name.
    pub allowed_models: Vec<ModelSlug>,
    /// The most tokens one answer may have.
    pub max_tokens: u32,
    /// The system prompt put before every conversation (none when empty).
    pub system_prompt: String,
    /// The most characters of history sent to the model (the newest
    /// message always goes, whole).
    pub prompt_budget_chars: usize,
    /// Generations one user may run at once.
    pub max_concurrent_per_user: usize,
    /// Streams one user may read at once on this instance (resumes and
    /// re-attached retries; a send's own stream always opens, and counts).
    pub max_readers_per_user: usize,
    /// Streams of one answer read at once on this instance.
    pub max_readers_per_answer: usize,
    /// Generations started per user, a stricter bucket than requests.
    pub generation_policy: RatePolicy,
    /// How often a generation's partial text is saved.
    pub flush_interval: Duration,
    /// Ask the model for a title for new conversations (else a heuristic).
    pub title_generation: bool,
    /// How long the title call may take before the heuristic is used.
    pub title_timeout: Duration,
    /// How long a cached list or history lives.
    pub cache_ttl: Duration,
    /// How long a stop waits for the generation to end.
    pub stop_wait: Duration,
    /// The token allowance of a user who has none of their own.
    pub allowance: Allowance,
}

/// The conversation use cases. Cheap to clone.
#[derive(Clone)]
pub struct Conversations {
    inner: Arc<Inner>,
}

struct Inner {
    ports: ConversationPorts,
    rules: ConversationRules,
    running: Running,
    readers: Mutex<Readers>,
    /// Each user's own allowance, by the account-state version it was
    /// read at.
    allowances: KnownUsers<Allowance>,
}

/// The streams this process serves, counted per user and per answer (a
/// conversation's log holds one answer at a time), for the reader caps.
#[derive(Debug, Default)]
struct Readers {
    per_user: HashMap<UserId, usize>,
    per_answer: HashMap<ConversationId, usize>,
}

/// One reader's place among the counted streams; freed on drop.
struct ReaderSlot {
    inner: Arc<Inner>,
    user: UserId,
    conversation: ConversationId,
}

impl Drop for ReaderSlot {
    fn drop(&mut self) {
        let mut readers = self
            .inner
            .readers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        decrement(&mut readers.per_user, &self.user);
        decrement(&mut readers.per_answer, &self.conversation);
    }
}

/// Counts one fewer under `key`, forgetting it at zero.
fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

/// The generations this process runs: per-user counts for the cap, and the
/// shutdown signal they watch.
struct Running {
    per_user: Mutex<HashMap<UserId, usize>>,
    total: AtomicUsize,
    idle: Notify,
    shutdown: watch::Sender<bool>,
}

/// One user's slot among the running generations; freed on drop.
struct Slot {
    inner: Arc<Inner>,
    user: UserId,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let running = &self.inner.running;
        if let Ok(mut map) = running.per_user.lock()
            && let Some(n) = map.get_mut(&self.user)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.user);
            }
        }
        if running.total.fetch_sub(1, Ordering::AcqRel) == 1 {
            running.idle.notify_waiters();
        }
    }
}

/// A page of conversations, as listed.
pub type ConversationPage = Page<ConversationSummary>;

pub(crate) fn list_key(user: UserId) -> String {
    format!("user:{user}:conversation_list")
}

/// The version of a user's cached conversation lists, as read in the same
/// step as one of their requests' admission ([`Accounts::admit`]), so the
/// list route makes no round trip of its own for it. Made only by this
/// crate, for the user it was read for.
///
/// [`Accounts::admit`]: crate::Accounts::admit
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListVersion {
    user: UserId,
    version: u64,
}

impl ListVersion {
    pub(crate) fn new(user: UserId, version: u64) -> Self {
        Self { user, version }
    }
}

fn history_key(conversation: ConversationId) -> String {
    format!("conv:{conversation}:history")
}

/// Drops the oldest messages of `page` until their text is at most `bytes`
/// (the newest one always stays); `has_more` then says they precede it.
fn within_bytes(page: &mut MessagePage, bytes: usize) {
    let mut used = 0_usize;
    let kept = page
        .messages
        .iter()
        .rev()
        .take_while(|m| {
            used = used.saturating_add(m.content.text_bytes());
            used <= bytes
        })
        .count()
        .max(1);
    let dropped = page.messages.len().saturating_sub(kept);
    if dropped > 0 {
        page.messages.drain(..dropped);
        page.has_more = true;
    }
}

/// The clock's time at millisecond precision: what `create_time` shows,
/// so a stored time and the streamed one are the same number.
fn now(clock: &dyn Clock) -> OffsetDateTime {
    let t = clock.now();
    t.replace_nanosecond(u32::from(t.millisecond()) * 1_000_000)
        .unwrap_or(t)
}

impl Conversations {
    /// The most bytes of message text one page of a history holds (its
    /// newest message always comes, whole, whatever its size): a page, and
    /// so a cached history entry, stays a few megabytes at most.
    pub const PAGE_TEXT_BYTES: usize = 1 << 20;

    /// The models a send may name, the default first, each with what its
    /// provider says of it now; none when no model is configured.
    #[must_use]
    pub fn models(&self) -> Vec<ModelInfo> {
        let Some(model) = &self.inner.ports.model else {
            return Vec::new();
        };
        let status = model.status();
        let rules = &self.inner.rules;
        let mut models = vec![ModelInfo {
            id: rules.default_model.clone(),
            is_default: true,
            status,
        }];
        for id in &rules.allowed_models {
            if !models.iter().any(|m| &m.id == id) {
                models.push(ModelInfo {
                    id: id.clone(),
                    is_default: false,
                    status,
                });
            }
        }
        models
    }

    /// Builds the use cases.
    #[must_use]
    pub fn new(ports: ConversationPorts, rules: ConversationRules) -> Self {
        let (shutdown, _) = watch::channel(false);
        Self {
            inner: Arc::new(Inner {
                ports,
                rules,
                running: Running {
                    per_user: Mutex::new(HashMap::new()),
                    total: AtomicUsize::new(0),
                    idle: Notify::new(),
                    shutdown,
                },
                readers: Mutex::new(Readers::default()),
                allowances: KnownUsers::default(),
            }),
        }
    }

    /// Closes, as `failed` with the text they saved, the answers left
    /// `in_progress` that no generation holds any more: those whose
    /// conversation's stream log is not open for them. A generation opens
    /// its log before its answer is stored and holds it until the answer is
    /// final; with a shared log (Redis) the hold is a lease the generating
    /// instance renews, so an answer whose instance died is closed here once
    /// the lease has run out, by whichever instance sweeps first. Run at
    /// start-up and then periodically. Returns how many it closed.
    ///
    /// # Errors
    /// [`AppError::Unavailable`] when the database is down. An answer whose
    /// log can't be asked (its backend is down) is left for a later sweep.
    pub async fn close_orphans(&self) -> Result<u64, AppError> {
        /// Answers looked at per sweep: the oldest first, the rest next time.
        const PER_SWEEP: usize = 1000;
        let ports = &self.inner.ports;
        let mut closed = 0;
        for (conversation, message) in ports.messages.in_progress(PER_SWEEP).await? {
            if self.inner.close_orphan(conversation, &message).await? {
                closed += 1;
            }
        }
        if closed > 0 {
            tracing::warn!(
                closed,
                "closed answers no generation holds any more (a crash, a killed instance) as failed"
            );
        }
        Ok(closed)
    }

    /// Resolves once no generation runs on this instance (at once when
    /// none does). Sends are still taken meanwhile: a caller that waits
    /// for the running answers to complete bounds this wait itself.
    pub async fn idle(&self) {
        let running = &self.inner.running;
        loop {
            let idle = running.idle.notified();
            if running.total.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }

    /// Stops every running generation (each saves its text and ends its
    /// stream) and waits for them, at most `grace`. Sends are refused from
    /// now on.
    pub async fn shutdown(&self, grace: Duration) {
        let running = &self.inner.running;
        running.shutdown.send_replace(true);
        if tokio::time::timeout(grace, self.idle()).await.is_err() {
            tracing::warn!(
                left = running.total.load(Ordering::Acquire),
                "generations still running at the end of the shutdown grace period"
            );
        }
    }

    /// The caller's conversations (not deleted), newest first; what
    /// `kept` keeps for the current entry instead, when it has something.
    /// `seen`: the version of the caller's lists their request's admission
    /// read, if it did (one of another user is not used).
    ///
    /// # Errors
    /// [`AppError::Unavailable`] when the database is down.
    pub async fn list<K: Kept>(
        &self,
        caller: &AccessClaims,
        query: &ConversationQuery,
        kept: &K,
        seen: Option<ListVersion>,
    ) -> Result<Read<ConversationPage, K::Item>, AppError> {
        let owner = caller.user_id;
        let suffix = format!(
            ":{}:{:?}:{}:{}:{}",
            query.archived,
            query.order,
            query.page.offset(),
            query.page.limit(),
            query.search.as_ref().map_or("", |s| s.as_str())
        );
        let seen = seen
            .filter(|seen| seen.user == owner)
            .map(|seen| seen.version);
        let entry = self.entry(&list_key(owner), &suffix, seen).await;
        if let Some(entry) = &entry {
            if let Some((of, item)) = kept.find(entry)
                && of == owner
            {
                return Ok(Read::Kept(item));
            }
            if let Some(CachedValue::ConversationList(page)) = self.cached(entry).await {
                return Ok(Read::Fetched(Cached {
                    value: page,
                    entry: Some(entry.clone()),
                }));
            }
        }
        let page = self.inner.ports.conversations.list(owner, query).await?;
        if let Some(entry) = &entry {
            self.store(entry, CachedValue::ConversationList(page.clone()))
                .await;
        }
        Ok(Read::Fetched(Cached { value: page, entry }))
    }

    /// One of the caller's conversations and the page of its messages
    /// `page` asks for: at most its `limit`, and at most
    /// [`Conversations::PAGE_TEXT_BYTES`] of text (the newest message of
    /// the page always comes, whole).
    ///
    /// # Errors
    /// [`AppError::NotFound`] when it is missing, deleted or someone
    /// else's; [`AppError::Missing`] on `before` when the page's `before`
    /// is not one of its messages.
    pub async fn get(
        &self,
        caller: &AccessClaims,
        id: ConversationId,
        page: &HistoryRequest,
    ) -> Result<(Conversation, MessagePage), AppError> {
        match self.read(caller, id, page, &NothingKept).await? {
            Read::Fetched(read) => Ok(read.value),
            Read::Kept(never) => match never {},
        }
    }

    /// As [`Conversations::get`], or what `kept` keeps for the current
    /// entry instead. The owner is checked on every read: against the
    /// value, or against the owner of what is kept.
    ///
    /// # Errors
    /// As [`Conversations::get`].
    pub async fn read<K: Kept>(
        &self,
        caller: &AccessClaims,
        id: ConversationId,
        page: &HistoryRequest,
        kept: &K,
    ) -> Result<Read<(Conversation, MessagePage), K::Item>, AppError> {
        let suffix = format!(
            ":p{}:b{}",
            page.limit(),
            page.before().map_or("", MessageId::as_str)
        );
        let entry = self.entry(&history_key(id), &suffix, None).await;
        if let Some(entry) = &entry {
            // The history is keyed by conversation only: ownership is
            // checked on every hit.
            if let Some((owner, item)) = kept.find(entry) {
                if owner == caller.user_id {
                    return Ok(Read::Kept(item));
                }
                return Err(AppError::NotFound);
            }
            if let Some(CachedValue::History(conversation, messages)) = self.cached(entry).await {
                if conversation.owner == caller.user_id {
                    return Ok(Read::Fetched(Cached {
                        value: (*conversation, messages),
                        entry: Some(entry.clone()),
                    }));
                }
                return Err(AppError::NotFound);
            }
        }
        let conversation = self
            .inner
            .ports
            .conversations
            .get(caller.user_id, id)
            .await?;
        let limit = usize::try_from(page.limit()).unwrap_or(usize::MAX);
        let mut messages = match self
            .inner
            .read_back(
                id,
                page.before(),
                limit,
                |m| m.content.text_bytes(),
                Self::PAGE_TEXT_BYTES,
            )
            .await
        {
            Err(DomainError::NotFound) => {
                return Err(AppError::Missing {
                    field: Field::Before,
                });
            }
            other => other?,
        };
        within_bytes(&mut messages, Self::PAGE_TEXT_BYTES);
        messages.children = self.inner.children(id, &messages.messages).await?;
        if let Some(entry) = &entry {
            self.store(
                entry,
                CachedValue::History(Box::new(conversation.clone()), messages.clone()),
            )
            .await;
        }
        Ok(Read::Fetched(Cached {
            value: (conversation, messages),
            entry,
        }))
    }

    /// One exchange of the caller's conversation: the conversation, the
    /// answer `answer` and the user message it answers (whose `parent_id`
    /// is `None` when it started the conversation).
    ///
    /// # Errors
    /// [`AppError::NotFound`] as for [`Conversations::get`], and when the
    /// conversation has no answer `answer`.
    pub async fn exchange(
        &self,
        caller: &AccessClaims,
        id: ConversationId,
        answer: &MessageId,
    ) -> Result<(Conversation, Message, Message), AppError> {
        let ports = &self.inner.ports;
        let conversation = ports.conversations.get(caller.user_id, id).await?;
        let answer = ports
            .messages
            .find(id, answer)
            .await?
            .ok_or(AppError::NotFound)?;
        let question = match &answer.parent_id {
            Some(parent) => ports.messages.find(id, parent).await?,
            None => None,
        }
        .ok_or(AppError::NotFound)?;
        Ok((conversation, question, answer))
    }

    /// A page of the whole tree of one of the caller's conversations: its
    /// messages on every branch in the order they were stored, at most
    /// `limit` (1..=500) from after the message `after`, and at most
    /// [`Conversations::PAGE_TEXT_BYTES`] of text (the first message of a
    /// page always comes, whole); with each one's children.
    ///
    /// # Errors
    /// [`AppError::Validation`] on `limit`; [`AppError::NotFound`] as for
    /// [`Conversations::get`]; [`AppError::Missing`] on `after` when it is
    /// not one of its messages.
    pub async fn tree(
        &self,
        caller: &AccessClaims,
        id: ConversationId,
        after: Option<&MessageId>,
        limit: u32,
    ) -> Result<TreePage, AppError> {
        let limit = HistoryRequest::new(None, limit)?.limit();
        let ports = &self.inner.ports;
        let conversation = ports.conversations.get(caller.user_id, id).await?;
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let (mut messages, mut has_more) = match ports.messages.in_order(id, after, limit).await {
            Err(DomainError::NotFound) => {
                return Err(AppError::Missing {
                    field: Field::After,
                });
            }
            other => other?,
        };
        let mut used = 0_usize;
        let kept = messages
            .iter()
            .take_while(|m| {
                used = used.saturating_add(m.content.text_bytes());
                used <= Self::PAGE_TEXT_BYTES
            })
            .count()
            .max(1);
        if kept < messages.len() {
            messages.truncate(kept);
            has_more = true;
        }
        let parents: Vec<Option<MessageId>> = messages.iter().map(|m| Some(m.id.clone())).collect();
        let children = if parents.is_empty() {
            Vec::new()
        } else {
            Children::group(ports.messages.children(id, &parents).await?)
        };
        Ok(TreePage {
            conversation,
            messages,
            children,
            has_more,
        })
    }

    /// Renames, archives and/or switches the branch of one of the caller's
    /// conversations (its current node: any of its messages; the history
    /// and the next send's prompt follow the branch that ends there).
    ///
    /// # Errors
    /// [`AppError::Validation`] for an empty patch; [`AppError::NotFound`]
    /// as for [`Conversations::get`]; [`AppError::Missing`] on
    /// `current_node` when it is no message of the conversation.
    pub async fn update(
        &self,
        caller: &AccessClaims,
        id: ConversationId,
        patch: ConversationPatch,
    ) -> Result<Conversation, AppError> {
        self.check_patch(&patch)?;
        if let Some(node) = &patch.current_node {
            // Ownership first: a foreign conversation is a plain 404. A
            // message, once stored, is never removed on its own, so it is
            // still there when the update lands.
            self.inner
                .ports
                .conversations
                .get(caller.user_id, id)
                .await?;
            if self.inner.ports.messages.find(id, node).await?.is_none() {
                return Err(AppError::Missing {
                    field: Field::CurrentNode,
                });
            }
        }
        let updated = self
            .inner
            .ports
            .conversations
            .update(caller.user_id, id, patch, self.inner.now())
            .await?;
        self.invalidate(caller.user_id, id).await;
        Ok(updated)
    }

    /// Whether `patch` changes anything and names a configured model, if
    /// any: what [`Conversations::update`] checks first, for a caller that
    /// checks more (a precondition) before updating.
    ///
    /// # Errors
    /// [`AppError::Validation`] for an empty patch or a model that is not
    /// configured.
    pub fn check_patch(&self, patch: &ConversationPatch) -> Result<(), AppError> {
        if patch.is_empty() {
            return Err(AppError::Validation {
                field: Field::Title,
                message:
                    "give a title, is_archived, current_node, system_prompt or model to change"
                        .into(),
            });
        }
        if let Some(Some(model)) = &patch.model
            && !self.inner.allows(model)
        {
            return Err(AppError::Validation {
                field: Field::Model,
                message: "is not one of the configured models".into(),
            });
        }
        Ok(())
    }

    /// Deletes all of the caller's conversations at once (softly, as
    /// [`Conversations::delete`] does one): answers running in them are
    /// stopped, and every cached read of them forgotten. How many it
    /// deleted.
    ///
    /// # Errors
    /// Only on storage failure.
    pub async fn delete_all(&self, caller: &AccessClaims) -> Result<usize, AppError> {
        let owner = caller.user_id;
        let ports = &self.inner.ports;
        let deleted = ports
            .conversations
            .soft_delete_all(owner, self.inner.now())
            .await?;
        let mut keys = Vec::with_capacity(deleted.len() + 1);
        keys.push(list_key(owner));
        keys.extend(deleted.iter().map(|id| history_key(*id)));
        for chunk in keys.chunks(INVALIDATION_CHUNK) {
            if let Err(e) = ports.cache.bump_all(chunk).await {
                tracing::error!(error = %e, keys = chunk.len(), "could not invalidate cache entries");
            }
        }
        for id in &deleted {
            if let Err(e) = ports.log.request_stop(*id).await {
                tracing::warn!(error = %e, "could not stop the generation of a deleted conversation");
            }
        }
        Ok(deleted.len())
    }

    /// `user`'s token allowance and what they used of it.
    ///
    /// # Errors
    /// On storage failure.
    pub async fn allowance(&self, user: UserId) -> Result<AllowanceView, AppError> {
        self.inner.allowance(user).await
    }

    /// Sets a user's own token allowance (admins only); `None` fields
    /// leave the configured default to apply. It is stored, then the
    /// user's account-state version moves, so every instance reads it again
    /// at the user's next send.
    ///
    /// # Errors
    /// [`AppError::Forbidden`] for a non-admin; [`AppError::NotFound`] for
    /// an unknown user; [`AppError::Unavailable`] when the version can't be
    /// moved (the allowance is stored: setting it again moves it).
    pub async fn set_allowance(
        &self,
        caller: &AccessClaims,
        user: UserId,
        own: Allowance,
    ) -> Result<AllowanceView, AppError> {
        if caller.role != Role::Admin {
            return Err(AppError::Forbidden);
        }
        let ports = &self.inner.ports;
        ports.usage.set_allowance(user, own).await?;
        // Every instance's next send of theirs reads it again.
        self.inner.allowances.forget(user);
        ports.blocklist.user_changed(user).await?;
        tracing::info!(admin = %caller.user_id, user_id = %user, daily = ?own.daily, monthly = ?own.monthly, "token allowance set");
        self.inner.allowance(user).await
    }

    /// Stops every answer running in `conversations` (those of an account
    /// being deleted) and waits, at most the stop wait, for their logs to
    /// close, so that nothing of theirs is written after the account's
    /// entries are forgotten (what they save once their rows are gone
    /// fails and is dropped).
    ///
    /// # Errors
    /// When a stop can't be asked.
    pub async fn stop_answers(&self, conversations: &[ConversationId]) -> Result<(), AppError> {
        let ports = &self.inner.ports;
        let mut running = Vec::new();
        for id in conversations {
            if ports.log.request_stop(*id).await? {
                running.push(*id);
            }
        }
        if running.is_empty() {
            return Ok(());
        }
        let closed = async {
            for id in running {
                // A log that expired or fails is not waited for.
                if let Ok(mut feed) = ports.log.read(id, ReadFrom::Start).await {
                    while let Ok(Some(_event)) = feed.next().await {}
                }
            }
        };
        if tokio::time::timeout(self.inner.rules.stop_wait, closed)
            .await
            .is_err()
        {
            tracing::warn!("an answer of a deleted account did not stop in time");
        }
        Ok(())
    }

    /// The ids of all of the caller's conversations, archived ones too,
    /// newest first: what an export of them all walks.
    ///
    /// # Errors
    /// Only on storage failure.
    pub async fn all_ids(&self, caller: &AccessClaims) -> Result<Vec<ConversationId>, AppError> {
        Ok(self.inner.ports.conversations.ids(caller.user_id).await?)
    }

    /// The ids of the current branch of one of the caller's conversations,
    /// oldest first, read backwards [`READ_BACK_PAGE`] at a time (the text
    /// is not kept): what an export of the branch filters the tree by.
    ///
    /// # Errors
    /// [`AppError::NotFound`] as for [`Conversations::get`].
    pub async fn branch_ids(
        &self,
        caller: &AccessClaims,
        id: ConversationId,
    ) -> Result<Vec<MessageId>, AppError> {
        let ports = &self.inner.ports;
        ports.conversations.get(caller.user_id, id).await?;
        let mut ids = Vec::new();
        let mut before: Option<MessageId> = None;
        loop {
            let page = ports
                .messages
                .page(id, before.as_ref(), EXPORT_PAGE)
                .await?;
            before = page.messages.first().map(|m| m.id.clone());
            ids.extend(page.messages.into_iter().rev().map(|m| m.id));
            if !page.has_more {
                break;
            }
        }
        ids.reverse();
        Ok(ids)
    }

    /// Deletes one of the caller's conversations (softly: it is not found
    /// again anywhere). A generation running in it is stopped.
    ///
    /// # Errors
    /// [`AppError::NotFound`] as for [`Conversations::get`].
    pub async fn delete(&self, caller: &AccessClaims, id: ConversationId) -> Result<(), AppError> {
        self.inner
            .ports
            .conversations
            .soft_delete(caller.user_id, id, self.inner.now())
            .await?;
        self.invalidate(caller.user_id, id).await;
        if let Err(e) = self.inner.ports.log.request_stop(id).await {
            tracing::warn!(error = %e, "could not stop the generation of a deleted conversation");
        }
        Ok(())
    }

    /// The name of the current entry of `key` with `suffix`, given the
    /// version admission `seen`, if any; `None` when the cache is down (the
    /// caller then reads the database).
    async fn entry(&self, key: &str, suffix: &str, seen: Option<u64>) -> Option<String> {
        let cache = &self.inner.ports.cache;
        let version = match seen {
            Some(seen) => cache.version_seen(key, seen).await,
            None => cache.version(key).await,
        };
        match version {
            Ok(version) => Some(entry_key(key, version, suffix)),
            Err(e) => {
                tracing::warn!(error = %e, "cache unavailable; reading the database");
                None
            }
        }
    }

    /// The value stored under the entry `entry`, if any.
    async fn cached(&self, entry: &str) -> Option<CachedValue> {
        match self.inner.ports.cache.get(entry).await {
            Ok(hit) => hit,
            Err(e) => {
                tracing::warn!(error = %e, "cache unavailable; reading the database");
                None
            }
        }
    }

    async fn store(&self, key: &str, value: CachedValue) {
        let ttl = self.inner.rules.cache_ttl;
        if let Err(e) = self.inner.ports.cache.put(key, value, ttl).await {
            tracing::warn!(error = %e, "could not fill the cache");
        }
    }
}

/// A page of a conversation's whole tree ([`Conversations::tree`]).
#[derive(Debug, Clone)]
pub struct TreePage {
    /// The conversation.
    pub conversation: Conversation,
    /// Its messages on every branch, in the order they were stored.
    pub messages: Vec<Message>,
    /// The children of each of them that has any, grouped by parent.
    pub children: Vec<Children>,
    /// Whether more messages follow the last of these.
    pub has_more: bool,
}

/// Cache keys bumped in one call when many conversations go at once.
const INVALIDATION_CHUNK: usize = 256;

/// Messages read at a time by an export.
const EXPORT_PAGE: usize = 500;

/// Messages asked of the store at a time when a history is read backwards.
const READ_BACK_PAGE: usize = 50;

impl Inner {
    /// The children of `page`'s messages and of the first one's parent,
    /// grouped by parent, read over the index on parents.
    async fn children(
        &self,
        conversation: ConversationId,
        page: &[Message],
    ) -> Result<Vec<Children>, DomainError> {
        let Some(first) = page.first() else {
            return Ok(Vec::new());
        };
        let mut parents = Vec::with_capacity(page.len() + 1);
        parents.push(first.parent_id.clone());
        parents.extend(page.iter().map(|m| Some(m.id.clone())));
        let pairs = self.ports.messages.children(conversation, &parents).await?;
        Ok(Children::group(pairs))
    }

    /// The newest messages of `conversation` before the message `before`
    /// (of all, when `None`), oldest first, read backwards
    /// [`READ_BACK_PAGE`] at a time until `limit` are read, the
    /// conversation starts, or `size` summed over what was read passes
    /// `max`: a long history is never read whole, nor a page of huge
    /// messages past its bound.
    ///
    /// # Errors
    /// [`DomainError::NotFound`] when `before` is not one of its messages.
    async fn read_back(
        &self,
        conversation: ConversationId,
        before: Option<&MessageId>,
        limit: usize,
        size: impl Fn(&Message) -> usize,
        max: usize,
    ) -> Result<MessagePage, DomainError> {
        let mut page = MessagePage::default();
        let mut used = 0_usize;
        loop {
            let from = page.messages.first().map(|m| &m.id).or(before);
            let want = limit
                .saturating_sub(page.messages.len())
                .min(READ_BACK_PAGE);
            let older = self.ports.messages.page(conversation, from, want).await?;
            used = older
                .messages
                .iter()
                .fold(used, |sum, m| sum.saturating_add(size(m)));
            page.messages.splice(0..0, older.messages);
            page.has_more = older.has_more;
            if !page.has_more || page.messages.len() >= limit || used > max {
                return Ok(page);
            }
        }
    }

    /// A place for a reader of `user` of the answer in `conversation`, or
    /// the cap it would exceed. `always`: the reader is counted even past
    /// the caps (the stream of a send the caller just started).
    fn reader_slot(
        self: &Arc<Self>,
        user: UserId,
        conversation: ConversationId,
        always: bool,
    ) -> Result<ReaderSlot, AppError> {
        let mut readers = self
            .readers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !always {
            let rules = &self.rules;
            let of_user = readers.per_user.get(&user).copied().unwrap_or(0);
            if of_user >= rules.max_readers_per_user {
                return Err(AppError::TooManyReaders {
                    limit: rules.max_readers_per_user,
                    scope: ReaderScope::User,
                });
            }
            let of_answer = readers.per_answer.get(&conversation).copied().unwrap_or(0);
            if of_answer >= rules.max_readers_per_answer {
                return Err(AppError::TooManyReaders {
                    limit: rules.max_readers_per_answer,
                    scope: ReaderScope::Answer,
                });
            }
        }
        *readers.per_user.entry(user).or_default() += 1;
        *readers.per_answer.entry(conversation).or_default() += 1;
        Ok(ReaderSlot {
            inner: Arc::clone(self),
            user,
            conversation,
        })
    }

    /// `user`'s allowance and use, read now.
    async fn allowance(&self, user: UserId) -> Result<AllowanceView, AppError> {
        let at = self.now();
        let standing = self.ports.usage.standing(user, at.date()).await?;
        Ok(AllowanceView {
            own: standing.own,
            effective: Allowance::or(standing.own, self.rules.allowance),
            used: standing.used,
            at,
        })
    }

    /// Refuses a send of `user`'s once their allowance is used up (an
    /// answer that crossed it finished; this one is not begun). With the
    /// account-state `version` the send was admitted at, a user whose own
    /// allowance this instance read at that version, and to whom no
    /// allowance applies, costs no read; otherwise what they used is read
    /// (with their own allowance, remembered at `version`).
    pub(super) async fn check_allowance(
        &self,
        user: UserId,
        version: Option<u64>,
    ) -> Result<(), AppError> {
        let unlimited = |own| Allowance::or(own, self.rules.allowance) == Allowance::default();
        if version
            .and_then(|v| self.allowances.get(user, v))
            .is_some_and(unlimited)
        {
            return Ok(());
        }
        let view = self.allowance(user).await?;
        if let Some(version) = version {
            self.allowances.remember(user, version, view.own);
        }
        match view.effective.exhausted(view.used, view.at) {
            Some(exhausted) => {
                tracing::info!(user_id = %user, period = exhausted.period.as_str(), "send refused: token allowance used up");
                Err(AppError::QuotaExceeded(exhausted))
            }
            None => Ok(()),
        }
    }

    /// Closes the answer `message` as `failed` with the text it had saved
    /// when no generation holds its conversation's log any more (an
    /// instance that died mid-answer) and it is still `in_progress`.
    /// Returns whether it did; not when the log can't tell (it says so in
    /// a warning: the next sweep tries again).
    ///
    /// # Errors
    /// Only on storage failure.
    async fn close_orphan(
        &self,
        conversation: ConversationId,
        message: &MessageId,
    ) -> Result<bool, AppError> {
        let ports = &self.ports;
        match ports.log.current(conversation).await {
            Ok(head) if head.open && &head.message == message => return Ok(false),
            Ok(_) | Err(DomainError::NotFound) => {}
            Err(e) => {
                tracing::warn!(error = %e, "stream log unavailable; closing an orphaned answer deferred");
                return Ok(false);
            }
        }
        let closed = ports
            .messages
            .fail_if_in_progress(conversation, message, self.now())
            .await?;
        if closed {
            // Histories cached while it ran show it in progress.
            if let Err(e) = ports.cache.bump(&history_key(conversation)).await {
                tracing::error!(error = %e, "could not invalidate a cache entry");
            }
        }
        Ok(closed)
    }

    /// The time to store, from the clock port.
    fn now(&self) -> OffsetDateTime {
        now(self.ports.clock.as_ref())
    }

    /// Makes every cached list of `user` and the history of `conversation`
    /// unreachable. Called after the database has the change.
    async fn invalidate(&self, user: UserId, conversation: ConversationId) {
        let keys = [list_key(user), history_key(conversation)];
        if let Err(e) = self.ports.cache.bump_all(&keys).await {
            // The adapter retries (see its docs); say so loudly.
            tracing::error!(error = %e, ?keys, "could not invalidate cache entries");
        }
    }
}

impl Conversations {
    async fn invalidate(&self, user: UserId, conversation: ConversationId) {
        self.inner.invalidate(user, conversation).await;
    }
}
