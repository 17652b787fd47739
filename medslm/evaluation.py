"""0-shot MCQ accuracy of a base model or a trained adapter: item selection, eval.json, predictions.jsonl.

``evaluate(EvalConfig)`` is what ``python evaluate.py`` runs: pick the items (the run's own test
split by default), load the base model (+ the run's adapter), score with the training prompt
template (:mod:`medslm.scoring`: ``letter`` by default, ``option_text`` for base models that do not
answer with a letter), then write

- ``OUT/eval.json``: model/adapter, template, scoring, data and split, item count, timings, and per
  benchmark accuracy, n, correct and the Wilson 95% interval, also per subject (KorMedMCQA:
  doctor/nurse/pharm/dentist; MedQA: ``meta_info``, or ``usmle`` when absent) and per domain
  (:mod:`medslm.domains`: ``medical_law`` by keyword rules, else the subject);
- ``OUT/predictions.jsonl``: one line per item: id, benchmark, subject, domain, language, gold,
  predicted, correct, scores (one per option, in option order; higher is better).
"""

from __future__ import annotations

import copy
import json
import pickle
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from medslm.cli import UserError, first_line
from medslm.config import ConfigError, load_saved_config
from medslm.dataset import DataConfig, load_and_split
from medslm.domains import DomainRules, load_rules
from medslm.files import check_json_files, check_safetensors, json_line, write_text, writing
from medslm.prompts import encode_prompt, fit_prompt, format_prompt
from medslm.records import LETTERS, MCQItem
from medslm.scoring import SCORERS
from medslm.stats import accuracy_summary

Split = Literal["train", "val", "test", "all"]
TEMPLATE = "medslm.prompts 0-shot (MedQA: lm-eval medqa_4options; KorMedMCQA: lm-eval kormedmcqa)"


@dataclass
class EvalConfig:
    """Everything ``python evaluate.py [--run RUN | --model NAME] ...`` takes."""

    run: str | None = None  # a train.py output_dir (config.yaml + adapter/)
    model: str | None = None  # a base model (no adapter): path, hub id or embedded[:name]
    medqa: list[str] | None = None  # explicit eval files; None: the run's (or default) data config
    kormedmcqa: list[str] | None = None
    split: Split | None = None  # None: "test" of the config's data, "all" for explicit files
    split_mode: Literal["hash", "official"] | None = None  # None: the run's data.split (default hash)
    out: str | None = None  # None: RUN/eval, or runs/eval-<model name>
    scoring: Literal["letter", "option_text"] = "letter"
    batch_size: int = 32
    max_batch_tokens: int = 16384  # rows x padded length per forward pass
    max_items: int = 0  # > 0: at most this many items per benchmark (in file order)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    quantization: Literal["nf4", "none"] | None = None  # None: the run's, or nf4 for --model
    tokenizer: str | None = None  # --model only; None: the model's own (embedded: the embedded one)
    domain_rules: str | None = None  # topic rules file (None: medslm/assets/domain_rules.yaml)
    progress: bool = True  # progress bars on a terminal, plain lines in a log; False: neither (loading bars too)
    max_seq_len: int | None = None  # prompt + answer tokens; None: the run's data.max_seq_len (default 2048)
    overlong: Literal["error", "truncate", "drop"] | None = None  # None: the run's data.overlong (default error)
    text_only: bool | None = None  # multimodal checkpoints: None: the run's model.text_only (True for --model)

    def validate(self) -> None:
        if (self.run is None) == (self.model is None):
            raise ConfigError("give exactly one of --run RUN_DIR or --model NAME_OR_PATH")
        if self.batch_size < 1 or self.max_batch_tokens < 1 or self.max_items < 0:
            raise ConfigError(
                f"--batch-size ({self.batch_size}) and --max-batch-tokens ({self.max_batch_tokens}) must be >= 1, "
                f"--max-items ({self.max_items}) >= 0"
            )
        if self.max_seq_len is not None and self.max_seq_len < 16:
            raise ConfigError(f"--max-seq-len must be at least 16, got {self.max_seq_len}")
        resolve_device(self.device)  # spelling, and that such a device exists here
        if self.tokenizer is not None and self.run is not None:
            raise ConfigError("--tokenizer is for --model; a run's tokenizer is saved in RUN/adapter")


