//! An in-memory store: users, conversations, messages and refresh tokens
//! behind one mutex, with the semantics the store ports document (and the
//! SQL store's tests check): owner-scoped conversations, soft delete,
//! newest-first lists with paging and a literal, case-insensitive title
//! search, a history that is the branch ending at the current node, unique ids refused as
//! [`DomainError::Duplicate`], refresh tokens redeemed once.
//!
//! For use-case tests that need no database: every call answers at once,
//! and nothing is persisted.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use confab_domain::{
    Allowance, AnswerUsage, Content, Conversation, ConversationId, ConversationPatch,
    ConversationSummary, DailyUsage, Date, DomainError, FamilyId, Field, ListOrder, Message,
    MessageId, MessagePage, MessageStatus, NewConversation, NewUser, OffsetDateTime, Page,
    PageRequest, PasswordHash, SearchHit, Title, TokenId, TokensUsed, UsagePeriod, User, UserId,
    month_start,
};
use confab_ports::{
    ConversationQuery, ConversationStore, HealthCheck, MessageStore, NewRefreshToken, Redemption,
    RefreshTokenStore, SessionOrigin, SessionRecord, TitleIfUntitled, UsageStanding, UsageStore,
    UserStore,
};

/// Characters of a message kept as a conversation's list preview (as the
/// SQL store keeps).
const PREVIEW_CHARS: usize = 200;

/// A conversation and its list preview.
struct StoredConversation {
    conversation: Conversation,
    last_message: Option<String>,
}

/// A refresh token's row.
struct StoredToken {
    family: FamilyId,
    user: UserId,
    expires_at: OffsetDateTime,
    used_at: Option<OffsetDateTime>,
    revoked: bool,
}

/// A login session's row.
struct StoredFamily {
    user: UserId,
    revoked_at: Option<OffsetDateTime>,
    created_at: OffsetDateTime,
    last_used_at: OffsetDateTime,
    expires_at: OffsetDateTime,
    origin: SessionOrigin,
}

impl StoredFamily {
    fn live(&self, now: OffsetDateTime) -> bool {
        self.revoked_at.is_none() && self.expires_at > now
    }
}

#[derive(Default)]
struct State {
    /// In creation order.
    users: Vec<(User, PasswordHash)>,
    /// In creation order.
    conversations: Vec<StoredConversation>,
    /// Every conversation's messages, in insertion order.
    messages: Vec<Message>,
    families: HashMap<FamilyId, StoredFamily>,
    tokens: HashMap<TokenId, StoredToken>,
    /// Every answer's usage, as recorded.
    usage: Vec<AnswerUsage>,
    /// Users' own allowances.
    allowances: HashMap<UserId, Allowance>,
}

impl State {
    fn user_mut(&mut self, id: UserId) -> Result<&mut User, DomainError> {
        self.users
            .iter_mut()
            .map(|(u, _)| u)
            .find(|u| u.id == id)
            .ok_or(DomainError::NotFound)
    }

    /// The conversation if it exists and is not deleted, whoever owns it.
    fn live_mut(&mut self, id: ConversationId) -> Option<&mut StoredConversation> {
        self.conversations
            .iter_mut()
            .find(|c| c.conversation.id == id && c.conversation.deleted_at.is_none())
    }

    /// One of `owner`'s conversations that is not deleted.
    fn owned_mut(
        &mut self,
        owner: UserId,
        id: ConversationId,
    ) -> Result<&mut StoredConversation, DomainError> {
        self.live_mut(id)
            .filter(|c| c.conversation.owner == owner)
            .ok_or(DomainError::NotFound)
    }

    /// Marks a live conversation as changed at `at`, with `content` as its
    /// preview when it has text.
    fn touch(&mut self, id: ConversationId, content: &Content, at: OffsetDateTime) -> bool {
        let Some(stored) = self.live_mut(id) else {
            return false;
        };
        stored.conversation.updated_at = at;
        if let Some(text) = preview(content) {
            stored.last_message = Some(text);
        }
        true
    }

    /// Moves a live conversation's current node to `node`.
    fn move_to(&mut self, id: ConversationId, node: &MessageId) {
        if let Some(stored) = self.live_mut(id) {
            stored.conversation.current_node = Some(node.clone());
        }
    }

