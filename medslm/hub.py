"""Hub ids on servers without internet: the HF cache first, then one quick reachability check.

A model, tokenizer or dataset named by a hub id (``google/medgemma-4b-it``,
``hf:sean0042/KorMedMCQA``) is looked at here before anything loads it:

1. a snapshot of it in the Hugging Face cache (``HF_HOME``, ``HF_HUB_CACHE``) is used from disk,
   with no network access at all (models and tokenizers; ``datasets`` reads its own cache);
2. with ``HF_HUB_OFFLINE=1`` and no snapshot, or when the hub does not answer within
   ``PROBE_TIMEOUT_S`` seconds, the run stops with one line (exit code 2) naming the id and the
   fixes: a local folder, the HF cache, ``HF_HUB_OFFLINE=1``;
3. otherwise the id goes on to transformers / datasets, which download it as usual.

Without this, transformers retries an unreachable hub for about 50 s and prints three tracebacks,
the last of which blames the tokenizer.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from pathlib import Path

# seconds to wait for the hub's answer; with imports, an unreachable id fails well within 10 s
PROBE_TIMEOUT_S = float(os.environ.get("MEDSLM_HUB_TIMEOUT_S", "4"))
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+")
_TRUE = ("1", "true", "yes", "on")


def looks_like_hub_id(name: str) -> bool:
    """``owner/name`` that is not an existing path: what the hub would be asked for."""
    text = str(name)
    return bool(_HUB_ID.fullmatch(text)) and not Path(text).expanduser().exists() and not text.endswith(
        (".json", ".jsonl", ".csv", ".parquet", ".yaml")
    )


def offline() -> bool:
    """``HF_HUB_OFFLINE`` (or the older ``TRANSFORMERS_OFFLINE``), read now rather than at import."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def cached_snapshot(repo_id: str, repo_type: str = "model") -> Path | None:
    """The cached snapshot folder of ``repo_id`` (its ``main`` revision), or None; never the network."""
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(repo_id, repo_type=repo_type, local_files_only=True))
    except Exception:  # LocalEntryNotFoundError, a malformed cache, an invalid id
        return None
    return path if path.is_dir() and any(path.iterdir()) else None


def probe(repo_id: str, repo_type: str = "model", timeout: float | None = None) -> str | None:
    """None when the hub answers for ``repo_id``; else why not, in a few words.

    The request runs in a daemon thread joined for ``timeout`` seconds, so a resolver or proxy
    that hangs cannot hold the run (a socket timeout does not cover DNS)."""
    timeout = PROBE_TIMEOUT_S if timeout is None else timeout
    box: dict[str, BaseException | None] = {}

    def ask() -> None:
        from huggingface_hub import HfApi

        try:
            HfApi().repo_info(repo_id, repo_type=repo_type, timeout=timeout)
            box["error"] = None
        except BaseException as exc:  # noqa: BLE001  classified below
            box["error"] = exc

    thread = threading.Thread(target=ask, daemon=True, name=f"hub-probe-{repo_id}")
    thread.start()
    thread.join(timeout + 0.5)
    if "error" not in box:
        return f"no answer from the hub within {timeout:g} s"
    return _classify(box["error"])


def _classify(exc: BaseException | None) -> str | None:
    if exc is None:
        return None
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    if isinstance(exc, GatedRepoError):
        return "the repository is gated: accept its license on the hub and log in (hf auth login, or HF_TOKEN)"
    if isinstance(exc, RepositoryNotFoundError):
        return "the hub has no such repository (or it is private and you are not logged in)"
    if isinstance(exc, HfHubHTTPError):
        response = getattr(exc, "response", None)
        if response is not None and getattr(response, "status_code", 500) < 500:
            return f"the hub refused the request ({response.status_code})"
        return None  # the hub answered with a server error: let the download path retry
    text = str(exc).strip().splitlines()
    return f"cannot reach the hub ({type(exc).__name__}: {text[0] if text else ''})"


def _fixes(repo_id: str, key: str) -> str:
    folder = f"/models/{repo_id.split('/')[-1]}"
    example = f"--{key}={folder}" if "." in key else folder
    return (
        f"fixes: copy it to a local folder and give that path ({example}, e.g. made with "
        f"'hf download {repo_id} --local-dir DIR' on a machine with internet), or fill the HF cache "
        f"(HF_HOME; this machine's hub cache is {hub_cache()}) and set HF_HUB_OFFLINE=1"
    )


@functools.lru_cache(maxsize=64)
def resolve(name: str, key: str, repo_type: str = "model", timeout: float | None = None) -> str:
    """A local folder for hub id ``name`` when it is cached, else ``name`` once the hub answers.

    ``key`` is the config key or flag the id came from (it starts the error line). Raises
    :class:`medslm.cli.UserError` (one line, exit 2) when the id cannot be had."""
    from medslm.cli import UserError

    snapshot = cached_snapshot(name, repo_type)
    if snapshot is not None:
        return str(snapshot)
    if offline():
        raise UserError(f"{key}: {name!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; {_fixes(name, key)}")
    why = probe(name, repo_type, PROBE_TIMEOUT_S if timeout is None else timeout)
    if why is not None:
        raise UserError(f"{key}: cannot load {name!r}: {why}, and it is not in the Hugging Face cache; {_fixes(name, key)}")
    return name


def dataset_problem(repo_id: str, timeout: float | None = None) -> str | None:
    """Why ``hf:repo_id`` cannot be loaded now (with the fixes), or None to go ahead.

    With ``HF_HUB_OFFLINE`` set, ``datasets`` reads its own cache, so nothing is checked here."""
    if offline():
        return None
    why = probe(repo_id, "dataset", timeout)
    if why is None:
        return None
    cached = " (a snapshot of it is in your HF cache: set HF_HUB_OFFLINE=1 to use it)" if cached_snapshot(repo_id, "dataset") else ""
    return (
        f"{why}{cached}; fixes: a local copy (a folder of its parquet files, or datasets' save_to_disk folder) "
        f"given as a path, or the HF cache with HF_HUB_OFFLINE=1"
    )


__all__ = ["PROBE_TIMEOUT_S", "cached_snapshot", "dataset_problem", "looks_like_hub_id", "offline", "probe", "resolve"]
