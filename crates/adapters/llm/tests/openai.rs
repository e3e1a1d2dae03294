//! The adapter against the harness's fake chat-completions server on
//! 127.0.0.1, scripted with raw responses.

// Test support: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

mod support;

use confab_domain::ModelSlug;
use confab_llm::{OpenAiCompatible, OpenAiSettings};
use confab_ports::{
    ChatModel, CompletionRequest, CompletionStream, FinishReason, LlmError, LlmEvent, PromptRole,
    PromptTurn, Usage,
};
use secrecy::SecretString;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::time::timeout;

use support::{DONE, OK_HEAD, Step, ms, send, serve, text};

fn settings(base_url: &str) -> OpenAiSettings {
    OpenAiSettings {
        base_url: base_url.to_owned(),
        api_key: None,
        connect_timeout: ms(500),
        first_token_timeout: ms(300),
        idle_timeout: ms(150),
        total_timeout: ms(2000),
        pool_max_idle: 16,
        pool_idle_timeout: ms(2000),
    }
}

fn model(settings: OpenAiSettings) -> OpenAiCompatible {
    OpenAiCompatible::new(settings).unwrap()
}

fn request(max_tokens: u32) -> CompletionRequest {
    CompletionRequest {
        model: ModelSlug::parse("llama3.1:8b").unwrap(),
        turns: vec![
            PromptTurn {
                role: PromptRole::System,
                text: "Be brief.".to_owned(),
            },
            PromptTurn {
                role: PromptRole::User,
                text: "Hi ☃".to_owned(),
            },
        ],
        temperature: None,
        max_tokens,
    }
}

/// Every event until the end or the first error.
async fn drain(stream: &mut dyn CompletionStream) -> (Vec<LlmEvent>, Option<LlmError>) {
    let mut events = Vec::new();
    loop {
        match timeout(Duration::from_secs(3), stream.next())
            .await
            .unwrap()
        {
            Ok(Some(event)) => events.push(event),
            Ok(None) => return (events, None),
            Err(e) => return (events, Some(e)),
        }
    }
}

fn texts(events: &[LlmEvent]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|e| match e {
            LlmEvent::Text(t) => Some(t.as_str()),
            LlmEvent::Finished { .. } => None,
        })
        .collect()
}

#[tokio::test]
async fn a_normal_stream_with_usage_and_done() {
    let server = serve(vec![
        send(OK_HEAD),
        send(": ping\n\n"),
        send(&format!(
            "data: {}\n\n",
            json!({"choices": [{"delta": {"role": "assistant"}}]})
        )),
        send(&text("Hel")),
        send(&text("lo ☃")),
        send("data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"length\"}]}\r\n\r\n"),
        send("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":2}}\n\n"),
        send(DONE),
    ])
    .await;
    let llm = model(settings(&server.base_url));
    let mut stream = llm.complete(request(100)).await.unwrap();
    let (events, error) = drain(stream.as_mut()).await;
    assert_eq!(error, None);
    assert_eq!(
        events,
        vec![
            LlmEvent::Text("Hel".to_owned()),
            LlmEvent::Text("lo ☃".to_owned()),
            LlmEvent::Finished {
                reason: FinishReason::Length,
                usage: Some(Usage {
                    prompt_tokens: 12,
                    completion_tokens: 2
                }),
            },
        ]
    );
    assert_eq!(stream.next().await, Ok(None));
}

#[tokio::test]
async fn the_request_is_an_openai_streamed_chat_completion() {
    let mut server = serve(vec![send(OK_HEAD), send(&text("x")), send(DONE)]).await;
    let mut s = settings(&server.base_url);
    s.api_key = Some(SecretString::from("sk-test-key"));
    let llm = model(s);
    let mut req = request(64);
    req.temperature = Some(0.5);
    let mut stream = llm.complete(req).await.unwrap();
    let (_, error) = drain(stream.as_mut()).await;
    assert_eq!(error, None);

    // The fake answers only `POST /v1/chat/completions`: a stream came back.
    let captured = server.request().await;
    assert_eq!(captured.header("authorization"), Some("Bearer sk-test-key"));
    assert_eq!(captured.header("accept"), Some("text/event-stream"));
    assert_eq!(captured.header("content-type"), Some("application/json"));
    assert_eq!(
        captured.body,
        json!({
            "model": "llama3.1:8b",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi ☃"},
            ],
            "stream": true,
            "max_tokens": 64,
            "temperature": 0.5,
            "stream_options": {"include_usage": true},
        })
    );

    // Without a key or a temperature, neither is sent.
    let llm = model(settings(&server.base_url));
    let mut stream = llm.complete(request(64)).await.unwrap();
    drain(stream.as_mut()).await;
    let captured = server.request().await;
    assert_eq!(captured.header("authorization"), None);
    assert!(captured.body.get("temperature").is_none());
}

