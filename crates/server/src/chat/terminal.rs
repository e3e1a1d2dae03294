//! The terminal side of `confab chat`: the password (never echoed, never
//! printed), the lines typed, the spinner, and what is written.

use std::io::{BufRead, IsTerminal, Write};

use tokio::sync::mpsc;

/// The environment variable a password may come from.
const PASSWORD_VAR: &str = "CONFAB_PASSWORD";

/// The frames of the spinner shown until an answer's first text.
const SPINNER: [char; 4] = ['|', '/', '-', '\\'];

/// The password: `CONFAB_PASSWORD`, else read from the terminal without
/// echo, else (stdin is not a terminal) the first line of stdin.
pub(crate) fn password() -> Result<String, String> {
    if let Ok(password) = std::env::var(PASSWORD_VAR) {
        return Ok(password);
    }
    let stdin = std::io::stdin();
    let mut line = String::new();
    if stdin.is_terminal() {
        let mut err = std::io::stderr();
        let _ = write!(err, "Password: ");
        let _ = err.flush();
        read_silently(&stdin, &mut line)?;
        let _ = writeln!(err);
    } else {
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
    }
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        return Err(format!(
            "no password: set {PASSWORD_VAR} or type it when asked"
        ));
    }
    Ok(password)
}

/// Reads one line from the terminal with its echo off, restoring the
/// terminal's settings afterwards.
fn read_silently(stdin: &std::io::Stdin, line: &mut String) -> Result<(), String> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let original = tcgetattr(stdin).map_err(|e| format!("cannot read the terminal's mode: {e}"))?;
    let mut silent = original.clone();
    silent.local_modes.remove(LocalModes::ECHO);
    tcsetattr(stdin, OptionalActions::Now, &silent)
        .map_err(|e| format!("cannot turn the terminal's echo off: {e}"))?;
    let read = stdin.lock().read_line(line);
    let restored = tcsetattr(stdin, OptionalActions::Now, &original);
    read.map_err(|e| format!("cannot read the password: {e}"))?;
    restored.map_err(|e| format!("cannot restore the terminal's echo: {e}"))
}

/// The lines of stdin, read on a thread of their own (a read blocked on
/// the terminal must not hold the runtime up when the program ends); the
/// channel closes at the end of input.
pub(crate) fn lines() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// What the chat writes: answers and notes to stdout, the spinner and the
/// prompt only when stdout (or stdin, for the prompt) is a terminal.
pub(crate) struct Screen {
    spinning: Option<usize>,
    interactive: bool,
    typing: bool,
}

impl Screen {
    pub(crate) fn new() -> Self {
        Self {
            spinning: None,
            interactive: std::io::stdout().is_terminal(),
            typing: std::io::stdin().is_terminal(),
        }
    }

    /// Whether a spinner is worth drawing.
    pub(crate) fn interactive(&self) -> bool {
        self.interactive
    }

    /// Writes `text` as it is (a piece of an answer), at once.
    pub(crate) fn write(&mut self, text: &str) {
        self.clear_spinner();
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }

    /// Writes one line.
    pub(crate) fn line(&mut self, text: &str) {
        self.write(&format!("{text}\n"));
    }

    /// The prompt before a line is typed.
    pub(crate) fn prompt(&mut self) {
        if self.typing {
            self.write("> ");
        }
    }

    /// The next frame of the spinner.
    pub(crate) fn spin(&mut self) {
        let frame = self.spinning.map_or(0, |n| (n + 1) % SPINNER.len());
        self.spinning = Some(frame);
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "\r{} ", SPINNER[frame]);
        let _ = out.flush();
    }

    fn clear_spinner(&mut self) {
        if self.spinning.take().is_some() {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "\r  \r");
            let _ = out.flush();
        }
    }
}
