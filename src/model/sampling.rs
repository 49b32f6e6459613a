//! Text generation for decoders with a KV cache: greedy, temperature, top-k, top-p, stop
//! tokens, a cap on new tokens. Prompts of a batch are left-padded; positions follow the
//! padding mask as in transformers, so a batch generates what each prompt would alone.

use burn::prelude::*;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::decoder::LanguageModel;
use super::layers::{KvCache, attention_mask, positions_from_padding, repeat_rows};
use crate::rng::SplitMix64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SamplingConfig {
    #[serde(default = "default_max_new")]
    pub max_new_tokens: usize,
    /// 0 means greedy decoding.
    #[serde(default)]
    pub temperature: f64,
    /// Keep the k most likely tokens (0: off).
    #[serde(default)]
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1: off).
    #[serde(default = "one")]
    pub top_p: f64,
    /// Token ids that end a sequence (kept in the output).
    #[serde(default)]
    pub stop_tokens: Vec<u32>,
    #[serde(default)]
    pub seed: u64,
}

fn default_max_new() -> usize {
    64
}
fn one() -> f64 {
    1.0
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            max_new_tokens: default_max_new(),
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            stop_tokens: vec![],
            seed: 0,
        }
    }
}

impl SamplingConfig {
    /// Whether a generated answer ran into `max_new_tokens` without a stop token: it was cut
    /// off (RL stages log the share; DAPO masks such answers).
    pub fn cut_off(&self, answer: &[u32]) -> bool {
        let stopped = answer.last().is_some_and(|t| self.stop_tokens.contains(t));
        !stopped && answer.len() >= self.max_new_tokens
    }
}

/// Picks the next token from one row of logits (one draw from `rng` when sampling, none when
/// greedy).
pub fn choose(logits: &[f32], cfg: &SamplingConfig, rng: &mut SplitMix64) -> u32 {
    let draw = (cfg.temperature > 0.0).then(|| rng.next_f64());
    choose_with(logits, cfg, draw)
}

/// [`choose`] with its uniform draw made beforehand (`None` when greedy), so rows can be
/// chosen in any order, or at once, and still pick what one walk of the generator would.
fn choose_with(logits: &[f32], cfg: &SamplingConfig, draw: Option<f64>) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |best, (i, &v)| {
                if v > best.1 { (i, v) } else { best }
            })
            .0 as u32
    };
    let Some(u) = draw.filter(|_| cfg.temperature > 0.0) else {
        return argmax();
    };
    let mut cand = descending(logits, cfg.temperature);
    if cfg.top_k > 0 {
        cand.truncate(cfg.top_k);
    }
    let max = cand[0].1;
    let mut probs: Vec<f64> = cand.iter().map(|(_, l)| (l - max).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if cfg.top_p < 1.0 {
        let mut acc = 0.0;
        let keep = probs.iter().position(|p| {
            acc += p;
            acc >= cfg.top_p
        });
        let keep = keep.map_or(probs.len(), |k| k + 1);
        probs.truncate(keep);
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
    }
    let mut acc = 0.0;
    for (i, p) in probs.iter().enumerate() {
        acc += p;
        if u < acc {
            return cand[i].0;
        }
    }
    cand[probs.len() - 1].0
}

