"""The paper's tables in one command: ``launch/reproduce_paper.sh`` (``python reproduce.py``).

Runs, under ``OUT`` (default ``runs/reproduce``), each step only if it has not finished before:

1. ``pack/``: pack.py on the balanced 5:5 mix -- packing efficiency and steps/epoch unpacked vs packed;
2. ``table5/<row>/``: the component ablation of Table 5, each row trained (train.py, or torchrun
   for the FSDP rows) and evaluated: full fine-tuning in bf16 (``lora.enabled: false``, one
   process); + QLoRA (NF4, one process); + FSDP (``--nproc`` processes); + packing; + the
   balanced 5:5 mix. Rows 1-4 train on the English-heavy 10:3 mix, and the single-process rows
   raise ``grad_accum`` so every row takes the same global batch;
3. Table 6 from the same runs: peak memory, minutes per epoch (time in optimizer steps), speedup
   over full fine-tuning;
4. ``sweep/``: the ratio sweep (``sweeps/ratios.py``) with its decision report; its 5:5 and 10:3
   trials are Table 7;
5. ``fig2/``: the LoRA layer analysis (Fig. 2) of the sweep's 5:5 trial;

then writes ``REPORT.md`` (and ``REPORT.json``) with each of our tables beside the paper's
published numbers (``medslm/assets/paper_tables.yaml``) and links to the plots, saying for every
section whether it ran on the embedded default (mechanics only) or on real weights and data.
Rerunning the same command skips what finished (trainings resume from their checkpoints).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medslm import trials as T
from medslm.cli import UserError
from medslm.config import ConfigError, parse_config, save_config, to_dict
from medslm.train_config import REPO_ROOT, TrainConfig

PAPER = REPO_ROOT / "medslm" / "assets" / "paper_tables.yaml"
SMOKE_ARGS = ["--train.max_steps=2", "--train.save_every=1", "--train.warmup_steps=1", "--data.max_seq_len=384",
              "--train.micro_batch_size=2"]


@dataclass(frozen=True)
class Row:
    name: str
    label: str
    overrides: tuple[str, ...]
    fsdp: bool  # runs on --nproc processes; otherwise one process with grad_accum x nproc


ROWS = (
    Row("full_ft", "Full fine-tuning (bf16)", ("--lora.enabled=false", "--model.quantization=none", "--model.compute_dtype=bfloat16",
                                               "--data.packing=false", "--data.ratio=10:3"), False),
    Row("qlora", "+ QLoRA (NF4)", ("--lora.enabled=true", "--model.quantization=nf4", "--data.packing=false", "--data.ratio=10:3"), False),
    Row("fsdp", "+ FSDP", ("--lora.enabled=true", "--model.quantization=nf4", "--data.packing=false", "--data.ratio=10:3", "--distributed.fsdp=true"), True),
    Row("packing", "+ packing", ("--lora.enabled=true", "--model.quantization=nf4", "--data.packing=true", "--data.ratio=10:3", "--distributed.fsdp=true"), True),
    Row("balanced", "+ balanced mix (5:5)", ("--lora.enabled=true", "--model.quantization=nf4", "--data.packing=true", "--data.ratio=5:5", "--distributed.fsdp=true"), True),
)


@dataclass
class ReproduceConfig:
    smoke: bool = False  # the embedded default (unless --model/--medqa/--kormedmcqa) with a few steps
    config: str | None = None  # None: configs/tiny.yaml with --smoke, else configs/medgemma-4b.yaml
    model: str | None = None
    medqa: list[str] | None = None
    kormedmcqa: list[str] | None = None
    out: str = "runs/reproduce"
    nproc: int = 0  # processes of the FSDP rows; 0: every visible GPU (1 on a CPU)
    ratios: list[str] | None = None  # None: the paper's seven (with --smoke: 5:5,10:3)
    train_args: list[str] = field(default_factory=list)  # --section.key=value for every training

    def config_file(self) -> str:
        return self.config or str(REPO_ROOT / "configs" / ("tiny.yaml" if self.smoke else "medgemma-4b.yaml"))

    def processes(self) -> int:
        if self.nproc:
            return self.nproc
        import torch

        return max(1, torch.cuda.device_count())

    def common_args(self) -> list[str]:
        args = ["--config", self.config_file(), *(SMOKE_ARGS if self.smoke else [])]
        if self.model:
            args.append(f"--model.name_or_path={self.model}")
        if self.medqa is not None:
            args.append(f"--data.medqa={','.join(self.medqa)}")
        if self.kormedmcqa is not None:
            args.append(f"--data.kormedmcqa={','.join(self.kormedmcqa)}")
        return [*args, *self.train_args]

    def argv_extra(self) -> list[str]:
        """The options besides --smoke/--out/overrides, as given on the command line."""
        out = [f"--config {self.config}"] if self.config else []
        out += [f"--model {self.model}"] if self.model else []
        out += [f"--{k} {' '.join(v)}" for k, v in (("medqa", self.medqa), ("kormedmcqa", self.kormedmcqa)) if v is not None]
        out += [f"--nproc {self.nproc}"] if self.nproc else []
        out += [f"--ratios {','.join(self.ratios)}"] if self.ratios else []
        return out

    def validate(self) -> None:
        if self.nproc < 0:
            raise ConfigError(f"--nproc must be >= 0, got {self.nproc}")
        for a in self.train_args:
            if not (a.startswith("--") and "." in a.split("=", 1)[0] and "=" in a):
                raise ConfigError(f"{a}: training overrides are --section.key=value")
        if not str(self.out).strip():
            raise ConfigError("--out is empty: name the folder the reproduction writes to")
        parse_config(TrainConfig, self.common_args())  # every override is checked before anything runs
        from medslm.sweep import build_trials

        build_trials(sweep_config(self, Path(self.out)))  # the sweep's options (--ratios) too, not after hours of Table 5


def parse_args(argv: list[str]) -> ReproduceConfig:
    p = argparse.ArgumentParser(prog="reproduce_paper.sh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="the embedded default, a few steps: mechanics only, on a CPU in minutes")
    p.add_argument("--config", help="base TrainConfig (default configs/medgemma-4b.yaml; configs/tiny.yaml with --smoke)")
    p.add_argument("--model", help="model folder or hub id (model.name_or_path)")
    p.add_argument("--medqa", nargs="+", metavar="PATH")
    p.add_argument("--kormedmcqa", nargs="+", metavar="PATH")
    p.add_argument("--out", default=ReproduceConfig.out)
    p.add_argument("--nproc", type=int, default=0, help="processes (GPUs) of the FSDP rows; default every visible GPU")
    p.add_argument("--ratios", help="ratio sweep, comma-separated (default the paper's seven; --smoke: 5:5,10:3)")
    a, rest = p.parse_known_args(argv)
    cfg = ReproduceConfig(smoke=a.smoke, config=a.config, model=a.model, medqa=a.medqa, kormedmcqa=a.kormedmcqa,
                          out=a.out, nproc=a.nproc, ratios=[r.strip() for r in a.ratios.split(",")] if a.ratios else None,
                          train_args=list(rest))
    cfg.validate()
    return cfg


# ---------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def pack_step(cfg: ReproduceConfig, out: Path) -> dict[str, Any]:
    """pack.py on the 5:5 mix, for the global batch of the FSDP rows; skipped when done."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))  # pack.py lives at the repository root
    import pack as pack_entry

    from medslm.modeling import embedded_tokenizer_for

    tc = parse_config(TrainConfig, [*cfg.common_args(), "--data.ratio=5:5", "--data.packing=true"])
    data = tc.data
    data.tokenizer = data.tokenizer or embedded_tokenizer_for(tc.model)
    n = cfg.processes()
    pcfg = pack_entry.PackConfig(data=data, out=str(out / "pack"), global_batch_rows=tc.train.micro_batch_size * tc.train.grad_accum * n,
                                 batch_source=f"the training config: micro_batch_size {tc.train.micro_batch_size} x grad_accum "
                                              f"{tc.train.grad_accum} x {n} process(es)")
    report = _read_json(out / "pack" / "packing_report.json")
    if report is not None and report.get("config") == json.loads(json.dumps(to_dict(pcfg))):
        print(f"pack: done earlier ({out / 'pack'})")
        return report
    return pack_entry.main(pcfg)


