//! The record of what answers cost in tokens.

use async_trait::async_trait;
use confab_domain::{
    Allowance, AnswerUsage, DailyUsage, Date, DomainError, TokensUsed, UsagePeriod, UserId,
};

/// What a send's allowance check reads of a user, in one look-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageStanding {
    /// The user's own allowance (`None` fields: the configured default's).
    pub own: Allowance,
    /// What their answers used.
    pub used: TokensUsed,
}

/// Token usage, kept per user, day (UTC) and model: every answer adds its
/// counts to its day's. The database is the record (quotas read it too);
/// a deleted account's usage goes with it.
#[async_trait]
pub trait UsageStore: Send + Sync + 'static {
    /// Adds one answer's tokens to its user's day and model.
    ///
    /// # Errors
    /// Only on storage failure (an account deleted meanwhile records
    /// nothing, without error).
    async fn record(&self, usage: &AnswerUsage) -> Result<(), DomainError>;

    /// The days of `period` with usage, each model's on its own line,
    /// oldest day first then by model: `user`'s, or everyone's summed when
    /// `None`.
    ///
    /// # Errors
    /// Only on storage failure.
    async fn daily(
        &self,
        user: Option<UserId>,
        period: UsagePeriod,
    ) -> Result<Vec<DailyUsage>, DomainError>;

    /// `user`'s own allowance and what their answers used on `today` and
    /// in its month (UTC), in one read.
    ///
    /// # Errors
    /// Only on storage failure.
    async fn standing(&self, user: UserId, today: Date) -> Result<UsageStanding, DomainError>;

    /// Sets `user`'s own allowance (`None` fields: the default's).
    ///
    /// # Errors
    /// [`DomainError::NotFound`] when there is no such user.
    async fn set_allowance(&self, user: UserId, own: Allowance) -> Result<(), DomainError>;
}
