//! Conversations: list, read (with `ETag`), rename/archive, delete.

use actix_web::http::StatusCode;
use actix_web::http::header::{CACHE_CONTROL, ETAG, HeaderValue, IF_NONE_MATCH};
use actix_web::{HttpRequest, HttpResponse, web};
use confab_app::{AppError, Read};
use confab_domain::{
    Conversation, ConversationId, ConversationPatch, ConversationSummary, ListOrder, Message,
    MessageDocument, PageRequest, SearchQuery, Title, UserId, rfc3339,
};
use confab_ports::ConversationQuery;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};

use super::schema::MessageView;
use crate::ApiError;
use crate::State;
use crate::auth::{AuthUser, list_version};
use crate::error::ErrorBody;
use crate::extract::Json;
use crate::rendered::{Rendered, Shape};

/// The list's rendered shape.
const LIST: &str = "list";
/// The history's rendered shape.
const HISTORY: &str = "history";

/// A path id: malformed is as missing (404), never a 500.
pub(crate) fn conversation_id(raw: &str) -> Result<ConversationId, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found())
}

/// The query of a conversation list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// Items to skip.
    #[param(schema_with = crate::fields::offset)]
    offset: Option<u32>,
    /// Items to return.
    #[param(schema_with = crate::fields::limit)]
    limit: Option<u32>,
    /// `updated` (default) or `created`, newest first.
    #[param(schema_with = crate::fields::order)]
    order: Option<String>,
    /// Only titles containing this text (case-insensitive, literal).
    #[param(schema_with = crate::fields::search)]
    q: Option<String>,
    /// List archived conversations instead of active ones.
    archived: Option<bool>,
}

/// One row of a conversation list.
#[derive(Serialize, ToSchema)]
pub(crate) struct ConversationItem {
    /// The conversation's id.
    id: String,
    /// Its title.
    title: String,
    /// The start of its latest message.
    last_message: Option<String>,
    /// Last change (RFC 3339).
    updated_at: String,
    /// Creation (RFC 3339).
    created_at: String,
    /// Whether it is archived.
    is_archived: bool,
}

impl ConversationItem {
    fn of(c: &ConversationSummary) -> Result<Self, ApiError> {
        Ok(Self {
            id: c.id.to_string(),
            title: c.title.as_str().to_owned(),
            last_message: c.last_message.clone(),
            updated_at: rfc3339(c.updated_at).map_err(AppError::from)?,
            created_at: rfc3339(c.created_at).map_err(AppError::from)?,
            is_archived: c.is_archived,
        })
    }
}

/// A page of conversations.
#[derive(Serialize, ToSchema)]
pub(crate) struct ConversationPageBody {
    /// The conversations, newest first.
    items: Vec<ConversationItem>,
    /// The window's size.
    limit: u32,
    /// The window's start.
    offset: u32,
    /// How many conversations match.
    total: u64,
}

/// A conversation and its messages.
#[derive(Serialize, ToSchema)]
pub(crate) struct ConversationBody<'a> {
    /// The conversation's id.
    conversation_id: String,
    /// Its title.
    title: String,
    /// Whether it is archived.
    is_archived: bool,
    /// Creation (RFC 3339).
    created_at: String,
    /// Last change (RFC 3339).
    updated_at: String,
    /// Every message, oldest first.
    #[schema(value_type = Vec<MessageView>)]
    messages: Vec<MessageDocument<'a>>,
}

impl<'a> ConversationBody<'a> {
    pub(crate) fn of(c: &Conversation, messages: &'a [Message]) -> Result<Self, ApiError> {
        Ok(Self {
            conversation_id: c.id.to_string(),
            title: c.title.as_str().to_owned(),
            is_archived: c.is_archived,
            created_at: rfc3339(c.created_at).map_err(AppError::from)?,
            updated_at: rfc3339(c.updated_at).map_err(AppError::from)?,
            messages: messages
                .iter()
                .map(MessageDocument::of)
                .collect::<Result<_, _>>()
                .map_err(AppError::from)?,
        })
    }
}

/// The conversation as a changed resource answers (no messages).
#[derive(Serialize, ToSchema)]
pub(crate) struct ConversationMeta {
    /// The conversation's id.
    conversation_id: String,
    /// Its title.
    title: String,
    /// Whether it is archived.
    is_archived: bool,
    /// Creation (RFC 3339).
    created_at: String,
    /// Last change (RFC 3339).
    updated_at: String,
}

