"""Export a run for serving: a clean PEFT adapter folder, or the adapter merged into the base.

    python -m medslm.export --run RUN --out DIR                  # PEFT adapter + model card
    python -m medslm.export --run RUN --out DIR --merge --dtype bf16   # a standard transformers folder

Without ``--merge``: ``adapter_config.json`` (``base_model_name_or_path`` set to the run's
``model.name_or_path``), ``adapter_model.safetensors``, the tokenizer, the run's config as
``medslm_config.yaml`` and a model card (``README.md``) filled from the run: base model, data mix
and ratio, training settings, final losses and, when ``RUN/eval/eval.json`` exists, accuracy with
its Wilson 95% interval per benchmark and subject. That file must be this run's adapter evaluated
(``model.run``) and agree with its ``predictions.jsonl``; otherwise the export stops, naming it.

With ``--merge``: the base model exactly as the adapter was trained and evaluated on it — every
linear layer of the language model NF4-quantised and dequantised (as bitsandbytes does at load),
unless the run trained on an unquantised base — plus the LoRA update ``B @ A * alpha / r`` added
in fp32, cast once to ``--dtype`` and saved as safetensors with the tokenizer: a folder that
``AutoModelForCausalLM.from_pretrained`` and vLLM load with no PEFT or bitsandbytes. The base
class is the checkpoint's own (``config.json``'s ``architectures``): for a multimodal base such
as MedGemma (``Gemma3ForConditionalGeneration``) the merged folder is the full multimodal model,
vision tower untouched, with the adapter merged into its language model (adapter weights named
for either the text-only or the multimodal module tree). ``--base PATH`` merges into another copy
of the base (e.g. the full multimodal checkpoint a text-only run was trained from).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from medslm.cli import UserError, first_line, run_cli
from medslm.weights import check_base, check_loaded_weights, check_local_files, file_sha256, fingerprint

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
WEIGHT_FILES = re.compile(r"^(model.*\.safetensors(\.index\.json)?|pytorch_model.*\.bin(\.index\.json)?|config\.json|README\.md)$")
# a text-only run's module names vs the multimodal checkpoint's (transformers 5 and 4.x layouts)
NAME_MAPS = (("model.", "model.language_model."), ("model.language_model.", "model."), ("model.", "language_model.model."))


@dataclass
class ExportConfig:
    run: str
    out: str
    merge: bool = False
    dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    base: str | None = None  # --merge: the base model folder (default: the run's model.name_or_path)


def export(cfg: ExportConfig) -> dict[str, Any]:
    """Write the export to ``cfg.out`` (atomically: a temporary folder renamed into place)."""
    from medslm.evaluation import check_run_dir, load_run_config

    run = check_run_dir(cfg.run)
    run_cfg = load_run_config(run)
    ev = run_evaluation(run, run_cfg)  # before any work: a card must not publish another model's accuracy
    out = Path(cfg.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out}: already exists and is not empty; choose a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        if cfg.merge:
            info = _write_merged(run, run_cfg, cfg, tmp)
        else:
            info = _write_adapter(run, run_cfg, tmp)
        (tmp / "README.md").write_text(model_card(run, run_cfg, cfg, info, ev), encoding="utf-8")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
        out.chmod(0o755)  # mkdtemp makes it private; a team serves it from shared storage
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"wrote {'merged model' if cfg.merge else 'adapter'} to {out}")
    return {"out": str(out), **info}


# ---------------------------------------------------------------------------------------------
# The adapter
# ---------------------------------------------------------------------------------------------


def base_model_id(run_cfg: Any) -> str:
    """What a user loads the base from: the hub id or folder the run named (the embedded model's cache folder)."""
    from medslm.modeling import EMBEDDED, resolve_model_path

    name = run_cfg.model.name_or_path
    return resolve_model_path(run_cfg.model) if name in EMBEDDED else name


ADAPTER_FILES = re.compile(r"adapter_config\.json|adapter_model\.safetensors|medslm_config\.yaml|tokenizer.*|special_tokens_map\.json|"
                           r"chat_template\.(jinja|json)|added_tokens\.json|vocab\.json|merges\.txt")


def _write_adapter(run: Path, run_cfg: Any, out: Path) -> dict[str, Any]:
    adapter = run / "adapter"
    if not (adapter / "adapter_model.safetensors").is_file():
        raise UserError(f"{adapter}: no adapter_model.safetensors (a pickle adapter_model.bin is never exported)")
    for f in adapter.iterdir():  # what PEFT and the tokenizer read, nothing else (PEFT's template card is replaced by ours)
        if f.is_file() and ADAPTER_FILES.fullmatch(f.name):
            shutil.copy2(f, out / f.name)
    ac = json.loads((out / "adapter_config.json").read_text(encoding="utf-8"))
    ac["base_model_name_or_path"] = base_model_id(run_cfg)
    ac["inference_mode"] = True
    (out / "adapter_config.json").write_text(json.dumps(ac, indent=2) + "\n", encoding="utf-8")
    return {"kind": "adapter", "base_model": ac["base_model_name_or_path"]}


# ---------------------------------------------------------------------------------------------
# Merging
# ---------------------------------------------------------------------------------------------


def lora_pairs(adapter_dir: Path) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float]:
    """``{module name: (A, B)}`` from a PEFT LoRA folder, and the scale ``alpha / r``."""
    from safetensors.torch import load_file

    ac = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    if ac.get("peft_type") != "LORA" or ac.get("use_dora") or ac.get("rank_pattern") or ac.get("alpha_pattern"):
        raise UserError(f"{adapter_dir}: only plain LoRA adapters (no DoRA, no per-module ranks) can be merged")
    scale = ac["lora_alpha"] / (ac["r"] ** 0.5 if ac.get("use_rslora") else ac["r"])
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key, a in tensors.items():
        if not key.endswith(".lora_A.weight"):
            if not key.endswith(".lora_B.weight"):
                raise UserError(f"{adapter_dir}: cannot merge weight {key!r} (only lora_A/lora_B)")
            continue
        stem = key[: -len(".lora_A.weight")]
        b = tensors.get(stem + ".lora_B.weight")
        if b is None:
            raise UserError(f"{adapter_dir}: {key} has no matching lora_B weight")
        pairs[stem.removeprefix("base_model.model.")] = (a, b)
    return pairs, scale


