//! Losses of the preference stages, written to `../shared/reference/algorithms.md` sections
//! 3-4 (TRL's definitions): the Bradley-Terry reward-model loss and the DPO family. Every loss
//! is per pair (or per example), so the trainer sums it and divides by the pairs of the whole
//! accumulated batch.

use burn::prelude::*;
use burn::tensor::activation::{log_sigmoid, relu};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Bradley-Terry: `-log sigmoid(r_c - r_r - margin) + center * (r_c + r_r)^2`, per pair.
pub fn bradley_terry(
    chosen: Tensor<1>,
    rejected: Tensor<1>,
    margin: Option<Tensor<1>>,
    center_coefficient: f64,
) -> Tensor<1> {
    let mut diff = chosen.clone() - rejected.clone();
    if let Some(m) = margin {
        diff = diff - m;
    }
    let mut loss = log_sigmoid(diff).neg();
    if center_coefficient > 0.0 {
        loss = loss
            + (chosen + rejected)
                .powi_scalar(2)
                .mul_scalar(center_coefficient);
    }
    loss
}

/// The DPO variants (`loss_type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DpoLoss {
    /// `-log sigmoid(beta * Delta)` (the DPO paper).
    #[default]
    Sigmoid,
    /// `relu(1 - beta * Delta)` (SLiC).
    Hinge,
    /// `(rho_c/len_c - rho_r/len_r - 1/(2 beta))^2` (IPO, length-normalised).
    Ipo,
    /// Robust DPO: unbiased under a `label_smoothing` share of flipped labels.
    Robust,
    /// Conservative DPO: `label_smoothing` of the pairs treated as flipped.
    Conservative,
    /// SimPO: reference-free, length-averaged log-probs with a target margin `gamma`.
    Simpo,
    /// ORPO: NLL on the chosen answer plus a log-odds-ratio term; no reference model.
    Orpo,
}

impl DpoLoss {
    /// Whether the loss compares with a reference model.
    pub fn uses_reference(self) -> bool {
        !matches!(self, DpoLoss::Simpo | DpoLoss::Orpo)
    }
}

/// Summed log-probabilities of each pair's chosen and rejected completions, and their
/// lengths in tokens.
#[derive(Debug, Clone)]
pub struct PairLogps {
    pub chosen: Tensor<1>,
    pub rejected: Tensor<1>,
    pub len_chosen: Tensor<1>,
    pub len_rejected: Tensor<1>,
}

/// Settings of the DPO family; defaults as TRL's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpoParams {
    pub loss: DpoLoss,
    pub beta: f64,
    pub label_smoothing: f64,
    pub simpo_gamma: f64,
    /// Reference-free DPO: the reference log-probs count as zero.
    pub reference_free: bool,
}

impl Default for DpoParams {
    fn default() -> Self {
        DpoParams {
            loss: DpoLoss::Sigmoid,
            beta: 0.1,
            label_smoothing: 0.0,
            simpo_gamma: 0.5,
            reference_free: false,
        }
    }
}

/// Per-pair loss of `p.loss`. `reference` is `None` for the reference-free losses (and with
/// `reference_free`).
pub fn dpo_loss(policy: &PairLogps, reference: Option<&PairLogps>, p: &DpoParams) -> Tensor<1> {
    let beta = p.beta;
    let eps = p.label_smoothing;
    let (rho_c, rho_r) = match reference.filter(|_| !p.reference_free) {
        Some(r) => (
            policy.chosen.clone() - r.chosen.clone(),
            policy.rejected.clone() - r.rejected.clone(),
        ),
        None => (policy.chosen.clone(), policy.rejected.clone()),
    };
    let delta = rho_c.clone() - rho_r.clone();
    match p.loss {
        DpoLoss::Sigmoid => log_sigmoid(delta.mul_scalar(beta)).neg(),
        DpoLoss::Hinge => relu(delta.mul_scalar(-beta).add_scalar(1.0)),
        DpoLoss::Ipo => (rho_c / policy.len_chosen.clone() - rho_r / policy.len_rejected.clone())
            .sub_scalar(1.0 / (2.0 * beta))
            .powi_scalar(2),
        DpoLoss::Conservative => {
            log_sigmoid(delta.clone().mul_scalar(beta)).mul_scalar(-(1.0 - eps))
                - log_sigmoid(delta.mul_scalar(-beta)).mul_scalar(eps)
        }
        DpoLoss::Robust => (log_sigmoid(delta.clone().mul_scalar(beta)).mul_scalar(-(1.0 - eps))
            + log_sigmoid(delta.mul_scalar(-beta)).mul_scalar(eps))
        .div_scalar(1.0 - 2.0 * eps),
        DpoLoss::Simpo => {
            let avg_c = policy.chosen.clone() / policy.len_chosen.clone();
            let avg_r = policy.rejected.clone() / policy.len_rejected.clone();
            log_sigmoid((avg_c - avg_r).mul_scalar(beta).sub_scalar(p.simpo_gamma)).neg()
        }
        DpoLoss::Orpo => {
            let l_c = policy.chosen.clone() / policy.len_chosen.clone();
            let l_r = policy.rejected.clone() / policy.len_rejected.clone();
            let log_odds = (l_c.clone() - l_r.clone()) - (log1mexp(l_c.clone()) - log1mexp(l_r));
            l_c.neg() - log_sigmoid(log_odds).mul_scalar(beta)
        }
    }
}

