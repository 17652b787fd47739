"""How strongly the LoRA adapter acts in each decoder layer, on English vs Korean items (the paper's Fig. 2).

For every LoRA-adapted linear module, PEFT adds ``delta = lora_B(lora_A(dropout(x))) * scaling``
to the frozen layer's output. A forward hook on ``lora_B`` reads that output (times ``scaling``)
without changing it. The measure per token is the mean absolute value of ``delta`` over the
module's output features; it is averaged over the real (non-padding) tokens of a group's items
(token-weighted), and a layer's value is the mean over its adapted modules (``q_proj``, ...,
``down_proj``). Groups: ``en`` and ``ko`` (language), and ``ko/<subject>`` for the KorMedMCQA
subjects doctor / nurse / pharm / dentist.

``python evaluate.py lora-activations --run RUN_DIR [--out DIR]`` runs it on the run's test split
(at most ``--max-items`` per benchmark) and writes ``lora_activations.json`` and
``lora_activations.png`` (layer on the x axis, one line per group). Hooks are always removed, and
measuring does not change the model's outputs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from medslm.cli import UserError
from medslm.config import ConfigError
from medslm.evaluation import EvalConfig, fit_prompts, load_for_eval, load_run_config, resolve_device, select_items
from medslm.files import writing
from medslm.modeling import decoder_layers
from medslm.prompts import encode_prompt, format_prompt
from medslm.records import MCQItem
from medslm.scoring import length_batches
from medslm.tokenizer import pad_token_id

METRIC = "mean |LoRA delta| per token (over output features), token-weighted over real tokens, mean over a layer's adapted modules"


@dataclass
class LoraActivationsConfig:
    run: str = ""
    medqa: list[str] | None = None
    kormedmcqa: list[str] | None = None
    split: Literal["train", "val", "test", "all"] | None = None  # None: test (explicit files: all)
    split_mode: Literal["hash", "official"] | None = None
    max_items: int = 200  # per benchmark; 0: no cap
    out: str | None = None  # None: RUN/lora_activations
    batch_size: int = 16
    max_batch_tokens: int = 16384
    device: str = "auto"
    progress: bool = True
    text_only: bool | None = None  # multimodal checkpoints: None: the run's model.text_only

    def validate(self) -> None:
        if not self.run:
            raise ConfigError("lora-activations needs --run RUN_DIR (a trained adapter)")
        if self.batch_size < 1 or self.max_batch_tokens < 1 or self.max_items < 0:
            raise ConfigError("--batch-size and --max-batch-tokens must be >= 1, --max-items >= 0")

    def eval_config(self) -> EvalConfig:
        return EvalConfig(
            run=self.run, medqa=self.medqa, kormedmcqa=self.kormedmcqa, split=self.split, split_mode=self.split_mode,
            max_items=self.max_items, device=self.device, batch_size=self.batch_size, max_batch_tokens=self.max_batch_tokens,
            progress=self.progress, text_only=self.text_only,
        )


def item_groups(item: MCQItem) -> list[str]:
    groups = [item.language]
    if item.benchmark == "kormedmcqa":
        groups.append(f"{item.language}/{item.subject}")
    return groups


def adapted_modules(model: Any) -> list[tuple[int, str, Any, str]]:
    """(layer index, module name inside the layer, LoraLayer, adapter name) for every adapted module."""
    from peft.tuners.lora import LoraLayer

    found = []
    for idx, layer in enumerate(decoder_layers(model)):
        for name, mod in layer.named_modules():
            if isinstance(mod, LoraLayer) and not getattr(mod, "merged", False):
                active = [a for a in mod.active_adapters if a in mod.lora_B]
                if active:
                    found.append((idx, name, mod, active[0]))
    if not found:
        raise ValueError("the model has no active LoRA modules in its decoder layers")
    return found


class LoraDeltaMeter:
    """Context manager: forward hooks on every adapted module's ``lora_B`` that add up the per-token
    delta magnitude of each batch row into ``sums[module, item]``; the hooks return ``None`` (outputs
    unchanged) and are removed on exit, also after an error. Call :meth:`set_batch` before each
    forward with the batch's item indices and attention mask."""

    def __init__(self, model: Any, n_items: int):
        self.model = model
        self.modules = adapted_modules(model)
        self.sums = torch.zeros(len(self.modules), n_items, dtype=torch.float64)
        self.tokens = torch.zeros(n_items, dtype=torch.float64)
        self._rows: torch.Tensor | None = None
        self._mask: torch.Tensor | None = None
        self._handles: list[Any] = []

    def set_batch(self, rows: Sequence[int], attention_mask: torch.Tensor) -> None:
        self._rows = torch.as_tensor(list(rows), dtype=torch.long)
        self._mask = attention_mask.to(dtype=torch.float32)
        self.tokens[self._rows] += attention_mask.sum(dim=1).double().cpu()

    def _hook(self, m: int, scaling: float):
        def hook(_module: Any, _inputs: Any, output: torch.Tensor) -> None:
            if self._rows is None:
                return
            per_token = (output.detach().float() * scaling).abs().mean(dim=-1)  # [B, T]
            self.sums[m, self._rows] += (per_token * self._mask.to(per_token.device)).sum(dim=-1).double().cpu()

        return hook

    def __enter__(self) -> LoraDeltaMeter:
        try:
            for m, (_, _, mod, adapter) in enumerate(self.modules):
                self._handles.append(mod.lora_B[adapter].register_forward_hook(self._hook(m, float(mod.scaling[adapter]))))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


