//! Every route the API serves, in one table.
//!
//! The table drives routing, the `Allow` header of a 405, and
//! [`served_routes`], which a test compares with the OpenAPI document so a
//! route can't be served without being documented.

pub(crate) mod api_keys;
pub(crate) mod auth;
pub(crate) mod conversations;
pub(crate) mod docs;
pub(crate) mod export;
pub(crate) mod health;
pub(crate) mod models;
pub(crate) mod page;
pub(crate) mod schema;
pub(crate) mod send;
pub(crate) mod sessions;
pub(crate) mod stream;
pub(crate) mod tree;
pub(crate) mod usage;
pub(crate) mod users;

use actix_web::body::{BoxBody, MessageBody as Body};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::{Next, from_fn};
use actix_web::{ResponseError, Route, web};

use confab_domain::Scope;

use crate::ApiError;
use crate::middleware::catch_panic;

pub(crate) use api_keys::{ApiKeyBody, ApiKeyList, ApiKeyRequest, CreatedKeyBody};
pub(crate) use auth::{LoginRequest, RefreshRequest, RegisterRequest, TokenBody, UserBody};
pub(crate) use conversations::{
    BackendConversationBody, ConversationBody, ConversationItem, ConversationMeta,
    ConversationPageBody, ConversationPatchBody, MappingNode, MatchBody, SiblingsView,
};
pub(crate) use export::{ConversationExport, DeletedBody};
pub(crate) use health::{Health, ReadinessBody};
pub(crate) use models::{ModelBody, ModelList};
pub(crate) use schema::{AuthorView, ContentView, MessageMetadataView, MessageView};
pub(crate) use send::{
    ContentInput, MessageBody, MessageInput, NewConversationBody, SendBody, SendOptions, SentBody,
    replayed_json, starts_conversation,
};
pub(crate) use sessions::{SessionBody, SessionList};
pub(crate) use tree::TreeBody;
pub(crate) use usage::{
    AllowanceBody, AllowancePart, OwnAllowance, UsageCounts, UsageDay, UsageReport,
};
pub(crate) use users::{AccountDeletionRequest, PasswordChangeRequest, UserPage, UserPatch};

/// What kind of route a path is: the middlewares decide by this (the rate
/// limit, idempotency keys, caching and CSP headers), and it is declared
/// once, on each [`Endpoint`] of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RouteClass {
    /// `/healthz`, `/readyz`: not limited, not cached by rule.
    Health,
    /// The interactive docs page: not limited, its own CSP.
    Docs,
    /// The chat page and its files: not limited, its own CSP.
    Web,
    /// Sign-up, login, refresh, logout: limited, never stored by a cache
    /// or by idempotency keys (the responses hold tokens).
    Auth,
    /// Every other API route, on both surfaces: limited, `no-store`,
    /// idempotency keys honoured.
    Api,
    /// A path no route serves: limited (scanning costs tokens), `no-store`.
    Unrouted,
}

/// The class of every path, from an endpoint table: each endpoint's path up
/// to its first parameter, longest first, matched at a segment boundary;
/// and the endpoints that claim their idempotency keys themselves.
pub(crate) struct RouteClasses {
    prefixes: Vec<(&'static str, RouteClass)>,
    keyed_by_handler: Vec<(Method, PathPattern)>,
    served: Vec<(Method, PathPattern, KeyUse)>,
}

/// An endpoint's path as the router matches it, without a regular
/// expression: each `/`-separated segment is either the same text or, for
/// a parameter (`{id}`), any non-empty text (actix's default parameter,
/// `[^/]+`). The middlewares ask these of every request, so they must not
/// cost what actix's `ResourceDef` costs (a regex search per parameterised
/// path).
#[derive(Debug, Clone)]
pub(crate) struct PathPattern {
    /// The segments, `None` where a parameter is.
    segments: Vec<Option<&'static str>>,
}

impl PathPattern {
    /// The pattern of an endpoint's path.
    pub(crate) fn new(path: &'static str) -> Self {
        Self {
            segments: path
                .split('/')
                .map(|s| (!is_parameter(s)).then_some(s))
                .collect(),
        }
    }