    fn has_message(&self, conversation: ConversationId, id: &MessageId) -> bool {
        self.messages
            .iter()
            .any(|m| m.conversation_id == conversation && &m.id == id)
    }
}

/// The list preview of a content: its first characters, or `None` while
/// it has no text.
fn preview(content: &Content) -> Option<String> {
    let text: String = content.joined().chars().take(PREVIEW_CHARS).collect();
    (!text.trim().is_empty()).then_some(text)
}

fn window<T>(items: Vec<T>, request: PageRequest) -> Page<T> {
    let total = items.len() as u64;
    let items = items
        .into_iter()
        .skip(request.offset() as usize)
        .take(request.limit() as usize)
        .collect();
    Page {
        items,
        total,
        request,
    }
}

/// Users, conversations, messages and refresh tokens in memory; also a
/// [`HealthCheck`] named `database` that is always healthy. Share it as an
/// `Arc` for every store port.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock has failed already.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl UsageStore for MemoryStore {
    async fn record(&self, usage: &AnswerUsage) -> Result<(), DomainError> {
        let mut state = self.state();
        if state.users.iter().any(|(u, _)| u.id == usage.user) {
            state.usage.push(usage.clone());
        }
        Ok(())
    }

    async fn daily(
        &self,
        user: Option<UserId>,
        period: UsagePeriod,
    ) -> Result<Vec<DailyUsage>, DomainError> {
        let state = self.state();
        let mut days: std::collections::BTreeMap<(Date, String), DailyUsage> = Default::default();
        for usage in &state.usage {
            let day = usage.at.date();
            if user.is_some_and(|u| u != usage.user) || day < period.from() || day > period.to() {
                continue;
            }
            let model = usage.model.as_str().to_owned();
            let line = days.entry((day, model.clone())).or_insert(DailyUsage {
                day,
                model,
                answers: 0,
                estimated_answers: 0,
                prompt_tokens: 0,
                completion_tokens: 0,
            });
            line.answers += 1;
            line.estimated_answers += u64::from(usage.tokens.estimated);
            line.prompt_tokens += u64::from(usage.tokens.prompt_tokens);
            line.completion_tokens += u64::from(usage.tokens.completion_tokens);
        }
        Ok(days.into_values().collect())
    }

    async fn standing(&self, user: UserId, today: Date) -> Result<UsageStanding, DomainError> {
        let state = self.state();
        let first = month_start(today);
        let mut used = TokensUsed::default();
        for usage in state.usage.iter().filter(|u| u.user == user) {
            let day = usage.at.date();
            if day >= first && day <= today {
                used.month += usage.tokens.total();
                if day == today {
                    used.today += usage.tokens.total();
                }
            }
        }
        Ok(UsageStanding {
            own: state.allowances.get(&user).copied().unwrap_or_default(),
            used,
        })
    }

    async fn set_allowance(&self, user: UserId, own: Allowance) -> Result<(), DomainError> {
        let mut state = self.state();
        if !state.users.iter().any(|(u, _)| u.id == user) {
            return Err(DomainError::NotFound);
        }
        state.allowances.insert(user, own);
        Ok(())
    }
}

#[async_trait]
impl UserStore for MemoryStore {
    async fn create(&self, user: NewUser) -> Result<User, DomainError> {
        let mut state = self.state();
        let email = user.email.as_str().to_lowercase();
        for (existing, _) in &state.users {
            if existing.username.as_str() == user.username.as_str() {
                return Err(DomainError::Duplicate {
                    field: Field::Username,
                });
            }
            if existing.email.as_str().to_lowercase() == email {
                return Err(DomainError::Duplicate {
                    field: Field::Email,
                });
            }
            if existing.id == user.id {
                return Err(DomainError::Duplicate {
                    field: Field::UserId,
                });
            }
        }
        let created = User {
            id: user.id,
            username: user.username,
            email: user.email,
            role: user.role,
            disabled: false,
            created_at: user.created_at,
            updated_at: user.created_at,
        };
        state.users.push((created.clone(), user.password_hash));
        Ok(created)
    }

