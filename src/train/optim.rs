//! Optimizers with PyTorch's defaults stated explicitly: burn's AdamW defaults differ
//! (epsilon 1e-5 vs 1e-8, weight decay 1e-4 vs 0.01), and a recipe that says "AdamW" should
//! mean what it means in PyTorch and TRL.

use burn::optim::AdamWConfig;

/// `torch.optim.AdamW` defaults: betas (0.9, 0.999), eps 1e-8, weight decay 0.01.
pub fn adamw() -> AdamWConfig {
    AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .with_weight_decay(0.01)
}
