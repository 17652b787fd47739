"""The weights that load are the ones the run means: a damaged or mismatched base checkpoint, a
base changed after training, and an adapter whose names fit no module are each one error line,
never a model at random init or the base model scored as the adapter (medslm.weights)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import tiny_checkpoints as tc
from conftest import tiny_run
from medslm.cli import UserError
from medslm.config import parse_config
from medslm.modeling import ModelConfig, load_base_model
from medslm.train_config import TrainConfig

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return tc.llama3(tmp_path_factory.mktemp("ck") / "llama3")


def _edited(src: Path, dest: Path, edit) -> Path:
    shutil.copytree(src, dest)
    tensors = load_file(str(dest / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest


@pytest.mark.parametrize("quantization", ["nf4", "none"])
@pytest.mark.parametrize("edit, want", [
    (lambda t: t.pop("lm_head.weight"), r"no tensor for 1 weights .*lm_head.weight"),
    (lambda t: t.pop("model.layers.1.mlp.down_proj.weight"), r"no tensor for 1 weights .*layers.1.mlp.down_proj"),
    # the same number of elements, transposed: under NF4 the packed storage hid the shape
    (lambda t: t.update({"model.layers.1.self_attn.k_proj.weight": t["model.layers.1.self_attn.k_proj.weight"].T.contiguous()}),
     r"differently shaped one for 1 .*k_proj|cannot load .*ignore_mismatched_sizes"),  # NF4: ours; bf16: transformers' refusal
])
def test_a_checkpoint_that_does_not_fit_its_config_is_one_error_not_random_init(llama, tmp_path, quantization, edit, want):
    bad = _edited(llama, tmp_path / "bad", edit)
    with pytest.raises(UserError, match=want):
        load_base_model(ModelConfig(name_or_path=str(bad), quantization=quantization), CPU)


def test_a_truncated_shard_is_named_before_loading(llama, tmp_path):
    bad = shutil.copytree(llama, tmp_path / "cut")
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=rf"{bad / 'model.safetensors'}: not a readable safetensors file"):
        load_base_model(ModelConfig(name_or_path=str(bad)), CPU)


@pytest.fixture(scope="module")
def run(llama, tmp_path_factory) -> tuple[Path, Path]:
    """A 1-step run on a base given by a path relative to the folder training ran in."""
    from medslm.trainer import train

    root = tmp_path_factory.mktemp("rel")
    shutil.copytree(llama, root / "ck")
    out = root / "run"
    cwd = Path.cwd()
    try:
        os.chdir(root)
        train(parse_config(TrainConfig, tiny_run("--model.name_or_path=ck", "--train.max_steps=1", "--train.micro_batch_size=2",
                                                 "--train.save_every=1", f"--train.output_dir={out}")))
    finally:
        os.chdir(cwd)
    return root, out


def test_evaluate_export_and_resume_refuse_a_base_that_is_not_the_one_trained_on(run, llama, tmp_path, monkeypatch):
    from medslm.evaluation import EvalConfig, load_for_eval
    from medslm.export import ExportConfig, export
    from medslm.trainer import train

    root, out = run
    monkeypatch.chdir(root)
    load_for_eval(EvalConfig(run=str(out)))  # the base it trained on: loads
    # 'ck' resolved from another folder, which holds another checkpoint of the same shapes
    other = tmp_path / "elsewhere"
    tc.llama3(other / "ck", seed=1)
    monkeypatch.chdir(other)
    with pytest.raises(UserError, match=rf"evaluate.py --run {out}: the base model at {other / 'ck'} \(the run trained on {root / 'ck'}\) is not the one"):
        load_for_eval(EvalConfig(run=str(out)))
    # the same folder, its weights replaced in place
    monkeypatch.chdir(root)
    shutil.copy(other / "ck" / "model.safetensors", root / "ck" / "model.safetensors")
    with pytest.raises(UserError, match=r"the base model is not the one this run trained on \(weights digest"):
        load_for_eval(EvalConfig(run=str(out)))
    with pytest.raises(UserError, match=r"--merge: the base model is not the one"):
        export(ExportConfig(run=str(out), out=str(tmp_path / "merged"), merge=True))
    with pytest.raises(UserError, match=r"train.resume: the base model is not the one"):
        train(parse_config(TrainConfig, tiny_run("--model.name_or_path=ck", "--train.max_steps=2", "--train.micro_batch_size=2",
                                                 "--train.resume=auto", f"--train.output_dir={out}")))
    shutil.copy(llama / "model.safetensors", root / "ck" / "model.safetensors")  # a true copy of the base: fine again
    export(ExportConfig(run=str(out), out=str(tmp_path / "merged"), merge=True, dtype="fp32"))


def test_an_adapter_whose_names_fit_no_module_is_refused_not_scored_as_the_base(run, tmp_path, monkeypatch):
    from medslm.evaluation import EvalConfig, load_for_eval

    root, out = run
    monkeypatch.chdir(root)
    renamed = shutil.copytree(out, tmp_path / "renamed")
    f = renamed / "adapter" / "adapter_model.safetensors"
    tensors = load_file(str(f))
    # one module's B (trained away from its zero init): the rest still load, so PEFT only warns
    first = next(k for k in sorted(tensors) if k.endswith("lora_B.weight"))
    tensors[first.replace("model.layers", "model.decoder.layers")] = tensors.pop(first)
    save_file(tensors, str(f), metadata={"format": "pt"})
    with pytest.raises(UserError, match=rf"{f}: 1 of its {len(tensors)} tensors did not load into the model"):
        load_for_eval(EvalConfig(run=str(renamed)))


def test_a_hub_id_not_downloaded_yet_is_compared_once_it_is(tmp_path):
    """Before the load downloads it, a hub id has no folder: its fingerprint is unknown (None), never
    the digest of nothing, which would then refuse every later evaluation of the run."""
    from medslm.weights import BASE_FILE, check_base, fingerprint, record_base

    unknown = fingerprint("google/not-downloaded-yet")
    assert unknown["sha256"] is None and unknown["files"] == []
    record_base(tmp_path, unknown)
    assert not (tmp_path / BASE_FILE).exists()
    record_base(tmp_path, {"path": "/x", "files": [], "sha256": "ab" * 32})
    check_base(tmp_path, unknown, "evaluate.py")  # unknown here: compared after the load instead


def test_the_report_compares_the_base_a_full_fine_tune_started_from(tmp_path):
    """A full fine-tune evaluates RUN/model: each trial's name_or_path differs by design, its base does not."""
    from medslm.forgetting import setting_differences

    def ev(run: str, base: str | None) -> dict:
        model = {"name_or_path": f"{run}/model", "quantization": "none"}
        return {"scoring": "letter", "model": model if base is None else {**model, "base": base}}

    assert setting_differences([("a", ev("r1", "m")), ("b", ev("r2", "m"))]) == []
    assert setting_differences([("a", ev("r1", "m")), ("b", ev("r2", "other"))]) == ["model.base: 'm' in a, 'other' in b"]
    assert setting_differences([("a", ev("r1", None)), ("b", ev("r2", None))])  # older eval.json: name_or_path compared
