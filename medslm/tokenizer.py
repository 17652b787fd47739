"""The embedded tokenizer, and loading any tokenizer by name or path.

``medslm/assets/tokenizer/`` holds a small byte-level BPE tokenizer (4,096 ids in all) trained on the
sample files in ``data/samples/`` plus the prompt template strings, so the whole pipeline runs on a
machine with no network. It is saved as a ``transformers`` fast tokenizer by ``save_pretrained``:
transformers 5 writes ``tokenizer.json`` and ``tokenizer_config.json`` (``tokenizer_class:
TokenizersBackend``; it no longer writes ``special_tokens_map.json``), so
``AutoTokenizer.from_pretrained("medslm/assets/tokenizer")`` works offline.

Properties (checked by ``tests/test_samples_tokenizer.py``):

- Byte-level: ``ByteLevel(add_prefix_space=False)`` pre-tokenizer and ``ByteLevel`` decoder, with all
  256 byte symbols in the base vocabulary, so any text (Korean, Chinese, emoji, control characters)
  encodes and decodes losslessly; there is no unknown token.
- Special tokens: ``<|pad|>`` = 0, ``<|bos|>`` = 1, ``<|eos|>`` = 2 (pad, bos and eos are all set).
- No special tokens are added implicitly: ``tokenizer("x")`` returns
  ``{"input_ids": [90], "attention_mask": [1]}`` (90 is the byte token for "x"), exactly what
  ``tokenizer("x", add_special_tokens=False)`` returns. The saved post-processor is a
  ``TemplateProcessing`` of just ``$A`` (transformers builds it from ``add_bos_token=False``,
  ``add_eos_token=False``). Callers add BOS/EOS themselves (``medslm.prompts.encode_prompt``
  prepends BOS once; ``build_example`` appends EOS).
- The answer continuations ``" A"`` .. ``" E"`` are one token each, so letter scoring reads a single
  logit; ``"Answer:"`` and ``"정답："`` (full-width colon) are short.
- ``clean_up_tokenization_spaces`` is off, so ``decode(encode(text)) == text`` exactly.

Rebuild the asset with ``python -m medslm.tokenizer`` (after ``python -m medslm.samples``); the
training is deterministic, so an unchanged corpus gives a byte-identical ``tokenizer.json``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from medslm.cli import UserError, first_line

EMBEDDED_TOKENIZER_DIR = Path(__file__).resolve().parent / "assets" / "tokenizer"
DEFAULT_SAMPLES_DIR = Path(__file__).resolve().parents[1] / "data" / "samples"
EMBEDDED_NAMES = ("embedded",)
VOCAB_SIZE = 4096
PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
SPECIAL_TOKENS = (PAD, BOS, EOS)  # ids 0, 1, 2
LETTERS = "ABCDE"
ANSWER_CONTINUATIONS = tuple(f" {letter}" for letter in LETTERS)
# lm-evaluation-harness template pieces (see medslm/prompts.py); always part of the training text
TEMPLATE_STRINGS = (
    "Question: ",
    *(f"\n{letter}. " for letter in LETTERS),
    "\nAnswer:",
    "Answer:",
    "\n정답：",
    "정답：",
    *ANSWER_CONTINUATIONS,
)
TEMPLATE_REPEATS = 8  # the template strings are weighted like a few extra items


# ---------------------------------------------------------------------------------------------
# Training text from the sample files
# ---------------------------------------------------------------------------------------------


def _prompt(question: str, options: list[str], cue: str, prefix: str = "") -> str:
    body = "".join(f"\n{LETTERS[i]}. {text}" for i, text in enumerate(options))
    return f"{prefix}{question}{body}\n{cue}"


def _medqa_texts(path: Path) -> Iterator[str]:
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if "sent1" in row:  # GBaker 4-options layout
            options = [row[f"ending{i}"] for i in range(4)]
            question, answer = row["sent1"], int(row["label"])
        else:
            options = [row["options"][k] for k in sorted(row["options"])]
            question, answer = row["question"], sorted(row["options"]).index(row["answer_idx"])
        yield _prompt(question, options, "Answer:", "Question: ") + f" {LETTERS[answer]}"


def _kormed_texts(path: Path) -> Iterator[str]:
    import pyarrow.parquet as pq

    for row in pq.read_table(path).to_pylist():
        options = [row[k] for k in LETTERS if row.get(k)]
        yield _prompt(row["question"], options, "정답：") + f" {LETTERS[int(row['answer']) - 1]}"
        if row.get("cot"):
            yield row["cot"]


def sample_texts(samples_dir: Path = DEFAULT_SAMPLES_DIR) -> list[str]:
    """The tokenizer's training text: every sample item as a formatted prompt + answer letter, the
    few-shot explanations, and the template strings. Files are read in sorted path order."""
    samples_dir = Path(samples_dir)
    texts: list[str] = []
    for path in sorted(samples_dir.rglob("*.jsonl")):
        texts.extend(_medqa_texts(path))
    for path in sorted(samples_dir.rglob("*.parquet")):
        texts.extend(_kormed_texts(path))
    if not texts:
        raise FileNotFoundError(
            f"no sample files (*.jsonl, *.parquet) under {samples_dir}; run python -m medslm.samples"
        )
    texts.extend(list(TEMPLATE_STRINGS) * TEMPLATE_REPEATS)
    return texts


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def train_embedded_tokenizer(texts: Iterable[str], out_dir: Path, vocab_size: int = VOCAB_SIZE) -> Any:
    """Train a byte-level BPE tokenizer of exactly ``vocab_size`` ids on ``texts`` and save it to
    ``out_dir`` as a ``transformers`` fast tokenizer; returns the loaded tokenizer.

    Raises ``ValueError`` if the text is too small to reach ``vocab_size`` or if an answer
    continuation (" A" .. " E") does not end up as a single token.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(texts)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=0,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    if tok.get_vocab_size() != vocab_size:
        raise ValueError(
            f"the training text allows only {tok.get_vocab_size()} tokens, fewer than vocab_size={vocab_size}; "
            "add text or lower vocab_size"
        )
    for i, token in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(token) != i:
            raise ValueError(f"special token {token} got id {tok.token_to_id(token)}, expected {i}")
    for cont in ANSWER_CONTINUATIONS:
        ids = tok.encode(cont).ids
        if len(ids) != 1:
            raise ValueError(f"{cont!r} encodes to {len(ids)} tokens {ids}; answer letters must be single tokens")

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        add_bos_token=False,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return fast


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _looks_local(name_or_path: str) -> bool:
    """A local path rather than a hub id: explicit path syntax, an existing path, or more than one "/"."""
    path = Path(name_or_path).expanduser()
    return (
        name_or_path.startswith((".", "/", "~")) or path.is_absolute() or path.exists() or name_or_path.count("/") > 1
    )