@torch.inference_mode()
def measure_lora_activations(model: Any, tokenizer: Any, items: Sequence[MCQItem], batch_size: int = 16, max_batch_tokens: int = 16384, progress: bool = False, prompts: Sequence[list[int]] | None = None) -> dict[str, Any]:
    """Per-group, per-layer LoRA delta magnitudes (see the module docstring) on ``items``."""
    from medslm.console import Progress

    n_layers = len(decoder_layers(model))
    device = model.get_input_embeddings().weight.device
    prompts = list(prompts) if prompts is not None else [encode_prompt(tokenizer, format_prompt(it)) for it in items]
    pad = pad_token_id(tokenizer)
    was_training = model.training
    model.eval()
    try:
        with LoraDeltaMeter(model, len(items)) as meter, Progress(len(items), "lora-activations", "item", enabled=progress, every=max(1, len(items) // 10)) as bar:
            for batch in length_batches([len(p) for p in prompts], batch_size, max_batch_tokens):
                width = max(len(prompts[i]) for i in batch)
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for r, i in enumerate(batch):
                    ids[r, : len(prompts[i])] = torch.tensor(prompts[i])
                    mask[r, : len(prompts[i])] = 1
                meter.set_batch(batch, mask.to(device))
                model(input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=1)
                bar.update(len(batch))
    finally:
        model.train(was_training)
    return _aggregate(meter.modules, n_layers, items, meter.sums, meter.tokens)


def _aggregate(modules: list, n_layers: int, items: Sequence[MCQItem], sums: torch.Tensor, tokens: torch.Tensor) -> dict[str, Any]:
    members: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        for g in item_groups(it):
            members.setdefault(g, []).append(i)
    groups: dict[str, Any] = {}
    for g in sorted(members, key=lambda g: (g.count("/"), g)):
        idx = torch.tensor(members[g])
        n_tok = float(tokens[idx].sum())
        per_module = (sums[:, idx].sum(dim=1) / max(n_tok, 1.0)).tolist()  # token-weighted mean per module
        per_layer: list[float | None] = []
        by_name: dict[str, list[float | None]] = {}
        for layer in range(n_layers):
            vals = [per_module[m] for m, (li, _, _, _) in enumerate(modules) if li == layer]
            per_layer.append(sum(vals) / len(vals) if vals else None)
        for m, (li, name, _, _) in enumerate(modules):
            by_name.setdefault(name, [None] * n_layers)[li] = per_module[m]
        groups[g] = {"n_items": len(members[g]), "n_tokens": int(n_tok), "per_layer": per_layer, "per_module": by_name}
    return {"metric": METRIC, "n_layers": n_layers, "layers": list(range(n_layers)), "n_items": len(items), "groups": groups}


def plot_layers(result: dict[str, Any], path: str | Path, title: str = "LoRA adapter contribution per layer") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    labels = {"en": "English (MedQA)", "ko": "Korean (KorMedMCQA)"}
    for g, rec in result["groups"].items():
        xs = [x for x, v in zip(result["layers"], rec["per_layer"]) if v is not None]
        ys = [v for v in rec["per_layer"] if v is not None]
        is_lang = "/" not in g
        ax.plot(xs, ys, marker="o", linewidth=2.2 if is_lang else 1.2, linestyle="-" if is_lang else "--", label=f"{labels.get(g, g)} (n={rec['n_items']})")
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("mean |LoRA delta| per token")
    ax.set_title(title)
    ax.set_xticks(result["layers"])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def lora_activations(cfg: LoraActivationsConfig) -> dict[str, Any]:
    """``evaluate.py lora-activations``: measure, write JSON + PNG, print a short per-layer table."""
    cfg.validate()
    ecfg = cfg.eval_config()
    resolve_device(cfg.device)
    run_cfg = load_run_config(cfg.run)
    items, data_desc = select_items(ecfg, run_cfg)
    model, tokenizer, model_info = load_for_eval(ecfg, run_cfg)
    # the training run's length limit and overlong policy, as evaluate.py applies them
    items, prompts, overlong = fit_prompts(items, tokenizer, "letter", run_cfg.data.max_seq_len, run_cfg.data.overlong)
    if not items:
        raise UserError(f"no items left: all {overlong['dropped']} are longer than max_seq_len={overlong['max_seq_len']}")
    result = measure_lora_activations(model, tokenizer, items, cfg.batch_size, cfg.max_batch_tokens, cfg.progress, prompts=prompts)
    result.update({"model": model_info, "data": data_desc, "overlong": overlong})
    out = Path(cfg.out) if cfg.out else Path(cfg.run) / "lora_activations"
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
        (out / "lora_activations.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        plot_layers(result, out / "lora_activations.png", f"LoRA contribution per layer: {Path(cfg.run).name}")
    names = list(result["groups"])
    print("layer  " + "  ".join(f"{g:>12}" for g in names))
    for layer in result["layers"]:
        vals = [result["groups"][g]["per_layer"][layer] for g in names]
        print(f"{layer:>5}  " + "  ".join(f"{v:>12.4g}" if v is not None else f"{'-':>12}" for v in vals))
    print(f"wrote {out / 'lora_activations.json'} and {out / 'lora_activations.png'}")
    return {"out_dir": str(out), **result}


__all__ = ["LoraActivationsConfig", "LoraDeltaMeter", "adapted_modules", "item_groups", "lora_activations", "measure_lora_activations", "plot_layers"]
