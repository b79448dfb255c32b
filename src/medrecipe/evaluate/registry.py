"""Benchmarks known by name: the OctoMed suite by category, plus OpenMedReason's sets.

Each entry says which source adapter reads the benchmark, which split / config of the
public copy is the evaluation set, and which category it is averaged into. The data
itself is never bundled or fetched implicitly: the user points ``path`` at a local copy
(a file, a folder, a ``save_to_disk`` folder) or at a Hugging Face hub id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from medrecipe.errors import UserError

CATEGORIES: tuple[str, ...] = ("text", "mm_reasoning", "mm_classification", "vqa")
CATEGORY_TITLES = {
    "text": "Text-only",
    "mm_reasoning": "Multimodal reasoning",
    "mm_classification": "Multimodal classification",
    "vqa": "Medical VQA",
}

DR_GRADES = ["no diabetic retinopathy", "mild diabetic retinopathy",
             "moderate diabetic retinopathy", "severe diabetic retinopathy",
             "proliferative diabetic retinopathy"]


@dataclass(frozen=True)
class Benchmark:
    """A registered benchmark: how to read it and where it is reported."""

    name: str
    title: str  # column header in comparison tables
    category: str
    adapter: str
    suite: str  # "octomed" or "openmedreason"
    hub_id: str | None = None  # a public copy the user may pass as `path`
    hf_config: str | None = None
    hf_split: str | None = None  # the evaluation split of the public copy
    split: str = "test"  # Item.split written for its items
    task: str | None = None  # overrides the adapter's task (Item.task)
    options: dict[str, Any] = field(default_factory=dict)  # adapter options
    classification: bool = False  # also report macro-F1 and balanced accuracy
    trace: bool = False  # score reasoning traces on checklists (OpenMedReason-Bench)
    pass_k_curve: bool = False  # one of the benchmarks whose pass@k curve the paper plots
    note: str = ""


def _b(name: str, title: str, category: str, adapter: str, suite: str = "octomed", **kw: Any) -> Benchmark:
    if category == "mm_classification":
        kw.setdefault("classification", True)
        kw.setdefault("task", "mm_classification")
    return Benchmark(name=name, title=title, category=category, adapter=adapter, suite=suite, **kw)


_ALL: list[Benchmark] = [
    # ---- OctoMed, text-only
    _b("medqa", "MedQA", "text", "medqa", hub_id="GBaker/MedQA-USMLE-4-options",
       hf_split="test", note="4-option test split (1,273)"),
    _b("headqa", "HeadQA", "text", "headqa", hub_id="EleutherAI/headqa", hf_config="en",
       hf_split="test", note="English test split (2,742)"),
    _b("medmcqa", "MedMCQA", "text", "medmcqa", hub_id="openlifescienceai/medmcqa",
       hf_split="validation", split="validation",
       note="validation split (4,183); test answers are not public"),
    _b("medxpertqa_text", "MedXpertQA Text", "text", "medxpertqa", hub_id="TsinghuaC3I/MedXpertQA",
       hf_config="Text", hf_split="test", note="10-option test (2,450)"),
    _b("mmlu_pro_health", "MMLU-Pro Health", "text", "mmlu_pro", hub_id="TIGER-Lab/MMLU-Pro",
       hf_split="test", options={"category": "health"}, note="category == health (818)"),
    # ---- OctoMed, multimodal reasoning
    _b("mmmu_pro_health", "MMMU-Pro Health", "mm_reasoning", "mmmu_pro", hub_id="MMMU/MMMU_Pro",
       hf_config="standard (10 options)", hf_split="test", options={"subset": "health"},
       note="medical subjects of the 10-option standard set"),
    _b("nejm", "NEJM", "mm_reasoning", "generic",
       note="NEJM Image Challenge community scrape (947); give `mapping` for its columns"),
    _b("pmc_vqa", "PMC-VQA", "mm_reasoning", "pmc_vqa", hub_id="xmcmic/PMC-VQA",
       note="test_clean.csv (2,000); set image_root to the unzipped figures"),
    _b("medxpertqa_mm", "MedXpertQA MM", "mm_reasoning", "medxpertqa",
       hub_id="TsinghuaC3I/MedXpertQA", hf_config="MM", hf_split="test", pass_k_curve=True,
       note="5-option test (2,000); set image_root to the unzipped images"),
    # ---- OctoMed, multimodal classification (image folders turned into multiple choice)
    _b("brain_tumor", "Brain Tumor", "mm_classification", "imagefolder",
       options={"preset": "brain_tumor"}, note="glioma, meningioma, pituitary, no tumor"),
    _b("coronahack", "CoronaHack", "mm_classification", "imagefolder",
       options={"preset": "coronahack"}, note="normal, bacterial / viral pneumonia"),
    _b("aptos", "APTOS", "mm_classification", "imagefolder",
       options={"preset": "aptos"}, note="DR grade 0-4"),
    _b("messidor2", "MESSIDOR-2", "mm_classification", "imagefolder",
       options={"preset": "messidor2"}, note="DR grade 0-4"),
    _b("bcss", "BCSS", "mm_classification", "imagefolder",
       options={"preset": "bcss"}, note="tumor, stroma, inflammatory, necrosis"),
    # ---- OpenMedReason, VQA
    _b("slake", "SLAKE", "vqa", "slake", "openmedreason", hub_id="BoKelvin/SLAKE",
       hf_split="test", options={"lang": "en"}, note="English test (1,061)"),
    _b("vqa_rad", "VQA-RAD", "vqa", "vqa_rad", "openmedreason",
       hub_id="flaviagiammarino/vqa-rad", hf_split="test", note="test (451)"),
    _b("pathvqa", "PathVQA", "vqa", "pathvqa", "openmedreason",
       hub_id="flaviagiammarino/path-vqa", hf_split="test", note="test (6.7k)"),
    _b("jama", "JAMA", "mm_reasoning", "generic", "openmedreason", pass_k_curve=True,
       note="JAMA Clinical Challenge scrape; give `mapping` for its columns"),
    _b("openmedreason_bench", "OpenMedReason-Bench", "mm_reasoning", "generic", "openmedreason",
       trace=True, pass_k_curve=True,
       note="curated benchmark split; items carry meta.reference_trace; traces scored on "
            "perception / knowledge / rationale checklists (needs trace.judge)"),
    # ---- OpenMedReason, classification
    _b("ham10000", "HAM10000", "mm_classification", "imagefolder", "openmedreason",
       options={"preset": "ham10000"}, note="7 dermoscopy classes"),
    _b("eyepacs", "EyePACS", "mm_classification", "imagefolder", "openmedreason",
       options={"preset": "eyepacs"}, note="DR grade 0-4"),
    _b("hyperkvasir", "HyperKvasir", "mm_classification", "imagefolder", "openmedreason",
       options={"preset": "hyperkvasir"}, note="classes from its label folders"),
    _b("vindr_cxr", "VinDr-CXR", "mm_classification", "imagefolder", "openmedreason",
       options={"preset": "vindr_cxr"}, note="classes from its label file"),
    _b("vindr_mammo", "VinDr-Mammo", "mm_classification", "imagefolder", "openmedreason",
       options={"preset": "vindr_mammo"}, note="classes from its label file"),
    _b("busi", "BUSI", "mm_classification", "imagefolder", "openmedreason",
       options={"preset": "busi"}, note="normal, benign, malignant"),
]

BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in _ALL}

OCTOMED_SUITE: dict[str, list[str]] = {
    "text": ["medqa", "headqa", "medmcqa", "medxpertqa_text", "mmlu_pro_health"],
    "mm_reasoning": ["mmmu_pro_health", "nejm", "pmc_vqa", "medxpertqa_mm"],
    "mm_classification": ["brain_tumor", "coronahack", "aptos", "messidor2", "bcss"],
}
OPENMEDREASON_SUITE: list[str] = ["openmedreason_bench", "slake", "vqa_rad", "pathvqa", "jama",
                                  "ham10000", "eyepacs",
                                  "hyperkvasir", "vindr_cxr", "vindr_mammo", "busi"]


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark called `name` (UserError listing the known names otherwise)."""
    if name not in BENCHMARKS:
        raise UserError(
            f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}. For another data set,"
            " give `adapter` and `category` in its benchmarks entry."
        )
    return BENCHMARKS[name]


def benchmarks_by_category(suite: str | None = None) -> dict[str, list[Benchmark]]:
    """Registered benchmarks grouped by category, optionally only one suite's."""
    out: dict[str, list[Benchmark]] = {c: [] for c in CATEGORIES}
    for b in _ALL:
        if suite is None or b.suite == suite:
            out[b.category].append(b)
    return {c: v for c, v in out.items() if v}
