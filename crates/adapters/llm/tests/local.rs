//! The built-in model with the real model file: tokenizer, template,
//! generation, admission and cancellation.
//!
//! The file is `$CONFAB_TEST_MODEL`, else `models/SmolLM2-135M-Instruct.Q4_1.gguf`
//! in the workspace; without it these tests fail (fetch it with
//! `scripts/fetch-model.sh`).
#![cfg(feature = "local")]
// Test support: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file::{Content, Value};
use confab_domain::ModelSlug;
use confab_llm::{LocalError, LocalModel, LocalSettings};
use confab_ports::{
    ChatModel, CompletionRequest, FinishReason, HealthCheck, LlmError, LlmEvent, PromptRole,
    PromptTurn, Usage,
};

const SMOLLM_SYSTEM: &str = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

/// The model file; a test that needs it fails when it is missing.
fn model_path() -> PathBuf {
    let path = std::env::var_os("CONFAB_TEST_MODEL").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../../models/SmolLM2-135M-Instruct.Q4_1.gguf")
        },
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "the test model {} is missing: run scripts/fetch-model.sh (or set CONFAB_TEST_MODEL)",
        path.display()
    );
    path
}

fn settings() -> LocalSettings {
    let mut settings = LocalSettings::new(model_path());
    settings.max_concurrent = 1;
    settings.max_waiting = 0;
    settings
}

fn load(settings: LocalSettings) -> LocalModel {
    LocalModel::load(settings).unwrap()
}

/// One model for the tests that only tokenize.
fn shared() -> &'static LocalModel {
    static MODEL: OnceLock<LocalModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let mut settings = settings();
        settings.requantize_q8 = false;
        load(settings)
    })
}

/// The GGUF's vocabulary: token → id.
fn vocabulary() -> HashMap<String, u32> {
    let mut file = std::fs::File::open(model_path()).unwrap();
    let content = Content::read(&mut file).unwrap();
    let Some(Value::Array(tokens)) = content.metadata.get("tokenizer.ggml.tokens") else {
        panic!("no token list");
    };
    tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.to_string().unwrap().clone(), u32::try_from(id).unwrap()))
        .collect()
}

fn turn(role: PromptRole, text: &str) -> PromptTurn {
    PromptTurn {
        role,
        text: text.to_owned(),
    }
}

fn request(temperature: Option<f32>, max_tokens: u32) -> CompletionRequest {
    CompletionRequest {
        model: ModelSlug::parse("SmolLM2-135M-Instruct").unwrap(),
        turns: vec![turn(
            PromptRole::User,
            "What is the capital of France? Answer in one word.",
        )],
        temperature,
        max_tokens,
    }
}

/// A greedy request whose answer is longer than a test waits: the
/// generation holds its slot (its thread blocks once the unread events
/// fill the channel).
fn long_request() -> CompletionRequest {
    CompletionRequest {
        turns: vec![turn(
            PromptRole::User,
            "Write a long story about a dragon who learns to bake bread.",
        )],
        ..request(Some(0.0), 500)
    }
}

/// The texts and the end of a whole completion.
async fn collect(model: &LocalModel, request: CompletionRequest) -> (Vec<String>, LlmEvent) {
    let mut stream = model.complete(request).await.unwrap();
    let mut texts = Vec::new();
    loop {
        match stream
            .next()
            .await
            .unwrap()
            .expect("an event before the end")
        {
            LlmEvent::Text(text) => texts.push(text),
            end @ LlmEvent::Finished { .. } => {
                assert_eq!(stream.next().await.unwrap(), None);
                return (texts, end);
            }
        }
    }
}

#[test]
fn text_round_trips_through_the_tokenizer() {
    let model = shared();
    for text in [
        "Hello, world! It's 2024-06-01 and 3.14159 is pi.",
        "Crème brûlée, naïve café, Ångström, Straße — déjà vu.",
        "日本語のテキスト、中文文本和한국어",
        "🦀 Rust 👩‍💻 🎉🇫🇷 done",
        "  leading spaces,\ttabs\nand\n\nnewlines  ",
    ] {
        let ids = model.encode(text).unwrap();
        assert!(!ids.is_empty());
        assert_eq!(model.decode(&ids).unwrap(), text);
    }
}

