//! GRPO with several rewards: each is scored and logged on its own (TRL's `rewards/<name>/mean`,
//! with `completions/mean_length` and `completions/clipped_ratio` per step), the reward is
//! their weighted sum, each one's held-out mean is reported before and after, and the held-out
//! answers are kept with every score. The learnable one here (answers of at most six words)
//! rises; the `math` verifier scores the car answers' numbers; `kl` is logged with `beta`.

use crate::common::{Project, metric};

fn recipe(reward: &str) -> String {
    format!(
        r#"version: 1
name: rewards
seed: 42
stages:
{car_sft}  grpo:
    kind: grpo
    model: {{ from: sft }}
    prompts: {{ from: qa }}
    reward: {reward}
    group_size: 6
    max_new_tokens: 24
    beta: 0.04
    train: {{ epochs: 4, batch_size: 4, lr: 5.0e-4 }}
"#,
        car_sft = crate::common::car_sft_stages()
    )
}

#[test]
fn each_reward_is_scored_logged_and_weighted_on_its_own() {
    let p = Project::new();
    p.write(
        "r.yaml",
        &recipe(
            "{ length: { min: 1, max: 6 }, math: response, weights: { math: 2.0, length: 0.5 } }",
        ),
    );
    p.hone(&["run", "r.yaml"]).ok();
    let show = p.hone(&["show", "r.yaml", "grpo"]).ok();
    let m = |k: &str| metric(&show, k);
    for when in ["before", "after"] {
        let (length, math) = (
            m(&format!("reward_length_{when}")),
            m(&format!("reward_math_{when}")),
        );
        assert!(
            (0.0..=1.0).contains(&length) && (0.0..=1.0).contains(&math),
            "{show}"
        );
        assert!(
            (m(&format!("reward_{when}")) - (0.5 * length + 2.0 * math)).abs() < 1e-3,
            "the reward is the weighted sum of its parts:\n{show}"
        );
    }
    assert!(
        m("reward_length_after") >= m("reward_length_before") + 0.4,
        "the length rule is learnt:\n{show}"
    );

    // Every step logs each reward, the answers' mean length and the share cut off.
    let jsonl = crate::common::first_run_metrics(&p);
    let steps: Vec<serde_json::Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| {
            v["stage"] == "grpo" && v.get("rewards/math/mean").is_some()
        })
        .collect();
    assert_eq!(steps.len() as f64, m("steps"), "{jsonl}");
    for s in &steps {
        let get = |k: &str| s[k].as_f64().unwrap_or_else(|| panic!("{k} in {s}"));
        assert!(
            (0.0..=1.0).contains(&get("completions/clipped_ratio")),
            "{s}"
        );
        assert!(
            (1.0..=24.0).contains(&get("completions/mean_length")),
            "{s}"
        );
        let total = 0.5 * get("rewards/length/mean") + 2.0 * get("rewards/math/mean");
        assert!((get("reward") - total).abs() < 1e-9, "{s}");
        assert!(get("kl") >= 0.0, "k3 is never negative: {s}");
    }
    // The first step's policy is the reference: nothing to diverge from yet.
    assert!(steps[0]["kl"].as_f64().unwrap() < 1e-4, "{}", steps[0]);
    assert!(
        steps.iter().any(|s| s["kl"].as_f64().unwrap() > 1e-4),
        "training moves the policy away from the reference"
    );

    // The held-out answers before and after, each with both scores.
    let examples = p.hone(&["show", "r.yaml", "grpo", "--examples", "2"]).ok();
    assert!(
        examples.contains("questions `grpo` answered")
            && examples.contains("\nbefore ")
            && examples.contains("\nafter ")
            && examples.contains("length ")
            && examples.contains(" · math "),
        "{examples}"
    );

    // A weight for a reward the stage does not have is an error in the recipe.
    p.write(
        "r.yaml",
        &recipe("{ length: { min: 1, max: 6 }, math: response, weights: { maths: 2.0 } }"),
    );
    let run = p.hone(&["run", "r.yaml"]);
    assert_eq!(run.code(), 2, "a recipe error");
    assert!(
        run.stderr()
            .contains("a weight for `maths`, which is not one of this stage's rewards")
            && run.stderr().contains("rewards set here: length, math"),
        "{}",
        run.stderr()
    );
}

/// The output digests the lockfile records for `stage`.
fn outputs(p: &Project, stage: &str) -> String {
    let lock: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(p.path("r.lock")).unwrap()).unwrap();
    serde_yaml::to_string(&lock["stages"][stage]["outputs"]).unwrap()
}

/// A verifier of the length rule's own judgement: 1 for an answer of 1 to 6 words.
const SHORT_ANSWERS: &str = r#"import json, sys
for line in sys.stdin:
    row = json.loads(line)
    assert isinstance(row["prompt"], str) and isinstance(row["response"], str)
    print(1 if 1 <= len(row["response"].split()) <= 6 else 0)
"#;

