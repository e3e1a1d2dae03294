//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::{ErrorBody, ErrorDetail};
use crate::routes::{
    AccountDeletionRequest, AllowanceBody, AllowancePart, ApiKeyBody, ApiKeyList, ApiKeyRequest,
    AuthorView, BackendConversationBody, ContentInput, ContentView, ConversationBody,
    ConversationExport, ConversationItem, ConversationMeta, ConversationPageBody,
    ConversationPatchBody, CreatedKeyBody, DeletedBody, Health, LoginRequest, MappingNode,
    MatchBody, MessageBody, MessageInput, MessageMetadataView, MessageView, ModelBody, ModelList,
    NewConversationBody, OwnAllowance, PasswordChangeRequest, ReadinessBody, RefreshRequest,
    RegisterRequest, SendBody, SendOptions, SentBody, SessionBody, SessionList, SiblingsView,
    TokenBody, TreeBody, UsageCounts, UsageDay, UsageReport, UserBody, UserPage, UserPatch,
};

/// Declares the `bearer` security scheme the protected routes name.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// Declares the `api_key` scheme, and names it, with the scope it needs,
/// on every operation an API key may call (`routes::KeyUse::Needs`), with
/// the 403 of a key without that scope. Runs after [`BackendAliases`].
struct ApiKeys;

impl Modify for ApiKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::SecurityRequirement;

        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("cfk_<id>_<secret>")
                    .description(Some(
                        "An API key (`POST /api/v1/users/me/api-keys`), sent as \
                         `Authorization: Bearer cfk_…`. It may call only the operations that \
                         name this scheme, within the scopes they list; elsewhere it is refused \
                         403.",
                    ))
                    .build(),
            ),
        );
        let lacking = error_response(
            "`FORBIDDEN`: the API key presented lacks the scope this operation needs.",
        );
        for endpoint in crate::routes::ENDPOINTS.iter().filter(|e| e.documented) {
            let crate::routes::KeyUse::Needs(scope) = endpoint.keys else {
                continue;
            };
            let Some(item) = openapi.paths.paths.get_mut(endpoint.path) else {
                continue;
            };
            let op = match endpoint.method.as_str() {
                "GET" => item.get.as_mut(),
                "POST" => item.post.as_mut(),
                "PATCH" => item.patch.as_mut(),
                "DELETE" => item.delete.as_mut(),
                _ => None,
            };
            let Some(op) = op else { continue };
            let requirement = SecurityRequirement::new("api_key", [scope.as_str()]);
            let security = op.security.get_or_insert_with(Vec::new);
            if !security.contains(&requirement) {
                security.push(requirement);
            }
            op.responses
                .responses
                .entry("403".to_owned())
                .or_insert_with(|| lacking.clone().into());
        }
    }
}

/// A response in the error shape (`ErrorBody`), described.
fn error_response(description: &str) -> utoipa::openapi::Response {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
}

/// The ChatGPT-compatible paths served by the canonical handlers: each
/// gets the canonical path's description, tagged `chatgpt-compatible`.
const BACKEND_ALIASES: &[(&str, &str)] = &[
    ("/api/v1/conversations", "/backend-api/conversations"),
    (
        "/api/v1/conversations/{id}",
        "/backend-api/conversation/{id}",
    ),
    (
        "/api/v1/conversations/{id}/stream",
        "/backend-api/conversation/{id}/stream",
    ),
];

/// Copies the canonical conversation routes to their `/backend-api` paths.
struct BackendAliases;

