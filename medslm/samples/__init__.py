"""Deterministic generator of the small sample data files shipped in ``data/samples/``.

The files use the exact on-disk formats of the real datasets, so every reader and the whole
pipeline can run on a fresh machine with no downloads:

- ``medqa/US/{train,dev,test}.jsonl`` (50/10/20 items): jind11/MedQA US, JSON Lines with
  ``question``, ``answer`` (text of the right option), ``options`` (``{"A": .., "E": ..}``, five
  options), ``meta_info`` (``step1`` | ``step2&3``), ``answer_idx`` and ``metamap_phrases``.
- ``medqa/medqa_4options_hf.jsonl`` (10 items): the GBaker/MedQA-USMLE-4-options-hf layout
  (``id``, ``sent1``, ``sent2``, ``ending0..3``, integer ``label``).
- ``kormedmcqa/<subject>/<split>-00000-of-00001.parquet`` for the four configs of
  sean0042/KorMedMCQA (``doctor``, ``nurse``, ``pharm``, ``dentist``) and the splits ``train`` (30),
  ``dev`` (8), ``test`` (12) and ``fewshot`` (5); columns ``subject, year, period, q_number,
  question, A..E, answer (1..5, 1 = A), cot`` (``cot`` is empty except in ``fewshot``).

The items are synthetic but plausible: they are built from small hand-written fact tables
(drug -> mechanism / adverse effect, disease -> vignette / first-line treatment / confirmatory test,
nerve injuries, nursing practice, dental anatomy, Korean medical law), with distractors drawn from
the same table. The tables are data, in ``medslm/assets/samples/*.yaml``, read and checked by
:mod:`medslm.samples.facts`; the question wording is code, in :mod:`medslm.samples.english` and
:mod:`medslm.samples.korean`; this module lays out the options and writes the files. Everything is
driven by ``random.Random(0)``, so the output is byte-identical on every run;
``tests/test_samples_tokenizer.py`` checks that the committed files match.

Run ``python -m medslm.samples`` to (re)write ``data/samples/``.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import TYPE_CHECKING

from medslm.records import LETTERS
from medslm.samples.drafts import Draft, balanced_positions, layout, pick_distinct
from medslm.samples.english import english_drafts, medqa_hf_record, medqa_record, metamap_phrases
from medslm.samples.facts import ASSETS_DIR, SampleFacts, load_facts
from medslm.samples.korean import KO_DRAFTS, josa

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "ASSETS_DIR",
    "DEFAULT_SAMPLES_DIR",
    "Draft",
    "KORMED_COLUMNS",
    "KORMED_SPLITS",
    "KORMED_SUBJECTS",
    "MEDQA_HF_ITEMS",
    "MEDQA_SPLITS",
    "english_drafts",
    "josa",
    "kormed_rows",
    "kormed_schema",
    "load_facts",
    "main",
    "medqa_hf_record",
    "medqa_record",
    "metamap_phrases",
    "write_samples",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SAMPLES_DIR = REPO_ROOT / "data" / "samples"
SEED = 0

MEDQA_SPLITS = {"train": 50, "dev": 10, "test": 20}
MEDQA_HF_ITEMS = 10
KORMED_SUBJECTS = ("doctor", "nurse", "pharm", "dentist")
KORMED_SPLITS = {"train": 30, "dev": 8, "test": 12, "fewshot": 5}
# the years each split is drawn from, like the real dataset (older exams train, newer ones test)
KORMED_YEARS = {
    "train": range(2012, 2020),
    "dev": range(2020, 2022),
    "test": range(2022, 2024),
    "fewshot": range(2020, 2022),
}
KORMED_COLUMNS = ("subject", "year", "period", "q_number", "question", "A", "B", "C", "D", "E", "answer", "cot")
KORMED_INT_COLUMNS = ("year", "period", "q_number", "answer")


def _write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    path.write_bytes(text.encode("utf-8"))
    return path


def kormed_schema() -> pa.Schema:
    """The Arrow schema of a KorMedMCQA parquet file, with the ``datasets`` features metadata."""
    import pyarrow as pa

    fields = [pa.field(c, pa.int64() if c in KORMED_INT_COLUMNS else pa.string()) for c in KORMED_COLUMNS]
    features = {
        c: {"dtype": "int64" if c in KORMED_INT_COLUMNS else "string", "_type": "Value"} for c in KORMED_COLUMNS
    }
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode("utf-8")}
    return pa.schema(fields, metadata=meta)


def _write_parquet(path: Path, rows: list[dict[str, object]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    schema = kormed_schema()
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, path, compression="snappy")
    return path


def _exam_slots(rng: random.Random) -> dict[str, list[tuple[int, int, int]]]:
    """Unique (year, period, q_number) per split, from that split's years, sorted like the real files."""
    slots: dict[str, list[tuple[int, int, int]]] = {}
    taken: set[tuple[int, int, int]] = set()
    for split, n in KORMED_SPLITS.items():
        candidates = [
            (y, p, q) for y in KORMED_YEARS[split] for p in (1, 2) for q in range(1, 121) if (y, p, q) not in taken
        ]
        chosen = sorted(rng.sample(candidates, n))
        taken.update(chosen)
        slots[split] = chosen
    return slots


