//! `confab chat`, the real binary, with its stdin piped, against a test
//! server and the fake model: what a person at the terminal sees. The
//! binary is the one the workspace build made (`make test` builds it; run
//! `cargo build --bin confab` first when running this crate alone).

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use confab_e2e::chat::{PASSWORD, held_after, spawn_chat};
use confab_e2e::fake_llm::{FakeLlm, Script};
use confab_e2e::{TestApp, confab_binary};
use confab_sql::Backend;

/// How long a test waits for any one thing the chat prints.
const DEADLINE: Duration = Duration::from_secs(20);

/// A running `confab chat` and everything it has printed.
struct Chat {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    /// How much of stdout the test has read past.
    seen: usize,
}

/// Collects what `from` writes.
fn collect(mut from: impl Read + std::marker::Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let into = Arc::clone(&text);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                return;
            }
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

impl Chat {
    /// `confab chat --url <app> --username <name> <extra…>`, with `env`.
    fn start(app: &TestApp, name: &str, extra: &[&str], env: &[(&str, &str)]) -> Chat {
        let mut child = Command::new(confab_binary())
            .args(["chat", "--url", &app.address, "--username", name])
            .args(extra)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start confab chat");
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        Chat {
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
            seen: 0,
        }
    }

    /// Types `line` and Enter.
    fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits until stdout, past what was seen, contains `needle`; returns
    /// what it printed up to and including it.
    async fn expect(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            {
                let out = self.stdout.lock().unwrap();
                if let Some(at) = out[self.seen..].find(needle) {
                    let end = self.seen + at + needle.len();
                    let printed = out[self.seen..end].to_owned();
                    self.seen = end;
                    return printed;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in time; stdout: {}\nstderr: {}",
                self.stdout.lock().unwrap(),
                self.stderr.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGINT, as Ctrl-C does.
    fn interrupt(&self) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Closes stdin (when still open) and waits for the exit; returns
    /// whether it succeeded, and all of stdout and stderr.
    async fn finish(mut self) -> (bool, String, String) {
        drop(self.stdin.take());
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "confab chat did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // The collecting threads end with the pipes.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let out = self.stdout.lock().unwrap().clone();
        let err = self.stderr.lock().unwrap().clone();
        assert!(
            !out.contains(PASSWORD) && !err.contains(PASSWORD),
            "the password was printed"
        );
        (status.success(), out, err)
    }
}

/// The last message of conversation `id`, read over the API as `name`.
async fn last_message(app: &TestApp, name: &str, id: &str) -> serde_json::Value {
    let token = app.login(name, PASSWORD).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let c = app.conversation(&token, id).await;
    c["messages"].as_array().unwrap().last().unwrap().clone()
}

/// The ids of `name`'s conversations, newest first.
async fn conversation_ids(app: &TestApp, name: &str) -> Vec<String> {
    let token = app.login(name, PASSWORD).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let list: serde_json::Value = app
        .get_auth("/api/v1/conversations", &token)
        .await
        .json()
        .await
        .unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn chat_registers_sends_lists_opens_regenerates_and_quits() {
    let llm = FakeLlm::start();
    // Titles are the first words of the first message.
    llm.set_title(None);
    let app = spawn_chat(Backend::Sqlite, &llm, &[]);
    let mut chat = Chat::start(
        &app,
        "ada",
        &["--register", "--email", "ada@example.com"],
        &[("CONFAB_PASSWORD", PASSWORD)],
    );
    chat.expect("Signed in to").await;
    chat.type_line("Tell me about cats");
    chat.expect("Hello there!").await;
    chat.type_line("/new");
    chat.expect("New conversation").await;
    llm.push(Script::reply(&["Woof", "!"]));
    chat.type_line("Tell me about dogs");
    chat.expect("Woof!").await;
    chat.type_line("/list");
    let listed = chat.expect("2. Tell me about cats").await;
    assert!(listed.contains("*  1. Tell me about dogs"), "{listed}");
    chat.type_line("/open 2");
    let opened = chat.expect("assistant: Hello there!").await;
    assert!(opened.contains("Opened \"Tell me about cats\""), "{opened}");
    assert!(opened.contains("you: Tell me about cats"), "{opened}");
    llm.push(Script::reply(&["Purr", "fect."]));
    chat.type_line("/regenerate");
    chat.expect("Purrfect.").await;
    chat.type_line("/help");
    chat.expect("/regenerate").await;
    chat.type_line("/quit");
    chat.expect("Bye.").await;
    let (ok, _, err) = chat.finish().await;
    assert!(ok, "{err}");

    // The regeneration went into the opened conversation, beside the first
    // answer; the other conversation has its one exchange.
    let ids = conversation_ids(&app, "ada").await;
    assert_eq!(ids.len(), 2);
    let cats = &ids[0];
    let last = last_message(&app, "ada", cats).await;
    assert_eq!(last["content"]["parts"][0], "Purrfect.");
    let token = app.login("ada", PASSWORD).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let c = app.conversation(&token, cats).await;
    let answer = c["messages"][1]["id"].as_str().unwrap();
    assert_eq!(c["siblings"][answer]["ids"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn ctrl_c_stops_the_answer_and_the_chat_goes_on() {
    let llm = FakeLlm::start();
    let app = spawn_chat(
        Backend::Sqlite,
        &llm,
        &[("CONFAB__LLM__IDLE_TIMEOUT_MS", "20000")],
    );
    app.user("ada").await;
    let mut chat = Chat::start(&app, "ada", &[], &[("CONFAB_PASSWORD", PASSWORD)]);
    chat.expect("Signed in to").await;
    llm.push(held_after("partial"));
    chat.type_line("Hi");
    chat.expect("partial").await;
    chat.interrupt();
    chat.expect("[stopped]").await;
    let ids = conversation_ids(&app, "ada").await;
    let answer = last_message(&app, "ada", &ids[0]).await;
    assert_eq!(answer["status"], "finished_partial_completion", "{answer}");
    assert_eq!(answer["content"]["parts"][0], "partial");
    // Still running: the next message goes into the same conversation.
    chat.type_line("Go on");
    chat.expect("Hello there!").await;
    assert_eq!(conversation_ids(&app, "ada").await, ids);
    // Ctrl-C at the prompt leaves.
    chat.interrupt();
    chat.expect("Bye.").await;
    let (ok, _, err) = chat.finish().await;
    assert!(ok, "{err}");
}

#[tokio::test]
async fn the_password_comes_from_the_first_line_of_a_pipe_and_is_never_printed() {
    let llm = FakeLlm::start();
    let app = spawn_chat(Backend::Sqlite, &llm, &[]);
    app.user("ada").await;
    let mut chat = Chat::start(&app, "ada", &[], &[]);
    chat.type_line(PASSWORD);
    chat.expect("Signed in to").await;
    chat.type_line("Hi");
    chat.expect("Hello there!").await;
    // The end of input leaves.
    let (ok, out, err) = chat.finish().await;
    assert!(ok, "{err}");
    assert!(out.ends_with("Bye.\n"), "{out}");

    let wrong = Chat::start(&app, "ada", &[], &[("CONFAB_PASSWORD", "not the password")]);
    let (ok, _, err) = wrong.finish().await;
    assert!(!ok);
    assert!(err.contains("wrong username or password"), "{err}");
    assert!(!err.contains("not the password"), "{err}");
}

#[tokio::test]
async fn a_rate_limit_says_how_long_to_wait_and_the_chat_goes_on() {
    let llm = FakeLlm::start();
    let app = spawn_chat(
        Backend::Sqlite,
        &llm,
        &[("CONFAB__GENERATION__PER_MINUTE", "1")],
    );
    app.user("ada").await;
    let mut chat = Chat::start(&app, "ada", &[], &[("CONFAB_PASSWORD", PASSWORD)]);
    chat.expect("Signed in to").await;
    chat.type_line("Hi");
    chat.expect("Hello there!").await;
    chat.type_line("Again");
    let said = chat.expect("and try again.").await;
    assert!(said.contains("Too many requests"), "{said}");
    assert!(said.contains("wait ") && said.contains(" s and"), "{said}");
    chat.type_line("/quit");
    let (ok, _, err) = chat.finish().await;
    assert!(ok, "{err}");
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_error() {
    let llm = FakeLlm::start();
    let mut app = spawn_chat(Backend::Sqlite, &llm, &[]);
    app.stop();
    let chat = Chat::start(&app, "ada", &[], &[("CONFAB_PASSWORD", PASSWORD)]);
    let (ok, _, err) = chat.finish().await;
    assert!(!ok);
    assert!(err.contains("Lost the connection to the server"), "{err}");
}
