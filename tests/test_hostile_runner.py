"""Hostile input to the GPU runner (issue 17): concurrent calls on one model, a model left in
train() mode, plug-in packers that break their contract, bad token lists, shapes that imply
a huge allocation, and the `prepack-bench` CLI's bad flags. Each gives the exact result or
one clear error, before any device work."""

from __future__ import annotations

import copy
import re
import threading

import hostile_plugins
import numpy as np
import pytest
import torch
from test_runner_support import (
    FP32_TOL,
    random_lengths,
    random_prompts,
    register_reference_varlen_backends,
    tiny_model,
)

import gpu_runner
from gpu_runner import plan as plan_module
from gpu_runner.bench.cli import main as bench_main
from gpu_runner.model_guard import inference_call, model_lock
from packers import Packing, limits

register_reference_varlen_backends()

PROMPTS = random_prompts(random_lengths(6, longest=20, seed=7), seed=7)
REQUESTS = [(p[:-3], p[-3:]) for p in PROMPTS if len(p) > 4]


def _call(model, kind: str, backend: str):
    """One gpu_runner call on `model`; its result as a tensor to compare exactly."""
    if kind == "prefill":
        return gpu_runner.prefill(model, PROMPTS, backend=backend, return_kv=False).logits
    if kind == "score":
        return torch.tensor([r.logprob for r in gpu_runner.score(model, REQUESTS, backend=backend)])
    return torch.tensor(gpu_runner.generate(model, PROMPTS, max_new_tokens=3, backend=backend, path="hf"))


CALLS = [
    ("prefill", "dense"),
    ("prefill", "flex"),
    ("prefill", "varlen-reference"),
    ("score", "dense"),
    ("score", "varlen-reference"),
    ("generate", "dense"),
]


# -- concurrency -----------------------------------------------------------------------------
def test_concurrent_calls_with_mixed_backends_on_one_eager_model_are_exact():
    # Before the per-model lock, one thread restored "eager" while another was mid-forward:
    # a few calls in a couple of hundred came back off by ~0.1, and mixed backends raised.
    model = tiny_model("llama", attn="eager")
    serial = {c: _call(model, *c) for c in CALLS}
    failures: list[str] = []
    start = threading.Barrier(4)

    def worker(t: int) -> None:
        start.wait()
        for i in range(4):
            call = CALLS[(t + i) % len(CALLS)]
            try:
                got = _call(model, *call)
            except Exception as exc:  # noqa: BLE001 - every failure is reported below
                failures.append(f"thread {t} call {i} {call}: {type(exc).__name__}: {exc}")
                continue
            if not torch.equal(got, serial[call]):
                failures.append(f"thread {t} call {i} {call}: differs from the serial result")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not any(th.is_alive() for th in threads), "a call deadlocked"
    assert failures == []
    assert model.config._attn_implementation == "eager"  # restored after every call


def test_model_lock_is_one_reentrant_lock_per_model():
    a, b = tiny_model("llama"), tiny_model("mistral")
    assert model_lock(a) is model_lock(a) and model_lock(a) is not model_lock(b)
    with inference_call(a, "sdpa"), inference_call(a):  # re-entrant: generate -> prefill
        assert model_lock(a)._is_owned()


# -- train mode ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,backend", CALLS)
def test_a_model_left_in_train_mode_runs_without_dropout_and_stays_in_train_mode(kind, backend):
    model = copy.deepcopy(tiny_model("llama", attn="eager"))  # tiny_model is cached: a copy to change
    model.config.attention_dropout = 0.5  # what dropout would change
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.5
    expected = _call(model, kind, backend)  # eval mode (tiny_model returns it so)
    model.train()
    model.model.layers[0].mlp.eval()  # a mixed mode: restored module by module
    modes = {name: m.training for name, m in model.named_modules()}
    for _ in range(2):
        torch.testing.assert_close(_call(model, kind, backend), expected, **FP32_TOL)
    assert {name: m.training for name, m in model.named_modules()} == modes


def test_train_mode_is_restored_when_the_call_fails():
    model = copy.deepcopy(tiny_model("llama")).train()
    with pytest.raises(RuntimeError, match="inside"), inference_call(model, "sdpa"):
        assert not model.training
        raise RuntimeError("inside")
    assert all(m.training for m in model.modules())
    assert model.config._attn_implementation == "sdpa"


# -- plug-in packers and ready packings ------------------------------------------------------
BAD_PACKERS = [
    (hostile_plugins.OtherCapacity(), "capacity 16, asked 8"),
    (hostile_plugins.OtherLengths(), "other lengths"),
    (hostile_plugins.ReturnsList(), "returned list, not a Packing"),
    (hostile_plugins.ReturnsNone(), "returned NoneType, not a Packing"),
    (hostile_plugins.Raises(), "failed: RuntimeError: plug-in exploded"),
    (hostile_plugins.AroundValidation(), "invalid Packing"),
]


@pytest.mark.parametrize("packer,message", BAD_PACKERS, ids=lambda x: type(x).__name__)
@pytest.mark.parametrize("entry", ["prefill", "score"])
def test_a_plugin_packer_breaking_its_contract_is_refused_naming_it(entry, packer, message):
    model = tiny_model("llama")
    name = type(packer).__qualname__
    with pytest.raises((ValueError, TypeError), match=rf"packer '{name}'.*{message}"):
        if entry == "prefill":
            gpu_runner.prefill(model, [[1] * 5, [2] * 6, [3] * 7, [4] * 8], packer=packer, capacity=8)
        else:
            gpu_runner.score(model, [([1] * 4, [2]), ([3] * 5, [4, 5])], packer=packer, capacity=8)


