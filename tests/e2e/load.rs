//! Bursts of concurrent sends (issue 11, "Redis mode collapses at 50
//! concurrent sends"): every send a new conversation of one user, the
//! model streaming 20 deltas 20 ms apart (`confab_e2e::load`). Each test
//! asserts completeness, never timings: every send a 200 whose stream
//! carries the whole text and ends `message_stream_complete`, `[DONE]`
//! with no `error`, and every answer saved `finished_successfully` with
//! that text, its conversation titled and listed with it. Each burst has
//! a deadline that fails it (a stream still open then counts as timed
//! out), and the failure message counts what broke.
//!
//! In process: 100 sends to one server, on SQLite and PostgreSQL, with
//! and without Redis (then 100 more, on the connections to the model the
//! first 100 left kept), each starting a conversation or each continuing one
//! of 150 messages (its prompt read a page at a time), and beside another
//! account deleted while twenty answers of its own stream. As processes (`confab serve`, like `cluster.rs`),
//! two instances on one database, Redis and key prefix: 100 and 1,000
//! sends to one instance and 1,000 alternating between the two, on
//! PostgreSQL, and the 1,000 bursts also on one SQLite file. The bursts run
//! one at a time (they would only slow each other down on a small machine).
//! The 100-send bursts also run authenticated by an API key, in every mode.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use confab_domain::{
    ConversationId, ConversationSettings, MessageRole, MessageStatus, NewConversation,
    OffsetDateTime, SystemPrompt, Title, UserId,
};
use confab_e2e::chat::PASSWORD;
use confab_e2e::fake_llm::FakeLlm;
use confab_e2e::load::{
    Burst, End, burst, burst_into, burst_of, burst_resumed, burst_under, burst_vars, full_answer,
    paced_llm,
};
use confab_e2e::{
    TestApp, all_messages, append, finished_message, redis_url, spawn_app_with,
    spawn_app_with_redis, spawn_process,
};
use confab_ports::{ConversationStore, MessageStore};
use confab_sql::testing::TestDatabase;
use confab_sql::{Backend, SqlStore};
use tokio::sync::Mutex;

/// Taken by every burst: one runs at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// The longest a burst of 100 may take, start to last stream's end.
const CAP_100: Duration = Duration::from_secs(30);
/// The longest a burst of 1,000 may take.
const CAP_1000: Duration = Duration::from_secs(90);

on_both_backends!(
    a_hundred_sends_at_once_all_complete,
    a_hundred_sends_at_once_with_redis_all_complete,
    a_hundred_sends_into_long_conversations_all_complete,
    a_hundred_sends_into_long_conversations_with_redis_all_complete,
    a_hundred_sends_onto_switched_branches_all_complete,
    a_hundred_sends_onto_switched_branches_with_redis_all_complete,
    a_hundred_edits_at_once_all_complete,
    a_hundred_edits_at_once_with_redis_all_complete,
    a_hundred_regenerations_and_continues_at_once_all_complete,
    a_hundred_regenerations_and_continues_at_once_with_redis_all_complete,
    a_hundred_sends_with_searches_alongside_all_complete,
    a_hundred_sends_with_searches_alongside_with_redis_all_complete,
    a_hundred_sends_while_another_account_is_deleted_all_complete,
    a_hundred_sends_while_another_account_is_deleted_with_redis_all_complete,
    a_hundred_sends_with_an_api_key_all_complete,
    a_hundred_sends_with_an_api_key_with_redis_all_complete,
    a_hundred_sends_with_no_allowance_all_complete,
    a_hundred_sends_with_no_allowance_with_redis_all_complete,
    a_hundred_sends_over_the_generation_limit_are_answered_or_refused_whole,
    a_hundred_sends_over_the_generation_limit_with_redis_are_answered_or_refused_whole,
    a_hundred_sends_over_the_generation_limit_on_two_instances_are_answered_or_refused_whole,
);

/// One server in process, with or without Redis, wired to a paced model
/// with a burst's limits lifted; and its user's token.
async fn burst_app(backend: Backend, redis: bool) -> (FakeLlm, TestApp, String) {
    burst_app_where(backend, redis, |_| true, &[]).await
}

/// As [`burst_app`], with only the burst's variables `keep` keeps, and
/// `extra` after them.
async fn burst_app_where(
    backend: Backend,
    redis: bool,
    keep: impl Fn(&str) -> bool,
    extra: &[(&str, &str)],
) -> (FakeLlm, TestApp, String) {
    let llm = paced_llm();
    let base = llm.base_url();
    let mut vars: Vec<_> = burst_vars(&base)
        .into_iter()
        .filter(|(name, _)| keep(name))
        .collect();
    vars.extend_from_slice(extra);
    let app = if redis {
        spawn_app_with_redis(backend, &vars)
    } else {
        spawn_app_with(backend, &vars)
    };
    let token = app.user("ada").await;
    (llm, app, token)
}

