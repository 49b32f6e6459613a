#!/usr/bin/env bash
# On a machine with a GPU: builds hone for it, then runs on it the train_step bench (ms/step
# and tokens/s of full training and of LoRA, benches/train_step.rs) and the SmolLM2-135M LoRA
# SFT of benches/lora_memory.rs, and prints tokens/s, host peak RSS and peak GPU memory.
#
#   scripts/gpu_check.sh          # wgpu (Vulkan/Metal/DX12), with burn's fusion and autotune
#   scripts/gpu_check.sh cuda     # CUDA (its build downloads an LLVM bundle: needs network)
#
# Needs models/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch_models.sh; copy it over where the
# GPU machine has no network): without it the LoRA part is skipped with a message. Peak GPU
# memory is sampled with nvidia-smi every 100 ms when it exists.
set -euo pipefail
cd "$(dirname "$0")/.."
backend=${1:-wgpu}
case "$backend" in
  wgpu) features=() ;;
  cuda) features=(--features cuda) ;;
  *) echo "gpu_check: unknown backend '$backend' (wgpu or cuda)" >&2; exit 2 ;;
esac

echo "== build (release, $backend)"
cargo build --release "${features[@]}" --benches

gpu_mem_log=$(mktemp)
sampler=""
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$gpu_mem_log" &
  sampler=$!
fi
stop_sampler() { [ -n "$sampler" ] && kill "$sampler" 2>/dev/null || true; }
trap 'stop_sampler; rm -f "$gpu_mem_log"' EXIT

echo "== train_step bench on $backend"
HONE_BENCH_BACKEND=$backend cargo bench --quiet "${features[@]}" --bench train_step

echo "== SmolLM2-135M LoRA SFT on $backend"
HONE_BENCH_BACKEND=$backend cargo bench --quiet "${features[@]}" --bench lora_memory

stop_sampler
if [ -n "$sampler" ]; then
  sort -n "$gpu_mem_log" | tail -1 | awk '{ printf "peak GPU memory used (nvidia-smi, whole device): %.2f GB\n", $1 / 1024 }'
fi
