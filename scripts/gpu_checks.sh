#!/usr/bin/env bash
# Every GPU check in one run, for a lent GPU machine (15 minutes of device time in all):
#   the gpu-marked tests (FAISS GPU graph == CPU graph, 1M x 768 DRCDown timing, distortion
#   engine CUDA == CPU, DALI mixed decoder, the trainer in bf16 / ZeRO-2 on one GPU), then the
#   loader benchmark with the GPU row and the training benchmark (images/s vs DDP, MFU).
# Usage on the device: bash scripts/gpu_checks.sh   (results under $OUT when set)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-results}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR="$PWD/.cache/torch_extensions"
make venv EXTRAS=gpu,test > "$out/install.log" 2>&1 || { tail -30 "$out/install.log"; exit 1; }
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
.venv/bin/python -m pytest -q -m gpu -rA --timeout 900 -s 2>&1 | tee "$out/gpu-tests.log"
timeout 300 .venv/bin/python launchers/bench.py loader --out "$out/loader.md" > "$out/loader.log" 2>&1
cat "$out/loader.md"
timeout 420 .venv/bin/python launchers/bench.py train --out "$out/train.md" > "$out/train.log" 2>&1
cat "$out/train.md"
