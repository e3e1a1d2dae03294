//! Log lines gathered in memory and written by a thread of their own.
//!
//! Written straight to stderr, every log line is a `write` system call on
//! the request's worker, one per request for the access line alone
//! (docs/adr/0005, eleventh pass, for what it cost). Here a
//! line is copied into a shared buffer under a lock, and a writer thread,
//! woken when the buffer stops being empty, waits [`GATHER`] for the lines
//! of the same burst and writes them all in one call. A line reaches
//! stderr within a few milliseconds; under load the system calls drop from
//! one per line to one per [`GATHER`]. Lines are never dropped: past
//! [`MAX_PENDING_BYTES`] waiting, the line's own thread writes what waits
//! itself (so a stalled stderr slows logging rather than growing memory),
//! and [`LogSink::flush`] writes what waits at once (at exit, after a
//! panic's line).

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long the writer waits, once woken, for more lines of the same
/// burst.
const GATHER: Duration = Duration::from_millis(5);
/// The most bytes waiting before the logging thread writes them itself.
const MAX_PENDING_BYTES: usize = 1 << 20;

/// Where the lines go (stderr in the binary).
type Target = Box<dyn Write + Send>;

/// A [`MakeWriter`] whose lines are written in batches by a thread of its
/// own. Cloning shares the buffer and the thread.
#[derive(Clone)]
pub struct LogSink {
    shared: Arc<Shared>,
}

struct Shared {
    /// Lines waiting, whole, in the order they were logged.
    pending: Mutex<Vec<u8>>,
    /// Signalled when `pending` stops being empty.
    not_empty: Condvar,
    /// The target; held while writing, so batches never interleave.
    target: Mutex<Target>,
}

impl LogSink {
    /// A sink writing to `target`, with its writer thread started.
    ///
    /// # Errors
    /// The thread could not be spawned.
    pub fn start(target: Target) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Vec::new()),
            not_empty: Condvar::new(),
            target: Mutex::new(target),
        });
        let writer = Arc::clone(&shared);
        thread::Builder::new()
            .name("confab-log".to_owned())
            .spawn(move || writer.run())?;
        Ok(Self { shared })
    }

    /// Writes every line waiting, now.
    pub fn flush(&self) {
        let mut target = lock(&self.shared.target);
        let batch = std::mem::take(&mut *lock(&self.shared.pending));
        write(&mut target, &batch);
    }
}

impl Shared {
    /// The writer thread: sleeps until lines wait, lets the burst gather,
    /// writes it.
    fn run(&self) {
        let mut spare = Vec::new();
        loop {
            {
                let mut pending = lock(&self.pending);
                while pending.is_empty() {
                    pending = self
                        .not_empty
                        .wait(pending)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
            thread::sleep(GATHER);
            // The target first, the lines then: a batch taken is written
            // before any taken after it. Swapped for last time's emptied
            // buffer: no allocation.
            let mut target = lock(&self.target);
            std::mem::swap(&mut *lock(&self.pending), &mut spare);
            write(&mut target, &spare);
            drop(target);
            spare.clear();
        }
    }

    /// Queues one whole line (or writes what waits, past the bound).
    fn push(&self, line: &[u8]) {
        let mut pending = lock(&self.pending);
        if pending.len() + line.len() > MAX_PENDING_BYTES {
            // Locks in the writer's order (target, then lines): what waits
            // goes first, this line after it.
            drop(pending);
            let mut target = lock(&self.target);
            let mut batch = std::mem::take(&mut *lock(&self.pending));
            batch.extend_from_slice(line);
            write(&mut target, &batch);
            return;
        }
        let was_empty = pending.is_empty();
        pending.extend_from_slice(line);
        drop(pending);
        if was_empty {
            self.not_empty.notify_one();
        }
    }
}

/// Writes `batch` to the target; a failed write is lost, as a direct write
/// to stderr would be (there is nowhere to report it).
fn write(target: &mut Target, batch: &[u8]) {
    if batch.is_empty() {
        return;
    }
    let _ = target.write_all(batch);
    let _ = target.flush();
}

/// A mutex's guard, poisoned or not: a panic while logging must not stop
/// the logs.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One event's writer: tracing's formatter writes the whole line in one
/// `write_all`, and it is queued whole.
pub struct LineWriter<'a> {
    shared: &'a Shared,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.shared.push(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogSink {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A target the test can read.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            lock(&self.0).extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(lock(&self.0).clone()).unwrap()
        }
    }

    #[test]
    fn lines_from_many_threads_arrive_whole_and_in_each_threads_order() {
        let target = Captured::default();
        let sink = LogSink::start(Box::new(target.clone())).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let sink = sink.clone();
                thread::spawn(move || {
                    for i in 0..2000 {
                        let mut writer = sink.make_writer();
                        // Long lines too, so the bound is crossed.
                        let pad = "x".repeat(if i % 100 == 0 { 40_000 } else { 10 });
                        writer
                            .write_all(format!("{t} {i} {pad}\n").as_bytes())
                            .unwrap();
                    }
                })
            })
            .collect();
        for handle in threads {
            handle.join().unwrap();
        }
        sink.flush();
        let text = target.text();
        let mut next = [0_u32; 8];
        for line in text.lines() {
            let mut parts = line.split(' ');
            let t: usize = parts.next().unwrap().parse().unwrap();
            let i: u32 = parts.next().unwrap().parse().unwrap();
            let pad = parts.next().unwrap();
            assert_eq!(i, next[t], "thread {t}'s lines out of order or lost");
            assert_eq!(pad.len(), if i.is_multiple_of(100) { 40_000 } else { 10 });
            next[t] += 1;
        }
        assert_eq!(next, [2000; 8]);
    }

    #[test]
    fn past_the_bound_the_logging_thread_writes_what_waits_in_order() {
        // No writer thread: only the bound can write.
        let target = Captured::default();
        let shared = Shared {
            pending: Mutex::new(Vec::new()),
            not_empty: Condvar::new(),
            target: Mutex::new(Box::new(target.clone())),
        };
        let first = format!("{}\n", "a".repeat(MAX_PENDING_BYTES / 2 - 1));
        let second = format!("{}\n", "b".repeat(MAX_PENDING_BYTES / 2 - 1));
        shared.push(first.as_bytes());
        shared.push(second.as_bytes());
        assert!(target.text().is_empty(), "written before the bound");
        shared.push(b"third\n");
        assert_eq!(target.text(), format!("{first}{second}third\n"));
        assert!(lock(&shared.pending).is_empty());
    }

    #[test]
    fn a_line_reaches_the_target_without_a_flush() {
        let target = Captured::default();
        let sink = LogSink::start(Box::new(target.clone())).unwrap();
        sink.make_writer().write_all(b"one line\n").unwrap();
        // The writer thread writes it within its gathering pause.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while target.text().is_empty() {
            assert!(std::time::Instant::now() < deadline, "never written");
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(target.text(), "one line\n");
    }
}
