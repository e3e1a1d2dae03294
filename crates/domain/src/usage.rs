//! What answers cost in tokens: each answer's count, and the sums per day
//! and model a user (or an admin) reads back.

use time::{Date, Duration, OffsetDateTime};

use crate::{DomainError, Field, ModelSlug, UserId};

/// The tokens one answer took: its prompt's and its own, as the model
/// reported them or, where it did not, estimated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenUsage {
    /// Tokens of the prompt sent.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// Whether the counts are estimated ([`TokenUsage::estimate`]) rather
    /// than reported by the model.
    pub estimated: bool,
}

impl TokenUsage {
    /// Characters per token of the estimate: the usual figure for English
    /// text with the tokenizers of current models.
    pub const CHARS_PER_TOKEN: usize = 4;

    /// What the model reported.
    #[must_use]
    pub fn reported(prompt_tokens: u32, completion_tokens: u32) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            estimated: false,
        }
    }

    /// An estimate from the characters of the prompt and of the answer: one
    /// token per [`CHARS_PER_TOKEN`](Self::CHARS_PER_TOKEN), rounded up.
    #[must_use]
    pub fn estimate(prompt_chars: usize, completion_chars: usize) -> Self {
        let tokens =
            |chars: usize| u32::try_from(chars.div_ceil(Self::CHARS_PER_TOKEN)).unwrap_or(u32::MAX);
        Self {
            prompt_tokens: tokens(prompt_chars),
            completion_tokens: tokens(completion_chars),
            estimated: true,
        }
    }

    /// Both counts together.
    #[must_use]
    pub fn total(&self) -> u64 {
        u64::from(self.prompt_tokens) + u64::from(self.completion_tokens)
    }
}

/// One answer's usage, as recorded against its user, model and day (UTC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerUsage {
    /// Whose answer.
    pub user: UserId,
    /// The model that answered.
    pub model: ModelSlug,
    /// When it ended.
    pub at: OffsetDateTime,
    /// Its tokens.
    pub tokens: TokenUsage,
}

/// The tokens of one day's answers by one model: one user's, or everyone's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DailyUsage {
    /// The day (UTC).
    pub day: Date,
    /// The model.
    pub model: String,
    /// How many answers.
    pub answers: u64,
    /// How many of them were estimated ([`TokenUsage::estimated`]).
    pub estimated_answers: u64,
    /// Their prompts' tokens.
    pub prompt_tokens: u64,
    /// Their own tokens.
    pub completion_tokens: u64,
}

/// The days a usage report covers, `from` to `to` inclusive (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsagePeriod {
    from: Date,
    to: Date,
}

impl UsagePeriod {
    /// The most days one report covers.
    pub const MAX_DAYS: i64 = 366;
    /// The days a report covers when no start is given: the last 30.
    pub const DEFAULT_DAYS: i64 = 30;

    /// The period from `from` to `to` (inclusive); missing ends default to
    /// `today` and [`DEFAULT_DAYS`](Self::DEFAULT_DAYS) before the end.
    ///
    /// # Errors
    /// [`DomainError::Invalid`] on `from` when it is after `to`, or when
    /// the period is longer than [`MAX_DAYS`](Self::MAX_DAYS).
    pub fn new(from: Option<Date>, to: Option<Date>, today: Date) -> Result<Self, DomainError> {
        let to = to.unwrap_or(today);
        let from = from.unwrap_or(to - Duration::days(Self::DEFAULT_DAYS - 1));
        if from > to {
            return Err(DomainError::invalid(Field::From, "must not be after `to`"));
        }
        if (to - from).whole_days() >= Self::MAX_DAYS {
            return Err(DomainError::invalid(
                Field::From,
                "a report covers at most 366 days",
            ));
        }
        Ok(Self { from, to })
    }

    /// The first day.
    #[must_use]
    pub fn from(&self) -> Date {
        self.from
    }

    /// The last day.
    #[must_use]
    pub fn to(&self) -> Date {
        self.to
    }
}

/// Token allowances: how many tokens (prompt and completion together) a
/// user's answers may use per day and per month (UTC); `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allowance {
    /// Per day.
    pub daily: Option<u64>,
    /// Per calendar month.
    pub monthly: Option<u64>,
}

impl Allowance {
    /// What applies to a user: their `own` allowance where it sets one
    /// (0 there: no limit for them), the `default` elsewhere.
    #[must_use]
    pub fn or(own: Self, default: Self) -> Self {
        let pick = |own: Option<u64>, default: Option<u64>| match own {
            Some(0) => None,
            Some(n) => Some(n),
            None => default,
        };
        Self {
            daily: pick(own.daily, default.daily),
            monthly: pick(own.monthly, default.monthly),
        }
    }

    /// The allowance `used` has used up, if any: a send is refused once
    /// what was used reaches it (an answer that crosses it finishes; the
    /// next is refused). When both are, the one that resets later: no
    /// send passes before it.
    #[must_use]
    pub fn exhausted(&self, used: TokensUsed, now: OffsetDateTime) -> Option<Exhausted> {
        let monthly = self
            .monthly
            .filter(|limit| used.month >= *limit)
            .map(|limit| Exhausted {
                period: AllowancePeriod::Month,
                limit,
                used: used.month,
                resets_at: AllowancePeriod::Month.resets_at(now),
            });
        let daily = self
            .daily
            .filter(|limit| used.today >= *limit)
            .map(|limit| Exhausted {
                period: AllowancePeriod::Day,
                limit,
                used: used.today,
                resets_at: AllowancePeriod::Day.resets_at(now),
            });
        monthly.or(daily)
    }
}

