"""The fact tables of the sample generator, read from ``medslm/assets/samples/*.yaml``.

Each file is read with ``yaml.SafeLoader`` (plain data only: nothing in a file can run code) into
a frozen dataclass below. The dataclass fields are the schema: a missing field, an unknown key, a
value of the wrong type (a number where text is expected, ``yes`` read as a boolean, a vitals kind
not in the list), a key given twice or a placeholder the generator cannot fill is a
:class:`~medslm.data.DataError` naming the file, the line, the field and the entry, e.g.

    .../english.yaml:line 43: field 'diseases[2].treatment': missing: give a string (entry 'Acute appendicitis')

A field with a default may be left out; every other field must be given (``null`` where its type
allows it). YAML anchors (``&teeth``) and aliases (``*teeth``) may share a list between entries.
"""

from __future__ import annotations

import string
import types
from collections.abc import Iterator
from dataclasses import MISSING, dataclass, fields, is_dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from medslm.data import DataError

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets" / "samples"


@dataclass(frozen=True)
class Placeholders:
    """Marks a text field that is filled by ``str.format`` with these names."""

    names: frozenset[str]


#: English case text: {He} {his} ... are filled with the patient's pronouns
EnText = Annotated[str, Placeholders(frozenset({"He", "he", "His", "his", "him", "She", "she", "Her", "her"}))]
#: Korean situation text: {p} is filled with a patient such as "57세 여자"
KoPatientText = Annotated[str, Placeholders(frozenset({"p"}))]

Sex = Literal["man", "woman"]
KoSex = Literal["남자", "여자"]
Vitals = Literal["normal", "febrile", "tachy", "shock"]


