"""Evaluate medical sLLMs on MedQA / KorMedMCQA, compare runs for forgetting, analyse LoRA layers.

Accuracy (0-shot, the training prompt template):
    python evaluate.py --run RUN_DIR [--split test] [--out DIR]         # base model + the run's adapter
    python evaluate.py --model NAME_OR_PATH [--quantization none] ...    # a base model, no adapter
    python evaluate.py --run RUN_DIR --medqa data/US/test.jsonl --kormedmcqa data/kormedmcqa
  Items: without --medqa/--kormedmcqa, the run's own data config (for --model: the embedded sample
  data) split as in training, --split test by default. With explicit files: all their items, unless
  --split train|val|test asks to split them (--split-mode hash|official; default hash, or the run's).
  --scoring letter (default: log-prob of the option letters at the answer position, one forward
  per item; lm-eval's medqa_4options protocol) | option_text (length-normalised log-likelihood of
  " X. option text", lm-eval's acc_norm, for base models that do not answer with a letter).
  Writes DIR/eval.json and DIR/predictions.jsonl (default DIR: RUN_DIR/eval, or runs/eval-<model>),
  with accuracy per benchmark, subject and domain (--domain-rules FILE: the topic rules, default
  medslm/assets/domain_rules.yaml: medical_law by keywords, else the subject); with --run, also
  the accuracies (per benchmark and subject) to RUN_DIR/tb for TensorBoard.
  Multimodal checkpoints (MedGemma): --text-only false scores on the whole shipped model.

Forgetting (paired: bootstrap CI of the delta and exact McNemar test, per benchmark and subject):
    python evaluate.py compare BASE_EVAL_DIR OTHER_EVAL_DIR [MORE...] [--out FILE]   # default BASE_EVAL_DIR/compare.json

LoRA layer analysis (mean |adapter delta| per decoder layer, English vs Korean and per subject):
    python evaluate.py lora-activations --run RUN_DIR [--out DIR] [--max-items 200]

Bad input (missing run files, invalid items, mismatched evals) is one error line and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from medslm.cli import run_cli
from medslm.config import ConfigError
from medslm.evaluation import EvalConfig, evaluate
from medslm.forgetting import CompareConfig, compare
from medslm.lora_analysis import LoraActivationsConfig, lora_activations

SUBCOMMANDS = ("compare", "lora-activations")


class _Parser(argparse.ArgumentParser):
    """Usage errors become one line (exit code 2 through run_cli), like every other user error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{self.prog}: {message} (see {self.prog} --help)")


def main(cfg: EvalConfig | CompareConfig | LoraActivationsConfig) -> dict[str, Any]:
    """Run one subcommand from its typed config; returns its result dict."""
    if isinstance(cfg, CompareConfig):
        return compare(cfg)
    if isinstance(cfg, LoraActivationsConfig):
        return lora_activations(cfg)
    return evaluate(cfg)


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--medqa", nargs="+", metavar="PATH", help="MedQA files/folders ('embedded': the samples)")
    p.add_argument("--kormedmcqa", nargs="+", metavar="PATH", help="KorMedMCQA files/folders ('embedded': the samples)")
    p.add_argument("--split", choices=["train", "val", "test", "all"], help="default: test (explicit files: all)")
    p.add_argument("--split-mode", choices=["hash", "official"], help="default: the run's data.split (hash)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: RUN_DIR/eval, or runs/eval-<model>)")
    p.add_argument("--batch-size", type=int, default=None, help="rows per forward, >= 1 (default: 32; lora-activations 16)")
    p.add_argument("--max-batch-tokens", type=int, default=16384, help="rows x padded length per forward")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--text-only", choices=["true", "false"], help="multimodal checkpoints (MedGemma): load only the language model "
                   "(true) or the whole model (false); default: the run's model.text_only, true for --model")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or progress lines, model loading included "
                   "(without it: bars on a terminal, a plain line every tenth of the way in a log)")


def _bool(text: str | None) -> bool | None:
    return None if text is None else text == "true"


def parse_args(argv: list[str]) -> EvalConfig | CompareConfig | LoraActivationsConfig:
    if argv and argv[0] == "compare":
        p = _Parser(prog="evaluate.py compare", description="Paired comparison of eval dirs (forgetting).")
        p.add_argument("eval_dirs", nargs="+", metavar="EVAL_DIR", help="BASE first, then one or more others")
        p.add_argument("--out", default=None, help="JSON output (default: BASE_EVAL_DIR/compare.json; the Markdown goes next to it as .md)")
        p.add_argument("--resamples", type=int, default=10_000, help="paired bootstrap resamples (>= 2000)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--alpha", type=float, default=0.05)
        a = p.parse_args(argv[1:])
        return CompareConfig(eval_dirs=a.eval_dirs, out=a.out, n_resamples=a.resamples, seed=a.seed, alpha=a.alpha)
    if argv and argv[0] == "lora-activations":
        p = _Parser(prog="evaluate.py lora-activations", description="LoRA delta magnitude per decoder layer.")
        p.add_argument("--run", required=True, metavar="RUN_DIR")
        p.add_argument("--max-items", type=int, default=200, help="per benchmark; 0 = all")
        _data_args(p)
        a = p.parse_args(argv[1:])
        return LoraActivationsConfig(
            run=a.run, medqa=a.medqa, kormedmcqa=a.kormedmcqa, split=a.split, split_mode=a.split_mode, max_items=a.max_items,
            out=a.out, batch_size=16 if a.batch_size is None else a.batch_size, max_batch_tokens=a.max_batch_tokens, device=a.device, progress=not a.no_progress,
            text_only=_bool(a.text_only),
        )
    p = _Parser(
        prog="evaluate.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="subcommands: evaluate.py compare ... | evaluate.py lora-activations ... (each has --help)",
    )
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--run", metavar="RUN_DIR", help="a train.py output_dir (config.yaml + adapter/)")
    who.add_argument("--model", metavar="NAME_OR_PATH", help="a base model: local folder, hub id, embedded[:tiny-gemma3]")
    _data_args(p)
    p.add_argument("--scoring", choices=["letter", "option_text"], default="letter",
                   help="letter: log-prob of the option letters (default); option_text: lm-eval's acc_norm")
    p.add_argument("--quantization", choices=["nf4", "none"], help="default: the run's (nf4 for --model)")
    p.add_argument("--tokenizer", help="--model only: tokenizer path or name (default: the model's own)")
    p.add_argument("--max-items", type=int, default=0, help="at most this many items per benchmark (0 = all)")
    p.add_argument("--max-seq-len", type=int, help="prompt + answer tokens (default: the run's data.max_seq_len, else 2048)")
    p.add_argument("--overlong", choices=["error", "truncate", "drop"], help="longer items (default: the run's data.overlong, else error)")
    p.add_argument("--domain-rules", metavar="FILE", help="topic rules (default: medslm/assets/domain_rules.yaml)")
    a = p.parse_args(argv)
    return EvalConfig(
        run=a.run, model=a.model, medqa=a.medqa, kormedmcqa=a.kormedmcqa, split=a.split, split_mode=a.split_mode, out=a.out,
        scoring=a.scoring, batch_size=32 if a.batch_size is None else a.batch_size, max_batch_tokens=a.max_batch_tokens, max_items=a.max_items,
        device=a.device, quantization=a.quantization, tokenizer=a.tokenizer, domain_rules=a.domain_rules,
        progress=not a.no_progress, max_seq_len=a.max_seq_len, overlong=a.overlong, text_only=_bool(a.text_only),
    )


if __name__ == "__main__":
    run_cli(lambda: main(parse_args(sys.argv[1:])))
