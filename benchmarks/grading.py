"""Grading speed: TTRL majority votes over 32 groups x 64 completions, gbpo.grading against naive math-verify.

    python benchmarks/grading.py [--groups 32] [--size 64] [--seed 0] [--baseline-timeout 1]

The completions are synthetic but built from the benchmark's real answers (``data/{math500,amc,aime24}.jsonl``, or
``../shared/data`` next to the repository): a few lines of LaTeX working, then the answer boxed in a notation variant
of the gold one (``142`` / ``142.0`` / ``\\frac{284}{2}``, ``\\dfrac``, ``\\left(...\\right)``, ``x =``, units,
thousands separators, an algebraically equal form), a wrong answer, several boxes (the last counts), a truncated box,
no box at all, and in one group in four a pathological box (power tower, huge factorial, 400 nested parentheses, a
14-deep continued fraction, a 3000-character expression).

Timed, in one run:

* cold: ``majority_vote(extract_answer(c) for c in group)`` over every group, with no worker pool and empty caches
  (so it includes starting the pool);
* warm pool: the same with the pool running but the caches cleared;
* warm: the same again (pool running, caches filled: the steady state of a training run that revisits answers);
* lenient: the same votes with ``extract_answer(c, lenient=True)`` (pool running; the unboxed completions now answer);
* naive: each completion parsed whole with ``math_verify.parse``, then a majority over classes built by pairwise
  ``math_verify.verify`` against each class's first member (math-verify's own timeouts, ``--baseline-timeout``
  seconds, in the main thread).

Targets on 2 CPU cores: warm <= 1.0 s, cold <= 5 s, naive / cold >= 10.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gbpo.grading import (  # noqa: E402
    answers_equivalent,
    clear_grading_caches,
    extract_answer,
    grading_stats,
    majority_vote,
    shutdown_grading_pool,
)

FILES = ("math500.jsonl", "amc.jsonl", "aime24.jsonl")


def data_dir() -> Path:
    for candidate in (REPO / "data", REPO.parent / "shared" / "data"):
        if all((candidate / f).exists() for f in FILES):
            return candidate
    raise SystemExit(f"no benchmark data: looked for {FILES} in {REPO / 'data'} and {REPO.parent / 'shared' / 'data'}")


def load_rows() -> dict[str, list[dict]]:
    folder = data_dir()
    return {f: [json.loads(line) for line in (folder / f).read_text().splitlines() if line.strip()] for f in FILES}


# ---------------------------------------------------------------------------------------------------- completions


def integer_of(answer: str) -> int | None:
    m = re.fullmatch(r"(-?\d+)(?:\.0+)?", answer.strip())
    return int(m.group(1)) if m else None


def right_variants(gold: str) -> list[str]:
    """Notations of the gold answer that a grader must accept."""
    out = [gold]
    n = integer_of(gold)
    if n is not None:
        out += [str(n), f"{n}.0", f"\\frac{{{2 * n}}}{{2}}", f"x = {n}", f"{n}.", f"{n}^\\circ" if n > 0 else str(n)]
        if abs(n) >= 1000:
            out += [f"{n:,}", f"{n:,}".replace(",", "{,}"), f"{n:,}".replace(",", "\\,")]
        if 0 <= n < 100:
            out.append(f"{n:03d}")
        out.append(f"{n} \\text{{ units}}")
        return out
    out.append(gold.replace("\\frac", "\\dfrac"))
    out.append(re.sub(r"\s+", "", gold))
    out.append(re.sub(r",\s*", ", ", gold))
    if re.fullmatch(r"\(.*\)", gold.strip()):
        out.append("\\left" + gold.strip()[:-1] + "\\right)")
    out.append(re.sub(r"\\sqrt\{(\d)\}", r"\\sqrt\1", gold))
    m = re.fullmatch(r"\\frac\{\\sqrt\{(\d+)\}\}\{(\d+)\}", gold)
    if m:
        out.append(f"\\frac{{1}}{{{m.group(2)}}}\\sqrt{{{m.group(1)}}}")
    m = re.fullmatch(r"(\d+)\s*\\sqrt\{(\d+)\}", gold)
    if m:
        out.append(f"\\sqrt{{{int(m.group(1)) ** 2 * int(m.group(2))}}}")
    m = re.fullmatch(r"\\frac\{(\d+)\}\{(\d+)\}", gold)
    if m:
        out.append(f"{m.group(1)}/{m.group(2)}")
    return out


def wrong_variants(gold: str, rng: random.Random) -> list[str]:
    n = integer_of(gold)
    if n is not None:
        return [str(n + 1), str(n - 1), str(2 * n + 3), str(n + 10), f"{n}.5"]
    bumped = re.sub(r"\d", lambda m: str((int(m.group(0)) + 1) % 10), gold, count=1)
    out = [bumped, f"-({gold})", f"{gold} + 1"]
    if bumped == gold:
        out[0] = f"2({gold})"
    return out


def pathological(kind: int) -> str:
    cf = "1"
    for _ in range(14):
        cf = "1+\\frac{1}{" + cf + "}"
    return [
        "9^{9^{9^9}}",
        "100000000!",
        "(" * 400 + "1" + ")" * 400,
        cf,
        "+".join(f"x_{{{i}}}^{{{i % 7}}}" for i in range(300)),
    ][kind % 5]


def working(problem: str, rng: random.Random) -> str:
    steps = [f"We are asked: {problem[:300]}"]
    for _ in range(rng.randint(6, 16)):
        a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 999)
        steps.append(
            rng.choice(
                [
                    f"Substituting $x = {a}$ gives $x^2 + {b}x = {a * a + b * a}$.",
                    f"So $\\frac{{{a}}}{{{b}}} \\cdot {c} = \\frac{{{a * c}}}{{{b}}}$, which we simplify.",
                    f"The sum of the first {a} terms is ${a}({a}+1)/2 = {a * (a + 1) // 2}$.",
                    f"Since $\\sqrt{{{a * a}}} = {a}$, we get ${a} + {b} = {a + b}$.",
                    f"Checking the case $n = {c}$: the remainder is ${c % b}$.",
                ]
            )
        )
    return "\n".join(steps)


def completion(problem: str, answer: str, rng: random.Random, style: str, decoy: str) -> str:
    text = working(problem, rng)
    if style == "several":
        return (
            f"{text}\nA first guess is $\\boxed{{{decoy}}}$, but checking again,\nthe answer is $\\boxed{{{answer}}}$."
        )
    if style == "truncated":
        full = f"{text}\nTherefore the answer is $\\boxed{{{answer}}}$."
        return full[: len(full) - rng.randint(3, 3 + len(answer))]
    if style == "nobox":
        return f"{text}\nSo the answer should be {answer}, I think"
    return f"{text}\nTherefore, the final answer is $\\boxed{{{answer}}}$."


def make_groups(rows: dict[str, list[dict]], n_groups: int, size: int, seed: int) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    picks = rng.sample(rows["math500.jsonl"], n_groups // 2)
    picks += rng.sample(rows["amc.jsonl"], n_groups // 4)
    picks += rng.sample(rows["aime24.jsonl"], n_groups - len(picks))
    groups = []
    for g, row in enumerate(picks):
        gold = row["answer"]
        right, wrong = right_variants(gold), wrong_variants(gold, rng)
        n_wrong_kinds = rng.randint(1, min(4, len(wrong)))
        wrong = wrong[:n_wrong_kinds]
        p_right = rng.uniform(0.3, 0.85)
        texts = []
        for i in range(size):
            answer = rng.choice(right) if rng.random() < p_right else rng.choice(wrong)
            if g % 4 == 0 and i == size // 2:
                answer = pathological(g // 4)
            r = rng.random()
            style = "several" if r < 0.10 else "truncated" if r < 0.15 else "nobox" if r < 0.20 else "plain"
            texts.append(completion(row["problem"], answer, rng, style, rng.choice(wrong)))
        groups.append((gold, texts))
    return groups


# ---------------------------------------------------------------------------------------------------- graders


def grade_all(groups) -> list:
    return [majority_vote(extract_answer(c) for c in texts) for _, texts in groups]


def naive_grade_all(groups, timeout_s: int) -> list[tuple[str | None, float]]:
    """Parse whole completions with math-verify and vote by pairwise verify against class representatives."""
    from math_verify import parse, verify

    out = []
    for _, texts in groups:
        classes: list[list] = []  # [parsed representative, count]
        for text in texts:
            parsed = parse(text, parsing_timeout=timeout_s)
            if not parsed:
                continue
            for cls in classes:
                if verify(cls[0], parsed, timeout_seconds=timeout_s):
                    cls[1] += 1
                    break
            else:
                classes.append([parsed, 1])
        if classes:
            best = max(classes, key=lambda c: c[1])
            out.append((str(best[0][-1]), best[1] / len(texts)))
        else:
            out.append((None, 0.0))
    return out


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline-timeout", type=int, default=1, help="math-verify's own timeouts, in seconds")
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)

    groups = make_groups(load_rows(), args.groups, args.size, args.seed)
    n = sum(len(t) for _, t in groups)
    chars = sum(len(c) for _, t in groups for c in t)
    print(f"{len(groups)} groups x {args.size} completions = {n} completions, {chars / n:.0f} characters on average")

    shutdown_grading_pool()
    clear_grading_caches()
    s0 = grading_stats()
    cold, votes = timed(grade_all, groups)
    s1 = grading_stats()
    clear_grading_caches()
    warm_pool, _ = timed(grade_all, groups)
    warm, votes_again = timed(grade_all, groups)
    assert votes == votes_again
    extract_only, _ = timed(lambda: [[extract_answer(c) for c in t] for _, t in groups])
    lenient_only, _ = timed(lambda: [[extract_answer(c, lenient=True) for c in t] for _, t in groups])
    lenient, lenient_votes = timed(
        lambda: [majority_vote(extract_answer(c, lenient=True) for c in t) for _, t in groups]
    )

    label_right = sum(
        v.label is not None and answers_equivalent(gold, v.label) for (gold, _), v in zip(groups, votes, strict=True)
    )
    print(f"gbpo.grading cold (pool start, empty caches): {cold:7.3f} s")
    print(f"gbpo.grading warm pool, cleared caches:       {warm_pool:7.3f} s   (workers keep their parse caches)")
    print(f"gbpo.grading warm (pool and caches warm):     {warm:7.3f} s   (extraction alone {extract_only:.3f} s)")
    print(f"gbpo.grading lenient extraction (pool warm):  {lenient:7.3f} s   (extraction alone {lenient_only:.3f} s)")
    cold_stats = {k: s1[k] - s0[k] for k in s1 if s1[k] != s0[k]}
    print(f"  cold run: {cold_stats}")
    print(f"  labels equivalent to gold: {label_right}/{len(groups)}")
    print(f"  mean majority ratio: {sum(v.ratio for v in votes) / len(votes):.3f}")
    lenient_right = sum(
        v.label is not None and answers_equivalent(gold, v.label)
        for (gold, _), v in zip(groups, lenient_votes, strict=True)
    )
    print(f"  lenient: labels equivalent to gold {lenient_right}/{len(groups)}")

    if args.skip_baseline:
        return
    naive, naive_votes = timed(naive_grade_all, groups, args.baseline_timeout)
    naive_right = sum(
        label is not None and answers_equivalent(gold, label)
        for (gold, _), (label, _) in zip(groups, naive_votes, strict=True)
    )
    agree = sum(
        (v.label is None and label is None)
        or (v.label is not None and label is not None and answers_equivalent(v.label, label))
        for v, (label, _) in zip(votes, naive_votes, strict=True)
    )
    print(f"naive math-verify (whole completions, {args.baseline_timeout} s timeouts): {naive:7.3f} s")
    print(
        f"  labels equivalent to gold: {naive_right}/{len(groups)}; label equivalent to gbpo's: {agree}/{len(groups)} "
        "(naive also reads unboxed and truncated answers, so its votes differ)"
    )
    print(
        f"speed-up: naive / cold = {naive / cold:.1f}x, naive / warm pool = {naive / warm_pool:.1f}x, "
        f"naive / warm = {naive / warm:.0f}x"
    )
    checks = [("warm <= 1.0 s", warm <= 1.0), ("cold <= 5 s", cold <= 5.0), ("naive / cold >= 10", naive / cold >= 10)]
    print("targets: " + ", ".join(f"{name}: {'met' if ok else 'MISSED'}" for name, ok in checks))
    shutdown_grading_pool()


if __name__ == "__main__":
    main()
