"""Text multiple-choice adapters on fixtures in the upstream field names and conventions."""

from __future__ import annotations

from pathlib import Path

import pytest

from medrecipe.config import SourceSpec
from medrecipe.errors import SourceError
from medrecipe.sources import adapters
from medrecipe.sources.text_mcq import strip_embedded_choices
from source_helpers import ingest

datasets = pytest.importorskip("datasets")

FIX = Path(__file__).parent / "fixtures" / "sources"


def save_hf(tmp_path: Path, rows: dict, features=None, name: str = "ds") -> str:
    ds = datasets.Dataset.from_dict(rows, features=features)
    out = tmp_path / name
    ds.save_to_disk(str(out))
    return str(out)


def png_bytes(colour=(10, 20, 30)) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (6, 5), colour).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- registry


def test_every_named_adapter_is_registered_with_what_it_needs():
    reg = adapters()
    named = {"medqa", "medmcqa", "headqa", "mmlu_pro", "medxpertqa", "pmc_vqa", "vqa_rad", "slake",
             "pathvqa", "mmmu_pro", "imagefolder"}
    assert named <= set(reg)
    for name in named:
        a = reg[name]
        assert a.description and a.needs, name
        if name != "imagefolder":
            assert a.hub_id and "/" in a.hub_id, name
    assert reg["medmcqa"].task == "text" and reg["vqa_rad"].task == "open_vqa"
    assert reg["imagefolder"].task == "mm_classification"
    assert "category" in reg["mmlu_pro"].options and "lang" in reg["slake"].options


def test_unknown_adapter_option_is_a_user_error(tmp_path):
    path = save_hf(tmp_path, {"id": ["x"], "question": ["q"], "opa": ["a"], "opb": ["b"],
                              "opc": ["c"], "opd": ["d"], "cop": [0]})
    spec = SourceSpec(name="m", adapter="medmcqa", path=path, options={"answerbase": 1})
    with pytest.raises(SourceError, match="answerbase"):
        ingest(spec, tmp_path)


# --------------------------------------------------------------------------- MedMCQA


def medmcqa_rows():
    return {
        "id": ["e9ad821a-c438-4965-9f77-760819dfa155", "5c38bea6-787a-44c9-b3c4-5e7ef3e7d4c0",
               "0a3b1e34-0f0f-4d35-9c0e-0a8a3b2f3c11", "8d3c2a1b-2222-4f7e-8a9b-1234567890ab"],
        "question": ["Which nerve supplies the lateral rectus muscle?",
                     "Drug of choice for absence seizures in children is:",
                     "Most common site of carcinoid tumour in the gut is:",
                     "Vitamin deficiency causing pellagra:"],
        "opa": ["Oculomotor", "Phenytoin", "Appendix", "Thiamine"],
        "opb": ["Trochlear", "Ethosuximide", "Ileum", "Niacin"],
        "opc": ["Abducens", "Carbamazepine", "Rectum", "Riboflavin"],
        "opd": ["Facial", "Phenobarbitone", "Stomach", "Pyridoxine"],
        "cop": [2, 1, -1, 7],
        "choice_type": ["single", "single", "single", "single"],
        "exp": ["The abducens nerve (VI) supplies the lateral rectus.", "", None, None],
        "subject_name": ["Anatomy", "Pharmacology", "Pathology", "Biochemistry"],
        "topic_name": ["Head and neck", None, None, None],
    }


def test_medmcqa_cop_is_a_zero_based_option_index(tmp_path):
    spec = SourceSpec(name="medmcqa", adapter="medmcqa", path=save_hf(tmp_path, medmcqa_rows()),
                      split="validation")
    items, quarantine, stats, _ = ingest(spec, tmp_path)
    assert [it.id for it in items] == ["medmcqa/e9ad821a-c438-4965-9f77-760819dfa155",
                                       "medmcqa/5c38bea6-787a-44c9-b3c4-5e7ef3e7d4c0"]
    first, second = items
    assert first.options == ["Oculomotor", "Trochlear", "Abducens", "Facial"]
    assert first.answer == "C" and first.answer_text == "Abducens"
    assert second.answer_text == "Ethosuximide"
    assert first.task == "text" and first.split == "validation"
    assert first.meta["subject_name"] == "Anatomy" and "abducens" in first.meta["exp"]
    reasons = {q.reason: q for q in quarantine}
    assert set(reasons) == {"missing_answer", "answer_not_in_options"}
    assert "-1" in reasons["missing_answer"].detail  # test-split rows carry cop = -1
    assert stats.rows == 4 and stats.items == 2 and stats.quarantined == 2


