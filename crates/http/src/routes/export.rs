//! Taking conversations out, and a clean slate:
//! `GET /api/v1/conversations/{id}/export` (the whole tree as JSON, or the
//! current branch as Markdown), `GET /api/v1/conversations/export` (all of
//! them as JSON Lines) and `DELETE /api/v1/conversations` (all of them).
//!
//! An export is streamed a page at a time (500 messages) through a small
//! channel: however large the conversations, the server holds a page of
//! messages (and, for Markdown, the branch's ids), never the whole.

use actix_web::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use actix_web::web::Bytes;
use actix_web::{HttpResponse, web};
use confab_app::{AppError, Conversations, TreePage};
use confab_domain::{
    Conversation, Field, Message, MessageId, MessageRole, MessageStatus, ModelSlug, SystemPrompt,
    rfc3339,
};
use confab_ports::AccessClaims;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use utoipa::{IntoParams, ToSchema};

use super::conversations::{MappingNode, conversation_id};
use crate::ApiError;
use crate::State;
use crate::auth::AuthUser;
use crate::error::ErrorBody;

/// Messages an export reads at a time.
const PAGE: u32 = 500;

/// Chunks waiting for a slow client before the export waits too.
const QUEUED: usize = 4;

/// The format of a conversation's export.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExportQuery {
    /// `json` (the default: the whole tree) or `markdown` (the current
    /// branch, to read).
    #[param(schema_with = crate::fields::export_format)]
    format: Option<String>,
}

/// A conversation as an export holds it: its settings and its whole tree.
#[derive(Serialize, ToSchema)]
pub(crate) struct ConversationExport<'a> {
    /// The conversation's id.
    conversation_id: String,
    /// Its title.
    title: &'a str,
    /// Whether it is archived.
    is_archived: bool,
    /// The message its current branch ends at.
    #[schema(value_type = Option<String>, required = true)]
    current_node: Option<&'a str>,
    /// Its own system prompt (`null`: the service's).
    #[schema(value_type = Option<String>, required = true)]
    system_prompt: Option<&'a str>,
    /// Its default model (`null`: the service's).
    #[schema(value_type = Option<String>, required = true)]
    model: Option<&'a str>,
    /// Creation (RFC 3339).
    created_at: String,
    /// Last change (RFC 3339).
    updated_at: String,
    /// Every message on every branch, in the order they were stored (a
    /// parent before its children), with its parent and children.
    nodes: Vec<MappingNode<'a>>,
}

/// How many conversations a delete-all removed.
#[derive(Serialize, ToSchema)]
pub(crate) struct DeletedBody {
    /// How many.
    deleted: usize,
}

/// The confirmation a delete-all needs.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeleteAllQuery {
    /// Must be `all`.
    #[param(schema_with = crate::fields::confirm_all)]
    confirm: String,
}

/// The opening of `conversation`'s JSON export, up to the `[` of its
/// nodes.
fn head(conversation: &Conversation) -> Result<Vec<u8>, ApiError> {
    let export = ConversationExport {
        conversation_id: conversation.id.to_string(),
        title: conversation.title.as_str(),
        is_archived: conversation.is_archived,
        current_node: conversation.current_node.as_ref().map(MessageId::as_str),
        system_prompt: conversation
            .settings
            .system_prompt
            .as_ref()
            .map(SystemPrompt::as_str),
        model: conversation.settings.model.as_ref().map(ModelSlug::as_str),
        created_at: rfc3339(conversation.created_at).map_err(AppError::from)?,
        updated_at: rfc3339(conversation.updated_at).map_err(AppError::from)?,
        nodes: Vec::new(),
    };
    let mut json = serde_json::to_vec(&export).map_err(ApiError::internal)?;
    // `nodes` is the last member: `…,"nodes":[]}` opens it.
    json.truncate(json.len().saturating_sub(2));
    Ok(json)
}

/// A page's nodes as JSON, each after a comma unless it is the export's
/// first.
fn nodes(page: &TreePage, first: &mut bool) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    for message in &page.messages {
        if !std::mem::take(first) {
            out.push(b',');
        }
        let node = MappingNode::of(message, &page.children)?;
        serde_json::to_writer(&mut out, &node).map_err(ApiError::internal)?;
    }
    Ok(out)
}