/// `log(1 - exp(x))` for `x < 0`.
fn log1mexp(x: Tensor<1>) -> Tensor<1> {
    x.exp().neg().log1p()
}

/// KTO (unpaired): `1 - sigmoid(beta (rho - z))` for desirable completions and
/// `1 - sigmoid(beta (z - rho))` for undesirable ones; `z` is the (detached, clamped at 0)
/// KL estimate of the batch.
pub fn kto_loss(rho: Tensor<1>, desirable: Tensor<1, Bool>, z: f64, beta: f64) -> Tensor<1> {
    let d = rho.clone().sub_scalar(z).mul_scalar(beta);
    let good = burn::tensor::activation::sigmoid(d.clone())
        .neg()
        .add_scalar(1.0);
    let bad = burn::tensor::activation::sigmoid(d.neg())
        .neg()
        .add_scalar(1.0);
    bad.mask_where(desirable, good)
}

/// The metrics TRL logs for DPO, as means over the pairs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct DpoMetrics {
    pub rewards_chosen: f64,
    pub rewards_rejected: f64,
    pub rewards_accuracies: f64,
    pub rewards_margins: f64,
    pub logps_chosen: f64,
    pub logps_rejected: f64,
}

/// `rewards/chosen = mean(beta rho_c)`, `rewards/rejected`, `rewards/accuracies =
/// mean[rho_c > rho_r]`, `rewards/margins`, `logps/*`, from per-pair values.
pub fn dpo_metrics(policy: (&[f64], &[f64]), reference: (&[f64], &[f64]), beta: f64) -> DpoMetrics {
    let n = policy.0.len().max(1) as f64;
    let mean = |v: &mut dyn Iterator<Item = f64>| v.sum::<f64>() / n;
    let rho = |i: usize| (policy.0[i] - reference.0[i], policy.1[i] - reference.1[i]);
    let idx = 0..policy.0.len();
    DpoMetrics {
        rewards_chosen: mean(&mut idx.clone().map(|i| beta * rho(i).0)),
        rewards_rejected: mean(&mut idx.clone().map(|i| beta * rho(i).1)),
        rewards_accuracies: mean(
            &mut idx
                .clone()
                .map(|i| f64::from(u8::from(rho(i).0 > rho(i).1))),
        ),
        rewards_margins: mean(&mut idx.clone().map(|i| beta * (rho(i).0 - rho(i).1))),
        logps_chosen: mean(&mut policy.0.iter().copied()),
        logps_rejected: mean(&mut policy.1.iter().copied()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::to_vec;

    fn t(v: &[f64]) -> Tensor<1> {
        Tensor::from_data(
            burn::tensor::TensorData::new(
                v.iter().map(|&x| x as f32).collect::<Vec<_>>(),
                [v.len()],
            ),
            &Device::flex(),
        )
    }
    fn close(got: &[f32], want: &[f64]) -> bool {
        got.len() == want.len()
            && got
                .iter()
                .zip(want)
                .all(|(g, w)| (*g as f64 - w).abs() < 2e-6)
    }

    /// algorithms.md section 3.
    #[test]
    fn bradley_terry_matches_the_reference() {
        let one = |m: Option<f64>, c: f64| {
            to_vec(bradley_terry(t(&[1.5]), t(&[0.5]), m.map(|m| t(&[m])), c))[0] as f64
        };
        assert!((one(None, 0.0) - 0.3132616875).abs() < 1e-6);
        assert!((one(Some(0.5), 0.0) - 0.4740769842).abs() < 1e-6);
        assert!((one(None, 0.01) - (0.3132616875 + 0.04)).abs() < 1e-6);
        let batch = to_vec(bradley_terry(t(&[1.5, -0.2]), t(&[0.5, 0.3]), None, 0.0));
        let mean = (batch[0] + batch[1]) as f64 / 2.0;
        assert!((mean - 0.6436693358).abs() < 1e-6, "{mean}");
        let centred = to_vec(bradley_terry(t(&[1.5, -0.2]), t(&[0.5, 0.3]), None, 0.01));
        assert!(((centred[0] + centred[1]) as f64 / 2.0 - 0.6637193358).abs() < 1e-6);
    }

    fn pair(c: f64, r: f64, lc: f64, lr: f64) -> PairLogps {
        PairLogps {
            chosen: t(&[c]),
            rejected: t(&[r]),
            len_chosen: t(&[lc]),
            len_rejected: t(&[lr]),
        }
    }

    /// algorithms.md section 4: policy c=-10, r=-12; reference c=-11, r=-11.5; beta 0.1.
    #[test]
    fn dpo_family_matches_the_reference() {
        let policy = pair(-10.0, -12.0, 4.0, 5.0);
        let reference = pair(-11.0, -11.5, 4.0, 5.0);
        let loss = |kind: DpoLoss, eps: f64| {
            let p = DpoParams {
                loss: kind,
                label_smoothing: eps,
                ..Default::default()
            };
            to_vec(dpo_loss(&policy, Some(&reference), &p))[0] as f64
        };
        for (kind, eps, want) in [
            (DpoLoss::Sigmoid, 0.0, 0.6209570478),
            (DpoLoss::Hinge, 0.0, 0.85),
            (DpoLoss::Conservative, 0.1, 0.6359570478),
            (DpoLoss::Robust, 0.1, 0.6022070478),
            (DpoLoss::Ipo, 0.0, 21.6225),
        ] {
            let got = loss(kind, eps);
            assert!(
                (got - want).abs() < 2e-5 * want.max(1.0),
                "{kind:?}: {got} vs {want}"
            );
        }
        let free = DpoParams {
            reference_free: true,
            ..Default::default()
        };
        assert!(
            (to_vec(dpo_loss(&policy, Some(&reference), &free))[0] as f64 - 0.5981388694).abs()
                < 1e-6
        );

        // Two pairs: losses [0.6209570478, 0.6782596763], accuracy 1.0; metrics of pair one.
        let policy2 = PairLogps {
            chosen: t(&[-10.0, -8.0]),
            rejected: t(&[-12.0, -7.0]),
            len_chosen: t(&[1.0, 1.0]),
            len_rejected: t(&[1.0, 1.0]),
        };
        let reference2 = PairLogps {
            chosen: t(&[-11.0, -8.5]),
            rejected: t(&[-11.5, -7.2]),
            ..policy2.clone()
        };
        let losses = to_vec(dpo_loss(&policy2, Some(&reference2), &DpoParams::default()));
        assert!(close(&losses, &[0.6209570478, 0.6782596763]), "{losses:?}");
        let m = dpo_metrics(
            (&[-10.0, -8.0], &[-12.0, -7.0]),
            (&[-11.0, -8.5], &[-11.5, -7.2]),
            0.1,
        );
        assert_eq!(m.rewards_accuracies, 1.0);
        let one = dpo_metrics((&[-10.0], &[-12.0]), (&[-11.0], &[-11.5]), 0.1);
        assert!((one.rewards_chosen - 0.1).abs() < 1e-12);
        assert!((one.rewards_rejected + 0.05).abs() < 1e-12);
        assert!((one.rewards_margins - 0.15).abs() < 1e-12);
    }

    #[test]
    fn simpo_orpo_and_kto_match_the_reference() {
        // SimPO with average log-probs -2.5 (chosen) and -2.4 (rejected).
        let avg = pair(-2.5, -2.4, 1.0, 1.0);
        let simpo = |beta: f64| {
            let p = DpoParams {
                loss: DpoLoss::Simpo,
                beta,
                ..Default::default()
            };
            to_vec(dpo_loss(&avg, None, &p))[0] as f64
        };
        assert!((simpo(0.1) - 0.9803133180).abs() < 1e-6);
        assert!((simpo(2.0) - 1.1031860489).abs() < 1e-6);
        // ORPO: the odds-ratio term for these averages is 0.0749368565 (beta 0.1); the loss
        // adds the chosen answer's NLL (2.5).
        let p = DpoParams {
            loss: DpoLoss::Orpo,
            ..Default::default()
        };
        let orpo = to_vec(dpo_loss(&avg, None, &p))[0] as f64;
        assert!((orpo - (2.5 + 0.0749368565)).abs() < 2e-6, "{orpo}");
        // KTO with z = 0.2 and rho 1 (desirable) / -0.5 (undesirable).
        let desirable = Tensor::<1, Bool>::from_data([true, false], &Device::flex());
        let kto = to_vec(kto_loss(t(&[1.0, -0.5]), desirable, 0.2, 0.1));
        assert!(close(&kto, &[0.4800106598, 0.4825071423]), "{kto:?}");
    }
}
