#!/usr/bin/env python3
"""Builds the golden-parity fixtures under tests/fixtures/models/: tiny random-weight HF
checkpoints (GPT-2, Llama with grouped-query attention, BERT) and their reference outputs for a
fixed, padded batch, computed by transformers.

Run by hand (needs torch + transformers from PyPI):
    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install torch transformers safetensors
    /tmp/venv/bin/python scripts/make_model_fixtures.py [models] [heads] [mlm] [families] [windows] [phi3] [dense_2026] [starcoder2] [moe] [gpt_oss] [gpt_oss_mxfp4] [gemma_for_gguf] [gguf] [gpt_oss_gguf] [spm]
The Rust tests read the committed files and need no Python.
"""
import json
import pathlib

import torch
from transformers import (BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM)

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "models"

# Second row is right-padded (pad id 0, attention mask 0).
INPUT_IDS = [[5, 17, 42, 8, 99, 3, 21, 64], [7, 7, 30, 12, 0, 0, 0, 0]]
MASK = [[1] * 8, [1, 1, 1, 1, 0, 0, 0, 0]]
TOKEN_TYPES = [[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0, 0, 0]]


def randomize(model: torch.nn.Module, scale: float) -> None:
    """Larger-than-default random weights, so activations are far from zero and a wrong
    transpose, swapped norm parameter or misplaced rotation shows up clearly."""
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            is_norm = "ln" in name or "norm" in name.lower() or "LayerNorm" in name
            if is_norm and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(scale * noise)


def rows(t: torch.Tensor) -> list:
    return t.detach().to(torch.float32).tolist()


def save(name: str, model: torch.nn.Module, outputs: dict, **save_args) -> None:
    d = OUT / name
    model.save_pretrained(d, safe_serialization=True, **save_args)
    (d / "generation_config.json").unlink(missing_ok=True)
    ref = {"input_ids": INPUT_IDS, "attention_mask": MASK, **outputs}
    (d / "reference.json").write_text(json.dumps(ref))
    size = sum(f.stat().st_size for f in d.iterdir())
    print(f"{d.relative_to(ROOT)}: {size / 1024:.0f} KiB")


def main() -> None:
    torch.manual_seed(0)
    ids, mask = torch.tensor(INPUT_IDS), torch.tensor(MASK)

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    randomize(gpt2, 0.2)
    gpt2.eval()
    with torch.no_grad():
        out = gpt2(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    save("gpt2", gpt2, {"logits": rows(out.logits), "last_hidden": rows(out.hidden_states[-1])})

    llama = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=64, rope_theta=10000.0, rms_norm_eps=1e-6,
                                         tie_word_embeddings=False, attention_bias=False))
    randomize(llama, 0.2)
    llama.eval()
    with torch.no_grad():
        out = llama(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    save("llama", llama, {"logits": rows(out.logits), "last_hidden": rows(out.hidden_states[-1])})

    bert = BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=64, type_vocab_size=2,
                                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    randomize(bert, 0.2)
    bert.eval()
    with torch.no_grad():
        out = bert(input_ids=ids, attention_mask=mask, token_type_ids=torch.tensor(TOKEN_TYPES))
    save("bert", bert, {"token_type_ids": TOKEN_TYPES, "last_hidden": rows(out.last_hidden_state),
                        "pooled": rows(out.pooler_output)})


def heads() -> None:
    """Sequence-classification / scalar-score heads: GPT-2 with 3 labels, Llama with a scalar
    (reward-model) head, BERT with 2 labels. Padding uses pad id 0, declared in the config, so
    transformers pools decoders at the last non-pad token as hone does from the mask."""
    from transformers import (BertForSequenceClassification, GPT2ForSequenceClassification,
                              LlamaForSequenceClassification)
    torch.manual_seed(1)
    ids, mask = torch.tensor(INPUT_IDS), torch.tensor(MASK)
    gpt2 = GPT2ForSequenceClassification(GPT2Config(vocab_size=100, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, num_labels=3,
                                                    pad_token_id=0))
    llama = LlamaForSequenceClassification(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
                                                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                       max_position_embeddings=64, rms_norm_eps=1e-6, num_labels=1,
                                                       pad_token_id=0))
    bert = BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=4, intermediate_size=64,
                                                    max_position_embeddings=64, hidden_dropout_prob=0.0,
                                                    attention_probs_dropout_prob=0.0, num_labels=2))
    for name, model in [("gpt2-cls", gpt2), ("llama-score", llama), ("bert-cls", bert)]:
        randomize(model, 0.2)
        model.eval()
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask)
        save(name, model, {"scores": rows(out.logits)})


