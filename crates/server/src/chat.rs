//! `confab chat`: a terminal client of a Confab server, built on
//! `confab-client`. It signs in (or registers first), then each line typed
//! is a message whose answer streams in; a line starting with `/` is a
//! command. Ctrl-C stops a running answer (a second one stops waiting for
//! it), cancels a request under way (`/list`, `/open`) and returns to the
//! prompt; at the prompt, while the password is asked and while signing in
//! it quits, as the end of input does. Whatever the server sends is written
//! without its control characters.

mod terminal;

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Duration;

use confab_client::{Client, ConversationSummary, Error, Event, ListQuery, Send};
use confab_domain::{ConversationId, ErrorCode, MessageRole, MessageStatus};
use futures_util::{FutureExt, StreamExt};
use tokio::signal::unix::{Signal, SignalKind, signal};

use terminal::{Input, Screen};

/// What `confab chat` takes.
#[derive(clap::Args, Clone)]
pub(crate) struct ChatArgs {
    /// The server's address.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The account to sign in as. The password is read from
    /// CONFAB_PASSWORD, else from the terminal (not echoed), else from the
    /// first line of standard input.
    #[arg(long)]
    username: String,
    /// Create the account first.
    #[arg(long, requires = "email")]
    register: bool,
    /// The new account's e-mail address (with --register).
    #[arg(long)]
    email: Option<String>,
}

const HELP: &str = "Type a message and press Enter; its answer streams in (Ctrl-C stops it).
  /new          start a new conversation with the next message
  /list         your latest conversations, numbered
  /open N       continue conversation N of the last /list
  /regenerate   a new answer to the last question
  /help         this text
  /quit         leave (so do Ctrl-C at the prompt and the end of input)";

/// How many conversations `/list` shows.
const LIST_LIMIT: u32 = 20;

/// Runs the chat until the user leaves.
pub(crate) fn run(args: ChatArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("confab chat: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(chat(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Server text may be in it (an error's message).
            eprintln!("confab chat: {}", terminal::printable(&e));
            ExitCode::FAILURE
        }
    }
}

/// `future`'s output, or `None` when Ctrl-C came first (the future is
/// dropped: its request cancelled).
async fn or_interrupt<F: Future>(interrupts: &mut Signal, future: F) -> Option<F::Output> {
    tokio::select! {
        output = future => Some(output),
        _ = interrupts.recv() => None,
    }
}

/// Forgets the Ctrl-Cs that came before now (say, pressed while a request
/// ended): only one pressed at the prompt quits.
fn discard_interrupts(interrupts: &mut Signal) {
    while let Some(Some(())) = interrupts.recv().now_or_never() {}
}

/// A stop under way.
type Stopping = Pin<Box<dyn Future<Output = Result<(), Error>> + std::marker::Send>>;

/// `stopping`'s result once it is done; never, when there is none.
async fn stopped(stopping: &mut Option<Stopping>) -> Result<(), Error> {
    match stopping {
        Some(stop) => stop.await,
        None => std::future::pending().await,
    }
}

/// Where the chat is.
struct Session {
    client: Client,
    screen: Screen,
    interrupts: Signal,
    current: Option<ConversationId>,
    listed: Vec<ConversationSummary>,
}

async fn chat(args: ChatArgs) -> Result<(), String> {
    // Before anything: from here on Ctrl-C is ours (the password prompt
    // included, so the terminal's echo is always turned back on).
    let mut interrupts =
        signal(SignalKind::interrupt()).map_err(|e| format!("cannot watch for Ctrl-C: {e}"))?;
    let password = terminal::password(&mut interrupts).await?;
    let client = Client::new(&args.url).map_err(|e| e.to_string())?;
    if args.register {
        let email = args.email.as_deref().unwrap_or_default();
        or_interrupt(
            &mut interrupts,
            client.register(&args.username, email, &password),
        )
        .await
        .ok_or("interrupted")?
        .map_err(|e| format!("cannot register {}: {}", args.username, describe(&e)))?;
    }
    or_interrupt(&mut interrupts, client.login(&args.username, &password))
        .await
        .ok_or("interrupted")?
        .map_err(|e| match e.code() {
            Some(ErrorCode::InvalidCredentials) => "wrong username or password".to_owned(),
            _ => format!("cannot sign in: {}", describe(&e)),
        })?;
    drop(password);
    let mut session = Session {
        client,
        screen: Screen::new(),
        interrupts,
        current: None,
        listed: Vec::new(),
    };
    session.screen.line(&format!(
        "Signed in to {} as {}. Type a message, or /help.",
        args.url.trim_end_matches('/'),
        args.username
    ));
    session.run(terminal::lines()).await
}

