#!/usr/bin/env python3
"""PyTorch + PEFT baseline for benches/lora_memory.rs, printed as JSON: LoRA SFT of a real
checkpoint on the car QA pairs with the settings hone's bench recipe uses, and this process's
peak RSS.

Arguments: gguf_path qa_jsonl epochs batch max_length rank alpha lr [chat_template]
(the template is used when the GGUF ships none, as Gemma 3 270M's does not)
The model is read from the GGUF (dequantised to f32, as hone reads it); prompts go through its
chat template; the loss covers the assistant's tokens only; LoRA on every attention and MLP
projection; AdamW (PyTorch defaults but the lr), global-norm clipping at 1.0, 2 threads.
"""
import json
import os
import pathlib
import resource
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    gguf, qa = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    epochs, batch, max_len, rank = (int(v) for v in sys.argv[3:7])
    alpha, lr = float(sys.argv[7]), float(sys.argv[8])
    torch.set_num_threads(2)
    torch.manual_seed(0)
    start = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if tok.chat_template is None and len(sys.argv) > 9:
        tok.chat_template = sys.argv[9]
    # HONE_BENCH_PRECISION (the bench's setting): the base in that dtype; PEFT keeps adapters in f32.
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[
        os.environ.get("HONE_BENCH_PRECISION", "f32")]
    base = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets))
    rows = [json.loads(line) for line in qa.read_text().splitlines() if line.strip()]
    examples = []
    for r in rows:
        prompt = tok.apply_chat_template([{"role": "user", "content": r["question"]}], add_generation_prompt=True,
                                         tokenize=False)
        whole = tok.apply_chat_template([{"role": "user", "content": r["question"]},
                                         {"role": "assistant", "content": r["answer"]}], tokenize=False)
        p = tok(prompt, add_special_tokens=False).input_ids
        ids = tok(whole, add_special_tokens=False).input_ids[:max_len]
        labels = [-100] * min(len(p), len(ids)) + ids[len(p):]
        examples.append((ids, labels))
    load_s = time.perf_counter() - start
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    model.train()
    tokens, steps = 0, 0
    t0 = time.perf_counter()
    for _ in range(epochs):
        for i in range(0, len(examples), batch):
            chunk = examples[i:i + batch]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.tensor([ids + [0] * (width - len(ids)) for ids, _ in chunk])
            labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in chunk])
            mask = torch.tensor([[1] * len(a) + [0] * (width - len(a)) for a, _ in chunk])
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad()
            tokens += int(mask.sum())
            steps += 1
    train_s = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"steps": steps, "tokens": tokens, "train_s": train_s, "load_s": load_s,
                      "tokens_per_s": tokens / train_s, "peak_rss_kb": peak_kb}))


if __name__ == "__main__":
    main()
