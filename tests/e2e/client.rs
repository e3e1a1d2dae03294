//! `confab-client` against a real server (and the fake model): what a Rust
//! service using the client sees. Connections are broken for real, by a
//! TCP proxy between the two (`confab_e2e::proxy`).

mod load;
mod scripted;

use std::time::Duration;

use confab_client::{Client, Error, Event, ListQuery, OwnAllowance, Send};
use confab_domain::{ConversationId, ErrorCode, MessageRole, MessageStatus, Role};
use confab_e2e::TestApp;
use confab_e2e::chat::{PASSWORD, held_between, spawn_chat, spawn_chat_with_redis};
use confab_e2e::fake_llm::{FakeLlm, Script};
use confab_e2e::proxy::CuttingProxy;
use confab_sql::Backend;
use futures_util::StreamExt;

on_both_backends!(
    a_new_conversation_streams_the_message_the_history_returns,
    a_dropped_connection_is_resumed_without_loss_or_repeat,
    a_dropped_connection_is_resumed_on_another_instance,
    a_send_whose_response_was_lost_is_retried_with_its_key_and_stored_once,
    a_running_answer_is_stopped,
    json_mode_returns_the_finished_answer,
    errors_carry_the_apis_code_field_request_id_and_retry_after,
    an_expired_access_token_is_refreshed_once_and_the_call_repeated,
    conversations_are_listed_renamed_archived_and_deleted,
    an_admin_manages_users_and_a_user_cannot,
    an_api_key_sends_as_its_owner,
);

/// A client of `app` (or of the proxy before it) registered and signed in
/// as `name`.
async fn signed_in(address: &str, name: &str) -> Client {
    let client = Client::new(address).unwrap();
    let user = client
        .register(name, &format!("{name}@example.com"), PASSWORD)
        .await
        .unwrap();
    assert_eq!(user.username, name);
    assert_eq!(user.role, Role::User);
    client.login(name, PASSWORD).await.unwrap();
    client
}

/// Every event until `stop` says so (included), failing on an error.
async fn read_until(
    answer: &mut confab_client::AnswerStream,
    stop: impl Fn(&Event) -> bool,
) -> Vec<Event> {
    let mut seen = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(20), answer.next())
            .await
            .expect("an event in time")
            .expect("the stream goes on")
            .unwrap();
        let last = stop(&event);
        seen.push(event);
        if last {
            return seen;
        }
    }
}