impl Modify for BackendAliases {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (canonical, alias) in BACKEND_ALIASES {
            let Some(item) = openapi.paths.paths.get(*canonical) else {
                continue;
            };
            let mut item = item.clone();
            // The list path's POST (a new conversation) and DELETE (all of
            // them) are canonical only.
            if alias.ends_with("/conversations") {
                item.post = None;
                item.delete = None;
            }
            for op in [
                &mut item.get,
                &mut item.patch,
                &mut item.delete,
                &mut item.post,
            ]
            .into_iter()
            .flatten()
            {
                op.tags = Some(vec!["chatgpt-compatible".to_owned()]);
                op.operation_id = op.operation_id.as_ref().map(|id| format!("backend_{id}"));
            }
            // An operation the alias documents itself (its own handler)
            // stays.
            if let Some(own) = openapi.paths.paths.get(*alias) {
                for (mine, copied) in [
                    (&own.get, &mut item.get),
                    (&own.head, &mut item.head),
                    (&own.patch, &mut item.patch),
                    (&own.delete, &mut item.delete),
                    (&own.post, &mut item.post),
                ] {
                    if mine.is_some() {
                        copied.clone_from(mine);
                    }
                }
            }
            openapi.paths.paths.insert((*alias).to_owned(), item);
        }
    }
}

/// `Idempotency-Key` on every `POST`, `PATCH` and `DELETE` but the auth
/// routes' (see the `idempotency` middleware): the header, and the 422 it
/// can bring.
struct IdempotencyKeys;

impl Modify for IdempotencyKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::Required;
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};

        let header = ParameterBuilder::new()
            .name("Idempotency-Key")
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some(
                "1 to 255 printable ASCII characters, no space at either end, the caller's own \
                 (one per request): a retry of the same \
                 request (method, path, body) gets the first one's response (a message send: its \
                 answer's stream) with `Idempotent-Replayed: true`; kept 24 h.",
            ))
            .schema(Some(crate::fields::idempotency_key()))
            .build();
        let reused = error_response("The `Idempotency-Key` was used for a different request.");
        let invalid = error_response(
            "`VALIDATION_ERROR`: a malformed request, such as an invalid `Idempotency-Key`.",
        );
        for (path, item) in &mut openapi.paths.paths {
            if path.starts_with("/api/v1/auth/") || path.starts_with("/backend-api/auth/") {
                continue;
            }
            for op in [&mut item.post, &mut item.patch, &mut item.delete]
                .into_iter()
                .flatten()
            {
                op.parameters
                    .get_or_insert_with(Vec::new)
                    .push(header.clone().into());
                op.responses
                    .responses
                    .entry("400".to_owned())
                    .or_insert_with(|| invalid.clone().into());
                match op.responses.responses.get_mut("422") {
                    Some(utoipa::openapi::RefOr::T(rule)) => {
                        rule.description = format!(
                            "{} Or `IDEMPOTENCY_KEY_REUSED`: {}",
                            rule.description, reused.description
                        );
                    }
                    Some(utoipa::openapi::RefOr::Ref(_)) => {}
                    None => {
                        op.responses
                            .responses
                            .insert("422".to_owned(), reused.clone().into());
                    }
                }
            }
        }
    }
}

/// 422 beside every 400 a route declares: 400 for a request that isn't
/// well-formed, 422 for one that breaks a rule. One mapping decides which
/// (`ApiError::malformed`, `ApiError::validation`). Runs before
/// [`IdempotencyKeys`], which adds the reused key to the 422.
struct Validation;

impl Modify for Validation {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let rule = "`VALIDATION_ERROR`: the request is well-formed but breaks a rule (a length, \
                    range, pattern or allowed value; `field` names it).";
        for item in openapi.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                let responses = &mut op.responses.responses;
                if responses.contains_key("400") && !responses.contains_key("422") {
                    responses.insert("422".to_owned(), error_response(rule).into());
                }
            }
        }
    }
}

/// `HEAD` beside every `GET` (the same answer without its body), and 406
/// on every operation whose answer is one media type (`routes::Produces`).
struct HeadAndAccept;

