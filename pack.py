"""Tokenise MedQA + KorMedMCQA, mix them at an EN:KO ratio and pack them into fixed-length rows.

    python pack.py                      # the embedded sample files and tokenizer
    python pack.py --medqa data/US --kormedmcqa kormed/ --ratio 10:3 --tokenizer google/medgemma-4b-it

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
from medslm.dataset import MANIFEST_FILE, DataConfig, build_dataset, is_pack_dir, save_packed
from medslm.files import check_replaceable
from medslm.tokenizer import load_tokenizer


@dataclass
class PackConfig:
    data: DataConfig = field(default_factory=DataConfig)
    out: str = "out/packed"
    global_batch_rows: int = 128  # rows per optimizer step, for steps/epoch (4 GPUs x 4 x grad-accum 8)


def parse_args(argv: list[str]) -> PackConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = DataConfig()
    p.add_argument("--medqa", nargs="*", default=d.medqa, help="MedQA files/folders ('embedded' = samples)")
    p.add_argument("--kormedmcqa", nargs="*", default=d.kormedmcqa, help="KorMedMCQA files/folders/hf:NAME")
    p.add_argument("--ratio", default=d.ratio, help="EN:KO item counts, e.g. 5:5, 10:3, 2:8")
    p.add_argument("--upsample", action="store_true", help="repeat the limiting side instead of subsampling")
    p.add_argument("--split", choices=["hash", "official"], default=d.split)
    p.add_argument("--max-seq-len", type=int, default=d.max_seq_len)
    p.add_argument("--no-packing", action="store_true", help="one sample per row (the unpacked baseline)")
    p.add_argument("--tokenizer", default=None, help="tokenizer path or hub id (default: the embedded one)")
    p.add_argument("--answer-format", choices=["letter", "letter_text"], default=d.answer_format)
    p.add_argument("--overlong", choices=["error", "truncate", "drop"], default=d.overlong)
    p.add_argument("--skip-invalid", action="store_true", help="skip invalid items and count them")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--global-batch-rows", type=int, default=PackConfig.global_batch_rows)
    p.add_argument("--out", default=PackConfig.out)
    a = p.parse_args(argv)
    data = DataConfig(
        medqa=a.medqa, kormedmcqa=a.kormedmcqa, ratio=a.ratio, upsample=a.upsample, split=a.split,
        max_seq_len=a.max_seq_len, packing=not a.no_packing, tokenizer=a.tokenizer,
        answer_format=a.answer_format, overlong=a.overlong, skip_invalid=a.skip_invalid, seed=a.seed,
    )
    data.validate()
    return PackConfig(data=data, out=a.out, global_batch_rows=a.global_batch_rows)


def main(cfg: PackConfig) -> dict:
    check_replaceable(Path(cfg.out), is_pack_dir)  # before any work: never replace a user's folder
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    built = build_dataset(cfg.data, tokenizer, cfg.global_batch_rows, progress=True)
    report = save_packed(built, cfg.out, cfg, tokenizer)
    r = report
    print(
        f"packed {r['num_samples']} samples ({r['per_language']}) into {r['num_rows']} rows of {r['max_seq_len']}: "
        f"efficiency {r['packing_efficiency']:.2%} (unpacked padding {r['padding_fraction_unpacked']:.2%}); "
        f"steps/epoch at {r['global_batch_rows']} rows/step: {r['steps_per_epoch_unpacked']} -> {r['steps_per_epoch_packed']}; "
        f"skipped {r['skipped_invalid']['count']}, truncated {r['overlong']['truncated']}, dropped {r['overlong']['dropped']}"
    )
    print(
        f"wrote {cfg.out}/train, {cfg.out}/val, {cfg.out}/packing_report.json, {cfg.out}/{MANIFEST_FILE}; "
        f"train on them: python train.py --data.packed={cfg.out}"
    )
    return report


if __name__ == "__main__":
    run_cli(lambda: main(parse_args(sys.argv[1:])))
