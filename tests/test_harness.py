"""The lm-evaluation-harness backend "prepacking" (gpu_runner.harness) against lm-eval's own
HFLM on the same tiny fp32 models and offline tokenizer: loglikelihood (direct calls),
loglikelihood_rolling, generate_until, and offline YAML tasks through `simple_evaluate` and
through the `prepack-eval` CLI; `import gpu_runner` never imports lm_eval."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import numpy as np
import pytest
from score_support import hflm, random_text, word_tokenizer
from test_runner_support import FAMILIES, MAX_POS, tiny_model

lm_eval = pytest.importorskip("lm_eval")
harness = pytest.importorskip("gpu_runner.harness")
from lm_eval.api.instance import Instance

TASKS_DIR = Path(__file__).parent / "data" / "lm_eval_tasks"
TASKS = ["prepack_tiny_mc", "prepack_tiny_ppl", "prepack_tiny_gen"]
TOL = 1e-4


def _instances(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def _loglikelihood_args(seed: int) -> list[tuple[str, str]]:
    """Shared contexts with 1- and multi-word choices, an empty context (lm-eval puts the
    prefix token there), a trailing-space context, a 1-word context, and requests longer
    than the model's 128 tokens (truncated from the left, as HFLM does)."""
    rng = random.Random(seed)
    args = []
    for q in range(4):
        context = random_text(rng, rng.randint(1, 30))
        args += [(context, " " + random_text(rng, rng.choice([1, 1, 3]))) for _ in range(4)]
    args += [("", "the cat"), ("dog is ", "red"), ("sky", " blue")]
    args += [(random_text(rng, MAX_POS - 3), " one two three"), (random_text(rng, 200), " a b")]
    return args


@pytest.mark.parametrize("family,path", [(f, "auto") for f in FAMILIES] + [("qwen2", "engine")])
def test_loglikelihood_matches_hflm(family, path):
    model = tiny_model(family)
    args = _loglikelihood_args(seed=FAMILIES.index(family))
    lm = harness.PrepackLM(model, word_tokenizer(), path=path, batch_tokens=96)
    assert lm.score_options["path"] == path and lm.score_options["batch_tokens"] == 96
    ours = lm.loglikelihood(_instances("loglikelihood", args))
    theirs = hflm(model).loglikelihood(_instances("loglikelihood", args), disable_tqdm=True)
    assert len(ours) == len(args)
    for i, ((lp, greedy), (want_lp, want_greedy)) in enumerate(zip(ours, theirs)):
        assert abs(lp - want_lp) <= TOL, (i, lp, want_lp)
        assert greedy == want_greedy, i


def test_softmax_dtype_of_the_model_rounds_as_hflm_does():
    """softmax_dtype=None (HFLM's default: the model's dtype) puts a bf16 model's results on
    HFLM's bf16 grid: each within one bf16 step of HFLM's (the forwards' own bf16 noise may
    cross a rounding edge), most equal; the float32 default is off the grid."""
    import torch

    model = tiny_model("llama", dtype=torch.bfloat16)
    args = _loglikelihood_args(seed=1)
    theirs = hflm(model).loglikelihood(_instances("loglikelihood", args), disable_tqdm=True)
    rounded = harness.PrepackLM(model, word_tokenizer(), softmax_dtype=None).loglikelihood(
        _instances("loglikelihood", args))
    plain = harness.PrepackLM(model, word_tokenizer()).loglikelihood(_instances("loglikelihood", args))
    on_grid = lambda x: x == float(torch.tensor(x).to(torch.bfloat16))  # noqa: E731
    assert all(on_grid(lp) for lp, _ in rounded) and not all(on_grid(lp) for lp, _ in plain)
    step = lambda x: 2.0 ** (int(np.floor(np.log2(abs(x)))) - 7)  # noqa: E731  bf16 spacing at |x|
    assert all(abs(a - b) <= step(b) for (a, _), (b, _) in zip(rounded, theirs))
    assert sum(a == b for (a, _), (b, _) in zip(rounded, theirs)) >= len(args) // 2
    with pytest.raises(ValueError, match="softmax_dtype must be float32 or the model's dtype"):
        harness.PrepackLM(tiny_model("llama"), word_tokenizer(), softmax_dtype="bfloat16")  # an fp32 model
    with pytest.raises(ValueError, match="softmax_dtype must be 'auto' or a torch dtype name"):
        harness.PrepackLM(model, word_tokenizer(), softmax_dtype="half-ish")


def test_loglikelihood_rolling_matches_hflm():
    model = tiny_model("mistral")
    rng = random.Random(4)
    args = [(random_text(rng, n),) for n in (1, 50, 127, 128, 260)]
    ours = harness.PrepackLM(model, word_tokenizer()).loglikelihood_rolling(_instances("loglikelihood_rolling", args))
    theirs = hflm(model).loglikelihood_rolling(_instances("loglikelihood_rolling", args), disable_tqdm=True)
    assert max(abs(a - b) for a, b in zip(ours, theirs)) <= TOL


