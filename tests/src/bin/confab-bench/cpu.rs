//! CPU time by component, read from the kernel's run-time counters
//! (`/proc/<pid>/task/<tid>/schedstat`: nanoseconds on a CPU, per thread).
//!
//! In this process, a thread's name says whose it is: the server's request
//! workers (actix's), its runtime (`confab-rt`, named by the harness: the
//! Redis client's tasks, timers, the blocking pool), its database threads,
//! the load generator (`bench-load`, this binary's runtime) and the
//! upstream (`fake-llm`). The PostgreSQL and Redis servers are other
//! processes, found by name; nothing else on the machine is counted.

use std::collections::BTreeMap;

/// The components, in the tables' order.
pub(super) const COMPONENTS: [&str; 8] = [
    "Confab workers",
    "Confab runtime",
    "Confab database threads",
    "PostgreSQL",
    "Redis",
    "upstream",
    "load generator",
    "other",
];

/// The component of a thread of this process, by its name.
fn own_thread(name: &str) -> &'static str {
    if name.starts_with("actix-") {
        "Confab workers"
    } else if name.starts_with("confab-rt") {
        "Confab runtime"
    } else if name.starts_with("confab-db-") {
        "Confab database threads"
    } else if name.starts_with("fake-llm") {
        "upstream"
    } else if name.starts_with("bench-load") {
        "load generator"
    } else {
        "other"
    }
}

/// The component of another process, by its name, when it is counted.
fn server(name: &str) -> Option<&'static str> {
    match name {
        "postgres" => Some("PostgreSQL"),
        "redis-server" => Some("Redis"),
        _ => None,
    }
}

/// Nanoseconds on a CPU so far, by component.
#[derive(Default)]
pub(super) struct Snapshot(BTreeMap<&'static str, u64>);

/// The name of `/proc/<pid>` or of one of its threads (`comm`).
fn comm(dir: &std::path::Path) -> Option<String> {
    std::fs::read_to_string(dir.join("comm"))
        .ok()
        .map(|s| s.trim_end().to_owned())
}

/// The run time of a thread or a process's leader, in ns.
fn run_time(dir: &std::path::Path) -> u64 {
    std::fs::read_to_string(dir.join("schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The name and run time of every thread of the process at `dir`.
fn threads_of(dir: &std::path::Path) -> impl Iterator<Item = (Option<String>, u64)> {
    std::fs::read_dir(dir.join("task"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|task| (comm(&task.path()), run_time(&task.path())))
}

/// Reads every counter now.
pub(super) fn snapshot() -> Snapshot {
    let mut by = BTreeMap::new();
    let me = std::process::id().to_string();
    for (name, ns) in threads_of(std::path::Path::new("/proc/self")) {
        *by.entry(own_thread(name.as_deref().unwrap_or("")))
            .or_default() += ns;
    }
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name.to_str() else {
            continue;
        };
        if pid == me || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let dir = entry.path();
        let Some(component) = comm(&dir).as_deref().and_then(server) else {
            continue;
        };
        for (_, ns) in threads_of(&dir) {
            *by.entry(component).or_default() += ns;
        }
    }
    Snapshot(by)
}

/// Microseconds on a CPU per `units`, by component, between two snapshots
/// (a server process that ended meanwhile counts nothing).
pub(super) fn per_unit(
    before: &Snapshot,
    after: &Snapshot,
    units: usize,
) -> BTreeMap<&'static str, f64> {
    let units = units.max(1) as f64;
    COMPONENTS
        .iter()
        .map(|&c| {
            let (b, a) = (
                before.0.get(c).copied().unwrap_or(0),
                after.0.get(c).copied().unwrap_or(0),
            );
            (c, a.saturating_sub(b) as f64 / 1_000.0 / units)
        })
        .collect()
}
