//! A burst's answers as the database holds them.

use std::fmt::Write as _;

use confab_domain::{
    ConversationSummary, DomainError, ListOrder, MessageRole, MessageStatus, PageRequest, Title,
};
use confab_ports::{ConversationQuery, ConversationStore, MessageStore, UserStore};
use confab_sql::SqlStore;

use super::{Burst, full_answer, tally};

impl Burst {
    /// Checks the database: one conversation per send, and in each the
    /// newest assistant message of its current branch
    /// `finished_successfully` with the whole text; the conversation titled
    /// (a burst's new conversations get theirs with the answer's final
    /// save) and listed with the answer's text as its preview.
    /// Every conversation is looked at, those of streams that never named
    /// theirs too (the database holds this burst's user alone). Returns
    /// how many are saved whole and `"100/100 saved whole; …"`.
    pub async fn stored(&self, store: &SqlStore) -> (usize, String) {
        let n = self.sends.len();
        let conversations = match all_conversations(store).await {
            Ok(conversations) => conversations,
            Err(e) => return (0, format!("the store failed: {e}")),
        };
        let mut problems = Vec::new();
        for summary in &conversations {
            let conversation = summary.id;
            if summary.title == Title::placeholder() {
                problems.push("left untitled".to_owned());
                continue;
            }
            if !summary
                .last_message
                .as_deref()
                .is_some_and(|preview| !preview.is_empty() && full_answer().starts_with(preview))
            {
                problems.push("listed with another preview".to_owned());
                continue;
            }
            let messages = match MessageStore::page(store, conversation, None, usize::MAX)
                .await
                .map(|p| p.messages)
            {
                Ok(messages) => messages,
                Err(e) => {
                    problems.push(format!("store error: {e}"));
                    continue;
                }
            };
            let answer = messages
                .iter()
                .rev()
                .find(|m| m.role == MessageRole::Assistant);
            match answer {
                None => problems.push("no assistant message".to_owned()),
                Some(m) if m.status != MessageStatus::FinishedSuccessfully => {
                    problems.push(format!("saved {:?}", m.status));
                }
                Some(m) if m.content.parts() != [full_answer()] => {
                    problems.push("finished_successfully with another text".to_owned());
                }
                Some(_) => {}
            }
        }
        let whole = conversations.len() - problems.len();
        let mut out = format!(
            "{whole}/{n} saved whole; {} conversations stored",
            conversations.len()
        );
        if !problems.is_empty() {
            let _ = write!(out, "; problems {}", tally(problems.into_iter()));
        }
        (whole, out)
    }
}

/// Every conversation of the store's only user, by creation.
async fn all_conversations(store: &SqlStore) -> Result<Vec<ConversationSummary>, DomainError> {
    let users = UserStore::list(store, PageRequest::new(0, 2)?).await?;
    let [user] = users.items.as_slice() else {
        return Err(DomainError::internal("a burst's database holds one user"));
    };
    let mut ids = Vec::new();
    loop {
        let offset = u32::try_from(ids.len()).unwrap_or(u32::MAX);
        let query = ConversationQuery {
            page: PageRequest::new(offset, PageRequest::MAX_LIMIT)?,
            order: ListOrder::Created,
            search: None,
            archived: false,
        };
        let page = ConversationStore::list(store, user.id, &query).await?;
        if page.items.is_empty() {
            return Ok(ids);
        }
        ids.extend(page.items);
    }
}
