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
use confab_e2e::scripted::{Reply, ScriptedServer, sse_event};
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
        Chat::spawn(&app.address, name, extra, env, Stdio::piped())
    }

    /// As [`Chat::start`], of the server at `url`, with `stdin`.
    fn spawn(url: &str, name: &str, extra: &[&str], env: &[(&str, &str)], stdin: Stdio) -> Chat {
        let mut child = Command::new(confab_binary())
            .args(["chat", "--url", url, "--username", name])
            .args(extra)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().copied())
            .stdin(stdin)
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

    /// Waits until stderr contains `needle`.
    async fn expect_err(&self, needle: &str) {
        let deadline = Instant::now() + DEADLINE;
        while !self.stderr.lock().unwrap().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} on stderr in time: {}",
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
    // A port bound and never listened on: a connection is refused, and no
    // other socket can take the port while it is held (nothing here sets
    // SO_REUSEADDR on it).
    let held = tokio::net::TcpSocket::new_v4().unwrap();
    held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let url = format!("http://{}", held.local_addr().unwrap());
    let chat = Chat::spawn(
        &url,
        "ada",
        &[],
        &[("CONFAB_PASSWORD", PASSWORD)],
        Stdio::piped(),
    );
    let (ok, _, err) = chat.finish().await;
    assert!(!ok);
    assert!(err.contains("Lost the connection to the server"), "{err}");
    assert!(err.contains("Connection refused"), "{err}");
    drop(held);
}

#[tokio::test]
async fn server_text_reaches_the_terminal_without_control_characters() {
    let llm = FakeLlm::start();
    llm.set_title(Some("\x1b]0;evil\x07Cats\x1b[2J".to_owned()));
    let app = spawn_chat(Backend::Sqlite, &llm, &[]);
    app.user("ada").await;
    let mut chat = Chat::start(&app, "ada", &[], &[("CONFAB_PASSWORD", PASSWORD)]);
    chat.expect("Signed in to").await;
    llm.push(Script::reply(&[
        "Hi\x1b]0;pwned\x07 there",
        "\x1b[2J!\u{9b}2J\tok",
    ]));
    chat.type_line("Hello");
    chat.expect("Hi]0;pwned there[2J!2J\tok").await;
    chat.type_line("/list");
    chat.expect("1. ").await;
    chat.type_line("/open 1");
    chat.expect("assistant: Hi]0;pwned there").await;
    chat.type_line("/quit");
    let (ok, out, err) = chat.finish().await;
    assert!(ok, "{err}");
    for c in ['\x1b', '\x07', '\u{9b}'] {
        assert!(!out.contains(c), "{c:?} reached the terminal: {out:?}");
    }
}

/// Tokens of a scripted login.
fn tokens() -> serde_json::Value {
    serde_json::json!({"access_token": "access-1", "token_type": "Bearer",
                       "expires_in": 900, "refresh_token": "refresh-1"})
}

#[tokio::test]
async fn a_proxys_503_page_says_when_to_try_again() {
    let server = ScriptedServer::start(|_, _| {
        Reply::body(
            503,
            &[("content-type", "text/html"), ("retry-after", "7")],
            "<html><body>\x1b[2J503 Service Unavailable</body></html>",
        )
    })
    .await;
    let chat = Chat::spawn(
        &server.address,
        "ada",
        &[],
        &[("CONFAB_PASSWORD", PASSWORD)],
        Stdio::piped(),
    );
    let (ok, _, err) = chat.finish().await;
    assert!(!ok);
    assert!(
        err.contains("The server is unavailable right now") && err.contains("try again in 7 s"),
        "{err}"
    );
}

#[tokio::test]
async fn ctrl_c_while_signing_in_quits_at_once() {
    // The login never answers.
    let server = ScriptedServer::start(|_, _| Reply::default().hang()).await;
    let chat = Chat::spawn(
        &server.address,
        "ada",
        &[],
        &[("CONFAB_PASSWORD", PASSWORD)],
        Stdio::piped(),
    );
    until(|| !server.requests().is_empty()).await;
    chat.interrupt();
    let (ok, _, err) = chat.finish().await;
    assert!(!ok);
    assert!(err.contains("interrupted"), "{err}");
}

