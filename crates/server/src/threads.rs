//! The built-in model's thread count, which candle takes from the
//! environment.

use std::os::unix::process::CommandExt;

/// The variables candle sizes its compute pool from, once per process
/// (`CANDLE_NUM_THREADS`), and reads at every f32 matrix product, counting
/// the physical cores from `/proc/cpuinfo` each time when it is unset
/// (`RAYON_NUM_THREADS`).
const MODEL_THREAD_VARS: [&str; 2] = ["CANDLE_NUM_THREADS", "RAYON_NUM_THREADS"];

/// Makes this process run the built-in model on `threads` threads (0: the
/// count `CANDLE_NUM_THREADS` names, else the physical cores).
///
/// candle reads the count from the environment, and changing this
/// process's environment would need `unsafe`, so when the variables don't
/// say it already, the process replaces itself (same pid, same arguments)
/// with them set; the replacement finds them set and goes on. Call it
/// first thing in `main`, before any thread starts. Returns only when
/// there was nothing to do (`None`) or the replacement failed (why).
#[must_use]
pub fn with_model_threads(threads: usize) -> Option<std::io::Error> {
    let threads = match threads {
        0 => std::env::var("CANDLE_NUM_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n: &usize| n > 0)
            .unwrap_or_else(confab_llm::default_threads),
        n => n,
    };
    let wanted = threads.to_string();
    if MODEL_THREAD_VARS
        .iter()
        .all(|var| std::env::var_os(var).is_some_and(|v| v == wanted.as_str()))
    {
        return None;
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return Some(e),
    };
    let mut command = std::process::Command::new(exe);
    command.args(std::env::args_os().skip(1));
    for var in MODEL_THREAD_VARS {
        command.env(var, &wanted);
    }
    Some(command.exec())
}
