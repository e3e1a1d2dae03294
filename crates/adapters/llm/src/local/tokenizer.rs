//! The model's tokenizer, built from the GGUF's own metadata, and the
//! incremental decoder that turns generated tokens into text that never
//! splits a UTF-8 character.

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

use super::LocalError;

/// `tokenizer.ggml.token_type` of a control token (`<|im_start|>` …).
const CONTROL: i32 = 3;

/// A byte-level BPE tokenizer (GPT-2 style, SmolLM2's) and the ids of the
/// tokens the chat template is made of.
pub(crate) struct GgufTokenizer {
    /// Reads special tokens in the text as the tokens they name: for the
    /// template, and for callers of [`super::LocalModel::encode`].
    templated: Tokenizer,
    /// Reads special tokens as plain text: for what people wrote, so that a
    /// message can't forge a turn by containing `<|im_start|>`.
    plain: Tokenizer,
    /// `<|im_start|>`.
    pub(crate) im_start: u32,
    /// `<|im_end|>`: the end of a turn.
    pub(crate) im_end: u32,
    /// Tokens that end a generation: the end of turn, `<|endoftext|>` and
    /// the GGUF's end-of-sequence token.
    pub(crate) stops: Vec<u32>,
}

impl GgufTokenizer {
    /// Builds the tokenizer from `tokenizer.ggml.*`: the vocabulary and
    /// merges as a BPE, digits split one per token then the byte-level
    /// split (llama.cpp's `smollm` pre-tokenizer), and every control token
    /// as a special token.
    pub(crate) fn from_gguf(content: &Content) -> Result<Self, LocalError> {
        let model = string_of(content, "tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(LocalError::Invalid(format!(
                "tokenizer.ggml.model is {model:?}; only byte-level BPE (gpt2) is supported"
            )));
        }
        let tokens = strings_of(content, "tokenizer.ggml.tokens")?;
        let merges = strings_of(content, "tokenizer.ggml.merges")?;
        let types = content
            .metadata
            .get("tokenizer.ggml.token_type")
            .and_then(|v| v.to_vec().ok());

        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .filter_map(|(id, token)| Some(((*token).to_owned(), u32::try_from(id).ok()?)))
            .collect();
        let merges = merges
            .iter()
            .map(|merge| {
                merge
                    .split_once(' ')
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .ok_or_else(|| LocalError::Invalid(format!("a merge is malformed: {merge:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| LocalError::Invalid(format!("the tokenizer can't be built: {e}")))?;

        let mut templated = Tokenizer::new(bpe);
        templated.with_pre_tokenizer(Some(Sequence::new(vec![
            Digits::new(true).into(),
            // No prefix space, offsets trimmed, GPT-2's split regex: as
            // SmolLM2's own tokenizer.json.
            ByteLevel::new(false, true, true).into(),
        ])));
        templated.with_decoder(Some(ByteLevelDecoder::default()));
        let specials = tokens
            .iter()
            .enumerate()
            .filter(|(id, _)| {
                types
                    .and_then(|t| t.get(*id))
                    .and_then(|t| t.to_i32().ok())
                    .is_some_and(|t| t == CONTROL)
            })
            .map(|(_, token)| AddedToken::from((*token).to_owned(), true));
        templated
            .add_special_tokens(specials)
            .map_err(|e| LocalError::Invalid(format!("the special tokens can't be added: {e}")))?;
        let mut plain = templated.clone();
        plain.set_encode_special_tokens(true);

        let id = |token: &str| {
            templated.token_to_id(token).ok_or_else(|| {
                LocalError::Invalid(format!("the vocabulary has no {token}: not a ChatML model"))
            })
        };
        let im_start = id("<|im_start|>")?;
        let im_end = id("<|im_end|>")?;
        let mut stops = vec![im_end];
        stops.extend(templated.token_to_id("<|endoftext|>"));
        stops.extend(
            content
                .metadata
                .get("tokenizer.ggml.eos_token_id")
                .and_then(|v| v.to_u32().ok()),
        );
        stops.sort_unstable();
        stops.dedup();
        Ok(Self {
            templated,
            plain,
            im_start,
            im_end,
            stops,
        })
    }

    /// The ids of `text` with special tokens recognized (`<|im_start|>`
    /// is one token).
    pub(crate) fn encode_templated(&self, text: &str) -> Result<Vec<u32>, LocalError> {
        encode(&self.templated, text)
    }

    /// The ids of `text` read as plain text: special tokens spelled out in
    /// it are just characters.
    pub(crate) fn encode_plain(&self, text: &str) -> Result<Vec<u32>, LocalError> {
        encode(&self.plain, text)
    }

    /// The text of `ids`, special tokens included.
    pub(crate) fn decode(&self, ids: &[u32]) -> Result<String, LocalError> {
        self.templated
            .decode(ids, false)
            .map_err(|e| LocalError::Invalid(format!("the tokens can't be decoded: {e}")))
    }

    /// The text of generated ids: special tokens left out (they are
    /// markup, not part of the answer).
    fn decode_answer(&self, ids: &[u32]) -> Option<String> {
        self.templated.decode(ids, true).ok()
    }
}

fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>, LocalError> {
    tokenizer
        .encode_fast(text, false)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| LocalError::Invalid(format!("the text can't be tokenized: {e}")))
}

fn string_of<'a>(content: &'a Content, key: &str) -> Result<&'a str, LocalError> {
    content
        .metadata
        .get(key)
        .and_then(|v| v.to_string().ok())
        .map(String::as_str)
        .ok_or_else(|| LocalError::Invalid(format!("the GGUF has no string {key}")))
}

