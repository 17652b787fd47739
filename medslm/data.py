"""Readers for MedQA and KorMedMCQA in their real on-disk formats, with validation.

Every row becomes an :class:`~medslm.records.MCQItem` or a :class:`DataError` that names the file,
the line (JSON Lines, CSV) or row (Parquet, ``datasets``) and the field. With ``skip_invalid`` the
error is recorded in a :class:`SkipLog` instead, so reports can count every skipped item and why.

Accepted inputs
- MedQA (jind11/MedQA, US): JSON Lines with ``question``, ``options`` (``{"A": ..}``), ``answer_idx``,
  ``answer``; optional ``meta_info`` (used as the subject) and ``metamap_phrases``. Also the
  ``GBaker/MedQA-USMLE-4-options-hf`` layout (``sent1``, ``ending0..3``, integer ``label``) that
  lm-evaluation-harness uses. JSON Lines, CSV or Parquet files, or a folder of them.
- KorMedMCQA (sean0042/KorMedMCQA): rows with ``subject``, ``year``, ``period``, ``q_number``,
  ``question``, ``A``..``E``, ``answer`` (1..5, 1 = A), ``cot``. CSV, JSON Lines, Parquet, a folder
  laid out like the hub repo (``<config>/<split>-*.parquet``), a ``datasets`` dataset saved with
  ``save_to_disk``, or ``hf:sean0042/KorMedMCQA`` for a user with hub access.

The split a row belongs to (``train``/``dev``/``test``/``fewshot``) is taken from the file name or
the dataset split, and used only when the user asks for the official splits.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medslm.records import LETTERS, MCQItem

KORMED_SUBJECTS = ("doctor", "nurse", "pharm", "dentist")
KNOWN_SPLITS = ("train", "dev", "validation", "val", "test", "fewshot")
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
REPO_ROOT = Path(__file__).resolve().parents[1]
# Lines end only here: U+2028, U+2029, U+0085 and the other breaks str.splitlines() knows are
# legal inside JSON strings and CSV fields.
LINE_END = re.compile(r"\r\n|\r|\n")


class DataError(ValueError):
    """Invalid input data: ``where`` is ``path:line N`` or ``path:row N``."""

    def __init__(self, where: str, field_name: str, message: str):
        self.where = where
        self.field = field_name
        self.reason = message
        super().__init__(f"{where}: field '{field_name}': {message}")


@dataclass
class SkipLog:
    """What ``skip_invalid`` skipped: every entry keeps the full error text."""

    errors: list[DataError] = field(default_factory=list)

    def add(self, err: DataError) -> None:
        self.errors.append(err)

    def __len__(self) -> int:
        return len(self.errors)

    def by_reason(self) -> dict[str, int]:
        return dict(Counter(f"{e.field}: {_reason_kind(e.reason)}" for e in self.errors))

    def summary(self, limit: int = 20) -> dict[str, Any]:
        return {
            "count": len(self.errors),
            "by_reason": self.by_reason(),
            "examples": [str(e) for e in self.errors[:limit]],
        }


def _reason_kind(reason: str) -> str:
    # "answer 'F' is not one of the options A, B" -> a reason without the specific value
    return re.sub(r"'[^']*'|\d+", "…", reason)[:80]


@dataclass
class RawRow:
    """One row read from a file, before validation."""

    data: dict[str, Any]
    where: str  # "path:line 3" / "path:row 3"
    split: str | None


# ---------------------------------------------------------------------------------------------
# Reading rows from files
# ---------------------------------------------------------------------------------------------


def _split_from_name(path: Path) -> str | None:
    stem = path.name.lower()
    for split in KNOWN_SPLITS:
        if stem.startswith(split + "-") or stem.startswith(split + ".") or stem.startswith(split + "_"):
            return "dev" if split in ("validation", "val") else split
        if stem == split:
            return split
    return None


def _read_text(path: Path) -> str:
    """The file as UTF-8 (a BOM allowed); an undecodable byte is an error naming its line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:line {line}", "(file)", f"not valid UTF-8 ({exc.reason})") from None