#[tokio::test]
async fn an_error_status_is_upstream_without_its_body() {
    let body = "{\"error\":\"db password is hunter2-SECRET\"}\n\u{1b}[31m";
    let server = serve(vec![send(&format!(
        "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ))])
    .await;
    let llm = model(settings(&server.base_url));
    let Err(error) = llm.complete(request(10)).await else {
        panic!("a 500 streamed");
    };
    assert_eq!(error, LlmError::Upstream { status: 500 });
    assert!(!format!("{error} {error:?}").contains("hunter2"));
}

#[tokio::test]
async fn an_error_object_in_the_stream_is_upstream_zero() {
    let server = serve(vec![
        send(OK_HEAD),
        send(&text("a")),
        send("data: {\"error\":{\"message\":\"SECRET overload\"}}\n\n"),
    ])
    .await;
    let llm = model(settings(&server.base_url));
    let mut stream = llm.complete(request(10)).await.unwrap();
    let (events, error) = drain(stream.as_mut()).await;
    assert_eq!(texts(&events), ["a"]);
    let error = error.unwrap();
    assert_eq!(error, LlmError::Upstream { status: 0 });
    assert!(!format!("{error} {error:?}").contains("SECRET"));
}

#[tokio::test]
async fn a_malformed_chunk_is_a_protocol_error() {
    let server = serve(vec![
        send(OK_HEAD),
        send(&text("a")),
        send("data: {\"choices\": [SECRET\n\n"),
        send(DONE),
    ])
    .await;
    let llm = model(settings(&server.base_url));
    let mut stream = llm.complete(request(10)).await.unwrap();
    let (events, error) = drain(stream.as_mut()).await;
    assert_eq!(texts(&events), ["a"]);
    let Some(LlmError::Protocol(what)) = error else {
        panic!("{error:?}");
    };
    assert!(!what.contains("SECRET"), "{what}");
    // A failed stream keeps failing.
    assert!(matches!(stream.next().await, Err(LlmError::Protocol(_))));
}

#[tokio::test]
async fn an_early_close_without_done_is_a_protocol_error() {
    let server = serve(vec![send(OK_HEAD), send(&text("a")), send(&text("b"))]).await;
    let llm = model(settings(&server.base_url));
    let mut stream = llm.complete(request(10)).await.unwrap();
    let (events, error) = drain(stream.as_mut()).await;
    assert_eq!(texts(&events), ["a", "b"]);
    assert_eq!(
        error,
        Some(LlmError::Protocol(
            "the stream ended without [DONE]".to_owned()
        ))
    );
}

#[tokio::test]
async fn a_stall_between_tokens_times_out() {
    let mut server = serve(vec![send(OK_HEAD), send(&text("a")), Step::HoldUntilClosed]).await;
    let llm = model(settings(&server.base_url));
    let mut stream = llm.complete(request(10)).await.unwrap();
    assert_eq!(
        stream.next().await,
        Ok(Some(LlmEvent::Text("a".to_owned())))
    );
    assert_eq!(
        stream.next().await,
        Err(LlmError::Timeout("between tokens"))
    );
    // The timed-out stream let the connection go.
    server.client_closed().await;
}

#[tokio::test]
async fn no_first_token_times_out_with_or_without_headers() {
    let server = serve(vec![
        send(OK_HEAD),
        send(": ping\n\n"),
        Step::HoldUntilClosed,
    ])
    .await;
    let llm = model(settings(&server.base_url));
    let mut stream = llm.complete(request(10)).await.unwrap();
    assert_eq!(stream.next().await, Err(LlmError::Timeout("first token")));

    let server = serve(vec![Step::HoldUntilClosed]).await;
    let llm = model(settings(&server.base_url));
    let Err(error) = llm.complete(request(10)).await else {
        panic!("no headers, yet a stream");
    };
    assert_eq!(error, LlmError::Timeout("first token"));
}

#[tokio::test]
async fn the_total_timeout_caps_a_trickle() {
    let mut steps = vec![send(OK_HEAD)];
    for _ in 0..40 {
        steps.push(send(&text("t")));
        steps.push(Step::Wait(ms(40)));
    }
    let server = serve(steps).await;
    let mut s = settings(&server.base_url);
    s.total_timeout = ms(300);
    let llm = model(s);
    let mut stream = llm.complete(request(1000)).await.unwrap();
    let (events, error) = drain(stream.as_mut()).await;
    assert!(!texts(&events).is_empty());
    assert_eq!(error, Some(LlmError::Timeout("total")));
}

#[tokio::test]
async fn the_token_cap_finishes_with_length_and_hangs_up() {
    let mut steps = vec![send(OK_HEAD)];
    for t in ["a", "b", "", "c", "d", "e"] {
        steps.push(send(&text(t)));
    }
    steps.push(Step::HoldUntilClosed);
    let mut server = serve(steps).await;
    let llm = model(settings(&server.base_url));
    let mut stream = llm.complete(request(3)).await.unwrap();
    let (events, error) = drain(stream.as_mut()).await;
    assert_eq!(error, None);
    assert_eq!(texts(&events), ["a", "b", "c"]);
    assert_eq!(
        events.last(),
        Some(&LlmEvent::Finished {
            reason: FinishReason::Length,
            usage: None
        })
    );
    server.client_closed().await;
}

#[tokio::test]
async fn dropping_the_stream_cancels_the_upstream() {
    let mut server = serve(vec![send(OK_HEAD), send(&text("a")), Step::HoldUntilClosed]).await;
    let mut s = settings(&server.base_url);
    s.idle_timeout = ms(5000);
    let llm = model(s);
    let mut stream = llm.complete(request(10)).await.unwrap();
    assert_eq!(
        stream.next().await,
        Ok(Some(LlmEvent::Text("a".to_owned())))
    );
    drop(stream);
    server.client_closed().await;
}

#[tokio::test]
async fn a_refused_connection_is_unavailable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    drop(listener);
    let llm = model(settings(&format!("http://user:pw-SECRET@{addr}/v1")));
    let Err(error) = llm.complete(request(10)).await else {
        panic!("a dead port answered");
    };
    let LlmError::Unavailable(reason) = &error else {
        panic!("{error:?}");
    };
    assert!(reason.contains("refused"), "{reason}");
    assert!(!format!("{error} {error:?}").contains("SECRET"));
}

/// With the `tls` feature, an https URL goes through rustls (ring): a
/// server that doesn't speak TLS fails the handshake, without a panic.
#[cfg(feature = "tls")]
#[tokio::test]
async fn https_goes_through_rustls() {
    use tokio::io::AsyncWriteExt;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let _ = sock.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await;
    });
    let llm = model(settings(&format!("https://{addr}/v1")));
    let Err(error) = llm.complete(request(10)).await else {
        panic!("plain HTTP passed for TLS");
    };
    assert!(
        matches!(&error, LlmError::Unavailable(r) if r.contains("could not connect")),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_connect_that_hangs_times_out_as_connect() {
    // A listener that never accepts, its backlog filled: Linux drops the
    // next SYNs, so the next connect hangs.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(stream)) = timeout(ms(50), tokio::net::TcpStream::connect(addr)).await {
            held.push(stream);
        }
    }
    let mut s = settings(&format!("http://{addr}/v1"));
    s.connect_timeout = ms(100);
    s.first_token_timeout = ms(1000);
    let llm = model(s);
    let Err(error) = llm.complete(request(10)).await else {
        panic!("a full backlog answered");
    };
    assert_eq!(error, LlmError::Timeout("connect"));
    drop((held, listener));
}

/// `body` as an HTTP/1.1 chunked body, one chunk per part, ended.
fn chunked(parts: &[&str]) -> String {
    let mut out = String::new();
    for part in parts {
        out.push_str(&format!("{:x}\r\n{part}\r\n", part.len()));
    }
    out.push_str("0\r\n\r\n");
    out
}

/// `raw` written `every` bytes at a time, a millisecond apart, so the
/// client reads it in pieces split anywhere (inside a chunk-size line, a
/// chunk, an event).
fn in_pieces(raw: &str, every: usize) -> Vec<Step> {
    let bytes = raw.as_bytes();
    bytes
        .chunks(every)
        .flat_map(|piece| {
            [
                Step::Send(String::from_utf8(piece.to_vec()).unwrap()),
                Step::Wait(ms(1)),
            ]
        })
        .collect()
}

#[tokio::test]
async fn a_chunked_stream_is_read_whatever_its_pieces() {
    let body = chunked(&[
        &text("one "),
        &format!("{}{}", text("two "), &text("three")),
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":3}}\n\n",
        DONE,
    ]);
    let raw = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
    );
    // ASCII only, so any split is a valid string.
    assert!(raw.is_ascii());
    for every in [1, 5, 64, raw.len()] {
        let server = serve(in_pieces(&raw, every)).await;
        // Hundreds of pieces a millisecond or more apart: no deadline here.
        let mut s = settings(&server.base_url);
        s.first_token_timeout = ms(10_000);
        s.total_timeout = ms(20_000);
        let llm = model(s);
        let mut stream = llm.complete(request(100)).await.unwrap();
        let (events, error) = drain(stream.as_mut()).await;
        assert_eq!(error, None, "pieces of {every}");
        assert_eq!(
            texts(&events),
            ["one ", "two ", "three"],
            "pieces of {every}"
        );
        assert_eq!(
            events.last(),
            Some(&LlmEvent::Finished {
                reason: FinishReason::Stop,
                usage: Some(Usage {
                    prompt_tokens: 3,
                    completion_tokens: 3
                }),
            })
        );
    }
}