    async fn get(&self, id: UserId) -> Result<User, DomainError> {
        self.state().user_mut(id).map(|u| u.clone())
    }

    async fn find_credentials(
        &self,
        login: &str,
    ) -> Result<Option<(User, PasswordHash)>, DomainError> {
        let login = login.to_lowercase();
        Ok(self
            .state()
            .users
            .iter()
            .find(|(u, _)| {
                u.username.as_str().to_lowercase() == login
                    || u.email.as_str().to_lowercase() == login
            })
            .cloned())
    }

    async fn list(&self, page: PageRequest) -> Result<Page<User>, DomainError> {
        let users = self.state().users.iter().map(|(u, _)| u.clone()).collect();
        Ok(window(users, page))
    }

    async fn replace_password_hash(
        &self,
        id: UserId,
        current: &PasswordHash,
        new: PasswordHash,
        at: OffsetDateTime,
    ) -> Result<bool, DomainError> {
        let mut state = self.state();
        let Some((user, stored)) = state
            .users
            .iter_mut()
            .find(|(u, h)| u.id == id && h.as_str() == current.as_str())
        else {
            return Ok(false);
        };
        user.updated_at = at;
        *stored = new;
        Ok(true)
    }

    async fn delete(&self, id: UserId) -> Result<Option<Vec<ConversationId>>, DomainError> {
        let mut state = self.state();
        let before = state.users.len();
        state.users.retain(|(u, _)| u.id != id);
        if state.users.len() == before {
            return Ok(None);
        }
        let owned: Vec<ConversationId> = state
            .conversations
            .iter()
            .filter(|c| c.conversation.owner == id)
            .map(|c| c.conversation.id)
            .collect();
        state.conversations.retain(|c| c.conversation.owner != id);
        state
            .messages
            .retain(|m| !owned.contains(&m.conversation_id));
        state.families.retain(|_, f| f.user != id);
        state.tokens.retain(|_, t| t.user != id);
        state.usage.retain(|u| u.user != id);
        state.allowances.remove(&id);
        Ok(Some(owned))
    }

    async fn set_disabled(
        &self,
        id: UserId,
        disabled: bool,
        at: OffsetDateTime,
    ) -> Result<User, DomainError> {
        let mut state = self.state();
        let user = state.user_mut(id)?;
        user.disabled = disabled;
        user.updated_at = at;
        Ok(user.clone())
    }
}

#[async_trait]
impl ConversationStore for MemoryStore {
    async fn create(&self, conversation: NewConversation) -> Result<Conversation, DomainError> {
        let mut state = self.state();
        if state
            .conversations
            .iter()
            .any(|c| c.conversation.id == conversation.id)
        {
            return Err(DomainError::Duplicate {
                field: Field::ConversationId,
            });
        }
        let created = Conversation {
            id: conversation.id,
            owner: conversation.owner,
            title: conversation.title,
            is_archived: false,
            current_node: None,
            settings: conversation.settings,
            deleted_at: None,
            created_at: conversation.created_at,
            updated_at: conversation.created_at,
        };
        state.conversations.push(StoredConversation {
            conversation: created.clone(),
            last_message: None,
        });
        Ok(created)
    }

    async fn get(&self, owner: UserId, id: ConversationId) -> Result<Conversation, DomainError> {
        Ok(self.state().owned_mut(owner, id)?.conversation.clone())
    }

