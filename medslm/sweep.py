"""Ray Tune sweeps over ``train.main(cfg)`` + evaluation: the LoRA rank x alpha grid and the EN:KO ratios.

Every trial is an ordinary training run (``OUT/<trial>/{config.yaml,metrics.jsonl,tb/,adapter/,eval/}``)
built from one base :class:`TrainConfig` (YAML + ``--section.key=value`` overrides) plus the trial's
``lora.r``/``lora.alpha`` or ``data.ratio``. Everything is parsed and validated before Ray starts.
At the end ``OUT/results.json`` and ``OUT/results.md`` hold one record per trial, failed and
interrupted ones included; ``tensorboard --logdir OUT`` shows every run. The ratio sweep also
evaluates the base model once (trial ``base``, no training) and writes the decision report
(:mod:`medslm.report`: ``OUT/report.md``, ``tradeoff.png``, ``recommendation.json``).

Rerunning the same command into the same ``--out`` skips finished trials and resumes the others
from their checkpoints (:mod:`medslm.trials`); a crashed trial is retried ``--retries`` times
(default 1) by Ray Tune, resuming from its checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import re
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from medslm import trials as T
from medslm.config import ConfigError, apply_mapping, option_pairs, parse_config, parse_ratio, to_dict
from medslm.report import REPORT_OPTIONS, ReportConfig, set_option
from medslm.train_config import DEFAULT_CONFIG, TrainConfig

Kind = Literal["grid", "ratios"]

PAPER_RANKS = [8, 16, 32]
PAPER_ALPHAS = [32, 64, 128]
PAPER_RATIOS = ["5:5", "10:3", "7:3", "8:2", "4:6", "3:7", "2:8"]
BENCHMARKS = ("medqa", "kormedmcqa")
# torchrun's variables: a trial is always a world of one.
TORCHRUN_ENV = (
    "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
    "ROLE_RANK", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID",
)
SWEPT_KEYS = {"grid": ("lora.r", "lora.alpha"), "ratios": ("data.ratio",)}


@dataclass
class SweepConfig:
    """Everything ``python sweeps/{grid,ratios}.py`` takes."""

    kind: Kind = "grid"
    config: str = str(DEFAULT_CONFIG)  # the base TrainConfig YAML
    ranks: list[int] = field(default_factory=lambda: list(PAPER_RANKS))  # grid only
    alphas: list[int] = field(default_factory=lambda: list(PAPER_ALPHAS))  # grid only
    ratios: list[str] = field(default_factory=lambda: list(PAPER_RATIOS))  # ratios only
    out: str = "runs/sweep-grid"
    address: str | None = None  # None: start Ray locally; "auto" or ray://HOST:PORT: connect
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    retries: int = 1  # Ray Tune FailureConfig.max_failures: a crashed trial is retried (resuming) this often
    domain_rules: str | None = None  # topic rules for every evaluation (None: the shipped file)
    report_only: bool = False  # ratios: rebuild the decision report from finished trials, run nothing
    report: ReportConfig = field(default_factory=ReportConfig)  # ratios: reference and use weights
    procs_per_trial: int = 0  # processes per trial (torchrun); 0: one per GPU when gpus_per_trial > 1, else 1
    train_args: list[str] = field(default_factory=list)  # --section.key=value for every trial

    def validate(self) -> None:
        if self.kind not in SWEPT_KEYS:
            raise ConfigError(f"sweep kind must be grid or ratios, got {self.kind!r}")
        if not self.cpus_per_trial > 0:
            raise ConfigError(f"--cpus-per-trial must be > 0, got {self.cpus_per_trial}")
        if not self.gpus_per_trial >= 0:  # nan too: Ray would wait forever for "nan GPUs"
            raise ConfigError(f"--gpus-per-trial must be a number >= 0, got {self.gpus_per_trial}")
        if self.address is not None and not self.address.strip():
            raise ConfigError("--address is empty (an unset variable?): give a Ray address, or leave the option out for a local Ray")
        if not str(self.out).strip():
            raise ConfigError("--out is empty: name the folder the sweep writes to")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ConfigError(f"--retries must be an integer >= 0, got {self.retries!r}")
        if self.gpus_per_trial > 1 and not float(self.gpus_per_trial).is_integer():
            raise ConfigError(f"--gpus-per-trial above 1 must be a whole number of GPUs, got {self.gpus_per_trial:g}")
        if self.procs_per_trial < 0 or (self.procs_per_trial > 1 and 0 < self.gpus_per_trial != self.procs_per_trial):
            raise ConfigError(f"--procs-per-trial={self.procs_per_trial}: with GPUs a trial runs one process per GPU "
                              f"(--gpus-per-trial={self.gpus_per_trial:g}); leave it out, or use it without GPUs (gloo)")
        if self.kind == "grid":
            for name, values in (("--ranks", self.ranks), ("--alphas", self.alphas)):
                if not values:
                    raise ConfigError(f"{name}: give at least one value")
                bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or v < 1]
                if bad:
                    raise ConfigError(f"{name}: values must be integers >= 1, got {bad[0]!r}")
                _no_duplicates(name, values)
        else:
            if not self.ratios:
                raise ConfigError("--ratios: give at least one EN:KO ratio")
            try:
                parsed = [parse_ratio(r) for r in self.ratios]
            except ConfigError as exc:
                raise ConfigError(f"--ratios: {exc}") from None
            _no_duplicates("--ratios", parsed)
            self.report.validate(self.ratios)
        for arg in self.train_args:
            key = arg[2:].split("=", 1)[0] if arg.startswith("--") else ""
            if key in SWEPT_KEYS[self.kind]:
                raise ConfigError(f"{arg}: {key} is what this sweep varies; set it with the sweep's own option")
        if self.address is None:  # a local Ray: a trial that can never be placed would wait forever
            ncpu = os.cpu_count() or 1
            if self.cpus_per_trial > ncpu:
                raise ConfigError(f"--cpus-per-trial={self.cpus_per_trial:g} but this machine has {ncpu} CPUs")
            if self.gpus_per_trial > 0:
                import torch

                ngpu = torch.cuda.device_count()
                if self.gpus_per_trial > ngpu:
                    raise ConfigError(f"--gpus-per-trial={self.gpus_per_trial:g} but this machine has {ngpu} GPUs")


def procs_per_trial(cfg: SweepConfig) -> int:
    if cfg.procs_per_trial:
        return cfg.procs_per_trial
    return int(cfg.gpus_per_trial) if cfg.gpus_per_trial > 1 else 1


def _no_duplicates(name: str, values: list[Any]) -> None:
    seen = set()
    for v in values:
        if v in seen:
            raise ConfigError(f"{name}: {v!r} is given twice")
        seen.add(v)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

_LIST_OPTS = {"ranks": int, "alphas": int, "ratios": str}
_SCALAR_OPTS = {"config": str, "out": str, "address": str, "cpus-per-trial": float, "gpus-per-trial": float,
                "procs-per-trial": int, "retries": int, "domain-rules": str}


def _split_list(opt: str, text: str, conv: type) -> list[Any]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    out = []
    for t in items:
        if conv is str:
            try:
                parse_ratio(t)
            except ConfigError as exc:
                raise ConfigError(f"--{opt}: {exc}") from None
            out.append(t)
            continue
        try:
            out.append(conv(t))
        except ValueError:
            raise ConfigError(f"--{opt}: {t!r} is not an integer") from None
    return out


def parse_sweep_args(kind: Kind, argv: list[str], default_out: str) -> SweepConfig:
    """Sweep options (``--ranks 8,16``, ``--out DIR``, ...); every other ``--a.b=v`` goes to TrainConfig."""
    cfg = SweepConfig(kind=kind, out=default_out)
    allowed_lists = {"grid": ("ranks", "alphas"), "ratios": ("ratios",)}[kind]
    if "--report-only" in argv:  # the one flag without a value
        if kind != "ratios":
            raise ConfigError("--report-only is an option of the ratio sweep")
        cfg.report_only = True
        argv = [a for a in argv if a != "--report-only"]
    for key, value in option_pairs(argv):
        if key in REPORT_OPTIONS:
            if kind != "ratios":
                raise ConfigError(f"--{key} is an option of the ratio sweep's decision report")
            set_option(cfg.report, key, value)
        elif key in _LIST_OPTS:
            if key not in allowed_lists:
                raise ConfigError(f"--{key} is not an option of the {kind} sweep")
            setattr(cfg, key, _split_list(key, value, _LIST_OPTS[key]))
        elif key in _SCALAR_OPTS:
            conv = _SCALAR_OPTS[key]
            if conv in (float, int):
                try:
                    setattr(cfg, key.replace("-", "_"), conv(value))
                except ValueError:
                    raise ConfigError(f"--{key} must be {'an integer' if conv is int else 'a number'}, got {value!r}") from None
            else:
                setattr(cfg, key.replace("-", "_"), value)
        elif "." in key:  # a TrainConfig override, checked by parse_config in build_trials
            cfg.train_args.append(f"--{key}={value}")
        else:
            extra = [*REPORT_OPTIONS, "report-only"] if kind == "ratios" else []
            known = ", ".join(f"--{k}" for k in [*allowed_lists, *_SCALAR_OPTS, *extra])
            raise ConfigError(f"command line: unknown option --{key} (sweep options: {known}; "
                              "training options are --section.key=value)")
    cfg.validate()
    return cfg


# ---------------------------------------------------------------------------------------------
# Trials
# ---------------------------------------------------------------------------------------------


def trial_name(params: dict[str, Any]) -> str:
    if "reference" in params:
        return "base"
    if "ratio" in params:
        en, ko = parse_ratio(params["ratio"])
        return f"ratio-{en}-{ko}"
    return f"r{params['r']}-a{params['alpha']}"


def trial_params(cfg: SweepConfig) -> list[dict[str, Any]]:
    if cfg.kind == "grid":
        return [{"r": r, "alpha": a} for r in cfg.ranks for a in cfg.alphas]
    base = [{"reference": "base"}] if cfg.report.reference == "base" else []  # evaluated once, no training
    return base + [{"ratio": x} for x in cfg.ratios]


def base_train_config(cfg: SweepConfig) -> TrainConfig:
    return parse_config(TrainConfig, ["--config", cfg.config, *cfg.train_args])


def trial_train_config(base: dict[str, Any], params: dict[str, Any], out: str | Path, world_size: int = 1) -> TrainConfig:
    """The base config (a ``to_dict`` tree) + this trial's values, its own output_dir, and
    ``train.resume=auto``: a rerun continues from the trial's newest checkpoint. Progress follows
    the base config: a Ray worker's stdout is not a terminal, so it is plain lines in its log.
    ``world_size`` (the trial's processes) is recorded: it sets the global batch, so a rerun with
    another --procs-per-trial is another config, never a reuse of trials trained at another batch."""
    tc = TrainConfig()
    apply_mapping(tc, base, "sweep base config")
    name = trial_name(params)
    if tc.distributed.world_size not in (None, world_size):
        raise ConfigError(f"distributed.world_size={tc.distributed.world_size} but a trial runs {world_size} process(es) "
                          "(--procs-per-trial / --gpus-per-trial): set them alike, or leave distributed.world_size out")
    tree: dict[str, Any] = {"train": {"output_dir": str(Path(out).resolve() / name), "resume": "auto"},
                            "distributed": {"world_size": world_size}}
    if "reference" in params:
        pass  # the base model, evaluated on the same items; nothing of the config is swept
    elif "ratio" in params:
        tree["data"] = {"ratio": params["ratio"]}
    else:
        tree["lora"] = {"r": params["r"], "alpha": params["alpha"]}
    apply_mapping(tc, tree, f"sweep trial {name}")
    tc.validate()
    return tc


def build_trials(cfg: SweepConfig) -> list[tuple[str, dict[str, Any], TrainConfig]]:
    """(name, params, TrainConfig) for every trial; all validation happens here, before Ray."""
    cfg.validate()
    base_cfg = base_train_config(cfg)
    if cfg.kind == "grid" and not base_cfg.lora.enabled:  # every trial would be the same full fine-tune, labelled r x alpha
        raise ConfigError("lora.enabled=false: a rank x alpha grid needs LoRA; full fine-tuning has no rank or alpha to sweep")
    if cfg.kind == "ratios" and base_cfg.data.packed:
        raise ConfigError(
            f"data.packed={base_cfg.data.packed} fixes the EN:KO mix, so every trial would train on it; "
            "a ratio sweep builds each trial's mix from data.medqa and data.kormedmcqa"
        )
    base = to_dict(base_cfg)
    return [(trial_name(p), p, trial_train_config(base, p, cfg.out, procs_per_trial(cfg))) for p in trial_params(cfg)]


# ---------------------------------------------------------------------------------------------
# The trainable (runs inside a Ray worker)
# ---------------------------------------------------------------------------------------------


def metrics_of(train_result: dict[str, Any], eval_result: dict[str, Any] | None) -> dict[str, Any]:
    vl = train_result.get("val_losses") or []
    m: dict[str, Any] = {
        "final_loss": train_result.get("final_loss"),
        "val_loss": vl[-1] if vl else None,
        "steps": train_result.get("steps"),
        "packing_efficiency": train_result.get("packing_efficiency"),
        "peak_mem_gb": train_result.get("peak_mem_gb"),
    }
    benches = (eval_result or {}).get("eval", {}).get("benchmarks", {})
    for b in sorted(set(BENCHMARKS) | set(benches)):
        if b in benches:
            m[f"acc_{b}"] = benches[b]["accuracy"]
            m[f"n_{b}"] = benches[b]["n"]
        else:
            m[f"acc_{b}"] = None
    m["domains"] = {b: {d: s["accuracy"] for d, s in v.get("domains", {}).items()} for b, v in benches.items() if v.get("domains")}
    return {k: v for k, v in m.items() if v is not None or k.startswith("acc_")}


TRAIN_SUMMARY = ("final_loss", "val_losses", "steps", "peak_mem_gb", "packing_efficiency")


def run_trial(base: dict[str, Any], params: dict[str, Any], out: str, threads: int, domain_rules: str | None = None,
              procs: int = 1) -> dict[str, Any]:
    """Train + evaluate one trial; returns the metrics. Training runs in this process (a world of
    one) or, with ``procs > 1``, as a ``procs``-rank torchrun job (:mod:`medslm.trial_launcher`).

    The trial's state goes to ``OUT/<trial>/trial.json`` (:mod:`medslm.trials`): a trial that
    finished training earlier is only evaluated; otherwise training resumes from its newest
    checkpoint. The ``base`` trial evaluates the base model on the same items, without training."""
    import sys

    import torch

    repo = str(Path(__file__).resolve().parents[1])
    if repo not in sys.path:
        sys.path.insert(0, repo)  # train.py lives at the repository root
    import train as train_entry
    from medslm.checkpoint import latest_checkpoint
    from medslm.domains import load_rules
    from medslm.evaluation import EvalConfig, evaluate

    for k in TORCHRUN_ENV:
        os.environ.pop(k, None)
    torch.set_num_threads(max(1, threads))
    tc = trial_train_config(base, params, out, procs)
    run_dir = Path(tc.train.output_dir)
    reference = "reference" in params
    key = T.config_key(tc, reference=reference)
    eval_key = T.eval_key(load_rules(domain_rules))
    doc = T.read_trial(run_dir)
    doc = doc if doc is not None and T.saved_key(doc, tc, reference) == key else None
    state: dict[str, Any] = {"trial": trial_name(params), "params": params, "config": key, "eval_key": eval_key,
                             "starts": (doc or {}).get("starts", [])}
    state["starts"].append({"at": T.now_iso(), "resume_from_step": None if reference else _step_of(latest_checkpoint(run_dir))})
    if doc is not None and doc["stage"] in ("trained", "done"):
        state.update(stage="trained", train=doc.get("train", {}))
        state["starts"][-1]["evaluate_only"] = True
    T.write_trial(run_dir, {**state, "stage": state.get("stage", "running")})
    if reference:
        ecfg = EvalConfig(model=tc.model.name_or_path, split="test", out=str(run_dir / "eval"), progress=tc.train.progress,
                          domain_rules=domain_rules)
        ev = evaluate(ecfg, base_of=tc)
        metrics = metrics_of({}, ev)
    else:
        if "train" not in state:
            if procs > 1:  # an N-process FSDP job: torchrun on the GPUs Ray placed this trial on
                from medslm.trial_launcher import train_torchrun

                result = train_torchrun(tc, out, procs, max(1, threads // procs))
            else:
                result = train_entry.main(tc)
            state.update(stage="trained", train={k: result.get(k) for k in TRAIN_SUMMARY})
            T.write_trial(run_dir, state)
        ev = evaluate(EvalConfig(run=str(run_dir), progress=tc.train.progress, domain_rules=domain_rules))
        metrics = {**metrics_of(state["train"], ev), **T.measured(run_dir)}
    metrics = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
    state.update(stage="done", metrics=metrics, finished=T.now_iso())
    T.write_trial(run_dir, state)
    metrics["run_dir"] = str(run_dir)
    return metrics


def _step_of(checkpoint: Path | None) -> int:
    return int(checkpoint.name.split("-")[-1]) if checkpoint is not None else 0


def _trainable(config: dict[str, Any], plan: dict[str, dict[str, Any]], base: dict[str, Any], out: str, threads: int,
               cwd: str | None, env: dict[str, str], domain_rules: str | None, procs: int = 1) -> None:
    from ray import tune

    from medslm.cli import USER_ERRORS

    for k in [k for k in os.environ if k.startswith("MEDSLM_") and k not in env]:
        del os.environ[k]  # a reused worker keeps nothing from an earlier sweep
    os.environ.update(env)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)  # relative data/model paths in the config mean what they meant to the driver
    params = plan[config["trial"]]
    run_dir = Path(out) / trial_name(params)
    (run_dir / "error.txt").unlink(missing_ok=True)  # from an earlier attempt
    try:
        metrics = run_trial(base, params, out, threads, domain_rules, procs)
    except USER_ERRORS as exc:  # deterministic (bad data, incompatible checkpoint): reported, not retried
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
        tune.report({"user_error": f"{type(exc).__name__}: {exc}"})
        return
    except BaseException:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
        raise
    tune.report({k: v for k, v in metrics.items() if not isinstance(v, dict)})


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def _natural(name: str) -> list[Any]:
    return [int(t) if t.isascii() and t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _error_line(err: BaseException | None, run_dir: Path) -> str:
    """The root cause in one line: the trial's own traceback file first, else Ray's error."""
    f = run_dir / "error.txt"
    if f.is_file():
        lines = [ln for ln in f.read_text(encoding="utf-8").strip().splitlines() if ln.strip()]
        if lines:
            return lines[-1].strip()
    if err is None:
        return "trial did not report a result"
    cause = getattr(err, "cause", None) or err
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"


def _trial_of(res: Any) -> str | None:
    conf = res.config or {}
    if "trial" in conf:
        return conf["trial"]
    params = {k: conf[k] for k in ("r", "alpha", "ratio") if k in conf}
    return trial_name(params) if params else None


def _history(doc: dict[str, Any]) -> str:
    starts = doc.get("starts", [])
    resumed = [s["resume_from_step"] for s in starts if s.get("resume_from_step")]
    parts = [f"{len(starts)} starts"] if len(starts) > 1 else []
    if resumed:
        parts.append(f"resumed from step {', '.join(map(str, resumed))}")
    return "; ".join(parts)


def collect(trials: list[tuple[str, dict[str, Any], TrainConfig]], result_grid: Any, out: Path,
            eval_key: dict[str, Any] | None = None, ran: set[str] | None = None) -> list[dict[str, Any]]:
    """One record per planned trial, in natural name order (``base`` first).

    ``ok``: its trial.json is done with this config (and these eval settings); ``failed``: Ray
    reported an error (or a user error) for it; ``interrupted``: it has no result and no error (the
    sweep was stopped, or never got to it) -- a rerun resumes it from its newest checkpoint."""
    from medslm.checkpoint import latest_checkpoint

    by_name: dict[str, Any] = {}
    for res in result_grid or []:
        name = _trial_of(res)
        if name:
            by_name[name] = res
    records = []
    for name, params, tc in trials:
        run_dir = Path(tc.train.output_dir)
        res = by_name.get(name)
        rec: dict[str, Any] = {"trial": name, "params": params, "run_dir": str(run_dir), "metrics": {}}
        doc = T.read_trial(run_dir)
        done = (doc is not None and doc["stage"] == "done"
                and T.saved_key(doc, tc, "reference" in params) == T.config_key(tc, reference="reference" in params)
                and (eval_key is None or doc.get("eval_key") == eval_key))
        metrics = dict(res.metrics or {}) if res is not None else {}
        if done:
            rec["status"] = "ok"
            rec["metrics"] = doc["metrics"]
            note = _history(doc)
            if ran is not None and name not in ran:
                note = "; ".join(x for x in ("finished earlier: reused", note) if x)
            if note:
                rec["note"] = note
        elif res is not None and (res.error is not None or "user_error" in metrics):
            rec["status"] = "failed"
            rec["error"] = metrics.get("user_error") or _error_line(res.error, run_dir)
        else:
            rec["status"] = "interrupted"
            ckpt = latest_checkpoint(run_dir)
            rec["note"] = f"rerun to resume from checkpoint step {_step_of(ckpt)}" if ckpt else "rerun to start it"
        records.append(rec)
    records.sort(key=lambda r: (r["trial"] != "base", _natural(r["trial"])))
    return records


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if pct:
        return f"{100 * v:.1f}%"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def results_table(records: list[dict[str, Any]]) -> str:
    benches = sorted({k[4:] for r in records for k in r["metrics"] if k.startswith("acc_")} | set(BENCHMARKS))
    head = ["trial", "params", "status", "final_loss", "val_loss", *[f"acc {b}" for b in benches], "KorMedMCQA by domain",
            "packing eff.", "peak mem GB", "train min", "run dir / error"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        m = r["metrics"]
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        tail = r["run_dir"] if r["status"] == "ok" else r.get("error", "").replace("|", "\\|")
        if r.get("note"):
            tail = f"{tail} ({r['note']})" if tail else r["note"]
        doms = ", ".join(f"{d} {_fmt(a, pct=True)}" for d, a in m.get("domains", {}).get("kormedmcqa", {}).items()) or "-"
        cells = [r["trial"], params, r["status"], _fmt(m.get("final_loss")), _fmt(m.get("val_loss")),
                 *[_fmt(m.get(f"acc_{b}"), pct=True) for b in benches], doms,
                 _fmt(m.get("packing_efficiency")), _fmt(m.get("peak_mem_gb")), _fmt(m.get("train_minutes")), tail]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(records: list[dict[str, Any]], cfg: SweepConfig, out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    doc = {"kind": cfg.kind, "base_config": cfg.config, "train_args": cfg.train_args, "trials": records}
    (out / "results.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    table = results_table(records)
    title = {"grid": "LoRA rank x alpha grid", "ratios": "EN:KO ratio sweep"}[cfg.kind]
    (out / "results.md").write_text(f"# {title}\n\n{table}\n", encoding="utf-8")
    return table


def _tune(cfg: SweepConfig, trials: list[tuple[str, dict[str, Any], TrainConfig]], names: list[str], out: Path) -> tuple[Any, bool]:
    """Run the named trials under Ray Tune; (result grid, whether the sweep was interrupted)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import tune

    started = False
    if not ray.is_initialized():
        if cfg.address:
            ray.init(address=cfg.address)
        else:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
        started = True
    try:
        local = cfg.address is None
        env = {k: v for k, v in os.environ.items() if k.startswith("MEDSLM_")} if local else {}
        trainable = tune.with_parameters(
            _trainable, plan={n: p for n, p, _ in trials}, base=to_dict(base_train_config(cfg)), out=str(out),
            threads=max(1, int(cfg.cpus_per_trial)), cwd=os.getcwd() if local else None, env=env, domain_rules=cfg.domain_rules,
            procs=procs_per_trial(cfg),
        )
        resources = {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial}

        def _name(trial: Any) -> str:
            return trial.config["trial"]

        tuner = tune.Tuner(
            tune.with_resources(trainable, resources),
            param_space={"trial": tune.grid_search(names)},
            tune_config=tune.TuneConfig(trial_name_creator=_name, trial_dirname_creator=_name),
            run_config=tune.RunConfig(storage_path=str(out / "ray"), name=f"sweep-{cfg.kind}",
                                      failure_config=tune.FailureConfig(max_failures=cfg.retries)),
        )
        try:
            return tuner.fit(), False
        except KeyboardInterrupt:  # a second Ctrl-C: record what finished, mark the rest interrupted
            return [], True
    finally:
        if started:
            ray.shutdown()


def run_sweep(cfg: SweepConfig) -> list[dict[str, Any]]:
    """Validate, run every unfinished trial under Ray Tune, write OUT/results.{json,md} (and, for the
    ratio sweep, the decision report); returns the records. Nothing is run with ``report_only``."""
    from medslm.domains import load_rules

    trials = build_trials(cfg)  # raises ConfigError before Ray is touched
    eval_key = T.eval_key(load_rules(cfg.domain_rules))
    states = {name: T.plan(name, tc, eval_key, reference="reference" in params) for name, params, tc in trials}
    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    todo = [n for n, _, _ in trials if states[n] != "done"]
    interrupted = False
    grid: Any = []
    if cfg.report_only:
        todo = []
    else:
        reused = [n for n in states if states[n] == "done"]
        if reused:
            print(f"{len(reused)} trials already finished with this config: {', '.join(reused)} (reused)")
        resumed = [n for n in todo if states[n] in ("resume", "evaluate")]
        if resumed:
            print(f"continuing {', '.join(f'{n} ({states[n]})' for n in resumed)}")
        if todo:
            grid, interrupted = _tune(cfg, trials, todo, out)
    records = collect(trials, grid, out, eval_key, ran=set(todo))
    table = write_results(records, cfg, out)
    print(table)
    failed = [r["trial"] for r in records if r["status"] == "failed"]
    stopped = [r["trial"] for r in records if r["status"] == "interrupted"]
    ok = len(records) - len(failed) - len(stopped)
    print(f"\n{ok}/{len(records)} trials ok; wrote {out / 'results.json'} and {out / 'results.md'}")
    if failed:
        print(f"failed: {', '.join(failed)} (tracebacks in OUT/<trial>/error.txt and {out / 'ray'})")
    if stopped or interrupted:
        print(f"interrupted: {', '.join(stopped)}; rerun the same command to resume them")
    if cfg.kind == "ratios":
        from medslm.report import write_decision_report

        base_cfg = base_train_config(cfg)
        meta = {"model": base_cfg.model.name_or_path, "config": cfg.config, "medqa": base_cfg.data.medqa, "kormedmcqa": base_cfg.data.kormedmcqa}
        rep = write_decision_report(records, cfg.report, out, meta)
        print(f"decision report: {rep['report']} (plot {rep['plot']}, {out / 'recommendation.json'})")
    print(f"TensorBoard: tensorboard --logdir {out}")
    return records


def cli_main(kind: Kind, argv: list[str], doc: str, default_out: str) -> int:
    """Shared by sweeps/grid.py and sweeps/ratios.py: parse, run, exit 1 if any trial failed."""
    from medslm.cli import run_cli

    if any(a in ("-h", "--help") for a in argv):
        print(doc)
        return 0
    records = run_cli(lambda: run_sweep(parse_sweep_args(kind, argv, default_out)))
    return 1 if any(r["status"] != "ok" for r in records) else 0


__all__ = [
    "PAPER_ALPHAS",
    "PAPER_RANKS",
    "PAPER_RATIOS",
    "SweepConfig",
    "build_trials",
    "cli_main",
    "collect",
    "parse_sweep_args",
    "results_table",
    "run_sweep",
    "run_trial",
    "trial_name",
    "trial_train_config",
]
