"""Evaluation recipe: the model under test, prompt, sampling, seeds and benchmarks.

An evaluation recipe is its own small YAML file::

    name: student-v1
    model: {backend: openai_compat, model: my-student, base_url: http://127.0.0.1:8000/v1}
    template: eval_boxed           # or eval_direct, eval_think, or a path to a .j2 file
    sampling: {temperature: 0.6, top_p: 0.95, max_tokens: 8192}
    seeds: [0, 1, 2, 3, 4]
    benchmarks:
      - {name: medqa, path: /data/medqa/test.jsonl}
      - {name: my_set, adapter: generic, category: text, path: my.jsonl}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from medrecipe.config import (
    SourceSpec,
    TeacherConfig,
    read_yaml,
    resolve_path,
    validate_model,
)
from medrecipe.evaluate.registry import BENCHMARKS, CATEGORIES

SEED_STRIDE = 100_000


def endpoint_seed(seed: int, sample: int) -> int:
    """Seed sent to the endpoint for sample `sample` of seed `seed` (configs that would
    send two samples with one seed are rejected when validated)."""
    return seed + SEED_STRIDE * sample


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BenchmarkSpec(_Model):
    """One benchmark to run: a registered name (plus its data location) or a custom source."""

    name: str
    path: str | None = None  # local file / folder or hub id (required)
    adapter: str | None = None  # default: the registry's adapter (required for custom names)
    category: Literal["text", "mm_reasoning", "mm_classification", "vqa"] | None = None
    title: str | None = None
    format: Literal["auto", "jsonl", "json", "csv", "parquet", "hf", "hf_disk"] = "auto"
    hf_config: str | None = None
    hf_split: str | None = None
    revision: str | None = None  # pinned hub revision, recorded in the results
    split: str | None = None
    task: str | None = None
    limit: int | None = Field(default=None, ge=1)
    mapping: dict[str, str] = Field(default_factory=dict)
    image_root: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    classification: bool | None = None
    trace: bool | None = None  # score reasoning traces on checklists (default: the registry's)

    @model_validator(mode="after")
    def _known_or_complete(self) -> BenchmarkSpec:
        if self.name not in BENCHMARKS and (self.adapter is None or self.category is None):
            raise ValueError(
                f"{self.name!r} is not a registered benchmark ({', '.join(BENCHMARKS)}); "
                "give `adapter` and `category` to evaluate a custom data set"
            )
        if not self.path:
            reg = BENCHMARKS.get(self.name)
            hint = f" (its public copy is the hub id {reg.hub_id!r})" if reg and reg.hub_id else ""
            raise ValueError(f"benchmark {self.name!r} needs `path`: a local file or folder, or a "
                             f"Hugging Face hub id{hint}")
        return self

    def resolved(self) -> ResolvedBenchmark:
        """Registry defaults filled in: what the runner actually reads."""
        reg = BENCHMARKS.get(self.name)
        category = self.category or (reg.category if reg else "text")
        adapter = self.adapter or (reg.adapter if reg else "generic")
        # Registry adapter options (a preset, a subject filter) only apply to that adapter.
        opts = dict(reg.options) if reg and reg.adapter == adapter else {}
        opts.update(self.options)
        spec = SourceSpec(
            name=self.name,
            adapter=adapter,
            path=self.path,
            format=self.format,
            hf_config=self.hf_config if self.hf_config is not None else (reg.hf_config if reg else None),
            hf_split=self.hf_split if self.hf_split is not None else (reg.hf_split if reg else None),
            revision=self.revision,
            split=self.split or (reg.split if reg else "test"),
            role="benchmark",
            task=self.task or (reg.task if reg else None),
            limit=self.limit,
            mapping=dict(self.mapping),
            image_root=self.image_root,
            options=opts,
        )
        classification = self.classification
        if classification is None:
            classification = reg.classification if reg else category == "mm_classification"
        trace = self.trace if self.trace is not None else bool(reg and reg.trace)
        return ResolvedBenchmark(name=self.name, title=self.title or (reg.title if reg else self.name),
                                 category=category, classification=classification, trace=trace,
                                 source=spec)


class ResolvedBenchmark(_Model):
    name: str
    title: str
    category: str
    classification: bool
    trace: bool = False
    source: SourceSpec


class TraceConfig(_Model):
    """Trace scoring (OpenMedReason-Bench): the judge model, its prompts and where checklists live."""

    judge: TeacherConfig | None = None  # required when a benchmark is trace-scored
    checklist_template: str = "trace_checklist"
    presence_template: str = "trace_presence"
    correctness_template: str = "trace_correctness"
    pairwise_template: str = "trace_pairwise"
    # Shared by runs so that every model is scored on the same checklists
    # (default: <run folder's parent>/checklists, e.g. runs/eval/checklists).
    checklist_dir: str | None = None
    seed: int = 0  # judge seed (greedy decoding; a different seed is a different cache entry)
    checklist_max_tokens: int = Field(default=2048, ge=16)
    probe_max_tokens: int = Field(default=256, ge=16)
    max_trace_chars: int = Field(default=30_000, ge=200)  # longer traces keep head and tail
    json_mode: bool = True  # send an OpenAI response_format JSON schema with judge requests
    budget_usd: float | None = None  # cap on judge spend per evaluation run


class EvalSampling(_Model):
    """Sampling settings of the model under test (OctoMed: 0.6 / 0.95 / 8,192)."""

    temperature: float = Field(default=0.6, ge=0.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(default=8192, ge=1)
    extra: dict[str, Any] = Field(default_factory=dict)  # passed through to the endpoint


class ForcedEndConfig(_Model):
    """Closing an unfinished thinking block and asking for the answer."""

    enabled: bool = True
    open_tag: str = "<think>"
    close_tag: str = "</think>"
    # Appended after the close tag; the model then only has to write the answer.
    cue: str = "\n\nThinking stops here; I commit to my best answer.\n\nThe final answer is \\boxed{"
    max_tokens: int = Field(default=64, ge=1)


class BootstrapConfig(_Model):
    resamples: int = Field(default=10_000, ge=1)
    seed: int = 0
    level: float = Field(default=0.95, gt=0.0, lt=1.0)


class EvalConfig(_Model):
    """One evaluation run: a model under test over a set of benchmarks."""

    name: str
    label: str | None = None  # display name in comparison tables (default: name)
    run_dir: str | None = None  # default: runs/eval/<name>
    model: TeacherConfig
    template: str = "eval_boxed"  # eval_boxed | eval_direct | eval_think | path to a .j2
    sampling: EvalSampling = Field(default_factory=EvalSampling)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4], min_length=1)
    samples_per_seed: int = Field(default=1, ge=1)  # extra samples per seed, for voting
    vote_k: int | None = Field(default=None, ge=1)  # older name of vote_samples
    # Samples per item in the majority vote (None: all), drawn evenly across seeds: sample 0
    # of every seed, then sample 1 of every seed, ...; results name the samples used.
    vote_samples: int | None = Field(default=None, ge=1)
    # Samples with no answer: "count" votes them as one "[invalid]" answer (as
    # lm-evaluation-harness does: a vote most samples fail to answer is wrong); "drop"
    # leaves them out of the vote.
    vote_invalid: Literal["count", "drop"] = "count"
    pass_k: list[int] = Field(default_factory=lambda: [1])
    forced_end: ForcedEndConfig = Field(default_factory=ForcedEndConfig)
    bootstrap: BootstrapConfig = Field(default_factory=BootstrapConfig)
    trace: TraceConfig = Field(default_factory=TraceConfig)
    benchmarks: list[BenchmarkSpec] = Field(min_length=1)
    image_store: str | None = None  # default: <run>/images
    cache_dir: str | None = None  # default: <run>/cache (share it between runs to reuse answers)
    tokenizer: str | None = None  # local tokenizer for thinking/answer token counts
    budget_usd: float | None = None
    # Model that reads the option a multiple-choice reply commits to when no extraction
    # rule read it (method "judge"); off when None. Never asked about replies refused for
    # several letters, an invalid answer, an invented continuation or open thinking.
    choice_judge: TeacherConfig | None = None
    choice_judge_template: str = "judge_choice"
    choice_judge_budget_usd: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _checks(self) -> EvalConfig:
        misplaced = {"template", "sampling"} & self.model.model_fields_set
        if misplaced:
            keys = ", ".join(sorted(misplaced))
            raise ValueError(
                f"model.{{{keys}}} is not used by evaluation; set `{keys}` at the top level of "
                "the evaluation recipe instead"
            )
        names = [b.name for b in self.benchmarks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"benchmark names must be unique; repeated: {', '.join(dupes)}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds must be distinct")
        total = len(self.seeds) * self.samples_per_seed
        for k in self.pass_k:
            if not 1 <= k <= total:
                raise ValueError(f"pass_k {k} needs 1 <= k <= seeds x samples_per_seed = {total}")
        if self.vote_k is not None and self.vote_samples is not None and self.vote_k != self.vote_samples:
            raise ValueError("vote_k is the older name of vote_samples; set only vote_samples")
        n_vote = self.vote_size
        if n_vote is not None and n_vote > total:
            raise ValueError(f"vote_samples {n_vote} is more than the {total} samples per item")
        seen: dict[int, tuple[int, int]] = {}
        for seed in self.seeds:
            for j in range(self.samples_per_seed):
                es = endpoint_seed(seed, j)
                if es in seen:
                    s0, j0 = seen[es]
                    raise ValueError(
                        f"seed {seed} sample {j} and seed {s0} sample {j0} would both be sent "
                        f"with endpoint seed {es} (sample j of seed s uses s + {SEED_STRIDE} * j); "
                        "choose seeds that differ by less than that stride")
                seen[es] = (seed, j)
        traced = [b.name for b in self.benchmarks if b.resolved().trace]
        if traced and self.trace.judge is None:
            raise ValueError(f"benchmark(s) {', '.join(traced)} score reasoning traces and need a "
                             "judge model: set `trace.judge` (backend, model, base_url), or "
                             "`trace: false` on the benchmark entry")
        return self

    @property
    def vote_size(self) -> int | None:
        """Samples per item in the majority vote (None: all)."""
        return self.vote_samples if self.vote_samples is not None else self.vote_k

    @property
    def display_name(self) -> str:
        return self.label or self.name

    def resolved_run_dir(self, base: Path | None = None) -> Path:
        """The run directory (relative paths resolve against `base`)."""
        p = Path(self.run_dir) if self.run_dir else Path("runs") / "eval" / self.name
        return p if p.is_absolute() or base is None else base / p


def eval_config_from_data(data: Any, path: str | None = None) -> EvalConfig:
    """Validate evaluation-recipe data; RecipeError lists every problem with its YAML path."""
    return validate_model(EvalConfig, data, path, what="evaluation recipe")


def load_eval_config(path: str | Path, overrides: list[str] | None = None) -> EvalConfig:
    """Read, override (`a.b=value`) and validate an evaluation recipe file."""
    data, base = read_yaml(path, overrides, EvalConfig)
    cfg = eval_config_from_data(data, str(path))
    # Relative data paths resolve against the recipe's folder, like training recipes.
    for b in cfg.benchmarks:
        b.path = resolve_path(b.path, base)
        b.image_root = resolve_path(b.image_root, base)
    cfg.tokenizer = resolve_path(cfg.tokenizer, base)
    cfg.model.replay_path = resolve_path(cfg.model.replay_path, base)
    if cfg.trace.judge is not None:
        cfg.trace.judge.replay_path = resolve_path(cfg.trace.judge.replay_path, base)
    if cfg.model.backend == "transformers_local":
        cfg.model.model = resolve_path(cfg.model.model, base)
    if cfg.choice_judge is not None:
        cfg.choice_judge.replay_path = resolve_path(cfg.choice_judge.replay_path, base)
        cfg.choice_judge_template = resolve_path(cfg.choice_judge_template, base) or "judge_choice"
    return cfg


__all__ = ["SEED_STRIDE", "endpoint_seed", "BenchmarkSpec", "ResolvedBenchmark", "EvalSampling",
           "ForcedEndConfig", "BootstrapConfig", "EvalConfig", "TraceConfig", "CATEGORIES",
           "eval_config_from_data",
           "load_eval_config"]
