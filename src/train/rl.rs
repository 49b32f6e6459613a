//! The arithmetic of RL fine-tuning, written to `../shared/reference/algorithms.md` sections 5
//! (PPO, TRL's OpenAI-style trainer) and 6 (GRPO): per-token KL estimates, KL-shaped rewards,
//! GAE, advantage whitening, clipped policy and value losses, group-normalised advantages and
//! the loss aggregations. Rollout bookkeeping is plain `f64` (no gradients flow through it);
//! the losses are tensors.

use burn::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// KL estimator between policy and reference, per token, from `logr = ref - logp`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum KlEstimator {
    /// `-logr` (unbiased, can be negative per token).
    #[default]
    K1,
    /// `(exp(logr) - 1) - logr` (non-negative, lower variance).
    K3,
}

pub fn kl(logp: &[f64], ref_logp: &[f64], estimator: KlEstimator) -> Vec<f64> {
    logp.iter()
        .zip(ref_logp)
        .map(|(lp, rl)| {
            let logr = rl - lp;
            match estimator {
                KlEstimator::K1 => -logr,
                KlEstimator::K3 => logr.exp() - 1.0 - logr,
            }
        })
        .collect()
}

/// PPO rewards of one response, `width` positions wide (the response tokens, then padding):
/// `-kl_coef * kl_t` on each response token, plus the reward model's `score` at `score_at`.
///
/// Where the score goes: TRL adds it one position past the EOS token (its "sequence length"
/// index), which an open upstream issue questions. hone puts it on the last token of the
/// response, the EOS itself when there is one: the token whose choice ended the response is
/// the one the score judges, and no reward lands on a position the policy never generated.
/// The reference test vector (width 4, EOS at index 2) places it at index 3, TRL's way; the
/// caller picks the index.
pub fn shaped_rewards(
    kl: &[f64],
    kl_coef: f64,
    width: usize,
    score: f64,
    score_at: usize,
) -> Vec<f64> {
    let mut r = vec![0.0; width];
    for (t, k) in kl.iter().enumerate().take(width) {
        r[t] = -kl_coef * k;
    }
    if score_at < width {
        r[score_at] += score;
    }
    r
}

/// Generalised advantage estimation over one sequence (`V_T = 0`); returns (advantages,
/// returns = advantages + values).
pub fn gae(rewards: &[f64], values: &[f64], gamma: f64, lambda: f64) -> (Vec<f64>, Vec<f64>) {
    let n = rewards.len();
    let mut adv = vec![0.0; n];
    let mut next_adv = 0.0;
    for t in (0..n).rev() {
        let next_value = if t + 1 < n { values[t + 1] } else { 0.0 };
        let delta = rewards[t] + gamma * next_value - values[t];
        next_adv = delta + gamma * lambda * next_adv;
        adv[t] = next_adv;
    }
    let returns = adv.iter().zip(values).map(|(a, v)| a + v).collect();
    (adv, returns)
}

/// Whitening over the valid entries: `(x - mean) * rsqrt(var + 1e-8)` with the unbiased
/// variance; invalid entries become 0.
pub fn whiten(x: &[f64], valid: &[bool]) -> Vec<f64> {
    let vals: Vec<f64> = x
        .iter()
        .zip(valid)
        .filter(|(_, v)| **v)
        .map(|(a, _)| *a)
        .collect();
    let n = vals.len() as f64;
    if n < 2.0 {
        return x
            .iter()
            .zip(valid)
            .map(|(a, v)| if *v { *a } else { 0.0 })
            .collect();
    }
    let mean = vals.iter().sum::<f64>() / n;
    let var = vals.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let scale = 1.0 / (var + 1e-8).sqrt();
    x.iter()
        .zip(valid)
        .map(|(a, v)| if *v { (a - mean) * scale } else { 0.0 })
        .collect()
}

/// PPO's clipped policy loss per token, `max(-A r, -A clip(r, 1-eps, 1+eps))` with
/// `r = exp(new - old)`, and whether the clip was active.
pub fn clipped_policy_loss(
    new_logp: Tensor<2>,
    old_logp: Tensor<2>,
    advantages: Tensor<2>,
    cliprange: f64,
) -> (Tensor<2>, Tensor<2, Bool>) {
    let ratio = (new_logp - old_logp).exp();
    let unclipped = advantages.clone().neg() * ratio.clone();
    let clipped = advantages.neg() * ratio.clamp(1.0 - cliprange, 1.0 + cliprange);
    let clip_active = clipped.clone().greater(unclipped.clone());
    (unclipped.max_pair(clipped), clip_active)
}

