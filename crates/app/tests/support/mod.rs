//! What the use-case tests share.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use confab_jwt::{JwtCodec, JwtSettings};

/// The real JWT codec with a test secret and the default lifetimes.
pub(crate) fn jwt_codec() -> JwtCodec {
    JwtCodec::new(
        b"0123456789abcdef0123456789abcdef",
        JwtSettings {
            issuer: "confab".into(),
            audience: "confab-api".into(),
            access_ttl: Duration::from_secs(900),
            refresh_ttl: Duration::from_secs(3600),
            resume_ttl: Duration::from_secs(900),
            leeway: Duration::from_secs(5),
        },
    )
    .unwrap()
}
