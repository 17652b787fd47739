"""evaluate.py accuracy: the batched scorers against plain references, outputs, bad input, and
the real train -> adapter -> evaluate path on items the tiny model has memorised."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, kormed_row, medqa_row, write_jsonl
from medslm import scoring
from medslm.evaluation import EvalConfig, evaluate, load_for_eval, predictions, select_items, summarise
from medslm.records import MCQItem
from medslm.scoring import (
    continuation_logprobs,
    length_batches,
    score_letters,
    score_letters_unbatched,
    score_option_text,
    score_per_option,
)


@pytest.fixture(scope="module")
def eval_files(tmp_path_factory) -> dict[str, Path]:
    """4-option MedQA (jind11 layout, varied lengths) and 5-option KorMedMCQA, answers spread out."""
    d = tmp_path_factory.mktemp("evaldata")
    medqa = [medqa_row(i, answer="ABCD"[i % 4], question=f"Q{i}: " + "word " * (i * 3) + "what now?") for i in range(10)]
    for i, row in enumerate(medqa):  # the answer text must match the (4-option) answer letter
        row["answer"] = row["options"][row["answer_idx"]]
    kormed = [kormed_row(i, subject=("doctor", "nurse", "pharm", "dentist")[i % 4], answer=1 + i % 5) for i in range(8)]
    return {
        "medqa": write_jsonl(d / "medqa" / "test.jsonl", medqa),
        "kormedmcqa": write_jsonl(d / "kormed" / "test.jsonl", kormed),
    }


@pytest.fixture(scope="module")
def tiny(eval_files):
    cfg = EvalConfig(model="embedded", quantization="none", medqa=[str(eval_files["medqa"])], kormedmcqa=[str(eval_files["kormedmcqa"])])
    items, _ = select_items(cfg)
    model, tokenizer, _ = load_for_eval(cfg)
    return model, tokenizer, items


def _max_diff(a: list[list[float]], b: list[list[float]]) -> float:
    assert [len(x) for x in a] == [len(y) for y in b]
    return max(abs(x - y) for p, q in zip(a, b) for x, y in zip(p, q))


def _argmax(scores: list[list[float]]) -> list[int]:
    return [max(range(len(s)), key=lambda k: (s[k], -k)) for s in scores]


def test_items_mix_4_and_5_options(tiny):
    _, _, items = tiny
    assert {len(it.options) for it in items} == {4, 5}


def test_batched_letter_scorer_matches_one_item_at_a_time(tiny):
    model, tokenizer, items = tiny
    ref = score_letters_unbatched(model, tokenizer, items)
    for bs in (1, 3, 32):
        got = score_letters(model, tokenizer, items, batch_size=bs)
        assert _argmax(got) == _argmax(ref)
        assert _max_diff(got, ref) < 1e-4
    # the same with a token budget that forces small batches
    assert _max_diff(score_letters(model, tokenizer, items, batch_size=32, max_batch_tokens=200), ref) < 1e-4


def test_letter_scorer_is_deterministic_and_fallback_path_agrees(tiny, monkeypatch):
    model, tokenizer, items = tiny
    a = score_letters(model, tokenizer, items, batch_size=4)
    assert score_letters(model, tokenizer, items, batch_size=4) == a
    monkeypatch.setattr(scoring, "_supports_row_positions", lambda m: False)  # full logits, then gather
    assert _max_diff(score_letters(model, tokenizer, items, batch_size=4), a) < 1e-4


def test_per_option_reference_gives_the_same_scores(tiny):
    model, tokenizer, items = tiny
    a = score_letters(model, tokenizer, items)
    b = score_per_option(model, tokenizer, items)
    assert _argmax(a) == _argmax(b)
    assert _max_diff(a, b) < 1e-4


def test_option_text_scores_match_a_naive_computation(tiny):
    model, tokenizer, items = tiny
    got = score_option_text(model, tokenizer, items[:3] + items[-2:], batch_size=4)
    from medslm.prompts import encode_prompt, format_prompt

    for it, scores in zip(items[:3] + items[-2:], got):
        prompt = encode_prompt(tokenizer, format_prompt(it))
        for k, text in enumerate(it.options):
            choice = f"{'ABCDE'[k]}. {text}"
            cont = tokenizer(" " + choice, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([prompt + cont])).logits[0].float()
            lp = torch.log_softmax(logits, -1)
            ll = sum(float(lp[len(prompt) - 1 + j, t]) for j, t in enumerate(cont))
            assert scores[k] == pytest.approx(ll / len(choice), abs=1e-4)


def test_continuation_logprobs_batched_equals_single(tiny):
    model, tokenizer, _ = tiny
    reqs = [([1, 50, 60, 70], [80, 90]), ([1, 33], [44]), ([1, 5, 6, 7, 8, 9, 10], [11, 12, 13])]
    batched = continuation_logprobs(model, tokenizer, reqs, batch_size=8)
    single = continuation_logprobs(model, tokenizer, reqs, batch_size=1)
    assert batched == pytest.approx(single, abs=1e-4)


def test_length_batches_cover_everything_within_limits():
    lengths = [5, 50, 7, 30, 30, 1, 100, 8]
    batches = list(length_batches(lengths, batch_size=3, max_batch_tokens=100))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 3
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 100
    firsts = [lengths[b[0]] for b in batches]
    assert firsts == sorted(firsts, reverse=True)  # longest first


def test_predictions_and_summary():
    items = [
        MCQItem("a", "medqa", "en", "step1", "q", ("x", "y", "z", "w"), 1),
        MCQItem("b", "kormedmcqa", "ko", "nurse", "q", ("x", "y", "z", "w", "v"), 4),
        MCQItem("c", "kormedmcqa", "ko", "doctor", "q", ("x", "y", "z", "w", "v"), 0),
    ]
    preds = predictions(items, [[0.0, 1.0, -1.0, -2.0], [0, 0, 0, 0, 5.0], [1.0, 1.0, 0, 0, 0]])
    assert [p["predicted"] for p in preds] == ["B", "E", "A"]  # a tie goes to the first option
    assert all(p["correct"] for p in preds)
    summ = summarise(preds)
    assert summ["kormedmcqa"]["n"] == 2 and set(summ["kormedmcqa"]["subjects"]) == {"doctor", "nurse"}
    assert summ["medqa"]["ci95"][1] == 1.0


def test_evaluate_writes_eval_json_and_predictions(eval_files, tmp_path, capsys):
    cfg = EvalConfig(model="embedded", medqa=[str(eval_files["medqa"])], kormedmcqa=[str(eval_files["kormedmcqa"])], out=str(tmp_path / "ev"), progress=False)
    res = evaluate(cfg)
    ev = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert ev["n_items"] == 18 and ev["scoring"] == "letter" and ev["split"] == "all"
    assert ev["model"]["name_or_path"] == "embedded" and ev["model"]["adapter"] is None
    assert ev["template"] and ev["elapsed_s"] > 0
    k = ev["benchmarks"]["kormedmcqa"]
    assert k["n"] == 8 and set(k["subjects"]) == {"doctor", "nurse", "pharm", "dentist"}
    assert set(ev["benchmarks"]["medqa"]["subjects"]) == {"step1", "step2&3"}  # from meta_info
    lo, hi = k["ci95"]
    assert 0 <= lo <= k["accuracy"] <= hi <= 1
    lines = [json.loads(x) for x in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 18
    assert set(lines[0]) >= {"id", "benchmark", "subject", "gold", "predicted", "correct", "scores"}
    assert {len(x["scores"]) for x in lines} == {4, 5}
    assert "accuracy" in capsys.readouterr().out
    again = evaluate(cfg)  # deterministic
    assert [p["scores"] for p in again["predictions"]] == [p["scores"] for p in res["predictions"]]


def test_split_selection(eval_files):
    explicit = EvalConfig(model="embedded", medqa=[str(eval_files["medqa"])])
    items, desc = select_items(explicit)
    assert desc["split"] == "all" and len(items) == 10 and all(it.benchmark == "medqa" for it in items)
    items, desc = select_items(EvalConfig(model="embedded", medqa=[str(eval_files["medqa"])], split="test", split_mode="official"))
    assert len(items) == 10  # the file is named test.jsonl
    items, desc = select_items(EvalConfig(model="embedded", max_items=3))  # default: embedded samples, hash test split
    assert desc["split"] == "test" and 0 < sum(it.benchmark == "medqa" for it in items) <= 3


def test_rows_a_run_skips_as_invalid_are_counted_in_eval_json_and_said(tmp_path, eval_files, capsys):
    """A run trained with skip_invalid evaluates with it too; the rows it skips are in eval.json
    (data.skipped_invalid) and on stderr, never dropped from the denominator without a trace."""
    from types import SimpleNamespace

    from medslm.config import parse_config
    from medslm.dataset import DataConfig
    from medslm.train_config import TrainConfig

    bad = tmp_path / "test.jsonl"
    rows = eval_files["medqa"].read_text().splitlines()
    first = json.loads(rows[0])
    first["answer_idx"] = "Z"
    bad.write_text("\n".join([json.dumps(first), *rows[1:]]) + "\n")
    run_cfg = SimpleNamespace(data=DataConfig(medqa=[str(bad)], kormedmcqa=[], skip_invalid=True, split="official"))
    items, desc = select_items(EvalConfig(model="embedded"), run_cfg)
    assert len(items) == len(rows) - 1
    assert desc["skipped_invalid"]["count"] == 1 and f"{bad}:line 1" in desc["skipped_invalid"]["examples"][0]
    clean = SimpleNamespace(data=DataConfig(medqa=[str(eval_files["medqa"])], kormedmcqa=[], split="official"))
    assert select_items(EvalConfig(model="embedded"), clean)[1]["skipped_invalid"]["count"] == 0
    tc = parse_config(TrainConfig, ["--config", str(REPO / "configs" / "tiny.yaml"), "--model.quantization=none"])
    tc.data = run_cfg.data
    res = evaluate(EvalConfig(model="embedded", out=str(tmp_path / "ev"), progress=False), base_of=tc)
    assert res["eval"]["data"]["skipped_invalid"]["count"] == 1 and res["eval"]["n_items"] == len(rows) - 1
    assert "skipped 1 invalid rows while loading" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Bad input: one error line, exit code 2
# ---------------------------------------------------------------------------------------------


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    import evaluate as entry
    from medslm.cli import run_cli

    with pytest.raises(SystemExit) as exc:
        run_cli(lambda: entry.main(entry.parse_args(argv)))
    err = capsys.readouterr().err.strip()
    return exc.value.code, err


def test_run_dir_without_adapter_or_config(tmp_path, capsys):
    code, err = _cli(["--run", str(tmp_path)], capsys)
    assert code == 2 and "config.yaml" in err and len(err.splitlines()) == 1
    (tmp_path / "config.yaml").write_text("model:\n  name_or_path: embedded\n# end of medslm config\n")
    code, err = _cli(["--run", str(tmp_path)], capsys)
    assert code == 2 and "adapter" in err and len(err.splitlines()) == 1


def test_invalid_eval_file(tmp_path, capsys):
    bad = write_jsonl(tmp_path / "bad.jsonl", [medqa_row(0), medqa_row(1, answer_idx="Z")])
    code, err = _cli(["--model", "embedded", "--medqa", str(bad), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "bad.jsonl:line 2" in err and "answer_idx" in err and len(err.splitlines()) == 1


def test_cli_subprocess_bad_run_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "evaluate.py"), "--run", str(tmp_path / "nope")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: --run {tmp_path / 'nope'}: no such directory"]


# ---------------------------------------------------------------------------------------------
# Integration: train -> adapter -> evaluate on memorised items
# ---------------------------------------------------------------------------------------------


def test_memorised_items_reach_90_percent_through_train_and_evaluate(tmp_path):
    import train
    from medslm.dataset import DataConfig
    from medslm.modeling import LoraConfigSection, ModelConfig
    from medslm.train_config import TrainConfig

    rows = [medqa_row(i, answer="ABCD"[i % 4]) for i in range(16)]
    data = write_jsonl(tmp_path / "data" / "train.jsonl", rows)  # official split: every item is train
    cfg = TrainConfig()
    cfg.model = ModelConfig(name_or_path="embedded", quantization="none", gradient_checkpointing=False)
    cfg.lora = LoraConfigSection(r=16, alpha=32, dropout=0.0)
    cfg.data = DataConfig(medqa=[str(data)], kormedmcqa=[], ratio="1:0", split="official", max_seq_len=256)
    t = cfg.train
    t.lr, t.warmup_steps, t.max_steps, t.micro_batch_size, t.grad_accum = 3e-3, 0, 30, 16, 1
    t.progress, t.output_dir, t.log_every = False, str(tmp_path / "run"), 10
    result = train.main(cfg)
    run = Path(result["output_dir"])
    assert (run / "adapter" / "adapter_config.json").is_file()

    base = evaluate(EvalConfig(model="embedded", quantization="none", medqa=[str(data)], out=str(tmp_path / "base"), progress=False))
    tuned = evaluate(EvalConfig(run=str(run), medqa=[str(data)], out=str(tmp_path / "tuned"), progress=False))
    base_acc = base["eval"]["benchmarks"]["medqa"]["accuracy"]
    tuned_acc = tuned["eval"]["benchmarks"]["medqa"]["accuracy"]
    assert base_acc <= 0.5, base_acc
    assert tuned_acc >= 0.9, tuned_acc
    assert tuned["eval"]["model"]["adapter"] == str((run / "adapter").resolve())
    # the accuracies go to the run's TensorBoard folder too, at its last step, beside the loss
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert "train/loss" in scalars and "eval_all/medqa" in scalars and "eval_all/medqa/step1" in scalars
    (acc,) = events.Scalars("eval_all/medqa")
    assert acc.step == 30 and acc.value == pytest.approx(tuned_acc)
    # the run's own data by default: official split -> there is no test split, so ask for train
    own = evaluate(EvalConfig(run=str(run), split="train", out=str(tmp_path / "own"), progress=False))
    assert own["eval"]["n_items"] == 16 and own["eval"]["benchmarks"]["medqa"]["accuracy"] >= 0.9
    # the run's own length limit (data.max_seq_len=256) and overlong policy apply, as in training
    from medslm.prompts import OverlongError

    with pytest.raises(OverlongError, match="over max_seq_len=256"):
        evaluate(EvalConfig(run=str(run), medqa=[str(_with_long_item(tmp_path, 100))], out=str(tmp_path / "long"), progress=False))


# ---------------------------------------------------------------------------------------------
# Training's length limit and overlong policy; argument checks
# ---------------------------------------------------------------------------------------------


def _with_long_item(tmp_path: Path, words: int) -> Path:
    rows = [medqa_row(i, answer="ABCD"[i % 4]) for i in range(4)]
    for row in rows:
        row["answer"] = row["options"][row["answer_idx"]]
    rows[2]["question"] = "The patient reports " + "pain and fever " * words + "today. What now?"
    return write_jsonl(tmp_path / "long" / "test.jsonl", rows)


def test_evaluate_applies_the_training_length_limit_and_overlong_policy(tmp_path, monkeypatch):
    """A question far over max_seq_len is refused (the default policy, as in training), cut from the
    left (truncate) or left out and counted (drop); the model never sees more than max_seq_len."""
    from medslm.prompts import OverlongError

    f = _with_long_item(tmp_path, 1500)  # ~4500 tokens: over the default max_seq_len of 2048
    base = dict(model="embedded", quantization="none", medqa=[str(f)], progress=False)
    from medslm import modeling

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the length check")

    with monkeypatch.context() as m:  # refused in seconds, before a model loads
        m.setattr(modeling, "load_base_model", no_model)
        with pytest.raises(OverlongError, match=r"test.jsonl:line 3: item '.*' is \d+ tokens, over max_seq_len=2048"):
            evaluate(EvalConfig(**base, out=str(tmp_path / "e")))
    widths: list[int] = []
    real = scoring.forward_at

    def spy(model, input_ids, attention_mask, keep):
        widths.append(input_ids.shape[1])
        return real(model, input_ids, attention_mask, keep)

    monkeypatch.setattr(scoring, "forward_at", spy)
    cut = evaluate(EvalConfig(**base, max_seq_len=128, overlong="truncate", out=str(tmp_path / "t")))
    assert cut["eval"]["n_items"] == 4 and cut["eval"]["overlong"] == {"max_seq_len": 128, "policy": "truncate", "truncated": 1, "dropped": 0}
    assert max(widths) <= 128
    short = evaluate(EvalConfig(**base, max_seq_len=128, overlong="drop", out=str(tmp_path / "d")))
    assert short["eval"]["n_items"] == 3 and short["eval"]["overlong"]["dropped"] == 1
    assert len((tmp_path / "d" / "predictions.jsonl").read_text().splitlines()) == 3
    others = {p["id"]: p["scores"] for p in cut["predictions"]}
    for p in short["predictions"]:  # items within the limit score the same either way
        assert p["scores"] == pytest.approx(others[p["id"]], abs=1e-5)


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--batch-size", "0"], "--batch-size (0)"),
        (["--batch-size", "-3"], "--batch-size (-3)"),
        (["--device", "gpu0"], "--device 'gpu0': expected auto, cpu, cuda or cuda:N"),
        (["--device", "cuda:99"], "--device cuda:99: "),
        (["--max-seq-len", "4"], "--max-seq-len must be at least 16"),
    ],
)
def test_evaluate_arguments_are_checked_in_one_line(argv, says, capsys, tmp_path):
    code, err = _cli(["--model", "embedded", "--out", str(tmp_path / "o"), *argv], capsys)
    assert code == 2 and says in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()
    code, err = _cli(["lora-activations", "--run", str(tmp_path), *argv[:2]], capsys)
    assert code == 2 and len(err.splitlines()) == 1, err


def test_compare_refuses_a_correct_field_that_is_not_a_boolean(tmp_path, capsys):
    recs = [{"id": f"q{i}", "benchmark": "medqa", "subject": "step1", "gold": "A", "predicted": "B", "correct": False} for i in range(4)]
    for name, value in (("base", False), ("other", "false")):  # the string "false" is truthy
        (tmp_path / name).mkdir()
        lines = [json.dumps({**r, "correct": value if i == 2 else r["correct"]}) for i, r in enumerate(recs)]
        (tmp_path / name / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    code, err = _cli(["compare", str(tmp_path / "base"), str(tmp_path / "other"), "--out", str(tmp_path / "c.json")], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert f"{tmp_path / 'other' / 'predictions.jsonl'}:line 3: field 'correct' must be true or false, got 'false'" in err
