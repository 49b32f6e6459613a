//! BERT's masked-token corruption: each real, non-special token is selected with probability
//! `rate` (0.15); a selected token becomes the mask token 80% of the time, a random token 10%,
//! and stays itself 10% (the proportions of BERT and transformers'
//! `DataCollatorForLanguageModeling`). The loss is taken at the selected positions only.
//! Masks are drawn once, from the recipe's seed, so a run is reproducible.

use crate::rng::SplitMix64;

/// One corrupted sequence: the model's input and the positions whose original token it must
/// predict.
#[derive(Debug, Clone, PartialEq)]
pub struct Masked {
    pub input: Vec<u32>,
    pub labels: Vec<u32>,
    pub selected: Vec<bool>,
}

pub fn mask_tokens(
    ids: &[u32],
    special: &[bool],
    mask_id: u32,
    vocab: usize,
    rate: f64,
    rng: &mut SplitMix64,
) -> Masked {
    let mut input = ids.to_vec();
    let mut selected = vec![false; ids.len()];
    for (i, &is_special) in special.iter().enumerate().take(ids.len()) {
        if is_special || rng.next_f64() >= rate {
            continue;
        }
        selected[i] = true;
        let roll = rng.next_f64();
        if roll < 0.8 {
            input[i] = mask_id;
        } else if roll < 0.9 {
            input[i] = rng.below(vocab as u64) as u32;
        }
    }
    Masked {
        input,
        labels: ids.to_vec(),
        selected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selects_about_the_rate_and_splits_80_10_10() {
        let mut rng = SplitMix64::new(1);
        let n = 200_000;
        let ids: Vec<u32> = (0..n).map(|i| 10 + (i % 50) as u32).collect();
        let mut special = vec![false; n];
        special[0] = true;
        special[n - 1] = true;
        let m = mask_tokens(&ids, &special, 3, 60, 0.15, &mut rng);
        assert!(
            !m.selected[0] && !m.selected[n - 1],
            "special tokens are never selected"
        );
        let sel: Vec<usize> = (0..n).filter(|&i| m.selected[i]).collect();
        let rate = sel.len() as f64 / n as f64;
        assert!((rate - 0.15).abs() < 0.005, "{rate}");
        let masked = sel.iter().filter(|&&i| m.input[i] == 3).count() as f64 / sel.len() as f64;
        let kept = sel.iter().filter(|&&i| m.input[i] == ids[i]).count() as f64 / sel.len() as f64;
        assert!((masked - 0.8).abs() < 0.01, "{masked}");
        // Kept: the 10% left alone plus random draws that hit the original (1/60 of 10%).
        assert!((kept - (0.1 + 0.1 / 60.0)).abs() < 0.01, "{kept}");
        assert!((0..n).all(|i| m.selected[i] || m.input[i] == ids[i]));
        assert_eq!(m.labels, ids);
    }
}
