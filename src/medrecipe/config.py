"""Recipe models: one YAML file, validated by pydantic, with dotted command-line overrides.

Every stage takes one config object from here. Errors name the YAML path
(`sources.0.path`) so a bad recipe fails before any work.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from medrecipe.errors import RecipeError
from medrecipe.overrides import apply_overrides

M = TypeVar("M", bound=BaseModel)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- sources


class SourceSpec(_Model):
    """One question source: an adapter plus where its data lives."""

    name: str  # unique within the recipe; becomes Item.source
    adapter: str = "generic"  # registry name (see `medrecipe sources`)
    path: str | None = None  # local file / folder, or a Hugging Face hub id
    format: Literal["auto", "jsonl", "json", "csv", "parquet", "hf", "hf_disk"] = "auto"
    hf_config: str | None = None  # `name` argument of datasets.load_dataset
    hf_split: str | None = None  # split to read from a Hugging Face dataset
    revision: str | None = None  # pinned hub revision; recorded in the manifest
    split: str = "train"  # Item.split written for every row
    role: Literal["train", "benchmark"] = "train"
    task: str | None = None  # overrides the adapter's task
    limit: int | None = Field(default=None, ge=1)  # rows read (before adapter filters)
    mapping: dict[str, str] = Field(default_factory=dict)  # Item field -> source column
    image_root: str | None = None  # folder that relative image paths resolve against
    options: dict[str, Any] = Field(default_factory=dict)  # adapter-specific settings
    modality: str | None = None
    anatomy: str | None = None
    # Image paths (absolute, relative with "..", or symlinks) that lead outside the source's
    # folders (image_root, the data file's folder) are refused unless this is true.
    allow_images_outside_root: bool = False


# --------------------------------------------------------------------------- prepare


class DecontaminateConfig(_Model):
    enabled: bool = True
    against: list[str] = Field(default_factory=list)  # benchmark source names; empty: every one
    n: int = Field(default=16, ge=1)
    collapse_duplicates: bool = True


class ImageDedupConfig(_Model):
    enabled: bool = True
    against: list[str] | None = None  # None: every benchmark source
    near_duplicates: bool = False
    hamming_threshold: int = Field(default=4, ge=0, le=64)
    remove_near_duplicates: bool = False  # near duplicates are reported; remove them too?


class ResizeConfig(_Model):
    enabled: bool = True
    factor: int = 28
    min_pixels: int = 56 * 56
    max_pixels: int = 262_144
    workers: int | None = None  # decoding threads (default: up to 8, one per core)


class BalanceConfig(_Model):
    enabled: bool = False
    sources: list[str] | None = None  # None: every mm_classification source
    per_class: int | Literal["equal"] = "equal"
    seed: int = 0


class PrepareConfig(_Model):
    decontaminate: DecontaminateConfig = Field(default_factory=DecontaminateConfig)
    dedup_images: ImageDedupConfig = Field(default_factory=ImageDedupConfig)
    resize: ResizeConfig = Field(default_factory=ResizeConfig)
    balance: BalanceConfig = Field(default_factory=BalanceConfig)


# --------------------------------------------------------------------------- teachers / generate


class Price(_Model):
    input_per_mtok: float = 0.0  # USD per million prompt tokens
    output_per_mtok: float = 0.0  # USD per million completion tokens


class SamplingConfig(_Model):
    temperature: float = Field(default=0.6, ge=0.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(default=8192, ge=1)
    seed: int | None = None
    extra: dict[str, Any] = Field(default_factory=dict)  # passed through to the endpoint


def _http_url(v: str) -> str:
    """`v` stripped, if it is an http(s) URL with a host; else ValueError saying why not."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(v.strip())
        port = parts.port  # raises on a non-numeric port
    except ValueError as e:
        raise ValueError(f"{v!r} is not a valid URL: {e}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{v!r}: the scheme must be http or https, not "
                         f"{parts.scheme or 'missing'!r} (a typo such as htps://?)")
    if not parts.hostname:
        raise ValueError(f"{v!r} has no host name")
    del port
    return v.strip()


