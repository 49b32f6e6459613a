//! hone's GRPO family equals TRL's on fixed inputs: for each `loss_type` (grpo, bnpo,
//! dr_grpo, dapo, dapo over a two-micro-batch step), each `importance_sampling_level`, with
//! clip-higher, the k3 KL term, a completion masked out whole, on a first pass (ratio 1) and a
//! later one (old log-probabilities that differ), the loss and its gradient with respect to
//! the policy's per-token log-probabilities; and the advantages of each `scale_rewards` and
//! of RLOO. Fixture from `scripts/make_grpo_fixture.py` (TRL's `_compute_loss` itself).

use std::path::Path;

use crate::common::{floats, max_diff};
use burn::prelude::*;
use burn::tensor::TensorData;
use hone::model::to_vec;
use hone::train::rl::{
    Baseline, ImportanceSampling, LossType, PolicyLoss, ScaleRewards, advantages,
};

fn fixture() -> serde_json::Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(
        &std::fs::read_to_string(root.join("tests/fixtures/grpo_parity.json")).unwrap(),
    )
    .unwrap()
}

#[test]
fn each_loss_type_matches_trl_in_value_and_gradient() {
    let f = fixture();
    let device = Device::flex().autodiff();
    let (b, t) = (
        f["shape"][0].as_u64().unwrap() as usize,
        f["shape"][1].as_u64().unwrap() as usize,
    );
    let matrix = |k: &str| Tensor::<2>::from_data(TensorData::new(floats(&f[k]), [b, t]), &device);
    let lengths: Vec<usize> = f["lengths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    let mask: Vec<f32> = lengths
        .iter()
        .flat_map(|&n| (0..t).map(move |j| f32::from(u8::from(j < n))))
        .collect();
    let mask = Tensor::<2>::from_data(TensorData::new(mask, [b, t]), &device);
    let tokens: usize = lengths.iter().sum();
    let adv = Tensor::<1>::from_data(floats(&f["advantages"]).as_slice(), &device)
        .reshape([b, 1])
        .expand([b, t]);
    let cases = f["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 17);
    for case in cases {
        let loss_type = match case["loss_type"].as_str().unwrap() {
            "grpo" => LossType::Grpo,
            "bnpo" => LossType::Bnpo,
            "dr_grpo" => LossType::DrGrpo,
            "dapo" => LossType::Dapo,
            other => panic!("{other}"),
        };
        let importance_sampling = match case["importance_sampling_level"].as_str().unwrap() {
            "token" => ImportanceSampling::Token,
            _ => ImportanceSampling::Sequence,
        };
        let loss = PolicyLoss {
            loss_type,
            epsilon_low: case["epsilon"].as_f64().unwrap(),
            epsilon_high: case["epsilon_high"].as_f64().unwrap(),
            importance_sampling,
            beta: case["beta"].as_f64().unwrap(),
            max_completion_length: f["max_completion_length"].as_u64().unwrap() as usize,
        };
        let logps = matrix("logps").require_grad();
        let old = if case["old"].as_bool().unwrap() {
            matrix("old_logps")
        } else {
            logps.clone().detach()
        };
        // The step's tokens: this micro-batch's and, in the two-micro-batch case, the other's.
        let step_tokens = (tokens as u64 + case["other_tokens"].as_u64().unwrap()) as f64;
        let terms = loss.loss(
            logps.clone(),
            old,
            Some(matrix("ref_logps")),
            adv.clone(),
            mask.clone(),
            step_tokens,
        );
        // TRL divides a micro-batch's loss by the accumulation steps, except dapo's, whose
        // normaliser already spans the step.
        let value = to_vec(terms.loss.clone())[0] as f64;
        let grads = terms.loss.backward();
        let grad = to_vec(
            logps
                .grad(&grads)
                .expect("a gradient reaches the log-probabilities"),
        );
        let want = case["loss"].as_f64().unwrap();
        assert!(
            (value - want).abs() < 1e-5,
            "{case_name}: loss {value}, TRL {want}",
            case_name = describe(case)
        );
        let diff = max_diff(&grad, &floats(&case["grad"]));
        assert!(diff < 1e-5, "{}: gradient off by {diff}", describe(case));
    }
}

fn describe(case: &serde_json::Value) -> String {
    format!(
        "{} / {} / beta {} / epsilon_high {} / {} / {} micro-batches",
        case["loss_type"],
        case["importance_sampling_level"],
        case["beta"],
        case["epsilon_high"],
        if case["old"].as_bool().unwrap() {
            "later pass"
        } else {
            "first pass"
        },
        case["micro_batches"]
    )
}

#[test]
fn advantages_match_trl_for_each_scale_and_rloo() {
    let f = fixture();
    let rewards: Vec<f64> = floats(&f["rewards"]).into_iter().map(f64::from).collect();
    let group = f["group"].as_u64().unwrap() as usize;
    let expected = &f["expected_advantages"];
    for (key, baseline, scale) in [
        ("group_group", Baseline::Group, ScaleRewards::Group),
        ("group_batch", Baseline::Group, ScaleRewards::Batch),
        ("group_none", Baseline::Group, ScaleRewards::None),
        ("rloo", Baseline::Rloo, ScaleRewards::Group),
    ] {
        let got: Vec<f32> = advantages(&rewards, group, baseline, scale)
            .into_iter()
            .map(|a| a as f32)
            .collect();
        let diff = max_diff(&got, &floats(&expected[key]));
        assert!(diff < 1e-5, "{key}: {got:?} vs {}", expected[key]);
    }
}
