//! Text generation with a KV cache: greedy decoding or temperature + top-p (nucleus) sampling,
//! seeded, so a report's samples are reproducible.

use crate::host::vector::softmax_in_place;
use crate::rng::SplitMix64;
use crate::scoring::OutputHead;
use crate::tensor::model::{KvCache, Model};

/// How to pick each next token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// `0`: greedy (argmax); otherwise logits are divided by it before sampling.
    pub temperature: f64,
    /// Sample only from the smallest set of tokens whose probabilities reach `top_p`.
    pub top_p: f64,
    /// Seed of the sampler.
    pub seed: u64,
}

impl Sampling {
    /// Greedy decoding.
    pub const GREEDY: Sampling = Sampling {
        temperature: 0.0,
        top_p: 1.0,
        seed: 0,
    };
}

/// Generates up to `max_new_tokens` after `prompt`, stopping after any of `stop` (EOS, a chat
/// model's end-of-turn token) or at the model's context (`max_position_embeddings`); returns
/// the new ids (the stop token included when it was generated). `head` is the model's output
/// layer ([`OutputHead::new`]). An error names a prompt id outside the vocabulary or a prompt
/// that fills the context.
pub fn generate(
    model: &Model,
    head: &OutputHead,
    prompt: &[u32],
    stop: &[u32],
    max_new_tokens: usize,
    sampling: Sampling,
) -> crate::error::Result<Vec<u32>> {
    let context = model.config.max_position_embeddings;
    if prompt.len() >= context {
        return Err(crate::error::ModelError::Argument(format!(
            "the prompt has {} tokens; the model's context is {context} (max_position_embeddings)",
            prompt.len()
        )));
    }
    let max_new_tokens = max_new_tokens.min(context - prompt.len());
    let mut rng = SplitMix64::new(sampling.seed);
    let mut cache = KvCache::default();
    let mut generated = Vec::new();
    let mut next: Vec<u32> = prompt.to_vec();
    while generated.len() < max_new_tokens && !next.is_empty() {
        let hidden = model.hidden_states_cached(&next, &mut cache)?;
        let [_, rows, width] = hidden.dims();
        let token = pick(
            head.last_logits(hidden.reshape([rows, width])),
            sampling,
            &mut rng,
        );
        generated.push(token);
        if stop.contains(&token) {
            break;
        }
        next = vec![token];
    }
    Ok(generated)
}

/// The next token from `logits`.
fn pick(mut logits: Vec<f32>, sampling: Sampling, rng: &mut SplitMix64) -> u32 {
    if sampling.temperature <= 0.0 {
        return argmax(logits.iter().copied()) as u32;
    }
    let inverse = (1.0 / sampling.temperature) as f32;
    logits.iter_mut().for_each(|l| *l *= inverse);
    softmax_in_place(&mut logits);
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let mut kept = 0.0f64;
    let mut nucleus = Vec::new();
    for &i in &order {
        nucleus.push(i);
        kept += f64::from(logits[i]);
        if kept >= sampling.top_p {
            break;
        }
    }
    let mut target = rng.next_f64() * kept;
    for &i in &nucleus {
        target -= f64::from(logits[i]);
        if target <= 0.0 {
            return i as u32;
        }
    }
    *nucleus.last().unwrap_or(&0) as u32
}

/// Index of the largest value (the first on ties, as numpy's argmax; 0 for none).
pub fn argmax<T: PartialOrd>(values: impl IntoIterator<Item = T>) -> usize {
    let mut best: Option<(usize, T)> = None;
    for (i, v) in values.into_iter().enumerate() {
        if best.as_ref().is_none_or(|(_, b)| v > *b) {
            best = Some((i, v));
        }
    }
    best.map_or(0, |(i, _)| i)
}
