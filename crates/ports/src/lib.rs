//! The traits Confab's use cases need from the world.
//!
//! Every port is `Send + Sync + 'static` so the binary can hold it as an
//! `Arc<dyn Port>` in one application state. Methods return
//! [`DomainError`]: adapters translate their own failures at their boundary
//! (a unique violation becomes [`DomainError::Duplicate`], a refused
//! connection [`DomainError::Unavailable`]), so nothing above a port knows
//! which library sits behind it.

mod auth;
mod health;
mod password;
mod store;

pub use auth::{
    AccessClaims, IssuedToken, NewRefreshToken, RateDecision, RateLimiter, RatePolicy, Redemption,
    RefreshClaims, RefreshTokenStore, TokenBlocklist, TokenCodec, TokenRejection,
};
pub use health::HealthCheck;
pub use password::{PasswordHasher, Verification};
pub use store::{ConversationQuery, ConversationStore, MessageStore, UserStore};
