#!/usr/bin/env python3
"""Builds the golden-parity fixtures under tests/fixtures/models/: tiny random-weight HF
checkpoints (GPT-2, Llama with grouped-query attention, BERT) and their reference outputs for a
fixed, padded batch, computed by transformers.

Run by hand (needs torch + transformers from PyPI):
    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install torch transformers safetensors
    /tmp/venv/bin/python scripts/make_model_fixtures.py [models] [heads] [mlm]
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

    # Stored as bf16 in shards of at most 40 KB (model.safetensors.index.json), as checkpoints
    # above a few GB are. The reference loads them back in f32, as hone does (a model cast to
    # bf16 and back in memory would also have rounded its rotary frequencies).
    name = "qwen3-sharded-bf16"
    save(name, models["qwen3"].to(torch.bfloat16), {}, max_shard_size="40KB")
    back = Qwen3ForCausalLM.from_pretrained(OUT / name, dtype=torch.float32).eval()
    with torch.no_grad():
        out = back(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    ref = {"input_ids": INPUT_IDS, "attention_mask": MASK, "logits": rows(out.logits),
           "last_hidden": rows(out.hidden_states[-1])}
    (OUT / name / "reference.json").write_text(json.dumps(ref))


if __name__ == "__main__":
    import sys
    parts = {"models": main, "heads": heads, "mlm": mlm, "families": families}
    for part in sys.argv[1:] or list(parts):
        parts[part]()
