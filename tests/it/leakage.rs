//! The leakage guard on conversation data: held-out question/answer pairs copied into a
//! ShareGPT file, an OpenAI-messages file or conversational preference pairs are found by their
//! turns (exactly, after normalising, and as near-duplicates), fail the dataset stage by
//! default with the leaked rows named and nothing committed (near-duplicates warn unless
//! `near_duplicates: error`), and are counted under `on_leak: warn`. A key with no text is reported, never counted as clean.

use serde_json::{Value, json};

use crate::common::{Project, metric};

const QUESTIONS: [&str; 3] = [
    "How often should I replace the cabin air filter?",
    "What does a torque converter do in an automatic car?",
    "Why does my steering wheel shake when I brake hard?",
];
const ANSWERS: [&str; 3] = [
    "Every 15,000 to 25,000 miles, or once a year if you drive on dusty roads.",
    "It couples the engine to the gearbox through fluid, so the car can idle in gear and pull away smoothly from a stop.",
    "Usually warped front brake rotors: the pads grab an uneven surface, and the shudder travels up the steering column to the wheel.",
];

fn heldout() -> String {
    QUESTIONS
        .iter()
        .zip(ANSWERS)
        .map(|(q, a)| format!("{}\n", json!({ "question": q, "answer": a })))
        .collect()
}

/// Twelve conversations about other things (each opening with the same greeting), as
/// (user, assistant) exchanges.
fn unrelated(i: usize) -> Vec<(String, String)> {
    vec![
        (
            "Hi, I have a question about my car.".into(),
            "Of course, what would you like to know?".into(),
        ),
        (
            format!("Is it safe to drive {i} miles on a spare tyre?"),
            format!(
                "A compact spare is rated for short trips; {i} miles at moderate speed is usually fine."
            ),
        ),
    ]
}

/// Rows 1-12 unrelated; row 4 holds held-out pair 1 verbatim, row 8 the answer of pair 2 with
/// other case and punctuation, row 11 the answer of pair 3 with a few words changed.
fn conversations() -> Vec<Vec<(String, String)>> {
    (1..=12)
        .map(|i| {
            let mut c = unrelated(i);
            match i {
                4 => c.push((QUESTIONS[0].into(), ANSWERS[0].into())),
                8 => c.push((
                    "And the torque converter?".into(),
                    ANSWERS[1].to_uppercase().replace([',', '.'], " "),
                )),
                11 => c.push((
                    "My steering wheel shakes, why?".into(),
                    "Usually warped front brake rotors: the pads grab an uneven surface, and this shudder travels up your steering column to the wheel.".into(),
                )),
                _ => {}
            }
            c
        })
        .collect()
}

fn sharegpt() -> String {
    conversations()
        .into_iter()
        .map(|c| {
            let mut turns = vec![json!({ "from": "system", "value": "You are a mechanic." })];
            for (u, a) in c {
                turns.push(json!({ "from": "human", "value": u }));
                turns.push(json!({ "from": "gpt", "value": a }));
            }
            format!("{}\n", json!({ "conversations": turns }))
        })
        .collect()
}

fn messages(c: &[(String, String)]) -> Value {
    let turns: Vec<Value> = c
        .iter()
        .flat_map(|(u, a)| {
            [
                json!({ "role": "user", "content": u }),
                json!({ "role": "assistant", "content": a }),
            ]
        })
        .collect();
    Value::Array(turns)
}

fn recipe(train_settings: &str) -> String {
    format!(
        "version: 1\nname: r\nstages:\n  chat:\n    kind: dataset\n    source: {{ path: train.jsonl }}\n{train_settings}  heldout:\n    kind: dataset\n    role: eval\n    source: {{ path: heldout.jsonl }}\n"
    )
}

