//! Token usage: the caller's, and an admin's view of any user's and of
//! everyone's, per day (UTC) and model.

use actix_web::{HttpResponse, web};
use confab_app::{AllowanceView, AppError};
use confab_domain::{
    Allowance, AllowancePeriod, DailyUsage, Date, DomainError, Field, OffsetDateTime, UsagePeriod,
    UserId, rfc3339,
};
use serde::{Deserialize, Serialize};
use time::macros::format_description;
use utoipa::{IntoParams, ToSchema};

use crate::ApiError;
use crate::State;
use crate::auth::{AdminUser, AuthUser};
use crate::error::ErrorBody;
use crate::extract::Json;

/// The days a report covers.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct PeriodQuery {
    /// The first day (default: 29 days before `to`). At most 366 days in
    /// all.
    #[param(schema_with = crate::fields::day)]
    from: Option<String>,
    /// The last day (default: today, UTC).
    #[param(schema_with = crate::fields::day)]
    to: Option<String>,
}

fn day(text: Option<&str>, field: Field) -> Result<Option<Date>, AppError> {
    text.map(|t| {
        Date::parse(t, format_description!("[year]-[month]-[day]"))
            .map_err(|_| DomainError::invalid(field, "must be a day, YYYY-MM-DD").into())
    })
    .transpose()
}

impl PeriodQuery {
    fn period(&self) -> Result<UsagePeriod, AppError> {
        let today = OffsetDateTime::now_utc().date();
        Ok(UsagePeriod::new(
            day(self.from.as_deref(), Field::From)?,
            day(self.to.as_deref(), Field::To)?,
            today,
        )?)
    }
}

/// Token counts: of one day and model, or of a whole report.
#[derive(Serialize, ToSchema, Default)]
pub(crate) struct UsageCounts {
    /// Answers.
    answers: u64,
    /// How many of them have estimated counts: the model reported none (a
    /// server that does not, an answer stopped or failed before its end),
    /// so each was counted as one token per 4 characters.
    estimated_answers: u64,
    /// Tokens of the prompts sent.
    prompt_tokens: u64,
    /// Tokens generated.
    completion_tokens: u64,
    /// Both.
    total_tokens: u64,
}

impl UsageCounts {
    fn add(&mut self, day: &DailyUsage) {
        self.answers += day.answers;
        self.estimated_answers += day.estimated_answers;
        self.prompt_tokens += day.prompt_tokens;
        self.completion_tokens += day.completion_tokens;
        self.total_tokens += day.prompt_tokens + day.completion_tokens;
    }
}

/// One day's use of one model.
#[derive(Serialize, ToSchema)]
pub(crate) struct UsageDay {
    /// The day (UTC), `YYYY-MM-DD`.
    #[schema(example = "2026-12-05")]
    date: String,
    /// The model.
    model: String,
    /// Its counts.
    #[serde(flatten)]
    counts: UsageCounts,
}

/// A usage report.
#[derive(Serialize, ToSchema)]
pub(crate) struct UsageReport {
    /// The first day covered.
    #[schema(example = "2026-11-06")]
    from: String,
    /// The last day covered.
    #[schema(example = "2026-12-05")]
    to: String,
    /// Each day with usage, each model on its own line, the oldest first.
    days: Vec<UsageDay>,
    /// The whole period's.
    totals: UsageCounts,
}

fn date_text(day: Date) -> Result<String, ApiError> {
    day.format(format_description!("[year]-[month]-[day]"))
        .map_err(|e| ApiError::from(AppError::Internal(e.to_string().into())))
}

fn report(period: UsagePeriod, lines: Vec<DailyUsage>) -> Result<HttpResponse, ApiError> {
    let mut totals = UsageCounts::default();
    let mut days = Vec::with_capacity(lines.len());
    for line in &lines {
        totals.add(line);
        let mut counts = UsageCounts::default();
        counts.add(line);
        days.push(UsageDay {
            date: date_text(line.day)?,
            model: line.model.clone(),
            counts,
        });
    }
    Ok(HttpResponse::Ok().json(UsageReport {
        from: date_text(period.from())?,
        to: date_text(period.to())?,
        days,
        totals,
    }))
}

