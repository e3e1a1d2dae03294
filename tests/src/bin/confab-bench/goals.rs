//! Issue 13's goals table: each performance goal beside this run's figure
//! from the section that measures it, and whether it is met. A goal whose
//! section (or set-up, or level) was not run says "not measured".

use std::fmt::Write as _;

use super::relay::{Level, SetUp};
use super::{density, list, thousands, throughput};

/// The sections' results the table reads; `None` for a section not run.
#[derive(Default, Clone, Copy)]
pub(super) struct Measured<'a> {
    /// The relay section's levels.
    pub(super) relay: Option<&'a [Level]>,
    /// The cached-list section's rows.
    pub(super) list: Option<&'a [list::Row]>,
    /// The sends-per-second section's rows.
    pub(super) throughput: Option<&'a [throughput::Row]>,
    /// The stream-density section's report.
    pub(super) density: Option<&'a density::Report>,
}

/// One row: the goal, where, the target, the figure, whether met.
struct Goal {
    /// What is measured.
    what: String,
    /// The set-up or size it is measured on.
    on: String,
    /// The target.
    target: String,
    /// This run's figure, or "not measured".
    figure: String,
    /// `Some(met)`, or `None` when not measured or without a threshold.
    met: Option<bool>,
}

impl Goal {
    /// A goal this run has no figure for.
    fn not_measured(what: &str, on: &str, target: &str) -> Self {
        Self {
            what: what.to_owned(),
            on: on.to_owned(),
            target: target.to_owned(),
            figure: "not measured".to_owned(),
            met: None,
        }
    }
}

/// The relay's direct and Confab figures at `concurrency` on `setup`.
fn relay_pair(
    levels: &[Level],
    concurrency: usize,
    setup: SetUp,
) -> Option<(&super::relay::Figures, &super::relay::Figures)> {
    let (direct, confabs) = levels
        .iter()
        .find(|(direct, _)| direct.concurrency() == concurrency)?;
    let (_, confab) = confabs.iter().find(|(s, _)| *s == setup)?;
    Some((direct, confab))
}

/// A note when not every stream of `figures` completed.
fn incomplete(figures: &[&super::relay::Figures]) -> String {
    let failed: Vec<&str> = figures
        .iter()
        .filter(|f| !f.all_ok())
        .map(|f| f.outcomes())
        .collect();
    if failed.is_empty() {
        String::new()
    } else {
        format!(" (not every stream completed: {})", failed.join("; "))
    }
}

/// The relay's goals: first delta and per-delta added latency.
fn relay_goals(levels: Option<&[Level]>, goals: &mut Vec<Goal>) {
    for (concurrency, limit) in [(100, 5.0), (1000, 50.0)] {
        for setup in [SetUp::Sqlite, SetUp::PostgresRedis] {
            let what = format!(
                "first delta added over the upstream, p99, {} sends at once",
                thousands(concurrency)
            );
            let target = format!("≤ {limit} ms");
            let pair = levels.and_then(|l| relay_pair(l, concurrency, setup));
            goals.push(match pair {
                None => Goal::not_measured(&what, setup.name(), &target),
                Some((direct, confab)) => {
                    let added = confab.first_p99() - direct.first_p99();
                    Goal {
                        figure: format!(
                            "{added:+.3} ms ({:.3} through Confab − {:.3} direct){}",
                            confab.first_p99(),
                            direct.first_p99(),
                            incomplete(&[direct, confab])
                        ),
                        met: Some(added <= limit),
                        ..Goal::not_measured(&what, setup.name(), &target)
                    }
                }
            });
        }
    }
    let what = "per-delta added latency, p99, 100 streams";
    for setup in SetUp::ALL {
        let pair = levels.and_then(|l| relay_pair(l, 100, setup));
        goals.push(match pair {
            None => Goal::not_measured(what, setup.name(), "≤ 2 ms"),
            Some((direct, confab)) => {
                let added = confab.delta_p99() - direct.delta_p99();
                Goal {
                    figure: format!(
                        "{added:+.3} ms ({:.3} through Confab − {:.3} direct){}",
                        confab.delta_p99(),
                        direct.delta_p99(),
                        incomplete(&[direct, confab])
                    ),
                    met: Some(added <= 2.0),
                    ..Goal::not_measured(what, setup.name(), "≤ 2 ms")
                }
            }
        });
    }
    let what = "per-delta latency, p99, 1,000 streams";
    let on = "PostgreSQL + Redis vs SQLite";
    let target = "no worse than SQLite's";
    let pairs = levels.and_then(|l| {
        Some((
            relay_pair(l, 1000, SetUp::PostgresRedis)?,
            relay_pair(l, 1000, SetUp::Sqlite)?,
        ))
    });
    goals.push(match pairs {
        None => Goal::not_measured(what, on, target),
        Some(((direct, redis), (_, sqlite))) => Goal {
            figure: format!(
                "{:.3} ms vs {:.3} ms ({:+.3}){}",
                redis.delta_p99(),
                sqlite.delta_p99(),
                redis.delta_p99() - sqlite.delta_p99(),
                incomplete(&[direct, redis, sqlite])
            ),
            met: Some(redis.delta_p99() <= sqlite.delta_p99()),
            ..Goal::not_measured(what, on, target)
        },
    });
}

