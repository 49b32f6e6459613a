#!/usr/bin/env python3
"""Builds tests/fixtures/dpo_parity.json: for the tiny GPT-2 fixture as the policy and a
perturbed copy of it as the reference, two preference pairs (token ids, right-padded), the
reference log-probabilities, the DPO sigmoid loss (beta 0.1, mean over pairs) and its gradients
with respect to the token embeddings (tied to the LM head) and the first block's c_attn weight,
computed by PyTorch + transformers.

Run by hand: python3 scripts/make_dpo_fixture.py (needs torch + transformers). The Rust test
tests/it/dpo_parity.rs reads the file and needs no Python.
"""
import json
import pathlib

import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel

ROOT = pathlib.Path(__file__).resolve().parent.parent
BETA = 0.1
# (prompt, chosen, rejected) token ids.
PAIRS = [([5, 17, 42], [8, 99, 3], [21, 64]), ([7, 30], [12, 40, 41, 2], [9])]


def batch(side: int):
    rows = [p + (c if side == 0 else r) for p, c, r in PAIRS]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    pad = torch.zeros(len(rows), width, dtype=torch.long)
    target = torch.zeros(len(rows), width)
    for i, ((p, c, r), row) in enumerate(zip(PAIRS, rows)):
        ids[i, : len(row)] = torch.tensor(row)
        pad[i, : len(row)] = 1
        target[i, len(p): len(row)] = 1.0
    return rows, ids, pad, target


def logps(model, ids, pad, target):
    logits = model(input_ids=ids, attention_mask=pad).logits
    lp = torch.log_softmax(logits[:, :-1], dim=-1).gather(2, ids[:, 1:, None]).squeeze(2)
    return (lp * target[:, 1:]).sum(1)


def main() -> None:
    policy = GPT2LMHeadModel.from_pretrained(ROOT / "tests/fixtures/models/gpt2").float().eval()
    reference = GPT2LMHeadModel.from_pretrained(ROOT / "tests/fixtures/models/gpt2").float().eval()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    chosen, rejected = batch(0), batch(1)
    with torch.no_grad():
        ref_c, ref_r = logps(reference, *chosen[1:]), logps(reference, *rejected[1:])
    pol_c, pol_r = logps(policy, *chosen[1:]), logps(policy, *rejected[1:])
    delta = (pol_c - ref_c) - (pol_r - ref_r)
    loss = -F.logsigmoid(BETA * delta).mean()
    loss.backward()
    out = {
        "beta": BETA,
        "pairs": [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PAIRS],
        "ref_chosen": ref_c.tolist(),
        "ref_rejected": ref_r.tolist(),
        "policy_chosen": pol_c.tolist(),
        "policy_rejected": pol_r.tolist(),
        "loss": loss.item(),
        "grad_wte": policy.transformer.wte.weight.grad.flatten().tolist(),
        "grad_c_attn_0": policy.transformer.h[0].attn.c_attn.weight.grad.flatten().tolist(),
    }
    path = ROOT / "tests/fixtures/dpo_parity.json"
    path.write_text(json.dumps(out))
    print(f"{path.relative_to(ROOT)}: loss {out['loss']:.8f}")


if __name__ == "__main__":
    main()
