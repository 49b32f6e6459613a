#!/usr/bin/env python3
"""PyTorch baseline for benches/train_step.rs, printed as JSON ({"ms_per_step": ...}).

Arguments: case vocab d_model layers heads seq batch warmup steps, where case is
  pretrain  GPT-2 style model, full training, loss on every token;
  sft_lora  Llama style model (2 key/value heads), PEFT LoRA r=8 alpha=16 on q_proj/v_proj,
            loss on the second half of each sequence (labels -100 on the first half).
Each step: forward, backward, global-norm clipping to 1.0, AdamW (PyTorch defaults, lr 1e-4),
as hone's trainer does it.
"""
import json
import sys
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM


def main() -> None:
    case = sys.argv[1]
    vocab, d, layers, heads, seq, batch, warmup, steps = map(int, sys.argv[2:10])
    torch.manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq))
    labels = ids.clone()
    if case == "pretrain":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=seq, n_embd=d, n_layer=layers,
                                           n_head=heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    elif case == "sft_lora":
        from peft import LoraConfig, get_peft_model
        base = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=d, intermediate_size=688,
                                            num_hidden_layers=layers, num_attention_heads=heads,
                                            num_key_value_heads=2, max_position_embeddings=seq,
                                            tie_word_embeddings=True))
        model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                target_modules=["q_proj", "v_proj"]))
        labels[:, : seq // 2] = -100
    else:
        raise SystemExit(f"unknown case {case}")
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    times.sort()
    ms = times[len(times) // 2] * 1e3
    print(json.dumps({"ms_per_step": ms, "tokens_per_s": batch * seq / (ms / 1e3),
                      "threads": torch.get_num_threads(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
