//! Checks across the whole recipe, before anything runs: header values, per-stage settings,
//! source files, references, artifact contracts and cycles. All problems are reported at once.

use crate::backend;
use crate::diag::{Diagnostic, Diagnostics};
use crate::plan::dag::Dag;
use crate::recipe::Recipe;
use crate::recipe::source_map::join;
use crate::recipe::types::{DatasetRole, DatasetSpec, FileFormat, Input, StageSpec};

/// Validates `recipe` and returns its stage graph.
pub fn validate(recipe: &Recipe) -> Result<Dag, Diagnostics> {
    let mut diags = Diagnostics(recipe.broken.iter().map(|(_, d)| d.clone()).collect());
    if recipe.header.version != 1 {
        diags.push(
            Diagnostic::new(format!(
                "recipe language version {} is not supported",
                recipe.header.version
            ))
            .at(recipe.value_location("version"))
            .help("this hone reads `version: 1`"),
        );
    }
    if let Err(msg) = backend::check_available(recipe.header.backend) {
        diags.push(Diagnostic::new(msg).at(recipe.value_location("backend")));
    }
    for stage in &recipe.stages {
        let at = join("stages", &stage.name);
        for (rel, input) in stage.spec.inputs() {
            if let Input::Source(src) = input {
                let table = stage
                    .spec
                    .accepts(&rel)
                    .contains(&crate::stages::ArtifactType::Table);
                check_source(recipe, &join(&at, &rel), src, table, &mut diags);
            }
        }
        match &stage.spec {
            StageSpec::Dataset(d) => check_dataset(recipe, &at, d, &mut diags),
            StageSpec::Tokenizer(t) => check_tokenizer(recipe, &at, t, &mut diags),
            StageSpec::Pretrain(p) => check_pretrain(recipe, &at, p, &mut diags),
            StageSpec::Sft(p) => check_sft(recipe, &at, p, &mut diags),
            StageSpec::Generate(_) => {}
            StageSpec::Evaluate(e) => check_evaluate(recipe, &at, e, &mut diags),
            StageSpec::Reward(r) => check_reward(recipe, &at, r, &mut diags),
            StageSpec::Dpo(d) => check_dpo(recipe, &at, d, &mut diags),
            StageSpec::Grpo(g) => check_grpo(recipe, &at, g, &mut diags),
            StageSpec::Ppo(p) => check_ppo(recipe, &at, p, &mut diags),
            StageSpec::Custom(c) => {
                for p in c.check() {
                    let key = join(&at, &p.key);
                    let loc = recipe
                        .value_location(&key)
                        .or_else(|| recipe.key_location(&at));
                    let d =
                        Diagnostic::new(format!("stage `{}`: {}", stage.name, p.message)).at(loc);
                    diags.push(match p.help {
                        Some(h) => d.help(h),
                        None => d,
                    });
                }
            }
            StageSpec::Export(e) => {
                if e.to.trim().is_empty() {
                    diags.push(
                        Diagnostic::new("`to` names the directory to export to")
                            .at(recipe.value_location(&join(&at, "to"))),
                    );
                }
            }
        }
    }
    match Dag::build(recipe) {
        Ok(dag) => diags.into_result(dag),
        Err(more) => {
            diags.0.extend(more.0);
            Err(diags)
        }
    }
}

fn check_source(
    recipe: &Recipe,
    at: &str,
    src: &crate::recipe::types::SourceFile,
    table: bool,
    diags: &mut Diagnostics,
) {
    let loc = recipe.value_location(&join(at, "path"));
    if !src.resolved.exists() {
        diags.push(
            Diagnostic::new(format!(
                "source file `{}` not found (looked for {})",
                src.path,
                src.resolved.display()
            ))
            .at(loc.clone())
            .help("source paths are relative to the recipe file that names them"),
        );
        return;
    }
    if table && src.format.is_none() && FileFormat::from_extension(&src.path).is_none() {
        let known: Vec<&str> = FileFormat::ALL.iter().map(|(e, _)| *e).collect();
        diags.push(
            Diagnostic::new(format!(
                "cannot tell the format of `{}` from its extension",
                src.path
            ))
            .at(loc)
            .help(format!(
                "add `format:` ({}) to the source",
                known.join(", ")
            )),
        );
    }
}

