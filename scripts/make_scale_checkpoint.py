#!/usr/bin/env python3
"""Writes a random-weight Llama-family checkpoint shaped like a real one, for benches/scale.rs:
an HF directory (config.json from transformers' LlamaConfig, bf16 safetensors shards and their
index), so hone and transformers + PEFT load the same file. No tokenizer: the bench trains on
random token ids.

    python3 scripts/make_scale_checkpoint.py SHAPE OUT_DIR

SHAPE: smollm2-135m (HuggingFaceTB/SmolLM2-135M's config), llama-3.2-1b, llama-3.2-3b,
llama-3.1-8b (meta-llama's configs), qwen3-30b-a3b-4l (a Qwen3-MoE: 4 of Qwen3-30B-A3B's layers,
its experts stored one by one as the released files store them). The weights are N(0, 0.02) (norms 1), drawn one tensor at
a time and written shard by shard, so even the 8B shape needs about 2 GB of memory to make.
Needs torch, transformers and safetensors.
"""
import json
import pathlib
import sys

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
SHAPES = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
                         max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5),
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True,
                         max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
                         rope_scaling=LLAMA3_ROPE, head_dim=64),
    "llama-3.2-3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True,
                         max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
                         rope_scaling=LLAMA3_ROPE, head_dim=128),
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False,
                         max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
                         rope_scaling={**LLAMA3_ROPE, "factor": 8.0}, head_dim=128),
}
# Qwen3-30B-A3B's layer (Qwen/Qwen3-30B-A3B's config: 128 experts of width 768, 8 per token),
# 4 of its 48 layers, so the bf16 base (6.2 GB) fits the machines the bench runs on.
MOE_SHAPES = {
    "qwen3-30b-a3b-4l": dict(hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
                             num_hidden_layers=4, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
                             num_experts=128, num_experts_per_tok=8, norm_topk_prob=True, vocab_size=151936,
                             tie_word_embeddings=False, max_position_embeddings=40960,
                             rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, rms_norm_eps=1e-6),
}
SHARD_BYTES = 2 << 30


def checkpoint_tensors(name: str, t: torch.Tensor):
    """`(name, tensor)` as checkpoints store them: transformers 5 holds a mixture's experts fused
    (`mlp.experts.gate_up_proj` `[E, 2I, d]`, `mlp.experts.down_proj` `[E, d, I]`), released
    Qwen3-MoE files each expert's projections apart, which transformers fuses as it loads."""
    prefix, _, last = name.rpartition(".")
    if not prefix.endswith("mlp.experts"):
        yield name, t
        return
    for e in range(t.shape[0]):
        if last == "gate_up_proj":
            inner = t.shape[1] // 2
            yield f"{prefix}.{e}.gate_proj.weight", t[e, :inner].contiguous()
            yield f"{prefix}.{e}.up_proj.weight", t[e, inner:].contiguous()
        else:
            yield f"{prefix}.{e}.down_proj.weight", t[e].contiguous()


def main() -> None:
    shape, out = sys.argv[1], pathlib.Path(sys.argv[2])
    if shape in MOE_SHAPES:
        from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
        config = Qwen3MoeConfig(**MOE_SHAPES[shape], bos_token_id=1, eos_token_id=2, dtype="bfloat16")
        with torch.device("meta"):
            model = Qwen3MoeForCausalLM(config)
    else:
        config = LlamaConfig(**SHAPES[shape], bos_token_id=1, eos_token_id=2, dtype="bfloat16")
        with torch.device("meta"):
            model = LlamaForCausalLM(config)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    g = torch.Generator().manual_seed(0)
    shards, shard, size, weight_map = [], {}, 0, {}

    def flush() -> None:
        nonlocal shard, size
        if shard:
            name = f"model-{len(shards) + 1:05d}.safetensors"
            save_file(shard, out / name, metadata={"format": "pt"})
            shards.append((name, list(shard)))
            shard, size = {}, 0

    params = dict(model.named_parameters())
    for name, p in params.items():
        if config.tie_word_embeddings and name == "lm_head.weight":
            continue
        t = torch.ones(p.shape) if "norm" in name else torch.randn(p.shape, generator=g) * 0.02
        for name, t in checkpoint_tensors(name, t.to(torch.bfloat16)):
            if size + t.numel() * 2 > SHARD_BYTES:
                flush()
            shard[name] = t
            size += t.numel() * 2
    flush()
    total = len(shards)
    for i, (name, names) in enumerate(shards):
        final = f"model-{i + 1:05d}-of-{total:05d}.safetensors"
        (out / name).rename(out / final)
        weight_map.update({n: final for n in names})
    n_params = sum(p.numel() for n, p in params.items()
                   if not (config.tie_word_embeddings and n == "lm_head.weight"))
    index = {"metadata": {"total_size": 2 * n_params}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    print(f"{shape}: {n_params / 1e9:.2f}B parameters, {total} shards in {out}")


if __name__ == "__main__":
    main()
