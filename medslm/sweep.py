"""Ray Tune sweeps over ``train.main(cfg)`` + evaluation: the LoRA rank x alpha grid and the EN:KO ratios.

Every trial is an ordinary training run (``OUT/<trial>/{config.yaml,metrics.jsonl,tb/,adapter/,eval/}``)
built from one base :class:`TrainConfig` (YAML + ``--section.key=value`` overrides) plus the trial's
``lora.r``/``lora.alpha`` or ``data.ratio``. Everything is parsed and validated before Ray starts.
At the end ``OUT/results.json`` and ``OUT/results.md`` hold one record per trial, failed ones included
(with their error); ``tensorboard --logdir OUT`` shows every run.
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

from medslm.config import ConfigError, apply_mapping, option_pairs, parse_config, parse_ratio, to_dict
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
    procs_per_trial: int = 0  # processes per trial (torchrun); 0: one per GPU when gpus_per_trial > 1, else 1
    train_args: list[str] = field(default_factory=list)  # --section.key=value for every trial

    def validate(self) -> None:
        if self.kind not in SWEPT_KEYS:
            raise ConfigError(f"sweep kind must be grid or ratios, got {self.kind!r}")
        if not self.cpus_per_trial > 0:
            raise ConfigError(f"--cpus-per-trial must be > 0, got {self.cpus_per_trial}")
        if self.gpus_per_trial < 0:
            raise ConfigError(f"--gpus-per-trial must be >= 0, got {self.gpus_per_trial}")
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
            for r in self.ratios:
                parse_ratio(r)
            _no_duplicates("--ratios", [parse_ratio(r) for r in self.ratios])
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
_SCALAR_OPTS = {"config": str, "out": str, "address": str, "cpus-per-trial": float, "gpus-per-trial": float, "procs-per-trial": int}


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
    for key, value in option_pairs(argv):
        if key in _LIST_OPTS:
            if key not in allowed_lists:
                raise ConfigError(f"--{key} is not an option of the {kind} sweep")
            setattr(cfg, key, _split_list(key, value, _LIST_OPTS[key]))
        elif key in _SCALAR_OPTS:
            if _SCALAR_OPTS[key] in (float, int):
                try:
                    setattr(cfg, key.replace("-", "_"), _SCALAR_OPTS[key](value))
                except ValueError:
                    raise ConfigError(f"--{key} must be {'an integer' if _SCALAR_OPTS[key] is int else 'a number'}, got {value!r}") from None
            else:
                setattr(cfg, key, value)
        elif "." in key:  # a TrainConfig override, checked by parse_config in build_trials
            cfg.train_args.append(f"--{key}={value}")
        else:
            known = ", ".join(f"--{k}" for k in [*allowed_lists, *_SCALAR_OPTS])
            raise ConfigError(f"command line: unknown option --{key} (sweep options: {known}; "
                              "training options are --section.key=value)")
    cfg.validate()
    return cfg


# ---------------------------------------------------------------------------------------------
# Trials
# ---------------------------------------------------------------------------------------------


def trial_name(params: dict[str, Any]) -> str:
    if "ratio" in params:
        en, ko = parse_ratio(params["ratio"])
        return f"ratio-{en}-{ko}"
    return f"r{params['r']}-a{params['alpha']}"


def param_grid(cfg: SweepConfig) -> dict[str, list[Any]]:
    """The swept values, in the order given (Tune takes their cross product)."""
    if cfg.kind == "grid":
        return {"r": list(cfg.ranks), "alpha": list(cfg.alphas)}
    return {"ratio": list(cfg.ratios)}


def trial_params(cfg: SweepConfig) -> list[dict[str, Any]]:
    if cfg.kind == "grid":
        return [{"r": r, "alpha": a} for r in cfg.ranks for a in cfg.alphas]
    return [{"ratio": x} for x in cfg.ratios]


def base_train_config(cfg: SweepConfig) -> TrainConfig:
    return parse_config(TrainConfig, ["--config", cfg.config, *cfg.train_args])


def trial_train_config(base: dict[str, Any], params: dict[str, Any], out: str | Path) -> TrainConfig:
    """The base config (a ``to_dict`` tree) + this trial's values, its own output_dir, no progress bar."""
    tc = TrainConfig()
    apply_mapping(tc, base, "sweep base config")
    name = trial_name(params)
    tree: dict[str, Any] = {"train": {"output_dir": str(Path(out).resolve() / name), "progress": False}}
    if "ratio" in params:
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
    if cfg.kind == "ratios" and base_cfg.data.packed:
        raise ConfigError(
            f"data.packed={base_cfg.data.packed} fixes the EN:KO mix, so every trial would train on it; "
            "a ratio sweep builds each trial's mix from data.medqa and data.kormedmcqa"
        )
    base = to_dict(base_cfg)
    return [(trial_name(p), p, trial_train_config(base, p, cfg.out)) for p in trial_params(cfg)]


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
    return {k: v for k, v in m.items() if v is not None or k.startswith("acc_")}


