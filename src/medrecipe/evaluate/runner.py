"""Run a model under test over benchmarks: sample, force an end to unfinished thinking, grade.

Layout of an evaluation run directory::

    results.json            full config, versions, dataset revisions, metrics per benchmark
                            and category averages
    samples.jsonl           one graded sample per line (text, answer, verdict, tokens, flags)
    items/<bench>.parquet   the benchmark items as read (Item schema)
    generations.parquet     the raw generations (Generation schema)
    verdicts.parquet        the grader's verdicts (Verdict schema)
    quarantine/             benchmark rows that could not be used, with reasons
    cache/                  request cache (share `cache_dir` between runs to reuse answers)

Seeds and samples. Each seed is one full pass over a benchmark. ``samples_per_seed`` adds
further samples per seed for voting; sample ``j`` of seed ``s`` is sent to the endpoint
with seed ``s + SEED_STRIDE * j``; a recipe whose seeds would give two samples the same
endpoint seed (seeds [0, 100000] with two samples each) is rejected when it is validated,
so no two samples ever share one generation. Every
sample is its own cached request whose key covers the model, the sampling settings
(temperature, top-p, max tokens, extra body) and that endpoint seed, so an interrupted
evaluation re-sends only unfinished samples and a changed setting never reuses answers.

Forced end of thinking. When a response stops with ``finish_reason == "length"`` inside a
thinking block that never closed, the runner sends one continuation request: the same
messages followed by an assistant message holding the truncated text, the closing tag and
an answer cue, with ``continue_final_message: true`` and ``add_generation_prompt: false``
in the request body (through ``sampling.extra``). vLLM's chat endpoint continues that
assistant message in place instead of starting a new turn and returns only the new
tokens; the transformers_local backend does the same only if it hands those two flags to
the chat template (``apply_chat_template(continue_final_message=True)``), otherwise its
continuation starts a fresh assistant turn after the prefix. The sample's text becomes truncated text + closing tag + cue + continuation, and
its ``forced_end`` flag is set. A reply cut by the length limit counts as cut inside its
thinking whenever no closing tag follows, also when the chat template opened the block in
the prompt (the reply then holds no opening tag). Without forcing (or when the
continuation fails) such a sample is unterminated and has no answer, whatever its text
seems to say. Token counts of a forced sample are exact: thinking tokens are the first
request's completion tokens, answer tokens the continuation's; the closing tag and cue
are ours and counted apart (``cue_tokens``, with a local tokenizer).
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import medrecipe
from medrecipe.config import SamplingConfig
from medrecipe.errors import UserError
from medrecipe.evaluate.config import (
    SEED_STRIDE,
    EvalConfig,
    ForcedEndConfig,
    ResolvedBenchmark,
    endpoint_seed,
)
from medrecipe.evaluate.metrics import benchmark_summary, category_averages
from medrecipe.schema import (
    GENERATION_SCHEMA,
    ITEM_SCHEMA,
    LETTERS,
    VERDICT_SCHEMA,
    Generation,
    Item,
    QuarantineRow,
    Verdict,
    items_from_table,
    letter_index,
    to_table,
)
from medrecipe.store import Run, atomic_write_text

TEACHER = "model_under_test"
RESULTS = "results.json"
SAMPLES = "samples.jsonl"


@dataclass
class EvalResult:
    """What `run_eval` returns: the run folder, the results document and engine counters."""

    run_dir: Path
    results: dict[str, Any]
    samples: list[dict[str, Any]] = field(repr=False)
    requests_sent: int = 0
    cached: int = 0
    complete: bool = True

    @property
    def results_path(self) -> Path:
        return self.run_dir / RESULTS

    @property
    def samples_path(self) -> Path:
        return self.run_dir / SAMPLES


# --------------------------------------------------------------------------- helpers


def split_thinking(text: str | None, open_tag: str = "<think>",
                   close_tag: str = "</think>") -> tuple[str, str]:
    """(thinking, answer) parts of a response; an unclosed block is all thinking."""
    if not text:
        return "", ""
    if close_tag in text:
        before, after = text.split(close_tag, 1)
        return before.replace(open_tag, "", 1), after
    if open_tag in text:
        return text.split(open_tag, 1)[1], ""
    return "", text


def needs_forced_end(gen: Generation, fe: ForcedEndConfig) -> bool:
    """True when a generation ran out of tokens inside a thinking block it never closed."""
    if gen.error or gen.finish_reason != "length" or gen.text is None:
        return False
    if gen.reasoning is not None:
        # The endpoint split the thinking into its own field and the engine joined it back
        # with a closing tag; cut off while thinking means no content came after it.
        return not gen.text.split(fe.close_tag, 1)[-1].strip()
    # Cut by the length limit without a closed thinking block: unfinished, whether the
    # block was opened in the reply or by the chat template in the prompt.
    if fe.open_tag not in gen.text:
        return fe.close_tag not in gen.text
    return fe.close_tag not in gen.text.split(fe.open_tag, 1)[1]


def truncated_thinking(gen: Generation, fe: ForcedEndConfig) -> str:
    """The truncated response as the model wrote it (open tag included, no closing tag)."""
    if gen.reasoning is not None:
        return fe.open_tag + gen.reasoning
    return gen.text or ""


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"medrecipe": medrecipe.__version__, "python": sys.version.split()[0],
           "platform": platform.platform()}
    for pkg in ("transformers", "torch", "datasets", "pyarrow", "numpy", "httpx"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _items_fingerprint(items: list[Item]) -> str:
    h = hashlib.sha256()
    for it in sorted(items, key=lambda i: i.id):
        h.update(json.dumps([it.id, it.question, list(it.options), it.answer, list(it.images)],
                            ensure_ascii=False).encode())
    return h.hexdigest()[:16]


class TokenCounter:
    """Counts thinking / answer tokens with a local tokenizer, else splits usage counts by length."""

    def __init__(self, path: str | None):
        self.tokenizer = None
        self.method = "proportional"
        if path:
            try:
                from transformers import AutoTokenizer

                self.tokenizer = AutoTokenizer.from_pretrained(path)
                self.method = "tokenizer"
            except Exception:  # noqa: BLE001 - no usable tokenizer: fall back, and say so
                self.tokenizer = None

    def count(self, thinking: str, answer: str, completion_tokens: int) -> tuple[int, int]:
        """(thinking, answer) tokens summing to the endpoint's completion count.

        The split point comes from re-tokenising both parts when a tokenizer is available
        (else from their character lengths); the total is always the usage the endpoint
        reported, so lengths add up across benchmarks and models.
        """
        if self.tokenizer is not None:
            enc = self.tokenizer
            t = len(enc.encode(thinking, add_special_tokens=False)) if thinking else 0
            a = len(enc.encode(answer, add_special_tokens=False)) if answer else 0
        else:
            t, a = len(thinking), len(answer)
        if t + a == 0:
            return 0, completion_tokens
        think = round(completion_tokens * t / (t + a))
        return think, completion_tokens - think


def _pred_label(answer: str | None, item: Item) -> str | None:
    if answer is None or not item.options:
        return None
    a = answer.strip().upper()
    if len(a) == 1 and a in LETTERS[: len(item.options)]:
        return item.options[letter_index(a)]
    return None


# --------------------------------------------------------------------------- loading


def load_benchmark(bench: ResolvedBenchmark, images: Any,
                   quarantine: list[QuarantineRow]) -> list[Item]:
    """Items of one benchmark through its source adapter (bad rows go to `quarantine`)."""
    from medrecipe.sources import load

    items: list[Item] = []
    for table in load(bench.source, images=images, quarantine=quarantine):
        items.extend(items_from_table(table))
    return items


# --------------------------------------------------------------------------- the run


def _sampling(cfg: EvalConfig, seed: int, *, max_tokens: int | None = None,
              extra: Mapping[str, Any] | None = None) -> SamplingConfig:
    s = cfg.sampling
    return SamplingConfig(temperature=s.temperature, top_p=s.top_p,
                          max_tokens=max_tokens or s.max_tokens, seed=seed,
                          extra={**s.extra, **(extra or {})})


def _read_choices(config: EvalConfig, to_read: list[tuple[int, Item, str]], samples: list[dict[str, Any]],
                  verdicts: list[Verdict], images: Any, run: Run, progress: bool | None,
                  backends: Mapping[str, Any] | None) -> dict[str, Any]:
    """Ask the choice judge about unread replies; a letter it reads becomes the sample's answer (method judge)."""
    from medrecipe.answers import CHOICE_NONE, Extraction, grade
    from medrecipe.judge import ChoiceReader

    reader = ChoiceReader("choice_judge", {"choice_judge": config.choice_judge},  # type: ignore[dict-item]
                          config.choice_judge_template, config.cache_dir or run.subdir("cache"), images,
                          progress=progress, backends=backends, budget_usd=config.choice_judge_budget_usd)
    readings = reader([(item, reply) for _, item, reply in to_read])
    for (i, item, _), letter in zip(to_read, readings, strict=True):
        if letter is None or letter == CHOICE_NONE:
            continue
        correct = grade(Extraction(letter, "judge"), item)
        samples[i].update(answer=letter, pred_label=_pred_label(letter, item), method="judge", correct=correct)
        verdicts[i] = verdicts[i].model_copy(update={"answer": letter, "method": "judge", "correct": correct})
    return reader.counts()


