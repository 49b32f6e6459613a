//! Losses over per-token negative log-likelihoods with 0/1 masks (burn has no ignore-index).

use burn::prelude::*;

pub use crate::kernels::logits_nll as token_nll;

/// Causal LM loss: position t predicts token t+1; mean over positions whose *target* has
/// weight 1 in `target_mask` `[b, s]` (0 on prompt and padding).
pub fn causal_lm_loss(logits: Tensor<3>, ids: Tensor<2, Int>, target_mask: Tensor<2>) -> Tensor<1> {
    let s = target_mask.dims()[1];
    let count = target_mask.clone().narrow(1, 1, s - 1).sum().clamp_min(1.0);
    causal_lm_loss_sum(logits, ids, target_mask).div(count)
}

/// The summed negative log-likelihood of the targets (for accumulation over micro-batches,
/// divided by the valid targets of the whole accumulated batch).
pub fn causal_lm_loss_sum(
    logits: Tensor<3>,
    ids: Tensor<2, Int>,
    target_mask: Tensor<2>,
) -> Tensor<1> {
    let [b, s, v] = logits.dims();
    let pred = logits.narrow(1, 0, s - 1).reshape([b * (s - 1), v]);
    let target = ids.narrow(1, 1, s - 1).reshape([b * (s - 1)]);
    masked_target_sum(token_nll(pred, target).reshape([b, s - 1]), target_mask)
}

/// `sum nll * mask` over the targets: `nll` `[b, s-1]` holds position t's loss for token t+1,
/// `target_mask` `[b, s]` weighs tokens (as [`causal_lm_loss_sum`] takes them).
pub fn masked_target_sum(nll: Tensor<2>, target_mask: Tensor<2>) -> Tensor<1> {
    let s = target_mask.dims()[1];
    (nll * target_mask.narrow(1, 1, s - 1)).sum()
}

/// Next-token accuracy: (correct predictions, targets) over the positions whose target has
/// weight 1 in `target_mask`, as in [`causal_lm_loss_sum`]. `predicted` `[b, s-1]` holds each
/// position's argmax (see `Backbone::next_token_argmax`).
pub fn causal_token_hits(
    predicted: Tensor<2, Int>,
    ids: Tensor<2, Int>,
    target_mask: Tensor<2>,
) -> (f64, f64) {
    let [b, s] = ids.dims();
    let pred = predicted.reshape([b * (s - 1)]);
    let target = ids.narrow(1, 1, s - 1).reshape([b * (s - 1)]);
    let w = target_mask.narrow(1, 1, s - 1).reshape([b * (s - 1)]);
    let hits = pred
        .equal(target)
        .float()
        .mul(w.clone())
        .sum()
        .into_scalar::<f32>() as f64;
    (hits, w.sum().into_scalar::<f32>() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::to_vec;

    /// Reference values are given to 10 digits; compare in f64.
    fn close(got: f32, want: f64) -> bool {
        (got as f64 - want).abs() < 1e-6
    }

    /// algorithms.md section 1: logits [[2, 0.5, -1], [0.1, 0.2, 0.3]], labels [0, 2] ->
    /// per-token [0.2413112967, 1.0019428482], mean 0.6216270724.
    #[test]
    fn token_nll_matches_reference() {
        let d = Device::flex();
        let logits = Tensor::<2>::from_data([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]], &d);
        let labels = Tensor::<1, Int>::from_data([0, 2], &d);
        let nll = to_vec(token_nll(logits, labels));
        assert!(
            close(nll[0], 0.2413112967) && close(nll[1], 1.0019428482),
            "{nll:?}"
        );
        assert!(close((nll[0] + nll[1]) / 2.0, 0.6216270724));
    }

    #[test]
    fn causal_loss_shifts_and_masks() {
        let d = Device::flex();
        // One sequence [0, 0, 2]: positions 0 and 1 predict tokens 0 and 2 with the test-vector
        // logits; the last position predicts nothing.
        let logits =
            Tensor::<3>::from_data([[[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [9.0, 9.0, 9.0]]], &d);
        let ids = Tensor::<2, Int>::from_data([[0, 0, 2]], &d);
        let all = to_vec(causal_lm_loss(
            logits.clone(),
            ids.clone(),
            Tensor::ones([1, 3], &d),
        ))[0];
        assert!(close(all, 0.6216270724), "{all}");
        // Masking the first target leaves only the second.
        let masked = to_vec(causal_lm_loss(
            logits,
            ids,
            Tensor::from_data([[1.0, 0.0, 1.0]], &d),
        ))[0];
        assert!(close(masked, 1.0019428482), "{masked}");
    }

    #[test]
    fn token_accuracy_counts_masked_argmax_hits() {
        let d = Device::flex();
        // Position 0 predicts token 0 (argmax 0: hit), position 1 predicts token 2 (argmax 2:
        // hit), position 2 predicts token 1 (argmax 0: miss); the last position has no target.
        let logits = Tensor::<3>::from_data(
            [[
                [2.0, 0.5, -1.0],
                [0.1, 0.2, 0.3],
                [3.0, 1.0, 0.0],
                [0.0, 0.0, 9.0],
            ]],
            &d,
        );
        let ids = Tensor::<2, Int>::from_data([[5, 0, 2, 1]], &d);
        let predicted = logits.narrow(1, 0, 3).argmax(2).reshape([1, 3]);
        let all = causal_token_hits(predicted.clone(), ids.clone(), Tensor::ones([1, 4], &d));
        assert_eq!(all, (2.0, 3.0));
        let masked = causal_token_hits(
            predicted,
            ids,
            Tensor::from_data([[1.0, 1.0, 0.0, 1.0]], &d),
        );
        assert_eq!(masked, (1.0, 2.0));
    }
}
