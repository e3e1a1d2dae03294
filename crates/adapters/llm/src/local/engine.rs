//! The weights (loaded once, re-quantized if asked) and one generation,
//! run on its own thread.

use std::fs::File;
use std::io::Cursor;

use candle_core::quantized::gguf_file::{self, Content};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::{self, ModelWeights};
use confab_ports::{FinishReason, LlmError, LlmEvent, PromptTurn, Usage};
use tokio::sync::mpsc::Sender;

use super::primed;
use super::sampling::{self, Mode, Sampler};
use super::stream::Held;
use super::template::{self, Prompt};
use super::tokenizer::TextStream;
use super::{LocalError, Shared};

/// Prompt ids fed to the model at once. Bounds the attention scores'
/// memory for a long prompt and lets a cancelled generation stop between
/// chunks instead of after the whole prompt.
const PREFILL_CHUNK: usize = 128;

/// Stored formats candle 0.11 has no SIMD kernel for on x86: matrix
/// products on them are several times slower than on Q8_0.
const SLOW_FORMATS: [GgmlDType; 3] = [GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q5_1];

/// What a generation sends to its stream.
pub(crate) type Item = Result<LlmEvent, LlmError>;

/// The model's weights, and the most tokens it can attend to.
pub(crate) struct Weights {
    /// Never run: each generation runs a clone, which shares the tensors
    /// and starts with its own empty KV cache.
    pub(crate) model: ModelWeights,
    /// `llama.context_length`, capped at what candle's rotary tables
    /// cover (`quantized_llama::MAX_SEQ_LEN`).
    pub(crate) context: usize,
}

/// Reads the weights of `content` from `file`, re-quantizing the formats
/// candle is slow on to Q8_0 when `requantize_q8`.
pub(crate) fn load(
    content: Content,
    file: &mut File,
    requantize_q8: bool,
) -> Result<Weights, LocalError> {
    let invalid = |e: candle_core::Error| LocalError::Invalid(e.to_string());
    let declared = content
        .metadata
        .get("llama.context_length")
        .and_then(|v| v.to_u32().ok())
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(quantized_llama::MAX_SEQ_LEN);
    let context = declared.min(quantized_llama::MAX_SEQ_LEN);
    let device = Device::Cpu;
    let slow = |dtype| SLOW_FORMATS.contains(&dtype);
    let model = if requantize_q8 && content.tensor_infos.values().any(|t| slow(t.ggml_dtype)) {
        let (content, mut image) = requantized(&content, file)?;
        ModelWeights::from_gguf(content, &mut image, &device).map_err(invalid)?
    } else {
        ModelWeights::from_gguf(content, file, &device).map_err(invalid)?
    };
    Ok(Weights { model, context })
}

/// An in-memory GGUF with the model's tensors, those in a slow format
/// re-quantized to Q8_0, and the metadata the loader reads.
///
/// candle's `ModelWeights` can only be built from a GGUF reader, so the
/// converted tensors go through one.
fn requantized(
    content: &Content,
    file: &mut File,
) -> Result<(Content, Cursor<Vec<u8>>), LocalError> {
    let invalid = |e: candle_core::Error| LocalError::Invalid(e.to_string());
    let device = Device::Cpu;
    let mut tensors = Vec::with_capacity(content.tensor_infos.len());
    for (name, info) in &content.tensor_infos {
        let tensor = info
            .read(file, content.tensor_data_offset, &device)
            .map_err(invalid)?;
        let row = info.shape.dims().last().copied().unwrap_or(0);
        let tensor =
            if SLOW_FORMATS.contains(&info.ggml_dtype) && row % GgmlDType::Q8_0.block_size() == 0 {
                let values = tensor.dequantize(&device).map_err(invalid)?;
                QTensor::quantize(&values, GgmlDType::Q8_0).map_err(invalid)?
            } else {
                tensor
            };
        tensors.push((name.as_str(), tensor));
    }
    let metadata: Vec<_> = content
        .metadata
        .iter()
        .filter(|(key, _)| key.starts_with("llama.") || key.as_str() == "general.architecture")
        .map(|(key, value)| (key.as_str(), value))
        .collect();
    let refs: Vec<_> = tensors.iter().map(|(name, t)| (*name, t)).collect();
    let size = tensors
        .iter()
        .map(|(_, t)| t.storage_size_in_bytes() + 32)
        .sum();
    let mut image = Cursor::new(Vec::with_capacity(size));
    gguf_file::write(&mut image, &metadata, &refs).map_err(invalid)?;
    drop(refs);
    drop(tensors);
    image.set_position(0);
    let content = Content::read(&mut image).map_err(invalid)?;
    Ok((content, image))
}

/// One completion to generate.
pub(crate) struct Job {
    /// The conversation.
    pub(crate) turns: Vec<PromptTurn>,
    /// The request's temperature, if it set one.
    pub(crate) temperature: Option<f32>,
    /// The most tokens to generate.
    pub(crate) max_tokens: usize,
    /// Where the events go; closed when the stream is dropped.
    pub(crate) events: Sender<Item>,
    /// The slot this generation holds: freed just before its last event,
    /// or when its stream is dropped.
    pub(crate) slot: Held,
}

/// Generates `job` on the current thread (a dedicated one), sending its
/// events, until it ends or its stream is dropped.
pub(crate) fn run(shared: &Shared, job: Job) {
    let Job {
        turns,
        temperature,
        max_tokens,
        events,
        slot,
    } = job;
    let mut out = Out { events, slot };
    if let Err(e) = generate(shared, &turns, temperature, max_tokens, &mut out) {
        tracing::error!(error = %e, "the local model failed during a generation");
        out.end(Err(LlmError::Upstream { status: 0 }));
    }
}