fn check_dataset(recipe: &Recipe, at: &str, d: &DatasetSpec, diags: &mut Diagnostics) {
    let mut total = 0.0;
    for (name, amount) in [("validation", d.split.validation), ("test", d.split.test)] {
        let Some(x) = amount else { continue };
        let valid = (x > 0.0 && x < 1.0) || (x >= 1.0 && x.fract() == 0.0) || x == 0.0;
        if !valid {
            diags.push(
                Diagnostic::new(format!(
                    "split size `{name}: {x}` is neither a fraction in (0, 1) nor a row count"
                ))
                .at(recipe.value_location(&join(&join(at, "split"), name)))
                .help("write 0.1 for 10% of the rows, or 50 for 50 rows"),
            );
        } else if x < 1.0 {
            total += x;
        }
    }
    if total >= 1.0 {
        diags.push(
            Diagnostic::new(format!(
                "held-out fractions add up to {total}, leaving no training rows"
            ))
            .at(recipe.value_location(&join(at, "split"))),
        );
    }
    if d.role == DatasetRole::Eval && (d.split.validation.is_some() || d.split.test.is_some()) {
        diags.push(
            Diagnostic::new("an `eval` dataset is held out whole and cannot be split")
                .at(recipe.key_location(&join(at, "split")))
                .help("remove `split`, or make it a `train` dataset and read its `test` output"),
        );
    }
    let mut targets: Vec<&str> = Vec::new();
    for (old, new) in &d.columns {
        if targets.contains(&new.as_str()) {
            diags.push(
                Diagnostic::new(format!("two columns are renamed to `{new}`"))
                    .at(recipe.value_location(&join(&join(at, "columns"), old))),
            );
        }
        targets.push(new);
    }
    for (key, list) in [("select", &d.select), ("leakage_key", &d.leakage_key)] {
        if list.as_ref().is_some_and(Vec::is_empty) {
            diags.push(
                Diagnostic::new(format!("`{key}` is empty"))
                    .at(recipe.value_location(&join(at, key)))
                    .help("list at least one column, or remove the key"),
            );
        }
    }
}

fn check_tokenizer(
    recipe: &Recipe,
    at: &str,
    t: &crate::recipe::types::TokenizerSpec,
    diags: &mut Diagnostics,
) {
    match (&t.data, &t.from_model) {
        (Some(_), Some(_)) => diags.push(
            Diagnostic::new(
                "a tokenizer stage either trains on `data` or takes one `from_model`, not both",
            )
            .at(recipe.key_location(&join(at, "from_model"))),
        ),
        (None, None) => diags.push(
            Diagnostic::new(
                "a tokenizer stage needs `data` (to train on) or `from_model` (to copy)",
            )
            .at(recipe.key_location(at))
            .help("e.g. `data: { from: corpus }` with `vocab_size: 1024`"),
        ),
        _ => {}
    }
    if t.data.is_some() && t.vocab_size < 300 {
        diags.push(
            Diagnostic::new(format!(
                "vocab_size {} is too small: byte-level BPE starts from 256 byte tokens",
                t.vocab_size
            ))
            .at(recipe.value_location(&join(at, "vocab_size")))
            .help("use at least 300"),
        );
    }
}

