"""Fine-tune a medical sLLM with QLoRA on a packed EN:KO mix; FSDP2 shards only the LoRA adapter.

    python train.py                                   # the embedded tiny model and sample data, CPU
    python train.py --config configs/tiny.yaml --data.ratio=10:3 --train.output_dir=runs/r10-3
    torchrun --nproc_per_node 4 train.py --config configs/medgemma-4b.yaml
    python train.py --config configs/medgemma-4b.yaml --estimate-memory [--gpus 4]   # will it fit?

Without --config, configs/tiny.yaml is used. Overrides are --section.key=value; unknown keys are
an error. Writes OUTPUT_DIR/{config.yaml,metrics.jsonl,tb/,checkpoints/,adapter/}. The paper's
configs name no data: give --data.medqa=DIR --data.kormedmcqa=DIR (or --data.packed=DIR).
"""

from __future__ import annotations

import json
import sys

from medslm.cli import run_cli
from medslm.config import config_help, parse_config
from medslm.train_config import DEFAULT_CONFIG, TrainConfig
from medslm.trainer import train


def main(cfg: TrainConfig) -> dict:
    return train(cfg)


if __name__ == "__main__":
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(__doc__)
        print(config_help(TrainConfig))
        raise SystemExit(0)
    if "--estimate-memory" in sys.argv[1:]:  # per-GPU memory from config.json alone; nothing is loaded or trained
        from medslm.memory_plan import estimate_cli

        run_cli(lambda: estimate_cli(sys.argv[1:]))
        raise SystemExit(0)
    result = run_cli(lambda: main(parse_config(TrainConfig, sys.argv[1:], default_file=DEFAULT_CONFIG)))
    if result.get("steps") is not None and result.get("rank", 0) == 0:  # one line per run, not per rank
        print(f"done: {result['steps']} steps, final loss {result['final_loss']:.4f}, adapter in {result['adapter_dir']}")
        if result.get("acceleration"):  # what model.compile / fused_kernels / lora_forward applied, graphs compiled
            print(f"fast path: {json.dumps(result['acceleration'])}")
