"""Is the model that loaded the one the run means? Checks on base checkpoints and adapters.

A run's numbers are only worth the weights they came from, and a library load is lenient where a
hospital team cannot be: transformers initialises a tensor the checkpoint lacks at random, loads
an NF4 tensor of the right size but the wrong shape, and PEFT skips adapter tensors whose names
match no module, each with at most a log line. Here each of those is one error line instead:

- :func:`check_local_files`: every ``*.safetensors`` of a local model folder has a readable
  header (a truncated shard is named before any loading starts);
- :func:`check_loaded_weights`: after ``from_pretrained``, no weight was missing from the
  checkpoint or shaped differently (also for NF4 weights, whose packed storage hides the shape);
- :func:`check_adapter_loaded`: after ``PeftModel.from_pretrained``, every tensor of the adapter
  file is in the model (a renamed or partial adapter would evaluate the base model);
- :func:`fingerprint` / :func:`record_base` / :func:`check_base`: ``RUN/base_model.json`` records
  the base a run trained on (absolute path, a digest of ``config.json`` and of each weight file's
  header and sampled contents, taken once the model has loaded, so a hub id is in the HF cache by
  then); resuming, evaluating or merging that run with another base --
  a relative path resolved from another folder, a checkpoint replaced in place, a hub cache that
  moved to a new snapshot -- is refused.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from medslm.cli import UserError

BASE_FILE = "base_model.json"
_SAMPLES = 16  # windows read from each weight file: a different checkpoint differs in every one
_WINDOW = 1 << 16


def check_local_files(path: str | Path) -> None:
    """Every weight file of a local model folder has a whole safetensors header (named when not)."""
    from medslm.files import check_safetensors

    for f in sorted(Path(path).glob("*.safetensors")):
        check_safetensors(f, "the checkpoint is damaged: copy it again")


def _file_digest(f: Path) -> str:
    size = f.stat().st_size
    sha = hashlib.sha256(str(size).encode())
    with f.open("rb") as fh:
        head = fh.read(8)
        header_len = int.from_bytes(head, "little") if len(head) == 8 else 0
        start = min(size, 8 + min(header_len, 100 << 20))  # a damaged length never reads the whole file
        fh.seek(0)
        sha.update(fh.read(start))  # the header: names, dtypes, shapes, offsets
        span = max(0, size - start - _WINDOW)
        for k in range(_SAMPLES):
            fh.seek(start + span * k // max(1, _SAMPLES - 1))
            sha.update(fh.read(_WINDOW))
    return sha.hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a whole file (adapters: tens of MB)."""
    sha = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def weight_files(folder: Path) -> list[Path]:
    """The weight files transformers loads: the index's shards, else ``model*.safetensors``."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            return [folder / name for name in shards]
        except (ValueError, KeyError, TypeError, AttributeError):
            pass  # a broken index is the loader's error to name
    return sorted(folder.glob("model*.safetensors")) or sorted(folder.glob("*.safetensors"))


def fingerprint(path: str | Path) -> dict[str, Any]:
    """The base at ``path``: its absolute path and a digest of config.json and its weight files.
    ``sha256`` is None when ``path`` is no folder here (a hub id not downloaded yet): nothing to compare."""
    p = Path(path).expanduser().resolve()
    config = p / "config.json"
    if not config.is_file():
        return {"path": str(p), "files": [], "sha256": None}
    sha = hashlib.sha256(config.read_bytes())
    files = [f for f in weight_files(p) if f.is_file()]
    for f in files:
        sha.update(f.name.encode() + b"\0" + _file_digest(f).encode())
    return {"path": str(p), "files": [f.name for f in files], "sha256": sha.hexdigest()}


def record_base(run_dir: str | Path, fp: dict[str, Any]) -> None:
    from medslm.files import write_text

    if fp["sha256"] is None:
        return
    write_text(Path(run_dir) / BASE_FILE, json.dumps(fp, indent=2) + "\n")


def check_base(run_dir: str | Path, fp: dict[str, Any], what: str) -> None:
    """Refuse when ``RUN/base_model.json`` names another base than ``fp`` (runs from before the
    file existed are not checked)."""
    from medslm.files import read_json

    path = Path(run_dir) / BASE_FILE
    if not path.is_file() or fp["sha256"] is None:
        return
    saved = read_json(path, "it records the base the run trained on")
    if not isinstance(saved, dict) or not isinstance(saved.get("sha256"), str):
        raise UserError(f"{path}: field 'sha256' is missing: not a base model record (train.py writes it)")
    if saved["sha256"] == fp["sha256"]:
        return
    moved = "" if saved.get("path") == fp["path"] else f" at {fp['path']} (the run trained on {saved.get('path')})"
    raise UserError(
        f"{what}: the base model{moved} is not the one this run trained on (weights digest {fp['sha256'][:12]} vs "
        f"{str(saved.get('sha256'))[:12]} in {path}); a relative model.name_or_path resolves from the current folder, "
        "and a checkpoint replaced in place or a hub cache on a newer snapshot is another model: point it at the base the run trained on"
    )


def check_loaded_weights(model: Any, info: dict[str, Any] | None, path: str) -> None:
    """No weight of ``model`` was left at random init or loaded with another shape."""
    missing = sorted((info or {}).get("missing_keys") or [])
    mismatched = [str(m) for m in (info or {}).get("mismatched_keys") or []]
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        state = getattr(weight, "quant_state", None)
        if state is not None and hasattr(module, "out_features") and hasattr(module, "in_features"):
            want = (module.out_features, module.in_features)
            if tuple(state.shape) != want:  # an NF4 tensor is stored packed: its true shape is here
                mismatched.append(f"{name}.weight: checkpoint {tuple(state.shape)} vs model {want}")
    if missing or mismatched:
        bad = (missing + mismatched)[:4]
        raise UserError(
            f"model.name_or_path: {path}: the checkpoint has no tensor for {len(missing)} weights and a differently shaped one "
            f"for {len(mismatched)} (e.g. {bad}); they would train and evaluate at random init: the checkpoint does not "
            "match its config.json (a partial or mixed copy?)"
        )


def _signature(t: torch.Tensor) -> tuple[tuple[int, ...], str]:
    data = t.detach().to("cpu", torch.float32).contiguous()
    return tuple(data.shape), hashlib.sha256(data.numpy().tobytes()).hexdigest()


def check_adapter_loaded(model: Any, adapter_dir: str | Path) -> None:
    """Every tensor of ``adapter_dir/adapter_model.safetensors`` is a LoRA weight of ``model``
    (compared by value, whatever the names; PEFT skips a tensor whose name matches no module)."""
    from safetensors.torch import load_file

    f = Path(adapter_dir) / "adapter_model.safetensors"
    saved = load_file(str(f))
    in_file = Counter(_signature(t) for t in saved.values())
    in_model = Counter(_signature(p) for n, p in model.named_parameters() if "lora_" in n)
    lost = in_file - in_model
    extra = in_model - in_file
    if lost or extra:
        raise UserError(
            f"{f}: {sum(lost.values())} of its {len(saved)} tensors did not load into the model, and {sum(extra.values())} "
            "adapter weights of the model kept their initial values: the adapter's module names do not fit this base "
            f"(e.g. {next(iter(saved))!r}); it would evaluate the base model, not the adapter"
        )


__all__ = ["BASE_FILE", "check_adapter_loaded", "check_base", "check_loaded_weights", "check_local_files", "file_sha256", "fingerprint",
           "record_base", "weight_files"]
