#!/usr/bin/env python3
"""transformers baseline for benches/rollout.rs, printed as JSON: sampled generation from a
GGUF checkpoint (dequantised to f32, as hone reads it) for GRPO-shaped batches.

Arguments: gguf_path group max_new_tokens runs; stdin: a JSON list of prompts (token id lists,
the bench's own tokenisation). Each prompt is answered `group` times (`num_return_sequences`,
which transformers expands before encoding), left-padded, temperature 1 over the whole
vocabulary (top_k 0), exactly `max_new_tokens` new tokens per row (no stop token), 2 threads,
KV cache on. One warm-up run, then `runs` timed ones: tokens/s is new tokens over the median.
"""
import json
import pathlib
import statistics
import sys
import time

import torch
from transformers import AutoModelForCausalLM


def main() -> None:
    gguf = pathlib.Path(sys.argv[1])
    group, new, runs = (int(v) for v in sys.argv[2:5])
    prompts = json.load(sys.stdin)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1

    def once() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                                 top_p=1.0, max_new_tokens=new, min_new_tokens=new, num_return_sequences=group,
                                 use_cache=True, pad_token_id=0)
        assert out.shape == (len(prompts) * group, width + new), out.shape
        return time.perf_counter() - start

    once()
    times = [once() for _ in range(runs)]
    seconds = statistics.median(times)
    print(json.dumps({"seconds": seconds, "tokens_per_s": len(prompts) * group * new / seconds,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