# ---------------------------------------------------------------------------------------------
# Runs, models and items
# ---------------------------------------------------------------------------------------------


def check_run_dir(run: str | Path) -> Path:
    """The run folder, after checking it holds config.yaml and a saved adapter (or, after full
    fine-tuning, a saved model in RUN/model)."""
    p = Path(run)
    if not p.is_dir():
        raise UserError(f"--run {run}: no such directory")
    if not (p / "config.yaml").is_file():
        raise UserError(f"--run {run}: no config.yaml (expected the output_dir of train.py)")
    if (p / "model" / "config.json").is_file() and not (p / "adapter").exists():
        saved = p / "model"  # lora.enabled: false
    else:
        saved = p / "adapter"
        if not (saved / "adapter_config.json").is_file() or not any(saved.glob("adapter_model.*")):
            raise UserError(f"--run {run}: no trained adapter in {saved} (did training finish?)")
    check_json_files(saved)  # a truncated adapter, model or tokenizer file is named, not a library traceback
    for weights in saved.glob("*.safetensors"):
        check_safetensors(weights)
    return p


def load_run_config(run: str | Path) -> Any:
    from medslm.train_config import TrainConfig

    return load_saved_config(TrainConfig, check_run_dir(run) / "config.yaml")


def check_device(name: str) -> None:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (spelling only; :func:`resolve_device` checks the GPU)."""
    if name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isascii() and name[5:].isdigit()):
        return
    raise ConfigError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")


def resolve_device(name: str) -> torch.device:
    check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s) (0..{torch.cuda.device_count() - 1})")
    return dev


def load_for_eval(cfg: EvalConfig, run_cfg: Any = None, before_model: Callable[[Any], None] | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """(model in eval mode, tokenizer, description) for ``--run`` (base + adapter) or ``--model``.

    ``before_model(tokenizer)`` runs once the tokenizer is loaded, before the model: checks that need
    only the tokenizer (lengths) fail in seconds, not after minutes of loading a 4B model."""
    from medslm.console import interactive
    from medslm.modeling import ModelConfig, embedded_tokenizer_for, load_base_model, resolve_model_path
    from medslm.multimodal import adapter_load_kwargs, describe
    from medslm.tokenizer import load_tokenizer
    from medslm.weights import check_adapter_loaded, check_base, file_sha256, fingerprint

    device = resolve_device(cfg.device)
    adapter = None
    if cfg.run is not None:
        run_cfg = run_cfg if run_cfg is not None else load_run_config(cfg.run)
        mcfg = copy.deepcopy(run_cfg.model)
        adapter = check_run_dir(cfg.run) / "adapter"
        if not run_cfg.lora.enabled:  # full fine-tuning: the trained model itself, no adapter
            mcfg.name_or_path, adapter = str(Path(cfg.run).resolve() / "model"), None
        saved = adapter if adapter is not None else Path(mcfg.name_or_path)
        has_tok = any((saved / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
        tok_src: str | None = str(saved) if has_tok else (run_cfg.data.tokenizer or embedded_tokenizer_for(mcfg))
    elif run_cfg is not None:  # the base model of a training config, before fine-tuning
        mcfg = copy.deepcopy(run_cfg.model)
        tok_src = cfg.tokenizer or run_cfg.data.tokenizer or embedded_tokenizer_for(mcfg)
    else:
        mcfg = ModelConfig(name_or_path=str(cfg.model))
        tok_src = cfg.tokenizer or embedded_tokenizer_for(mcfg)
    if cfg.quantization is not None:
        mcfg.quantization = cfg.quantization
    if cfg.text_only is not None:
        mcfg.text_only = cfg.text_only
    if mcfg.attention in ("auto", "packed"):
        mcfg.attention = "sdpa"  # padded batches; the packed kernel is for training rows
    mcfg.validate()
    base = fingerprint(resolve_model_path(mcfg))
    if adapter is not None:  # the base the adapter was trained on, not whatever the path holds now
        check_base(cfg.run, base, f"evaluate.py --run {cfg.run}")
    tokenizer = load_tokenizer(tok_src)
    if before_model is not None:
        before_model(tokenizer)
    model = load_base_model(mcfg, device, packed=False, progress=cfg.progress and interactive())
    if base["sha256"] is None:  # a hub id the load has just downloaded: compare it now
        base = fingerprint(resolve_model_path(mcfg))
        if adapter is not None:
            check_base(cfg.run, base, f"evaluate.py --run {cfg.run}")
    vocab = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > vocab:
        raise UserError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary has {vocab}")
    if adapter is not None:
        from peft import PeftModel

        with warnings.catch_warnings():  # transformers' gradient-checkpointing rename, seen by PEFT
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*gradient_checkpointing.*")
            try:
                model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False, **adapter_load_kwargs(model))
            except (OSError, RuntimeError, ValueError, KeyError, pickle.UnpicklingError) as exc:  # a pickle adapter: refused unread
                raise UserError(f"{adapter}: the adapter does not load onto {mcfg.name_or_path}: {type(exc).__name__}: {first_line(exc)}") from None
        check_adapter_loaded(model, adapter)  # PEFT skips tensors whose names fit no module, with a warning
    model.eval()
    info = {
        "name_or_path": mcfg.name_or_path,
        # the base model: a full fine-tune loads RUN/model, but it was made from this one
        "base": run_cfg.model.name_or_path if cfg.run is not None else mcfg.name_or_path,
        "base_sha256": base["sha256"],  # config and weights of the base that was loaded (medslm.weights)
        "class": describe(model),
        "quantization": mcfg.quantization,
        "compute_dtype": str(next(p for p in model.parameters() if p.is_floating_point()).dtype),
        "run": str(Path(cfg.run).resolve()) if cfg.run else None,
        "adapter": str(adapter.resolve()) if adapter else None,
        # what the adapter holds, so an export of a moved run folder still knows this evaluation is its own
        "adapter_sha256": file_sha256(adapter / "adapter_model.safetensors") if adapter else None,
        "device": str(device),
    }
    return model, tokenizer, info


def select_items(cfg: EvalConfig, run_cfg: Any = None) -> tuple[list[MCQItem], dict[str, Any]]:
    """The items to evaluate and a description of where they came from.

    No ``--medqa``/``--kormedmcqa``: the run's data config (the default DataConfig for
    ``--model``: the embedded samples), split by its split mode, ``--split`` (default ``test``).
    Explicit files: every item in them (``--split all``) unless a split is asked for, in which case
    those files are split like training data (``--split-mode``; default: the run's, else hash). ``train`` is the
    whole training split, before ratio mixing; ``all`` is every loaded item, without leak removal.
    """
    explicit = cfg.medqa is not None or cfg.kormedmcqa is not None
    if explicit:
        data = DataConfig(medqa=list(cfg.medqa or []), kormedmcqa=list(cfg.kormedmcqa or []))
        if run_cfg is not None:
            data.split = run_cfg.data.split
        split = cfg.split or "all"
    else:
        data = copy.deepcopy(run_cfg.data) if run_cfg is not None else DataConfig()
        split = cfg.split or "test"
    if cfg.split_mode is not None:
        data.split = cfg.split_mode
    loaded = load_and_split(data)
    items = loaded.items["medqa"] + loaded.items["kormedmcqa"] if split == "all" else loaded.splits.splits[split]
    if cfg.max_items:
        kept: dict[str, int] = {}
        capped = []
        for it in items:
            if kept.get(it.benchmark, 0) < cfg.max_items:
                kept[it.benchmark] = kept.get(it.benchmark, 0) + 1
                capped.append(it)
        items = capped
    desc = {"medqa": data.medqa, "kormedmcqa": data.kormedmcqa, "split": split, "split_mode": data.split,
            "skipped_invalid": loaded.skips.summary()}  # rows skip_invalid dropped while loading (any split)
    if not items:
        raise UserError(f"no items to evaluate (data {data.medqa + data.kormedmcqa}, split {split!r}, split mode {data.split!r})")
    return items, desc


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


def predictions(items: Sequence[MCQItem], scores: Sequence[Sequence[float]], rules: DomainRules | None = None) -> list[dict[str, Any]]:
    """One record per item; ties go to the first option (deterministic). ``rules``: the domain
    tagger (None: the shipped rules)."""
    rules = rules or load_rules()
    out = []
    for it, sc in zip(items, scores):
        pred = max(range(len(sc)), key=lambda k: (sc[k], -k))
        out.append(
            {
                "id": it.id,
                "benchmark": it.benchmark,
                "subject": it.subject,
                "domain": rules.tag(it),
                "language": it.language,
                "gold": LETTERS[it.answer],
                "predicted": LETTERS[pred],
                "correct": pred == it.answer,
                "scores": [float(s) for s in sc],
            }
        )
    return out


def summarise(preds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per benchmark: accuracy, n, Wilson 95% CI, and the same per subject and per domain."""
    out: dict[str, Any] = {}
    for bench in sorted({p["benchmark"] for p in preds}):
        rows = [p for p in preds if p["benchmark"] == bench]
        summ = accuracy_summary([p["correct"] for p in rows])
        subjects = sorted({p["subject"] for p in rows})
        summ["subjects"] = {s: accuracy_summary([p["correct"] for p in rows if p["subject"] == s]) for s in subjects}
        if all("domain" in p for p in rows):
            domains = sorted({p["domain"] for p in rows})
            summ["domains"] = {d: accuracy_summary([p["correct"] for p in rows if p["domain"] == d]) for d in domains}
        out[bench] = summ
    return out


def format_table(benchmarks: dict[str, Any]) -> str:
    lines = [f"{'benchmark':<12} {'subject':<10} {'n':>6} {'accuracy':>9}  95% CI (Wilson)", "-" * 58]
    for bench, s in benchmarks.items():
        rows = [("(all)", s)] + list(s["subjects"].items())
        if set(s.get("domains", {})) != set(s["subjects"]):  # domains only where the tagger changed something
            rows += [(f"~{d}", r) for d, r in s["domains"].items()]
        for j, (name, r) in enumerate(rows):
            lo, hi = r["ci95"]
            lines.append(f"{bench if j == 0 else '':<12} {name:<10} {r['n']:>6} {100 * r['accuracy']:>8.1f}%  [{100 * lo:.1f}, {100 * hi:.1f}]")
    lines.append("(~domain: medslm.domains rules, law first, else the subject)")
    return "\n".join(lines)


def fit_prompts(items: list[MCQItem], tokenizer: Any, scoring: str, max_seq_len: int, overlong: str) -> tuple[list[MCQItem], list[list[int]], dict[str, Any]]:
    """Training's length limit and overlong policy applied to evaluation: (kept items, their prompt
    ids, counts). The prompt plus the longest continuation scored (the answer letter + EOS, as in
    training; or `` X. option text``) must fit ``max_seq_len``."""
    eos = 1 if getattr(tokenizer, "eos_token_id", None) is not None else 0
    letter_len = max(len(tokenizer(f" {x}", add_special_tokens=False)["input_ids"]) for x in LETTERS) + eos
    bos = getattr(tokenizer, "bos_token_id", None)
    kept, prompts, truncated = [], [], 0
    for it in items:
        if scoring == "option_text":
            reserve = max(len(tokenizer(f" {LETTERS[k]}. {t}", add_special_tokens=False)["input_ids"]) for k, t in enumerate(it.options))
        else:
            reserve = letter_len
        ids, cut = fit_prompt(it, encode_prompt(tokenizer, format_prompt(it)), reserve, max_seq_len, overlong, bos, tokenizer)  # type: ignore[arg-type]
        if ids is None:
            continue
        kept.append(it)
        prompts.append(ids)
        truncated += int(cut)
    counts = {"max_seq_len": max_seq_len, "policy": overlong, "truncated": truncated, "dropped": len(items) - len(kept)}
    return kept, prompts, counts


def default_out(cfg: EvalConfig) -> Path:
    if cfg.out:
        return Path(cfg.out)
    if cfg.run:
        return Path(cfg.run) / "eval"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(cfg.model).strip("/").split("/")[-1])
    return Path("runs") / f"eval-{safe}"