#[test]
fn held_out_pairs_copied_into_sharegpt_fail_the_stage_with_the_rows_named() {
    let p = Project::new();
    p.write("train.jsonl", &sharegpt());
    p.write("heldout.jsonl", &heldout());
    p.write("r.yaml", &recipe("    near_duplicates: error\n"));
    let run = p.hone(&["run", "r.yaml"]);
    assert_eq!(run.code(), 1, "{}", run.transcript());
    let err = run.stderr();
    assert!(
        err.contains("data leakage in stage `chat`")
            && err.contains("2 of 12 examples of train also in eval dataset `heldout` (1 exact, 1 after normalising): rows train.jsonl:4, train.jsonl:8;")
            && err.contains("1 of 12 examples of train are near-duplicates of examples in eval dataset `heldout` (word 3-shingle Jaccard >= 0.5): rows train.jsonl:11;"),
        "{err}"
    );
    // Which turn matched which column, so the user can find it.
    assert!(
        err.contains("train.jsonl:4 (user turn 6 of `messages`) = heldout.test row 1 (`question`)"),
        "{err}"
    );
    assert_eq!(
        p.hone(&["cache", "ls"]).ok().lines().count(),
        1,
        "only the eval dataset committed"
    );

    // By default a near-duplicate is a warning; `on_leak: warn` makes the leaks warnings too.
    p.write("r.yaml", &recipe(""));
    let run = p.hone(&["run", "r.yaml"]);
    assert_eq!(run.code(), 1, "{}", run.transcript());
    assert!(
        !run.stderr().contains("near-duplicates of"),
        "{}",
        run.stderr()
    );
    p.write("r.yaml", &recipe("    on_leak: warn\n"));
    let run = p.hone(&["run", "r.yaml"]).ok();
    assert!(
        run.contains("leaked_rows=2 near_duplicate_rows=1")
            && run.contains("near-duplicates: 1 of 12 examples of train"),
        "{run}"
    );
    let show = p.hone(&["show", "r.yaml", "chat"]).ok();
    assert!(
        show.contains("leakage  train vs eval dataset `heldout`: 1 exact, 1 after normalising, 1 near-duplicate"),
        "{show}"
    );
    assert_eq!(metric(&show, "leaked_rows"), 2.0);
}

#[test]
fn openai_messages_and_conversational_preference_pairs_are_checked_by_their_turns() {
    let p = Project::new();
    p.write("heldout.jsonl", &heldout());
    p.write(
        "train.jsonl",
        &conversations()
            .iter()
            .map(|c| format!("{}\n", json!({ "messages": messages(c) })))
            .collect::<String>(),
    );
    p.write("r.yaml", &recipe(""));
    let run = p.hone(&["run", "r.yaml"]);
    assert_eq!(run.code(), 1, "{}", run.transcript());
    assert!(
        run.stderr().contains("rows train.jsonl:4, train.jsonl:8;"),
        "{}",
        run.stderr()
    );

    // TRL's conversational preference pairs: the prompt as messages, the answers as lists.
    let pairs: String = conversations()
        .iter()
        .map(|c| {
            let (last_q, last_a) = c.last().unwrap();
            let prompt: Vec<Value> = c[..c.len() - 1]
                .iter()
                .flat_map(|(u, a)| {
                    [
                        json!({ "role": "user", "content": u }),
                        json!({ "role": "assistant", "content": a }),
                    ]
                })
                .chain([json!({ "role": "user", "content": last_q })])
                .collect();
            let row = json!({
                "prompt": prompt,
                "chosen": [{ "role": "assistant", "content": last_a }],
                "rejected": [{ "role": "assistant", "content": "No idea, sorry." }],
            });
            format!("{row}\n")
        })
        .collect();
    p.write("train.jsonl", &pairs);
    let run = p.hone(&["run", "r.yaml"]);
    assert_eq!(run.code(), 1, "{}", run.transcript());
    assert!(
        run.stderr().contains("2 of 12 examples of train")
            && run.stderr().contains("rows train.jsonl:4, train.jsonl:8;"),
        "{}",
        run.stderr()
    );

    // The same conversations without the held-out pairs are clean.
    let clean: String = (1..=12)
        .map(|i| format!("{}\n", json!({ "messages": messages(&unrelated(i)) })))
        .collect();
    p.write("train.jsonl", &clean);
    let run = p.hone(&["run", "r.yaml"]).ok();
    assert!(run.contains("leaked_rows=0"), "{run}");
}

#[test]
fn a_key_without_text_is_reported_instead_of_counted_clean() {
    let p = Project::new();
    p.write("heldout.jsonl", &heldout());
    let rows: String = (0..10)
        .map(|i| format!("{}\n", json!({ "id": i, "score": i * 2 })))
        .collect();
    p.write("train.jsonl", &rows);
    p.write("r.yaml", &recipe(""));
    let run = p.hone(&["run", "r.yaml"]).ok();
    assert!(
        run.contains("warning chat")
            && run.contains("no column of train.jsonl holds text or conversations, so leakage cannot be checked; name the columns that identify an example in `leakage_key`"),
        "{run}"
    );

    p.write("r.yaml", &recipe("    leakage_key: [id]\n"));
    let run = p.hone(&["run", "r.yaml"]).ok();
    assert!(
        run.contains("the `leakage_key` columns [id] of train.jsonl hold no text"),
        "{run}"
    );
}
