//! The dataset layouts people have train as their hone-native equivalents do: a ShareGPT file
//! trains chat SFT to the very same model as the OpenAI-messages file it was converted from, an
//! Alpaca file the same as prompt/response pairs written with Alpaca's template, and TRL's
//! conversational preference pairs the same DPO model as the text pairs. Learning happened
//! (the SFT loss fell, DPO's held-out accuracy rose above chance).

use std::path::Path;

use serde_json::{Value, json};

use crate::common::{Project, metric};

fn cars(file: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/cars")
        .join(file);
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn jsonl(rows: impl IntoIterator<Item = Value>) -> String {
    rows.into_iter().map(|r| format!("{r}\n")).collect()
}

/// The output hash the lockfile records for `stage`.
fn output(p: &Project, stage: &str) -> String {
    let lock: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(p.path("r.lock")).unwrap()).unwrap();
    serde_yaml::to_string(&lock["stages"][stage]["outputs"]).unwrap()
}

#[test]
fn sharegpt_alpaca_and_conversational_preferences_train_like_their_native_forms() {
    let p = Project::new();
    let chat = cars("chat.jsonl");
    p.write("data/chat.jsonl", &jsonl(chat.clone()));
    let speaker = |role: &str| {
        match role {
            "user" => "human",
            "assistant" => "gpt",
            r => r,
        }
        .to_owned()
    };
    p.write(
        "data/chat_sharegpt.jsonl",
        &jsonl(chat.iter().map(|r| {
            let turns: Vec<Value> = r["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| json!({ "from": speaker(m["role"].as_str().unwrap()), "value": m["content"] }))
                .collect();
            json!({ "conversations": turns })
        })),
    );
    let qa = cars("qa.jsonl");
    p.write(
        "data/qa_alpaca.jsonl",
        &jsonl(qa.iter().enumerate().map(|(i, r)| {
            // Every other row with an `input`, as Alpaca data has both kinds.
            let (instruction, input) = if i % 2 == 0 {
                (r["question"].clone(), json!(""))
            } else {
                (json!("Answer the question."), r["question"].clone())
            };
            json!({ "instruction": instruction, "input": input, "output": r["answer"] })
        })),
    );
    p.write(
        "data/qa_templated.jsonl",
        &jsonl(qa.iter().enumerate().map(|(i, r)| {
            let q = r["question"].as_str().unwrap();
            let prompt = if i % 2 == 0 {
                format!("Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{q}\n\n### Response:")
            } else {
                format!("Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\nAnswer the question.\n\n### Input:\n{q}\n\n### Response:")
            };
            json!({ "prompt": prompt, "response": r["answer"] })
        })),
    );
    let prefs = cars("preferences.jsonl");
    p.write("data/prefs.jsonl", &jsonl(prefs.clone()));
    p.write(
        "data/prefs_conversational.jsonl",
        &jsonl(prefs.iter().map(|r| {
            let side = |k: &str| json!([{ "role": "user", "content": r["prompt"] }, { "role": "assistant", "content": r[k] }]);
            json!({ "chosen": side("chosen"), "rejected": side("rejected") })
        })),
    );
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/cars/corpus.jsonl");
    let dataset = |name: &str, file: &str| {
        format!(
            "  {name}:\n    kind: dataset\n    source: {{ path: data/{file} }}\n    split: {{ validation: 0.2 }}\n"
        )
    };
    let sft = |name: &str, task: &str, data: &str| {
        format!(
            "  {name}:\n    kind: sft\n    task: {task}\n    template: chatml\n    model: {{ init: {{ arch: gpt2, layers: 1, d_model: 32, heads: 2, context: 384 }} }}\n    tokenizer: {{ from: tok }}\n    data: {{ from: {data} }}\n    max_length: 384\n    train: {{ epochs: 10, batch_size: 8, lr: 1.0e-2 }}\n"
        )
    };
    let dpo = |name: &str, data: &str| {
        format!(
            "  {name}:\n    kind: dpo\n    template: chatml\n    model: {{ from: sft_chat }}\n    data: {{ from: {data} }}\n    max_length: 96\n    train: {{ epochs: 4, batch_size: 8, lr: 3.0e-3 }}\n"
        )
    };
    let recipe = format!(
        "version: 1\nname: layouts\nseed: 3\nstages:\n  corpus:\n    kind: dataset\n    source: {{ path: {corpus} }}\n  tok:\n    kind: tokenizer\n    data: {{ from: corpus.train }}\n    vocab_size: 400\n    special_tokens: [\"<|im_start|>\", \"<|im_end|>\"]\n{}{}{}{}{}{}{}{}{}{}{}{}",
        dataset("chat", "chat.jsonl"),
        dataset("chat_sharegpt", "chat_sharegpt.jsonl"),
        dataset("alpaca", "qa_alpaca.jsonl"),
        dataset("templated", "qa_templated.jsonl"),
        dataset("prefs", "prefs.jsonl"),
        dataset("prefs_conversational", "prefs_conversational.jsonl"),
        sft("sft_chat", "chat", "chat"),
        sft("sft_sharegpt", "chat", "chat_sharegpt"),
        sft("sft_alpaca", "instruction", "alpaca"),
        sft("sft_templated", "instruction", "templated"),
        dpo("dpo", "prefs"),
        dpo("dpo_conversational", "prefs_conversational"),
        corpus = corpus.display(),
    );
    p.write("r.yaml", &recipe);
    p.hone(&["run", "r.yaml"]).ok();

    let shown = p.hone(&["show", "r.yaml", "chat_sharegpt"]).ok();
    assert!(shown.contains("read as ShareGPT"), "{shown}");
    assert!(
        output(&p, "sft_chat").contains("model"),
        "{}",
        output(&p, "sft_chat")
    );
    assert_eq!(output(&p, "sft_sharegpt"), output(&p, "sft_chat"));
    assert_eq!(output(&p, "sft_alpaca"), output(&p, "sft_templated"));
    assert_eq!(output(&p, "dpo_conversational"), output(&p, "dpo"));

    for stage in ["sft_sharegpt", "sft_alpaca"] {
        let show = p.hone(&["show", "r.yaml", stage]).ok();
        let (first, last) = (
            metric(&show, "train_loss_first"),
            metric(&show, "train_loss_last"),
        );
        assert!(
            last < 0.8 * first,
            "{stage}: loss {first} -> {last}\n{show}"
        );
    }
    let show = p.hone(&["show", "r.yaml", "dpo_conversational"]).ok();
    assert!(metric(&show, "accuracy_after") > 0.5, "{show}");
}
