#!/usr/bin/env python3
"""Builds the PEFT parity fixtures under tests/fixtures/peft/: adapters made by PEFT itself on the
tiny Llama checkpoint (tests/fixtures/models/llama), with their factors set to random values so
every term of the forward and backward shows, plus PEFT's outputs and gradients for a fixed batch.

- `dora/`: DoRA + rsLoRA (`use_dora`, `use_rslora`), r 4, alpha 8, every linear layer.
- `rslora/`: rsLoRA alone, r 4, alpha 8, q_proj and v_proj.
- `qwen3_moe-experts/`: on the tiny Qwen3-MoE (tests/fixtures/models/qwen3_moe), r 4, alpha 8,
  q_proj and v_proj, and every expert's fused gate/up and down weights (`target_parameters`).
- `gpt_oss-experts/`: on the tiny gpt-oss (tests/fixtures/models/gpt_oss), r 4, alpha 8, q_proj
  and v_proj, and every expert's fused weights, which gpt-oss stores `[experts, in, out]`.
- `starcoder2-all-linear/`: on the tiny StarCoder2 (tests/fixtures/models/starcoder2), r 4,
  alpha 8, every linear layer (attention's four, the MLP's `c_fc` and `c_proj`).

Each holds PEFT's adapter directory (`adapter_config.json`, `adapter_model.safetensors`) and
`reference.safetensors`: `logits` for the batch below, `weights` (the fixed random tensor the
loss `sum(logits * weights)` is taken with; zero on padding) and `grad.<PEFT name>` for every
trainable tensor. The Rust tests read the committed files and need no Python.

Run by hand (needs torch, transformers, peft, safetensors from PyPI):
    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install torch transformers peft safetensors
    /tmp/venv/bin/python scripts/make_peft_fixtures.py [dora] [rslora] [qwen3_moe-experts] [gpt_oss-experts] [starcoder2-all-linear]
"""
import json
import pathlib

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODELS = ROOT / "tests" / "fixtures" / "models"
OUT = ROOT / "tests" / "fixtures" / "peft"

# Second row is right-padded (attention mask 0), as in make_model_fixtures.py.
INPUT_IDS = [[5, 17, 42, 8, 99, 3, 21, 64], [7, 7, 30, 12, 0, 0, 0, 0]]
MASK = [[1] * 8, [1, 1, 1, 1, 0, 0, 0, 0]]


def saved_name(param_name: str) -> str:
    """The key PEFT's save_pretrained writes for a trainable parameter: the adapter name
    dropped, and for DoRA's magnitude its `.weight` too (get_peft_model_state_dict)."""
    name = param_name.replace(".default", "")
    if name.endswith("lora_magnitude_vector.weight"):
        name = name[: -len(".weight")]
    return name


def build(name: str, config: LoraConfig, base: str = "llama") -> None:
    torch.manual_seed(0)
    BASE = MODELS / base
    model = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32)
    model = get_peft_model(model, config)
    g = torch.Generator().manual_seed(4321)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if not p.requires_grad:
                continue
            noise = torch.randn(p.shape, generator=g)
            if "magnitude" in pname:
                p.mul_(1.0 + 0.2 * noise)  # away from ||W||, so the scale m/n is not 1
            else:
                p.copy_(0.3 * noise)
    d = OUT / name
    model.save_pretrained(d)
    (d / "README.md").unlink(missing_ok=True)  # PEFT's model card template
    config = json.loads((d / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(BASE.relative_to(ROOT))  # not this machine's path
    (d / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    ids, mask = torch.tensor(INPUT_IDS), torch.tensor(MASK)
    logits = model(input_ids=ids, attention_mask=mask).logits
    weights = torch.randn(logits.shape, generator=g) * mask[..., None]
    (logits * weights).sum().backward()
    tensors = {"logits": logits.detach().contiguous(), "weights": weights.contiguous()}
    for pname, p in model.named_parameters():
        if p.requires_grad:
            tensors["grad." + saved_name(pname)] = p.grad.detach().contiguous()
    save_file(tensors, d / "reference.safetensors")
    (d / "batch.json").write_text(json.dumps({"input_ids": INPUT_IDS, "attention_mask": MASK}))
    size = sum(f.stat().st_size for f in d.iterdir())
    print(f"{d.relative_to(ROOT)}: {size / 1024:.0f} KiB, {len(tensors) - 2} gradients")


def main(only: list) -> None:
    builds = {
        "dora": lambda: build("dora", LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", use_dora=True,
                             use_rslora=True, lora_dropout=0.0)),
        "rslora": lambda: build("rslora", LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                               use_rslora=True, lora_dropout=0.0)),
        # Qwen3-MoE's experts through `target_parameters`: one rank-4 update per expert on the
        # fused gate/up and down weights, beside attention's q and v.
        "qwen3_moe-experts": lambda: build("qwen3_moe-experts", LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                          target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
                                          lora_dropout=0.0), base="qwen3_moe"),
        "gpt_oss-experts": lambda: build("gpt_oss-experts", LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                        target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
                                        lora_dropout=0.0), base="gpt_oss"),
        "starcoder2-all-linear": lambda: build("starcoder2-all-linear", LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                              lora_dropout=0.0), base="starcoder2"),
    }
    for name in only or list(builds):
        builds[name]()


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
