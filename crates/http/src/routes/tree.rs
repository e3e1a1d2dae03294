//! `GET /api/v1/conversations/{id}/tree`: a conversation's whole tree,
//! every branch, a page at a time.

use actix_web::{HttpResponse, web};
use confab_domain::{Field, HistoryRequest, MessageId};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::conversations::{MappingNode, conversation_id, message_id};
use crate::ApiError;
use crate::State;
use crate::auth::AuthUser;
use crate::error::ErrorBody;

/// Which page of a tree: the messages after `after`, in the order they
/// were stored.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct TreeQuery {
    /// Messages to return at most.
    #[param(schema_with = crate::fields::history_limit)]
    limit: Option<u32>,
    /// The messages after this one (a page's `cursor`).
    #[param(schema_with = crate::fields::after)]
    after: Option<String>,
}

/// A page of a conversation's tree.
#[derive(Serialize, ToSchema)]
pub(crate) struct TreeBody<'a> {
    /// The conversation's id.
    conversation_id: String,
    /// The message its current branch ends at (`null` while it has none).
    #[schema(value_type = Option<String>, required = true)]
    current_node: Option<&'a str>,
    /// Its messages on every branch, in the order they were stored, each
    /// with its parent and children.
    nodes: Vec<MappingNode<'a>>,
    /// Whether more messages follow these.
    has_more: bool,
    /// With `has_more`, the id to pass as `after` for the next page (the
    /// last node's); else `null`.
    #[schema(value_type = Option<String>, required = true)]
    cursor: Option<&'a str>,
}

/// The whole tree of one of the caller's conversations, every branch, a
/// page at a time: its messages in the order they were stored (a parent
/// always before its children), each with its parent and children. At
/// most `limit` messages and 1 MiB of text a page (its first message always
/// comes, whole); `has_more` and `cursor` lead on: pass `cursor` as `after`.
#[utoipa::path(
    get,
    path = "/api/v1/conversations/{id}/tree",
    operation_id = "get_conversation_tree",
    tag = "conversations",
    params(("id" = uuid::Uuid, Path, description = "The conversation's id"), TreeQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of the conversation's tree.", body = TreeBody),
        (status = 400, description = "An unknown query parameter, or a `limit` that is not a number.", body = ErrorBody),
        (status = 401, description = "Missing, invalid or expired access token.", body = ErrorBody),
        (status = 404, description = "No such conversation, or not the caller's; or (`field`: `after`) `after` is not one of its messages.", body = ErrorBody),
        (status = 429, description = "Rate limited; see `Retry-After` and the `RateLimit` headers.", body = ErrorBody),
    ),
)]
pub(crate) async fn tree(
    state: State,
    AuthUser(caller): AuthUser,
    id: web::Path<String>,
    q: web::Query<TreeQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = conversation_id(&id)?;
    let after = q
        .after
        .as_deref()
        .map(|raw| message_id(raw, Field::After))
        .transpose()?;
    let limit = q.limit.unwrap_or(HistoryRequest::DEFAULT_LIMIT);
    let page = state
        .conversations
        .tree(&caller, id, after.as_ref(), limit)
        .await?;
    let body = TreeBody {
        conversation_id: page.conversation.id.to_string(),
        current_node: page
            .conversation
            .current_node
            .as_ref()
            .map(MessageId::as_str),
        nodes: page
            .messages
            .iter()
            .map(|m| MappingNode::of(m, &page.children))
            .collect::<Result<_, _>>()?,
        has_more: page.has_more,
        cursor: page
            .messages
            .last()
            .filter(|_| page.has_more)
            .map(|m| m.id.as_str()),
    };
    Ok(HttpResponse::Ok()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "private, no-store"))
        .json(body))
}