/// A change to a conversation: either field, or both (neither may be
/// `null`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConversationPatchBody {
    /// A new title.
    #[serde(default, deserialize_with = "crate::extract::present")]
    #[schema(schema_with = crate::fields::title)]
    title: Option<String>,
    /// Archive (true) or restore (false).
    #[serde(default, deserialize_with = "crate::extract::present")]
    #[schema(value_type = bool)]
    is_archived: Option<bool>,
}

/// A strong validator of `body`: 128 bits of its SHA-256.
fn etag(body: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(body);
    let mut tag = String::with_capacity(34);
    tag.push('"');
    for byte in &digest[..16] {
        tag.push(char::from(HEX[usize::from(byte >> 4)]));
        tag.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    tag.push('"');
    tag
}

/// Whether `If-None-Match` names `tag` (weak comparison, RFC 9110 §13.1.2).
fn matches(req: &HttpRequest, tag: &str) -> bool {
    let Some(header) = req
        .headers()
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    header.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == tag
    })
}

/// A JSON answer that private caches may keep and must revalidate: 304
/// when the client's copy is current.
///
/// `shape` names the body `render` builds from a read's value; `owner`
/// says whose the value is. A fetched value's body is kept under the
/// value's entry name (`Cached::entry`), so this worker renders each
/// value once: the next read of that entry hands the kept body back
/// (`Read::Kept`) without fetching the value.
pub(crate) fn cacheable_json<T>(
    req: &HttpRequest,
    state: &State,
    shape: &'static str,
    read: Read<T, Rendered>,
    owner: impl FnOnce(&T) -> UserId,
    render: impl FnOnce(&T) -> Result<Vec<u8>, ApiError>,
) -> Result<HttpResponse, ApiError> {
    state
        .metrics
        .cached_read(shape, matches!(read, Read::Kept(_)));
    let rendered = match read {
        Read::Kept(rendered) => rendered,
        Read::Fetched(cached) => {
            let body = render(&cached.value)?;
            let rendered = Rendered {
                owner: owner(&cached.value),
                etag: etag(&body),
                body: body.into(),
            };
            if let Some(entry) = &cached.entry {
                state.rendered.keep(shape, entry, rendered.clone());
            }
            rendered
        }
    };
    let status = if matches(req, &rendered.etag) {
        StatusCode::NOT_MODIFIED
    } else {
        StatusCode::OK
    };
    let mut res = HttpResponse::build(status);
    // Conversations are private text: never kept in a browser's (disk)
    // cache. A client that keeps them itself still revalidates with the
    // ETag.
    res.insert_header((CACHE_CONTROL, HeaderValue::from_static("private, no-store")))
        .insert_header((ETAG, rendered.etag));
    Ok(if status == StatusCode::NOT_MODIFIED {
        res.finish()
    } else {
        res.content_type("application/json").body(rendered.body)
    })
}

/// `body` as JSON.
fn json<B: Serialize>(body: &B) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(body).map_err(ApiError::internal)
}

/// The bodies of `shape` this worker keeps.
fn shape<'a>(state: &'a State, shape: &'static str) -> Shape<'a> {
    Shape {
        bodies: &state.rendered,
        shape,
    }
}

fn query(q: &ListQuery) -> Result<ConversationQuery, ApiError> {
    let page = PageRequest::new(
        q.offset.unwrap_or(0),
        q.limit.unwrap_or(PageRequest::DEFAULT_LIMIT),
    )
    .map_err(AppError::from)?;
    let order = match q.order.as_deref() {
        None => ListOrder::default(),
        Some(o) => ListOrder::parse(o).map_err(AppError::from)?,
    };
    let search = match q.q.as_deref() {
        None | Some("") => None,
        Some(text) => Some(SearchQuery::parse(text).map_err(AppError::from)?),
    };
    Ok(ConversationQuery {
        page,
        order,
        search,
        archived: q.archived.unwrap_or(false),
    })
}

/// The caller's conversations, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/conversations",
    operation_id = "list_conversations",
    tag = "conversations",
    params(ListQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of conversations; `ETag` for revalidation.", body = ConversationPageBody),
        (status = 304, description = "The copy named by `If-None-Match` is current."),
        (status = 400, description = "A bad `offset`, `limit`, `order` or `q`.", body = ErrorBody),
        (status = 401, description = "Missing, invalid or expired access token.", body = ErrorBody),
        (status = 429, description = "Rate limited; see `Retry-After` and the `RateLimit` headers.", body = ErrorBody),
    ),
)]
pub(crate) async fn list(
    req: HttpRequest,
    state: State,
    AuthUser(caller): AuthUser,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let conversations = &state.conversations;
    let query = query(&q)?;
    let read = conversations
        .list(&caller, &query, &shape(&state, LIST), list_version(&req))
        .await?;
    cacheable_json(
        &req,
        &state,
        LIST,
        read,
        |_| caller.user_id,
        |page| {
            json(&ConversationPageBody {
                items: page
                    .items
                    .iter()
                    .map(ConversationItem::of)
                    .collect::<Result<_, _>>()?,
                limit: query.page.limit(),
                offset: query.page.offset(),
                total: page.total,
            })
        },
    )
}