/// The text the `Text` events carry, in order.
fn text_of(events: &[Event]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

async fn a_new_conversation_streams_the_message_the_history_returns(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let client = signed_in(&app.address, "ada").await;
    assert_eq!(client.me().await.unwrap().username, "ada");

    let mut answer = client.send(&Send::new_conversation("Hi")).await.unwrap();
    let events = read_until(&mut answer, |e| *e == Event::Done).await;
    assert!(answer.next().await.is_none(), "nothing after [DONE]");
    let id = answer.conversation_id().unwrap();
    // The seed's order, typed.
    assert_eq!(events[0], Event::Encoding("v1".into()));
    assert_eq!(events[1], Event::Started(id));
    assert!(
        matches!(&events[2], Event::Input(m) if m.text() == "Hi" && m.role == MessageRole::User)
    );
    assert!(matches!(&events[3], Event::Added(m) if m.status == MessageStatus::InProgress));
    assert_eq!(events[4], Event::FirstToken);
    assert_eq!(text_of(&events), "Hello there!");
    let tail: Vec<&Event> = events.iter().rev().take(4).collect();
    assert_eq!(
        tail,
        [
            &Event::Done,
            &Event::Complete,
            &Event::Title("Fake Title".into()),
            &Event::Ended(MessageStatus::FinishedSuccessfully),
        ]
    );
    assert_eq!(answer.title(), Some("Fake Title"));

    // What the deltas built is what the history returns, field for field.
    let built = answer.message().unwrap();
    let history = client.conversation(id).await.unwrap();
    assert_eq!(history.title, "Fake Title");
    assert_eq!(history.messages.len(), 2);
    assert_eq!(history.messages[1], built);
    assert_eq!(built.text(), "Hello there!");
    assert_eq!(built.end_turn, Some(true));

    // And the conversation goes on.
    llm.push(Script::reply(&["Fine", ", thanks."]));
    let mut answer = client
        .send(&Send::message(id, "How are you?"))
        .await
        .unwrap();
    assert_eq!(answer.conversation_id(), Some(id));
    let second = answer.finish().await.unwrap();
    assert_eq!(second.text(), "Fine, thanks.");
    let history = client.conversation(id).await.unwrap();
    let texts: Vec<String> = history
        .messages
        .iter()
        .map(confab_client::Message::text)
        .collect();
    assert_eq!(
        texts,
        ["Hi", "Hello there!", "How are you?", "Fine, thanks."]
    );
    assert_eq!(history.messages[3], second);
    assert_eq!(history.current_node.as_ref(), Some(&second.id));
}

/// Sends through `proxy`, cuts every connection once the first text has
/// arrived, switches the proxy to `then` (when given), releases the model
/// and reads on: the stream resumes, with no text missing or repeated.
async fn cut_mid_answer(
    app: &TestApp,
    llm: &FakeLlm,
    proxy: &CuttingProxy,
    then: Option<&TestApp>,
) {
    let client = signed_in(&proxy.address, "ada").await;
    llm.push(held_between("partial", " answer"));
    let mut answer = client.send(&Send::new_conversation("Hi")).await.unwrap();
    let mut events = read_until(&mut answer, |e| matches!(e, Event::Text(_))).await;
    assert_eq!(text_of(&events), "partial");
    proxy.cut();
    if let Some(other) = then {
        proxy.retarget(&other.address);
    }
    llm.release();
    events.extend(read_until(&mut answer, |e| *e == Event::Done).await);
    assert!(
        events.contains(&Event::Reconnected),
        "the cut was seen and resumed: {events:?}"
    );
    assert_eq!(text_of(&events), "partial answer");
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::Ended(_)))
            .count(),
        1
    );
    let id = answer.conversation_id().unwrap();
    let built = answer.message().unwrap();
    assert_eq!(built.text(), "partial answer");
    assert_eq!(built.status, MessageStatus::FinishedSuccessfully);
    let direct = Client::new(&app.address).unwrap();
    direct.login("ada", PASSWORD).await.unwrap();
    assert_eq!(direct.conversation(id).await.unwrap().messages[1], built);
    assert_eq!(llm.requests().len(), 1, "the model was asked once");
}

async fn a_dropped_connection_is_resumed_without_loss_or_repeat(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[("CONFAB__LLM__IDLE_TIMEOUT_MS", "20000")]);
    let proxy = CuttingProxy::start(&app.address).await;
    cut_mid_answer(&app, &llm, &proxy, None).await;
}

async fn a_dropped_connection_is_resumed_on_another_instance(backend: Backend) {
    let llm = FakeLlm::start();
    let a = spawn_chat_with_redis(backend, &llm, &[("CONFAB__LLM__IDLE_TIMEOUT_MS", "20000")]);
    let b = a.sibling(&[]);
    let proxy = CuttingProxy::start(&a.address).await;
    cut_mid_answer(&a, &llm, &proxy, Some(&b)).await;
}

async fn a_send_whose_response_was_lost_is_retried_with_its_key_and_stored_once(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let proxy = CuttingProxy::start(&app.address).await;
    let client = signed_in(&proxy.address, "ada").await;
    for json_mode in [false, true] {
        // No connection kept from before: the send opens a new one.
        proxy.cut();
        let lost = proxy.lost();
        proxy.lose_responses(1);
        let calls = llm.requests().len();
        let send = Send::new_conversation("Once, please");
        let message = if json_mode {
            client.send_json(&send).await.unwrap().message
        } else {
            client.send(&send).await.unwrap().finish().await.unwrap()
        };
        assert_eq!(proxy.lost(), lost + 1, "a response was lost");
        assert_eq!(message.text(), "Hello there!");
        assert_eq!(llm.requests().len(), calls + 1, "the model was asked once");
    }
    let list = client.conversations(&ListQuery::default()).await.unwrap();
    assert_eq!(list.total, 2, "one conversation per send: {list:?}");
    for c in list.items {
        assert_eq!(client.conversation(c.id).await.unwrap().messages.len(), 2);
    }
}

