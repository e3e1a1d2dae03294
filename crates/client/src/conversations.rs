//! Conversations: lists, histories, renames, archives, deletes; models,
//! usage and allowances.

use confab_domain::ConversationId;
use reqwest::{Method, Url};

use crate::{
    Allowance, Call, Client, Conversation, ConversationSummary, Error, Model, Page, UsageReport,
    json,
};

/// Which conversations a list shows.
///
/// ```
/// let query = confab_client::ListQuery { search: Some("redis".into()), ..Default::default() };
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Items to skip (default 0).
    pub offset: Option<u32>,
    /// Items to return, 1 to 100 (default 20).
    pub limit: Option<u32>,
    /// Search titles and message text.
    pub search: Option<String>,
    /// Archived conversations instead of the others.
    pub archived: bool,
    /// Newest created first, instead of newest changed first.
    pub by_creation: bool,
}

impl ListQuery {
    fn apply(&self, url: &mut Url) {
        let mut pairs = url.query_pairs_mut();
        if let Some(offset) = self.offset {
            pairs.append_pair("offset", &offset.to_string());
        }
        if let Some(limit) = self.limit {
            pairs.append_pair("limit", &limit.to_string());
        }
        if let Some(q) = &self.search {
            pairs.append_pair("q", q);
        }
        if self.archived {
            pairs.append_pair("archived", "true");
        }
        if self.by_creation {
            pairs.append_pair("order", "created");
        }
    }
}

