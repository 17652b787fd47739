"""The English (MedQA-style) sample questions: case vignettes built from ``english.yaml``.

The facts (diseases, drugs, nerve injuries, history sentences) are data in
``medslm/assets/samples/english.yaml``; this module holds the wording around them and draws ages,
sexes, vital signs, laboratory values and extra history sentences from the caller's RNG. The
order of the RNG calls fixes the committed sample files, so it must not change without
regenerating them (``tests/test_samples_tokenizer.py`` checks).
"""

from __future__ import annotations

import random
import re

from medslm.records import LETTERS
from medslm.samples.drafts import Draft
from medslm.samples.facts import Disease, Drug, EnglishFacts, NerveInjury

EN_WORDS = (60, 150)  # target word range of an English question
EN_MAX_EXTRAS = 6  # at most this many optional history sentences per question


def _pronouns(sex: str) -> dict[str, str]:
    """Values for the ``{He}``/``{his}``/``{him}`` (or ``{She}``/``{her}``) placeholders of the tables."""
    male = sex in ("man", "boy")
    he, his, him = ("he", "his", "him") if male else ("she", "her", "her")
    words = {"he": he, "his": his, "him": him, "He": he.capitalize(), "His": his.capitalize()}
    # tables written for a woman use {She}/{her}; "her" is only ever possessive there
    words.update({"she": he, "She": he.capitalize(), "her": his, "Her": his.capitalize()})
    return words


def _sex_word(sex: str | None, age: int, rng: random.Random) -> str:
    adult = sex or rng.choice(("man", "woman"))
    if age < 18:
        return "boy" if adult == "man" else "girl"
    return adult


def _vitals(kind: str, pron: dict[str, str], rng: random.Random) -> str:
    temp = round(rng.uniform(38.3, 39.6), 1) if kind == "febrile" else round(rng.uniform(36.6, 37.2), 1)
    pulse = {"tachy": rng.randint(104, 126), "shock": rng.randint(118, 136)}.get(kind, rng.randint(66, 98))
    resp = rng.randint(22, 30) if kind in ("tachy", "shock") else rng.randint(12, 18)
    if kind == "shock":
        sys_bp, dia_bp = rng.randint(76, 90), rng.randint(44, 56)
    else:
        sys_bp, dia_bp = rng.randint(110, 138), rng.randint(68, 88)
    fahr = round(temp * 9 / 5 + 32, 1)
    return (
        f"{pron['His']} temperature is {temp}°C ({fahr}°F), pulse is {pulse}/min, respirations are "
        f"{resp}/min, and blood pressure is {sys_bp}/{dia_bp} mm Hg."
    )


def _words(text: str) -> int:
    return len(text.split())


def _assemble_en(parts: list[str], extras: list[str], stem: str, at: int, target: int) -> str:
    """The vignette ``parts`` with extra sentences inserted at ``at`` until it is about ``target`` words."""
    n = 0
    while True:
        text = " ".join(p for p in [*parts[:at], *extras[:n], *parts[at:], stem] if p)
        if _words(text) >= target or n == len(extras):
            break
        n += 1
    while _words(text) > EN_WORDS[1] and n > 0:
        n -= 1
        text = " ".join(p for p in [*parts[:at], *extras[:n], *parts[at:], stem] if p)
    return text


def _extras(age: int, pron: dict[str, str], rng: random.Random, facts: EnglishFacts) -> tuple[list[str], int]:
    """History sentences in random order (one per group) and a target length in words."""
    groups = list((facts.history_child if age < 18 else facts.history_adult).values())
    rng.shuffle(groups)
    sentences = []
    for group in groups[:EN_MAX_EXTRAS]:
        fitting = [
            alt if isinstance(alt, str) else alt.text
            for alt in group
            if isinstance(alt, str) or alt.ages[0] <= age <= alt.ages[1]
        ]
        sentences.append(rng.choice(fitting).format(**pron))
    return sentences, rng.randint(EN_WORDS[0], EN_WORDS[1] - 10)


def _normal_labs(rng: random.Random) -> str:
    """A normal laboratory panel, used only where it cannot contradict the case."""
    return (
        f"Laboratory studies show a hemoglobin concentration of {rng.randint(128, 152) / 10} g/dL, a leukocyte count of "
        f"{rng.randint(52, 94) * 100:,}/mm3, and a platelet count of {rng.randint(180, 360) * 1000:,}/mm3; serum creatinine is "
        f"{rng.randint(7, 11) / 10} mg/dL."
    )


def _disease_question(d: Disease, kind: str, rng: random.Random, facts: EnglishFacts) -> str:
    age = rng.randint(*d.ages)
    sex = _sex_word(d.sex, age, rng)
    pron = _pronouns(sex)
    opening = f"A {age}-year-old {sex} {d.setting.format(**pron)} because of {d.complaint.format(**pron)}."
    parts = [opening, d.history.format(**pron), _vitals(d.vitals, pron, rng), d.exam.format(**pron)]
    if kind != "test" and d.result:
        parts.append(d.result)
    stem = {
        "dx": "Which of the following is the most likely diagnosis?",
        "tx": "Which of the following is the most appropriate next step in management?",
        "test": "Which of the following is the most appropriate next step to confirm the diagnosis?",
    }[kind]
    if kind == "tx" and rng.random() < 0.5:
        name = d.name if d.proper_noun else d.name[0].lower() + d.name[1:]
        parts.append(f"A diagnosis of {name} is made.")
    extras, target = _extras(age, pron, rng, facts)
    return _assemble_en(parts, extras, stem, at=2, target=target)