#[tokio::test]
async fn a_length_framed_stream_and_a_chunked_one_cut_short() {
    let body = format!("{}{DONE}", text("whole"));
    let server = serve(vec![send(&format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ))])
    .await;
    let llm = model(settings(&server.base_url));
    let mut stream = llm.complete(request(100)).await.unwrap();
    let (events, error) = drain(stream.as_mut()).await;
    assert_eq!(error, None);
    assert_eq!(texts(&events), ["whole"]);

    // The connection closes inside a chunk: the stream broke, whatever
    // the events before said.
    let cut = format!("{:x}\r\n{}", 200, text("partial"));
    let server = serve(vec![send(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
    ), send(&cut)])
    .await;
    let llm = model(settings(&server.base_url));
    let mut stream = llm.complete(request(100)).await.unwrap();
    let (events, error) = drain(stream.as_mut()).await;
    assert_eq!(texts(&events), ["partial"]);
    assert!(
        matches!(&error, Some(LlmError::Protocol(m)) if m.contains("broke")),
        "{error:?}"
    );
}

#[tokio::test]
async fn credentials_in_the_base_url_go_as_basic_authorization() {
    let mut server = serve(vec![send(OK_HEAD), send(&text("x")), send(DONE)]).await;
    let with_credentials = server
        .base_url
        .replacen("http://", "http://user:p%40ss@", 1);
    let llm = model(settings(&with_credentials));
    let mut stream = llm.complete(request(10)).await.unwrap();
    assert_eq!(drain(stream.as_mut()).await.1, None);
    let captured = server.request().await;
    // base64("user:p@ss")
    assert_eq!(captured.header("authorization"), Some("Basic dXNlcjpwQHNz"));

    // An API key wins over them.
    let mut s = settings(&with_credentials);
    s.api_key = Some(SecretString::from("sk-key"));
    let mut stream = model(s).complete(request(10)).await.unwrap();
    assert_eq!(drain(stream.as_mut()).await.1, None);
    let captured = server.request().await;
    assert_eq!(captured.header("authorization"), Some("Bearer sk-key"));
}

