//! Response compression: JSON and documents in the encoding the client
//! prefers, never an event stream, never a small body.

use std::io::Read;

use confab_e2e::chat::{SseReader, is_append, message_body, spawn_chat};
use confab_e2e::fake_llm::{FakeLlm, Script, Step};
use confab_e2e::spawn_app;
use confab_sql::Backend;

on_both_backends!(
    documents_are_compressed_as_the_client_prefers,
    small_answers_stay_plain,
    an_event_stream_is_never_compressed_nor_held_back,
);

fn decode(encoding: &str, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        "gzip" => {
            flate2::read::GzDecoder::new(bytes)
                .read_to_end(&mut out)
                .unwrap();
        }
        "br" => {
            brotli::Decompressor::new(bytes, 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        "zstd" => out = zstd::stream::decode_all(bytes).unwrap(),
        other => panic!("unexpected encoding {other}"),
    }
    out
}

fn varies_by_encoding(res: &reqwest::Response) -> bool {
    res.headers().get_all("vary").iter().any(|v| {
        v.to_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("accept-encoding")
    })
}

/// `GET path` with `Accept-Encoding: accept` (and `token`, if any).
async fn get_accepting(
    app: &confab_e2e::TestApp,
    path: &str,
    accept: &str,
    token: Option<&str>,
) -> reqwest::Response {
    let mut req = app
        .client
        .get(app.url(path))
        .header("accept-encoding", accept);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.unwrap()
}

async fn documents_are_compressed_as_the_client_prefers(backend: Backend) {
    let app = spawn_app(backend);
    let path = "/api/v1/openapi.json";
    let plain = app.get(path).await;
    assert_eq!(plain.status(), 200);
    assert!(plain.headers().get("content-encoding").is_none());
    assert!(
        varies_by_encoding(&plain),
        "a cache must key on Accept-Encoding"
    );
    let plain = plain.bytes().await.unwrap();
    for (accept, expected) in [
        ("gzip", "gzip"),
        ("br", "br"),
        ("zstd", "zstd"),
        ("gzip, deflate, br, zstd", "zstd"),
        ("gzip;q=0.5, br", "br"),
        ("deflate, gzip;q=0.1", "gzip"),
        ("GZIP", "gzip"),
    ] {
        let res = get_accepting(&app, path, accept, None).await;
        assert_eq!(res.status(), 200, "{accept}");
        assert_eq!(res.headers()["content-encoding"], expected, "{accept}");
        assert!(varies_by_encoding(&res), "{accept}");
        assert!(
            res.headers()
                .get("content-length")
                .is_none_or(|l| { l.to_str().unwrap().parse::<usize>().unwrap() < plain.len() })
        );
        let body = res.bytes().await.unwrap();
        assert!(
            body.len() < plain.len() / 2,
            "{accept}: {} bytes",
            body.len()
        );
        assert_eq!(decode(expected, &body), plain.as_ref(), "{accept}");
    }
    // Nothing we offer is acceptable: the identity encoding, not an error.
    for accept in ["deflate", "identity", "compress;q=1, *;q=0"] {
        let res = get_accepting(&app, path, accept, None).await;
        assert_eq!(res.status(), 200, "{accept}");
        assert!(res.headers().get("content-encoding").is_none(), "{accept}");
        assert_eq!(res.bytes().await.unwrap(), plain, "{accept}");
    }
    // HEAD says what GET would, with no body.
    let res = app
        .client
        .head(app.url(path))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.bytes().await.unwrap().is_empty());
}

async fn small_answers_stay_plain(backend: Backend) {
    let app = spawn_app(backend);
    let token = app.user("ada").await;
    let all = "gzip, br, zstd";
    for res in [
        get_accepting(&app, "/healthz", all, None).await,
        get_accepting(&app, "/missing", all, None).await,
        get_accepting(&app, "/api/v1/users/me", all, Some(&token)).await,
    ] {
        assert!(res.headers().get("content-encoding").is_none());
        let body = res.bytes().await.unwrap();
        assert!(serde_json::from_slice::<serde_json::Value>(&body).is_ok());
    }
    // A request body is never decoded: a compressed one is not JSON.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(
        &mut gz,
        br#"{"username":"ada","password":"correct horse battery staple"}"#,
    )
    .unwrap();
    let res = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(gz.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
}

async fn an_event_stream_is_never_compressed_nor_held_back(backend: Backend) {
    let llm = FakeLlm::start();
    llm.push(Script::Stream(vec![
        Step::Text("before".into()),
        Step::Hold,
        Step::Text(" after".into()),
        Step::Finish("stop"),
        Step::Done,
    ]));
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("ada").await;
    let res = app
        .client
        .post(app.url("/api/v1/conversations"))
        .bearer_auth(&token)
        .header("accept", "text/event-stream")
        .header("accept-encoding", "gzip, deflate, br, zstd")
        .json(&message_body("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    assert!(res.headers().get("content-encoding").is_none());
    let mut reader = SseReader::new(res);
    // The first text arrives while the model still holds the rest: nothing
    // between the generation and the client waits for more bytes.
    let first = reader.until(is_append).await;
    assert_eq!(first.last().unwrap().json()["v"][0]["v"], "before");
    llm.release();
    let rest = reader.rest().await;
    assert_eq!(rest.last().unwrap().data, "[DONE]");
}
