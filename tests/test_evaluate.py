"""gbpo.evaluate: the pass@k / maj@k maths, the report, the CLI end to end on the tiny model (CPU), and bad input."""

from __future__ import annotations

import json
import math

import pytest
from evaluation_check import check_metrics_independently

from gbpo.evaluate import (
    compute_metrics,
    default_ks,
    evaluate_benchmarks,
    load_model,
    main,
    maj_at_k,
    mean_ci95,
    pass_at_k,
    reference_rows,
    render_summary,
)

FAST = ["--num-samples", "4", "--max-new-tokens", "8", "--batch-size", "5", "--quiet", "--fallback-last-number"]
TRANSFORMERS = ["--backend", "transformers"]

# ---------------------------------------------------------------------------------------------------- pass@k


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (4, 2, 2, 5 / 6),  # 1 - C(2,2)/C(4,2) = 1 - 1/6
        (5, 1, 2, 0.4),  # 1 - C(4,2)/C(5,2) = 1 - 6/10
        (10, 3, 1, 0.3),  # pass@1 = c/n
        (10, 3, 4, 1 - 35 / 210),  # 1 - C(7,4)/C(10,4)
        (4, 0, 2, 0.0),  # c = 0
        (4, 0, 4, 0.0),  # c = 0, n = k
        (4, 4, 1, 1.0),  # c = n
        (4, 1, 4, 1.0),  # n = k and one correct: k samples are all of them
        (4, 3, 2, 1.0),  # n - c < k
        (1, 1, 1, 1.0),
        (1, 0, 1, 0.0),
    ],
)
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_binomials():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)
    assert pass_at_k(1024, 3, 512) == pytest.approx(1 - math.comb(1021, 512) / math.comb(1024, 512), rel=1e-9)