impl Modify for HeadAndAccept {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let refused =
            error_response("`NOT_ACCEPTABLE`: `Accept` allows nothing this operation answers.");
        for (path, item) in &mut openapi.paths.paths {
            let probe = path == "/healthz" || path == "/readyz";
            for op in [&mut item.get, &mut item.post, &mut item.patch]
                .into_iter()
                .flatten()
            {
                if !probe {
                    op.responses
                        .responses
                        .entry("406".to_owned())
                        .or_insert_with(|| refused.clone().into());
                }
            }
            if let Some(get) = &item.get {
                let mut head = get.clone();
                head.operation_id = head.operation_id.map(|id| format!("head_{id}"));
                head.summary = Some("The same answer as `GET`, without its body.".to_owned());
                for response in head.responses.responses.values_mut() {
                    if let utoipa::openapi::RefOr::T(response) = response {
                        response.content.clear();
                    }
                }
                item.head = Some(head);
            }
        }
    }
}

/// The API description. Every route in [`crate::served_routes`] appears
/// here; a test keeps it that way.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Confab API",
        description = "REST + Server-Sent-Events backend for a chat assistant. \
                       Every error has the shape `{\"error\": {code, message, field?, request_id}}`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        crate::routes::health::healthz,
        crate::routes::health::readyz,
        crate::routes::docs::openapi_json,
        crate::routes::auth::register,
        crate::routes::auth::login,
        crate::routes::auth::refresh,
        crate::routes::auth::logout,
        crate::routes::sessions::list,
        crate::routes::sessions::end,
        crate::routes::sessions::logout_all,
        crate::routes::users::me,
        crate::routes::users::change_password,
        crate::routes::users::delete_me,
        crate::routes::api_keys::create,
        crate::routes::api_keys::list,
        crate::routes::api_keys::revoke,
        crate::routes::models::list,
        crate::routes::users::list,
        crate::routes::users::update,
        crate::routes::users::delete,
        crate::routes::usage::mine,
        crate::routes::usage::of_user,
        crate::routes::usage::everyone,
        crate::routes::usage::my_allowance,
        crate::routes::usage::set_allowance,
        crate::routes::conversations::list,
        crate::routes::send::create,
        crate::routes::conversations::get,
        crate::routes::conversations::backend_get,
        crate::routes::tree::tree,
        crate::routes::export::export,
        crate::routes::export::export_all,
        crate::routes::export::delete_all,
        crate::routes::conversations::update,
        crate::routes::conversations::delete,
        crate::routes::send::message,
        crate::routes::stream::resume,
        crate::routes::stream::stop,
        crate::routes::send::seed,
    ),
    components(schemas(
        ErrorBody, ErrorDetail, Health, ReadinessBody, RegisterRequest, LoginRequest, RefreshRequest,
        TokenBody, UserBody, UserPage, UserPatch, ConversationItem, MatchBody, ConversationPageBody,
        ConversationBody, ConversationMeta, ConversationPatchBody, SendBody, MessageBody, NewConversationBody, MessageInput, SiblingsView, BackendConversationBody, MappingNode, TreeBody, ConversationExport, DeletedBody,
        ContentInput, SendOptions, SentBody, MessageView, AuthorView, ContentView,
        MessageMetadataView, ModelBody, ModelList, SessionBody, SessionList, PasswordChangeRequest,
        AccountDeletionRequest, UsageCounts, UsageDay, UsageReport, AllowanceBody, AllowancePart,
        OwnAllowance, ApiKeyRequest, ApiKeyBody, CreatedKeyBody, ApiKeyList,
    )),
    modifiers(&BearerAuth, &BackendAliases, &ApiKeys, &Validation, &IdempotencyKeys, &HeadAndAccept),
    tags(
        (name = "operations", description = "Liveness, readiness and this document."),
        (name = "auth", description = "Accounts and tokens."),
        (name = "users", description = "The caller's account."),
        (name = "admin", description = "Administration (role `admin`)."),
        (name = "conversations", description = "Conversations, messages and their streams (delta encoding v1)."),
        (name = "chatgpt-compatible", description = "Seed `000`'s paths and shapes, served by the same handlers."),
    ),
)]
pub struct ApiDoc;