    async fn list(
        &self,
        owner: UserId,
        query: &ConversationQuery,
    ) -> Result<Page<ConversationSummary>, DomainError> {
        let state = self.state();
        let mut listed: Vec<(bool, ConversationSummary)> = state
            .conversations
            .iter()
            .filter(|s| {
                let c = &s.conversation;
                c.owner == owner && c.deleted_at.is_none() && c.is_archived == query.archived
            })
            .filter_map(|s| {
                let c = &s.conversation;
                let mut summary = ConversationSummary {
                    id: c.id,
                    title: c.title.clone(),
                    last_message: s.last_message.clone(),
                    is_archived: c.is_archived,
                    created_at: c.created_at,
                    updated_at: c.updated_at,
                    hit: None,
                };
                let Some(search) = &query.search else {
                    return Some((false, summary));
                };
                // The rule of the SQL store, without its ranking: a title
                // that holds the query or every term, or the newest
                // finished message whose words start with every term.
                let title = c.title.as_str().to_lowercase();
                let in_title = title.contains(&search.as_str().to_lowercase())
                    || search.terms().iter().all(|t| title.contains(t.as_str()));
                let message = state.messages.iter().rev().find(|m| {
                    m.conversation_id == c.id
                        && m.status != MessageStatus::InProgress
                        && search.matches(&m.content.parts().join(" "))
                });
                summary.hit = match message {
                    Some(m) => Some(SearchHit {
                        message_id: Some(m.id.clone()),
                        snippet: search.snippet(&m.content.parts().join(" ")),
                    }),
                    None if in_title => Some(SearchHit {
                        message_id: None,
                        snippet: search.snippet(c.title.as_str()),
                    }),
                    None => return None,
                };
                Some((in_title, summary))
            })
            .collect();
        match query.order {
            ListOrder::Updated => {
                listed.sort_by_key(|(t, c)| std::cmp::Reverse((*t, c.updated_at, c.id)));
            }
            ListOrder::Created => {
                listed.sort_by_key(|(t, c)| std::cmp::Reverse((*t, c.created_at, c.id)));
            }
        }
        Ok(window(
            listed.into_iter().map(|(_, c)| c).collect(),
            query.page,
        ))
    }

    async fn update(
        &self,
        owner: UserId,
        id: ConversationId,
        patch: ConversationPatch,
        at: OffsetDateTime,
    ) -> Result<Conversation, DomainError> {
        let mut state = self.state();
        let c = &mut state.owned_mut(owner, id)?.conversation;
        if let Some(title) = patch.title {
            c.title = title;
        }
        if let Some(archived) = patch.is_archived {
            c.is_archived = archived;
        }
        if let Some(node) = patch.current_node {
            c.current_node = Some(node);
        }
        if let Some(prompt) = patch.system_prompt {
            c.settings.system_prompt = prompt;
        }
        if let Some(model) = patch.model {
            c.settings.model = model;
        }
        c.updated_at = at;
        Ok(c.clone())
    }

    async fn ids(&self, owner: UserId) -> Result<Vec<ConversationId>, DomainError> {
        let state = self.state();
        let mut live: Vec<&Conversation> = state
            .conversations
            .iter()
            .map(|c| &c.conversation)
            .filter(|c| c.owner == owner && c.deleted_at.is_none())
            .collect();
        live.sort_by_key(|c| std::cmp::Reverse((c.created_at, c.id)));
        Ok(live.iter().map(|c| c.id).collect())
    }

    async fn soft_delete_all(
        &self,
        owner: UserId,
        at: OffsetDateTime,
    ) -> Result<Vec<ConversationId>, DomainError> {
        let mut state = self.state();
        let mut deleted = Vec::new();
        for stored in &mut state.conversations {
            let c = &mut stored.conversation;
            if c.owner == owner && c.deleted_at.is_none() {
                c.deleted_at = Some(at);
                c.updated_at = at;
                deleted.push(c.id);
            }
        }
        Ok(deleted)
    }

    async fn set_generated_title(
        &self,
        owner: UserId,
        id: ConversationId,
        untitled: &Title,
        title: &Title,
        at: OffsetDateTime,
    ) -> Result<bool, DomainError> {
        let mut state = self.state();
        let Ok(stored) = state.owned_mut(owner, id) else {
            return Ok(false);
        };
        let c = &mut stored.conversation;
        if &c.title != untitled {
            return Ok(false);
        }
        c.title = title.clone();
        c.updated_at = at;
        Ok(true)
    }

    async fn soft_delete(
        &self,
        owner: UserId,
        id: ConversationId,
        at: OffsetDateTime,
    ) -> Result<(), DomainError> {
        let mut state = self.state();
        state.owned_mut(owner, id)?.conversation.deleted_at = Some(at);
        Ok(())
    }
}

