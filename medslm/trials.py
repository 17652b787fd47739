"""What a sweep trial leaves on disk, and what a rerun of the sweep does with it.

Every trial folder ``OUT/<trial>/`` holds ``trial.json``, written atomically at each stage:

- ``running``: the trial started (``starts`` lists every start with the checkpoint step it resumed
  from, so a crash that Ray retried, or a rerun after an interruption, stays visible);
- ``trained``: training finished (its summary is kept, so a rerun only re-evaluates);
- ``done``: evaluated; ``metrics`` is what results.json and the decision report read.

Each stage records the trial's resolved TrainConfig (minus the keys that do not change results:
``train.progress``, ``train.resume``, ``train.output_dir``) and the evaluation settings (the
domain rules' hash). Rerunning the same sweep into the same ``--out`` then:

- skips a trial that is ``done`` with the same config and evaluation settings;
- re-evaluates one that is ``trained`` (or ``done`` under other domain rules), without training;
- resumes any other from its newest checkpoint (``train.resume=auto``) in a fresh trial;
- refuses, before Ray starts, a folder whose trial was made with a different config: one run
  directory holds one run.

:func:`measured` reads what a run measured from its ``metrics.jsonl``: tokens trained, minutes in
optimizer steps, peak memory.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from medslm.config import ConfigError, to_dict
from medslm.files import write_text

TRIAL_FILE = "trial.json"
# keys that may differ between the run that made a trial and a rerun: they change no result
IGNORED_KEYS = {("train", "progress"), ("train", "resume"), ("train", "output_dir")}
# what the base-model trial (no training) depends on: the model, and which items are evaluated
REFERENCE_DATA_KEYS = ("medqa", "kormedmcqa", "split", "tokenizer", "max_seq_len", "overlong", "skip_invalid")


def config_key(tc: Any, reference: bool = False) -> dict[str, Any]:
    """The trial's resolved config as compared across reruns (for the base-model trial: its model
    and the keys that choose its items)."""
    tree = json.loads(json.dumps(to_dict(tc)))  # tuples -> lists, as read back from JSON
    if reference:
        return {"model": tree["model"], "data": {k: tree["data"][k] for k in REFERENCE_DATA_KEYS}}
    for sec, key in IGNORED_KEYS:
        tree.get(sec, {}).pop(key, None)
    return tree


def eval_key(rules: Any) -> dict[str, Any]:
    """The evaluation settings a finished trial must share to be reused: the domain rules' content."""
    return {"domain_rules_sha256": rules.sha256}


def config_diff(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    out = []
    for sec in sorted(set(saved) | set(now)):
        a, b = saved.get(sec, {}), now.get(sec, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                out.append(f"{sec}.{key}: {a.get(key)!r} then, {b.get(key)!r} now")
    return out


def read_trial(run_dir: str | Path) -> dict[str, Any] | None:
    """``trial.json`` of a trial folder, or None when absent or unreadable (then it is redone)."""
    path = Path(run_dir) / TRIAL_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) and "stage" in doc and "config" in doc else None


def write_trial(run_dir: str | Path, doc: dict[str, Any]) -> Path:
    path = Path(run_dir) / TRIAL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text(path, json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def saved_key(doc: dict[str, Any], tc: Any, reference: bool = False) -> dict[str, Any]:
    """The config key a trial.json holds, as it compares with :func:`config_key` today: a trial from
    before the world size was part of the key gets the one its run recorded in config.yaml."""
    saved = doc["config"]
    dist_saved = saved.get("distributed") if isinstance(saved.get("distributed"), dict) else None
    if reference or dist_saved is None or dist_saved.get("world_size") is not None or tc.distributed.world_size is None:
        return saved
    from medslm.config import load_yaml

    cfg_file = Path(tc.train.output_dir) / "config.yaml"
    recorded = (load_yaml(cfg_file).get("distributed") or {}).get("world_size") if cfg_file.is_file() else None
    return {**saved, "distributed": {**dist_saved, "world_size": recorded if recorded is not None else tc.distributed.world_size}}


def plan(name: str, tc: Any, eval_key: dict[str, Any], reference: bool = False) -> str:
    """``done`` (skip), ``evaluate`` (trained: evaluate only), ``resume`` or ``new`` for one planned trial.

    A folder holding a trial made with another config is a :class:`ConfigError`."""
    run_dir = Path(tc.train.output_dir)
    doc = read_trial(run_dir)
    if doc is None:
        from medslm.checkpoint import latest_checkpoint

        return "resume" if latest_checkpoint(run_dir) is not None else "new"
    diff = config_diff(saved_key(doc, tc, reference), config_key(tc, reference))
    if diff:
        raise ConfigError(
            f"{run_dir} holds trial {name} made with another config ({'; '.join(diff[:3])}"
            f"{'; ...' if len(diff) > 3 else ''}): give another --out, or delete that folder to redo the trial"
        )
    if doc["stage"] == "done" and doc.get("eval_key") == eval_key:
        return "done"
    if doc["stage"] in ("trained", "done"):
        return "evaluate"
    return "resume"


def measured(run_dir: str | Path) -> dict[str, Any]:
    """From ``metrics.jsonl``: steps, tokens trained, minutes in optimizer steps, peak memory (GB).

    After a resume the file holds each step once (the trainer drops records past the checkpoint);
    a step logged twice counts once. ``tokens_trained`` and ``train_minutes`` are None unless every
    step was logged (``train.log_every`` 1)."""
    from medslm.metrics import read_records

    steps = {r["step"]: r for r in read_records(run_dir) if r.get("kind", "train") == "train" and isinstance(r.get("step"), int)}
    last = max(steps, default=0)
    complete = bool(steps) and len(steps) == last
    peaks = [r["peak_mem_gb"] for r in steps.values() if isinstance(r.get("peak_mem_gb"), (int, float))]
    return {
        "steps_logged": len(steps),
        "tokens_trained": sum(int(r.get("tokens", 0)) for r in steps.values()) if complete else None,
        "train_minutes": sum(float(r.get("step_time_s", 0.0)) for r in steps.values()) / 60.0 if complete else None,
        "peak_mem_gb": max(peaks) if peaks else None,
    }


__all__ = ["TRIAL_FILE", "config_diff", "config_key", "eval_key", "measured", "now_iso", "plan", "read_trial", "saved_key", "write_trial"]
