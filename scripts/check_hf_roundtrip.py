#!/usr/bin/env python3
"""Checks that models saved by hone load in transformers and PEFT with the same logits.

    cargo run --release --example hf_roundtrip -- /tmp/hone-roundtrip
    python3 scripts/check_hf_roundtrip.py /tmp/hone-roundtrip   # needs torch, transformers, peft
"""
import json
import pathlib
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM


def main() -> None:
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/hone-roundtrip")
    worst_all = 0.0
    for family in ["gpt2", "llama"]:
        d = root / family
        ref = json.loads((d / "logits.json").read_text())
        ids = torch.tensor(ref["input_ids"])
        shape = (*ids.shape, -1)
        base = torch.tensor(ref["base"]).reshape(shape)
        adapted = torch.tensor(ref["adapted"]).reshape(shape)
        with torch.no_grad():
            saved = AutoModelForCausalLM.from_pretrained(d / "saved").eval()
            got_base = saved(ids).logits
            peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(d / "saved"), d / "adapter").eval()
            got_peft = peft(ids).logits
            merged = AutoModelForCausalLM.from_pretrained(d / "merged").eval()
            got_merged = merged(ids).logits
        for name, got, want in [("saved", got_base, base), ("peft adapter", got_peft, adapted), ("merged", got_merged, adapted)]:
            worst = (got - want).abs().max().item()
            worst_all = max(worst_all, worst)
            print(f"{family:6} {name:13} max abs diff vs hone: {worst:.2e}")
    print("OK" if worst_all <= 1e-4 else "MISMATCH")
    sys.exit(0 if worst_all <= 1e-4 else 1)


if __name__ == "__main__":
    main()
