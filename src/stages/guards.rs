//! Pitfall guards shared by the training stages: underfitting and overfitting read from the
//! training summary (with the train/validation gap as a number), catastrophic forgetting
//! measured on a probe set before and after, replay of general text against forgetting, and
//! leakage between the sets a stage trains and evaluates on.

use anyhow::{Result, bail};
use burn::prelude::*;
use serde_json::{Value, json};
use tokenizers::Tokenizer;

use super::metrics::{Forgetting, Rounded};
use crate::data::leakage::{Key, overlap};
use crate::model::Backbone;
use crate::spec::context::StageContext;
use crate::spec::kind::{DATA_INPUT, InputSlot, Problem};
use crate::spec::settings::{ForgettingProbe, Replay};
use crate::train::objectives::{CausalLm, LmBatch};
use crate::train::trainer::{Summary, evaluate};
/// The text a forgetting probe measures perplexity on.
pub const PROBE_DATA: InputSlot = InputSlot::new("forgetting_probe.data", DATA_INPUT);
/// General text mixed into training against forgetting.
pub const REPLAY_DATA: InputSlot = InputSlot::new("replay.data", DATA_INPUT);

/// `forgetting_probe` and `replay` where they cannot work (`set` says which are set): one
/// problem per key set.
pub fn misplaced(set: [bool; 2], works_with: &str) -> Vec<Problem> {
    ["forgetting_probe", "replay"]
        .into_iter()
        .zip(set)
        .filter(|(_, set)| *set)
        .map(|(key, _)| Problem::at_key(key, format!("`{key}` works with {works_with}")))
        .collect()
}

/// Underfitting (the training loss barely fell) and overfitting (validation loss rose from
/// its best, or sits far above the training loss), with the numbers.
pub fn fit_warnings(summary: &Summary) -> Vec<String> {
    let mut warnings = Vec::new();
    let drop = (summary.first_loss - summary.last_loss) / summary.first_loss.abs().max(1e-9);
    if drop < 0.05 {
        warnings.push(format!(
            "underfitting: the training loss barely fell ({:.3} -> {:.3}, {:.1}%); train longer or raise lr",
            summary.first_loss,
            summary.last_loss,
            drop * 100.0
        ));
    }
    if let Some(val) = summary.final_eval {
        let gap = val - summary.last_loss;
        if let Some((best_step, best)) = summary.best_eval
            && val > best * 1.02
            && !summary.early_stopped
        {
            warnings.push(format!(
                "overfitting: validation loss rose from {best:.3} (step {best_step}) to {val:.3}; set train.eval_every and train.patience to stop at the best step"
            ));
        } else if summary.last_loss > 0.0 && val > 2.0 * summary.last_loss && gap > 0.5 {
            // Periodic evaluation tells a gap that is still closing from one that is widening:
            // only the second calls for early stopping.
            let evaluated = summary
                .log
                .iter()
                .any(|r| matches!(r, crate::train::trainer::Record::Eval(_)));
            let wide = format!(
                "validation loss {val:.3} is far above the training loss {:.3} (gap {gap:.3})",
                summary.last_loss
            );
            let remedy = "the model memorises its training set faster than it generalises: more (or more varied) data narrows the gap";
            warnings.push(match summary.kept_step {
                Some(kept) if kept < summary.steps => format!(
                    "generalisation gap: early stopping kept the weights of step {kept} (of {}), the best validation loss ({val:.3}), but the training loss reached {:.3} (gap {gap:.3}); {remedy}",
                    summary.steps, summary.last_loss
                ),
                _ if evaluated => format!(
                    "generalisation gap: {wide}, and validation loss was at its lowest at the end, so early stopping would not help; {remedy}"
                ),
                _ => format!(
                    "overfitting: {wide}; use more data, fewer epochs, or early stopping (train.eval_every and train.patience)"
                ),
            });
        }
    }
    warnings
}

