//! Resume tokens: [`ResumeTokenCodec`] on the same key and validation as
//! access and refresh tokens, told apart from them by `typ` and by their
//! own required claims.

use confab_domain::{ConversationId, DomainError, MessageId, OffsetDateTime, TokenId, UserId};
use confab_ports::{ResumeClaims, ResumeTokenCodec, TokenRejection};
use jsonwebtoken::{Algorithm, Header};
use serde::{Deserialize, Serialize};

use crate::JwtCodec;

const RESUME: &str = "resume";

/// The claims of a resume token. `cid` and `mid` are required, so an
/// access or refresh token (which has neither) fails to decode as one;
/// an access or refresh token's `sid` is missing here, so the reverse
/// fails too, before `typ` is even compared.
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
    cid: String,
    mid: String,
}

impl ResumeTokenCodec for JwtCodec {
    fn issue_resume(
        &self,
        user: UserId,
        conversation: ConversationId,
        message: &MessageId,
        now: OffsetDateTime,
    ) -> Result<String, DomainError> {
        let claims = Claims {
            sub: user.to_string(),
            iat: now.unix_timestamp(),
            nbf: now.unix_timestamp(),
            exp: (now + self.settings.resume_ttl).unix_timestamp(),
            jti: TokenId::generate().to_string(),
            iss: self.settings.issuer.clone(),
            aud: self.settings.audience.clone(),
            typ: RESUME.to_owned(),
            cid: conversation.to_string(),
            mid: message.to_string(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(DomainError::internal)
    }

    fn verify_resume(&self, token: &str) -> Result<ResumeClaims, TokenRejection> {
        let c: Claims = self.decode(token)?;
        if c.typ != RESUME {
            return Err(TokenRejection::Invalid);
        }
        let uuid = |s: &str| uuid::Uuid::parse_str(s).map_err(|_| TokenRejection::Invalid);
        // The id is not returned, but a token with a malformed one was not
        // made here.
        uuid(&c.jti)?;
        Ok(ResumeClaims {
            user_id: UserId::from_uuid(uuid(&c.sub)?),
            conversation_id: ConversationId::from_uuid(uuid(&c.cid)?),
            message_id: MessageId::parse(c.mid).map_err(|_| TokenRejection::Invalid)?,
            expires_at: OffsetDateTime::from_unix_timestamp(c.exp)
                .map_err(|_| TokenRejection::Invalid)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use confab_domain::{FamilyId, Role};
    use confab_ports::TokenCodec;

    use super::*;
    use crate::tests::{SECRET, codec, now, settings};

    fn ids() -> (UserId, ConversationId, MessageId) {
        (
            UserId::generate(),
            ConversationId::generate(),
            MessageId::parse("msg_001").unwrap(),
        )
    }

    #[test]
    fn a_resume_token_round_trips() {
        let c = codec();
        let (user, conv, msg) = ids();
        let at = now();
        let token = c.issue_resume(user, conv, &msg, at).unwrap();
        let claims = c.verify_resume(&token).unwrap();
        assert_eq!(
            (claims.user_id, claims.conversation_id, claims.message_id),
            (user, conv, msg)
        );
        assert_eq!(
            claims.expires_at.unix_timestamp(),
            (at + Duration::from_secs(900)).unix_timestamp()
        );
    }

    #[test]
    fn a_tampered_resume_token_is_refused() {
        let c = codec();
        let (user, conv, msg) = ids();
        let token = c.issue_resume(user, conv, &msg, now()).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let mut payload: serde_json::Value =
            serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
        payload["cid"] = ConversationId::generate().to_string().into();
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            B64.encode(serde_json::to_vec(&payload).unwrap()),
            parts[2]
        );
        assert_eq!(c.verify_resume(&tampered), Err(TokenRejection::Invalid));
        assert_eq!(
            c.verify_resume(&token[..token.len() - 2]),
            Err(TokenRejection::Invalid)
        );
        assert_eq!(c.verify_resume("garbage"), Err(TokenRejection::Invalid));
    }

    #[test]
    fn an_expired_resume_token_is_told_apart() {
        let c = codec();
        let (user, conv, msg) = ids();
        // Past the 900 s lifetime and the 5 s leeway.
        let long_ago = now() - Duration::from_secs(900 + 60);
        let token = c.issue_resume(user, conv, &msg, long_ago).unwrap();
        assert_eq!(c.verify_resume(&token), Err(TokenRejection::Expired));
    }

    #[test]
    fn resume_tokens_and_session_tokens_are_not_interchangeable() {
        let c = codec();
        let (user, conv, msg) = ids();
        let family = FamilyId::generate();
        let access = c.issue_access(user, Role::User, family, now()).unwrap();
        let refresh = c.issue_refresh(user, family, now()).unwrap();
        assert_eq!(
            c.verify_resume(&access.token),
            Err(TokenRejection::Invalid),
            "access used as resume"
        );
        assert_eq!(
            c.verify_resume(&refresh.token),
            Err(TokenRejection::Invalid),
            "refresh used as resume"
        );
        let resume = c.issue_resume(user, conv, &msg, now()).unwrap();
        assert_eq!(
            c.verify_access(&resume),
            Err(TokenRejection::Invalid),
            "resume used as access"
        );
        assert_eq!(
            c.verify_refresh(&resume).map(|r| r.jti),
            Err(TokenRejection::Invalid),
            "resume used as refresh"
        );
    }

    #[test]
    fn a_resume_token_of_another_key_or_kind_is_refused() {
        let (user, conv, msg) = ids();
        let other = JwtCodec::new(b"another-secret-another-secret-xx", settings()).unwrap();
        let token = other.issue_resume(user, conv, &msg, now()).unwrap();
        assert_eq!(codec().verify_resume(&token), Err(TokenRejection::Invalid));
        // Right key and claims, wrong `typ`.
        let n = now().unix_timestamp();
        let wrong_typ = serde_json::json!({
            "sub": user.to_string(), "iat": n, "nbf": n, "exp": n + 600,
            "jti": TokenId::generate().to_string(), "iss": "confab", "aud": "confab-api",
            "typ": "access", "cid": conv.to_string(), "mid": "msg_001",
        });
        let forged = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &wrong_typ,
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(codec().verify_resume(&forged), Err(TokenRejection::Invalid));
    }
}
