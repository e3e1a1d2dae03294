//! HS256 JSON Web Tokens behind [`confab_ports::TokenCodec`].
//!
//! Validation follows RFC 8725: exactly HS256 (so `alg: none` and every
//! other algorithm are refused), `iss` and `aud` must match, `exp` and
//! `nbf` are checked with an explicit leeway, and `typ` must be the kind
//! asked for, so a refresh token is never accepted as an access token or
//! the reverse. Claims: `sub`, `iat`, `nbf`, `exp`, `jti`, `iss`, `aud`,
//! `typ`, `sid` (the login session) and, on access tokens, `role`.

use std::time::Duration;

use confab_domain::{DomainError, FamilyId, OffsetDateTime, Role, TokenId, UserId};
use confab_ports::{AccessClaims, IssuedToken, RefreshClaims, TokenCodec, TokenRejection};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The least secret length accepted, in bytes (HS256's key size).
pub const MIN_SECRET_BYTES: usize = 32;

/// Token settings, from configuration.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    /// `iss` of every token, checked on the way in.
    pub issuer: String,
    /// `aud` of every token, checked on the way in.
    pub audience: String,
    /// Access token lifetime (15 minutes by default).
    pub access_ttl: Duration,
    /// Refresh token lifetime (7 days by default).
    pub refresh_ttl: Duration,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
}

/// Why a codec could not be built.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// The secret is too short to be safe.
    #[error("the JWT secret must be at least {MIN_SECRET_BYTES} bytes")]
    ShortSecret,
}

const ACCESS: &str = "access";
const REFRESH: &str = "refresh";

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    iat: i64,
    nbf: i64,
    exp: i64,
    jti: String,
    iss: String,
    aud: String,
    typ: String,
    sid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<String>,
}

/// Signs and verifies Confab's tokens with one HMAC secret.
pub struct JwtCodec {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    settings: JwtSettings,
}

impl JwtCodec {
    /// Builds a codec over `secret`.
    ///
    /// # Errors
    /// [`JwtError::ShortSecret`] when the secret is under 32 bytes.
    pub fn new(secret: &[u8], settings: JwtSettings) -> Result<Self, JwtError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(JwtError::ShortSecret);
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = settings.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        Ok(Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            settings,
        })
    }

    fn issue(
        &self,
        typ: &str,
        user: UserId,
        role: Option<Role>,
        family: FamilyId,
        now: OffsetDateTime,
        ttl: Duration,
    ) -> Result<IssuedToken, DomainError> {
        let jti = TokenId::generate();
        let expires_at = now + ttl;
        let claims = Claims {
            sub: user.to_string(),
            iat: now.unix_timestamp(),
            nbf: now.unix_timestamp(),
            exp: expires_at.unix_timestamp(),
            jti: jti.to_string(),
            iss: self.settings.issuer.clone(),
            aud: self.settings.audience.clone(),
            typ: typ.to_owned(),
            sid: family.to_string(),
            role: role.map(|r| r.as_str().to_owned()),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(DomainError::internal)?;
        Ok(IssuedToken {
            token,
            jti,
            expires_at,
        })
    }

    /// Decodes and validates `token`, and checks it is of kind `typ`.
    fn verify(&self, token: &str, typ: &str) -> Result<Parsed, TokenRejection> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenRejection::Expired,
                _ => TokenRejection::Invalid,
            })?;
        let c = data.claims;
        if c.typ != typ {
            return Err(TokenRejection::Invalid);
        }
        let uuid = |s: &str| uuid::Uuid::parse_str(s).map_err(|_| TokenRejection::Invalid);
        let time =
            |t: i64| OffsetDateTime::from_unix_timestamp(t).map_err(|_| TokenRejection::Invalid);
        Ok(Parsed {
            user_id: UserId::from_uuid(uuid(&c.sub)?),
            jti: TokenId::from_uuid(uuid(&c.jti)?),
            family: FamilyId::from_uuid(uuid(&c.sid)?),
            issued_at: time(c.iat)?,
            expires_at: time(c.exp)?,
            role: c
                .role
                .as_deref()
                .map(Role::parse)
                .transpose()
                .map_err(|_| TokenRejection::Invalid)?,
        })
    }
}

struct Parsed {
    user_id: UserId,
    jti: TokenId,
    family: FamilyId,
    issued_at: OffsetDateTime,
    expires_at: OffsetDateTime,
    role: Option<Role>,
}

impl TokenCodec for JwtCodec {
    fn issue_access(
        &self,
        user: UserId,
        role: Role,
        family: FamilyId,
        now: OffsetDateTime,
    ) -> Result<IssuedToken, DomainError> {
        self.issue(
            ACCESS,
            user,
            Some(role),
            family,
            now,
            self.settings.access_ttl,
        )
    }

    fn issue_refresh(
        &self,
        user: UserId,
        family: FamilyId,
        now: OffsetDateTime,
    ) -> Result<IssuedToken, DomainError> {
        self.issue(REFRESH, user, None, family, now, self.settings.refresh_ttl)
    }

    fn verify_access(&self, token: &str) -> Result<AccessClaims, TokenRejection> {
        let p = self.verify(token, ACCESS)?;
        Ok(AccessClaims {
            user_id: p.user_id,
            role: p.role.ok_or(TokenRejection::Invalid)?,
            jti: p.jti,
            family: p.family,
            issued_at: p.issued_at,
            expires_at: p.expires_at,
        })
    }

    fn verify_refresh(&self, token: &str) -> Result<RefreshClaims, TokenRejection> {
        let p = self.verify(token, REFRESH)?;
        Ok(RefreshClaims {
            user_id: p.user_id,
            jti: p.jti,
            family: p.family,
            expires_at: p.expires_at,
        })
    }

