"""Run under torchrun by tests/test_train.py: build the real training setup and report, from rank
0, which parameters FSDP2 turned into DTensors (not a test module: pytest does not collect it)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medslm import distributed as D  # noqa: E402
from medslm.config import parse_config  # noqa: E402
from medslm.train_config import TrainConfig  # noqa: E402
from medslm.trainer import build  # noqa: E402

if __name__ == "__main__":
    cfg = parse_config(TrainConfig, sys.argv[1:])
    dist = D.init_distributed(cfg.train.device)
    model = build(cfg, dist).model
    params = list(model.named_parameters())
    layout = {
        "world_size": dist.world_size,
        "lora": sum(p.requires_grad for _, p in params),
        "frozen": sum(not p.requires_grad for _, p in params),
        "frozen_sharded": [n for n, p in params if not p.requires_grad and D.is_sharded(p)],
        "lora_not_sharded": [n for n, p in params if p.requires_grad and not D.is_sharded(p)],
    }
    if dist.is_main:
        print("LAYOUT " + json.dumps(layout))
    D.shutdown(dist)
