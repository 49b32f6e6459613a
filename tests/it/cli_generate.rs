//! `hone generate` end to end: a real chat model answers through its chat template; clear
//! errors for models that cannot generate.

use std::path::Path;

use crate::common::Project;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn smollm2_answers_through_its_chat_template() {
    let gguf = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(gguf.is_file(), "run scripts/fetch_models.sh");
    let p = Project::new();
    let out = p
        .hone(&[
            "generate",
            "--model",
            gguf.to_str().unwrap(),
            "--prompt",
            "What is the capital of France?",
            "--max-new-tokens",
            "16",
        ])
        .ok();
    assert!(out.contains("The capital of France is Paris."), "{out}");
    assert!(
        !out.contains("<|im_end|>"),
        "generation stops at the end-of-turn token: {out}"
    );
}

#[test]
fn models_that_cannot_generate_say_why() {
    let p = Project::new();
    let fixtures = root().join("tests/fixtures/models");
    let run = p.hone(&[
        "generate",
        "--model",
        fixtures.join("gpt2").to_str().unwrap(),
        "--prompt",
        "hi",
    ]);
    assert_eq!(run.code(), 1);
    assert!(
        run.stderr()
            .contains("has no tokenizer: the directory has no tokenizer.json"),
        "{}",
        run.stderr()
    );
    let run = p.hone(&["generate", "--model", "nope/", "--prompt", "hi"]);
    assert!(
        run.stderr().contains("nope/ does not exist")
            && run
                .stderr()
                .contains("an HF model directory, a .gguf file, or RECIPE:STAGE"),
        "{}",
        run.stderr()
    );
}