def test_medmcqa_answer_base_one_reads_the_original_release(tmp_path):
    rows = medmcqa_rows()
    rows["cop"] = [3, 2, 1, 4]  # 1-based, as in the original JSON release
    spec = SourceSpec(name="m", adapter="medmcqa", path=save_hf(tmp_path, rows),
                      options={"answer_base": 1})
    items, quarantine, _, _ = ingest(spec, tmp_path)
    assert [it.answer_text for it in items] == ["Abducens", "Ethosuximide", "Appendix", "Pyridoxine"]
    assert quarantine == []


def test_medmcqa_empty_option_quarantines_instead_of_shifting_letters(tmp_path):
    rows = {k: v[:1] for k, v in medmcqa_rows().items()}
    rows["opb"] = [""]
    spec = SourceSpec(name="m", adapter="medmcqa", path=save_hf(tmp_path, rows))
    items, quarantine, _, _ = ingest(spec, tmp_path)
    assert items == [] and quarantine[0].reason == "blank_option" and "option B" in quarantine[0].detail


# --------------------------------------------------------------------------- HeadQA


def headqa_rows():
    return {
        "name": ["Cuaderno_2013_1_B", "Cuaderno_2014_1_M", "Cuaderno_2014_1_M", "Cuaderno_2013_1_B"],
        "year": ["2013", "2014", "2014", "2013"],
        "category": ["biology", "medicine", "medicine", "biology"],
        "qid": [1, 1, 2, 3],
        "qtext": ["Which organelle carries out oxidative phosphorylation?",
                  "The most frequent cause of community-acquired pneumonia is:",
                  "Regarding image 4, the most likely diagnosis is:",
                  "A question whose right answer id is not listed:"],
        "ra": [3, 1, 2, 9],
        "image": [None, None, {"bytes": png_bytes(), "path": None}, None],
        "answers": [
            [{"aid": 2, "atext": "Golgi apparatus"}, {"aid": 1, "atext": "Ribosome"},
             {"aid": 3, "atext": "Mitochondrion"}, {"aid": 4, "atext": "Lysosome"}],
            [{"aid": 1, "atext": "Streptococcus pneumoniae"}, {"aid": 2, "atext": "Mycoplasma"},
             {"aid": 3, "atext": "Legionella"}, {"aid": 4, "atext": "Haemophilus"},
             {"aid": 5, "atext": "Klebsiella"}],
            [{"aid": 1, "atext": "Sarcoidosis"}, {"aid": 2, "atext": "Tuberculosis"},
             {"aid": 3, "atext": "Lymphoma"}, {"aid": 4, "atext": "Silicosis"}],
            [{"aid": 1, "atext": "a"}, {"aid": 2, "atext": "b"}],
        ],
    }


def headqa_features(sequence_of_struct: bool):
    from datasets import Features, Image, Value

    answer = {"aid": Value("int32"), "atext": Value("string")}
    # The struct-of-lists layout is how older `datasets` stored Sequence({...}) columns
    # (and how HeadQA copies saved with them still load); newer releases write a list of structs.
    columns = {"aid": [Value("int32")], "atext": [Value("string")]}
    return Features({"name": Value("string"), "year": Value("string"), "category": Value("string"),
                     "qid": Value("int32"), "qtext": Value("string"), "ra": Value("int32"),
                     "image": Image(),
                     "answers": columns if sequence_of_struct else [answer]})


@pytest.mark.parametrize("sequence_of_struct", [False, True])
def test_headqa_ra_is_the_aid_of_the_right_answer(tmp_path, sequence_of_struct):
    rows = headqa_rows()
    if sequence_of_struct:
        rows["answers"] = [{"aid": [a["aid"] for a in ans], "atext": [a["atext"] for a in ans]}
                           for ans in rows["answers"]]
    path = save_hf(tmp_path, rows, headqa_features(sequence_of_struct))
    spec = SourceSpec(name="headqa", adapter="headqa", path=path, split="test")
    items, quarantine, _, store = ingest(spec, tmp_path)
    by_id = {it.id: it for it in items}
    # qid restarts in every exam: the exam name keeps ids apart.
    assert set(by_id) == {"headqa/Cuaderno_2013_1_B-1", "headqa/Cuaderno_2014_1_M-1",
                          "headqa/Cuaderno_2014_1_M-2"}
    bio = by_id["headqa/Cuaderno_2013_1_B-1"]
    assert bio.options == ["Ribosome", "Golgi apparatus", "Mitochondrion", "Lysosome"]  # aid order
    assert bio.answer == "C" and bio.answer_text == "Mitochondrion"
    assert bio.task == "text" and bio.images == []
    assert bio.meta["category"] == "biology" and bio.meta["year"] == "2013"
    assert len(by_id["headqa/Cuaderno_2014_1_M-1"].options) == 5
    img_q = by_id["headqa/Cuaderno_2014_1_M-2"]
    assert img_q.task == "mm_reasoning" and len(img_q.images) == 1 and store.has(img_q.images[0])
    assert img_q.answer_text == "Tuberculosis"
    assert [(q.reason, q.item_id) for q in quarantine] == [
        ("answer_not_in_options", "headqa/Cuaderno_2013_1_B-3")]