def _warn_if_samples(cfg: EvalConfig, run_cfg: Any) -> None:
    from medslm.console import sample_data_warning, warn

    if cfg.medqa is not None or cfg.kormedmcqa is not None:
        return
    name = run_cfg.model.name_or_path if run_cfg is not None else str(cfg.model)
    warning = sample_data_warning(name, run_cfg.data if run_cfg is not None else DataConfig())
    if warning:
        warn(warning.replace("--data.medqa=...", "--medqa ...").replace("--data.kormedmcqa=...", "--kormedmcqa ..."))


def evaluate(cfg: EvalConfig, base_of: Any = None) -> dict[str, Any]:
    """Score every selected item, write OUT/eval.json and OUT/predictions.jsonl, print the table.

    ``base_of`` (a TrainConfig, with ``cfg.model`` its model): score that run's base model before
    fine-tuning -- its model section (quantisation, dtypes, embedded seed) and tokenizer -- on the
    items its own evaluation would use (its data, split as in training)."""
    cfg.validate()
    t_start = time.perf_counter()
    if base_of is not None and (cfg.run is not None or cfg.model != base_of.model.name_or_path):
        raise ValueError("evaluate(base_of=...) needs cfg.model == base_of.model.name_or_path and no cfg.run")
    run_cfg = load_run_config(cfg.run) if cfg.run else base_of
    items, data_desc = select_items(cfg, run_cfg)
    skipped = data_desc["skipped_invalid"]
    if skipped["count"]:  # skip_invalid is the run's choice; what it dropped is said, never silent
        from medslm.console import warn

        reasons = ", ".join(f"{r} x{n}" for r, n in skipped["by_reason"].items())
        warn(f"skipped {skipped['count']} invalid rows while loading (skip_invalid; before splitting, so some may have been "
             f"test items): {reasons}; eval.json data.skipped_invalid lists them, e.g. {skipped['examples'][0]}")
    out = default_out(cfg)
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)  # a file or unwritable place fails before the model loads
    rules = load_rules(cfg.domain_rules)  # before the model loads: a bad rules file fails fast
    _warn_if_samples(cfg, run_cfg)
    data_cfg = run_cfg.data if run_cfg is not None else DataConfig()
    fitted: list[Any] = []

    def fit(tokenizer: Any) -> None:  # the length limit, before the model loads
        kept, prompts, overlong = fit_prompts(
            items, tokenizer, cfg.scoring, cfg.max_seq_len or data_cfg.max_seq_len, cfg.overlong or data_cfg.overlong
        )
        if not kept:
            raise UserError(f"no items left to evaluate: all {overlong['dropped']} are longer than max_seq_len={overlong['max_seq_len']}")
        fitted.extend([kept, prompts, overlong])

    model, tokenizer, model_info = load_for_eval(cfg, run_cfg, before_model=fit)
    items, prompts, overlong = fitted
    t0 = time.perf_counter()
    scores = SCORERS[cfg.scoring](model, tokenizer, items, cfg.batch_size, cfg.max_batch_tokens, cfg.progress, prompts=prompts)
    scoring_s = time.perf_counter() - t0
    preds = predictions(items, scores, rules)
    benchmarks = summarise(preds)
    result = {
        "model": model_info,
        "template": TEMPLATE,
        "scoring": cfg.scoring,
        "data": data_desc,
        "split": data_desc["split"],
        "n_items": len(items),
        "overlong": overlong,
        "domain_rules": rules.describe(),
        "benchmarks": benchmarks,
        "elapsed_s": time.perf_counter() - t_start,
        "scoring_s": scoring_s,
        "items_per_s": len(items) / scoring_s if scoring_s > 0 else None,
        "config": asdict(cfg),
    }
    write_text(out / "predictions.jsonl", "".join(json_line(p) for p in preds))
    write_text(out / "eval.json", json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(format_table(benchmarks))
    print(f"{len(items)} items, {cfg.scoring} scoring, {scoring_s:.1f}s; wrote {out / 'eval.json'}")
    if cfg.run:
        from medslm.metrics import log_eval_accuracy

        tags = log_eval_accuracy(cfg.run, benchmarks, data_desc["split"])
        print(f"TensorBoard: {len(tags)} accuracies under {Path(cfg.run) / 'tb'} (eval_{data_desc['split']}/...)")
    return {"out_dir": str(out), "eval": result, "predictions": preds}


__all__ = [
    "EvalConfig",
    "check_device",
    "check_run_dir",
    "default_out",
    "evaluate",
    "fit_prompts",
    "format_table",
    "load_for_eval",
    "load_run_config",
    "predictions",
    "resolve_device",
    "select_items",
    "summarise",
]