/// The first day of the month after `day`'s.
fn next_month(day: Date) -> Date {
    let (year, month) = match day.month() {
        time::Month::December => (day.year() + 1, time::Month::January),
        other => (day.year(), other.next()),
    };
    Date::from_calendar_date(year, month, 1).unwrap_or(day)
}

/// The first day of `day`'s month.
#[must_use]
pub fn month_start(day: Date) -> Date {
    day.replace_day(1).unwrap_or(day)
}

/// Tokens a user's answers used today and this month (UTC).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokensUsed {
    /// Today's.
    pub today: u64,
    /// This calendar month's, today's included.
    pub month: u64,
}

/// Which allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllowancePeriod {
    /// The day's.
    Day,
    /// The month's.
    Month,
}

impl AllowancePeriod {
    /// When the period that holds `now` ends and the next starts: the next
    /// midnight, or the first of the next month (UTC).
    #[must_use]
    pub fn resets_at(self, now: OffsetDateTime) -> OffsetDateTime {
        let day = now.date();
        let next = match self {
            Self::Day => day.next_day(),
            Self::Month => Some(next_month(day)),
        };
        next.map_or(now, |d| d.midnight().assume_utc())
    }

    /// `day` or `month`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Month => "month",
        }
    }
}

/// An allowance used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exhausted {
    /// Which.
    pub period: AllowancePeriod,
    /// Its tokens.
    pub limit: u64,
    /// What was used of it.
    pub used: u64,
    /// When it starts again (the next day or month, UTC).
    pub resets_at: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use time::macros::date;

    use super::*;

    #[test]
    fn an_allowance_is_used_up_when_reached_and_resets_at_the_next_day_or_month() {
        let now = date!(2026 - 12 - 31)
            .with_hms(18, 30, 0)
            .unwrap()
            .assume_utc();
        let default = Allowance {
            daily: Some(100),
            monthly: Some(1_000),
        };
        let own = Allowance {
            daily: Some(50),
            monthly: None,
        };
        let allowance = Allowance::or(own, default);
        assert_eq!(allowance.daily, Some(50));
        assert_eq!(allowance.monthly, Some(1_000));
        let used = |today, month| TokensUsed { today, month };
        assert_eq!(allowance.exhausted(used(49, 900), now), None);
        let day = allowance.exhausted(used(50, 900), now).unwrap();
        assert_eq!(day.period, AllowancePeriod::Day);
        assert_eq!(day.resets_at, date!(2027 - 01 - 01).midnight().assume_utc());
        let month = allowance.exhausted(used(10, 1_000), now).unwrap();
        assert_eq!(month.period.as_str(), "month");
        // Both used up: the month's, which resets later (or as late).
        let june_3 = date!(2026 - 06 - 03).midnight().assume_utc();
        let both = allowance.exhausted(used(60, 1_000), june_3).unwrap();
        assert_eq!(both.period, AllowancePeriod::Month);
        // An own allowance of 0 is no limit for that user.
        let exempt = Allowance::or(
            Allowance {
                daily: Some(0),
                monthly: None,
            },
            default,
        );
        assert_eq!(exempt.daily, None);
        assert_eq!(exempt.monthly, Some(1_000));
        assert_eq!(
            month.resets_at,
            date!(2027 - 01 - 01).midnight().assume_utc()
        );
        let june = date!(2026 - 06 - 15).midnight().assume_utc();
        let month = allowance.exhausted(used(0, 2_000), june).unwrap();
        assert_eq!(
            month.resets_at,
            date!(2026 - 07 - 01).midnight().assume_utc()
        );
        assert_eq!(month_start(june.date()), date!(2026 - 06 - 01));
        assert_eq!(
            Allowance::default().exhausted(used(u64::MAX, u64::MAX), now),
            None
        );
    }

    #[test]
    fn an_estimate_rounds_up_and_says_so() {
        let usage = TokenUsage::estimate(9, 0);
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (3, 0));
        assert!(usage.estimated);
        assert_eq!(usage.total(), 3);
        assert!(!TokenUsage::reported(1, 2).estimated);
    }

    #[test]
    fn a_period_defaults_to_the_last_30_days_and_is_bounded() {
        let today = date!(2026 - 12 - 05);
        let p = UsagePeriod::new(None, None, today).unwrap();
        assert_eq!((p.from(), p.to()), (date!(2026 - 11 - 06), today));
        let one = UsagePeriod::new(Some(today), Some(today), today).unwrap();
        assert_eq!(one.from(), one.to());
        assert!(UsagePeriod::new(Some(date!(2026 - 12 - 06)), None, today).is_err());
        // 366 days in all at most.
        assert!(UsagePeriod::new(Some(date!(2025 - 12 - 04)), None, today).is_err());
        assert!(UsagePeriod::new(Some(date!(2025 - 12 - 05)), None, today).is_ok());
    }
}
