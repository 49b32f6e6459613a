//! The arithmetic of RL fine-tuning, written to `../shared/reference/algorithms.md` sections 5
//! (PPO, TRL's OpenAI-style trainer) and 6 (GRPO): per-token KL estimates, KL-shaped rewards,
//! GAE, advantage whitening, clipped policy and value losses, and section 9's GRPO family:
//! group-baselined (or leave-one-out) advantages, the clip-higher and sequence-level ratios,
//! and the loss aggregations. Rollout bookkeeping is plain `f64` (no gradients flow through it);
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
    clipped_ratio_loss(
        (new_logp - old_logp).exp(),
        advantages,
        cliprange,
        cliprange,
    )
}

/// `max(-A r, -A clip(r, 1-low, 1+high))` per token, and whether the clipped term was the
/// larger: PPO's objective with DAPO's asymmetric range ("clip-higher").
pub fn clipped_ratio_loss(
    ratio: Tensor<2>,
    advantages: Tensor<2>,
    low: f64,
    high: f64,
) -> (Tensor<2>, Tensor<2, Bool>) {
    let unclipped = advantages.clone().neg() * ratio.clone();
    let clipped = advantages.neg() * ratio.clamp(1.0 - low, 1.0 + high);
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
    let (mean, std) = mean_std(rewards);
    rewards.iter().map(|r| (r - mean) / (std + 1e-4)).collect()
}

/// The mean and the unbiased standard deviation (0 for a single value).
fn mean_std(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let std = if n > 1.0 {
        (x.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (mean, std)
}

/// What a completion's reward is compared with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Baseline {
    /// The mean reward of its group (GRPO), scaled as `scale_rewards` says.
    #[default]
    Group,
    /// The mean reward of the other answers of its group (RLOO's leave-one-out baseline, as
    /// TRL's `RLOOTrainer` with `normalize_advantages: false`); not scaled.
    Rloo,
}

/// What a group-baselined advantage is divided by (TRL's `scale_rewards`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScaleRewards {
    /// The standard deviation of the group's rewards (GRPO).
    #[default]
    Group,
    /// The standard deviation of all the step's rewards (PPO Lite).
    Batch,
    /// Nothing: the reward minus the group's mean (Dr. GRPO; no difficulty bias).
    None,
}

/// Every completion's advantage; `rewards` hold groups of `group` answers to one prompt each,
/// one after the other. TRL's formulas: `(r - mean_group) / (std + 1e-4)` with the group's or
/// the batch's unbiased std, or no division; RLOO: `r - mean of the group's other rewards`.
pub fn advantages(
    rewards: &[f64],
    group: usize,
    baseline: Baseline,
    scale: ScaleRewards,
) -> Vec<f64> {
    let group = group.max(1);
    match (baseline, scale) {
        (Baseline::Group, ScaleRewards::Group) => {
            rewards.chunks(group).flat_map(group_advantages).collect()
        }
        (Baseline::Group, scale) => {
            let (_, batch_std) = mean_std(rewards);
            rewards
                .chunks(group)
                .flat_map(|g| {
                    let (mean, _) = mean_std(g);
                    g.iter().map(move |r| match scale {
                        ScaleRewards::Batch => (r - mean) / (batch_std + 1e-4),
                        _ => r - mean,
                    })
                })
                .collect()
        }
        (Baseline::Rloo, _) => rewards
            .chunks(group)
            .flat_map(|g| {
                let (total, k) = (g.iter().sum::<f64>(), g.len() as f64);
                g.iter().map(move |r| {
                    if k > 1.0 {
                        r - (total - r) / (k - 1.0)
                    } else {
                        0.0
                    }
                })
            })
            .collect(),
    }
}

/// How the GRPO family reduces per-token losses to one number (TRL's `loss_type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LossType {
    /// Mean over sequences of each sequence's token mean (length-biased: short answers with
    /// a positive advantage weigh more).
    #[default]
    Grpo,
    /// Sum over the micro-batch's valid tokens / their number.
    Bnpo,
    /// Sum / (sequences x `max_new_tokens`) (Dr. GRPO).
    DrGrpo,
    /// Sum over the valid tokens / their number in the whole optimizer step, all micro-batches
    /// and devices together (DAPO; TRL's default since it added the family).
    Dapo,
}

/// Where the probability ratio is taken (TRL's `importance_sampling_level`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImportanceSampling {
    /// One ratio per token (GRPO, DAPO).
    #[default]
    Token,
    /// One ratio per answer, `exp(mean over its tokens of (logp - old logp))` (GSPO).
    Sequence,
}

