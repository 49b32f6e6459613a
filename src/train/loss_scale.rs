//! Dynamic loss scaling for f16 training, as PyTorch's `GradScaler` does it: the loss is
//! multiplied by a scale before backward, so gradients that would underflow f16 stay
//! representable; the gradients are divided by it before clipping and the optimizer step. A
//! step whose gradients overflowed (inf or NaN) is skipped and the scale halved; after
//! `GROWTH_INTERVAL` finite steps in a row it doubles.

use serde::{Deserialize, Serialize};

/// PyTorch's defaults (`torch.amp.GradScaler`).
pub const INIT_SCALE: f64 = 65536.0;
pub const GROWTH_FACTOR: f64 = 2.0;
pub const BACKOFF_FACTOR: f64 = 0.5;
pub const GROWTH_INTERVAL: usize = 2000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossScale {
    pub scale: f64,
    /// Finite steps since the scale last changed.
    pub finite_steps: usize,
    /// Steps skipped for overflowed gradients, in all.
    pub skipped: usize,
}

impl Default for LossScale {
    fn default() -> Self {
        LossScale {
            scale: INIT_SCALE,
            finite_steps: 0,
            skipped: 0,
        }
    }
}

impl LossScale {
    /// Records a step whose unscaled gradient norm is `grad_norm`; returns whether the
    /// optimizer may step (the gradients are finite).
    pub fn update(&mut self, grad_norm: f64) -> bool {
        if !grad_norm.is_finite() {
            self.scale *= BACKOFF_FACTOR;
            self.finite_steps = 0;
            self.skipped += 1;
            return false;
        }
        self.finite_steps += 1;
        if self.finite_steps == GROWTH_INTERVAL {
            self.scale *= GROWTH_FACTOR;
            self.finite_steps = 0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_skips_the_step_and_halves_the_scale_and_finite_steps_grow_it() {
        let mut s = LossScale::default();
        assert!(!s.update(f64::INFINITY));
        assert!(!s.update(f64::NAN));
        assert_eq!(
            (s.scale, s.skipped, s.finite_steps),
            (INIT_SCALE / 4.0, 2, 0)
        );
        for _ in 0..GROWTH_INTERVAL - 1 {
            assert!(s.update(1.0));
        }
        assert_eq!(s.scale, INIT_SCALE / 4.0);
        assert!(s.update(1.0));
        assert_eq!((s.scale, s.finite_steps), (INIT_SCALE / 2.0, 0));
        // An overflow resets the run of finite steps.
        for _ in 0..10 {
            s.update(1.0);
        }
        s.update(f64::INFINITY);
        assert_eq!(
            (s.scale, s.finite_steps, s.skipped),
            (INIT_SCALE / 4.0, 0, 3)
        );
    }
}