    /// Whether it has no parameter (actix matches it by comparing text).
    pub(crate) fn is_static(&self) -> bool {
        self.segments.iter().all(Option::is_some)
    }

    /// Whether `path` (as routed: percent-decoded) is this endpoint's.
    pub(crate) fn is_match(&self, path: &str) -> bool {
        let mut parts = path.split('/');
        for segment in &self.segments {
            let Some(part) = parts.next() else {
                return false;
            };
            let fits = match segment {
                Some(text) => *text == part,
                None => !part.is_empty(),
            };
            if !fits {
                return false;
            }
        }
        parts.next().is_none()
    }
}

/// Whether a path segment is a parameter (`{name}`).
fn is_parameter(segment: &str) -> bool {
    segment.starts_with('{') && segment.ends_with('}')
}

impl RouteClasses {
    /// The classes of `endpoints`' paths.
    pub(crate) fn new(endpoints: &[Endpoint]) -> Self {
        let mut prefixes: Vec<(&'static str, RouteClass)> = endpoints
            .iter()
            .map(|e| (e.path.split('{').next().unwrap_or(e.path), e.class))
            .collect();
        // Longest first; equal prefixes side by side, so one of each stays.
        prefixes.sort_by_key(|(prefix, _)| (std::cmp::Reverse(prefix.len()), *prefix));
        prefixes.dedup();
        let keyed_by_handler = endpoints
            .iter()
            .filter(|e| e.keys_itself)
            .map(|e| (e.method.clone(), PathPattern::new(e.path)))
            .collect();
        let served = endpoints
            .iter()
            .map(|e| (e.method.clone(), PathPattern::new(e.path), e.keys))
            .collect();
        Self {
            prefixes,
            keyed_by_handler,
            served,
        }
    }

    /// Whether an endpoint serves `method` on `path` (as routed; `HEAD`
    /// where it serves `GET`).
    pub(crate) fn serves(&self, method: &Method, path: &str) -> bool {
        self.key_use(method, path).is_some()
    }

    /// Whether an API key may call the endpoint `method` `path` (as
    /// routed); `None` when no endpoint serves it. `HEAD` is its `GET`'s
    /// (the route answers it with the `GET` handler).
    pub(crate) fn key_use(&self, method: &Method, path: &str) -> Option<KeyUse> {
        let method = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        self.served
            .iter()
            .find(|(m, def, _)| m == method && def.is_match(path))
            .map(|(_, _, keys)| *keys)
    }

    /// Whether the endpoint `method` `path` (as routed) claims its
    /// idempotency key itself.
    pub(crate) fn keys_itself(&self, method: &Method, path: &str) -> bool {
        self.keyed_by_handler
            .iter()
            .any(|(m, def)| m == method && def.is_match(path))
    }

    /// The class of the request path `path` (as routed: percent-decoded).
    pub(crate) fn of(&self, path: &str) -> RouteClass {
        self.prefixes
            .iter()
            .find(|(prefix, _)| {
                // The page at `/` is that path alone, not a prefix of all.
                if *prefix == "/" {
                    return path == "/";
                }
                path.strip_prefix(prefix).is_some_and(|rest| {
                    rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/')
                })
            })
            .map_or(RouteClass::Unrouted, |(_, class)| *class)
    }
}

/// Whether an API key may call an endpoint ([`AccessClaims::api_key`]).
/// A key presented where it may not be used is refused 403.
///
/// [`AccessClaims::api_key`]: confab_ports::AccessClaims::api_key
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyUse {
    /// The endpoint needs no caller (health, docs, sign-up, login).
    Open,
    /// A key with this scope may call it.
    Needs(Scope),
    /// Only a login session may: the account, its sessions and keys, and
    /// the admin routes.
    Refused,
}

/// One method on one path.
pub(crate) struct Endpoint {
    pub(crate) method: Method,
    pub(crate) path: &'static str,
    /// What kind of route it is.
    pub(crate) class: RouteClass,
    /// Whether an API key may call it.
    pub(crate) keys: KeyUse,
    /// False only for the interactive docs page, which is not part of the API.
    pub(crate) documented: bool,
    /// The handler claims its request's `Idempotency-Key` itself (a send,
    /// which records its answer the moment its message is stored); the
    /// idempotency middleware leaves it alone.
    pub(crate) keys_itself: bool,
    /// What a success answers with: `Accept` must allow it (else 406).
    pub(crate) produces: Produces,
    pub(crate) route: fn() -> Route,
}

/// The media type an endpoint's success is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Produces {
    /// `application/json`.
    Json,
    /// `text/event-stream`.
    Stream,
    /// Either, as the handler negotiates (a send: 406 for neither).
    Negotiated,
    /// No body (204).
    Empty,
    /// A download whose type its `format` says (not checked against
    /// `Accept`).
    File,
    /// Not checked: the docs redirect, and the probes (`/healthz`,
    /// `/readyz`), which answer whatever a load balancer's `Accept` says.
    Any,
}

/// Every endpoint of the API.
pub(crate) static ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: Method::GET,
        path: "/healthz",
        class: RouteClass::Health,
        keys: KeyUse::Open,
        documented: true,
        keys_itself: false,
        produces: Produces::Any,
        route: || web::route().to(health::healthz),
    },
    Endpoint {
        method: Method::GET,
        path: "/readyz",
        class: RouteClass::Health,
        keys: KeyUse::Open,
        documented: true,
        keys_itself: false,
        produces: Produces::Any,
        route: || web::route().to(health::readyz),
    },
    Endpoint {
        method: Method::GET,
        path: "/api/v1/openapi.json",
        class: RouteClass::Api,
        keys: KeyUse::Open,
        documented: true,
        keys_itself: false,
        produces: Produces::Json,
        route: || web::route().to(docs::openapi_json),
    },
    Endpoint {
        method: Method::GET,
        path: "/docs",
        class: RouteClass::Docs,
        keys: KeyUse::Open,
        documented: false,
        keys_itself: false,
        produces: Produces::Any,
        route: || web::route().to(docs::docs_redirect),
    },
    Endpoint {
        method: Method::GET,
        path: "/",
        class: RouteClass::Web,
        keys: KeyUse::Open,
        documented: false,
        keys_itself: false,
        produces: Produces::Any,
        route: || web::route().to(page::index),
    },
    Endpoint {
        method: Method::GET,
        path: "/assets/{name}",
        class: RouteClass::Web,
        keys: KeyUse::Open,
        documented: false,
        keys_itself: false,
        produces: Produces::Any,
        route: || web::route().to(page::asset),
    },
    Endpoint {
        method: Method::POST,
        path: "/api/v1/auth/register",
        class: RouteClass::Auth,
        keys: KeyUse::Open,
        documented: true,
        keys_itself: false,
        produces: Produces::Json,
        route: || web::route().to(auth::register),
    },
    Endpoint {
        method: Method::POST,
        path: "/api/v1/auth/login",
        class: RouteClass::Auth,
        keys: KeyUse::Open,
        documented: true,
        keys_itself: false,
        produces: Produces::Json,
        route: || web::route().to(auth::login),
    },
    Endpoint {
        method: Method::POST,
        path: "/api/v1/auth/refresh",
        class: RouteClass::Auth,
        keys: KeyUse::Open,
        documented: true,
        keys_itself: false,
        produces: Produces::Json,
        route: || web::route().to(auth::refresh),
    },
    Endpoint {
        method: Method::POST,
        path: "/api/v1/auth/logout",
        class: RouteClass::Auth,
        keys: KeyUse::Refused,
        documented: true,
        keys_itself: false,
        produces: Produces::Empty,
        route: || web::route().to(auth::logout),
    },
    Endpoint {
        method: Method::POST,
        path: "/api/v1/auth/logout-all",
        class: RouteClass::Auth,
        keys: KeyUse::Refused,
        documented: true,
        keys_itself: false,
        produces: Produces::Empty,
        route: || web::route().to(sessions::logout_all),
    },
    Endpoint {
        method: Method::GET,
        path: "/api/v1/auth/sessions",
        class: RouteClass::Auth,
        keys: KeyUse::Refused,
        documented: true,
        keys_itself: false,
        produces: Produces::Json,
        route: || web::route().to(sessions::list),
    },
    Endpoint {
        method: Method::DELETE,
        path: "/api/v1/auth/sessions/{id}",
        class: RouteClass::Auth,
        keys: KeyUse::Refused,
        documented: true,
        keys_itself: false,
        produces: Produces::Empty,
        route: || web::route().to(sessions::end),
    },
    Endpoint {
        method: Method::GET,
        path: "/api/v1/users/me",
        class: RouteClass::Api,
        keys: KeyUse::Refused,
        documented: true,
        keys_itself: false,
        produces: Produces::Json,
        route: || web::route().to(users::me),
    },
    Endpoint {
        method: Method::DELETE,
        path: "/api/v1/users/me",
        class: RouteClass::Api,
        keys: KeyUse::Refused,
        documented: true,
        keys_itself: false,
        produces: Produces::Empty,
        route: || web::route().to(users::delete_me),
    },
    Endpoint {
        method: Method::POST,
        path: "/api/v1/users/me/password",
        class: RouteClass::Auth,
        keys: KeyUse::Refused,
        documented: true,
        keys_itself: false,
        produces: Produces::Empty,
        route: || web::route().to(users::change_password),
    },
    Endpoint {
        method: Method::POST,
        path: "/api/v1/users/me/api-keys",
        class: RouteClass::Auth,
        keys: KeyUse::Refused,
        documented: true,
        keys_itself: false,
        produces: Produces::Json,
        route: || web::route().to(api_keys::create),
    },
    Endpoint {
        method: Method::GET,
        path: "/api/v1/users/me/api-keys",
        class: RouteClass::Auth,
        keys: KeyUse::Refused,
        documented: true,
        keys_itself: false,
        produces: Produces::Json,
        route: || web::route().to(api_keys::list),
    },
    Endpoint {
        method: Method::DELETE,
        path: "/api/v1/users/me/api-keys/{id}",
        class: RouteClass::Auth,
        keys: KeyUse::Refused,
        documented: true,
        keys_itself: false,
        produces: Produces::Empty,
        route: || web::route().to(api_keys::revoke),
    },
    Endpoint {
        method: Method::GET,
        path: "/api/v1/users/me/usage",
        class: RouteClass::Api,
        keys: KeyUse::Needs(Scope::UsageRead),
        documented: true,
        keys_itself: false,
        produces: Produces::Json,
        route: || web::route().to(usage::mine),
    },
    Endpoint {
        method: Method::GET,
        path: "/api/v1/users/me/allowance",
        class: RouteClass::Api,
        keys: KeyUse::Needs(Scope::UsageRead),
        documented: true,
        keys_itself: false,
        produces: Produces::Json,
        route: || web::route().to(usage::my_allowance),
    },
    Endpoint {
        method: Method::PUT,
        path: "/api/v1/admin/users/{id}/allowance",
        class: RouteClass::Api,
        keys: KeyUse::Refused,
        documented: true,
        keys_itself: false,
        produces: Produces::Json,
        route: || web::route().to(usage::set_allowance),
    },
    Endpoint {
        method: Method::GET,
        path: "/api/v1/admin/usage",
        class: RouteClass::Api,
        keys: KeyUse::Refused,
        documented: true,
        keys_itself: false,
        produces: Produces::Json,
        route: || web::route().to(usage::everyone),
    },
    Endpoint {
        method: Method::GET,
        path: "/api/v1/admin/users/{id}/usage",
        class: RouteClass::Api,
        keys: KeyUse::Refused,
        documented: true,
        keys_itself: false,
        produces: Produces::Json,
        route: || web::route().to(usage::of_user),
    },
    Endpoint {
        method: Method::GET,
        path: "/api/v1/models",
        class: RouteClass::Api,
        keys: KeyUse::Needs(Scope::ModelsRead),
        documented: true,
        keys_itself: false,
        produces: Produces::Json,
        route: || web::route().to(models::list),
    },
    Endpoint {
        method: Method::GET,
        path: "/api/v1/admin/users",
        class: RouteClass::Api,
        keys: KeyUse::Refused,
        documented: true,
        keys_itself: false,
        produces: Produces::Json,
        route: || web::route().to(users::list),
    },
    Endpoint {
        method: Method::PATCH,
        path: "/api/v1/admin/users/{id}",
        class: RouteClass::Api,
        keys: KeyUse::Refused,
        documented: true,
        keys_itself: false,
        produces: Produces::Json,
        route: || web::route().to(users::update),
    },
    Endpoint {
        method: Method::DELETE,
        path: "/api/v1/admin/users/{id}",
        class: RouteClass::Api,
        keys: KeyUse::Refused,
        documented: true,
        keys_itself: false,
        produces: Produces::Empty,
        route: || web::route().to(users::delete),
    },
    Endpoint {
        method: Method::GET,
        path: "/api/v1/conversations",
        class: RouteClass::Api,
        keys: KeyUse::Needs(Scope::ConversationsRead),
        documented: true,
        keys_itself: false,
        produces: Produces::Json,
        route: || web::route().to(conversations::list),
    },
    Endpoint {
        method: Method::DELETE,
        path: "/api/v1/conversations",
        class: RouteClass::Api,
        keys: KeyUse::Needs(Scope::ConversationsWrite),
        documented: true,
        keys_itself: false,
        produces: Produces::Json,
        route: || web::route().to(export::delete_all),
    },
    Endpoint {
        method: Method::GET,
        path: "/api/v1/conversations/export",
        class: RouteClass::Api,
        keys: KeyUse::Needs(Scope::ConversationsRead),
        documented: true,
        keys_itself: false,
        produces: Produces::File,
        route: || web::route().to(export::export_all),
    },
    Endpoint {
        method: Method::GET,
        path: "/api/v1/conversations/{id}/export",
        class: RouteClass::Api,
        keys: KeyUse::Needs(Scope::ConversationsRead),
        documented: true,
        keys_itself: false,
        produces: Produces::File,
        route: || web::route().to(export::export),
    },
    Endpoint {
        method: Method::POST,
        path: "/api/v1/conversations",
        class: RouteClass::Api,
        keys: KeyUse::Needs(Scope::ConversationsWrite),
        documented: true,
        keys_itself: true,
        produces: Produces::Negotiated,
        route: || web::route().to(send::create),
    },
    Endpoint {
        method: Method::GET,
        path: "/api/v1/conversations/{id}",
        class: RouteClass::Api,
        keys: KeyUse::Needs(Scope::ConversationsRead),
        documented: true,
        keys_itself: false,
        produces: Produces::Json,
        route: || web::route().to(conversations::get),
    },
    Endpoint {
        method: Method::GET,
        path: "/api/v1/conversations/{id}/tree",
        class: RouteClass::Api,
        keys: KeyUse::Needs(Scope::ConversationsRead),
        documented: true,
        keys_itself: false,
        produces: Produces::Json,
        route: || web::route().to(tree::tree),
    },
    Endpoint {
        method: Method::PATCH,
        path: "/api/v1/conversations/{id}",
        class: RouteClass::Api,
        keys: KeyUse::Needs(Scope::ConversationsWrite),
        documented: true,
        keys_itself: false,
        produces: Produces::Json,
        route: || web::route().to(conversations::update),
    },
    Endpoint {
        method: Method::DELETE,
        path: "/api/v1/conversations/{id}",
        class: RouteClass::Api,
        keys: KeyUse::Needs(Scope::ConversationsWrite),
        documented: true,
        keys_itself: false,
        produces: Produces::Empty,
        route: || web::route().to(conversations::delete),
    },
    Endpoint {
        method: Method::POST,
        path: "/api/v1/conversations/{id}/messages",
        class: RouteClass::Api,
        keys: KeyUse::Needs(Scope::ConversationsWrite),
        documented: true,
        keys_itself: true,
        produces: Produces::Negotiated,
        route: || web::route().to(send::message),
    },
    Endpoint {
        method: Method::GET,
        path: "/api/v1/conversations/{id}/stream",
        class: RouteClass::Api,
        keys: KeyUse::Needs(Scope::ConversationsRead),
        documented: true,
        keys_itself: false,
        produces: Produces::Stream,
        route: || web::route().to(stream::resume),
    },
    Endpoint {
        method: Method::DELETE,
        path: "/api/v1/conversations/{id}/stream",
        class: RouteClass::Api,
        keys: KeyUse::Needs(Scope::ConversationsWrite),
        documented: true,
        keys_itself: false,
        produces: Produces::Empty,
        route: || web::route().to(stream::stop),
    },
    Endpoint {
        method: Method::GET,
        path: "/backend-api/conversations",
        class: RouteClass::Api,
        keys: KeyUse::Needs(Scope::ConversationsRead),
        documented: true,
        keys_itself: false,
        produces: Produces::Json,
        route: || web::route().to(conversations::list),
    },
    Endpoint {
        method: Method::GET,
        path: "/backend-api/conversation/{id}",
        class: RouteClass::Api,
        keys: KeyUse::Needs(Scope::ConversationsRead),
        documented: true,
        keys_itself: false,
        produces: Produces::Json,
        route: || web::route().to(conversations::backend_get),
    },
    Endpoint {
        method: Method::PATCH,
        path: "/backend-api/conversation/{id}",
        class: RouteClass::Api,
        keys: KeyUse::Needs(Scope::ConversationsWrite),
        documented: true,
        keys_itself: false,
        produces: Produces::Json,
        route: || web::route().to(conversations::update),
    },
    Endpoint {
        method: Method::DELETE,
        path: "/backend-api/conversation/{id}",
        class: RouteClass::Api,
        keys: KeyUse::Needs(Scope::ConversationsWrite),
        documented: true,
        keys_itself: false,
        produces: Produces::Empty,
        route: || web::route().to(conversations::delete),
    },
    Endpoint {
        method: Method::GET,
        path: "/backend-api/conversation/{id}/stream",
        class: RouteClass::Api,
        keys: KeyUse::Needs(Scope::ConversationsRead),
        documented: true,
        keys_itself: false,
        produces: Produces::Stream,
        route: || web::route().to(stream::resume),
    },
    Endpoint {
        method: Method::DELETE,
        path: "/backend-api/conversation/{id}/stream",
        class: RouteClass::Api,
        keys: KeyUse::Needs(Scope::ConversationsWrite),
        documented: true,
        keys_itself: false,
        produces: Produces::Empty,
        route: || web::route().to(stream::stop),
    },
    Endpoint {
        method: Method::POST,
        path: "/backend-api/f/conversation",
        class: RouteClass::Api,
        keys: KeyUse::Needs(Scope::ConversationsWrite),
        documented: true,
        keys_itself: true,
        produces: Produces::Negotiated,
        route: || web::route().to(send::seed),
    },
];

