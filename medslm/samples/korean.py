"""The Korean (KorMedMCQA-style) sample questions of the four subjects, built from ``korean_*.yaml``.

The facts (clinical cases, medical law, nursing, pharmacology and dental tables) are data in
``medslm/assets/samples/korean_*.yaml``; this module holds the question wording around them, the
Korean particles (:func:`josa`) and the patients drawn from the caller's RNG. The order of the RNG
calls fixes the committed sample files, so it must not change without regenerating them
(``tests/test_samples_tokenizer.py`` checks).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from medslm.samples.drafts import Draft, fixed
from medslm.samples.facts import (
    FixedItem,
    KoDisease,
    KoreanDentist,
    KoreanLaw,
    KoreanNurse,
    RetentionRecord,
    SampleFacts,
)


def _has_final(word: str) -> bool:
    """Whether ``word`` is read with a final consonant (받침), which picks the Korean particle."""
    for ch in reversed(word):
        if "가" <= ch <= "힣":
            return (ord(ch) - 0xAC00) % 28 != 0
        if ch.isdigit():
            return ch in "013678"  # 영 일 삼 육 칠 팔
        if ch.isascii() and ch.isalpha():
            return ch.lower() in "lmnr"  # 엘 엠 엔 알
    return False


def josa(word: str, pair: str) -> str:
    """``word`` plus the right particle of ``pair`` ("을/를", "이/가", "은/는", "과/와", "으로/로")."""
    with_final, without = pair.split("/")
    last = next((c for c in reversed(word) if "가" <= c <= "힣"), "")
    if pair == "으로/로" and last and (ord(last) - 0xAC00) % 28 == 8:  # ㄹ 받침 takes 로
        return word + without
    return word + (with_final if _has_final(word) else without)


def _ko_person(ages: tuple[int, int], sex: str | None, rng: random.Random) -> str:
    age = rng.randint(*ages)
    sex = sex or rng.choice(("남자", "여자"))
    if age < 18:
        sex = "남아" if sex == "남자" else "여아"
    return f"{age}세 {sex}"


def _written(item: FixedItem) -> Draft:
    return fixed(item.question, item.answer, item.pool, item.explanation)


# --- doctor --------------------------------------------------------------------------------


def _ko_disease_drafts(diseases: Sequence[KoDisease], rng: random.Random) -> list[Draft]:
    names = [d.name for d in diseases]
    treatments = [d.treatment for d in diseases]
    tests = [d.test for d in diseases if d.test]
    drafts = []
    for d in diseases:
        place = rng.choice(("내원하였다", "응급실에 왔다", "외래를 방문하였다"))
        person = _ko_person(d.ages, d.sex, rng)
        intro = f"{josa(person, '이/가')} {place}. {d.symptoms} {d.exam}"
        full = f"{intro} {d.result}".rstrip()
        drafts.append(
            Draft(
                f"{full} 가장 가능성이 높은 진단은?",
                d.name,
                tuple(names),
                f"{d.symptoms} {d.exam} 이는 {d.name}의 전형적인 소견이다.",
            )
        )
        person = _ko_person(d.ages, d.sex, rng)
        said = f" {josa(d.name, '으로/로')} 진단되었다." if rng.random() < 0.5 else ""
        drafts.append(
            Draft(
                f"{josa(person, '이/가')} {place}. {d.symptoms} {d.exam} {d.result}".rstrip()
                + f"{said} 가장 적절한 치료는?",
                d.treatment,
                tuple(treatments),
                f"{d.name}의 우선 치료는 {d.treatment}이다.",
            )
        )
        if d.test:
            person = _ko_person(d.ages, d.sex, rng)
            drafts.append(
                Draft(
                    f"{josa(person, '이/가')} {place}. {d.symptoms} {d.exam} 진단을 위해 우선 시행할 검사는?",
                    d.test,
                    tuple(tests),
                    f"{josa(d.name, '이/가')} 의심되며 진단에 필요한 검사는 {d.test}이다.",
                )
            )
    return drafts


def _retention_drafts(records: Sequence[RetentionRecord], years_pool: Sequence[str], nurse: bool = False) -> list[Draft]:
    def question(rec: str) -> str:
        if nurse:
            return f"의료법상 {rec}의 보존 기간으로 옳은 것은?"
        return f"의료법 시행규칙상 의료기관 개설자가 {josa(rec, '을/를')} 보존하여야 하는 기간은?"

    return [
        fixed(
            question(r.record),
            r.years,
            years_pool,
            f"의료법 시행규칙 제15조에 따라 {josa(r.record, '은/는')} {r.years}간 보존한다.",
        )
        for r in records
    ]


def _infectious_drafts(law: KoreanLaw) -> list[Draft]:
    pool = (*law.infectious_classes, law.not_notifiable)
    return [
        fixed(
            f"「감염병의 예방 및 관리에 관한 법률」상 {josa(disease, '은/는')} 몇 급 감염병인가?",
            cls,
            pool,
            f"{josa(disease, '은/는')} {cls}에 속한다.",
        )
        for cls, diseases in law.infectious_classes.items()
        for disease in diseases
    ]


def doctor_drafts(rng: random.Random, facts: SampleFacts) -> list[Draft]:
    law = facts.law
    return [
        *_ko_disease_drafts(facts.doctor.diseases, rng),
        *_retention_drafts(law.record_retention, law.retention_years),
        *map(_written, law.doctor_items),
        *_infectious_drafts(law),
    ]


# --- nurse ---------------------------------------------------------------------------------


def _numeric_pool(answer: int, unit: str) -> tuple[str, ...]:
    values = dict.fromkeys(
        v
        for v in (answer // 2, answer * 2 // 3, answer * 4 // 5, answer * 5 // 4, answer * 3 // 2, answer * 2)
        if v != answer
    )
    return tuple(f"{v} {unit}" for v in values)


def _nurse_calc_drafts(nurse: KoreanNurse) -> list[Draft]:
    drafts = []
    for r in nurse.iv_rates:
        vol, hours = r.volume_ml, r.hours
        rate = vol // hours
        drafts.append(
            fixed(
                f"수액 {vol:,} mL를 {hours}시간 동안 일정한 속도로 주입하려고 한다. 시간당 주입량은?",
                f"{rate} mL/시간",
                _numeric_pool(rate, "mL/시간"),
                f"{vol:,} mL ÷ {hours}시간 = {rate} mL/시간이다.",
            )
        )
    for r in nurse.drip_rates:
        vol, hours, factor = r.volume_ml, r.hours, r.drops_per_ml
        drops = vol * factor // (hours * 60)
        drafts.append(
            fixed(
                f"수액 {vol:,} mL를 {hours}시간 동안 점적 주입한다. 점적계수가 {factor} gtt/mL일 때 분당 방울 수는?",
                f"{drops} gtt/분",
                _numeric_pool(drops, "gtt/분"),
                f"{vol:,} mL × {factor} gtt/mL ÷ ({hours} × 60분) = {drops} gtt/분이다.",
            )
        )
    return drafts


def nurse_drafts(rng: random.Random, facts: SampleFacts) -> list[Draft]:
    nurse, law = facts.nurse, facts.law
    drafts = [
        fixed(
            f"{josa(d, '을/를')} 앓는 환자를 간호할 때 표준주의와 함께 적용해야 하는 전파경로별 주의는?",
            p,
            nurse.precautions,
            f"{josa(d, '은/는')} {p}가 필요하다.",
        )
        for d, p in nurse.isolation.items()
    ]
    drafts += [fixed(q, a, nurse.positions, f"이 경우 적절한 체위는 {a}이다.") for q, a in nurse.position_items.items()]
    drafts += [
        fixed(f"성인의 정상 {c.question} 범위로 옳은 것은?", c.answer, c.wrong, f"성인의 정상 {josa(c.question, '은/는')} {c.answer}이다.")
        for c in nurse.normal_values
    ]
    drafts += [fixed(c.question, c.answer, c.wrong, f"정답 부위는 {c.answer}이다.") for c in nurse.injection_sites]
    actions = [a.action for a in nurse.priority_actions]
    for a in nurse.priority_actions:
        person = _ko_person(a.ages, None, rng)
        drafts.append(
            fixed(
                f"{a.situation.format(p=person)} 간호사가 우선 수행할 중재는?",
                a.action,
                actions,
                f"이 상황에서 가장 먼저 할 일은 다음과 같다: {a.action}",
            )
        )
    drafts += map(_written, nurse.maternal_child)
    drafts += _nurse_calc_drafts(nurse)
    drafts += _retention_drafts([r for r in law.record_retention if r.nurse], law.retention_years, nurse=True)
    drafts += map(_written, law.nurse_items)
    return drafts


# --- pharm ---------------------------------------------------------------------------------


def pharm_drafts(rng: random.Random, facts: SampleFacts) -> list[Draft]:
    pharm = facts.pharm
    mechs = list(pharm.mechanisms.values())
    drafts = []
    for drug, mech in pharm.mechanisms.items():
        q = rng.choice((f"{drug}의 작용기전으로 옳은 것은?", f"{drug}의 주된 약리작용 기전은?"))
        drafts.append(fixed(q, mech, mechs, f"{josa(drug, '은/는')} {mech} 작용을 한다."))
    effects = list(pharm.adverse_effects.values())
    for drug, effect in pharm.adverse_effects.items():
        q = rng.choice(
            (
                f"{josa(drug, '을/를')} 복용하는 환자에게 복약지도할 때 주의해야 할 대표적인 부작용은?",
                f"{drug} 투여 시 특징적으로 나타날 수 있는 부작용은?",
            )
        )
        drafts.append(fixed(q, effect, effects, f"{drug}의 대표적 부작용은 {effect}이다."))
    antidotes = list(pharm.antidotes.values())
    for poison, antidote in pharm.antidotes.items():
        drafts.append(
            fixed(
                f"{poison} 중독 환자에게 투여하는 해독제로 옳은 것은?",
                antidote,
                antidotes,
                f"{poison} 중독의 해독제는 {antidote}이다.",
            )
        )
    members = list(pharm.drug_classes.values())
    for cls, member in pharm.drug_classes.items():
        drafts.append(fixed(f"다음 중 {cls}에 해당하는 약물은?", member, members, f"{josa(member, '은/는')} {cls}이다."))
    for h in pharm.half_lives:
        half, conc, n = h.half_life_hours, h.concentration_mg_per_l, h.half_lives
        answer = conc // 2**n
        pool = [f"{conc // 2**k} mg/L" for k in range(6) if k != n and conc // 2**k > 0] + [
            f"{conc - conc // (2 * n)} mg/L"
        ]
        drafts.append(
            fixed(
                f"반감기가 {half}시간인 약물의 혈중농도가 {conc} mg/L이다. 추가 투여 없이 {half * n}시간이 지난 후의 혈중농도는?",
                f"{answer} mg/L",
                pool,
                f"{half * n}시간은 반감기의 {n}배이므로 {conc} mg/L의 1/{2**n}인 {answer} mg/L이다.",
            )
        )
    return drafts


# --- dentist -------------------------------------------------------------------------------


def _fdi_name(dentist: KoreanDentist, quadrant: int, tooth: int) -> str:
    return f"{dentist.fdi_quadrants[quadrant]} {dentist.fdi_teeth[tooth]}"


def _fdi_drafts(dentist: KoreanDentist, rng: random.Random, n: int) -> list[Draft]:
    quadrants, teeth = dentist.fdi_quadrants, dentist.fdi_teeth
    codes = rng.sample([(q, t) for q in quadrants for t in teeth], n)
    drafts = []
    for q, t in codes:
        pool = [_fdi_name(dentist, oq, t) for oq in quadrants if oq != q]
        pool += [_fdi_name(dentist, q, ot) for ot in (t - 1, t + 1) if ot in teeth]
        drafts.append(
            fixed(
                f"FDI 치아 표기법에서 {q}{t}번 치아는?",
                _fdi_name(dentist, q, t),
                pool,
                f"첫째 자리 {josa(str(q), '은/는')} {quadrants[q]}, 둘째 자리 {josa(str(t), '은/는')} {josa(teeth[t], '을/를')} 뜻한다.",
            )
        )
    return drafts


def dentist_drafts(rng: random.Random, facts: SampleFacts) -> list[Draft]:
    dentist = facts.dentist
    drafts = list(map(_written, dentist.anatomy))
    microbes = list(dentist.oral_microbes.values())
    drafts += [
        fixed(f"{d}의 주요 원인 미생물은?", m, microbes, f"{d}의 주요 원인 미생물은 {m}이다.")
        for d, m in dentist.oral_microbes.items()
    ]
    drafts += [
        fixed(q, a, dentist.nerves, f"이 부위는 {josa(a, '이/가')} 지배한다.") for q, a in dentist.nerve_items.items()
    ]
    drafts += [fixed(q, a, dentist.materials, f"설명에 맞는 재료는 {a}이다.") for q, a in dentist.material_items.items()]
    names = [c.name for c in dentist.cases]
    treatments = [c.treatment for c in dentist.cases]
    for c in dentist.cases:
        person = _ko_person((18, 60), None, rng)
        drafts.append(
            fixed(
                f"{josa(person, '이/가')} 치통으로 내원하였다. {c.symptoms} {c.exam} 가장 가능성이 높은 진단은?",
                c.name,
                names,
                f"{c.symptoms} {c.exam} 이는 {c.name}의 소견이다.",
            )
        )
        person = _ko_person((18, 60), None, rng)
        drafts.append(
            fixed(
                f"{josa(person, '이/가')} 내원하였다. {c.symptoms} {c.exam} 적절한 처치는?",
                c.treatment,
                treatments,
                f"{c.name}에는 {josa(c.treatment, '을/를')} 시행한다.",
            )
        )
    ages = list(dentist.eruption.values())
    drafts += [
        fixed(f"영구치 {t}의 평균 맹출 시기는?", a, ages, f"{t}의 평균 맹출 시기는 {a}이다.")
        for t, a in dentist.eruption.items()
    ]
    drafts += _fdi_drafts(dentist, rng, 10)
    return drafts


#: subject -> every question its facts allow (drawn from the RNG in this order)
KO_DRAFTS: dict[str, Callable[[random.Random, SampleFacts], list[Draft]]] = {
    "doctor": doctor_drafts,
    "nurse": nurse_drafts,
    "pharm": pharm_drafts,
    "dentist": dentist_drafts,
}
