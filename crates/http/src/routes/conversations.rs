//! Conversations: list, read (with `ETag`), rename/archive, delete.

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::http::header::{CACHE_CONTROL, ETAG, HeaderValue, IF_MATCH, IF_NONE_MATCH};
use actix_web::{HttpRequest, HttpResponse, web};
use confab_app::{AppError, Read};
use confab_domain::{
    Children, Conversation, ConversationId, ConversationPatch, ConversationSummary, Field,
    HistoryRequest, ListOrder, Message, MessageDocument, MessageId, MessagePage, ModelSlug,
    PageRequest, SearchQuery, SystemPrompt, Title, UserId, rfc3339,
};
use confab_ports::AccessClaims;
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
/// The rendered bodies of `/backend-api/conversation/{id}` (with `mapping`).
const BACKEND_HISTORY: &str = "backend-history";

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
    /// A search: conversations whose title holds this text, or with a
    /// message whose words start with every term of it (case-insensitive;
    /// any syntax in it is text), best match first, each with its
    /// `match`. Blank is no search.
    #[param(schema_with = crate::fields::search)]
    q: Option<String>,
    /// List archived conversations instead of active ones.
    archived: Option<bool>,
}

/// The query of a conversation's history: which page of its messages.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct HistoryQuery {
    /// Messages to return at most.
    #[param(schema_with = crate::fields::history_limit)]
    limit: Option<u32>,
    /// The messages before this one.
    #[param(schema_with = crate::fields::before)]
    before: Option<String>,
}

/// `raw` as a message id, or a validation error naming `field`.
pub(crate) fn message_id(raw: &str, field: Field) -> Result<MessageId, AppError> {
    MessageId::parse(raw).map_err(|_| AppError::Validation {
        field,
        message: "must be a message id: 1 to 64 letters, digits, '_' or '-'".into(),
    })
}

impl HistoryQuery {
    fn request(&self) -> Result<HistoryRequest, ApiError> {
        let before = self
            .before
            .as_deref()
            .map(|id| message_id(id, Field::Before))
            .transpose()?;
        let limit = self.limit.unwrap_or(HistoryRequest::DEFAULT_LIMIT);
        Ok(HistoryRequest::new(before, limit).map_err(AppError::from)?)
    }
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
    /// Why a search (`q`) found it; only in a search's results.
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    #[schema(rename = "match")]
    found: Option<MatchBody>,
}

/// Where a search matched a conversation: the best-matching message (or
/// `null` when only the title matched, and the snippet is the title).
#[derive(Serialize, ToSchema)]
pub(crate) struct MatchBody {
    /// The message, of any branch; `null` for a title match.
    message_id: Option<String>,
    /// Plain text around the first match (never markup: render it as
    /// text), at most 160 characters and an ellipsis at a cut end.
    #[schema(example = "…how to tune PostgreSQL for a write-heavy…")]
    snippet: String,
    /// The matches in `snippet`: `[start, end)` ranges counted in Unicode
    /// code points, in order, never overlapping.
    #[schema(example = json!([[11, 21]]))]
    highlights: Vec<[usize; 2]>,
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
            found: c.hit.as_ref().map(|hit| MatchBody {
                message_id: hit.message_id.as_ref().map(|id| id.as_str().to_owned()),
                snippet: hit.snippet.text().to_owned(),
                highlights: hit
                    .snippet
                    .highlights()
                    .iter()
                    .map(|&(start, end)| [start, end])
                    .collect(),
            }),
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

/// A conversation and a page of its messages: the newest, or those
/// before `before`.
#[derive(Serialize, ToSchema)]
pub(crate) struct ConversationBody<'a> {
    /// The conversation's id.
    conversation_id: String,
    /// Its title.
    title: String,
    /// Whether it is archived.
    is_archived: bool,
    /// The message its current branch ends at (`null` while it has none):
    /// the page is the end of that branch, read upwards.
    #[schema(value_type = Option<String>, required = true)]
    current_node: Option<&'a str>,
    /// Its own system prompt (`null`: the service's), used by every send
    /// in it.
    #[schema(value_type = Option<String>, required = true)]
    system_prompt: Option<&'a str>,
    /// Its default model (`null`: the service's), used by every send in it
    /// that names none.
    #[schema(value_type = Option<String>, required = true)]
    model: Option<&'a str>,
    /// Creation (RFC 3339).
    created_at: String,
    /// Last change (RFC 3339).
    updated_at: String,
    /// The page's messages, oldest first (the newest last).
    #[schema(value_type = Vec<MessageView>)]
    messages: Vec<MessageDocument<'a>>,
    /// Whether older messages precede these.
    has_more: bool,
    /// With `has_more`, the id to pass as `before` for the page of older
    /// messages (the first message's); else `null`.
    #[schema(value_type = Option<String>, required = true)]
    cursor: Option<&'a str>,
    /// For each message of the page that has siblings (other answers to
    /// its question, other questions after its answer), keyed by its id:
    /// their ids and its place among them (what a "< 2/3 >" needs).
    #[schema(value_type = BTreeMap<String, SiblingsView>)]
    siblings: BTreeMap<&'a str, SiblingsView<'a>>,
}