#[test]
fn a_verifier_program_scores_like_the_rule_it_reimplements_and_its_failures_stop_the_stage() {
    let p = Project::new();
    p.write("verify.py", SHORT_ANSWERS);
    p.write("r.yaml", &recipe("{ length: { min: 1, max: 6 } }"));
    p.hone(&["run", "r.yaml"]).ok();
    let by_rule = outputs(&p, "grpo");
    p.write("r.yaml", &recipe("{ command: [python3, verify.py] }"));
    let run = p.hone(&["run", "r.yaml"]).ok();
    assert!(run.contains("ran     grpo"), "{run}");
    assert_eq!(
        outputs(&p, "grpo"),
        by_rule,
        "the same rewards train the same model"
    );

    // The program's file is part of the action: editing it reruns the stage.
    p.write("verify.py", &format!("{SHORT_ANSWERS}# edited\n"));
    let run = p.hone(&["run", "r.yaml"]).ok();
    assert!(run.contains("ran     grpo"), "{run}");
    let run = p.hone(&["run", "r.yaml"]).ok();
    assert!(run.contains("cached  grpo"), "{run}");

    // Each way a verifier can fail stops the stage with what it said, and commits nothing.
    let cases = [
        (
            "import sys\nsys.stderr.write('verifier exploded\\n')\nsys.exit(3)\n",
            "",
            &["failed (exit status: 3)", "verifier exploded"][..],
        ),
        (
            "import time\ntime.sleep(30)\n",
            ", timeout: 1",
            &["took longer than 1s", "raise `reward.timeout`"][..],
        ),
        (
            "import sys\nfor line in sys.stdin:\n    print('correct')\n",
            "",
            &[
                "line 1 of the reward program `python3 bad.py`'s output is not a number: \"correct\"",
            ][..],
        ),
        (
            "import sys\nsys.stdin.read()\nsys.stdout.write('1\\n' * 20000000)\n",
            "",
            &["wrote more than 16 MiB"][..],
        ),
        (
            "import sys\nsys.stdin.read()\nprint(1)\n",
            "",
            &["wrote 1 lines for"][..],
        ),
    ];
    for (program, extra, expected) in cases {
        p.write("bad.py", program);
        p.write(
            "r.yaml",
            &recipe(&format!("{{ command: [python3, bad.py]{extra} }}")),
        );
        let before = p.actions();
        let run = p.hone(&["run", "r.yaml"]);
        assert_eq!(run.code(), 1, "{}", run.transcript());
        for e in expected {
            assert!(run.stderr().contains(e), "{e}: {}", run.stderr());
        }
        assert!(
            run.stderr().contains("nothing was committed"),
            "{}",
            run.stderr()
        );
        assert_eq!(p.actions(), before, "nothing committed");
    }
}

/// `evaluate`'s `qa.math`: answers scored by their final number, as the `math` reward reads
/// them. A model that learnt to answer in sentences ("The answer is 5.") gets the numbers
/// right and the exact match wrong.
#[test]
fn evaluate_scores_final_numbers_with_math_accuracy() {
    let d = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/cars");
    let p = Project::new();
    let mut rows = String::new();
    for a in 0..6 {
        for b in 0..6 {
            let row = serde_json::json!({
                "prompt": format!("What is {a} plus {b}?"),
                "response": format!("The answer is {}.", a + b),
                "number": format!("{}", a + b),
            });
            rows.push_str(&format!("{row}\n"));
        }
    }
    p.write("arith.jsonl", &rows);
    p.write(
        "r.yaml",
        &format!(
            r#"version: 1
name: math
seed: 1
stages:
  corpus:
    kind: dataset
    source: {{ path: {d}/corpus.jsonl }}
  arith:
    kind: dataset
    source: {{ path: arith.jsonl }}
  tok:
    kind: tokenizer
    data: {{ from: corpus.train }}
    vocab_size: 400
  sft:
    kind: sft
    model: {{ init: {{ arch: gpt2, layers: 2, d_model: 64, heads: 4, context: 64 }} }}
    tokenizer: {{ from: tok }}
    data: {{ from: arith }}
    max_length: 48
    train: {{ epochs: 40, batch_size: 6, lr: 1.0e-2, warmup_steps: 10 }}
  eval:
    kind: evaluate
    models: {{ sft: {{ from: sft }} }}
    qa: {{ data: {{ path: arith.jsonl }}, response_column: number, math: true, max_new_tokens: 8 }}
"#,
            d = d.display()
        ),
    );
    p.hone(&["run", "r.yaml"]).ok();
    let show = p.hone(&["show", "r.yaml", "eval"]).ok();
    let accuracy = metric(&show, "sft.math_accuracy");
    assert!(accuracy > 0.5, "the sums it learnt:\n{show}");
    assert_eq!(
        metric(&show, "sft.exact_match"),
        0.0,
        "sentences are not numbers:\n{show}"
    );
    let answers = crate::common::manifest(&p, "eval")["summary"]["answers"].clone();
    let answers = answers.as_array().unwrap();
    let right = answers.iter().filter(|a| a["math"] == 1.0).count();
    let share = right as f64 / answers.len() as f64;
    assert!(
        (share - accuracy).abs() < 1e-4,
        "{share} vs {accuracy}: {answers:?}"
    );
}