def mlm() -> None:
    """BertForMaskedLM: the `cls.predictions` head (dense, GELU, LayerNorm, tied decoder, bias)."""
    from transformers import BertForMaskedLM
    torch.manual_seed(2)
    ids, mask = torch.tensor(INPUT_IDS), torch.tensor(MASK)
    bert = BertForMaskedLM(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                                      attention_probs_dropout_prob=0.0))
    randomize(bert, 0.2)
    bert.tie_weights()
    bert.eval()
    with torch.no_grad():
        out = bert(input_ids=ids, attention_mask=mask)
    save("bert-mlm", bert, {"logits": rows(out.logits)})


def families() -> None:
    """The Llama-architecture families and rotary scalings beyond Llama 2: Llama 3's `llama3`
    scaling, YaRN, dynamic NTK (with a context shorter than the batch, so it acts), linear,
    attention biases on q/k/v/o, Qwen2 (q/k/v biases) and Qwen3 (per-head q/k norms, a head_dim
    that is not hidden/heads). Small original contexts make every scaling change the outputs."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM
    ids, mask = torch.tensor(INPUT_IDS), torch.tensor(MASK)
    shape = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                 tie_word_embeddings=False)
    rope = lambda **p: {"rope_theta": 10000.0, **p}
    models = {
        "llama3-rope": LlamaForCausalLM(LlamaConfig(**shape, max_position_embeddings=64, rope_parameters=rope(
            rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
            original_max_position_embeddings=16))),
        "llama-yarn": LlamaForCausalLM(LlamaConfig(**shape, max_position_embeddings=64, rope_parameters=rope(
            rope_type="yarn", factor=4.0, original_max_position_embeddings=16))),
        "llama-dynamic": LlamaForCausalLM(LlamaConfig(**shape, max_position_embeddings=6, rope_parameters=rope(
            rope_type="dynamic", factor=2.0))),
        "llama-linear-bias": LlamaForCausalLM(LlamaConfig(**shape, max_position_embeddings=64, attention_bias=True,
                                                          rope_parameters=rope(rope_type="linear", factor=3.0))),
        "qwen2": Qwen2ForCausalLM(Qwen2Config(**shape, max_position_embeddings=64, rope_parameters=rope())),
        "qwen3": Qwen3ForCausalLM(Qwen3Config(**shape, head_dim=16, max_position_embeddings=64,
                                              rope_parameters=rope())),
    }
    for name, model in models.items():
        torch.manual_seed(3)
        randomize(model, 0.2)
        model.eval()
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        save(name, model, {"logits": rows(out.logits), "last_hidden": rows(out.hidden_states[-1])})

    # Gemma 3: sliding layers (window 4, shorter than the batch) and a full one, each with
    # its rotary base (the full layers linearly scaled), a head_dim that is not hidden/heads and
    # a query_pre_attn_scalar that is not head_dim, tied embeddings.
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig
    gemma = Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24, sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"], max_position_embeddings=64,
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 100000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}))
    torch.manual_seed(3)
    randomize(gemma, 0.2)
    gemma.eval()
    with torch.no_grad():
        out = gemma(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    save("gemma3", gemma, {"logits": rows(out.logits), "last_hidden": rows(out.hidden_states[-1])})

    sharded_bf16("qwen3", models["qwen3"])


def windows() -> None:
    """Families whose attention is windowed or capped, windows shorter than the batch so they
    act: Mistral (every layer through a window of 3), Gemma 2 (soft-capped attention and
    logits, every other layer through a window of 4, no q/k norms), and a multimodal Gemma 3
    checkpoint (`Gemma3ForConditionalGeneration`, a tiny vision tower) whose text decoder hone
    runs: the reference is its logits on text alone."""
    from transformers import (Gemma2Config, Gemma2ForCausalLM, Gemma3Config, Gemma3ForConditionalGeneration,
                              Gemma3TextConfig, MistralConfig, MistralForCausalLM, SiglipVisionConfig)
    ids, mask = torch.tensor(INPUT_IDS), torch.tensor(MASK)
    shape = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=64)
    text = dict(shape, num_hidden_layers=3, head_dim=16, query_pre_attn_scalar=24, sliding_window=4)
    models = {
        "mistral-window": MistralForCausalLM(MistralConfig(**shape, sliding_window=3, tie_word_embeddings=False)),
        "gemma2": Gemma2ForCausalLM(Gemma2Config(**text, attn_logit_softcapping=2.0, final_logit_softcapping=3.0)),
        "gemma3-multimodal": Gemma3ForConditionalGeneration(Gemma3Config(
            text_config=Gemma3TextConfig(**text).to_dict(),
            vision_config=SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, image_size=28, patch_size=14).to_dict(),
            mm_tokens_per_image=4)),
    }
    for name, model in models.items():
        torch.manual_seed(3)
        randomize(model, 0.2)
        model.eval()
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        save(name, model, {"logits": rows(out.logits), "last_hidden": rows(out.hidden_states[-1])})


def phi3() -> None:
    """Phi-3 (fused qkv_proj and gate_up_proj, half the head rotated, LongRoPE within its
    original context so the short factors act, a sliding window of 5) and a Phi-4-mini-like
    one (3/4 of the head rotated, tied embeddings, an original context of 4 shorter than the
    batch so the long factors act)."""
    from transformers import Phi3Config, Phi3ForCausalLM
    ids, mask = torch.tensor(INPUT_IDS), torch.tensor(MASK)
    shape = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, pad_token_id=0)
    models = {
        "phi3": Phi3ForCausalLM(Phi3Config(
            **shape, max_position_embeddings=64, original_max_position_embeddings=16, sliding_window=5,
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                             "short_factor": [1.0, 1.5], "long_factor": [3.0, 7.0],
                             "original_max_position_embeddings": 16})),
        "phi4-mini": Phi3ForCausalLM(Phi3Config(
            **shape, max_position_embeddings=64, original_max_position_embeddings=4, tie_word_embeddings=True,
            rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
                             "short_factor": [1.0, 1.2, 1.4], "long_factor": [2.0, 5.0, 11.0],
                             "original_max_position_embeddings": 4})),
    }
    for name, model in models.items():
        torch.manual_seed(3)
        randomize(model, 0.2)
        model.eval()
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        save(name, model, {"logits": rows(out.logits), "last_hidden": rows(out.hidden_states[-1])})


def sharded_bf16(name: str, model: torch.nn.Module, shard: str = "40KB") -> None:
    """`model` stored as bf16 in shards of at most `shard` (model.safetensors.index.json), as
    checkpoints above a few GB are, under `<name>-sharded-bf16`; the reference is the saved
    files loaded back in f32, as hone loads them (a model cast to bf16 and back in memory would
    also have rounded its rotary frequencies)."""
    from transformers import AutoModelForCausalLM
    ids, mask = torch.tensor(INPUT_IDS), torch.tensor(MASK)
    sharded = f"{name}-sharded-bf16"
    save(sharded, model.to(torch.bfloat16), {}, max_shard_size=shard)
    model.to(torch.float32)
    back = AutoModelForCausalLM.from_pretrained(OUT / sharded, dtype=torch.float32).eval()
    with torch.no_grad():
        out = back(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    ref = {"input_ids": INPUT_IDS, "attention_mask": MASK, "logits": rows(out.logits),
           "last_hidden": rows(out.hidden_states[-1])}
    (OUT / sharded / "reference.json").write_text(json.dumps(ref))


def dense_2026() -> None:
    """Dense families of 2025-26 on the Llama layers: SmolLM3 (every second layer NoPE, no
    rotation at all; windows of 3 on those with `use_sliding_window`, shorter than the batch;
    tied embeddings, its default) and OLMo 2 (norms after attention and the MLP, q and k
    normalised over all heads, attention biases, GQA)."""
    from transformers import Olmo2Config, Olmo2ForCausalLM, SmolLM3Config, SmolLM3ForCausalLM
    ids, mask = torch.tensor(INPUT_IDS), torch.tensor(MASK)
    shape = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64, rope_parameters={"rope_theta": 10000.0},
                 pad_token_id=0, bos_token_id=1, eos_token_id=2)
    models = {
        "smollm3": SmolLM3ForCausalLM(SmolLM3Config(**shape, num_hidden_layers=3, no_rope_layer_interval=2,
                                                    use_sliding_window=True, sliding_window=3)),
        "olmo2": Olmo2ForCausalLM(Olmo2Config(**shape, num_hidden_layers=2, attention_bias=True)),
        # As llama.cpp runs them: SmolLM3 without rotation in every fourth layer (its fixed
        # step), no windows; OLMo 2 without biases, its head untied.
        "smollm3-gguf": SmolLM3ForCausalLM(SmolLM3Config(**shape, num_hidden_layers=4)),
        "olmo2-gguf": Olmo2ForCausalLM(Olmo2Config(**shape, num_hidden_layers=2)),
    }
    for name, model in models.items():
        torch.manual_seed(3)
        randomize(model, 0.2)
        model.eval()
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        save(name, model, {"logits": rows(out.logits), "last_hidden": rows(out.hidden_states[-1])})
        if not name.endswith("-gguf"):
            sharded_bf16(name, model)


def starcoder2() -> None:
    """StarCoder2, the family added as one folder after the decoder stack: LayerNorms with
    biases, biases on every projection, a non-gated GELU (tanh) MLP (`c_fc`, `c_proj`), a window
    of 3 on every layer (shorter than the batch), tied embeddings (its default)."""
    from transformers import Starcoder2Config, Starcoder2ForCausalLM
    ids, mask = torch.tensor(INPUT_IDS), torch.tensor(MASK)
    model = Starcoder2ForCausalLM(Starcoder2Config(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        sliding_window=3, pad_token_id=0, bos_token_id=1, eos_token_id=2))
    torch.manual_seed(3)
    randomize(model, 0.2)
    model.eval()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    save("starcoder2", model, {"logits": rows(out.logits), "last_hidden": rows(out.hidden_states[-1])})
    sharded_bf16("starcoder2", model, shard="16KB")


def moe() -> None:
    """Qwen3-MoE: `qwen3_moe` (8 experts, 2 per token renormalised, layer 1 dense by
    `mlp_only_layers`) and `qwen3_moe-step2` (every second layer sparse, probabilities not
    renormalised). The reference holds the load-balancing loss transformers adds to the loss
    (`output_router_logits`) over the padded batch, too."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
    ids, mask = torch.tensor(INPUT_IDS), torch.tensor(MASK)
    shape = dict(vocab_size=100, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                 rope_parameters={"rope_theta": 10000.0, "rope_type": "default"}, num_experts=8,
                 num_experts_per_tok=2, router_aux_loss_coef=0.01, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    models = {
        "qwen3_moe": Qwen3MoeForCausalLM(Qwen3MoeConfig(**shape, num_hidden_layers=3, norm_topk_prob=True,
                                                        mlp_only_layers=[1])),
        # As llama.cpp's qwen3moe runs them: every layer sparse, top-k renormalised.
        "qwen3_moe-gguf": Qwen3MoeForCausalLM(Qwen3MoeConfig(**shape, num_hidden_layers=2, norm_topk_prob=True)),
        "qwen3_moe-step2": Qwen3MoeForCausalLM(Qwen3MoeConfig(**shape, num_hidden_layers=2, norm_topk_prob=False,
                                                              decoder_sparse_step=2)),
    }
    for name, model in models.items():
        torch.manual_seed(3)
        randomize(model, 0.2)
        model.eval()
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_router_logits=True)
        save(name, model, {"logits": rows(out.logits), "last_hidden": rows(out.hidden_states[-1]),
                           "aux_loss": out.aux_loss.item()})
        if name == "qwen3_moe":
            sharded_bf16(name, model)