/// A message's siblings.
#[derive(Serialize, ToSchema)]
pub(crate) struct SiblingsView<'a> {
    /// The ids of the messages that share its parent, itself included,
    /// oldest first.
    #[schema(value_type = Vec<String>)]
    ids: Vec<&'a str>,
    /// Its place among them, from 0.
    index: usize,
}

/// The siblings of each message of `page` that has any.
fn siblings_of(page: &MessagePage) -> BTreeMap<&str, SiblingsView<'_>> {
    let mut out = BTreeMap::new();
    for message in &page.messages {
        let found = page.children.iter().find_map(|group| {
            group
                .index_of(&message.id)
                .filter(|_| group.parent == message.parent_id && group.ids.len() > 1)
                .map(|index| (group, index))
        });
        if let Some((group, index)) = found {
            out.insert(
                message.id.as_str(),
                SiblingsView {
                    ids: group.ids.iter().map(MessageId::as_str).collect(),
                    index,
                },
            );
        }
    }
    out
}

/// One node of ChatGPT's `mapping`: a message, its parent and its
/// children.
#[derive(Serialize, ToSchema)]
pub(crate) struct MappingNode<'a> {
    /// The message's id.
    #[schema(value_type = String)]
    id: &'a str,
    /// The message.
    #[schema(value_type = MessageView)]
    message: MessageDocument<'a>,
    /// Its parent's id (`null` for a first message).
    #[schema(value_type = Option<String>, required = true)]
    parent: Option<&'a str>,
    /// Its children's ids, oldest first, on every branch.
    #[schema(value_type = Vec<String>)]
    children: Vec<&'a str>,
}

impl<'a> MappingNode<'a> {
    /// `message` as a node, its children found in `children`.
    pub(crate) fn of(message: &'a Message, children: &'a [Children]) -> Result<Self, ApiError> {
        Ok(Self {
            id: message.id.as_str(),
            message: MessageDocument::of(message).map_err(AppError::from)?,
            parent: message.parent_id.as_ref().map(MessageId::as_str),
            children: children
                .iter()
                .find(|group| group.parent.as_ref() == Some(&message.id))
                .map(|group| group.ids.iter().map(MessageId::as_str).collect())
                .unwrap_or_default(),
        })
    }
}

/// `GET /backend-api/conversation/{id}`: the canonical body, and ChatGPT's
/// `mapping` of the page's messages.
#[derive(Serialize, ToSchema)]
pub(crate) struct BackendConversationBody<'a> {
    #[serde(flatten)]
    body: ConversationBody<'a>,
    /// ChatGPT's `mapping`: each message of the page by its id, with its
    /// parent and all its children (on other branches too: their ids lead
    /// there). From `current_node` up through `parent` is the page's
    /// branch.
    #[schema(value_type = BTreeMap<String, MappingNode>)]
    mapping: BTreeMap<&'a str, MappingNode<'a>>,
}

