"""``python -m gbpo.evaluate``: the evaluation CLI (see :mod:`gbpo.evaluation.cli` and ``--help``).

The evaluation code lives in the package :mod:`gbpo.evaluation`; this module keeps the command and the public names
importable from ``gbpo.evaluate``. The function that samples and scores a loaded model is
:func:`gbpo.evaluation.evaluate_benchmarks` (it was ``evaluate``, a name that clashed with ``Trainer.evaluate``).
"""

from .evaluation import (
    REFERENCES,
    compare,
    compute_metrics,
    default_ks,
    evaluate_benchmarks,
    load_model,
    load_results,
    maj_at_k,
    mean_ci95,
    pass_at_k,
    plot_pass_at_k,
    reference_rows,
    render_summary,
    write_outputs,
)
from .evaluation.cli import main, make_parser

__all__ = [
    "REFERENCES",
    "compare",
    "compute_metrics",
    "default_ks",
    "evaluate_benchmarks",
    "load_model",
    "load_results",
    "main",
    "maj_at_k",
    "make_parser",
    "mean_ci95",
    "pass_at_k",
    "plot_pass_at_k",
    "reference_rows",
    "render_summary",
    "write_outputs",
]

if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main()