def test_generate_until_matches_hflm():
    model = tiny_model("qwen2")
    rng = random.Random(8)
    contexts = [random_text(rng, n) for n in (3, 12, 30, 7)]
    # Stop strings taken from an uncut generation, so that they really cut.
    probe = hflm(model).generate_until(
        _instances("generate_until", [(c, {"until": [], "max_gen_toks": 10, "do_sample": False}) for c in contexts]),
        disable_tqdm=True,
    )
    stops = [text.split()[3] if len(text.split()) > 3 else "xx" for text in probe]
    args = [(c, {"until": [s], "max_gen_toks": 10, "do_sample": False}) for c, s in zip(contexts, stops)]
    args.append((contexts[0], {"until": ["\n"], "max_gen_toks": 4}))
    ours = harness.PrepackLM(model, word_tokenizer()).generate_until(_instances("generate_until", args))
    theirs = hflm(model).generate_until(_instances("generate_until", args), disable_tqdm=True)
    assert ours == theirs
    assert any(len(a) < len(b) for a, b in zip(ours, probe))  # a stop string did cut


def _results_table(results: dict) -> dict:
    """Metrics per task (what the printed table shows, without the stderr columns)."""
    return {
        task: {k: float(v) for k, v in metrics.items() if "," in k and "stderr" not in k}
        for task, metrics in results["results"].items()
    }


def _assert_same_table(ours: dict, theirs: dict) -> None:
    """Accuracies and exact matches equal; perplexities (sums of 100s of fp32 log-probs,
    in another order) to a relative 1e-5."""
    ours, theirs = _results_table(ours), _results_table(theirs)
    assert ours.keys() == theirs.keys()
    for task in ours:
        assert ours[task].keys() == theirs[task].keys()
        for metric, value in ours[task].items():
            exact = metric.startswith(("acc", "exact_match"))
            assert value == (theirs[task][metric] if exact else pytest.approx(theirs[task][metric], rel=1e-5)), (
                task, metric, value, theirs[task][metric])


@pytest.fixture(scope="module")
def manager():
    """The three offline tasks only (lm-eval's own 10,000+ task files take ~8 s to index)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False)


def test_simple_evaluate_gives_hflms_table(manager):
    model = tiny_model("llama")
    options = dict(tasks=TASKS, task_manager=manager, limit=8)
    ours = lm_eval.simple_evaluate(model=harness.PrepackLM(model, word_tokenizer()), **options)
    theirs = lm_eval.simple_evaluate(model=hflm(model), **options)
    table = _results_table(ours)
    assert set(table) == set(TASKS) and table["prepack_tiny_mc"]["acc,none"] > 0
    _assert_same_table(ours, theirs)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return folder


def test_registered_name_and_cli(saved_model, manager, capsys):
    from lm_eval.api.registry import get_model

    from gpu_runner.eval_cli import main

    assert get_model("prepacking") is harness.PrepackLM
    assert get_model("hf").__name__ == "HFLM"  # lm-eval's own models still resolve
    by_name = lm_eval.simple_evaluate(
        model="prepacking", model_args=f"pretrained={saved_model},dtype=float32", tasks=["prepack_tiny_mc"],
        task_manager=manager, device="cpu",
    )  # fmt: skip
    by_instance = lm_eval.simple_evaluate(
        model=hflm(tiny_model("llama")), tasks=["prepack_tiny_mc"], task_manager=manager
    )
    _assert_same_table(by_name, by_instance)
    capsys.readouterr()
    main(["run", "--model", "prepacking", "--model_args", f"pretrained={saved_model},dtype=float32",
          "--tasks", "prepack_tiny_mc", "--include_path", str(TASKS_DIR)])  # fmt: skip
    printed = capsys.readouterr().out
    acc = by_instance["results"]["prepack_tiny_mc"]["acc,none"]
    assert "prepack_tiny_mc" in printed and f"{acc:.4f}" in printed


def test_bad_model_args():
    with pytest.raises(ValueError, match="pass tokenizer="):
        harness.PrepackLM(tiny_model("llama"))
    with pytest.raises(ValueError, match="pretrained must be"):
        harness.PrepackLM(3, word_tokenizer())
    with pytest.raises(ValueError, match="path must be one of"):
        harness.PrepackLM(tiny_model("llama"), word_tokenizer(), path="fast").loglikelihood(
            _instances("loglikelihood", [("the", " cat")])
        )
    with pytest.raises(ValueError, match="share_contexts must be"):
        harness.PrepackLM(tiny_model("llama"), word_tokenizer(), share_contexts="x").loglikelihood(
            _instances("loglikelihood", [("the", " cat")])
        )


def test_gpu_runner_does_not_import_lm_eval():
    """Only the backend modules import lm_eval, and nothing imports them: `import packers,
    simulator, gpu_runner` works without the eval extra (statically checked: this process
    has lm_eval loaded already)."""
    root = Path(__file__).resolve().parents[1]
    optional = {"harness", "eval_cli"}
    for path in [*root.glob("gpu_runner/**/*.py"), *root.glob("packers/**/*.py"), *root.glob("simulator/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                if path.stem not in optional:
                    assert not name.startswith("lm_eval"), f"{path} imports {name}"
                    assert name.split(".")[-1] not in optional, f"{path} imports {name}"
                    assert not (isinstance(node, ast.ImportFrom) and {a.name for a in node.names} & optional), path
