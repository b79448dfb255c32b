"""The curation recipe: figure-record sources, visual thresholds, model steps, checks, probe.

A curation recipe is its own YAML file (`kind: curate`), run with `medrecipe curate`:

    kind: curate
    name: my_curation
    sources:
      - {name: pmc, adapter: pmc_oa, path: /data/pmc_oa/pmc_oa.jsonl, image_root: /data/pmc_oa/images}
    teachers:
      judge: {model: gpt-x, base_url: https://api.example.com/v1, api_key_env: KEY}
    context: {teacher: judge}
    tasks: {teacher: judge}
    questions: {teacher: judge}
    probe: {teacher: judge, k: 4}
    # part 2 (optional): source-grounded traces, splits by article, the training mix
    draft: {teacher: drafter}
    refine: {teacher: judge}
    verify: {teacher: verifier}
    split: {seed: 0, benchmark: 1500, grpo: 2000}
    mix: {auxiliary: [{recipe: octomed_vqa.yaml, benchmark_source: curated_bench}]}
    grpo: {curated: 2560, sources: {pmc_vqa: 2560}}

Teachers are the same `TeacherConfig` models the OctoMed recipe uses; each model-backed
step names one and may override its prompt template and sampling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from medrecipe.config import (
    ExportConfig,
    ReportConfig,
    SamplingConfig,
    SourceSpec,
    TeacherConfig,
    _Model,
    check_unique_names,
    read_yaml,
    resolve_path,
    validate_model,
)
from medrecipe.curate.taxonomy import CATEGORY_IDS
from medrecipe.errors import RecipeError

FIGURE_FIELDS = ("id", "image", "sub_caption", "caption", "references", "article_id",
                 "figure_id", "panel", "license", "modality")


class FigureSourceSpec(_Model):
    """One source of figure records: an adapter (or preset) plus where the data lives."""

    name: str  # unique within the recipe; becomes FigureRecord.source and the id prefix
    adapter: str = "generic"  # generic, open_pmc, pmc_oa, medicat, roco
    path: str | None = None  # file, folder, or Hugging Face hub id
    format: Literal["auto", "jsonl", "json", "csv", "parquet", "hf", "hf_disk"] = "auto"
    hf_config: str | None = None
    hf_split: str | None = None
    revision: str | None = None  # pinned hub revision; recorded in the manifest
    limit: int | None = Field(default=None, ge=1)
    mapping: dict[str, str] = Field(default_factory=dict)  # FigureRecord field -> column
    image_root: str | None = None  # folder that relative image paths resolve against
    options: dict[str, Any] = Field(default_factory=dict)  # adapter-specific settings
    modality: str | None = None  # default modality for records that carry none
    license: str | None = None  # default license for records that carry none

    @field_validator("mapping")
    @classmethod
    def _known_fields(cls, v: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(v) - set(FIGURE_FIELDS) - {"meta"})
        if unknown:
            raise ValueError(f"mapping names unknown FigureRecord field(s) {', '.join(unknown)}; "
                             f"known: {', '.join(FIGURE_FIELDS)}, meta")
        return v

    def reader_spec(self) -> SourceSpec:
        """The SourceSpec the shared record readers understand (same path, format, limit)."""
        return SourceSpec(name=self.name, path=self.path, format=self.format,
                          hf_config=self.hf_config, hf_split=self.hf_split,
                          revision=self.revision, limit=self.limit, image_root=self.image_root,
                          options=self.options)


class VisualConfig(_Model):
    """Pixel-level usability checks; a threshold set to null switches its check off."""

    enabled: bool = True
    min_short_side: int | None = Field(default=256, ge=1)  # pixels
    max_aspect_ratio: float | None = Field(default=3.0, ge=1.0)  # long side / short side
    max_border_white_fraction: float | None = Field(default=0.9, ge=0.0, le=1.0)
    min_sharpness: float | None = Field(default=20.0, ge=0.0)  # variance of the Laplacian
    min_effective_resolution: int | None = Field(default=192, ge=1)  # pixels (short side)
    min_jpeg_quality: float | None = Field(default=30.0, ge=1.0, le=100.0)  # JPEG files
    max_blockiness: float | None = Field(default=1.3, ge=1.0)  # other formats (PNG, ...)
    # Measuring (a change re-decodes every image; thresholds above do not):
    analysis_side: int = Field(default=1024, ge=64)  # longest side of the analysis image
    workers: int | None = Field(default=None, ge=1)  # decoding threads (default: cores, <= 8)


# Greedy-ish but not fully greedy: a re-asked prompt (after an unparseable reply) is a new
# sample index with its own seed, and a small temperature lets it come out differently.
_JUDGE_SAMPLING = {"temperature": 0.2, "top_p": 1.0, "max_tokens": 1024, "seed": 0}


class ModelStep(_Model):
    """A model-backed step: which teacher, which template, how to sample, how often to re-ask."""

    teacher: str | None = None  # a name under `teachers:`
    template: str = ""  # packaged template name or path to a .j2 file
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(**_JUDGE_SAMPLING))
    parse_retries: int = Field(default=2, ge=0)  # re-asks after an unparseable reply
    with_image: bool = True  # send the figure (needs a multimodal teacher)


class EnglishConfig(_Model):
    """The model-free English check that runs before the context judge."""

    enabled: bool = True
    min_words: int = Field(default=6, ge=1)  # shorter texts are undetermined (not rejected)
    min_ascii_letters: float = Field(default=0.9, ge=0.0, le=1.0)  # share of Latin a-z letters
    min_function_words: float = Field(default=0.06, ge=0.0, le=1.0)  # English share of words


class ContextConfig(ModelStep):
    """Text and context judge: four criteria, each with a verdict and a one-sentence reason."""

    enabled: bool = True
    template: str = "curate_context"
    english: EnglishConfig = Field(default_factory=EnglishConfig)
    structured_output: bool = False  # also send a JSON-schema response_format


class TasksConfig(ModelStep):
    """Clinical task assignment: the categories each record supports."""

    template: str = "curate_tasks"
    categories: list[str] = Field(default_factory=lambda: list(CATEGORY_IDS))
    max_per_record: int | None = Field(default=None, ge=1)  # keep the first N (taxonomy order)

    @field_validator("categories")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        unknown = [c for c in v if c not in CATEGORY_IDS]
        if unknown:
            raise ValueError(f"unknown categories {', '.join(unknown)}; "
                             f"known: {', '.join(CATEGORY_IDS)}")
        if not v:
            raise ValueError("list at least one category")
        return v


class QuestionsConfig(ModelStep):
    """Constrained question writing: one call per (record, category)."""

    template: str = "curate_question"
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(
        temperature=0.7, top_p=0.95, max_tokens=2048, seed=0))


class ChecksConfig(_Model):
    """Code checks on written questions (each failure is its own quarantine reason)."""

    leakage: bool = True  # correct option text or the key finding in the stem
    options: bool = True  # duplicate options, a single plausible option
    positional: bool = True  # spatial items: positional options, the stem says "the finding"
    min_leak_chars: int = Field(default=4, ge=1)  # shorter answers ("B", "II") are not searched
    max_length_ratio: float = Field(default=2.5, gt=1.0)  # correct option vs longest distractor


class ProbeConfig(ModelStep):
    """Text-only probe: the question without its image, k samples; all correct = text_solvable."""

    enabled: bool = True
    template: str = "curate_probe"
    k: int = Field(default=4, ge=1)
    with_image: bool = False
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(
        temperature=0.7, top_p=0.95, max_tokens=1024, seed=0))

    @field_validator("with_image")
    @classmethod
    def _text_only(cls, v: bool) -> bool:
        if v:
            raise ValueError("the probe is text-only; with_image must be false")
        return v


# --------------------------------------------------------------------------- part 2: traces


class DraftConfig(ModelStep):
    """Draft: one explanation per item from the image, source context, question and answer."""

    template: str = "curate_draft"
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(
        temperature=0.7, top_p=0.95, max_tokens=2048, seed=0))
    min_words: int = Field(default=20, ge=1)  # a shorter reply is no draft (re-asked)
    # Items whose sub-caption, caption and in-text references hold fewer words than this
    # have no source context to ground a trace in: excluded as `no_source_context`.
    min_context_words: int = Field(default=8, ge=1)


class RefineConfig(ModelStep):
    """Refine: the draft rewritten into the three delimited sections, unsupported claims cut."""

    template: str = "curate_refine"
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(
        temperature=0.3, top_p=0.95, max_tokens=2048, seed=0))
    min_section_words: int = Field(default=4, ge=1)  # a shorter section counts as missing
    check_options: bool = True  # a justification naming another option: refine:wrong_option


class VerifyConfig(ModelStep):
    """Verify: a verdict with a reason on source consistency, answer justification, utility."""

    enabled: bool = True  # false keeps every refined trace (the paper always verifies)
    template: str = "curate_verify"
    structured_output: bool = False  # also send the verdict JSON schema as response_format


Share = int | float  # an item count (int >= 0) or a share of the traced items (0 <= x < 1)


def _check_share(v: Share, label: str) -> Share:
    if isinstance(v, bool):
        raise ValueError(f"{label} must be a number of items or a share, not {v!r}")
    if isinstance(v, int):
        if v < 0:
            raise ValueError(f"{label} must be >= 0 items, got {v}")
    elif not 0.0 <= v < 1.0:
        raise ValueError(f"{label}: a share must lie in [0, 1) (write a whole number for a "
                         f"count of items), got {v}")
    return v


class SplitConfig(_Model):
    """Train / GRPO hold-out / benchmark splits made by article (all figures of an article
    go to one split); sizes are items, filled article by article in a seeded order."""

    seed: int = 0
    benchmark: Share = 0.1
    grpo: Share = 0.05
    benchmark_name: str = Field(default="curated_bench", pattern=r"^[A-Za-z0-9_.-]+$")

    @field_validator("benchmark", "grpo")
    @classmethod
    def _share(cls, v: Share, info) -> Share:
        return _check_share(v, f"split.{info.field_name}")


class AuxiliarySpec(_Model):
    """Auxiliary VQA items with traces distilled by the OctoMed pipeline (`medrecipe run`)."""

    recipe: str | None = None  # an OctoMed recipe, brought up to date before the mix
    run: str | None = None  # or the run directory of one that was already run
    run_dir: str | None = None  # where `recipe` runs (default <curate run>/auxiliary/<name>)
    # A `role: benchmark` source of `recipe` whose path is set to this run's benchmark split,
    # so the OctoMed prepare stage decontaminates and dedups images against it.
    benchmark_source: str | None = None
    overrides: list[str] = Field(default_factory=list)  # dotted overrides for `recipe`

    @model_validator(mode="after")
    def _one(self) -> AuxiliarySpec:
        if (self.recipe is None) == (self.run is None):
            raise ValueError("name either `recipe` (an OctoMed recipe to run) or `run` (a run "
                             "directory), not both")
        if self.run is not None and (self.benchmark_source or self.overrides or self.run_dir):
            raise ValueError("benchmark_source, overrides and run_dir apply to `recipe` only")
        return self


class CurateMixConfig(_Model):
    """The SFT training mix: curated train items plus auxiliary items, with quotas."""

    auxiliary: list[AuxiliarySpec] = Field(default_factory=list)
    quotas: dict[str, int] = Field(default_factory=dict)  # source -> max questions
    # family -> max questions; a curated item's family is its task family (perception,
    # diagnosis, ...), an auxiliary item's is its meta.family or else its task.
    family_quotas: dict[str, int] = Field(default_factory=dict)
    val_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)  # curated: drawn by article
    seed: int = 0

    @field_validator("quotas", "family_quotas")
    @classmethod
    def _non_negative(cls, v: dict[str, int]) -> dict[str, int]:
        bad = {k: n for k, n in v.items() if n < 0}
        if bad:
            raise ValueError(f"quotas must be >= 0, got {bad}")
        return v


def _grpo_instruction() -> str:
    """The instruction `medrecipe train grpo` puts after items-table prompts (its rewards
    score a think block followed by an answer block)."""
    from medrecipe.train.config import GRPOConfig

    return GRPOConfig.model_fields["instruction"].default


class GrpoSetConfig(_Model):
    """The GRPO set: held-out curated items plus named auxiliary sources, counted per source."""

    enabled: bool = True
    curated: int | None = Field(default=None, ge=0)  # from the grpo split (None: all of it)
    sources: dict[str, int] = Field(default_factory=dict)  # auxiliary source -> questions
    seed: int = 0
    dataset_name: str = Field(default="grpo", pattern=r"^[A-Za-z0-9_.-]+$")
    # Appended to every prompt (after the options); by default the one GRPO's format
    # reward expects. null: none.
    instruction: str | None = Field(default_factory=_grpo_instruction)
    system_prompt: str | None = None


class CurateRecipe(_Model):
    """A curation recipe: figure records in, image-dependent clinical questions out."""

    kind: Literal["curate"] = "curate"
    name: str
    run_dir: str | None = None  # default: runs/<name>
    seed: int = 0
    image_store: str | None = None  # default: <run>/images
    batch_size: int = Field(default=4096, ge=1)
    sources: list[FigureSourceSpec] = Field(min_length=1)
    teachers: dict[str, TeacherConfig] = Field(default_factory=dict)
    budget_usd: float | None = Field(default=None, gt=0)  # total spend cap of one invocation
    cache_dir: str | None = None  # default: <run>/cache
    visual: VisualConfig = Field(default_factory=VisualConfig)
    context: ContextConfig = Field(default_factory=ContextConfig)
    tasks: TasksConfig = Field(default_factory=TasksConfig)
    questions: QuestionsConfig = Field(default_factory=QuestionsConfig)
    checks: ChecksConfig = Field(default_factory=ChecksConfig)
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    # Part 2 runs when `draft` is set (refine and verify then too).
    draft: DraftConfig | None = None
    refine: RefineConfig | None = None
    verify: VerifyConfig | None = None
    split: SplitConfig = Field(default_factory=SplitConfig)
    mix: CurateMixConfig = Field(default_factory=CurateMixConfig)
    export: ExportConfig = Field(default_factory=lambda: ExportConfig(dataset_name="curated"))
    grpo: GrpoSetConfig = Field(default_factory=GrpoSetConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)

    @property
    def traces(self) -> bool:
        """Whether part 2 (draft, refine, verify, splits, mix, exports) runs."""
        return self.draft is not None

    @model_validator(mode="after")
    def _cross_checks(self) -> CurateRecipe:
        check_unique_names(s.name for s in self.sources)
        steps: list[tuple[str, ModelStep, bool]] = [
            ("context", self.context, self.context.enabled), ("tasks", self.tasks, True),
            ("questions", self.questions, True), ("probe", self.probe, self.probe.enabled)]
        given = [n for n in ("draft", "refine", "verify") if getattr(self, n) is not None]
        if given and len(given) < 3:
            missing = [n for n in ("draft", "refine", "verify") if n not in given]
            raise ValueError(f"traces need draft, refine and verify; add {', '.join(missing)} "
                             "(verify: {enabled: false} keeps traces unverified)")
        if self.draft is not None and self.refine is not None and self.verify is not None:
            steps += [("draft", self.draft, True), ("refine", self.refine, True),
                      ("verify", self.verify, self.verify.enabled)]
        for label, step, on in steps:
            if not on:
                continue
            if step.teacher is None:
                if len(self.teachers) != 1:
                    raise ValueError(f"{label}.teacher: name one of the teachers "
                                     f"({', '.join(sorted(self.teachers)) or 'none defined'})")
                step.teacher = next(iter(self.teachers))
            elif step.teacher not in self.teachers:
                raise ValueError(f"{label}.teacher names unknown teacher {step.teacher!r}")
        if self.grpo.sources and not self.mix.auxiliary:
            raise ValueError("grpo.sources names auxiliary sources, but mix.auxiliary lists no "
                             "auxiliary run to draw them from")
        return self

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.name

    def model_steps(self) -> list[ModelStep]:
        """Every model-backed step the recipe configures (switched off ones included)."""
        steps: list[ModelStep] = [self.context, self.tasks, self.questions, self.probe]
        return steps + [s for s in (self.draft, self.refine, self.verify) if s is not None]


def curate_recipe_from_data(data: Any, path: str | None = None) -> CurateRecipe:
    """Validate curation recipe data; RecipeError lists every problem with its YAML path."""
    return validate_model(CurateRecipe, data, path, what="curation recipe")


def load_curate_recipe(path: str | Path, overrides: list[str] | None = None
                       ) -> tuple[CurateRecipe, dict[str, Any]]:
    """Read, override and validate a curation recipe; relative paths resolve next to it."""
    data, base = read_yaml(path, overrides, CurateRecipe)
    if not is_curate_data(data):
        raise RecipeError([("kind", "a curation recipe says `kind: curate` (a recipe without it "
                                    "runs with `medrecipe run`)")], str(path))
    recipe = curate_recipe_from_data(data, str(path))
    for s in recipe.sources:
        s.path = resolve_path(s.path, base)
        s.image_root = resolve_path(s.image_root, base)
    for t in recipe.teachers.values():
        t.replay_path = resolve_path(t.replay_path, base)
    for step in recipe.model_steps():
        if step.template.endswith(".j2"):
            step.template = resolve_path(step.template, base) or step.template
    for aux in recipe.mix.auxiliary:
        aux.recipe = resolve_path(aux.recipe, base) if aux.recipe else None
    if recipe.cache_dir:
        recipe.cache_dir = resolve_path(recipe.cache_dir, base)
    return recipe, data


def is_curate_data(data: Any) -> bool:
    """True when YAML data declares itself a curation recipe (`kind: curate`)."""
    return isinstance(data, dict) and data.get("kind") == "curate"
