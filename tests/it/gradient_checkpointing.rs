//! `train: { gradient_checkpointing: true }`: each layer is recomputed in backward instead of
//! its activations kept. The arithmetic is the same ops on the same values, so pretraining,
//! full fine-tuning and LoRA produce the very weights they produce without it; the option is
//! part of the action key only when on.

use crate::common::{CAR_LORA, Project, car_lm_stages, car_sft_stage, lock_result, lock_results};

#[test]
fn recomputed_layers_train_the_same_weights_as_kept_ones() {
    let p = Project::new();
    let sft = |name: &str, train: &str, peft: &str| car_sft_stage(name, 2, train, peft);
    let lora = CAR_LORA;
    let on = ", gradient_checkpointing: true";
    let stages = car_lm_stages().replace("epochs: 30", "epochs: 2");
    let lm_on = stages.replace("  lm:\n", "  lm_on:\n").replace(
        "warmup_steps: 10 }",
        "warmup_steps: 10, gradient_checkpointing: true }",
    );
    let lm_on = &lm_on[lm_on.find("  lm_on:").unwrap()..];
    let recipe = format!(
        "version: 1\nname: gc\nseed: 5\nstages:\n{stages}{lm_on}{}{}{}{}",
        sft("full", "", ""),
        sft("full_on", on, ""),
        sft("lora", "", lora),
        sft("lora_on", on, lora),
    );
    p.write("r.yaml", &recipe);
    let run = p.hone(&["run", "r.yaml"]);
    run.ok();
    let results = lock_results(&p, "r.lock");
    let get = |s: &str| lock_result(&results, s);
    for (off, on) in [("lm", "lm_on"), ("full", "full_on"), ("lora", "lora_on")] {
        let (off, on) = (get(off), get(on));
        assert_eq!(on.2, off.2, "{} and {} saved other weights", on.0, off.0);
        assert_ne!(on.1, off.1, "{} is its own action", on.0);
    }
    // Training happened.
    let show = p.hone(&["show", "r.yaml", "lora_on"]).ok();
    let first = crate::common::metric(&show, "train_loss_first");
    let last = crate::common::metric(&show, "train_loss_last");
    assert!(last < first, "{show}");
}
