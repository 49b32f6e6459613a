//! `train: { devices: [...] }`: one training stage on several devices at once. Two CPU
//! "devices" train exactly as `grad_accum: 2` on one (the same micro-batches, gradients summed
//! in the same order, one optimizer step): bit for bit, full and LoRA training alike, and the
//! device list enters the action key only as a count above one.

use crate::common::{Project, car_lm_stages};

/// Stage -> (action, artifact) from the lockfile.
fn lock(p: &Project) -> serde_yaml::Value {
    serde_yaml::from_str(&std::fs::read_to_string(p.path("r.lock")).unwrap()).unwrap()
}

#[test]
fn two_cpu_devices_train_exactly_as_two_accumulated_micro_batches() {
    let p = Project::new();
    let sft = |name: &str, train: &str, peft: &str| {
        format!(
            "  {name}:\n    kind: sft\n    model: {{ from: lm }}\n    data: {{ from: qa }}\n    max_length: 64\n{peft}    train: {{ epochs: 3, batch_size: 4, lr: 2.0e-3, {train} }}\n"
        )
    };
    let lora = "    peft: { method: lora, r: 8, alpha: 16, target_modules: [c_attn, c_fc] }\n";
    let recipe = format!(
        "version: 1\nname: dp\nseed: 3\nstages:\n{}{}{}{}{}{}",
        car_lm_stages().replace("epochs: 30", "epochs: 2"),
        sft("full_accum", "grad_accum: 2", ""),
        sft("full_two", "devices: [cpu, cpu]", ""),
        sft("lora_accum", "grad_accum: 2", lora),
        sft("lora_two", "devices: [cpu, cpu]", lora),
        sft("lora_one", "devices: [cpu]", lora),
    );
    p.write("r.yaml", &recipe);
    let run = p.hone(&["run", "r.yaml"]);
    run.ok();
    let l = lock(&p);
    let stage = |s: &str, field: &str| l["stages"][s][field].as_str().unwrap().to_owned();
    // The same weights, bit for bit: the artifact digests (every file of the saved model) agree.
    assert_eq!(
        stage("full_two", "artifact"),
        stage("full_accum", "artifact")
    );
    assert_eq!(
        stage("lora_two", "artifact"),
        stage("lora_accum", "artifact")
    );
    // And training happened: the loss fell.
    let show = p.hone(&["show", "r.yaml", "lora_two"]).ok();
    let first = crate::common::metric(&show, "train_loss_first");
    let last = crate::common::metric(&show, "train_loss_last");
    assert!(last < first, "{show}");
    // Two devices are not one: their keys differ; one device is the same as none.
    assert_ne!(stage("lora_two", "action"), stage("lora_accum", "action"));
    let recipe_one = recipe.replace("devices: [cpu]", "grad_accum: 1");
    p.write("r.yaml", &recipe_one);
    let again = p.hone(&["run", "r.yaml"]);
    let out = again.ok();
    assert!(
        !again.ran().contains(&"lora_one".to_owned()),
        "`devices: [cpu]` and no devices are one action: {out}"
    );
}

#[test]
fn a_device_the_backend_has_not_is_an_error_that_names_it() {
    let p = Project::new();
    let recipe = format!(
        "version: 1\nname: dp\nstages:\n{}",
        car_lm_stages().replace(
            "warmup_steps: 10 }",
            "warmup_steps: 10, devices: [cpu, \"cuda:1\"] }"
        )
    );
    p.write("r.yaml", &recipe);
    let run = p.hone(&["run", "r.yaml"]);
    assert_eq!(run.code(), 1, "{}", run.stdout());
    assert!(
        run.stderr()
            .contains("device `cuda:1` is not a device of the stage's backend `cpu`"),
        "{}",
        run.stderr()
    );
}
