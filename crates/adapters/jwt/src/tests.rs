use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

use super::*;

pub(crate) const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

pub(crate) fn settings() -> JwtSettings {
    JwtSettings {
        issuer: "confab".into(),
        audience: "confab-api".into(),
        access_ttl: Duration::from_secs(900),
        refresh_ttl: Duration::from_secs(7 * 86_400),
        resume_ttl: Duration::from_secs(900),
        leeway: Duration::from_secs(5),
    }
}

pub(crate) fn codec() -> JwtCodec {
    JwtCodec::new(SECRET, settings()).unwrap()
}

pub(crate) fn now() -> OffsetDateTime {
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

#[test]
fn a_token_kept_verified_is_another_codecs_to_verify_again() {
    let mine = codec();
    let access = mine
        .issue_access(UserId::generate(), Role::User, FamilyId::generate(), now())
        .unwrap();
    let first = mine.verify_access(&access.token).unwrap();
    // Kept on this thread: the same claims again.
    let kept = VERIFIED.with(|kept| {
        kept.borrow()
            .iter()
            .find(|(codec, _)| *codec == mine.id)
            .and_then(|(_, tokens)| tokens.get(access.token.as_str()).map(|v| v.claims.clone()))
    });
    assert_eq!(
        kept.as_ref(),
        Some(&first),
        "kept after a full verification"
    );
    assert_eq!(mine.verify_access(&access.token).unwrap(), first);
    // Another secret on the same thread: the kept token is not its own.
    let other = JwtCodec::new(b"another-secret-0123456789abcdefgh", settings()).unwrap();
    assert_eq!(
        other.verify_access(&access.token),
        Err(TokenRejection::Invalid)
    );
    // Nor is a kept token another kind to the codec that kept it.
    assert_eq!(
        mine.verify_refresh(&access.token).map(|r| r.jti),
        Err(TokenRejection::Invalid)
    );
    // One character changed is another text: verified in full, refused.
    let mut forged = access.token.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(mine.verify_access(&forged), Err(TokenRejection::Invalid));
}

#[test]
fn a_token_kept_verified_still_expires() {
    let short = JwtCodec::new(
        SECRET,
        JwtSettings {
            access_ttl: Duration::from_secs(1),
            leeway: Duration::ZERO,
            ..settings()
        },
    )
    .unwrap();
    let access = short
        .issue_access(UserId::generate(), Role::User, FamilyId::generate(), now())
        .unwrap();
    assert!(short.verify_access(&access.token).is_ok());
    assert!(short.verify_access(&access.token).is_ok(), "kept");
    // Past its exp (whole seconds, so up to two seconds on).
    std::thread::sleep(Duration::from_millis(2_100));
    assert_eq!(
        short.verify_access(&access.token),
        Err(TokenRejection::Expired)
    );
}

#[test]
fn a_thread_keeps_a_bounded_number_of_tokens_and_codecs() {
    let c = codec();
    let tokens: Vec<String> = (0..VERIFIED_PER_THREAD + 10)
        .map(|_| {
            c.issue_access(UserId::generate(), Role::User, FamilyId::generate(), now())
                .unwrap()
                .token
        })
        .collect();
    for token in &tokens {
        c.verify_access(token).unwrap();
    }
    for _ in 0..CODECS_PER_THREAD + 2 {
        let other = codec();
        let token = other
            .issue_access(UserId::generate(), Role::User, FamilyId::generate(), now())
            .unwrap()
            .token;
        other.verify_access(&token).unwrap();
    }
    VERIFIED.with(|kept| {
        let kept = kept.borrow();
        assert!(kept.len() <= CODECS_PER_THREAD);
        assert!(kept.iter().all(|(_, t)| t.len() <= VERIFIED_PER_THREAD));
    });
    // Forgotten or kept, every token still verifies.
    assert!(tokens.iter().all(|t| c.verify_access(t).is_ok()));
}
