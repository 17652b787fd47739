"""The embedded sample data (data/samples) and the embedded tokenizer (medslm/assets/tokenizer).

- the committed sample files are exactly, byte for byte, what ``python -m medslm.samples`` writes
  from the fact tables in medslm/assets/samples (tests/test_samples_facts.py checks the tables);
- they have the real datasets' formats (MedQA JSON Lines, GBaker 4-options, KorMedMCQA parquet);
- the tokenizer loads offline, is byte-level and lossless, has 4,096 ids, pad/bos/eos = 0/1/2,
  single-token answer letters, and is what retraining on the committed samples gives.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medslm import samples
from medslm.tokenizer import EMBEDDED_TOKENIZER_DIR, load_tokenizer, sample_texts, train_embedded_tokenizer

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data" / "samples"
MEDQA_KEYS = {
    "question": str,
    "answer": str,
    "options": dict,
    "meta_info": str,
    "answer_idx": str,
    "metamap_phrases": list,
}
HF_KEYS = ["id", "sent1", "sent2", "ending0", "ending1", "ending2", "ending3", "label"]
KORMED_TYPES = {
    c: (pa.int64() if c in ("year", "period", "q_number", "answer") else pa.string()) for c in samples.KORMED_COLUMNS
}
HANGUL = re.compile("[가-힣]")


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """The sample files as the documented command writes them."""
    root = tmp_path_factory.mktemp("samples")
    cmd = [sys.executable, "-m", "medslm.samples", "--out", str(root)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return root


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _kormed_files() -> dict[tuple[str, str], Path]:
    return {
        (subject, split): SAMPLES / "kormedmcqa" / subject / f"{split}-00000-of-00001.parquet"
        for subject in samples.KORMED_SUBJECTS
        for split in samples.KORMED_SPLITS
    }


def _all_questions() -> list[str]:
    qs = [r["question"] for split in samples.MEDQA_SPLITS for r in _jsonl(SAMPLES / "medqa" / "US" / f"{split}.jsonl")]
    qs += [r["sent1"] for r in _jsonl(SAMPLES / "medqa" / "medqa_4options_hf.jsonl")]
    for path in _kormed_files().values():
        qs += pq.read_table(path).column("question").to_pylist()
    return qs


# ---------------------------------------------------------------------------------------------
# The committed files cannot drift from the generator
# ---------------------------------------------------------------------------------------------


def _data_files(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root))
        for sub in ("medqa", "kormedmcqa")
        for p in (root / sub).rglob("*")
        if p.suffix in (".jsonl", ".parquet")
    )


def test_committed_samples_equal_generator_output(generated: Path):
    assert _data_files(SAMPLES) == _data_files(generated)
    for rel in _data_files(generated):
        committed, fresh = SAMPLES / rel, generated / rel
        if rel.endswith(".parquet"):
            a, b = pq.read_table(committed), pq.read_table(fresh)
            assert a.schema.equals(b.schema, check_metadata=True), rel
            assert a.to_pylist() == b.to_pylist(), f"{rel} differs: run python -m medslm.samples"
            if pq.read_metadata(committed).created_by != pq.read_metadata(fresh).created_by:
                continue  # another pyarrow than requirements.txt pins encodes the same table differently
        assert committed.read_bytes() == fresh.read_bytes(), f"{rel} differs: run python -m medslm.samples"


def test_write_samples_returns_every_file(generated: Path, tmp_path: Path):
    written = samples.write_samples(tmp_path)
    assert set(written) == {"medqa", "kormedmcqa"}
    assert len(written["medqa"]) == 4 and len(written["kormedmcqa"]) == 16
    assert sorted(str(p.relative_to(tmp_path)) for ps in written.values() for p in ps) == _data_files(generated)
    assert sum(p.stat().st_size for ps in written.values() for p in ps) < 1_000_000


# ---------------------------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", list(samples.MEDQA_SPLITS))
def test_medqa_us_format(split: str):
    rows = _jsonl(SAMPLES / "medqa" / "US" / f"{split}.jsonl")
    assert len(rows) == samples.MEDQA_SPLITS[split]
    for i, row in enumerate(rows, 1):
        assert list(row) == list(MEDQA_KEYS), f"line {i}"
        for key, typ in MEDQA_KEYS.items():
            assert isinstance(row[key], typ), f"line {i}: {key}"
        assert list(row["options"]) == list("ABCDE")
        assert all(isinstance(v, str) and v.strip() for v in row["options"].values())
        assert len(set(row["options"].values())) == 5, f"line {i}: repeated option"
        assert row["answer_idx"] in row["options"]
        assert row["options"][row["answer_idx"]] == row["answer"]
        assert row["meta_info"] in ("step1", "step2&3")
        assert row["metamap_phrases"] and all(isinstance(p, str) and p for p in row["metamap_phrases"])
        assert 60 <= len(row["question"].split()) <= 150, f"line {i}: {len(row['question'].split())} words"
    counts = Counter(r["answer_idx"] for r in rows)
    assert set(counts) == set("ABCDE") and max(counts.values()) - min(counts.values()) <= 1


def test_medqa_4options_hf_format():
    rows = _jsonl(SAMPLES / "medqa" / "medqa_4options_hf.jsonl")
    assert len(rows) == samples.MEDQA_HF_ITEMS
    for row in rows:
        assert list(row) == HF_KEYS
        assert isinstance(row["id"], str) and row["sent2"] == ""
        endings = [row[f"ending{i}"] for i in range(4)]
        assert all(isinstance(e, str) and e for e in endings) and len(set(endings)) == 4
        assert type(row["label"]) is int and 0 <= row["label"] <= 3
    assert len({r["id"] for r in rows}) == len(rows)
    counts = Counter(r["label"] for r in rows)
    assert set(counts) == {0, 1, 2, 3} and max(counts.values()) - min(counts.values()) <= 1


def test_kormedmcqa_format():
    keys = set()
    for (subject, split), path in _kormed_files().items():
        assert path.is_file(), path
        table = pq.read_table(path)
        assert table.schema.names == list(samples.KORMED_COLUMNS), path
        assert {f.name: f.type for f in table.schema} == KORMED_TYPES, path
        assert table.num_rows == samples.KORMED_SPLITS[split]
        rows = table.to_pylist()
        for row in rows:
            assert row["subject"] == subject
            assert 1 <= row["answer"] <= 5 and row["period"] in (1, 2) and 2012 <= row["year"] <= 2023
            assert all(row[k] for k in "ABCDE") and len({row[k] for k in "ABCDE"}) == 5
            assert HANGUL.search(row["question"])
            assert bool(row["cot"]) == (split == "fewshot"), f"{path}: cot"
            key = (row["subject"], row["year"], row["period"], row["q_number"])
            assert key not in keys, key
            keys.add(key)
        counts = Counter(r["answer"] for r in rows)
        assert max(counts.values()) - min(counts.values()) <= 1 and len(counts) == min(5, len(rows)), path


def test_no_duplicate_questions():
    questions = _all_questions()
    dups = [q for q, n in Counter(questions).items() if n > 1]
    assert not dups, dups[:3]
    assert len(questions) == sum(samples.MEDQA_SPLITS.values()) + samples.MEDQA_HF_ITEMS + 4 * sum(
        samples.KORMED_SPLITS.values()
    )


def test_korean_items_are_shorter_than_english():
    en = [len(r["question"].split()) for r in _jsonl(SAMPLES / "medqa" / "US" / "train.jsonl")]
    ko = [
        len(q.split())
        for q in pq.read_table(SAMPLES / "kormedmcqa" / "doctor" / "train-00000-of-00001.parquet")
        .column("question")
        .to_pylist()
    ]
    assert sum(ko) / len(ko) < sum(en) / len(en)
    assert len(set(en)) > 10 and len(set(ko)) > 5  # lengths vary, so packing sees different sizes


def test_josa():
    assert samples.josa("진료기록부", "을/를") == "진료기록부를"
    assert samples.josa("처방전", "을/를") == "처방전을"
    assert samples.josa("급성 충수염", "으로/로") == "급성 충수염으로"
    assert samples.josa("통풍", "으로/로") == "통풍으로"
    assert samples.josa("파킨슨병", "이/가") == "파킨슨병이"
    assert samples.josa("천식", "은/는") == "천식은"
    assert samples.josa("철", "으로/로") == "철로"


# ---------------------------------------------------------------------------------------------
# The embedded tokenizer
# ---------------------------------------------------------------------------------------------


def test_tokenizer_loads_offline_from_asset_dir(tok, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(str(EMBEDDED_TOKENIZER_DIR))
    assert len(auto) == len(tok) == 4096
    assert (EMBEDDED_TOKENIZER_DIR / "tokenizer.json").is_file()
    assert load_tokenizer("embedded").get_vocab() == tok.get_vocab()


def test_tokenizer_vocab_and_special_tokens(tok):
    assert len(tok) == 4096 and tok.vocab_size == 4096
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<|pad|>", "<|bos|>", "<|eos|>")
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.unk_token is None
    from tokenizers import pre_tokenizers

    vocab = tok.get_vocab()
    assert all(sym in vocab for sym in pre_tokenizers.ByteLevel.alphabet())  # all 256 byte symbols


def test_tokenizer_adds_no_special_tokens_unless_asked(tok):
    ids = tok("x")["input_ids"]
    assert ids == tok("x", add_special_tokens=False)["input_ids"]
    assert len(ids) == 1 and ids[0] not in (0, 1, 2)
    assert tok("Question: hi")["input_ids"][0] != tok.bos_token_id


@pytest.mark.parametrize(
    "text",
    [
        "Question: A 45-year-old man has chest pain.\nA. Aspirin\nB. Heparin\nAnswer: C",
        "의료법상 의료인에 해당하지 않는 사람은?\nA. 약사\n정답： A",
        "Emoji 😀🩺 and Chinese 中文医学 and Japanese 医療, Thai ภาษาไทย, Arabic العربية",
        "  leading/trailing spaces, tabs\tand\r\nCRLF, NUL \x00 and \x7f, zero-width \u200b, combining é ",
        "뷁쀍 (rare Hangul) — “quotes” … ±µ°C ㎎/㎗ ①②",
        "",
    ],
)
def test_tokenizer_roundtrip_is_lossless(tok, text: str):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert all(0 <= i < 4096 for i in ids)


def test_answer_letters_are_single_tokens(tok):
    ids = []
    for letter in "ABCDE":
        enc = tok(f" {letter}", add_special_tokens=False)["input_ids"]
        assert len(enc) == 1, (letter, enc)
        ids.append(enc[0])
    assert len(set(ids)) == 5
    # in context, after either answer cue, the letter is still that one token
    for cue in ("Answer:", "정답："):
        prompt = tok(f"x\n{cue}", add_special_tokens=False)["input_ids"]
        full = tok(f"x\n{cue} C", add_special_tokens=False)["input_ids"]
        assert full == prompt + [ids[2]]


def test_load_tokenizer_missing_path_names_it(tmp_path: Path):
    missing = tmp_path / "no-such-tokenizer"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_tokenizer(str(missing))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(str(empty))):
        load_tokenizer(str(empty))


def test_embedded_tokenizer_is_reproducible(tmp_path: Path):
    """Retraining on the committed samples gives the committed asset, byte for byte."""
    train_embedded_tokenizer(sample_texts(SAMPLES), tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / name).read_bytes() == (EMBEDDED_TOKENIZER_DIR / name).read_bytes(), (
            f"{name} differs: run python -m medslm.tokenizer"
        )