async fn a_running_answer_is_stopped(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[("CONFAB__LLM__IDLE_TIMEOUT_MS", "20000")]);
    let client = signed_in(&app.address, "ada").await;
    llm.push(held_between("partial", " answer"));
    let mut answer = client.send(&Send::new_conversation("Hi")).await.unwrap();
    read_until(&mut answer, |e| matches!(e, Event::Text(_))).await;
    let id = answer.conversation_id().unwrap();
    client.stop(id).await.unwrap();
    let rest = read_until(&mut answer, |e| *e == Event::Done).await;
    assert!(rest.contains(&Event::Ended(MessageStatus::FinishedPartialCompletion)));
    let stored = &client.conversation(id).await.unwrap().messages[1];
    assert_eq!(stored.status, MessageStatus::FinishedPartialCompletion);
    assert_eq!(stored.text(), "partial");
    assert_eq!(stored, &answer.message().unwrap());
    // Nothing runs any more.
    let error = client.stop(id).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::NotFound));
    // A stopped answer can be continued.
    llm.push(Script::reply(&[" and the rest"]));
    let continued = client
        .send(&Send::continue_answer(id, &stored.id))
        .await
        .unwrap()
        .finish()
        .await
        .unwrap();
    assert_eq!(continued.text(), "partial and the rest");
    assert_eq!(continued.id, stored.id);
}

async fn json_mode_returns_the_finished_answer(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let client = signed_in(&app.address, "ada").await;
    let sent = client
        .send_json(&Send::new_conversation("Hi").message_id("q1"))
        .await
        .unwrap();
    assert_eq!(sent.input_message.id.as_str(), "q1");
    assert_eq!(sent.message.text(), "Hello there!");
    assert_eq!(sent.message.status, MessageStatus::FinishedSuccessfully);
    assert_eq!(
        sent.message.metadata.parent_id,
        Some(sent.input_message.id.clone())
    );
    let history = client.conversation(sent.conversation_id).await.unwrap();
    assert_eq!(
        history.messages,
        [sent.input_message.clone(), sent.message.clone()]
    );
    // A regeneration: a second answer to the same question.
    llm.push(Script::reply(&["Another answer"]));
    let again = client
        .send_json(&Send::regenerate(sent.conversation_id))
        .await
        .unwrap();
    assert_eq!(again.message.text(), "Another answer");
    assert_ne!(again.message.id, sent.message.id);
    let history = client.conversation(sent.conversation_id).await.unwrap();
    let siblings = &history.siblings[again.message.id.as_str()];
    assert_eq!(siblings.ids.len(), 2);
    assert_eq!(siblings.index, 1);
}

