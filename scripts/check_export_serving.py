#!/usr/bin/env python3
"""Checks that an HF export serves as hone trained it: transformers loads it, renders the
prompt with its chat template (tokenizer_config.json) and generates with its generation
defaults (generation_config.json); the answer is compared with `hone generate` on the same
directory, and the model card's own Python snippet (README.md) is run as written and must
print the same answer. With --adapter, also loads a PEFT adapter export onto the given base.

    python3 scripts/check_export_serving.py dist/car-assistant "What does the alternator do?"
    python3 scripts/check_export_serving.py --adapter dist/adapter --base BASE_DIR "prompt"
needs torch, transformers (and peft for --adapter).
"""
import argparse
import contextlib
import io
import os
import re
import subprocess

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def transformers_answer(model, tok, prompt):
    ids = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt"
    )
    if not torch.is_tensor(ids):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids))
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def card_answer(model_dir, prompt):
    """Runs the model card's transformers snippet as a reader would paste it."""
    card = open(os.path.join(model_dir, "README.md")).read()
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    snippet = snippet.replace("<this directory>", model_dir).replace('"..."', repr(prompt))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(snippet, {})
    return out.getvalue().strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("prompt")
    ap.add_argument("--adapter", action="store_true", help="MODEL is a PEFT adapter export")
    ap.add_argument("--base", help="the base model of the adapter")
    ap.add_argument("--hone", default="target/release/hone")
    a = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(a.model)
    if a.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(a.base), a.model)
        model = model.merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(a.model)
    model.eval()
    print("chat template:", repr(tok.chat_template)[:120])
    print("eos:", tok.eos_token, "generation eos ids:", model.generation_config.eos_token_id)
    got = transformers_answer(model, tok, a.prompt)
    print("transformers:", repr(got))
    if not a.adapter:
        hone = subprocess.run(
            [a.hone, "generate", "--model", a.model, "--prompt", a.prompt],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        print("hone:        ", repr(hone))
        card = card_answer(a.model, a.prompt)
        print("model card:  ", repr(card))
        same = hone == got == card
        print("same answer" if same else "DIFFERENT ANSWERS")
        raise SystemExit(0 if same else 1)


if __name__ == "__main__":
    main()