def test_a_ready_packing_built_around_validation_is_refused():
    model = tiny_model("llama")
    lengths = [5, 6, 7]
    fake = hostile_plugins.AroundValidation().pack(lengths, 8)  # one row of 18 tokens at capacity 8
    with pytest.raises(ValueError, match="packing is not a valid Packing"):
        gpu_runner.prefill(model, [[1] * n for n in lengths], packing=fake)
    with pytest.raises(ValueError, match="must be a packers.Packing"):
        gpu_runner.prefill(model, [[1] * n for n in lengths], packing=[[0, 1, 2]])
    other = Packing(lengths=(5, 6), capacity=8, bins=((0,), (1,)), packer="x",
                    meta={"lower_bound": 1, "status": "heuristic", "solve_time_s": 0.0})
    with pytest.raises(ValueError, match="does not match the prompts"):
        gpu_runner.prefill(model, [[1] * n for n in lengths], packing=other)


# -- token lists and limits ------------------------------------------------------------------
@pytest.mark.parametrize(
    "prompts,message",
    [
        ([[True, 5]], "not bools"),
        ([[5, 3], [False]], "not bools"),
        ([[5, np.bool_(True)]], "not bools"),
        ([[1.0, 5]], "must be integers"),
        ([[5, 2.5]], "must be integers"),
        ([[5, "7"]], "must be integers"),
        ([[5, None]], "must be integers"),
    ],
)
@pytest.mark.parametrize("entry", ["prefill", "generate"])
def test_non_integer_token_ids_are_refused(entry, prompts, message):
    model = tiny_model("llama")
    with pytest.raises(ValueError, match=message):
        if entry == "prefill":
            gpu_runner.prefill(model, prompts)
        else:
            gpu_runner.generate(model, prompts, max_new_tokens=2)


def test_more_prompts_than_the_limit_are_refused(monkeypatch):
    monkeypatch.setattr(limits, "MAX_PROMPTS", 4)
    with pytest.raises(ValueError, match=r"number of prompts 5 is over the limit of 4 prompts"):
        gpu_runner.prefill(tiny_model("llama"), [[1, 2]] * 5)


# -- allocations checked before they happen --------------------------------------------------
@pytest.mark.parametrize(
    "options",
    [
        {"row_len": 10**6},  # a dense mask of 10^12 bytes per row
        {"row_len": 10**5, "num_rows": 10**4},
        {"num_rows": 10**12},
        {"row_len": 10**6, "backend": "flex"},
        {"row_len": 10**7, "backend": "varlen-reference", "return_kv": False},
    ],
)
def test_a_shape_that_cannot_fit_the_device_is_refused_before_allocating(options):
    model = tiny_model("llama")
    with pytest.raises(ValueError, match=r"packed forward 1/1 .* needs an estimated [\d,]+ bytes, more than"):
        gpu_runner.prefill(model, PROMPTS, **{"backend": "dense", **options})


def test_the_memory_precheck_uses_the_free_memory_and_lets_what_fits_run(monkeypatch):
    model = tiny_model("llama")
    result = gpu_runner.prefill(model, PROMPTS, backend="dense", row_len=64)
    need = result.forwards[0].estimated_bytes
    monkeypatch.setattr(plan_module, "free_device_bytes", lambda device: need - 1)
    with pytest.raises(ValueError, match=f"{need:,} bytes, more than the {need - 1:,} bytes free on cpu"):
        gpu_runner.prefill(model, PROMPTS, backend="dense", row_len=64)
    monkeypatch.setattr(plan_module, "free_device_bytes", lambda device: need)
    assert gpu_runner.prefill(model, PROMPTS, backend="dense", row_len=64).forwards[0].row_len == 64


def test_free_device_bytes_on_cpu_is_known_and_positive():
    free = plan_module.free_device_bytes(torch.device("cpu"))
    assert free is not None and free > 0


# -- prepack-bench ---------------------------------------------------------------------------
def _bench_cases(tmp):
    (tmp / "folder").mkdir()
    return [
        (["--smoke", "--out", str(tmp / "missing" / "r.json")], "folder .* does not exist"),
        (["--smoke", "--out", str(tmp / "folder")], "is a directory"),
        (["--smoke", "--sweep", "--out", str(tmp / "missing" / "r.csv")], "folder .* does not exist"),
        (["--smoke", "--sweep", "--out", str(tmp / "folder")], "is a directory"),
        (["--smoke", "--out", "/dev/full"], "not a regular file"),
        (["--device", "tpu"], "device 'tpu' is not supported"),
        (["--device", "tpu", "--sweep"], "device 'tpu' is not supported"),
        (["--device", "cpu", "--model", "tiny", "--batch", "100000000000"], "over the limit"),
        (["--smoke", "--token-bucket", "0"], "token_bucket must be >= 1"),
        (["--smoke", "--seed", "-1"], "seed >= 0"),
        (["--smoke", "--sweep", "--seed", "-1"], "seed and warmup must be >= 0"),
        (["--device", "cpu", "--model", "nope"], "unknown model"),
    ]


def test_bench_bad_flags_give_one_line_and_exit_2_and_leave_no_file(tmp_path, capsys):
    for argv, message in _bench_cases(tmp_path):
        before = sorted(p.name for p in tmp_path.rglob("*"))
        assert bench_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("prepack-bench: error: "), (argv, err)
        assert re.search(message, err), (argv, err)
        assert sorted(p.name for p in tmp_path.rglob("*")) == before, argv  # no DIR.tmp, no partial file