async fn errors_carry_the_apis_code_field_request_id_and_retry_after(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[("CONFAB__GENERATION__PER_MINUTE", "1")]);
    let client = signed_in(&app.address, "ada").await;

    let Error::Api(missing) = client
        .conversation(ConversationId::generate())
        .await
        .unwrap_err()
    else {
        panic!("an API error")
    };
    assert_eq!(
        (missing.status, missing.code),
        (404, Some(ErrorCode::NotFound))
    );
    assert_eq!(missing.code_text, "NOT_FOUND");
    assert!(
        missing
            .request_id
            .as_deref()
            .is_some_and(|id| id.starts_with("req_"))
    );

    let Error::Api(invalid) = client
        .register("x", "x@example.com", PASSWORD)
        .await
        .unwrap_err()
    else {
        panic!("an API error")
    };
    assert_eq!(
        (invalid.status, invalid.code),
        (422, Some(ErrorCode::ValidationError))
    );
    assert_eq!(invalid.field.as_deref(), Some("username"));
    assert!(invalid.request_id.is_some());

    let Error::Api(taken) = client
        .register("ada", "other@example.com", PASSWORD)
        .await
        .unwrap_err()
    else {
        panic!("an API error")
    };
    assert_eq!(
        (taken.status, taken.field.as_deref()),
        (409, Some("username"))
    );

    client
        .send_json(&Send::new_conversation("one"))
        .await
        .unwrap();
    let Error::Api(limited) = client
        .send_json(&Send::new_conversation("two"))
        .await
        .unwrap_err()
    else {
        panic!("an API error")
    };
    assert_eq!(
        (limited.status, limited.code),
        (429, Some(ErrorCode::RateLimited))
    );
    assert!(
        limited
            .retry_after
            .is_some_and(|wait| wait > Duration::ZERO),
        "{limited:?}"
    );

    let Error::Api(refused) = Client::new(&app.address)
        .unwrap()
        .login("ada", "not the password")
        .await
        .unwrap_err()
    else {
        panic!("an API error")
    };
    assert_eq!(
        (refused.status, refused.code),
        (401, Some(ErrorCode::InvalidCredentials))
    );
    assert!(matches!(
        Client::new(&app.address).unwrap().me().await,
        Err(Error::NotSignedIn)
    ));
}

async fn an_expired_access_token_is_refreshed_once_and_the_call_repeated(backend: Backend) {
    let llm = FakeLlm::start();
    // Access tokens of 3 s: short enough to wait for, long enough that the
    // refreshed one still holds when the repeated calls reach a loaded
    // server.
    let app = spawn_chat(
        backend,
        &llm,
        &[
            ("CONFAB__AUTH__ACCESS_TTL_SECS", "3"),
            ("CONFAB__AUTH__LEEWAY_SECS", "0"),
        ],
    );
    let client = signed_in(&app.address, "ada").await;
    // The client's access token has expired once one issued after it is
    // refused as expired: waiting for that, not for a fixed time, is the
    // test.
    expired_by_now(&app).await;
    assert_eq!(client.me().await.unwrap().username, "ada");
    expired_by_now(&app).await;
    // A send refreshes the same way, and so do calls racing each other:
    // one refresh, the others use its token.
    let (query, send) = (ListQuery::default(), Send::new_conversation("Hi"));
    let (a, b, sent) = tokio::join!(
        client.me(),
        client.conversations(&query),
        client.send_json(&send),
    );
    assert_eq!(a.unwrap().username, "ada");
    b.unwrap();
    assert_eq!(sent.unwrap().message.text(), "Hello there!");
    // A logout ends the session and the client forgets its tokens.
    client.logout().await.unwrap();
    assert!(matches!(client.me().await, Err(Error::NotSignedIn)));
}

