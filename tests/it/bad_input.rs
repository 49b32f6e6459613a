//! Malformed recipes and datasets: each must fail with exit code 2, an error that names the
//! place (file:line or the --set), and nothing committed to the store.

use crate::common::{Project, qa_jsonl};

struct Case {
    name: &'static str,
    recipe: &'static str,
    /// Extra files: (path, content).
    files: &'static [(&'static str, &'static str)],
    args: &'static [&'static str],
    /// Every one of these must appear in stderr.
    expect: &'static [&'static str],
}

const HEAD: &str = "version: 1\nname: t\n";

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "qlora misspelt key",
            recipe: "version: 1\nname: t\nstages:\n  d: { kind: dataset, source: { path: d.jsonl } }\n  s: { kind: sft, model: { path: m }, data: { from: d },\n       peft: { method: qlora, r: 8, alhpa: 16 } }\n",
            files: &[("d.jsonl", "{\"prompt\": \"a\", \"response\": \"b\"}\n")],
            args: &[],
            expect: &["unknown key `alhpa`", "did you mean `alpha`", "r.yaml:6:"],
        },
        Case {
            name: "qlora unknown quant",
            recipe: "version: 1\nname: t\nstages:\n  d: { kind: dataset, source: { path: d.jsonl } }\n  s: { kind: sft, model: { path: m }, data: { from: d },\n       peft: { method: qlora, quant: nf5 } }\n",
            files: &[("d.jsonl", "{\"prompt\": \"a\", \"response\": \"b\"}\n")],
            args: &[],
            expect: &["`nf5` is not a valid value", "did you mean `nf4`", "r.yaml:6:"],
        },
        Case {
            name: "yaml syntax",
            recipe: "version: 1\nname: t\nstages: [\n",
            files: &[],
            args: &[],
            expect: &["invalid YAML", "r.yaml:4:"],
        },
        Case {
            name: "empty file",
            recipe: "",
            files: &[],
            args: &[],
            expect: &["is empty", "r.yaml:1:1"],
        },
        Case {
            name: "top level list",
            recipe: "- a\n- b\n",
            files: &[],
            args: &[],
            expect: &["must be a mapping", "r.yaml:1:1"],
        },
        Case {
            name: "missing version",
            recipe: "name: t\nstages:\n  a: { kind: dataset, source: { path: d.jsonl } }\n",
            files: &[],
            args: &[],
            expect: &["missing key `version`", "r.yaml:1:"],
        },
        Case {
            name: "unsupported version",
            recipe: "version: 2\nname: t\nstages:\n  a: { kind: dataset, source: { path: d.jsonl } }\n",
            files: &[],
            args: &[],
            expect: &["version 2 is not supported", "r.yaml:1:10"],
        },
        Case {
            name: "unknown top-level key",
            recipe: "version: 1\nname: t\nsead: 3\nstages:\n  a: { kind: dataset, source: { path: d.jsonl } }\n",
            files: &[],
            args: &[],
            expect: &["unknown key `sead`", "did you mean `seed`", "r.yaml:3:1"],
        },
        Case {
            name: "no stages",
            recipe: "version: 1\nname: t\n",
            files: &[],
            args: &[],
            expect: &["no `stages`", "r.yaml:1:"],
        },
        Case {
            name: "stage without kind",
            recipe: "version: 1\nname: t\nstages:\n  a:\n    source: { path: d.jsonl }\n",
            files: &[],
            args: &[],
            expect: &["has no `kind`", "r.yaml:4:3"],
        },
        Case {
            name: "unknown kind",
            recipe: "version: 1\nname: t\nstages:\n  a:\n    kind: datset\n",
            files: &[],
            args: &[],
            expect: &[
                "unknown stage kind `datset`",
                "did you mean `dataset`",
                "r.yaml:5:11",
            ],
        },
        Case {
            name: "unknown stage key",
            recipe: "version: 1\nname: t\nstages:\n  a:\n    kind: dataset\n    source: { path: d.jsonl }\n    splt: { validation: 0.1 }\n",
            files: &[],
            args: &[],
            expect: &["unknown key `splt`", "did you mean `split`", "r.yaml:7:5"],
        },
        Case {
            name: "wrong type",
            recipe: "version: 1\nname: t\nstages:\n  a:\n    kind: dataset\n    source: { path: d.jsonl }\n    dedup: maybe\n",
            files: &[],
            args: &[],
            expect: &["stages.a.dedup", "invalid type", "r.yaml:7:12"],
        },
        Case {
            name: "nested unknown key",
            recipe: "version: 1\nname: t\nstages:\n  a:\n    kind: dataset\n    source: { path: d.jsonl }\n    split: { validaton: 0.1 }\n",
            files: &[],
            args: &[],
            expect: &[
                "unknown key `validaton`",
                "did you mean `validation`",
                "r.yaml:7:14",
            ],
        },
        Case {
            name: "bad split size",
            recipe: "version: 1\nname: t\nstages:\n  a:\n    kind: dataset\n    source: { path: d.jsonl }\n    split: { validation: 1.5 }\n",
            files: &[],
            args: &[],
            expect: &["neither a fraction", "r.yaml:7:26"],
        },
        Case {
            name: "split leaves nothing",
            recipe: "version: 1\nname: t\nstages:\n  a:\n    kind: dataset\n    source: { path: d.jsonl }\n    split:\n      validation: 0.5\n      test: 0.5\n",
            files: &[],
            args: &[],
            expect: &["leaving no training rows", "r.yaml:8:"],
        },
        Case {
            name: "unknown reference",
            recipe: "version: 1\nname: t\nstages:\n  qa: { kind: dataset, source: { path: d.jsonl } }\n  b:\n    kind: dataset\n    source: { from: qaa }\n",
            files: &[],
            args: &[],
            expect: &["unknown stage `qaa`", "did you mean `qa`", "r.yaml:7:21"],
        },
        Case {
            name: "unknown output",
            recipe: "version: 1\nname: t\nstages:\n  qa: { kind: dataset, source: { path: d.jsonl }, split: { test: 0.2 } }\n  b:\n    kind: dataset\n    source: { from: qa.tset }\n",
            files: &[],
            args: &[],
            expect: &["has no output `tset`", "did you mean `test`", "r.yaml:7:21"],
        },
        Case {
            name: "output of unsplit dataset",
            recipe: "version: 1\nname: t\nstages:\n  qa: { kind: dataset, source: { path: d.jsonl } }\n  b:\n    kind: dataset\n    source: { from: qa.validation }\n",
            files: &[],
            args: &[],
            expect: &[
                "has no output `validation`",
                "produces: train",
                "r.yaml:7:21",
            ],
        },
        Case {
            name: "cycle",
            recipe: "version: 1\nname: t\nstages:\n  a:\n    kind: dataset\n    source: { from: b }\n  b:\n    kind: dataset\n    source: { from: a }\n",
            files: &[],
            args: &[],
            expect: &["cycle: a -> b -> a", "r.yaml:9:21"],
        },
        Case {
            name: "self cycle",
            recipe: "version: 1\nname: t\nstages:\n  a:\n    kind: dataset\n    source: { from: a }\n",
            files: &[],
            args: &[],
            expect: &["cycle: a -> a", "r.yaml:6:21"],
        },
        Case {
            name: "missing source file",
            recipe: "version: 1\nname: t\nstages:\n  a:\n    kind: dataset\n    source: { path: nope.jsonl }\n",
            files: &[],
            args: &[],
            expect: &["`nope.jsonl` not found", "r.yaml:6:21"],
        },
        Case {
            name: "unknown format",
            recipe: "version: 1\nname: t\nstages:\n  a:\n    kind: dataset\n    source: { path: notes.txt }\n",
            files: &[("notes.txt", "hi\n")],
            args: &[],
            expect: &["cannot tell the format", "add `format:`", "r.yaml:6:21"],
        },
        Case {
            name: "bad format name",
            recipe: "version: 1\nname: t\nstages:\n  a:\n    kind: dataset\n    source: { path: d.jsonl, format: jsnl }\n",
            files: &[],
            args: &[],
            expect: &[
                "`jsnl` is not a valid value",
                "did you mean `jsonl`",
                "r.yaml:6:",
            ],
        },
        Case {
            name: "input with from and path",
            recipe: "version: 1\nname: t\nstages:\n  a:\n    kind: dataset\n    source: { from: b, path: d.jsonl }\n",
            files: &[],
            args: &[],
            expect: &["not several", "r.yaml:6:"],
        },
        Case {
            name: "a checkpoint of an architecture hone does not load",
            recipe: "version: 1\nname: t\nstages:\n  a:\n    kind: generate\n    model: { path: m }\n    prompts: { path: p.jsonl }\n",
            files: &[
                ("m/config.json", "{\"model_type\": \"mamba\"}"),
                ("p.jsonl", "{\"prompt\": \"hi\"}\n"),
            ],
            args: &[],
            expect: &["cannot load `m`: unknown architecture `mamba`", "r.yaml:6:"],
        },
        Case {
            name: "a checkpoint in a dtype hone does not read",
            recipe: "version: 1\nname: t\nstages:\n  a:\n    kind: generate\n    model: { path: m }\n    prompts: { path: p.jsonl }\n",
            files: &[
                ("m/config.json", "{\"model_type\": \"gpt2\"}"),
                // A safetensors header (its length, 58, as 8 little-endian bytes) and one byte.
                (
                    "m/model.safetensors",
                    "\u{3a}\0\0\0\0\0\0\0{\"w\":{\"dtype\":\"F8_E4M3\",\"shape\":[1],\"data_offsets\":[0,1]}}x",
                ),
                ("p.jsonl", "{\"prompt\": \"hi\"}\n"),
            ],
            args: &[],
            expect: &["tensor `w`", "has dtype F8_E4M3", "r.yaml:6:"],
        },
        Case {
            name: "every unknown key of the header at once",
            recipe: "version: 1\nname: t\nsede: 3\nbakend: cpu\nstages:\n  a:\n    kind: dataset\n    source: { path: d.jsonl }\n",
            files: &[("d.jsonl", "{\"a\": 1}\n")],
            args: &[],
            expect: &[
                "unknown key `sede` in the recipe",
                "r.yaml:3:1",
                "did you mean `seed`",
                "unknown key `bakend` in the recipe",
                "r.yaml:4:1",
            ],
        },
        Case {
            name: "revision without a hub id",
            recipe: "version: 1\nname: t\nstages:\n  a:\n    kind: generate\n    model: { path: m, revision: main }\n    prompts: { path: p.jsonl }\n",
            files: &[],
            args: &[],
            expect: &["`revision` goes with `hub: org/name`", "r.yaml:6:"],
        },
        Case {
            name: "a hub id that is a path",
            recipe: "version: 1\nname: t\nstages:\n  a:\n    kind: generate\n    model: { hub: ../../etc }\n    prompts: { path: p.jsonl }\n",
            files: &[],
            args: &[],
            expect: &["`../../etc` is not a hub id", "r.yaml:6:"],
        },
        Case {
            name: "input with neither",
            recipe: "version: 1\nname: t\nstages:\n  a:\n    kind: dataset\n    source: { format: csv }\n",
            files: &[],
            args: &[],
            expect: &["needs `from: <stage>`", "r.yaml:6:"],
        },
        Case {
            name: "input key typo",
            recipe: "version: 1\nname: t\nstages:\n  a:\n    kind: dataset\n    source: { form: b }\n",
            files: &[],
            args: &[],
            expect: &["unknown key `form`", "did you mean `from`", "r.yaml:6:15"],
        },
        Case {
            name: "unknown variable",
            recipe: "version: 1\nname: t\nvars: { frac: 0.1 }\nstages:\n  a:\n    kind: dataset\n    source: { path: d.jsonl }\n    split: { validation: \"${fracc}\" }\n",
            files: &[],
            args: &[],
            expect: &[
                "unknown variable `fracc`",
                "did you mean `frac`",
                "r.yaml:8:26",
            ],
        },
        Case {
            name: "unclosed variable",
            recipe: "version: 1\nname: t\nvars: { f: d }\nstages:\n  a:\n    kind: dataset\n    source: { path: \"${f.jsonl\" }\n",
            files: &[],
            args: &[],
            expect: &["unclosed `${`", "r.yaml:7:21"],
        },
        Case {
            name: "variable cycle",
            recipe: "version: 1\nname: t\nvars: { a: \"${b}\", b: \"${a}\" }\nstages:\n  x: { kind: dataset, source: { path: d.jsonl } }\n",
            files: &[],
            args: &[],
            expect: &["cycle", "r.yaml:3:"],
        },
        Case {
            name: "extends missing file",
            recipe: "version: 1\nname: t\nextends: base.yaml\nstages:\n  a: { kind: dataset, source: { path: d.jsonl } }\n",
            files: &[],
            args: &[],
            expect: &["base.yaml not found", "r.yaml:3:10"],
        },
        Case {
            name: "extends cycle",
            recipe: "extends: base.yaml\nversion: 1\nname: t\n",
            files: &[("base.yaml", "extends: r.yaml\nstages: {}\n")],
            args: &[],
            expect: &["`extends` forms a cycle", "r.yaml -> ", "base.yaml"],
        },
        Case {
            name: "error inside extended file",
            recipe: "extends: base.yaml\nname: t\n",
            files: &[(
                "base.yaml",
                "version: 1\nname: base\nstages:\n  a:\n    kind: dataset\n    source: { path: d.jsonl }\n    dedupe: true\n",
            )],
            args: &[],
            expect: &["unknown key `dedupe`", "base.yaml:7:5"],
        },
        Case {
            name: "set without =",
            recipe: "version: 1\nname: t\nstages:\n  a: { kind: dataset, source: { path: d.jsonl } }\n",
            files: &[],
            args: &["--set", "seed"],
            expect: &["path=value", "--set #1 (seed)"],
        },
        Case {
            name: "set into a scalar",
            recipe: "version: 1\nname: t\nstages:\n  a: { kind: dataset, source: { path: d.jsonl } }\n",
            files: &[],
            args: &["--set", "name.x=1"],
            expect: &["`name` is not a mapping", "--set #1"],
        },
        Case {
            name: "set with a typo",
            recipe: "version: 1\nname: t\nstages:\n  a: { kind: dataset, source: { path: d.jsonl } }\n",
            files: &[],
            args: &["--set", "stages.a.dedpu=false"],
            expect: &["unknown key `dedpu`", "did you mean `dedup`", "--set #1"],
        },
        Case {
            name: "defaults for unknown kind",
            recipe: "version: 1\nname: t\ndefaults:\n  datset: { dedup: false }\nstages:\n  a: { kind: dataset, source: { path: d.jsonl } }\n",
            files: &[],
            args: &[],
            expect: &[
                "unknown stage kind `datset`",
                "did you mean `dataset`",
                "r.yaml:4:3",
            ],
        },
        Case {
            name: "bad default merged into stage",
            recipe: "version: 1\nname: t\ndefaults:\n  dataset: { dedupp: false }\nstages:\n  a: { kind: dataset, source: { path: d.jsonl } }\n",
            files: &[],
            args: &[],
            expect: &["unknown key `dedupp`", "r.yaml:4:14"],
        },
        Case {
            name: "stage name with a dot",
            recipe: "version: 1\nname: t\nstages:\n  a.b: { kind: dataset, source: { path: d.jsonl } }\n",
            files: &[],
            args: &[],
            expect: &["may use only letters", "r.yaml:4:3"],
        },
        Case {
            name: "eval dataset with split",
            recipe: "version: 1\nname: t\nstages:\n  a:\n    kind: dataset\n    role: eval\n    source: { path: d.jsonl }\n    split: { test: 0.1 }\n",
            files: &[],
            args: &[],
            expect: &["cannot be split", "r.yaml:8:5"],
        },
        Case {
            name: "bad on_leak",
            recipe: "version: 1\nname: t\nstages:\n  a:\n    kind: dataset\n    source: { path: d.jsonl }\n    on_leak: warm\n",
            files: &[],
            args: &[],
            expect: &[
                "`warm` is not a valid value",
                "did you mean `warn`",
                "r.yaml:7:14",
            ],
        },
        Case {
            name: "bad backend",
            recipe: "version: 1\nname: t\nbackend: tpu\nstages:\n  a: { kind: dataset, source: { path: d.jsonl } }\n",
            files: &[],
            args: &[],
            expect: &["`tpu` is not a valid value", "r.yaml:3:10"],
        },
        Case {
            name: "duplicate rename target",
            recipe: "version: 1\nname: t\nstages:\n  a:\n    kind: dataset\n    source: { path: d.jsonl }\n    columns: { question: text, answer: text }\n",
            files: &[],
            args: &[],
            expect: &["two columns are renamed to `text`", "r.yaml:7:"],
        },
        // Bad data: found when the dataset stage reads it.
        Case {
            name: "invalid JSON line",
            recipe: "version: 1\nname: t\nstages:\n  a: { kind: dataset, source: { path: bad.jsonl } }\n",
            files: &[(
                "bad.jsonl",
                "{\"q\": \"a\"}\n{\"q\": \"b\"}\n{\"q\": \"c\",}\n",
            )],
            args: &[],
            expect: &["invalid JSON", "bad.jsonl:3:"],
        },
        Case {
            name: "JSONL line not an object",
            recipe: "version: 1\nname: t\nstages:\n  a: { kind: dataset, source: { path: bad.jsonl } }\n",
            files: &[("bad.jsonl", "{\"q\": \"a\"}\n[1, 2]\n")],
            args: &[],
            expect: &["must be a JSON object", "bad.jsonl:2:"],
        },
        Case {
            name: "row missing a column",
            recipe: "version: 1\nname: t\nstages:\n  a: { kind: dataset, source: { path: bad.jsonl } }\n",
            files: &[(
                "bad.jsonl",
                "{\"q\": \"a\", \"r\": \"x\"}\n{\"q\": \"b\"}\n",
            )],
            args: &[],
            expect: &["no column `r`", "bad.jsonl:2:", "missing: null"],
        },
        Case {
            name: "column of mixed types",
            recipe: "version: 1\nname: t\nstages:\n  a: { kind: dataset, source: { path: bad.jsonl } }\n",
            files: &[(
                "bad.jsonl",
                "{\"label\": 1}\n{\"label\": 0}\n{\"label\": \"pos\"}\n",
            )],
            args: &[],
            expect: &[
                "column `label` holds text here but integers on line 1",
                "bad.jsonl:3:",
            ],
        },
        Case {
            name: "ragged CSV",
            recipe: "version: 1\nname: t\nstages:\n  a: { kind: dataset, source: { path: bad.csv } }\n",
            files: &[("bad.csv", "text,label\ngood,1\nbad\n")],
            args: &[],
            expect: &["bad CSV record", "bad.csv:3:"],
        },
        Case {
            name: "empty data file",
            recipe: "version: 1\nname: t\nstages:\n  a: { kind: dataset, source: { path: empty.jsonl } }\n",
            files: &[("empty.jsonl", "\n\n")],
            args: &[],
            expect: &["has no rows", "empty.jsonl"],
        },
        Case {
            name: "rename of a missing column",
            recipe: "version: 1\nname: t\nstages:\n  a:\n    kind: dataset\n    source: { path: d.jsonl }\n    columns: { questoin: prompt }\n",
            files: &[],
            args: &[],
            expect: &[
                "`columns` renames `questoin`",
                "did you mean `question`",
                "d.jsonl",
            ],
        },
        Case {
            name: "masked_lm on a decoder",
            recipe: "version: 1\nname: t\nstages:\n  d: { kind: dataset, source: { path: d.jsonl } }\n  tok: { kind: tokenizer, data: { from: d }, column: question }\n  lm:\n    kind: pretrain\n    objective: masked_lm\n    model: { init: { arch: gpt2, layers: 1, d_model: 8, heads: 2, context: 128 } }\n    tokenizer: { from: tok }\n    data: { from: d }\n",
            files: &[],
            args: &[],
            expect: &["`masked_lm` trains an encoder", "arch: bert", "r.yaml:9:28"],
        },
        Case {
            name: "unknown template name",
            recipe: "version: 1\nname: t\nstages:\n  d: { kind: dataset, source: { path: d.jsonl } }\n  s:\n    kind: sft\n    model: { path: m }\n    data: { from: d }\n    template: chatm\n",
            files: &[],
            args: &[],
            expect: &[
                "`chatm` is not a valid value",
                "did you mean `chatml`",
                "r.yaml:9:15",
            ],
        },
        Case {
            name: "grpo scored by a model that is not a reward model",
            recipe: "version: 1\nname: t\nstages:\n  d: { kind: dataset, source: { path: d.jsonl } }\n  g:\n    kind: grpo\n    model: { path: m }\n    prompts: { from: d }\n    prompt_column: question\n    reward: { model: { from: d } }\n",
            files: &[],
            args: &[],
            expect: &["reward.model", "a reward model", "r.yaml:10:"],
        },
        Case {
            name: "grpo verifier without a program, and a timeout of zero",
            recipe: "version: 1\nname: t\nstages:\n  d: { kind: dataset, source: { path: d.jsonl } }\n  g:\n    kind: grpo\n    model: { path: m }\n    prompts: { from: d }\n    reward: { command: [], timeout: 0 }\n",
            files: &[],
            args: &[],
            expect: &[
                "`command` names no program",
                "command: [python3, verify.py]",
                "`timeout: 0` is not a positive number of seconds",
                "r.yaml:9:",
            ],
        },
        Case {
            name: "evaluate with nothing to measure",
            recipe: "version: 1\nname: t\nstages:\n  d: { kind: dataset, source: { path: d.jsonl } }\n  e:\n    kind: evaluate\n    models: {}\n",
            files: &[],
            args: &[],
            expect: &[
                "evaluates no model",
                "r.yaml:7:13",
                "has nothing to measure",
                "r.yaml:5:3",
            ],
        },
        Case {
            name: "evaluate sampling the judge's answers with no samples or a bad temperature",
            recipe: "version: 1\nname: t\nstages:\n  d: { kind: dataset, source: { path: d.jsonl } }\n  e:\n    kind: evaluate\n    models: { base: { path: m } }\n    reward:\n      model: { path: rm }\n      prompts: { from: d }\n      samples: 0\n      temperature: -1\n",
            files: &[],
            args: &[],
            expect: &[
                "`reward.samples` must be at least 1",
                "r.yaml:11:16",
                "`reward.temperature` must be above 0",
                "r.yaml:12:20",
            ],
        },
        Case {
            name: "unpaired feedback without kto",
            recipe: "version: 1\nname: t\nstages:\n  d: { kind: dataset, source: { path: d.jsonl } }\n  k:\n    kind: dpo\n    model: { path: m }\n    data: { from: d }\n    label_column: label\n    completion_column: answer\n",
            files: &[],
            args: &[],
            expect: &[
                "`label_column` is unpaired feedback, which only KTO trains on",
                "r.yaml:9:5",
                "add `kto: true`",
            ],
        },
        Case {
            name: "unpaired feedback with a label that is not true or false",
            recipe: concat!(
                "version: 1\nname: t\nstages:\n  k:\n    kind: dpo\n    kto: true\n    label_column: label\n    model: { path: ",
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/models/gpt2 }\n    data: { path: fb.jsonl }\n"
            ),
            files: &[(
                "fb.jsonl",
                "{\"prompt\": \"a\", \"completion\": \"b\", \"label\": 1}\n{\"prompt\": \"c\", \"completion\": \"d\", \"label\": 2}\n",
            )],
            args: &[],
            expect: &["fb.jsonl:2", "`label` is 2; a label is true or false"],
        },
        Case {
            name: "evaluate of a dataset as a model",
            recipe: "version: 1\nname: t\nstages:\n  d: { kind: dataset, source: { path: d.jsonl } }\n  e:\n    kind: evaluate\n    models: { base: { from: d } }\n    perplexity: { data: { from: d } }\n",
            files: &[],
            args: &[],
            expect: &["models.base", "a model", "r.yaml:7:"],
        },
        Case {
            name: "evaluate check with a typo",
            recipe: "version: 1\nname: t\nstages:\n  d: { kind: dataset, source: { path: d.jsonl } }\n  e:\n    kind: evaluate\n    models: { base: { path: m } }\n    perplexty: { data: { from: d } }\n",
            files: &[],
            args: &[],
            expect: &[
                "unknown key `perplexty`",
                "did you mean `perplexity`",
                "r.yaml:8:5",
            ],
        },
        Case {
            name: "variables that repeat each other exponentially",
            recipe: "version: 1\nname: t\nvars:\n  a0: xxxxxxxxxxxxxxxx\n  a1: ${a0}${a0}${a0}${a0}\n  a2: ${a1}${a1}${a1}${a1}\n  a3: ${a2}${a2}${a2}${a2}\n  a4: ${a3}${a3}${a3}${a3}\n  a5: ${a4}${a4}${a4}${a4}\n  a6: ${a5}${a5}${a5}${a5}\n  a7: ${a6}${a6}${a6}${a6}\n  a8: ${a7}${a7}${a7}${a7}\n  a9: ${a8}${a8}${a8}${a8}\n  a10: ${a9}${a9}${a9}${a9}\n  a11: ${a10}${a10}${a10}${a10}\n  a12: ${a11}${a11}${a11}${a11}\nstages:\n  a: { kind: dataset, source: { path: d.jsonl }, text_column: \"${a12}\" }\n",
            files: &[],
            args: &[],
            expect: &["variables expand to more than 1024 KiB", "r.yaml:"],
        },
        Case {
            name: "variables nested as lists exponentially",
            recipe: "version: 1\nname: t\nvars:\n  l0: [x, x, x, x, x, x, x, x]\n  l1: [\"${l0}\", \"${l0}\", \"${l0}\", \"${l0}\", \"${l0}\", \"${l0}\", \"${l0}\", \"${l0}\"]\n  l2: [\"${l1}\", \"${l1}\", \"${l1}\", \"${l1}\", \"${l1}\", \"${l1}\", \"${l1}\", \"${l1}\"]\n  l3: [\"${l2}\", \"${l2}\", \"${l2}\", \"${l2}\", \"${l2}\", \"${l2}\", \"${l2}\", \"${l2}\"]\n  l4: [\"${l3}\", \"${l3}\", \"${l3}\", \"${l3}\", \"${l3}\", \"${l3}\", \"${l3}\", \"${l3}\"]\n  l5: [\"${l4}\", \"${l4}\", \"${l4}\", \"${l4}\", \"${l4}\", \"${l4}\", \"${l4}\", \"${l4}\"]\n  l6: [\"${l5}\", \"${l5}\", \"${l5}\", \"${l5}\", \"${l5}\", \"${l5}\", \"${l5}\", \"${l5}\"]\n  l7: [\"${l6}\", \"${l6}\", \"${l6}\", \"${l6}\", \"${l6}\", \"${l6}\", \"${l6}\", \"${l6}\"]\nstages:\n  a: { kind: dataset, source: { path: d.jsonl } }\n",
            files: &[],
            args: &[],
            expect: &["variables expand to more than", "r.yaml:"],
        },
        Case {
            name: "extends a directory",
            recipe: "version: 1\nname: t\nextends: base\nstages:\n  a: { kind: dataset, source: { path: d.jsonl } }\n",
            files: &[("base/x.yaml", "version: 1\n")],
            args: &[],
            expect: &["recipe base is not a regular file", "r.yaml:3:10"],
        },
        Case {
            name: "extends a device",
            recipe: "version: 1\nname: t\nextends: /dev/zero\nstages:\n  a: { kind: dataset, source: { path: d.jsonl } }\n",
            files: &[],
            args: &[],
            expect: &["recipe /dev/zero is not a regular file", "r.yaml:3:10"],
        },
        Case {
            name: "a source that is a device",
            recipe: "version: 1\nname: t\nstages:\n  a: { kind: dataset, source: { path: /dev/zero, format: jsonl } }\n",
            files: &[],
            args: &[],
            expect: &["source `/dev/zero` is not a regular file", "r.yaml:4:39"],
        },
        Case {
            name: "a negative gradient clipping norm",
            recipe: "version: 1\nname: t\nstages:\n  s:\n    kind: sft\n    model: { path: m }\n    data: { path: d.jsonl }\n    train: { max_grad_norm: -1 }\n",
            files: &[],
            args: &[],
            expect: &[
                "`max_grad_norm` must be a positive number, not -1",
                "r.yaml:8:29",
                "max_grad_norm: null",
            ],
        },
        Case {
            name: "counts that would overflow the step total",
            recipe: "version: 1\nname: t\nstages:\n  s:\n    kind: sft\n    model: { path: m }\n    data: { path: d.jsonl }\n    train: { epochs: 18446744073709551615, grad_accum: 0, warmup_steps: 1000000000000 }\n",
            files: &[],
            args: &[],
            expect: &[
                "`epochs` must be at most 1000000000, not 18446744073709551615",
                "r.yaml:8:22",
                "`grad_accum` must be at least 1",
                "`warmup_steps` must be at most 1000000000, not 1000000000000",
            ],
        },
        Case {
            name: "a number too large for 64 bits",
            recipe: "version: 1\nname: t\nstages:\n  d:\n    kind: dataset\n    source: { path: d.jsonl }\n    split: { test: 18446744073709551616 }\n",
            files: &[],
            args: &[],
            expect: &["invalid YAML", "r.yaml:7:", "does not fit in 64 bits"],
        },
        Case {
            name: "a stage name longer than YAML allows in a key",
            recipe: Box::leak(
                format!(
                    "version: 1\nname: t\nstages:\n  {}:\n    kind: dataset\n    source: {{ path: d.jsonl }}\n",
                    "a".repeat(5000)
                )
                .into_boxed_str(),
            ),
            files: &[],
            args: &[],
            expect: &["r.yaml:4:", "5000 characters long", "at most 1024"],
        },
        Case {
            name: "an empty CSV file",
            recipe: "version: 1\nname: t\nstages:\n  d: { kind: dataset, source: { path: e.csv } }\n",
            files: &[("e.csv", "")],
            args: &[],
            expect: &["e.csv is empty: no header line and no rows"],
        },
        Case {
            name: "a learning rate and weight decay that are not numbers",
            recipe: "version: 1\nname: t\nstages:\n  s:\n    kind: sft\n    model: { path: m }\n    data: { path: d.jsonl }\n    train: { lr: .nan, weight_decay: .inf }\n",
            files: &[],
            args: &[],
            expect: &[
                "`lr` must be a positive number, not NaN",
                "r.yaml:8:18",
                "`weight_decay` must be a number of at least 0, not inf",
                "r.yaml:8:38",
            ],
        },
        Case {
            name: "a model too large for this machine",
            recipe: "version: 1\nname: t\nstages:\n  tok: { kind: tokenizer, data: { path: d.jsonl }, column: question, vocab_size: 300 }\n  lm:\n    kind: pretrain\n    model: { init: { arch: gpt2, layers: 1000000000, d_model: 64, heads: 4, context: 64 } }\n    tokenizer: { from: tok }\n    data: { path: d.jsonl }\n    column: question\n    max_length: 64\n",
            files: &[],
            args: &[],
            expect: &[
                "needs about",
                "GiB to train",
                "this machine has",
                "r.yaml:7:",
            ],
        },
        Case {
            name: "a model too wide for this machine",
            recipe: "version: 1\nname: t\nstages:\n  tok: { kind: tokenizer, data: { path: d.jsonl }, column: question, vocab_size: 300 }\n  lm:\n    kind: pretrain\n    model: { init: { arch: llama, layers: 2, d_model: 1048576, heads: 4, context: 64 } }\n    tokenizer: { from: tok }\n    data: { path: d.jsonl }\n    column: question\n    max_length: 64\n",
            files: &[],
            args: &[],
            expect: &["GiB to train", "r.yaml:7:"],
        },
        Case {
            name: "a context and max_length of zero",
            recipe: "version: 1\nname: t\nstages:\n  tok: { kind: tokenizer, data: { path: d.jsonl }, column: question, vocab_size: 300 }\n  lm:\n    kind: pretrain\n    model: { init: { arch: gpt2, layers: 1, d_model: 8, heads: 2, context: 0 } }\n    tokenizer: { from: tok }\n    data: { path: d.jsonl }\n    column: question\n    max_length: 0\n",
            files: &[],
            args: &[],
            expect: &[
                "`context` must be at least 1",
                "r.yaml:7:76",
                "`max_length` must be at least 1",
                "r.yaml:11:17",
            ],
        },
        Case {
            name: "a vocabulary no model has",
            recipe: "version: 1\nname: t\nstages:\n  tok: { kind: tokenizer, data: { path: d.jsonl }, column: question, vocab_size: 1000000000000 }\n",
            files: &[],
            args: &[],
            expect: &["vocab_size 1000000000000 is larger than", "r.yaml:4:"],
        },
        Case {
            name: "a name too long for a file name",
            recipe: "version: 1\nname: nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn\nstages:\n  a: { kind: dataset, source: { path: d.jsonl } }\n",
            files: &[],
            args: &[],
            expect: &["`name` must be 1 to 100 characters", "r.yaml:2:7"],
        },
        Case {
            name: "a name with a NUL",
            recipe: "version: 1\nname: \"a\\0b\"\nstages:\n  a: { kind: dataset, source: { path: d.jsonl } }\n",
            files: &[],
            args: &[],
            expect: &["without control characters", "r.yaml:2:7"],
        },
        Case {
            name: "a CSV header that names a column twice",
            recipe: "version: 1\nname: t\nstages:\n  a: { kind: dataset, source: { path: dup.csv } }\n",
            files: &[("dup.csv", "a,a\n1,2\n")],
            args: &[],
            expect: &["the header names column `a` twice", "dup.csv:1:1"],
        },
        Case {
            name: "a Parquet file that is not Parquet",
            recipe: "version: 1\nname: t\nstages:\n  a: { kind: dataset, source: { path: g.parquet } }\n",
            files: &[("g.parquet", "this is not parquet\n")],
            args: &[],
            expect: &["is not a readable Parquet file", "g.parquet:1:1"],
        },
        Case {
            name: "a split that leaves nothing to train on",
            recipe: "version: 1\nname: t\nstages:\n  a: { kind: dataset, source: { path: d.jsonl }, split: { validation: 0.99 } }\n",
            files: &[],
            args: &[],
            expect: &[
                "leaving none to train on",
                "r.yaml:4:57",
                "hold out fewer rows",
            ],
        },
    ]
}