/// The cached list's goals.
fn list_goals(rows: Option<&[list::Row]>, goals: &mut Vec<Goal>) {
    let what = "cached conversation list, req/s, as a share of /healthz's";
    let target = format!("≥ {:.0} %", list::GOAL_PERCENT);
    for (setup, on) in [
        (SetUp::Sqlite, "in-process state (SQLite)"),
        (SetUp::PostgresRedis, "Redis (PostgreSQL + Redis)"),
    ] {
        let row = rows.and_then(|rows| rows.iter().find(|r| r.setup == setup));
        goals.push(match row {
            None => Goal::not_measured(what, on, &target),
            Some(row) => {
                let (healthz, listed) = row.rates();
                let ok = row.list_all_ok();
                Goal {
                    figure: format!(
                        "{:.0} % ({listed:.0} vs {healthz:.0} req/s){}",
                        row.percent(),
                        if ok {
                            ""
                        } else {
                            " (not every list read was a 200)"
                        }
                    ),
                    met: Some(ok && row.percent() >= list::GOAL_PERCENT),
                    ..Goal::not_measured(what, on, &target)
                }
            }
        });
    }
}

/// The stream-density goals: streams per GB, idle memory.
fn density_goals(report: Option<&density::Report>, goals: &mut Vec<Goal>) {
    let what = "open streams per GB of resident memory";
    let target = format!("≥ {}", thousands(density::GOAL_STREAMS_PER_GB as usize));
    match report.map(|r| r.rows.as_slice()) {
        None | Some([]) => goals.push(Goal::not_measured(what, "held streams", &target)),
        Some(rows) => {
            for row in rows {
                let on = format!("{} held streams", thousands(row.streams));
                let note = if row.all_open() {
                    ""
                } else {
                    " (not every stream stayed open)"
                };
                goals.push(match row.per_gb() {
                    None => Goal::not_measured(what, &on, &target),
                    Some(per_gb) => Goal {
                        figure: format!("{}{note}", thousands(per_gb.round() as usize)),
                        met: Some(per_gb >= density::GOAL_STREAMS_PER_GB),
                        ..Goal::not_measured(what, &on, &target)
                    },
                });
            }
        }
    }
    let what = "resident memory of an idle server, no model";
    let target = format!("≤ {:.0} MB", density::GOAL_IDLE_MB);
    goals.push(match report.and_then(density::Report::idle_mb) {
        None => Goal::not_measured(what, "SQLite, in-process state", &target),
        Some(mb) => Goal {
            figure: format!("{mb:.1} MB"),
            met: Some(mb <= density::GOAL_IDLE_MB),
            ..Goal::not_measured(what, "SQLite, in-process state", &target)
        },
    });
}

/// The sends-per-second figures (reported, no threshold).
fn throughput_goals(rows: Option<&[throughput::Row]>, goals: &mut Vec<Goal>) {
    let what = "whole sends per second, instant model, by clients at once";
    for setup in SetUp::ALL {
        let figures: Vec<String> = rows
            .unwrap_or_default()
            .iter()
            .filter(|r| r.setup == setup)
            .map(|r| format!("{}: {:.0}", r.concurrency, r.rate()))
            .collect();
        // PostgreSQL + Redis is measured when chosen, but not a goal.
        if figures.is_empty() && setup == SetUp::PostgresRedis {
            continue;
        }
        goals.push(if figures.is_empty() {
            Goal::not_measured(what, setup.name(), "reported")
        } else {
            Goal {
                figure: figures.join(", "),
                ..Goal::not_measured(what, setup.name(), "reported")
            }
        });
    }
}

/// Appends the goals table to `md`.
pub(super) fn write_markdown(md: &mut String, measured: &Measured<'_>) {
    let mut goals = Vec::new();
    relay_goals(measured.relay, &mut goals);
    list_goals(measured.list, &mut goals);
    density_goals(measured.density, &mut goals);
    throughput_goals(measured.throughput, &mut goals);
    md.push_str(
        "
## Goals (issue 13)

Each goal beside this run's figure; the sections below give the method.
\"Added\" latency is the relay section's Confab percentile minus the direct
path's at the same concurrency (first delta: from the send; per delta: from
the upstream's write). Streams per GB and MB are decimal (10^9, 10^6 bytes).
One run on a shared machine: a figure near its goal can fall either side of it
from run to run.

| goal | on | target | this run | met |
|---|---|---|---|---|
",
    );
    for g in &goals {
        let met = match g.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {met} |",
            g.what, g.on, g.target, g.figure
        );
    }
}