#[async_trait]
impl MessageStore for MemoryStore {
    async fn insert(&self, message: &Message) -> Result<(), DomainError> {
        let mut state = self.state();
        if state.live_mut(message.conversation_id).is_none() {
            return Err(DomainError::NotFound);
        }
        if state.has_message(message.conversation_id, &message.id) {
            return Err(DomainError::Duplicate {
                field: Field::MessageId,
            });
        }
        state.touch(
            message.conversation_id,
            &message.content,
            message.updated_at,
        );
        state.move_to(message.conversation_id, &message.id);
        state.messages.push(message.clone());
        Ok(())
    }

    async fn insert_exchange(
        &self,
        user: &Message,
        assistant: &Message,
    ) -> Result<(), DomainError> {
        let mut state = self.state();
        for message in [user, assistant] {
            if state.live_mut(message.conversation_id).is_none() {
                return Err(DomainError::NotFound);
            }
            if state.has_message(message.conversation_id, &message.id) {
                return Err(DomainError::Duplicate {
                    field: Field::MessageId,
                });
            }
        }
        if user.conversation_id == assistant.conversation_id && user.id == assistant.id {
            return Err(DomainError::Duplicate {
                field: Field::MessageId,
            });
        }
        state.touch(user.conversation_id, &user.content, assistant.updated_at);
        state.move_to(assistant.conversation_id, &assistant.id);
        state.messages.push(user.clone());
        state.messages.push(assistant.clone());
        Ok(())
    }

    async fn create_with_exchange(
        &self,
        conversation: NewConversation,
        user: &Message,
        assistant: &Message,
    ) -> Result<Conversation, DomainError> {
        let id = conversation.id;
        let created = ConversationStore::create(self, conversation).await?;
        if let Err(e) = self.insert_exchange(user, assistant).await {
            self.state()
                .conversations
                .retain(|c| c.conversation.id != id);
            return Err(e);
        }
        Ok(Conversation {
            updated_at: assistant.updated_at,
            current_node: Some(assistant.id.clone()),
            ..created
        })
    }

    async fn update_content(
        &self,
        conversation: ConversationId,
        id: &MessageId,
        content: &Content,
        status: MessageStatus,
        at: OffsetDateTime,
    ) -> Result<(), DomainError> {
        let mut state = self.state();
        let message = state
            .messages
            .iter_mut()
            .find(|m| {
                m.conversation_id == conversation
                    && &m.id == id
                    && m.status == MessageStatus::InProgress
            })
            .ok_or(DomainError::NotFound)?;
        message.content = content.clone();
        message.status = status;
        message.updated_at = at;
        // A deleted conversation has no list to refresh.
        state.touch(conversation, content, at);
        Ok(())
    }

    async fn update_content_titled(
        &self,
        conversation: ConversationId,
        id: &MessageId,
        content: &Content,
        status: MessageStatus,
        at: OffsetDateTime,
        title: TitleIfUntitled<'_>,
    ) -> Result<bool, DomainError> {
        self.update_content(conversation, id, content, status, at)
            .await?;
        let mut state = self.state();
        let Ok(stored) = state.owned_mut(title.owner, conversation) else {
            return Ok(false);
        };
        let c = &mut stored.conversation;
        if &c.title == title.untitled {
            c.title = title.title.clone();
        }
        Ok(&c.title == title.title)
    }

    async fn in_order(
        &self,
        conversation: ConversationId,
        after: Option<&MessageId>,
        limit: usize,
    ) -> Result<(Vec<Message>, bool), DomainError> {
        let state = self.state();
        // Stored in insertion order.
        let mut all = state
            .messages
            .iter()
            .filter(|m| m.conversation_id == conversation);
        if let Some(after) = after {
            all.by_ref()
                .find(|m| &m.id == after)
                .ok_or(DomainError::NotFound)?;
        }
        let mut messages: Vec<Message> = all.take(limit.saturating_add(1)).cloned().collect();
        let more = messages.len() > limit;
        messages.truncate(limit);
        Ok((messages, more))
    }

    async fn children(
        &self,
        conversation: ConversationId,
        parents: &[Option<MessageId>],
    ) -> Result<Vec<(Option<MessageId>, MessageId)>, DomainError> {
        let state = self.state();
        // Stored in insertion order: oldest first.
        Ok(state
            .messages
            .iter()
            .filter(|m| m.conversation_id == conversation && parents.contains(&m.parent_id))
            .map(|m| (m.parent_id.clone(), m.id.clone()))
            .collect())
    }