/// 100 sends at once to one server, in process, with or without Redis;
/// then 100 more, which take the connections to the model the first
/// burst's answers left kept (the fake keeps them, as most servers do).
async fn in_process(backend: Backend, redis: bool) {
    let _one = ONE_AT_A_TIME.lock().await;
    let (llm, app, token) = burst_app(backend, redis).await;
    let mut sends = burst(&[&app], &token, 100, CAP_100).await;
    let second = burst(&[&app], &token, 100, CAP_100).await;
    sends.sends.extend(second.sends);
    sends.wall += second.wall;
    let what = format!("100 sends twice, in process, {backend:?}, Redis: {redis}");
    sends
        .assert_all_complete(&what, &app.db.store().await)
        .await;
    assert_usage_counts(&app, &token, 200).await;
    assert!(
        llm.connections() < 200,
        "the second burst reused none of the first one's connections ({} for 200 answers)",
        llm.connections()
    );
    assert_eq!(llm.disconnects(), 0);
}

/// That the usage of `token`'s user counts `answers` answers, each
/// estimated (the paced model reports no usage) and none lost to the
/// concurrent upserts of one day's line.
async fn assert_usage_counts(app: &TestApp, token: &str, answers: u64) {
    let res = app.get_auth("/api/v1/users/me/usage", token).await;
    assert_eq!(res.status(), 200);
    let report: serde_json::Value = res.json().await.unwrap();
    assert_eq!(report["totals"]["answers"], answers, "{report}");
    assert_eq!(report["totals"]["estimated_answers"], answers, "{report}");
    let per_answer = u64::try_from(full_answer().chars().count().div_ceil(4)).unwrap();
    assert_eq!(
        report["totals"]["completion_tokens"],
        answers * per_answer,
        "{report}"
    );
}