/// A forgetting probe, tokenized for the model under training: general text whose
/// perplexity should not rise much.
pub struct Probe {
    batches: Vec<LmBatch>,
    cfg: ForgettingProbe,
    before: f64,
}

impl Probe {
    /// The stage's probe (`forgetting_probe`, if it has one): reads the probe texts and
    /// measures the model before training.
    pub fn before(
        cfg: Option<&ForgettingProbe>,
        ctx: &StageContext,
        model: &Backbone,
        tokenizer: &Tokenizer,
        eos: Option<u32>,
        device: &Device,
    ) -> Result<Option<Probe>> {
        let Some(cfg) = cfg else {
            return Ok(None);
        };
        ctx.progress.set_message("measuring the forgetting probe");
        let texts = super::tables::text_column(ctx.input(PROBE_DATA.key)?, &cfg.column)?;
        if texts.is_empty() {
            bail!(
                "the forgetting probe has no text in column `{}`",
                cfg.column
            );
        }
        if !model.is_decoder() {
            bail!("a forgetting probe measures perplexity: it needs a decoder");
        }
        let batches = super::batches::batches(tokenizer, &texts, eos, cfg.max_length, 8, device)?;
        let before = evaluate(model, &CausalLm, &batches).exp();
        Ok(Some(Probe {
            batches,
            cfg: cfg.clone(),
            before,
        }))
    }

    /// Measures the trained model, if the stage has a probe; warns (or fails, with
    /// `fail: true`) when the probe's perplexity rose by more than `max_increase`. Returns the
    /// metrics and the summary.
    pub fn after(
        probe: Option<&Probe>,
        model: &Backbone,
        warnings: &mut Vec<String>,
    ) -> Result<(Option<Forgetting>, Option<Value>)> {
        let Some(probe) = probe else {
            return Ok((None, None));
        };
        probe.measure_after(model, warnings)
    }

    fn measure_after(
        &self,
        model: &Backbone,
        warnings: &mut Vec<String>,
    ) -> Result<(Option<Forgetting>, Option<Value>)> {
        let after = evaluate(model, &CausalLm, &self.batches).exp();
        let rise = after / self.before - 1.0;
        if rise > self.cfg.max_increase {
            let msg = format!(
                "catastrophic forgetting: perplexity on the forgetting probe rose {:.0}% ({:.2} -> {after:.2}), above the allowed {:.0}%; mix in general text with `replay`, lower lr, or train fewer steps (LoRA forgets less)",
                rise * 100.0,
                self.before,
                self.cfg.max_increase * 100.0
            );
            if self.cfg.fail {
                bail!("{msg}; nothing was committed");
            }
            warnings.push(msg);
        }
        let metrics = Forgetting {
            probe_ppl_before: Rounded(self.before),
            probe_ppl_after: Rounded(after),
        };
        Ok((
            Some(metrics),
            Some(json!({ "before": self.before, "after": after, "rise": rise })),
        ))
    }
}

/// Replay: general texts (all their tokens as targets) mixed into the training batches, so
/// the stage rehearses what it should keep. `ratio` is replay texts per training example;
/// the texts cycle in their order when the ratio asks for more than there are. `encode` makes
/// batches of texts as the stage makes its own.
pub fn replay_batches(
    cfg: &Replay,
    ctx: &StageContext,
    examples: usize,
    encode: impl Fn(&[String]) -> Result<Vec<LmBatch>>,
) -> Result<Vec<LmBatch>> {
    let texts = super::tables::text_column(ctx.input(REPLAY_DATA.key)?, &cfg.column)?;
    if texts.is_empty() {
        bail!("the replay data has no text in column `{}`", cfg.column);
    }
    let n = (examples as f64 * cfg.ratio).round() as usize;
    let picked: Vec<String> = texts.iter().cycle().take(n).cloned().collect();
    encode(&picked)
}

