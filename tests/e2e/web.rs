//! The chat page at `/`: served with its own strict policy, off with
//! `web.enabled = false`, and used in a real browser (headless Chromium,
//! `confab_e2e::browser`) as a person would: sign in, send, watch the
//! answer grow, stop, reload mid-answer, rename, delete, a 429 and a
//! hostile answer. Each browser test saves screenshots under
//! `target/screenshots/`.

use std::time::Duration;

use confab_e2e::browser::Browser;
use confab_e2e::chat::{PASSWORD, held_after, spawn_chat};
use confab_e2e::fake_llm::{FakeLlm, Script, Step};
use confab_e2e::proxy::CuttingProxy;
use confab_e2e::{TestApp, spawn_app_with};
use confab_sql::Backend;
use serde_json::{Value, json};

/// One browser at a time: each is a few hundred MB and most of a core.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The page's assets, as `index.html` names them or they import each other.
const ASSETS: &[&str] = &[
    "app.js",
    "api.js",
    "stream.js",
    "render.js",
    "style.css",
    "icon.svg",
    "marked.esm.js",
    "purify.es.mjs",
];

#[tokio::test]
async fn the_page_and_its_files_are_served_under_a_policy_without_inline_code() {
    let app = spawn_app_with(Backend::Sqlite, &[]);
    let res = app.get("/").await;
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let csp = res.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ] {
        assert!(csp.contains(part), "{part} in {csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(res.headers()["x-frame-options"], "DENY");
    let html = res.text().await.unwrap();
    assert!(html.contains("<script type=\"module\" src=\"/assets/app.js\">"));
    for name in ASSETS {
        let res = app.get(&format!("/assets/{name}")).await;
        assert_eq!(res.status(), 200, "{name}");
        let kind = res.headers()["content-type"].to_str().unwrap().to_owned();
        if name.ends_with("js") {
            assert!(kind.starts_with("text/javascript"), "{name}: {kind}");
        }
        assert_eq!(res.headers()["cache-control"], "no-cache", "{name}");
        let tag = res.headers()["etag"].to_str().unwrap().to_owned();
        // A browser that holds the file gets a 304 without it.
        let again = app
            .client
            .get(app.url(&format!("/assets/{name}")))
            .header("if-none-match", &tag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{name}");
        assert!(again.bytes().await.unwrap().is_empty());
    }
    let missing = app.get("/assets/nothing.js").await;
    assert_eq!(missing.status(), 404);
    // The page is not a prefix of every path.
    assert_eq!(app.get("/anything").await.status(), 404);
}

#[tokio::test]
async fn with_web_disabled_there_is_no_page_and_the_api_still_answers() {
    let app = spawn_app_with(Backend::Sqlite, &[("CONFAB__WEB__ENABLED", "false")]);
    assert_eq!(app.get("/").await.status(), 404);
    assert_eq!(app.get("/assets/app.js").await.status(), 404);
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(app.register("webless").await.status(), 201);
}

/// The refresh cookie is `SameSite=Strict`; a cookie refresh that says it
/// comes from another site's page is refused besides (a sibling subdomain
/// is the same site, and some browsers ignore `SameSite`).
#[tokio::test]
async fn a_cookie_refresh_sent_from_another_site_is_refused() {
    let app = spawn_app_with(Backend::Sqlite, &[]);
    assert_eq!(app.register("cookie").await.status(), 201);
    let login = app
        .post_json(
            "/api/v1/auth/login",
            &json!({"username": "cookie", "password": PASSWORD}),
        )
        .await;
    assert_eq!(login.status(), 200);
    let set = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let mut cookie = set.split(';').next().unwrap().to_owned();
    let refresh = |cookie: String, headers: Vec<(&'static str, String)>| {
        let mut req = app
            .client
            .post(app.url("/api/v1/auth/refresh"))
            .header("cookie", cookie);
        for (name, value) in headers {
            req = req.header(name, value);
        }
        req.send()
    };
    // The same host on another port is the same site, another origin.
    let port: u16 = app.address.rsplit(':').next().unwrap().parse().unwrap();
    let sibling = format!("http://127.0.0.1:{}", port.wrapping_add(1));
    for attack in [
        vec![("origin", "https://evil.example".to_owned())],
        vec![("origin", "null".to_owned())],
        vec![("origin", sibling.clone())],
        vec![("sec-fetch-site", "cross-site".to_owned())],
        vec![("sec-fetch-site", "same-site".to_owned())],
        vec![
            ("origin", sibling.clone()),
            ("sec-fetch-site", "same-site".to_owned()),
        ],
    ] {
        let res = refresh(cookie.clone(), attack.clone()).await.unwrap();
        let err = confab_e2e::error_body(res, 403, "FORBIDDEN").await;
        assert!(
            err["message"].as_str().unwrap().contains("cookie"),
            "{attack:?}: {err}"
        );
    }
    // The page's own origin, and a client with neither header, refresh.
    let own = app.address.clone();
    for headers in [
        vec![
            ("origin", own.clone()),
            ("sec-fetch-site", "same-origin".to_owned()),
        ],
        // Behind a proxy that rewrites Host, the browser's own word counts.
        vec![
            ("origin", "https://chat.example.com".to_owned()),
            ("sec-fetch-site", "same-origin".to_owned()),
        ],
        vec![("origin", own.clone())],
        vec![],
    ] {
        let res = refresh(cookie.clone(), headers).await.unwrap();
        assert_eq!(res.status(), 200);
        let set = res.headers()["set-cookie"].to_str().unwrap().to_owned();
        cookie = set.split(';').next().unwrap().to_owned();
    }
}

/// A user with the test password, registered through the API.
async fn registered(app: &TestApp, name: &str) {
    assert_eq!(app.register(name).await.status(), 201, "register {name}");
}

/// Opens the page at `page` and signs in as `name`; answers once the app
/// shows.
async fn sign_in(browser: &Browser, page: &str, name: &str) {
    browser.goto(page).await;
    browser
        .wait_for(
            "the sign-in form",
            "return !document.getElementById('auth').hidden",
            &[],
        )
        .await;
    browser.type_into("#auth-username", name).await;
    browser.type_into("#auth-password", PASSWORD).await;
    browser.click("#auth-submit").await;
    browser
        .wait_for(
            "the signed-in app",
            "return !document.getElementById('app').hidden \
             && document.getElementById('whoami').textContent",
            &[],
        )
        .await;
}

/// Keys that select a field's whole text (Control+A), so that what is
/// typed next replaces it.
const SELECT_ALL: &str = "\u{E009}a\u{E000}";

/// The last assistant message on the page: `{id, text, status}`.
const LAST_ANSWER: &str = "const all = document.querySelectorAll('#thread article.assistant'); \
     const a = all[all.length - 1]; \
     return a ? {id: a.dataset.id, text: a.querySelector('.body').innerText, \
                 status: a.dataset.status, count: all.length} : null";

/// Waits until the last answer (`a`, as [`LAST_ANSWER`] gives it) meets
/// `condition`, a JavaScript expression, and answers it.
async fn answer_when(browser: &Browser, what: &str, condition: &str) -> Value {
    answer_when_with(browser, what, condition, Value::Null).await
}

/// As [`answer_when`], with `value` as the condition's `arguments[0]`.
async fn answer_when_with(browser: &Browser, what: &str, condition: &str, value: Value) -> Value {
    browser
        .wait_for(
            what,
            &format!(
                "const a = (() => {{ {LAST_ANSWER} }})(); \
                 return a && ({condition}) ? a : null"
            ),
            &[value],
        )
        .await
}

/// Waits for the last answer to reach `status`, and answers it.
async fn answer_with_status(browser: &Browser, status: &str) -> Value {
    answer_when_with(
        browser,
        &format!("an answer {status}"),
        "a.status === arguments[0]",
        json!(status),
    )
    .await
}

/// The words of an answer: `word1 word2 …`.
fn words(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("word{i} ")).collect()
}

/// An answer of `n` words that stops after each of `holds` words (counted
/// from 1) until [`FakeLlm::release`]: the test decides when it goes on, so
/// a page is seen half-written however slow the machine.
fn held_words(n: usize, holds: &[usize]) -> Script {
    let mut steps = Vec::new();
    for (i, word) in words(n).into_iter().enumerate() {
        steps.push(Step::Text(word));
        if holds.contains(&(i + 1)) {
            steps.push(Step::Hold);
        }
    }
    steps.push(Step::Finish("stop"));
    steps.push(Step::Done);
    Script::Stream(steps)
}

/// A held answer sends nothing while it waits: the model's idle timeout
/// must outlast the test's wait.
const PATIENT_MODEL: (&str, &str) = ("CONFAB__LLM__IDLE_TIMEOUT_MS", "60000");

#[tokio::test]
async fn a_person_signs_in_sends_watches_the_answer_grow_renames_and_deletes() {
    let _one = ONE_BROWSER.lock().await;
    let llm = FakeLlm::start();
    llm.set_title(Some("Words in a row".to_owned()));
    let whole: String = words(30).concat();
    llm.push(held_words(30, &[5, 10]));
    let app = spawn_chat(Backend::Sqlite, &llm, &[PATIENT_MODEL]);
    registered(&app, "walker").await;
    let browser = Browser::start(1280, 860).await;
    sign_in(&browser, &app.url("/"), "walker").await;
    browser.screenshot("signed-in").await;

    // Enter sends.
    browser.type_into("#prompt", "Count for me\n").await;
    let first = answer_when(
        &browser,
        "the first words of the answer",
        "a.status === 'in_progress' && a.text.includes('word1')",
    )
    .await;
    assert!(
        browser
            .run("return !document.getElementById('stop').hidden", &[])
            .await
            == true,
        "Stop shows while the answer runs"
    );
    // The text grows while the answer is still being written.
    llm.release();
    let grown = answer_when(
        &browser,
        "the answer growing",
        "a.status === 'in_progress' && a.text.includes('word10')",
    )
    .await;
    assert!(grown["text"].as_str().unwrap().len() > first["text"].as_str().unwrap().len());
    assert!(grown["text"].as_str().unwrap().starts_with("word1 word2"));
    browser.screenshot("streaming").await;
    llm.release();
    let done = answer_with_status(&browser, "finished_successfully").await;
    assert_eq!(done["text"].as_str().unwrap().trim(), whole.trim());
    assert_eq!(done["count"], 1);
    // The question is shown once, above it, and the title came in.
    let questions = browser
        .run(
            "return [...document.querySelectorAll('#thread article.user')].map(a => a.innerText)",
            &[],
        )
        .await;
    assert_eq!(questions.as_array().unwrap().len(), 1);
    assert!(questions[0].as_str().unwrap().contains("Count for me"));
    browser
        .wait_for(
            "the generated title",
            "return document.getElementById('chat-title').textContent === 'Words in a row' \
             && document.querySelector('#conversations li .open')?.textContent === 'Words in a row'",
            &[],
        )
        .await;
    browser.screenshot("chat").await;

    // What the page showed is what was stored.
    let token = app.login("walker", PASSWORD).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let list: Value = app
        .get_auth("/api/v1/conversations", &token)
        .await
        .json()
        .await
        .unwrap();
    let id = list["items"][0]["id"].as_str().unwrap().to_owned();
    let stored = app.conversation(&token, &id).await;
    let answer = stored["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(answer["content"]["parts"][0], whole.as_str());
    assert_eq!(answer["id"], done["id"]);

    // Rename from the list.
    browser
        .click("#conversations li.current button[data-action=rename]")
        .await;
    // Its title is selected: typing replaces it.
    browser
        .type_into("#conversations input.rename", "Counting, renamed\n")
        .await;
    browser
        .wait_for(
            "the new title in the list",
            "return document.querySelector('#conversations li .open')?.textContent === 'Counting, renamed'",
            &[],
        )
        .await;
    let renamed = app.conversation(&token, &id).await;
    assert_eq!(renamed["title"], "Counting, renamed");

    // Search: a miss says so, a hit lists it; then delete it, confirming
    // in the dialog.
    browser.type_into("#search", "zzzz").await;
    browser
        .wait_for(
            "the search's miss",
            "return document.querySelector('#conversations li.none')?.textContent === 'No conversation matches.'",
            &[],
        )
        .await;
    browser
        .type_into("#search", &format!("{SELECT_ALL}Counting"))
        .await;
    browser
        .wait_for(
            "the search's hit",
            "return document.querySelector('#conversations li.current .open')?.textContent === 'Counting, renamed'",
            &[],
        )
        .await;
    browser
        .click("#conversations li.current button[data-action=delete]")
        .await;
    browser
        .wait_for(
            "the confirmation",
            "return document.getElementById('confirm').open",
            &[],
        )
        .await;
    browser.click("#confirm-ok").await;
    browser
        .wait_for(
            "the empty list",
            "return document.querySelector('#conversations li.none') !== null \
             && document.getElementById('chat-title').textContent === 'New chat'",
            &[],
        )
        .await;
    let gone = app
        .get_auth(&format!("/api/v1/conversations/{id}"), &token)
        .await;
    assert_eq!(gone.status(), 404);
    browser.close().await;
}

#[tokio::test]
async fn stop_keeps_the_words_so_far_and_a_reload_mid_answer_completes_it_once() {
    let _one = ONE_BROWSER.lock().await;
    let llm = FakeLlm::start();
    llm.push(held_after("The first words"));
    let app = spawn_chat(Backend::Sqlite, &llm, &[PATIENT_MODEL]);
    registered(&app, "stopper").await;
    let browser = Browser::start(1280, 860).await;
    sign_in(&browser, &app.url("/"), "stopper").await;

    browser.type_into("#prompt", "Tell me a long story").await;
    browser.click("#send").await;
    answer_when(
        &browser,
        "the held answer's first words",
        "a.text.includes('The first words')",
    )
    .await;
    browser.click("#stop").await;
    let stopped = answer_with_status(&browser, "finished_partial_completion").await;
    assert_eq!(stopped["text"].as_str().unwrap().trim(), "The first words");
    assert!(
        browser
            .run(
                "return document.querySelector('#thread article.assistant .status').textContent",
                &[]
            )
            .await
            == "Stopped"
    );
    assert!(
        browser
            .run("return document.getElementById('stop').hidden", &[])
            .await
            == true
    );
    browser.screenshot("stopped").await;

    // Reload while the next answer is being written: the page signs in
    // again from its cookie, resumes the answer's stream from its start
    // and shows the whole answer once.
    let whole: String = words(40).concat();
    llm.push(held_words(40, &[3]));
    browser.type_into("#prompt", "Now count\n").await;
    answer_when(
        &browser,
        "the second answer under way",
        "a.count === 2 && a.status === 'in_progress' && a.text.includes('word3')",
    )
    .await;
    browser.reload().await;
    browser
        .wait_for(
            "the app again after the reload",
            "return !document.getElementById('app').hidden",
            &[],
        )
        .await;
    // Still running, and followed again: Stop is back.
    answer_when(&browser, "the resumed answer, still running", "a.count === 2 && a.status === 'in_progress' && a.text.includes('word3') && !document.getElementById('stop').hidden").await;
    llm.release();
    let done = answer_with_status(&browser, "finished_successfully").await;
    assert_eq!(
        done["text"].as_str().unwrap().trim(),
        whole.trim(),
        "no word twice, none missing"
    );
    assert_eq!(done["count"], 2);
    let users = browser
        .run(
            "return document.querySelectorAll('#thread article.user').length",
            &[],
        )
        .await;
    assert_eq!(users, 2);
    browser.screenshot("resumed").await;
    browser.close().await;
}

#[tokio::test]
async fn a_hostile_answer_is_rendered_inert_and_a_429_says_how_long_to_wait() {
    let _one = ONE_BROWSER.lock().await;
    let llm = FakeLlm::start();
    let hostile = "Here you go: <img src=x onerror=\"window.__pwned=1\"> \
        [click me](javascript:window.__pwned=2) <script>window.__pwned=3</script>\n\n\
        <a href=\"javascript:window.__pwned=4\" id=\"raw\">raw link</a> \
        <iframe src=\"javascript:window.__pwned=5\"></iframe> \
        <p style=\"position:fixed\" onclick=\"window.__pwned=6\">styled</p>\n\n\
        ```rust\nfn main() { println!(\"<b>not bold</b>\"); }\n```\n\n\
        **bold** and [a real link](https://example.com/docs)";
    llm.push(Script::reply(&[hostile]));
    // One answer a minute: the second send is a 429.
    let app = spawn_chat(
        Backend::Sqlite,
        &llm,
        &[("CONFAB__GENERATION__PER_MINUTE", "1")],
    );
    registered(&app, "mallory").await;
    let browser = Browser::start(1280, 860).await;
    sign_in(&browser, &app.url("/"), "mallory").await;
    browser.type_into("#prompt", "Show me something\n").await;
    answer_with_status(&browser, "finished_successfully").await;
    let seen = browser
        .run(
            "const body = document.querySelector('#thread article.assistant .body'); \
             return { \
               handlers: document.querySelectorAll('[onerror],[onclick],[onload]').length, \
               scripts: body.querySelectorAll('script,iframe,img,style').length, \
               styled: body.querySelectorAll('[style]').length, \
               jsLinks: [...document.querySelectorAll('a')].filter(a => /^\\s*javascript:/i.test(a.getAttribute('href') ?? '')).length, \
               links: [...body.querySelectorAll('a')].map(a => [a.textContent, a.getAttribute('href'), a.getAttribute('rel')]), \
               code: body.querySelector('pre code')?.textContent ?? null, \
               bold: body.querySelector('strong')?.textContent ?? null, \
               pwned: window.__pwned ?? null }",
            &[],
        )
        .await;
    assert_eq!(seen["handlers"], 0, "{seen}");
    assert_eq!(seen["scripts"], 0, "{seen}");
    assert_eq!(seen["styled"], 0, "{seen}");
    assert_eq!(seen["jsLinks"], 0, "{seen}");
    assert!(
        seen["code"]
            .as_str()
            .unwrap()
            .contains("println!(\"<b>not bold</b>\")"),
        "code is shown as text: {seen}"
    );
    assert_eq!(seen["bold"], "bold");
    let links = seen["links"].as_array().unwrap();
    let real = links
        .iter()
        .find(|l| l[0] == "a real link")
        .expect("the real link");
    assert_eq!(real[1], "https://example.com/docs");
    assert_eq!(real[2], "noopener noreferrer nofollow");
    // Clicking what were script links runs nothing.
    browser
        .run(
            "for (const a of document.querySelectorAll('#thread a:not([href^=\"https\"])')) a.click(); \
             return true",
            &[],
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        browser.run("return window.__pwned ?? null", &[]).await,
        Value::Null
    );
    browser.screenshot("hostile-answer").await;

    // The minute's one answer is spent: the page says how long to wait.
    browser.type_into("#prompt", "And again\n").await;
    let notice = browser
        .wait_for(
            "the 429 notice",
            "const n = document.getElementById('notice'); \
             return !n.hidden && n.textContent.includes('Try again in') ? n.textContent : null",
            &[],
        )
        .await;
    assert!(
        notice.as_str().unwrap().contains("Too many requests"),
        "{notice}"
    );
    // What was typed is back in the composer, not lost.
    assert_eq!(
        browser
            .run("return document.getElementById('prompt').value", &[])
            .await,
        "And again"
    );
    // Nothing is left running, and the composer works again.
    assert!(
        browser
            .run("return document.getElementById('stop').hidden && !document.getElementById('send').hidden", &[])
            .await
            == true
    );
    browser.screenshot("rate-limited").await;
    browser.close().await;
}

#[tokio::test]
async fn on_a_phone_the_list_is_a_drawer_and_the_dark_theme_is_kept() {
    let _one = ONE_BROWSER.lock().await;
    let llm = FakeLlm::start();
    llm.set_title(Some("Phone chat".to_owned()));
    let app = spawn_chat(Backend::Sqlite, &llm, &[]);
    registered(&app, "phoebe").await;
    let browser = Browser::start(390, 844).await;
    sign_in(&browser, &app.url("/"), "phoebe").await;
    browser.type_into("#prompt", "Hi from a phone\n").await;
    answer_with_status(&browser, "finished_successfully").await;
    // The list is off screen until opened.
    let hidden_left = browser
        .run(
            "return document.getElementById('sidebar').getBoundingClientRect().right <= 0",
            &[],
        )
        .await;
    assert_eq!(hidden_left, true);
    browser.screenshot("phone-chat").await;
    browser.click("#open-sidebar").await;
    browser
        .wait_for(
            "the drawer open",
            "return document.getElementById('sidebar').getBoundingClientRect().left >= 0",
            &[],
        )
        .await;
    // The theme switch is in the drawer.
    browser.click("#theme").await;
    let theme = browser
        .run("return document.documentElement.dataset.theme", &[])
        .await;
    // Headless Chromium prefers light: the switch makes it dark.
    assert_eq!(theme, "dark");
    browser.screenshot("phone-list").await;
    browser.click("#close-sidebar").await;
    browser
        .wait_for(
            "the drawer closed",
            "return document.getElementById('sidebar').getBoundingClientRect().right <= 0",
            &[],
        )
        .await;
    browser.screenshot("phone-themed").await;
    // The theme survives a reload.
    browser.reload().await;
    browser
        .wait_for(
            "the app after reload",
            "return !document.getElementById('app').hidden",
            &[],
        )
        .await;
    assert_eq!(
        browser
            .run("return document.documentElement.dataset.theme", &[])
            .await,
        theme
    );
    browser.close().await;
}

#[tokio::test]
async fn regenerate_edit_and_the_branch_switcher_show_every_version() {
    let _one = ONE_BROWSER.lock().await;
    let llm = FakeLlm::start();
    llm.set_title(Some("Rust in brief".to_owned()));
    llm.push(Script::reply(&[
        "Rust is a **systems language**:\n\n",
        "1. memory safety without a garbage collector\n",
        "2. fearless concurrency\n\n",
        "```rust\nfn main() {\n    println!(\"hello\");\n}\n```\n",
    ]));
    llm.push(Script::reply(&["A second take: *fast* and safe."]));
    llm.push(Script::reply(&["An answer to the edited question."]));
    let app = spawn_chat(Backend::Sqlite, &llm, &[]);
    registered(&app, "brancher").await;
    let browser = Browser::start(1280, 860).await;
    sign_in(&browser, &app.url("/"), "brancher").await;
    browser.type_into("#prompt", "What is Rust?\n").await;
    let first = answer_with_status(&browser, "finished_successfully").await;
    assert!(
        first["text"]
            .as_str()
            .unwrap()
            .contains("fearless concurrency")
    );
    let rendered = browser
        .run(
            "const b = document.querySelector('#thread article.assistant .body'); \
             return [b.querySelectorAll('ol li').length, b.querySelector('pre code.language-rust')?.textContent ?? null, b.querySelector('strong')?.textContent]",
            &[],
        )
        .await;
    assert_eq!(rendered[0], 2, "{rendered}");
    assert!(
        rendered[1]
            .as_str()
            .unwrap()
            .contains("println!(\"hello\")")
    );
    assert_eq!(rendered[2], "systems language");
    browser
        .wait_for(
            "the title",
            "return document.getElementById('chat-title').textContent === 'Rust in brief'",
            &[],
        )
        .await;
    browser.screenshot("markdown").await;

    // Regenerate: a second answer beside the first, shown as 2/2.
    browser
        .click("#thread article.assistant button[data-action=regenerate]")
        .await;
    browser
        .wait_for(
            "the second version",
            "const a = document.querySelector('#thread article.assistant'); \
             return a && a.dataset.status === 'finished_successfully' \
               && a.innerText.includes('A second take') \
               && a.querySelector('.switcher .place')?.textContent === '2/2'",
            &[],
        )
        .await;
    browser.screenshot("regenerated").await;
    // "<" goes back to the first version.
    browser
        .click("#thread article.assistant button[data-action=previous]")
        .await;
    browser
        .wait_for(
            "the first version again",
            "const a = document.querySelector('#thread article.assistant'); \
             return a && a.innerText.includes('fearless concurrency') \
               && a.querySelector('.switcher .place')?.textContent === '1/2'",
            &[],
        )
        .await;

    // Edit the question: a new branch beside the old one.
    browser
        .click("#thread article.user button[data-action=edit]")
        .await;
    browser
        .type_into(
            "#thread article.user textarea.edit",
            &format!("{SELECT_ALL}What is Rust, in one line?\n"),
        )
        .await;
    browser
        .wait_for(
            "the edited branch",
            "const u = document.querySelector('#thread article.user'); \
             const a = document.querySelector('#thread article.assistant'); \
             return u && a && u.innerText.includes('in one line?') \
               && u.querySelector('.switcher .place')?.textContent === '2/2' \
               && a.dataset.status === 'finished_successfully' \
               && a.innerText.includes('edited question')",
            &[],
        )
        .await;
    browser.screenshot("edited").await;
    // The tree holds all three answers; the conversation's branch is the edit.
    let token = app.login("brancher", PASSWORD).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let list: Value = app
        .get_auth("/api/v1/conversations", &token)
        .await
        .json()
        .await
        .unwrap();
    let id = list["items"][0]["id"].as_str().unwrap().to_owned();
    let tree: Value = app
        .get_auth(&format!("/api/v1/conversations/{id}/tree"), &token)
        .await
        .json()
        .await
        .unwrap();
    let answers = tree["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["message"]["author"]["role"] == "assistant")
        .count();
    assert_eq!(answers, 3, "{tree}");
    let page = app.conversation(&token, &id).await;
    let texts: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["content"]["parts"][0].as_str())
        .collect();
    assert_eq!(
        texts,
        [
            "What is Rust, in one line?",
            "An answer to the edited question."
        ]
    );
    browser.close().await;
}

#[tokio::test]
async fn a_dropped_connection_resumes_where_it_broke_off() {
    let _one = ONE_BROWSER.lock().await;
    let llm = FakeLlm::start();
    let whole: String = words(40).concat();
    llm.push(held_words(40, &[5]));
    let app = spawn_chat(Backend::Sqlite, &llm, &[PATIENT_MODEL]);
    registered(&app, "flaky").await;
    // The browser reaches the server through a proxy that can cut it off.
    let proxy = CuttingProxy::start(&app.address).await;
    let browser = Browser::start(1280, 860).await;
    sign_in(&browser, &proxy.url("/"), "flaky").await;
    browser.type_into("#prompt", "Count slowly\n").await;
    answer_when(
        &browser,
        "the answer under way",
        "a.status === 'in_progress' && a.text.includes('word5')",
    )
    .await;
    proxy.cut();
    // The page follows the answer again (GET …/stream with the last event's
    // id) while the model is still held; then the model goes on.
    browser
        .wait_for(
            "the reconnecting notice",
            "const n = document.getElementById('notice'); \
             return !n.hidden && n.textContent.includes('Reconnecting')",
            &[],
        )
        .await;
    llm.release();
    let done = answer_with_status(&browser, "finished_successfully").await;
    assert_eq!(
        done["text"].as_str().unwrap().trim(),
        whole.trim(),
        "no word twice, none missing"
    );
    assert_eq!(done["count"], 1);
    let resumes = browser
        .run(
            "return performance.getEntriesByType('resource') \
               .filter((e) => e.name.endsWith('/stream')).length",
            &[],
        )
        .await;
    assert!(resumes.as_u64().unwrap() >= 1, "a GET …/stream was made");
    assert_eq!(
        browser
            .run("return document.getElementById('notice').hidden", &[])
            .await,
        true
    );
    browser.close().await;
}

#[tokio::test]
async fn a_503_says_to_wait_and_an_ended_session_returns_to_sign_in() {
    let _one = ONE_BROWSER.lock().await;
    // No model at all: every send is 503 with Retry-After.
    let app = spawn_app_with(Backend::Sqlite, &[("CONFAB_LLM_PROVIDER", "none")]);
    registered(&app, "waiter").await;
    let browser = Browser::start(1280, 860).await;
    sign_in(&browser, &app.url("/"), "waiter").await;
    browser.type_into("#prompt", "Anyone there?\n").await;
    let notice = browser
        .wait_for(
            "the 503 notice",
            "const n = document.getElementById('notice'); \
             return !n.hidden && n.textContent.includes('Try again in') ? n.textContent : null",
            &[],
        )
        .await;
    assert!(
        notice.as_str().unwrap().contains("busy or starting up"),
        "{notice}"
    );
    browser.screenshot("unavailable").await;

    // Every session of the account ends elsewhere: the page's next call
    // can't refresh, and it asks to sign in again.
    let token = app.login("waiter", PASSWORD).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let ended = app
        .call(
            reqwest::Method::POST,
            "/api/v1/auth/logout-all",
            &token,
            None,
        )
        .await;
    assert_eq!(ended.status(), 204);
    browser.type_into("#search", "anything").await;
    browser
        .wait_for(
            "the sign-in form again",
            "return !document.getElementById('auth').hidden \
             && document.getElementById('app').hidden \
             && document.getElementById('auth-error').textContent.includes('session has ended')",
            &[],
        )
        .await;
    browser.screenshot("session-ended").await;
    browser.close().await;
}

/// A small deterministic generator (xorshift64*), for frame sequences.
struct Frames(u64);

impl Frames {
    fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        usize::try_from(x >> 33).unwrap() % n
    }

    fn pick<T: Clone>(&mut self, from: &[T]) -> T {
        from[self.next(from.len())].clone()
    }

    fn value(&mut self) -> Value {
        self.pick(&[
            json!("\u{1F600}h\u{e9}\u{1F600}llo"),
            json!(""),
            json!(2),
            json!([1, "x"]),
            json!({"k": "v"}),
            json!({"message": {"content": {"parts": [""]}, "status": "in_progress"}}),
            Value::Null,
            json!(true),
        ])
    }

    fn frame(&mut self, depth: usize) -> Value {
        let paths = [
            "",
            "/message",
            "/message/content/parts/0",
            "/message/status",
            "/k",
            "/a",
            "/a/0",
            "/a/-",
            "/x/y",
            "/01",
        ];
        let ops = ["add", "append", "replace", "truncate", "patch"];
        let mut frame = serde_json::Map::new();
        if self.next(4) > 0 {
            frame.insert("p".into(), json!(self.pick(&paths)));
        }
        let op = (self.next(5) > 0).then(|| self.pick(&ops));
        if let Some(op) = op {
            frame.insert("o".into(), json!(op));
        }
        let value = match op {
            Some("truncate") => json!(self.next(7)),
            Some("patch") if depth < 2 => {
                Value::Array((0..self.next(3) + 1).map(|_| self.frame(depth + 1)).collect())
            }
            None if depth < 2 && self.next(4) == 0 => Value::Array(
                (0..self.next(3) + 1)
                    .map(|_| {
                        json!({"p": self.pick(&paths), "o": self.pick(&ops[..4]), "v": self.value()})
                    })
                    .collect(),
            ),
            _ => self.value(),
        };
        frame.insert("v".into(), value);
        Value::Object(frame)
    }
}

/// The page's delta applier (`/assets/stream.js`) builds what
/// `confab_domain::DeltaApplier` builds, frame by frame, and refuses what
/// it refuses, leaving the document as it was: on seed `000`'s stream and
/// on a thousand generated sequences of every operation, inherited paths
/// and operations, nested patches, Unicode truncation and bad paths.
#[tokio::test]
async fn the_pages_delta_applier_agrees_with_the_domains() {
    let _one = ONE_BROWSER.lock().await;
    let app = spawn_app_with(Backend::Sqlite, &[]);
    let mut sequences: Vec<Vec<Value>> = vec![vec![
        json!({"o": "add", "v": {"message": {"id": "m", "content": {"content_type": "text", "parts": [""]}, "status": "in_progress", "metadata": {}}, "conversation_id": "c"}}),
        json!({"p": "/message/content/parts/0", "o": "append", "v": "Hel"}),
        json!({"v": "lo"}),
        json!({"v": [
            {"p": "/message/content/parts/0", "o": "append", "v": " world"},
            {"p": "/message/status", "o": "replace", "v": "finished_successfully"},
            {"p": "/message/metadata", "o": "append", "v": {"is_complete": true}}
        ]}),
        json!({"p": "/message/content/parts/0", "o": "truncate", "v": 5}),
    ]];
    let mut frames = Frames(0x9E37_79B9_7F4A_7C15);
    for _ in 0..1000 {
        let len = frames.next(8) + 1;
        sequences.push((0..len).map(|_| frames.frame(0)).collect());
    }
    let expected: Vec<Vec<Value>> = sequences
        .iter()
        .map(|frames| {
            let mut applier = confab_domain::DeltaApplier::new();
            frames
                .iter()
                .map(|frame| {
                    let ok = applier.apply_json(frame).is_ok();
                    json!([ok, applier.document()])
                })
                .collect()
        })
        .collect();
    let browser = Browser::start(800, 600).await;
    browser.goto(&app.url("/")).await;
    let seen = browser
        .run_async(
            "const [sequences, done] = arguments; \
             import('/assets/stream.js').then((m) => done(sequences.map((frames) => { \
               const a = new m.DeltaApplier(); \
               return frames.map((f) => { \
                 let ok = true; \
                 try { a.apply(f); } catch (e) { if (!(e instanceof m.DeltaError)) throw e; ok = false; } \
                 return [ok, JSON.parse(JSON.stringify(a.document))]; \
               }); \
             }))).catch((e) => done({error: String(e)}));",
            &[json!(sequences)],
        )
        .await;
    let seen = seen.as_array().unwrap_or_else(|| panic!("{seen}"));
    assert_eq!(seen.len(), expected.len());
    let mut refused = 0;
    for ((frames, want), got) in sequences.iter().zip(&expected).zip(seen) {
        assert_eq!(
            got,
            &Value::Array(want.clone()),
            "frames: {}",
            json!(frames)
        );
        refused += want.iter().filter(|step| step[0] == false).count();
    }
    // The generated frames exercise both outcomes.
    assert!(refused > 100, "{refused} refused frames");
    browser.close().await;
}