/// A key of `token`'s user that may write conversations: its text.
async fn writing_key(app: &TestApp, token: &str) -> String {
    let res = app
        .client
        .post(app.url("/api/v1/users/me/api-keys"))
        .bearer_auth(token)
        .json(&serde_json::json!({
            "name": "load",
            "scopes": ["conversations:write"],
            "password": PASSWORD,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let created: serde_json::Value = res.json().await.unwrap();
    created["key"].as_str().unwrap().to_owned()
}

/// 100 sends at once authenticated by one API key (a cold key: every send
/// may find it unknown to the instance), in process, with or without Redis.
async fn with_an_api_key(backend: Backend, redis: bool) {
    let _one = ONE_AT_A_TIME.lock().await;
    let (_llm, app, token) = burst_app(backend, redis).await;
    let key = writing_key(&app, &token).await;
    let sends = burst(&[&app], &key, 100, CAP_100).await;
    let what = format!("100 sends with an API key, in process, {backend:?}, Redis: {redis}");
    sends
        .assert_all_complete(&what, &app.db.store().await)
        .await;
    assert_usage_counts(&app, &token, 100).await;
}

async fn a_hundred_sends_with_an_api_key_all_complete(backend: Backend) {
    with_an_api_key(backend, false).await;
}

async fn a_hundred_sends_with_an_api_key_with_redis_all_complete(backend: Backend) {
    with_an_api_key(backend, true).await;
}

/// 100 sends at once with no allowance in force: after the first read,
/// each send's allowance check is answered from what the instance
/// remembers at the user's account version, with no read of their usage;
/// every answer still counts.
async fn without_an_allowance(backend: Backend, redis: bool) {
    let _one = ONE_AT_A_TIME.lock().await;
    let (_llm, app, token) = burst_app_where(
        backend,
        redis,
        |name| !name.starts_with("CONFAB__QUOTA__"),
        &[],
    )
    .await;
    let sends = burst(&[&app], &token, 100, CAP_100).await;
    let what = format!("100 sends, no allowance, {backend:?}, Redis: {redis}");
    sends
        .assert_all_complete(&what, &app.db.store().await)
        .await;
    assert_usage_counts(&app, &token, 100).await;
}

async fn a_hundred_sends_with_no_allowance_all_complete(backend: Backend) {
    without_an_allowance(backend, false).await;
}

async fn a_hundred_sends_with_no_allowance_with_redis_all_complete(backend: Backend) {
    without_an_allowance(backend, true).await;
}

/// 100 sends at once past a generation limit of 50 a minute (shared by
/// two instances over Redis when `instances` is 2): the limit is taken
/// while each send reads and opens its log, so every send is either a
/// complete answer or a 429 `RATE_LIMITED` that stored nothing; at least
/// the bucket's 50 are answered (one more per 1.2 s the burst lasts).
async fn over_the_generation_limit(backend: Backend, redis: bool, instances: usize) {
    let _one = ONE_AT_A_TIME.lock().await;
    let (_llm, a, token) = burst_app_where(
        backend,
        redis,
        |name| name != "CONFAB__GENERATION__PER_MINUTE",
        &[("CONFAB__GENERATION__PER_MINUTE", "50")],
    )
    .await;
    let b = (instances == 2).then(|| a.sibling(&[]));
    let apps: Vec<&TestApp> = std::iter::once(&a).chain(b.as_ref()).collect();
    let sends = burst(&apps, &token, 100, CAP_100).await;
    let what = format!(
        "100 sends over a limit of 50, {instances} instance(s), {backend:?}, Redis: {redis}: {}",
        sends.summary()
    );
    eprintln!("{what}");
    let refused = sends
        .sends
        .iter()
        .filter(|s| s.status == Some(429))
        .inspect(|s| {
            let code = s.code.as_deref().unwrap_or_default();
            assert!(code.starts_with("RATE_LIMITED"), "{what}: {code}");
        })
        .count();
    let answered = sends.complete();
    assert_eq!(answered + refused, 100, "{what}");
    assert!(answered >= 50 && refused > 0, "{what}");
    let list: serde_json::Value = a
        .get_auth("/api/v1/conversations", &token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], answered, "{what}: {list}");
    assert_usage_counts(&a, &token, u64::try_from(answered).unwrap()).await;
}

async fn a_hundred_sends_over_the_generation_limit_are_answered_or_refused_whole(backend: Backend) {
    over_the_generation_limit(backend, false, 1).await;
}

async fn a_hundred_sends_over_the_generation_limit_with_redis_are_answered_or_refused_whole(
    backend: Backend,
) {
    over_the_generation_limit(backend, true, 1).await;
}

async fn a_hundred_sends_over_the_generation_limit_on_two_instances_are_answered_or_refused_whole(
    backend: Backend,
) {
    over_the_generation_limit(backend, true, 2).await;
}

async fn a_hundred_sends_at_once_all_complete(backend: Backend) {
    in_process(backend, false).await;
}

async fn a_hundred_sends_at_once_with_redis_all_complete(backend: Backend) {
    in_process(backend, true).await;
}

/// Searches of `token`'s conversations on `apps`, ten at a time, until
/// `done`: how many ran, and what was wrong with any that failed (not a
/// 200 page whose every item says why it matched).
async fn search_until(apps: &[&TestApp], token: &str, done: &AtomicBool) -> (usize, Vec<String>) {
    let reader = |n: usize| async move {
        let app = apps[n % apps.len()];
        let (mut ran, mut wrong) = (0, Vec::new());
        while !done.load(Ordering::Acquire) {
            let q = ["word1", "question%20word", "word7%20word19", "nothing"][ran % 4];
            let res = app
                .get_auth(&format!("/api/v1/conversations?q={q}&limit=100"), token)
                .await;
            ran += 1;
            let status = res.status();
            let page: serde_json::Value = res.json().await.unwrap_or_default();
            let items = page["items"].as_array().cloned().unwrap_or_default();
            if status != 200 || items.iter().any(|i| !i["match"].is_object()) {
                wrong.push(format!("q={q}: {status} {page}"));
            }
        }
        (ran, wrong)
    };
    let all = futures_util::future::join_all((0..10).map(reader)).await;
    all.into_iter()
        .fold((0, Vec::new()), |(n, mut w), (ran, wrong)| {
            w.extend(wrong);
            (n + ran, w)
        })
}

/// 100 sends at once to `send_to` while ten readers search the sender's
/// conversations on `search_on` without a pause: every search answers,
/// every send completes, and then one search finds every answer, each by
/// its message.
async fn with_searches(send_to: &[&TestApp], search_on: &[&TestApp], token: &str, what: &str) {
    let done = AtomicBool::new(false);
    let (sends, (searched, wrong)) = tokio::join!(
        async {
            let sends = burst(send_to, token, 100, CAP_100).await;
            done.store(true, Ordering::Release);
            sends
        },
        search_until(search_on, token, &done)
    );
    sends
        .assert_all_complete(what, &send_to[0].db.store().await)
        .await;
    assert!(
        searched > 0 && wrong.is_empty(),
        "{what}: {searched} searches, failed: {wrong:?}"
    );
    for app in search_on {
        let page: serde_json::Value = app
            .get_auth("/api/v1/conversations?q=word19&limit=100", token)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(page["total"], 100, "{what}");
        let items = page["items"].as_array().unwrap();
        assert!(
            items.iter().all(|i| i["match"]["message_id"].is_string()),
            "{what}: every answer found by its message"
        );
    }
}

async fn sends_with_searches(backend: Backend, redis: bool) {
    let _one = ONE_AT_A_TIME.lock().await;
    let (_llm, app, token) = burst_app(backend, redis).await;
    let what = format!("100 sends with searches, in process, {backend:?}, Redis: {redis}");
    with_searches(&[&app], &[&app], &token, &what).await;
}

async fn a_hundred_sends_with_searches_alongside_all_complete(backend: Backend) {
    sends_with_searches(backend, false).await;
}

async fn a_hundred_sends_with_searches_alongside_with_redis_all_complete(backend: Backend) {
    sends_with_searches(backend, true).await;
}

/// Messages stored in each conversation of the long-conversation bursts:
/// more than a page of history and more than the prompt budget.
const LONG: usize = 150;

/// The id of the user of `token`.
async fn owner_of(app: &TestApp, token: &str) -> UserId {
    app.user_id(token).await.parse().unwrap()
}

/// `n` conversations of the caller of `token`, each with [`LONG`] user
/// messages stored directly (as a long life of sends would have left).
async fn long_conversations(app: &TestApp, token: &str, n: usize) -> Vec<ConversationId> {
    let owner = owner_of(app, token).await;
    let store = app.db.store().await;
    let seeds: Vec<_> = (0..n)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let now = OffsetDateTime::now_utc();
                let id = ConversationId::generate();
                let new = NewConversation {
                    id,
                    owner,
                    title: Title::parse("Long").unwrap(),
                    settings: Default::default(),
                    created_at: now,
                };
                ConversationStore::create(&store, new).await.unwrap();
                for k in 0..LONG {
                    let text = format!(
                        "an older message, number {k}, {}",
                        "of some length ".repeat(20)
                    );
                    let message = finished_message(id, &format!("old{k}"), MessageRole::User, text);
                    confab_e2e::append(&store, message).await;
                }
                id
            })
        })
        .collect();
    let mut ids = Vec::with_capacity(n);
    for seed in seeds {
        ids.push(seed.await.unwrap());
    }
    ids
}

