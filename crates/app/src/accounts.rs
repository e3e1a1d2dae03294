//! Accounts: registration.

use std::sync::Arc;

use confab_domain::{Email, NewUser, OffsetDateTime, Password, Role, User, UserId, Username};
use confab_ports::{PasswordHasher, UserStore};

use crate::AppError;

/// What a person submits to open an account, as received.
#[derive(Debug)]
pub struct Registration {
    /// Wanted login name.
    pub username: String,
    /// E-mail address.
    pub email: String,
    /// Chosen password (its `Debug` is hidden by the domain type once parsed).
    pub password: Password,
}

/// The account use cases.
#[derive(Clone)]
pub struct Accounts {
    users: Arc<dyn UserStore>,
    hasher: Arc<dyn PasswordHasher>,
}

impl Accounts {
    /// Builds the use cases over a user store and a hasher.
    #[must_use]
    pub fn new(users: Arc<dyn UserStore>, hasher: Arc<dyn PasswordHasher>) -> Self {
        Self { users, hasher }
    }

    /// Opens an account with role `user`.
    ///
    /// Every rule is checked before the (expensive) hash is computed.
    ///
    /// # Errors
    /// [`AppError::Validation`] on a bad username, e-mail or password;
    /// [`AppError::Conflict`] when the username or e-mail is taken;
    /// [`AppError::Unavailable`] when the database or the hashing capacity
    /// is exhausted.
    pub async fn register(&self, input: Registration) -> Result<User, AppError> {
        let username = Username::parse(&input.username)?;
        let email = Email::parse(&input.email)?;
        let password = Password::new_for(input.password.expose(), &username, &email)?;
        let password_hash = self.hasher.hash(&password).await?;
        let user = self
            .users
            .create(NewUser {
                id: UserId::generate(),
                username,
                email,
                role: Role::User,
                password_hash,
                created_at: OffsetDateTime::now_utc(),
            })
            .await?;
        tracing::info!(user_id = %user.id, "account registered");
        Ok(user)
    }
}
