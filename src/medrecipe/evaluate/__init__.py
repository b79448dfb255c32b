"""Evaluation: benchmarks by category, seeded sampling, forced end of thinking, metrics, comparison.

    from medrecipe.evaluate import load_eval_config, run_eval, compare
    result = run_eval(load_eval_config("eval.yaml"), "runs/eval/student")
    compare(["runs/eval/student", "runs/eval/base"], "runs/eval/compare")
"""

from medrecipe.evaluate.compare import CompareResult, compare, comparison_data
from medrecipe.evaluate.config import (
    BenchmarkSpec,
    EvalConfig,
    EvalSampling,
    ForcedEndConfig,
    eval_config_from_data,
    load_eval_config,
)
from medrecipe.evaluate.registry import BENCHMARKS, CATEGORIES, Benchmark, get_benchmark
from medrecipe.evaluate.runner import EvalResult, load_results, read_samples, run_eval

__all__ = [
    "BENCHMARKS", "CATEGORIES", "Benchmark", "BenchmarkSpec", "CompareResult", "EvalConfig",
    "EvalResult", "EvalSampling", "ForcedEndConfig", "compare", "comparison_data",
    "eval_config_from_data", "get_benchmark", "load_eval_config", "load_results", "read_samples",
    "run_eval",
]