/// 100 sends at once, each continuing a conversation of [`LONG`] messages,
/// to one server in process, with or without Redis: each send reads only
/// the pages of history its prompt needs, and every answer completes.
async fn into_long_conversations(backend: Backend, redis: bool) {
    let _one = ONE_AT_A_TIME.lock().await;
    let (llm, app, token) = burst_app(backend, redis).await;
    let conversations = long_conversations(&app, &token, 100).await;
    let sends = burst_into(&[&app], &token, &conversations, CAP_100).await;
    let what = format!("100 sends into long conversations, {backend:?}, Redis: {redis}");
    sends
        .assert_all_complete(&what, &app.db.store().await)
        .await;
    // Each prompt is the budget's newest history, never the whole of it.
    let asked = llm.requests();
    assert_eq!(asked.len(), 100);
    for request in &asked {
        let turns = request["messages"].as_array().unwrap();
        assert!(
            (2..LONG).contains(&turns.len()),
            "{} turns sent",
            turns.len()
        );
    }
}

async fn a_hundred_sends_into_long_conversations_all_complete(backend: Backend) {
    into_long_conversations(backend, false).await;
}

async fn a_hundred_sends_into_long_conversations_with_redis_all_complete(backend: Backend) {
    into_long_conversations(backend, true).await;
}

/// `n` conversations of the caller of `token`, each a line of two
/// exchanges (`u1`, `a1`, `u2`, `a2`) stored directly; their ids.
async fn two_exchange_lines(app: &TestApp, token: &str, n: usize) -> Vec<ConversationId> {
    lines(
        app,
        token,
        n,
        "the abandoned answer",
        MessageStatus::FinishedSuccessfully,
        &ConversationSettings::default(),
    )
    .await
}

/// As [`two_exchange_lines`], the second question `"the abandoned
/// question"` and its answer `a2` stored with `a2_text` and `a2_status`;
/// with `settings`, the conversations' own.
async fn lines(
    app: &TestApp,
    token: &str,
    n: usize,
    a2_text: &str,
    a2_status: MessageStatus,
    settings: &ConversationSettings,
) -> Vec<ConversationId> {
    let owner = owner_of(app, token).await;
    let store = app.db.store().await;
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let now = OffsetDateTime::now_utc();
        let id = ConversationId::generate();
        let new = NewConversation {
            id,
            owner,
            title: Title::parse("Branches").unwrap(),
            settings: settings.clone(),
            created_at: now,
        };
        ConversationStore::create(&store, new).await.unwrap();
        for (mid, role, text) in [
            ("u1", MessageRole::User, "the first question"),
            ("a1", MessageRole::Assistant, "the first answer"),
            ("u2", MessageRole::User, "the abandoned question"),
            ("a2", MessageRole::Assistant, a2_text),
        ] {
            let mut message = finished_message(id, mid, role, text.to_owned());
            if mid == "a2" {
                message.status = a2_status;
            }
            append(&store, message).await;
        }
        ids.push(id);
    }
    ids
}

