"""Eval throughput: the default letter scorer vs per-option scoring (lm-evaluation-harness style).

    python bench/eval_speed.py                  # CPU: Llama hidden 256, 4 layers, NF4 + LoRA r16
    python bench/eval_speed.py --model embedded --quantization none

Same model, same items (about 200 MedQA + KorMedMCQA sample items, 5 options each, through the
real tokenizer and prompt template), one process:
- ``letter``: ``medslm.scoring.score_letters``, the default of ``evaluate.py``: one forward pass
  per item, batched (sorted by length, right-padded), logits only at each row's last position.
- ``per_option``: ``medslm.scoring.score_per_option``: one forward per (item, option) on
  ``prompt + " X"``, reading log P(" X"): how lm-evaluation-harness scores loglikelihood tasks
  (batch size 1, its default; ``--per-option-batch-size`` to change).
Both are warmed up first; the predictions must agree. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.common import make_llama  # noqa: E402

from medslm.data import load_items  # noqa: E402
from medslm.dataset import resolve_paths  # noqa: E402
from medslm.modeling import LoraConfigSection, ModelConfig, apply_lora, load_base_model  # noqa: E402
from medslm.scoring import score_letters, score_per_option  # noqa: E402
from medslm.tokenizer import load_tokenizer  # noqa: E402


def sample_items(n: int) -> list:
    items = load_items("medqa", resolve_paths("medqa", ["embedded"])) + load_items("kormedmcqa", resolve_paths("kormedmcqa", ["embedded"]))
    step = max(1, len(items) // n)
    return items[::step][:n]  # evenly spaced: both benchmarks, all subjects


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--model", default="llama-256", help="llama-256 (built here), embedded, or a model path")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--quantization", choices=["nf4", "none"], default="nf4")
    ap.add_argument("--no-lora", action="store_true", help="score the base model without a LoRA adapter")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--per-option-batch-size", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    device = torch.device(args.device)
    items = sample_items(args.items)
    tokenizer = load_tokenizer(None)
    with tempfile.TemporaryDirectory() as tmp:
        name = str(make_llama(Path(tmp), args.hidden, args.layers)) if args.model == "llama-256" else args.model
        model = load_base_model(ModelConfig(name_or_path=name, quantization=args.quantization, attention="sdpa"), device, packed=False)
        if not args.no_lora:
            torch.manual_seed(0)
            model = apply_lora(model, LoraConfigSection(r=16, dropout=0.0), gradient_checkpointing=False)
        model.eval()
        score_letters(model, tokenizer, items[:8], batch_size=args.batch_size)  # warm-up
        score_per_option(model, tokenizer, items[:2], batch_size=args.per_option_batch_size)

        def timed(fn, **kw):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = fn(model, tokenizer, items, **kw)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return out, time.perf_counter() - t0

        letter, t_letter = timed(score_letters, batch_size=args.batch_size)
        per_opt, t_per = timed(score_per_option, batch_size=args.per_option_batch_size)
    pick = [max(range(len(s)), key=lambda k: (s[k], -k)) for s in letter]
    pick_ref = [max(range(len(s)), key=lambda k: (s[k], -k)) for s in per_opt]
    max_diff = max(abs(a - b) for x, y in zip(letter, per_opt) for a, b in zip(x, y))
    n_opts = sum(len(it.options) for it in items)
    print(
        f"{len(items)} items ({n_opts} options) on {device}, model {args.model} ({args.quantization}"
        f"{'' if args.no_lora else ' + LoRA r16'}): letter {t_letter:.2f}s (batch {args.batch_size}), "
        f"per-option {t_per:.2f}s (batch {args.per_option_batch_size}); same predictions: {pick == pick_ref}, "
        f"max score difference {max_diff:.2e}",
        file=sys.stderr,
    )
    if pick != pick_ref:
        raise SystemExit("letter and per-option scoring disagree")
    print(json.dumps({
        "items": len(items),
        "items_per_s_letter": round(len(items) / t_letter, 2),
        "items_per_s_per_option": round(len(items) / t_per, 2),
        "speedup": round(t_per / t_letter, 2),
    }))


if __name__ == "__main__":
    main()
