//! Accounts: registration, login, token rotation, logout, administration.

mod keys;

use std::sync::Arc;

use confab_domain::{
    ApiKeyText, DailyUsage, DomainError, Email, FamilyId, Field, NewUser, OffsetDateTime, Page,
    PageRequest, Password, PasswordHash, Role, UsagePeriod, User, UserId, Username,
};
use confab_ports::{
    AccessClaims, Admission, ApiKeySecrets, ApiKeyStore, Erasure, ErasureTargets, FailureCounter,
    IssuedToken, NewRefreshToken, PasswordHasher, RateDecision, RateLimiter, RatePolicy,
    Redemption, RefreshTokenStore, SessionOrigin, SessionRecord, TokenBlocklist, TokenCodec,
    TokenRejection, UsageStore, UserStore, Verification,
};

pub use keys::{CreatedKey, NewApiKey};

use crate::conversations::list_key;
use crate::known::{self, KnownUsers};
use crate::{AppError, AuthFailure, Conversations, ListVersion};

/// A request's token, admitted by [`Accounts::admit`].
#[derive(Debug, Clone)]
pub struct AdmittedRequest<'p> {
    /// The token's verified claims.
    pub claims: AccessClaims,
    /// The policy the request was charged to.
    pub policy: &'p RatePolicy,
    /// The charge's outcome (the request is refused when not allowed).
    pub decision: RateDecision,
    /// The version of the caller's cached lists, when admission read it:
    /// for [`Conversations::list`](crate::Conversations::list).
    pub list_version: Option<ListVersion>,
    /// The caller's account-state version admission read: for
    /// [`SendMessage::account_version`](crate::SendMessage::account_version).
    pub user_version: u64,
}

/// What a person submits to open an account, as received.
#[derive(Debug)]
pub struct Registration {
    /// Wanted login name.
    pub username: String,
    /// E-mail address.
    pub email: String,
    /// Chosen password (its `Debug` is hidden by the domain type).
    pub password: Password,
    /// The client's address, for the registration limit (`create_admin`
    /// ignores it).
    pub client: String,
}

/// A login attempt, as received.
#[derive(Debug)]
pub struct LoginAttempt {
    /// Username or e-mail address.
    pub login: String,
    /// The password presented.
    pub password: Password,
    /// The client's address, for the per-IP limit.
    pub client: String,
    /// The client's address as the trusted-proxy rules give it, kept with
    /// the session it opens.
    pub address: Option<String>,
    /// The client's `User-Agent`, kept with the session (cut to its bound).
    pub user_agent: Option<String>,
}

/// A change of the caller's password ([`Accounts::change_password`]).
/// Not `Debug`: it holds a password in the clear.
pub struct PasswordChange {
    /// The password the account has now.
    pub current: Password,
    /// The one to set (checked against the password policy).
    pub new: String,
    /// The client's address, for the per-IP limit and failure counts.
    pub client: String,
}

/// One of the caller's live sessions ([`Accounts::sessions`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionView {
    /// The session.
    pub record: SessionRecord,
    /// Whether it is the session of the caller's own access token.
    pub current: bool,
}

/// A logged-in session: the user and a fresh token pair.
#[derive(Debug, Clone)]
pub struct Session {
    /// The user.
    pub user: User,
    /// The access token.
    pub access: IssuedToken,
    /// The refresh token.
    pub refresh: IssuedToken,
}

/// Tunable rules of the account use cases.
#[derive(Debug, Clone)]
pub struct AccountRules {
    /// Login attempts per client address.
    pub per_ip: RatePolicy,
    /// Failed logins counted per account, and per account and address.
    pub login_failures: LoginFailures,
    /// Registrations per client address.
    pub register_per_ip: RatePolicy,
    /// Look-ups of API keys this instance does not know, per client
    /// address.
    pub key_lookups: RatePolicy,
    /// Registrations from all clients together: a flood from many
    /// addresses can't take the hashing capacity logins need.
    pub register_overall: RatePolicy,
    /// A refresh token presented again this soon after its redemption is a
    /// duplicate of that request (a double submit, a retry): refused, but
    /// its family is not revoked, so exactly one of two racing refreshes
    /// wins. Later, it is reuse and revokes the family. Zero: always reuse.
    pub refresh_reuse_grace: std::time::Duration,
}

/// How failed logins are counted and when they refuse further attempts
/// (docs/security.md, "Login"). Failures are counted per account (the
/// typed name when there is no such account) and per account and client
/// address, each in a window that opens at the first failure:
///
/// - an address with `per_address` failures on an account in the window
///   is refused on it until the window ends;
/// - an account with `per_account` failures from all addresses refuses
///   every address that has failed on it in the window, but still lets an
///   address with no failures on it try: its owner, logging in from where
///   they always do, is never locked out by someone else's guesses, while
///   each guessing address gets one try per window (and the per-address
///   attempt limit) at most.
///
/// A successful login forgets its address's failures on the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginFailures {
    /// Failures one address may have on one account in a window.
    pub per_address: u32,
    /// Failures on one account, from all addresses, past which only
    /// addresses without failures on it may try.
    pub per_account: u32,
    /// How long a count lasts from its first failure.
    pub window: std::time::Duration,
}