def _read_jsonl(path: Path, split: str | None) -> Iterator[RawRow]:
    text = _read_text(path)
    stripped = text.lstrip()
    if stripped.startswith("["):  # a JSON array file
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:line {exc.lineno}", "(json)", f"malformed JSON: {exc.msg}") from None
        for i, row in enumerate(rows, 1):
            if not isinstance(row, dict):
                raise DataError(f"{path}:row {i}", "(row)", "expected a JSON object")
            yield RawRow(row, f"{path}:row {i}", split)
        return
    for lineno, line in enumerate(LINE_END.split(text), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            yield RawRow({"__error__": f"malformed JSON: {exc.msg} (column {exc.colno})"}, f"{path}:line {lineno}", split)
            continue
        if not isinstance(row, dict):
            yield RawRow({"__error__": "expected a JSON object"}, f"{path}:line {lineno}", split)
            continue
        yield RawRow(row, f"{path}:line {lineno}", split)


def _read_csv(path: Path, split: str | None) -> Iterator[RawRow]:
    text = _read_text(path)
    # newline="": lines end at \n, \r\n or \r only, and quoted fields may span lines. strict: a
    # quote that never closes is an error, not a field that swallows every later row
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    start = 1  # the physical line the next row starts on
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            hint = "; a quote opened in this row never closes" if "end of data" in str(exc) else ""
            raise DataError(f"{path}:line {start}", "(csv)", f"not valid CSV: {exc}{hint}") from None
        where, start = f"{path}:line {reader.line_num}", reader.line_num + 1  # rows rarely span lines in these exports
        if not fields:  # a blank line
            continue
        if header is None:
            header = fields
            dup = sorted({c for c in header if header.count(c) > 1})
            if dup:
                raise DataError(where, "(header)", f"column names repeat: {', '.join(dup)}")
            continue
        row = dict(zip(header, fields))
        if len(fields) != len(header):  # an unquoted comma or a missing field shifts every later column
            row = {"__error__": f"{len(fields)} fields where the header has {len(header)} (an unquoted comma, or a missing field?)",
                   "__field__": "(csv)"}
        yield RawRow(row, where, split)


def _read_parquet(path: Path, split: str | None) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{path}", "(file)", f"not a readable Parquet file: {exc}") from None
    for i, row in enumerate(table.to_pylist(), 1):
        yield RawRow(row, f"{path}:row {i}", split)


def _read_datasets_dir(path: Path) -> Iterator[RawRow]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # a truncated arrow or JSON file: its error names no file
        if isinstance(exc, OSError) and exc.filename is not None:
            raise
        raise DataError(str(path), "(dataset)", f"not a readable saved dataset ({type(exc).__name__}: {exc})") from None
    parts = ds.items() if isinstance(ds, datasets.DatasetDict) else [(None, ds)]
    for split, part in parts:
        split_name = _normalise_split(split)
        for i, row in enumerate(part, 1):
            yield RawRow(dict(row), f"{path}[{split}]:row {i}" if split else f"{path}:row {i}", split_name)


def _normalise_split(split: str | None) -> str | None:
    if split is None:
        return None
    s = str(split).lower()
    return "dev" if s in ("validation", "val") else s


def _read_file(path: Path) -> Iterator[RawRow]:
    split = _split_from_name(path)
    suffix = path.suffix.lower()
    readers = {".jsonl": _read_jsonl, ".json": _read_jsonl, ".csv": _read_csv, ".parquet": _read_parquet}
    if suffix not in readers:
        raise DataError(str(path), "(file)", f"unsupported file type '{suffix}' (use {', '.join(DATA_SUFFIXES)})")
    n = 0
    for row in readers[suffix](path, split):
        n += 1
        yield row
    if n == 0:
        raise DataError(str(path), "(file)", "the file holds no rows (empty, or a header only)")


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def iter_rows(spec: str | Path) -> Iterator[RawRow]:
    """Rows from a file, a folder of files, a saved ``datasets`` folder, or ``hf:NAME[:CONFIG]``."""
    text = str(spec)
    if text.startswith("hf:"):
        yield from _read_hub(text[3:])
        return
    path = Path(spec)
    if not path.exists():
        from medslm.hub import looks_like_hub_id

        hint = f"; did you mean hf:{text}? (a dataset on the Hugging Face hub)" if looks_like_hub_id(text) else ""
        raise DataError(str(path), "(path)", f"no such file or directory{hint}")
    if path.is_dir():
        if _is_saved_dataset(path):
            yield from _read_datasets_dir(path)
            return
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES)
        if not files:
            raise DataError(str(path), "(path)", f"folder holds no {', '.join(DATA_SUFFIXES)} files")
        for f in files:
            rows = _read_file(f)
            # a hub-style folder: <config>/<split>-*.parquet; the folder name is the subject
            subject = f.parent.name if f.parent.name in KORMED_SUBJECTS else None
            for row in rows:
                if subject and "subject" not in row.data:
                    row.data["subject"] = subject
                yield row
        return
    yield from _read_file(path)