impl<'a> BackendConversationBody<'a> {
    pub(crate) fn of(c: &'a Conversation, page: &'a MessagePage) -> Result<Self, ApiError> {
        let mapping = page
            .messages
            .iter()
            .map(|m| Ok((m.id.as_str(), MappingNode::of(m, &page.children)?)))
            .collect::<Result<_, ApiError>>()?;
        Ok(Self {
            body: ConversationBody::of(c, page)?,
            mapping,
        })
    }
}

impl<'a> ConversationBody<'a> {
    pub(crate) fn of(c: &'a Conversation, page: &'a MessagePage) -> Result<Self, ApiError> {
        Ok(Self {
            conversation_id: c.id.to_string(),
            title: c.title.as_str().to_owned(),
            is_archived: c.is_archived,
            current_node: c.current_node.as_ref().map(MessageId::as_str),
            system_prompt: c.settings.system_prompt.as_ref().map(SystemPrompt::as_str),
            model: c.settings.model.as_ref().map(ModelSlug::as_str),
            created_at: rfc3339(c.created_at).map_err(AppError::from)?,
            updated_at: rfc3339(c.updated_at).map_err(AppError::from)?,
            messages: page
                .messages
                .iter()
                .map(MessageDocument::of)
                .collect::<Result<_, _>>()
                .map_err(AppError::from)?,
            has_more: page.has_more,
            cursor: page.cursor().map(MessageId::as_str),
            siblings: siblings_of(page),
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
    /// The message its current branch ends at (`null` while it has none).
    #[schema(value_type = Option<String>, required = true)]
    current_node: Option<String>,
    /// Its own system prompt (`null`: the service's).
    #[schema(value_type = Option<String>, required = true)]
    system_prompt: Option<String>,
    /// Its default model (`null`: the service's).
    #[schema(value_type = Option<String>, required = true)]
    model: Option<String>,
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
    /// Switch branch: the message the current branch is to end at (any
    /// message of the conversation).
    #[serde(default, deserialize_with = "crate::extract::present")]
    #[schema(schema_with = crate::fields::current_node)]
    current_node: Option<String>,
    /// The conversation's own system prompt; `""` goes back to the
    /// service's.
    #[serde(default, deserialize_with = "crate::extract::present")]
    #[schema(schema_with = crate::fields::system_prompt_or_clear)]
    system_prompt: Option<String>,
    /// The conversation's default model (one of the configured models);
    /// `default` goes back to the service's.
    #[serde(default, deserialize_with = "crate::extract::present")]
    #[schema(pattern = "^[A-Za-z0-9._:/-]{1,100}$")]
    model: Option<String>,
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

/// The body of a read, rendered by `render` (and kept under its entry's
/// name for this worker), or as kept.
fn rendered<T>(
    state: &State,
    shape: &'static str,
    read: Read<T, Rendered>,
    owner: impl FnOnce(&T) -> UserId,
    render: impl FnOnce(&T) -> Result<Vec<u8>, ApiError>,
) -> Result<Rendered, ApiError> {
    state
        .metrics
        .cached_read(shape, matches!(read, Read::Kept(_)));
    Ok(match read {
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
    })
}

/// The conversation `id` as `GET` without a query renders it on
/// `surface` (its newest page), for its current `ETag`.
async fn current(
    state: &State,
    caller: &AccessClaims,
    id: ConversationId,
    surface: Surface,
) -> Result<Rendered, ApiError> {
    let read = state
        .conversations
        .read(
            caller,
            id,
            &HistoryRequest::default(),
            &shape(state, surface.shape()),
        )
        .await?;
    rendered(
        state,
        surface.shape(),
        read,
        |(conversation, _)| conversation.owner,
        |value| surface.render(value),
    )
}

/// `If-Match` (RFC 9110 §13.1.1) on a change of conversation `id`: with
/// the header, the change goes ahead only while the conversation is the
/// version it names (its `ETag` from `GET`, strong comparison; `*`: any
/// version), else 412. The check reads the conversation just before the
/// change: a change landing between the two is not caught.
async fn if_match(
    req: &HttpRequest,
    state: &State,
    caller: &AccessClaims,
    id: ConversationId,
) -> Result<(), ApiError> {
    let Some(header) = req.headers().get(IF_MATCH) else {
        return Ok(());
    };
    let wanted = header.to_str().ok().and_then(entity_tags).ok_or_else(|| {
        ApiError::malformed(
            Some("If-Match".to_owned()),
            "must be * or entity tags (\"…\" or W/\"…\"), comma-separated",
        )
    })?;
    // The tag of the body `GET` answers on the surface the change came by.
    let surface = if req.path().starts_with("/backend-api/") {
        Surface::Backend
    } else {
        Surface::Canonical
    };
    let current = current(state, caller, id, surface).await?;
    // Strong comparison: a weak tag never matches.
    let fresh = wanted
        .iter()
        .any(|candidate| *candidate == "*" || *candidate == current.etag);
    if fresh {
        Ok(())
    } else {
        Err(ApiError::precondition_failed())
    }
}

/// The entity tags of an `If-Match` value (`*` alone, or a comma-separated
/// list of `"…"` and `W/"…"`); `None` when it is not one
/// (`fields::IF_MATCH_PATTERN`).
fn entity_tags(value: &str) -> Option<Vec<&str>> {
    let ows = |c: char| c == ' ' || c == '\t';
    let value = value.trim_matches(ows);
    if value == "*" {
        return Some(vec![value]);
    }
    let mut tags = Vec::new();
    let mut rest = value;
    loop {
        // One tag: optional `W/`, then `"`, tag characters, `"` (a comma
        // may be inside the quotes).
        let start = rest;
        let opaque = rest.strip_prefix("W/").unwrap_or(rest);
        let inner = opaque.strip_prefix('"')?;
        let close = inner.find('"')?;
        if !inner[..close]
            .bytes()
            .all(|b| b == b'!' || (b'#'..=b'~').contains(&b))
        {
            return None;
        }
        let len = start.len() - inner.len() + close + 1;
        tags.push(&start[..len]);
        rest = start[len..].trim_start_matches(ows);
        if rest.is_empty() {
            return Some(tags);
        }
        rest = rest.strip_prefix(',')?.trim_start_matches(ows);
    }
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
    let rendered = rendered(state, shape, read, owner, render)?;
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
        None => None,
        Some(blank) if blank.trim().is_empty() => None,
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

/// One of the caller's conversations with a page of its messages.
///
/// The page holds the newest `limit` messages, or those before `before`,
/// oldest first, and at most 1 MiB of message text (the newest message of
/// a page always comes, whole). `has_more` and `cursor` lead to the older
/// ones: pass `cursor` as `before`.
#[utoipa::path(
    get,
    path = "/api/v1/conversations/{id}",
    operation_id = "get_conversation",
    tag = "conversations",
    params(("id" = uuid::Uuid, Path, description = "The conversation's id"), HistoryQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The conversation and a page of its messages; `ETag` for revalidation.", body = ConversationBody),
        (status = 304, description = "The copy named by `If-None-Match` is current."),
        (status = 400, description = "An unknown query parameter, or a `limit` that is not a number.", body = ErrorBody),
        (status = 404, description = "No such conversation, or not the caller's; or (`field`: `before`) `before` is not one of its messages.", body = ErrorBody),
        (status = 401, description = "Missing, invalid or expired access token.", body = ErrorBody),
        (status = 429, description = "Rate limited; see `Retry-After` and the `RateLimit` headers.", body = ErrorBody),
    ),
)]
pub(crate) async fn get(
    req: HttpRequest,
    state: State,
    AuthUser(caller): AuthUser,
    id: web::Path<String>,
    q: web::Query<HistoryQuery>,
) -> Result<HttpResponse, ApiError> {
    history(&req, &state, &caller, &id, &q, Surface::Canonical).await
}

/// A history page as `surface` renders it, cached.
async fn history(
    req: &HttpRequest,
    state: &State,
    caller: &AccessClaims,
    id: &str,
    q: &HistoryQuery,
    surface: Surface,
) -> Result<HttpResponse, ApiError> {
    let id = conversation_id(id)?;
    let page = q.request()?;
    // The owner is checked by the read: against the value, or against
    // the owner of the kept body.
    let read = state
        .conversations
        .read(caller, id, &page, &shape(state, surface.shape()))
        .await?;
    cacheable_json(
        req,
        state,
        surface.shape(),
        read,
        |(conversation, _)| conversation.owner,
        |value| surface.render(value),
    )
}

/// The two renderings of a history page.
#[derive(Clone, Copy)]
enum Surface {
    /// `/api/v1/conversations/{id}`: [`ConversationBody`].
    Canonical,
    /// `/backend-api/conversation/{id}`: [`BackendConversationBody`].
    Backend,
}

impl Surface {
    /// The name its rendered bodies are kept under.
    const fn shape(self) -> &'static str {
        match self {
            Self::Canonical => HISTORY,
            Self::Backend => BACKEND_HISTORY,
        }
    }

    /// The body of `(conversation, page)`.
    fn render(
        self,
        (conversation, page): &(Conversation, MessagePage),
    ) -> Result<Vec<u8>, ApiError> {
        match self {
            Self::Canonical => json(&ConversationBody::of(conversation, page)?),
            Self::Backend => json(&BackendConversationBody::of(conversation, page)?),
        }
    }
}

/// One of the caller's conversations with a page of its messages, as
/// `GET /api/v1/conversations/{id}` answers it, and ChatGPT's `mapping`
/// of the page's messages (each with its parent and children).
#[utoipa::path(
    get,
    path = "/backend-api/conversation/{id}",
    operation_id = "backend_get_conversation",
    tag = "chatgpt-compatible",
    params(("id" = uuid::Uuid, Path, description = "The conversation's id"), HistoryQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The conversation, a page of its messages and their `mapping`; `ETag` for revalidation.", body = BackendConversationBody),
        (status = 304, description = "The copy named by `If-None-Match` is current."),
        (status = 400, description = "An unknown query parameter, or a `limit` that is not a number.", body = ErrorBody),
        (status = 404, description = "No such conversation, or not the caller's; or (`field`: `before`) `before` is not one of its messages.", body = ErrorBody),
        (status = 401, description = "Missing, invalid or expired access token.", body = ErrorBody),
        (status = 429, description = "Rate limited; see `Retry-After` and the `RateLimit` headers.", body = ErrorBody),
    ),
)]
pub(crate) async fn backend_get(
    req: HttpRequest,
    state: State,
    AuthUser(caller): AuthUser,
    id: web::Path<String>,
    q: web::Query<HistoryQuery>,
) -> Result<HttpResponse, ApiError> {
    history(&req, &state, &caller, &id, &q, Surface::Backend).await
}

