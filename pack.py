"""Tokenise MedQA + KorMedMCQA, mix them at an EN:KO ratio and pack them into fixed-length rows.

    python pack.py                      # the embedded sample files and tokenizer
    python pack.py --medqa data/US --kormedmcqa kormed/ --ratio 10:3 --tokenizer /models/medgemma-4b-it
    python pack.py ... --config configs/medgemma-4b.yaml --world-size 4   # steps/epoch at that run's batch

Writes DIR/train (a `datasets` dataset of packed rows), DIR/val, DIR/packing_report.json and
DIR/mix_manifest.jsonl (every item in the mix, val and test: id, dataset, subject, split); train on
them with `python train.py --data.packed=DIR` (the tokenizer must be the model's). DIR is written
whole under a temporary name and then renamed into place: an interrupted run leaves the old DIR.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from medslm.cli import run_cli
from medslm.config import ConfigError
from medslm.dataset import MANIFEST_FILE, DataConfig, build_dataset, is_pack_dir, save_packed
from medslm.files import check_replaceable
from medslm.tokenizer import load_tokenizer


@dataclass
class PackConfig:
    data: DataConfig = field(default_factory=DataConfig)
    out: str = "out/packed"
    global_batch_rows: int = 128  # rows per optimizer step, for steps/epoch
    batch_source: str = "assumed: the paper's 4 GPUs x 4 rows x grad_accum 8"  # where global_batch_rows came from


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = DataConfig()
    p.add_argument("--medqa", nargs="*", default=d.medqa, help="MedQA files/folders/hf:NAME ('embedded' = the samples; none: no MedQA)")
    p.add_argument("--kormedmcqa", nargs="*", default=d.kormedmcqa, help="KorMedMCQA files/folders/hf:NAME ('embedded' = the samples)")
    p.add_argument("--ratio", default=d.ratio, help="EN:KO item counts in the training mix, e.g. 5:5, 10:3, 2:8 (default %(default)s)")
    p.add_argument("--upsample", action="store_true", help="repeat the limiting side instead of subsampling the other")
    p.add_argument("--split", choices=["hash", "official"], default=d.split,
                   help="hash: 80/10/10 by content hash (default); official: the datasets' own splits")
    p.add_argument("--max-seq-len", type=int, default=d.max_seq_len, help="tokens per packed row (default %(default)s)")
    p.add_argument("--no-packing", action="store_true", help="one sample per row (the unpacked baseline)")
    p.add_argument("--tokenizer", default=None, help="tokenizer path or hub id: the model's (default: the embedded one)")
    p.add_argument("--answer-format", choices=["letter", "letter_text"], default=d.answer_format,
                   help="the target: ' C' or ' C. option text', then EOS (default %(default)s)")
    p.add_argument("--overlong", choices=["error", "truncate", "drop"], default=d.overlong,
                   help="an example over --max-seq-len: stop (default), cut the prompt from the left, or skip it; counted")
    p.add_argument("--skip-invalid", action="store_true", help="skip invalid items and count them by reason")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the ratio subsampling (default %(default)s)")
    p.add_argument("--config", metavar="TRAIN_YAML",
                   help="the train.py config you will train with: steps/epoch use its micro_batch_size x grad_accum x --world-size")
    p.add_argument("--world-size", type=int, default=None, metavar="N", help="ranks you will train on (torchrun's nproc); default 1 with --config")
    p.add_argument("--global-batch-rows", type=int, default=None, metavar="ROWS",
                   help=f"rows per optimizer step for steps/epoch, instead of --config (default without --config: {PackConfig.global_batch_rows}, "
                        "the paper's 4 GPUs x 4 x grad_accum 8)")
    p.add_argument("--out", default=PackConfig.out, help="output folder (default %(default)s)")
    return p


def global_batch(config: str | None, world_size: int | None, rows: int | None) -> tuple[int, str]:
    """Rows per optimizer step for the steps/epoch figure, and where that number came from."""
    if rows is not None:
        if config is not None or world_size is not None:
            raise ConfigError("give --global-batch-rows, or --config with --world-size, not both")
        if rows < 1:
            raise ConfigError(f"--global-batch-rows must be >= 1, got {rows}")
        return rows, "--global-batch-rows"
    if config is None:
        if world_size is not None:
            raise ConfigError("--world-size needs --config (the train.py config that sets micro_batch_size and grad_accum)")
        return PackConfig.global_batch_rows, PackConfig.batch_source
    from medslm.config import apply_mapping, load_yaml
    from medslm.train_config import TrainConfig

    world = 1 if world_size is None else world_size
    if world < 1:
        raise ConfigError(f"--world-size must be >= 1, got {world}")
    train_cfg = TrainConfig()
    apply_mapping(train_cfg, load_yaml(config), config)  # only its train section is used here
    t = train_cfg.train
    t.validate()
    return t.micro_batch_size * t.grad_accum * world, f"{config}: {t.micro_batch_size} x grad_accum {t.grad_accum} x {world} rank{'s' if world > 1 else ''}"


def parse_args(argv: list[str]) -> PackConfig:
    a = build_parser().parse_args(argv)
    data = DataConfig(
        medqa=a.medqa, kormedmcqa=a.kormedmcqa, ratio=a.ratio, upsample=a.upsample, split=a.split,
        max_seq_len=a.max_seq_len, packing=not a.no_packing, tokenizer=a.tokenizer,
        answer_format=a.answer_format, overlong=a.overlong, skip_invalid=a.skip_invalid, seed=a.seed,
    )
    data.validate()
    rows, source = global_batch(a.config, a.world_size, a.global_batch_rows)
    return PackConfig(data=data, out=a.out, global_batch_rows=rows, batch_source=source)


def main(cfg: PackConfig) -> dict:
    check_replaceable(Path(cfg.out), is_pack_dir)  # before any work: never replace a user's folder
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    built = build_dataset(cfg.data, tokenizer, cfg.global_batch_rows, progress=True)
    report = save_packed(built, cfg.out, cfg, tokenizer)
    r = report
    print(
        f"packed {r['num_samples']} samples ({r['per_language']}) into {r['num_rows']} rows of {r['max_seq_len']}: "
        f"efficiency {r['packing_efficiency']:.2%} (unpacked padding {r['padding_fraction_unpacked']:.2%}); "
        f"steps/epoch at {r['global_batch_rows']} rows/step ({cfg.batch_source}): {r['steps_per_epoch_unpacked']} unpacked -> "
        f"{r['steps_per_epoch_packed' if cfg.data.packing else 'steps_per_epoch_unpacked']}; "
        f"skipped {r['skipped_invalid']['count']}, truncated {r['overlong']['truncated']}, dropped {r['overlong']['dropped']}"
    )
    print(
        f"wrote {cfg.out}/train, {cfg.out}/val, {cfg.out}/packing_report.json, {cfg.out}/{MANIFEST_FILE}; "
        f"train on them: python train.py --data.packed={cfg.out}"
    )
    return report


if __name__ == "__main__":
    run_cli(lambda: main(parse_args(sys.argv[1:])))