/// The GRPO family's loss, written to TRL's `GRPOTrainer._compute_loss` (with one process and
/// no gradient accumulation: the caller weighs micro-batches).
#[derive(Debug, Clone, Copy)]
pub struct PolicyLoss {
    pub loss_type: LossType,
    pub epsilon_low: f64,
    pub epsilon_high: f64,
    pub importance_sampling: ImportanceSampling,
    /// Weight of the k3 KL estimate to the reference policy, added per token.
    pub beta: f64,
    /// `max_new_tokens`: Dr. GRPO's constant.
    pub max_completion_length: usize,
}

/// A policy loss and what a step logs of it.
pub struct PolicyTerms {
    pub loss: Tensor<1>,
    /// The k3 KL estimate per token (when `beta > 0`), detached.
    pub kl: Option<Tensor<2>>,
    /// Tokens whose ratio fell under `1 - epsilon_low` with a negative advantage, and over
    /// `1 + epsilon_high` with a positive one (TRL's `clip_ratio/low` and `/high`).
    pub clipped_low: Tensor<2, Bool>,
    pub clipped_high: Tensor<2, Bool>,
}

impl PolicyLoss {
    /// The loss over `[b, t]` log-probabilities of the policy (`logps`), of the policy that
    /// sampled the answers (`old`: the same values, detached, on a rollout's first pass), of the
    /// reference (with `beta`), per-answer advantages broadcast to `[b, t]`, and the mask of
    /// the answer tokens. `step_tokens` is dapo's normaliser: the valid tokens of the whole step.
    pub fn loss(
        &self,
        logps: Tensor<2>,
        old: Tensor<2>,
        reference: Option<Tensor<2>>,
        advantages: Tensor<2>,
        mask: Tensor<2>,
        step_tokens: f64,
    ) -> PolicyTerms {
        let [b, t] = logps.dims();
        let log_ratio = logps.clone() - old;
        let ratio = match self.importance_sampling {
            ImportanceSampling::Token => log_ratio.exp(),
            ImportanceSampling::Sequence => ((log_ratio * mask.clone()).sum_dim(1)
                / mask.clone().sum_dim(1).clamp_min(1.0))
            .exp()
            .expand([b, t]),
        };
        let clipped_low = ratio
            .clone()
            .lower_elem(1.0 - self.epsilon_low)
            .bool_and(advantages.clone().lower_elem(0.0));
        let clipped_high = ratio
            .clone()
            .greater_elem(1.0 + self.epsilon_high)
            .bool_and(advantages.clone().greater_elem(0.0));
        let (mut loss, _) =
            clipped_ratio_loss(ratio, advantages, self.epsilon_low, self.epsilon_high);
        let mut kl = None;
        if let Some(reference) = reference.filter(|_| self.beta > 0.0) {
            // k3 = exp(ref - lp) - (ref - lp) - 1, per token.
            let logr = reference - logps;
            let k3 = (logr.clone().exp() - logr).sub_scalar(1.0);
            kl = Some(k3.clone().detach());
            loss = loss + k3.mul_scalar(self.beta);
        }
        PolicyTerms {
            loss: aggregate(
                loss,
                mask,
                self.loss_type,
                self.max_completion_length,
                step_tokens,
            ),
            kl,
            clipped_low,
            clipped_high,
        }
    }
}

/// The aggregate of per-token losses `[b, t]` under `mask` (1 at valid tokens); `step_tokens`
/// is dapo's normaliser.
pub fn aggregate(
    loss: Tensor<2>,
    mask: Tensor<2>,
    how: LossType,
    max_completion_length: usize,
    step_tokens: f64,
) -> Tensor<1> {
    let [b, _] = loss.dims();
    let masked = loss * mask.clone();
    match how {
        LossType::Grpo => (masked.sum_dim(1) / mask.sum_dim(1).clamp_min(1.0))
            .mean()
            .reshape([1]),
        LossType::Bnpo => masked.sum().div(mask.sum().clamp_min(1.0)),
        LossType::DrGrpo => masked.sum().div_scalar((b * max_completion_length) as f64),
        LossType::Dapo => masked.sum().div_scalar(step_tokens.max(1.0)),
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
        let agg = |how| to_vec(aggregate(loss.clone(), mask.clone(), how, 4, 6.0))[0] as f64;
        assert!((agg(LossType::Grpo) - 1.0).abs() < 1e-6);
        assert!((agg(LossType::Bnpo) - 0.8333333).abs() < 1e-6);
        assert!((agg(LossType::DrGrpo) - 0.625).abs() < 1e-6);
        // dapo over a step of 6 valid tokens is bnpo; over 10 (another micro-batch's 4), less.
        assert!((agg(LossType::Dapo) - 0.8333333).abs() < 1e-6);
        let dapo = to_vec(aggregate(loss, mask, LossType::Dapo, 4, 10.0))[0] as f64;
        assert!((dapo - 0.5).abs() < 1e-6);
    }
}
