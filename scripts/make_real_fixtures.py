#!/usr/bin/env python3
"""Reference outputs of the real checkpoints (fetched by scripts/fetch_models.sh), recorded
as small JSON fixtures for the Rust tests:

- tests/fixtures/minilm_embeddings.json: sentence-transformers embeddings of a few sentences
  with models/all-MiniLM-L6-v2 (mean pooling + L2 normalisation).
- tests/fixtures/smollm2_greedy.json: for three chat prompts, the chat-templated prompt, its
  token ids and 24 greedy new tokens from transformers loading the same GGUF file hone loads.
- tests/fixtures/gemma3_greedy.json: for three raw prompts, their token ids (with BOS, as the
  GGUF asks) and 16 greedy new tokens from transformers loading Gemma 3 270M's Q4_K_M GGUF.
- tests/fixtures/gemma3_tokenizer.json: the token ids of texts that exercise its SentencePiece
  vocabulary (space runs, newlines, chat markers, HTML tags, scripts, byte fallback), as
  transformers builds the tokenizer from the same GGUF.

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


# Texts that exercise a SentencePiece vocabulary: spaces at either end and in runs, newlines,
# chat markers, HTML tags (Gemma's user-defined tokens), scripts and emoji, characters only
# byte fallback can spell, and nothing at all.
TOKENIZER_TEXTS = [
    "The capital of France is",
    "  two leading spaces and  two inside,   three at the end   ",
    "lines\n\nwith\n\n\nblank ones\n",
    "<start_of_turn>user\nWhat does a radiator do?<end_of_turn>\n<start_of_turn>model\n",
    "<table><tr><td>cell</td></tr></table> <b>bold</b>",
    "Tabs\tand\r\nCRLF; numbers 1234567890 and 3.14159",
    "ünïcödé, 中文, العربية, русский, emoji 🚗💨🧿",
    "rare: \U0001D518\U0001D52B\U0001D526 \u2603\ufe0f \x00\x07",
    "fn main() { println!(\"hi\"); }",
    " ",
    "",
]


def gemma3_tokens() -> None:
    """tests/fixtures/gemma3_tokenizer.json: the ids transformers gives each text (BOS added as
    the GGUF asks), and the text it decodes them back to."""
    gguf = "gemma-3-270m-q4_k_m.gguf"
    tok = AutoTokenizer.from_pretrained(MODELS, gguf_file=gguf)
    cases = []
    for text in TOKENIZER_TEXTS:
        ids = tok(text).input_ids
        cases.append({"text": text, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=True)})
        print(repr(text), "->", len(ids), "tokens")
    (OUT / "gemma3_tokenizer.json").write_text(json.dumps({"gguf": gguf, "cases": cases}, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    import sys
    parts = {"main": main, "gemma3": gemma3, "gemma3_tokens": gemma3_tokens}
    for part in sys.argv[1:] or list(parts):
        parts[part]()