/// Logs in as ada and waits until the server refuses that access token as
/// expired: every token issued before it has expired too.
async fn expired_by_now(app: &TestApp) {
    let raw = app.login("ada", PASSWORD).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let res = app.get_auth("/api/v1/users/me", &raw).await;
        if res.status() == 401 {
            confab_e2e::error_body(res, 401, "TOKEN_EXPIRED").await;
            return;
        }
        assert_eq!(res.status(), 200);
        assert!(
            std::time::Instant::now() < deadline,
            "the token did not expire"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn conversations_are_listed_renamed_archived_and_deleted(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let client = signed_in(&app.address, "ada").await;
    let first = client
        .send_json(&Send::new_conversation("first"))
        .await
        .unwrap();
    let second = client
        .send_json(&Send::new_conversation("second"))
        .await
        .unwrap();
    let list = client.conversations(&ListQuery::default()).await.unwrap();
    let ids: Vec<ConversationId> = list.items.iter().map(|c| c.id).collect();
    assert_eq!(ids, [second.conversation_id, first.conversation_id]);
    assert_eq!(list.total, 2);

    let renamed = client
        .rename(first.conversation_id, "Renamed")
        .await
        .unwrap();
    assert_eq!(renamed.title, "Renamed");
    let found = client
        .conversations(&ListQuery {
            search: Some("renamed".into()),
            ..ListQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(found.items.len(), 1);
    assert_eq!(found.items[0].id, first.conversation_id);
    assert!(found.items[0].found.is_some());

    client.archive(second.conversation_id, true).await.unwrap();
    let active = client.conversations(&ListQuery::default()).await.unwrap();
    assert_eq!(active.items.len(), 1);
    let archived = client
        .conversations(&ListQuery {
            archived: true,
            ..ListQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(archived.items[0].id, second.conversation_id);
    assert!(archived.items[0].is_archived);

    client
        .delete_conversation(first.conversation_id)
        .await
        .unwrap();
    let gone = client
        .conversation(first.conversation_id)
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Some(ErrorCode::NotFound));
    assert_eq!(client.delete_all_conversations().await.unwrap(), 1);
    assert_eq!(
        client
            .conversations(&ListQuery::default())
            .await
            .unwrap()
            .total,
        0
    );
    let models = client.models().await.unwrap();
    assert!(
        models.iter().any(|m| m.default && m.id == "fake-model"),
        "{models:?}"
    );
    let usage = client.usage().await.unwrap();
    assert_eq!(usage.totals.answers, 2);
    assert!(client.allowance().await.unwrap().daily.limit.is_none());
}

async fn an_admin_manages_users_and_a_user_cannot(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let ada = signed_in(&app.address, "ada").await;
    ada.send_json(&Send::new_conversation("Hi")).await.unwrap();
    app.create_admin("boss", PASSWORD).await;
    let admin = Client::new(&app.address).unwrap();
    admin.login("boss", PASSWORD).await.unwrap();
    assert_eq!(admin.me().await.unwrap().role, Role::Admin);

    let users = admin.admin_users(0, 10).await.unwrap();
    assert_eq!(users.total, 2);
    let ada_id = users.items.iter().find(|u| u.username == "ada").unwrap().id;
    assert_eq!(
        admin.admin_user_usage(ada_id).await.unwrap().totals.answers,
        1
    );
    assert_eq!(admin.admin_usage().await.unwrap().totals.answers, 1);
    let own = OwnAllowance {
        daily_tokens: Some(50_000),
        monthly_tokens: None,
    };
    let allowance = admin.admin_set_allowance(ada_id, own).await.unwrap();
    assert_eq!(allowance.own, own);
    assert_eq!(allowance.daily.limit, Some(50_000));
    assert_eq!(ada.allowance().await.unwrap().own, own);

    let refused = ada.admin_users(0, 10).await.unwrap_err();
    assert_eq!(
        (refused.api().unwrap().status, refused.code()),
        (403, Some(ErrorCode::Forbidden))
    );

    let disabled = admin.admin_set_disabled(ada_id, true).await.unwrap();
    assert!(disabled.disabled);
    let locked_out = ada.me().await.unwrap_err();
    assert_eq!(locked_out.api().unwrap().status, 401);
    admin.admin_delete_user(ada_id).await.unwrap();
    assert_eq!(admin.admin_users(0, 10).await.unwrap().total, 1);
}

async fn an_api_key_sends_as_its_owner(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let ada = signed_in(&app.address, "ada").await;
    let key = ada
        .create_api_key(
            "bot",
            &["conversations:read", "conversations:write"],
            PASSWORD,
        )
        .await
        .unwrap();
    assert!(key.starts_with("cfk_"));
    let bot = Client::with_api_key(&app.address, &key).unwrap();
    let mut answer = bot.send(&Send::new_conversation("Hi")).await.unwrap();
    let message = answer.finish().await.unwrap();
    assert_eq!(message.text(), "Hello there!");
    let list = ada.conversations(&ListQuery::default()).await.unwrap();
    assert_eq!(list.total, 1, "the key's conversation is its owner's");
    let refused = bot.me().await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::Forbidden));
}