/// [`two_exchange_lines`] on `switcher`'s database, each switched back to
/// its first answer through `PATCH` on `switcher` (all at once).
async fn switched_conversations(switcher: &TestApp, token: &str, n: usize) -> Vec<ConversationId> {
    let ids = two_exchange_lines(switcher, token, n).await;
    let body = serde_json::json!({"current_node": "a1"});
    let switches = ids.iter().map(|id| {
        let (path, body) = (format!("/api/v1/conversations/{id}"), &body);
        async move {
            switcher
                .call(reqwest::Method::PATCH, &path, token, Some(body))
                .await
        }
    });
    for res in futures_util::future::join_all(switches).await {
        assert_eq!(res.status(), 200, "a branch switch");
    }
    ids
}

/// After a burst onto switched branches: every prompt was the switched-to
/// branch alone, and every conversation's history is that branch and the
/// new exchange.
async fn assert_on_the_switched_branch(llm: &FakeLlm, store: &SqlStore, ids: &[ConversationId]) {
    let asked = llm.requests();
    assert_eq!(asked.len(), ids.len());
    for request in &asked {
        let text = request["messages"].to_string();
        assert!(text.contains("the first answer"), "{text}");
        assert!(
            !text.contains("abandoned"),
            "another branch was sent: {text}"
        );
    }
    for id in ids {
        let branch: Vec<String> = all_messages(store, *id)
            .await
            .iter()
            .map(|m| m.id.to_string())
            .collect();
        assert_eq!(branch.len(), 4, "{branch:?}");
        assert_eq!(branch[..2], ["u1", "a1"]);
        assert!(!branch.contains(&"u2".to_owned()), "{branch:?}");
    }
}

/// 100 sends at once, each into a conversation just switched back to an
/// earlier answer, to one server in process, with or without Redis: every
/// answer completes on the branch it was switched to.
async fn onto_switched_branches(backend: Backend, redis: bool) {
    let _one = ONE_AT_A_TIME.lock().await;
    let (llm, app, token) = burst_app(backend, redis).await;
    let ids = switched_conversations(&app, &token, 100).await;
    let sends = burst_into(&[&app], &token, &ids, CAP_100).await;
    let what = format!("100 sends onto switched branches, {backend:?}, Redis: {redis}");
    let store = app.db.store().await;
    sends.assert_all_complete(&what, &store).await;
    assert_on_the_switched_branch(&llm, &store, &ids).await;
}

/// 100 edits at once (each a send naming `parent_message_id`: half the
/// first answer of a line of two exchanges, an edit of the second
/// question; half the root, an edit of the first), to one server in
/// process, with or without Redis: every answer completes on its new
/// branch, and no prompt holds the branch it left.
async fn edits_at_once(backend: Backend, redis: bool) {
    let _one = ONE_AT_A_TIME.lock().await;
    let (llm, app, token) = burst_app(backend, redis).await;
    let ids = two_exchange_lines(&app, &token, 100).await;
    let parent = |i: usize| {
        if i.is_multiple_of(2) {
            "a1"
        } else {
            "client-created-root"
        }
    };
    let under: Vec<(ConversationId, String)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, parent(i).to_owned()))
        .collect();
    let sends = burst_under(&[&app], &token, &under, CAP_100).await;
    let what = format!("100 edits at once, {backend:?}, Redis: {redis}");
    let store = app.db.store().await;
    sends.assert_all_complete(&what, &store).await;
    let asked = llm.requests();
    assert_eq!(asked.len(), ids.len());
    let at_root = asked
        .iter()
        .filter(|r| !r["messages"].to_string().contains("the first"))
        .count();
    assert_eq!(
        at_root,
        ids.len() / 2,
        "edits of the first question ask it alone"
    );
    for request in &asked {
        let text = request["messages"].to_string();
        assert!(
            !text.contains("abandoned"),
            "another branch was sent: {text}"
        );
    }
    for (i, id) in ids.iter().enumerate() {
        let branch: Vec<String> = all_messages(&store, *id)
            .await
            .iter()
            .map(|m| m.id.to_string())
            .collect();
        if parent(i) == "a1" {
            assert_eq!(branch.len(), 4, "{branch:?}");
            assert_eq!(branch[..2], ["u1", "a1"]);
        } else {
            assert_eq!(branch.len(), 2, "a new first exchange: {branch:?}");
            assert!(!branch.contains(&"u1".to_owned()), "{branch:?}");
        }
        assert!(!branch.contains(&"u2".to_owned()), "{branch:?}");
    }
}