/// `examples/arithmetic_verifier.py` reads answers as the built-in `math` reward does: on
/// answers of every shape the two agree, so a recipe with either trains the same model.
#[test]
fn the_example_arithmetic_verifier_scores_as_the_math_reward() {
    let pairs = [
        ("The answer is 8.", "8"),
        ("Sam has 5 + 3 = 8 apples. The answer is 8.", "8"),
        ("Sam has 5 + 3 = 8 apples. Then 2 more", "10"),
        ("So it is \\boxed{12}, not 13.", "12"),
        ("\\boxed{\\frac{1}{2}}", "0.5"),
        ("3 then #### 7 apples and 9", "7"),
        ("It is 1,234.", "1234"),
        ("It is -3", "-3"),
        ("a-5 b", "5"),
        ("Half: 1/2", "0.5"),
        ("50%", "0.5"),
        ("12\\%", "0.12"),
        ("<think>5 + 1 = 5</think> It is 6.", "6"),
        ("The answer is N.", "8"),
        ("no number at all", "0"),
        ("2.5.", "2.5"),
        ("3/0", "0"),
        ("$5$", "5"),
        ("1.2.3", "1.2"),
        ("\u{0661}\u{0662}", "12"),
        ("5.0", "5"),
        (".5 of it", "0.5"),
        ("+7", "7"),
        ("\\boxed{unclosed 4", "4"),
        ("1,000,000 or 10", "10"),
    ];
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut child = std::process::Command::new("python3")
        .arg(root.join("examples/arithmetic_verifier.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        for (answer, reference) in pairs {
            let row = serde_json::json!({ "prompt": "?", "answer": reference, "response": answer });
            writeln!(stdin, "{row}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let scores: Vec<f64> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(scores.len(), pairs.len());
    let mut agreed = 0;
    for ((answer, reference), got) in pairs.iter().zip(&scores) {
        let want = hone::stages::verifiers::math_reward(answer, reference);
        assert_eq!(*got, want, "{answer:?} against {reference:?}");
        agreed += usize::from(want == 1.0);
    }
    assert!(agreed >= 10 && agreed < pairs.len(), "both kinds of case");
}

/// PPO takes GRPO's `reward:`: rules and verifiers instead of a reward model, each logged per
/// rollout (`rewards/<name>/mean`, with the answers' mean length and the share cut off), each
/// one's held-out mean before and after, and the held-out answers kept.
#[test]
fn ppo_learns_from_rules_and_verifiers_and_reports_each() {
    let p = Project::new();
    let ppo = |reward: &str| {
        format!(
            "version: 1\nname: ppo-rules\nseed: 42\nstages:\n{}  ppo:\n    kind: ppo\n    model: {{ from: sft }}\n    prompts: {{ from: qa }}\n{reward}    max_new_tokens: 24\n    ppo_epochs: 2\n    train: {{ epochs: 4, batch_size: 8, lr: 5.0e-4 }}\n",
            crate::common::car_sft_stages()
        )
    };
    p.write(
        "r.yaml",
        &ppo(
            "    reward: { length: { min: 1, max: 6 }, math: response, weights: { math: 2.0 } }\n",
        ),
    );
    p.hone(&["run", "r.yaml"]).ok();
    let show = p.hone(&["show", "r.yaml", "ppo"]).ok();
    let m = |k: &str| metric(&show, k);
    assert!(
        m("reward_length_after") >= m("reward_length_before") + 0.2,
        "the length rule is learnt:\n{show}"
    );
    for when in ["before", "after"] {
        let weighted =
            m(&format!("reward_length_{when}")) + 2.0 * m(&format!("reward_math_{when}"));
        assert!(
            (m(&format!("score_{when}")) - weighted).abs() < 1e-3,
            "the score is the weighted sum:\n{show}"
        );
    }
    let jsonl = crate::common::first_run_metrics(&p);
    let rollouts: Vec<serde_json::Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["stage"] == "ppo" && v["event"] == "ppo")
        .collect();
    assert!(!rollouts.is_empty(), "{jsonl}");
    for r in &rollouts {
        let get = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} in {r}"));
        assert!((0.0..=1.0).contains(&get("rewards/length/mean")), "{r}");
        assert!(
            (0.0..=1.0).contains(&get("completions/clipped_ratio")),
            "{r}"
        );
        assert!(
            (1.0..=24.0).contains(&get("completions/mean_length")),
            "{r}"
        );
    }
    let examples = p.hone(&["show", "r.yaml", "ppo", "--examples", "2"]).ok();
    assert!(
        examples.contains("\nbefore ") && examples.contains(" · math "),
        "{examples}"
    );

    // One reward source, not two and not none.
    for (reward, expected) in [
        (
            "    reward_model: { from: sft }\n    reward: { length: { min: 1, max: 6 } }\n",
            "both `reward_model` and `reward` are given",
        ),
        ("", "has no reward: give `reward_model` or `reward`"),
    ] {
        p.write("r.yaml", &ppo(reward));
        let run = p.hone(&["run", "r.yaml"]);
        assert_eq!(run.code(), 2, "{}", run.transcript());
        assert!(run.stderr().contains(expected), "{}", run.stderr());
    }
}
