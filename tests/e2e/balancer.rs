//! Three `confab serve` processes on one PostgreSQL and one Redis behind a
//! real nginx (round-robin, its default response buffering on): answers
//! stream through it unbuffered, a stream resumed through it lands on any
//! instance and completes once, and the client address reaches the
//! limiter only through the trusted-proxy rules.

use confab_e2e::chat::{
    SseReader, conversation_of, held_between, is_append, message_body, replay, sign_up,
};
use confab_e2e::fake_llm::FakeLlm;
use confab_e2e::nginx::Nginx;
use confab_e2e::{TestApp, three_behind_a_balancer};
use serde_json::{Value, json};

/// Three instances of one service, and nginx in front of them.
struct Balanced {
    instances: Vec<TestApp>,
    nginx: Nginx,
}

async fn balanced(llm: &FakeLlm, extra: &[(&str, &str)]) -> Balanced {
    let instances = three_behind_a_balancer("confab-balanced", &llm.base_url(), extra).await;
    let addresses: Vec<String> = instances.iter().map(|i| i.address.clone()).collect();
    let nginx = Nginx::start(&addresses).await;
    Balanced { instances, nginx }
}

/// A client that connects from the loopback address `from` (so nginx sees
/// it as a client of its own, not as itself).
fn client_from(from: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(from))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client")
}

#[tokio::test]
async fn an_answer_streams_through_nginx_unbuffered_and_resumes_on_any_instance_once() {
    let llm = FakeLlm::start();
    let b = balanced(&llm, &[]).await;
    let client = client_from([127, 0, 0, 2]);
    let token = sign_up(&client, &b.nginx.address, "balanced").await;

    // The first text reaches the client through nginx while the model is
    // still held: nothing waits in nginx's buffers.
    llm.push(held_between("partial", " answer"));
    let res = client
        .post(b.nginx.url("/api/v1/conversations"))
        .bearer_auth(&token)
        .json(&message_body("hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // nginx obeys Confab's `X-Accel-Buffering: no` and does not pass it on.
    assert!(res.headers().get("x-accel-buffering").is_none());
    let mut reader = SseReader::new(res);
    let first = reader.until(is_append).await;
    assert!(first.iter().any(|e| e.data.contains("partial")));
    let id = conversation_of(&first);
    let resume_token = first[1].json()["token"].as_str().unwrap().to_owned();
    let last_id = first.last().unwrap().id.clone().unwrap();
    drop(reader);

    // Resumed through nginx, once per instance in turn (round-robin): each
    // resume continues after the last event, wherever it lands.
    let mut resumed = Vec::new();
    for _ in 0..b.instances.len() {
        let res = client
            .get(b.nginx.url(&format!("/api/v1/conversations/{id}/stream")))
            .bearer_auth(&token)
            .header("x-resume-token", &resume_token)
            .header("last-event-id", &last_id)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        resumed.push(SseReader::new(res));
    }
    llm.release();
    let mut whole = first.clone();
    for (n, mut reader) in resumed.into_iter().enumerate() {
        let rest = reader.rest().await;
        assert!(
            rest.iter()
                .any(|e| e.data.contains("message_stream_complete")),
            "resume {n} completed"
        );
        assert!(
            !rest.iter().any(|e| e.data.contains("\"partial\"")),
            "resume {n} repeated nothing before its Last-Event-ID"
        );
        if n == 0 {
            whole.extend(rest);
        }
    }
    let rebuilt = replay(&whole);
    assert_eq!(
        rebuilt["message"]["content"]["parts"][0], "partial answer",
        "the answer, once"
    );
    let page: Value = client
        .get(b.nginx.url(&format!("/api/v1/conversations/{id}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let messages = page["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "one question, one answer: {page}");
    assert_eq!(messages[1]["content"]["parts"][0], "partial answer");
}

#[tokio::test]
async fn through_nginx_the_limiter_keys_the_client_never_a_forged_forwarded_for() {
    let llm = FakeLlm::start();
    let b = balanced(&llm, &[("CONFAB__RATE_LIMIT__REGISTER_PER_MINUTE", "2")]).await;
    let register = |client: reqwest::Client, name: String, forged: &'static str| {
        let url = b.nginx.url("/api/v1/auth/register");
        async move {
            client
                .post(url)
                .header("x-forwarded-for", forged)
                .json(&json!({"username": name, "email": format!("{name}@example.com"), "password": confab_e2e::chat::PASSWORD}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // One client, three instances, a new forged address each time: the
    // third registration is over its address's limit all the same.
    let mallory = client_from([127, 0, 0, 3]);
    let statuses = [
        register(mallory.clone(), "forger1".into(), "203.0.113.1").await,
        register(mallory.clone(), "forger2".into(), "203.0.113.2").await,
        register(mallory.clone(), "forger3".into(), "203.0.113.3").await,
    ];
    assert_eq!(statuses, [201, 201, 429]);
    // Another client address has its own allowance.
    let alice = client_from([127, 0, 0, 4]);
    assert_eq!(register(alice, "alice1".into(), "203.0.113.1").await, 201);
}