def _placeholder_problem(text: str, allowed: frozenset[str]) -> str | None:
    """Why ``text.format(**values)`` with the ``allowed`` names would fail, or None."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]
    except ValueError as exc:
        return f"not a valid template ({exc}; write a literal brace as {{{{ or }}}})"
    unknown = sorted({n for n in names if n not in allowed})
    if unknown:
        return f"unknown placeholder {{{unknown[0]}}} (known: {', '.join('{' + a + '}' for a in sorted(allowed))})"
    return None


class _Checked:
    """A table entry whose values can be well typed and still unusable."""

    def problems(self) -> Iterator[tuple[str, str]]:
        """(field, reason) for each such value."""
        ages = getattr(self, "ages", None)
        if ages is not None and ages[0] > ages[1]:
            yield "ages", f"the youngest age {ages[0]} is above the oldest {ages[1]}"


# =============================================================================================
# English (english.yaml)
# =============================================================================================


@dataclass(frozen=True)
class Disease(_Checked):
    name: str
    sex: Sex | None  # None: either
    ages: tuple[int, int]
    setting: EnText  # "comes to the physician", "comes to the emergency department", ...
    complaint: EnText  # follows "because of"
    history: EnText
    exam: EnText
    result: str  # a lab/imaging result that points at the diagnosis ("" if none)
    vitals: Vitals
    treatment: str
    test: str | None  # the test that confirms the diagnosis, or None
    proper_noun: bool = False  # the name keeps its capital inside a sentence



@dataclass(frozen=True)
class Drug(_Checked):
    name: str
    indication: str  # follows "was recently diagnosed with"
    detail: EnText
    mechanism: str
    adverse: str
    sex: Sex | None = None  # None: either



@dataclass(frozen=True)
class NerveInjury(_Checked):
    nerve: str
    event: EnText  # "after ..." (trauma) or the operation (surgery)
    finding: str  # imaging for trauma, "" for surgery
    deficit: EnText
    surgical: bool = False
    sex: Sex | None = None  # None: either



@dataclass(frozen=True)
class AgedSentence(_Checked):
    """A history sentence that only fits patients of some ages."""

    text: EnText
    ages: tuple[int, int]



@dataclass(frozen=True)
class EnglishFacts(_Checked):
    diseases: tuple[Disease, ...]
    drugs: tuple[Drug, ...]
    nerve_injuries: tuple[NerveInjury, ...]
    # optional history sentences, in groups of alternatives (a plain string fits every age)
    history_adult: dict[str, tuple[EnText | AgedSentence, ...]]
    history_child: dict[str, tuple[EnText | AgedSentence, ...]]

    def problems(self) -> Iterator[tuple[str, str]]:
        for key in ("history_adult", "history_child"):
            for group, alternatives in getattr(self, key).items():
                if not any(isinstance(alt, str) for alt in alternatives):
                    yield key, f"group {group!r} needs a sentence that fits every age (a plain string)"


# =============================================================================================
# Korean (korean_*.yaml)
# =============================================================================================


@dataclass(frozen=True)
class KoDisease(_Checked):
    name: str
    sex: KoSex | None  # None: either
    ages: tuple[int, int]
    symptoms: str
    exam: str
    result: str  # "" if none
    treatment: str
    test: str | None  # the test that confirms the diagnosis, or None


@dataclass(frozen=True)
class FixedItem(_Checked):
    """A question written out whole: its answer, its distractor pool and an explanation."""

    question: str
    answer: str
    pool: tuple[str, ...]
    explanation: str


@dataclass(frozen=True)
class Choice(_Checked):
    """A question (or a name the question is built around), its answer and its wrong options."""

    question: str
    answer: str
    wrong: tuple[str, ...]


@dataclass(frozen=True)
class RetentionRecord(_Checked):
    record: str
    years: str
    nurse: bool = False  # also asked in the nurse questions


@dataclass(frozen=True)
class PriorityAction(_Checked):
    situation: KoPatientText
    action: str
    ages: tuple[int, int]



@dataclass(frozen=True)
class IvRate(_Checked):
    volume_ml: int
    hours: int


@dataclass(frozen=True)
class DripRate(_Checked):
    volume_ml: int
    hours: int
    drops_per_ml: int


@dataclass(frozen=True)
class HalfLife(_Checked):
    half_life_hours: int
    concentration_mg_per_l: int
    half_lives: int


@dataclass(frozen=True)
class DentalCase(_Checked):
    name: str
    symptoms: str
    exam: str
    treatment: str


@dataclass(frozen=True)
class KoreanDoctor(_Checked):
    diseases: tuple[KoDisease, ...]


@dataclass(frozen=True)
class KoreanLaw(_Checked):
    record_retention: tuple[RetentionRecord, ...]
    retention_years: tuple[str, ...]
    authorities: tuple[str, ...]
    doctor_items: tuple[FixedItem, ...]
    nurse_items: tuple[FixedItem, ...]
    infectious_classes: dict[str, tuple[str, ...]]
    not_notifiable: str


@dataclass(frozen=True)
class KoreanNurse(_Checked):
    precautions: tuple[str, ...]
    isolation: dict[str, str]
    positions: tuple[str, ...]
    position_items: dict[str, str]
    normal_values: tuple[Choice, ...]
    injection_sites: tuple[Choice, ...]
    priority_actions: tuple[PriorityAction, ...]
    maternal_child: tuple[FixedItem, ...]
    iv_rates: tuple[IvRate, ...]
    drip_rates: tuple[DripRate, ...]


@dataclass(frozen=True)
class KoreanPharm(_Checked):
    mechanisms: dict[str, str]
    adverse_effects: dict[str, str]
    antidotes: dict[str, str]
    drug_classes: dict[str, str]
    half_lives: tuple[HalfLife, ...]


@dataclass(frozen=True)
class KoreanDentist(_Checked):
    teeth: tuple[str, ...]
    counts: tuple[str, ...]
    anatomy: tuple[FixedItem, ...]
    oral_microbes: dict[str, str]
    nerves: tuple[str, ...]
    nerve_items: dict[str, str]
    materials: tuple[str, ...]
    material_items: dict[str, str]
    cases: tuple[DentalCase, ...]
    eruption: dict[str, str]
    fdi_quadrants: dict[int, str]
    fdi_teeth: dict[int, str]


@dataclass(frozen=True)
class SampleFacts:
    """Every fact table, one attribute per file."""

    english: EnglishFacts
    doctor: KoreanDoctor
    law: KoreanLaw
    nurse: KoreanNurse
    pharm: KoreanPharm
    dentist: KoreanDentist


#: file name -> the dataclass it is read into (in SampleFacts order)
FILES: dict[str, type] = {
    "english.yaml": EnglishFacts,
    "korean_doctor.yaml": KoreanDoctor,
    "korean_law.yaml": KoreanLaw,
    "korean_nurse.yaml": KoreanNurse,
    "korean_pharm.yaml": KoreanPharm,
    "korean_dentist.yaml": KoreanDentist,
}


# =============================================================================================
# The typed reader
# =============================================================================================

_KIND = {str: "a string", int: "an integer", bool: "true or false", type(None): "null"}


def _kind(tp: Any) -> str:
    if get_origin(tp) is Annotated:
        return _kind(get_args(tp)[0])
    if tp in _KIND:
        return _KIND[tp]
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(str, get_args(tp)))
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return "a list"
        return f"a list of {len(args)}"
    if origin is dict or is_dataclass(tp):
        return "a mapping"
    if origin in (Union, types.UnionType):
        return " or ".join(_kind(a) for a in get_args(tp))
    return str(tp)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return f"{value!r} (YAML reads yes/no/on/off/true/false unquoted as a boolean: quote text)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _accepts(tp: Any, value: Any) -> bool:
    """Whether ``value`` has the YAML shape of ``tp`` (used to pick a branch of a union)."""
    if get_origin(tp) is Annotated:
        return _accepts(get_args(tp)[0], value)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    origin = get_origin(tp)
    if origin is Literal:
        return value in get_args(tp)
    if origin is tuple:
        return isinstance(value, list)
    return isinstance(value, dict) and (origin is dict or is_dataclass(tp))


class _Reader:
    """Turns the YAML of one file into typed values, walking the YAML nodes for line numbers."""

    def __init__(self, path: Path):
        self.path = path
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DataError(str(path), "(file)", "sample fact table not found") from None
        except UnicodeDecodeError as exc:
            raise DataError(str(path), "(file)", f"not UTF-8 text ({exc.reason})") from None
        self.loader = yaml.SafeLoader(text)
        try:
            self.node = self.loader.get_single_node()
            self.data = self.loader.construct_document(self.node) if self.node is not None else None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:line {mark.line + 1}" if mark is not None else str(path)
            raise DataError(where, "(file)", f"not valid YAML: {getattr(exc, 'problem', None) or exc}") from None

    def close(self) -> None:
        self.loader.dispose()

    def fail(self, node: Any, field: str, reason: str, entry: str = "") -> DataError:
        where = f"{self.path}:line {node.start_mark.line + 1}" if node is not None else str(self.path)
        return DataError(where, field or "(file)", reason + (f" (entry {entry!r})" if entry else ""))

    def pairs(self, value: dict, node: Any, field: str) -> list[tuple[Any, Any, Any]]:
        """(key, value, value node) of a mapping, in file order; a key given twice is an error."""
        out: list[tuple[Any, Any, Any]] = []
        seen: set[Any] = set()
        for knode, vnode in node.value:
            key = self.loader.construct_object(knode, deep=True)
            if key in seen:
                where = f"{field}.{key}" if field else str(key)
                raise self.fail(knode, where, "given twice (a later value would hide the first)")
            seen.add(key)
            out.append((key, value[key], vnode))
        return out

    def read(self, tp: Any, value: Any, node: Any, field: str, entry: str = "") -> Any:
        origin = get_origin(tp)
        if origin is Annotated:
            inner, *marks = get_args(tp)
            out = self.read(inner, value, node, field, entry)
            for mark in marks:
                reason = _placeholder_problem(out, mark.names) if isinstance(mark, Placeholders) else None
                if reason:
                    raise self.fail(node, field, reason, entry)
            return out
        if origin in (Union, types.UnionType):
            for arg in get_args(tp):
                if _accepts(arg, value):
                    return self.read(arg, value, node, field, entry)
            raise self.fail(node, field, f"must be {_kind(tp)}, got {_show(value)}", entry)
        if not _accepts(tp, value):
            raise self.fail(node, field, f"must be {_kind(tp)}, got {_show(value)}", entry)
        if origin is tuple:
            args = get_args(tp)
            if len(args) == 2 and args[1] is Ellipsis:
                args = (args[0],) * len(value)
            elif len(value) != len(args):
                raise self.fail(node, field, f"must be a list of {len(args)}, got {len(value)} values", entry)
            return tuple(
                self.read(arg, v, vnode, f"{field}[{i}]", entry)
                for i, (arg, v, vnode) in enumerate(zip(args, value, node.value, strict=True))
            )
        if origin is dict:
            ktype, vtype = get_args(tp)
            out = {}
            for key, v, vnode in self.pairs(value, node, field):
                sub = f"{field}.{key}" if field else str(key)
                if not _accepts(ktype, key):
                    raise self.fail(vnode, sub, f"the key must be {_kind(ktype)}, got {_show(key)}", entry)
                out[key] = self.read(vtype, v, vnode, sub, entry)
            return out
        if is_dataclass(tp):
            return self.read_entry(tp, value, node, field)
        return value

    def read_entry(self, cls: type, value: dict, node: Any, field: str) -> Any:
        specs = {f.name: f for f in fields(cls)}
        hints = get_type_hints(cls, include_extras=True)
        first = value.get(next(iter(specs)))
        entry = (first if len(first) <= 60 else first[:57] + "...") if isinstance(first, str) else ""
        given = {key: (v, vnode) for key, v, vnode in self.pairs(value, node, field)}
        sub = (lambda name: f"{field}.{name}") if field else (lambda name: name)
        unknown = [k for k in given if k not in specs]
        if unknown:
            known = ", ".join(specs)
            raise self.fail(given[unknown[0]][1], sub(str(unknown[0])), f"unknown key (known: {known})", entry)
        kwargs = {}
        for name, spec in specs.items():
            if name not in given:
                if spec.default is MISSING and spec.default_factory is MISSING:
                    raise self.fail(node, sub(name), f"missing: give {_kind(hints[name])}", entry)
                continue
            v, vnode = given[name]
            kwargs[name] = self.read(hints[name], v, vnode, sub(name), entry)
        obj = cls(**kwargs)
        for name, reason in obj.problems():
            vnode = given[name][1] if name in given else node
            raise self.fail(vnode, sub(name), reason, entry)
        return obj


def read_table(path: Path, cls: type) -> Any:
    """The file at ``path`` read into the dataclass ``cls``; any problem is a DataError naming it."""
    reader = _Reader(Path(path))
    try:
        if not isinstance(reader.data, dict):
            keys = ", ".join(f.name for f in fields(cls))
            raise reader.fail(reader.node, "(file)", f"must be a mapping with the keys {keys}")
        return reader.read_entry(cls, reader.data, reader.node, "")
    finally:
        reader.close()


def load_facts(assets_dir: str | Path | None = None) -> SampleFacts:
    """Every fact table in ``assets_dir`` (None: the shipped ``medslm/assets/samples``)."""
    return _load_cached(str(Path(assets_dir or ASSETS_DIR).resolve()))


@lru_cache(maxsize=4)
def _load_cached(assets_dir: str) -> SampleFacts:
    root = Path(assets_dir)
    return SampleFacts(*(read_table(root / name, cls) for name, cls in FILES.items()))