def run_eval(config: EvalConfig, out_dir: str | Path | None = None, *,
             backends: Mapping[str, Any] | None = None, progress: bool | None = None,
             log: Callable[[str], None] | None = None) -> EvalResult:
    """Evaluate `config.model` on every benchmark of `config`; writes and returns the results."""
    from medrecipe.generate import Engine, GenRequest, request_key
    from medrecipe.images import ImageStore
    from medrecipe.prompts import image_refs, load_template

    say = log or (lambda _msg: None)
    run_dir = Path(out_dir) if out_dir is not None else config.resolved_run_dir()
    run = Run(run_dir)
    images = ImageStore(config.image_store or run.subdir("images"))
    template = load_template(config.template)
    started = time.time()

    # ---- 1. benchmarks -> items
    benches = [b.resolved() for b in config.benchmarks]
    items_by_bench: dict[str, list[Item]] = {}
    datasets: dict[str, Any] = {}
    for bench in benches:
        quarantine: list[QuarantineRow] = []
        items = load_benchmark(bench, images, quarantine)
        run.write_quarantine(f"eval_{bench.name}", quarantine)
        run.write_table(f"items/{bench.name}",
                        to_table(items, ITEM_SCHEMA) if items else ITEM_SCHEMA.empty_table())
        items_by_bench[bench.name] = items
        src = bench.source
        datasets[bench.name] = {
            "adapter": src.adapter, "path": src.path, "hf_config": src.hf_config,
            "hf_split": src.hf_split, "revision": src.revision, "limit": src.limit,
            "n_items": len(items), "quarantined": len(quarantine),
            "content_hash": _items_fingerprint(items),
        }
        say(f"{bench.name}: {len(items)} items ({len(quarantine)} quarantined)")

    # ---- 2. one request per (item, seed, sample); generations come back under the cache
    # key of their request, which is how each is matched to its slot.
    model = config.model

    def key_of(sampling: SamplingConfig, messages: list[dict]) -> str:
        return request_key(model.backend, model.model, sampling, messages, image_refs(messages), 0)

    requests = []
    # Identical prompts (a question repeated within or across benchmarks) share one request.
    slots: dict[str, list[tuple[str, Item, int, int, int]]] = {}
    rendered: dict[str, list[dict]] = {}
    for bench in benches:
        for item in items_by_bench[bench.name]:
            try:
                messages = template.render(item)
            except Exception as e:  # noqa: BLE001 - a template bug names the item it failed on
                raise UserError(f"template {config.template!r} failed on item {item.id}: {e}") from e
            rendered[item.id] = messages
            for seed in config.seeds:
                for j in range(config.samples_per_seed):
                    es = endpoint_seed(seed, j)
                    sampling = _sampling(config, es)
                    k = key_of(sampling, messages)
                    if k in slots:
                        slots[k].append((bench.name, item, seed, j, es))
                        continue
                    slots[k] = [(bench.name, item, seed, j, es)]
                    requests.append(GenRequest(
                        item_id=item.id, teacher=TEACHER, messages=messages, n=1,
                        source=bench.name, template=template.name,
                        template_hash=template.hash, sampling=sampling))

    engine = Engine({TEACHER: config.model},
                    cache=config.cache_dir or run.subdir("cache"), images=images,
                    budget_usd=config.budget_usd, progress=progress, backends=backends,
                    description=f"eval {config.name}")
    first = engine.run(requests)
    gens: dict[str, Generation] = {g.key: g for g in first.generations}

    # ---- 3. forced end of thinking
    fe = config.forced_end
    forced: dict[str, tuple[str, Generation]] = {}
    if fe.enabled:
        cont_requests = []
        prefixes: dict[str, tuple[str, str]] = {}  # continuation key -> (sample key, prefix)
        for key, g in gens.items():
            if key not in slots or not needs_forced_end(g, fe):
                continue
            prefix = truncated_thinking(g, fe) + fe.close_tag + fe.cue
            messages = [*rendered[g.item_id], {"role": "assistant", "content": prefix}]
            sampling = _sampling(config, slots[key][0][4], max_tokens=fe.max_tokens,
                                 extra={"continue_final_message": True,
                                        "add_generation_prompt": False})
            prefixes[key_of(sampling, messages)] = (key, prefix)
            cont_requests.append(GenRequest(
                item_id=g.item_id, teacher=TEACHER, messages=messages, n=1, source=g.source,
                template=template.name, template_hash=template.hash, sampling=sampling))
        if cont_requests:
            say(f"forcing an end of thinking on {len(cont_requests)} samples")
            second = engine.run(cont_requests)
            first.requests_sent += second.requests_sent
            first.cached += second.cached
            first.failures += second.failures
            first.complete = first.complete and second.complete
            refused = sum(1 for c in second.generations if c.error and any(
                f in c.error for f in ("continue_final_message", "add_generation_prompt")))
            if refused:
                msg = (f"the server refused {refused} forced-end requests because it does not "
                       "take continue_final_message / add_generation_prompt (vLLM's chat "
                       "extensions; transformers serve refuses them): those samples count as "
                       "unfinished. Set forced_end.enabled: false for this server, or serve "
                       "the model with vLLM or use the transformers_local backend")
                logging.getLogger("medrecipe.evaluate").warning(msg)
                say("warning: " + msg)
            for c in second.generations:
                if c.key in prefixes:
                    sample_key, prefix = prefixes[c.key]
                    forced[sample_key] = (prefix, c)

    # ---- 4. grade every sample
    from medrecipe.answers import extract, grade, judge_eligible, reply_for_judge

    to_read: list[tuple[int, Item, str]] = []  # (sample index, item, reply) for the choice judge

    counter = TokenCounter(config.tokenizer or (config.model.model if
                                                config.model.backend == "transformers_local" else None))
    samples: list[dict[str, Any]] = []
    final_gens: list[Generation] = []
    verdicts: list[Verdict] = []
    cats = {b.name: b.category for b in benches}
    for key, (bench_name, item, seed, j, es) in ((k, s) for k, v in slots.items() for s in v):
        item_id = item.id
        g = gens.get(key)
        if g is None:  # not launched (budget stop): absent, a later run fills it in
            continue
        text, completion_tokens, was_forced, error = g.text, g.completion_tokens, False, g.error
        finish = g.finish_reason
        cont = None
        if key in forced:
            prefix, c = forced[key]
            was_forced = True
            if c.error:
                error = f"forced end: {c.error}"
                text = truncated_thinking(g, fe)
            else:
                cont = c
                text = prefix + (c.text or "")
                completion_tokens += c.completion_tokens
        if text is not None and needs_forced_end(g, fe) and cont is None:
            # Cut off while thinking and not (successfully) forced: unfinished, no answer,
            # whatever the reply's text seems to say.
            answer, method, span, terminated, correct = None, "none", None, False, None
        elif text is not None:
            ext = extract(text, options=item.options or None)
            correct = grade(ext, item)
            answer, method, span, terminated = ext.answer, ext.method, ext.span, ext.terminated
            if config.choice_judge is not None and item.options and judge_eligible(ext):
                to_read.append((len(samples), item, reply_for_judge(text)))
        else:
            answer, method, span, terminated, correct = None, "none", None, True, None
        cue_tokens = None
        if cont is not None:
            # The model wrote the thinking (first request) and the continuation (second);
            # the cue between them is ours and counts as neither.
            t_tok, a_tok = g.completion_tokens, cont.completion_tokens
            if counter.tokenizer is not None:
                cue_tokens = len(counter.tokenizer.encode(fe.close_tag + fe.cue, add_special_tokens=False))
        else:
            thinking, answer_part = split_thinking(text, fe.open_tag, fe.close_tag)
            t_tok, a_tok = counter.count(thinking, answer_part, completion_tokens)
        final = g.model_copy(update={"text": text, "forced_end": was_forced, "error": error,
                                     "item_id": item_id, "source": bench_name, "seed": es,
                                     "finish_reason": finish,
                                     "completion_tokens": completion_tokens, "sample_index": j})
        final_gens.append(final)
        verdicts.append(Verdict(key=g.key, item_id=item_id, source=bench_name, teacher=TEACHER,
                                sample_index=j, answer=answer, method=method,
                                span_start=span[0] if span else None,
                                span_end=span[1] if span else None,
                                terminated=terminated, correct=correct))
        samples.append({
            "benchmark": bench_name, "category": cats[bench_name], "item_id": item_id,
            "seed": seed, "sample": j, "endpoint_seed": es, "key": g.key,
            "gold": item.answer, "gold_label": item.answer_text if item.options else item.answer,
            "answer": answer, "pred_label": _pred_label(answer, item) if item.options else answer,
            "method": method, "correct": correct, "terminated": terminated,
            "forced_end": was_forced, "finish_reason": finish, "error": error,
            "prompt_tokens": g.prompt_tokens, "completion_tokens": completion_tokens,
            "thinking_tokens": t_tok, "answer_tokens": a_tok, "cue_tokens": cue_tokens,
            "latency_s": g.latency_s,
            "cost_usd": g.cost_usd, "text": text,
        })

    judge_counts = None
    if to_read:
        judge_counts = _read_choices(config, to_read, samples, verdicts, images, run, progress, backends)
        say(f"choice judge: {judge_counts['answered']} of {judge_counts['asked']} unread replies read "
            f"({judge_counts['declined']} NONE, {judge_counts['unparsed']} unparseable, "
            f"{judge_counts['failed']} failed)")

    # ---- 4b. reasoning traces scored on checklists (benchmarks with `trace` on)
    from medrecipe.evaluate.trace_eval import score_traces

    traces, judge_tally = score_traces(config, run, benches, items_by_bench, samples,
                                       backends=backends, progress=progress, say=say)

    # ---- 5. metrics and outputs
    per_bench: dict[str, Any] = {}
    for bench in benches:
        rows = [s for s in samples if s["benchmark"] == bench.name]
        summary = benchmark_summary(
            rows, classification=bench.classification, pass_ks=config.pass_k,
            vote_k=config.vote_size, vote_invalid=config.vote_invalid,
            bootstrap_resamples=config.bootstrap.resamples,
            bootstrap_seed=config.bootstrap.seed, level=config.bootstrap.level)
        summary.update({"title": bench.title, "category": bench.category,
                        "classification": bench.classification})
        if bench.name in traces:
            summary["trace"] = traces[bench.name]
        per_bench[bench.name] = summary
    accuracy = {b: v["accuracy"] for b, v in per_bench.items()}
    expected = sum(len(v) for v in items_by_bench.values()) * len(config.seeds) * config.samples_per_seed
    complete = (first.complete and judge_tally.complete and len(samples) == expected
                and not any(s["error"] for s in samples))
    results = {
        "kind": "medrecipe.eval",
        "name": config.name,
        "label": config.display_name,
        "model": config.model.model,
        "backend": config.model.backend,
        "config": config.model_dump(mode="json"),
        "template": {"name": template.name, "hash": template.hash},
        "versions": _versions(),
        "datasets": datasets,
        "benchmarks": per_bench,
        "categories": category_averages(accuracy, cats),
        "token_count_method": counter.method,
        "engine": {"requests_sent": first.requests_sent, "cached": first.cached,
                   "failures": first.failures, "spend_usd": first.spend_usd,
                   "not_launched": first.not_launched},
        "trace_judge": judge_tally.as_dict() if traces else None,
        "choice_judge": judge_counts,
        "samples": len(samples),
        "expected_samples": expected,
        "complete": complete,
        "started_at": started,
        "finished_at": time.time(),
    }
    run.write_table("generations", to_table(final_gens, GENERATION_SCHEMA) if final_gens
                    else GENERATION_SCHEMA.empty_table())
    run.write_table("verdicts", to_table(verdicts, VERDICT_SCHEMA) if verdicts
                    else VERDICT_SCHEMA.empty_table())
    atomic_write_text(run.root / SAMPLES,
                      "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
    atomic_write_text(run.root / RESULTS, json.dumps(results, indent=2, ensure_ascii=False))
    run.set_meta(kind="eval", eval_name=config.name, template_hashes={template.name: template.hash})
    return EvalResult(run_dir=run.root, results=results, samples=samples,
                      requests_sent=first.requests_sent, cached=first.cached, complete=complete)


def load_results(run_dir: str | Path) -> dict[str, Any]:
    """The results document of an evaluation run folder (UserError when it has none)."""
    p = Path(run_dir)
    path = p / RESULTS if p.is_dir() else p
    if not path.exists():
        raise UserError(f"{p} is not an evaluation run: no {RESULTS} found (run `medrecipe eval` first)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}); re-run the evaluation") from None
    if data.get("kind") != "medrecipe.eval":
        raise UserError(f"{path} is not a medrecipe evaluation result")
    return data


def read_samples(run_dir: str | Path) -> Iterable[dict[str, Any]]:
    """Per-sample rows of an evaluation run (samples.jsonl)."""
    with open(Path(run_dir) / SAMPLES, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


__all__ = ["EvalResult", "run_eval", "load_results", "read_samples", "endpoint_seed",
           "split_thinking", "needs_forced_end", "SEED_STRIDE"]
