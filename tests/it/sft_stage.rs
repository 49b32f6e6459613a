//! `sft` in a recipe: a tiny GPT-2 pretrained on the shipped car corpus learns to answer
//! held-out phrasings of the car questions (exact match before/after), with full fine-tuning
//! and with LoRA (only adapters train; a PEFT adapter is written).

use std::path::Path;

use crate::common::{Project, metric};

fn recipe() -> String {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/cars");
    format!(
        r#"version: 1
name: sft
seed: 5
stages:
  corpus:
    kind: dataset
    source: {{ path: {d}/corpus.jsonl }}
    split: {{ validation: 0.1 }}
  qa:
    kind: dataset
    source: {{ path: {d}/qa.jsonl }}
    columns: {{ question: prompt, answer: response }}
    split: {{ validation: 0.15 }}
    # Phrasings of one question share its answer: each phrasing is an example.
    leakage_key: [prompt]
  tok:
    kind: tokenizer
    data: {{ from: corpus.train }}
    vocab_size: 512
  lm:
    kind: pretrain
    model: {{ init: {{ arch: gpt2, layers: 2, d_model: 64, heads: 4, context: 64 }} }}
    tokenizer: {{ from: tok }}
    data: {{ from: corpus }}
    max_length: 64
    train: {{ epochs: 30, batch_size: 8, lr: 3.0e-3, warmup_steps: 10 }}
  sft:
    kind: sft
    model: {{ from: lm }}
    data: {{ from: qa }}
    max_length: 64
    train: {{ epochs: 40, batch_size: 8, lr: 2.0e-3, warmup_steps: 10 }}
  sft_lora:
    kind: sft
    model: {{ from: lm }}
    data: {{ from: qa }}
    max_length: 64
    peft: {{ method: lora, r: 16, alpha: 32, target_modules: [c_attn, c_proj, c_fc] }}
    train: {{ epochs: 40, batch_size: 8, lr: 1.0e-2, warmup_steps: 10 }}
  eval:
    kind: evaluate
    models: {{ base: {{ from: lm }}, full: {{ from: sft }}, lora: {{ from: sft_lora }} }}
    perplexity: {{ data: {{ from: corpus }}, max_length: 64 }}
    qa: {{ data: {{ from: qa }}, max_length: 64 }}
    samples: {{ prompts: ["How often should I rotate my tires?"], max_new_tokens: 12 }}
"#,
        d = d.display()
    )
}