/// The `(method, path template)` of every API route served (the docs page
/// excluded), as routed.
#[must_use]
pub fn served_routes() -> Vec<(Method, &'static str)> {
    ENDPOINTS
        .iter()
        .filter(|e| e.documented)
        .flat_map(|e| {
            let head = (e.method == Method::GET).then_some((Method::HEAD, e.path));
            std::iter::once((e.method.clone(), e.path)).chain(head)
        })
        .collect()
}

/// 406 for a request whose `Accept` allows nothing the endpoint answers
/// (`Produces` of the request's method on this resource; `HEAD` as `GET`).
async fn acceptable(
    produces: std::sync::Arc<[(Method, Produces)]>,
    req: ServiceRequest,
    next: Next<impl Body + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let method = if req.method() == Method::HEAD {
        Method::GET
    } else {
        req.method().clone()
    };
    let media = produces
        .iter()
        .find(|(m, _)| *m == method)
        .and_then(|(_, p)| match p {
            Produces::Json => Some("application/json"),
            Produces::Stream => Some("text/event-stream"),
            Produces::Negotiated | Produces::Empty | Produces::File | Produces::Any => None,
        });
    if let Some(media) = media {
        let accept = req
            .headers()
            .get(actix_web::http::header::ACCEPT)
            .and_then(|v| v.to_str().ok());
        if !crate::negotiate::accepts(accept, media) {
            let res = ApiError::not_acceptable().error_response();
            return Ok(req.into_response(res));
        }
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_boxed_body)
}

