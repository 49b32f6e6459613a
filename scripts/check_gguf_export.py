#!/usr/bin/env python3
"""Checks a GGUF that hone exported against the model it came from, with llama.cpp's own
Python package and with transformers:

- the `gguf` package reads the file: every tensor dequantises, and the metadata llama.cpp
  needs to run it is there (architecture, shape, tokenizer, special tokens);
- transformers loads it (`gguf_file=`): its tokenizer cuts sample texts into the same ids as
  the reference's, and its logits are within the quantisation's error of the reference's.

    python3 scripts/check_gguf_export.py EXPORT.gguf REFERENCE   # needs torch, transformers, gguf

REFERENCE is an HF directory or another GGUF (the file the model was read from). Prints the
numbers; exits 1 when a check fails.
"""
import pathlib
import sys

import numpy as np
import torch
from gguf import GGUFReader
from gguf.quants import dequantize
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

TEXTS = ["What does the radiator do?", "The capital of France is", "  spaces, digits 12345 and ünïcödé\n"]


def load(path: pathlib.Path):
    if path.suffix == ".gguf":
        kw = {"gguf_file": path.name}
        where = path.parent
    else:
        kw, where = {}, path
    tok = AutoTokenizer.from_pretrained(where, **kw)
    config = AutoConfig.from_pretrained(where, **kw)
    if config.model_type == "gpt2" and kw:
        # transformers reads a gpt2 GGUF's context_length into n_ctx only, leaving
        # n_positions at 1024: any GPT-2 with another context fails to load without this.
        config.n_positions = config.n_ctx
    model = AutoModelForCausalLM.from_pretrained(where, config=config, dtype=torch.float32, **kw).eval()
    return tok, model


def main() -> int:
    export, reference = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    failed = False
    r = GGUFReader(str(export))
    arch = r.fields["general.architecture"].contents()
    need = ["general.architecture", f"{arch}.block_count", f"{arch}.context_length", f"{arch}.embedding_length",
            "tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id",
            "tokenizer.ggml.eos_token_id"]
    missing = [k for k in need if k not in r.fields]
    types = {}
    for t in r.tensors:
        values = dequantize(t.data, t.tensor_type)
        assert np.isfinite(values).all(), t.name
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    print(f"gguf: {arch}, {len(r.tensors)} tensors read back {types}, {len(r.fields)} metadata keys, missing {missing}")
    failed |= bool(missing)
    tok_ref, ref = load(reference)
    tok, got = load(export)
    worst = 0.0
    for text in TEXTS:
        a = tok_ref(text, return_tensors="pt").input_ids
        b = tok(text, return_tensors="pt").input_ids
        if a.tolist() != b.tolist():
            print(f"tokens differ for {text!r}: {a.tolist()} vs {b.tolist()}")
            failed = True
            continue
        with torch.no_grad():
            la, lb = ref(a).logits, got(b).logits
        worst = max(worst, float((la - lb).abs().max()))
        agree = float((la.argmax(-1) == lb.argmax(-1)).float().mean())
        print(f"transformers: {text!r}: same {a.shape[1]} tokens, max |logit diff| {float((la - lb).abs().max()):.4f}, "
              f"argmax agreement {agree:.2f} (logits up to {float(la.abs().max()):.1f})")
    print(f"worst max |logit diff|: {worst:.4f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