/// The caller's token usage per day and model, with the period's totals.
#[utoipa::path(
    get,
    path = "/api/v1/users/me/usage",
    operation_id = "my_usage",
    tag = "users",
    params(PeriodQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The report.", body = UsageReport),
        (status = 400, description = "An unknown query parameter.", body = ErrorBody),
        (status = 401, description = "Missing, invalid or expired access token.", body = ErrorBody),
        (status = 422, description = "A day that is not `YYYY-MM-DD`, `from` after `to`, or more than 366 days (`field`: `from` or `to`).", body = ErrorBody),
        (status = 429, description = "Rate limited; see `Retry-After` and the `RateLimit` headers.", body = ErrorBody),
    ),
)]
pub(crate) async fn mine(
    state: State,
    AuthUser(caller): AuthUser,
    query: web::Query<PeriodQuery>,
) -> Result<HttpResponse, ApiError> {
    let period = query.period()?;
    let lines = state.accounts.usage(&caller, period).await?;
    report(period, lines)
}

/// A user's token usage per day and model (admins only).
#[utoipa::path(
    get,
    path = "/api/v1/admin/users/{id}/usage",
    operation_id = "user_usage",
    tag = "admin",
    params(("id" = uuid::Uuid, Path, description = "The user's id"), PeriodQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The report.", body = UsageReport),
        (status = 400, description = "An unknown query parameter.", body = ErrorBody),
        (status = 401, description = "Missing, invalid or expired access token.", body = ErrorBody),
        (status = 403, description = "The caller is not an admin.", body = ErrorBody),
        (status = 404, description = "No such user (or a malformed id).", body = ErrorBody),
        (status = 422, description = "A bad period (`field`: `from` or `to`).", body = ErrorBody),
        (status = 429, description = "Rate limited; see `Retry-After` and the `RateLimit` headers.", body = ErrorBody),
    ),
)]
pub(crate) async fn of_user(
    state: State,
    AdminUser(caller): AdminUser,
    id: web::Path<String>,
    query: web::Query<PeriodQuery>,
) -> Result<HttpResponse, ApiError> {
    let id: UserId = id.parse().map_err(|_| ApiError::not_found())?;
    let period = query.period()?;
    let lines = state.accounts.user_usage(&caller, id, period).await?;
    report(period, lines)
}

/// Everyone's token usage, summed per day and model (admins only).
#[utoipa::path(
    get,
    path = "/api/v1/admin/usage",
    operation_id = "all_usage",
    tag = "admin",
    params(PeriodQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The report.", body = UsageReport),
        (status = 400, description = "An unknown query parameter.", body = ErrorBody),
        (status = 401, description = "Missing, invalid or expired access token.", body = ErrorBody),
        (status = 403, description = "The caller is not an admin.", body = ErrorBody),
        (status = 422, description = "A bad period (`field`: `from` or `to`).", body = ErrorBody),
        (status = 429, description = "Rate limited; see `Retry-After` and the `RateLimit` headers.", body = ErrorBody),
    ),
)]
pub(crate) async fn everyone(
    state: State,
    AdminUser(caller): AdminUser,
    query: web::Query<PeriodQuery>,
) -> Result<HttpResponse, ApiError> {
    let period = query.period()?;
    let lines = state.accounts.all_usage(&caller, period).await?;
    report(period, lines)
}

/// One token allowance and what was used of it.
#[derive(Serialize, ToSchema)]
pub(crate) struct AllowancePart {
    /// Its tokens; `null`: no limit.
    limit: Option<u64>,
    /// Tokens used in it so far.
    used: u64,
    /// What is left; `null`: no limit. A send is refused at 0.
    remaining: Option<u64>,
    /// When it starts again (RFC 3339, UTC).
    #[schema(example = "2026-12-06T00:00:00Z")]
    resets_at: String,
}

/// An allowance an admin sets for one user: a number of tokens, 0 for no
/// limit, or `null` (or left out) for the configured default.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct OwnAllowance {
    /// Tokens per day (UTC).
    #[schema(minimum = 0, maximum = 9_223_372_036_854_775_807_u64)]
    daily_tokens: Option<u64>,
    /// Tokens per calendar month (UTC).
    #[schema(minimum = 0, maximum = 9_223_372_036_854_775_807_u64)]
    monthly_tokens: Option<u64>,
}