/// One of the caller's conversations with all its messages.
#[utoipa::path(
    get,
    path = "/api/v1/conversations/{id}",
    operation_id = "get_conversation",
    tag = "conversations",
    params(("id" = uuid::Uuid, Path, description = "The conversation's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The conversation; `ETag` for revalidation.", body = ConversationBody),
        (status = 304, description = "The copy named by `If-None-Match` is current."),
        (status = 401, description = "Missing, invalid or expired access token.", body = ErrorBody),
        (status = 404, description = "No such conversation, or not the caller's.", body = ErrorBody),
        (status = 429, description = "Rate limited; see `Retry-After` and the `RateLimit` headers.", body = ErrorBody),
    ),
)]
pub(crate) async fn get(
    req: HttpRequest,
    state: State,
    AuthUser(caller): AuthUser,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let conversations = &state.conversations;
    let id = conversation_id(&id)?;
    // The owner is checked by the read: against the value, or against
    // the owner of the kept body.
    let read = conversations
        .read(&caller, id, &shape(&state, HISTORY))
        .await?;
    cacheable_json(
        &req,
        &state,
        HISTORY,
        read,
        |(conversation, _)| conversation.owner,
        |(conversation, messages)| json(&ConversationBody::of(conversation, messages)?),
    )
}

/// Renames and/or archives one of the caller's conversations.
#[utoipa::path(
    patch,
    path = "/api/v1/conversations/{id}",
    operation_id = "update_conversation",
    tag = "conversations",
    params(("id" = uuid::Uuid, Path, description = "The conversation's id")),
    request_body = ConversationPatchBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The changed conversation.", body = ConversationMeta),
        (status = 400, description = "A bad or empty body.", body = ErrorBody),
        (status = 401, description = "Missing, invalid or expired access token.", body = ErrorBody),
        (status = 404, description = "No such conversation, or not the caller's.", body = ErrorBody),
        (status = 413, description = "The body is too large.", body = ErrorBody),
        (status = 415, description = "The body is not JSON.", body = ErrorBody),
        (status = 429, description = "Rate limited; see `Retry-After` and the `RateLimit` headers.", body = ErrorBody),
    ),
)]
pub(crate) async fn update(
    state: State,
    AuthUser(caller): AuthUser,
    id: web::Path<String>,
    Json(body): Json<ConversationPatchBody>,
) -> Result<HttpResponse, ApiError> {
    let conversations = &state.conversations;
    let id = conversation_id(&id)?;
    let patch = ConversationPatch {
        title: body
            .title
            .as_deref()
            .map(Title::parse)
            .transpose()
            .map_err(AppError::from)?,
        is_archived: body.is_archived,
    };
    let c = conversations.update(&caller, id, patch).await?;
    Ok(HttpResponse::Ok().json(ConversationMeta {
        conversation_id: c.id.to_string(),
        title: c.title.as_str().to_owned(),
        is_archived: c.is_archived,
        created_at: rfc3339(c.created_at).map_err(AppError::from)?,
        updated_at: rfc3339(c.updated_at).map_err(AppError::from)?,
    }))
}

/// Deletes one of the caller's conversations; it is not found afterwards.
#[utoipa::path(
    delete,
    path = "/api/v1/conversations/{id}",
    operation_id = "delete_conversation",
    tag = "conversations",
    params(("id" = uuid::Uuid, Path, description = "The conversation's id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted."),
        (status = 401, description = "Missing, invalid or expired access token.", body = ErrorBody),
        (status = 404, description = "No such conversation, or not the caller's.", body = ErrorBody),
        (status = 429, description = "Rate limited; see `Retry-After` and the `RateLimit` headers.", body = ErrorBody),
    ),
)]
pub(crate) async fn delete(
    state: State,
    AuthUser(caller): AuthUser,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let conversations = &state.conversations;
    let id = conversation_id(&id)?;
    conversations.delete(&caller, id).await?;
    Ok(HttpResponse::NoContent().finish())
}