HttpUrl = Annotated[str, AfterValidator(_http_url)]


class EndpointConfig(_Model):
    """One server of a teacher's fleet; unset limits are the teacher's (applied per endpoint)."""

    url: HttpUrl
    max_in_flight: int | None = Field(default=None, ge=1)
    requests_per_minute: float | None = Field(default=None, gt=0)
    tokens_per_minute: float | None = Field(default=None, gt=0)


class TeacherConfig(_Model):
    """A model reachable through a backend (a teacher, a judge or a model under test)."""

    backend: Literal["openai_compat", "transformers_local", "replay"] = "openai_compat"
    model: str
    base_url: str | None = None
    # A fleet (openai_compat): several servers of the same model, one client. Set one of
    # base_url (one server), base_urls (plain list) or endpoints (list with per-server limits).
    base_urls: list[HttpUrl] = Field(default_factory=list)
    endpoints: list[EndpointConfig] = Field(default_factory=list)
    api_key_env: str | None = None  # name of the environment variable holding the key
    replay_path: str | None = None  # for backend: replay
    template: str = "long_reasoning"  # prompt template name or path to a .j2 file
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    native_n: bool = True  # send n in one request when the endpoint supports it
    max_in_flight: int = Field(default=64, ge=1)  # per endpoint
    requests_per_minute: float | None = Field(default=None, gt=0)  # per endpoint
    tokens_per_minute: float | None = Field(default=None, gt=0)  # per endpoint
    max_retries: int = Field(default=6, ge=0)
    timeout_s: float = Field(default=600.0, gt=0)
    backoff_base_s: float = Field(default=1.0, gt=0)  # first retry delay; doubles per attempt
    backoff_max_s: float = Field(default=60.0, gt=0)  # cap on one retry delay
    api_key_header: str | None = None  # None: "Authorization: Bearer <key>"; Azure: "api-key"
    url_params: dict[str, str] = Field(default_factory=dict)  # query string, e.g. api-version
    http_transport: Literal["fast", "httpx"] = "fast"  # openai_compat: lean HTTP/1.1 or httpcore
    price: Price = Field(default_factory=Price)
    device: str | None = None  # transformers_local: "cpu", "cuda", ...
    dtype: str | None = None
    allow_empty: bool = False  # keep replies with empty content (else: a failed attempt)
    # openai_compat: send the API key over plain http to a non-loopback host (never do this
    # unless the network between you and the endpoint is yours).
    allow_insecure_http: bool = False

    @field_validator("base_url")
    @classmethod
    def _url_is_http(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None  # blank: no endpoint (the backend says it needs one, if it does)
        return _http_url(v)

    @model_validator(mode="after")
    def _one_fleet(self) -> TeacherConfig:
        given = [k for k, v in (("base_url", self.base_url), ("base_urls", self.base_urls),
                                ("endpoints", self.endpoints)) if v]
        if len(given) > 1:
            raise ValueError(f"set only one of base_url, base_urls and endpoints (this teacher "
                             f"sets {' and '.join(given)}); base_url is the one-server case")
        if self.backend != "openai_compat" and (self.base_urls or self.endpoints):
            raise ValueError(f"{given[0]} names servers, which only backend openai_compat "
                             f"talks to (this teacher's backend is {self.backend})")
        urls = self.urls()
        seen = sorted({u for u in urls if urls.count(u) > 1})
        if seen:
            raise ValueError(f"{given[0]} repeats {', '.join(seen)}; give a server more "
                             "capacity with endpoints: [{url: ..., max_in_flight: ...}]")
        return self

    @model_validator(mode="after")
    def _key_not_in_cleartext(self) -> TeacherConfig:
        if self.backend != "openai_compat" or not self.api_key_env or self.allow_insecure_http:
            return self
        for url in self.urls():
            if not is_safe_for_secrets(url):
                raise ValueError(
                    f"base URL {url!r} is plain http to a host that is not this machine, so the API "
                    f"key in {self.api_key_env} would cross the network unencrypted; use "
                    "https, or set allow_insecure_http: true if you trust that network")
        return self

    def urls(self) -> list[str]:
        """The base URL of every server of this teacher, in the order the recipe gives them."""
        if self.endpoints:
            return [e.url for e in self.endpoints]
        return list(self.base_urls) or ([self.base_url] if self.base_url else [])

    def fleet(self) -> list[EndpointConfig]:
        """Every server with its own limits resolved (the teacher's where it sets none)."""
        given = self.endpoints or [EndpointConfig(url=u) for u in self.urls()]
        return [EndpointConfig(
            url=e.url, max_in_flight=e.max_in_flight or self.max_in_flight,
            requests_per_minute=e.requests_per_minute or self.requests_per_minute,
            tokens_per_minute=e.tokens_per_minute or self.tokens_per_minute) for e in given]

    def for_endpoint(self, endpoint: EndpointConfig) -> TeacherConfig:
        """This teacher as a one-server config: what one backend of the fleet is built from."""
        return self.model_copy(update={
            "base_url": endpoint.url, "base_urls": [], "endpoints": [],
            "max_in_flight": endpoint.max_in_flight or self.max_in_flight,
            "requests_per_minute": endpoint.requests_per_minute or self.requests_per_minute,
            "tokens_per_minute": endpoint.tokens_per_minute or self.tokens_per_minute})


def is_safe_for_secrets(url: str) -> bool:
    """True for https URLs and for plain http to a loopback address (this machine)."""
    import ipaddress
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme == "https":
        return True
    host = (parts.hostname or "").strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# TeacherConfig fields that change how requests are sent, never what comes back: left out of
# stage fingerprints so tuning limits or prices re-runs nothing.
TEACHER_RUNTIME_FIELDS = frozenset({"price", "max_in_flight", "requests_per_minute",
                                    "tokens_per_minute", "max_retries", "timeout_s",
                                    "backoff_base_s", "backoff_max_s", "http_transport"})


class GenerateWarnings(_Model):
    """When the generate stage warns (console and logs/medrecipe.log), per teacher.

    A share is compared with `>`; null never warns. Defaults: more than 5% of responses cut
    at max_tokens (a few long traces are normal, a pattern means the limit is too low);
    more than 10% of questions (n > 1) whose samples are all identical (a server ignoring
    sampling does it to nearly all of them). See generate/checks.py for the counts.
    """

    length_cut: float | None = Field(default=0.05, ge=0.0, le=1.0)
    identical_samples: float | None = Field(default=0.10, ge=0.0, le=1.0)


class GenerateConfig(_Model):
    n: int = Field(default=16, ge=1)
    routes: dict[str, str] = Field(default_factory=dict)  # task -> teacher name; "*" default
    budget_usd: float | None = Field(default=None, gt=0)  # null: no cap
    cache_dir: str | None = None  # default: <run>/cache
    warn: GenerateWarnings = Field(default_factory=GenerateWarnings)  # not in the stage hash


# --------------------------------------------------------------------------- grade / select


class GradeConfig(_Model):
    judge: str | None = None  # teacher name used to grade free-form answers
    judge_template: str = "judge_open"
    # Teacher that reads the option a multiple-choice reply commits to when no extraction
    # rule read it (method "judge"); off when None. Replies refused for several letters, an
    # invalid answer, an invented continuation or open thinking are never sent.
    choice_judge: str | None = None
    choice_judge_template: str = "judge_choice"
    choice_judge_budget_usd: float | None = Field(default=None, gt=0)  # null: no cap


class PassRateFilter(_Model):
    teacher: str | None = None  # None: all teachers pooled
    min_correct: int = Field(default=2, ge=0)
    max_correct: int = Field(default=14, ge=0)
    # Valid samples (graded, terminated, no failed request) a question needs before it is
    # judged easy or hard; None: every sample generated for it.
    min_valid: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _range(self) -> PassRateFilter:
        if self.min_correct > self.max_correct:
            raise ValueError(f"min_correct ({self.min_correct}) is larger than max_correct "
                             f"({self.max_correct}): no question could pass")
        return self


class DifficultyFilter(_Model):
    judge: str
    template: str = "judge_difficulty"
    min_rating: int = Field(default=3, ge=1, le=10)
    max_rating: int = Field(default=6, ge=1, le=10)

    @model_validator(mode="after")
    def _range(self) -> DifficultyFilter:
        if self.min_rating > self.max_rating:
            raise ValueError(f"min_rating ({self.min_rating}) is larger than max_rating "
                             f"({self.max_rating}): no question could pass")
        return self


class MixConfig(_Model):
    quotas: dict[str, int] = Field(default_factory=dict)  # source -> max questions
    weights: dict[str, float] = Field(default_factory=dict)  # source -> relative share
    total: int | None = None  # with weights: total questions


class SelectConfig(_Model):
    cap_per_question: int | None = Field(default=16, ge=1)
    pass_rate: PassRateFilter | None = None
    difficulty: DifficultyFilter | None = None
    mix: MixConfig = Field(default_factory=MixConfig)
    val_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_format: Literal["cot", "direct"] = "cot"
    seed: int = 0


class AnnotateConfig(_Model):
    enabled: bool = False
    labeller: str | None = None
    template: str = "annotate"


class ExportConfig(_Model):
    formats: list[Literal["llamafactory", "trl", "jsonl"]] = Field(
        default_factory=lambda: ["llamafactory", "trl", "jsonl"]
    )
    dataset_name: str = "medrecipe"
    system_prompt: str | None = None
    instruction: str | None = None  # appended to every user prompt, after the options
    embed_images: bool = True  # TRL export: store image bytes in the dataset (else paths)
    # How LLaMA-Factory and JSONL files name images: "relative" (default) to the file's folder,
    # so moving the run folder keeps them valid; "copy": images copied into <export>/images/
    # and named relative to it, so the export folder alone can be moved; "absolute" paths.
    images: Literal["relative", "copy", "absolute"] = "relative"


class ReportConfig(_Model):
    enabled: bool = True
    examples: int = 6  # accepted and rejected traces shown (each)
    max_text_chars: int = Field(default=20_000, ge=200)  # longer traces are cut in the page
    thumbnail_px: int = Field(default=320, ge=32)  # longest side of embedded images


# --------------------------------------------------------------------------- execution


class ExecutorConfig(_Model):
    """Where a sharded stage's shards run: `executor: local` (default) or `executor: ray`."""

    kind: Literal["local", "ray"] = "local"
    workers: int = Field(default=1, ge=1)  # local: shards at a time (>1: a process pool)
    address: str | None = None  # ray: an existing cluster ("auto", "ray://host:10001"); else local
    num_cpus: int | None = Field(default=None, ge=1)  # ray: CPUs of a local instance
    max_retries: int = Field(default=3, ge=0)  # ray: re-runs of a shard whose worker died
    cpus_per_shard: float = Field(default=1.0, gt=0)  # ray: CPUs reserved by one shard task


# --------------------------------------------------------------------------- recipe


def check_unique_names(names: Iterable[str], what: str = "source") -> None:
    """ValueError naming the repeated ones when `names` are not unique."""
    names = list(names)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{what} names must be unique; repeated: {', '.join(dupes)}")


class Recipe(_Model):
    name: str
    run_dir: str | None = None  # default: runs/<name>
    seed: int = 0
    image_store: str | None = None  # default: <run>/images (shareable between runs)
    # Larger images are quarantined before they are decoded (decoding one 30000x30000 PNG
    # takes several GB); raise it for whole-slide or very large scans.
    max_image_pixels: int = Field(default=100_000_000, ge=1)
    # Shards of every per-question output (items, generations, verdicts, selected traces);
    # null: about 50,000 sampled responses (n x questions) per shard, chosen at the first
    # prepare and then kept for the run.
    shards: int | None = Field(default=None, ge=1, le=65_536)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    batch_size: int = Field(default=4096, ge=1)
    sources: list[SourceSpec] = Field(min_length=1)
    prepare: PrepareConfig = Field(default_factory=PrepareConfig)
    teachers: dict[str, TeacherConfig] = Field(default_factory=dict)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    grade: GradeConfig = Field(default_factory=GradeConfig)
    annotate: AnnotateConfig = Field(default_factory=AnnotateConfig)
    select: SelectConfig = Field(default_factory=SelectConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)

    @field_validator("executor", mode="before")
    @classmethod
    def _executor_by_name(cls, v: Any) -> Any:
        return {"kind": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _cross_checks(self) -> Recipe:
        check_unique_names(s.name for s in self.sources)
        bench = {s.name for s in self.sources if s.role == "benchmark"}
        for n in self.prepare.decontaminate.against:
            if n not in bench:
                raise ValueError(
                    f"prepare.decontaminate.against names {n!r}, which is not a source "
                    "with role: benchmark"
                )
        for task, teacher in self.generate.routes.items():
            if teacher not in self.teachers:
                raise ValueError(f"generate.routes.{task} names unknown teacher {teacher!r}")
        for label, t in (("grade.judge", self.grade.judge),
                         ("grade.choice_judge", self.grade.choice_judge),
                         ("annotate.labeller", self.annotate.labeller),
                         ("select.difficulty.judge",
                          self.select.difficulty.judge if self.select.difficulty else None)):
            if t is not None and t not in self.teachers:
                raise ValueError(f"{label} names unknown teacher {t!r}")
        return self

    def resolved_run_dir(self, base: Path | None = None) -> Path:
        p = Path(self.run_dir) if self.run_dir else Path("runs") / self.name
        return p if p.is_absolute() or base is None else base / p

    def sources_by_role(self, role: str) -> list[SourceSpec]:
        return [s for s in self.sources if s.role == role]


# --------------------------------------------------------------------------- loading


def config_hash(obj: Any) -> str:
    """Stable short hash of a config model or plain data."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _loc(parts: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in parts)


def validate_model(cls: type[M], data: Any, path: str | None = None, what: str = "recipe") -> M:
    """Validate data into `cls`, raising RecipeError that lists every problem with its path."""
    if not isinstance(data, dict):
        raise RecipeError([("", f"the {what} must be a YAML mapping")], path)
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        problems = [(_loc(err["loc"]), err["msg"].removeprefix("Value error, ")) for err in e.errors()]
        raise RecipeError(problems, path) from None


def read_yaml(path: str | Path, overrides: list[str] | None = None,
              model: type[BaseModel] | None = None) -> tuple[Any, Path]:
    """YAML data of a config file with dotted overrides applied, and the file's folder.

    With `model`, override values are converted by the type of the field they set
    (medrecipe.overrides); without one they are free-form."""
    p = Path(path)
    if not p.is_file():
        raise RecipeError([("", f"file not found: {p}")], str(p))
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise RecipeError([("", f"not valid YAML: {e}")], str(p)) from None
    if isinstance(data, dict):
        data = apply_overrides(data, overrides or [], model)
    return data, p.resolve().parent


def resolve_path(value: str | None, base: Path) -> str | None:
    """A relative path that exists next to the config file, made absolute; else unchanged."""
    if value and not Path(value).is_absolute() and (base / value).exists():
        return str(base / value)
    return value


def recipe_from_data(data: Any, path: str | None = None) -> Recipe:
    """Validate recipe data, raising RecipeError that lists every problem with its path."""
    return validate_model(Recipe, data, path)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> tuple[Recipe, dict[str, Any]]:
    """Read, override and validate a recipe file; returns the model and the raw data."""
    data, base = read_yaml(path, overrides, Recipe)
    if isinstance(data, dict) and data.get("kind") == "curate":
        raise RecipeError([("kind", "this is a curation recipe; run it with `medrecipe curate`")],
                          str(path))
    recipe = recipe_from_data(data, str(path))
    # Relative data paths resolve against the recipe file's folder, so recipes are portable.
    for s in recipe.sources:
        s.path = resolve_path(s.path, base)
        s.image_root = resolve_path(s.image_root, base)
    for t in recipe.teachers.values():
        t.replay_path = resolve_path(t.replay_path, base)
        t.template = resolve_path(t.template, base) or t.template
    recipe.grade.judge_template = resolve_path(recipe.grade.judge_template, base) or "judge_open"
    recipe.grade.choice_judge_template = (resolve_path(recipe.grade.choice_judge_template, base)
                                          or "judge_choice")
    recipe.annotate.template = resolve_path(recipe.annotate.template, base) or "annotate"
    if recipe.select.difficulty:
        d = recipe.select.difficulty
        d.template = resolve_path(d.template, base) or d.template
    return recipe, data


def used_teachers(recipe: Recipe) -> dict[str, str]:
    """Teachers a recipe will call, each with the YAML path of its first use."""
    used: dict[str, str] = {}
    routed = recipe.generate.routes
    for task, name in routed.items():
        used.setdefault(name, f"generate.routes.{task}")
    if not routed:
        for name in recipe.teachers:
            used.setdefault(name, f"teachers.{name}")
    for label, name in (("grade.judge", recipe.grade.judge),
                        ("grade.choice_judge", recipe.grade.choice_judge),
                        ("annotate.labeller", recipe.annotate.labeller if recipe.annotate.enabled
                         else None),
                        ("select.difficulty.judge",
                         recipe.select.difficulty.judge if recipe.select.difficulty else None)):
        if name:
            used.setdefault(name, label)
    return used


def teacher_problems(name: str, t: TeacherConfig, where: str,
                     environ: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """What would stop a teacher at its first call: key variable, template, replay file."""
    import os

    from medrecipe.errors import UserError
    from medrecipe.prompts import load_template

    env = os.environ if environ is None else environ
    out: list[tuple[str, str]] = []
    loc = f"teachers.{name}"
    if t.backend == "openai_compat" and not t.urls():
        out.append((f"{loc}.base_url", f"teacher {name!r} (used by {where}) needs base_url "
                                       "(or base_urls / endpoints for a fleet of servers)"))
    if t.backend == "openai_compat" and t.api_key_env and not env.get(t.api_key_env):
        out.append((f"{loc}.api_key_env",
                    f"the environment variable {t.api_key_env} is not set (teacher {name!r} "
                    "reads its API key from it); export it before running"))
    if t.backend == "replay" and (not t.replay_path or not os.path.isfile(t.replay_path)):
        out.append((f"{loc}.replay_path", f"replay file not found: {t.replay_path}"))
    try:
        load_template(t.template)
    except UserError as e:
        out.append((f"{loc}.template", str(e)))
    return out


def preflight(recipe: Recipe, path: str | None = None) -> None:
    """Raise RecipeError for everything that would fail later: keys, templates, files.

    Run by `validate` and before any stage of `run`, so a missing API key variable or a
    template typo costs nothing rather than surfacing after ingest and prepare.
    """
    from medrecipe.errors import UserError
    from medrecipe.prompts import load_template

    problems: list[tuple[str, str]] = []
    for name, where in used_teachers(recipe).items():
        problems += teacher_problems(name, recipe.teachers[name], where)
    templates = [("grade.judge_template", recipe.grade.judge_template if recipe.grade.judge
                  else None),
                 ("grade.choice_judge_template", recipe.grade.choice_judge_template
                  if recipe.grade.choice_judge else None),
                 ("annotate.template", recipe.annotate.template if recipe.annotate.enabled
                  else None),
                 ("select.difficulty.template",
                  recipe.select.difficulty.template if recipe.select.difficulty else None)]
    for loc, tpl in templates:
        if tpl:
            try:
                load_template(tpl)
            except UserError as e:
                problems.append((loc, str(e)))
    if problems:
        raise RecipeError(problems, path)
