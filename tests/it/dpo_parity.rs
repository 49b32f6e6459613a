//! hone's DPO loss and its gradients equal PyTorch's for a fixed policy (the tiny GPT-2
//! fixture), fixed reference log-probabilities (from a perturbed copy) and a fixed padded batch
//! of two pairs; fixture from `scripts/make_dpo_fixture.py`.

use std::path::Path;

use crate::common::{floats, max_diff};
use burn::optim::GradientsParams;
use burn::prelude::*;
use hone::model::{Backbone, load_hf_dir, to_vec};
use hone::stages::dpo::{Dpo, PrefBatch};
use hone::train::objectives::{LmBatch, sequence_logps};
use hone::train::preference::DpoParams;
use hone::train::trainer::Objective;

#[test]
fn dpo_loss_and_gradients_match_pytorch() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let f: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("tests/fixtures/dpo_parity.json")).unwrap(),
    )
    .unwrap();
    let device = Device::flex().autodiff();
    let model = load_hf_dir(&root.join("tests/fixtures/models/gpt2"), &device)
        .unwrap()
        .model
        .backbone;
    let side = |key: &str| -> LmBatch {
        let (mut seqs, mut targets) = (Vec::new(), Vec::new());
        for pair in f["pairs"].as_array().unwrap() {
            let ids = |k: &str| -> Vec<u32> {
                pair[k]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as u32)
                    .collect()
            };
            let (prompt, answer) = (ids("prompt"), ids(key));
            targets.push(
                std::iter::repeat_n(false, prompt.len())
                    .chain(std::iter::repeat_n(true, answer.len()))
                    .collect(),
            );
            seqs.push([prompt, answer].concat());
        }
        LmBatch::with_targets(&seqs, &targets, &device)
    };
    let tensor = |k: &str| Tensor::<1>::from_data(floats(&f[k]).as_slice(), &device);
    let batch = PrefBatch {
        chosen: side("chosen"),
        rejected: side("rejected"),
        ref_chosen: tensor("ref_chosen"),
        ref_rejected: tensor("ref_rejected"),
        n: 2.0,
    };
    // The policy's sequence log-probabilities first: the quantity everything rests on.
    let lm = model.language_model().unwrap();
    let (pc, _) = sequence_logps(lm, &batch.chosen);
    let (pr, _) = sequence_logps(lm, &batch.rejected);
    assert!(max_diff(&to_vec(pc), &floats(&f["policy_chosen"])) < 1e-4);
    assert!(max_diff(&to_vec(pr), &floats(&f["policy_rejected"])) < 1e-4);

    let beta = f["beta"].as_f64().unwrap();
    let objective = Dpo::new(DpoParams {
        beta,
        ..Default::default()
    });
    let loss = objective
        .loss_sum(&model, &batch)
        .div_scalar(objective.count(&batch));
    // The step's metrics, as TRL defines them: rewards are beta times the policy's log-ratio
    // to the reference.
    let step = objective.step_metrics();
    let mean = |k: &str, r: &str| {
        let (p, q) = (floats(&f[k]), floats(&f[r]));
        p.iter()
            .zip(&q)
            .map(|(a, b)| beta * (*a as f64 - *b as f64))
            .sum::<f64>()
            / p.len() as f64
    };
    let named = |n: &str| step.iter().find(|(k, _)| k == n).unwrap().1;
    assert!(
        (named("rewards/chosen") - mean("policy_chosen", "ref_chosen")).abs() < 1e-4,
        "{step:?}"
    );
    assert!(
        (named("rewards/rejected") - mean("policy_rejected", "ref_rejected")).abs() < 1e-4,
        "{step:?}"
    );
    assert!(
        (named("rewards/margins") - (named("rewards/chosen") - named("rewards/rejected"))).abs()
            < 1e-9
    );
    assert!(objective.step_metrics().is_empty(), "read once");
    let got = to_vec(loss.clone())[0] as f64;
    let want = f["loss"].as_f64().unwrap();
    assert!((got - want).abs() < 1e-5, "loss {got} vs PyTorch {want}");

    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let Backbone::Gpt2(g) = &model else {
        unreachable!()
    };
    let wte = to_vec(grads.get::<2>(g.wte.id).expect("a gradient for wte"));
    let c_attn = to_vec(
        grads
            .get::<2>(g.h[0].c_attn.weight.id)
            .expect("a gradient for c_attn"),
    );
    let (d_wte, d_attn) = (
        max_diff(&wte, &floats(&f["grad_wte"])),
        max_diff(&c_attn, &floats(&f["grad_c_attn_0"])),
    );
    assert!(
        d_wte < 1e-5 && d_attn < 1e-5,
        "max abs gradient diff: wte {d_wte:e}, c_attn {d_attn:e}"
    );
    // Not trivially zero.
    assert!(wte.iter().any(|x| x.abs() > 1e-4));
}
