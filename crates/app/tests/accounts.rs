//! Registration rules, on in-process adapters (SQLite + the real hasher).

#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

use confab_app::{Accounts, AppError, Readiness, Registration};
use confab_domain::{Password, Role};
use confab_password::{HasherOptions, MIN_ITERATIONS, Pbkdf2Hasher};
use confab_sql::testing::TestDatabase;

async fn accounts() -> (TestDatabase, Accounts, Readiness) {
    let db = TestDatabase::sqlite();
    let store = Arc::new(db.store().await);
    let hasher = Pbkdf2Hasher::new(HasherOptions {
        iterations: MIN_ITERATIONS,
        max_concurrent: 2,
        max_waiting: 16,
    })
    .unwrap();
    let readiness = Readiness::new(vec![store.clone()]);
    (db, Accounts::new(store, Arc::new(hasher)), readiness)
}

fn reg(username: &str, email: &str, password: &str) -> Registration {
    Registration {
        username: username.into(),
        email: email.into(),
        password: Password::presented(password)
            .unwrap_or_else(|_| Password::presented("x").unwrap()),
    }
}

#[tokio::test]
async fn registers_a_normalised_user() {
    let (_db, accounts, _) = accounts().await;
    let user = accounts
        .register(reg("Alice", "Alice@Example.com", "correct horse battery"))
        .await
        .unwrap();
    assert_eq!(user.username.as_str(), "alice");
    assert_eq!(user.email.as_str(), "alice@example.com");
    assert_eq!(user.role, Role::User);
    assert!(!user.disabled);
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
        matches!(err, AppError::Conflict { ref field } if field == "username"),
        "{err:?}"
    );
    let err = accounts
        .register(reg("robert", "bob@example.com", "correct horse battery"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppError::Conflict { ref field } if field == "email"),
        "{err:?}"
    );
}

#[tokio::test]
async fn each_rule_names_its_field() {
    let (_db, accounts, _) = accounts().await;
    for (input, field) in [
        (
            reg("ab", "a@example.com", "correct horse battery"),
            "username",
        ),
        (
            reg("admin", "a@example.com", "correct horse battery"),
            "username",
        ),
        (
            reg("carol", "not-an-email", "correct horse battery"),
            "email",
        ),
        (reg("carol", "c@example.com", "short"), "password"),
        (reg("carol", "c@example.com", "carol-is-great"), "password"),
        (reg("carol", "c@example.com", "password123"), "password"),
    ] {
        let err = accounts.register(input).await.unwrap_err();
        assert!(
            matches!(err, AppError::Validation { field: ref f, .. } if f == field),
            "{err:?} for {field}"
        );
    }
}

#[tokio::test]
async fn readiness_reports_the_database() {
    let (_db, _, readiness) = accounts().await;
    let report = readiness.check().await;
    assert!(report.ready());
    assert_eq!(report.dependencies.len(), 1);
    assert_eq!(report.dependencies[0].name, "database");
}
