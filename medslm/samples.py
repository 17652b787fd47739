"""Deterministic generator of the small sample data files shipped in ``data/samples/``.

The files use the exact on-disk formats of the real datasets, so every reader and the whole
pipeline can run on a fresh machine with no downloads:

- ``medqa/US/{train,dev,test}.jsonl`` (50/10/20 items): jind11/MedQA US, JSON Lines with
  ``question``, ``answer`` (text of the right option), ``options`` (``{"A": .., "E": ..}``, five
  options), ``meta_info`` (``step1`` | ``step2&3``), ``answer_idx`` and ``metamap_phrases``.
- ``medqa/medqa_4options_hf.jsonl`` (10 items): the GBaker/MedQA-USMLE-4-options-hf layout
  (``id``, ``sent1``, ``sent2``, ``ending0..3``, integer ``label``).
- ``kormedmcqa/<subject>/<split>-00000-of-00001.parquet`` for the four configs of
  sean0042/KorMedMCQA (``doctor``, ``nurse``, ``pharm``, ``dentist``) and the splits ``train`` (30),
  ``dev`` (8), ``test`` (12) and ``fewshot`` (5); columns ``subject, year, period, q_number,
  question, A..E, answer (1..5, 1 = A), cot`` (``cot`` is empty except in ``fewshot``).

The items are synthetic but plausible: they are built from small hand-written fact tables
(drug -> mechanism / adverse effect, disease -> vignette / first-line treatment / confirmatory test,
nerve injuries, nursing practice, dental anatomy, Korean medical law), with distractors drawn from
the same table. Everything is driven by ``random.Random(0)``, so the output is byte-identical on
every run; ``tests/test_samples_tokenizer.py`` checks that the committed files match.

Run ``python -m medslm.samples`` to (re)write ``data/samples/``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SAMPLES_DIR = REPO_ROOT / "data" / "samples"
SEED = 0
LETTERS = "ABCDE"

MEDQA_SPLITS = {"train": 50, "dev": 10, "test": 20}
MEDQA_HF_ITEMS = 10
KORMED_SUBJECTS = ("doctor", "nurse", "pharm", "dentist")
KORMED_SPLITS = {"train": 30, "dev": 8, "test": 12, "fewshot": 5}
# the years each split is drawn from, like the real dataset (older exams train, newer ones test)
KORMED_YEARS = {
    "train": range(2012, 2020),
    "dev": range(2020, 2022),
    "test": range(2022, 2024),
    "fewshot": range(2020, 2022),
}
KORMED_COLUMNS = ("subject", "year", "period", "q_number", "question", "A", "B", "C", "D", "E", "answer", "cot")
KORMED_INT_COLUMNS = ("year", "period", "q_number", "answer")
EN_WORDS = (60, 150)  # target word range of an English question


@dataclass(frozen=True)
class Draft:
    """A question before its options are laid out: the right answer and a pool of wrong ones."""

    question: str
    answer: str
    pool: tuple[str, ...]
    explanation: str = ""
    meta: str = ""  # MedQA meta_info


# =============================================================================================
# Shared helpers
# =============================================================================================


def _balanced_positions(n_items: int, n_options: int, rng: random.Random) -> list[int]:
    """Answer positions 0..n_options-1, as equal in number as ``n_items`` allows, shuffled."""
    positions = [i % n_options for i in range(n_items)]
    rng.shuffle(positions)
    return positions


def _layout(draft: Draft, n_options: int, position: int, rng: random.Random) -> list[str]:
    """The options of ``draft``: ``n_options - 1`` distractors from its pool, the answer at ``position``."""
    pool = [p for p in dict.fromkeys(draft.pool) if p != draft.answer]
    if len(pool) < n_options - 1:
        raise ValueError(f"only {len(pool)} distractors for {draft.question[:60]!r}")
    options = rng.sample(pool, n_options - 1)
    options.insert(position, draft.answer)
    return options


def _pick_distinct(drafts: list[Draft], n: int, seen: set[str]) -> list[Draft]:
    """The first ``n`` drafts whose question text is not in ``seen`` (which is updated)."""
    out: list[Draft] = []
    for d in drafts:
        if d.question in seen:
            continue
        seen.add(d.question)
        out.append(d)
        if len(out) == n:
            return out
    raise ValueError(f"only {len(out)} distinct questions available, need {n}")


# =============================================================================================
# English (MedQA-style) fact tables
# =============================================================================================


@dataclass(frozen=True)
class Disease:
    name: str
    sex: str | None  # "man" | "woman" | None (either)
    ages: tuple[int, int]
    setting: str  # "comes to the physician", "comes to the emergency department", ...
    complaint: str  # follows "because of"
    history: str
    exam: str
    result: str  # a lab/imaging result that points at the diagnosis ("" if none)
    vitals: str  # "normal" | "febrile" | "tachy" | "shock"
    treatment: str
    test: str | None  # the test that confirms the diagnosis, or None


EN_DISEASES: tuple[Disease, ...] = (
    Disease(
        "Community-acquired pneumonia",
        None,
        (25, 60),
        "comes to the physician",
        "a 3-day history of fever, chills, and a cough productive of yellow sputum",
        "{He} also reports sharp right-sided chest pain that worsens with deep inspiration.",
        "Crackles and dullness to percussion are heard over the right lower lung field.",
        "A chest x-ray shows a right lower lobe consolidation.",
        "febrile",
        "Oral amoxicillin",
        "Chest x-ray",
    ),
    Disease(
        "Streptococcal pharyngitis",
        None,
        (7, 14),
        "is brought to the physician by {his} mother",
        "a 2-day history of sore throat and fever",
        "{He} has not had a cough or runny nose.",
        "The tonsils are enlarged with white exudates, and the anterior cervical lymph nodes are tender.",
        "",
        "febrile",
        "Oral penicillin V",
        "Rapid streptococcal antigen test",
    ),
    Disease(
        "Acute appendicitis",
        None,
        (15, 35),
        "comes to the emergency department",
        "a 12-hour history of abdominal pain that began around the umbilicus and has moved to the right lower quadrant",
        "{He} has had nausea and has not eaten since the pain began.",
        "There is tenderness with guarding at McBurney point.",
        "Leukocyte count is 14,200/mm3.",
        "febrile",
        "Appendectomy",
        "CT scan of the abdomen and pelvis",
    ),
    Disease(
        "Diabetic ketoacidosis",
        None,
        (16, 30),
        "is brought to the emergency department",
        "a 2-day history of nausea, vomiting, and diffuse abdominal pain",
        "{He} has had increased thirst and urination for the past month.",
        "{His} breathing is deep and rapid, and the mucous membranes are dry.",
        "Serum glucose is 540 mg/dL, bicarbonate is 10 mEq/L, and the anion gap is 24 mEq/L.",
        "tachy",
        "Intravenous 0.9% saline",
        "Serum beta-hydroxybutyrate measurement",
    ),
    Disease(
        "Graves disease",
        "woman",
        (25, 45),
        "comes to the physician",
        "a 3-month history of palpitations, heat intolerance, and a 6-kg weight loss despite increased appetite",
        "{She} has also noticed a fine tremor of {her} hands.",
        "There is bilateral proptosis and a diffusely enlarged, nontender thyroid gland with a bruit.",
        "Serum TSH is undetectable, and free thyroxine is elevated.",
        "tachy",
        "Methimazole",
        "Thyrotropin receptor antibody assay",
    ),
    Disease(
        "Hashimoto thyroiditis",
        "woman",
        (35, 60),
        "comes to the physician",
        "a 6-month history of fatigue, constipation, and cold intolerance",
        "{She} has gained 5 kg despite no change in {her} diet.",
        "{Her} skin is dry, and the relaxation phase of the ankle reflexes is delayed.",
        "Serum TSH is 18 uU/mL, and free thyroxine is decreased.",
        "normal",
        "Levothyroxine",
        "Serum TSH measurement",
    ),
    Disease(
        "Iron deficiency anemia",
        "woman",
        (20, 45),
        "comes to the physician",
        "a 4-month history of fatigue and shortness of breath on exertion",
        "{Her} menstrual periods are heavy and last 8 days.",
        "{She} has conjunctival pallor and spoon-shaped fingernails.",
        "Hemoglobin is 8.9 g/dL with a mean corpuscular volume of 68 um3.",
        "normal",
        "Oral ferrous sulfate",
        "Serum ferritin",
    ),
    Disease(
        "Pernicious anemia",
        None,
        (55, 75),
        "comes to the physician",
        "a 5-month history of fatigue and tingling in both feet",
        "{He} has had difficulty keeping {his} balance in the dark.",
        "Vibration and position sense are decreased in the lower extremities.",
        "Hemoglobin is 9.8 g/dL with a mean corpuscular volume of 112 um3; hypersegmented neutrophils are seen.",
        "normal",
        "Intramuscular cyanocobalamin",
        "Serum vitamin B12 concentration",
    ),
    Disease(
        "Gouty arthritis",
        "man",
        (45, 65),
        "comes to the emergency department",
        "severe pain and swelling of the right great toe that woke {him} from sleep",
        "The evening before, {he} attended a banquet and drank several beers.",
        "The first metatarsophalangeal joint is erythematous, warm, and exquisitely tender.",
        "Serum uric acid is 9.4 mg/dL.",
        "normal",
        "Oral indomethacin",
        "Arthrocentesis with synovial fluid analysis",
    ),
    Disease(
        "Migraine without aura",
        "woman",
        (18, 35),
        "comes to the physician",
        "recurrent episodes of throbbing left-sided headache that last up to a day",
        "The headaches are accompanied by nausea and sensitivity to light, and {she} prefers to lie in a dark room.",
        "Neurologic examination shows no abnormalities.",
        "",
        "normal",
        "Sumatriptan",
        None,
    ),
    Disease(
        "Lyme disease",
        None,
        (20, 50),
        "comes to the physician",
        "a 5-day history of fatigue, headache, and an expanding rash on {his} thigh",
        "Ten days earlier, {he} went hiking in the woods in Connecticut.",
        "There is a 9-cm erythematous annular lesion with central clearing.",
        "",
        "febrile",
        "Oral doxycycline",
        None,
    ),
    Disease(
        "Primary syphilis",
        "man",
        (20, 40),
        "comes to the physician",
        "a painless ulcer on {his} penis for 1 week",
        "{He} has had several new sexual partners over the past 3 months.",
        "There is a 1-cm clean-based ulcer with indurated borders and painless inguinal lymphadenopathy.",
        "",
        "normal",
        "Intramuscular benzathine penicillin G",
        "Dark-field microscopy of the ulcer exudate",
    ),
    Disease(
        "Acute cystitis",
        "woman",
        (20, 35),
        "comes to the physician",
        "a 2-day history of burning on urination and urinary frequency",
        "{She} is sexually active with one male partner.",
        "There is mild suprapubic tenderness; there is no costovertebral angle tenderness.",
        "Urinalysis shows positive leukocyte esterase and nitrites.",
        "normal",
        "Oral nitrofurantoin",
        "Urinalysis",
    ),
    Disease(
        "Duodenal ulcer",
        None,
        (35, 60),
        "comes to the physician",
        "a 2-month history of burning epigastric pain that improves with meals",
        "{He} sometimes wakes at night because of the pain.",
        "There is mild epigastric tenderness to palpation.",
        "Stool antigen testing for Helicobacter pylori is positive.",
        "normal",
        "Omeprazole, clarithromycin, and amoxicillin",
        "Upper endoscopy",
    ),
    Disease(
        "Asthma",
        None,
        (8, 16),
        "is brought to the physician by {his} father",
        "recurrent episodes of wheezing and cough, especially at night and after exercise",
        "{His} mother has allergic rhinitis.",
        "Diffuse expiratory wheezes are heard over both lung fields.",
        "",
        "normal",
        "Inhaled albuterol as needed",
        "Spirometry before and after a bronchodilator",
    ),
    Disease(
        "Anaphylaxis",
        None,
        (15, 40),
        "is brought to the emergency department",
        "lip swelling, hives, and difficulty breathing 10 minutes after eating a dessert that contained peanuts",
        "{He} appears anxious and is speaking in short phrases.",
        "There is diffuse urticaria, and inspiratory stridor is heard.",
        "",
        "shock",
        "Intramuscular epinephrine",
        None,
    ),
    Disease(
        "Pulmonary embolism",
        None,
        (35, 60),
        "comes to the emergency department",
        "sudden shortness of breath and sharp left-sided chest pain",
        "{He} returned from a 14-hour flight 2 days ago and has had swelling of {his} left calf.",
        "The left calf is tender and 3 cm larger in circumference than the right.",
        "Arterial blood gas analysis shows a PaO2 of 62 mm Hg.",
        "tachy",
        "Intravenous unfractionated heparin",
        "CT pulmonary angiography",
    ),
    Disease(
        "Acute inferior myocardial infarction",
        "man",
        (50, 70),
        "is brought to the emergency department",
        "45 minutes of crushing substernal chest pain radiating to the jaw",
        "{He} has type 2 diabetes mellitus and hypertension.",
        "{He} is diaphoretic, and an S4 gallop is heard.",
        "An ECG shows ST-segment elevations in leads II, III, and aVF.",
        "tachy",
        "Percutaneous coronary intervention",
        "12-lead electrocardiography",
    ),
    Disease(
        "Addison disease",
        "woman",
        (25, 50),
        "comes to the physician",
        "a 3-month history of fatigue, nausea, and lightheadedness when standing",
        "{She} has noticed darkening of the skin creases of {her} palms.",
        "There is hyperpigmentation of the buccal mucosa.",
        "Serum sodium is 128 mEq/L, and potassium is 5.9 mEq/L.",
        "shock",
        "Hydrocortisone",
        "ACTH stimulation test",
    ),
    Disease(
        "Myasthenia gravis",
        "woman",
        (25, 40),
        "comes to the physician",
        "a 2-month history of double vision and drooping eyelids that worsen toward the end of the day",
        "{She} also has difficulty chewing at the end of meals.",
        "Sustained upward gaze for 60 seconds produces worsening ptosis.",
        "",
        "normal",
        "Pyridostigmine",
        "Serum acetylcholine receptor antibodies",
    ),
    Disease(
        "Parkinson disease",
        "man",
        (60, 75),
        "comes to the physician",
        "a 1-year history of a tremor of the right hand",
        "{His} wife says that {he} walks more slowly and takes small steps.",
        "There is a resting tremor of the right hand, cogwheel rigidity, and bradykinesia.",
        "",
        "normal",
        "Carbidopa-levodopa",
        None,
    ),
    Disease(
        "Childhood absence epilepsy",
        None,
        (6, 9),
        "is brought to the physician by {his} parents",
        "episodes of staring several times a day",
        "{His} teacher reports that {he} stops talking in mid-sentence for several seconds and then resumes.",
        "Hyperventilation for 2 minutes provokes a typical episode.",
        "",
        "normal",
        "Ethosuximide",
        "Electroencephalography",
    ),
    Disease(
        "Bacterial meningitis",
        None,
        (18, 40),
        "is brought to the emergency department",
        "a 1-day history of fever, severe headache, and vomiting",
        "{He} has become increasingly confused over the past few hours.",
        "There is neck stiffness, and flexion of the neck causes flexion of the hips and knees.",
        "",
        "febrile",
        "Intravenous vancomycin and ceftriaxone",
        "Lumbar puncture",
    ),
    Disease(
        "Tension pneumothorax",
        "man",
        (20, 40),
        "is brought to the emergency department",
        "severe shortness of breath after a motorcycle collision",
        "{He} was wearing a helmet and did not lose consciousness.",
        "Breath sounds are absent on the right, the trachea is deviated to the left, and the neck veins are distended.",
        "",
        "shock",
        "Needle decompression",
        None,
    ),
    Disease(
        "Celiac disease",
        "woman",
        (20, 35),
        "comes to the physician",
        "a 6-month history of bloating, foul-smelling diarrhea, and a 4-kg weight loss",
        "{She} also has an itchy rash on {her} elbows.",
        "There are grouped vesicles over the extensor surfaces of the elbows.",
        "Hemoglobin is 10.2 g/dL with a mean corpuscular volume of 74 um3.",
        "normal",
        "Gluten-free diet",
        "Serum tissue transglutaminase IgA antibodies",
    ),
    Disease(
        "Scabies",
        None,
        (18, 30),
        "comes to the physician",
        "a 2-week history of an intensely itchy rash that is worse at night",
        "{His} roommate has similar symptoms.",
        "There are linear burrows in the web spaces between the fingers.",
        "",
        "normal",
        "Topical permethrin",
        None,
    ),
    Disease(
        "Giant cell arteritis",
        "woman",
        (65, 80),
        "comes to the physician",
        "a 3-week history of headache over {her} right temple and pain in {her} jaw while chewing",
        "{She} has also had stiffness of {her} shoulders in the morning.",
        "The right temporal artery is tender and nodular.",
        "Erythrocyte sedimentation rate is 92 mm/h.",
        "normal",
        "High-dose oral prednisone",
        "Temporal artery biopsy",
    ),
    Disease(
        "Acute cholecystitis",
        "woman",
        (40, 55),
        "comes to the emergency department",
        "a 10-hour history of right upper quadrant pain that began after a fatty meal",
        "{She} has had similar but briefer episodes over the past year.",
        "Inspiration is arrested during palpation of the right upper quadrant.",
        "Leukocyte count is 15,500/mm3.",
        "febrile",
        "Laparoscopic cholecystectomy",
        "Right upper quadrant ultrasonography",
    ),
)


@dataclass(frozen=True)
class Drug:
    name: str
    indication: str  # follows "was recently diagnosed with"
    detail: str
    mechanism: str
    adverse: str


EN_DRUGS: tuple[Drug, ...] = (
    Drug(
        "metformin",
        "type 2 diabetes mellitus",
        "{His} hemoglobin A1c is 7.9%.",
        "Decreased hepatic gluconeogenesis",
        "Lactic acidosis",
    ),
    Drug(
        "lisinopril",
        "essential hypertension",
        "Repeated blood pressure measurements have averaged 152/96 mm Hg.",
        "Inhibition of angiotensin-converting enzyme",
        "Persistent dry cough",
    ),
    Drug(
        "atorvastatin",
        "hypercholesterolemia",
        "Fasting serum LDL cholesterol is 196 mg/dL.",
        "Inhibition of HMG-CoA reductase",
        "Myopathy",
    ),
    Drug(
        "warfarin",
        "a deep venous thrombosis of the left leg",
        "Duplex ultrasonography confirmed a thrombus in the popliteal vein.",
        "Inhibition of vitamin K epoxide reductase",
        "Skin necrosis",
    ),
    Drug(
        "amiodarone",
        "recurrent ventricular tachycardia",
        "An implantable cardioverter-defibrillator was placed last year.",
        "Blockade of potassium channels prolonging repolarization",
        "Pulmonary fibrosis",
    ),
    Drug(
        "lithium",
        "bipolar I disorder",
        "{He} was hospitalized last month for a manic episode.",
        "Inhibition of inositol monophosphatase",
        "Nephrogenic diabetes insipidus",
    ),
    Drug(
        "hydrochlorothiazide",
        "stage 1 hypertension",
        "{His} serum creatinine concentration is normal.",
        "Inhibition of the sodium-chloride cotransporter in the distal convoluted tubule",
        "Hyperuricemia",
    ),
    Drug(
        "furosemide",
        "heart failure with pulmonary congestion",
        "A chest x-ray shows bilateral interstitial edema.",
        "Inhibition of the Na+-K+-2Cl- cotransporter in the thick ascending limb",
        "Ototoxicity",
    ),
    Drug(
        "spironolactone",
        "heart failure with reduced ejection fraction",
        "Echocardiography shows an ejection fraction of 30%.",
        "Antagonism of the mineralocorticoid receptor",
        "Gynecomastia",
    ),
    Drug(
        "isoniazid",
        "latent tuberculosis infection",
        "An interferon-gamma release assay is positive, and a chest x-ray is normal.",
        "Inhibition of mycolic acid synthesis",
        "Peripheral neuropathy",
    ),
    Drug(
        "ethambutol",
        "active pulmonary tuberculosis",
        "Sputum smears show acid-fast bacilli.",
        "Inhibition of arabinosyltransferase",
        "Optic neuritis",
    ),
    Drug(
        "clozapine",
        "treatment-resistant schizophrenia",
        "Two previous antipsychotic trials did not control {his} symptoms.",
        "Antagonism of dopamine D4 and serotonin 5-HT2A receptors",
        "Agranulocytosis",
    ),
    Drug(
        "methotrexate",
        "rheumatoid arthritis",
        "{He} has morning stiffness of the hands that lasts 2 hours.",
        "Inhibition of dihydrofolate reductase",
        "Hepatotoxicity",
    ),
    Drug(
        "gentamicin",
        "a complicated urinary tract infection",
        "Urine culture grows Pseudomonas aeruginosa.",
        "Binding to the 30S ribosomal subunit causing misreading of mRNA",
        "Nephrotoxicity",
    ),
    Drug(
        "omeprazole",
        "gastroesophageal reflux disease",
        "{He} has had heartburn after meals for a year.",
        "Irreversible inhibition of the H+/K+-ATPase",
        "Hypomagnesemia",
    ),
    Drug(
        "allopurinol",
        "recurrent gout",
        "{He} has had four attacks of gouty arthritis this year.",
        "Inhibition of xanthine oxidase",
        "Stevens-Johnson syndrome",
    ),
    Drug(
        "digoxin",
        "heart failure and atrial fibrillation",
        "{His} ventricular rate remains above 110/min.",
        "Inhibition of the Na+/K+-ATPase",
        "Yellow-tinted vision",
    ),
    Drug(
        "clopidogrel",
        "coronary artery disease after stent placement",
        "A drug-eluting stent was placed in the left anterior descending artery.",
        "Irreversible blockade of the P2Y12 ADP receptor",
        "Thrombotic thrombocytopenic purpura",
    ),
    Drug(
        "sumatriptan",
        "migraine without aura",
        "{His} headaches do not respond to ibuprofen.",
        "Agonism at serotonin 5-HT1B/1D receptors",
        "Coronary vasospasm",
    ),
    Drug(
        "phenytoin",
        "focal seizures",
        "An EEG shows left temporal epileptiform discharges.",
        "Blockade of voltage-gated sodium channels",
        "Gingival hyperplasia",
    ),
    Drug(
        "ciprofloxacin",
        "acute pyelonephritis",
        "Urine culture grows Escherichia coli.",
        "Inhibition of DNA gyrase",
        "Achilles tendon rupture",
    ),
    Drug(
        "tamoxifen",
        "estrogen receptor-positive breast cancer",
        "{She} underwent lumpectomy and radiation therapy.",
        "Selective estrogen receptor modulation",
        "Endometrial carcinoma",
    ),
    Drug(
        "cyclophosphamide",
        "lupus nephritis",
        "A renal biopsy shows diffuse proliferative glomerulonephritis.",
        "Cross-linking of DNA by alkylation",
        "Hemorrhagic cystitis",
    ),
    Drug(
        "doxorubicin",
        "diffuse large B-cell lymphoma",
        "A lymph node biopsy confirmed the diagnosis.",
        "Inhibition of topoisomerase II",
        "Dilated cardiomyopathy",
    ),
    Drug(
        "heparin",
        "acute pulmonary embolism",
        "CT pulmonary angiography shows a segmental filling defect.",
        "Potentiation of antithrombin III",
        "Thrombocytopenia",
    ),
    Drug(
        "haloperidol",
        "schizophrenia with acute agitation",
        "{He} is hearing voices that tell {him} to harm others.",
        "Antagonism of dopamine D2 receptors",
        "Acute dystonia",
    ),
    Drug(
        "ondansetron",
        "nausea during chemotherapy",
        "{He} vomited six times after the last cycle.",
        "Antagonism of serotonin 5-HT3 receptors",
        "QT interval prolongation",
    ),
    Drug(
        "nitroglycerin",
        "stable angina pectoris",
        "{He} has chest tightness after climbing two flights of stairs.",
        "Release of nitric oxide increasing cyclic GMP",
        "Throbbing headache",
    ),
    Drug(
        "propranolol",
        "essential tremor",
        "The tremor worsens when {he} holds a cup of coffee.",
        "Nonselective beta-adrenergic receptor blockade",
        "Bronchospasm",
    ),
    Drug(
        "vancomycin",
        "cellulitis caused by methicillin-resistant Staphylococcus aureus",
        "Wound culture grows methicillin-resistant Staphylococcus aureus.",
        "Binding to D-alanyl-D-alanine cell wall precursors",
        "Infusion-related flushing",
    ),
)


@dataclass(frozen=True)
class NerveInjury:
    nerve: str
    event: str  # "after ..." (trauma) or the operation (surgery)
    finding: str  # imaging for trauma, "" for surgery
    deficit: str
    surgical: bool = False


EN_NERVES: tuple[NerveInjury, ...] = (
    NerveInjury(
        "Axillary nerve",
        "falling onto {his} outstretched arm",
        "a fracture of the surgical neck of the humerus",
        "decreased sensation over the lateral shoulder and weakness of arm abduction",
    ),
    NerveInjury(
        "Radial nerve",
        "a fall from a ladder",
        "a fracture of the midshaft of the humerus",
        "inability to extend the wrist and fingers",
    ),
    NerveInjury(
        "Median nerve",
        "falling onto {his} outstretched hand",
        "an anterior dislocation of the lunate",
        "decreased sensation over the palmar surface of the thumb, index, and middle fingers",
    ),
    NerveInjury(
        "Ulnar nerve",
        "striking {his} elbow on a table edge during a fall",
        "a fracture of the medial epicondyle of the humerus",
        "weakness of finger abduction and decreased sensation over the little finger",
    ),
    NerveInjury(
        "Common fibular nerve",
        "being kicked on the lateral knee during a soccer game",
        "a fracture of the neck of the fibula",
        "inability to dorsiflex and evert the foot",
    ),
    NerveInjury(
        "Sciatic nerve",
        "a motor vehicle collision in which {his} knee struck the dashboard",
        "a posterior dislocation of the hip",
        "weakness of knee flexion and no movement of the foot or toes",
    ),
    NerveInjury(
        "Tibial nerve",
        "a deep laceration in the back of the knee from broken glass",
        "no fracture",
        "inability to plantarflex the foot and loss of sensation on the sole",
    ),
    NerveInjury(
        "Musculocutaneous nerve",
        "a stab wound to the front of the upper arm",
        "no fracture",
        "weakness of elbow flexion and supination and decreased sensation over the lateral forearm",
    ),
    NerveInjury(
        "Long thoracic nerve",
        "a mastectomy with axillary lymph node dissection",
        "",
        "the medial border of the scapula protrudes when {he} pushes against a wall",
        True,
    ),
    NerveInjury("Recurrent laryngeal nerve", "a total thyroidectomy", "", "persistent hoarseness of the voice", True),
    NerveInjury(
        "Facial nerve",
        "a parotidectomy for a pleomorphic adenoma",
        "",
        "inability to close the right eye and drooping of the right corner of the mouth",
        True,
    ),
    NerveInjury(
        "Superior gluteal nerve",
        "receiving a series of intramuscular injections into the right buttock",
        "",
        "that when {he} stands on the right leg, the left side of the pelvis drops",
        True,
    ),
    NerveInjury(
        "Femoral nerve",
        "an open repair of a right inguinal hernia",
        "",
        "weakness of knee extension and an absent patellar reflex on the right",
        True,
    ),
)

# Optional history sentences that lengthen a vignette; one alternative per group at most, so two
# never contradict each other, and none contradicts a case in the tables above.
# An alternative may carry an age range: (text, min_age, max_age).
EN_EXTRAS_ADULT: tuple[tuple[str | tuple[str, int, int], ...], ...] = (
    (
        "{He} does not smoke cigarettes.",
        ("{He} has smoked one pack of cigarettes daily for 15 years.", 35, 99),
        ("{He} quit smoking 10 years ago.", 35, 99),
    ),
    (
        "{He} drinks one or two glasses of wine on weekends.",
        "{He} does not drink alcohol or use illicit drugs.",
        "{He} drinks two beers most evenings.",
    ),
    (
        "{He} works as an accountant.",
        "{He} works as a high school teacher.",
        "{He} works night shifts at a warehouse.",
        ("{He} is a graduate student in chemistry.", 18, 35),
        ("{He} is retired and volunteers at a local library.", 62, 99),
    ),
    (
        "{His} mother has hypertension.",
        ("{His} father died of a stroke at the age of 72 years.", 30, 99),
        "There is no family history of serious illness.",
        "{His} sister has type 1 diabetes mellitus.",
    ),
    (
        ("{He} lives with {his} partner and two children.", 28, 60),
        "{He} lives alone in an apartment.",
        ("{He} lives with {his} parents.", 18, 28),
    ),
    (
        "{He} had an uncomplicated tonsillectomy as a child.",
        "{He} has seasonal allergic rhinitis treated with loratadine as needed.",
    ),
    ("{He} is up to date on all recommended vaccinations.", "{His} last tetanus booster was 4 years ago."),
    (
        "{He} jogs three times a week.",
        "{He} follows a vegetarian diet.",
        "{He} walks {his} dog for 30 minutes every day.",
    ),
    ("{He} has no known drug allergies.", "{He} is allergic to sulfa drugs."),
    ("{He} takes a daily multivitamin.", "{He} takes no prescription medications."),
)
EN_EXTRAS_CHILD: tuple[tuple[str | tuple[str, int, int], ...], ...] = (
    ("{He} does well in school.", "{He} plays on a soccer team after school.", "{He} enjoys drawing and reading."),
    ("{His} vaccinations are up to date.",),
    (
        "{He} was born at term after an uncomplicated pregnancy.",
        "{He} was born at 36 weeks' gestation and had no complications.",
    ),
    (
        "{His} height and weight are at the 50th percentile.",
        "{His} height is at the 60th percentile and weight at the 45th percentile.",
    ),
    ("{He} lives with {his} parents and a younger sister.", "{He} lives with {his} mother and grandmother."),
    ("{He} has no known drug allergies.",),
    ("{His} mother has hypothyroidism.", "{His} father has hypertension."),
)
EN_MAX_EXTRAS = 6
PROPER_NAME_STARTS = ("Graves", "Hashimoto", "Lyme", "Addison", "Parkinson")


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


def _extras(age: int, pron: dict[str, str], rng: random.Random) -> tuple[list[str], int]:
    """History sentences in random order (one per group) and a target length in words."""
    groups = list(EN_EXTRAS_CHILD if age < 18 else EN_EXTRAS_ADULT)
    rng.shuffle(groups)
    sentences = []
    for group in groups[:EN_MAX_EXTRAS]:
        fitting = [
            alt if isinstance(alt, str) else alt[0] for alt in group if isinstance(alt, str) or alt[1] <= age <= alt[2]
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


def _disease_question(d: Disease, kind: str, rng: random.Random) -> str:
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
        name = d.name if d.name.startswith(PROPER_NAME_STARTS) else d.name[0].lower() + d.name[1:]
        parts.append(f"A diagnosis of {name} is made.")
    extras, target = _extras(age, pron, rng)
    return _assemble_en(parts, extras, stem, at=2, target=target)


def _drug_question(drug: Drug, kind: str, rng: random.Random) -> str:
    age = rng.randint(28, 72)
    sex = "woman" if drug.name == "tamoxifen" else rng.choice(("man", "woman"))
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
    extras, target = _extras(age, pron, rng)
    return _assemble_en(parts, extras, stem, at=2, target=target)


def _nerve_question(n: NerveInjury, rng: random.Random) -> str:
    age = rng.randint(20, 65)
    sex = "woman" if "mastectomy" in n.event else rng.choice(("man", "woman"))
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
            f"X-rays show {n.finding}." if n.finding != "no fracture" else "X-rays show no fracture.",
            f"Examination shows {n.deficit.format(**pron)}.",
        ]
        stem = "Which of the following nerves is most likely injured?"
    extras, target = _extras(age, pron, rng)
    return _assemble_en(parts, extras, stem, at=2, target=target)


def english_drafts(rng: random.Random) -> list[Draft]:
    """Every English question the fact tables allow (one per fact and question kind), shuffled."""
    drafts: list[Draft] = []
    names = [d.name for d in EN_DISEASES]
    treatments = [d.treatment for d in EN_DISEASES]
    tests = [d.test for d in EN_DISEASES if d.test]
    for d in EN_DISEASES:
        drafts.append(Draft(_disease_question(d, "dx", rng), d.name, tuple(names), meta="step2&3"))
        drafts.append(Draft(_disease_question(d, "tx", rng), d.treatment, tuple(treatments), meta="step2&3"))
        if d.test:
            drafts.append(Draft(_disease_question(d, "test", rng), d.test, tuple(tests), meta="step2&3"))
    mechanisms = [d.mechanism for d in EN_DRUGS]
    adverse = [d.adverse for d in EN_DRUGS]
    for drug in EN_DRUGS:
        drafts.append(Draft(_drug_question(drug, "mechanism", rng), drug.mechanism, tuple(mechanisms), meta="step1"))
        drafts.append(Draft(_drug_question(drug, "adverse", rng), drug.adverse, tuple(adverse), meta="step1"))
    nerves = [n.nerve for n in EN_NERVES]
    for n in EN_NERVES:
        drafts.append(Draft(_nerve_question(n, rng), n.nerve, tuple(nerves), meta="step1"))
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


# =============================================================================================
# Korean (KorMedMCQA-style) fact tables
# =============================================================================================


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


def _fixed(question: str, answer: str, pool: Sequence[str], explanation: str) -> Draft:
    return Draft(question, answer, tuple(pool), explanation)


@dataclass(frozen=True)
class KoDisease:
    name: str
    sex: str | None
    ages: tuple[int, int]
    symptoms: str
    exam: str
    result: str
    treatment: str
    test: str | None


KO_DISEASES: tuple[KoDisease, ...] = (
    KoDisease(
        "급성 충수염",
        None,
        (15, 35),
        "하루 전 배꼽 주위에서 시작된 통증이 우하복부로 옮겨 왔다.",
        "맥버니점에 압통과 반발통이 있다.",
        "백혈구는 14,200/μL이다.",
        "충수절제술",
        "복부 CT",
    ),
    KoDisease(
        "당뇨병케톤산증",
        None,
        (16, 30),
        "이틀 전부터 구토와 복통이 있었고 한 달 전부터 갈증과 소변량이 늘었다.",
        "호흡이 깊고 빠르며 점막이 건조하다.",
        "혈당은 540 mg/dL, 혈청 중탄산염은 10 mEq/L이다.",
        "생리식염수 정맥 주입",
        "동맥혈가스검사와 혈청 케톤 측정",
    ),
    KoDisease(
        "그레이브스병",
        "여자",
        (25, 45),
        "3개월 전부터 두근거림과 더위 불내성이 있었고 식욕이 늘었는데도 체중이 줄었다.",
        "양쪽 안구돌출과 미만성 갑상샘종대가 있다.",
        "TSH는 감소하고 유리 T4는 증가하였다.",
        "메티마졸",
        "TSH 수용체 항체 검사",
    ),
    KoDisease(
        "하시모토갑상샘염",
        "여자",
        (35, 60),
        "6개월 전부터 피로, 변비, 추위 불내성이 있었고 체중이 5 kg 늘었다.",
        "피부가 건조하고 발목 반사의 이완기가 지연되어 있다.",
        "TSH는 18 mU/L로 증가하였다.",
        "레보티록신",
        "혈청 TSH 측정",
    ),
    KoDisease(
        "철결핍빈혈",
        "여자",
        (20, 45),
        "4개월 전부터 피로와 운동 시 호흡곤란이 있었고 월경량이 많다.",
        "결막이 창백하고 숟가락 모양 손발톱이 관찰된다.",
        "혈색소 8.9 g/dL, 평균적혈구용적 68 fL이다.",
        "경구 철분제",
        "혈청 페리틴 측정",
    ),
    KoDisease(
        "악성빈혈",
        None,
        (55, 75),
        "5개월 전부터 피로와 양쪽 발 저림이 있었다.",
        "하지의 진동감각과 위치감각이 감소되어 있다.",
        "평균적혈구용적은 112 fL이고 과분엽호중구가 보인다.",
        "비타민 B12 근육주사",
        "혈청 비타민 B12 측정",
    ),
    KoDisease(
        "통풍",
        "남자",
        (45, 65),
        "회식에서 맥주를 많이 마신 다음 날 새벽 오른쪽 엄지발가락에 극심한 통증이 생겼다.",
        "첫째 발허리발가락관절이 붉게 부어 있고 열감과 압통이 심하다.",
        "혈청 요산은 9.4 mg/dL이다.",
        "비스테로이드소염제",
        "관절액 편광현미경 검사",
    ),
    KoDisease(
        "폐색전증",
        None,
        (35, 60),
        "14시간 비행 후 이틀째 갑자기 호흡곤란과 흉막성 가슴 통증이 생겼다.",
        "왼쪽 종아리가 붓고 압통이 있다.",
        "동맥혈 산소분압은 62 mmHg이다.",
        "헤파린 항응고 치료",
        "CT 폐동맥조영술",
    ),
    KoDisease(
        "급성 하벽 심근경색",
        "남자",
        (50, 70),
        "45분 전부터 턱으로 퍼지는 쥐어짜는 듯한 가슴 통증이 지속되고 있다.",
        "식은땀을 흘리고 있다.",
        "심전도에서 II, III, aVF 유도의 ST분절 상승이 보인다.",
        "경피적 관상동맥중재술",
        None,
    ),
    KoDisease(
        "세균성 수막염",
        None,
        (18, 40),
        "하루 전부터 발열, 심한 두통, 구토가 있었다.",
        "목 경직이 있고 목을 굽히면 엉덩관절과 무릎이 굽혀진다.",
        "",
        "반코마이신과 세프트리악손 정맥 투여",
        "요추천자",
    ),
    KoDisease(
        "중증근무력증",
        "여자",
        (25, 40),
        "2개월 전부터 저녁이 되면 심해지는 복시와 눈꺼풀 처짐이 있었다.",
        "1분간 위를 보게 하자 눈꺼풀 처짐이 심해졌다.",
        "",
        "피리도스티그민",
        "아세틸콜린 수용체 항체 검사",
    ),
    KoDisease(
        "파킨슨병",
        "남자",
        (60, 75),
        "1년 전부터 오른손 떨림이 있었고 걸음이 느려졌다.",
        "안정 시 떨림, 톱니바퀴 경축, 운동완만이 관찰된다.",
        "",
        "레보도파·카비도파",
        None,
    ),
    KoDisease(
        "십이지장궤양",
        None,
        (35, 60),
        "2개월 전부터 식사하면 나아지는 공복 시 명치 통증이 있었다.",
        "명치에 가벼운 압통이 있다.",
        "헬리코박터 파일로리 대변 항원 검사가 양성이다.",
        "양성자펌프억제제, 클래리스로마이신, 아목시실린 병합요법",
        "상부위장관 내시경",
    ),
    KoDisease(
        "긴장성 기흉",
        "남자",
        (20, 40),
        "오토바이 사고 직후 심한 호흡곤란이 생겼다.",
        "오른쪽 호흡음이 들리지 않고 기관이 왼쪽으로 치우쳐 있으며 목정맥이 팽창되어 있다.",
        "",
        "바늘 감압술",
        None,
    ),
    KoDisease(
        "아나필락시스",
        None,
        (15, 40),
        "땅콩이 든 과자를 먹은 지 10분 만에 입술이 붓고 숨이 찼다.",
        "전신에 두드러기가 있고 협착음이 들리며 혈압은 80/50 mmHg이다.",
        "",
        "에피네프린 근육주사",
        None,
    ),
    KoDisease(
        "애디슨병",
        "여자",
        (25, 50),
        "3개월 전부터 피로, 구역, 일어설 때 어지럼이 있었다.",
        "손바닥 주름과 구강 점막에 과다색소침착이 있다.",
        "혈청 나트륨 128 mEq/L, 칼륨 5.9 mEq/L이다.",
        "하이드로코르티손",
        "ACTH 자극검사",
    ),
    KoDisease(
        "폐결핵",
        None,
        (30, 70),
        "4주 전부터 기침, 밤에 땀이 나는 증상, 체중 감소가 있었다.",
        "오른쪽 위 폐야에서 수포음이 들린다.",
        "흉부 X선에서 오른쪽 상엽에 공동이 보인다.",
        "이소니아지드, 리팜핀, 에탐부톨, 피라진아미드 병합요법",
        "객담 항산균 도말 및 배양검사",
    ),
    KoDisease(
        "급성 방광염",
        "여자",
        (20, 35),
        "이틀 전부터 배뇨통과 빈뇨가 있었다.",
        "치골상부 압통이 있고 늑골척추각 압통은 없다.",
        "소변검사에서 백혈구 에스테라아제와 아질산염이 양성이다.",
        "니트로푸란토인",
        "소변검사",
    ),
    KoDisease(
        "급성 담낭염",
        "여자",
        (40, 55),
        "기름진 식사 후 10시간째 우상복부 통증과 발열이 있다.",
        "우상복부를 누르면 숨을 들이쉬다 멈춘다.",
        "백혈구는 15,500/μL이다.",
        "복강경 담낭절제술",
        "우상복부 초음파",
    ),
    KoDisease(
        "대상포진",
        None,
        (55, 80),
        "사흘 전부터 왼쪽 가슴이 화끈거리며 아팠고 어제부터 발진이 생겼다.",
        "왼쪽 제5가슴신경 피부분절을 따라 띠 모양으로 모인 물집이 있다.",
        "",
        "아시클로버",
        None,
    ),
    KoDisease(
        "급성 뇌경색",
        None,
        (60, 80),
        "2시간 전 갑자기 오른쪽 팔다리에 힘이 빠지고 말이 어눌해졌다.",
        "오른쪽 편마비와 실어증이 있다.",
        "비조영 뇌 CT에서 출혈은 없다.",
        "정맥 내 혈전용해제 투여",
        "비조영 뇌 CT",
    ),
    KoDisease(
        "천식",
        None,
        (8, 16),
        "밤과 운동 후에 심해지는 기침과 쌕쌕거림이 반복되었다.",
        "양쪽 폐에서 호기 천명음이 들린다.",
        "",
        "흡입 속효성 베타2작용제",
        "기관지확장제 반응 폐기능검사",
    ),
)


def _ko_disease_drafts(rng: random.Random) -> list[Draft]:
    names = [d.name for d in KO_DISEASES]
    treatments = [d.treatment for d in KO_DISEASES]
    tests = [d.test for d in KO_DISEASES if d.test]
    drafts = []
    for d in KO_DISEASES:
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


KO_RECORD_RETENTION = (
    ("진료기록부", "10년"),
    ("수술기록", "10년"),
    ("처방전", "2년"),
    ("환자 명부", "5년"),
    ("검사내용 및 검사소견기록", "5년"),
    ("방사선 사진 및 그 소견서", "5년"),
    ("간호기록부", "5년"),
    ("조산기록부", "5년"),
    ("진단서 등의 부본", "3년"),
)
KO_YEARS_POOL = ("1년", "2년", "3년", "5년", "10년", "20년")


def _retention_drafts(records: Sequence[tuple[str, str]], nurse: bool = False) -> list[Draft]:
    def question(rec: str) -> str:
        if nurse:
            return f"의료법상 {rec}의 보존 기간으로 옳은 것은?"
        return f"의료법 시행규칙상 의료기관 개설자가 {josa(rec, '을/를')} 보존하여야 하는 기간은?"

    return [
        _fixed(
            question(rec),
            years,
            KO_YEARS_POOL,
            f"의료법 시행규칙 제15조에 따라 {josa(rec, '은/는')} {years}간 보존한다.",
        )
        for rec, years in records
    ]


KO_AUTHORITIES = (
    "보건복지부장관",
    "시·도지사",
    "시장·군수·구청장",
    "질병관리청장",
    "대한의사협회장",
    "건강보험심사평가원장",
)

KO_LAW_FIXED: tuple[Draft, ...] = (
    _fixed(
        "의료법상 의료인에 해당하지 않는 사람은?",
        "약사",
        ("의사", "치과의사", "한의사", "조산사", "간호사"),
        "의료법상 의료인은 의사, 치과의사, 한의사, 조산사, 간호사이다.",
    ),
    _fixed(
        "의료법상 의료인의 면허를 내주는 사람은?",
        "보건복지부장관",
        KO_AUTHORITIES,
        "의료인의 면허는 국가시험에 합격한 사람에게 보건복지부장관이 내준다.",
    ),
    _fixed(
        "의료인이 최초로 면허를 받은 후 그 실태와 취업상황을 보건복지부장관에게 신고하여야 하는 주기는?",
        "3년",
        ("1년", "2년", "5년", "10년"),
        "의료법 제25조에 따라 의료인은 3년마다 실태와 취업상황을 신고한다.",
    ),
    _fixed(
        "의원급 의료기관을 개설하려는 의사가 신고하여야 하는 대상은?",
        "시장·군수·구청장",
        KO_AUTHORITIES,
        "의원급 의료기관은 시장·군수·구청장에게 신고하고 개설한다.",
    ),
    _fixed(
        "병원급 의료기관을 개설하려는 의료법인이 허가를 받아야 하는 대상은?",
        "시·도지사",
        KO_AUTHORITIES,
        "병원급 의료기관은 시·도 의료기관개설위원회의 심의를 거쳐 시·도지사의 허가를 받아 개설한다.",
    ),
    _fixed(
        "의료법상 종합병원이 갖추어야 하는 입원 병상 수의 기준은?",
        "100개 이상",
        ("30개 이상", "50개 이상", "200개 이상", "300개 이상", "500개 이상"),
        "종합병원은 100개 이상의 병상을 갖추어야 한다.",
    ),
    _fixed(
        "의료법상 병원이 갖추어야 하는 입원 병상 수의 기준은?",
        "30개 이상",
        ("10개 이상", "20개 이상", "50개 이상", "100개 이상", "200개 이상"),
        "병원은 입원 환자 30명 이상을 수용할 수 있는 병상을 갖추어야 한다.",
    ),
    _fixed(
        "의료인이 면허증을 다른 사람에게 빌려준 경우 받게 되는 행정처분은?",
        "면허 취소",
        ("경고", "시정명령", "자격정지 15일", "과태료 부과", "보수교육 이수 명령"),
        "면허증 대여는 면허 취소 사유이다.",
    ),
    _fixed(
        "의료법상 의료인 면허의 결격사유에 해당하는 사람은?",
        "피성년후견인",
        (
            "65세 이상인 사람",
            "외국 국적을 가진 사람",
            "다른 의료인 면허를 가진 사람",
            "파산선고를 받고 복권된 사람",
            "군 복무를 마치지 않은 사람",
        ),
        "의료법 제8조에 따라 피성년후견인은 의료인이 될 수 없다.",
    ),
    _fixed(
        "의료법상 간호사의 업무에 해당하지 않는 것은?",
        "처방전 발행",
        (
            "환자의 간호요구에 대한 관찰과 자료수집",
            "간호 판단 및 요양을 위한 간호",
            "의사의 지도하에 시행하는 진료의 보조",
            "간호조무사가 수행하는 업무 보조에 대한 지도",
            "보건활동",
        ),
        "의료법 제2조의 간호사 업무에 처방전 발행은 포함되지 않는다.",
    ),
)

KO_INFECTIOUS_CLASSES = {
    "제1급 감염병": ("에볼라바이러스병", "페스트", "탄저", "보툴리눔독소증", "디프테리아", "중동호흡기증후군"),
    "제2급 감염병": ("결핵", "수두", "홍역", "콜레라", "장티푸스", "A형간염"),
    "제3급 감염병": ("파상풍", "B형간염", "일본뇌염", "말라리아", "쯔쯔가무시증"),
    "제4급 감염병": ("인플루엔자", "수족구병", "임질", "회충증"),
}


def _infectious_drafts() -> list[Draft]:
    pool = (*KO_INFECTIOUS_CLASSES, "법정감염병이 아님")
    return [
        _fixed(
            f"「감염병의 예방 및 관리에 관한 법률」상 {josa(disease, '은/는')} 몇 급 감염병인가?",
            cls,
            pool,
            f"{josa(disease, '은/는')} {cls}에 속한다.",
        )
        for cls, diseases in KO_INFECTIOUS_CLASSES.items()
        for disease in diseases
    ]


def doctor_drafts(rng: random.Random) -> list[Draft]:
    return [*_ko_disease_drafts(rng), *_retention_drafts(KO_RECORD_RETENTION), *KO_LAW_FIXED[:9], *_infectious_drafts()]


# --- nurse ---------------------------------------------------------------------------------

KO_PRECAUTIONS = ("표준주의", "접촉주의", "비말주의", "공기매개주의", "보호격리")
KO_ISOLATION = (
    ("폐결핵", "공기매개주의"),
    ("홍역", "공기매개주의"),
    ("인플루엔자", "비말주의"),
    ("백일해", "비말주의"),
    ("유행성이하선염", "비말주의"),
    ("MRSA 감염", "접촉주의"),
    ("클로스트리디오이데스 디피실 장염", "접촉주의"),
    ("옴", "접촉주의"),
)
KO_POSITIONS = ("앙와위", "좌측 심스위", "변형 트렌델렌부르크 자세", "반좌위", "쇄석위", "슬흉위", "측위", "복위")
KO_POSITION_ITEMS = (
    ("요추천자를 마친 환자의 두통을 예방하기 위해 취하게 하는 체위는?", "앙와위"),
    ("배출관장을 시행할 때 환자에게 취하게 하는 체위는?", "좌측 심스위"),
    ("저혈량 쇼크 환자에게 적용하는 체위는?", "변형 트렌델렌부르크 자세"),
    ("호흡곤란이 심한 심부전 환자에게 가장 적절한 체위는?", "반좌위"),
    ("자궁경부세포검사를 시행할 때의 체위는?", "쇄석위"),
    ("제대탈출이 확인된 산부에게 즉시 취하게 하는 체위는?", "슬흉위"),
    ("의식이 없는 환자의 구토물 흡인을 예방하기 위한 체위는?", "측위"),
)
KO_NORMAL_VALUES = (
    (
        "혈청 칼륨 농도",
        "3.5~5.0 mEq/L",
        ("1.5~2.5 mEq/L", "2.5~3.0 mEq/L", "5.5~6.5 mEq/L", "7.0~8.0 mEq/L", "135~145 mEq/L"),
    ),
    (
        "혈청 나트륨 농도",
        "135~145 mEq/L",
        ("115~125 mEq/L", "125~130 mEq/L", "150~160 mEq/L", "3.5~5.0 mEq/L", "95~105 mEq/L"),
    ),
    ("동맥혈 pH", "7.35~7.45", ("7.00~7.10", "7.15~7.25", "7.25~7.35", "7.45~7.55", "7.55~7.65")),
    ("동맥혈 이산화탄소분압", "35~45 mmHg", ("15~25 mmHg", "25~35 mmHg", "45~55 mmHg", "55~65 mmHg", "80~100 mmHg")),
    ("공복 혈당", "70~99 mg/dL", ("40~60 mg/dL", "100~125 mg/dL", "126~140 mg/dL", "140~199 mg/dL", "200~250 mg/dL")),
    ("안정 시 맥박수", "60~100회/분", ("30~50회/분", "40~60회/분", "100~120회/분", "120~140회/분", "12~20회/분")),
    ("안정 시 호흡수", "12~20회/분", ("4~8회/분", "8~10회/분", "20~30회/분", "30~40회/분", "60~100회/분")),
    ("혈소판 수", "15만~45만/μL", ("1만~5만/μL", "5만~10만/μL", "50만~80만/μL", "100만~150만/μL", "4,000~10,000/μL")),
    (
        "백혈구 수",
        "4,000~10,000/μL",
        ("500~1,000/μL", "1,000~3,000/μL", "12,000~20,000/μL", "20,000~30,000/μL", "15만~45만/μL"),
    ),
)
KO_INJECTION_ITEMS = (
    (
        "성인에게 인슐린을 피하주사할 때 흡수가 가장 빠른 부위는?",
        "복부",
        ("대퇴 전면", "상완 후면", "둔부", "전완 내측", "삼각근"),
    ),
    (
        "영아에게 근육주사를 할 때 가장 안전한 부위는?",
        "외측광근",
        ("둔부 배면", "삼각근", "복부", "전완 내측", "상완 후면"),
    ),
    (
        "투베르쿨린 피내반응검사를 시행하는 부위는?",
        "전완 내측",
        ("삼각근", "복부", "외측광근", "둔부 배면", "대퇴 전면"),
    ),
    (
        "성인에게 근육주사를 할 때 좌골신경 손상 위험이 적어 권장되는 부위는?",
        "둔부 복면",
        ("둔부 배면", "전완 내측", "복부", "상완 후면", "손등"),
    ),
)
# "{p}" is replaced by a patient such as "57세 여자"
KO_PRIORITY_ACTIONS = (
    (
        "{p} 환자가 수혈 시작 10분 후 오한, 허리 통증, 발열을 호소한다.",
        "즉시 수혈을 중단하고 생리식염수로 정맥로를 유지한다.",
    ),
    (
        "당뇨병으로 입원한 {p} 환자가 식은땀과 손 떨림을 호소한다. 혈당은 55 mg/dL이고 의식은 명료하다.",
        "속효성 탄수화물 15 g을 섭취하게 한다.",
    ),
    (
        "수액을 맞고 있는 {p} 환자의 말초정맥 주사 부위가 차갑고 창백하며 부어 있다.",
        "주입을 중단하고 정맥 카테터를 제거한다.",
    ),
    ("기관내관을 삽입한 {p} 환자에게 기관 흡인을 시행하려 한다.", "흡인 전 100% 산소를 공급한다."),
    ("비위관을 삽입한 {p} 환자에게 위관영양을 시작하려 한다.", "흡인물의 pH를 측정하여 관의 위치를 확인한다."),
    ("섬망으로 억제대를 적용한 {p} 환자를 돌보고 있다.", "최소 2시간마다 억제대를 풀고 피부와 순환 상태를 사정한다."),
    ("낙상 고위험군인 {p} 환자가 입원하였다.", "침대 높이를 가장 낮게 하고 바퀴를 고정한다."),
    ("흉관 배액 중인 {p} 환자의 배액병이 깨졌다.", "흉관 끝을 멸균 생리식염수에 담가 수밀봉을 유지한다."),
    ("병실에서 {p} 환자가 전신 강직간대발작을 하고 있다.", "주변의 위험한 물건을 치우고 고개를 옆으로 돌린다."),
)
KO_MATERNAL_CHILD = (
    _fixed(
        "신생아의 아프가 점수를 평가하는 시점은?",
        "출생 후 1분과 5분",
        ("출생 직후와 10분", "출생 후 5분과 30분", "출생 후 1시간", "출생 후 24시간", "퇴원 직전"),
        "아프가 점수는 출생 후 1분과 5분에 평가한다.",
    ),
    _fixed(
        "B형간염 예방접종 1차 접종 시기는?",
        "출생~생후 1개월 이내",
        ("생후 2개월", "생후 4개월", "생후 6개월", "생후 12개월", "만 4세"),
        "B형간염 1차 접종은 출생 직후부터 생후 1개월 이내에 한다.",
    ),
    _fixed(
        "BCG 예방접종의 권장 시기는?",
        "생후 4주 이내",
        ("생후 2개월", "생후 6개월", "생후 12~15개월", "만 4~6세", "만 11~12세"),
        "BCG는 생후 4주 이내에 접종한다.",
    ),
    _fixed(
        "MMR 1차 예방접종 시기는?",
        "생후 12~15개월",
        ("생후 4주 이내", "생후 2개월", "생후 6개월", "만 4~6세", "만 11~12세"),
        "MMR 1차 접종은 생후 12~15개월에 한다.",
    ),
    _fixed(
        "만삭 신생아의 생리적 황달이 주로 나타나기 시작하는 시기는?",
        "생후 2~3일",
        ("생후 24시간 이내", "생후 2주 이후", "생후 1개월", "생후 3개월", "생후 6개월"),
        "생리적 황달은 생후 2~3일에 나타난다.",
    ),
    _fixed(
        "산후 자궁저부가 골반 안으로 내려가 복부에서 촉지되지 않는 시기는?",
        "산후 약 10일",
        ("분만 직후", "산후 1일", "산후 3일", "산후 6주", "산후 3개월"),
        "자궁은 산후 약 10일이 지나면 복부에서 만져지지 않는다.",
    ),
)
KO_IV_RATES = ((1000, 8), (1200, 10), (900, 6), (500, 4), (1800, 12), (2400, 24))
KO_DRIP_RATES = ((1200, 10, 20), (1000, 5, 15), (900, 6, 10), (480, 4, 60), (1440, 12, 15))


def _numeric_pool(answer: int, unit: str) -> tuple[str, ...]:
    values = dict.fromkeys(
        v
        for v in (answer // 2, answer * 2 // 3, answer * 4 // 5, answer * 5 // 4, answer * 3 // 2, answer * 2)
        if v != answer
    )
    return tuple(f"{v} {unit}" for v in values)


def _nurse_calc_drafts() -> list[Draft]:
    drafts = []
    for vol, hours in KO_IV_RATES:
        rate = vol // hours
        drafts.append(
            _fixed(
                f"수액 {vol:,} mL를 {hours}시간 동안 일정한 속도로 주입하려고 한다. 시간당 주입량은?",
                f"{rate} mL/시간",
                _numeric_pool(rate, "mL/시간"),
                f"{vol:,} mL ÷ {hours}시간 = {rate} mL/시간이다.",
            )
        )
    for vol, hours, factor in KO_DRIP_RATES:
        drops = vol * factor // (hours * 60)
        drafts.append(
            _fixed(
                f"수액 {vol:,} mL를 {hours}시간 동안 점적 주입한다. 점적계수가 {factor} gtt/mL일 때 분당 방울 수는?",
                f"{drops} gtt/분",
                _numeric_pool(drops, "gtt/분"),
                f"{vol:,} mL × {factor} gtt/mL ÷ ({hours} × 60분) = {drops} gtt/분이다.",
            )
        )
    return drafts


def nurse_drafts(rng: random.Random) -> list[Draft]:
    drafts = [
        _fixed(
            f"{josa(d, '을/를')} 앓는 환자를 간호할 때 표준주의와 함께 적용해야 하는 전파경로별 주의는?",
            p,
            KO_PRECAUTIONS,
            f"{josa(d, '은/는')} {p}가 필요하다.",
        )
        for d, p in KO_ISOLATION
    ]
    drafts += [_fixed(q, a, KO_POSITIONS, f"이 경우 적절한 체위는 {a}이다.") for q, a in KO_POSITION_ITEMS]
    drafts += [
        _fixed(f"성인의 정상 {name} 범위로 옳은 것은?", value, wrong, f"성인의 정상 {josa(name, '은/는')} {value}이다.")
        for name, value, wrong in KO_NORMAL_VALUES
    ]
    drafts += [_fixed(q, a, wrong, f"정답 부위는 {a}이다.") for q, a, wrong in KO_INJECTION_ITEMS]
    actions = [a for _, a in KO_PRIORITY_ACTIONS]
    for situation, action in KO_PRIORITY_ACTIONS:
        person = _ko_person((65, 85) if "낙상" in situation else (25, 85), None, rng)
        drafts.append(
            _fixed(
                f"{situation.format(p=person)} 간호사가 우선 수행할 중재는?",
                action,
                actions,
                f"이 상황에서 가장 먼저 할 일은 다음과 같다: {action}",
            )
        )
    drafts += list(KO_MATERNAL_CHILD)
    drafts += _nurse_calc_drafts()
    drafts += _retention_drafts(
        [r for r in KO_RECORD_RETENTION if r[0] in ("간호기록부", "진료기록부", "조산기록부")], nurse=True
    )
    drafts.append(KO_LAW_FIXED[9])
    return drafts


# --- pharm ---------------------------------------------------------------------------------

KO_MECHANISMS = (
    ("아토르바스타틴", "HMG-CoA 환원효소 억제"),
    ("리시노프릴", "안지오텐신전환효소 억제"),
    ("로사르탄", "안지오텐신 II 제1형 수용체 차단"),
    ("암로디핀", "L형 칼슘통로 차단"),
    ("오메프라졸", "위벽세포 H+/K+-ATPase의 비가역적 억제"),
    ("알로푸리놀", "잔틴 산화효소 억제"),
    ("클로피도그렐", "P2Y12 ADP 수용체의 비가역적 차단"),
    ("메트포르민", "간의 포도당신생합성 억제"),
    ("시타글립틴", "DPP-4 억제를 통한 인크레틴 분해 감소"),
    ("다파글리플로진", "근위세관 SGLT2 억제"),
    ("아목시실린", "페니실린결합단백질에 결합하여 세포벽 합성 억제"),
    ("시프로플록사신", "DNA 자이레이스 억제"),
    ("아지트로마이신", "50S 리보솜 소단위 결합에 의한 단백질 합성 억제"),
    ("독시사이클린", "30S 리보솜 소단위 결합에 의한 단백질 합성 억제"),
    ("플루옥세틴", "선택적 세로토닌 재흡수 억제"),
    ("피나스테리드", "5α-환원효소 억제"),
    ("와파린", "비타민 K 에폭사이드 환원효소 억제"),
    ("아스피린", "사이클로옥시게나제의 비가역적 아세틸화"),
    ("푸로세미드", "헨레고리 굵은 오름다리의 Na+-K+-2Cl- 공동수송체 억제"),
    ("메토트렉세이트", "디하이드로엽산 환원효소 억제"),
)
KO_ADVERSE = (
    ("리시노프릴", "마른기침"),
    ("아미오다론", "폐섬유증"),
    ("이소니아지드", "말초신경병증"),
    ("에탐부톨", "시신경염"),
    ("리팜핀", "소변과 눈물의 주황색 변색"),
    ("페니토인", "잇몸 비대"),
    ("레보플록사신", "힘줄 파열"),
    ("클로자핀", "무과립구증"),
    ("리튬", "신성 요붕증"),
    ("스피로노락톤", "여성형유방"),
    ("젠타마이신", "청력 손상"),
    ("사이클로포스파미드", "출혈성 방광염"),
    ("독소루비신", "심근병증"),
    ("심바스타틴", "횡문근융해증"),
)
KO_ANTIDOTES = (
    ("아세트아미노펜", "N-아세틸시스테인"),
    ("헤파린", "프로타민황산염"),
    ("벤조디아제핀", "플루마제닐"),
    ("오피오이드", "날록손"),
    ("유기인계 살충제", "아트로핀과 프랄리독심"),
    ("메토트렉세이트", "류코보린"),
    ("메탄올", "포메피졸"),
    ("철", "데페록사민"),
    ("와파린", "비타민 K"),
    ("디곡신", "디곡신 특이 Fab 항체"),
)
KO_DRUG_CLASSES = (
    ("HMG-CoA 환원효소 억제제", "로수바스타틴"),
    ("안지오텐신전환효소 억제제", "에날라프릴"),
    ("안지오텐신 수용체 차단제", "발사르탄"),
    ("칼슘통로차단제", "니페디핀"),
    ("양성자펌프억제제", "란소프라졸"),
    ("선택적 세로토닌 재흡수 억제제", "에스시탈로프람"),
    ("베타차단제", "메토프롤롤"),
    ("DPP-4 억제제", "리나글립틴"),
    ("SGLT2 억제제", "엠파글리플로진"),
    ("설포닐유레아", "글리메피리드"),
    ("마크로라이드계 항생제", "클래리스로마이신"),
    ("플루오로퀴놀론계 항생제", "레보플록사신"),
)
KO_HALF_LIVES = ((4, 80, 2), (6, 64, 3), (8, 100, 2), (3, 48, 4), (12, 40, 1))


def pharm_drafts(rng: random.Random) -> list[Draft]:
    mechs = [m for _, m in KO_MECHANISMS]
    drafts = []
    for drug, mech in KO_MECHANISMS:
        q = rng.choice((f"{drug}의 작용기전으로 옳은 것은?", f"{drug}의 주된 약리작용 기전은?"))
        drafts.append(_fixed(q, mech, mechs, f"{josa(drug, '은/는')} {mech} 작용을 한다."))
    effects = [e for _, e in KO_ADVERSE]
    for drug, effect in KO_ADVERSE:
        q = rng.choice(
            (
                f"{josa(drug, '을/를')} 복용하는 환자에게 복약지도할 때 주의해야 할 대표적인 부작용은?",
                f"{drug} 투여 시 특징적으로 나타날 수 있는 부작용은?",
            )
        )
        drafts.append(_fixed(q, effect, effects, f"{drug}의 대표적 부작용은 {effect}이다."))
    antidotes = [a for _, a in KO_ANTIDOTES]
    for poison, antidote in KO_ANTIDOTES:
        drafts.append(
            _fixed(
                f"{poison} 중독 환자에게 투여하는 해독제로 옳은 것은?",
                antidote,
                antidotes,
                f"{poison} 중독의 해독제는 {antidote}이다.",
            )
        )
    members = [m for _, m in KO_DRUG_CLASSES]
    for cls, member in KO_DRUG_CLASSES:
        drafts.append(
            _fixed(f"다음 중 {cls}에 해당하는 약물은?", member, members, f"{josa(member, '은/는')} {cls}이다.")
        )
    for half, conc, n in KO_HALF_LIVES:
        answer = conc // 2**n
        pool = [f"{conc // 2**k} mg/L" for k in range(6) if k != n and conc // 2**k > 0] + [
            f"{conc - conc // (2 * n)} mg/L"
        ]
        drafts.append(
            _fixed(
                f"반감기가 {half}시간인 약물의 혈중농도가 {conc} mg/L이다. 추가 투여 없이 {half * n}시간이 지난 후의 혈중농도는?",
                f"{answer} mg/L",
                pool,
                f"{half * n}시간은 반감기의 {n}배이므로 {conc} mg/L의 1/{2**n}인 {answer} mg/L이다.",
            )
        )
    return drafts


# --- dentist -------------------------------------------------------------------------------

KO_TEETH = (
    "상악 중절치",
    "상악 측절치",
    "상악 견치",
    "상악 제1소구치",
    "상악 제2소구치",
    "상악 제1대구치",
    "상악 제2대구치",
    "하악 중절치",
    "하악 측절치",
    "하악 견치",
    "하악 제1소구치",
    "하악 제2소구치",
    "하악 제1대구치",
    "하악 제2대구치",
)
KO_COUNTS = ("1개", "2개", "3개", "4개", "5개", "6개")
KO_DENTAL_ANATOMY = (
    _fixed("하악 제1대구치의 교두 수는?", "5개", KO_COUNTS, "하악 제1대구치는 협측 3개, 설측 2개의 교두를 가진다."),
    _fixed(
        "상악 제1소구치의 일반적인 치근 수는?",
        "2개",
        KO_COUNTS,
        "상악 제1소구치는 보통 협측과 구개측의 2개 치근을 가진다.",
    ),
    _fixed(
        "상악 제1대구치의 치근 수는?",
        "3개",
        KO_COUNTS,
        "상악 제1대구치는 근심협측, 원심협측, 구개측의 3개 치근을 가진다.",
    ),
    _fixed("하악 제1대구치의 치근 수는?", "2개", KO_COUNTS, "하악 제1대구치는 근심과 원심의 2개 치근을 가진다."),
    _fixed(
        "카라벨리 결절이 주로 나타나는 치아는?",
        "상악 제1대구치",
        KO_TEETH,
        "카라벨리 결절은 상악 제1대구치 근심설측 교두에 나타난다.",
    ),
    _fixed("영구치열에서 치근이 가장 긴 치아는?", "상악 견치", KO_TEETH, "상악 견치는 영구치 가운데 치근이 가장 길다."),
    _fixed(
        "영구치 중 가장 먼저 맹출하는 치아는?",
        "하악 제1대구치",
        ("상악 견치", "상악 제1소구치", "하악 제2소구치", "상악 제2대구치", "하악 견치"),
        "하악 제1대구치는 6세 무렵 가장 먼저 맹출한다.",
    ),
    _fixed(
        "유치열에서 가장 먼저 맹출하는 치아는?",
        "하악 유중절치",
        ("상악 유견치", "하악 유제1대구치", "상악 유제2대구치", "하악 유견치", "상악 유제1대구치"),
        "하악 유중절치는 생후 6개월 무렵 가장 먼저 맹출한다.",
    ),
)
KO_ORAL_MICROBES = (
    ("치아우식증", "Streptococcus mutans"),
    ("만성 치주염", "Porphyromonas gingivalis"),
    ("국소형 침습성 치주염", "Aggregatibacter actinomycetemcomitans"),
    ("괴사성 궤양성 치은염", "방추균과 스피로헤타"),
    ("구강 칸디다증", "Candida albicans"),
    ("방선균증", "Actinomyces israelii"),
    ("난치성 근단주위염", "Enterococcus faecalis"),
)
KO_DENTAL_NERVES = (
    "하치조신경",
    "후상치조신경",
    "중상치조신경",
    "전상치조신경",
    "비구개신경",
    "대구개신경",
    "협신경",
    "이신경",
    "설신경",
)
KO_NERVE_ITEMS = (
    ("하악 대구치 발치를 위한 전달마취에서 차단하는 주된 신경은?", "하치조신경"),
    ("상악 대구치의 치수와 협측 치은을 마취하기 위해 차단하는 신경은?", "후상치조신경"),
    ("상악 중절치의 구개측 점막을 마취하기 위해 차단하는 신경은?", "비구개신경"),
    ("상악 소구치와 대구치의 구개측 점막을 마취하기 위해 차단하는 신경은?", "대구개신경"),
    ("하악 대구치 협측 치은을 마취하기 위해 추가로 차단하는 신경은?", "협신경"),
    ("하악 소구치와 전치의 순협측 연조직과 아랫입술을 마취하는 신경은?", "이신경"),
    ("하치조신경 전달마취 때 함께 마취되어 혀 앞 2/3의 감각이 없어지게 하는 신경은?", "설신경"),
)
KO_MATERIALS = (
    "글래스아이오노머 시멘트",
    "거터퍼차",
    "MTA",
    "복합레진",
    "알지네이트",
    "아말감",
    "폴리비닐실록산",
    "산화아연유지놀 시멘트",
    "수산화칼슘",
)
KO_MATERIAL_ITEMS = (
    ("불소를 유리하여 이차우식 억제 효과가 있고 치질과 화학적으로 결합하는 수복재는?", "글래스아이오노머 시멘트"),
    ("근관충전에 가장 널리 사용되는 고형 충전재는?", "거터퍼차"),
    ("직접 치수덮개와 치근단 역충전에 사용되는 규산칼슘계 재료는?", "MTA"),
    ("광중합으로 경화되며 전치부 심미 수복에 주로 사용되는 재료는?", "복합레진"),
    ("비가역성 하이드로콜로이드 인상재는?", "알지네이트"),
    ("은, 주석, 구리 합금 분말을 수은과 혼합하여 사용하는 수복재는?", "아말감"),
    ("정밀 인상 채득에 사용되는 부가중합형 실리콘 인상재는?", "폴리비닐실록산"),
)
KO_DENTAL_CASES = (
    (
        "가역적 치수염",
        "찬물을 마실 때 짧게 시린 증상이 있으며 자극을 없애면 곧 사라진다.",
        "타진 반응은 정상이고 깊지 않은 우식이 있다.",
        "우식 제거 후 수복",
    ),
    (
        "비가역적 치수염",
        "찬 자극 후 통증이 30초 이상 지속되고 밤에 저절로 욱신거리는 통증이 있다.",
        "깊은 우식이 치수에 가까이 닿아 있다.",
        "치수절제 후 근관치료",
    ),
    (
        "급성 근단주위농양",
        "이틀 전부터 씹을 때 심해지는 욱신거리는 통증과 잇몸 부기가 있다.",
        "해당 치아는 전기치수검사에 반응이 없고 타진에 극심한 통증이 있으며 치근단 부위 점막이 파동성으로 부어 있다.",
        "근관 개방 및 절개 배농",
    ),
    (
        "치관주위염",
        "하악 제3대구치 부위가 붓고 아프며 입을 벌리기 어렵다.",
        "부분 맹출한 하악 제3대구치를 덮은 치은판이 붉게 부어 있다.",
        "치은판 아래 세척과 소독",
    ),
    (
        "건성 발치와",
        "사흘 전 하악 제3대구치를 발치한 뒤 귀로 퍼지는 심한 통증이 생겼다.",
        "발치와에 혈병이 없고 치조골이 드러나 있으며 악취가 난다.",
        "발치와 세척 후 진정성 드레싱",
    ),
    (
        "괴사성 궤양성 치은염",
        "사흘 전부터 잇몸 통증, 출혈, 심한 입냄새가 생겼고 최근 잠을 거의 자지 못했다.",
        "치간유두가 분화구 모양으로 괴사되어 있고 회색 위막이 덮여 있다.",
        "국소 세정과 괴사조직 제거",
    ),
)
KO_ERUPTION = (
    ("하악 제1대구치", "6~7세"),
    ("상악 중절치", "7~8세"),
    ("하악 견치", "9~10세"),
    ("상악 제1소구치", "10~11세"),
    ("상악 견치", "11~12세"),
    ("상악 제2대구치", "12~13세"),
    ("하악 제3대구치", "17~21세"),
)
FDI_QUADRANTS = {1: "상악 우측", 2: "상악 좌측", 3: "하악 좌측", 4: "하악 우측"}
FDI_TEETH = {
    1: "중절치",
    2: "측절치",
    3: "견치",
    4: "제1소구치",
    5: "제2소구치",
    6: "제1대구치",
    7: "제2대구치",
    8: "제3대구치",
}


def _fdi_name(quadrant: int, tooth: int) -> str:
    return f"{FDI_QUADRANTS[quadrant]} {FDI_TEETH[tooth]}"


def _fdi_drafts(rng: random.Random, n: int) -> list[Draft]:
    codes = rng.sample([(q, t) for q in FDI_QUADRANTS for t in FDI_TEETH], n)
    drafts = []
    for q, t in codes:
        pool = [_fdi_name(oq, t) for oq in FDI_QUADRANTS if oq != q]
        pool += [_fdi_name(q, ot) for ot in (t - 1, t + 1) if ot in FDI_TEETH]
        drafts.append(
            _fixed(
                f"FDI 치아 표기법에서 {q}{t}번 치아는?",
                _fdi_name(q, t),
                pool,
                f"첫째 자리 {josa(str(q), '은/는')} {FDI_QUADRANTS[q]}, 둘째 자리 {josa(str(t), '은/는')} {josa(FDI_TEETH[t], '을/를')} 뜻한다.",
            )
        )
    return drafts


def dentist_drafts(rng: random.Random) -> list[Draft]:
    drafts = list(KO_DENTAL_ANATOMY)
    microbes = [m for _, m in KO_ORAL_MICROBES]
    drafts += [
        _fixed(f"{d}의 주요 원인 미생물은?", m, microbes, f"{d}의 주요 원인 미생물은 {m}이다.")
        for d, m in KO_ORAL_MICROBES
    ]
    drafts += [_fixed(q, a, KO_DENTAL_NERVES, f"이 부위는 {josa(a, '이/가')} 지배한다.") for q, a in KO_NERVE_ITEMS]
    drafts += [_fixed(q, a, KO_MATERIALS, f"설명에 맞는 재료는 {a}이다.") for q, a in KO_MATERIAL_ITEMS]
    names = [c[0] for c in KO_DENTAL_CASES]
    treatments = [c[3] for c in KO_DENTAL_CASES]
    for name, symptoms, exam, treatment in KO_DENTAL_CASES:
        person = _ko_person((18, 60), None, rng)
        drafts.append(
            _fixed(
                f"{josa(person, '이/가')} 치통으로 내원하였다. {symptoms} {exam} 가장 가능성이 높은 진단은?",
                name,
                names,
                f"{symptoms} {exam} 이는 {name}의 소견이다.",
            )
        )
        person = _ko_person((18, 60), None, rng)
        drafts.append(
            _fixed(
                f"{josa(person, '이/가')} 내원하였다. {symptoms} {exam} 적절한 처치는?",
                treatment,
                treatments,
                f"{name}에는 {josa(treatment, '을/를')} 시행한다.",
            )
        )
    ages = [a for _, a in KO_ERUPTION]
    drafts += [
        _fixed(f"영구치 {t}의 평균 맹출 시기는?", a, ages, f"{t}의 평균 맹출 시기는 {a}이다.") for t, a in KO_ERUPTION
    ]
    drafts += _fdi_drafts(rng, 10)
    return drafts


KO_DRAFTS: dict[str, Callable[[random.Random], list[Draft]]] = {
    "doctor": doctor_drafts,
    "nurse": nurse_drafts,
    "pharm": pharm_drafts,
    "dentist": dentist_drafts,
}


# =============================================================================================
# Writing the files
# =============================================================================================


def _write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    path.write_bytes(text.encode("utf-8"))
    return path


def kormed_schema() -> pa.Schema:
    """The Arrow schema of a KorMedMCQA parquet file, with the ``datasets`` features metadata."""
    import pyarrow as pa

    fields = [pa.field(c, pa.int64() if c in KORMED_INT_COLUMNS else pa.string()) for c in KORMED_COLUMNS]
    features = {
        c: {"dtype": "int64" if c in KORMED_INT_COLUMNS else "string", "_type": "Value"} for c in KORMED_COLUMNS
    }
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode("utf-8")}
    return pa.schema(fields, metadata=meta)


def _write_parquet(path: Path, rows: list[dict[str, object]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    schema = kormed_schema()
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, path, compression="snappy")
    return path


def _exam_slots(rng: random.Random) -> dict[str, list[tuple[int, int, int]]]:
    """Unique (year, period, q_number) per split, from that split's years, sorted like the real files."""
    slots: dict[str, list[tuple[int, int, int]]] = {}
    taken: set[tuple[int, int, int]] = set()
    for split, n in KORMED_SPLITS.items():
        candidates = [
            (y, p, q) for y in KORMED_YEARS[split] for p in (1, 2) for q in range(1, 121) if (y, p, q) not in taken
        ]
        chosen = sorted(rng.sample(candidates, n))
        taken.update(chosen)
        slots[split] = chosen
    return slots


