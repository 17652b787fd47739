"""Readers and validation: real formats in, clear file/line/field errors for bad input."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import kormed_row, medqa_row, write_jsonl
from medslm.data import DataError, SkipLog, load_items
from medslm.dataset import DataConfig, build_dataset, load_and_split
from medslm.mixing import content_key, mix_by_ratio, split_items


def test_medqa_jsonl_and_gbaker_layout(tmp_path):
    f = write_jsonl(tmp_path / "US" / "train.jsonl", [medqa_row(i, answer="ABCD"[i % 4]) for i in range(5)])
    items = load_items("medqa", [f])
    assert [it.answer for it in items] == [0, 1, 2, 3, 0]
    assert items[1].subject == "step1" and items[1].split == "train" and items[0].language == "en"
    assert items[0].source.endswith("train.jsonl:line 1")
    hf = write_jsonl(
        tmp_path / "hf.jsonl",
        [{"id": "q7", "sent1": "Which?", "sent2": "", "ending0": "a", "ending1": "b", "ending2": "c", "ending3": "d", "label": 2}],
    )
    (item,) = load_items("medqa", [hf])
    assert item.options == ("a", "b", "c", "d") and item.answer == 2 and item.id == "medqa/q7"


def test_kormedmcqa_hub_folder_csv_and_4_options(tmp_path):
    for subject in ("doctor", "nurse"):
        d = tmp_path / "hub" / subject
        d.mkdir(parents=True)
        pd.DataFrame([kormed_row(i, subject, answer=1 + i % 5) for i in range(3)]).to_parquet(d / "test-00000-of-00001.parquet")
    items = load_items("kormedmcqa", [tmp_path / "hub"])
    assert {it.subject for it in items} == {"doctor", "nurse"} and all(it.split == "test" for it in items)
    assert [it.answer for it in items[:3]] == [0, 1, 2]
    csv_path = tmp_path / "dev.csv"
    rows = [kormed_row(i, "dentist") for i in range(2)]
    for r in rows:
        r["E"] = ""  # a 4-option export
    pd.DataFrame(rows).to_csv(csv_path, index=False)
    items = load_items("kormedmcqa", [csv_path])
    assert len(items[0].options) == 4 and items[0].split == "dev"


@pytest.mark.parametrize(
    "mutate, field, line",
    [
        (lambda r: r.pop("question"), "question", 2),
        (lambda r: r.update(question="   "), "question", 2),
        (lambda r: r.update(answer_idx="F"), "answer_idx", 2),
        (lambda r: r.update(answer="something else"), "answer", 2),
        (lambda r: r["options"].pop("B"), "options", 2),
    ],
)
def test_bad_medqa_rows_name_file_line_and_field(tmp_path, mutate, field, line):
    rows = [medqa_row(0), medqa_row(1), medqa_row(2)]
    mutate(rows[1])
    f = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_items("medqa", [f])
    assert f"train.jsonl:line {line}" in str(err.value) and f"field '{field}'" in str(err.value)


def test_malformed_json_and_bad_encoding(tmp_path):
    f = tmp_path / "train.jsonl"
    f.write_text(json.dumps(medqa_row(0)) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train.jsonl:line 2: field '\(json\)': malformed JSON"):
        load_items("medqa", [f])
    g = tmp_path / "latin.jsonl"
    g.write_bytes(json.dumps(medqa_row(0)).encode() + b"\n" + '{"question": "caf\xe9"}'.encode("latin-1") + b"\n")
    with pytest.raises(DataError, match=r"latin.jsonl:line 2: .*not valid UTF-8"):
        load_items("medqa", [g])


def test_kormed_answer_out_of_range_and_duplicate_id(tmp_path):
    f = write_jsonl(tmp_path / "train.jsonl", [kormed_row(0), kormed_row(1, answer=6)])
    with pytest.raises(DataError, match=r"line 2: field 'answer': 6 is outside 1..5"):
        load_items("kormedmcqa", [f])
    f2 = write_jsonl(tmp_path / "dup.jsonl", [kormed_row(0), kormed_row(0)])
    with pytest.raises(DataError, match=r"dup.jsonl:line 2: field 'id': duplicate id"):
        load_items("kormedmcqa", [f2])


def test_skip_invalid_counts_every_skip(tmp_path):
    rows = [medqa_row(i) for i in range(6)]
    rows[1]["answer_idx"] = "Z"
    rows[4].pop("options")
    f = write_jsonl(tmp_path / "train.jsonl", rows)
    skips = SkipLog()
    items = load_items("medqa", [f], skip_invalid=True, skips=skips)
    assert len(items) == 4 and len(skips) == 2
    summary = skips.summary()
    assert summary["count"] == 2 and sum(summary["by_reason"].values()) == 2
    assert any("line 2" in e for e in summary["examples"]) and any("line 5" in e for e in summary["examples"])


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_items("medqa", [tmp_path / "nope.jsonl"])


def test_hash_split_is_stable_and_leaks_are_removed(tmp_path):
    rows = [medqa_row(i) for i in range(200)]
    items = load_items("medqa", [write_jsonl(tmp_path / "a.jsonl", rows)])
    res = split_items(items, "hash")
    sizes = {k: len(v) for k, v in res.splits.items()}
    assert sum(sizes.values()) == 200 and 130 < sizes["train"] < 190
    assert split_items(list(reversed(items)), "hash").report()["sizes"] == sizes
    # official mode: the same question in train and test is a leak, dropped from train and counted
    tr = write_jsonl(tmp_path / "o" / "train.jsonl", [medqa_row(i) for i in range(5)])
    te = write_jsonl(tmp_path / "o" / "test.jsonl", [medqa_row(3), medqa_row(50)])
    res = split_items(load_items("medqa", [tr, te]), "official")
    assert len(res.splits["train"]) == 4 and res.leaks_removed == {"train": 1}
    train_keys = {content_key(i) for i in res.splits["train"]}
    assert not train_keys & {content_key(i) for i in res.splits["test"]}


def _items(tmp_path, n_en, n_ko):
    en = load_items("medqa", [write_jsonl(tmp_path / "en.jsonl", [medqa_row(i) for i in range(n_en)])])
    subjects = ["doctor", "nurse", "pharm", "dentist"]
    ko = load_items("kormedmcqa", [write_jsonl(tmp_path / "ko.jsonl", [kormed_row(i, subjects[i % 4]) for i in range(n_ko)])])
    return en + ko


@pytest.mark.parametrize("ratio, used", [((5, 5), (40, 40)), ((10, 3), (100, 30)), ((2, 8), (10, 40)), ((1, 0), (100, 0))])
def test_mix_by_ratio_subsamples_the_side_in_excess(tmp_path, ratio, used):
    mix = mix_by_ratio(_items(tmp_path, 100, 40), ratio, seed=1)
    assert (mix.used["en"], mix.used["ko"]) == used
    assert len({i.id for i in mix.items}) == len(mix.items)  # no repeats without upsampling
    assert mix_by_ratio(_items(tmp_path, 100, 40), ratio, seed=1).items == mix.items  # seeded


def test_mix_upsample_and_subject_strata(tmp_path):
    mix = mix_by_ratio(_items(tmp_path, 100, 40), (5, 5), seed=0, upsample=True)
    assert mix.used == {"en": 100, "ko": 100} and mix.repeated == {"en": 0, "ko": 60}
    sub = mix_by_ratio(_items(tmp_path, 20, 40), (1, 1), seed=0)
    assert sub.report()["by_subject"] == {"en/step1": 10, "en/step2&3": 10, "ko/dentist": 5, "ko/doctor": 5, "ko/nurse": 5, "ko/pharm": 5}


def test_build_dataset_on_the_embedded_samples():
    from medslm.tokenizer import load_tokenizer

    cfg = DataConfig(ratio="5:5", max_seq_len=512)
    built = build_dataset(cfg, load_tokenizer(None), global_batch_rows=8)
    r = built.report
    assert r["num_samples"] == len(built.train) > 0 and r["per_language"]["en"] == r["per_language"]["ko"]
    assert r["num_rows"] == len(built.train_bins) < r["num_samples"]
    assert r["packing_efficiency"] == pytest.approx(r["real_tokens"] / (r["num_rows"] * 512))
    assert set(load_and_split(cfg).items) == {"medqa", "kormedmcqa"}
    for ex in built.train:
        sup = [t for t in ex.labels if t != -100]
        assert 1 <= len(sup) <= 3 and ex.labels[0] == -100  # answer letter (+EOS) only


def test_saved_datasets_folder_with_splits(tmp_path):
    import datasets

    rows = {s: [kormed_row(i + 10 * k, "pharm") for i in range(3)] for k, s in enumerate(("train", "validation", "test"))}
    dd = datasets.DatasetDict({s: datasets.Dataset.from_list(r) for s, r in rows.items()})
    dd.save_to_disk(str(tmp_path / "saved"))
    items = load_items("kormedmcqa", [tmp_path / "saved"])
    assert len(items) == 9 and {it.split for it in items} == {"train", "dev", "test"}
    assert items[0].source.endswith("[train]:row 1")