#[test]
fn known_strings_get_the_vocabulary_s_ids() {
    let model = shared();
    let vocab = vocabulary();
    let id = |token: &str| *vocab.get(token).unwrap_or_else(|| panic!("{token}"));
    assert_eq!(
        model.encode("Hello world").unwrap(),
        [id("Hello"), id("Ġworld")]
    );
    // Digits one per token, and the space before them on its own.
    assert_eq!(
        model.encode("Hello 2024").unwrap(),
        [id("Hello"), id("Ġ"), id("2"), id("0"), id("2"), id("4")]
    );
}

#[test]
fn special_tokens_are_single_ids() {
    let model = shared();
    let vocab = vocabulary();
    for token in ["<|im_start|>", "<|im_end|>", "<|endoftext|>"] {
        assert_eq!(model.encode(token).unwrap(), [vocab[token]], "{token}");
    }
    let ids = model.encode("<|im_start|>user\nHi<|im_end|>\n").unwrap();
    assert_eq!(ids.first(), Some(&vocab["<|im_start|>"]));
    assert!(ids.contains(&vocab["<|im_end|>"]));
}

#[test]
fn the_chat_template_is_chatml() {
    let model = shared();
    let turns = [
        turn(PromptRole::System, "Be brief."),
        turn(PromptRole::User, "Hi!"),
        turn(PromptRole::Assistant, "Hello. How can I help?"),
    ];
    assert_eq!(
        model.chat_prompt(&turns),
        "<|im_start|>system\nBe brief.<|im_end|>\n\
         <|im_start|>user\nHi!<|im_end|>\n\
         <|im_start|>assistant\nHello. How can I help?<|im_end|>\n\
         <|im_start|>assistant\n"
    );
}

#[test]
fn a_conversation_without_a_system_turn_gets_the_default() {
    let model = shared();
    let turns = [turn(PromptRole::User, "Hi!")];
    assert_eq!(
        model.chat_prompt(&turns),
        format!(
            "<|im_start|>system\n{SMOLLM_SYSTEM}<|im_end|>\n\
             <|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
        )
    );
}

#[test]
fn the_model_is_named_after_the_file() {
    assert_eq!(shared().model_name(), "SmolLM2-135M-Instruct");
    assert_eq!(shared().context_length(), 4096);
    assert!(shared().threads() >= 1);
}