/// The conversation of `first` read page by page, from `first` on, each
/// page `render`ed into `tx`; `false` when the client went away, a read
/// failed or a page could not be rendered (the body then ends short).
async fn walk(
    conversations: &Conversations,
    caller: &AccessClaims,
    first: TreePage,
    tx: &mpsc::Sender<Bytes>,
    mut render: impl FnMut(&TreePage) -> Option<Vec<u8>>,
) -> bool {
    let id = first.conversation.id;
    let mut page = first;
    loop {
        let Some(chunk) = render(&page) else {
            return false;
        };
        if tx.send(Bytes::from(chunk)).await.is_err() {
            return false;
        }
        let Some(last) = page.messages.last().filter(|_| page.has_more) else {
            return true;
        };
        let after = last.id.clone();
        match conversations.tree(caller, id, Some(&after), PAGE).await {
            Ok(next) => page = next,
            Err(e) => {
                tracing::warn!(error = %e, "an export stopped short");
                return false;
            }
        }
    }
}

/// The nodes of a conversation's JSON export and its end, the first page
/// already read, into `tx`; as [`walk`].
async fn send_json(
    conversations: &Conversations,
    caller: &AccessClaims,
    first: TreePage,
    tx: &mpsc::Sender<Bytes>,
) -> bool {
    let mut is_first = true;
    walk(conversations, caller, first, tx, |page| {
        nodes(page, &mut is_first).ok()
    })
    .await
        && tx.send(Bytes::from_static(b"]}")).await.is_ok()
}

/// The Markdown of one message.
fn markdown_of(message: &Message) -> String {
    let who = match message.role {
        MessageRole::User => "You",
        MessageRole::Assistant => "Assistant",
        MessageRole::System => "System",
        MessageRole::Tool => "Tool",
    };
    let mut out = format!("## {who}\n\n{}\n\n", message.content.joined().trim_end());
    match message.status {
        MessageStatus::FinishedPartialCompletion => out.push_str("*(stopped early)*\n\n"),
        MessageStatus::Failed => out.push_str("*(failed)*\n\n"),
        MessageStatus::InProgress => out.push_str("*(still being written)*\n\n"),
        MessageStatus::FinishedSuccessfully => {}
    }
    out
}

/// The current branch of the conversation of `first` as Markdown into
/// `tx`: the tree read in order, its branch's messages kept.
async fn send_markdown(
    conversations: &Conversations,
    caller: &AccessClaims,
    first: TreePage,
    tx: &mpsc::Sender<Bytes>,
) -> bool {
    let id = first.conversation.id;
    let branch = match conversations.branch_ids(caller, id).await {
        Ok(ids) => ids.into_iter().collect::<std::collections::HashSet<_>>(),
        Err(e) => {
            tracing::warn!(error = %e, "an export stopped short");
            return false;
        }
    };
    let title = format!("# {}\n\n", first.conversation.title.as_str());
    if tx.send(Bytes::from(title)).await.is_err() {
        return false;
    }
    walk(conversations, caller, first, tx, |page| {
        let text: String = page
            .messages
            .iter()
            .filter(|m| branch.contains(&m.id))
            .map(markdown_of)
            .collect();
        Some(text.into_bytes())
    })
    .await
}

/// A streamed body of `content_type` whose chunks `fill` writes.
fn streamed<F>(content_type: &'static str, filename: String, fill: F) -> HttpResponse
where
    F: FnOnce(mpsc::Sender<Bytes>) -> futures_util::future::BoxFuture<'static, ()>,
{
    let (tx, rx) = mpsc::channel::<Bytes>(QUEUED);
    actix_web::rt::spawn(fill(tx));
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, actix_web::Error>(chunk), rx))
    });
    HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, content_type))
        .insert_header((
            CONTENT_DISPOSITION,
            format!("attachment; filename=\"{filename}\""),
        ))
        .insert_header((actix_web::http::header::CACHE_CONTROL, "private, no-store"))
        .streaming(body)
}

/// One of the caller's conversations, exported: `format=json` (the
/// default) is the whole tree as `GET …/tree` gives it, every branch, with
/// the conversation's settings; `format=markdown` is the current branch,
/// to read. Streamed, whatever its size.
#[utoipa::path(
    get,
    path = "/api/v1/conversations/{id}/export",
    operation_id = "export_conversation",
    tag = "conversations",
    params(("id" = uuid::Uuid, Path, description = "The conversation's id"), ExportQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The export, as an attachment.", content(
            (ConversationExport = "application/json"),
            (String = "text/markdown"),
        )),
        (status = 400, description = "An unknown query parameter.", body = ErrorBody),
        (status = 401, description = "Missing, invalid or expired access token.", body = ErrorBody),
        (status = 404, description = "No such conversation, or not the caller's.", body = ErrorBody),
        (status = 429, description = "Rate limited; see `Retry-After` and the `RateLimit` headers.", body = ErrorBody),
    ),
)]
pub(crate) async fn export(
    state: State,
    AuthUser(caller): AuthUser,
    id: web::Path<String>,
    q: web::Query<ExportQuery>,
) -> Result<HttpResponse, ApiError> {
    let markdown = match q.format.as_deref() {
        None | Some("json") => false,
        Some("markdown") => true,
        Some(_) => {
            return Err(ApiError::validation(
                Some("format".to_owned()),
                "must be json or markdown",
            ));
        }
    };
    let id = conversation_id(&id)?;
    let conversations = state.conversations.clone();
    // The first page before the answer: a foreign id is a plain 404.
    let first = conversations.tree(&caller, id, None, PAGE).await?;
    if markdown {
        let filename = format!("conversation-{id}.md");
        return Ok(streamed(
            "text/markdown; charset=utf-8",
            filename,
            move |tx| {
                Box::pin(async move {
                    send_markdown(&conversations, &caller, first, &tx).await;
                })
            },
        ));
    }
    let opening = head(&first.conversation)?;
    Ok(streamed(
        "application/json",
        format!("conversation-{id}.json"),
        move |tx| {
            Box::pin(async move {
                if tx.send(Bytes::from(opening)).await.is_ok() {
                    send_json(&conversations, &caller, first, &tx).await;
                }
            })
        },
    ))
}

