"""Readers and validation: real formats in, clear file/line/field errors for bad input."""

from __future__ import annotations

import json
import random
from collections import Counter

import pandas as pd
import pytest

from conftest import kormed_row, medqa_row, write_jsonl
from medslm.data import DataError, SkipLog, load_items
from medslm.dataset import DataConfig, build_dataset, load_and_split
from medslm.config import ConfigError, parse_ratio
from medslm.mixing import MixError, content_key, mix_by_ratio, split_items


def test_medqa_jsonl_and_gbaker_layout(tmp_path):
    f = write_jsonl(tmp_path / "US" / "train.jsonl", [medqa_row(i, answer="ABCD"[i % 4]) for i in range(5)])
    items = load_items("medqa", [f])
    assert [it.answer for it in items] == [0, 1, 2, 3, 0]
    assert items[1].subject == "step1" and items[1].split == "train" and items[0].language == "en"
    assert items[0].source.endswith("train.jsonl:line 1")
    own = write_jsonl(tmp_path / "own.jsonl", [medqa_row(0, id="usmle-17")])  # a row's own id, as in the hf layout
    assert load_items("medqa", [own])[0].id == "medqa/usmle-17"
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


KORMED_HEADER = "subject,year,period,q_number,question,A,B,C,D,E,answer,cot"


def _csv(tmp_path, *rows: str):
    f = tmp_path / "train.csv"
    f.write_text("\n".join([KORMED_HEADER, *rows]) + "\n", encoding="utf-8")
    return f


