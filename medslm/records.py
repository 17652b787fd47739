"""The normalised multiple-choice item shared by MedQA and KorMedMCQA."""

from __future__ import annotations

from dataclasses import dataclass

LETTERS = "ABCDE"
LANGUAGE_OF = {"medqa": "en", "kormedmcqa": "ko"}  # benchmark -> language; ids start with "<benchmark>/"


@dataclass(frozen=True)
class MCQItem:
    """One multiple-choice question, whatever file or dataset it came from.

    ``answer`` is a 0-based index into ``options``. ``source`` is ``"path:line"`` (or
    ``"path:row N"``) so every later error can point back at the input.
    """

    id: str
    benchmark: str  # "medqa" | "kormedmcqa"
    language: str  # "en" | "ko"
    subject: str  # medqa: meta_info or "usmle"; kormedmcqa: doctor | nurse | pharm | dentist
    question: str
    options: tuple[str, ...]
    answer: int
    split: str | None = None  # the dataset's own split when known (train/dev/test/fewshot)
    source: str = ""

    @property
    def answer_letter(self) -> str:
        return LETTERS[self.answer]
