"""From data files to tokenised, split, ratio-mixed and packed training data, with a report.

``build_dataset(cfg, tokenizer)`` is what both ``pack.py`` and ``train.py`` call: read and validate
(``medslm.data``), split and leak-check and mix (``medslm.mixing``), tokenise with the shared
prompt template (``medslm.prompts``), then bin-pack (``medslm.packing``).

A pack folder (``save_packed``) is published whole: ``train/``, ``val/``, ``packing_report.json``
and ``mix_manifest.jsonl`` (one line per item: id, dataset, language, subject, split, copies,
content hash, source) are written under a temporary name and renamed into place. The report
records each split's row count, samples per language and a SHA-256 of the rows; ``read_pack``
refuses a folder whose rows do not match it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from medslm.cli import UserError
from medslm.config import ConfigError, parse_ratio
from medslm.data import SkipLog, load_items
from medslm.files import json_line, staged_dir, writing
from medslm.mixing import MixError, SplitResult, content_key, mix_by_ratio, split_items
from medslm.packing import pack_bfd
from medslm.prompts import AnswerFormat, Example, build_example
from medslm.records import LANGUAGE_OF, MCQItem

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLES_DIR = REPO_ROOT / "data" / "samples"
EMBEDDED_DATA = {"medqa": SAMPLES_DIR / "medqa" / "US", "kormedmcqa": SAMPLES_DIR / "kormedmcqa"}
REPORT_FILE = "packing_report.json"
MANIFEST_FILE = "mix_manifest.jsonl"
PACK_ENTRIES = {"train", "val", REPORT_FILE, MANIFEST_FILE}


@dataclass
class DataConfig:
    """The ``data`` section: where items come from and how they become training rows."""

    medqa: list[str] = field(default_factory=lambda: ["embedded"])  # MedQA files, folders or hf:NAME; embedded: the samples; [] for none
    kormedmcqa: list[str] = field(default_factory=lambda: ["embedded"])  # KorMedMCQA files, folders or hf:NAME; embedded: the samples; [] for none
    ratio: str = "5:5"  # EN:KO item counts in the training mix (see medslm/mixing.py)
    upsample: bool = False  # repeat the limiting side instead of subsampling the other
    split: Literal["hash", "official"] = "hash"  # hash: 80/10/10 by content hash (the paper's); official: the datasets' own splits
    max_seq_len: int = 2048  # tokens per packed row (and the longest example allowed)
    packing: bool = True  # pack several examples per row (best-fit decreasing); false: one example per row
    padding: Literal["longest", "max_length"] = "longest"  # used when packing is off
    tokenizer: str | None = None  # None: the model's own tokenizer (train) / the embedded one (pack)
    answer_format: Literal["letter", "letter_text"] = "letter"  # the target: " C" or " C. option text" (then EOS)
    overlong: Literal["error", "truncate", "drop"] = "error"  # an example over max_seq_len: stop, cut the prompt from the left, or skip it (counted)
    skip_invalid: bool = False  # skip rows that fail validation (counted by reason) instead of stopping
    seed: int = 0  # seed of the ratio subsampling
    # a folder written by pack.py: train on its rows; its data settings replace this section's
    packed: str | None = None

    def validate(self) -> None:
        parse_ratio(self.ratio)
        if self.max_seq_len < 16:
            raise ConfigError(f"data.max_seq_len must be at least 16, got {self.max_seq_len}")
        if not self.medqa and not self.kormedmcqa and not self.packed:
            raise ConfigError(
                "data: no training data: give data.medqa and/or data.kormedmcqa (files, folders or hf:NAME; embedded: the "
                "samples), e.g. --data.medqa=/data/medqa/US --data.kormedmcqa=/data/KorMedMCQA, or data.packed (a pack.py folder)"
            )


def resolve_paths(benchmark: str, specs: list[str]) -> list[str | Path]:
    """``embedded`` -> the sample files shipped in data/samples; other paths are used as given."""
    return [EMBEDDED_DATA[benchmark] if s == "embedded" else s for s in specs]


@dataclass
class LoadedData:
    items: dict[str, list[MCQItem]]  # benchmark -> validated items
    splits: SplitResult
    skips: SkipLog


def load_and_split(cfg: DataConfig) -> LoadedData:
    skips = SkipLog()
    items = {
        "medqa": load_items("medqa", resolve_paths("medqa", cfg.medqa), cfg.skip_invalid, skips),
        "kormedmcqa": load_items("kormedmcqa", resolve_paths("kormedmcqa", cfg.kormedmcqa), cfg.skip_invalid, skips),
    }
    splits = split_items(items["medqa"] + items["kormedmcqa"], cfg.split)
    return LoadedData(items, splits, skips)


@dataclass
class TokenisedSplit:
    examples: list[Example]
    dropped: int = 0
    truncated: int = 0


def tokenise(items: list[MCQItem], tokenizer: Any, cfg: DataConfig, progress: bool = False) -> TokenisedSplit:
    out = TokenisedSplit([])
    iterator: Any = items
    if progress and len(items) > 2000:
        from medslm.console import progress_iter  # a bar on a terminal, plain lines in a log

        iterator = progress_iter(items, "tokenising", "item", enabled=True)
    answer_format: AnswerFormat = cfg.answer_format
    for item in iterator:
        ex = build_example(item, tokenizer, cfg.max_seq_len, answer_format, cfg.overlong)
        if ex is None:
            out.dropped += 1
            continue
        out.truncated += int(ex.truncated)
        out.examples.append(ex)
    return out


@dataclass
class BuiltData:
    train: list[Example]
    val: list[Example]
    test_items: list[MCQItem]
    train_bins: list[list[int]] | None  # packed rows of ``train`` (indices), None without packing
    val_bins: list[list[int]] | None
    report: dict[str, Any]
    manifest: list[dict[str, Any]] = field(default_factory=list)  # see mix_manifest()


def mix_manifest(train: list[MCQItem], val: list[MCQItem], test: list[MCQItem]) -> list[dict[str, Any]]:
    """What a run trains, validates and is tested on: one record per distinct item and split
    (train in mix order, with ``copies`` > 1 where upsampling repeats an item; test in content order)."""
    copies = Counter(it.id for it in train)
    out: list[dict[str, Any]] = []
    for split, items in (("train", train), ("val", val), ("test", sorted(test, key=content_key))):
        seen: set[str] = set()
        for it in items:
            if it.id in seen:
                continue
            seen.add(it.id)
            rec = {"id": it.id, "dataset": it.benchmark, "language": it.language, "subject": it.subject, "split": split}
            if split == "train":
                rec["copies"] = copies[it.id]
            rec.update({"content": content_key(it)[:16], "source": it.source})
            out.append(rec)
    return out


def write_manifest(path: str | Path, manifest: list[dict[str, Any]]) -> None:
    Path(path).write_text("".join(json_line(r) for r in manifest), encoding="utf-8")


def save_run_data(out_dir: str | Path, report: dict[str, Any], manifest: list[dict[str, Any]]) -> None:
    """A run folder's record of its data: packing_report.json and mix_manifest.jsonl."""
    out = Path(out_dir)
    with writing(out):
        for name, write in (
            (REPORT_FILE, lambda p: p.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")),
            (MANIFEST_FILE, lambda p: write_manifest(p, manifest)),
        ):
            tmp = out / f"{name}.tmp"
            write(tmp)
            tmp.replace(out / name)


def packing_stats(lengths: list[int], bins: list[list[int]] | None, max_seq_len: int, global_batch_rows: int) -> dict:
    """The paper's packing figures: efficiency = real tokens / (rows x max_seq_len)."""
    real = int(sum(lengths))
    n = len(lengths)
    rows = len(bins) if bins is not None else n
    return {
        "num_samples": n,
        "num_rows": rows,
        "real_tokens": real,
        "max_seq_len": max_seq_len,
        "packing_efficiency": real / (rows * max_seq_len) if rows else 0.0,
        "padding_fraction_unpacked": 1.0 - real / (n * max_seq_len) if n else 0.0,
        "global_batch_rows": global_batch_rows,
        "steps_per_epoch_unpacked": math.ceil(n / global_batch_rows),
        "steps_per_epoch_packed": math.ceil(rows / global_batch_rows),
        "mean_tokens_per_sample": real / n if n else 0.0,
        "max_tokens_per_sample": max(lengths) if lengths else 0,
    }


def build_dataset(cfg: DataConfig, tokenizer: Any, global_batch_rows: int = 128, progress: bool = False) -> BuiltData:
    cfg.validate()
    loaded = load_and_split(cfg)
    train_items = loaded.splits.splits["train"]
    # tokenise before mixing, so items dropped as overlong never distort the EN:KO ratio
    tokenised = tokenise(train_items, tokenizer, cfg, progress)
    by_id = {e.item_id: e for e in tokenised.examples}
    try:
        mix = mix_by_ratio([it for it in train_items if it.id in by_id], parse_ratio(cfg.ratio), cfg.seed, cfg.upsample)
    except MixError as exc:
        dropped = f" ({tokenised.dropped} dropped as longer than max_seq_len={cfg.max_seq_len})" if tokenised.dropped else ""
        raise MixError(f"{exc}{dropped}") from None
    train = [by_id[it.id] for it in mix.items]
    val_items = sorted(loaded.splits.splits["val"], key=content_key)  # an order that file order cannot change
    val = tokenise(val_items, tokenizer, cfg, progress)
    val_ids = {e.item_id for e in val.examples}
    lengths = [len(e) for e in train]
    if not lengths:
        raise MixError("the training mix is empty: check the data paths, the ratio and the split")
    train_bins = pack_bfd(lengths, cfg.max_seq_len) if cfg.packing else None
    val_bins = pack_bfd([len(e) for e in val.examples], cfg.max_seq_len) if cfg.packing and val.examples else None
    by_lang = Counter(it.language for it in mix.items)
    report: dict[str, Any] = packing_stats(lengths, train_bins, cfg.max_seq_len, global_batch_rows)
    report.update(
        {
            "packing": cfg.packing,
            "ratio": cfg.ratio,
            "split_mode": cfg.split,
            "loaded": {b: len(v) for b, v in loaded.items.items()},
            "splits": loaded.splits.report(),
            "mix": mix.report(),
            "per_language": dict(sorted(by_lang.items())),
            "skipped_invalid": loaded.skips.summary(),
            "overlong": {
                "policy": cfg.overlong,
                # in the pack (train items of the mix, once each, and val); the pool before mixing may have more
                "truncated": len({e.item_id for e in train if e.truncated}) + val.truncated,
                "dropped": tokenised.dropped + val.dropped,
            },
            "val_samples": len(val.examples),
            "test_items": len(loaded.splits.splits["test"]),
        }
    )
    test_items = loaded.splits.splits["test"]
    manifest = mix_manifest(mix.items, [it for it in val_items if it.id in val_ids], test_items)
    return BuiltData(train, val.examples, test_items, train_bins, val_bins, report, manifest)


def rows_of(examples: list[Example], bins: list[list[int]] | None) -> list[list[Example]]:
    """Packed rows (lists of examples); without bins every example is its own row."""
    if bins is None:
        return [[e] for e in examples]
    return [[examples[i] for i in b] for b in bins]


def _rows_table(rows: list[list[Example]]) -> dict[str, list]:
    return {
        "input_ids": [[t for e in r for t in e.input_ids] for r in rows],
        "labels": [[t for e in r for t in e.labels] for r in rows],
        "seq_lens": [[len(e) for e in r] for r in rows],
        "item_ids": [[e.item_id for e in r] for r in rows],
    }


class RowDigest:
    """Row count, samples per language and a SHA-256 of a packed split's rows, as written and as read."""

    def __init__(self) -> None:
        self.rows = 0
        self.per_language: Counter[str] = Counter()
        self._sha = hashlib.sha256()

    def add(self, input_ids: list[int], labels: list[int], seq_lens: list[int], item_ids: list[str]) -> None:
        import numpy as np

        self.rows += 1
        self.per_language.update(LANGUAGE_OF.get(i.split("/", 1)[0], "?") for i in item_ids)
        for seq in (input_ids, labels, seq_lens):
            self._sha.update(np.asarray([len(seq), *seq], dtype="<i8").tobytes())
        self._sha.update(("\x1f".join(item_ids) + "\x1e").encode())

    def result(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "samples": sum(self.per_language.values()),
            "per_language": dict(sorted(self.per_language.items())),
            "sha256": self._sha.hexdigest(),
        }


def training_rows_id(rows: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """What a run trains on, in order: its row count and a SHA-256 of every row's token ids and
    labels. A checkpoint records it, so a resume on other data (a changed file, mix or packing,
    under the same config) is refused instead of continuing on a schedule made for other rows."""
    import numpy as np

    sha = hashlib.sha256()
    for row in rows:
        for ex in row:
            for seq in (ex["input_ids"], ex["labels"]):
                sha.update(np.asarray([len(seq), *seq], dtype="<i8").tobytes())
        sha.update(b"\x1e")
    return {"rows": len(rows), "sha256": sha.hexdigest()}


def is_pack_dir(path: Path) -> bool:
    """A folder pack.py wrote (and may replace): only its own entries, with its report."""
    names = {p.name for p in path.iterdir()}
    return REPORT_FILE in names and names <= PACK_ENTRIES


def save_packed(built: BuiltData, out_dir: str | Path, cfg: Any, tokenizer: Any) -> dict[str, Any]:
    """Publish ``out_dir`` whole: ``train`` and ``val`` (``datasets`` on disk), the report, the manifest.

    The report records the config and the tokenizer's fingerprint, so that training from this
    folder can take the same data settings and refuse a tokenizer whose ids would differ, and
    each split's :class:`RowDigest`, so that it can refuse rows that are not the ones reported.
    Everything is written into a temporary sibling folder that replaces ``out_dir`` only when
    complete: a killed re-pack leaves the old pack.
    """
    import datasets

    from medslm.config import to_dict
    from medslm.tokenizer import tokenizer_fingerprint

    datasets.disable_progress_bars()
    report = dict(built.report)
    report["config"] = to_dict(cfg)
    report["tokenizer"] = {"name": cfg.data.tokenizer or "embedded", "fingerprint": tokenizer_fingerprint(tokenizer)}
    report["rows"] = {}
    with staged_dir(out_dir, may_replace=is_pack_dir) as tmp:
        for name, examples, bins in (("train", built.train, built.train_bins), ("val", built.val, built.val_bins)):
            table = _rows_table(rows_of(examples, bins))
            digest = RowDigest()
            for rec in zip(table["input_ids"], table["labels"], table["seq_lens"], table["item_ids"]):
                digest.add(*rec)
            report["rows"][name] = digest.result()
            datasets.Dataset.from_dict(table).save_to_disk(str(tmp / name))
        write_manifest(tmp / MANIFEST_FILE, built.manifest)
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    return report


def load_packed_rows(path: str | Path, digest: RowDigest | None = None) -> list[list[dict[str, list[int]]]]:
    """Read rows written by :func:`save_packed` back as lists of ``{"input_ids", "labels"}``."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # pyarrow / json errors of a truncated or foreign folder name no file
        if isinstance(exc, OSError) and exc.filename is not None:
            raise
        raise UserError(f"data.packed: {path}: not a readable dataset folder ({type(exc).__name__}: {exc}); re-run pack.py") from None
    rows = []
    for rec in ds:
        if digest is not None:
            digest.add(rec["input_ids"], rec["labels"], rec["seq_lens"], rec["item_ids"])
        start, row = 0, []
        for n in rec["seq_lens"]:
            row.append({"input_ids": rec["input_ids"][start : start + n], "labels": rec["labels"][start : start + n]})
            start += n
        rows.append(row)
    return rows


@dataclass
class PackedSource:
    """A folder written by pack.py, read for training."""

    path: Path
    data: DataConfig  # the data section it was packed with (``packed`` set to ``path``)
    report: dict[str, Any]  # packing_report.json, with its "config" and "tokenizer" entries

    @property
    def tokenizer_name(self) -> str:
        return self.report["tokenizer"].get("name", "?")

    @property
    def tokenizer_fingerprint(self) -> str:
        return self.report["tokenizer"]["fingerprint"]

    def differing_keys(self, cfg: DataConfig) -> list[str]:
        """The data keys of ``cfg`` that the pack's settings replace with other values."""
        mine, theirs = asdict(cfg), asdict(self.data)
        return [f"data.{k}: {mine[k]!r} -> {theirs[k]!r}" for k in mine if k != "packed" and mine[k] != theirs[k]]

    def rows(self) -> tuple[list[list[dict[str, list[int]]]], list[list[dict[str, list[int]]]]]:
        """The train and val rows, after checking they are the rows packing_report.json describes."""
        out = []
        for name in ("train", "val"):
            digest = RowDigest()
            out.append(load_packed_rows(self.path / name, digest))
            self._check(name, digest.result())
        return out[0], out[1]

    def _check(self, name: str, got: dict[str, Any]) -> None:
        want = self.report["rows"].get(name)
        if got == want and (name != "train" or got["per_language"] == self.report.get("per_language")):
            return
        want = want or {}
        say = lambda d: f"{d.get('rows')} rows, samples {d.get('per_language')}"  # noqa: E731
        what = "the same counts but different content" if want.get("rows") == got["rows"] and want.get("per_language") == got["per_language"] else f"{say(got)} where the report says {say(want)}"
        raise UserError(
            f"data.packed: {self.path / name} does not match {self.path / REPORT_FILE} ({what}; ratio {self.data.ratio}): "
            "the folder was changed or a pack.py run into it was interrupted; re-run pack.py"
        )

    def manifest(self) -> list[dict[str, Any]]:
        path = self.path / MANIFEST_FILE
        out = []
        with open(path, encoding="utf-8", newline="") as f:
            for lineno, line in enumerate(f, 1):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise UserError(f"data.packed: {path}:line {lineno}: not valid JSON ({exc.msg}); re-run pack.py") from None
        return out


def read_pack(path: str | Path) -> PackedSource:
    """Open pack.py's output folder; a missing or foreign folder is one clear error. Its rows are
    checked against the report when :meth:`PackedSource.rows` reads them."""
    root = Path(path).expanduser()
    report_file = root / REPORT_FILE
    missing = [str(p) for p in (report_file, root / "train", root / "val", root / MANIFEST_FILE) if not p.exists()]
    if missing:
        raise UserError(f"data.packed: {root} is not a folder written by pack.py (missing {', '.join(missing)})")
    try:
        report = json.loads(report_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"data.packed: {report_file}: not valid JSON ({exc}); re-run pack.py") from None
    ok = isinstance(report, dict) and isinstance(report.get("tokenizer"), dict) and isinstance(report.get("config"), dict)
    if not ok or "fingerprint" not in report["tokenizer"] or "data" not in report["config"]:
        raise UserError(f"data.packed: {report_file} has no tokenizer fingerprint or data config; re-run pack.py")
    if not isinstance(report.get("rows"), dict):
        raise UserError(f"data.packed: {report_file} has no row digest (an older pack.py wrote it); re-run pack.py")
    saved = report["config"]["data"]
    unknown = sorted(set(saved) - {f.name for f in fields(DataConfig)})
    if unknown:
        raise UserError(f"data.packed: {report_file} has data keys this version does not know: {unknown}; re-run pack.py")
    data = DataConfig(**{**saved, "packed": str(root)})
    return PackedSource(root, data, report)