/// The paths of `endpoints` in the order the router tries them: the
/// paths without a parameter first, then the others, each in table order.
/// A request's route is the first that matches, and actix matches a path
/// with a parameter by a regex search (a static one by comparing the
/// text): this way a request for a static path runs none. The table keeps
/// a static path that a parameterised one would also match before it
/// (`/conversations/export` before `/conversations/{id}`), so static
/// first changes no request's route (`routing_order_routes_every_path_as_the_table_does`).
pub(crate) fn routing_order(endpoints: &[Endpoint]) -> Vec<&'static str> {
    let mut paths: Vec<&'static str> = Vec::new();
    for e in endpoints {
        if !paths.contains(&e.path) {
            paths.push(e.path);
        }
    }
    paths.sort_by_key(|path| !PathPattern::new(path).is_static());
    paths
}

/// Registers `endpoints`: one resource per path (in [`routing_order`]),
/// each wrapped in the panic catcher and the `Accept` check, each `GET`
/// answering `HEAD` too, each answering other methods with 405 and the
/// `Allow` header.
pub(crate) fn configure(cfg: &mut web::ServiceConfig, endpoints: &'static [Endpoint]) {
    for path in routing_order(endpoints) {
        let here: Vec<&Endpoint> = endpoints.iter().filter(|e| e.path == path).collect();
        let allow = here
            .iter()
            .flat_map(|e| {
                let head = (e.method == Method::GET).then_some("HEAD");
                std::iter::once(e.method.as_str()).chain(head)
            })
            .collect::<Vec<_>>()
            .join(", ");
        // Shared, not copied, by every request the check sees.
        let produces: std::sync::Arc<[(Method, Produces)]> = here
            .iter()
            .map(|e| (e.method.clone(), e.produces))
            .collect();
        let mut resource = web::resource(path);
        for e in here {
            resource = resource.route((e.route)().method(e.method.clone()));
            if e.method == Method::GET {
                resource = resource.route((e.route)().method(Method::HEAD));
            }
        }
        resource = resource.default_service(web::to(move || {
            let allow = allow.clone();
            async move { Err::<actix_web::HttpResponse, _>(ApiError::method_not_allowed(&allow)) }
        }));
        cfg.service(
            resource
                .wrap(from_fn(move |req, next| {
                    acceptable(produces.clone(), req, next)
                }))
                .wrap(from_fn(catch_panic)),
        );
    }
}