def target_module(modules: dict[str, torch.nn.Module], name: str) -> tuple[str, torch.nn.Module]:
    """The base's module for an adapter module name, mapping text-only <-> multimodal layouts."""
    if name in modules:
        return name, modules[name]
    for old, new in NAME_MAPS:
        if name.startswith(old):
            cand = new + name[len(old):]
            if cand != name and cand in modules:
                return cand, modules[cand]
    raise UserError(f"the adapter's module {name!r} is not in the base model (nor under a multimodal language_model)")


def roundtrip_nf4(weight: torch.Tensor, double_quant: bool) -> torch.Tensor:
    """The weight as the trained model saw it: NF4-quantised (bitsandbytes' defaults: blocks of 64) and back."""
    from bitsandbytes.functional import dequantize_4bit, quantize_4bit

    q, state = quantize_4bit(weight, blocksize=64, compress_statistics=double_quant, quant_type="nf4", quant_storage=torch.uint8)
    return dequantize_4bit(q, state).to(weight.dtype)


def merged_model(run: Path, run_cfg: Any, base_path: str, dtype: torch.dtype) -> Any:
    """The base in ``dtype`` with the run's adapter merged (on CPU)."""
    import transformers
    from transformers import AutoConfig

    from medslm.modeling import compute_dtype

    conf = AutoConfig.from_pretrained(base_path, trust_remote_code=run_cfg.model.trust_remote_code)
    arch = (conf.architectures or ["AutoModelForCausalLM"])[0]
    cls = getattr(transformers, arch, None) or transformers.AutoModelForCausalLM
    # quantised from the dtype training loaded it in (as evaluate.py does on this machine)
    load_dtype = compute_dtype(run_cfg.model, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    check_local_files(base_path)
    try:
        model, info = cls.from_pretrained(base_path, dtype=load_dtype, use_safetensors=True, device_map={"": "cpu"},
                                          trust_remote_code=run_cfg.model.trust_remote_code, output_loading_info=True)
    except (OSError, RuntimeError, ValueError, AssertionError) as exc:
        raise UserError(f"cannot load the base model {base_path!r}: {first_line(exc)}") from None
    check_loaded_weights(model, info, base_path)  # a weight at random init would be merged and published
    decoder = model.get_decoder()
    with torch.no_grad():
        if run_cfg.model.quantization == "nf4":  # what bitsandbytes quantised at load: the decoder's linear layers
            for module in decoder.modules():
                if isinstance(module, torch.nn.Linear):
                    module.weight.copy_(roundtrip_nf4(module.weight.data, run_cfg.model.double_quant))
        model.to(dtype)
        modules = dict(model.named_modules())
        pairs, scale = lora_pairs(run / "adapter")
        for name, (a, b) in pairs.items():
            _, module = target_module(modules, name)
            if not isinstance(module, torch.nn.Linear) or module.weight.shape != (b.shape[0], a.shape[1]):
                raise UserError(f"adapter module {name}: shape {(b.shape[0], a.shape[1])} does not fit the base's {tuple(module.weight.shape)}")
            w = module.weight.data.float() + (b.float() @ a.float()) * scale
            module.weight.data.copy_(w.to(dtype))
    model.config.use_cache = True
    text_cfg = getattr(model.config, "text_config", None)
    if text_cfg is not None:
        text_cfg.use_cache = True
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def _write_merged(run: Path, run_cfg: Any, cfg: ExportConfig, out: Path) -> dict[str, Any]:
    from medslm.modeling import resolve_model_path

    base_path = cfg.base or resolve_model_path(run_cfg.model)
    if cfg.base and not (Path(cfg.base) / "config.json").is_file():
        raise UserError(f"--base {cfg.base}: no config.json there")
    what = "--base" if cfg.base else "--merge"
    base = fingerprint(base_path)
    check_base(run, base, what)  # another copy is fine, another model is not
    model = merged_model(run, run_cfg, base_path, DTYPES[cfg.dtype])
    if base["sha256"] is None:  # a hub id the load has just downloaded
        check_base(run, fingerprint(resolve_model_path(run_cfg.model)), what)
    model.save_pretrained(out, safe_serialization=True)
    base_dir = Path(base_path)
    if not base_dir.is_dir():  # a hub id: its small files (from the HF cache, or fetched)
        base_dir = _hub_small_files(base_path)
    if base_dir is not None:  # tokenizer, processor and chat template files of the base (a multimodal processor too)
        for f in base_dir.iterdir():
            if f.is_file() and not WEIGHT_FILES.match(f.name) and not (out / f.name).exists():
                shutil.copy2(f, out / f.name)
    adapter = run / "adapter"
    for f in adapter.iterdir():  # the tokenizer training used wins
        if f.name.startswith(("tokenizer", "special_tokens_map", "chat_template")):
            shutil.copy2(f, out / f.name)
    return {"kind": "merged", "base_model": base_model_id(run_cfg) if not cfg.base else cfg.base,
            "architecture": type(model).__name__, "dtype": cfg.dtype}


def _hub_small_files(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.model", "*.txt", "*.jinja"]))
    except Exception as exc:  # offline and not cached: the run's tokenizer is still written
        print(f"note: could not read {repo_id}'s processor/tokenizer files ({type(exc).__name__}); only the run's tokenizer is in the export")
        return None


# ---------------------------------------------------------------------------------------------
# The model card
# ---------------------------------------------------------------------------------------------


def _read_json(path: Path, hint: str) -> Any:
    """The file's JSON, or None when there is no such file; a truncated one is an error naming it
    (a card that silently lost its evaluation would be published as if none was run)."""
    from medslm.files import read_json

    return read_json(path, hint) if path.is_file() else None


def run_evaluation(run: Path, run_cfg: Any) -> dict[str, Any] | None:
    """``RUN/eval/eval.json`` when it is this run's adapter evaluated (None when there is none).

    Its counts must be its ``predictions.jsonl``'s, and ``model.run`` must be this run: an
    evaluation of the base model, or of another run, written into this folder would otherwise be
    published as this adapter's accuracy."""
    from medslm.forgetting import read_predictions

    path = run / "eval" / "eval.json"
    ev = _read_json(path, f"rerun evaluate.py --run {run}")
    if ev is None:
        return None
    if (path.parent / "predictions.jsonl").is_file():
        read_predictions(path.parent)  # eval.json against the predictions
    model = ev.get("model") if isinstance(ev, dict) else None
    evaluated = model.get("run") if isinstance(model, dict) else None
    if not evaluated or not model.get("adapter"):
        what = f"the model {model.get('name_or_path')!r} without this run's adapter" if isinstance(model, dict) else "an unknown model"
        raise UserError(f"{path}: field 'model.run' is {evaluated!r}: it evaluated {what}, so its accuracy is not this adapter's; "
                        f"rerun `python evaluate.py --run {run}` and export again")
    trained = {"quantization": run_cfg.model.quantization, "name_or_path": run_cfg.model.name_or_path}
    for key, value in trained.items():  # a card says "as trained": an evaluation under other settings is not that
        if model.get(key, value) != value:
            raise UserError(f"{path}: field 'model.{key}' is {model.get(key)!r}, but the run trained with {value!r}: its accuracy "
                            f"is not the adapter as trained; rerun `python evaluate.py --run {run}` and export again")
    recorded = model.get("adapter_sha256")  # what the evaluated adapter held: a moved run folder still matches
    if recorded:
        adapter_file = run / "adapter" / "adapter_model.safetensors"
        if not adapter_file.is_file() or file_sha256(adapter_file) != recorded:
            raise UserError(f"{path}: field 'model.adapter_sha256' is {recorded[:12]}..., not this run's adapter ({adapter_file}): its "
                            f"accuracy is another adapter's; rerun `python evaluate.py --run {run}` and export again")
    elif Path(evaluated).resolve() != run.resolve():
        raise UserError(f"{path}: field 'model.run' is {evaluated!r}, not this run ({run.resolve()}): its accuracy is another run's "
                        f"(or this one before it was moved); rerun `python evaluate.py --run {run}` and export again")
    return ev


def _losses(run: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    from medslm.metrics import read_records

    last_train = last_val = None
    for rec in read_records(run):
        if rec.get("kind") == "train":
            last_train = rec
        elif rec.get("kind") == "val":
            last_val = rec
    return last_train, last_val


def model_card(run: Path, run_cfg: Any, cfg: ExportConfig, info: dict[str, Any], ev: dict[str, Any] | None) -> str:
    m, lora, d, t = run_cfg.model, run_cfg.lora, run_cfg.data, run_cfg.train
    report = _read_json(run / "packing_report.json", "train.py writes it at the start of the run") or {}
    last_train, last_val = _losses(run)
    base = info["base_model"]
    merged = info["kind"] == "merged"
    front = ["---", f"base_model: {base}", f"library_name: {'transformers' if merged else 'peft'}",
             "pipeline_tag: text-generation", "language:", "- en", "- ko",
             "tags:", "- medical", "- medslm", "- lora", "- qlora" if m.quantization == "nf4" else "- lora-bf16", "---", ""]
    title = f"# {run.resolve().name}: {'merged ' if merged else ''}LoRA fine-tune of {base}"
    what = (f"The adapter merged into {base} ({info.get('architecture')}, {info.get('dtype')}); the base's linear layers are the "
            "NF4-dequantised weights the adapter was trained and evaluated on." if merged and m.quantization == "nf4" else
            f"The adapter merged into {base} ({info.get('architecture')}, {info.get('dtype')})." if merged else
            f"A PEFT LoRA adapter for {base}: `PeftModel.from_pretrained(base, this_folder)`.")
    used = report.get("mix", {}).get("used") or report.get("per_language") or {}
    subjects = report.get("mix", {}).get("by_subject") or {}
    lines = front + [title, "", what, "", "Trained with medslm (MedQA + KorMedMCQA English:Korean mix; Yoo, Hyeon & Cho 2026).", "",
                     "## Data", "",
                     f"- EN:KO ratio (item counts) **{d.ratio}**; training items used: "
                     + (", ".join(f"{k} {v}" for k, v in used.items()) or "not recorded"),
                     f"- sources: MedQA {d.medqa}, KorMedMCQA {d.kormedmcqa}; split `{d.split}` (test items never trained on)",
                     f"- by subject: {', '.join(f'{k} {v}' for k, v in subjects.items()) or 'not recorded'}",
                     f"- packed rows of {d.max_seq_len} tokens (packing efficiency {report['packing_efficiency']:.1%})" if "packing_efficiency" in report else f"- max {d.max_seq_len} tokens per row",
                     "- KorMedMCQA is CC BY-NC 2.0: check your use against its license.", "",
                     "## Training", "",
                     "| setting | value |", "|---|---|",
                     f"| base model | `{m.name_or_path}` |",
                     f"| quantisation | {'NF4' + (' + double quant' if m.double_quant else '') if m.quantization == 'nf4' else 'none (bf16/fp32 LoRA)'} |",
                     f"| LoRA | r {lora.r}, alpha {lora.alpha}, dropout {lora.dropout}, targets {', '.join(lora.target_modules)} |",
                     f"| optimiser | AdamW lr {t.lr}, weight decay {t.weight_decay}, betas {t.adam_betas}, warmup {t.warmup_steps} steps, cosine |",
                     f"| batch | {t.micro_batch_size} rows/GPU x grad-accum {t.grad_accum} |",
                     f"| length | {f'{t.max_steps} steps' if t.max_steps else f'{t.epochs} epochs'} (last step {last_train['step'] if last_train else '?'}) |",
                     f"| seed | {t.seed} |"]
    if last_train:
        lines.append(f"| final training loss | {last_train['loss']:.4f} (step {last_train['step']}) |")
    if last_val:
        lines.append(f"| final validation loss | {last_val['val_loss']:.4f} |")
    lines += ["", "## Evaluation", ""]
    if ev:
        lines += [f"0-shot multiple choice ({ev.get('scoring')} scoring, {ev.get('split')} split, {ev.get('n_items')} items); "
                  "accuracy with the Wilson 95% interval. Evaluated on the base + adapter as trained (NF4 base when quantised).", "",
                  "| benchmark | subject | n | accuracy | 95% CI |", "|---|---|---|---|---|"]
        for bench, s in ev.get("benchmarks", {}).items():
            for j, (name, r) in enumerate([("all", s), *s.get("subjects", {}).items()]):
                lo, hi = r["ci95"]
                lines.append(f"| {bench if j == 0 else ''} | {name} | {r['n']} | {100 * r['accuracy']:.1f}% | {100 * lo:.1f}-{100 * hi:.1f}% |")
    else:
        lines.append(f"Not evaluated yet: `python evaluate.py --run {run}` writes RUN/eval/eval.json; export again to include it.")
    lines += ["", "## Use", "", "```python"]
    if merged:
        lines += ["from transformers import AutoModelForCausalLM, AutoTokenizer",
                  "model = AutoModelForCausalLM.from_pretrained(PATH)", "tokenizer = AutoTokenizer.from_pretrained(PATH)"]
    else:
        lines += ["from peft import PeftModel", "from transformers import AutoModelForCausalLM",
                  f"base = AutoModelForCausalLM.from_pretrained({base!r})", "model = PeftModel.from_pretrained(base, PATH)"]
    lines += ["```", "", "Prompts as in training (lm-evaluation-harness's MedQA / KorMedMCQA templates, answer letter).",
              "Not a medical device: outputs need review by a clinician.", ""]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> ExportConfig:
    ap = argparse.ArgumentParser(prog="python -m medslm.export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a train.py output_dir (config.yaml + adapter/)")
    ap.add_argument("--out", required=True, help="a new (or empty) folder")
    ap.add_argument("--merge", action="store_true", help="merge into a dequantised copy of the base (a transformers folder)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="weights of the merged model (default bf16)")
    ap.add_argument("--base", help="--merge: the base model folder to merge into (default: the run's model.name_or_path)")
    a = ap.parse_args(argv)
    if a.base and not a.merge:
        ap.error("--base only applies with --merge")
    return ExportConfig(run=a.run, out=a.out, merge=a.merge, dtype=a.dtype, base=a.base)


def main(argv: list[str]) -> dict[str, Any]:
    return run_cli(lambda: export(parse_args(argv)))


if __name__ == "__main__":
    main(sys.argv[1:])