def gpt_oss() -> None:
    """gpt-oss: attention sinks (one learned logit per head), sliding and full layers in turn
    (window 3, shorter than the batch), YaRN without truncation, biases on attention, a
    router with a bias whose top 2 of 4 logits are softmaxed, and experts with biases and the
    clamped, interleaved SwiGLU (limit 1.0 here, so the clamp bites), stored fused
    `[experts, in, out]`. Sinks drawn at unit scale so they matter. The reference holds the
    load-balancing loss too."""
    from transformers import GptOssConfig, GptOssForCausalLM
    ids, mask = torch.tensor(INPUT_IDS), torch.tensor(MASK)
    model = GptOssForCausalLM(GptOssConfig(
        vocab_size=100, hidden_size=32, intermediate_size=16, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, num_local_experts=4, num_experts_per_tok=2, sliding_window=3,
        max_position_embeddings=64, swiglu_limit=1.0, router_aux_loss_coef=0.01,
        rope_parameters={"rope_type": "yarn", "factor": 2.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                         "original_max_position_embeddings": 32, "rope_theta": 10000.0},
        pad_token_id=0, bos_token_id=1, eos_token_id=2))
    torch.manual_seed(3)
    randomize(model, 0.2)
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        for layer in model.model.layers:
            layer.self_attn.sinks.copy_(torch.randn(layer.self_attn.sinks.shape, generator=g))
    model.eval()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_router_logits=True)
    save("gpt_oss", model, {"logits": rows(out.logits), "last_hidden": rows(out.hidden_states[-1]),
                            "aux_loss": out.aux_loss.item()})
    sharded_bf16("gpt_oss", model, shard="16KB")