def _read_hub(name: str) -> Iterator[RawRow]:
    """A dataset on the hub (needs network access and, for KorMedMCQA, its configs)."""
    import datasets

    from medslm.hub import dataset_problem

    repo, _, config = name.partition(":")
    problem = dataset_problem(repo)
    if problem is not None:
        raise DataError(f"hf:{name}", "(dataset)", problem)
    configs = [config] if config else (list(KORMED_SUBJECTS) if "kormedmcqa" in repo.lower() else [None])
    for cfg in configs:
        try:
            dd = datasets.load_dataset(repo, cfg) if cfg else datasets.load_dataset(repo)
        except Exception as exc:
            raise DataError(f"hf:{name}", "(dataset)", f"could not load from the hub: {exc}") from None
        for split, part in dd.items():
            for i, row in enumerate(part, 1):
                row = dict(row)
                if cfg and "subject" not in row:
                    row["subject"] = cfg
                yield RawRow(row, f"hf:{repo}/{cfg or ''}[{split}]:row {i}", _normalise_split(split))


# ---------------------------------------------------------------------------------------------
# Validation into MCQItem
# ---------------------------------------------------------------------------------------------


def is_blank(text: str) -> bool:
    """Nothing but whitespace and control or format characters (NUL, zero-width space, BOM, ...)."""
    return all(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf") for ch in text)


def _text(row: RawRow, key: str, *, required: bool = True) -> str:
    if key not in row.data or row.data[key] is None:
        if required:
            raise DataError(row.where, key, "missing")
        return ""
    value = row.data[key]
    if not isinstance(value, str):
        raise DataError(row.where, key, f"expected text, got {type(value).__name__}")
    if required and is_blank(value):
        raise DataError(row.where, key, "empty (only whitespace or control characters)")
    return value.strip()


def _int(row: RawRow, key: str) -> int:
    if key not in row.data or row.data[key] is None or row.data[key] == "":
        raise DataError(row.where, key, "missing")
    value = row.data[key]
    if isinstance(value, bool):
        raise DataError(row.where, key, f"expected an integer, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]+", value.strip()):  # ASCII digits only ('²'.isdigit() is True)
        return int(value.strip())
    raise DataError(row.where, key, f"expected an integer, got {value!r}")


def _check_options(row: RawRow, options: list[str], field_prefix: str) -> tuple[str, ...]:
    if len(options) < 2:
        raise DataError(row.where, field_prefix, f"needs at least 2 options, got {len(options)}")
    if len(options) > len(LETTERS):
        raise DataError(row.where, field_prefix, f"at most {len(LETTERS)} options are supported, got {len(options)}")
    return tuple(options)


def medqa_item(row: RawRow) -> MCQItem:
    """Validate one MedQA row (jind11 layout or the GBaker 4-options layout)."""
    if "__error__" in row.data:
        raise DataError(row.where, row.data.get("__field__", "(json)"), row.data["__error__"])
    if "sent1" in row.data:  # GBaker/MedQA-USMLE-4-options-hf
        question = _text(row, "sent1")
        ending_keys = sorted((k for k in row.data if re.fullmatch(r"ending\d+", k)), key=lambda k: int(k[6:]))
        if not ending_keys:
            raise DataError(row.where, "ending0", "missing")
        for j, k in enumerate(ending_keys):  # a gap would shift every later option under `label`
            if k != f"ending{j}":
                raise DataError(row.where, f"ending{j}", f"missing (the row has {', '.join(ending_keys)})")
        options = [_text(row, k) for k in ending_keys]
        opts = _check_options(row, options, "ending0")
        label = _int(row, "label")
        if not 0 <= label < len(opts):
            raise DataError(row.where, "label", f"{label} is outside 0..{len(opts) - 1}")
        raw_id = row.data.get("id")
        item_id = f"medqa/{raw_id}" if raw_id not in (None, "") else None
        return MCQItem(
            id=item_id or _fallback_id("medqa", row),
            benchmark="medqa",
            language="en",
            subject="usmle",
            question=question,
            options=opts,
            answer=label,
            split=row.split,
            source=row.where,
        )
    question = _text(row, "question")
    options_obj = row.data.get("options")
    if options_obj is None:
        raise DataError(row.where, "options", "missing")
    if isinstance(options_obj, str):
        try:
            options_obj = json.loads(options_obj)
        except json.JSONDecodeError:
            raise DataError(row.where, "options", "expected an object of letter -> text") from None
    if isinstance(options_obj, list) and all(isinstance(o, dict) and "key" in o for o in options_obj):
        options_obj = {o["key"]: o.get("value") for o in options_obj}  # some exports store a list
    if not isinstance(options_obj, dict):
        raise DataError(row.where, "options", "expected an object of letter -> text")
    keys = sorted(options_obj)
    expected = list(LETTERS[: len(keys)])
    if keys != expected:
        raise DataError(row.where, "options", f"keys must be {', '.join(expected)}; got {', '.join(keys)}")
    options = []
    for k in keys:
        v = options_obj[k]
        if not isinstance(v, str) or is_blank(v):
            raise DataError(row.where, f"options.{k}", "empty (only whitespace or control characters) or not text")
        options.append(v.strip())
    opts = _check_options(row, options, "options")
    answer_idx = _text(row, "answer_idx").upper()
    if answer_idx not in keys:
        raise DataError(row.where, "answer_idx", f"'{answer_idx}' is not one of the options {', '.join(keys)}")
    answer = LETTERS.index(answer_idx)
    answer_text = row.data.get("answer")
    if isinstance(answer_text, str) and answer_text.strip() and answer_text.strip() != opts[answer]:
        raise DataError(
            row.where, "answer", f"text {answer_text.strip()!r} does not match option {answer_idx} {opts[answer]!r}"
        )
    meta = row.data.get("meta_info")
    subject = meta.strip() if isinstance(meta, str) and meta.strip() else "usmle"
    raw_id = row.data.get("id")  # as in the 4-options-hf layout: a row's own id, else path and line
    return MCQItem(
        id=f"medqa/{raw_id}" if raw_id not in (None, "") else _fallback_id("medqa", row),
        benchmark="medqa",
        language="en",
        subject=subject,
        question=question,
        options=opts,
        answer=answer,
        split=row.split,
        source=row.where,
    )


def _fallback_id(prefix: str, row: RawRow) -> str:
    """An id for a row that has none, unique per full path and stable while the file is unchanged.

    "/data/a/US/train.jsonl:line 12" -> "medqa/data/a/US/train.jsonl/12" (the resolved path, so two
    ``US/train.jsonl`` in different folders differ and the working directory does not matter);
    files inside the medslm checkout (the embedded samples) are named relative to it.
    """
    path, _, pos = row.where.rpartition(":")
    return f"{prefix}/{_id_path(path)}/{pos.split()[-1]}"


@functools.lru_cache(maxsize=1024)
def _id_path(path: str) -> str:
    if path.startswith("hf:"):
        return path[3:]
    p = Path(path).resolve()
    return (p.relative_to(REPO_ROOT) if p.is_relative_to(REPO_ROOT) else p).as_posix().lstrip("/")


def kormedmcqa_item(row: RawRow) -> MCQItem:
    """Validate one KorMedMCQA row."""
    if "__error__" in row.data:
        raise DataError(row.where, row.data.get("__field__", "(json)"), row.data["__error__"])
    subject = _text(row, "subject").lower()
    if subject not in KORMED_SUBJECTS:
        raise DataError(row.where, "subject", f"'{subject}' is not one of {', '.join(KORMED_SUBJECTS)}")
    question = _text(row, "question")
    options = []
    for letter in LETTERS:
        if letter not in row.data or row.data[letter] in (None, ""):
            if letter in "ABCD":
                raise DataError(row.where, letter, "missing")
            continue
        options.append(_text(row, letter))
    opts = _check_options(row, options, "A")
    answer = _int(row, "answer")
    if not 1 <= answer <= len(opts):
        raise DataError(row.where, "answer", f"{answer} is outside 1..{len(opts)} (1 = A)")
    year, period, q_number = _int(row, "year"), _int(row, "period"), _int(row, "q_number")
    return MCQItem(
        id=f"kormedmcqa/{subject}/{year}-{period}-{q_number}",
        benchmark="kormedmcqa",
        language="ko",
        subject=subject,
        question=question,
        options=opts,
        answer=answer - 1,
        split=row.split,
        source=row.where,
    )


VALIDATORS = {"medqa": medqa_item, "kormedmcqa": kormedmcqa_item}


def load_items(benchmark: str, specs: list[str | Path], skip_invalid: bool = False, skips: SkipLog | None = None) -> list[MCQItem]:
    """Read and validate every row of ``specs``; duplicate ids are an error (or skipped)."""
    if benchmark not in VALIDATORS:
        raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {sorted(VALIDATORS)}")
    validate = VALIDATORS[benchmark]
    skips = skips if skips is not None else SkipLog()
    items: list[MCQItem] = []
    seen: dict[str, str] = {}
    for spec in specs:
        for row in iter_rows(spec):
            try:
                item = validate(row)
                if item.id in seen:
                    raise DataError(row.where, "id", f"duplicate id '{item.id}' (first seen at {seen[item.id]})")
            except DataError as err:
                if not skip_invalid:
                    raise
                skips.add(err)
                continue
            seen[item.id] = row.where
            items.append(item)
    return items