/// Leakage between two sets of examples a stage uses (training vs validation, probe, or
/// evaluation data): a warning per overlapping pair, naming the rows, with examples, and the
/// count of leaked examples (near-duplicates are warned about, not counted).
pub fn leakage_warnings(pairs: &[(&str, &[Key], &str, &[Key])]) -> (usize, Vec<String>) {
    let (mut leaked, mut warnings) = (0, Vec::new());
    for (a_name, a, b_name, b) in pairs {
        if a.is_empty() || b.is_empty() {
            continue;
        }
        let o = overlap(a_name, a, b_name, b, true);
        if o.leaked() > 0 {
            leaked += o.leaked();
            warnings.push(format!("leakage: {}", o.describe()));
        }
        if o.similar > 0 {
            warnings.push(format!("near-duplicates: {}", o.describe_similar()));
        }
    }
    (leaked, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_warnings_name_the_pitfall_with_numbers() {
        let flat = Summary {
            first_loss: 2.0,
            last_loss: 1.98,
            final_eval: Some(2.0),
            ..Default::default()
        };
        let w = fit_warnings(&flat);
        assert!(
            w[0].starts_with("underfitting") && w[0].contains("2.000 -> 1.980"),
            "{w:?}"
        );

        let overfit = Summary {
            first_loss: 3.0,
            last_loss: 0.1,
            best_eval: Some((20, 1.0)),
            final_eval: Some(1.6),
            ..Default::default()
        };
        let w = fit_warnings(&overfit);
        assert!(w[0].contains("rose from 1.000 (step 20) to 1.600"), "{w:?}");
        let good = Summary {
            first_loss: 3.0,
            last_loss: 0.9,
            best_eval: Some((40, 1.0)),
            final_eval: Some(1.0),
            ..Default::default()
        };
        assert!(fit_warnings(&good).is_empty());

        // A wide gap: with periodic evaluation showing validation still at its best it is a
        // generalisation gap, without it the warning cannot tell and says overfitting.
        let gap = Summary {
            first_loss: 6.0,
            last_loss: 0.5,
            best_eval: Some((180, 1.5)),
            final_eval: Some(1.5),
            log: vec![crate::train::trainer::Record::Eval(
                crate::train::trainer::EvalRecord {
                    step: 100,
                    loss: 1.7,
                },
            )],
            ..Default::default()
        };
        let w = fit_warnings(&gap);
        assert!(
            w[0].starts_with("generalisation gap") && w[0].contains("lowest at the end"),
            "{w:?}"
        );
        let kept = Summary {
            steps: 200,
            kept_step: Some(120),
            ..gap.clone()
        };
        let w = fit_warnings(&kept);
        assert!(
            w[0].contains("early stopping kept the weights of step 120 (of 200)"),
            "{w:?}"
        );
        let unknown = Summary {
            log: Vec::new(),
            ..gap
        };
        let w = fit_warnings(&unknown);
        assert!(
            w[0].starts_with("overfitting") && w[0].contains("patience"),
            "{w:?}"
        );
    }

    #[test]
    fn leakage_counts_exact_and_normalised_overlaps() {
        use crate::data::leakage::{Part, text_keys};
        let train = text_keys(
            "training",
            Part::Prompt,
            &[
                "What does the radiator do?".to_owned(),
                "Unique.".to_owned(),
            ],
        );
        let eval = text_keys(
            "evaluation",
            Part::Prompt,
            &["what does the RADIATOR do".to_owned(), "Other".to_owned()],
        );
        let (n, w) = leakage_warnings(&[("evaluation", &eval, "training", &train)]);
        assert_eq!(n, 1);
        assert!(
            w[0].contains("1 of 2 examples of evaluation also in training (0 exact, 1 after normalising): rows evaluation #1"),
            "{w:?}"
        );
        let (n, w) = leakage_warnings(&[("evaluation", &eval[1..], "training", &train)]);
        assert_eq!((n, w.len()), (0, 0));
    }
}