impl LoginFailures {
    fn policy(&self, name: &str, quota: u32) -> RatePolicy {
        RatePolicy {
            name: name.to_owned(),
            quota,
            window: self.window,
        }
    }
}

/// Everything the account use cases need from outside.
#[derive(Clone)]
pub struct AccountPorts {
    /// Users.
    pub users: Arc<dyn UserStore>,
    /// Password hashing.
    pub hasher: Arc<dyn PasswordHasher>,
    /// Token signing.
    pub tokens: Arc<dyn TokenCodec>,
    /// Refresh-token memory.
    pub refresh_tokens: Arc<dyn RefreshTokenStore>,
    /// Access-token revocation.
    pub blocklist: Arc<dyn TokenBlocklist>,
    /// A request's token standing and rate charge in one look-up.
    pub admission: Arc<dyn Admission>,
    /// Rate limits.
    pub limiter: Arc<dyn RateLimiter>,
    /// Failed logins.
    pub failures: Arc<dyn FailureCounter>,
    /// The stores outside the database that keep something of a user,
    /// each forgetting it when the account is deleted.
    pub erasures: Vec<Arc<dyn Erasure>>,
    /// Token usage, read back per day and model.
    pub usage: Arc<dyn UsageStore>,
    /// API keys.
    pub api_keys: Arc<dyn ApiKeyStore>,
    /// API key secrets: minted, digested, checked.
    pub key_secrets: Arc<dyn ApiKeySecrets>,
}

/// The account use cases.
#[derive(Clone)]
pub struct Accounts {
    ports: AccountPorts,
    limits: AccountRules,
    known: Arc<KnownUsers<bool>>,
    keys: Arc<keys::KnownKeys>,
}

fn rejection(r: TokenRejection) -> AppError {
    match r {
        TokenRejection::Expired => AppError::Unauthorized(AuthFailure::ExpiredToken),
        TokenRejection::Invalid => AppError::Unauthorized(AuthFailure::InvalidToken),
    }
}

const INVALID_TOKEN: AppError = AppError::Unauthorized(AuthFailure::InvalidToken);

impl Accounts {
    /// Builds the use cases.
    #[must_use]
    pub fn new(ports: AccountPorts, limits: AccountRules) -> Self {
        Self {
            ports,
            limits,
            known: Arc::default(),
            keys: Arc::default(),
        }
    }

    /// Opens an account with role `user`.
    ///
    /// The registration limits (per address, then for everyone) come first,
    /// then every rule, then whether the name or address is taken: the
    /// (expensive) hash is computed only for an account that can be
    /// created. A taken name is refused before hashing: the 409 names it
    /// anyway, so answering sooner reveals nothing more.
    ///
    /// # Errors
    /// [`AppError::RateLimited`] past a registration limit;
    /// [`AppError::Validation`] on a bad username, e-mail or password;
    /// [`AppError::Conflict`] when the username or e-mail is taken;
    /// [`AppError::Unavailable`] when the database or the hashing capacity
    /// is exhausted.
    pub async fn register(&self, input: Registration) -> Result<User, AppError> {
        self.limit(
            &self.limits.register_per_ip,
            &format!("ip:{}", input.client),
        )
        .await?;
        self.limit(&self.limits.register_overall, "all").await?;
        self.create(input, Role::User).await
    }

    /// Opens an account with role `admin` (the `confab create-admin`
    /// command; no route reaches it).
    ///
    /// # Errors
    /// As [`Accounts::register`].
    pub async fn create_admin(&self, input: Registration) -> Result<User, AppError> {
        self.create(input, Role::Admin).await
    }

    async fn create(&self, input: Registration, role: Role) -> Result<User, AppError> {
        let username = Username::parse(&input.username)?;
        let email = Email::parse(&input.email)?;
        let password = Password::new_for(input.password.expose(), &username, &email)?;
        for (taken, field) in [
            (username.as_str(), Field::Username),
            (email.as_str(), Field::Email),
        ] {
            if self.ports.users.find_credentials(taken).await?.is_some() {
                return Err(AppError::Conflict { field });
            }
        }
        let password_hash = self.ports.hasher.hash(&password).await?;
        let user = self
            .ports
            .users
            .create(NewUser {
                id: UserId::generate(),
                username,
                email,
                role,
                password_hash,
                created_at: OffsetDateTime::now_utc(),
            })
            .await?;
        tracing::info!(user_id = %user.id, role = role.as_str(), "account created");
        Ok(user)
    }

    /// The longest login name accepted (an e-mail address's bound).
    pub const MAX_LOGIN_CHARS: usize = 254;

    async fn limit(&self, policy: &RatePolicy, key: &str) -> Result<(), AppError> {
        let decision = self.ports.limiter.check(policy, key).await?;
        if decision.allowed {
            Ok(())
        } else {
            Err(AppError::RateLimited {
                policy: policy.clone(),
                decision,
            })
        }
    }

