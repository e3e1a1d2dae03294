//! Every route the API serves, in one table.
//!
//! The table drives routing, the `Allow` header of a 405, and
//! [`served_routes`], which a test compares with the OpenAPI document so a
//! route can't be served without being documented.

pub(crate) mod auth;
pub(crate) mod conversations;
pub(crate) mod docs;
pub(crate) mod health;
pub(crate) mod schema;
pub(crate) mod send;
pub(crate) mod stream;
pub(crate) mod users;

use actix_web::http::Method;
use actix_web::middleware::from_fn;
use actix_web::{Route, web};

use crate::ApiError;
use crate::middleware::catch_panic;

pub(crate) use auth::{LoginRequest, RefreshRequest, RegisterRequest, TokenBody, UserBody};
pub(crate) use conversations::{
    ConversationBody, ConversationItem, ConversationMeta, ConversationPageBody,
    ConversationPatchBody,
};
pub(crate) use docs::OpenApiJson;
pub(crate) use health::{Health, ReadinessBody};
pub(crate) use schema::{AuthorView, ContentView, MessageMetadataView, MessageView};
pub(crate) use send::{ContentInput, MessageInput, SendBody, SendOptions, SentBody};
pub(crate) use users::{UserPage, UserPatch};

/// One method on one path.
pub(crate) struct Endpoint {
    pub(crate) method: Method,
    pub(crate) path: &'static str,
    /// False only for the interactive docs page, which is not part of the API.
    pub(crate) documented: bool,
    pub(crate) route: fn() -> Route,
}

/// Every endpoint of the API.
pub(crate) static ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: Method::GET,
        path: "/healthz",
        documented: true,
        route: || web::route().to(health::healthz),
    },
    Endpoint {
        method: Method::GET,
        path: "/readyz",
        documented: true,
        route: || web::route().to(health::readyz),
    },
    Endpoint {
        method: Method::GET,
        path: "/api/v1/openapi.json",
        documented: true,
        route: || web::route().to(docs::openapi_json),
    },
    Endpoint {
        method: Method::GET,
        path: "/docs",
        documented: false,
        route: || web::route().to(docs::docs_redirect),
    },
    Endpoint {
        method: Method::POST,
        path: "/api/v1/auth/register",
        documented: true,
        route: || web::route().to(auth::register),
    },
    Endpoint {
        method: Method::POST,
        path: "/api/v1/auth/login",
        documented: true,
        route: || web::route().to(auth::login),
    },
    Endpoint {
        method: Method::POST,
        path: "/api/v1/auth/refresh",
        documented: true,
        route: || web::route().to(auth::refresh),
    },
    Endpoint {
        method: Method::POST,
        path: "/api/v1/auth/logout",
        documented: true,
        route: || web::route().to(auth::logout),
    },
    Endpoint {
        method: Method::GET,
        path: "/api/v1/users/me",
        documented: true,
        route: || web::route().to(users::me),
    },
    Endpoint {
        method: Method::GET,
        path: "/api/v1/admin/users",
        documented: true,
        route: || web::route().to(users::list),
    },
    Endpoint {
        method: Method::PATCH,
        path: "/api/v1/admin/users/{id}",
        documented: true,
        route: || web::route().to(users::update),
    },
    Endpoint {
        method: Method::GET,
        path: "/api/v1/conversations",
        documented: true,
        route: || web::route().to(conversations::list),
    },
    Endpoint {
        method: Method::POST,
        path: "/api/v1/conversations",
        documented: true,
        route: || web::route().to(send::create),
    },
    Endpoint {
        method: Method::GET,
        path: "/api/v1/conversations/{id}",
        documented: true,
        route: || web::route().to(conversations::get),
    },
    Endpoint {
        method: Method::PATCH,
        path: "/api/v1/conversations/{id}",
        documented: true,
        route: || web::route().to(conversations::update),
    },
    Endpoint {
        method: Method::DELETE,
        path: "/api/v1/conversations/{id}",
        documented: true,
        route: || web::route().to(conversations::delete),
    },
    Endpoint {
        method: Method::POST,
        path: "/api/v1/conversations/{id}/messages",
        documented: true,
        route: || web::route().to(send::message),
    },
    Endpoint {
        method: Method::GET,
        path: "/api/v1/conversations/{id}/stream",
        documented: true,
        route: || web::route().to(stream::resume),
    },
    Endpoint {
        method: Method::DELETE,
        path: "/api/v1/conversations/{id}/stream",
        documented: true,
        route: || web::route().to(stream::stop),
    },
    Endpoint {
        method: Method::GET,
        path: "/backend-api/conversations",
        documented: true,
        route: || web::route().to(conversations::list),
    },
    Endpoint {
        method: Method::GET,
        path: "/backend-api/conversation/{id}",
        documented: true,
        route: || web::route().to(conversations::get),
    },
    Endpoint {
        method: Method::PATCH,
        path: "/backend-api/conversation/{id}",
        documented: true,
        route: || web::route().to(conversations::update),
    },
    Endpoint {
        method: Method::DELETE,
        path: "/backend-api/conversation/{id}",
        documented: true,
        route: || web::route().to(conversations::delete),
    },
    Endpoint {
        method: Method::GET,
        path: "/backend-api/conversation/{id}/stream",
        documented: true,
        route: || web::route().to(stream::resume),
    },
    Endpoint {
        method: Method::DELETE,
        path: "/backend-api/conversation/{id}/stream",
        documented: true,
        route: || web::route().to(stream::stop),
    },
    Endpoint {
        method: Method::POST,
        path: "/backend-api/f/conversation",
        documented: true,
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
        .map(|e| (e.method.clone(), e.path))
        .collect()
}

/// Registers `endpoints`: one resource per path, each wrapped in the panic
/// catcher, each answering other methods with 405 and the `Allow` header.
pub(crate) fn configure(cfg: &mut web::ServiceConfig, endpoints: &'static [Endpoint]) {
    let mut paths: Vec<&'static str> = Vec::new();
    for e in endpoints {
        if !paths.contains(&e.path) {
            paths.push(e.path);
        }
    }
    for path in paths {
        let here: Vec<&Endpoint> = endpoints.iter().filter(|e| e.path == path).collect();
        let allow = here
            .iter()
            .map(|e| e.method.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let mut resource = web::resource(path);
        for e in here {
            resource = resource.route((e.route)().method(e.method.clone()));
        }
        resource = resource.default_service(web::to(move || {
            let allow = allow.clone();
            async move { Err::<actix_web::HttpResponse, _>(ApiError::method_not_allowed(&allow)) }
        }));
        cfg.service(resource.wrap(from_fn(catch_panic)));
    }
}

/// The answer for a path no route serves.
pub(crate) async fn not_found() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::not_found())
}
