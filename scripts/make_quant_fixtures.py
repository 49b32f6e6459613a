#!/usr/bin/env python3
"""Builds tests/fixtures/ggml_quants.json: random blocks of every ggml quantisation type hone
reads, and their values as the `gguf` package's numpy dequantisers compute them (the reference
for llama.cpp's layouts). The scale fields are set to finite f16 values (MXFP4's to E8M0
exponents inside f32's range); every other byte is random, so every bit of every quant field
is exercised.

Also tests/fixtures/ggml_quantize_mxfp4.json: rows quantised to MXFP4 by the `gguf` package's
quantizer (llama.cpp's `quantize_row_mxfp4_ref` in numpy), which hone's GGUF export must
reproduce byte for byte.

Run by hand (needs `pip install gguf numpy`):
    /tmp/venv/bin/python scripts/make_quant_fixtures.py
"""
import json
import pathlib

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "ggml_quants.json"

# type: (bytes per block, elements per block, offsets of the f16 scale fields)
LAYOUTS = {
    T.Q4_0: (18, 32, [0]),
    T.Q4_1: (20, 32, [0, 2]),
    T.Q5_0: (22, 32, [0]),
    T.Q5_1: (24, 32, [0, 2]),
    T.Q8_0: (34, 32, [0]),
    T.Q2_K: (84, 256, [80, 82]),
    T.Q3_K: (110, 256, [108]),
    T.Q4_K: (144, 256, [0, 2]),
    T.Q5_K: (176, 256, [0, 2]),
    T.Q6_K: (210, 256, [208]),
    T.IQ4_NL: (18, 32, [0]),
    T.MXFP4: (17, 32, []),
}

# MXFP4's scale is one E8M0 byte (a power of two): the subnormal ones, 0 and 1, and two normal
# ones well inside f32's range (the largest, 254, would overflow its largest code).
MXFP4_SCALES = [1, 120, 135]


def main() -> None:
    rng = np.random.default_rng(20261130)
    cases = []
    for qtype, (size, n, scales) in LAYOUTS.items():
        blocks = 3
        raw = rng.integers(0, 256, size=(blocks, size), dtype=np.uint8)
        for b in range(blocks):
            for off in scales:
                d = np.array([rng.uniform(-0.05, 0.05)], dtype=np.float16)
                raw[b, off:off + 2] = np.frombuffer(d.tobytes(), dtype=np.uint8)
            if qtype == T.MXFP4:
                raw[b, 0] = MXFP4_SCALES[b]
        values = dequantize(raw.reshape(-1), qtype).astype(np.float32).reshape(-1)
        assert values.shape == (blocks * n,) and np.isfinite(values).all()
        cases.append({
            "type": int(qtype),
            "name": qtype.name,
            "elements": blocks * n,
            "bytes": raw.reshape(-1).tobytes().hex(),
            "values": [float(v) for v in values],
        })
    OUT.write_text(json.dumps(cases))
    print(f"{OUT}: {len(cases)} types, {OUT.stat().st_size / 1024:.0f} KiB")
    mxfp4_rows(rng)


def mxfp4_rows(rng: np.random.Generator) -> None:
    """Weight-like rows, zeros, a constant, outliers, values halfway between two codes (the
    first code wins), magnitudes near f32's smallest, and MXFP4's bytes for each."""
    codes = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], dtype=np.float32)
    rows = {
        "weights": rng.normal(0, 0.02, 256).astype(np.float32),
        "wide": rng.normal(0, 3, 64).astype(np.float32),
        "zeros": np.zeros(32, dtype=np.float32),
        "constant": np.full(32, 0.7, dtype=np.float32),
        "outliers": np.where(np.arange(64) % 17 == 0, 40.0, rng.normal(0, 0.1, 64)).astype(np.float32),
        "halfway": np.tile((codes[:-1] + codes[1:]) / 2 * np.float32(0.25), 5)[:32].astype(np.float32),
        "tiny": (rng.normal(0, 1, 32) * 1e-38).astype(np.float32),
    }
    cases = [{"name": name, "values": [float(v) for v in row],
              "bytes": quantize(row, T.MXFP4).reshape(-1).tobytes().hex()} for name, row in rows.items()]
    path = OUT.parent / "ggml_quantize_mxfp4.json"
    path.write_text(json.dumps(cases))
    print(f"{path}: {len(cases)} rows")


if __name__ == "__main__":
    main()