FP4_VALUES = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def mxfp4(w: torch.Tensor) -> tuple:
    """gpt-oss experts `[experts, in, out]` as its released files store them: `_blocks`
    `[experts, out, in / 32, 16]` (two E2M1 codes a byte, the even element low) and `_scales`
    `[experts, out, in / 32]` (E8M0: the power of two, biased by 127, that puts each block's
    largest value within the codes' 6)."""
    t = w.transpose(1, 2).contiguous()
    e, rows, cols = t.shape
    groups = t.reshape(e, rows, cols // 32, 32)
    amax = groups.abs().amax(-1)
    exp = torch.where(amax > 0, torch.floor(torch.log2(amax)) - 2 + 127, torch.zeros_like(amax)).clamp(0, 254)
    scaled = groups / torch.pow(2.0, exp - 127)[..., None]
    codes = (scaled[..., None] - torch.tensor(FP4_VALUES)).abs().argmin(-1).to(torch.uint8)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).contiguous(), exp.to(torch.uint8).contiguous()


def gpt_oss_mxfp4() -> None:
    """`gpt_oss-mxfp4`: a gpt-oss whose expert weights are stored as the released checkpoints
    store them, MXFP4 `_blocks` and `_scales` (widths of 32, whole blocks), with their
    `quantization_config`; the reference is what transformers computes after dequantising them
    itself (on a CPU it always does)."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, GptOssConfig, GptOssForCausalLM
    ids, mask = torch.tensor(INPUT_IDS), torch.tensor(MASK)
    model = GptOssForCausalLM(GptOssConfig(
        vocab_size=100, hidden_size=32, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, num_local_experts=4, num_experts_per_tok=2, sliding_window=3,
        max_position_embeddings=64, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        pad_token_id=0, bos_token_id=1, eos_token_id=2))
    torch.manual_seed(3)
    randomize(model, 0.2)
    d = OUT / "gpt_oss-mxfp4"
    model.save_pretrained(d, safe_serialization=True)
    (d / "generation_config.json").unlink(missing_ok=True)
    tensors = load_file(d / "model.safetensors")
    for name in [n for n in tensors if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        tensors[name + "_blocks"], tensors[name + "_scales"] = mxfp4(tensors.pop(name))
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((d / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    (d / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    back = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    with torch.no_grad():
        out = back(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    ref = {"input_ids": INPUT_IDS, "attention_mask": MASK, "logits": rows(out.logits),
           "last_hidden": rows(out.hidden_states[-1])}
    (d / "reference.json").write_text(json.dumps(ref))
    size = sum(f.stat().st_size for f in d.iterdir())
    print(f"{d.relative_to(ROOT)}: {size / 1024:.0f} KiB")


def gemma_for_gguf() -> None:
    """Gemma 2 and Gemma 3 as llama.cpp runs them (attention scaled by the head size, its layer
    patterns: every other layer sliding for Gemma 2, five of six for Gemma 3), so hone can
    write them as GGUF: `gemma2-gguf`, `gemma3-gguf`."""
    from transformers import Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig
    ids, mask = torch.tensor(INPUT_IDS), torch.tensor(MASK)
    text = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=64, head_dim=16,
                query_pre_attn_scalar=16, sliding_window=4)
    models = {
        "gemma2-gguf": Gemma2ForCausalLM(Gemma2Config(**text, attn_logit_softcapping=2.0, final_logit_softcapping=3.0)),
        "gemma3-gguf": Gemma3ForCausalLM(Gemma3TextConfig(
            **text, rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                                     "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})),
    }
    for name, model in models.items():
        torch.manual_seed(3)
        randomize(model, 0.2)
        model.eval()
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        save(name, model, {"logits": rows(out.logits), "last_hidden": rows(out.hidden_states[-1])})


def gguf_files() -> None:
    """The qwen2, qwen3, qwen3_moe-gguf, smollm3-gguf and olmo2-gguf fixtures as GGUF files in
    llama.cpp's layout (F32 tensors, so the HF reference applies unchanged; SmolLM3's q and k
    rows permuted as llama.cpp's converter permutes Llama's, OLMo 2's post-norms under their
    names): `<fixture>.gguf` beside their directories. The
    qwen2 file is checked by loading it back with transformers (`gguf_file=`) and comparing
    logits."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM

    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    parts = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
             "self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight",
             "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
             "mlp.down_proj.weight": "ffn_down.weight", "self_attn.o_proj.weight": "attn_output.weight"}
    for proj in "qkv":
        for kind in ("weight", "bias"):
            parts[f"self_attn.{proj}_proj.{kind}"] = f"attn_{proj}.{kind}"
    parts["mlp.gate.weight"] = "ffn_gate_inp.weight"
    olmo2_parts = {**parts, "post_attention_layernorm.weight": "attn_post_norm.weight",
                   "post_feedforward_layernorm.weight": "ffn_post_norm.weight"}

    def permute(w: np.ndarray, heads: int) -> np.ndarray:
        """llama.cpp's rotary layout for q and k (convert_hf_to_gguf's LlamaModel.permute)."""
        return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    for arch, fixture in (("qwen2", "qwen2"), ("qwen3", "qwen3"), ("qwen3moe", "qwen3_moe-gguf"),
                          ("smollm3", "smollm3-gguf"), ("olmo2", "olmo2-gguf")):
        d = OUT / fixture
        config = json.loads((d / "config.json").read_text())
        path = OUT / f"{fixture}.gguf"
        w = gguf.GGUFWriter(str(path), arch)
        w.add_context_length(config["max_position_embeddings"])
        w.add_embedding_length(config["hidden_size"])
        w.add_feed_forward_length(config["intermediate_size"])
        w.add_block_count(config["num_hidden_layers"])
        w.add_head_count(config["num_attention_heads"])
        w.add_head_count_kv(config["num_key_value_heads"])
        w.add_layer_norm_rms_eps(config["rms_norm_eps"])
        w.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
        head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        # A byte-level vocabulary of the model's size (transformers reads vocab_size from it):
        # the first 100 characters of GPT-2's byte alphabet, no merges.
        alphabet = [chr(c) for c in range(ord("!"), ord("~") + 1)] + [chr(c) for c in range(0xA1, 0xAD)]
        w.add_tokenizer_model("gpt2")
        w.add_token_list(alphabet[:config["vocab_size"]])
        w.add_token_types([1] * config["vocab_size"])
        w.add_token_merges([])
        tensors = load_file(str(d / "model.safetensors"))
        if arch == "qwen3moe":
            # llama.cpp stacks each layer's experts: ffn_{gate,up,down}_exps, [experts, out, in].
            experts = config["num_local_experts"]
            w.add_expert_count(experts)
            w.add_expert_used_count(config["num_experts_per_tok"])
            w.add_expert_feed_forward_length(config["moe_intermediate_size"])
            for layer in range(config["num_hidden_layers"]):
                for proj in ("gate", "up", "down"):
                    key = lambda e: f"model.layers.{layer}.mlp.experts.{e}.{proj}_proj.weight"
                    stacked = np.stack([tensors.pop(key(e)) for e in range(experts)])
                    w.add_tensor(f"blk.{layer}.ffn_{proj}_exps.weight", stacked.astype(np.float32))
        for name, value in tensors.items():
            if name.startswith("model.layers."):
                layer, rest = name[len("model.layers."):].split(".", 1)
                gname = f"blk.{layer}.{(olmo2_parts if arch == 'olmo2' else parts)[rest]}"
            else:
                gname, rest = names[name], None
            if arch == "smollm3" and rest in ("self_attn.q_proj.weight", "self_attn.k_proj.weight"):
                heads = config["num_attention_heads" if rest.startswith("self_attn.q") else "num_key_value_heads"]
                value = permute(value, heads)
            w.add_tensor(gname, value.astype(np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        if arch in ("qwen3", "qwen3moe", "smollm3", "olmo2"):
            # transformers' GGUF config mapping for qwen3 ignores attention.key_length (it
            # assumes head_dim 128), so it cannot read this tiny file back; its tensor names
            # are the ones it maps (it reports only their sizes as mismatched).
            print(f"{path.relative_to(ROOT)}: {path.stat().st_size / 1024:.0f} KiB")
            continue
        ref = json.loads((d / "reference.json").read_text())
        back = AutoModelForCausalLM.from_pretrained(OUT, gguf_file=path.name, dtype=torch.float32).eval()
        with torch.no_grad():
            logits = back(input_ids=torch.tensor(INPUT_IDS), attention_mask=torch.tensor(MASK)).logits
        diff = max(abs(a - b) for r1, r2 in zip(rows(logits), ref["logits"]) for t1, t2 in zip(r1, r2)
                   for a, b in zip(t1, t2))
        print(f"{path.relative_to(ROOT)}: {path.stat().st_size / 1024:.0f} KiB, transformers reads it back "
              f"within {diff:.1e} of the reference logits")
    gpt_oss_gguf()


def gpt_oss_gguf() -> None:
    """`gpt_oss-mxfp4.gguf`: the gpt_oss-mxfp4 fixture as llama.cpp's converter writes a
    released gpt-oss: its MXFP4 experts repacked into ggml's blocks (the scale byte first, then
    element j low and j + 16 high, where HF packs neighbours), gate and up rows taken apart
    into `ffn_gate_exps` and `ffn_up_exps` (biases too), the sinks as `attn_sinks`, the pre-MLP
    norm as `post_attention_norm`, the router as `ffn_gate_inp`; everything else F32. Same
    values, so the HF fixture's reference applies."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    d = OUT / "gpt_oss-mxfp4"
    config = json.loads((d / "config.json").read_text())
    path = OUT / "gpt_oss-mxfp4.gguf"
    w = gguf.GGUFWriter(str(path), "gpt-oss")
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_block_count(config["num_hidden_layers"])
    w.add_head_count(config["num_attention_heads"])
    w.add_head_count_kv(config["num_key_value_heads"])
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
    w.add_key_length(config["head_dim"])
    w.add_value_length(config["head_dim"])
    w.add_expert_count(config["num_local_experts"])
    w.add_expert_used_count(config["num_experts_per_tok"])
    w.add_expert_feed_forward_length(config["intermediate_size"])
    w.add_sliding_window(config["sliding_window"])
    alphabet = [chr(c) for c in range(ord("!"), ord("~") + 1)] + [chr(c) for c in range(0xA1, 0xAD)]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(alphabet[:config["vocab_size"]])
    w.add_token_types([1] * config["vocab_size"])
    w.add_token_merges([])

    def ggml_mxfp4(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
        codes = np.stack([blocks & 0x0F, blocks >> 4], axis=-1).reshape(*blocks.shape[:-1], 32)
        packed = codes[..., :16] | (codes[..., 16:] << 4)
        out = np.concatenate([scales[..., None], packed], axis=-1).astype(np.uint8)
        return out.reshape(*out.shape[:-2], -1)

    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    parts = {"input_layernorm.weight": "attn_norm.weight",
             "post_attention_layernorm.weight": "post_attention_norm.weight",
             "self_attn.o_proj.weight": "attn_output.weight", "self_attn.o_proj.bias": "attn_output.bias",
             "self_attn.sinks": "attn_sinks.weight", "mlp.router.weight": "ffn_gate_inp.weight",
             "mlp.router.bias": "ffn_gate_inp.bias", "mlp.experts.down_proj_bias": "ffn_down_exps.bias"}
    for proj in "qkv":
        for kind in ("weight", "bias"):
            parts[f"self_attn.{proj}_proj.{kind}"] = f"attn_{proj}.{kind}"
    tensors = load_file(str(d / "model.safetensors"))
    for name, value in tensors.items():
        if name in names:
            w.add_tensor(names[name], value.astype(np.float32))
            continue
        layer, rest = name[len("model.layers."):].split(".", 1)
        blk = f"blk.{layer}"
        if rest == "mlp.experts.gate_up_proj_blocks":
            scales = tensors[name.replace("_blocks", "_scales")]
            for parity, g in ((0, "gate"), (1, "up")):
                w.add_tensor(f"{blk}.ffn_{g}_exps.weight", ggml_mxfp4(value[:, parity::2], scales[:, parity::2]),
                             raw_dtype=gguf.GGMLQuantizationType.MXFP4)
        elif rest == "mlp.experts.down_proj_blocks":
            scales = tensors[name.replace("_blocks", "_scales")]
            w.add_tensor(f"{blk}.ffn_down_exps.weight", ggml_mxfp4(value, scales),
                         raw_dtype=gguf.GGMLQuantizationType.MXFP4)
        elif rest == "mlp.experts.gate_up_proj_bias":
            w.add_tensor(f"{blk}.ffn_gate_exps.bias", value[:, 0::2].astype(np.float32))
            w.add_tensor(f"{blk}.ffn_up_exps.bias", value[:, 1::2].astype(np.float32))
        elif rest.endswith("_scales"):
            continue
        else:
            w.add_tensor(f"{blk}.{parts[rest]}", value.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    back = gguf.GGUFReader(str(path))
    gate = next(t for t in back.tensors if t.name == "blk.0.ffn_gate_exps.weight")
    print(f"{path.relative_to(ROOT)}: {path.stat().st_size / 1024:.0f} KiB, "
          f"ffn_gate_exps {gate.tensor_type.name} {list(gate.shape)}")


def spm() -> None:
    """A SentencePiece (`tokenizer.ggml.model = llama`) vocabulary in a tensor-less GGUF,
    `spm-llama.gguf`, learned from the car texts: byte tokens, a control token and a
    user-defined one; and `spm-llama.json`, the ids transformers cuts texts into when it reads
    the tokenizer from that file, and what it decodes them back to."""
    import gguf
    from tokenizers import SentencePieceBPETokenizer
    from transformers import AutoTokenizer

    corpus = []
    for f in sorted((ROOT / "data" / "cars").glob("*.jsonl")):
        for line in f.read_text().splitlines():
            corpus.extend(v for v in json.loads(line).values() if isinstance(v, str))
    learner = SentencePieceBPETokenizer()
    learner.train_from_iterator(corpus, vocab_size=600, min_frequency=2, show_progress=False)
    learned = sorted(learner.get_vocab().items(), key=lambda kv: kv[1])
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["<|user|>", "<think>"]
    types = [2, 3, 3] + [6] * 256 + [3, 4]
    scores = [0.0] * len(tokens)
    for rank, (piece, _) in enumerate(learned):
        if piece not in tokens:
            tokens.append(piece)
            types.append(1)
            scores.append(-float(rank))
    path = OUT / "spm-llama.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_block_count(1)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tok = AutoTokenizer.from_pretrained(OUT, gguf_file=path.name)
    texts = ["The radiator keeps the engine cool.", "  spaces  before, between   and after  ",
             "<|user|> asks <think>why</think>?", "Zebra quagga: ünïcödé 中文 🚗", "line one\nline two\n", ""]
    cases = []
    for text in texts:
        ids = tok(text).input_ids
        cases.append({"text": text, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=True)})
    (OUT / "spm-llama.json").write_text(json.dumps({"cases": cases}, indent=1, ensure_ascii=False))
    print(f"{path.relative_to(ROOT)}: {len(tokens)} tokens, {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    import sys
    parts = {"models": main, "heads": heads, "mlm": mlm, "families": families, "windows": windows, "phi3": phi3, "dense_2026": dense_2026, "starcoder2": starcoder2, "moe": moe, "gpt_oss": gpt_oss, "gpt_oss_mxfp4": gpt_oss_mxfp4, "gemma_for_gguf": gemma_for_gguf, "gguf": gguf_files, "gpt_oss_gguf": gpt_oss_gguf, "spm": spm}
    for part in sys.argv[1:] or list(parts):
        parts[part]()