impl Session {
    async fn run(
        &mut self,
        mut lines: tokio::sync::mpsc::UnboundedReceiver<Input>,
    ) -> Result<(), String> {
        loop {
            discard_interrupts(&mut self.interrupts);
            self.screen.prompt();
            let input = tokio::select! {
                input = lines.recv() => input,
                _ = self.interrupts.recv() => None,
            };
            let line = match input {
                Some(Input::Line(line)) => line,
                Some(Input::NotUtf8) => {
                    self.screen
                        .line("That line is not UTF-8 text: it was not sent.");
                    continue;
                }
                Some(Input::Failed(e)) => {
                    return Err(format!("cannot read standard input: {e}"));
                }
                None => {
                    self.screen.line("Bye.");
                    return Ok(());
                }
            };
            let line = line.trim();
            let result = match line.split_once(' ').unwrap_or((line, "")) {
                ("", _) => Ok(()),
                ("/quit" | "/exit", _) => {
                    self.screen.line("Bye.");
                    return Ok(());
                }
                ("/help", _) => {
                    self.screen.line(HELP);
                    Ok(())
                }
                ("/new", _) => {
                    self.current = None;
                    self.screen
                        .line("New conversation: your next message starts it.");
                    Ok(())
                }
                ("/list", _) => self.list().await,
                ("/open", n) => self.open(n.trim()).await,
                ("/regenerate", _) => match self.current {
                    Some(id) => self.answer(Send::regenerate(id)).await,
                    None => {
                        self.screen
                            .line("Nothing to regenerate yet: send a message first.");
                        Ok(())
                    }
                },
                (command, _) if command.starts_with('/') => {
                    self.screen
                        .line(&format!("Unknown command {command}: /help lists them."));
                    Ok(())
                }
                _ => {
                    let send = match self.current {
                        Some(id) => Send::message(id, line),
                        None => Send::new_conversation(line),
                    };
                    self.answer(send).await
                }
            };
            if let Err(e) = result {
                self.screen.line(&describe(&e));
                if e.api().is_some_and(|api| api.status == 401) {
                    return Err("signed out".to_owned());
                }
            }
        }
    }

    async fn list(&mut self) -> Result<(), Error> {
        let query = ListQuery {
            limit: Some(LIST_LIMIT),
            ..ListQuery::default()
        };
        let Some(page) =
            or_interrupt(&mut self.interrupts, self.client.conversations(&query)).await
        else {
            self.screen.line("[cancelled]");
            return Ok(());
        };
        self.listed = page?.items;
        if self.listed.is_empty() {
            self.screen.line("No conversations yet.");
        }
        for (n, c) in self.listed.iter().enumerate() {
            let mark = if Some(c.id) == self.current { "*" } else { " " };
            self.screen
                .line(&format!("{mark}{:>3}. {}", n + 1, c.title));
        }
        Ok(())
    }

