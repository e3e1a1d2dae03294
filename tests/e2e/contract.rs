//! The served OpenAPI document against the server's behaviour:
//! schemathesis (pinned in `tests/contract/requirements.txt`, installed into
//! `target/venv` by `make test`) runs every check in every phase (examples,
//! coverage, fuzzing, stateful) as the user it signs in as, against a real
//! server wired to a real (fake) model, on SQLite with the in-process
//! adapters and on PostgreSQL with Redis. Any finding fails the test, with
//! schemathesis's report as the message. A missing schemathesis fails too:
//! this check never skips.

use std::path::{Path, PathBuf};
use std::process::Command;

use confab_e2e::chat::spawn_chat;
use confab_e2e::fake_llm::FakeLlm;
use confab_e2e::{TestApp, redis_url};
use confab_sql::Backend;

const USERNAME: &str = "contract";
const PASSWORD: &str = "a long passphrase for the run";

/// Each run's fixed seed, so that a finding reproduces; set
/// `CONFAB_SCHEMATHESIS_SEED` to explore others.
const SEED: &str = "20261203";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace holds the tests crate")
        .to_path_buf()
}

/// Every limit a schemathesis run could reach lifted: it signs in and
/// registers hundreds of times, and sends as fast as it can.
const LIFTED: [(&str, &str); 6] = [
    ("CONFAB__RATE_LIMIT__ANONYMOUS_PER_MINUTE", "100000000"),
    ("CONFAB__RATE_LIMIT__LOGIN_PER_MINUTE", "100000000"),
    (
        "CONFAB__RATE_LIMIT__LOGIN_FAILURES_PER_ADDRESS",
        "100000000",
    ),
    (
        "CONFAB__RATE_LIMIT__LOGIN_FAILURES_PER_ACCOUNT",
        "100000000",
    ),
    ("CONFAB__RATE_LIMIT__USER_PER_MINUTE", "100000000"),
    ("CONFAB__LLM__TITLE_GENERATION", "false"),
];

async fn schemathesis_finds_nothing(app: TestApp) {
    let root = workspace();
    let binary = root.join("target/venv/bin/schemathesis");
    assert!(
        binary.exists(),
        "{} is missing: `make test` installs it (scripts/python-tools.sh)",
        binary.display()
    );
    let res = app
        .post_json(
            "/api/v1/auth/register",
            &serde_json::json!({
                "username": USERNAME,
                "email": "contract@example.com",
                "password": PASSWORD,
            }),
        )
        .await;
    assert_eq!(res.status(), 201, "{:?}", res.text().await);
    let contract = root.join("tests/contract");
    let seed = std::env::var("CONFAB_SCHEMATHESIS_SEED").unwrap_or_else(|_| SEED.to_owned());
    let document = app.url("/api/v1/openapi.json");
    // schemathesis keeps replayable cases in its working directory.
    let scratch = root.join("target/contract");
    std::fs::create_dir_all(&scratch).expect("target/contract");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(binary)
            .arg("--config-file")
            .arg(contract.join("schemathesis.toml"))
            .args(["run", &document, "--no-color", "--seed", &seed])
            .args(["--generation-database", "none"])
            .env("ST_USERNAME", USERNAME)
            .env("ST_PASSWORD", PASSWORD)
            .env("SCHEMATHESIS_HOOKS", "hooks")
            .env("PYTHONPATH", &contract)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .current_dir(&scratch)
            .output()
    })
    .await
    .expect("the schemathesis thread")
    .expect("schemathesis runs");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found disagreements ({}):\n{report}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    // A run that tested nothing would pass too: every operation is tested.
    let count = |label: &str| {
        report
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(|rest| rest.trim().to_owned())
    };
    let selected = count("Selected:").expect("the run's operation count");
    let (_, total) = selected.split_once('/').expect("Selected: n/total");
    assert_eq!(count("Tested:").as_deref(), Some(total), "{report}");
    assert!(total.parse::<usize>().expect("a count") > 20, "{report}");
    // The stateful phase followed links (the document's and inferred
    // ones) from calls that made ids to calls that use them.
    let links = count("API Links:").expect("the stateful phase's link count");
    let covered: usize = links
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("API Links: n covered / …");
    assert!(covered > 0, "no link was followed: {report}");
}

#[tokio::test]
async fn sqlite_answers_as_its_document_says() {
    let llm = FakeLlm::start();
    let app = spawn_chat(Backend::Sqlite, &llm, &LIFTED);
    schemathesis_finds_nothing(app).await;
}

#[tokio::test]
async fn postgres_with_redis_answers_as_its_document_says() {
    let llm = FakeLlm::start();
    let url = redis_url();
    let prefix = format!("confab-contract:{}:", uuid::Uuid::new_v4());
    let mut vars = vec![
        ("REDIS_URL", url.as_str()),
        ("CONFAB__REDIS__KEY_PREFIX", prefix.as_str()),
    ];
    vars.extend_from_slice(&LIFTED);
    let app = spawn_chat(Backend::Postgres, &llm, &vars);
    schemathesis_finds_nothing(app).await;
}