/// The text of the answers [`stopped_lines`] leave stopped.
const STOPPED: &str = "the stopped answer";

/// The system prompt of the conversations [`stopped_lines`] make.
const OWN_PROMPT: &str = "the conversation's own system prompt";

/// [`two_exchange_lines`] whose second answer stopped early
/// (`finished_partial_completion`, with [`STOPPED`] as its text), with
/// [`OWN_PROMPT`] as their system prompt.
async fn stopped_lines(app: &TestApp, token: &str, n: usize) -> Vec<ConversationId> {
    let settings = ConversationSettings {
        system_prompt: Some(SystemPrompt::parse(OWN_PROMPT).unwrap()),
        model: None,
    };
    lines(
        app,
        token,
        n,
        STOPPED,
        MessageStatus::FinishedPartialCompletion,
        &settings,
    )
    .await
}

/// Half regenerations (`variant` of the second question, named or not),
/// half continues of the stopped answer, into `ids` at once on `apps`.
async fn regenerate_or_continue(apps: &[&TestApp], token: &str, ids: &[ConversationId]) -> Burst {
    let requests: Vec<(String, serde_json::Value)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let body = match i % 4 {
                0 => serde_json::json!({"action": "variant"}),
                1 => serde_json::json!({"action": "variant", "parent_message_id": "u2"}),
                _ => serde_json::json!({"action": "continue", "parent_message_id": "a2"}),
            };
            (format!("/api/v1/conversations/{id}/messages"), body)
        })
        .collect();
    burst_of(apps, token, &requests, CAP_100).await
}

/// After [`regenerate_or_continue`]: every stream completed, every
/// prompt was the conversation's first branch (a continue's ending with
/// the stopped answer), and each conversation holds what its send asked
/// for: a new answer to the second question, or the stopped answer with
/// the whole of the model's answer after it, finished.
async fn assert_regenerated_or_continued(
    what: &str,
    burst: &Burst,
    llm: &FakeLlm,
    store: &SqlStore,
    ids: &[ConversationId],
) {
    let summary = format!("{what}: {}", burst.summary());
    eprintln!("{summary}");
    assert_eq!(burst.complete(), ids.len(), "{summary}");
    let asked = llm.requests();
    assert_eq!(asked.len(), ids.len());
    let continued = asked
        .iter()
        .filter(|r| {
            r["messages"]
                .as_array()
                .and_then(|m| m.last())
                .map(|m| &m["content"])
                == Some(&serde_json::json!(STOPPED))
        })
        .count();
    assert_eq!(
        continued,
        ids.len() / 2,
        "continues go on from the stopped text"
    );
    for request in &asked {
        assert_eq!(
            request["messages"][0],
            serde_json::json!({"role": "system", "content": OWN_PROMPT}),
            "the conversation's own system prompt"
        );
    }
    for (i, id) in ids.iter().enumerate() {
        let branch = all_messages(store, *id).await;
        let names: Vec<String> = branch.iter().map(|m| m.id.to_string()).collect();
        assert_eq!(names.len(), 4, "{names:?}");
        assert_eq!(names[..3], ["u1", "a1", "u2"]);
        let answer = &branch[3];
        assert_eq!(
            answer.status,
            MessageStatus::FinishedSuccessfully,
            "{names:?}"
        );
        if i % 4 < 2 {
            assert_ne!(names[3], "a2", "a new answer");
            assert_eq!(answer.content.parts(), [full_answer()]);
            let a2 = confab_domain::MessageId::parse("a2").unwrap();
            let stopped = MessageStore::find(store, *id, &a2)
                .await
                .unwrap()
                .expect("the stopped answer is kept");
            assert_eq!(stopped.status, MessageStatus::FinishedPartialCompletion);
        } else {
            assert_eq!(names[3], "a2", "the same answer");
            assert_eq!(
                answer.content.parts(),
                [format!("{STOPPED}{}", full_answer())]
            );
        }
    }
}

/// 100 regenerations and continues at once to one server in process, with
/// or without Redis.
async fn regenerations_and_continues(backend: Backend, redis: bool) {
    let _one = ONE_AT_A_TIME.lock().await;
    let (llm, app, token) = burst_app(backend, redis).await;
    let ids = stopped_lines(&app, &token, 100).await;
    let burst = regenerate_or_continue(&[&app], &token, &ids).await;
    let what = format!("100 regenerations and continues, {backend:?}, Redis: {redis}");
    let store = app.db.store().await;
    assert_regenerated_or_continued(&what, &burst, &llm, &store, &ids).await;
}

async fn a_hundred_regenerations_and_continues_at_once_all_complete(backend: Backend) {
    regenerations_and_continues(backend, false).await;
}

