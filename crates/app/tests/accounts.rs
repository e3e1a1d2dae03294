//! Account rules, on in-process adapters (SQLite, the real hasher, JWT
//! codec, blocklist and limiter).

#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use confab_app::{
    AccountPorts, AccountRules, Accounts, AppError, AuthFailure, LoginAttempt, LoginFailures,
    Readiness, Registration, SeparateAdmission,
};
use confab_domain::{
    ConversationId, DomainError, Field, NewUser, OffsetDateTime, Page, PageRequest, Password,
    PasswordHash, Role, User, UserId,
};
use confab_memory::{GovernorLimiter, InMemoryBlocklist, InMemoryFailures, MemoryCache};
use confab_password::{HasherOptions, MIN_ITERATIONS, Pbkdf2Hasher};
use confab_ports::{
    PasswordHasher, RateLimiter, RatePolicy, RefreshTokenStore, TokenBlocklist, UserStore,
    Verification,
};
use confab_sql::testing::TestDatabase;

async fn accounts() -> (TestDatabase, Accounts, Readiness) {
    let db = TestDatabase::sqlite();
    let (accounts, readiness) = accounts_on(&db, MIN_ITERATIONS).await;
    (db, accounts, readiness)
}

/// The real hasher, counting the hashes it computes.
struct CountingHasher {
    inner: Pbkdf2Hasher,
    hashes: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl PasswordHasher for CountingHasher {
    async fn hash(&self, password: &Password) -> Result<PasswordHash, DomainError> {
        self.hashes.fetch_add(1, Ordering::SeqCst);
        self.inner.hash(password).await
    }

    async fn verify(
        &self,
        password: &Password,
        hash: Option<&PasswordHash>,
    ) -> Result<Verification, DomainError> {
        self.inner.verify(password, hash).await
    }
}

/// The use cases over `db`, hashing new passwords with `iterations`.
async fn accounts_on(db: &TestDatabase, iterations: u32) -> (Accounts, Readiness) {
    let (accounts, readiness, _) = counted_accounts_on(db, iterations).await;
    (accounts, readiness)
}

/// As [`accounts_on`], with the count of hashes computed.
async fn counted_accounts_on(
    db: &TestDatabase,
    iterations: u32,
) -> (Accounts, Readiness, Arc<AtomicUsize>) {
    let built = build(db, iterations).await;
    (built.accounts, built.readiness, built.hashes)
}

/// The use cases and the parts a test watches or moves.
struct Built {
    accounts: Accounts,
    readiness: Readiness,
    /// Hashes computed.
    hashes: Arc<AtomicUsize>,
    /// Accounts read by id.
    reads: Arc<AtomicUsize>,
    blocklist: Arc<dyn TokenBlocklist>,
    /// The store under the use cases.
    store: Arc<confab_sql::SqlStore>,
    /// A password change to land just before a read of credentials:
    /// before the `n`th read from now (1 = the next).
    change_before_read: Arc<std::sync::Mutex<Option<(usize, PasswordHash)>>>,
}

/// The SQL store, counting the accounts read by id, and landing a password
/// change between two reads of credentials when told to.
struct CountingUsers {
    inner: Arc<confab_sql::SqlStore>,
    reads: Arc<AtomicUsize>,
    change_before_read: Arc<std::sync::Mutex<Option<(usize, PasswordHash)>>>,
}

#[async_trait::async_trait]
impl UserStore for CountingUsers {
    async fn create(&self, user: NewUser) -> Result<User, DomainError> {
        self.inner.create(user).await
    }

    async fn get(&self, id: UserId) -> Result<User, DomainError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.get(id).await
    }

    async fn find_credentials(
        &self,
        login: &str,
    ) -> Result<Option<(User, PasswordHash)>, DomainError> {
        let due = {
            let mut change = self.change_before_read.lock().unwrap();
            match change.take() {
                Some((1, hash)) => Some(hash),
                Some((n, hash)) => {
                    *change = Some((n - 1, hash));
                    None
                }
                None => None,
            }
        };
        if let Some(new) = due {
            let (user, current) = self.inner.find_credentials(login).await?.unwrap();
            let now = OffsetDateTime::now_utc();
            assert!(
                self.inner
                    .replace_password_hash(user.id, &current, new, now)
                    .await?
            );
        }
        self.inner.find_credentials(login).await
    }