#[test]
fn sft_teaches_held_out_answers_with_full_fine_tuning_and_lora() {
    let p = Project::new();
    p.write("r.yaml", &recipe());
    let first_run = p.hone(&["run", "r.yaml"]).ok();

    let full = p.hone(&["show", "r.yaml", "sft"]).ok();
    let (before, after) = (
        metric(&full, "exact_match_before"),
        metric(&full, "exact_match_after"),
    );
    assert_eq!(before, 0.0, "{full}");
    assert!(
        after >= 0.5,
        "full SFT exact match {before} -> {after}:\n{full}"
    );
    // Partial credit rises with it, and agrees with evaluate's measure of the same answers.
    for score in ["token_f1", "rouge_l"] {
        let (b, a) = (
            metric(&full, &format!("{score}_before")),
            metric(&full, &format!("{score}_after")),
        );
        assert!(a > b && a >= after, "{score} {b} -> {a}:\n{full}");
    }
    // The validation answers, before and after, one by one.
    let examples = p.hone(&["show", "r.yaml", "sft", "--examples", "1"]).ok();
    let answers = examples
        .split_once("questions `sft` answered")
        .map(|(_, a)| a)
        .unwrap_or_else(|| panic!("{examples}"));
    assert!(
        answers.contains("\nreference  ")
            && answers.contains("\nbefore     ")
            && answers.contains("\nafter      ")
            && answers.contains("exact_match ")
            && answers.contains(" · token_f1 ")
            && answers.contains(" · rouge_l "),
        "{examples}"
    );

    let lora = p.hone(&["show", "r.yaml", "sft_lora"]).ok();
    let (before, after) = (
        metric(&lora, "exact_match_before"),
        metric(&lora, "exact_match_after"),
    );
    assert!(
        after >= 0.2 && after > before,
        "LoRA SFT exact match {before} -> {after}:\n{lora}"
    );
    assert!(lora.contains("method   LoRA"), "{lora}");
    assert!(
        lora.contains("output   adapter") && lora.contains("output   model"),
        "{lora}"
    );
    let trainable = |show: &str| -> f64 {
        show.lines()
            .find_map(|l| l.strip_prefix("trainable_parameters "))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    assert!(
        trainable(&lora) * 4.0 < trainable(&full),
        "LoRA trains a fraction of the parameters"
    );

    // The evaluate stage measures the same things the training stages report, on the same
    // held-out splits, and prints the comparison.
    let eval = p.hone(&["show", "r.yaml", "eval"]).ok();
    let lm = p.hone(&["show", "r.yaml", "lm"]).ok();
    let close = |a: f64, b: f64| (a - b).abs() < 2e-3;
    assert!(
        close(
            metric(&eval, "base.perplexity"),
            metric(&lm, "val_ppl_after")
        ),
        "{eval}\n{lm}"
    );
    assert!(close(
        metric(&eval, "full.exact_match"),
        metric(&full, "exact_match_after")
    ));
    assert!(close(
        metric(&eval, "full.token_f1"),
        metric(&full, "token_f1_after")
    ));
    assert!(close(
        metric(&eval, "lora.exact_match"),
        metric(&lora, "exact_match_after")
    ));
    assert_eq!(metric(&eval, "base.exact_match"), 0.0);
    assert!(
        metric(&eval, "full.answer_perplexity") < metric(&eval, "base.answer_perplexity") / 2.0,
        "SFT makes the reference answers far likelier: {eval}"
    );
    let acc = metric(&eval, "base.token_accuracy");
    assert!(acc > 0.1 && acc < 1.0, "{eval}");
    assert!(
        first_run.contains(
            "model  perplexity  token_accuracy  exact_match  contains  token_f1   rouge_l  answer_perplexity"
        ),
        "{first_run}"
    );
    let manifest = crate::common::manifest(&p, "eval");
    let outputs = manifest["outputs"].as_object().unwrap();
    assert!(
        outputs.contains_key("results")
            && outputs.contains_key("samples")
            && outputs.contains_key("answers")
    );
    // Every answer is kept with its scores, and they add up to the table's means; the
    // fine-tuned model's answers overlap the references far more than the base model's.
    let answers = manifest["summary"]["answers"].as_array().unwrap();
    let of = |model: &str| -> Vec<&serde_json::Value> {
        answers.iter().filter(|a| a["model"] == model).collect()
    };
    assert_eq!(of("base").len(), of("full").len());
    assert!(!of("full").is_empty());
    for model in ["base", "full", "lora"] {
        for score in ["exact_match", "token_f1", "rouge_l"] {
            let rows = of(model);
            let mean =
                rows.iter().map(|a| a[score].as_f64().unwrap()).sum::<f64>() / rows.len() as f64;
            assert!(
                close(mean, metric(&eval, &format!("{model}.{score}"))),
                "{model}.{score}: {mean} vs {eval}"
            );
        }
    }
    assert!(
        metric(&eval, "full.rouge_l") > metric(&eval, "base.rouge_l") + 0.3,
        "{eval}"
    );
    assert!(eval.contains("answers  (rouge_l / token_f1"), "{eval}");
    assert_eq!(
        manifest["summary"]["samples"].as_array().unwrap().len(),
        3,
        "one sample per model"
    );

    // Alone in a fresh process, the LoRA stage reproduces the artifact it made after other
    // stages in one process: its random draws (the adapters' init) depend on the seed and the
    // stage, not on what ran before it.
    let artifact = || -> String {
        let lock: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(p.path("r.lock")).unwrap()).unwrap();
        lock["stages"]["sft_lora"]["artifact"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let first = artifact();
    p.hone(&["run", "r.yaml", "--only", "sft_lora", "--force", "sft_lora"])
        .ok();
    assert_eq!(
        artifact(),
        first,
        "sft_lora reproduces its artifact when run alone"
    );

    // Changing the LoRA learning rate reruns only that stage.
    let status = p
        .hone(&[
            "status",
            "r.yaml",
            "--set",
            "stages.sft_lora.train.lr=0.005",
        ])
        .ok();
    assert!(
        status.contains("config changed: train.lr 0.01 -> 0.005"),
        "{status}"
    );
    let run = p.hone(&["run", "r.yaml", "--set", "stages.sft_lora.train.lr=0.005"]);
    run.ok();
    assert_eq!(run.ran(), ["sft_lora", "eval"]);
    // ...and the evaluation measures only the changed model again: the others' results are
    // the very numbers their first evaluation gave.
    let again = p
        .hone(&[
            "show",
            "r.yaml",
            "eval",
            "--set",
            "stages.sft_lora.train.lr=0.005",
        ])
        .ok();
    assert!(again.contains(r#"reused   ["base","full"]"#), "{again}");
    for m in ["base.perplexity", "full.rouge_l", "full.exact_match"] {
        assert_eq!(metric(&again, m), metric(&eval, m), "{m}");
    }
}

#[test]
fn chat_sft_learns_answers_that_depend_on_the_conversation() {
    // Two-turn conversations rendered with ChatML (its markers are special tokens of the
    // trained tokenizer); the loss covers both assistant turns; exact match is measured on the
    // second answer, whose question ("And the spark plug?") only makes sense after the first.
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/cars");
    let p = Project::new();
    p.write(
        "r.yaml",
        &format!(
            r#"version: 1
name: chat
seed: 5
stages:
  corpus:
    kind: dataset
    source: {{ path: {d}/corpus.jsonl }}
    split: {{ validation: 0.1 }}
  chat:
    kind: dataset
    source: {{ path: {d}/chat.jsonl }}
    split: {{ validation: 0.15 }}
  tok:
    kind: tokenizer
    data: {{ from: corpus.train }}
    vocab_size: 512
    special_tokens: ["<|im_start|>", "<|im_end|>"]
  lm:
    kind: pretrain
    model: {{ init: {{ arch: gpt2, layers: 2, d_model: 64, heads: 4, context: 256 }} }}
    tokenizer: {{ from: tok }}
    data: {{ from: corpus }}
    max_length: 64
    train: {{ epochs: 30, batch_size: 8, lr: 3.0e-3, warmup_steps: 10 }}
  sft:
    kind: sft
    task: chat
    template: chatml
    model: {{ from: lm }}
    data: {{ from: chat }}
    max_length: 192
    train: {{ epochs: 30, batch_size: 8, lr: 2.0e-3, warmup_steps: 10 }}
"#,
            d = d.display()
        ),
    );
    p.hone(&["run", "r.yaml"]).ok();
    let show = p.hone(&["show", "r.yaml", "sft"]).ok();
    let (before, after) = (
        metric(&show, "exact_match_before"),
        metric(&show, "exact_match_after"),
    );
    assert_eq!(before, 0.0, "{show}");
    assert!(
        after >= 0.25,
        "chat SFT exact match {before} -> {after}:\n{show}"
    );
}

/// `packing: true` trains on the same answers in fewer, fuller rows (two or three examples in
/// each row of 128 tokens): fewer steps, a training loss that falls as the unpacked run's
/// does, and a validation loss (unpacked, the same held-out answers) close to the unpacked
/// run's.
#[test]
fn packed_sft_learns_as_unpacked_sft_in_fewer_steps() {
    let base = recipe();
    let cut = base.find("  sft:\n").unwrap();
    let recipe = format!(
        "{}{}",
        &base[..cut],
        r#"  sft:
    kind: sft
    model: { from: lm }
    data: { from: qa }
    max_length: 64
    train: { epochs: 40, batch_size: 4, lr: 2.0e-3, warmup_steps: 10 }
  packed:
    kind: sft
    model: { from: lm }
    data: { from: qa }
    max_length: 128
    packing: true
    train: { epochs: 40, batch_size: 4, lr: 2.0e-3, warmup_steps: 10 }
"#
    );
    let p = Project::new();
    p.write("r.yaml", &recipe);
    p.hone(&["run", "r.yaml"]).ok();
    let plain = p.hone(&["show", "r.yaml", "sft"]).ok();
    let packed = p.hone(&["show", "r.yaml", "packed"]).ok();
    let training = |show: &str| -> serde_json::Value {
        let line = show
            .lines()
            .find_map(|l| l.strip_prefix("training "))
            .unwrap();
        serde_json::from_str(line.trim()).unwrap()
    };
    let (a, b) = (training(&plain), training(&packed));
    let steps = |t: &serde_json::Value| t["steps"].as_f64().unwrap();
    assert!(
        steps(&b) * 2.0 < steps(&a),
        "packed {} steps, unpacked {}",
        steps(&b),
        steps(&a)
    );
    let (first, last) = (
        b["first_loss"].as_f64().unwrap(),
        b["last_loss"].as_f64().unwrap(),
    );
    assert!(last < first * 0.5, "packed loss {first} -> {last}");
    // Both end with a small fraction of the validation loss they started from (in fewer steps
    // the packed run ends a little higher; tests in src/stages/batches.rs hold a packed batch
    // to the unpacked loss and gradients exactly).
    let eval = |t: &serde_json::Value, k: &str| t[k].as_f64().unwrap();
    for (name, t) in [("unpacked", &a), ("packed", &b)] {
        let (start, end) = (eval(t, "initial_eval"), eval(t, "final_eval"));
        assert!(
            end < 0.1 * start,
            "{name}: validation loss {start} -> {end}"
        );
    }
    let (va, vb) = (eval(&a, "final_eval"), eval(&b, "final_eval"));
    assert!(
        (va - vb).abs() < 0.15,
        "validation loss: unpacked {va}, packed {vb}"
    );
}