impl OwnAllowance {
    /// The allowance, each number at most what the database holds.
    fn allowance(&self) -> Result<Allowance, AppError> {
        let bounded = |n: Option<u64>, field: Field| match n {
            Some(n) if i64::try_from(n).is_err() => Err(AppError::from(DomainError::invalid(
                field,
                "must be at most 9223372036854775807",
            ))),
            other => Ok(other),
        };
        Ok(Allowance {
            daily: bounded(self.daily_tokens, Field::DailyTokens)?,
            monthly: bounded(self.monthly_tokens, Field::MonthlyTokens)?,
        })
    }
}

/// A user's token allowances: per day and per month.
#[derive(Serialize, ToSchema)]
pub(crate) struct AllowanceBody {
    /// Today's.
    daily: AllowancePart,
    /// This month's.
    monthly: AllowancePart,
    /// What an admin set for this user (`null` fields: the default).
    own: OwnAllowance,
}

fn allowance_body(view: &AllowanceView) -> Result<AllowanceBody, ApiError> {
    let part = |limit: Option<u64>, used: u64, period: AllowancePeriod| {
        Ok::<_, ApiError>(AllowancePart {
            limit,
            used,
            remaining: limit.map(|l| l.saturating_sub(used)),
            resets_at: rfc3339(period.resets_at(view.at)).map_err(AppError::from)?,
        })
    };
    Ok(AllowanceBody {
        daily: part(view.effective.daily, view.used.today, AllowancePeriod::Day)?,
        monthly: part(
            view.effective.monthly,
            view.used.month,
            AllowancePeriod::Month,
        )?,
        own: OwnAllowance {
            daily_tokens: view.own.daily,
            monthly_tokens: view.own.monthly,
        },
    })
}

/// The caller's token allowances, per day and per month, and what is left
/// of them.
#[utoipa::path(
    get,
    path = "/api/v1/users/me/allowance",
    operation_id = "my_allowance",
    tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The allowances.", body = AllowanceBody),
        (status = 401, description = "Missing, invalid or expired access token.", body = ErrorBody),
        (status = 429, description = "Rate limited; see `Retry-After` and the `RateLimit` headers.", body = ErrorBody),
    ),
)]
pub(crate) async fn my_allowance(
    state: State,
    AuthUser(caller): AuthUser,
) -> Result<HttpResponse, ApiError> {
    let view = state.conversations.allowance(caller.user_id).await?;
    Ok(HttpResponse::Ok().json(allowance_body(&view)?))
}

/// Sets one user's own token allowances (admins only); `null` leaves the
/// configured default to apply.
#[utoipa::path(
    put,
    path = "/api/v1/admin/users/{id}/allowance",
    operation_id = "set_allowance",
    tag = "admin",
    params(("id" = uuid::Uuid, Path, description = "The user's id")),
    request_body = OwnAllowance,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The user's allowances now.", body = AllowanceBody),
        (status = 400, description = "A malformed body.", body = ErrorBody),
        (status = 401, description = "Missing, invalid or expired access token.", body = ErrorBody),
        (status = 403, description = "The caller is not an admin.", body = ErrorBody),
        (status = 404, description = "No such user (or a malformed id).", body = ErrorBody),
        (status = 413, description = "The body is too large.", body = ErrorBody),
        (status = 415, description = "The body is not JSON.", body = ErrorBody),
        (status = 422, description = "A negative number, or one above 2^63 - 1 (`field`: `daily_tokens` or `monthly_tokens`).", body = ErrorBody),
        (status = 429, description = "Rate limited; see `Retry-After` and the `RateLimit` headers.", body = ErrorBody),
    ),
)]
pub(crate) async fn set_allowance(
    state: State,
    AdminUser(caller): AdminUser,
    id: web::Path<String>,
    Json(body): Json<OwnAllowance>,
) -> Result<HttpResponse, ApiError> {
    let id: UserId = id.parse().map_err(|_| ApiError::not_found())?;
    let own = body.allowance()?;
    let view = state.conversations.set_allowance(&caller, id, own).await?;
    Ok(HttpResponse::Ok().json(allowance_body(&view)?))
}
