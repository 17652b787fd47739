"""Real-token training throughput: packed rows vs padding to the longest vs padding to max_seq_len.

    python bench/train_throughput.py            # CPU: Llama hidden 256, 4 layers, NF4 + LoRA r16

Same model weights, same examples (MedQA + KorMedMCQA items through the real tokeniser and
prompt template), the same loss, forward + backward + AdamW step per micro-batch, one process:
- ``packed``: our path: rows packed to 2048 tokens by best-fit decreasing, cu_seqlens attention
  (segment-aware SDPA on CPU, varlen flash attention on CUDA), 1 row per micro-batch.
- ``longest``: the usual peer baseline: examples in random order, micro-batches of 8 padded to
  the longest, SDPA with an attention mask.
- ``max_length``: every example padded to 2048 (the paper's baseline), micro-batches of 2.
Throughput = real (non-padding) tokens / wall second. Each mode processes the same examples
(the 2048-padded mode a prefix of them, since it is a rate). Packed and longest alternate over
``--rounds`` rounds and the medians are reported, so drift on a shared machine hits both alike.
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.common import make_llama  # noqa: E402

from medslm.dataset import DataConfig, build_dataset  # noqa: E402
from medslm.modeling import LoraConfigSection, ModelConfig, apply_lora, load_base_model  # noqa: E402
from medslm.packing import PackedCollator, PaddedCollator, pack_bfd  # noqa: E402
from medslm.tokenizer import load_tokenizer  # noqa: E402
from medslm.trainer import batch_loss_sum  # noqa: E402


class Mode:
    """One way of batching the same examples, with its own model copy (same weights, same seed)."""

    def __init__(self, mode: str, model_dir: Path, examples: list[dict], max_seq_len: int, pad: int, device: torch.device):
        self.mode, self.device, self.packed = mode, device, mode == "packed"
        mcfg = ModelConfig(name_or_path=str(model_dir), quantization="nf4", attention="auto", gradient_checkpointing=True)
        model = load_base_model(mcfg, device, packed=self.packed)
        torch.manual_seed(0)
        self.model = apply_lora(model, LoraConfigSection(r=16, alpha=64, dropout=0.05), gradient_checkpointing=True).train()
        self.opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=1e-4)
        if self.packed:
            bins = pack_bfd([len(e["input_ids"]) for e in examples], max_seq_len)
            collate = PackedCollator(max_seq_len, pad)
            self.batches = [collate([[examples[i] for i in b]]) for b in bins]
        else:
            order = list(range(len(examples)))
            random.Random(0).shuffle(order)
            size = 8 if mode == "longest" else 2
            padder = PaddedCollator(pad, mode, max_seq_len)
            self.batches = [padder([examples[i] for i in order[k : k + size]]) for k in range(0, len(order), size)]
        self.real_tokens = sum(int(b["num_real_tokens"]) for b in self.batches)
        self.computed_tokens = sum(b["input_ids"].numel() for b in self.batches)
        self.step(self.batches[0])  # warm-up, not counted

    def step(self, b: dict) -> None:
        loss, n = batch_loss_sum(self.model, b, self.packed, self.device)
        (loss / max(1, n)).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def epoch_tokens_per_s(self) -> float:
        t0 = time.perf_counter()
        for b in self.batches:
            self.step(b)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return self.real_tokens / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--max-seq-len", type=int, default=2048)
    ap.add_argument("--examples", type=int, default=240, help="examples for packed / longest")
    ap.add_argument("--examples-max-length", type=int, default=24, help="examples for the 2048-padded mode")
    ap.add_argument("--rounds", type=int, default=5, help="alternating packed/longest rounds; medians reported")
    a = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok = load_tokenizer(None)
    built = build_dataset(DataConfig(ratio="5:5", max_seq_len=a.max_seq_len, upsample=True), tok, global_batch_rows=1)
    examples = [e.as_dict() for e in built.train]
    examples = (examples * (a.examples // len(examples) + 1))[: a.examples]
    pad = tok.pad_token_id
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_llama(Path(tmp), a.hidden, a.layers)
        packed = Mode("packed", model_dir, examples, a.max_seq_len, pad, device)
        longest = Mode("longest", model_dir, examples, a.max_seq_len, pad, device)
        max_len = Mode("max_length", model_dir, examples[: a.examples_max_length], a.max_seq_len, pad, device)
        # packed and longest alternate, round by round, so machine drift hits both alike
        rounds = [(packed.epoch_tokens_per_s(), longest.epoch_tokens_per_s()) for _ in range(a.rounds)]
        tps_max = max_len.epoch_tokens_per_s()
    tps_packed = statistics.median(r[0] for r in rounds)
    tps_longest = statistics.median(r[1] for r in rounds)
    ratios = [p / q for p, q in rounds]
    print(f"{'mode':11} {'micro-batches':>13} {'real tokens':>11} {'computed':>9} {'tokens/s (median)':>18}")
    for m, tps in ((packed, tps_packed), (longest, tps_longest), (max_len, tps_max)):
        print(f"{m.mode:11} {len(m.batches):13d} {m.real_tokens:11d} {m.computed_tokens:9d} {tps:18.1f}")
    print("packed/longest per round:", ", ".join(f"{r:.2f}" for r in ratios))
    lengths = [len(e["input_ids"]) for e in examples]
    out = {
        "device": str(device),
        "hidden": a.hidden,
        "layers": a.layers,
        "max_seq_len": a.max_seq_len,
        "rounds": a.rounds,
        "mean_example_tokens": round(sum(lengths) / len(lengths), 1),
        "padding_efficiency_longest": round(longest.real_tokens / longest.computed_tokens, 3),
        "tokens_per_s_packed": round(tps_packed, 1),
        "tokens_per_s_longest": round(tps_longest, 1),
        "tokens_per_s_max_length": round(tps_max, 1),
        "packed_vs_longest": round(statistics.median(ratios), 2),
        "packed_vs_max_length": round(tps_packed / tps_max, 2),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