/// Renames and/or archives one of the caller's conversations.
#[utoipa::path(
    patch,
    path = "/api/v1/conversations/{id}",
    operation_id = "update_conversation",
    tag = "conversations",
    params(
        ("id" = uuid::Uuid, Path, description = "The conversation's id"),
        ("If-Match" = Option<String>, Header, description = "Change only the version with this `ETag` (from `GET`), or `*`: 412 otherwise."),
    ),
    request_body = ConversationPatchBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The changed conversation.", body = ConversationMeta),
        (status = 412, description = "`PRECONDITION_FAILED`: `If-Match` names a version that is no longer current.", body = ErrorBody),
        (status = 400, description = "A bad or empty body.", body = ErrorBody),
        (status = 401, description = "Missing, invalid or expired access token.", body = ErrorBody),
        (status = 404, description = "No such conversation, or not the caller's.", body = ErrorBody),
        (status = 413, description = "The body is too large.", body = ErrorBody),
        (status = 415, description = "The body is not JSON.", body = ErrorBody),
        (status = 429, description = "Rate limited; see `Retry-After` and the `RateLimit` headers.", body = ErrorBody),
    ),
)]
pub(crate) async fn update(
    req: HttpRequest,
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
        current_node: body
            .current_node
            .map(|id| message_id(&id, Field::CurrentNode))
            .transpose()?,
        system_prompt: body
            .system_prompt
            .as_deref()
            .map(|text| match text {
                "" => Ok(None),
                text => SystemPrompt::parse(text).map(Some),
            })
            .transpose()
            .map_err(AppError::from)?,
        model: body
            .model
            .as_deref()
            .map(|name| match name {
                "default" => Ok(None),
                name => ModelSlug::parse(name).map(Some),
            })
            .transpose()
            .map_err(AppError::from)?,
    };
    // The request is judged first, its precondition after.
    conversations.check_patch(&patch)?;
    if_match(&req, &state, &caller, id).await?;
    let c = conversations.update(&caller, id, patch).await?;
    Ok(HttpResponse::Ok().json(ConversationMeta {
        conversation_id: c.id.to_string(),
        title: c.title.as_str().to_owned(),
        is_archived: c.is_archived,
        current_node: c.current_node.as_ref().map(|id| id.as_str().to_owned()),
        system_prompt: c
            .settings
            .system_prompt
            .as_ref()
            .map(|p| p.as_str().to_owned()),
        model: c.settings.model.as_ref().map(|m| m.as_str().to_owned()),
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
    params(
        ("id" = uuid::Uuid, Path, description = "The conversation's id"),
        ("If-Match" = Option<String>, Header, description = "Delete only the version with this `ETag` (from `GET`), or `*`: 412 otherwise."),
    ),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted."),
        (status = 412, description = "`PRECONDITION_FAILED`: `If-Match` names a version that is no longer current.", body = ErrorBody),
        (status = 401, description = "Missing, invalid or expired access token.", body = ErrorBody),
        (status = 404, description = "No such conversation, or not the caller's.", body = ErrorBody),
        (status = 429, description = "Rate limited; see `Retry-After` and the `RateLimit` headers.", body = ErrorBody),
    ),
)]
pub(crate) async fn delete(
    req: HttpRequest,
    state: State,
    AuthUser(caller): AuthUser,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let conversations = &state.conversations;
    let id = conversation_id(&id)?;
    if_match(&req, &state, &caller, id).await?;
    conversations.delete(&caller, id).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;

    use super::entity_tags;

    /// `get_conversation`'s description (and docs/api.md) says a page
    /// holds at most 1 MiB of message text.
    #[test]
    fn the_documented_page_bound_is_the_one_applied() {
        assert_eq!(confab_app::Conversations::PAGE_TEXT_BYTES, 1024 * 1024);
    }

    #[test]
    fn entity_tags_are_read_as_rfc_9110_writes_them() {
        assert_eq!(entity_tags("*"), Some(vec!["*"]));
        assert_eq!(
            entity_tags(r#""a", W/"b" ,"""#),
            Some(vec![r#""a""#, r#"W/"b""#, r#""""#])
        );
        for bad in [
            "",
            "a",
            r#""a"#,
            r#""a" "b""#,
            r#"*, "a""#,
            r#""a","#,
            r#""a b""#,
            r#"w/"a""#,
        ] {
            assert_eq!(entity_tags(bad), None, "{bad:?}");
        }
    }

    proptest! {
        /// The documented pattern is the rule.
        #[test]
        fn the_documented_pattern_is_the_rule(
            value in prop_oneof![
                any::<String>(),
                r#"(\*|(W/)?"[!-~ ]{0,4}"([ ,]{0,2}(W/)?"[!-~]{0,3}"){0,2}),?"#,
            ],
        ) {
            let pattern = regex::Regex::new(crate::fields::IF_MATCH_PATTERN).unwrap();
            prop_assert_eq!(entity_tags(&value).is_some(), pattern.is_match(&value), "{:?}", value);
        }
    }
}