    /// Logs in with a username or e-mail and a password.
    ///
    /// An unknown user, a wrong password and a disabled account get the
    /// same answer after the same work (an unknown user is verified
    /// against a dummy hash). A correct password stored with older
    /// parameters is rehashed.
    ///
    /// # Errors
    /// [`AppError::RateLimited`] past the per-address attempt limit, or
    /// when the failed logins counted refuse the attempt ([`LoginFailures`]);
    /// [`AppError::Validation`] for an impossible login name (empty, too
    /// long, control characters); [`AppError::Unauthorized`] with
    /// [`AuthFailure::BadCredentials`].
    pub async fn login(&self, attempt: LoginAttempt) -> Result<Session, AppError> {
        self.limit(&self.limits.per_ip, &format!("ip:{}", attempt.client))
            .await?;
        let typed = &attempt.login;
        if typed.chars().count() > Self::MAX_LOGIN_CHARS
            || typed.chars().any(char::is_control)
            || typed.trim().is_empty()
        {
            return Err(DomainError::invalid(
                Field::Username,
                "must be a username or an e-mail address",
            )
            .into());
        }
        let account = typed.trim().to_lowercase();
        let found = self.ports.users.find_credentials(&account).await?;
        // One count per account whichever name was typed; one per typed
        // name (bounded above) when there is no such account.
        let account_key = match &found {
            Some((user, _)) => format!("user:{}", user.id),
            None => format!("name:{account}"),
        };
        let keys = [
            format!("login:{account_key}"),
            format!("login:{account_key}:from:{}", attempt.client),
        ];
        self.refuse_after_failures(&keys).await?;
        let verdict = self
            .ports
            .hasher
            .verify(&attempt.password, found.as_ref().map(|(_, h)| h))
            .await?;
        let (user, verified) = match (found, verdict) {
            (Some((user, hash)), Verification::Match | Verification::MatchNeedsRehash)
                if !user.disabled =>
            {
                let hash = if verdict == Verification::MatchNeedsRehash {
                    self.rehash(&user, &attempt.password, hash).await
                } else {
                    hash
                };
                (user, hash)
            }
            _ => {
                tracing::info!("login refused");
                let window = self.limits.login_failures.window;
                if let Err(e) = self.ports.failures.record(&keys, window).await {
                    tracing::warn!(error = %e, "could not count a failed login");
                }
                return Err(AppError::Unauthorized(AuthFailure::BadCredentials));
            }
        };
        if let Err(e) = self.ports.failures.clear(&keys[1]).await {
            tracing::warn!(error = %e, "could not forget an address's failed logins");
        }
        let family = FamilyId::generate();
        let origin = SessionOrigin::new(
            attempt.user_agent.as_deref(),
            attempt.address.as_deref().unwrap_or(""),
        );
        let now = OffsetDateTime::now_utc();
        self.ports
            .refresh_tokens
            .open_family(family, user.id, now, origin)
            .await?;
        // A password change that landed since the check ends every session
        // but its caller's; this one, opened after the check, must not
        // escape it. Opened before this read, it is ended by the change's
        // revocation; a change seen here ends it now.
        if !self
            .still_current(&user, &verified, &attempt.password)
            .await?
        {
            self.ports.refresh_tokens.revoke_family(family, now).await?;
            tracing::info!(user_id = %user.id, "login refused: the password changed meanwhile");
            return Err(AppError::Unauthorized(AuthFailure::BadCredentials));
        }
        let session = self.open_session(user, family).await?;
        tracing::info!(user_id = %session.user.id, "logged in");
        Ok(session)
    }

    /// Refuses a login that the failures counted under `keys` (the
    /// account's, then the account and address's) stop ([`LoginFailures`]).
    /// When the counts can't be read, the attempt goes on under the
    /// per-address attempt limit alone.
    async fn refuse_after_failures(&self, keys: &[String; 2]) -> Result<(), AppError> {
        let rules = &self.limits.login_failures;
        let counts = match self.ports.failures.counts(keys).await {
            Ok(counts) => counts,
            Err(e) => {
                tracing::warn!(error = %e, "failed logins can't be read; limiting per address only");
                return Ok(());
            }
        };
        let (account, pair) = match counts.as_slice() {
            [account, pair] => (*account, *pair),
            _ => return Err(AppError::Internal("a failure count per key".into())),
        };
        let refusal = if pair.failures >= rules.per_address {
            Some((rules.policy("login-failures", rules.per_address), pair))
        } else if account.failures >= rules.per_account && pair.failures > 0 {
            Some((rules.policy("login-account", rules.per_account), account))
        } else {
            None
        };
        match refusal {
            Some((policy, count)) => {
                tracing::info!(policy = %policy.name, "login refused after failed attempts");
                Err(AppError::RateLimited {
                    policy,
                    decision: RateDecision {
                        allowed: false,
                        remaining: 0,
                        reset_after: count.resets_in,
                        retry_after: count.resets_in,
                    },
                })
            }
            None => Ok(()),
        }
    }

    /// Best effort: a failed rehash is logged and tried again next login.
    /// The hash stored afterwards as far as this login knows: the new one,
    /// or `verified` when the rehash failed or a concurrent change won
    /// (the check after the session opens then sees the change).
    async fn rehash(
        &self,
        user: &User,
        password: &Password,
        verified: PasswordHash,
    ) -> PasswordHash {
        let result = async {
            let hash = self.ports.hasher.hash(password).await?;
            let replaced = self
                .ports
                .users
                .replace_password_hash(user.id, &verified, hash.clone(), OffsetDateTime::now_utc())
                .await?;
            Ok::<_, AppError>(replaced.then_some(hash))
        }
        .await;
        match result {
            Ok(Some(hash)) => {
                tracing::info!(user_id = %user.id, "password rehashed with current parameters");
                hash
            }
            Ok(None) => {
                tracing::info!(user_id = %user.id, "password rehash skipped: it changed meanwhile");
                verified
            }
            Err(e) => {
                tracing::warn!(user_id = %user.id, error = %e, "password rehash failed");
                verified
            }
        }
    }

