//! The terminal side of `confab chat`: the password (never echoed, never
//! printed), the lines typed, the spinner, and what is written (never a
//! control character the server sent).

use std::borrow::Cow;
use std::io::{BufRead, IsTerminal, Write};

use tokio::signal::unix::Signal;
use tokio::sync::{mpsc, oneshot};

/// The environment variable a password may come from.
const PASSWORD_VAR: &str = "CONFAB_PASSWORD";

/// The frames of the spinner shown until an answer's first text.
const SPINNER: [char; 4] = ['|', '/', '-', '\\'];

/// The password: `CONFAB_PASSWORD`, else read from the terminal without
/// echo, else (stdin is not a terminal) the first line of stdin. Ctrl-C
/// (`interrupts`, installed before) while it is asked ends the chat with
/// the terminal's echo back on.
pub(crate) async fn password(interrupts: &mut Signal) -> Result<String, String> {
    if let Ok(password) = std::env::var(PASSWORD_VAR) {
        return Ok(password);
    }
    let stdin = std::io::stdin();
    let line = if stdin.is_terminal() {
        let mut err = std::io::stderr();
        let _ = write!(err, "Password: ");
        let _ = err.flush();
        let echo_off = EchoOff::new(&stdin)?;
        let read = first_line(interrupts).await;
        // Back on before anything else is said, whatever happened.
        let restored = echo_off.restore();
        let _ = writeln!(err);
        let line = read?;
        restored?;
        line
    } else {
        first_line(interrupts).await?
    };
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        return Err(format!(
            "no password: set {PASSWORD_VAR} or type it when asked"
        ));
    }
    Ok(password)
}

/// The first line of stdin, read on a thread of its own (a blocked read
/// can't be cancelled); Ctrl-C meanwhile gives up on it.
async fn first_line(interrupts: &mut Signal) -> Result<String, String> {
    let (tx, rx) = oneshot::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let read = std::io::stdin().lock().read_line(&mut line).map(|_| line);
        let _ = tx.send(read);
    });
    tokio::select! {
        read = rx => match read {
            Ok(Ok(line)) => Ok(line),
            Ok(Err(e)) => Err(format!("cannot read the password: {e}")),
            Err(_) => Err("cannot read the password".to_owned()),
        },
        _ = interrupts.recv() => Err("interrupted".to_owned()),
    }
}

/// The terminal's echo, off while this lives: its settings are restored
/// when it is dropped (an error, an interrupt, a panic's unwinding), or by
/// [`EchoOff::restore`].
struct EchoOff {
    original: Option<rustix::termios::Termios>,
}

impl EchoOff {
    fn new(stdin: &std::io::Stdin) -> Result<Self, String> {
        use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
        let original =
            tcgetattr(stdin).map_err(|e| format!("cannot read the terminal's mode: {e}"))?;
        let mut silent = original.clone();
        silent.local_modes.remove(LocalModes::ECHO);
        tcsetattr(stdin, OptionalActions::Now, &silent)
            .map_err(|e| format!("cannot turn the terminal's echo off: {e}"))?;
        Ok(Self {
            original: Some(original),
        })
    }

    /// Restores the terminal's settings now.
    fn restore(mut self) -> Result<(), String> {
        self.put_back()
    }

    fn put_back(&mut self) -> Result<(), String> {
        use rustix::termios::{OptionalActions, tcsetattr};
        match self.original.take() {
            Some(original) => tcsetattr(std::io::stdin(), OptionalActions::Now, &original)
                .map_err(|e| format!("cannot restore the terminal's echo: {e}")),
            None => Ok(()),
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        let _ = self.put_back();
    }
}

/// One line of input, as [`lines`] gives it.
pub(crate) enum Input {
    /// A line, without its line ending.
    Line(String),
    /// A line that is not UTF-8 (skipped).
    NotUtf8,
    /// Reading failed: no more input.
    Failed(String),
}

/// The lines of stdin, read on a thread of their own (a read blocked on
/// the terminal must not hold the runtime up when the program ends); the
/// channel closes at the end of input.
pub(crate) fn lines() -> mpsc::UnboundedReceiver<Input> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut bytes = Vec::new();
        loop {
            bytes.clear();
            let input = match stdin.read_until(b'\n', &mut bytes) {
                Ok(0) => return,
                Ok(_) => {
                    if bytes.last() == Some(&b'\n') {
                        bytes.pop();
                        if bytes.last() == Some(&b'\r') {
                            bytes.pop();
                        }
                    }
                    match String::from_utf8(std::mem::take(&mut bytes)) {
                        Ok(line) => Input::Line(line),
                        Err(_) => Input::NotUtf8,
                    }
                }
                Err(e) => Input::Failed(e.to_string()),
            };
            let last = matches!(input, Input::Failed(_));
            if tx.send(input).is_err() || last {
                return;
            }
        }
    });
    rx
}

/// `text` without control characters (C0, DEL and C1) but line feeds and
/// tabs: what the server sends (answers, titles, messages) can't move the
/// cursor, clear the screen, set the window's title or anything else a
/// terminal does on an escape sequence.
pub(crate) fn printable(text: &str) -> Cow<'_, str> {
    let keep = |c: char| !c.is_control() || c == '\n' || c == '\t';
    if text.chars().all(keep) {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(text.chars().filter(|&c| keep(c)).collect())
    }
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

    /// Writes `text` (a piece of an answer), at once, without its control
    /// characters ([`printable`]).
    pub(crate) fn write(&mut self, text: &str) {
        self.clear_spinner();
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(printable(text).as_bytes());
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

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_are_dropped_but_line_feeds_and_tabs() {
        assert_eq!(
            printable("a\x1b]0;pwned\x07b\x1b[2Jc\r\n\td\u{9b}31me\u{7f}"),
            "a]0;pwnedb[2Jc\n\td31me"
        );
        assert!(matches!(
            printable("plain, é\n"),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