/// All of the caller's conversations, archived ones too, newest first, as
/// JSON Lines: one line per conversation, each as its JSON export. Streamed
/// a page at a time, whatever their number and size.
#[utoipa::path(
    get,
    path = "/api/v1/conversations/export",
    operation_id = "export_conversations",
    tag = "conversations",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "One conversation per line, as an attachment.", content_type = "application/x-ndjson", body = String),
        (status = 401, description = "Missing, invalid or expired access token.", body = ErrorBody),
        (status = 429, description = "Rate limited; see `Retry-After` and the `RateLimit` headers.", body = ErrorBody),
    ),
)]
pub(crate) async fn export_all(
    state: State,
    AuthUser(caller): AuthUser,
) -> Result<HttpResponse, ApiError> {
    let conversations = state.conversations.clone();
    let ids = conversations.all_ids(&caller).await?;
    Ok(streamed(
        "application/x-ndjson",
        "conversations.jsonl".to_owned(),
        move |tx| {
            Box::pin(async move {
                for id in ids {
                    let first = match conversations.tree(&caller, id, None, PAGE).await {
                        Ok(first) => first,
                        // Deleted since the export began: left out.
                        Err(AppError::NotFound) => continue,
                        Err(e) => {
                            tracing::warn!(error = %e, "an export stopped short");
                            return;
                        }
                    };
                    let Ok(opening) = head(&first.conversation) else {
                        return;
                    };
                    if tx.send(Bytes::from(opening)).await.is_err()
                        || !send_json(&conversations, &caller, first, &tx).await
                        || tx.send(Bytes::from_static(b"\n")).await.is_err()
                    {
                        return;
                    }
                }
            })
        },
    ))
}

/// Deletes all of the caller's conversations (a clean slate): every one
/// is gone from every route, answers running in them stop. Needs
/// `confirm=all`.
#[utoipa::path(
    delete,
    path = "/api/v1/conversations",
    operation_id = "delete_conversations",
    tag = "conversations",
    params(DeleteAllQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "How many were deleted.", body = DeletedBody),
        (status = 400, description = "No `confirm`, or an unknown query parameter.", body = ErrorBody),
        (status = 401, description = "Missing, invalid or expired access token.", body = ErrorBody),
        (status = 429, description = "Rate limited; see `Retry-After` and the `RateLimit` headers.", body = ErrorBody),
    ),
)]
pub(crate) async fn delete_all(
    state: State,
    AuthUser(caller): AuthUser,
    q: web::Query<DeleteAllQuery>,
) -> Result<HttpResponse, ApiError> {
    if q.confirm != "all" {
        return Err(AppError::Validation {
            field: Field::Confirm,
            message: "must be all: this deletes every conversation".into(),
        }
        .into());
    }
    let deleted = state.conversations.delete_all(&caller).await?;
    Ok(HttpResponse::Ok().json(DeletedBody { deleted }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use confab_domain::ConversationId;

    use super::*;

    #[test]
    fn a_message_reads_as_markdown() {
        let message = Message {
            id: MessageId::parse("m1").unwrap(),
            conversation_id: ConversationId::generate(),
            parent_id: None,
            role: MessageRole::Assistant,
            content: confab_domain::Content::text(vec!["Hello\n".to_owned()]).unwrap(),
            status: MessageStatus::FinishedPartialCompletion,
            model_slug: None,
            metadata: confab_domain::MessageMetadata::new(),
            created_at: confab_domain::OffsetDateTime::UNIX_EPOCH,
            updated_at: confab_domain::OffsetDateTime::UNIX_EPOCH,
        };
        assert_eq!(
            markdown_of(&message),
            "## Assistant\n\nHello\n\n*(stopped early)*\n\n"
        );
    }
}