#[test]
fn every_malformed_input_fails_with_a_located_error_and_writes_nothing() {
    let all = cases();
    assert!(
        all.len() >= 30,
        "the suite must cover at least 30 cases, has {}",
        all.len()
    );
    let mut failures = Vec::new();
    for case in &all {
        let p = Project::new();
        p.write("d.jsonl", &qa_jsonl(10, 0));
        for (path, text) in case.files {
            p.write(path, text);
        }
        p.write("r.yaml", case.recipe);
        let mut args = vec!["run", "r.yaml"];
        args.extend(case.args);
        let run = p.hone(&args);
        let err = run.stderr();
        let mut problems = Vec::new();
        if run.code() != 2 {
            problems.push(format!("exit code {} (want 2)", run.code()));
        }
        for want in case.expect {
            if !err.contains(want) {
                problems.push(format!("stderr lacks {want:?}"));
            }
        }
        if p.actions() != 0 || p.blobs() != 0 {
            problems.push(format!(
                "store was written: {} actions, {} blobs",
                p.actions(),
                p.blobs()
            ));
        }
        if !problems.is_empty() {
            failures.push(format!(
                "case `{}`: {}\n--- stderr ---\n{err}",
                case.name,
                problems.join("; ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}

#[test]
fn validation_reports_every_error_at_once() {
    let p = Project::new();
    p.write(
        "r.yaml",
        &format!(
            "{HEAD}stages:\n  a:\n    kind: dataset\n    source: {{ path: nope.jsonl }}\n  b:\n    kind: dataset\n    source: {{ from: zzz }}\n  c:\n    kind: dataset\n    source: {{ from: a }}\n    splt: {{}}\n  d:\n    kind: dataset\n    source: {{ from: c }}\n"
        ),
    );
    let run = p.hone(&["validate", "r.yaml"]);
    assert_eq!(run.code(), 2);
    let err = run.stderr();
    assert!(
        err.contains("`nope.jsonl` not found")
            && err.contains("unknown stage `zzz`")
            && err.contains("unknown key `splt`"),
        "{err}"
    );
    assert!(
        !err.contains("unknown stage `c`"),
        "a stage that failed to parse is not also 'unknown': {err}"
    );
    assert!(err.contains("3 errors"), "{err}");
}

/// Every problem of a stage's settings is reported in one pass (unknown keys, nested maps
/// included, and a value of the wrong type), in the order written, each at its own line and
/// column.
#[test]
fn every_unknown_key_of_a_stage_is_reported_at_once() {
    let p = Project::new();
    p.write("d.jsonl", &qa_jsonl(10, 0));
    p.write(
        "r.yaml",
        &format!(
            "{HEAD}stages:\n  a:\n    kind: dataset\n    source: {{ path: d.jsonl }}\n  lm:\n    kind: pretrain\n    model: {{ init: {{ arch: gpt2, layers: 1, d_model: 32, heads: 2, context: 32 }} }}\n    data: {{ from: a }}\n    max_lenght: 32\n    train: {{ epochz: 2, batch_size: 8, lr: oops, warmup: 3 }}\n"
        ),
    );
    let run = p.hone(&["validate", "r.yaml"]);
    assert_eq!(run.code(), 2);
    let err = run.stderr();
    let found: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(found.len(), 4, "{err}");
    assert!(
        found[0].contains("unknown key `max_lenght` in `stages.lm`"),
        "{err}"
    );
    assert!(
        found[1].contains("unknown key `epochz` in `stages.lm.train`"),
        "{err}"
    );
    assert!(
        found[2].contains("`stages.lm.train.lr`: invalid type"),
        "{err}"
    );
    assert!(
        found[3].contains("unknown key `warmup` in `stages.lm.train`"),
        "{err}"
    );
    for at in [
        "r.yaml:11:5",
        "r.yaml:12:14",
        "r.yaml:12:44",
        "r.yaml:12:50",
    ] {
        assert!(err.contains(at), "{at} missing: {err}");
    }
    assert!(err.contains("4 errors"), "{err}");
}

#[test]
fn validation_never_creates_a_store() {
    let p = Project::new();
    p.write("d.jsonl", &qa_jsonl(5, 0));
    p.write(
        "r.yaml",
        &format!("{HEAD}stages:\n  a: {{ kind: dataset, source: {{ path: d.jsonl }} }}\n"),
    );
    p.hone(&["validate", "r.yaml"]).ok();
    p.hone(&["status", "r.yaml"]).ok();
    p.hone(&["plan", "r.yaml"]).ok();
    p.hone(&["dag", "r.yaml"]).ok();
    assert!(
        !p.store().exists(),
        "read-only commands must not create .hone/"
    );
}

/// Inputs whose cost grows without bound unless hone bounds it: each must end, quickly, in a
/// clear error (exit 2), never in an abort or a hang.
#[test]
fn small_inputs_cannot_ask_for_unbounded_work() {
    use std::time::{Duration, Instant};
    let p = Project::new();
    p.write("d.jsonl", &qa_jsonl(10, 0));
    // `extends: [next, next]` twenty deep: 2^20 reads unless the count is bounded.
    for i in 0..20 {
        p.write(
            &format!("b{i}.yaml"),
            &format!("extends: [b{n}.yaml, b{n}.yaml]\n", n = i + 1),
        );
    }
    p.write("b20.yaml", "seed: 1\n");
    p.write(
        "chain.yaml",
        "version: 1\nname: t\nextends: b0.yaml\nstages:\n  a: { kind: dataset, source: { path: d.jsonl } }\n",
    );
    // A recipe larger than any recipe: read up to the limit, not until memory runs out.
    let mut big = String::from(
        "version: 1\nname: t\nstages:\n  a: { kind: dataset, source: { path: d.jsonl } }\n",
    );
    while big.len() < (2 << 20) {
        big.push_str("# padding padding padding padding padding padding padding padding\n");
    }
    p.write("big.yaml", &big);
    // A source that is a FIFO: reading or hashing it would block for ever.
    let fifo = p.path("pipe.jsonl");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    p.write(
        "fifo.yaml",
        "version: 1\nname: t\nstages:\n  a: { kind: dataset, source: { path: pipe.jsonl } }\n",
    );
    // A JSONL file with a byte that is not UTF-8 on its third line.
    let mut bad_utf8 = qa_jsonl(2, 0).into_bytes();
    bad_utf8.extend_from_slice(b"{\"question\": \"caf\xe9\"}\n");
    std::fs::write(p.path("latin1.jsonl"), bad_utf8).unwrap();
    p.write(
        "latin1.yaml",
        "version: 1\nname: t\nstages:\n  a: { kind: dataset, source: { path: latin1.jsonl } }\n",
    );
    // Flow collections nested 160,000 deep (320 KB), and flow mappings 25,000 deep: the YAML
    // parser's time grows with the square of the depth (32 s at 160 KB before the check).
    let nested = |open: &str, close: &str, n: usize| {
        format!(
            "version: 1\nname: t\nx: {}1{}\nstages:\n  a: {{ kind: dataset, source: {{ path: d.jsonl }} }}\n",
            open.repeat(n),
            close.repeat(n)
        )
    };
    p.write("deep.yaml", &nested("[", "]", 160_000));
    p.write("deepmap.yaml", &nested("{a: ", "}", 25_000));
    let deep_set = format!(
        "stages.a.split={}0.1{}",
        "[".repeat(60_000),
        "]".repeat(60_000)
    );
    p.write(
        "plain.yaml",
        "version: 1\nname: t\nstages:\n  a: { kind: dataset, source: { path: d.jsonl } }\n",
    );
    let cases: [(&[&str], &[&str]); 10] = [
        (
            &["validate", "deep.yaml"],
            &[
                "nests `[` and `{` deeper than 128 levels",
                "deep.yaml:3:132",
            ],
        ),
        (
            &["validate", "deepmap.yaml"],
            &[
                "nests `[` and `{` deeper than 128 levels",
                "deepmap.yaml:3:",
            ],
        ),
        (
            &["validate", "plain.yaml", "--set", &deep_set],
            &[
                "the value nests `[` and `{` deeper than 128 levels",
                "--set",
            ],
        ),
        (
            &["run", "latin1.yaml"],
            &["not UTF-8 text", "latin1.jsonl:3:18"],
        ),
        (
            &["validate", "chain.yaml"],
            &["`extends` reaches too far", ".yaml:1:"],
        ),
        (&["run", "big.yaml"], &["big.yaml is larger than 1024 KiB"]),
        (
            &["run", "/dev/zero"],
            &["recipe /dev/zero is not a regular file"],
        ),
        (
            &["validate", "fifo.yaml"],
            &["source `pipe.jsonl` is not a regular file", "fifo.yaml:4:"],
        ),
        (
            &["run", "fifo.yaml"],
            &["source `pipe.jsonl` is not a regular file"],
        ),
        (
            &["status", "fifo.yaml"],
            &["source `pipe.jsonl` is not a regular file"],
        ),
    ];
    for (args, expect) in cases {
        let started = Instant::now();
        let run = p.hone(args);
        let err = run.stderr();
        assert_eq!(run.code(), 2, "{args:?}: {err}");
        for want in expect {
            assert!(
                err.contains(want),
                "{args:?}: stderr lacks {want:?}:\n{err}"
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{args:?} took {:?}",
            started.elapsed()
        );
    }
}