fn check_pretrain(
    recipe: &Recipe,
    at: &str,
    p: &crate::recipe::types::PretrainSpec,
    diags: &mut Diagnostics,
) {
    use crate::recipe::types::{Arch, ModelInput, PretrainObjective};
    if p.objective == PretrainObjective::MaskedLm {
        reject_guards(
            recipe,
            at,
            [p.forgetting_probe.is_some(), p.replay.is_some()],
            "next-token models (`causal_lm`), not `masked_lm`",
            diags,
        );
    }
    if p.packing && p.objective == PretrainObjective::MaskedLm {
        diags.push(
            Diagnostic::new(
                "`packing` is for `causal_lm`: masked-LM texts are encoded one per row",
            )
            .at(recipe.value_location(&join(at, "packing")))
            .help("remove `packing`"),
        );
    }
    if let ModelInput::Init { init } = &p.model {
        let encoder = init.arch == Arch::Bert;
        if encoder != (p.objective == PretrainObjective::MaskedLm) {
            let (what, help) = if encoder {
                (
                    "a BERT encoder cannot be trained with `causal_lm`",
                    "set `objective: masked_lm`, or init a decoder (`arch: gpt2` or `llama`)",
                )
            } else {
                (
                    "`masked_lm` trains an encoder",
                    "init one with `arch: bert` (and a `wordpiece` tokenizer, which has [MASK]), or use `objective: causal_lm`",
                )
            };
            diags.push(
                Diagnostic::new(format!(
                    "stage `{}`: {what}",
                    at.trim_start_matches("stages.")
                ))
                .at(recipe.value_location(&join(&join(at, "model.init"), "arch")))
                .help(help),
            );
        }
        if p.tokenizer.is_none() {
            diags.push(
                Diagnostic::new("a new model (`model: { init }`) needs a `tokenizer`")
                    .at(recipe.key_location(&join(at, "model")))
                    .help("add `tokenizer: { from: <tokenizer stage> }`"),
            );
        }
        if init.heads == 0
            || init.d_model % init.heads != 0
            || (init.d_model / init.heads.max(1)) % 2 != 0
        {
            diags.push(
                Diagnostic::new(format!(
                    "d_model {} must split into {} heads of an even size",
                    init.d_model, init.heads
                ))
                .at(recipe.value_location(&join(&join(at, "model.init"), "heads"))),
            );
        }
        if init
            .kv_heads
            .is_some_and(|kv| kv == 0 || init.heads % kv != 0)
        {
            diags.push(
                Diagnostic::new("heads must be a multiple of kv_heads")
                    .at(recipe.value_location(&join(&join(at, "model.init"), "kv_heads"))),
            );
        }
        if p.max_length > init.context {
            diags.push(
                Diagnostic::new(format!(
                    "max_length {} exceeds the model's context {}",
                    p.max_length, init.context
                ))
                .at(recipe.value_location(&join(at, "max_length"))),
            );
        }
    }
    check_train(recipe, at, &p.train, diags);
}

fn check_sft(
    recipe: &Recipe,
    at: &str,
    p: &crate::recipe::types::SftSpec,
    diags: &mut Diagnostics,
) {
    use crate::recipe::types::{ModelInput, PeftSpec, SftTask};
    if p.task == SftTask::Classification {
        reject_guards(
            recipe,
            at,
            [p.forgetting_probe.is_some(), p.replay.is_some()],
            "language-model SFT (`instruction`, `chat`), not `classification`",
            diags,
        );
    }
    if let Some(r) = &p.replay
        && !(r.ratio > 0.0 && r.ratio.is_finite())
    {
        diags.push(
            Diagnostic::new(format!("replay ratio must be above 0, not {}", r.ratio))
                .at(recipe.value_location(&join(at, "replay.ratio"))),
        );
    }
    if matches!(p.model, ModelInput::Init { .. }) && p.tokenizer.is_none() {
        diags.push(
            Diagnostic::new("a new model (`model: { init }`) needs a `tokenizer`")
                .at(recipe.key_location(&join(at, "model")))
                .help("fine-tune a pretrained model instead: `model: { from: <pretrain stage> }`"),
        );
    }
    if let Some(PeftSpec::Lora(l)) = &p.peft
        && l.r == 0
    {
        diags.push(
            Diagnostic::new("LoRA rank `r` must be at least 1")
                .at(recipe.value_location(&join(at, "peft.r"))),
        );
    }
    check_train(recipe, at, &p.train, diags);
}