/// `(id, logit / temperature)` of every logit, in `f64::total_cmp` order from the largest,
/// equal values by id from the smallest: the order the sampler sums its probabilities in, so
/// it must be exactly this one. Sorting 50k values once per sampled token is the sampler's
/// main cost, so the logits' own f32 bits are radix-sorted (three stable passes of 11 bits),
/// and that order is checked against the one asked for: dividing by a positive temperature
/// keeps it unless two logits land on one value (never, short of overflow), and then a
/// comparison sort decides.
fn descending(logits: &[f32], temperature: f64) -> Vec<(u32, f64)> {
    let ids = radix_descending(logits);
    let mut cand: Vec<(u32, f64)> = ids
        .into_iter()
        .map(|i| (i, logits[i as usize] as f64 / temperature))
        .collect();
    let ordered = |a: &(u32, f64), b: &(u32, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if !cand
        .windows(2)
        .all(|w| ordered(&w[0], &w[1]) == std::cmp::Ordering::Less)
    {
        cand.sort_unstable_by(ordered);
    }
    cand
}

/// The ids of `values` in `f32::total_cmp` order from the largest, equal values by id from the
/// smallest: a stable least-significant-digit radix sort of the values' total-order bits, 11
/// bits a pass, skipping a pass whose digit every value shares.
fn radix_descending(values: &[f32]) -> Vec<u32> {
    const BITS: u32 = 11;
    const PASSES: usize = 3;
    // Ascending order of `key` is descending total order of the values: the usual map of a
    // float's bits to an unsigned total order (flip all bits of a negative, the sign bit of
    // the rest), complemented. The key rides in the high half, the id in the low.
    let key = |v: f32| {
        let bits = v.to_bits();
        !(if bits >> 31 == 1 {
            !bits
        } else {
            bits | 1 << 31
        })
    };
    let mut items: Vec<u64> = values
        .iter()
        .enumerate()
        .map(|(i, &v)| (u64::from(key(v)) << 32) | i as u64)
        .collect();
    let digit = |item: u64, pass: usize| {
        ((item >> (32 + BITS as usize * pass)) & ((1 << BITS) - 1)) as usize
    };
    let mut counts = vec![[0usize; 1 << BITS]; PASSES];
    for &item in &items {
        for (pass, c) in counts.iter_mut().enumerate() {
            c[digit(item, pass)] += 1;
        }
    }
    let mut spare = vec![0u64; items.len()];
    for (pass, c) in counts.iter().enumerate() {
        if c.contains(&items.len()) {
            continue;
        }
        let mut start = vec![0usize; 1 << BITS];
        let mut at = 0;
        for (s, n) in start.iter_mut().zip(c) {
            *s = at;
            at += n;
        }
        for &item in &items {
            let d = digit(item, pass);
            spare[start[d]] = item;
            start[d] += 1;
        }
        std::mem::swap(&mut items, &mut spare);
    }
    items.into_iter().map(|item| item as u32).collect()
}

/// Generates a continuation for each prompt (token ids). Each output holds the new tokens
/// only, ending with a stop token when one was produced.
pub fn generate(
    model: LanguageModel<'_>,
    prompts: &[Vec<u32>],
    cfg: &SamplingConfig,
    device: &Device,
) -> Vec<Vec<u32>> {
    generate_groups(model, prompts, 1, cfg, device)
}

/// [`generate`] for `group` continuations of each prompt (all of one prompt's, then the next
/// prompt's): each prompt is encoded once and its keys and values are repeated for the rows
/// of its group, which then decode as one batch. The same tokens as [`generate`] on the
/// prompts each repeated `group` times.
pub fn generate_groups(
    model: LanguageModel<'_>,
    prompts: &[Vec<u32>],
    group: usize,
    cfg: &SamplingConfig,
    device: &Device,
) -> Vec<Vec<u32>> {
    decode(model, prompts, group, cfg, device, None)
}

/// [`generate`] that also ends an answer once `stop` says so of what it has generated (a stop
/// string that text holds: lm-eval's `until`).
pub fn generate_until(
    model: LanguageModel<'_>,
    prompts: &[Vec<u32>],
    cfg: &SamplingConfig,
    device: &Device,
    stop: &StopWhen<'_>,
) -> Vec<Vec<u32>> {
    decode(model, prompts, 1, cfg, device, Some(stop))
}

/// Says of an answer's tokens so far whether it is over.
pub type StopWhen<'a> = dyn Fn(&[u32]) -> bool + 'a;

fn decode(
    model: LanguageModel<'_>,
    prompts: &[Vec<u32>],
    group: usize,
    cfg: &SamplingConfig,
    device: &Device,
    stop: Option<&StopWhen<'_>>,
) -> Vec<Vec<u32>> {
    let group = group.max(1);
    let b = prompts.len() * group;
    // Positions past the model's context do not exist: a prompt keeps its last `limit - 1`
    // tokens, and generation stops when the longest row reaches the limit.
    let limit = model.decoder().max_positions().max(2);
    let prompts: Vec<&[u32]> = prompts
        .iter()
        .map(|p| &p[p.len().saturating_sub(limit - 1)..])
        .collect();
    let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
    let max_new_tokens = cfg.max_new_tokens.min(limit - longest);
    if b == 0 || longest == 0 || max_new_tokens == 0 {
        return vec![Vec::new(); b];
    }
    // Left-padded to the longest prompt: ids and which positions are real, per prompt.
    let (mut ids, mut real) = (
        Vec::with_capacity(prompts.len() * longest),
        Vec::with_capacity(prompts.len() * longest),
    );
    for p in &prompts {
        let pad = longest - p.len();
        ids.extend(std::iter::repeat_n(0i64, pad).chain(p.iter().map(|&t| t as i64)));
        real.extend(std::iter::repeat_n(false, pad).chain(std::iter::repeat_n(true, p.len())));
    }
    let padding_of = |real: Vec<bool>, rows: usize| {
        Tensor::<2, Bool>::from_data(burn::tensor::TensorData::new(real, [rows, longest]), device)
    };
    let n = prompts.len();
    let ids = Tensor::<2, Int>::from_data(burn::tensor::TensorData::new(ids, [n, longest]), device);
    let prompt_padding = padding_of(real.clone(), n);
    let mut cache = KvCache::new(model.decoder().num_layers(), longest + max_new_tokens);
    let mask = attention_mask(
        Some(prompt_padding.clone()),
        n,
        longest,
        longest,
        true,
        0,
        device,
    );
    let prompt_positions = positions_from_padding(&prompt_padding, None);
    let mut hidden = model
        .hidden_with(ids, prompt_positions, mask, &mut cache)
        .narrow(1, longest - 1, 1);
    let mut padding = prompt_padding;
    if group > 1 {
        hidden = repeat_rows(hidden, group);
        cache.repeat_rows(group);
        let rows: Vec<bool> = real
            .chunks(longest)
            .flat_map(|row| std::iter::repeat_n(row, group).flatten().copied())
            .collect();
        padding = padding_of(rows, b);
    }
    let mut positions = positions_from_padding(&padding, None);
    let mut rng = SplitMix64::new(cfg.seed);
    let mut out = vec![Vec::new(); b];
    let mut done = vec![false; b];
    let tied = model.tied_head_for_decoding();
    for _ in 0..max_new_tokens {
        let s = hidden.dims()[1];
        let last = hidden.narrow(1, s - 1, 1);
        let logits = model.logits_decoding(last, tied.as_ref());
        let v = logits.dims()[2];
        let rows = super::to_vec(logits.reshape([b, v]));
        // The draws of the rows still answering, in row order, as a walk of them would make
        // them; then the rows (a sort of the vocabulary each) are chosen on every core.
        let draws: Vec<Option<Option<f64>>> = done
            .iter()
            .map(|&d| (!d).then(|| (cfg.temperature > 0.0).then(|| rng.next_f64())))
            .collect();
        let chosen: Vec<Option<u32>> = rows
            .par_chunks(v)
            .zip(&draws)
            .map(|(row, draw)| draw.map(|u| choose_with(row, cfg, u)))
            .collect();
        let mut next = Vec::with_capacity(b);
        for (i, t) in chosen.into_iter().enumerate() {
            if let Some(t) = t {
                out[i].push(t);
                done[i] = cfg.stop_tokens.contains(&t) || stop.is_some_and(|f| f(&out[i]));
            }
            next.push(t.unwrap_or(0) as i64);
        }
        if done.iter().all(|d| *d) {
            break;
        }
        let t = cache.len();
        padding = Tensor::cat(
            vec![
                padding,
                Tensor::<2, Bool>::from_data(
                    burn::tensor::TensorData::new(vec![true; b], [b, 1]),
                    device,
                ),
            ],
            1,
        );
        let last = positions.dims()[1] - 1;
        positions = positions.narrow(1, last, 1).add_scalar(1);
        let step = Tensor::<2, Int>::from_data(burn::tensor::TensorData::new(next, [b, 1]), device);
        let mask = attention_mask(Some(padding.clone()), b, 1, t + 1, true, t, device);
        hidden = model.hidden_with(step, positions.clone(), mask, &mut cache);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_radix_order_is_the_comparison_sorts() {
        let mut rng = SplitMix64::new(3);
        // Ties, both zeros, infinities, NaNs of both signs, subnormals, a spread of magnitudes.
        let mut logits: Vec<f32> = (0..5000)
            .map(|_| (((rng.next_f64() - 0.5) * 40.0).round() / 4.0 * 1e3) as f32)
            .collect();
        logits.extend((0..5000).map(|_| ((rng.next_f64() - 0.5) * 1e-3) as f32));
        logits.extend([
            0.0,
            -0.0,
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e-40,
            -1e-40,
        ]);
        logits.extend([f32::NAN, -f32::NAN, f32::MAX, f32::MIN]);
        let bits = |v: &[(u32, f64)]| v.iter().map(|(i, x)| (*i, x.to_bits())).collect::<Vec<_>>();
        // A temperature that keeps every value apart, one under which the largest overflow to
        // one infinity (the comparison sort's turn), and one that flips the order (without the
        // NaNs: whether `x / -1` flips a NaN's sign is the compiler's choice).
        let numbers: Vec<f32> = logits.iter().copied().filter(|v| !v.is_nan()).collect();
        for (temperature, logits) in [(0.7, &logits), (1e-300, &logits), (-1.0, &numbers)] {
            let mut want: Vec<(u32, f64)> = logits
                .iter()
                .enumerate()
                .map(|(i, &v)| (i as u32, v as f64 / temperature))
                .collect();
            want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            assert_eq!(
                bits(&descending(logits, temperature)),
                bits(&want),
                "{temperature}"
            );
        }
        // One value, and all equal (every pass skipped).
        assert_eq!(descending(&[2.5], 1.0), vec![(0, 2.5)]);
        assert_eq!(
            descending(&[1.0; 3], 1.0),
            vec![(0, 1.0), (1, 1.0), (2, 1.0)]
        );
    }

    #[test]
    fn a_group_decoded_from_one_encoding_equals_its_prompt_repeated() {
        let device = Device::flex();
        device.seed(5);
        // Prompts of unequal lengths (left padding), sampled at temperature 1.
        let prompts = vec![vec![3, 9, 4, 1], vec![7, 2], vec![5, 5, 6]];
        let cfg = SamplingConfig {
            max_new_tokens: 6,
            temperature: 1.0,
            seed: 11,
            ..SamplingConfig::default()
        };
        for (family, model) in crate::kernels::tests::tiny_backbones(&device) {
            let Some(model) = model.language_model() else {
                continue;
            };
            let repeated: Vec<Vec<u32>> = prompts
                .iter()
                .flat_map(|p| std::iter::repeat_n(p.clone(), 4))
                .collect();
            let want = generate(model, &repeated, &cfg, &device);
            let got = generate_groups(model, &prompts, 4, &cfg, &device);
            assert_eq!(got, want, "{family}");
            assert_eq!(got.len(), 12);
            assert!(
                got.chunks(4).any(|g| g.iter().any(|a| a != &g[0])),
                "{family}: a group's answers are sampled, not copies"
            );
        }
    }
}