def kormed_rows(subject: str, drafts: list[Draft], rng: random.Random) -> dict[str, list[dict[str, object]]]:
    """The rows of every split of one KorMedMCQA subject (drafts are consumed in split order)."""
    slots = _exam_slots(rng)
    out: dict[str, list[dict[str, object]]] = {}
    it = iter(drafts)
    for split, n in KORMED_SPLITS.items():
        positions = _balanced_positions(n, 5, rng)
        rows = []
        for (year, period, q_number), pos in zip(slots[split], positions, strict=True):
            draft = next(it)
            options = _layout(draft, 5, pos, rng)
            cot = f"{draft.explanation} 따라서 정답은 {LETTERS[pos]}이다." if split == "fewshot" else ""
            row: dict[str, object] = {
                "subject": subject,
                "year": year,
                "period": period,
                "q_number": q_number,
                "question": draft.question,
            }
            row.update(dict(zip(LETTERS, options, strict=True)))
            row.update({"answer": pos + 1, "cot": cot})
            rows.append(row)
        out[split] = rows
    return out


def write_samples(root: Path) -> dict[str, list[Path]]:
    """Write every sample file under ``root``; returns the paths per benchmark (``medqa``, ``kormedmcqa``)."""
    root = Path(root)
    rng = random.Random(SEED)
    seen: set[str] = set()
    written: dict[str, list[Path]] = {"medqa": [], "kormedmcqa": []}

    n_medqa = sum(MEDQA_SPLITS.values())
    drafts = _pick_distinct(english_drafts(rng), n_medqa + MEDQA_HF_ITEMS, seen)
    start = 0
    for split, n in MEDQA_SPLITS.items():
        positions = _balanced_positions(n, 5, rng)
        rows = [
            medqa_record(d, _layout(d, 5, p, rng)) for d, p in zip(drafts[start : start + n], positions, strict=True)
        ]
        written["medqa"].append(_write_jsonl(root / "medqa" / "US" / f"{split}.jsonl", rows))
        start += n
    positions = _balanced_positions(MEDQA_HF_ITEMS, 4, rng)
    hf_rows = [
        medqa_hf_record(f"test-{i:05d}", d, _layout(d, 4, p, rng))
        for i, (d, p) in enumerate(zip(drafts[start:], positions, strict=True))
    ]
    written["medqa"].append(_write_jsonl(root / "medqa" / "medqa_4options_hf.jsonl", hf_rows))

    for subject in KORMED_SUBJECTS:
        pool = KO_DRAFTS[subject](rng)
        rng.shuffle(pool)
        chosen = _pick_distinct(pool, sum(KORMED_SPLITS.values()), seen)
        for split, rows in kormed_rows(subject, chosen, rng).items():
            path = root / "kormedmcqa" / subject / f"{split}-00000-of-00001.parquet"
            written["kormedmcqa"].append(_write_parquet(path, rows))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the embedded sample data files.")
    parser.add_argument("--out", type=Path, default=DEFAULT_SAMPLES_DIR, help="output folder (default: data/samples)")
    args = parser.parse_args(argv)
    written = write_samples(args.out)
    for benchmark, paths in written.items():
        for p in paths:
            print(f"{benchmark}: {p} ({p.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