def _from_local(path: Path) -> Any:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if not path.exists():
        raise FileNotFoundError(f"tokenizer path does not exist: {path} (absolute: {path.resolve()})")
    if path.is_file():
        if path.name == "tokenizer.json" and (path.parent / "tokenizer_config.json").is_file():
            return _from_local(path.parent)
        if not path.name.endswith(".json"):
            raise UserError(f"tokenizer path {path} is a file; give a folder (with tokenizer.json) or a tokenizer.json file")
        from medslm.files import read_json

        read_json(path, "give a tokenizer.json file")  # truncated: named
        try:
            return PreTrainedTokenizerFast(tokenizer_file=str(path), clean_up_tokenization_spaces=False)
        except Exception as exc:  # the tokenizers library raises a bare Exception ("Model missing", ...)
            raise UserError(f"{path}: not a tokenizer file the tokenizers library can read ({first_line(exc)})") from None
    markers = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not any((path / m).is_file() for m in markers):
        raise FileNotFoundError(f"no tokenizer files ({', '.join(markers)}) in {path}")
    from medslm.files import check_json_files

    check_json_files(path)  # a truncated file is named, which transformers does not do
    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"could not load the tokenizer in {path}: {first_line(exc)}") from None
    except Exception as exc:  # the tokenizers library's own errors are bare Exceptions
        if type(exc) is not Exception:
            raise
        raise UserError(f"could not load the tokenizer in {path}: {first_line(exc)}") from None



def load_tokenizer(name_or_path: str | None = None) -> Any:
    """The embedded tokenizer for ``None`` or ``"embedded"``; otherwise a local folder (or a
    ``tokenizer.json`` file) or a hub name, through ``AutoTokenizer.from_pretrained`` with no remote code.

    The result always has a pad token (the EOS token when the tokenizer defines none). A local path
    that does not exist raises ``FileNotFoundError`` naming it; a hub name that cannot be loaded
    (offline, not cached) raises ``medslm.cli.UserError`` naming it and the fixes (one line).
    """
    from transformers import AutoTokenizer

    if name_or_path is None or str(name_or_path) in EMBEDDED_NAMES:
        if not (EMBEDDED_TOKENIZER_DIR / "tokenizer.json").is_file():
            raise FileNotFoundError(
                f"embedded tokenizer missing: {EMBEDDED_TOKENIZER_DIR / 'tokenizer.json'} (run python -m medslm.tokenizer)"
            )
        tokenizer = _from_local(EMBEDDED_TOKENIZER_DIR)
        source = str(EMBEDDED_TOKENIZER_DIR)
    elif _looks_local(str(name_or_path)):
        source = str(Path(str(name_or_path)).expanduser())
        tokenizer = _from_local(Path(source))
    else:
        from medslm.hub import resolve

        source = resolve(str(name_or_path), "tokenizer")  # its cached snapshot, or one error line when unreachable
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
        except OSError as exc:
            raise UserError(f"could not load tokenizer {str(name_or_path)!r} ({source}): {first_line(exc)}") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UserError(f"tokenizer {source} has neither a pad token nor an eos token to use for padding")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short hash of everything that decides token ids: for a fast tokenizer its whole
    serialised pipeline (normaliser, pre-tokeniser, model with vocabulary and merges, added
    tokens), else its vocabulary; plus the special tokens."""
    import hashlib
    import json

    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    special = json.dumps({k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())}, ensure_ascii=False)
    return hashlib.sha256((body + "\n" + special).encode("utf-8")).hexdigest()[:16]


def pad_token_id(tokenizer: Any) -> int:
    """The id to pad with: the pad token (``load_tokenizer`` always sets one), else EOS, else 0."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Rebuild the embedded tokenizer from the sample files.")
    parser.add_argument(
        "--samples", type=Path, default=DEFAULT_SAMPLES_DIR, help="sample data folder (default: data/samples)"
    )
    parser.add_argument(
        "--out", type=Path, default=EMBEDDED_TOKENIZER_DIR, help="output folder (default: medslm/assets/tokenizer)"
    )
    parser.add_argument("--vocab-size", type=int, default=VOCAB_SIZE)
    args = parser.parse_args(argv)
    tok = train_embedded_tokenizer(sample_texts(args.samples), args.out, args.vocab_size)
    print(f"wrote {args.out} ({len(tok)} tokens)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