def kormed_rows(subject: str, drafts: list[Draft], rng: random.Random) -> dict[str, list[dict[str, object]]]:
    """The rows of every split of one KorMedMCQA subject (drafts are consumed in split order)."""
    slots = _exam_slots(rng)
    out: dict[str, list[dict[str, object]]] = {}
    it = iter(drafts)
    for split, n in KORMED_SPLITS.items():
        positions = balanced_positions(n, 5, rng)
        rows = []
        for (year, period, q_number), pos in zip(slots[split], positions, strict=True):
            draft = next(it)
            options = layout(draft, 5, pos, rng)
            cot = f"{draft.explanation} 따라서 정답은 {LETTERS[pos]}이다." if split == "fewshot" else ""
            row: dict[str, object] = {
                "subject": subject,
                "year": year,
                "period": period,
                "q_number": q_number,
                "question": draft.question,
            }
            row.update(dict(zip(LETTERS, options, strict=True)))
            row.update({"answer": pos + 1, "cot": cot})
            rows.append(row)
        out[split] = rows
    return out


def write_samples(root: Path, facts: SampleFacts | None = None) -> dict[str, list[Path]]:
    """Write every sample file under ``root``; returns the paths per benchmark (``medqa``, ``kormedmcqa``).

    ``facts``: the fact tables (default: :func:`load_facts` of the shipped ``medslm/assets/samples``).
    """
    root = Path(root)
    facts = facts if facts is not None else load_facts()
    rng = random.Random(SEED)
    seen: set[str] = set()
    written: dict[str, list[Path]] = {"medqa": [], "kormedmcqa": []}

    n_medqa = sum(MEDQA_SPLITS.values())
    drafts = pick_distinct(english_drafts(rng, facts.english), n_medqa + MEDQA_HF_ITEMS, seen)
    start = 0
    for split, n in MEDQA_SPLITS.items():
        positions = balanced_positions(n, 5, rng)
        rows = [
            medqa_record(d, layout(d, 5, p, rng)) for d, p in zip(drafts[start : start + n], positions, strict=True)
        ]
        written["medqa"].append(_write_jsonl(root / "medqa" / "US" / f"{split}.jsonl", rows))
        start += n
    positions = balanced_positions(MEDQA_HF_ITEMS, 4, rng)
    hf_rows = [
        medqa_hf_record(f"test-{i:05d}", d, layout(d, 4, p, rng))
        for i, (d, p) in enumerate(zip(drafts[start:], positions, strict=True))
    ]
    written["medqa"].append(_write_jsonl(root / "medqa" / "medqa_4options_hf.jsonl", hf_rows))

    for subject in KORMED_SUBJECTS:
        pool = KO_DRAFTS[subject](rng, facts)
        rng.shuffle(pool)
        chosen = pick_distinct(pool, sum(KORMED_SPLITS.values()), seen)
        for split, rows in kormed_rows(subject, chosen, rng).items():
            path = root / "kormedmcqa" / subject / f"{split}-00000-of-00001.parquet"
            written["kormedmcqa"].append(_write_parquet(path, rows))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the embedded sample data files.")
    parser.add_argument("--out", type=Path, default=DEFAULT_SAMPLES_DIR, help="output folder (default: data/samples)")
    parser.add_argument(
        "--facts", type=Path, default=ASSETS_DIR, help="folder of the fact tables (default: medslm/assets/samples)"
    )
    args = parser.parse_args(argv)
    written = write_samples(args.out, load_facts(args.facts))
    for benchmark, paths in written.items():
        for p in paths:
            print(f"{benchmark}: {p} ({p.stat().st_size:,} bytes)")
    return 0