/// Where a generation's events go, and the slot it holds.
struct Out {
    /// Closed when the stream is dropped.
    events: Sender<Item>,
    /// Freed just before the last event: a caller that reads the end and
    /// asks again at once finds the slot free.
    slot: Held,
}

impl Out {
    /// Sends `item`; `false` when the stream is gone (nobody reads: stop).
    fn send(&self, item: Item) -> bool {
        self.events.blocking_send(item).is_ok()
    }

    /// Frees the slot, then sends the last event (if the stream is still
    /// there to get it).
    fn end(&mut self, item: Item) {
        self.slot.release();
        let _ = self.events.blocking_send(item);
    }

    /// Whether the stream was dropped.
    fn cancelled(&self) -> bool {
        self.events.is_closed()
    }

    /// Sends the held-back text, if any, then the end.
    fn finish(&mut self, text: &mut TextStream<'_>, end: LlmEvent) {
        if let Some(rest) = text.finish()
            && !self.send(Ok(LlmEvent::Text(rest)))
        {
            return;
        }
        self.end(Ok(end));
    }
}

/// Feeds `ids` to `model` from `position` in chunks; the scores for the
/// next token, or `None` if the stream was dropped (or `ids` is empty).
fn read(
    model: &mut ModelWeights,
    ids: &[u32],
    position: usize,
    out: &Out,
) -> candle_core::Result<Option<Tensor>> {
    let mut logits = None;
    for (i, chunk) in ids.chunks(PREFILL_CHUNK).enumerate() {
        if out.cancelled() {
            return Ok(None);
        }
        let input = Tensor::new(chunk, &Device::Cpu)?.unsqueeze(0)?;
        logits = Some(model.forward(&input, position + i * PREFILL_CHUNK)?);
    }
    Ok(logits)
}

/// The generation: the prompt in chunks, then one token at a time until a
/// stop token, the cap, or the stream is dropped (checked at every token).
fn generate(
    shared: &Shared,
    turns: &[PromptTurn],
    temperature: Option<f32>,
    max_tokens: usize,
    out: &mut Out,
) -> candle_core::Result<()> {
    let settings = &shared.settings;
    let tok = &shared.tokenizer;
    let context = shared.weights.context;
    // At most half the context is held for the answer, so that a large
    // `max_tokens` can't squeeze the prompt out; the answer then ends
    // with `Length` where the context does.
    let budget = context - max_tokens.min(context / 2);
    let Prompt {
        ids: prompt,
        system,
    } = template::prompt_ids(tok, turns, &settings.default_system_prompt, budget)
        .map_err(candle_core::Error::wrap)?;
    let max_tokens = max_tokens.min(context.saturating_sub(prompt.len()));
    let prompt_tokens = u32::try_from(prompt.len()).unwrap_or(u32::MAX);
    let finished = |reason, generated: usize| LlmEvent::Finished {
        reason,
        usage: Some(Usage {
            prompt_tokens,
            completion_tokens: u32::try_from(generated).unwrap_or(u32::MAX),
        }),
    };
    let mut text = TextStream::new(tok);
    if max_tokens == 0 {
        out.finish(&mut text, finished(FinishReason::Length, 0));
        return Ok(());
    }

    // The system turn is read on its own (from the cache when kept), so
    // that its state can be kept; then the rest, at least one id.
    let system = prompt
        .get(..system)
        .filter(|s| s.len() < prompt.len() && s.len() <= primed::MAX_TOKENS)
        .unwrap_or_default();
    let (mut model, done) = match shared.primed.get(system) {
        Some(model) => (model, system.len()),
        None => {
            let mut model = shared.weights.model.clone();
            model.clear_kv_cache();
            if !system.is_empty() {
                if read(&mut model, system, 0, out)?.is_none() {
                    return Ok(());
                }
                shared.primed.put(system, model.clone());
            }
            (model, system.len())
        }
    };
    let rest = prompt.get(done..).unwrap_or_default();
    let Some(mut logits) = read(&mut model, rest, done, out)? else {
        return Ok(());
    };

    let mut sampler = Sampler::new(settings.seed, Mode::new(temperature, settings.top_p));
    let mut generated: Vec<u32> = Vec::with_capacity(max_tokens);
    loop {
        let mut scores = logits.squeeze(0)?.to_vec1::<f32>()?;
        if settings.repeat_penalty != 1.0 && !generated.is_empty() {
            // Only what the model said itself: the prompt is full of the
            // template's tokens, `<|im_end|>` among them, and penalizing
            // those would keep the model from ending its turn.
            let start = generated.len().saturating_sub(settings.repeat_last_n);
            let recent = generated.get(start..).unwrap_or_default();
            sampling::penalize(&mut scores, settings.repeat_penalty, recent);
        }
        let next = sampler.sample(&scores);
        if tok.stops.contains(&next) {
            out.finish(&mut text, finished(FinishReason::Stop, generated.len()));
            return Ok(());
        }
        generated.push(next);
        if let Some(piece) = text.push(next)
            && !out.send(Ok(LlmEvent::Text(piece)))
        {
            return Ok(());
        }
        if generated.len() >= max_tokens {
            out.finish(&mut text, finished(FinishReason::Length, generated.len()));
            return Ok(());
        }
        if out.cancelled() {
            return Ok(());
        }
        let input = Tensor::new(&[next], &Device::Cpu)?.unsqueeze(0)?;
        logits = model.forward(&input, prompt.len() + generated.len() - 1)?;
    }
}