@pytest.mark.parametrize(("n", "c", "k"), [(4, 2, 5), (4, 5, 2), (-1, 0, 1), (4, -1, 2), (4, 2, -1), (4, 2, 0)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_pass_at_k_error_names_k_and_n():
    with pytest.raises(ValueError, match="k=5 is larger than the number of samples n=4"):
        pass_at_k(4, 2, 5)


# ---------------------------------------------------------------------------------------------------- maj@k


def test_maj_at_k_tie_goes_to_first_answer_seen():
    answers = ["3", "5", "5", "3"]
    vote, correct = maj_at_k(answers, "3", 4)  # 2 - 2: "3" came first
    assert (vote.label, vote.ratio, correct) == ("3", 0.5, True)
    assert maj_at_k(answers, "5", 4)[1] is False
    vote, correct = maj_at_k(answers, "5", 3)  # the first 3 only: "5" wins 2 - 1
    assert (vote.label, correct) == ("5", True)
    vote, correct = maj_at_k(answers, "5", 1)
    assert (vote.label, correct) == ("3", False)


def test_maj_at_k_unparseable_answers_never_win():
    answers = [None, None, "5", None]
    vote, correct = maj_at_k(answers, "5", 2)  # no answer among the first two
    assert (vote.label, vote.ratio, correct) == (None, 0.0, False)
    vote, correct = maj_at_k(answers, "5", 4)  # one vote beats three unparseable samples
    assert (vote.label, vote.ratio, correct) == ("5", 0.25, True)
    vote, correct = maj_at_k([None, None], "5", 2)
    assert (vote.label, correct) == (None, False)


def test_maj_at_k_merges_equivalent_spellings():
    vote, correct = maj_at_k(["7", "\\frac{1}{2}", "0.5"], "1/2", 3)
    assert vote.label in ("\\frac{1}{2}", "0.5") and vote.ratio == pytest.approx(2 / 3) and correct


def test_maj_at_k_rejects_bad_k():
    with pytest.raises(ValueError, match="k=3"):
        maj_at_k(["1", "2"], "1", 3)
    with pytest.raises(ValueError):
        maj_at_k(["1", "2"], "1", 0)


# ---------------------------------------------------------------------------------------------------- metrics


def test_default_ks_and_ci():
    assert default_ks(16) == [1, 2, 4, 8, 16]
    assert default_ks(6) == [1, 2, 4, 6]
    assert default_ks(1) == [1]
    mean, low, high = mean_ci95([0.0, 1.0])  # s = sqrt(0.5), half-width 1.96 * s / sqrt(2) = 0.98
    assert mean == 0.5 and high - mean == pytest.approx(1.959964 * math.sqrt(0.5) / math.sqrt(2), rel=1e-6)
    assert mean_ci95([0.25]) == (0.25, 0.25, 0.25)
    with pytest.raises(ValueError):
        mean_ci95([])


def _record(correct, votes):
    return {"correct": correct, "extracted": ["x"] * len(correct), "votes": {str(k): {"correct": v} for k, v in votes}}


def test_compute_metrics_by_hand():
    records = [
        _record([True, False, False, False], [(1, True), (2, False), (4, False)]),
        _record([True, True, True, True], [(1, True), (2, True), (4, True)]),
    ]
    m = compute_metrics(records, [1, 2, 4])
    assert m["num_problems"] == 2 and m["num_samples"] == 4 and m["ks"] == [1, 2, 4]
    assert m["avg@4"] == pytest.approx(0.625) == m["pass@1"]
    assert m["pass@2"] == pytest.approx((0.5 + 1.0) / 2)  # pass_at_k(4, 1, 2) = 1 - C(3,2)/C(4,2) = 0.5
    assert m["pass@4"] == 1.0
    assert (m["maj@1"], m["maj@2"], m["maj@4"]) == (1.0, 0.5, 0.5)
    half = 1.959964 * math.sqrt(((0.25 - 0.625) ** 2 + (1 - 0.625) ** 2) / 1) / math.sqrt(2)
    assert m["avg@4_ci95_low"] == pytest.approx(max(0.0, 0.625 - half), rel=1e-6)
    assert m["avg@4_ci95_high"] == 1.0  # clipped
    with pytest.raises(ValueError, match="larger than the number of samples"):
        compute_metrics(records, [8])
    with pytest.raises(ValueError, match="same number of samples"):
        compute_metrics([records[0], _record([True], [(1, True)])], [1])


def test_graded_samples_to_metrics_by_hand():
    """Samples -> extracted answers -> votes -> metrics, every number worked out by hand."""
    from gbpo.evaluation.metrics import _score_problem

    problems = [
        # 1 of 4 correct; maj@1 "3" ok; maj@2 "3" vs "5" tie, first seen wins; maj@4 "5" wins 2 - 1
        ("3", ["\\boxed{3}", "\\boxed{5}", "\\boxed{5}", "no answer"]),
        # 2 of 4 (two spellings of 1/2); maj@4: 1/2 vs 7, 2 - 2, 1/2 seen first
        ("1/2", ["\\boxed{0.5}", "\\boxed{\\frac{1}{2}}", "\\boxed{7}", "\\boxed{7}"]),
        # 1 of 4; maj@4: 10 vs 4, 1 - 1, 10 seen first
        ("10", ["\\boxed{10}", "y", "z", "\\boxed{4}"]),
    ]
    records = [{"answer": gold, **_score_problem(gold, texts, [1, 2, 4], False, "strict")} for gold, texts in problems]
    assert [r["num_correct"] for r in records] == [1, 2, 1]
    assert records[0]["extracted"] == ["3", "5", "5", None]
    m = compute_metrics(records, [1, 2, 4])
    assert m["avg@4"] == pytest.approx(1 / 3) and m["pass@1"] == pytest.approx(1 / 3)
    # pass@2 = mean(1 - C(3,2)/C(4,2), 1 - C(2,2)/C(4,2), 1 - C(3,2)/C(4,2)) = mean(1/2, 5/6, 1/2)
    assert m["pass@2"] == pytest.approx(11 / 18)
    assert m["pass@4"] == 1.0
    assert (m["maj@1"], m["maj@2"]) == (1.0, 1.0) and m["maj@4"] == pytest.approx(2 / 3)
    assert m["answered_rate"] == pytest.approx(9 / 12)


def test_lenient_extraction_is_the_default_and_strict_reads_boxes_only():
    """The evaluation reads unboxed answers by default (like the Qwen2.5-Math evaluator); strict reads boxes only."""
    from gbpo.evaluation.metrics import _score_problem

    gold = "10455"
    texts = [
        "So the total is 10455 marbles. The final answer is $10{,}455$.",  # anchor + math: 10455
        "We get \\[ x = 10455 \\]",  # last display math: x = 10455
        "\\boxed{10455}",  # boxed: read by both
        "It is 7, I think.",  # last number: 7
    ]
    lenient = _score_problem(gold, texts, [1, 4], False)
    assert lenient["correct"] == [True, True, True, False]
    assert lenient["votes"]["4"]["correct"] and lenient["votes"]["4"]["ratio"] == pytest.approx(3 / 4)
    strict = _score_problem(gold, texts, [1, 4], False, "strict")
    assert strict["extracted"] == [None, None, "10455", None]
    assert strict["num_correct"] == 1 and not strict["votes"]["1"]["correct"] and strict["votes"]["4"]["correct"]
    # strict + last number reads the last number of an unboxed completion, not its anchored answer
    assert _score_problem(gold, texts, [1], True, "strict")["extracted"] == ["455", "10455", "10455", "7"]


def test_answer_extraction_rejects_an_unknown_mode(capsys):
    with pytest.raises(ValueError, match="answer_extraction must be one of"):
        evaluate_benchmarks(None, None, ["arithmetic"], answer_extraction="loose")
    with pytest.raises(SystemExit):
        main(["--model", "x", "--answer-extraction", "loose"])
    assert "--answer-extraction: invalid choice: 'loose'" in capsys.readouterr().err
    from gbpo import GBPOConfig

    with pytest.raises(ValueError, match="eval_answer_extraction must be one of"):
        GBPOConfig(output_dir="/tmp/unused", eval_answer_extraction="loose")


def test_reference_rows_by_model_id():
    rows = reference_rows("Qwen/Qwen2.5-Math-1.5B")
    assert [values["aime24"] for _, values, _ in rows] == [7.7, 15.8]
    assert [values["math500"] for _, values, _ in rows] == [32.7, 73.0]
    assert reference_rows("/runs/qwen2.5-math-1.5b-ttrl/final")  # a trained model evaluated by path
    assert reference_rows("Qwen/Qwen2.5-Math-1.5B-Instruct") == []
    assert reference_rows("smollm2-135m") == [] and reference_rows(None) == []


def test_summary_shows_references_beside_the_run():
    metrics = {"num_problems": 30, "num_samples": 2, "ks": [1, 2], "avg@2": 0.1, "avg@2_ci95_low": 0.0}
    metrics |= {"avg@2_ci95_high": 0.2, "pass@1": 0.1, "pass@2": 0.15, "maj@1": 0.1, "maj@2": 0.1}
    results = {"config": {"model": "Qwen/Qwen2.5-Math-1.5B"}, "benchmarks": {"aime24": {"metrics": metrics}}}
    text = render_summary([("mine", results)])
    assert "| mine | 30 | 2 | 10.0 [0.0, 20.0] | 10.0 | 15.0 | 10.0 | 10.0 |" in text
    assert "Qwen2.5-Math-1.5B base" in text and "7.7" in text and "15.8" in text


# ---------------------------------------------------------------------------------------------------- end to end


def _run(tiny_model_dir, out, *extra):
    return main(["--model", str(tiny_model_dir), "--benchmarks", "arithmetic", "--limit", "3", *FAST, *TRANSFORMERS,
                 *extra, "--output-dir", str(out)])  # fmt: skip


@pytest.fixture(scope="module")
def two_runs(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    return [(root / f"seed{s}", _run(tiny_model_dir, root / f"seed{s}", "--seed", str(s))) for s in (0, 1)]


def test_end_to_end_writes_results_summary_and_plot(two_runs):
    out, results = two_runs[0]
    assert results["config"]["answer_extraction"] == "lenient"  # the default, like other evaluators
    assert {p.name for p in out.iterdir()} >= {"results.json", "summary.md", "pass_at_k.png"}
    assert (out / "pass_at_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "results.json").read_text())
    assert saved["config"]["model"] and saved["config"]["num_samples"] == 4 and saved["config"]["seed"] == 0
    assert saved["config"]["backend"] == "transformers"
    bench = saved["benchmarks"]["arithmetic"]
    assert len(bench["records"]) == 3
    for record in bench["records"]:
        assert record["prompt"][-1]["role"] == "user" and "\\boxed{}" in record["prompt"][-1]["content"]
        assert record["prompt_text"].endswith("<|im_start|>assistant\n")  # the chat template's generation prompt
        assert len(record["samples"]) == len(record["extracted"]) == len(record["correct"]) == 4
        assert set(record["votes"]) == {"1", "2", "4"} and record["num_correct"] == sum(record["correct"])
        assert all(1 <= t <= 8 for t in record["completion_tokens"])
    m = bench["metrics"]
    assert m["ks"] == [1, 2, 4]
    check_metrics_independently(bench["records"], m, n=4, fallback_last_number=True)
    summary = (out / "summary.md").read_text()
    assert "## arithmetic" in summary and "| pass@1 | pass@2 | pass@4 | maj@1 | maj@2 | maj@4 |" in summary
    assert saved == json.loads(json.dumps(results))


def test_compare_two_runs(two_runs, tmp_path, capsys):
    (a, _), (b, _) = two_runs
    result = main(["--compare", str(a), str(b), "--output-dir", str(tmp_path / "cmp")])
    summary = (tmp_path / "cmp" / "summary.md").read_text()
    assert "| seed0 | 3 | 4 |" in summary and "| seed1 | 3 | 4 |" in summary
    assert (tmp_path / "cmp" / "pass_at_k.png").stat().st_size > 0
    assert result["compared"] == [str(a), str(b)] and "## arithmetic" in capsys.readouterr().out


def test_evaluate_api_restores_train_mode_padding_and_rng(tiny_model_dir, tmp_path):
    import datasets
    import torch

    from gbpo.data import load_benchmark

    path = tmp_path / "probs.jsonl"
    path.write_text('{"problem": "What is 1 + 1?", "answer": "2"}\n{"problem": "What is 2 + 1?", "answer": "3"}\n')
    model, tokenizer, _ = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    model.train()
    model.model.layers[0].eval()  # a submodule left in eval mode stays so
    tokenizer.padding_side = "right"
    rng = torch.get_rng_state()
    kwargs = dict(num_samples=3, temperature=0.6, top_p=0.95, max_new_tokens=6, seed=3, batch_size=4, progress=False)
    benchmarks = {"probs": load_benchmark(str(path))}
    first = evaluate_benchmarks(model, tokenizer, benchmarks, **kwargs)
    assert model.training and tokenizer.padding_side == "right" and not model.model.layers[0].training
    assert model.model.layers[1].training
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())
    assert first["benchmarks"]["probs"]["metrics"]["ks"] == [1, 2, 3]
    # by file name: the same prompts, the same seed
    again = evaluate_benchmarks(model, tokenizer, [str(path)], **kwargs)
    samples = [r["samples"] for r in first["benchmarks"]["probs"]["records"]]
    assert [r["samples"] for r in again["benchmarks"]["probs"]["records"]] == samples
    with pytest.raises(ValueError, match="larger than the number of samples"):
        evaluate_benchmarks(model, tokenizer, benchmarks, **kwargs | {"num_samples": 2}, ks=[4])
    with pytest.raises(ValueError, match="lacks column"):
        evaluate_benchmarks(model, tokenizer, {"x": datasets.Dataset.from_list([{"prompt": "hi"}])}, **kwargs)
    assert model.training and tokenizer.padding_side == "right"


def test_peft_adapter_is_merged(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    adapter_dir = tmp_path / "adapter"
    get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter_dir)
    assert (adapter_dir / "adapter_config.json").is_file() and not (adapter_dir / "config.json").exists()
    model, tokenizer, _ = load_model(str(adapter_dir), device="cpu")
    assert not hasattr(model, "peft_config") and tokenizer.chat_template
    results = main(["--model", str(adapter_dir), "--benchmarks", "arithmetic", "--limit", "1", *FAST, *TRANSFORMERS,
                    "--output-dir", str(tmp_path / "out")])  # fmt: skip
    assert len(results["benchmarks"]["arithmetic"]["records"]) == 1


# ---------------------------------------------------------------------------------------------------- bad input


def _fails(argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def test_unknown_benchmark_lists_the_known_ones(tiny_model_dir, capsys):
    err = _fails(["--model", str(tiny_model_dir), "--benchmarks", "aime24,gsm8k"], capsys)
    assert "'gsm8k'" in err and "aime24, amc, arithmetic, math500" in err


def test_model_directory_without_weights(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = _fails(["--model", str(tmp_path / "empty"), "--benchmarks", "arithmetic"], capsys)
    assert "config.json" in err and "adapter_config.json" in err
    assert "does not exist" in _fails(["--model", str(tmp_path / "missing")], capsys)


def test_k_larger_than_num_samples(tiny_model_dir, capsys):
    err = _fails(["--model", str(tiny_model_dir), "--benchmarks", "arithmetic", "--num-samples", "4", "--ks", "1,8"],
                 capsys)  # fmt: skip
    assert "k=8 is larger than the number of samples (4)" in err


def test_compare_rejects_a_directory_without_results(two_runs, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = _fails(["--compare", str(two_runs[0][0]), str(tmp_path / "empty"), "--output-dir", str(tmp_path / "o")],
                 capsys)  # fmt: skip
    assert "has no results.json" in err
    assert "is not a directory" in _fails(["--compare", str(tmp_path / "nowhere")], capsys)


def test_model_or_compare_required(capsys):
    assert "--model is required" in _fails(["--benchmarks", "arithmetic"], capsys)
    assert "do not give --model" in _fails(["--model", "x", "--compare", "d"], capsys)