def test_a_csv_quote_that_never_closes_or_a_row_with_shifted_columns_is_an_error(tmp_path):
    """Non-strict CSV read an unclosed quote as one field holding every later row, and a row with an
    unquoted comma as shifted columns (a wrong answer trained): both were exit 0."""
    ok = "nurse,2020,1,{n},질문 {n}?,가,나,다,라,마,2,"
    f = _csv(tmp_path, ok.format(n=1), ok.format(n=2) + '"see note', ok.format(n=3), ok.format(n=4))
    with pytest.raises(DataError, match=r"train.csv:line 3: field '\(csv\)': not valid CSV: .*a quote opened in this row never closes"):
        load_items("kormedmcqa", [f])
    f = _csv(tmp_path, "pharm,2021,1,1,다음 중 옳은 것은, 몇 개인가?,1,2,3,4,5,2,", ok.format(n=2))
    with pytest.raises(DataError, match=r"train.csv:line 2: field '\(csv\)': 13 fields where the header has 12"):
        load_items("kormedmcqa", [f])
    skips = SkipLog()  # a row-level fault: skip_invalid skips and counts it
    assert [it.id for it in load_items("kormedmcqa", [f], skip_invalid=True, skips=skips)] == ["kormedmcqa/nurse/2020-1-2"]
    assert len(skips) == 1 and "13 fields" in skips.summary()["examples"][0]
    f = _csv(tmp_path, ok.format(n=1).replace(",2,", ",²,"), ok.format(n=2))  # '²'.isdigit() is True, int('²') fails
    with pytest.raises(DataError, match=r"train.csv:line 2: field 'answer': expected an integer, got '²'"):
        load_items("kormedmcqa", [f])
    (tmp_path / "dup.csv").write_text(KORMED_HEADER + ",answer\n" + ok.format(n=1) + ",3\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"dup.csv:line 1: field '\(header\)': column names repeat: answer"):
        load_items("kormedmcqa", [tmp_path / "dup.csv"])


def test_a_gap_in_the_4_options_hf_endings_is_an_error_not_a_shifted_label(tmp_path):
    f = write_jsonl(tmp_path / "hf.jsonl", [{"id": "q0", "sent1": "Which?", "ending0": "a", "ending1": "b", "ending3": "d", "label": 2}])
    with pytest.raises(DataError, match=r"hf.jsonl:line 1: field 'ending2': missing \(the row has ending0, ending1, ending3\)"):
        load_items("medqa", [f])


def test_copies_that_differ_only_in_invisible_characters_share_one_key_and_split(tmp_path):
    a = medqa_row(0)
    b = json.loads(json.dumps(a))
    b["question"] = b["question"].replace("patient", "pa\u200btient\u00ad").replace("What", "\ufeffWhat")
    b["options"]["A"] = "option\u200b a number 0"
    b["answer"] = b["options"][b["answer_idx"]]
    x, y = load_items("medqa", [write_jsonl(tmp_path / "x.jsonl", [a]), write_jsonl(tmp_path / "y.jsonl", [b])])
    assert x.question != y.question and content_key(x) == content_key(y)


def test_a_ratio_that_rounds_one_language_to_nothing_is_an_error(tmp_path):
    items = _items(tmp_path, 5, 1)
    with pytest.raises(MixError, match=r"ratio 1:2 with 5 English and 1 Korean training items rounds the English side to 0 items"):
        mix_by_ratio(items, (1, 2))
    assert mix_by_ratio(items, (1, 2), upsample=True).used == {"en": 5, "ko": 10}  # the Korean item repeated
    with pytest.raises(ConfigError, match="ratio must look like EN:KO"):
        parse_ratio("²:3")


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


# ---------------------------------------------------------------------------------------------
# Inputs: line ends, blank fields, ids, empty files, a mix that depends on content only
# ---------------------------------------------------------------------------------------------

LINE_SEPARATORS = "a\u2028b\u2029c\x85d"  # legal inside JSON strings and CSV fields; str.splitlines() splits at them


def test_unicode_line_separators_inside_fields_are_data(tmp_path):
    rows = [medqa_row(i) for i in range(3)]
    rows[1]["question"] = f"Which {LINE_SEPARATORS}?"
    rows[2]["options"]["C"] = f"option {LINE_SEPARATORS}"
    rows[2]["answer_idx"], rows[2]["answer"] = "C", rows[2]["options"]["C"]
    f = write_jsonl(tmp_path / "train.jsonl", rows)  # ensure_ascii=False: the separators are raw bytes
    assert "\u2028" in f.read_text(encoding="utf-8")
    skips = SkipLog()
    items = load_items("medqa", [f], skip_invalid=True, skips=skips)
    assert len(skips) == 0 and len(items) == 3
    assert items[1].question == f"Which {LINE_SEPARATORS}?" and items[2].options[2] == f"option {LINE_SEPARATORS}"
    assert [it.source.rsplit(":", 1)[1] for it in items] == ["line 1", "line 2", "line 3"]
    # CSV: a field holding them, and \r\n and bare \r line ends elsewhere
    kor = [kormed_row(i) for i in range(3)]
    kor[1]["question"] = f"문제 {LINE_SEPARATORS}"
    text = pd.DataFrame(kor).to_csv(index=False, lineterminator="\r\n")
    for name, data in (("crlf.csv", text), ("cr.csv", text.replace("\r\n", "\r"))):
        (tmp_path / name).write_text(data, encoding="utf-8", newline="")
        items = load_items("kormedmcqa", [tmp_path / name], skip_invalid=True, skips=skips)
        assert len(skips) == 0 and [it.question for it in items][1] == f"문제 {LINE_SEPARATORS}"
        assert items[2].source.endswith(f"{name}:line 4")
    # JSON Lines with \r\n and bare \r line ends keep their line numbers
    cr = tmp_path / "cr.jsonl"
    cr.write_text("\r".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\r", encoding="utf-8", newline="")
    assert [it.source.rsplit(":", 1)[1] for it in load_items("medqa", [cr])] == ["line 1", "line 2", "line 3"]


@pytest.mark.parametrize(
    "benchmark, mutate, field",
    [
        ("medqa", lambda r: r.update(question="\x00\u200b \t"), "question"),  # NUL, zero-width space
        ("medqa", lambda r: r["options"].update(B="\ufeff\x0b"), "options.B"),  # BOM, vertical tab
        ("kormedmcqa", lambda r: r.update(question="\u200b\u200b"), "question"),
        ("kormedmcqa", lambda r: r.update(C="\x00"), "C"),
        ("gbaker", lambda r: r.update(ending2="\u00ad\u2060"), "ending2"),  # soft hyphen, word joiner
    ],
)
def test_blank_question_or_option_names_file_line_and_field(tmp_path, benchmark, mutate, field):
    if benchmark == "gbaker":
        rows = [{"id": f"q{i}", "sent1": "Which?", "ending0": "a", "ending1": "b", "ending2": "c", "ending3": "d", "label": 0} for i in range(3)]
    else:
        rows = [medqa_row(i) if benchmark == "medqa" else kormed_row(i) for i in range(3)]
    mutate(rows[1])
    f = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError, match=rf"train.jsonl:line 2: field '{field}': empty"):
        load_items("kormedmcqa" if benchmark == "kormedmcqa" else "medqa", [f])


def test_fallback_ids_are_unique_per_full_path_and_independent_of_cwd(tmp_path, monkeypatch):
    a = write_jsonl(tmp_path / "a" / "US" / "train.jsonl", [medqa_row(0)])
    b = write_jsonl(tmp_path / "b" / "US" / "train.jsonl", [medqa_row(1)])
    items = load_items("medqa", [a, b])
    assert len(items) == 2 and items[0].id != items[1].id
    assert items[0].id.endswith("a/US/train.jsonl/1") and items[1].id.endswith("b/US/train.jsonl/1")
    monkeypatch.chdir(tmp_path / "a")
    assert load_items("medqa", ["US/train.jsonl"])[0].id == items[0].id  # relative path, same file: same id
    # the embedded samples are named relative to the checkout, wherever it lives
    from medslm.dataset import EMBEDDED_DATA

    assert load_items("medqa", [EMBEDDED_DATA["medqa"] / "dev.jsonl"])[0].id == "medqa/data/samples/medqa/US/dev.jsonl/1"


def test_an_empty_file_is_named_in_the_error(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "blank.jsonl").write_text("\n  \n")
    pd.DataFrame(columns=list(kormed_row(0))).to_csv(tmp_path / "header.csv", index=False)
    for name, bench in (("empty.jsonl", "medqa"), ("blank.jsonl", "medqa"), ("header.csv", "kormedmcqa")):
        with pytest.raises(DataError, match=rf"{name}: field '\(file\)': the file holds no rows"):
            load_items(bench, [tmp_path / name])
    folder = tmp_path / "folder"
    write_jsonl(folder / "train.jsonl", [medqa_row(0)])
    (folder / "test.jsonl").write_text("")
    with pytest.raises(DataError, match=r"folder/test.jsonl: .*holds no rows"):  # also inside a folder
        load_items("medqa", [folder], skip_invalid=True)


def _kormed_formats(tmp_path) -> dict[str, object]:
    """The same 60 KorMedMCQA train rows as CSV, shuffled CSV, Parquet and a hub-style folder."""
    subjects = ("doctor", "nurse", "pharm", "dentist")
    rows = [kormed_row(i, subjects[i % 4], answer=1 + i % 5) for i in range(60)]
    shuffled = list(rows)
    random.Random(7).shuffle(shuffled)
    pd.DataFrame(rows).to_csv(tmp_path / "train.csv", index=False)
    (tmp_path / "shuffled").mkdir()
    pd.DataFrame(shuffled).to_csv(tmp_path / "shuffled" / "train.csv", index=False)
    pd.DataFrame(shuffled).to_parquet(tmp_path / "train.parquet")
    for s in subjects:
        (tmp_path / "hub" / s).mkdir(parents=True)
        part = [{k: v for k, v in r.items() if k != "subject"} for r in reversed(rows) if r["subject"] == s]
        pd.DataFrame(part).to_parquet(tmp_path / "hub" / s / "train-00000-of-00001.parquet")
    return {"csv": tmp_path / "train.csv", "shuffled csv": tmp_path / "shuffled" / "train.csv",
            "parquet": tmp_path / "train.parquet", "hub folder": tmp_path / "hub"}


def test_the_mix_and_splits_depend_on_content_and_seed_only(tmp_path):
    """The same items shuffled, or as CSV / Parquet / a hub folder, give the same splits, the same
    subsample of the larger side, in the same order (seed fixed); another seed gives another mix."""
    en = [medqa_row(i) for i in range(20)]
    en_files = [write_jsonl(tmp_path / "en" / "train.jsonl", en), write_jsonl(tmp_path / "en2" / "train.jsonl", en[::-1])]
    mixes, splits = {}, {}
    for (name, ko), en_file in zip(_kormed_formats(tmp_path).items(), en_files * 2):
        items = load_items("medqa", [en_file]) + load_items("kormedmcqa", [ko])
        res = split_items(items, "hash")
        splits[name] = {s: sorted(content_key(it) for it in v) for s, v in res.splits.items()}
        mix = mix_by_ratio(res.splits["train"], (5, 5), seed=3)
        assert mix.used["ko"] < mix.available["ko"]  # Korean is the side subsampled
        mixes[name] = [content_key(it) for it in mix.items]
    first = next(iter(mixes.values()))
    for name in mixes:
        assert splits[name] == splits["csv"], name
        assert mixes[name] == first, name  # same items, same order
    other = mix_by_ratio(split_items(load_items("medqa", [en_files[0]]) + load_items("kormedmcqa", [tmp_path / "train.csv"])).splits["train"], (5, 5), seed=4)
    assert sorted(content_key(it) for it in other.items) != sorted(first)


def test_build_dataset_from_a_shuffled_copy_gives_the_same_rows_and_manifest(tmp_path):
    from medslm.tokenizer import load_tokenizer

    formats = _kormed_formats(tmp_path)
    en = write_jsonl(tmp_path / "en" / "train.jsonl", [medqa_row(i) for i in range(20)])
    tok = load_tokenizer(None)
    built = {
        name: build_dataset(DataConfig(medqa=[str(en)], kormedmcqa=[str(formats[name])], ratio="5:5", max_seq_len=256), tok)
        for name in ("csv", "shuffled csv")
    }
    a, b = built["csv"], built["shuffled csv"]
    assert [e.input_ids for e in a.train] == [e.input_ids for e in b.train] and a.train_bins == b.train_bins
    assert [(m["id"], m["split"], m["content"]) for m in a.manifest] == [(m["id"], m["split"], m["content"]) for m in b.manifest]
    train = [m for m in a.manifest if m["split"] == "train"]
    assert sum(m["copies"] for m in train) == a.report["num_samples"] == len(a.train)
    assert Counter(m["language"] for m in train) == a.report["per_language"]
    assert sum(m["split"] == "val" for m in a.manifest) == a.report["val_samples"]
    assert sum(m["split"] == "test" for m in a.manifest) == a.report["test_items"]
    assert {m["subject"] for m in train if m["dataset"] == "kormedmcqa"} == {"doctor", "nurse", "pharm", "dentist"}
