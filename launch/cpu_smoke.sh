#!/usr/bin/env bash
# The whole pipeline on the embedded default, on a CPU: pack -> train -> evaluate -> LoRA analysis.
# Usage: launch/cpu_smoke.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/smoke}
python pack.py --out "$out/packed" --max-seq-len 512
python train.py --config configs/tiny.yaml --data.packed="$out/packed" --train.output_dir="$out/train" --train.overwrite=true
python evaluate.py --run "$out/train" --out "$out/eval"
python evaluate.py lora-activations --run "$out/train" --out "$out/lora"
echo "smoke run complete: $out (tensorboard --logdir $out/train/tb)"