def run_trial(base: dict[str, Any], params: dict[str, Any], out: str, threads: int) -> dict[str, Any]:
    """Train + evaluate one trial in this process (a world of one); returns the metrics."""
    import sys

    import torch

    repo = str(Path(__file__).resolve().parents[1])
    if repo not in sys.path:
        sys.path.insert(0, repo)  # train.py lives at the repository root
    import train as train_entry
    from medslm.evaluation import EvalConfig, evaluate

    for k in TORCHRUN_ENV:
        os.environ.pop(k, None)
    torch.set_num_threads(max(1, threads))
    tc = trial_train_config(base, params, out)
    result = train_entry.main(tc)
    ev = evaluate(EvalConfig(run=result["output_dir"], progress=False))
    metrics = metrics_of(result, ev)
    metrics["run_dir"] = result["output_dir"]
    return metrics


def _trainable(config: dict[str, Any], base: dict[str, Any], out: str, threads: int,
               cwd: str | None, env: dict[str, str], procs: int = 1) -> None:
    from ray import tune

    os.environ.update(env)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)  # relative data/model paths in the config mean what they meant to the driver
    params = {k: config[k] for k in ("r", "alpha", "ratio") if k in config}
    run_dir = Path(out) / trial_name(params)
    try:
        if procs > 1:  # an N-process FSDP job: torchrun on the GPUs Ray placed this trial on
            from medslm.trial_launcher import run_trial_torchrun

            metrics = run_trial_torchrun(base, params, out, procs, max(1, threads // procs))
        else:
            metrics = run_trial(base, params, out, threads)
    except BaseException:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
        raise
    tune.report(metrics)


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def _natural(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


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


def collect(trials: list[tuple[str, dict[str, Any], TrainConfig]], result_grid: Any, out: Path) -> list[dict[str, Any]]:
    """One record per planned trial, in natural name order; a trial with no result is failed."""
    by_name: dict[str, Any] = {}
    for res in result_grid:
        params = {k: res.config[k] for k in ("r", "alpha", "ratio") if k in (res.config or {})}
        if params:
            by_name[trial_name(params)] = res
    records = []
    for name, params, tc in trials:
        run_dir = Path(tc.train.output_dir)
        res = by_name.get(name)
        rec: dict[str, Any] = {"trial": name, "params": params, "run_dir": str(run_dir)}
        metrics = dict(res.metrics or {}) if res is not None else {}
        if res is not None and res.error is None and "final_loss" in metrics:
            rec["status"] = "ok"
            keep = ["final_loss", "val_loss", "steps", "packing_efficiency", "peak_mem_gb"]
            keep += sorted(k for k in metrics if k.startswith(("acc_", "n_")))
            rec["metrics"] = {k: metrics.get(k) for k in keep}
        else:
            rec["status"] = "failed"
            rec["error"] = _error_line(res.error if res is not None else None, run_dir)
            rec["metrics"] = {}
        records.append(rec)
    records.sort(key=lambda r: _natural(r["trial"]))
    return records


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if pct:
        return f"{100 * v:.1f}%"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def results_table(records: list[dict[str, Any]]) -> str:
    benches = sorted({k[4:] for r in records for k in r["metrics"] if k.startswith("acc_")} | set(BENCHMARKS))
    head = ["trial", "params", "status", "final_loss", "val_loss", *[f"acc {b}" for b in benches],
            "packing eff.", "peak mem GB", "run dir / error"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        m = r["metrics"]
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        tail = r["run_dir"] if r["status"] == "ok" else r.get("error", "").replace("|", "\\|")
        cells = [r["trial"], params, r["status"], _fmt(m.get("final_loss")), _fmt(m.get("val_loss")),
                 *[_fmt(m.get(f"acc_{b}"), pct=True) for b in benches],
                 _fmt(m.get("packing_efficiency")), _fmt(m.get("peak_mem_gb")), tail]
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


def run_sweep(cfg: SweepConfig) -> list[dict[str, Any]]:
    """Validate, run every trial under Ray Tune, write OUT/results.{json,md}; returns the records."""
    trials = build_trials(cfg)  # raises ConfigError before Ray is touched
    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = to_dict(base_train_config(cfg))

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
            _trainable, base=base, out=str(out), threads=max(1, int(cfg.cpus_per_trial)),
            cwd=os.getcwd() if local else None, env=env, procs=procs_per_trial(cfg),
        )
        resources = {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial}
        space = {k: tune.grid_search(v) for k, v in param_grid(cfg).items()}

        def _name(trial: Any) -> str:
            return trial_name({k: trial.config[k] for k in ("r", "alpha", "ratio") if k in trial.config})

        tuner = tune.Tuner(
            tune.with_resources(trainable, resources),
            param_space=space,
            tune_config=tune.TuneConfig(trial_name_creator=_name, trial_dirname_creator=_name),
            run_config=tune.RunConfig(storage_path=str(out / "ray"), name=f"sweep-{cfg.kind}"),
        )
        grid = tuner.fit()
        records = collect(trials, grid, out)
    finally:
        if started:
            ray.shutdown()
    table = write_results(records, cfg, out)
    print(table)
    failed = [r["trial"] for r in records if r["status"] != "ok"]
    print(f"\n{len(records) - len(failed)}/{len(records)} trials ok; wrote {out / 'results.json'} and {out / 'results.md'}")
    if failed:
        print(f"failed: {', '.join(failed)} (tracebacks in OUT/<trial>/error.txt and {out / 'ray'})")
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
    "param_grid",
    "parse_sweep_args",
    "results_table",
    "run_sweep",
    "run_trial",
    "trial_name",
    "trial_train_config",
]
