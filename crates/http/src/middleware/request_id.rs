//! `X-Request-Id` on every response and in every error body.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage};

use crate::error::ErrorBody;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the request being served (in the request's extensions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    /// Takes the client's id when it is sane (1..=64 characters of
    /// `[A-Za-z0-9._:-]`), else makes one (`req_` + 32 hex digits).
    #[must_use]
    pub fn from_client(value: Option<&str>) -> Self {
        match value {
            Some(v)
                if (1..=64).contains(&v.len())
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b)) =>
            {
                Self(v.to_owned())
            }
            _ => Self(format!("req_{}", uuid::Uuid::new_v4().simple())),
        }
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Assigns the request id, puts it on the response, and gives every error
/// response the API's error shape with that id inside.
pub(crate) async fn request_id(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let id = RequestId::from_client(
        req.headers()
            .get(&X_REQUEST_ID)
            .and_then(|v| v.to_str().ok()),
    );
    req.extensions_mut().insert(id.clone());
    // No clone of the request may be held here: actix's router needs sole
    // ownership of it. Handlers' errors arrive as responses; an `Err` from
    // a middleware is rendered by actix itself from our `ApiError`.
    let mut res = next.call(req).await?.map_into_boxed_body();
    if res.status().is_client_error() || res.status().is_server_error() {
        let body = res
            .response()
            .extensions()
            .get::<ErrorBody>()
            .cloned()
            .unwrap_or_else(|| ErrorBody::for_status(res.status()));
        let bytes = body.render(id.as_str());
        res = res.map_body(|head, _| {
            head.headers
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            BoxBody::new(bytes)
        });
    }
    if let Ok(value) = HeaderValue::from_str(id.as_str()) {
        res.headers_mut().insert(X_REQUEST_ID.clone(), value);
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::RequestId;

    #[test]
    fn keeps_sane_ids_and_replaces_others() {
        assert_eq!(RequestId::from_client(Some("abc-123")).as_str(), "abc-123");
        for bad in [
            None,
            Some(""),
            Some("has space"),
            Some("x\"y"),
            Some(&"a".repeat(65)[..]),
        ] {
            let id = RequestId::from_client(bad);
            assert!(
                id.as_str().starts_with("req_") && id.as_str().len() == 36,
                "{bad:?}"
            );
        }
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::RequestId;

    fn sane(id: &str) -> bool {
        (1..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
    }

    proptest! {
        /// Whatever a client sends, the id is sane; a sane one is kept
        /// verbatim, anything else replaced.
        #[test]
        fn a_client_id_is_kept_exactly_when_it_is_sane(
            sent in prop_oneof![any::<String>(), "[A-Za-z0-9._:-]{0,70}"],
        ) {
            let id = RequestId::from_client(Some(&sent));
            prop_assert!(sane(id.as_str()), "{:?}", id.as_str());
            prop_assert_eq!(id.as_str() == sent, sane(&sent));
        }
    }
}
