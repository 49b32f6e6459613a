#!/usr/bin/env python3
"""PyTorch baseline for benches/train_step.rs: training steps of a GPT-2 style model, printed
as JSON ({"ms_per_step": ..., "tokens_per_s": ...}). Arguments: vocab d_model layers heads seq
batch warmup steps."""
import json
import sys
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel


def main() -> None:
    vocab, d, layers, heads, seq, batch, warmup, steps = map(int, sys.argv[1:9])
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=seq, n_embd=d, n_layer=layers, n_head=heads,
                                       resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    ids = torch.randint(0, vocab, (batch, seq))
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    times.sort()
    ms = times[len(times) // 2] * 1e3
    print(json.dumps({"ms_per_step": ms, "tokens_per_s": batch * seq / (ms / 1e3), "threads": torch.get_num_threads(),
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