def _drug_question(drug: Drug, kind: str, rng: random.Random, facts: EnglishFacts) -> str:
    age = rng.randint(28, 72)
    sex = drug.sex or rng.choice(("man", "woman"))
    pron = _pronouns(sex)
    opening = rng.choice(
        (
            f"A {age}-year-old {sex} comes to the physician for a follow-up examination.",
            f"A {age}-year-old {sex} comes to the clinic to discuss treatment options.",
            f"A {age}-year-old {sex} is seen in the outpatient clinic.",
        )
    )
    parts = [
        opening,
        f"{pron['He']} was recently diagnosed with {drug.indication}.",
        drug.detail.format(**pron),
        _vitals("normal", pron, rng),
    ]
    if rng.random() < 0.5:
        parts.append(_normal_labs(rng))
    parts.append(f"{pron['He']} is started on {drug.name}.")
    if kind == "mechanism":
        stem = rng.choice(
            (
                "Which of the following is the primary mechanism of action of this drug?",
                "The beneficial effect of this drug is most likely due to which of the following mechanisms?",
            )
        )
    else:
        stem = rng.choice(
            (
                "This patient should be monitored most closely for which of the following adverse effects?",
                "This patient is at greatest risk for which of the following adverse effects of this drug?",
            )
        )
    extras, target = _extras(age, pron, rng, facts)
    return _assemble_en(parts, extras, stem, at=2, target=target)


def _nerve_question(n: NerveInjury, rng: random.Random, facts: EnglishFacts) -> str:
    age = rng.randint(20, 65)
    sex = n.sex or rng.choice(("man", "woman"))
    pron = _pronouns(sex)
    if n.surgical:
        days = rng.randint(2, 14)
        parts = [
            f"A {age}-year-old {sex} is evaluated {days} days after {n.event.format(**pron)}.",
            f"{pron['He']} reports no fever or wound drainage.",
            _vitals("normal", pron, rng),
            f"Examination shows {n.deficit.format(**pron)}.",
        ]
        if rng.random() < 0.5:
            parts.insert(3, _normal_labs(rng))
        stem = "Which of the following nerves was most likely injured?"
    else:
        parts = [
            f"A {age}-year-old {sex} is brought to the emergency department after {n.event.format(**pron)}.",
            f"{pron['He']} reports severe pain.",
            _vitals("normal", pron, rng),
            f"X-rays show {n.finding}.",
            f"Examination shows {n.deficit.format(**pron)}.",
        ]
        stem = "Which of the following nerves is most likely injured?"
    extras, target = _extras(age, pron, rng, facts)
    return _assemble_en(parts, extras, stem, at=2, target=target)


def english_drafts(rng: random.Random, facts: EnglishFacts) -> list[Draft]:
    """Every English question the fact tables allow (one per fact and question kind), shuffled."""
    drafts: list[Draft] = []
    names = [d.name for d in facts.diseases]
    treatments = [d.treatment for d in facts.diseases]
    tests = [d.test for d in facts.diseases if d.test]
    for d in facts.diseases:
        drafts.append(Draft(_disease_question(d, "dx", rng, facts), d.name, tuple(names), meta="step2&3"))
        drafts.append(Draft(_disease_question(d, "tx", rng, facts), d.treatment, tuple(treatments), meta="step2&3"))
        if d.test:
            drafts.append(Draft(_disease_question(d, "test", rng, facts), d.test, tuple(tests), meta="step2&3"))
    mechanisms = [d.mechanism for d in facts.drugs]
    adverse = [d.adverse for d in facts.drugs]
    for drug in facts.drugs:
        drafts.append(Draft(_drug_question(drug, "mechanism", rng, facts), drug.mechanism, tuple(mechanisms), meta="step1"))
        drafts.append(Draft(_drug_question(drug, "adverse", rng, facts), drug.adverse, tuple(adverse), meta="step1"))
    nerves = [n.nerve for n in facts.nerve_injuries]
    for n in facts.nerve_injuries:
        drafts.append(Draft(_nerve_question(n, rng, facts), n.nerve, tuple(nerves), meta="step1"))
    rng.shuffle(drafts)
    return drafts


_METAMAP_SPLIT = re.compile(
    r"[;:?()]|[,.](?=\s|$)|\b(?:a|an|the|of|with|and|or|is|are|was|were|has|have|had|to|for|in|on|at|by|which|following|this|that|"
    r"after|because|most|likely|her|his|she|he|there|be|from)\b",
    re.IGNORECASE,
)


def metamap_phrases(question: str) -> list[str]:
    """Short noun-ish chunks of the question, like MedQA's ``metamap_phrases`` field."""
    chunks = (c.strip() for c in _METAMAP_SPLIT.split(question))
    return [c for c in chunks if c and not c.isdigit()]


def medqa_record(draft: Draft, options: list[str]) -> dict[str, object]:
    """One jind11/MedQA US JSON Lines object (key order as in the real files)."""
    letters = LETTERS[: len(options)]
    answer_idx = letters[options.index(draft.answer)]
    return {
        "question": draft.question,
        "answer": draft.answer,
        "options": dict(zip(letters, options, strict=True)),
        "meta_info": draft.meta,
        "answer_idx": answer_idx,
        "metamap_phrases": metamap_phrases(draft.question),
    }


def medqa_hf_record(item_id: str, draft: Draft, options: list[str]) -> dict[str, object]:
    """One GBaker/MedQA-USMLE-4-options-hf row."""
    row: dict[str, object] = {"id": item_id, "sent1": draft.question, "sent2": ""}
    for i, text in enumerate(options):
        row[f"ending{i}"] = text
    row["label"] = options.index(draft.answer)
    return row
