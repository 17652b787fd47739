"""The sample generator's fact tables (medslm/assets/samples/*.yaml) and their typed reader.

A malformed entry is a DataError naming the file, the line, the field and the entry; the command
turns it into one ``error:`` line and exit 2; YAML tags that would build Python objects are refused.
That the shipped tables give exactly the committed sample files is checked in
tests/test_samples_tokenizer.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medslm.data import DataError
from medslm.samples import facts as F

REPO = Path(__file__).resolve().parents[1]
ENGLISH = F.ASSETS_DIR / "english.yaml"


def test_every_shipped_table_is_read():
    # a stray file would be silently ignored, a missing one is an error
    assert sorted(p.name for p in F.ASSETS_DIR.iterdir()) == sorted(F.FILES)
    loaded = F.load_facts()
    assert [d.name for d in loaded.english.diseases][:2] == ["Community-acquired pneumonia", "Streptococcal pharyngitis"]
    assert loaded.dentist.fdi_quadrants[1] == "상악 우측"  # integer keys stay integers
    assert loaded.law.doctor_items[1].pool == loaded.law.authorities  # an alias shares the list


def _line_of(text: str, needle: str) -> int:
    return text[: text.index(needle)].count("\n") + 1


def _broken(tmp_path: Path, old: str, new: str, source: Path = ENGLISH) -> tuple[Path, str]:
    text = source.read_text(encoding="utf-8")
    assert text.count(old) >= 1, old
    path = tmp_path / source.name
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path, text


def test_a_disease_missing_a_field_names_file_line_field_and_entry(tmp_path):
    path, text = _broken(tmp_path, "    treatment: Appendectomy\n", "")
    with pytest.raises(DataError) as err:
        F.read_table(path, F.EnglishFacts)
    line = _line_of(text, "  - name: Acute appendicitis")
    assert str(err.value) == (
        f"{path}:line {line}: field 'diseases[2].treatment': missing: give a string (entry 'Acute appendicitis')"
    )


@pytest.mark.parametrize(
    ("old", "new", "at", "field", "reason"),
    [
        ("treatment: Appendectomy", "treatment: 12", "treatment: 12", "diseases[2].treatment", "must be a string, got 12"),
        ("vitals: febrile", "vitals: feverish", "vitals: feverish", "diseases[0].vitals", "must be one of normal, febrile, tachy, shock"),
        ("sex: null", "sex: yes", "sex: yes", "diseases[0].sex", "YAML reads yes/no/on/off/true/false unquoted as a boolean"),
        ("ages: [15, 35]", "ages: [35, 15]", "ages: [35, 15]", "diseases[2].ages", "the youngest age 35 is above the oldest 15"),
        ("ages: [15, 35]", "ages: [15, 35, 40]", "ages: [15, 35, 40]", "diseases[2].ages", "must be a list of 2, got 3"),
        ("    treatment: Appendectomy\n", "    treatment: Appendectomy\n    treatmnt: x\n", "treatmnt: x", "diseases[2].treatmnt", "unknown key"),
        ('history: "{He} has had nausea', 'history: "{Hee} has had nausea', "{Hee}", "diseases[2].history", "unknown placeholder {Hee}"),
        ('"{He} drinks two beers most evenings."', '"{He drinks two beers"', "{He drinks", "history_adult.alcohol[2]", "not a valid template"),
        ("  alcohol:\n", "  smoking:\n", "  smoking:\n    - \"{He} drinks one", "history_adult.smoking", "given twice"),
    ],
    ids=["number", "literal", "yes", "ages-order", "ages-length", "unknown-key", "placeholder", "brace", "duplicate"],
)
def test_a_bad_english_value_names_its_line_and_field(tmp_path, old, new, at, field, reason):
    path, _ = _broken(tmp_path, old, new)
    with pytest.raises(DataError) as err:
        F.read_table(path, F.EnglishFacts)
    bad = path.read_text(encoding="utf-8")
    assert err.value.where == f"{path}:line {_line_of(bad, at)}"
    assert err.value.field == field
    assert reason in err.value.reason


@pytest.mark.parametrize(
    ("name", "old", "new", "field", "reason"),
    [
        ("korean_dentist.yaml", "    treatment: 우식 제거 후 수복\n", "", "cases[0].treatment", "missing: give a string (entry '가역적 치수염')"),
        ("korean_dentist.yaml", "  1: 상악 우측", '  "1": 상악 우측', "fdi_quadrants.1", "the key must be an integer"),
        ("korean_pharm.yaml", "  리시노프릴: 마른기침\n", "  리시노프릴: 마른기침\n  리시노프릴: 기침\n", "adverse_effects.리시노프릴", "given twice"),
        ("korean_nurse.yaml", "{p} 환자가 수혈", "{patient} 환자가 수혈", "priority_actions[0].situation", "unknown placeholder {patient} (known: {p})"),
        ("korean_doctor.yaml", "sex: 여자", "sex: 여", "diseases[2].sex", "must be one of 남자, 여자 or null, got '여' (entry '그레이브스병')"),
    ],
    ids=["missing", "key-type", "duplicate", "placeholder", "literal"],
)
def test_a_bad_korean_value_names_its_field_and_entry(tmp_path, name, old, new, field, reason):
    path, _ = _broken(tmp_path, old, new, F.ASSETS_DIR / name)
    with pytest.raises(DataError) as err:
        F.read_table(path, F.FILES[name])
    assert err.value.where.startswith(f"{path}:line ")
    assert err.value.field == field and reason in err.value.reason


def test_yaml_that_would_build_python_objects_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path, _ = _broken(
        tmp_path, "treatment: Appendectomy", f'treatment: !!python/object/apply:os.system ["touch {marker}"]'
    )
    with pytest.raises(DataError, match="not valid YAML"):
        F.read_table(path, F.EnglishFacts)
    assert not marker.exists()


def test_the_command_prints_one_error_line_and_writes_nothing(tmp_path):
    facts = tmp_path / "facts"
    shutil.copytree(F.ASSETS_DIR, facts)
    _broken(facts, "    test: CT scan of the abdomen and pelvis\n", "")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "medslm.samples", "--facts", str(facts), "--out", str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"error: {facts / 'english.yaml'}:line {_line_of(ENGLISH.read_text(encoding='utf-8'), '  - name: Acute appendicitis')}: "
        "field 'diseases[2].test': missing: give a string or null (entry 'Acute appendicitis')"
    ]
    assert not out.exists()