/// Waits until `done` says so.
async fn until(done: impl Fn() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "not in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn ctrl_c_cancels_a_slow_request_or_a_slow_stop_and_the_chat_goes_on() {
    let id = confab_domain::ConversationId::generate().to_string();
    let c = id.clone();
    let server = ScriptedServer::start(move |request, _| {
        match (request.method.as_str(), request.path.as_str()) {
            ("POST", "/api/v1/auth/login") => Reply::json(200, &[], &tokens()),
            ("POST", "/api/v1/conversations") => Reply::events(&[
                sse_event(1, Some("delta_encoding"), "\"v1\""),
                sse_event(
                    2,
                    None,
                    &serde_json::json!({"type": "resume_conversation_token",
                        "token": "t", "conversation_id": c})
                    .to_string(),
                ),
                sse_event(
                    3,
                    Some("delta"),
                    &serde_json::json!({"p": "", "o": "add", "v": {"conversation_id": c,
                        "message": {"id": "a1", "author": {"role": "assistant"},
                            "role": "assistant", "create_time": 1.0, "update_time": 1.0,
                            "created_at": "2025-11-07T02:49:07.338Z",
                            "content": {"content_type": "text", "parts": [""]},
                            "status": "in_progress", "metadata": {}}}})
                    .to_string(),
                ),
                sse_event(
                    4,
                    Some("delta"),
                    r#"{"v":[{"p":"/message/content/parts/0","o":"append","v":"partial"}]}"#,
                ),
            ])
            .hang(),
            // A list, and a stop, that never answer.
            _ => Reply::default().hang(),
        }
    })
    .await;
    let mut chat = Chat::spawn(
        &server.address,
        "ada",
        &[],
        &[("CONFAB_PASSWORD", PASSWORD)],
        Stdio::piped(),
    );
    chat.expect("Signed in to").await;
    let asked = |path: &'static str| {
        let requests = || server.requests();
        move || requests().iter().any(|r| r.path.starts_with(path))
    };
    chat.type_line("/list");
    until(asked("/api/v1/conversations?")).await;
    chat.interrupt();
    chat.expect("[cancelled]").await;
    chat.type_line("/help");
    chat.expect("/regenerate").await;

    chat.type_line("Hi");
    chat.expect("partial").await;
    chat.interrupt();
    let stream = format!("/api/v1/conversations/{id}/stream");
    until(|| {
        server
            .requests()
            .iter()
            .any(|r| r.method == "DELETE" && r.path == stream)
    })
    .await;
    chat.interrupt();
    chat.expect("[no longer waiting for the answer to stop]")
        .await;
    // Still there, at the prompt: it did not take the Ctrl-Cs for a quit.
    chat.type_line("/help");
    chat.expect("/regenerate").await;
    chat.type_line("/quit");
    chat.expect("Bye.").await;
    let (ok, _, err) = chat.finish().await;
    assert!(ok, "{err}");
}

#[tokio::test]
async fn a_line_that_is_not_utf8_is_refused_and_the_chat_goes_on() {
    let llm = FakeLlm::start();
    let app = spawn_chat(Backend::Sqlite, &llm, &[]);
    app.user("ada").await;
    let mut chat = Chat::start(&app, "ada", &[], &[("CONFAB_PASSWORD", PASSWORD)]);
    chat.expect("Signed in to").await;
    {
        let stdin = chat.stdin.as_mut().unwrap();
        stdin.write_all(b"caf\xe9\n").unwrap();
        stdin.flush().unwrap();
    }
    chat.expect("not UTF-8").await;
    chat.type_line("Hi");
    chat.expect("Hello there!").await;
    let (ok, _, err) = chat.finish().await;
    assert!(ok, "{err}");
    assert_eq!(
        conversation_ids(&app, "ada").await.len(),
        1,
        "one message sent"
    );
}

#[tokio::test]
async fn ctrl_c_at_the_password_prompt_leaves_the_terminals_echo_on() {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    use rustix::termios::{LocalModes, tcgetattr};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let name = ptsname(&master, Vec::new()).unwrap();
    let terminal = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name.to_str().unwrap())
        .unwrap();
    let echo = |t: &std::fs::File| tcgetattr(t).unwrap().local_modes.contains(LocalModes::ECHO);
    assert!(echo(&terminal), "a terminal echoes to begin with");
    let chat = Chat::spawn(
        "http://127.0.0.1:9",
        "ada",
        &[],
        &[],
        Stdio::from(terminal.try_clone().unwrap()),
    );
    chat.expect_err("Password: ").await;
    until(|| !echo(&terminal)).await;
    chat.interrupt();
    let (ok, _, err) = chat.finish().await;
    assert!(!ok);
    assert!(err.contains("interrupted"), "{err}");
    assert!(echo(&terminal), "the echo was left off");
    drop(master);
}