def row_config(cfg: ReproduceConfig, row: Row, out: Path) -> TrainConfig:
    n = cfg.processes()
    base = parse_config(TrainConfig, cfg.common_args())
    accum = [] if row.fsdp else [f"--train.grad_accum={base.train.grad_accum * n}"]
    return parse_config(TrainConfig, [*cfg.common_args(), *row.overrides, *accum, f"--train.output_dir={out / 'table5' / row.name}", "--train.resume=auto", "--train.progress=false"])


def train_row(cfg: ReproduceConfig, row: Row, out: Path, eval_key: dict[str, Any]) -> dict[str, Any]:
    """Train (a fresh process, so peak memory is this row's) and evaluate one Table 5 row."""
    from medslm.evaluation import EvalConfig, evaluate

    tc = row_config(cfg, row, out)
    run_dir = Path(tc.train.output_dir)
    state = T.plan(row.name, tc, eval_key)
    doc = T.read_trial(run_dir) or {"starts": []}
    key = T.config_key(tc)
    nproc = cfg.processes() if row.fsdp else 1
    if state == "done":
        print(f"table5/{row.name}: done earlier")
        return doc
    if state in ("new", "resume"):
        cfg_file = out / "table5" / f"{row.name}.yaml"
        save_config(tc, cfg_file)
        cmd = [sys.executable, "train.py", "--config", str(cfg_file)]
        if nproc > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "train.py", "--config", str(cfg_file)]
        starts = [*doc.get("starts", []), {"at": T.now_iso(), "nproc": nproc}]
        T.write_trial(run_dir, {"trial": row.name, "stage": "running", "config": key, "eval_key": eval_key, "starts": starts})
        log = out / "table5" / f"{row.name}.log"
        print(f"table5/{row.name}: {row.label}: {' '.join(cmd[1:])} (log {log})", flush=True)
        with open(log, "a", encoding="utf-8") as f:
            proc = subprocess.run(cmd, cwd=REPO_ROOT, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if proc.returncode != 0:
            lines = [ln for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
            raise UserError(f"table5/{row.name}: training exited {proc.returncode}: {lines[-1] if lines else ''} (full log: {log}); "
                            "rerun to resume from its checkpoint")
        doc = {"trial": row.name, "stage": "trained", "config": key, "eval_key": eval_key, "starts": starts, "nproc": nproc}
        T.write_trial(run_dir, doc)
    ev = evaluate(EvalConfig(run=str(run_dir), out=str(run_dir / "eval"), progress=False))["eval"]
    m = T.measured(run_dir)
    from medslm.metrics import read_records

    last_epoch = max((r.get("epoch", 0.0) for r in read_records(run_dir) if r.get("kind") == "train"), default=0.0)
    metrics = {
        "acc_medqa": ev["benchmarks"].get("medqa", {}).get("accuracy"),
        "acc_kormedmcqa": ev["benchmarks"].get("kormedmcqa", {}).get("accuracy"),
        **m,
        "epochs": last_epoch,
        "minutes_per_epoch": m["train_minutes"] / last_epoch if m["train_minutes"] is not None and last_epoch else None,
        "nproc": doc.get("nproc", nproc),
    }
    doc = {**doc, "stage": "done", "metrics": metrics, "finished": T.now_iso()}
    T.write_trial(run_dir, doc)
    return doc


def sweep_step(cfg: ReproduceConfig, out: Path) -> list[dict[str, Any]]:
    """The ratio sweep + decision report; trials use the FSDP rows' global batch on one process each."""
    from medslm.sweep import run_sweep

    return run_sweep(sweep_config(cfg, out))


def sweep_config(cfg: ReproduceConfig, out: Path) -> Any:
    """The ratio sweep this reproduction runs (checked by :meth:`ReproduceConfig.validate` first)."""
    import torch

    from medslm.sweep import PAPER_RATIOS, SweepConfig

    n = cfg.processes()
    base = parse_config(TrainConfig, cfg.common_args())
    accum = [f"--train.grad_accum={base.train.grad_accum * n}"] if n > 1 else []
    args = [a for a in cfg.common_args()[2:]]  # without --config FILE
    ratios = cfg.ratios or (["5:5", "10:3"] if cfg.smoke else list(PAPER_RATIOS))
    return SweepConfig(kind="ratios", config=cfg.config_file(), ratios=ratios, out=str(out / "sweep"),
                       gpus_per_trial=1.0 if torch.cuda.is_available() else 0.0, train_args=[*args, *accum])


def fig2_step(records: list[dict[str, Any]], out: Path) -> dict[str, Any] | None:
    """The LoRA layer analysis of the sweep's 5:5 trial (else the first finished ratio)."""
    from medslm.lora_analysis import LoraActivationsConfig, lora_activations

    ok = [r for r in records if r["status"] == "ok" and "ratio" in r["params"]]
    src = next((r for r in ok if r["params"]["ratio"] == "5:5"), ok[0] if ok else None)
    if src is None:
        return None
    finished = (T.read_trial(src["run_dir"]) or {}).get("finished")
    stage = _read_json(out / "fig2" / "stage.json")
    key = {"run": src["run_dir"], "finished": finished}
    result = _read_json(out / "fig2" / "lora_activations.json")
    if stage == key and result is not None:
        print("fig2: done earlier")
    else:
        result = lora_activations(LoraActivationsConfig(run=src["run_dir"], out=str(out / "fig2"), progress=False))
        (out / "fig2" / "stage.json").write_text(json.dumps(key) + "\n", encoding="utf-8")
    return {"ratio": src["params"]["ratio"], "run": src["run_dir"], "result": result}


# ---------------------------------------------------------------------------------------------
# REPORT.md
# ---------------------------------------------------------------------------------------------


def _p(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _f(x: Any, fmt: str = ".2f") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def provenance(tc: TrainConfig, smoke: bool) -> str:
    from medslm.report import is_embedded

    meta = {"model": tc.model.name_or_path, "medqa": tc.data.medqa, "kormedmcqa": tc.data.kormedmcqa}
    steps = f"{tc.train.max_steps} optimizer steps" if tc.train.max_steps else f"{tc.train.epochs} epochs"
    if is_embedded(meta):
        return (f"embedded default (model `{tc.model.name_or_path}`, MedQA {tc.data.medqa}, KorMedMCQA {tc.data.kormedmcqa}, {steps}): "
                "**mechanics only, the accuracies are meaningless**")
    return f"real weights and data (model `{tc.model.name_or_path}`, MedQA {tc.data.medqa}, KorMedMCQA {tc.data.kormedmcqa}, {steps})" + (
        "; --smoke: far too few steps for the numbers to mean anything" if smoke else "")


def write_report(cfg: ReproduceConfig, out: Path, pack: dict[str, Any], rows: dict[str, dict[str, Any]],
                 sweep: list[dict[str, Any]], fig2: dict[str, Any] | None) -> dict[str, Any]:
    paper = yaml.safe_load(PAPER.read_text(encoding="utf-8"))
    base = parse_config(TrainConfig, cfg.common_args())
    prov = provenance(base, cfg.smoke)
    n = cfg.processes()
    L = ["# Reproducing Yoo, Hyeon & Cho (2026): Tables 5-7 and Fig. 2", "",
         "Command: `launch/reproduce_paper.sh " + " ".join([*(["--smoke"] if cfg.smoke else []), "--out", cfg.out, *cfg.argv_extra(), *cfg.train_args]) + "`; "
         f"FSDP rows on {n} process(es). "
         "Every number below is read from the run files named in its section; the paper's are as published.", "",
         "| section | ran on |", "|---|---|"]
    for sec in ("Pack report", "Table 5", "Table 6", "Table 7 / ratio sweep", "Fig. 2"):
        L.append(f"| {sec} | {prov} |")
    # pack
    L += ["", "## Pack report (`pack/packing_report.json`)", "",
          "| mix | samples | packed rows | packing efficiency | padding unpacked | global batch rows | steps/epoch unpacked | steps/epoch packed |",
          "|---|---:|---:|---:|---:|---:|---:|---:|",
          f"| {pack['ratio']} | {pack['num_samples']} | {pack['num_rows']} | {pack['packing_efficiency']:.4f} | "
          f"{pack['padding_fraction_unpacked']:.4f} | {pack['global_batch_rows']} | {pack['steps_per_epoch_unpacked']} | {pack['steps_per_epoch_packed']} |"]
    # table 5
    L += ["", "## Table 5: component ablation (`table5/<row>/`: `eval/eval.json`, `metrics.jsonl`)", "",
          "Rows 1-4 train on the 10:3 mix, row 5 on 5:5. Accuracy in %, peak memory in GB (CUDA peak on a GPU, "
          "peak RSS on a CPU), time = minutes in optimizer steps.", "",
          "| row | MedQA ours | MedQA paper | KorMedMCQA ours | KorMedMCQA paper | peak mem GB ours | paper | train min ours | paper | processes |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in ROWS:
        m = rows[row.name]["metrics"]
        pp = paper["table5"][row.name]
        L.append(f"| {row.label} | {_p(m['acc_medqa'])} | {pp['medqa']:.2f} | {_p(m['acc_kormedmcqa'])} | {pp['kormedmcqa']:.2f} | "
                 f"{_f(m['peak_mem_gb'])} | {pp['memory_gb']} | {_f(m['train_minutes'], '.3f')} | {pp['minutes']} | {m['nproc']} |")
    if n == 1:
        L += ["", "The FSDP rows ran on one process: FSDP shards nothing in a world of one, so rows 2 and 3 differ only by chance."]
    # table 6
    ref = rows["full_ft"]["metrics"]
    L += ["", "## Table 6: efficiency (the same runs)", "",
          "| row | peak mem GB | min/epoch | speedup vs full FT | paper mem GB | paper min | paper speedup (from Table 5 min) |",
          "|---|---:|---:|---:|---:|---:|---:|"]
    for row in ROWS:
        m = rows[row.name]["metrics"]
        pp = paper["table5"][row.name]
        speed = ref["minutes_per_epoch"] / m["minutes_per_epoch"] if ref.get("minutes_per_epoch") and m.get("minutes_per_epoch") else None
        m["speedup"] = speed
        L.append(f"| {row.label} | {_f(m['peak_mem_gb'])} | {_f(m['minutes_per_epoch'], '.3f')} | {_f(speed)} | {pp['memory_gb']} | "
                 f"{pp['minutes']} | {paper['table5']['full_ft']['minutes'] / pp['minutes']:.2f} |")
    # table 7
    by_ratio = {r["params"].get("ratio"): r for r in sweep if "ratio" in r["params"]}
    L += ["", "## Table 7: 5:5 vs 10:3 (`sweep/ratio-5-5`, `sweep/ratio-10-3`)", ""]
    t7: dict[str, Any] = {}
    if all(by_ratio.get(k, {}).get("status") == "ok" for k in ("5:5", "10:3")):
        from medslm.forgetting import compare_predictions, read_predictions

        L += ["| mix | MedQA ours | MedQA paper | KorMedMCQA ours | KorMedMCQA paper |", "|---|---:|---:|---:|---:|"]
        for k in ("5:5", "10:3"):
            ev = json.loads((Path(by_ratio[k]["run_dir"]) / "eval" / "eval.json").read_text(encoding="utf-8"))["benchmarks"]
            t7[k] = {b: ev[b]["accuracy"] for b in ("medqa", "kormedmcqa")}
            L.append(f"| {k} | {_p(t7[k]['medqa'])} | {paper['table7'][k]['medqa']:.2f} | {_p(t7[k]['kormedmcqa'])} | {paper['table7'][k]['kormedmcqa']:.2f} |")
        rows7 = compare_predictions(read_predictions(Path(by_ratio["5:5"]["run_dir"]) / "eval"), read_predictions(Path(by_ratio["10:3"]["run_dir"]) / "eval"))
        overall = [r for r in rows7 if r["subject"] == "(all)" and r["domain"] == "(all)"]
        t7["paired"] = overall
        L += ["", "Paired, 10:3 − 5:5 on the same items (the paper reports no interval):", "",
              "| benchmark | Δ pp | 95% CI | McNemar p |", "|---|---:|---|---:|"]
        L += [f"| {r['benchmark']} | {r['delta_pp']:+.2f} | [{r['ci_low_pp']:+.2f}, {r['ci_high_pp']:+.2f}] | {r['mcnemar_p']:.3g} |" for r in overall]
    else:
        L.append("Not available: " + ", ".join(f"{k} {by_ratio.get(k, {}).get('status', 'not swept')}" for k in ("5:5", "10:3")) + ".")
    rec = _read_json(out / "sweep" / "recommendation.json") or {}
    L += ["", "## Ratio sweep and decision", "",
          f"Full report: [sweep/report.md](sweep/report.md); trade-off plot: [sweep/tradeoff.png](sweep/tradeoff.png). "
          "Trials: " + ", ".join(f"{r['trial']} {r['status']}" for r in sweep) + ".", "",
          "| use | best | cannot be told apart | recommendation |", "|---|---|---|---|"]
    for use in (rec.get("uses") or {}).values():
        L.append(f"| {use.get('title')} | {use.get('best') or '-'} | {', '.join(use.get('indistinguishable') or []) or '-'} | "
                 f"{use.get('winner') or 'no single winner'} |")
    # fig 2
    L += ["", "## Fig. 2: LoRA contribution per layer (`fig2/lora_activations.json`)", ""]
    if fig2 is None:
        L.append("Not available: no ratio trial finished.")
    else:
        g = fig2["result"]["groups"]
        L += [f"Trial {fig2['ratio']}; plot: [fig2/lora_activations.png](fig2/lora_activations.png). Mean |LoRA delta| per token:", "",
              "| layer | English (MedQA) | Korean (KorMedMCQA) |", "|---:|---:|---:|"]
        for layer in fig2["result"]["layers"]:
            L.append(f"| {layer} | {_f(g.get('en', {}).get('per_layer', [None] * (layer + 1))[layer], '.4g')} | "
                     f"{_f(g.get('ko', {}).get('per_layer', [None] * (layer + 1))[layer], '.4g')} |")
    (out / "REPORT.md").write_text("\n".join(L) + "\n", encoding="utf-8")
    doc = {"provenance": prov, "pack": {k: v for k, v in pack.items() if k != "config"}, "table5": {k: v["metrics"] for k, v in rows.items()},
           "table7": t7, "sweep": [{k: r[k] for k in ("trial", "status")} for r in sweep], "fig2": fig2 and {"ratio": fig2["ratio"], "run": fig2["run"]}}
    (out / "REPORT.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    return doc


def main(cfg: ReproduceConfig) -> dict[str, Any]:
    """Run every step that has not finished, then write REPORT.md; returns REPORT.json's content."""
    from medslm.domains import load_rules

    cfg.validate()
    out = Path(cfg.out).resolve()
    (out / "table5").mkdir(parents=True, exist_ok=True)
    eval_key = T.eval_key(load_rules())
    for row in ROWS:  # a folder made with other settings is refused before anything runs
        T.plan(row.name, row_config(cfg, row, out), eval_key)
    pack = pack_step(cfg, out)
    rows = {row.name: train_row(cfg, row, out, eval_key) for row in ROWS}
    sweep = sweep_step(cfg, out)
    fig2 = fig2_step(sweep, out)
    doc = write_report(cfg, out, pack, rows, sweep, fig2)
    print(f"wrote {out / 'REPORT.md'}")
    return doc


__all__ = ["ROWS", "ReproduceConfig", "main", "parse_args", "write_report"]
