//! The chat page: a single-page client of this API, shipped inside the
//! binary (`crates/http/web`), served at `/` and `/assets/{name}`.
//!
//! Its files are plain HTML, CSS and JavaScript modules, two of them
//! vendored libraries (`web/vendor/README.md`). Each is compiled in, so
//! the page needs nothing on disk and no Node toolchain. The page runs
//! under a strict Content-Security-Policy (no inline script or style):
//! text a model writes is rendered as sanitised Markdown and can never
//! run script.

use std::sync::OnceLock;

use actix_web::http::header::{
    CACHE_CONTROL, CONTENT_TYPE, ETAG, EntityTag, HeaderValue, IfNoneMatch,
};
use actix_web::{HttpRequest, HttpResponse, web};
use sha2::{Digest, Sha256};

use crate::{ApiError, State};

/// Whether the page is served (`web.enabled`; off for API-only
/// deployments, where `/` and `/assets/…` answer 404).
#[derive(Debug, Clone, Copy)]
pub struct WebPage {
    /// Serve the chat page.
    pub enabled: bool,
}

/// One file of the page.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of the page, by the name it is served under.
static ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../web/index.html"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../web/style.css"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../web/icon.svg"),
    },
    Asset {
        name: "app.js",
        content_type: JS,
        body: include_bytes!("../../web/app.js"),
    },
    Asset {
        name: "api.js",
        content_type: JS,
        body: include_bytes!("../../web/api.js"),
    },
    Asset {
        name: "stream.js",
        content_type: JS,
        body: include_bytes!("../../web/stream.js"),
    },
    Asset {
        name: "render.js",
        content_type: JS,
        body: include_bytes!("../../web/render.js"),
    },
    Asset {
        name: "marked.esm.js",
        content_type: JS,
        body: include_bytes!("../../web/vendor/marked.esm.js"),
    },
    Asset {
        name: "purify.es.mjs",
        content_type: JS,
        body: include_bytes!("../../web/vendor/purify.es.mjs"),
    },
];

/// The entity tag of each asset (a hash of its bytes), computed once.
fn tags() -> &'static [EntityTag] {
    static TAGS: OnceLock<Vec<EntityTag>> = OnceLock::new();
    TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let digest = Sha256::digest(a.body);
                let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
                EntityTag::new_strong(hex)
            })
            .collect()
    })
}

/// Answers the asset at `index` of [`ASSETS`], or 304 when the client
/// holds it already. Browsers revalidate every time (`no-cache`), so a new
/// binary's page is never mixed with an old one's modules.
fn serve(req: &HttpRequest, index: usize) -> Result<HttpResponse, ApiError> {
    let (Some(asset), Some(tag)) = (ASSETS.get(index), tags().get(index)) else {
        return Err(ApiError::not_found());
    };
    let fresh = match actix_web::http::header::Header::parse(req) {
        Ok(IfNoneMatch::Any) => true,
        Ok(IfNoneMatch::Items(items)) => items.iter().any(|t| t.weak_eq(tag)),
        Err(_) => false,
    };
    let mut res = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    res.insert_header((CACHE_CONTROL, HeaderValue::from_static("no-cache")))
        .insert_header((ETAG, tag.to_string()));
    if fresh {
        return Ok(res.finish());
    }
    Ok(res
        .insert_header((CONTENT_TYPE, HeaderValue::from_static(asset.content_type)))
        .body(asset.body))
}

/// `GET /`: the chat page.
pub(crate) async fn index(req: HttpRequest, state: State) -> Result<HttpResponse, ApiError> {
    if !state.web.enabled {
        return Err(ApiError::not_found());
    }
    serve(&req, 0)
}

/// `GET /assets/{name}`: one of the page's files.
pub(crate) async fn asset(
    req: HttpRequest,
    state: State,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    if !state.web.enabled {
        return Err(ApiError::not_found());
    }
    let index = ASSETS
        .iter()
        .position(|a| a.name == name.as_str())
        .ok_or_else(ApiError::not_found)?;
    serve(&req, index)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every module the page imports is served, and nothing it names is
    /// missing: a renamed file fails here, not in a browser.
    #[test]
    fn every_file_the_page_names_is_served() {
        let served: Vec<&str> = ASSETS.iter().map(|a| a.name).collect();
        for asset in ASSETS {
            let Ok(text) = std::str::from_utf8(asset.body) else {
                continue;
            };
            for (at, _) in text.match_indices("/assets/") {
                let rest = &text[at + "/assets/".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
                    .collect();
                assert!(
                    served.contains(&name.as_str()),
                    "{} names /assets/{name}, which is not served",
                    asset.name
                );
            }
        }
    }

    /// The page's own code writes no inline script or style and no
    /// handler attribute: the CSP would refuse them.
    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let index = std::str::from_utf8(ASSETS[0].body).unwrap_or_default();
        assert!(!index.contains("<script>"), "inline script");
        assert!(!index.contains("<style"), "inline style");
        assert!(!index.contains(" style="), "style attribute");
        let handler = index.match_indices(" on").any(|(at, _)| {
            let rest = &index[at + 3..];
            let name = rest.bytes().take_while(u8::is_ascii_lowercase).count();
            name > 0 && rest[name..].starts_with('=')
        });
        assert!(!handler, "handler attribute");
        for asset in ASSETS.iter().filter(|a| a.content_type == JS) {
            if asset.name.starts_with("marked") || asset.name.starts_with("purify") {
                continue;
            }
            let text = std::str::from_utf8(asset.body).unwrap_or_default();
            assert!(!text.contains("eval("), "{}: eval", asset.name);
            assert!(
                !text.contains("new Function"),
                "{}: new Function",
                asset.name
            );
        }
    }
}