    async fn list(&self, page: PageRequest) -> Result<Page<User>, DomainError> {
        self.inner.list(page).await
    }

    async fn replace_password_hash(
        &self,
        id: UserId,
        current: &PasswordHash,
        new: PasswordHash,
        at: OffsetDateTime,
    ) -> Result<bool, DomainError> {
        self.inner.replace_password_hash(id, current, new, at).await
    }

    async fn delete(&self, id: UserId) -> Result<Option<Vec<ConversationId>>, DomainError> {
        self.inner.delete(id).await
    }

    async fn set_disabled(
        &self,
        id: UserId,
        disabled: bool,
        at: OffsetDateTime,
    ) -> Result<User, DomainError> {
        self.inner.set_disabled(id, disabled, at).await
    }
}

async fn build(db: &TestDatabase, iterations: u32) -> Built {
    let store = Arc::new(db.store().await);
    let reads = Arc::new(AtomicUsize::new(0));
    let change_before_read = Arc::default();
    let users = Arc::new(CountingUsers {
        inner: store.clone(),
        reads: reads.clone(),
        change_before_read: Arc::clone(&change_before_read),
    });
    let hashes = Arc::new(AtomicUsize::new(0));
    let hasher = CountingHasher {
        inner: Pbkdf2Hasher::new(HasherOptions {
            iterations,
            max_concurrent: 2,
            max_waiting: 16,
        })
        .unwrap(),
        hashes: hashes.clone(),
    };
    let codec = support::jwt_codec();
    let readiness = Readiness::new(vec![store.clone()]);
    let login = RatePolicy {
        name: "login".into(),
        quota: 5,
        window: Duration::from_secs(60),
    };
    let blocklist: Arc<dyn TokenBlocklist> = Arc::new(InMemoryBlocklist::new());
    let limiter: Arc<dyn RateLimiter> = Arc::new(GovernorLimiter::new());
    let ports = AccountPorts {
        users,
        hasher: Arc::new(hasher),
        tokens: Arc::new(codec),
        refresh_tokens: store.clone(),
        admission: Arc::new(SeparateAdmission::new(blocklist.clone(), limiter.clone())),
        blocklist: blocklist.clone(),
        limiter,
        failures: Arc::new(InMemoryFailures::new(10_000)),
        erasures: Vec::new(),
        usage: store.clone(),
        api_keys: store.clone(),
        key_secrets: Arc::new(confab_password::KeySecrets),
    };
    let limits = AccountRules {
        per_ip: login.clone(),
        login_failures: LoginFailures {
            per_address: 3,
            per_account: 5,
            window: Duration::from_secs(60),
        },
        register_per_ip: RatePolicy {
            name: "register".into(),
            ..login.clone()
        },
        key_lookups: RatePolicy {
            name: "api-key-lookups".into(),
            quota: 30,
            ..login.clone()
        },
        register_overall: RatePolicy {
            name: "register-all".into(),
            quota: 1000,
            ..login
        },
        refresh_reuse_grace: std::time::Duration::ZERO,
    };
    Built {
        accounts: Accounts::new(ports, limits),
        readiness,
        hashes,
        reads,
        blocklist,
        store,
        change_before_read,
    }
}

fn reg(username: &str, email: &str, password: &str) -> Registration {
    Registration {
        username: username.into(),
        email: email.into(),
        password: Password::presented(password).unwrap(),
        client: format!("client-of-{username}"),
    }
}

fn attempt(login: &str, password: &str, client: &str) -> LoginAttempt {
    LoginAttempt {
        login: login.into(),
        password: Password::presented(password).unwrap(),
        client: client.into(),
        address: Some(client.into()),
        user_agent: Some("accounts-test/1.0".into()),
    }
}

#[tokio::test]
async fn registers_a_normalised_user_and_an_admin() {
    let (_db, accounts, _) = accounts().await;
    let user = accounts
        .register(reg("Alice", "Alice@Example.com", "correct horse battery"))
        .await
        .unwrap();
    assert_eq!(user.username.as_str(), "alice");
    assert_eq!(user.email.as_str(), "alice@example.com");
    assert_eq!(user.role, Role::User);
    assert!(!user.disabled);
    let admin = accounts
        .create_admin(reg("boss", "boss@example.com", "correct horse battery"))
        .await
        .unwrap();
    assert_eq!(admin.role, Role::Admin);
}