fn check_evaluate(
    recipe: &Recipe,
    at: &str,
    e: &crate::recipe::types::EvaluateSpec,
    diags: &mut Diagnostics,
) {
    if e.models.is_empty() {
        diags.push(
            Diagnostic::new(format!("`{at}` evaluates no model"))
                .at(recipe.value_location(&join(at, "models")))
                .help("name the models to compare: `models: { base: { from: pretrain }, sft: { from: sft } }`"),
        );
    }
    for name in e.models.keys() {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            diags.push(
                Diagnostic::new(format!("model name `{name}` in `{at}` is not a plain name"))
                    .at(recipe.key_location(&join(&join(at, "models"), name)))
                    .help("use letters, digits, `_` and `-`: it names a column of the results"),
            );
        }
    }
    if e.perplexity.is_none()
        && e.qa.is_none()
        && e.classification.is_none()
        && e.samples.is_none()
        && e.reward.is_none()
    {
        diags.push(
            Diagnostic::new(format!("`{at}` has nothing to measure"))
                .at(recipe.key_location(at))
                .help(
                    "add at least one of `perplexity`, `qa`, `classification`, `samples`, `reward`",
                ),
        );
    }
    if let Some(r) = &e.reward {
        let reward = join(at, "reward");
        if r.samples == Some(0) {
            diags.push(
                Diagnostic::new("`reward.samples` must be at least 1")
                    .at(recipe.value_location(&join(&reward, "samples")))
                    .help("leave it out to score greedy answers only"),
            );
        }
        if r.temperature.is_some_and(|t| !(t > 0.0 && t.is_finite())) {
            diags.push(
                Diagnostic::new("`reward.temperature` must be above 0")
                    .at(recipe.value_location(&join(&reward, "temperature")))
                    .help("sampled answers need a temperature; 1.0 samples the model as it is"),
            );
        }
        if r.temperature.is_some() && r.samples.is_none() {
            diags.push(
                Diagnostic::new("`reward.temperature` is set but `reward.samples` is not")
                    .at(recipe.key_location(&join(&reward, "temperature")))
                    .help("add `samples: 8` to also score sampled answers"),
            );
        }
    }
}

fn check_reward(
    recipe: &Recipe,
    at: &str,
    r: &crate::recipe::types::RewardSpec,
    diags: &mut Diagnostics,
) {
    use crate::recipe::types::ModelInput;
    if matches!(r.model, ModelInput::Init { .. }) && r.tokenizer.is_none() {
        diags.push(
            Diagnostic::new("a new model (`model: { init }`) needs a `tokenizer`")
                .at(recipe.key_location(&join(at, "model"))),
        );
    }
    if !(r.center_rewards >= 0.0 && r.center_rewards.is_finite()) {
        diags.push(
            Diagnostic::new("`center_rewards` is a coefficient >= 0 (0.01 is typical)")
                .at(recipe.value_location(&join(at, "center_rewards"))),
        );
    }
    check_train(recipe, at, &r.train, diags);
}

fn check_dpo(
    recipe: &Recipe,
    at: &str,
    d: &crate::recipe::types::DpoSpec,
    diags: &mut Diagnostics,
) {
    use crate::train::preference::DpoLoss;
    if !(d.beta > 0.0 && d.beta.is_finite()) {
        diags.push(
            Diagnostic::new(format!("`beta` must be above 0, not {}", d.beta))
                .at(recipe.value_location(&join(at, "beta"))),
        );
    }
    if !(0.0..0.5).contains(&d.label_smoothing) {
        diags.push(
            Diagnostic::new("`label_smoothing` is a share of mislabelled pairs in [0, 0.5)")
                .at(recipe.value_location(&join(at, "label_smoothing"))),
        );
    }
    if d.reference.is_some() && (!d.loss.uses_reference() || d.reference_free) {
        diags.push(
            Diagnostic::new("this loss uses no reference model, so `reference` would be ignored")
                .at(recipe.key_location(&join(at, "reference")))
                .help("remove `reference`, or pick a loss that compares with one"),
        );
    }
    if d.kto && d.loss != DpoLoss::Sigmoid {
        diags.push(
            Diagnostic::new("`kto: true` replaces `loss`; set one or the other")
                .at(recipe.key_location(&join(at, "loss"))),
        );
    }
    if d.label_column.is_some() && !d.kto {
        diags.push(
            Diagnostic::new("`label_column` is unpaired feedback, which only KTO trains on")
                .at(recipe.key_location(&join(at, "label_column")))
                .help("add `kto: true`, or give pairs (prompt, chosen, rejected) without `label_column`"),
        );
    }
    if d.completion_column.is_some() && d.label_column.is_none() {
        diags.push(
            Diagnostic::new("`completion_column` names the answers of unpaired feedback, but there is no `label_column`")
                .at(recipe.key_location(&join(at, "completion_column")))
                .help("add `label_column: label` (and `kto: true`), or remove `completion_column`"),
        );
    }
    check_train(recipe, at, &d.train, diags);
}

