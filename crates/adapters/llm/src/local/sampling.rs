//! Picking the next token: repeat penalty, temperature, top-p and a seeded
//! generator, on the scores in place.
//!
//! The vocabulary is ~49k entries and a token takes ~10 ms: candle's
//! `LogitsProcessor` (a softmax tensor, a copy, a weighted index over the
//! whole vocabulary, a full sort for top-p) took ~1.5 ms of that. Here it
//! is one pass for the weights and a sort of the few tokens that can be in
//! the nucleus.

/// A token whose weight is below this share of the total can't be in a
/// nucleus that the heavier tokens already fill (they are looked at first).
const CANDIDATE_FLOOR: f32 = 1e-4;

/// How the next token is picked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Mode {
    /// The most likely token (the first of equals).
    Greedy,
    /// Sampled at this temperature (> 0) from the nucleus of `top_p` (in
    /// (0, 1]; 1 = the whole vocabulary).
    Sample {
        /// Divides the scores before the softmax.
        temperature: f32,
        /// The nucleus's probability mass.
        top_p: f32,
    },
}

impl Mode {
    /// The request's temperature (or [`super::DEFAULT_TEMPERATURE`]), 0 or
    /// less (or not finite) meaning greedy; top-p when set below 1.
    pub(super) fn new(temperature: Option<f32>, top_p: Option<f64>) -> Self {
        let temperature = temperature.unwrap_or(super::DEFAULT_TEMPERATURE);
        if !(temperature > 0.0 && temperature.is_finite()) {
            return Self::Greedy;
        }
        #[allow(clippy::cast_possible_truncation)] // a probability: f32 is plenty
        let top_p = top_p
            .filter(|&p| p > 0.0 && p < 1.0)
            .map_or(1.0, |p| p as f32);
        Self::Sample { temperature, top_p }
    }
}

/// Picks tokens from the model's scores.
pub(super) struct Sampler {
    mode: Mode,
    rng: SplitMix64,
    /// Reused between tokens: the weights, the nucleus's candidates.
    weights: Vec<f32>,
    order: Vec<usize>,
}

impl Sampler {
    /// A sampler in `mode` whose generator starts at `seed`: the same seed
    /// and scores give the same tokens.
    pub(super) fn new(seed: u64, mode: Mode) -> Self {
        Self {
            mode,
            rng: SplitMix64(seed),
            weights: Vec::new(),
            order: Vec::new(),
        }
    }

    /// The next token for `scores` (one per vocabulary entry; not empty).
    pub(super) fn sample(&mut self, scores: &[f32]) -> u32 {
        if scores.is_empty() {
            return 0;
        }
        let index = match self.mode {
            Mode::Greedy => argmax(scores),
            Mode::Sample { temperature, top_p } => {
                let max = scores[argmax(scores)];
                self.weights.clear();
                self.weights
                    .extend(scores.iter().map(|s| ((s - max) / temperature).exp()));
                if top_p < 1.0 {
                    nucleus(&self.weights, top_p, &mut self.order);
                } else {
                    self.order.clear();
                    self.order.extend(0..self.weights.len());
                }
                let total: f32 = self.order.iter().map(|&i| self.weights[i]).sum();
                let mut target = self.rng.next_f32() * total;
                let mut picked = self.order.first().copied().unwrap_or(0);
                for &i in &self.order {
                    picked = i;
                    target -= self.weights[i];
                    if target < 0.0 {
                        break;
                    }
                }
                picked
            }
        };
        u32::try_from(index).unwrap_or(u32::MAX)
    }
}

/// Divides the scores of `recent` tokens (each once) by `penalty` when
/// positive and multiplies them when negative: they become less likely
/// either way.
pub(super) fn penalize(scores: &mut [f32], penalty: f32, recent: &[u32]) {
    let mut seen = Vec::with_capacity(recent.len());
    for &token in recent {
        if seen.contains(&token) {
            continue;
        }
        seen.push(token);
        if let Some(score) = usize::try_from(token).ok().and_then(|i| scores.get_mut(i)) {
            if *score >= 0.0 {
                *score /= penalty;
            } else {
                *score *= penalty;
            }
        }
    }
}

/// The index of the highest score (the first of equals; 0 when empty).
fn argmax(scores: &[f32]) -> usize {
    let mut best = 0;
    for (i, s) in scores.iter().enumerate() {
        if *s > scores[best] {
            best = i;
        }
    }
    best
}

/// Fills `order` with the nucleus of `weights` (unnormalised
/// probabilities): the heaviest tokens, heaviest first and equals in index
/// order, until their share reaches `top_p`, the token that reaches it
/// included.
pub(super) fn nucleus(weights: &[f32], top_p: f32, order: &mut Vec<usize>) {
    let total: f32 = weights.iter().sum();
    let wanted = top_p * total;
    order.clear();
    let floor = CANDIDATE_FLOOR * total;
    order.extend((0..weights.len()).filter(|&i| weights[i] >= floor));
    let heavy: f32 = order.iter().map(|&i| weights[i]).sum();
    if heavy < wanted {
        // A flat distribution: the nucleus reaches below the floor.
        order.clear();
        order.extend(0..weights.len());
    }
    // Stable: equals stay in index order.
    order.sort_by(|&a, &b| weights[b].total_cmp(&weights[a]));
    let mut sum = 0.0;
    let mut keep = 0;
    for &i in order.iter() {
        if keep > 0 && sum >= wanted {
            break;
        }
        sum += weights[i];
        keep += 1;
    }
    order.truncate(keep);
}

/// A small, fast, seedable generator (SplitMix64): the sampling needs
/// reproducibility, not cryptographic strength.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    #[allow(clippy::cast_precision_loss)] // 24 bits: exact in an f32
    fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u32 << 24) as f32
    }
}
