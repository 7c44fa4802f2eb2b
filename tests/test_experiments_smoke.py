"""The experiment scripts end to end in their --smoke modes (CPU, tiny random model, a temp
folder), then their CSVs checked for schema and sanity; plus the pure pieces (max-batch
search, CSV schema guard, dataset batching) and the bad-input exits."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from experiments import (
    backend_comparison,
    common,
    cost_model_validation,
    dataset_level,
    memory_and_max_batch,
    packer_comparison,
    plot,
    run_gpu_all,
    speedup_by_batch,
    speedup_by_dataset,
)
from experiments.memory_and_max_batch import find_max_batch

SCRIPTS = (speedup_by_dataset, speedup_by_batch, memory_and_max_batch, dataset_level, packer_comparison,
           backend_comparison)  # fmt: skip


def _rows(folder: Path, name: str) -> tuple[list[str], list[dict[str, str]]]:
    with open(folder / name, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("experiments")
    for module in SCRIPTS:
        assert module.main(["--smoke", "--out-dir", str(out)]) == 0, module.__name__
    assert cost_model_validation.main(["--smoke", "--out-dir", str(out / "validation")]) == 0
    return out


# ------------------------------------------------------------------ pure pieces


@pytest.mark.parametrize("threshold,start,cap", [(37, 4, 1000), (10, 64, 1000), (1, 1, 8), (5000, 16, 300)])
def test_find_max_batch_finds_the_threshold(threshold: int, start: int, cap: int) -> None:
    res = find_max_batch(lambda n: n <= threshold, start=start, cap=cap, rel_tol=0.0)
    assert res.max_fit == min(threshold, cap)
    assert res.capped == (threshold >= cap)
    if not res.capped:
        assert res.first_fail == threshold + 1
    assert all(ok == (n <= threshold) for n, ok in res.probes)
    assert len(res.probes) <= 2 * math.ceil(math.log2(cap)) + 2


def test_find_max_batch_tolerance_and_bad_input() -> None:
    res = find_max_batch(lambda n: n <= 1000, start=16, cap=8192, rel_tol=1 / 16)
    assert res.max_fit <= 1000 < res.first_fail and res.first_fail - res.max_fit <= max(1, res.max_fit // 16)
    with pytest.raises(ValueError):
        find_max_batch(lambda n: True, start=0, cap=8)


def test_find_max_batch_resumes_between_known_points() -> None:
    """known_fit / known_oom finish an earlier search by bisection alone, never re-probing a
    batch already known, and keep the known OOM batch as first_fail when every probe fits."""
    res = find_max_batch(lambda n: n <= 230, start=16, cap=8192, rel_tol=1 / 16, known_fit=192, known_oom=256)
    assert all(192 < n < 256 for n, _ in res.probes) and len(res.probes) <= 3
    assert res.max_fit <= 230 < res.first_fail and res.first_fail - res.max_fit <= max(1, res.max_fit // 16)
    res = find_max_batch(lambda n: True, start=16, cap=8192, rel_tol=1 / 16, known_fit=192, known_oom=256)
    assert res.first_fail == 256 and res.max_fit >= 240
    res = find_max_batch(lambda n: n <= 1000, start=16, cap=8192, rel_tol=0.0, known_fit=300)
    assert res.max_fit == 1000 and res.probes[0][0] == 600
    with pytest.raises(ValueError):
        find_max_batch(lambda n: True, start=16, cap=8192, known_fit=256, known_oom=192)


def test_append_rows_refuses_a_different_schema(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    common.append_rows(path, [{"a": 1, "b": 2.0}], ("a", "b"))
    common.append_rows(path, [{"a": 3, "b": None}], ("a", "b"))
    assert [r["a"] for r in common.read_rows(path)] == ["1", "3"]
    with pytest.raises(ValueError):
        common.append_rows(path, [{"a": 1, "c": 2}], ("a", "c"))
    with pytest.raises(ValueError):
        common.append_rows(path, [{"a": 1}], ("a", "b"))


def test_dataset_batches_cover_every_prompt_once() -> None:
    lengths = np.array([5, 1, 9, 3, 7, 2, 8])
    for order in ("random", "sorted"):
        batches = dataset_level.dataset_batches(lengths, 3, order, seed=0)
        assert sorted(np.concatenate(batches).tolist()) == list(range(7))
    flat = np.concatenate(dataset_level.dataset_batches(lengths, 3, "sorted", 0))
    assert (np.diff(lengths[flat]) <= 0).all()


def test_draw_lengths_matches_the_bench_sweep_draw() -> None:
    from simulator.sweep_calibration import sweep_lengths

    assert (common.draw_lengths("mmlu", 64, 0, None) == sweep_lengths("mmlu", 64, 0)).all()
    assert common.draw_lengths("azure_conv", 64, 0).max() <= common.MAX_PROMPT_TOKENS


# ------------------------------------------------------------------ the smoke CSVs


def test_speedup_csvs(smoke_dir: Path) -> None:
    for module in (speedup_by_dataset, speedup_by_batch):
        header, rows = _rows(smoke_dir, module.CSV_NAME)
        assert header == list(common.SPEEDUP_COLUMNS)
        assert rows and all(r["gpu"] == "cpu" and not r["error"] and float(r["ms"]) > 0 for r in rows)
        by = {(r["dataset"], r["batch"], r["method"], r["mode"]): r for r in rows}
        for (dataset, batch, method, mode), r in by.items():
            padded = by[(dataset, batch, "padded", mode)]
            assert float(padded["speedup_vs_padded"]) == 1.0
            assert int(r["real_tokens"]) == int(padded["real_tokens"])
            if method == "paper":
                assert 0 <= int(r["padded_tokens"]) <= int(padded["padded_tokens"])
                assert math.isclose(
                    float(r["speedup_vs_padded"]), float(padded["ms"]) / float(r["ms"]), rel_tol=1e-4
                )


def test_memory_csv(smoke_dir: Path) -> None:
    header, rows = _rows(smoke_dir, memory_and_max_batch.CSV_NAME)
    assert header == list(memory_and_max_batch.COLUMNS)
    final = [r for r in rows if r["kind"] == "max_batch"]
    assert {r["method"] for r in final} == {"padded", "paper"}
    for r in final:  # nothing runs out of memory on the CPU smoke: the search reaches the cap
        assert r["capped"] == "True" and int(r["max_batch"]) == memory_and_max_batch.Config.smoke().cap
    probes = [r for r in rows if r["kind"] == "probe"]
    assert probes and all(r["fits"] == "True" for r in probes)
    for b in {r["batch"] for r in probes}:
        pair = {r["method"]: r for r in probes if r["batch"] == b}
        assert int(pair["paper"]["computed_tokens"]) <= int(pair["padded"]["computed_tokens"])


def test_dataset_level_csv(smoke_dir: Path) -> None:
    header, rows = _rows(smoke_dir, dataset_level.CSV_NAME)
    assert header == list(dataset_level.COLUMNS)
    by = {r["strategy"]: r for r in rows}
    assert set(by) == {"full-batching", "length-sorted", "prepacking"}
    assert len({r["real_tokens"] for r in rows}) == 1 and all(float(r["wall_ms"]) > 0 for r in rows)
    comp = {k: int(v["computed_tokens"]) for k, v in by.items()}
    assert (
        int(by["prepacking"]["real_tokens"])
        <= comp["prepacking"]
        <= comp["length-sorted"]
        <= comp["full-batching"]
    )


def test_packer_comparison_csv(smoke_dir: Path) -> None:
    import packers

    header, rows = _rows(smoke_dir, packer_comparison.CSV_NAME)
    assert header == list(packer_comparison.COLUMNS)
    assert {r["packer"] for r in rows} == set(packers.available_packers())
    assert {r["capacity_mode"] for r in rows} == {"max", "auto"}
    for r in rows:
        assert int(r["num_bins"]) >= int(r["lower_bound"]) >= 1
        assert float(r["modeled_ms"]) > 0 and int(r["capacity"]) >= int(r["max_len"])
        if r["packer"] in packer_comparison.Config.smoke().measure_packers:  # the smoke measures these on CPU
            assert r["measured_ms"] and float(r["measured_ms"]) > 0 and r["measured_model"] == "tiny", r
        else:
            assert not r["measured_ms"]
    mx = {r["packer"]: r for r in rows if r["capacity_mode"] == "max"}
    assert int(mx["ffd"]["num_bins"]) <= int(mx["pad"]["num_bins"])
    assert int(mx["ilp"]["num_bins"]) <= int(mx["ffd"]["num_bins"])
    auto = {r["packer"]: r for r in rows if r["capacity_mode"] == "auto"}
    assert float(auto["ffd"]["modeled_ms"]) <= float(mx["ffd"]["modeled_ms"]) + 1e-9  # auto tries max too


def test_backend_comparison_csv(smoke_dir: Path) -> None:
    header, rows = _rows(smoke_dir, backend_comparison.CSV_NAME)
    assert header == list(backend_comparison.COLUMNS)
    by = {r["backend"]: r for r in rows}
    assert float(by["padded"]["measured_ms"]) > 0 and float(by["dense"]["measured_ms"]) > 0
    assert int(by["dense"]["computed_tokens"]) <= int(by["padded"]["computed_tokens"])
    assert "cuda" in by["varlen"]["error"].lower() and not by["varlen"]["measured_ms"]


def test_cost_model_validation_csv(smoke_dir: Path) -> None:
    header, rows = _rows(smoke_dir / "validation", cost_model_validation.CSV_NAME)
    assert header == list(cost_model_validation.COLUMNS)
    assert len(rows) == 4 and {r["backend"] for r in rows} == {"padded", "dense"}
    for r in rows:
        pred, meas = float(r["predicted_ms"]), float(r["measured_ms"])
        assert pred > 0 and meas > 0 and math.isclose(float(r["ape"]), abs(pred / meas - 1), rel_tol=1e-4, abs_tol=2e-5)  # pred, meas rounded to 6 digits
    _, summary = _rows(smoke_dir / "validation", cost_model_validation.SUMMARY_NAME)
    assert len(summary) == 1 and int(summary[0]["points"]) == 4


def test_plot_draws_every_figure(smoke_dir: Path, tmp_path: Path) -> None:
    import shutil

    shutil.copy(
        smoke_dir / "validation" / cost_model_validation.CSV_NAME, smoke_dir / cost_model_validation.CSV_NAME
    )
    written = plot.plot_all(smoke_dir, tmp_path)
    assert {p.name for p in written} == {png for png, _ in plot.PLOTS.values()}
    assert all(p.stat().st_size > 5000 for p in written)


# ------------------------------------------------------------------ bad input and the driver


@pytest.mark.parametrize("module,argv", [
    (speedup_by_batch, ["--device", "cpu", "--batches", "0"]),
    (speedup_by_dataset, ["--device", "cuda"]),  # no CUDA here (the GPU machine never runs this test)
    (packer_comparison, ["--packers", "no-such-packer"]),
    (packer_comparison, ["--models", "gpt-17"]),
    (dataset_level, ["--device", "cpu", "--strategies", "magic"]),
    (backend_comparison, ["--device", "cpu", "--backends", "quantum"]),
    (memory_and_max_batch, ["--device", "cpu", "--start", "64", "--cap", "8"]),
    (cost_model_validation, ["--inputs", "/nonexistent/sweep.csv"]),
])  # fmt: skip
def test_bad_input_exits_2_with_one_line(module, argv, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import torch

    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert module.main([*argv, "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err and len(err.splitlines()) == 1 and "error" in err


def test_driver_smoke_runs_a_stage(tmp_path: Path) -> None:
    assert run_gpu_all.main(["--smoke", "--stages", "memory_and_max_batch", "--out-dir", str(tmp_path)]) == 0
    _, rows = _rows(tmp_path, memory_and_max_batch.CSV_NAME)
    assert {r["kind"] for r in rows} == {"probe", "max_batch"}
    plan = run_gpu_all.gpu_plan("cuda")
    assert [m for m, _ in plan] == ["sheared-llama-1.3b", "llama-2-7b"]
    assert sum(s.allot_s for _, stages in plan for s in stages) <= 480


def test_collect_appends_a_runs_rows_and_refuses_other_schemas(tmp_path: Path) -> None:
    from experiments import collect

    run, results = tmp_path / "run", tmp_path / "results"
    run.mkdir()
    common.append_rows(run / "dataset_level.csv", [{"a": 1, "b": 2}], ("a", "b"))
    common.append_rows(results / "dataset_level.csv", [{"a": 0, "b": 0}], ("a", "b"))
    assert collect.collect(run, str(results)) == {"dataset_level.csv": 1}
    assert [r["a"] for r in common.read_rows(results / "dataset_level.csv")] == ["0", "1"]
    assert collect.collect(run, str(results)) == {"dataset_level.csv": 0}  # the same run again: no repeats
    assert len(common.read_rows(results / "dataset_level.csv")) == 2
    common.append_rows(run / "backend_comparison.csv", [{"x": 1}], ("x",))
    common.append_rows(results / "backend_comparison.csv", [{"y": 1}], ("y",))
    with pytest.raises(ValueError):
        collect.collect(run, str(results))
    assert collect.main([str(tmp_path / "nothing-here"), "--out-dir", str(results)]) == 2


def test_memory_probe_counts_out_of_memory_as_not_fitting() -> None:
    """A forward that raises torch.OutOfMemoryError above 4 rows: the probe says it does not
    fit (the padded method's split-into-halves fallback stays disabled), below it fits."""
    import torch

    model = common.build_model(common.SMOKE_MODEL, "cpu")
    real_forward = model.forward

    def forward(*args, **kwargs):
        if kwargs["input_ids"].shape[0] > 4:
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")
        return real_forward(*args, **kwargs)

    model.forward = forward
    lengths = common.nested_lengths("mmlu", 8)
    small = memory_and_max_batch.probe_batch(model, "padded", lengths[:4], device="cpu")
    big = memory_and_max_batch.probe_batch(model, "padded", lengths, device="cpu")
    assert small["fits"] and small["ms"] > 0
    assert not big["fits"] and "OutOfMemoryError" in big["error"] and big["ms"] is None


def test_tables_print_every_gpu_experiment(smoke_dir: Path) -> None:
    from experiments import tables

    text = tables.all_tables(smoke_dir)
    for title, _ in tables.TABLES.values():
        assert title in text
    assert "no rows yet" not in text and "paper ms (speedup)" in text and "largest batch" in text


def test_driver_plans_and_selection() -> None:
    """The default plan's budget is unchanged (340 s); the fill plan names only points the
    first run skipped; --models / --stages select within a plan; bad names exit 2."""
    default = run_gpu_all.build_plan(["default"], "cuda")
    assert sum(s.allot_s for _, st in default for s in st) == 340
    fill = run_gpu_all.build_plan(["fill"], "cuda")
    assert [m for m, _ in fill] == ["llama-2-7b", "sheared-llama-1.3b"]
    assert sum(s.allot_s for _, st in fill for s in st) <= 180
    only_7b = run_gpu_all.select(fill, models=["llama-2-7b"], stages=["memory_and_max_batch"])
    assert [(m, [s.name for s in st]) for m, st in only_7b] == [
        ("llama-2-7b", ["memory_and_max_batch (paper)", "memory_and_max_batch (padded, resumed)"])
    ]
    assert [m for m, _ in run_gpu_all.build_plan(["fill", "13b"], "cuda")][-1] == "llama2-13b"
    for bad in (["--plan", "nope"], ["--plan", "fill", "--models", "gpt2"],
                ["--plan", "13b", "--stages", "dataset_level"], ["--plan", "default,default"]):  # fmt: skip
        assert run_gpu_all.main(["--device", "cpu", *bad]) == 2


def test_driver_smoke_selects_models(tmp_path: Path) -> None:
    assert run_gpu_all.main(["--smoke", "--models", common.SMOKE_MODEL, "--stages", "backend_comparison",
                             "--out-dir", str(tmp_path)]) == 0  # fmt: skip
    assert common.read_rows(tmp_path / backend_comparison.CSV_NAME)
    assert run_gpu_all.main(["--smoke", "--models", "llama-2-7b", "--out-dir", str(tmp_path)]) == 2


def test_13b_shape_is_priced_as_the_simulator_spec() -> None:
    shape = common.EXTRA_SHAPES["llama2-13b"]
    spec = cost_model_validation.Specs().model("llama2-13b")
    assert (spec.num_layers, spec.hidden_size, spec.num_heads, spec.num_kv_heads, spec.intermediate_size) == (
        shape["num_hidden_layers"], shape["hidden_size"], shape["num_attention_heads"],
        shape["num_key_value_heads"], shape["intermediate_size"],
    )  # fmt: skip


def test_dataset_level_table_uses_full_batching_of_another_run() -> None:
    from experiments import tables

    base = {"gpu": "h100", "model": "m", "dataset": "samsum", "batch": "32", "num_prompts": "10", "error": ""}
    rows = [dict(base, strategy="full-batching", per_prompt_ms="4.0", speedup_vs_full="1"),
            dict(base, strategy="engine", per_prompt_ms="1.0", speedup_vs_full="")]  # fmt: skip
    text = tables.dataset_level_table(rows)
    assert "| engine | 1.000 | 4.00x+ |" in text
