//! What every [`TokenBlocklist`] promises: a blocked token, or every token
//! of a blocked login session, is refused until the expiry it was blocked
//! with, and nothing else is; a user's account-state version changes with
//! every change said of the user, and with nothing else.

use std::time::Duration;

use confab_domain::{FamilyId, OffsetDateTime, Role, TokenId, UserId};
use confab_ports::{AccessClaims, Standing, TokenBlocklist};

use super::eventually;

/// A fresh access token of `user` (its own id and login session), issued
/// at `issued_at` for 15 minutes.
#[must_use]
pub fn claims(user: UserId, issued_at: OffsetDateTime) -> AccessClaims {
    AccessClaims {
        user_id: user,
        role: Role::User,
        jti: TokenId::generate(),
        family: FamilyId::generate(),
        issued_at,
        expires_at: issued_at + Duration::from_secs(900),
        api_key: None,
    }
}

async fn blocked(list: &dyn TokenBlocklist, claims: &AccessClaims) -> bool {
    list.is_blocked(claims).await.expect("is_blocked")
}

/// A token blocked until it expires is refused; another token of the same
/// user, or of the same login session, is not.
pub async fn a_blocked_token_is_refused_and_no_other(list: &dyn TokenBlocklist) {
    let now = OffsetDateTime::now_utc();
    let user = UserId::generate();
    let token = claims(user, now);
    assert!(!blocked(list, &token).await, "nothing blocked yet");
    list.block_token(token.user_id, token.jti, token.expires_at)
        .await
        .expect("block_token");
    assert!(blocked(list, &token).await);
    let sibling = AccessClaims {
        jti: TokenId::generate(),
        ..token.clone()
    };
    assert!(
        !blocked(list, &sibling).await,
        "a token of the same session"
    );
    assert!(!blocked(list, &claims(user, now)).await, "another token");
}

/// A login session blocked until its last token expires refuses every
/// token of it, but no token of the user's other sessions.
pub async fn a_blocked_family_refuses_every_token_of_it(list: &dyn TokenBlocklist) {
    let now = OffsetDateTime::now_utc();
    let user = UserId::generate();
    let token = claims(user, now);
    list.block_family(token.user_id, token.family, token.expires_at)
        .await
        .expect("block_family");
    let sibling = AccessClaims {
        jti: TokenId::generate(),
        ..token.clone()
    };
    assert!(blocked(list, &token).await);
    assert!(blocked(list, &sibling).await, "every token of the family");
    assert!(
        !blocked(list, &claims(user, now)).await,
        "another session of the user"
    );
}

/// Blocking until a moment already past blocks nothing: what it would
/// refuse has expired anyway.
pub async fn an_expiry_in_the_past_blocks_nothing(list: &dyn TokenBlocklist) {
    let past = OffsetDateTime::now_utc() - Duration::from_secs(1);
    let token = claims(UserId::generate(), past - Duration::from_secs(900));
    list.block_token(token.user_id, token.jti, past)
        .await
        .expect("block_token");
    list.block_family(token.user_id, token.family, past)
        .await
        .expect("block_family");
    assert!(!blocked(list, &token).await);
}

/// A blocked token or login session is refused until the expiry it was
/// blocked with and not after it; entries with a later expiry stay.
pub async fn entries_lapse_when_their_tokens_expire(list: &dyn TokenBlocklist) {
    let now = OffsetDateTime::now_utc();
    let until = now + Duration::from_secs(1);
    let token = claims(UserId::generate(), now);
    let family = claims(UserId::generate(), now);
    let lasting = claims(UserId::generate(), now);
    list.block_token(token.user_id, token.jti, until)
        .await
        .expect("block_token");
    list.block_family(family.user_id, family.family, until)
        .await
        .expect("block_family");
    list.block_family(lasting.user_id, lasting.family, lasting.expires_at)
        .await
        .expect("block_family");
    assert!(blocked(list, &token).await);
    assert!(blocked(list, &family).await);

    eventually("the entries lapse", async || {
        !blocked(list, &token).await && !blocked(list, &family).await
    })
    .await;
    assert!(blocked(list, &lasting).await, "a later expiry still blocks");
}

async fn standing(list: &dyn TokenBlocklist, claims: &AccessClaims) -> Standing {
    list.standing(claims).await.expect("standing")
}

/// A user never changed is at version 0; each change gives every token of
/// the user a version not seen before, while another user's stays, and the
/// version travels beside the token's blocked flag.
pub async fn a_changed_user_has_a_new_version_and_no_other(list: &dyn TokenBlocklist) {
    let now = OffsetDateTime::now_utc();
    let (user, other) = (UserId::generate(), UserId::generate());
    let token = claims(user, now);
    let bystander = claims(other, now);
    let fresh = standing(list, &token).await;
    assert_eq!(
        fresh,
        Standing {
            blocked: false,
            user_version: 0
        }
    );
    let mut seen = vec![fresh.user_version];
    for _ in 0..3 {
        list.user_changed(user).await.expect("user_changed");
        let now = standing(list, &token).await.user_version;
        assert!(
            !seen.contains(&now),
            "version {now} was seen before: {seen:?}"
        );
        seen.push(now);
    }
    let sibling = claims(user, now);
    assert_eq!(
        standing(list, &sibling).await.user_version,
        *seen.last().expect("a version"),
        "the version is the user's, not the token's"
    );
    assert_eq!(standing(list, &bystander).await.user_version, 0);
    list.block_token(token.user_id, token.jti, token.expires_at)
        .await
        .expect("block_token");
    let blocked = standing(list, &token).await;
    assert!(blocked.blocked);
    assert_eq!(blocked.user_version, *seen.last().expect("a version"));
}
