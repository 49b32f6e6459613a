//! A reward written in Rust (`examples/custom_reward.rs`): registered on a registry, named in
//! a recipe under `reward.custom`, scored and logged on its own, learnt from, and part of the
//! action key through its version; an unknown name is a recipe error that points at it.

#[path = "../../examples/custom_reward.rs"]
mod short_answer;

use crate::common::Project;
use hone::spec::{Answer, RegisterError, Registry, Reward};

fn registry(reward: impl Reward + 'static) -> Registry {
    let mut kinds = hone::stages::registry();
    kinds.register_reward(reward).expect("registers");
    kinds
}

fn run(p: &Project, kinds: &Registry) -> Result<hone::exec::RunReport, String> {
    crate::common::run_with(p, &[], kinds)
}

fn recipe(reward: &str) -> String {
    format!(
        "version: 1\nname: custom-reward\nseed: 42\nstages:\n{}  grpo:\n    kind: grpo\n    model: {{ from: sft }}\n    prompts: {{ from: qa }}\n    reward: {reward}\n    group_size: 6\n    max_new_tokens: 24\n    train: {{ epochs: 4, batch_size: 4, lr: 5.0e-4 }}\n",
        crate::common::car_sft_stages()
    )
}

/// The same scores as the example's, under another version.
struct Renamed(&'static str);

impl Reward for Renamed {
    fn name(&self) -> &'static str {
        "short_answer"
    }
    fn version(&self) -> &'static str {
        self.0
    }
    fn scores(&self, answers: &[Answer<'_>]) -> anyhow::Result<Vec<f64>> {
        short_answer::ShortAnswer { max_words: 6 }.scores(answers)
    }
}

#[test]
fn a_registered_reward_is_scored_logged_learnt_and_keyed_by_its_version() {
    let p = Project::new();
    p.write(
        "r.yaml",
        &recipe("{ custom: [short_answer], math: response, weights: { short_answer: 2.0 } }"),
    );
    let kinds = registry(short_answer::ShortAnswer { max_words: 6 });
    run(&p, &kinds).unwrap();
    let lock: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(p.path("r.lock")).unwrap()).unwrap();
    let m = &lock["stages"]["grpo"]["metrics"];
    let get = |k: &str| m[k].as_f64().unwrap_or_else(|| panic!("{k} in {m:?}"));
    assert!(
        get("reward_short_answer_after") >= get("reward_short_answer_before") + 0.2,
        "the registered reward is learnt: {m:?}"
    );
    assert!(
        (get("reward_after") - (2.0 * get("reward_short_answer_after") + get("reward_math_after")))
            .abs()
            < 1e-3,
        "weighted and summed with the built-in ones: {m:?}"
    );
    let jsonl = crate::common::first_run_metrics(&p);
    assert!(
        jsonl.contains("\"rewards/short_answer/mean\""),
        "logged per step: {jsonl}"
    );
    let action = |p: &Project| {
        let lock: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(p.path("r.lock")).unwrap()).unwrap();
        lock["stages"]["grpo"]["action"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let first = action(&p);

    // Another version of the reward is another action; the same version is the same one.
    run(&p, &registry(Renamed("1"))).unwrap();
    assert_eq!(action(&p), first);
    run(&p, &registry(Renamed("2"))).unwrap();
    assert_ne!(action(&p), first, "a new version reruns the stage");

    // A name nobody registered is a recipe error at its line, listing the registered ones.
    p.write("r.yaml", &recipe("{ custom: [short_anwser] }"));
    let err = run(&p, &kinds).unwrap_err();
    assert!(
        err.contains("no reward named `short_anwser` is registered")
            && err.contains("registered rewards: short_answer")
            && err.contains("r.yaml:"),
        "{err}"
    );
    // Without the registry (plain `hone`), the recipe says where such rewards come from.
    let run = p.hone(&["validate", "r.yaml"]);
    assert_eq!(run.code(), 2);
    assert!(
        run.stderr().contains("examples/custom_reward.rs"),
        "{}",
        run.stderr()
    );
}

#[test]
fn reward_names_are_checked_when_registered() {
    let mut kinds = hone::stages::registry();
    let named = |name: &'static str, version: &'static str| Named(name, version);
    assert!(matches!(
        kinds.register_reward(named("math", "1")),
        Err(RegisterError::BuiltinReward("math"))
    ));
    assert!(matches!(
        kinds.register_reward(named("Bad-Name", "1")),
        Err(RegisterError::BadRewardName(_))
    ));
    assert!(matches!(
        kinds.register_reward(named("mine", " ")),
        Err(RegisterError::NoRewardVersion("mine"))
    ));
    kinds.register_reward(named("mine", "1")).unwrap();
    assert!(matches!(
        kinds.register_reward(named("mine", "2")),
        Err(RegisterError::RewardTaken("mine"))
    ));
    assert_eq!(kinds.rewards(), vec!["mine"]);
}

struct Named(&'static str, &'static str);

impl Reward for Named {
    fn name(&self) -> &'static str {
        self.0
    }
    fn version(&self) -> &'static str {
        self.1
    }
    fn scores(&self, answers: &[Answer<'_>]) -> anyhow::Result<Vec<f64>> {
        Ok(vec![0.0; answers.len()])
    }
}
