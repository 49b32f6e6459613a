#!/usr/bin/env python3
"""Builds tests/fixtures/nf4.safetensors: weights quantized to NF4 by bitsandbytes itself
(`bitsandbytes.functional.quantize_4bit`, block 64, double-quantized absmax as QLoRA does it),
so hone's quantizer and dequantizer can be checked value for value.

For each case NAME: `NAME.weight` (f32, the input), `NAME.packed` (u8, two 4-bit codes per
byte), `NAME.absmax` (u8, the absmax values quantized again), `NAME.absmax2` (f32, the scale per
256 absmax values), `NAME.offset` (f32 [1], the absmax mean), `NAME.code2` (f32 [256], the
dynamic 8-bit map those absmax codes index) and `NAME.dequantized` (f32, what
`dequantize_4bit` gives back).

Run by hand (needs torch and bitsandbytes from PyPI; its CPU backend is enough):
    /tmp/venv/bin/pip install torch bitsandbytes safetensors
    /tmp/venv/bin/python scripts/make_nf4_fixture.py
"""
import pathlib

import bitsandbytes.functional as F
import torch
from safetensors.torch import save_file

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "nf4.safetensors"


def main() -> None:
    g = torch.Generator().manual_seed(77)
    cases = {
        # 384 blocks of 64: two blocks of absmax statistics (256 + 128).
        "linear": torch.randn(96, 256, generator=g) * 0.05,
        # Rows of 100: blocks straddle rows, and the last block is short (300 = 4 * 64 + 44).
        "ragged": torch.randn(3, 100, generator=g),
        # Outliers, exact zeros and a block of zeros (absmax 0).
        "outliers": torch.cat([torch.randn(2, 64, generator=g) * 0.02, torch.zeros(1, 64),
                               torch.tensor([[8.0, -8.0] + [0.01] * 62])]),
    }
    tensors = {}
    for name, w in cases.items():
        packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
        tensors[f"{name}.weight"] = w.contiguous()
        tensors[f"{name}.packed"] = packed.flatten().contiguous()
        tensors[f"{name}.absmax"] = state.absmax.contiguous()
        tensors[f"{name}.absmax2"] = state.state2.absmax.float().contiguous()
        tensors[f"{name}.offset"] = state.offset.reshape(1).float()
        tensors[f"{name}.code2"] = state.state2.code.float().contiguous()
        tensors[f"{name}.dequantized"] = F.dequantize_4bit(packed, state).float().contiguous()
        err = (tensors[f"{name}.dequantized"] - w).abs().max().item()
        print(f"{name}: {tuple(w.shape)}, {state.absmax.numel()} blocks, max error {err:.4f}")
    save_file(tensors, OUT)
    print(f"{OUT.relative_to(ROOT)}: {OUT.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