/// PPO's clipped value loss per token, `0.5 max((V - R)^2, (clip(V, V_old +- c) - R)^2)`, and
/// whether the clipped term was the larger.
pub fn clipped_value_loss(
    values: Tensor<2>,
    old_values: Tensor<2>,
    returns: Tensor<2>,
    cliprange_value: f64,
) -> (Tensor<2>, Tensor<2, Bool>) {
    let clipped_v =
        old_values.clone() + (values.clone() - old_values).clamp(-cliprange_value, cliprange_value);
    let a = (values - returns.clone()).powi_scalar(2);
    let b = (clipped_v - returns).powi_scalar(2);
    let clip_active = b.clone().greater(a.clone());
    (a.max_pair(b).mul_scalar(0.5), clip_active)
}

/// `sum(x * mask) / sum(mask)`.
pub fn masked_mean(x: Tensor<2>, mask: Tensor<2>) -> Tensor<1> {
    (x * mask.clone()).sum().div(mask.sum().clamp_min(1.0))
}

/// GRPO: each completion's advantage within its group, `(r - mean) / (std + 1e-4)` with the
/// unbiased standard deviation.
pub fn group_advantages(rewards: &[f64]) -> Vec<f64> {
    let n = rewards.len() as f64;
    let mean = rewards.iter().sum::<f64>() / n;
    let std = if n > 1.0 {
        (rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    rewards.iter().map(|r| (r - mean) / (std + 1e-4)).collect()
}

/// How GRPO reduces per-token losses to one number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GrpoAggregation {
    /// Mean over sequences of each sequence's token mean.
    #[default]
    Grpo,
    /// Sum over all valid tokens / their number (also DAPO's).
    Bnpo,
    /// Sum / (sequences x max completion length).
    DrGrpo,
}

/// The aggregate of per-token losses `[b, t]` under `mask` (1 at valid tokens).
pub fn aggregate(
    loss: Tensor<2>,
    mask: Tensor<2>,
    how: GrpoAggregation,
    max_completion_length: usize,
) -> Tensor<1> {
    let [b, _] = loss.dims();
    let masked = loss * mask.clone();
    match how {
        GrpoAggregation::Grpo => (masked.sum_dim(1) / mask.sum_dim(1).clamp_min(1.0))
            .mean()
            .reshape([1]),
        GrpoAggregation::Bnpo => masked.sum().div(mask.sum().clamp_min(1.0)),
        GrpoAggregation::DrGrpo => masked.sum().div_scalar((b * max_completion_length) as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::to_vec;

    fn close(got: &[f64], want: &[f64], tol: f64) -> bool {
        got.len() == want.len() && got.iter().zip(want).all(|(g, w)| (g - w).abs() < tol)
    }
    fn t2(rows: &[&[f64]]) -> Tensor<2> {
        let (b, w) = (rows.len(), rows[0].len());
        let flat: Vec<f32> = rows
            .iter()
            .flat_map(|r| r.iter().map(|&x| x as f32))
            .collect();
        Tensor::from_data(burn::tensor::TensorData::new(flat, [b, w]), &Device::flex())
    }

    #[test]
    fn gae_and_whitening_match_the_reference() {
        let (a, ret) = gae(&[0.0, 0.0, 1.0], &[0.5, 0.6, 0.7], 1.0, 0.95);
        assert!(close(&a, &[0.46575, 0.385, 0.3], 1e-9), "{a:?}");
        assert!(close(&ret, &[0.96575, 0.985, 1.0], 1e-9));
        let w = whiten(&a, &[true; 3]);
        assert!(
            close(&w, &[0.9913436473, 0.0170921319, -1.0084357792], 1e-8),
            "{w:?}"
        );
        let (a99, _) = gae(&[0.0, 0.0, 1.0], &[0.5, 0.6, 0.7], 0.99, 0.95);
        assert!(close(&a99, &[0.446828575, 0.37515, 0.3], 1e-9));
    }

    #[test]
    fn a_rollout_matches_the_reference() {
        // Width 4, EOS at index 2, score 1 placed at index 3 (TRL's placement, as the vector).
        let k1 = kl(&[-1.0, -0.5, -2.0], &[-1.2, -0.4, -2.1], KlEstimator::K1);
        assert!(close(&k1, &[0.2, -0.1, 0.1], 1e-12), "{k1:?}");
        let r = shaped_rewards(&k1, 0.05, 4, 1.0, 3);
        assert!(close(&r, &[-0.01, 0.005, -0.005, 1.0], 1e-12), "{r:?}");
        let (a, ret) = gae(&r, &[0.5, 0.6, 0.7, 0.8], 1.0, 0.95);
        assert!(close(&a, &[0.4469625, 0.37575, 0.285, 0.2], 1e-9), "{a:?}");
        assert!(close(&ret, &[0.9469625, 0.97575, 0.985, 1.0], 1e-9));
        let w = whiten(&a, &[true, true, true, false]);
        assert!(
            close(&w, &[0.95747004, 0.08022546, -1.0376955, 0.0], 1e-7),
            "{w:?}"
        );
        let rlhf: f64 = r.iter().sum();
        assert!((rlhf - 0.99).abs() < 1e-12);
        let k3 = kl(&[-1.0, -0.5, -2.0], &[-1.2, -0.4, -2.1], KlEstimator::K3);
        assert!(
            close(&k3, &[0.01873075, 0.00517092, 0.00483742], 1e-8),
            "{k3:?}"
        );
    }

    #[test]
    fn clipped_losses_match_the_reference() {
        let mask = t2(&[&[1.0, 1.0, 1.0]]);
        let (pg, clipped) = clipped_policy_loss(
            t2(&[&[-0.9, -0.7, -1.5]]),
            t2(&[&[-1.0, -0.5, -2.0]]),
            t2(&[&[0.5, -1.0, 2.0]]),
            0.2,
        );
        let pg = to_vec(masked_mean(pg, mask.clone()))[0] as f64;
        assert!((pg - -0.7112849020).abs() < 1e-6, "{pg}");
        let clipfrac = to_vec(masked_mean(clipped.float(), mask.clone()))[0] as f64;
        assert!((clipfrac - 1.0 / 3.0).abs() < 1e-6);
        // Returns [0.96575, 0.985, 1.0] (the GAE vector's) with old values [0.5, 0.6, 0.7].
        let (vf, vclipped) = clipped_value_loss(
            t2(&[&[0.9, 0.5, 1.2]]),
            t2(&[&[0.5, 0.6, 0.7]]),
            t2(&[&[0.96575, 0.985, 1.0]]),
            0.2,
        );
        let vf = to_vec(masked_mean(vf, mask.clone()))[0] as f64;
        assert!((vf - 0.0576413437).abs() < 1e-6, "{vf}");
        let vclipfrac = to_vec(masked_mean(vclipped.float(), mask))[0] as f64;
        assert!((vclipfrac - 1.0 / 3.0).abs() < 1e-6);
        assert!((pg + 0.1 * vf - -0.7055207676).abs() < 1e-6);
    }

    #[test]
    fn grpo_advantages_and_aggregations_match_the_reference() {
        let a = group_advantages(&[1.0, 0.0, 0.0, 1.0]);
        assert!(close(
            &a,
            &[0.8658754298, -0.8658754298, -0.8658754298, 0.8658754298],
            1e-9
        ));
        let a = group_advantages(&[0.2, 0.9, 0.4]);
        assert!(
            close(&a, &[-0.8318195891, 1.1090927855, -0.2772731964], 1e-9),
            "{a:?}"
        );
        let k3 = kl(&[-1.0], &[-1.2], KlEstimator::K3);
        assert!((k3[0] - 0.0187307531).abs() < 1e-9);
        // Per-token losses [1, 2] and [0.5] x 4.
        let loss = t2(&[&[1.0, 2.0, 0.0, 0.0], &[0.5, 0.5, 0.5, 0.5]]);
        let mask = t2(&[&[1.0, 1.0, 0.0, 0.0], &[1.0, 1.0, 1.0, 1.0]]);
        let agg = |how| to_vec(aggregate(loss.clone(), mask.clone(), how, 4))[0] as f64;
        assert!((agg(GrpoAggregation::Grpo) - 1.0).abs() < 1e-6);
        assert!((agg(GrpoAggregation::Bnpo) - 0.8333333).abs() < 1e-6);
        assert!((agg(GrpoAggregation::DrGrpo) - 0.625).abs() < 1e-6);
    }
}
