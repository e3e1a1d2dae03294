//! Response compression: zstd, br or gzip, as the request's
//! `Accept-Encoding` prefers, for JSON and documents of 1 KiB or more.
//!
//! Never compressed: event streams (a compressor holds back the small
//! writes a stream is made of, so deltas would arrive late and in bursts),
//! the authentication routes (their bodies hold tokens: no compression
//! oracle next to a secret), bodies under [`MIN_BYTES`] (the encoding would
//! cost more than it saves) and answers without a body. A request that
//! refuses every encoding we offer gets the identity encoding, which
//! RFC 9110 (12.5.3) allows.

use actix_http::encoding::Encoder;
use actix_web::body::{BodySize, MessageBody};
use actix_web::dev::{ResponseHead, ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{
    AcceptEncoding, CONTENT_ENCODING, CONTENT_TYPE, ContentEncoding, Encoding, HeaderValue,
    Preference, Quality, VARY,
};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage};

use crate::State;
use crate::routes::RouteClass;

/// The smallest body worth compressing, in bytes.
pub(crate) const MIN_BYTES: u64 = 1024;

/// The encodings offered, best first where the client weighs them equally.
fn offered() -> [Encoding; 3] {
    [
        Encoding::Known(ContentEncoding::Zstd),
        Encoding::Known(ContentEncoding::Brotli),
        Encoding::Known(ContentEncoding::Gzip),
    ]
}

/// The encoding the request asks for, if it accepts one we offer: the one
/// it weighs highest (by name, or else by `*`), ours first on a tie (so a
/// browser's `gzip, deflate, br, zstd` gets zstd). actix's own
/// negotiation keeps the client's order on a tie and ignores `*`.
fn negotiated(req: &ServiceRequest) -> Option<ContentEncoding> {
    let accept = req.get_header::<AcceptEncoding>()?;
    let weight = |encoding: &Encoding| {
        let named = accept
            .0
            .iter()
            .find(|q| matches!(&q.item, Preference::Specific(e) if e == encoding));
        named
            .or_else(|| accept.0.iter().find(|q| q.item == Preference::Any))
            .map_or(Quality::ZERO, |q| q.quality)
    };
    let mut best: Option<(ContentEncoding, Quality)> = None;
    for encoding in offered() {
        let quality = weight(&encoding);
        if let Encoding::Known(known) = encoding
            && quality > best.map_or(Quality::ZERO, |(_, q)| q)
        {
            best = Some((known, quality));
        }
    }
    best.map(|(encoding, _)| encoding)
}

/// Whether a response with these headers may be compressed at all (what
/// the client accepts aside).
fn compressible(status: StatusCode, content_type: Option<&HeaderValue>, encoded: bool) -> bool {
    let stream = content_type
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.trim_start().starts_with("text/event-stream"));
    !(stream
        || encoded
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status == StatusCode::PARTIAL_CONTENT
        || status.is_informational())
}

/// What a response is sent as: `wanted` (what the client asked for, if we
/// offer it) when the response may be compressed and is large enough;
/// else identity, with whether it must still say `Vary: Accept-Encoding`
/// (another request for the same resource may get it compressed).
fn choose(
    class: RouteClass,
    head: &ResponseHead,
    size: BodySize,
    wanted: Option<ContentEncoding>,
) -> (ContentEncoding, bool) {
    let may = class != RouteClass::Auth
        && compressible(
            head.status,
            head.headers.get(CONTENT_TYPE),
            head.headers.contains_key(CONTENT_ENCODING),
        );
    let large = match size {
        BodySize::Sized(n) => n >= MIN_BYTES,
        BodySize::Stream => true,
        BodySize::None => false,
    };
    match wanted {
        Some(encoding) if may && large => (encoding, false),
        _ => (ContentEncoding::Identity, may),
    }
}

pub(crate) async fn compress(
    state: State,
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let class = state.routes.of(req.match_info().as_str());
    let wanted = negotiated(&req);
    let res = next.call(req).await?;
    Ok(res.map_body(move |head, body| {
        let (encoding, vary) = choose(class, head, body.size(), wanted);
        if vary {
            head.headers
                .append(VARY, HeaderValue::from_static("accept-encoding"));
        }
        // Sets `Content-Encoding` and `Vary` when it encodes.
        Encoder::response(encoding, head, body)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(status: StatusCode, content_type: &'static str) -> ResponseHead {
        let mut head = ResponseHead::new(status);
        head.headers
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        head
    }

    #[test]
    fn large_json_is_compressed_as_asked_except_on_the_auth_routes() {
        let ok = head(StatusCode::OK, "application/json");
        let large = BodySize::Sized(MIN_BYTES);
        let zstd = Some(ContentEncoding::Zstd);
        assert_eq!(
            choose(RouteClass::Api, &ok, large, zstd),
            (ContentEncoding::Zstd, false)
        );
        assert_eq!(
            choose(RouteClass::Docs, &ok, BodySize::Stream, zstd).0,
            ContentEncoding::Zstd
        );
        // Not asked, or too small: plain, and says it varies.
        assert_eq!(
            choose(RouteClass::Api, &ok, large, None),
            (ContentEncoding::Identity, true)
        );
        assert_eq!(
            choose(RouteClass::Api, &ok, BodySize::Sized(MIN_BYTES - 1), zstd),
            (ContentEncoding::Identity, true)
        );
        // Tokens are never next to a compressor; streams never compressed.
        assert_eq!(
            choose(RouteClass::Auth, &ok, large, zstd),
            (ContentEncoding::Identity, false)
        );
        let sse = head(StatusCode::OK, "text/event-stream");
        assert_eq!(
            choose(RouteClass::Api, &sse, BodySize::Stream, zstd),
            (ContentEncoding::Identity, false)
        );
    }

    #[test]
    fn event_streams_and_bodiless_answers_are_never_compressed() {
        let json = HeaderValue::from_static("application/json");
        let sse = HeaderValue::from_static("text/event-stream");
        assert!(compressible(StatusCode::OK, Some(&json), false));
        assert!(compressible(StatusCode::NOT_FOUND, Some(&json), false));
        assert!(!compressible(StatusCode::OK, Some(&sse), false));
        assert!(!compressible(StatusCode::OK, Some(&json), true));
        for status in [
            StatusCode::NO_CONTENT,
            StatusCode::NOT_MODIFIED,
            StatusCode::PARTIAL_CONTENT,
            StatusCode::SWITCHING_PROTOCOLS,
        ] {
            assert!(!compressible(status, Some(&json), false), "{status}");
        }
    }
}