    /// `user`'s password hash as stored now (`None`: the account is gone).
    async fn stored_hash(&self, user: &User) -> Result<Option<PasswordHash>, AppError> {
        Ok(self
            .ports
            .users
            .find_credentials(user.username.as_str())
            .await?
            .filter(|(found, _)| found.id == user.id)
            .map(|(_, stored)| stored))
    }

    /// Whether `password`, verified against `hash`, is still `user`'s: the
    /// stored hash is still `hash`, or (another login's rehash, a change
    /// to the same password) the one stored now verifies it too.
    async fn still_current(
        &self,
        user: &User,
        hash: &PasswordHash,
        password: &Password,
    ) -> Result<bool, AppError> {
        let stored = self.stored_hash(user).await?;
        match stored {
            None => Ok(false),
            Some(stored) if stored == *hash => Ok(true),
            Some(stored) => Ok(matches!(
                self.ports.hasher.verify(password, Some(&stored)).await?,
                Verification::Match | Verification::MatchNeedsRehash
            )),
        }
    }

    /// Checks that `password` is `user`'s current one as a login does, so
    /// that a route asking for it is no way around the login limits: the
    /// per-address attempt limit is charged, failures are counted per
    /// account and address and refuse further checks as a login's do, and
    /// a success forgets the address's failures. The stored hash it
    /// matched.
    ///
    /// # Errors
    /// [`AppError::RateLimited`] as for [`Accounts::login`];
    /// [`AppError::Unauthorized`] with [`AuthFailure::BadCredentials`]
    /// when it is wrong.
    async fn confirm_password(
        &self,
        user: &User,
        password: &Password,
        client: &str,
    ) -> Result<PasswordHash, AppError> {
        self.limit(&self.limits.per_ip, &format!("ip:{client}"))
            .await?;
        let keys = [
            format!("login:user:{}", user.id),
            format!("login:user:{}:from:{client}", user.id),
        ];
        self.refuse_after_failures(&keys).await?;
        let stored = self.stored_hash(user).await?;
        let verdict = self.ports.hasher.verify(password, stored.as_ref()).await?;
        match (stored, verdict) {
            (Some(hash), Verification::Match | Verification::MatchNeedsRehash) => {
                if let Err(e) = self.ports.failures.clear(&keys[1]).await {
                    tracing::warn!(error = %e, "could not forget an address's failed logins");
                }
                Ok(hash)
            }
            _ => {
                tracing::info!(user_id = %user.id, "password check refused: wrong password");
                let window = self.limits.login_failures.window;
                if let Err(e) = self.ports.failures.record(&keys, window).await {
                    tracing::warn!(error = %e, "could not count a failed password check");
                }
                Err(AppError::Unauthorized(AuthFailure::BadCredentials))
            }
        }
    }

    async fn open_session(&self, user: User, family: FamilyId) -> Result<Session, AppError> {
        let now = OffsetDateTime::now_utc();
        let access = self
            .ports
            .tokens
            .issue_access(user.id, user.role, family, now)?;
        let refresh = self.ports.tokens.issue_refresh(user.id, family, now)?;
        let recorded = self
            .ports
            .refresh_tokens
            .insert(NewRefreshToken {
                jti: refresh.jti,
                family,
                user_id: user.id,
                issued_at: now,
                expires_at: refresh.expires_at,
            })
            .await?;
        if !recorded {
            // The session was revoked meanwhile (a racing reuse, a logout).
            return Err(INVALID_TOKEN);
        }
        Ok(Session {
            user,
            access,
            refresh,
        })
    }

    /// Exchanges a refresh token for a new pair (rotation). Each refresh
    /// token works once: presenting a used one again revokes its whole
    /// family (refresh and access tokens) and is logged as a security
    /// event. Of two concurrent refreshes with one token exactly one wins:
    /// the second, within [`AccountRules::refresh_reuse_grace`] of the
    /// first, is refused without revoking anything.
    ///
    /// # Errors
    /// [`AppError::Unauthorized`] for an invalid, expired, revoked or
    /// reused token, or a disabled user.
    pub async fn refresh(&self, token: &str) -> Result<Session, AppError> {
        let claims = self.ports.tokens.verify_refresh(token).map_err(rejection)?;
        let now = OffsetDateTime::now_utc();
        match self.ports.refresh_tokens.redeem(claims.jti, now).await? {
            Redemption::Redeemed => {}
            Redemption::Reused { used_at, .. }
                if now - used_at <= self.limits.refresh_reuse_grace =>
            {
                tracing::info!(
                    "a refresh token was presented twice at once; the duplicate is refused"
                );
                return Err(INVALID_TOKEN);
            }
            Redemption::Reused {
                family, user_id, ..
            } => {
                self.ports.refresh_tokens.revoke_family(family, now).await?;
                self.ports
                    .blocklist
                    .block_family(user_id, family, now + self.ports.tokens.access_ttl())
                    .await?;
                tracing::warn!(
                    security_event = "refresh_token_reuse",
                    user_id = %user_id,
                    family = %family,
                    "a used refresh token was presented again; its family is revoked"
                );
                return Err(INVALID_TOKEN);
            }
            Redemption::Rejected => return Err(INVALID_TOKEN),
        }
        let user = match self.ports.users.get(claims.user_id).await {
            Ok(user) => user,
            Err(DomainError::NotFound) => return Err(INVALID_TOKEN),
            Err(e) => return Err(e.into()),
        };
        if user.disabled {
            self.end_sessions(user.id, None, now).await?;
            return Err(INVALID_TOKEN);
        }
        self.open_session(user, claims.family).await
    }

