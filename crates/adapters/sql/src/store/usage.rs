//! [`UsageStore`] over SQL: one row per user, day and model, to which each
//! answer adds its counts in one upsert.

use async_trait::async_trait;
use confab_domain::{
    Allowance, AnswerUsage, DailyUsage, Date, DomainError, TokensUsed, UsagePeriod, UserId,
    month_start,
};
use confab_ports::{UsageStanding, UsageStore};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::upsert::excluded;
use time::format_description::well_known::Iso8601;
use time::macros::format_description;

use super::SqlStore;
use crate::connection::on_backend;
use crate::schema::{usage_daily, user_allowances};

/// A day as stored: `YYYY-MM-DD`, which sorts as the days do.
fn day_text(day: Date) -> Result<String, DomainError> {
    day.format(format_description!("[year]-[month]-[day]"))
        .map_err(DomainError::internal)
}

fn parse_day(text: &str) -> Result<Date, DomainError> {
    Date::parse(text, &Iso8601::DATE).map_err(DomainError::internal)
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// One line of a report, as read.
#[derive(QueryableByName)]
struct UsageRow {
    #[diesel(sql_type = Text)]
    day: String,
    #[diesel(sql_type = Text)]
    model: String,
    #[diesel(sql_type = BigInt)]
    answers: i64,
    #[diesel(sql_type = BigInt)]
    estimated_answers: i64,
    #[diesel(sql_type = BigInt)]
    prompt_tokens: i64,
    #[diesel(sql_type = BigInt)]
    completion_tokens: i64,
}

impl UsageRow {
    fn into_daily(self) -> Result<DailyUsage, DomainError> {
        Ok(DailyUsage {
            day: parse_day(&self.day)?,
            model: self.model,
            answers: count(self.answers),
            estimated_answers: count(self.estimated_answers),
            prompt_tokens: count(self.prompt_tokens),
            completion_tokens: count(self.completion_tokens),
        })
    }
}

/// One user's lines: `$1` user, `$2` first day, `$3` last day.
const ONE_USER: &str = "SELECT day, model, answers, estimated_answers, prompt_tokens, \
    completion_tokens FROM usage_daily WHERE user_id = $1 AND day >= $2 AND day <= $3 \
    ORDER BY day, model";

/// Everyone's lines summed: `$1` first day, `$2` last day.
const EVERYONE: &str = "SELECT day, model, CAST(SUM(answers) AS BIGINT) AS answers, \
    CAST(SUM(estimated_answers) AS BIGINT) AS estimated_answers, \
    CAST(SUM(prompt_tokens) AS BIGINT) AS prompt_tokens, \
    CAST(SUM(completion_tokens) AS BIGINT) AS completion_tokens \
    FROM usage_daily WHERE day >= $1 AND day <= $2 GROUP BY day, model ORDER BY day, model";

/// A user's allowance and use: `$1` user, `$2` today, `$3` its month's
/// first day.
const STANDING: &str = "SELECT \
    (SELECT daily_tokens FROM user_allowances WHERE user_id = $1) AS daily_tokens, \
    (SELECT monthly_tokens FROM user_allowances WHERE user_id = $1) AS monthly_tokens, \
    CAST(COALESCE(SUM(CASE WHEN day = $2 THEN prompt_tokens + completion_tokens ELSE 0 END), 0) \
        AS BIGINT) AS today, \
    CAST(COALESCE(SUM(prompt_tokens + completion_tokens), 0) AS BIGINT) AS month \
    FROM usage_daily WHERE user_id = $1 AND day <= $2 AND day >= $3";

#[derive(QueryableByName)]
struct StandingRow {
    #[diesel(sql_type = Nullable<BigInt>)]
    daily_tokens: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    monthly_tokens: Option<i64>,
    #[diesel(sql_type = BigInt)]
    today: i64,
    #[diesel(sql_type = BigInt)]
    month: i64,
}

fn allowance_count(n: Option<u64>) -> Option<i64> {
    n.map(|n| i64::try_from(n).unwrap_or(i64::MAX))
}

#[async_trait]
impl UsageStore for SqlStore {
    async fn standing(&self, user: UserId, today: Date) -> Result<UsageStanding, DomainError> {
        let user = user.to_string();
        let (day, first) = (day_text(today)?, day_text(month_start(today))?);
        let row: StandingRow = self
            .db
            .read(move |conn| {
                on_backend!(conn, |c| diesel::sql_query(STANDING)
                    .bind::<Text, _>(&user)
                    .bind::<Text, _>(&day)
                    .bind::<Text, _>(&first)
                    .get_result(c))
            })
            .await?;
        Ok(UsageStanding {
            own: Allowance {
                daily: row.daily_tokens.map(count),
                monthly: row.monthly_tokens.map(count),
            },
            used: TokensUsed {
                today: count(row.today),
                month: count(row.month),
            },
        })
    }

    async fn set_allowance(&self, user: UserId, own: Allowance) -> Result<(), DomainError> {
        let user = user.to_string();
        let (daily, monthly) = (allowance_count(own.daily), allowance_count(own.monthly));
        self.db
            .write(move |conn| {
                use user_allowances::dsl as a;
                on_backend!(conn, |c| diesel::insert_into(a::user_allowances)
                    .values((
                        a::user_id.eq(&user),
                        a::daily_tokens.eq(daily),
                        a::monthly_tokens.eq(monthly),
                    ))
                    .on_conflict(a::user_id)
                    .do_update()
                    .set((a::daily_tokens.eq(daily), a::monthly_tokens.eq(monthly)))
                    .execute(c))
            })
            .await?;
        Ok(())
    }

    async fn record(&self, usage: &AnswerUsage) -> Result<(), DomainError> {
        let user = usage.user.to_string();
        let day = day_text(usage.at.date())?;
        let model = usage.model.as_str().to_owned();
        let tokens = usage.tokens;
        let estimated = i64::from(tokens.estimated);
        let written = self
            .db
            .write(move |conn| {
                use usage_daily::dsl as u;
                on_backend!(conn, |c| diesel::insert_into(u::usage_daily)
                    .values((
                        u::user_id.eq(&user),
                        u::day.eq(&day),
                        u::model.eq(&model),
                        u::answers.eq(1_i64),
                        u::estimated_answers.eq(estimated),
                        u::prompt_tokens.eq(i64::from(tokens.prompt_tokens)),
                        u::completion_tokens.eq(i64::from(tokens.completion_tokens)),
                    ))
                    .on_conflict((u::user_id, u::day, u::model))
                    .do_update()
                    .set((
                        u::answers.eq(u::answers + excluded(u::answers)),
                        u::estimated_answers
                            .eq(u::estimated_answers + excluded(u::estimated_answers)),
                        u::prompt_tokens.eq(u::prompt_tokens + excluded(u::prompt_tokens)),
                        u::completion_tokens
                            .eq(u::completion_tokens + excluded(u::completion_tokens)),
                    ))
                    .execute(c))
            })
            .await;
        match written {
            // The account was deleted meanwhile: its usage went with it.
            Ok(_) | Err(DomainError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn daily(
        &self,
        user: Option<UserId>,
        period: UsagePeriod,
    ) -> Result<Vec<DailyUsage>, DomainError> {
        let (from, to) = (day_text(period.from())?, day_text(period.to())?);
        let user = user.map(|u| u.to_string());
        let rows: Vec<UsageRow> = self
            .db
            .read(move |conn| match &user {
                Some(user) => on_backend!(conn, |c| diesel::sql_query(ONE_USER)
                    .bind::<Text, _>(user)
                    .bind::<Text, _>(&from)
                    .bind::<Text, _>(&to)
                    .load(c)),
                None => on_backend!(conn, |c| diesel::sql_query(EVERYONE)
                    .bind::<Text, _>(&from)
                    .bind::<Text, _>(&to)
                    .load(c)),
            })
            .await?;
        rows.into_iter().map(UsageRow::into_daily).collect()
    }
}