fn check_grpo(
    recipe: &Recipe,
    at: &str,
    g: &crate::recipe::types::GrpoSpec,
    diags: &mut Diagnostics,
) {
    let r = &g.reward;
    if r.model.is_none() && r.exact_match.is_none() && r.length.is_none() && r.regex.is_none() {
        diags.push(
            Diagnostic::new(format!("`{at}.reward` gives no reward"))
                .at(recipe.key_location(&join(at, "reward")))
                .help("set `model: { from: <reward stage> }`, or a rule: `exact_match: <answer column>`, `length: { min, max }`, `regex: ...`"),
        );
    }
    if let Some(re) = &r.regex
        && let Err(e) = regex::Regex::new(re)
    {
        diags.push(
            Diagnostic::new(format!("invalid regular expression: {e}"))
                .at(recipe.value_location(&join(at, "reward.regex"))),
        );
    }
    if let Some(l) = &r.length
        && l.min > l.max
    {
        diags.push(
            Diagnostic::new(format!("length rule: min {} is above max {}", l.min, l.max))
                .at(recipe.key_location(&join(at, "reward.length"))),
        );
    }
    if g.group_size < 2 {
        diags.push(
            Diagnostic::new(
                "`group_size` must be at least 2: advantages compare answers within a group",
            )
            .at(recipe.value_location(&join(at, "group_size"))),
        );
    }
    check_train(recipe, at, &g.train, diags);
}

fn check_ppo(
    recipe: &Recipe,
    at: &str,
    p: &crate::recipe::types::PpoSpec,
    diags: &mut Diagnostics,
) {
    if p.ppo_epochs == 0 {
        diags.push(
            Diagnostic::new("`ppo_epochs` must be at least 1")
                .at(recipe.value_location(&join(at, "ppo_epochs"))),
        );
    }
    for (key, v) in [
        ("kl_coef", p.kl_coef),
        ("vf_coef", p.vf_coef),
        ("cliprange", p.cliprange),
        ("cliprange_value", p.cliprange_value),
    ] {
        if !(v >= 0.0 && v.is_finite()) {
            diags.push(
                Diagnostic::new(format!("`{key}` must be a number >= 0, not {v}"))
                    .at(recipe.value_location(&join(at, key))),
            );
        }
    }
    if !(0.0..=1.0).contains(&p.gamma) || !(0.0..=1.0).contains(&p.lam) {
        diags.push(
            Diagnostic::new("`gamma` and `lam` are in [0, 1]").at(recipe
                .key_location(&join(at, "gamma"))
                .or(recipe.key_location(at))),
        );
    }
    check_train(recipe, at, &p.train, diags);
}

/// The settings every training stage needs to train at all.
fn check_train(
    recipe: &Recipe,
    at: &str,
    train: &crate::train::trainer::TrainConfig,
    diags: &mut Diagnostics,
) {
    if train.batch_size == 0 || train.epochs == 0 || train.lr <= 0.0 {
        diags.push(
            Diagnostic::new("`train` needs batch_size >= 1, epochs >= 1 and lr > 0")
                .at(recipe.key_location(&join(at, "train"))),
        );
    }
}

/// `forgetting_probe` and `replay` where they cannot work: one error per key set.
fn reject_guards(
    recipe: &Recipe,
    at: &str,
    set: [bool; 2],
    works_with: &str,
    diags: &mut Diagnostics,
) {
    for (key, set) in ["forgetting_probe", "replay"].into_iter().zip(set) {
        if set {
            diags.push(
                Diagnostic::new(format!("`{key}` works with {works_with}"))
                    .at(recipe.key_location(&join(at, key))),
            );
        }
    }
}