    async fn reopen(
        &self,
        conversation: ConversationId,
        id: &MessageId,
        at: OffsetDateTime,
    ) -> Result<bool, DomainError> {
        let mut state = self.state();
        if state.live_mut(conversation).is_none() {
            return Err(DomainError::NotFound);
        }
        let Some(m) = state.messages.iter_mut().find(|m| {
            m.conversation_id == conversation
                && &m.id == id
                && m.role == confab_domain::MessageRole::Assistant
                && m.status == MessageStatus::FinishedPartialCompletion
        }) else {
            return Ok(false);
        };
        m.status = MessageStatus::InProgress;
        m.updated_at = at;
        let content = m.content.clone();
        state.touch(conversation, &content, at);
        state.move_to(conversation, id);
        Ok(true)
    }

    async fn page(
        &self,
        conversation: ConversationId,
        before: Option<&MessageId>,
        limit: usize,
    ) -> Result<MessagePage, DomainError> {
        let state = self.state();
        let find = |id: &MessageId| {
            state
                .messages
                .iter()
                .find(|m| m.conversation_id == conversation && &m.id == id)
        };
        // The branch's end: the current node, or the message `before`.
        let end = match before {
            Some(before) => find(before).ok_or(DomainError::NotFound)?.parent_id.clone(),
            None => state
                .conversations
                .iter()
                .find(|c| c.conversation.id == conversation)
                .and_then(|c| c.conversation.current_node.clone()),
        };
        let mut messages = Vec::new();
        let mut next = end.as_ref().and_then(&find);
        while let Some(message) = next {
            if messages.len() == limit {
                break;
            }
            messages.push(message.clone());
            next = message.parent_id.as_ref().and_then(&find);
        }
        let has_more = next.is_some();
        messages.reverse();
        Ok(MessagePage {
            messages,
            has_more,
            children: Vec::new(),
        })
    }

    async fn find(
        &self,
        conversation: ConversationId,
        id: &MessageId,
    ) -> Result<Option<Message>, DomainError> {
        Ok(self
            .state()
            .messages
            .iter()
            .find(|m| m.conversation_id == conversation && &m.id == id)
            .cloned())
    }

    async fn in_progress(
        &self,
        limit: usize,
    ) -> Result<Vec<(ConversationId, MessageId)>, DomainError> {
        let state = self.state();
        let mut open: Vec<&Message> = state
            .messages
            .iter()
            .filter(|m| m.status == MessageStatus::InProgress)
            .collect();
        open.sort_by_key(|m| m.updated_at);
        Ok(open
            .into_iter()
            .take(limit)
            .map(|m| (m.conversation_id, m.id.clone()))
            .collect())
    }

    async fn fail_if_in_progress(
        &self,
        conversation: ConversationId,
        message: &MessageId,
        at: OffsetDateTime,
    ) -> Result<bool, DomainError> {
        let mut state = self.state();
        let Some(m) = state.messages.iter_mut().find(|m| {
            m.conversation_id == conversation
                && &m.id == message
                && m.status == MessageStatus::InProgress
        }) else {
            return Ok(false);
        };
        m.status = MessageStatus::Failed;
        m.updated_at = at;
        Ok(true)
    }
}

#[async_trait]
impl RefreshTokenStore for MemoryStore {
    async fn open_family(
        &self,
        family: FamilyId,
        user: UserId,
        at: OffsetDateTime,
        origin: SessionOrigin,
    ) -> Result<(), DomainError> {
        let mut state = self.state();
        if state.families.contains_key(&family) {
            return Err(DomainError::Duplicate {
                field: Field::SessionId,
            });
        }
        state.families.insert(
            family,
            StoredFamily {
                user,
                revoked_at: None,
                created_at: at,
                last_used_at: at,
                expires_at: at,
                origin,
            },
        );
        Ok(())
    }