/// A change to a conversation (at least one field).
///
/// ```
/// let patch = confab_client::ConversationPatch { title: Some("Trip".into()), ..Default::default() };
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ConversationPatch {
    /// A new title.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Archive (or unarchive) it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_archived: Option<bool>,
    /// Switch to the branch ending at this message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_node: Option<String>,
    /// Its own system prompt (`""`: the service's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    /// Its default model (`"default"`: the service's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

impl Client {
    /// A page of the caller's conversations.
    ///
    /// ```no_run
    /// # async fn demo(client: confab_client::Client) -> Result<(), confab_client::Error> {
    /// let archived = confab_client::ListQuery { archived: true, ..Default::default() };
    /// let page = client.conversations(&archived).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Api`] 422 naming a parameter out of range.
    pub async fn conversations(
        &self,
        query: &ListQuery,
    ) -> Result<Page<ConversationSummary>, Error> {
        let mut url = self.url("api/v1/conversations")?;
        query.apply(&mut url);
        json(self.authorized(&Call::new(Method::GET, url)).await?).await
    }

    /// A conversation with the newest page of its current branch.
    ///
    /// ```no_run
    /// # async fn demo(client: confab_client::Client, id: confab_domain::ConversationId)
    /// # -> Result<(), confab_client::Error> {
    /// let conversation = client.conversation(id).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Api`] 404 `NOT_FOUND` for another user's, a deleted or an
    /// unknown conversation.
    pub async fn conversation(&self, id: ConversationId) -> Result<Conversation, Error> {
        self.history(id, None, None).await
    }

    /// A page of a conversation's current branch: at most `limit` messages
    /// before the message `before` (the newest without it).
    ///
    /// ```no_run
    /// # async fn demo(client: confab_client::Client, id: confab_domain::ConversationId)
    /// # -> Result<(), confab_client::Error> {
    /// let page = client.history(id, Some(10), None).await?;
    /// if let Some(cursor) = &page.cursor {
    ///     let older = client.history(id, Some(10), Some(cursor)).await?;
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Client::conversation`]; 404 also for an unknown `before`.
    pub async fn history(
        &self,
        id: ConversationId,
        limit: Option<u32>,
        before: Option<&str>,
    ) -> Result<Conversation, Error> {
        let mut url = self.url(&format!("api/v1/conversations/{id}"))?;
        {
            let mut pairs = url.query_pairs_mut();
            if let Some(limit) = limit {
                pairs.append_pair("limit", &limit.to_string());
            }
            if let Some(before) = before {
                pairs.append_pair("before", before);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        json(self.authorized(&Call::new(Method::GET, url)).await?).await
    }

    /// Changes a conversation; returns it without messages.
    ///
    /// ```no_run
    /// # async fn demo(client: confab_client::Client, id: confab_domain::ConversationId)
    /// # -> Result<(), confab_client::Error> {
    /// let patch = confab_client::ConversationPatch { is_archived: Some(true), ..Default::default() };
    /// client.update_conversation(id, &patch).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Api`]: 404, 422 naming the field that breaks a rule.
    pub async fn update_conversation(
        &self,
        id: ConversationId,
        patch: &ConversationPatch,
    ) -> Result<Conversation, Error> {
        let body = serde_json::to_value(patch).map_err(|e| Error::Protocol(e.to_string()))?;
        let call = Call::new(
            Method::PATCH,
            self.url(&format!("api/v1/conversations/{id}"))?,
        )
        .json(body);
        json(self.authorized(&call).await?).await
    }

    /// Renames a conversation.
    ///
    /// ```no_run
    /// # async fn demo(client: confab_client::Client, id: confab_domain::ConversationId)
    /// # -> Result<(), confab_client::Error> {
    /// client.rename(id, "Trip to Perth").await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Client::update_conversation`].
    pub async fn rename(&self, id: ConversationId, title: &str) -> Result<Conversation, Error> {
        let patch = ConversationPatch {
            title: Some(title.to_owned()),
            ..ConversationPatch::default()
        };
        self.update_conversation(id, &patch).await
    }

    /// Archives (`true`) or unarchives a conversation.
    ///
    /// ```no_run
    /// # async fn demo(client: confab_client::Client, id: confab_domain::ConversationId)
    /// # -> Result<(), confab_client::Error> {
    /// client.archive(id, true).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Client::update_conversation`].
    pub async fn archive(&self, id: ConversationId, archived: bool) -> Result<Conversation, Error> {
        let patch = ConversationPatch {
            is_archived: Some(archived),
            ..ConversationPatch::default()
        };
        self.update_conversation(id, &patch).await
    }

    /// Deletes a conversation (any answer running in it is stopped).
    ///
    /// ```no_run
    /// # async fn demo(client: confab_client::Client, id: confab_domain::ConversationId)
    /// # -> Result<(), confab_client::Error> {
    /// client.delete_conversation(id).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Api`] 404 when it is not there.
    pub async fn delete_conversation(&self, id: ConversationId) -> Result<(), Error> {
        let call = Call::new(
            Method::DELETE,
            self.url(&format!("api/v1/conversations/{id}"))?,
        );
        self.authorized(&call).await.map(|_| ())
    }

    /// Deletes every conversation of the caller; returns how many.
    ///
    /// ```no_run
    /// # async fn demo(client: confab_client::Client) -> Result<(), confab_client::Error> {
    /// let gone = client.delete_all_conversations().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Api`] when the server refuses.
    pub async fn delete_all_conversations(&self) -> Result<u64, Error> {
        #[derive(serde::Deserialize)]
        struct Deleted {
            deleted: u64,
        }
        let mut url = self.url("api/v1/conversations")?;
        url.query_pairs_mut().append_pair("confirm", "all");
        let deleted: Deleted =
            json(self.authorized(&Call::new(Method::DELETE, url)).await?).await?;
        Ok(deleted.deleted)
    }

    /// The models a send may name, the default first.
    ///
    /// ```no_run
    /// # async fn demo(client: confab_client::Client) -> Result<(), confab_client::Error> {
    /// for model in client.models().await? {
    ///     println!("{} ({})", model.id, model.state);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Api`] when the server refuses.
    pub async fn models(&self) -> Result<Vec<Model>, Error> {
        #[derive(serde::Deserialize)]
        struct Models {
            items: Vec<Model>,
        }
        let call = Call::new(Method::GET, self.url("api/v1/models")?);
        let models: Models = json(self.authorized(&call).await?).await?;
        Ok(models.items)
    }

    /// The caller's tokens of the last 30 days, per day and model.
    ///
    /// ```no_run
    /// # async fn demo(client: confab_client::Client) -> Result<(), confab_client::Error> {
    /// let report = client.usage().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Api`] when the server refuses.
    pub async fn usage(&self) -> Result<UsageReport, Error> {
        let call = Call::new(Method::GET, self.url("api/v1/users/me/usage")?);
        json(self.authorized(&call).await?).await
    }

    /// The caller's token allowances, used and left.
    ///
    /// ```no_run
    /// # async fn demo(client: confab_client::Client) -> Result<(), confab_client::Error> {
    /// let allowance = client.allowance().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Api`] when the server refuses.
    pub async fn allowance(&self) -> Result<Allowance, Error> {
        let call = Call::new(Method::GET, self.url("api/v1/users/me/allowance")?);
        json(self.authorized(&call).await?).await
    }
}
