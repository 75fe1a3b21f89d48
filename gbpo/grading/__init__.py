"""Final-answer grading shared by the TTRL majority-vote reward, the accuracy reward and the evaluation.

The package ``gbpo.grading``: :mod:`~gbpo.grading.extraction` (the answer of a completion),
:mod:`~gbpo.grading.canonical` (canonical keys and exact values), :mod:`~gbpo.grading.pool` and
:mod:`~gbpo.grading.worker` (the sandboxed worker processes), :mod:`~gbpo.grading.equivalence` (is an answer
equivalent to the gold one) and :mod:`~gbpo.grading.voting` (the majority vote). Three public functions:

* :func:`extract_answer` -- the content of a completion's last ``\\boxed{...}`` / ``\\fbox{...}`` (brace-matched),
  optionally its last number when it boxes nothing; with ``lenient=True`` also answers outside boxes (after "final
  answer is", the last math, the last number) and several closing boxes as one answer set.
* :func:`answers_equivalent` -- is a predicted answer equivalent to the gold one.
* :func:`majority_vote` -- the TTRL pseudo-label of a group of answers: equivalence classes, the winning class, its
  share of the votes and which answers are in it (:class:`Vote`).

How two answers are compared, cheapest first:

1. **Canonical keys** (pure Python, no sympy): ``$``, ``\\%``, degrees, ``\\text{...}`` units, thin spaces and
   thousands separators, ``x =`` prefixes, choice letters ``(C)``, trailing punctuation, ``\\left``/``\\right`` and
   whitespace are removed, ``\\dfrac``/``\\tfrac`` become ``\\frac`` and ``\\frac12`` becomes ``\\frac{1}{2}``. Plain
   numbers (integers, decimals, ``025``, ``6.72e-5``, ``1.5\\times10^{3}``, ``\\frac{a}{b}``, ``a/b``, mixed numbers,
   ``0.\\overline{3}``, numbers in words such as ``twenty-one``) become exact :class:`fractions.Fraction` values;
   ``x**2`` is ``x^2``, ``3{.}5`` is ``3.5``, degrees inside a trigonometric function are converted (``\\sin 30^\\circ``
   is 1/2) and text answers of three or more letters compare without case. Equal keys or equal values are
   equivalent; two plain numbers with different values are not (a decimal of 13 or more significant digits, a float
   printed by a program, is compared to 1e-12 relative instead). Most answers never go further.
2. **Symbolic work** (math-verify and sympy) only between answers that are not both plain numbers, each answer parsed
   alone inside ``\\boxed{}`` (never a whole completion). A numeric expression (``\\frac{\\sqrt3}{2}``, ``2^{10}``)
   gets its value to 30 digits and numbers compare to 1e-12 relative, not math-verify's 6 digits (so ``\\pi`` is not
   ``3.1415927`` and ``1/3`` is not ``0.333333``); an expression with free symbols is compared by its value at a fixed
   point, also to 1e-12; everything else (sets, intervals, tuples, matrices, equations) goes to
   ``math_verify.verify`` with the gold answer (in a vote, the larger class) first, intervals and the inequalities
   describing them compared in either order (``allow_set_relation_comp``). An equation is compared with the other
   side's ``y = ...`` form kept (``2x+4y-3=0`` against ``y=-x/2+3/4``).

Safety: math-verify times out with ``signal.alarm`` (main thread only, whole seconds) and sympy's C-level big-integer
work ignores the alarm, so symbolic work runs in a pool of worker processes: each item under an integer
``signal.alarm`` in the worker's main thread, each worker capped at ``memory_limit_mb`` of address space
(``RLIMIT_AS``), a worker still busy one second past the item timeout is killed and replaced, and each call has a
deadline after which the busy workers are killed and replaced and the unresolved comparisons fall back to the keys
(equivalent only when the keys are equal). A screen keeps power towers, huge exponents, factorials and binomials,
deeply nested brackets or fractions, unbalanced braces and strings over 1000 characters away from sympy altogether.
Results are cached across calls; failures are logged and counted (:func:`grading_stats`), never raised.

The workers are fresh interpreters (the "spawn" model: no inherited threads, locks or CUDA state), started with
:mod:`subprocess` and talking over :mod:`multiprocessing.connection` pipes. They are not
``multiprocessing.get_context("spawn").Process`` because spawn and forkserver re-run the parent's ``__main__`` module
in every child: under ``python -m gbpo.train`` each worker (and each replacement after a kill) would import TRL, torch
and transformers before it could grade anything. The pool starts lazily on the first symbolic comparison, is shared
by all threads of a process (one batch at a time), is recreated in a forked child, and is shut down at exit.
"""

from .equivalence import answers_equivalent, clear_grading_caches, grading_deadline
from .extraction import ANSWER_EXTRACTION, extract_answer
from .pool import configure_grading, grading_stats, shutdown_grading_pool
from .voting import Vote, majority_vote

__all__ = [
    "ANSWER_EXTRACTION",
    "Vote",
    "answers_equivalent",
    "clear_grading_caches",
    "configure_grading",
    "extract_answer",
    "grading_deadline",
    "grading_stats",
    "majority_vote",
    "shutdown_grading_pool",
]
