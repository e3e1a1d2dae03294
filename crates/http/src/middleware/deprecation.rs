//! Versioning with a sunset (seed `004`): responses of a route prefix the
//! configuration marks deprecated carry `Deprecation` (RFC 9745), `Sunset`
//! (RFC 8594) and `Link` to the successor and to the deprecation policy;
//! the served OpenAPI document marks those operations deprecated.

use actix_web::Error;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue, HttpDate, LINK};
use actix_web::middleware::Next;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::State;

const DEPRECATION: HeaderName = HeaderName::from_static("deprecation");
const SUNSET: HeaderName = HeaderName::from_static("sunset");

/// One deprecated route prefix, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeprecationNotice {
    /// The path prefix (`/backend-api`), matched at a segment boundary.
    pub prefix: String,
    /// When it was deprecated, RFC 3339 (`2026-12-01T00:00:00Z`).
    pub since: String,
    /// When it stops being served, RFC 3339; none when not decided.
    pub sunset: Option<String>,
    /// What replaces it: a path (`/api/v1`) or URL.
    pub successor: Option<String>,
    /// Where the deprecation is explained (a URL or path).
    pub policy: Option<String>,
}

/// A deprecated prefix and the headers its responses carry.
#[derive(Debug, Clone)]
struct Deprecated {
    prefix: String,
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// The deprecated route prefixes (app data). Empty by default.
#[derive(Debug, Clone, Default)]
pub struct DeprecatedRoutes {
    entries: Vec<Deprecated>,
}

/// `raw` (RFC 3339) as a time, or a message naming `what`.
fn instant(what: &str, raw: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(raw, &Rfc3339).map_err(|_| {
        format!("{what} must be an RFC 3339 time like 2027-06-30T00:00:00Z, not '{raw}'")
    })
}

/// A header value, or a message naming `what`.
fn value(what: &str, text: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(text).map_err(|_| format!("{what} is not a valid header value"))
}

impl DeprecatedRoutes {
    /// The headers of each notice.
    ///
    /// # Errors
    /// A message naming the field of a notice that does not parse: a
    /// prefix that is not an absolute path, a time that is not RFC 3339, a
    /// sunset before the deprecation, a link with `<`, `>` or a quote.
    pub fn new(notices: &[DeprecationNotice]) -> Result<Self, String> {
        let entries = notices
            .iter()
            .map(|notice| {
                let prefix = notice.prefix.trim_end_matches('/');
                if !prefix.starts_with('/') || prefix.contains(char::is_whitespace) {
                    return Err(format!(
                        "deprecation prefix '{}' must be an absolute path like /backend-api",
                        notice.prefix
                    ));
                }
                let since = instant("deprecation since", &notice.since)?;
                let mut headers = vec![(
                    DEPRECATION,
                    value("since", &format!("@{}", since.unix_timestamp()))?,
                )];
                if let Some(sunset) = &notice.sunset {
                    let sunset = instant("deprecation sunset", sunset)?;
                    if sunset < since {
                        return Err(format!("the sunset of {prefix} is before its deprecation"));
                    }
                    let date = HttpDate::from(std::time::SystemTime::from(sunset));
                    headers.push((SUNSET, value("sunset", &date.to_string())?));
                }
                for (target, rel) in [
                    (&notice.successor, "successor-version"),
                    (&notice.policy, "deprecation"),
                ] {
                    if let Some(target) = target {
                        if target.contains(['<', '>', '"', ' ']) || target.is_empty() {
                            return Err(format!(
                                "the {rel} link of {prefix} must be a plain URL or path"
                            ));
                        }
                        headers.push((LINK, value(rel, &format!("<{target}>; rel=\"{rel}\""))?));
                    }
                }
                Ok(Deprecated {
                    prefix: prefix.to_owned(),
                    headers,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self { entries })
    }

    /// The notice that covers `path`, if any.
    fn covering(&self, path: &str) -> Option<&Deprecated> {
        self.entries.iter().find(|d| covers(&d.prefix, path))
    }

    /// Whether any notice covers `path` (for the OpenAPI document).
    #[must_use]
    pub fn covers(&self, path: &str) -> bool {
        self.covering(path).is_some()
    }
}

/// Whether `prefix` covers `path` at a segment boundary.
fn covers(prefix: &str, path: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

pub(crate) async fn deprecation(
    state: State,
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    // The path as routed (decoded), so every spelling is covered.
    let notice = state
        .deprecated
        .covering(req.match_info().as_str())
        .cloned();
    let mut res = next.call(req).await?;
    if let Some(notice) = notice {
        let headers = res.headers_mut();
        for (name, value) in notice.headers {
            headers.append(name, value);
        }
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn notice() -> DeprecationNotice {
        DeprecationNotice {
            prefix: "/backend-api/".into(),
            since: "2026-12-01T00:00:00Z".into(),
            sunset: Some("2027-06-30T00:00:00Z".into()),
            successor: Some("/api/v1".into()),
            policy: Some("https://chat.example.com/docs/deprecations".into()),
        }
    }

    #[test]
    fn a_notice_becomes_its_headers() {
        let routes = DeprecatedRoutes::new(&[notice()]).unwrap();
        let d = routes.covering("/backend-api/conversations").unwrap();
        let headers: Vec<(String, String)> = d
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        assert_eq!(
            headers,
            [
                ("deprecation".into(), "@1796083200".into()),
                ("sunset".into(), "Wed, 30 Jun 2027 00:00:00 GMT".into()),
                ("link".into(), "</api/v1>; rel=\"successor-version\"".into()),
                (
                    "link".into(),
                    "<https://chat.example.com/docs/deprecations>; rel=\"deprecation\"".into()
                ),
            ]
        );
        assert!(routes.covers("/backend-api"));
        assert!(!routes.covers("/backend-apix/conversations"));
        assert!(!routes.covers("/api/v1/conversations"));
    }

    #[test]
    fn bad_notices_are_refused_naming_what() {
        for (broken, needle) in [
            (
                DeprecationNotice {
                    prefix: "backend-api".into(),
                    ..notice()
                },
                "absolute path",
            ),
            (
                DeprecationNotice {
                    since: "yesterday".into(),
                    ..notice()
                },
                "RFC 3339",
            ),
            (
                DeprecationNotice {
                    sunset: Some("2020-01-01T00:00:00Z".into()),
                    ..notice()
                },
                "before",
            ),
            (
                DeprecationNotice {
                    successor: Some("</x>; rel=evil".into()),
                    ..notice()
                },
                "plain URL",
            ),
        ] {
            let err = DeprecatedRoutes::new(&[broken]).unwrap_err();
            assert!(err.contains(needle), "{err}");
        }
    }
}