async fn a_hundred_regenerations_and_continues_at_once_with_redis_all_complete(backend: Backend) {
    regenerations_and_continues(backend, true).await;
}

/// 100 regenerations and continues at once, spread over instances A and
/// B of one service on PostgreSQL + Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_hundred_regenerations_and_continues_over_two_instances_all_complete() {
    let _one = ONE_AT_A_TIME.lock().await;
    let llm = paced_llm();
    let (a, b) = two_instances(TestDatabase::postgres(), &llm).await;
    let token = a.user("ada").await;
    let ids = stopped_lines(&a, &token, 100).await;
    let burst = regenerate_or_continue(&[&a, &b], &token, &ids).await;
    let store = a.db.store().await;
    assert_regenerated_or_continued(
        "100 regenerations and continues over A and B",
        &burst,
        &llm,
        &store,
        &ids,
    )
    .await;
}

async fn a_hundred_edits_at_once_all_complete(backend: Backend) {
    edits_at_once(backend, false).await;
}

async fn a_hundred_edits_at_once_with_redis_all_complete(backend: Backend) {
    edits_at_once(backend, true).await;
}

async fn a_hundred_sends_onto_switched_branches_all_complete(backend: Backend) {
    onto_switched_branches(backend, false).await;
}

async fn a_hundred_sends_onto_switched_branches_with_redis_all_complete(backend: Backend) {
    onto_switched_branches(backend, true).await;
}

/// 100 sends at once to instance A of two on PostgreSQL + Redis, into
/// conversations switched back to an earlier answer through instance B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_hundred_sends_onto_branches_switched_on_the_other_instance_all_complete() {
    let _one = ONE_AT_A_TIME.lock().await;
    let llm = paced_llm();
    let (a, b) = two_instances(TestDatabase::postgres(), &llm).await;
    let token = a.user("ada").await;
    let ids = switched_conversations(&b, &token, 100).await;
    let sends = burst_into(&[&a], &token, &ids, CAP_100).await;
    let store = a.db.store().await;
    sends
        .assert_all_complete("100 sends onto branches switched on B, to A", &store)
        .await;
    assert_on_the_switched_branch(&llm, &store, &ids).await;
}

/// Instances A and B (`confab serve` processes) of one service on `db`,
/// one Redis and one key prefix, wired to `llm`.
async fn two_instances(db: TestDatabase, llm: &FakeLlm) -> (TestApp, TestApp) {
    let db = Arc::new(db);
    let prefix = format!("confab-load:{}:", uuid::Uuid::new_v4());
    let (base, url) = (llm.base_url(), redis_url());
    let mut vars = burst_vars(&base);
    vars.push(("REDIS_URL", url.as_str()));
    vars.push(("CONFAB__REDIS__KEY_PREFIX", prefix.as_str()));
    // A migrates first; B then finds the schema in place.
    let a = spawn_process(Arc::clone(&db), &vars).await;
    let b = spawn_process(db, &vars).await;
    (a, b)
}

/// `n` sends at once to a two-instance service on `db`: all to A, or
/// alternating A and B.
async fn on_two_instances(db: TestDatabase, n: usize, spread: bool, cap: Duration) {
    let _one = ONE_AT_A_TIME.lock().await;
    let backend = if db.url().starts_with("postgres") {
        Backend::Postgres
    } else {
        Backend::Sqlite
    };
    let llm = paced_llm();
    let (a, b) = two_instances(db, &llm).await;
    let token = a.user("ada").await;
    let targets: Vec<&TestApp> = if spread { vec![&a, &b] } else { vec![&a] };
    let sends = burst(&targets, &token, n, cap).await;
    let over = if spread { "A and B alternately" } else { "A" };
    let what = format!("{n} sends to {over} of two processes, {backend:?} + Redis");
    sends.assert_all_complete(&what, &a.db.store().await).await;
    // Each instance recorded its own answers' usage in the one database.
    assert_usage_counts(&b, &token, u64::try_from(n).unwrap()).await;
}