    fn access_ttl(&self) -> Duration {
        self.settings.access_ttl
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn settings() -> JwtSettings {
        JwtSettings {
            issuer: "confab".into(),
            audience: "confab-api".into(),
            access_ttl: Duration::from_secs(900),
            refresh_ttl: Duration::from_secs(7 * 86_400),
            leeway: Duration::from_secs(5),
        }
    }

    fn codec() -> JwtCodec {
        JwtCodec::new(SECRET, settings()).unwrap()
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    /// Signs arbitrary claims with HMAC-SHA256 by hand, as an attacker
    /// holding (or guessing) a header and payload would.
    fn forge(claims: &serde_json::Value, key: &[u8], alg: Algorithm) -> String {
        jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(key)).unwrap()
    }

    fn claims(typ: &str, iat: i64, nbf: i64, exp: i64, iss: &str, aud: &str) -> serde_json::Value {
        serde_json::json!({
            "sub": UserId::generate().to_string(), "iat": iat, "nbf": nbf, "exp": exp,
            "jti": TokenId::generate().to_string(), "iss": iss, "aud": aud, "typ": typ,
            "sid": FamilyId::generate().to_string(), "role": "user",
        })
    }

    #[test]
    fn issued_tokens_verify_as_their_own_kind_only() {
        let c = codec();
        let (user, family) = (UserId::generate(), FamilyId::generate());
        let access = c.issue_access(user, Role::Admin, family, now()).unwrap();
        let claims = c.verify_access(&access.token).unwrap();
        assert_eq!(
            (claims.user_id, claims.role, claims.family, claims.jti),
            (user, Role::Admin, family, access.jti)
        );
        let refresh = c.issue_refresh(user, family, now()).unwrap();
        assert_eq!(c.verify_refresh(&refresh.token).unwrap().jti, refresh.jti);
        assert_eq!(
            c.verify_access(&refresh.token),
            Err(TokenRejection::Invalid),
            "refresh used as access"
        );
        assert_eq!(
            c.verify_refresh(&access.token).map(|r| r.jti),
            Err(TokenRejection::Invalid),
            "access used as refresh"
        );
    }

    #[test]
    fn expired_is_told_apart() {
        let c = codec();
        let long_ago = now() - Duration::from_secs(3600);
        let t = c
            .issue_access(
                UserId::generate(),
                Role::User,
                FamilyId::generate(),
                long_ago,
            )
            .unwrap();
        assert_eq!(c.verify_access(&t.token), Err(TokenRejection::Expired));
    }

    #[test]
    fn alg_none_and_other_algorithms_are_refused() {
        let c = codec();
        let n = now().unix_timestamp();
        let good = claims(ACCESS, n, n, n + 600, "confab", "confab-api");
        let header = B64.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = B64.encode(serde_json::to_vec(&good).unwrap());
        for token in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}"),
        ] {
            assert_eq!(
                c.verify_access(&token),
                Err(TokenRejection::Invalid),
                "{token}"
            );
        }
        let hs512 = forge(&good, SECRET, Algorithm::HS512);
        assert_eq!(c.verify_access(&hs512), Err(TokenRejection::Invalid));
        let right = forge(&good, SECRET, Algorithm::HS256);
        assert!(
            c.verify_access(&right).is_ok(),
            "the same claims properly signed pass"
        );
        let other_key = forge(&good, b"another-secret-another-secret-xx", Algorithm::HS256);
        assert_eq!(c.verify_access(&other_key), Err(TokenRejection::Invalid));
    }

    #[test]
    fn tampered_truncated_and_garbage_tokens_are_refused() {
        let c = codec();
        let t = c
            .issue_access(UserId::generate(), Role::User, FamilyId::generate(), now())
            .unwrap()
            .token;
        let parts: Vec<&str> = t.split('.').collect();
        let mut payload: serde_json::Value =
            serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
        payload["role"] = "admin".into();
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            B64.encode(serde_json::to_vec(&payload).unwrap()),
            parts[2]
        );
        for bad in [
            tampered.as_str(),
            &t[..t.len() - 3],
            "",
            "garbage",
            "a.b.c",
            "....",
            &"x".repeat(10_000),
        ] {
            assert_eq!(
                c.verify_access(bad),
                Err(TokenRejection::Invalid),
                "{bad:.40}"
            );
        }
    }

    #[test]
    fn issuer_audience_and_not_before_are_enforced() {
        let c = codec();
        let n = now().unix_timestamp();
        let sign = |v: &serde_json::Value| forge(v, SECRET, Algorithm::HS256);
        assert_eq!(
            c.verify_access(&sign(&claims(ACCESS, n, n, n + 600, "evil", "confab-api"))),
            Err(TokenRejection::Invalid)
        );
        assert_eq!(
            c.verify_access(&sign(&claims(ACCESS, n, n, n + 600, "confab", "other"))),
            Err(TokenRejection::Invalid)
        );
        assert_eq!(
            c.verify_access(&sign(&claims(
                ACCESS,
                n,
                n + 3600,
                n + 7200,
                "confab",
                "confab-api"
            ))),
            Err(TokenRejection::Invalid)
        );
        // Within the leeway, a clock a little ahead is tolerated.
        assert!(
            c.verify_access(&sign(&claims(
                ACCESS,
                n,
                n + 2,
                n + 600,
                "confab",
                "confab-api"
            )))
            .is_ok()
        );
        let mut no_exp = claims(ACCESS, n, n, n + 600, "confab", "confab-api");
        no_exp.as_object_mut().unwrap().remove("exp");
        assert_eq!(
            c.verify_access(&sign(&no_exp)),
            Err(TokenRejection::Invalid)
        );
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(matches!(
            JwtCodec::new(b"short", settings()),
            Err(JwtError::ShortSecret)
        ));
    }
}