/// The answer for a path no route serves.
pub(crate) async fn not_found() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::not_found())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `path` with an id where it takes one.
    fn concrete(path: &str) -> String {
        path.replace("{id}", "0193b8a1-c2d3-7e5f-8a9b-0c1d2e3f4a5b")
    }

    /// Paths to try every pattern on: each endpoint's, with an id, and
    /// near misses.
    fn probes() -> Vec<String> {
        let mut probes: Vec<String> = ENDPOINTS.iter().map(|e| concrete(e.path)).collect();
        for e in ENDPOINTS {
            let path = concrete(e.path);
            probes.push(format!("{path}/"));
            probes.push(format!("{path}/x"));
            probes.push(format!("/{path}"));
            probes.push(path.replace("0193b8a1-c2d3-7e5f-8a9b-0c1d2e3f4a5b", ""));
            probes.push(path.replace("0193b8a1-c2d3-7e5f-8a9b-0c1d2e3f4a5b", "a%2Fb c"));
            probes.push(e.path.to_owned());
        }
        probes.extend(["", "/", "//", "/nope", "/api/v1/conversations/export"].map(String::from));
        probes
    }

    #[test]
    fn a_path_pattern_matches_what_actix_matches() {
        for e in ENDPOINTS {
            let ours = PathPattern::new(e.path);
            let actix = actix_web::dev::ResourceDef::new(e.path);
            assert_eq!(ours.is_static(), !e.path.contains('{'), "{}", e.path);
            for probe in probes() {
                assert_eq!(
                    ours.is_match(&probe),
                    actix.is_match(&probe),
                    "{} on {probe:?}",
                    e.path
                );
            }
        }
    }

    #[test]
    fn routing_order_routes_every_path_as_the_table_does() {
        let mut table: Vec<&str> = Vec::new();
        for e in ENDPOINTS {
            if !table.contains(&e.path) {
                table.push(e.path);
            }
        }
        let order = routing_order(ENDPOINTS);
        assert_eq!(order.len(), table.len());
        let first = |paths: &[&'static str], probe: &str| {
            paths
                .iter()
                .find(|path| actix_web::dev::ResourceDef::new(**path).is_match(probe))
                .copied()
        };
        for probe in probes() {
            assert_eq!(first(&order, &probe), first(&table, &probe), "{probe:?}");
        }
        // The point of the order: the list is reached before any pattern.
        let list = order
            .iter()
            .position(|p| *p == "/api/v1/conversations")
            .unwrap();
        assert!(
            order[..list]
                .iter()
                .all(|p| PathPattern::new(p).is_static())
        );
    }

    #[test]
    fn every_endpoint_has_the_class_it_declares() {
        let classes = RouteClasses::new(ENDPOINTS);
        for e in ENDPOINTS {
            assert_eq!(classes.of(&concrete(e.path)), e.class, "{}", e.path);
        }
    }

    /// The routes that manage the account, its sessions and keys, and the
    /// admin routes, are a login session's only; a key's scopes reach
    /// nothing else that needs no caller.
    #[test]
    fn no_key_reaches_an_account_session_key_or_admin_route() {
        let classes = RouteClasses::new(ENDPOINTS);
        for e in ENDPOINTS {
            assert_eq!(
                classes.key_use(&e.method, &concrete(e.path)),
                Some(e.keys),
                "{}",
                e.path
            );
            let session_only = e.path.starts_with("/api/v1/admin/")
                || e.path.starts_with("/api/v1/auth/logout")
                || e.path.starts_with("/api/v1/auth/sessions")
                || e.path.starts_with("/api/v1/users/me/api-keys")
                || e.path == "/api/v1/users/me/password"
                || e.path == "/api/v1/users/me";
            if session_only {
                assert_eq!(e.keys, KeyUse::Refused, "{} {}", e.method, e.path);
            }
            let open = matches!(
                e.class,
                RouteClass::Health | RouteClass::Docs | RouteClass::Web
            ) || [
                "/api/v1/openapi.json",
                "/api/v1/auth/register",
                "/api/v1/auth/login",
                "/api/v1/auth/refresh",
            ]
            .contains(&e.path);
            assert_eq!(e.keys == KeyUse::Open, open, "{} {}", e.method, e.path);
            // Writing takes the write scope; reading never does more.
            if let KeyUse::Needs(scope) = e.keys
                && e.path.contains("conversation")
            {
                let write = e.method != Method::GET;
                assert_eq!(
                    scope,
                    if write {
                        Scope::ConversationsWrite
                    } else {
                        Scope::ConversationsRead
                    },
                    "{} {}",
                    e.method,
                    e.path
                );
            }
        }
        assert_eq!(classes.key_use(&Method::GET, "/nope"), None);
        // HEAD is answered by the GET handler: it is the GET's to allow.
        assert_eq!(
            classes.key_use(&Method::HEAD, "/api/v1/users/me"),
            Some(KeyUse::Refused)
        );
        assert_eq!(
            classes.key_use(&Method::HEAD, "/api/v1/models"),
            Some(KeyUse::Needs(Scope::ModelsRead))
        );
    }

    #[test]
    fn paths_between_routes_get_the_class_of_their_prefix_or_none() {
        let classes = RouteClasses::new(ENDPOINTS);
        assert_eq!(classes.of("/docs/index.html"), RouteClass::Docs);
        assert_eq!(classes.of("/docsx"), RouteClass::Unrouted);
        assert_eq!(classes.of("/api/v1/auth/loginx"), RouteClass::Unrouted);
        assert_eq!(classes.of("/api/v1/auth/login/x"), RouteClass::Auth);
        assert_eq!(classes.of("/api/v1/auth"), RouteClass::Unrouted);
        assert_eq!(classes.of("/api/v1/conversations/x/y"), RouteClass::Api);
        assert_eq!(classes.of("/healthz"), RouteClass::Health);
        assert_eq!(classes.of("/"), RouteClass::Web);
        assert_eq!(classes.of("/assets/app.js"), RouteClass::Web);
        assert_eq!(classes.of("/assetsx"), RouteClass::Unrouted);
        assert_eq!(classes.of("/nope"), RouteClass::Unrouted);
        assert_eq!(classes.of("//nope"), RouteClass::Unrouted);
    }
}