/// A completion read to its `[DONE]` leaves its connection for the next
/// one (the fake keeps connections, as most servers do); one dropped
/// before its end closes its connection, which the server sees, and the
/// next completion connects anew.
#[tokio::test]
async fn completions_read_to_their_end_share_a_connection() {
    use confab_testkit::fake_llm::{FakeLlm, Script, Step as FakeStep};

    let fake = FakeLlm::start();
    let llm = model(settings(&fake.base_url()));
    for _ in 0..3 {
        let mut stream = llm.complete(request(100)).await.unwrap();
        let (events, error) = drain(stream.as_mut()).await;
        assert_eq!(error, None);
        assert_eq!(texts(&events), ["Hello", " there", "!"]);
    }
    assert_eq!(fake.connections(), 1);
    assert!(
        !fake
            .headers_of_last()
            .iter()
            .any(|(name, _)| name == "connection"),
        "{:?}",
        fake.headers_of_last()
    );

    fake.push(Script::Stream(vec![
        FakeStep::Text("a".to_owned()),
        FakeStep::Hold,
        FakeStep::Done,
    ]));
    let mut stream = llm.complete(request(100)).await.unwrap();
    assert_eq!(
        stream.next().await,
        Ok(Some(LlmEvent::Text("a".to_owned())))
    );
    drop(stream);
    assert!(fake.wait_for_disconnect(Duration::from_secs(5)).await);
    let mut stream = llm.complete(request(100)).await.unwrap();
    assert_eq!(drain(stream.as_mut()).await.1, None);
    assert_eq!(fake.connections(), 2);
    assert_eq!(fake.requests().len(), 5);
}
