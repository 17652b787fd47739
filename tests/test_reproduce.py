"""launch/reproduce_paper.sh: options, and the whole --smoke chain on the embedded default, with every
number of REPORT.md checked against the run files it names, then a rerun that runs nothing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import markdown_table
from medslm import reproduce as R
from medslm.config import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_options_and_the_launch_script(tmp_path):
    cfg = R.parse_args(["--smoke", "--model", "embedded", "--medqa", "a", "b", "--kormedmcqa", "k", "--out", str(tmp_path),
                        "--nproc", "2", "--ratios", "5:5,2:8", "--train.max_steps=3"])
    assert cfg.smoke and cfg.nproc == 2 and cfg.ratios == ["5:5", "2:8"] and cfg.medqa == ["a", "b"]
    assert cfg.config_file().endswith("configs/tiny.yaml") and R.ReproduceConfig().config_file().endswith("configs/medgemma-4b.yaml")
    with pytest.raises(ConfigError, match="no training data"):  # the paper config names no data: give --medqa/--kormedmcqa
        R.parse_args([])
    assert cfg.common_args()[-1] == "--train.max_steps=3"  # the user's overrides come last
    rows = {r.name: R.row_config(cfg, r, tmp_path) for r in R.ROWS}
    assert not rows["full_ft"].lora.enabled and rows["full_ft"].model.quantization == "none" and rows["full_ft"].model.compute_dtype == "bfloat16"
    assert all(rows[k].lora.enabled and rows[k].model.quantization == "nf4" for k in ("qlora", "fsdp", "packing", "balanced"))
    assert [rows[k].data.packing for k in ("qlora", "fsdp", "packing", "balanced")] == [False, False, True, True]
    assert [rows[k].data.ratio for k in ("full_ft", "qlora", "fsdp", "packing", "balanced")] == ["10:3"] * 4 + ["5:5"]
    # one-process rows take the same global batch as the 2-process FSDP rows
    assert rows["qlora"].train.grad_accum == 2 * rows["fsdp"].train.grad_accum
    assert {r.train.resume for r in rows.values()} == {"auto"}
    with pytest.raises(ConfigError, match="unknown key"):
        R.parse_args(["--smoke", "--train.nosuch=1"])
    with pytest.raises(ConfigError, match="--section.key=value"):
        R.parse_args(["--smoke", "--frobnicate"])
    # the sweep's options are checked with the rest, not after pack and five Table 5 trainings
    for argv, match in ((["--ratios", "5:5,abc"], "--ratios: ratio must look like EN:KO"), (["--ratios", "5:5,5:5"], "given twice"),
                        (["--data.ratio=1:1"], "data.ratio is what this sweep varies"), (["--out", ""], "--out is empty")):
        with pytest.raises(ConfigError, match=match):
            R.parse_args(["--smoke", *argv])
    res = subprocess.run(["bash", "launch/reproduce_paper.sh", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={"PATH": f"{Path(__import__('sys').executable).parent}:/usr/bin:/bin"})
    assert res.returncode == 0 and "--smoke" in res.stdout and "REPORT.md" in res.stdout


def _metrics(run: Path) -> list[dict]:
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    return [r for r in recs if r["kind"] == "train"]


def test_smoke_chain_fills_every_section_from_measured_files(tmp_path, ray_session, monkeypatch):
    out = tmp_path / "repro"
    doc = R.main(R.parse_args(["--smoke", "--out", str(out), "--nproc", "1", "--train.max_steps=1"]))
    md = (out / "REPORT.md").read_text(encoding="utf-8")
    for section in ("## Pack report", "## Table 5", "## Table 6", "## Table 7", "## Ratio sweep and decision", "## Fig. 2"):
        assert section in md
    assert "Not available" not in md and "mechanics only, the accuracies are meaningless" in md
    paper = yaml.safe_load(R.PAPER.read_text(encoding="utf-8"))

    # pack report = pack/packing_report.json
    pack = json.loads((out / "pack" / "packing_report.json").read_text(encoding="utf-8"))
    (row,) = markdown_table(md, "| mix | samples")[1:]
    assert row == [pack["ratio"], str(pack["num_samples"]), str(pack["num_rows"]), f"{pack['packing_efficiency']:.4f}",
                   f"{pack['padding_fraction_unpacked']:.4f}", str(pack["global_batch_rows"]),
                   str(pack["steps_per_epoch_unpacked"]), str(pack["steps_per_epoch_packed"])]

    # table 5 and 6 = each row's eval.json and metrics.jsonl
    t5 = markdown_table(md, "| row | MedQA ours")[1:]
    t6 = markdown_table(md, "| row | peak mem GB")[1:]
    per_epoch = {}
    for r5, r6, row in zip(t5, t6, R.ROWS):
        run = out / "table5" / row.name
        ev = json.loads((run / "eval" / "eval.json").read_text(encoding="utf-8"))["benchmarks"]
        recs = _metrics(run)
        minutes = sum(r["step_time_s"] for r in recs) / 60
        per_epoch[row.name] = minutes / recs[-1]["epoch"]
        pp = paper["table5"][row.name]
        assert r5 == [row.label, f"{100 * ev['medqa']['accuracy']:.2f}", f"{pp['medqa']:.2f}", f"{100 * ev['kormedmcqa']['accuracy']:.2f}",
                      f"{pp['kormedmcqa']:.2f}", f"{max(r['peak_mem_gb'] for r in recs):.2f}", str(pp["memory_gb"]), f"{minutes:.3f}",
                      str(pp["minutes"]), "1"]
        assert r6[2] == f"{per_epoch[row.name]:.3f}" and r6[3] == f"{per_epoch['full_ft'] / per_epoch[row.name]:.2f}"
        assert len(recs) == 1  # --train.max_steps=1
    assert (out / "table5" / "full_ft" / "model" / "config.json").is_file() and not (out / "table5" / "full_ft" / "adapter").exists()
    assert yaml.safe_load((out / "table5" / "qlora" / "config.yaml").read_text())["data"]["packing"] is False

    # table 7 = the sweep's 5:5 and 10:3 eval.json
    for r in markdown_table(md, "| mix | MedQA ours")[1:]:
        ev = json.loads((out / "sweep" / f"ratio-{r[0].replace(':', '-')}" / "eval" / "eval.json").read_text(encoding="utf-8"))["benchmarks"]
        assert r[1] == f"{100 * ev['medqa']['accuracy']:.2f}" and r[3] == f"{100 * ev['kormedmcqa']['accuracy']:.2f}"
        assert r[2] == f"{paper['table7'][r[0]]['medqa']:.2f}"
    assert (out / "sweep" / "report.md").is_file() and (out / "sweep" / "tradeoff.png").is_file()
    rec = json.loads((out / "sweep" / "recommendation.json").read_text(encoding="utf-8"))
    for r, use in zip(markdown_table(md, "| use | best")[1:], rec["uses"].values()):
        assert r[0] == use["title"] and r[1] == use["best"]

    # fig 2 = fig2/lora_activations.json
    fig = json.loads((out / "fig2" / "lora_activations.json").read_text(encoding="utf-8"))
    assert fig["model"]["run"] == str(out / "sweep" / "ratio-5-5")
    for r in markdown_table(md, "| layer | English")[1:]:
        layer = int(r[0])
        assert r[1] == f"{fig['groups']['en']['per_layer'][layer]:.4g}" and r[2] == f"{fig['groups']['ko']['per_layer'][layer]:.4g}"
    assert (out / "fig2" / "lora_activations.png").is_file()
    assert json.loads((out / "REPORT.json").read_text(encoding="utf-8"))["table5"] == json.loads(json.dumps(doc["table5"]))

    # rerun: nothing trains, evaluates, sweeps or measures again; the report is the same
    from ray import tune

    def _nothing(*_a, **_k):
        raise AssertionError("a finished reproduction must not run anything again")

    monkeypatch.setattr(R.subprocess, "run", _nothing)
    monkeypatch.setattr(tune, "Tuner", _nothing)
    monkeypatch.setattr("medslm.evaluation.evaluate", _nothing)
    monkeypatch.setattr("medslm.lora_analysis.lora_activations", _nothing)
    monkeypatch.setattr("pack.main", _nothing)
    R.main(R.parse_args(["--smoke", "--out", str(out), "--nproc", "1", "--train.max_steps=1"]))
    assert (out / "REPORT.md").read_text(encoding="utf-8") == md
    # another setting for the same folder is refused before anything runs
    with pytest.raises(ConfigError, match="another config"):
        R.main(R.parse_args(["--smoke", "--out", str(out), "--nproc", "1", "--train.max_steps=2"]))
