#!/usr/bin/env python3
"""transformers + PEFT baseline for benches/scale.rs, printed as one JSON line: LoRA steps on a
checkpoint made by scripts/make_scale_checkpoint.py, and this process's peak RSS.

    python3 scripts/bench_torch_scale.py DIR MODE BATCH SEQ STEPS

MODE: f32 (the base loaded in f32), bf16 (the base in bf16, steps under
torch.autocast("cpu", bfloat16)), nf4 (bitsandbytes 4-bit NF4 with double quantisation, compute in
bf16: QLoRA as PEFT's docs set it up). LoRA r 16, alpha 32 on all seven projections (a Qwen3-MoE's four attention projections and
its experts' fused weights through `target_parameters`), gradient
checkpointing, AdamW lr 1e-4, random token ids (seed 0), 2 threads. The first step is a warm-up;
`step_s` is the median of the others.
"""
import json
import resource
import statistics
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM


def main() -> None:
    path, mode = sys.argv[1], sys.argv[2]
    batch, seq, steps = (int(v) for v in sys.argv[3:6])
    torch.set_num_threads(2)
    torch.manual_seed(0)
    start = time.perf_counter()
    if mode == "nf4":
        from transformers import BitsAndBytesConfig
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16)
        base = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, device_map="cpu")
    else:
        dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[mode]
        base = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    base.enable_input_require_grads()
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    experts = {}
    if base.config.model_type == "qwen3_moe":
        # A mixture of experts: attention's projections, and every expert's fused weights.
        targets = targets[:4]
        experts = dict(target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"])
    model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=targets,
                                            **experts))
    load_s = time.perf_counter() - start
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    vocab = model.config.vocab_size
    times, losses = [], []
    for _ in range(steps + 1):
        ids = torch.randint(0, vocab, (batch, seq))
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode != "f32"):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # Which expert kernel transformers picked for a mixture (its default: `grouped_mm` where
    # PyTorch has it, else `eager`); null for dense models.
    experts = getattr(base.config, "_experts_implementation", None) if base.config.model_type == "qwen3_moe" else None
    print(json.dumps({"load_s": load_s, "step_s": statistics.median(times[1:]), "peak_rss": peak,
                      "losses": losses, "experts_implementation": experts}))


if __name__ == "__main__":
    main()