/// The document as pretty-printed JSON (what `/api/v1/openapi.json` serves
/// and `confab openapi` prints).
///
/// # Errors
/// When serialisation fails (a programming error).
pub fn openapi_json() -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(&document()?)
}

/// The document a server serves: as [`openapi_json`], with the models a
/// send may name (`default`, then `models`) listed where a send names one,
/// and the operations under a `deprecated` prefix marked deprecated.
///
/// # Errors
/// When serialisation fails (a programming error).
pub fn served_openapi_json(
    models: &[String],
    deprecated: &crate::DeprecatedRoutes,
) -> Result<String, serde_json::Error> {
    let mut doc = document()?;
    if let Some(paths) = doc["paths"].as_object_mut() {
        let covered = paths.iter_mut().filter(|(path, _)| deprecated.covers(path));
        for operations in covered.filter_map(|(_, item)| item.as_object_mut()) {
            for (method, op) in operations.iter_mut() {
                if ["get", "head", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                    op["deprecated"] = serde_json::Value::Bool(true);
                }
            }
        }
    }
    let mut names = vec!["default".to_owned()];
    for name in models {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    for body in ["SendBody", "MessageBody", "NewConversationBody"] {
        doc["components"]["schemas"][body]["properties"]["model"]["enum"] =
            serde_json::json!(names.iter().map(Some).chain([None]).collect::<Vec<_>>());
    }
    // A conversation's default model: set, never `null`.
    doc["components"]["schemas"]["ConversationPatchBody"]["properties"]["model"]["enum"] =
        serde_json::json!(names);
    serde_json::to_string_pretty(&doc)
}

fn document() -> Result<serde_json::Value, serde_json::Error> {
    let mut doc = serde_json::to_value(ApiDoc::openapi())?;
    crate::fields::refine(&mut doc);
    add_links(&mut doc);
    Ok(doc)
}

/// Where a response names the conversation it made (`source`, an
/// operation and its status), the operations that take it
/// (`$response.body#` pointer to its id): links (OpenAPI 3.1 §4.8.20), so a client or a stateful test can
/// follow an id from the call that made it to the calls that use it.
const LINKS: &[(&str, &str, &str, &[&str])] = &[
    (
        "create_conversation",
        "201",
        "/conversation_id",
        CONVERSATION_USES,
    ),
    ("backend_send", "201", "/conversation_id", CONVERSATION_USES),
];

/// The operations that take a conversation's `id` in their path.
const CONVERSATION_USES: &[&str] = &[
    "get_conversation",
    "update_conversation",
    "delete_conversation",
    "send_message",
    "stop_stream",
    "backend_get_conversation",
];

/// Adds [`LINKS`], and from a page of a history to the page of older
/// messages (its `cursor` as `before`).
fn add_links(doc: &mut serde_json::Value) {
    use serde_json::{Map, Value, json};
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    let operations = paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut());
    for operation in operations {
        let Some(id) = operation["operationId"].as_str().map(str::to_owned) else {
            continue;
        };
        let mut add = |status: &str, name: String, link: Value| {
            if let Some(response) = operation["responses"].get_mut(status)
                && let Some(response) = response.as_object_mut()
            {
                let links = response
                    .entry("links")
                    .or_insert_with(|| Value::Object(Map::new()));
                links[name] = link;
            }
        };
        for (source, status, pointer, targets) in LINKS {
            if *source != id {
                continue;
            }
            for target in *targets {
                add(
                    status,
                    format!("{target}_of_it"),
                    json!({
                        "operationId": target,
                        "parameters": { "id": format!("$response.body#{pointer}") },
                    }),
                );
            }
        }
        if id == "get_conversation" || id == "backend_get_conversation" {
            add(
                "200",
                "older_messages".to_owned(),
                json!({
                    "operationId": id,
                    "parameters": {
                        "id": "$request.path.id",
                        "before": "$response.body#/cursor",
                    },
                    "description": "The page of older messages (while `has_more`).",
                }),
            );
        }
    }
}
