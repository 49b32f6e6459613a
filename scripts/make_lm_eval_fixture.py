#!/usr/bin/env python3
"""lm-evaluation-harness's own numbers for hone's lm-eval parity test (tests/it/lm_eval.rs):
runs the task files in tests/fixtures/lm_eval/ with lm-eval's HF backend on SmolLM2-135M-Instruct
and writes every metric and every document's log-likelihoods and answers to
tests/fixtures/lm_eval/reference.json.

The model is the repository's GGUF (scripts/fetch_models.sh) exported by hone as an HF
directory, which is the same weights (dequantised to f32) and tokenizer that the test loads from
the GGUF:
    cat > /tmp/export.yaml <<YAML
    version: 1
    name: smol-export
    stages:
      export: { kind: export, model: { path: $PWD/models/SmolLM2-135M-Instruct.Q4_1.gguf }, to: smol, dtype: f32 }
    YAML
    hone run /tmp/export.yaml
    python scripts/make_lm_eval_fixture.py /tmp/smol

Needs lm-eval 0.4 (`pip install 'lm-eval==0.4.13' torch transformers`); runs on CPU in f32 with
batch size 1, from the fixture directory (lm-eval reads `data_files` relative to its working
directory; hone reads them relative to the task file, the same files here).
"""
import json
import os
import sys
from pathlib import Path

import lm_eval
from lm_eval.tasks import TaskManager

TASKS = ["mc_2shot", "gen_arith", "ll_qa"]


def main() -> None:
    model_dir = Path(sys.argv[1]).resolve()
    # hone's export writes `hone generate`'s default, `max_new_tokens: 64`, into
    # generation_config.json, and transformers lets it win over lm-eval's `max_gen_toks`.
    gen_config = model_dir / "generation_config.json"
    if gen_config.is_file():
        gc = json.loads(gen_config.read_text())
        if gc.pop("max_new_tokens", None) is not None:
            gen_config.write_text(json.dumps(gc, indent=2))
    fixture = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "lm_eval"
    os.chdir(fixture)
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={model_dir},dtype=float32",
        tasks=TASKS,
        task_manager=TaskManager(include_path=str(fixture)),
        device="cpu",
        batch_size=1,
        log_samples=True,
    )
    reference = {"lm_eval": lm_eval.__version__ if hasattr(lm_eval, "__version__") else "0.4", "tasks": {}}
    for task in TASKS:
        metrics = {
            k.split(",")[0] + ("" if k.endswith(",none") else "_" + k.split(",")[1]): v
            for k, v in out["results"][task].items()
            if "," in k and "_stderr" not in k
        }
        docs = {}
        for s in out["samples"][task]:
            d = docs.setdefault(s["doc_id"], {"doc": s["doc_id"], "filtered": {}})
            args = s["arguments"]
            first = args[0] if isinstance(args, list) else args["gen_args_0"]
            d["context"] = first[0] if isinstance(first, (list, tuple)) else first["arg_0"]
            if task == "gen_arith":
                d["response"] = s["resps"][0][0]
                d["filtered"][s["filter"]] = s["filtered_resps"][0]
            else:
                d["loglikelihoods"] = [float(r[0]) for r in s["filtered_resps"]]
                d["greedy"] = [r[1] == "True" for r in s["filtered_resps"]]
        reference["tasks"][task] = {
            "metrics": metrics,
            "docs": [docs[k] for k in sorted(docs)],
        }
    path = fixture / "reference.json"
    path.write_text(json.dumps(reference, indent=1) + "\n")
    print(f"wrote {path}")
    for task in TASKS:
        print(task, reference["tasks"][task]["metrics"])


if __name__ == "__main__":
    main()
