//! [`UsageStore`] over SQL: one row per user, day and model, to which each
//! answer adds its counts. The answers that end while a write of usage is
//! under way wait for the next, which adds them all, one upsert per row.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

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
use tokio::sync::oneshot;

use super::SqlStore;
use crate::connection::{Bind, SqlText, on_backend};
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

/// A user's allowance and the tokens they used today and this month, as
/// the pieces of a kept statement (it is read before every send): binds
/// user, user, today, user, today, the month's first day.
pub(crate) const STANDING: &[&str] = &[
    "SELECT (SELECT daily_tokens FROM user_allowances WHERE user_id = ",
    ") AS daily_tokens, (SELECT monthly_tokens FROM user_allowances WHERE user_id = ",
    ") AS monthly_tokens, CAST(COALESCE(SUM(CASE WHEN day = ",
    " THEN prompt_tokens + completion_tokens ELSE 0 END), 0) AS BIGINT) AS today, \
     CAST(COALESCE(SUM(prompt_tokens + completion_tokens), 0) AS BIGINT) AS month \
     FROM usage_daily WHERE user_id = ",
    " AND day <= ",
    " AND day >= ",
    "",
];

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

/// Answers' usage waiting to be written, and whether a flush runs.
#[derive(Default)]
pub(crate) struct Pending {
    state: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    answers: Vec<(AnswerUsage, oneshot::Sender<Result<(), String>>)>,
    flushing: bool,
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One row's increments: `(user, day, model)` and its counts.
type Increment = ((String, String, String), [i64; 4]);

/// The answers' counts summed per row, the rows in key order: every
/// transaction that writes several rows locks them in the same order.
fn increments(answers: &[AnswerUsage]) -> Result<Vec<Increment>, DomainError> {
    let mut rows: BTreeMap<(String, String, String), [i64; 4]> = BTreeMap::new();
    for usage in answers {
        let key = (
            usage.user.to_string(),
            day_text(usage.at.date())?,
            usage.model.as_str().to_owned(),
        );
        let t = usage.tokens;
        let row = rows.entry(key).or_default();
        row[0] += 1;
        row[1] += i64::from(t.estimated);
        row[2] += i64::from(t.prompt_tokens);
        row[3] += i64::from(t.completion_tokens);
    }
    Ok(rows.into_iter().collect())
}

impl SqlStore {
    /// Writes what is pending, in one transaction per round, until nothing
    /// is: the answers of a user that end together add to their row once,
    /// and one flush at a time per store means the store's own writes never
    /// wait on each other for a row (one user's many answers would
    /// otherwise queue every writer on that row's lock).
    async fn flush_usage(&self) {
        loop {
            let batch = {
                let mut pending = self.usage.lock();
                if pending.answers.is_empty() {
                    pending.flushing = false;
                    return;
                }
                std::mem::take(&mut pending.answers)
            };
            let answers: Vec<AnswerUsage> = batch.iter().map(|(u, _)| u.clone()).collect();
            let mut result = match increments(&answers) {
                Ok(rows) => self.add_usage(rows).await,
                Err(e) => Err(e),
            };
            // A row of an account deleted meanwhile fails the round: each
            // row again on its own, that one dropped.
            if matches!(result, Err(DomainError::NotFound)) {
                result = Ok(());
                for usage in &answers {
                    match increments(std::slice::from_ref(usage)) {
                        Ok(rows) => match self.add_usage(rows).await {
                            Ok(()) | Err(DomainError::NotFound) => {}
                            Err(e) => result = Err(e),
                        },
                        Err(e) => result = Err(e),
                    }
                }
            }
            let answer = result.map_err(|e| e.to_string());
            for (_, done) in batch {
                let _ = done.send(answer.clone());
            }
        }
    }

    /// Adds `rows` to their rows of `usage_daily`, in one transaction.
    async fn add_usage(&self, rows: Vec<Increment>) -> Result<(), DomainError> {
        self.db
            .write(move |conn| {
                use usage_daily::dsl as u;
                for ((user, day, model), [answers, estimated, prompt, completion]) in &rows {
                    on_backend!(conn, |c| diesel::insert_into(u::usage_daily)
                        .values((
                            u::user_id.eq(user),
                            u::day.eq(day),
                            u::model.eq(model),
                            u::answers.eq(answers),
                            u::estimated_answers.eq(estimated),
                            u::prompt_tokens.eq(prompt),
                            u::completion_tokens.eq(completion),
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
                        .execute(c))?;
                }
                Ok(())
            })
            .await
    }
}

#[async_trait]
impl UsageStore for SqlStore {
    async fn standing(&self, user: UserId, today: Date) -> Result<UsageStanding, DomainError> {
        let user = user.to_string();
        let (day, first) = (day_text(today)?, day_text(month_start(today))?);
        let row: StandingRow = self
            .db
            .read(move |conn| {
                on_backend!(conn, |c| SqlText::new(
                    STANDING,
                    vec![
                        Bind::Text(&user),
                        Bind::Text(&user),
                        Bind::Text(&day),
                        Bind::Text(&user),
                        Bind::Text(&day),
                        Bind::Text(&first),
                    ],
                )
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
        let (done, written) = oneshot::channel();
        let lead = {
            let mut pending = self.usage.lock();
            pending.answers.push((usage.clone(), done));
            !std::mem::replace(&mut pending.flushing, true)
        };
        if lead {
            // Its own task: the flush outlives a caller that goes away.
            let store = self.clone();
            tokio::spawn(async move { store.flush_usage().await });
        }
        match written.await {
            Ok(result) => result.map_err(DomainError::unavailable),
            Err(_) => Err(DomainError::unavailable(
                "the usage flush ended without an answer",
            )),
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