    /// Checks an access token: signature and claims, the blocklist, and
    /// that its user still exists and is not disabled. The blocklist gives
    /// the token's standing and its user's account-state version in one
    /// look-up; the user is read from the database only when this instance
    /// has not read it at that version (every change of the account bumps
    /// the version on every instance, see [`Accounts::set_disabled`]), so
    /// the check holds across restarts and instances without a database
    /// read per request.
    ///
    /// An API key is not accepted here: keys are admitted by
    /// [`Accounts::admit`] only, which knows the caller's address.
    ///
    /// # Errors
    /// [`AppError::Unauthorized`] when it must not be accepted.
    pub async fn authenticate(&self, token: &str) -> Result<AccessClaims, AppError> {
        let claims = self.ports.tokens.verify_access(token).map_err(rejection)?;
        let standing = self.ports.blocklist.standing(&claims).await?;
        if standing.blocked {
            return Err(INVALID_TOKEN);
        }
        self.in_good_standing(&claims, standing.user_version)
            .await?;
        Ok(claims)
    }

    /// As [`Accounts::authenticate`], charging the request to the rate
    /// bucket `bucket` picks for the token's claims (a policy and a key)
    /// in the same look-up ([`Admission`]: one round trip on Redis), which
    /// also reads the version of the user's cached conversation lists
    /// where it can. A token that is refused is charged nothing. A request
    /// its bucket refuses is answered from the admission alone: the
    /// account is not read (the refusal costs no database read), so its
    /// caller gets the refusal even if the account was disabled meanwhile.
    ///
    /// `token` may also be an API key's text: the key's claims then carry
    /// its grant ([`AccessClaims::api_key`]) and role `user`; a key this
    /// instance does not know costs `client` (the caller's address) a token
    /// of [`AccountRules::key_lookups`] before it is read.
    ///
    /// # Errors
    /// As [`Accounts::authenticate`]; [`AppError::RateLimited`] past the
    /// key lookups of the address.
    pub async fn admit<'p>(
        &self,
        token: &str,
        client: &str,
        bucket: impl FnOnce(&AccessClaims) -> (&'p RatePolicy, String),
    ) -> Result<AdmittedRequest<'p>, AppError> {
        let (claims, key_known_at) = if ApiKeyText::is_key(token) {
            self.verify_key(token, client).await?
        } else {
            let claims = self.ports.tokens.verify_access(token).map_err(rejection)?;
            (claims, None)
        };
        let (policy, key) = bucket(&claims);
        let lists = list_key(claims.user_id);
        let Some(admitted) = self
            .ports
            .admission
            .admit(&claims, policy, &key, Some(&lists))
            .await?
        else {
            return Err(INVALID_TOKEN);
        };
        if admitted.decision.allowed {
            if let Some(grant) = claims.api_key
                && key_known_at != Some(admitted.user_version)
            {
                self.confirm_key(&claims, grant.id, admitted.user_version)
                    .await?;
            }
            self.in_good_standing(&claims, admitted.user_version)
                .await?;
        }
        Ok(AdmittedRequest {
            user_version: admitted.user_version,
            list_version: admitted
                .cache_version
                .map(|version| ListVersion::new(claims.user_id, version)),
            claims,
            policy,
            decision: admitted.decision,
        })
    }

    /// Whether the account of `claims` exists and is not disabled, as
    /// read at `user_version` (from memory when this instance read it at
    /// that version).
    async fn in_good_standing(
        &self,
        claims: &AccessClaims,
        user_version: u64,
    ) -> Result<(), AppError> {
        let user = claims.user_id;
        let disabled = match self.known.get(user, user_version) {
            Some(disabled) => disabled,
            None => match self.ports.users.get(user).await {
                Ok(account) => {
                    self.known.remember(user, user_version, account.disabled);
                    account.disabled
                }
                Err(DomainError::NotFound) => return Err(INVALID_TOKEN),
                Err(e) => return Err(e.into()),
            },
        };
        if disabled { Err(INVALID_TOKEN) } else { Ok(()) }
    }

    /// Ends the session: revokes its refresh family and refuses every
    /// access token of it until they expire.
    ///
    /// # Errors
    /// On storage failure.
    pub async fn logout(&self, caller: &AccessClaims) -> Result<(), AppError> {
        let now = OffsetDateTime::now_utc();
        self.ports
            .refresh_tokens
            .revoke_family(caller.family, now)
            .await?;
        self.ports
            .blocklist
            .block_token(caller.user_id, caller.jti, caller.expires_at)
            .await?;
        self.ports
            .blocklist
            .block_family(
                caller.user_id,
                caller.family,
                now + self.ports.tokens.access_ttl(),
            )
            .await?;
        tracing::info!(user_id = %caller.user_id, "logged out");
        Ok(())
    }

    /// Ends every session of `user` but `except`: their refresh tokens are
    /// revoked, and the access tokens of those sessions refused until they
    /// expire, so that re-enabling the account later does not revive them.
    /// How many it ended.
    async fn end_sessions(
        &self,
        user: UserId,
        except: Option<FamilyId>,
        now: OffsetDateTime,
    ) -> Result<usize, AppError> {
        let families = self
            .ports
            .refresh_tokens
            .revoke_user(user, except, now)
            .await?;
        // Every access token of these sessions was issued before their
        // revocation committed (one issued after it is never handed out):
        // they all expire before this.
        let until = OffsetDateTime::now_utc() + self.ports.tokens.access_ttl();
        for family in &families {
            self.ports
                .blocklist
                .block_family(user, *family, until)
                .await?;
        }
        Ok(families.len())
    }

    /// Changes the caller's password: the current one must be given, and
    /// the attempt counts as a login (the per-address attempt limit, and
    /// failures counted per account and address as a login's are), so the
    /// route is no way around the login limits. On success the new
    /// password is hashed and stored, every other session of the caller's
    /// ends (its tokens refused at once) and the caller's own stays.
    ///
    /// # Errors
    /// [`AppError::RateLimited`] as for [`Accounts::login`];
    /// [`AppError::Validation`] on `new_password` when it breaks the
    /// password policy or is the current one; [`AppError::Unauthorized`]
    /// with [`AuthFailure::BadCredentials`] when the current one is wrong.
    pub async fn change_password(
        &self,
        caller: &AccessClaims,
        change: PasswordChange,
    ) -> Result<(), AppError> {
        let user = match self.ports.users.get(caller.user_id).await {
            Ok(user) => user,
            Err(DomainError::NotFound) => return Err(INVALID_TOKEN),
            Err(e) => return Err(e.into()),
        };
        let new =
            Password::new_for(&change.new, &user.username, &user.email).map_err(|e| match e {
                DomainError::Invalid { message, .. } => {
                    DomainError::invalid(Field::NewPassword, message)
                }
                other => other,
            })?;
        let current = self
            .confirm_password(&user, &change.current, &change.client)
            .await?;
        if new.expose() == change.current.expose() {
            return Err(DomainError::invalid(
                Field::NewPassword,
                "must differ from the current password",
            )
            .into());
        }
        let hash = self.ports.hasher.hash(&new).await?;
        let mut current = current;
        // Another change, or a login's rehash, may land between the check
        // and the write: the write is made against the hash checked, and
        // made again once if the password given still verifies against
        // the one stored now (a rehash).
        for attempt in 0..2 {
            let now = OffsetDateTime::now_utc();
            if self
                .ports
                .users
                .replace_password_hash(user.id, &current, hash.clone(), now)
                .await?
            {
                break;
            }
            let stored = self.stored_hash(&user).await?;
            let verdict = self
                .ports
                .hasher
                .verify(&change.current, stored.as_ref())
                .await?;
            match stored {
                Some(stored)
                    if attempt == 0
                        && matches!(
                            verdict,
                            Verification::Match | Verification::MatchNeedsRehash
                        ) =>
                {
                    current = stored;
                }
                _ => {
                    tracing::info!(user_id = %user.id, "password change refused: it changed meanwhile");
                    return Err(AppError::Unauthorized(AuthFailure::BadCredentials));
                }
            }
        }
        let ended = self
            .end_sessions(user.id, Some(caller.family), OffsetDateTime::now_utc())
            .await?;
        tracing::info!(
            security_event = "password_changed",
            user_id = %user.id,
            ended,
            "password changed; the other sessions are ended"
        );
        Ok(())
    }

    /// How long after an account's deletion its stores outside the
    /// database are swept once more, for what a request already under way
    /// when it went wrote after the first sweep.
    pub const ERASURE_SECOND_PASS: std::time::Duration = std::time::Duration::from_secs(15);

    /// Deletes the caller's own account, with everything of it
    /// ([`Accounts::delete_user`] says what). The password must be given,
    /// and is checked as a login's is (the same limits and failure
    /// counts).
    ///
    /// # Errors
    /// [`AppError::RateLimited`] as for [`Accounts::login`];
    /// [`AppError::Unauthorized`] with [`AuthFailure::BadCredentials`]
    /// when the password is wrong; [`AppError::Unavailable`] when a store
    /// fails (a retry, or an admin's deletion, finishes the work).
    pub async fn delete_own_account(
        &self,
        caller: &AccessClaims,
        password: &Password,
        client: &str,
        conversations: &Conversations,
    ) -> Result<(), AppError> {
        let user = match self.ports.users.get(caller.user_id).await {
            Ok(user) => user,
            Err(DomainError::NotFound) => return Err(INVALID_TOKEN),
            Err(e) => return Err(e.into()),
        };
        self.confirm_password(&user, password, client).await?;
        self.erase_account(user.id, conversations).await?;
        tracing::info!(
            security_event = "account_deleted",
            user_id = %user.id,
            by = "owner",
            "account deleted by its owner"
        );
        Ok(())
    }

    /// Deletes an account (admins only; an admin deletes their own with
    /// [`Accounts::delete_own_account`]): every session ends and its access
    /// tokens are refused at once on every instance, every running answer
    /// of theirs is stopped, the database's rows go (the account, its
    /// conversations and messages, its sessions and refresh tokens), and
    /// then every entry the stores outside it keep of the account and its
    /// conversations ([`Erasure`]), swept again
    /// [`ERASURE_SECOND_PASS`](Self::ERASURE_SECOND_PASS) later. Deleting
    /// an account that is gone already does the sweeps again and succeeds.
    ///
    /// # Errors
    /// [`AppError::Forbidden`] for a non-admin; [`AppError::Validation`]
    /// on the id when it is the caller's own; [`AppError::Unavailable`] as
    /// for [`Accounts::delete_own_account`].
    pub async fn delete_user(
        &self,
        caller: &AccessClaims,
        id: UserId,
        conversations: &Conversations,
    ) -> Result<(), AppError> {
        Self::require_admin(caller)?;
        if id == caller.user_id {
            return Err(DomainError::invalid(
                Field::UserId,
                "an admin deletes their own account with DELETE /api/v1/users/me",
            )
            .into());
        }
        let existed = self.erase_account(id, conversations).await?;
        tracing::info!(
            security_event = "account_deleted",
            admin = %caller.user_id,
            user_id = %id,
            existed,
            "account deleted by an admin"
        );
        Ok(())
    }

    /// How long a deleted account's version is kept after its deletion
    /// moved it: longer than any instance trusts what it read of an
    /// account at an unchanged version.
    const DELETED_VERSION_GRACE: std::time::Duration =
        known::MAX_AGE.saturating_add(std::time::Duration::from_secs(2));

    /// What [`Accounts::delete_user`] does; whether the account existed.
    async fn erase_account(
        &self,
        user: UserId,
        conversations: &Conversations,
    ) -> Result<bool, AppError> {
        let names = match self.ports.users.get(user).await {
            Ok(found) => vec![
                found.username.as_str().to_owned(),
                found.email.as_str().to_owned(),
            ],
            Err(DomainError::NotFound) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        // Its tokens and keys die first: no new request of its starts, and
        // none charges a rate bucket of its that the erasure would miss.
        self.end_sessions(user, None, OffsetDateTime::now_utc())
            .await?;
        self.block_keys(user).await?;
        let deleted = self.ports.users.delete(user).await?;
        // A login that passed its checks while the sessions ended holds a
        // token of a session that was never blocked: moving the account's
        // version makes every instance read the account again, find it
        // gone and refuse the token.
        self.known.forget(user);
        self.ports.blocklist.user_changed(user).await?;
        let existed = deleted.is_some();
        let ids = deleted.unwrap_or_default();
        // Its answers stop; what they save after the rows went is dropped.
        conversations.stop_answers(&ids).await?;
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let last = ErasureTargets::new(user, &names, &ids);
        let first = last
            .clone()
            .keeping_version_for(Self::DELETED_VERSION_GRACE);
        let again = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Self::ERASURE_SECOND_PASS).await;
            match again.erase(&last).await {
                Ok(0) => {}
                Ok(erased) => {
                    tracing::info!(user_id = %last.user(), erased, "late entries of a deleted account forgotten");
                }
                Err(e) => {
                    tracing::warn!(user_id = %last.user(), error = %e, "a deleted account's entries could not be swept again");
                }
            }
        });
        let erased = self.erase(&first).await?;
        tracing::info!(user_id = %user, erased, "a deleted account's entries are forgotten");
        Ok(existed)
    }

    /// Runs every erasure; how many entries went.
    async fn erase(&self, targets: &ErasureTargets) -> Result<u64, AppError> {
        let mut erased = 0;
        for erasure in &self.ports.erasures {
            erased += erasure.erase(targets).await?;
        }
        Ok(erased)
    }

    /// How long what is left of an ended session (its record, its refresh
    /// tokens) is kept before [`Accounts::sweep_sessions`] deletes it.
    pub const ENDED_SESSION_RETENTION: std::time::Duration =
        std::time::Duration::from_secs(7 * 24 * 60 * 60);

    /// The caller's live sessions, the most recently used first, theirs
    /// marked.
    ///
    /// # Errors
    /// On storage failure.
    pub async fn sessions(&self, caller: &AccessClaims) -> Result<Vec<SessionView>, AppError> {
        let now = OffsetDateTime::now_utc();
        let records = self
            .ports
            .refresh_tokens
            .sessions(caller.user_id, now)
            .await?;
        Ok(records
            .into_iter()
            .map(|record| SessionView {
                current: record.id == caller.family,
                record,
            })
            .collect())
    }

    /// Ends one of the caller's sessions: its refresh tokens are revoked
    /// and its access tokens refused at once (on every instance, through
    /// the blocklist).
    ///
    /// # Errors
    /// [`AppError::NotFound`] when it is not a live session of the
    /// caller's.
    pub async fn end_session(&self, caller: &AccessClaims, id: FamilyId) -> Result<(), AppError> {
        let now = OffsetDateTime::now_utc();
        if !self
            .ports
            .refresh_tokens
            .revoke_session(caller.user_id, id, now)
            .await?
        {
            return Err(AppError::NotFound);
        }
        self.ports
            .blocklist
            .block_family(caller.user_id, id, now + self.ports.tokens.access_ttl())
            .await?;
        tracing::info!(user_id = %caller.user_id, session = %id, "session ended by its owner");
        Ok(())
    }

    /// Ends every session of the caller's, or every other one when
    /// `keep_current`; how many it ended.
    ///
    /// # Errors
    /// On storage failure.
    pub async fn logout_all(
        &self,
        caller: &AccessClaims,
        keep_current: bool,
    ) -> Result<usize, AppError> {
        let now = OffsetDateTime::now_utc();
        let except = keep_current.then_some(caller.family);
        let ended = self.end_sessions(caller.user_id, except, now).await?;
        if !keep_current {
            self.ports
                .blocklist
                .block_token(caller.user_id, caller.jti, caller.expires_at)
                .await?;
        }
        tracing::info!(user_id = %caller.user_id, ended, keep_current, "logged out everywhere");
        Ok(ended)
    }

    /// Deletes what is left of sessions that ended more than
    /// [`Accounts::ENDED_SESSION_RETENTION`] ago; how many sessions went.
    ///
    /// # Errors
    /// On storage failure.
    pub async fn sweep_sessions(&self) -> Result<u64, AppError> {
        let before = OffsetDateTime::now_utc() - Self::ENDED_SESSION_RETENTION;
        Ok(self.ports.refresh_tokens.sweep(before).await?)
    }

    /// The caller's own account.
    ///
    /// # Errors
    /// [`AppError::Unauthorized`] when the account no longer exists.
    pub async fn me(&self, caller: &AccessClaims) -> Result<User, AppError> {
        match self.ports.users.get(caller.user_id).await {
            Err(DomainError::NotFound) => Err(INVALID_TOKEN),
            other => Ok(other?),
        }
    }

    fn require_admin(caller: &AccessClaims) -> Result<(), AppError> {
        if caller.role == Role::Admin {
            Ok(())
        } else {
            Err(AppError::Forbidden)
        }
    }

    /// Lists every account (admins only).
    ///
    /// # Errors
    /// [`AppError::Forbidden`] for a non-admin.
    pub async fn list_users(
        &self,
        caller: &AccessClaims,
        page: PageRequest,
    ) -> Result<Page<User>, AppError> {
        Self::require_admin(caller)?;
        Ok(self.ports.users.list(page).await?)
    }

    /// The caller's token usage in `period`, per day and model.
    ///
    /// # Errors
    /// On storage failure.
    pub async fn usage(
        &self,
        caller: &AccessClaims,
        period: UsagePeriod,
    ) -> Result<Vec<DailyUsage>, AppError> {
        Ok(self.ports.usage.daily(Some(caller.user_id), period).await?)
    }

    /// A user's token usage in `period`, per day and model (admins only).
    ///
    /// # Errors
    /// [`AppError::Forbidden`] for a non-admin; [`AppError::NotFound`] for
    /// an unknown user.
    pub async fn user_usage(
        &self,
        caller: &AccessClaims,
        id: UserId,
        period: UsagePeriod,
    ) -> Result<Vec<DailyUsage>, AppError> {
        Self::require_admin(caller)?;
        self.ports.users.get(id).await?;
        Ok(self.ports.usage.daily(Some(id), period).await?)
    }

    /// Everyone's token usage in `period`, summed per day and model
    /// (admins only).
    ///
    /// # Errors
    /// [`AppError::Forbidden`] for a non-admin.
    pub async fn all_usage(
        &self,
        caller: &AccessClaims,
        period: UsagePeriod,
    ) -> Result<Vec<DailyUsage>, AppError> {
        Self::require_admin(caller)?;
        Ok(self.ports.usage.daily(None, period).await?)
    }

    /// Disables or enables an account (admins only). Disabling revokes
    /// every refresh token of the user and refuses their access tokens.
    ///
    /// # Errors
    /// [`AppError::Forbidden`] for a non-admin; [`AppError::NotFound`] for
    /// an unknown user; [`AppError::Validation`] when an admin would
    /// disable themselves.
    pub async fn set_disabled(
        &self,
        caller: &AccessClaims,
        id: UserId,
        disabled: bool,
    ) -> Result<User, AppError> {
        Self::require_admin(caller)?;
        if disabled && id == caller.user_id {
            return Err(DomainError::invalid(
                Field::Disabled,
                "an admin can't disable their own account",
            )
            .into());
        }
        let now = OffsetDateTime::now_utc();
        let user = self.ports.users.set_disabled(id, disabled, now).await?;
        // Access tokens die at once, whatever fails next: every instance's
        // next authenticate of the user sees a new version and reads the
        // flag again.
        self.known.forget(id);
        self.ports.blocklist.user_changed(id).await?;
        if disabled {
            self.end_sessions(id, None, now).await?;
        }
        tracing::info!(admin = %caller.user_id, user_id = %id, disabled, "account status changed");
        Ok(user)
    }
}
