//! Picking the next token: temperature, top-p, a seeded generator.

use candle_core::Tensor;
use candle_transformers::generation::{LogitsProcessor, Sampling};

/// Below this probability a token is left out of the nucleus search
/// whenever the tokens above it already reach `top_p` (then none below
/// could be in the nucleus).
const CANDIDATE_FLOOR: f32 = 1e-4;

/// Picks tokens from the model's scores.
pub(super) struct Sampler {
    inner: LogitsProcessor,
    /// Top-p, when sampling (not greedy) and below 1.
    top_p: Option<f32>,
}

impl Sampler {
    /// The request's temperature (or [`super::DEFAULT_TEMPERATURE`]), 0 or
    /// less meaning the most likely token every time; top-p when set
    /// below 1; the generator seeded with `seed`.
    pub(super) fn new(seed: u64, temperature: Option<f32>, top_p: Option<f64>) -> Self {
        let sampling = sampling(temperature);
        let top_p = match sampling {
            Sampling::ArgMax => None,
            #[allow(clippy::cast_possible_truncation)] // a probability: f32 is plenty
            _ => top_p.filter(|&p| p > 0.0 && p < 1.0).map(|p| p as f32),
        };
        Self {
            inner: LogitsProcessor::from_sampling(seed, sampling),
            top_p,
        }
    }

    /// The next token for `scores` (one per vocabulary entry).
    pub(super) fn sample(&mut self, scores: &Tensor) -> candle_core::Result<u32> {
        match self.top_p {
            // candle's own top-p sorts the whole vocabulary at every token
            // (a millisecond and more for 49k entries): the same nucleus,
            // found among the few likely tokens, then sampled the same way.
            Some(p) => self.inner.sample_f(scores, |probs| nucleus(probs, p)),
            None => self.inner.sample(scores),
        }
    }
}

/// candle's sampling for a temperature: greedy at 0 or less.
pub(super) fn sampling(temperature: Option<f32>) -> Sampling {
    let temperature = f64::from(temperature.unwrap_or(super::DEFAULT_TEMPERATURE));
    if temperature > 0.0 && temperature.is_finite() {
        Sampling::All { temperature }
    } else {
        Sampling::ArgMax
    }
}

/// Zeroes every probability outside the nucleus: the most likely tokens,
/// in order, until their sum reaches `top_p` (the token that reaches it
/// included) — exactly what candle's top-p keeps, ties in index order.
pub(super) fn nucleus(probs: &mut [f32], top_p: f32) {
    let mut order: Vec<usize> = (0..probs.len())
        .filter(|&i| probs.get(i).is_some_and(|&p| p >= CANDIDATE_FLOOR))
        .collect();
    let reached = order.iter().filter_map(|&i| probs.get(i)).sum::<f32>() >= top_p;
    if !reached {
        // A flat distribution: the nucleus reaches below the floor.
        order = (0..probs.len()).collect();
    }
    let prob = |i: usize| probs.get(i).copied().unwrap_or(0.0);
    order.sort_by(|&a, &b| prob(b).total_cmp(&prob(a)));
    let mut keep = vec![false; probs.len()];
    let mut sum = 0.0;
    for &i in &order {
        if sum >= top_p {
            break;
        }
        sum += prob(i);
        if let Some(k) = keep.get_mut(i) {
            *k = true;
        }
    }
    for (p, keep) in probs.iter_mut().zip(keep) {
        if !keep {
            *p = 0.0;
        }
    }
}
