#!/usr/bin/env python3
"""Reference outputs of the real checkpoints (fetched by scripts/fetch_models.sh), recorded
as small JSON fixtures for the Rust tests:

- tests/fixtures/minilm_embeddings.json: sentence-transformers embeddings of a few sentences
  with models/all-MiniLM-L6-v2 (mean pooling + L2 normalisation).
- tests/fixtures/smollm2_greedy.json: for three chat prompts, the chat-templated prompt, its
  token ids and 24 greedy new tokens from transformers loading the same GGUF file hone loads.
- tests/fixtures/gemma3_greedy.json: for three raw prompts, their token ids (with BOS, as the
  GGUF asks) and 16 greedy new tokens from transformers loading Gemma 3 270M's Q4_K_M GGUF.

Run by hand: pip install torch transformers sentence-transformers gguf; python3 scripts/make_real_fixtures.py
"""
import json
import pathlib

import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
OUT = ROOT / "tests" / "fixtures"

SENTENCES = [
    "The alternator charges the battery while the engine runs.",
    "A clogged air filter reduces engine power.",
    "Penguins live in the Southern Hemisphere.",
    "What does the radiator do?",
]
PROMPTS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "What does a car's radiator do?",
]
NEW_TOKENS = 24


def main() -> None:
    st = SentenceTransformer(str(MODELS / "all-MiniLM-L6-v2"), device="cpu")
    emb = st.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=False)
    (OUT / "minilm_embeddings.json").write_text(json.dumps({"sentences": SENTENCES, "embeddings": emb.tolist()}))
    print("minilm_embeddings.json:", emb.shape)

    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(MODELS, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(MODELS, gguf_file=gguf, torch_dtype=torch.float32).eval()
    cases = []
    for p in PROMPTS:
        text = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        ids = tok(text, return_tensors="pt").input_ids
        # Greedy by full recomputation each step: transformers' cached and uncached paths can
        # disagree at near-ties (we saw a 0.036 logit margin flip), so the reference is the
        # full forward's argmax; the margins are recorded to show how close each step is.
        seq, new, margins = ids, [], []
        with torch.no_grad():
            for _ in range(NEW_TOKENS):
                logits = model(seq).logits[0, -1]
                top = torch.topk(logits, 2)
                new.append(int(top.indices[0]))
                margins.append(round(float(top.values[0] - top.values[1]), 4))
                seq = torch.cat([seq, top.indices[:1].view(1, 1)], dim=1)
        cases.append({"prompt": p, "text": text, "ids": ids[0].tolist(), "new_ids": new, "new_text": tok.decode(new),
                      "top2_margins": margins})
        print(repr(p), "->", repr(tok.decode(new)))
    (OUT / "smollm2_greedy.json").write_text(json.dumps({"gguf": gguf, "cases": cases}, indent=1))


def gemma3() -> None:
    gguf = "gemma-3-270m-q4_k_m.gguf"
    tok = AutoTokenizer.from_pretrained(MODELS, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(MODELS, gguf_file=gguf, torch_dtype=torch.float32).eval()
    cases = []
    for text in ["The capital of France is", "Three primary colors are red,", "A car's radiator"]:
        ids = tok(text, return_tensors="pt").input_ids
        seq, new, margins = ids, [], []
        with torch.no_grad():
            for _ in range(16):
                logits = model(seq).logits[0, -1]
                top = torch.topk(logits, 2)
                new.append(int(top.indices[0]))
                margins.append(round(float(top.values[0] - top.values[1]), 4))
                seq = torch.cat([seq, top.indices[:1].view(1, 1)], dim=1)
        cases.append({"prompt": text, "ids": ids[0].tolist(), "new_ids": new, "new_text": tok.decode(new),
                      "top2_margins": margins})
        print(repr(text), "->", repr(tok.decode(new)))
    (OUT / "gemma3_greedy.json").write_text(json.dumps({"gguf": gguf, "cases": cases}, indent=1))


if __name__ == "__main__":
    import sys
    parts = {"main": main, "gemma3": gemma3}
    for part in sys.argv[1:] or list(parts):
        parts[part]()
