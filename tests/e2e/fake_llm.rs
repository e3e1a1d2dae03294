//! The fake chat-completions server itself, driven with a plain HTTP
//! client: what the adapter tests rely on it to do.

use std::time::Duration;

use confab_e2e::fake_llm::{FakeLlm, Script, Step};
use serde_json::{Value, json};

const PATIENCE: Duration = Duration::from_secs(5);

fn chat_body(content: &str) -> Value {
    json!({
        "model": "gpt-test",
        "stream": true,
        "messages": [{"role": "user", "content": content}],
    })
}

/// A plain client (the workspace's reqwest uses rustls without a default
/// provider, so one is installed first).
fn client() -> reqwest::Client {
    confab_server::install_tls_provider();
    reqwest::Client::new()
}

async fn chat(fake: &FakeLlm, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}/chat/completions", fake.base_url()))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// The `data:` payloads of an event stream, in order.
fn events(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| event.strip_prefix("data: ").unwrap().to_owned())
        .collect()
}

/// The concatenated `delta.content` of an event stream.
fn content_of(text: &str) -> String {
    events(text)
        .iter()
        .filter(|data| *data != "[DONE]")
        .filter_map(|data| {
            let chunk: Value = serde_json::from_str(data).unwrap();
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// Reads chunks until the body so far contains `wanted`.
async fn read_until(res: &mut reqwest::Response, body: &mut String, wanted: &str) {
    while !body.contains(wanted) {
        let chunk = tokio::time::timeout(PATIENCE, res.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap_or_else(|| panic!("the stream ended before {wanted:?}: {body}"));
        body.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test]
async fn default_reply_is_an_openai_stream() {
    let fake = FakeLlm::start();
    assert!(fake.base_url().starts_with("http://127.0.0.1:"));
    assert!(fake.base_url().ends_with("/v1"));
    let res = chat(&fake, &chat_body("hi")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    assert!(res.headers().get("content-length").is_none());
    let text = res.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(content_of(&text), "Hello there!");
    let events = events(&text);
    assert_eq!(events.len(), 6, "{text}");
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["model"], "gpt-test");
    assert_eq!(first["id"], "chatcmpl-1");
    assert!(first["created"].is_u64());
    assert_eq!(
        first["choices"],
        json!([{"index": 0, "delta": {"content": "Hello"}, "finish_reason": null}])
    );
    let finish: Value = serde_json::from_str(&events[3]).unwrap();
    assert_eq!(
        finish["choices"],
        json!([{"index": 0, "delta": {}, "finish_reason": "stop"}])
    );
    let usage: Value = serde_json::from_str(&events[4]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8})
    );
    assert_eq!(fake.disconnects(), 0);
}

#[tokio::test]
async fn scripts_are_used_in_order_then_the_default() {
    let fake = FakeLlm::start();
    let error = r#"{"error":{"message":"boom","type":"server_error"}}"#;
    fake.push(Script::Status(500, error.to_owned()));
    fake.push(Script::reply(&["one", " two"]));
    fake.push(Script::Status(429, "slow down".to_owned()));

    let res = chat(&fake, &chat_body("a")).await;
    assert_eq!(res.status(), 500);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_eq!(res.text().await.unwrap(), error);

    let text = chat(&fake, &chat_body("b")).await.text().await.unwrap();
    assert_eq!(content_of(&text), "one two");
    assert!(text.contains(r#""finish_reason":"stop""#));
    assert!(text.ends_with("data: [DONE]\n\n"));

    let res = chat(&fake, &chat_body("c")).await;
    assert_eq!(res.status(), 429);
    assert_eq!(res.text().await.unwrap(), "slow down");

    let text = chat(&fake, &chat_body("d")).await.text().await.unwrap();
    assert_eq!(content_of(&text), "Hello there!");
}

#[tokio::test]
async fn a_default_set_answers_every_request_the_queue_does_not() {
    let paced = Script::paced(&["one", " two", " three"], Duration::from_millis(5));
    assert_eq!(
        paced,
        Script::Stream(vec![
            Step::Text("one".to_owned()),
            Step::Delay(Duration::from_millis(5)),
            Step::Text(" two".to_owned()),
            Step::Delay(Duration::from_millis(5)),
            Step::Text(" three".to_owned()),
            Step::Finish("stop"),
            Step::Done,
        ])
    );
    let fake = FakeLlm::start();
    fake.set_default(paced);
    fake.push(Script::reply(&["queued"]));
    let text = chat(&fake, &chat_body("a")).await.text().await.unwrap();
    assert_eq!(content_of(&text), "queued");
    // The queue is empty from here on: every request gets the default,
    // and it is not used up.
    let answers = (0..20).map(|_| async {
        let text = chat(&fake, &chat_body("b")).await.text().await.unwrap();
        (content_of(&text), text.ends_with("data: [DONE]\n\n"))
    });
    for answer in futures_util::future::join_all(answers).await {
        assert_eq!(answer, ("one two three".to_owned(), true));
    }
    assert_eq!(fake.requests().len(), 21);
}

#[tokio::test]
async fn raw_bytes_and_close_are_written_as_scripted() {
    let fake = FakeLlm::start();
    fake.push(Script::Stream(vec![
        Step::Text("a".to_owned()),
        Step::Raw("data: {not json\n\n".to_owned()),
        Step::Close,
        Step::Text("never".to_owned()),
    ]));
    let text = chat(&fake, &chat_body("x")).await.text().await.unwrap();
    assert!(text.ends_with("\n\ndata: {not json\n\n"), "{text}");
    assert!(!text.contains("never"));
    assert!(!text.contains("[DONE]"));
    assert_eq!(fake.disconnects(), 0);
}

#[tokio::test]
async fn other_routes_are_not_found() {
    let fake = FakeLlm::start();
    let client = client();
    let res = client
        .get(format!("{}/chat/completions", fake.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let res = client
        .post(format!("{}/completions", fake.base_url()))
        .json(&chat_body("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn hold_waits_for_release() {
    let fake = FakeLlm::start();
    fake.push(Script::Stream(vec![
        Step::Text("before".to_owned()),
        Step::Hold,
        Step::Text("after".to_owned()),
        Step::Done,
    ]));
    let mut res = chat(&fake, &chat_body("x")).await;
    let mut body = String::new();
    read_until(&mut res, &mut body, r#""content":"before""#).await;
    let more = tokio::time::timeout(Duration::from_millis(100), res.chunk()).await;
    assert!(more.is_err(), "the stream went on while held: {more:?}");
    fake.release();
    read_until(&mut res, &mut body, "data: [DONE]\n\n").await;
    assert_eq!(content_of(&body), "beforeafter");
    assert!(res.chunk().await.unwrap().is_none());
}

#[tokio::test]
async fn a_release_before_the_hold_still_counts() {
    let fake = FakeLlm::start();
    fake.release();
    fake.push(Script::Stream(vec![
        Step::Text("a".to_owned()),
        Step::Delay(Duration::from_millis(10)),
        Step::Hold,
        Step::Text("b".to_owned()),
        Step::Done,
    ]));
    let text = tokio::time::timeout(PATIENCE, async {
        chat(&fake, &chat_body("x")).await.text().await.unwrap()
    })
    .await
    .unwrap();
    assert_eq!(content_of(&text), "ab");
}

#[tokio::test]
async fn title_requests_get_the_title_and_leave_the_queue() {
    let fake = FakeLlm::start();
    fake.push(Script::reply(&["Queued"]));
    let title_body = json!({
        "model": "gpt-test",
        "stream": true,
        "messages": [
            {"role": "system", "content": "Write A Title For This Conversation, in five words."},
            {"role": "user", "content": "hi"},
        ],
    });

    let text = chat(&fake, &title_body).await.text().await.unwrap();
    assert_eq!(content_of(&text), "Fake Title");
    assert!(text.ends_with("data: [DONE]\n\n"));

    // Content given as parts is recognised too.
    fake.set_title(Some("Another".to_owned()));
    let parts_body = json!({
        "model": "gpt-test",
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Suggest a title for this conversation"},
        ]}],
    });
    let text = chat(&fake, &parts_body).await.text().await.unwrap();
    assert_eq!(content_of(&text), "Another");

    fake.set_title(None);
    let res = chat(&fake, &title_body).await;
    assert_eq!(res.status(), 500);
    assert_eq!(res.text().await.unwrap(), r#"{"error":"no title"}"#);

    assert_eq!(fake.title_requests(), 3);
    assert!(fake.requests().is_empty());
    let text = chat(&fake, &chat_body("x")).await.text().await.unwrap();
    assert_eq!(content_of(&text), "Queued");
    assert_eq!(fake.requests().len(), 1);
    assert_eq!(fake.title_requests(), 3);
}

#[tokio::test]
async fn requests_and_headers_are_recorded() {
    let fake = FakeLlm::start();
    assert!(!fake.wait_for_requests(1, Duration::from_millis(20)).await);
    let body = chat_body("record me");
    let res = client()
        .post(format!("{}/chat/completions", fake.base_url()))
        .bearer_auth("sk-test-key")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(fake.wait_for_requests(1, PATIENCE).await);
    assert_eq!(fake.requests(), vec![body]);
    let headers = fake.headers_of_last();
    assert!(
        headers.contains(&("authorization".to_owned(), "Bearer sk-test-key".to_owned())),
        "{headers:?}"
    );
    assert!(
        headers.contains(&("content-type".to_owned(), "application/json".to_owned())),
        "{headers:?}"
    );
    let _ = res.text().await.unwrap();
}

#[tokio::test]
async fn a_client_dropping_a_held_stream_is_seen() {
    let fake = FakeLlm::start();
    fake.push(Script::Stream(vec![
        Step::Text("a".to_owned()),
        Step::Hold,
        Step::Text("b".to_owned()),
        Step::Done,
    ]));
    let client = client();
    let mut res = client
        .post(format!("{}/chat/completions", fake.base_url()))
        .json(&chat_body("x"))
        .send()
        .await
        .unwrap();
    let mut body = String::new();
    read_until(&mut res, &mut body, r#""content":"a""#).await;
    assert!(!fake.wait_for_disconnect(Duration::ZERO).await);
    drop(res);
    drop(client);
    assert!(fake.wait_for_disconnect(PATIENCE).await);
    assert_eq!(fake.disconnects(), 1);
}

#[tokio::test]
async fn a_client_dropping_a_stalled_stream_is_seen() {
    let fake = FakeLlm::start();
    fake.push(Script::Stream(vec![
        Step::Text("a".to_owned()),
        Step::Stall,
    ]));
    let mut res = chat(&fake, &chat_body("x")).await;
    let mut body = String::new();
    read_until(&mut res, &mut body, r#""content":"a""#).await;
    drop(res);
    assert!(fake.wait_for_disconnect(PATIENCE).await);
    assert_eq!(fake.disconnects(), 1);
}

#[tokio::test]
async fn one_release_per_held_stream_releases_them_all() {
    let fake = FakeLlm::start();
    for _ in 0..2 {
        fake.push(Script::Stream(vec![
            Step::Text("a".to_owned()),
            Step::Hold,
            Step::Text("b".to_owned()),
            Step::Done,
        ]));
    }
    let mut first = chat(&fake, &chat_body("1")).await;
    let mut second = chat(&fake, &chat_body("2")).await;
    let (mut one, mut two) = (String::new(), String::new());
    read_until(&mut first, &mut one, r#""content":"a""#).await;
    read_until(&mut second, &mut two, r#""content":"a""#).await;
    fake.release();
    fake.release();
    read_until(&mut first, &mut one, "data: [DONE]\n\n").await;
    read_until(&mut second, &mut two, "data: [DONE]\n\n").await;
    assert_eq!(content_of(&one), "ab");
    assert_eq!(content_of(&two), "ab");
}

/// A raw connection to the fake.
async fn connect(fake: &FakeLlm) -> tokio::net::TcpStream {
    let address = fake
        .base_url()
        .strip_prefix("http://")
        .unwrap()
        .strip_suffix("/v1")
        .unwrap()
        .to_owned();
    tokio::net::TcpStream::connect(address).await.unwrap()
}

/// With `Connection: close` asked for, the answer's body ends with the
/// connection.
#[tokio::test]
async fn the_wire_format_is_plain_http_1_1() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let fake = FakeLlm::start();
    let mut socket = connect(&fake).await;
    // A chunked body is read as well as one with a Content-Length.
    let body = r#"{"model":"m","messages":[{"role":"user","content":"chunked"}]}"#;
    let (head, tail) = body.split_at(10);
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: fake\r\nAuthorization: Bearer k\r\n\
         Connection: close\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{head}\r\n{:x};ext=1\r\n{tail}\r\n0\r\n\r\n",
        head.len(),
        tail.len(),
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(PATIENCE, socket.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let (head, body_text) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("\r\ncontent-type: text/event-stream"),
        "{head}"
    );
    assert!(head.contains("\r\nconnection: close"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    assert_eq!(content_of(body_text), "Hello there!");
    assert!(body_text.ends_with("data: [DONE]\n\n"));
    assert_eq!(
        fake.requests(),
        vec![serde_json::from_str::<Value>(body).unwrap()]
    );
    assert!(
        fake.headers_of_last()
            .contains(&("authorization".to_owned(), "Bearer k".to_owned()))
    );
}

/// Without `Connection: close`, a stream's body is chunked, its end
/// written with `[DONE]`, and the next request is answered on the same
/// connection; a client that then goes is no disconnect.
#[tokio::test]
async fn a_connection_is_kept_for_the_next_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let fake = FakeLlm::start();
    let mut socket = connect(&fake).await;
    for content in ["one", "two"] {
        let body =
            json!({"model": "m", "messages": [{"role": "user", "content": content}]}).to_string();
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: fake\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        socket.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(PATIENCE, async {
            while !answer.ends_with(b"\r\n0\r\n\r\n") {
                let mut more = [0_u8; 4096];
                let n = socket.read(&mut more).await.unwrap();
                assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
                answer.extend_from_slice(&more[..n]);
            }
        })
        .await
        .unwrap();
        let answer = String::from_utf8(answer).unwrap();
        let (head, chunked) = answer.split_once("\r\n\r\n").unwrap();
        let head = head.to_ascii_lowercase();
        assert!(head.contains("\r\ntransfer-encoding: chunked"), "{head}");
        assert!(!head.contains("connection: close"), "{head}");
        // The chunks' data, in order: the same events as ever.
        let mut text = String::new();
        let mut rest = chunked;
        loop {
            let (size, after) = rest.split_once("\r\n").unwrap();
            let size = usize::from_str_radix(size, 16).unwrap();
            if size == 0 {
                assert_eq!(after, "\r\n");
                break;
            }
            text.push_str(&after[..size]);
            rest = after[size..].strip_prefix("\r\n").unwrap();
        }
        assert_eq!(content_of(&text), "Hello there!");
        assert!(text.ends_with("data: [DONE]\n\n"));
        // The body's end came with the last event, in one chunk.
        assert!(
            chunked.ends_with("data: [DONE]\n\n\r\n0\r\n\r\n"),
            "{chunked}"
        );
    }
    assert_eq!(fake.requests().len(), 2);
    assert_eq!(fake.connections(), 1);
    drop(socket);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fake.disconnects(), 0);
}