    async fn sessions(
        &self,
        user: UserId,
        now: OffsetDateTime,
    ) -> Result<Vec<SessionRecord>, DomainError> {
        let state = self.state();
        let mut live: Vec<SessionRecord> = state
            .families
            .iter()
            .filter(|(_, f)| f.user == user && f.live(now))
            .map(|(id, f)| SessionRecord {
                id: *id,
                created_at: f.created_at,
                last_used_at: f.last_used_at,
                expires_at: f.expires_at,
                origin: f.origin.clone(),
            })
            .collect();
        live.sort_by_key(|s| std::cmp::Reverse((s.last_used_at, s.id)));
        Ok(live)
    }

    async fn revoke_session(
        &self,
        user: UserId,
        family: FamilyId,
        now: OffsetDateTime,
    ) -> Result<bool, DomainError> {
        let mut state = self.state();
        match state.families.get_mut(&family) {
            Some(f) if f.user == user && f.live(now) => f.revoked_at = Some(now),
            _ => return Ok(false),
        }
        for token in state.tokens.values_mut() {
            if token.family == family {
                token.revoked = true;
            }
        }
        Ok(true)
    }

    async fn sweep(&self, ended_before: OffsetDateTime) -> Result<u64, DomainError> {
        let mut state = self.state();
        let ended: Vec<FamilyId> = state
            .families
            .iter()
            .filter(|(_, f)| {
                f.revoked_at.is_some_and(|at| at < ended_before) || f.expires_at < ended_before
            })
            .map(|(id, _)| *id)
            .collect();
        let before = state.tokens.len() + state.families.len();
        state
            .tokens
            .retain(|_, t| t.expires_at >= ended_before && !ended.contains(&t.family));
        state.families.retain(|id, _| !ended.contains(id));
        let after = state.tokens.len() + state.families.len();
        Ok(u64::try_from(before - after).unwrap_or(u64::MAX))
    }

    async fn insert(&self, token: NewRefreshToken) -> Result<bool, DomainError> {
        let mut state = self.state();
        match state.families.get_mut(&token.family) {
            Some(f) if f.revoked_at.is_none() => {
                f.last_used_at = token.issued_at;
                f.expires_at = token.expires_at;
            }
            _ => return Ok(false),
        }
        if state.tokens.contains_key(&token.jti) {
            return Err(DomainError::Duplicate {
                field: Field::TokenId,
            });
        }
        state.tokens.insert(
            token.jti,
            StoredToken {
                family: token.family,
                user: token.user_id,
                expires_at: token.expires_at,
                used_at: None,
                revoked: false,
            },
        );
        Ok(true)
    }

    async fn redeem(&self, jti: TokenId, now: OffsetDateTime) -> Result<Redemption, DomainError> {
        let mut state = self.state();
        let Some(token) = state.tokens.get_mut(&jti) else {
            return Ok(Redemption::Rejected);
        };
        if let Some(used_at) = token.used_at {
            return Ok(Redemption::Reused {
                family: token.family,
                user_id: token.user,
                used_at,
            });
        }
        if token.revoked || token.expires_at <= now {
            return Ok(Redemption::Rejected);
        }
        token.used_at = Some(now);
        Ok(Redemption::Redeemed)
    }

    async fn revoke_family(
        &self,
        family: FamilyId,
        now: OffsetDateTime,
    ) -> Result<(), DomainError> {
        let mut state = self.state();
        if let Some(f) = state.families.get_mut(&family) {
            f.revoked_at.get_or_insert(now);
        }
        for token in state.tokens.values_mut() {
            if token.family == family {
                token.revoked = true;
            }
        }
        Ok(())
    }

    async fn revoke_user(
        &self,
        user: UserId,
        except: Option<FamilyId>,
        now: OffsetDateTime,
    ) -> Result<Vec<FamilyId>, DomainError> {
        let mut state = self.state();
        let mut revoked = Vec::new();
        for (id, f) in &mut state.families {
            if f.user == user && f.revoked_at.is_none() && Some(*id) != except {
                f.revoked_at = Some(now);
                revoked.push(*id);
            }
        }
        for token in state.tokens.values_mut() {
            if token.user == user && Some(token.family) != except {
                token.revoked = true;
            }
        }
        Ok(revoked)
    }
}

#[async_trait]
impl HealthCheck for MemoryStore {
    fn name(&self) -> &'static str {
        "database"
    }

    async fn check(&self) -> Result<(), DomainError> {
        Ok(())
    }
}