    async fn open(&mut self, n: &str) -> Result<(), Error> {
        let picked = n
            .parse::<usize>()
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| self.listed.get(i));
        let Some(summary) = picked else {
            self.screen
                .line("Open which? /list numbers the conversations: /open 1 opens the first.");
            return Ok(());
        };
        let id = summary.id;
        let Some(conversation) =
            or_interrupt(&mut self.interrupts, self.client.conversation(id)).await
        else {
            self.screen.line("[cancelled]");
            return Ok(());
        };
        let conversation = conversation?;
        self.current = Some(conversation.conversation_id);
        self.screen
            .line(&format!("Opened \"{}\".", conversation.title));
        for message in &conversation.messages {
            let who = match message.role {
                MessageRole::User => "you",
                _ => "assistant",
            };
            self.screen.line(&format!("{who}: {}", message.text()));
        }
        Ok(())
    }

    /// Sends, and shows the answer as it streams. Ctrl-C stops it (the
    /// stop runs while the answer is read to its end); a second Ctrl-C
    /// stops waiting and returns to the prompt. Ctrl-C before the answer
    /// starts cancels the send's request.
    async fn answer(&mut self, send: Send) -> Result<(), Error> {
        let Some(answer) = or_interrupt(&mut self.interrupts, self.client.send(&send)).await else {
            self.screen.line(
                "[cancelled: the message may have reached the server; /list shows what it stored]",
            );
            return Ok(());
        };
        let mut answer = answer?;
        let mut spinner = tokio::time::interval(Duration::from_millis(100));
        let mut first_text = false;
        let mut stop_asked = false;
        let mut stopping: Option<Stopping> = None;
        let mut ended = None;
        loop {
            tokio::select! {
                event = answer.next() => match event {
                    None => break,
                    Some(Err(e)) => {
                        self.screen.line("");
                        return Err(e);
                    }
                    Some(Ok(event)) => match event {
                        Event::Started(id) => {
                            self.current = Some(id);
                            if stop_asked && stopping.is_none() {
                                stopping = Some(self.stop(id));
                            }
                        }
                        Event::Text(text) => {
                            first_text = true;
                            self.screen.write(&text);
                        }
                        Event::Ended(status) => ended = Some(status),
                        Event::Failed { message, .. } => {
                            self.screen.line(&format!("\n[the answer failed: {message}]"));
                        }
                        _ => {}
                    },
                },
                stop = stopped(&mut stopping) => {
                    // Done: the answer's end follows on the stream.
                    stopping = None;
                    stop?;
                }
                _ = self.interrupts.recv() => {
                    if stop_asked {
                        self.current = answer.conversation_id().or(self.current);
                        self.screen.line("\n[no longer waiting for the answer to stop]");
                        return Ok(());
                    }
                    stop_asked = true;
                    if let Some(id) = answer.conversation_id() {
                        stopping = Some(self.stop(id));
                    }
                }
                _ = spinner.tick(), if self.screen.interactive() && !first_text => {
                    self.screen.spin();
                }
            }
        }
        self.current = answer.conversation_id().or(self.current);
        let note = match ended {
            Some(MessageStatus::FinishedPartialCompletion) if stop_asked => "\n[stopped]",
            Some(MessageStatus::FinishedPartialCompletion) => "\n[cut short]",
            _ => "",
        };
        self.screen.line(note);
        Ok(())
    }

    /// Stops the answer running in `id`; one that has just ended is fine.
    fn stop(&self, id: ConversationId) -> Stopping {
        let client = self.client.clone();
        Box::pin(async move {
            match client.stop(id).await {
                Err(e) if e.code() == Some(ErrorCode::NotFound) => Ok(()),
                other => other,
            }
        })
    }
}

/// A failure as the user should read it.
fn describe(e: &Error) -> String {
    let wait = |api: &confab_client::ApiError| {
        api.retry_after
            .map_or_else(|| "a moment".to_owned(), |d| format!("{} s", d.as_secs()))
    };
    match e {
        Error::Api(api) => match api.status {
            401 => {
                "Your session has ended (signed out, expired or revoked): sign in again.".to_owned()
            }
            429 => format!(
                "Too many requests ({}): wait {} and try again.",
                api.message,
                wait(api)
            ),
            503 => format!(
                "The server is unavailable right now ({}): try again in {}.",
                api.message,
                wait(api)
            ),
            _ => format!("The server refused: {} ({})", api.message, api.code_text),
        },
        Error::Connection(detail) | Error::StreamLost(detail) => {
            format!(
                "Lost the connection to the server (or could not reach it): {detail}. Try again."
            )
        }
        other => other.to_string(),
    }
}