#[tokio::test]
async fn taken_username_or_email_is_a_conflict() {
    let (_db, accounts, _) = accounts().await;
    accounts
        .register(reg("bob", "bob@example.com", "correct horse battery"))
        .await
        .unwrap();
    let err = accounts
        .register(reg("BOB", "other@example.com", "correct horse battery"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppError::Conflict { ref field } if *field == Field::Username),
        "{err:?}"
    );
    let err = accounts
        .register(reg("robert", "bob@example.com", "correct horse battery"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppError::Conflict { ref field } if *field == Field::Email),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_taken_name_or_address_is_refused_before_any_hash() {
    let db = TestDatabase::sqlite();
    let (accounts, _, hashes) = counted_accounts_on(&db, MIN_ITERATIONS).await;
    accounts
        .register(reg("bob", "bob@example.com", "correct horse battery"))
        .await
        .unwrap();
    assert_eq!(hashes.load(Ordering::SeqCst), 1);
    for (username, email) in [("BOB", "new@example.com"), ("robert", "BOB@example.com")] {
        let err = accounts
            .register(reg(username, email, "correct horse battery"))
            .await
            .unwrap_err();
        assert!(matches!(err, AppError::Conflict { .. }), "{err:?}");
    }
    assert_eq!(hashes.load(Ordering::SeqCst), 1, "no hash for a taken name");
}

#[tokio::test]
async fn registrations_are_limited_per_address_and_overall() {
    let (_db, accounts, _) = accounts().await;
    // Per address: the login policy's quota of 5.
    for n in 0..5 {
        let mut input = reg(
            &format!("user{n}"),
            &format!("u{n}@example.com"),
            "correct horse battery",
        );
        input.client = "10.0.0.1".into();
        accounts.register(input).await.unwrap();
    }
    let mut sixth = reg("user5", "u5@example.com", "correct horse battery");
    sixth.client = "10.0.0.1".into();
    let err = accounts.register(sixth).await.unwrap_err();
    assert!(
        matches!(err, AppError::RateLimited { ref policy, .. } if policy.name == "register"),
        "{err:?}"
    );
    // Another address is not refused.
    let mut other = reg("user6", "u6@example.com", "correct horse battery");
    other.client = "10.0.0.2".into();
    accounts.register(other).await.unwrap();
}

#[tokio::test]
async fn each_rule_names_its_field() {
    let (_db, accounts, _) = accounts().await;
    for (input, field) in [
        (
            reg("ab", "a@example.com", "correct horse battery"),
            Field::Username,
        ),
        (
            reg("admin", "a@example.com", "correct horse battery"),
            Field::Username,
        ),
        (
            reg("carol", "not-an-email", "correct horse battery"),
            Field::Email,
        ),
        (reg("carol", "c@example.com", "short"), Field::Password),
        (
            reg("carol", "c@example.com", "carol-is-great"),
            Field::Password,
        ),
        (
            reg("carol", "c@example.com", "password123"),
            Field::Password,
        ),
    ] {
        let err = accounts.register(input).await.unwrap_err();
        assert!(
            matches!(err, AppError::Validation { field: ref f, .. } if *f == field),
            "{err:?} for {field:?}"
        );
    }
}

#[tokio::test]
async fn login_rotation_reuse_and_logout() {
    let (_db, accounts, _) = accounts().await;
    accounts
        .register(reg("vera", "vera@example.com", "correct horse battery"))
        .await
        .unwrap();
    let first = accounts
        .login(attempt(
            "VERA@example.com",
            "correct horse battery",
            "1.1.1.1",
        ))
        .await
        .unwrap();
    let claims = accounts.authenticate(&first.access.token).await.unwrap();
    assert_eq!(claims.user_id, first.user.id);
    let second = accounts.refresh(&first.refresh.token).await.unwrap();
    // The used token again: reuse, and the whole family goes.
    let err = accounts.refresh(&first.refresh.token).await.unwrap_err();
    assert!(
        matches!(err, AppError::Unauthorized(AuthFailure::InvalidToken)),
        "{err:?}"
    );
    let err = accounts.refresh(&second.refresh.token).await.unwrap_err();
    assert!(
        matches!(err, AppError::Unauthorized(AuthFailure::InvalidToken)),
        "the family is revoked: {err:?}"
    );
    // Logout refuses the access token at once.
    let third = accounts
        .login(attempt("vera", "correct horse battery", "1.1.1.1"))
        .await
        .unwrap();
    let c = accounts.authenticate(&third.access.token).await.unwrap();
    accounts.logout(&c).await.unwrap();
    assert!(accounts.authenticate(&third.access.token).await.is_err());
    assert!(accounts.refresh(&third.refresh.token).await.is_err());
}

#[tokio::test]
async fn admission_charges_a_good_token_and_never_a_refused_one() {
    let (_db, accounts, _) = accounts().await;
    accounts
        .register(reg("wren", "wren@example.com", "correct horse battery"))
        .await
        .unwrap();
    let login = || accounts.login(attempt("wren", "correct horse battery", "1.1.1.1"));
    let first = login().await.unwrap();
    let policy = RatePolicy {
        name: "user".into(),
        quota: 2,
        window: Duration::from_secs(3600),
    };
    let bucket = |c: &confab_ports::AccessClaims| (&policy, format!("user:{}", c.user_id));
    let admitted = accounts
        .admit(&first.access.token, "203.0.113.9", bucket)
        .await
        .unwrap();
    let claims = admitted.claims;
    assert_eq!(claims.user_id, first.user.id);
    assert_eq!(admitted.policy.name, "user");
    assert!(admitted.decision.allowed);
    assert_eq!(admitted.decision.remaining, 1);
    // Logged out: refused, however often, and charged nothing.
    accounts.logout(&claims).await.unwrap();
    for _ in 0..5 {
        let err = accounts
            .admit(&first.access.token, "203.0.113.9", bucket)
            .await
            .unwrap_err();
        assert!(
            matches!(err, AppError::Unauthorized(AuthFailure::InvalidToken)),
            "{err:?}"
        );
    }
    // A new session of the same user still has the one token left.
    let second = login().await.unwrap();
    let admitted = accounts
        .admit(&second.access.token, "203.0.113.9", bucket)
        .await
        .unwrap();
    assert!(admitted.decision.allowed);
    assert_eq!(admitted.decision.remaining, 0);
    let admitted = accounts
        .admit(&second.access.token, "203.0.113.9", bucket)
        .await
        .unwrap();
    assert!(!admitted.decision.allowed);
    // A token that does not verify is refused before anything is read.
    assert!(matches!(
        accounts.admit("not.a.token", "203.0.113.9", bucket).await,
        Err(AppError::Unauthorized(_))
    ));
}

/// Work before limits: a request its bucket refuses is answered from the
/// admission alone, without reading the account, even when what this
/// instance knew of the account is stale; an allowed one reads it.
#[tokio::test]
async fn a_refused_request_is_answered_before_the_account_is_read() {
    let db = TestDatabase::sqlite();
    let built = build(&db, MIN_ITERATIONS).await;
    let accounts = &built.accounts;
    let yale = accounts
        .register(reg("yale", "yale@example.com", "correct horse battery"))
        .await
        .unwrap();
    let session = accounts
        .login(attempt("yale", "correct horse battery", "1.1.1.1"))
        .await
        .unwrap();
    let policy = RatePolicy {
        name: "user".into(),
        quota: 1,
        window: Duration::from_secs(3600),
    };
    let bucket = |c: &confab_ports::AccessClaims| (&policy, format!("user:{}", c.user_id));
    let token = &session.access.token;
    let reads = || built.reads.load(Ordering::SeqCst);
    assert!(
        accounts
            .admit(token, "203.0.113.9", bucket)
            .await
            .unwrap()
            .decision
            .allowed
    );
    assert_eq!(reads(), 1, "an allowed request reads the account once");
    // The account changes: what this instance knew is stale.
    built.blocklist.user_changed(yale.id).await.unwrap();
    for _ in 0..3 {
        let refused = accounts.admit(token, "203.0.113.9", bucket).await.unwrap();
        assert!(!refused.decision.allowed);
    }
    assert_eq!(reads(), 1, "refused requests read nothing");
    let other = RatePolicy {
        name: "other".into(),
        ..policy.clone()
    };
    let allowed = accounts
        .admit(token, "203.0.113.9", |c| {
            (&other, format!("user:{}", c.user_id))
        })
        .await
        .unwrap();
    assert!(allowed.decision.allowed);
    assert_eq!(
        reads(),
        2,
        "an allowed request at a new version reads it again"
    );
}

/// The policy name of a rate-limit refusal, or a failure naming the error.
fn refused_by(result: Result<confab_app::Session, AppError>) -> String {
    match result {
        Err(AppError::RateLimited { policy, decision }) => {
            assert!(decision.retry_after > Duration::ZERO, "{decision:?}");
            policy.name
        }
        other => panic!("not a rate-limit refusal: {other:?}"),
    }
}

fn bad_credentials(result: Result<confab_app::Session, AppError>) {
    assert!(
        matches!(
            result,
            Err(AppError::Unauthorized(AuthFailure::BadCredentials))
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn bad_credentials_are_indistinguishable_and_guessing_is_limited_without_lockout() {
    let (_db, accounts, _) = accounts().await;
    accounts
        .register(reg("walt", "walt@example.com", "correct horse battery"))
        .await
        .unwrap();
    let right = "correct horse battery";
    let wrong = "wrong password!";
    for login in ["walt", "nobody-at-all"] {
        bad_credentials(
            accounts
                .login(attempt(login, wrong, &format!("ip-{login}")))
                .await,
        );
    }
    // One address guessing: 3 failures on the account (by name and by
    // e-mail alike), then that address is refused on it, right or wrong.
    for name in ["walt", "WALT@example.com", "walt"] {
        bad_credentials(accounts.login(attempt(name, wrong, "10.0.0.1")).await);
    }
    assert_eq!(
        refused_by(accounts.login(attempt("walt", right, "10.0.0.1")).await),
        "login-failures"
    );
    // Another account is another count, even from that address.
    bad_credentials(
        accounts
            .login(attempt("nobody-at-all", wrong, "10.0.0.1"))
            .await,
    );
    // Guesses from more addresses make the account's count 5+: addresses
    // that failed on it are refused, right or wrong...
    for i in 0..2 {
        bad_credentials(
            accounts
                .login(attempt("walt", wrong, &format!("10.0.1.{i}")))
                .await,
        );
    }
    assert_eq!(
        refused_by(accounts.login(attempt("walt", right, "10.0.1.0")).await),
        "login-account"
    );
    // ...but the owner, from an address with no failures, logs in.
    let session = accounts
        .login(attempt("walt", right, "10.9.9.9"))
        .await
        .unwrap();
    assert_eq!(session.user.username.as_str(), "walt");
    // A new address gets one try; after its failure it is refused too.
    bad_credentials(accounts.login(attempt("walt", wrong, "10.0.2.1")).await);
    assert_eq!(
        refused_by(accounts.login(attempt("walt", right, "10.0.2.1")).await),
        "login-account"
    );
    // A success forgets its address's failures on the account: without
    // that, 1 + 2 failures would refuse vera's last, right, login.
    accounts
        .register(reg("vera", "vera@example.com", right))
        .await
        .unwrap();
    bad_credentials(accounts.login(attempt("vera", wrong, "10.7.7.7")).await);
    accounts
        .login(attempt("vera", right, "10.7.7.7"))
        .await
        .unwrap();
    for _ in 0..2 {
        bad_credentials(accounts.login(attempt("vera", wrong, "10.7.7.7")).await);
    }
    accounts
        .login(attempt("vera", right, "10.7.7.7"))
        .await
        .unwrap();
}

#[tokio::test]
async fn readiness_reports_the_database() {
    let (_db, _, readiness) = accounts().await;
    let report = readiness.check().await;
    assert!(report.ready());
    assert_eq!(report.dependencies.len(), 1);
    assert_eq!(report.dependencies[0].name, "database");
}

#[tokio::test]
async fn a_login_rehashes_a_password_stored_with_older_parameters() {
    let db = TestDatabase::sqlite();
    let (old, _) = accounts_on(&db, 1_000).await;
    old.register(reg("yan", "yan@example.com", "correct horse battery"))
        .await
        .unwrap();
    let store = db.store().await;
    let before = confab_ports::UserStore::find_credentials(&store, "yan")
        .await
        .unwrap()
        .unwrap()
        .1;
    assert!(
        before.as_str().starts_with("$pbkdf2-sha256$i=1000,"),
        "{before:?}"
    );
    let (current, _) = accounts_on(&db, MIN_ITERATIONS).await;
    current
        .login(attempt("yan", "correct horse battery", "1.2.3.4"))
        .await
        .unwrap();
    let after = confab_ports::UserStore::find_credentials(&store, "yan")
        .await
        .unwrap()
        .unwrap()
        .1;
    assert!(
        after.as_str().starts_with("$pbkdf2-sha256$i=600000,"),
        "rehashed at login"
    );
    // And the new hash still verifies.
    current
        .login(attempt("yan", "correct horse battery", "1.2.3.5"))
        .await
        .unwrap();
}

#[tokio::test]
async fn separate_admission_keeps_the_admission_contract() {
    let shared_blocklist: Arc<dyn TokenBlocklist> = Arc::new(InMemoryBlocklist::new());
    let shared_limiter: Arc<dyn RateLimiter> = Arc::new(GovernorLimiter::new());
    confab_testkit::contract::admission::a_refused_token_is_charged_nothing(
        &SeparateAdmission::new(shared_blocklist.clone(), shared_limiter.clone()),
        shared_blocklist.as_ref(),
        shared_limiter.as_ref(),
    )
    .await;
    confab_testkit::contract::admission::the_cache_version_read_with_a_charge_is_the_caches(
        &SeparateAdmission::new(shared_blocklist, shared_limiter),
        &MemoryCache::new(100, 1 << 30),
        false,
    )
    .await;
}

#[tokio::test]
async fn a_login_overtaken_by_a_password_change_keeps_no_session() {
    let db = TestDatabase::sqlite();
    let built = build(&db, MIN_ITERATIONS).await;
    let user = built
        .accounts
        .register(reg("rita", "rita@example.com", "correct horse battery"))
        .await
        .unwrap();
    // The change lands after the login verified the old password and
    // before it checks again (its second read of credentials), too late
    // for the change's own revocation to see the login's session.
    *built.change_before_read.lock().unwrap() =
        Some((2, PasswordHash::new("$changed-meanwhile".into())));
    let err = built
        .accounts
        .login(attempt("rita", "correct horse battery", "10.0.0.9"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppError::Unauthorized(AuthFailure::BadCredentials)),
        "{err:?}"
    );
    let now = OffsetDateTime::now_utc();
    assert!(built.store.sessions(user.id, now).await.unwrap().is_empty());
    // A rehash of the same password landing meanwhile (another login's)
    // is no change: the login goes on.
    let rehashed = Pbkdf2Hasher::new(HasherOptions {
        iterations: MIN_ITERATIONS,
        max_concurrent: 1,
        max_waiting: 1,
    })
    .unwrap()
    .hash(&Password::presented("correct horse battery").unwrap())
    .await
    .unwrap();
    let tess = built
        .accounts
        .register(reg("tess", "tess@example.com", "correct horse battery"))
        .await
        .unwrap();
    *built.change_before_read.lock().unwrap() = Some((2, rehashed));
    built
        .accounts
        .login(attempt("tess", "correct horse battery", "10.0.0.9"))
        .await
        .unwrap();
    assert_eq!(built.store.sessions(tess.id, now).await.unwrap().len(), 1);
    // Control: the same login with nothing changing meanwhile opens one.
    let sam = built
        .accounts
        .register(reg("sam", "sam@example.com", "correct horse battery"))
        .await
        .unwrap();
    built
        .accounts
        .login(attempt("sam", "correct horse battery", "10.0.0.9"))
        .await
        .unwrap();
    assert_eq!(built.store.sessions(sam.id, now).await.unwrap().len(), 1);
}

fn key_request(name: &str, scopes: &[&str], days: Option<i64>) -> confab_app::NewApiKey {
    use confab_domain::ApiKeyId;
    confab_app::NewApiKey {
        name: name.into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        expires_in_days: days,
        password: Password::presented("correct horse battery").unwrap(),
        // An address per request: each check counts against the login
        // limit of its address.
        client: format!("key-client-{name}-{}", ApiKeyId::generate()),
    }
}

/// An API key authenticates as its owner, with its scopes and role `user`
/// only, in its own bucket; a bad key is refused and counted against its
/// address; a revoked key, an expired one and one of a disabled account
/// are refused at once.
#[tokio::test]
async fn an_api_key_admits_its_owner_within_its_grant_until_revoked() {
    use confab_domain::{ApiKey, ApiKeyId, ApiKeyName, ApiKeyText, Scope, Scopes};
    use confab_ports::{ApiKeySecrets, ApiKeyStore};

    let db = TestDatabase::sqlite();
    let built = build(&db, MIN_ITERATIONS).await;
    let accounts = &built.accounts;
    let owner = accounts
        .create_admin(reg(
            "keyowner",
            "keyowner@example.com",
            "correct horse battery",
        ))
        .await
        .unwrap();
    let session = accounts
        .login(attempt("keyowner", "correct horse battery", "1.1.1.1"))
        .await
        .unwrap();
    let caller = accounts.authenticate(&session.access.token).await.unwrap();
    let policy = RatePolicy {
        name: "api-key".into(),
        quota: 100,
        window: Duration::from_secs(60),
    };
    let bucket = |c: &confab_ports::AccessClaims| {
        let key = c.api_key.map(|k| k.id.to_string()).unwrap_or_default();
        (&policy, format!("user:{}:key:{key}", c.user_id))
    };

    let created = accounts
        .create_api_key(
            &caller,
            key_request(" deploy ", &["conversations:read", "models:read"], Some(30)),
        )
        .await
        .unwrap();
    assert_eq!(created.key.name.as_str(), "deploy");
    assert!(created.text.starts_with("cfk_"));
    let expires = created.key.expires_at.unwrap() - created.key.created_at;
    assert_eq!(expires, Duration::from_secs(30 * 24 * 3600));
    let admitted = accounts
        .admit(&created.text, "203.0.113.9", bucket)
        .await
        .unwrap();
    assert_eq!(admitted.claims.user_id, owner.id);
    assert_eq!(
        admitted.claims.role,
        Role::User,
        "a key never carries admin powers"
    );
    let grant = admitted.claims.api_key.unwrap();
    assert_eq!(grant.id, created.key.id);
    assert!(grant.scopes.contains(Scope::ModelsRead));
    assert!(!grant.scopes.contains(Scope::ConversationsWrite));
    assert_eq!(admitted.decision.remaining, 99, "the key's own bucket");
    // The access-token path does not take a key.
    assert!(accounts.authenticate(&created.text).await.is_err());

    // Listed, never with its text; its first use recorded (off the
    // request's path).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let listed = accounts.api_keys(&caller).await.unwrap();
        if listed[0].last_used_at.is_some() {
            break listed;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the first use is recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, created.key.id);
    // The secret is base64url, which has `_` in its alphabet: take all of
    // it, not the part after its last `_`.
    let secret = ApiKeyText::parse(&created.text).unwrap();
    assert!(!format!("{listed:?}").contains(secret.secret()));

    // Bad input, a taken name.
    for (request, field) in [
        (key_request("", &["models:read"], None), Field::Name),
        (key_request("x", &[], None), Field::Scopes),
        (key_request("x", &["admin"], None), Field::Scopes),
        (
            key_request("x", &["models:read"], Some(0)),
            Field::ExpiresInDays,
        ),
        (
            key_request("x", &["models:read"], Some(3651)),
            Field::ExpiresInDays,
        ),
    ] {
        let err = accounts
            .create_api_key(&caller, request)
            .await
            .err()
            .unwrap();
        assert!(
            matches!(&err, AppError::Validation { field: f, .. } if *f == field),
            "{err:?}"
        );
    }
    let taken = accounts
        .create_api_key(&caller, key_request("deploy", &["models:read"], None))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(taken, AppError::Conflict { field: Field::Name }),
        "{taken:?}"
    );

    // The password is asked for.
    let wrong = confab_app::NewApiKey {
        password: Password::presented("not the password").unwrap(),
        ..key_request("other", &["models:read"], None)
    };
    let err = accounts.create_api_key(&caller, wrong).await.err().unwrap();
    assert!(
        matches!(err, AppError::Unauthorized(AuthFailure::BadCredentials)),
        "{err:?}"
    );

    // A wrong secret for a real id, a made-up key, garbage with the prefix:
    // refused, each time at the cost of a token of the address's look-up
    // bucket (30 here); a key found missing is remembered, so asking again
    // reads nothing, but still costs its token.
    let id = created.key.id.as_uuid().simple().to_string();
    let forged = format!("cfk_{id}_{}", "A".repeat(43));
    let unknown = format!(
        "cfk_{}_{}",
        ApiKeyId::generate().as_uuid().simple(),
        "B".repeat(43)
    );
    for bad in [forged.as_str(), unknown.as_str(), "cfk_nonsense"] {
        for _ in 0..3 {
            let err = accounts
                .admit(bad, "198.51.100.7", bucket)
                .await
                .unwrap_err();
            assert!(
                matches!(err, AppError::Unauthorized(AuthFailure::InvalidToken)),
                "{err:?}"
            );
        }
    }
    for n in 9..30 {
        let made_up = format!(
            "cfk_{}_{}",
            ApiKeyId::generate().as_uuid().simple(),
            "C".repeat(43)
        );
        let err = accounts
            .admit(&made_up, "198.51.100.7", bucket)
            .await
            .unwrap_err();
        assert!(
            matches!(err, AppError::Unauthorized(_)),
            "token {n}: {err:?}"
        );
    }
    let made_up = format!(
        "cfk_{}_{}",
        ApiKeyId::generate().as_uuid().simple(),
        "D".repeat(43)
    );
    let refused = accounts
        .admit(&made_up, "198.51.100.7", bucket)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, AppError::RateLimited { .. }),
        "{refused:?}"
    );
    // Another address is not held back, and a known key needs no look-up.
    let err = accounts
        .admit(&made_up, "198.51.100.8", bucket)
        .await
        .unwrap_err();
    assert!(matches!(err, AppError::Unauthorized(_)), "{err:?}");
    assert!(
        accounts
            .admit(&created.text, "198.51.100.7", bucket)
            .await
            .is_ok()
    );

    // An expired key.
    let secrets = confab_password::KeySecrets;
    let secret = secrets.mint().unwrap();
    let text = ApiKeyText::new(ApiKeyId::generate(), secret.clone()).unwrap();
    let now = OffsetDateTime::now_utc();
    let expired = ApiKey {
        id: text.id(),
        user_id: owner.id,
        name: ApiKeyName::parse("old").unwrap(),
        scopes: Scopes::parse(&["models:read"]).unwrap(),
        created_at: now - Duration::from_secs(7200),
        expires_at: Some(now - Duration::from_secs(60)),
        last_used_at: None,
    };
    built
        .store
        .create_key(&expired, secrets.digest(&secret))
        .await
        .unwrap();
    let err = accounts
        .admit(&text.expose(), "203.0.113.9", bucket)
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppError::Unauthorized(AuthFailure::ExpiredToken)),
        "{err:?}"
    );

    // A revocation that this instance did not make (another instance's:
    // the row goes, the account version moves) is seen at the next
    // request although this instance had read the key.
    let twin = accounts
        .create_api_key(&caller, key_request("twin", &["models:read"], None))
        .await
        .unwrap();
    assert!(
        accounts
            .admit(&twin.text, "203.0.113.9", bucket)
            .await
            .is_ok()
    );
    assert!(built.store.delete_key(owner.id, twin.key.id).await.unwrap());
    built.blocklist.user_changed(owner.id).await.unwrap();
    let err = accounts
        .admit(&twin.text, "203.0.113.9", bucket)
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppError::Unauthorized(AuthFailure::InvalidToken)),
        "{err:?}"
    );

    // Someone else can't revoke it; its owner can, and it is refused at
    // once although this instance had read it.
    let other = accounts
        .register(reg(
            "bystander",
            "bystander@example.com",
            "correct horse battery",
        ))
        .await
        .unwrap();
    let other_claims = confab_ports::AccessClaims {
        user_id: other.id,
        ..caller.clone()
    };
    assert!(matches!(
        accounts.revoke_api_key(&other_claims, created.key.id).await,
        Err(AppError::NotFound)
    ));
    accounts
        .revoke_api_key(&caller, created.key.id)
        .await
        .unwrap();
    let err = accounts
        .admit(&created.text, "203.0.113.9", bucket)
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppError::Unauthorized(AuthFailure::InvalidToken)),
        "{err:?}"
    );
    assert!(matches!(
        accounts.revoke_api_key(&caller, created.key.id).await,
        Err(AppError::NotFound)
    ));

    // A disabled account's keys stop with it.
    let live = accounts
        .create_api_key(&caller, key_request("live", &["usage:read"], None))
        .await
        .unwrap();
    assert!(
        accounts
            .admit(&live.text, "203.0.113.9", bucket)
            .await
            .is_ok()
    );
    built
        .store
        .set_disabled(owner.id, true, OffsetDateTime::now_utc())
        .await
        .unwrap();
    built.blocklist.user_changed(owner.id).await.unwrap();
    let err = accounts
        .admit(&live.text, "203.0.113.9", bucket)
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppError::Unauthorized(AuthFailure::InvalidToken)),
        "{err:?}"
    );
}
