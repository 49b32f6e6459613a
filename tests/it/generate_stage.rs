//! `generate`: the real SmolLM2 answers a prompt set through its chat template; the responses
//! are a table that a downstream dataset stage reads like any split.

use std::path::Path;

use crate::common::{Project, metric};

#[test]
fn responses_become_a_dataset_artifact() {
    let gguf = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(gguf.is_file(), "run scripts/fetch_models.sh");
    let p = Project::new();
    p.write("prompts.jsonl", "{\"question\": \"What is the capital of France?\"}\n{\"question\": \"Name three primary colors.\"}\n");
    p.write(
        "r.yaml",
        &format!(
            "version: 1\nname: gen\nstages:\n  prompts: {{ kind: dataset, source: {{ path: prompts.jsonl }}, columns: {{ question: prompt }} }}\n  answers:\n    kind: generate\n    model: {{ path: {} }}\n    prompts: {{ from: prompts }}\n    template: model\n    sampling: {{ max_new_tokens: 12 }}\n  reused:\n    kind: dataset\n    source: {{ from: answers }}\n    select: [response]\n",
            gguf.display()
        ),
    );
    let run = p.hone(&["run", "r.yaml"]);
    run.ok();
    assert_eq!(run.ran(), ["prompts", "answers", "reused"]);
    let show = p.hone(&["show", "r.yaml", "answers"]).ok();
    assert_eq!(metric(&show, "responses"), 2.0, "{show}");
    assert!(show.contains("The capital of France is Paris."), "{show}");
    assert!(
        !show.contains("<|im_end|>"),
        "answers stop at the end of the turn: {show}"
    );
    let reused = p.hone(&["show", "r.yaml", "reused"]).ok();
    assert!(
        reused.contains("rows_train=2") && reused.contains("response (text)"),
        "{reused}"
    );
}