def test_headqa_can_skip_image_questions(tmp_path):
    path = save_hf(tmp_path, headqa_rows(), headqa_features(False))
    spec = SourceSpec(name="h", adapter="headqa", path=path, options={"images": "skip"})
    items, _, stats, _ = ingest(spec, tmp_path)
    assert all(not it.images for it in items) and len(items) == 2
    assert stats.skipped == 1 and stats.skip_reasons == {"has_image": 1}


# --------------------------------------------------------------------------- MMLU-Pro


def mmlu_pro_rows():
    ten = ["Insulin", "Glucagon", "Cortisol", "Adrenaline", "Growth hormone", "Thyroxine",
           "Somatostatin", "Aldosterone", "Vasopressin", "Oxytocin"]
    return {
        "question_id": [7001, 7002, 7003, 7004, 7005],
        "question": ["Which hormone lowers blood glucose?",
                     "Which vessel carries oxygenated blood from the lungs to the heart?",
                     "A tort requires which of the following?",
                     "Which hormone is released by the posterior pituitary?",
                     "Which hormone is made by the alpha cells of the pancreas?"],
        "options": [ten, ["Pulmonary artery", "Pulmonary vein", "Aorta", "Vena cava"],
                    ["Duty", "Crime", "Contract"], ten, ten],
        "answer": ["A", "B", "A", "I", "C"],
        "answer_index": [0, 1, 0, 8, 1],
        "cot_content": ["", "A: Let's think step by step. The pulmonary veins return blood.", "", "", ""],
        "category": ["health", "health", "law", "health", "health"],
        "src": ["ori_mmlu-clinical_knowledge", "ori_mmlu-anatomy", "ori_mmlu-professional_law",
                "stemez-Biology", "ori_mmlu-medical_genetics"],
    }


def test_mmlu_pro_keeps_health_and_counts_the_rest_as_skipped(tmp_path):
    spec = SourceSpec(name="mmlu", adapter="mmlu_pro", path=save_hf(tmp_path, mmlu_pro_rows()))
    items, quarantine, stats, _ = ingest(spec, tmp_path)
    assert [it.id for it in items] == ["mmlu/7001", "mmlu/7002", "mmlu/7004"]
    assert len(items[0].options) == 10 and items[0].answer_text == "Insulin"
    assert items[1].options == ["Pulmonary artery", "Pulmonary vein", "Aorta", "Vena cava"]
    assert items[1].answer == "B" and "step by step" in items[1].meta["cot_content"]
    assert items[2].answer == "I" and items[2].answer_text == "Vasopressin"
    assert items[0].meta == {"category": "health", "src": "ori_mmlu-clinical_knowledge"}
    # the law row is skipped (not quarantined); the row whose letter and index disagree is quarantined
    assert stats.skipped == 1 and stats.skip_reasons == {"category_filtered": 1}
    assert [q.reason for q in quarantine] == ["conflicting_answer"]
    assert stats.rows == 5 and stats.items == 3


def test_mmlu_pro_category_option_selects_other_or_all_categories(tmp_path):
    path = save_hf(tmp_path, mmlu_pro_rows())
    law, _, stats, _ = ingest(SourceSpec(name="m", adapter="mmlu_pro", path=path,
                                         options={"category": ["Law"]}), tmp_path)
    assert [it.id for it in law] == ["m/7003"] and stats.skipped == 4
    every, _, stats, _ = ingest(SourceSpec(name="m", adapter="mmlu_pro", path=path,
                                           options={"category": "all"}), tmp_path)
    assert len(every) == 4 and stats.skipped == 0


# --------------------------------------------------------------------------- MedXpertQA (Text)


