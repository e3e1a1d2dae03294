//! HS256 JSON Web Tokens behind [`confab_ports::TokenCodec`].
//!
//! Validation follows RFC 8725: exactly HS256 (so `alg: none` and every
//! other algorithm are refused), `iss` and `aud` must match, `exp` and
//! `nbf` are checked with an explicit leeway, and `typ` must be the kind
//! asked for, so a refresh token is never accepted as an access token or
//! the reverse. Claims: `sub`, `iat`, `nbf`, `exp`, `jti`, `iss`, `aud`,
//! `typ`, `sid` (the login session) and, on access tokens, `role`.
//!
//! The same codec signs resume tokens ([`confab_ports::ResumeTokenCodec`]):
//! `typ` `resume`, with `cid` (the conversation) and `mid` (the message)
//! in place of `sid` and `role`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use confab_domain::{DomainError, FamilyId, OffsetDateTime, Role, TokenId, UserId};
use confab_ports::{AccessClaims, IssuedToken, RefreshClaims, TokenCodec, TokenRejection};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

mod resume;

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
    /// Resume token lifetime (15 minutes by default): long enough to
    /// reconnect to a generation, short enough that a leaked one soon dies.
    pub resume_ttl: Duration,
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

/// The most access tokens a thread keeps verified, per codec: past it the
/// thread forgets them all and verifies again (a few hundred bytes each).
const VERIFIED_PER_THREAD: usize = 4_096;

/// The most codecs a thread keeps verified tokens for (a server has one;
/// a test process makes many, one after another).
const CODECS_PER_THREAD: usize = 4;

/// An access token this thread verified, with the times that decide
/// whether it still is valid.
struct Verified {
    claims: AccessClaims,
    not_before: i64,
    expires: i64,
}

/// One codec's verified tokens, by their text.
type VerifiedTokens = HashMap<Box<str>, Verified>;

thread_local! {
    /// Access tokens verified on this thread, by codec id and token text.
    static VERIFIED: RefCell<Vec<(u64, VerifiedTokens)>> = const { RefCell::new(Vec::new()) };
}

/// Ids of codecs, so that one codec's verified tokens are never another's.
static NEXT_CODEC: AtomicU64 = AtomicU64::new(0);

/// Signs and verifies Confab's tokens with one HMAC secret.
///
/// Access tokens, verified on every authenticated request, are verified
/// once per thread: the exact text of a token that passed (signature,
/// algorithm, issuer, audience, kind, claims) is kept with its claims, and
/// a later request with the same text is checked against its `exp` and
/// `nbf` only (the rest cannot have changed: the text is what was signed).
/// What a token's standing is (logged out, its user disabled) is never
/// kept here: that is the blocklist's, asked on every request.
pub struct JwtCodec {
    id: u64,
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
            id: NEXT_CODEC.fetch_add(1, Ordering::Relaxed),
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

    /// Decodes `token` into `T` and validates signature, algorithm,
    /// issuer, audience and times. A token lacking one of `T`'s fields (a
    /// resume token read as an access token, or the reverse) fails to
    /// decode: [`TokenRejection::Invalid`].
    fn decode<T: DeserializeOwned>(&self, token: &str) -> Result<T, TokenRejection> {
        jsonwebtoken::decode::<T>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenRejection::Expired,
                _ => TokenRejection::Invalid,
            })
    }

    /// The claims of `token` if this thread verified it with this codec and
    /// it is still within its times (`exp` and `nbf` with the leeway, as
    /// the full check has them).
    fn verified(&self, token: &str) -> Option<AccessClaims> {
        let now =
            i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs()).ok()?;
        let leeway = i64::try_from(self.settings.leeway.as_secs()).ok()?;
        VERIFIED.with(|verified| {
            let verified = verified.borrow();
            let (_, tokens) = verified.iter().find(|(codec, _)| *codec == self.id)?;
            let hit = tokens.get(token)?;
            (hit.expires >= now - leeway && hit.not_before <= now + leeway)
                .then(|| hit.claims.clone())
        })
    }

    /// Keeps `token`, just verified, for this thread's next requests.
    fn remember(&self, token: &str, verified: Verified) {
        VERIFIED.with(|kept| {
            let mut kept = kept.borrow_mut();
            let at = match kept.iter().position(|(codec, _)| *codec == self.id) {
                Some(at) => at,
                None => {
                    if kept.len() >= CODECS_PER_THREAD {
                        kept.remove(0);
                    }
                    kept.push((self.id, HashMap::new()));
                    kept.len() - 1
                }
            };
            let tokens = &mut kept[at].1;
            if tokens.len() >= VERIFIED_PER_THREAD {
                tokens.clear();
            }
            tokens.insert(token.into(), verified);
        });
    }

    /// Decodes and validates `token`, and checks it is of kind `typ`.
    fn verify(&self, token: &str, typ: &str) -> Result<Parsed, TokenRejection> {
        let c: Claims = self.decode(token)?;
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
            not_before: c.nbf,
            expires: c.exp,
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
    not_before: i64,
    expires: i64,
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
        if let Some(claims) = self.verified(token) {
            return Ok(claims);
        }
        let p = self.verify(token, ACCESS)?;
        let claims = AccessClaims {
            user_id: p.user_id,
            role: p.role.ok_or(TokenRejection::Invalid)?,
            jti: p.jti,
            family: p.family,
            issued_at: p.issued_at,
            expires_at: p.expires_at,
            api_key: None,
        };
        self.remember(
            token,
            Verified {
                claims: claims.clone(),
                not_before: p.not_before,
                expires: p.expires,
            },
        );
        Ok(claims)
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
mod tests;