/// 100 sends at once to instance A of two on `db` and Redis, each
/// stream cut after its third delta and resumed on B with its resume token
/// and last event id, as clients behind a load balancer whose connections
/// dropped: every answer reaches its client whole through B, without a
/// gap or a duplicate event, and is saved whole.
async fn resumed_on_the_other_instance(db: TestDatabase) {
    let _one = ONE_AT_A_TIME.lock().await;
    let llm = paced_llm();
    let (a, b) = two_instances(db, &llm).await;
    let token = a.user("ada").await;
    let sends = burst_resumed(&a, &b, &token, 100, 3, CAP_100).await;
    for sent in &sends.sends {
        let ids: Vec<&str> = sent.events.iter().filter_map(|e| e.id.as_deref()).collect();
        let distinct: std::collections::HashSet<&str> = ids.iter().copied().collect();
        assert_eq!(distinct.len(), ids.len(), "a duplicate event id: {ids:?}");
    }
    let what = "100 sends to A, each resumed on B after its third delta";
    sends.assert_all_complete(what, &a.db.store().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_hundred_sends_resumed_on_the_other_instance_all_complete() {
    resumed_on_the_other_instance(TestDatabase::postgres()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_hundred_sends_resumed_on_the_other_instance_on_one_sqlite_file_all_complete() {
    resumed_on_the_other_instance(TestDatabase::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_hundred_sends_to_one_instance_with_searches_on_the_other_all_complete() {
    let _one = ONE_AT_A_TIME.lock().await;
    let llm = paced_llm();
    let (a, b) = two_instances(TestDatabase::postgres(), &llm).await;
    let token = a.user("ada").await;
    let what = "100 sends to A with searches on B, two processes, Postgres + Redis";
    with_searches(&[&a], &[&b, &a], &token, what).await;
}

/// 100 sends with one API key, alternating between two processes: the
/// key is read by each instance, and its bucket is shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_hundred_sends_with_an_api_key_over_two_instances_all_complete() {
    let _one = ONE_AT_A_TIME.lock().await;
    let llm = paced_llm();
    let (a, b) = two_instances(TestDatabase::postgres(), &llm).await;
    let token = a.user("ada").await;
    let key = writing_key(&b, &token).await;
    let sends = burst(&[&a, &b], &key, 100, CAP_100).await;
    let what = "100 sends with an API key to A and B alternately, two processes, Postgres + Redis";
    sends.assert_all_complete(what, &a.db.store().await).await;
    assert_usage_counts(&b, &token, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_hundred_sends_to_one_instance_all_complete() {
    on_two_instances(TestDatabase::postgres(), 100, false, CAP_100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_thousand_sends_to_one_instance_all_complete() {
    on_two_instances(TestDatabase::postgres(), 1000, false, CAP_1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_thousand_sends_over_two_instances_all_complete() {
    on_two_instances(TestDatabase::postgres(), 1000, true, CAP_1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_thousand_sends_over_two_instances_on_one_sqlite_file_all_complete() {
    on_two_instances(TestDatabase::sqlite(), 1000, true, CAP_1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_thousand_sends_to_one_instance_on_one_sqlite_file_all_complete() {
    on_two_instances(TestDatabase::sqlite(), 1000, false, CAP_1000).await;
}

/// 100 sends of one user at once while another user, twenty answers of
/// theirs streaming, deletes their account: every send of the first
/// completes and is saved whole; every stream of the second ends, stopped
/// with `[DONE]` (or refused 401 once the account is gone), and no row of
/// theirs is left.
async fn sends_while_an_account_is_deleted(backend: Backend, redis: bool) {
    let _one = ONE_AT_A_TIME.lock().await;
    let (_llm, app, token) = burst_app(backend, redis).await;
    let leaving = app.user("beatrix").await;
    let leaving_id = owner_of(&app, &leaving).await;
    let delete = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let body = serde_json::json!({"password": PASSWORD});
        let res = app
            .call(
                reqwest::Method::DELETE,
                "/api/v1/users/me",
                &leaving,
                Some(&body),
            )
            .await;
        res.status().as_u16()
    };
    let apps = [&app];
    let (kept, gone, deleted) = tokio::join!(
        burst(&apps, &token, 100, CAP_100),
        burst(&apps, &leaving, 20, CAP_100),
        delete,
    );
    assert_eq!(deleted, 204);
    let what = format!("100 sends beside a deletion, {backend:?}, Redis: {redis}");
    kept.assert_all_complete(&what, &app.db.store().await).await;
    let mut needles = vec![leaving_id.to_string(), "beatrix".to_owned()];
    for sent in &gone.sends {
        assert_eq!(sent.end, End::Ended, "{}", gone.summary());
        match sent.status {
            Some(200) => {
                let last = sent.events.last().map(|e| e.data.as_str());
                assert_eq!(last, Some("[DONE]"), "{}", gone.summary());
            }
            Some(401) => {}
            other => panic!("{other:?}: {}", gone.summary()),
        }
        needles.extend(sent.conversation().map(|c| c.to_string()));
    }
    assert_eq!(
        app.db.rows_containing(&needles),
        Vec::<(String, i64)>::new()
    );
}

async fn a_hundred_sends_while_another_account_is_deleted_all_complete(backend: Backend) {
    sends_while_an_account_is_deleted(backend, false).await;
}

async fn a_hundred_sends_while_another_account_is_deleted_with_redis_all_complete(
    backend: Backend,
) {
    sends_while_an_account_is_deleted(backend, true).await;
}
