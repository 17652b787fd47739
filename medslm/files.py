"""Reading and publishing files so that every failure is one line naming the path.

- :func:`writing`: a block that writes under ``path``; an ``OSError`` raised without a path (a
  failed ``write()``, pyarrow's disk full) gets ``path`` so ``run_cli`` can name it.
- :func:`read_json`, :func:`check_json_files`, :func:`check_safetensors`: truncated or corrupt
  files are :class:`~medslm.cli.UserError` naming the file (the libraries' own errors do not).
- :func:`staged_dir`: build a folder under a temporary sibling name and rename it into place only
  when complete, so a killed writer leaves the old folder or the new one, never a mix. An existing
  folder is swapped atomically (Linux ``renameat2(RENAME_EXCHANGE)``; elsewhere two renames).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from medslm.cli import UserError, is_disk_full


@contextlib.contextmanager
def writing(path: str | Path, disk_full_only: bool = False) -> Iterator[None]:
    """Name ``path`` in an ``OSError`` that names no file (``disk_full_only``: only when the disk
    is full, for blocks that also read)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None or (disk_full_only and not is_disk_full(exc)):
            raise
        code = exc.errno if exc.errno is not None else (errno.ENOSPC if is_disk_full(exc) else None)
        raise OSError(code, exc.strerror or str(exc), str(path)) from exc
    except Exception as exc:
        if is_disk_full(exc):  # safetensors / torch report a full disk in their own error types
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc
        raise


def json_line(record: Any) -> str:
    """One JSON Lines record. U+0085, U+2028 and U+2029 are escaped although JSON allows them raw,
    so that no reader splits the record (``str.splitlines()`` does)."""
    text = json.dumps(record, ensure_ascii=False)
    return text.replace("\x85", "\\u0085").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029") + "\n"


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a flushed temporary sibling and a rename: a reader (or a
    machine that lost power) sees the old file or the new one, never half of one; an OS error (disk
    full) names ``path``."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    with writing(p):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(p)
    return p


def torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` whose failure on a full disk reads as one: torch's writer reports only "file
    write failed" or "unexpected pos", so when it fails and the file system has less room left than
    the tensors need, it is an ``OSError(ENOSPC)`` naming ``path``; other errors pass unchanged."""
    import torch

    p = Path(path)
    try:
        torch.save(obj, p)
    except RuntimeError as exc:
        needed = sum(t.numel() * t.element_size() for t in _tensors(obj))
        if shutil.disk_usage(p.parent).free < max(needed, 16 << 20):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(p)) from exc
        raise


def _tensors(obj: Any) -> Iterator[Any]:
    import torch

    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def read_json(path: str | Path, hint: str = "") -> Any:
    """The parsed file; invalid JSON (e.g. truncated) is one line naming the file and line."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno}, truncated?){'; ' + hint if hint else ''}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{p}: not valid UTF-8 ({exc.reason}){'; ' + hint if hint else ''}") from None


def check_json_files(folder: str | Path, hint: str = "") -> None:
    """Every ``*.json`` directly in ``folder`` parses (a truncated config or tokenizer file is named)."""
    for f in sorted(Path(folder).glob("*.json")):
        read_json(f, hint)


def check_safetensors(path: str | Path, hint: str = "") -> None:
    """The file's header and size agree (catches truncation) without reading the tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            list(f.keys())
    except OSError:
        raise
    except Exception as exc:  # SafetensorError (its import path differs across versions)
        raise UserError(f"{path}: not a readable safetensors file ({exc}){'; ' + hint if hint else ''}") from None


# ---------------------------------------------------------------------------------------------
# Publishing a folder atomically
# ---------------------------------------------------------------------------------------------


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF):  # folders cannot be fsynced on some systems
            raise
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` (and ``root``) to disk before it is published."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            _fsync(Path(dirpath) / name)
        _fsync(Path(dirpath))


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where the system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _tag() -> str:
    return f"{re.sub(r'[^A-Za-z0-9_.]', '_', socket.gethostname())}-{os.getpid()}"


def _remove_stale(parent: Path, name: str) -> None:
    """Temporary siblings left by a killed writer on this host (its pid no longer runs)."""
    mine = re.compile(rf"^\.{re.escape(name)}\.(tmp|old)-{re.escape(_tag().rsplit('-', 1)[0])}-(\d+)-")
    for p in parent.glob(f".{name}.*"):
        m = mine.match(p.name)
        if not m or not p.is_dir():
            continue
        try:
            os.kill(int(m.group(2)), 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except PermissionError:
            pass  # alive, another user's


def check_replaceable(final: Path, may_replace: Callable[[Path], bool]) -> None:
    """``final`` may be (re)written: absent, an empty folder, or a folder ``may_replace`` accepts."""
    if final.exists() and not final.is_dir():
        raise UserError(f"{final}: exists and is not a folder")
    if final.is_dir() and any(final.iterdir()) and not may_replace(final):
        raise UserError(f"{final}: the folder exists and holds other files; choose another output folder or empty it")


@contextlib.contextmanager
def staged_dir(final: str | Path, may_replace: Callable[[Path], bool]) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final``; on success publish it as ``final``.

    An existing ``final`` is replaced only if it is empty or ``may_replace(final)`` (so a user's
    unrelated folder is never deleted). On any error the temporary folder is removed and ``final``
    is untouched.
    """
    final = Path(final)
    check_replaceable(final, may_replace)
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(parent, final.name)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{final.name}.tmp-{_tag()}-"))
    try:
        with writing(final):
            yield tmp
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; a published folder follows the umask
            fsync_tree(tmp)
            _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: Path, final: Path) -> None:
    if not final.exists():
        os.rename(tmp, final)
    elif _exchange(tmp, final):
        shutil.rmtree(tmp)  # now holds the old folder
    else:
        old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.old-{_tag()}-"))
        os.rename(final, old / "x")
        os.rename(tmp, final)
        shutil.rmtree(old)
    _fsync(final.parent)


__all__ = ["check_json_files", "check_replaceable", "check_safetensors", "fsync_tree", "json_line", "read_json", "staged_dir", "writing"]