#[test]
fn a_missing_file_says_how_to_fetch_it() {
    let mut settings = settings();
    settings.model_path = PathBuf::from("/nonexistent/model.gguf");
    let error = LocalModel::load(settings).unwrap_err();
    assert!(matches!(error, LocalError::Missing { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("scripts/fetch-model.sh"), "{message}");
    assert!(message.contains("/nonexistent/model.gguf"), "{message}");
}

#[test]
fn bad_settings_are_refused() {
    let mut settings = settings();
    settings.max_concurrent = 0;
    assert!(matches!(
        LocalModel::load(settings),
        Err(LocalError::Settings(_))
    ));
}

#[tokio::test]
async fn a_seeded_generation_is_valid_and_reproducible() {
    let model = load(settings());
    let (texts, end) = collect(&model, request(Some(0.7), 8)).await;
    assert!(texts.iter().all(|t| !t.is_empty()), "{texts:?}");
    assert!(!texts.concat().contains(char::REPLACEMENT_CHARACTER));
    let LlmEvent::Finished {
        reason,
        usage: Some(Usage {
            prompt_tokens,
            completion_tokens,
        }),
    } = end
    else {
        panic!("{end:?}");
    };
    assert!(matches!(reason, FinishReason::Length | FinishReason::Stop));
    assert!(completion_tokens <= 8);
    if reason == FinishReason::Length {
        assert_eq!(completion_tokens, 8);
    }
    let expected = model
        .encode(&model.chat_prompt(&request(None, 8).turns))
        .unwrap();
    assert_eq!(prompt_tokens as usize, expected.len());

    let (again, end_again) = collect(&model, request(Some(0.7), 8)).await;
    assert_eq!(again.concat(), texts.concat());
    assert_eq!(end_again, end);
}

#[tokio::test]
async fn greedy_decoding_is_deterministic_and_sensible() {
    let model = load(settings());
    let (first, _) = collect(&model, request(Some(0.0), 8)).await;
    let (second, _) = collect(&model, request(Some(0.0), 8)).await;
    assert_eq!(first.concat(), second.concat());
    assert!(first.concat().contains("Paris"), "{first:?}");
}

#[tokio::test]
async fn a_second_request_is_refused_while_the_slot_is_taken() {
    let model = load(settings());
    assert!(!model.saturated());
    let mut running = model.complete(long_request()).await.unwrap();
    assert!(running.next().await.unwrap().is_some());
    assert!(model.saturated());
    let refused = model.complete(request(Some(0.0), 8)).await.err();
    assert_eq!(
        refused,
        Some(LlmError::Unavailable("the local model is busy".to_owned()))
    );
}

#[tokio::test]
async fn a_waiting_request_gives_up_after_the_queue_timeout() {
    let mut settings = settings();
    settings.max_waiting = 1;
    settings.queue_timeout = Duration::from_millis(100);
    let model = load(settings);
    let mut running = model.complete(long_request()).await.unwrap();
    assert!(running.next().await.unwrap().is_some());
    let started = Instant::now();
    let refused = model.complete(request(Some(0.0), 8)).await.err();
    assert!(matches!(refused, Some(LlmError::Unavailable(_))));
    assert!(started.elapsed() >= Duration::from_millis(100));
}

#[tokio::test]
async fn dropping_the_stream_stops_the_generation_and_frees_the_slot() {
    let model = load(settings());
    let mut stream = model.complete(long_request()).await.unwrap();
    assert!(matches!(
        stream.next().await.unwrap(),
        Some(LlmEvent::Text(_))
    ));
    drop(stream);
    // The slot is free at once: a stopped answer's thread may still be
    // finishing a token, but the next completion doesn't wait for it.
    assert!(!model.saturated());
    let mut next = model.complete(request(Some(0.0), 2)).await.unwrap();
    assert!(matches!(
        next.next().await.unwrap(),
        Some(LlmEvent::Text(_))
    ));
}

#[tokio::test]
async fn a_model_loaded_in_the_background_answers_and_reports_ready() {
    let loading = LocalModel::load_in_background(settings()).unwrap();
    assert_eq!(loading.model_name(), "SmolLM2-135M-Instruct");
    let model = loading.loaded().await.unwrap();
    assert!(model.threads() >= 1);
    assert_eq!(HealthCheck::name(&loading), "llm");
    HealthCheck::check(&loading).await.unwrap();
    assert!(!loading.saturated());
    let mut stream = loading.complete(request(Some(0.0), 2)).await.unwrap();
    assert!(matches!(stream.next().await, Ok(Some(LlmEvent::Text(_)))));
}

#[tokio::test]
async fn weights_that_fail_to_load_leave_the_model_unready_and_say_why() {
    // A file whose header is whole but whose tensors are cut short: the
    // header checks pass at once, the weights fail on the loading thread.
    let source = model_path();
    let mut file = std::fs::File::open(&source).unwrap();
    let header = Content::read(&mut file).unwrap();
    let keep = usize::try_from(header.tensor_data_offset).unwrap() + 4096;
    let bytes = std::fs::read(&source).unwrap();
    let dir = std::env::temp_dir().join(format!("confab-truncated-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let truncated = dir.join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..keep]).unwrap();
    let mut settings = settings();
    settings.model_path = truncated;
    let loading = LocalModel::load_in_background(settings).unwrap();
    let why = loading.loaded().await.unwrap_err();
    assert!(!why.is_empty());
    let unready = HealthCheck::check(&loading).await.unwrap_err();
    assert!(
        matches!(unready, confab_domain::DomainError::Unavailable(_)),
        "{unready:?}"
    );
    assert!(
        loading.saturated(),
        "a send is refused before anything is stored"
    );
    let refused = loading.complete(request(None, 2)).await.err().unwrap();
    assert!(matches!(refused, LlmError::Unavailable(_)), "{refused:?}");
    std::fs::remove_dir_all(dir).unwrap();
}
