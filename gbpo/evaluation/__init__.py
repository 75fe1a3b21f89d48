"""Benchmark evaluation: metrics, generation, model loading, reports, and the in-training callback.

* :mod:`.metrics` -- unbiased pass@k, maj@k, avg@n with its 95% interval (:func:`compute_metrics`);
* :mod:`.generation` -- :func:`evaluate_benchmarks`: sample, grade and score a loaded model (transformers or vLLM);
* :mod:`.loading` -- :func:`load_model` for a short id, hub id, directory or PEFT adapter;
* :mod:`.report` -- ``results.json``, the markdown summary and the pass@k plot (matplotlib imported only to plot);
* :mod:`.callback` -- :class:`BenchmarkEvalCallback`, the benchmarks evaluated every ``eval_steps`` during training;
* :mod:`.cli` -- ``python -m gbpo.evaluate`` (not imported here).
"""

from .generation import evaluate_benchmarks
from .loading import load_model
from .metrics import compute_metrics, default_ks, maj_at_k, mean_ci95, pass_at_k
from .report import REFERENCES, compare, load_results, plot_pass_at_k, reference_rows, render_summary, write_outputs

__all__ = [
    "REFERENCES",
    "BenchmarkEvalCallback",
    "compare",
    "compute_metrics",
    "default_ks",
    "evaluate_benchmarks",
    "load_model",
    "load_results",
    "maj_at_k",
    "mean_ci95",
    "pass_at_k",
    "plot_pass_at_k",
    "reference_rows",
    "render_summary",
    "write_outputs",
]


def __getattr__(name):
    if name == "BenchmarkEvalCallback":  # imports transformers and accelerate: only when asked for
        from .callback import BenchmarkEvalCallback

        return BenchmarkEvalCallback
    raise AttributeError(f"module 'gbpo.evaluation' has no attribute {name!r}")