fn strings_of<'a>(content: &'a Content, key: &str) -> Result<Vec<&'a str>, LocalError> {
    let values = content
        .metadata
        .get(key)
        .and_then(|v| v.to_vec().ok())
        .ok_or_else(|| LocalError::Invalid(format!("the GGUF has no array {key}")))?;
    values
        .iter()
        .map(|v| match v {
            Value::String(s) => Ok(s.as_str()),
            _ => Err(LocalError::Invalid(format!("{key} holds a non-string"))),
        })
        .collect()
}

/// Turns generated ids into text pieces, each made of whole characters.
///
/// Byte-level BPE tokens are byte sequences: a character of several bytes
/// (accents, CJK, emoji) can straddle tokens. Ids are held back while
/// their text ends in U+FFFD (an incomplete character) and decoded
/// together once it completes. Decoding byte-level tokens apart and
/// concatenating is the same as decoding them together, so what was
/// emitted is forgotten and each step decodes only the pending ids.
pub(crate) struct TextStream<'t> {
    tokenizer: &'t GgufTokenizer,
    pending: Vec<u32>,
}

impl<'t> TextStream<'t> {
    /// Nothing decoded yet.
    pub(crate) const fn new(tokenizer: &'t GgufTokenizer) -> Self {
        Self {
            tokenizer,
            pending: Vec::new(),
        }
    }

    /// The text `id` completes, if any (never empty).
    pub(crate) fn push(&mut self, id: u32) -> Option<String> {
        self.pending.push(id);
        let text = self.tokenizer.decode_answer(&self.pending)?;
        if text.ends_with(char::REPLACEMENT_CHARACTER) {
            // Wait for the rest of the character; `finish` flushes a
            // sequence that never completes.
            return None;
        }
        self.pending.clear();
        (!text.is_empty()).then_some(text)
    }

    /// Whatever is held back, at the end of the generation (an incomplete
    /// character comes out as U+FFFD, a whole character).
    pub(crate) fn finish(&mut self) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        let text = self.tokenizer.decode_answer(&self.pending)?;
        self.pending.clear();
        (!text.is_empty()).then_some(text)
    }
}
