//! The model state after a system turn, kept so that the next prompts
//! that start with it skip computing it again.
//!
//! Most prompts start with the same system turn (the configured one, or
//! the title prompt), and for a short question it is most of the prompt:
//! reusing its attention state roughly halves the time to the first token.
//! A clone of a model shares its weights and its KV cache's tensors, which
//! candle never changes in place (it appends by building new ones), so a
//! primed model can be cloned by any number of generations.

use std::sync::Mutex;

use candle_transformers::models::quantized_llama::ModelWeights;

/// System turns kept (the chat's and the title's, and a few more).
const ENTRIES: usize = 4;

/// The longest system turn kept, in tokens: each costs ~46 KB of KV cache
/// per token with SmolLM2-135M.
pub(super) const MAX_TOKENS: usize = 512;

/// A model that has read `ids`.
struct Entry {
    ids: Vec<u32>,
    model: ModelWeights,
}

/// The most recently used primed models, newest last.
#[derive(Default)]
pub(super) struct Primed {
    entries: Mutex<Vec<Entry>>,
}

impl Primed {
    /// A model that has read exactly `ids`, if one is kept.
    pub(super) fn get(&self, ids: &[u32]) -> Option<ModelWeights> {
        // A poisoned lock only means no cache.
        let mut entries = self.entries.lock().ok()?;
        let at = entries.iter().position(|e| e.ids == ids)?;
        let entry = entries.remove(at);
        let model = entry.model.clone();
        entries.push(entry);
        Some(model)
    }

    /// Keeps `model`, which has read `ids`, dropping the least recently
    /// used entry when full.
    pub(super) fn put(&self, ids: &[u32], model: ModelWeights) {
        if ids.len() > MAX_TOKENS {
            return;
        }
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|e| e.ids != ids);
            if entries.len() >= ENTRIES {
                entries.remove(0);
            }
            entries.push(Entry {
                ids: ids.to_vec(),
                model,
            });
        }
    }
}