def test_medxpertqa_text_strips_the_embedded_choices(tmp_path):
    spec = SourceSpec(name="mx", adapter="medxpertqa", path=str(FIX / "medxpertqa" / "text_test.jsonl"),
                      split="test")
    items, quarantine, _, _ = ingest(spec, tmp_path)
    assert quarantine == []
    first, second = items
    assert first.id == "mx/Text-0" and first.task == "text" and len(first.options) == 10
    assert first.answer_text == "Acute intermittent porphyria"
    assert first.question.endswith("Which of the following is the most likely diagnosis?")
    assert "Answer Choices" not in first.question
    # spacing and a final full stop differ from the options, but the block is the same choices
    assert second.question.endswith("Which vitamin should be given first?")
    assert second.options[0] == "Thiamine" and second.answer == "A"
    assert first.meta == {"medical_task": "Diagnosis", "body_system": "Nervous",
                          "question_type": "Reasoning"}


def test_medxpertqa_keeps_the_block_when_asked(tmp_path):
    spec = SourceSpec(name="mx", adapter="medxpertqa", path=str(FIX / "medxpertqa" / "text_test.jsonl"),
                      options={"strip_choices": False})
    items, _, _, _ = ingest(spec, tmp_path)
    assert all("Answer Choices:" in it.question and "(J) " in it.question for it in items)
    assert all(it.meta.get("choices_in_question") for it in items)


def test_strip_embedded_choices_only_removes_a_block_repeating_the_options():
    opts = ["Type (B) reaction", "Anaphylaxis"]
    q = "Stem?\nAnswer Choices: (A) Type (B) reaction (B) Anaphylaxis"
    assert strip_embedded_choices(q, opts) == "Stem?"  # an option may itself contain "(B)"
    assert strip_embedded_choices("Stem?\nAnswer Choices: (A) Other (B) Anaphylaxis", opts) is None
    assert strip_embedded_choices("Stem?\nAnswer Choices: (A) Type (B) reaction", opts) is None
    assert strip_embedded_choices("Stem without choices?", opts) is None
    assert strip_embedded_choices("Answer Choices: (A) Type (B) reaction (B) Anaphylaxis", opts) is None


# --------------------------------------------------------------------------- MedQA


def test_medqa_reads_the_five_option_jsonl_and_the_hf_mirror(tmp_path):
    import json

    jl = tmp_path / "US_train.jsonl"
    rows = [{"question": "A 23-year-old has a fever and a new murmur. Which organism is most likely?",
             "answer": "Staphylococcus aureus",
             "options": {"A": "Streptococcus viridans", "B": "Staphylococcus aureus",
                         "C": "Enterococcus", "D": "Candida", "E": "HACEK group"},
             "meta_info": "step2&3", "answer_idx": "B"}]
    jl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    items, _, _, _ = ingest(SourceSpec(name="medqa5", adapter="medqa", path=str(jl)), tmp_path)
    assert len(items[0].options) == 5 and items[0].answer == "B"
    mirror = save_hf(tmp_path, {"id": ["q1"], "sent1": [rows[0]["question"]],
                                "ending0": ["Streptococcus viridans"], "ending1": ["Staphylococcus aureus"],
                                "ending2": ["Enterococcus"], "ending3": ["Candida"], "label": [1]})
    items, _, _, _ = ingest(SourceSpec(name="medqa4", adapter="medqa", path=mirror), tmp_path)
    assert items[0].id == "medqa4/q1" and items[0].answer_text == "Staphylococcus aureus"


def test_medqa_key_value_options_and_a_blank_option(tmp_path):
    import json

    jl = tmp_path / "medqa.jsonl"
    rows = [{"id": "a", "question": "Which drug reverses heparin?", "answer_idx": "C",
             "options": [{"key": "A", "value": "Vitamin K"}, {"key": "B", "value": "Idarucizumab"},
                         {"key": "C", "value": "Protamine sulfate"}, {"key": "D", "value": "Andexanet"}]},
            {"id": "b", "question": "Which drug reverses warfarin?", "answer_idx": "D",
             "options": {"A": "Vitamin K", "B": "", "C": "Protamine sulfate", "D": "Prothrombin complex"}}]
    jl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    items, quarantine, _, _ = ingest(SourceSpec(name="mq", adapter="medqa", path=str(jl)), tmp_path)
    assert [(it.id, it.answer_text) for it in items] == [("mq/a", "Protamine sulfate")]
    assert [(q.reason, q.item_id) for q in quarantine] == [("blank_option", "mq/b")]
