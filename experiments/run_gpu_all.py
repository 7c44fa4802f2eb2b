"""The one GPU driver: runs the GPU parts of experiments 1, 2, 3, 4, 6 (and 5's measured
rows) in ONE process, each model built once, within a wall-clock budget, then experiment 7
on what it measured.

Per model, stages run in priority order, each with its own time allotment (capped by what
is left of the whole budget); a stage whose allotment is spent skips its remaining points
and says so, so a slow stage never starves the others and the run ends on time. Every row
is appended to its CSV as soon as it is measured (a killed run keeps its data). CSVs go to
$OUT when set, else experiments/results/ (or --out-dir).

    PYTHONPATH=. python3 -m experiments.run_gpu_all              # one H100, about 7 minutes
    python -m experiments.run_gpu_all --smoke                    # CPU, tiny model, every stage
    bash experiments/run_gpu_all.sh                              # the same, logging to $OUT
    bash experiments/run_gpu_all.sh --plan fill                  # only the points the first run skipped
    bash experiments/run_gpu_all.sh --plan 13b                   # optional: Llama-2-13B shape, batch 16

Plans (`--plan`, comma-separated to run several in one process): `default` (the run above),
`fill` (exactly the points the first H100 run at 181d209 skipped for time, so that its rows
add to the committed CSVs without repeating a point), `13b` (experiments 1 and 6 at batch 16
on the Llama-2-13B shape). `--models` and `--stages` select within the plan; the budget
defaults to the sum of the selected stages' allotments.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from experiments import backend_comparison as exp6
from experiments import cost_model_validation as exp7
from experiments import dataset_level as exp4
from experiments import memory_and_max_batch as exp3
from experiments import packer_comparison as exp5
from experiments import speedup_by_batch as exp2
from experiments import speedup_by_dataset as exp1
from experiments.common import SMOKE_MODEL, Budget, build_model, check_device, results_dir, run_cli


@dataclass(frozen=True)
class Stage:
    """One experiment on one built model: `run(model, model_name, out_dir, budget)`."""

    name: str
    allot_s: float
    run: Callable[[Any, str, str, Budget], Any]


def _csv(out_dir: str, name: str) -> str:
    return str(results_dir(out_dir) / name)


def _stage(name: str, allot: float, module: Any, cfg: Any) -> Stage:
    """A stage running `module.run_for_model` with `cfg`, appending to the module's CSV."""
    return Stage(name, allot, lambda m, n, o, b: module.run_for_model(m, n, cfg, _csv(o, module.CSV_NAME), b))


def _packers_here() -> tuple[str, ...]:
    """Every registered packer, less `ilp` where OR-Tools is not installed (the GPU machine
    may lack it; its CPU rows come from experiment 5's CPU run anyway)."""
    import importlib.util

    import packers

    names = packers.available_packers()
    return tuple(n for n in names if n != "ilp" or importlib.util.find_spec("ortools") is not None)


def gpu_plan(device: str = "cuda") -> list[tuple[str, list[Stage]]]:
    """(model, stages) in run order. Sizes are chosen to fit about 7 minutes on one H100."""
    e1 = exp1.Config(device=device)
    e2 = exp2.Config(device=device)
    e2_7b = exp2.Config(batches=(4, 8, 16, 32, 64, 128), device=device)  # 7B padded 256 needs 4+ OOM splits
    e3 = exp3.Config(device=device)
    e4 = exp4.Config(device=device)
    # flex compiles per shape: it gets its own stage at the end of the 1.3B list, so that a slow
    # compile can only eat its own allotment, never the paper's experiments
    e6_small = exp6.Config(backends=("padded", "dense", "varlen", "graph"), device=device)
    e6_flex = exp6.Config(backends=("flex",), device=device)
    e6_7b = exp6.Config(batches=(16,), backends=("padded", "dense", "varlen", "graph"), device=device)
    e5 = exp5.Config(datasets=("mmlu", "azure_conv"), batches=(64,), seeds=(0,), packers=_packers_here(),
                     models=("sheared-llama-1.3b",), backends=("dense",), measure=True, device=device)  # fmt: skip

    s = _stage

    def s5(allot: float) -> Stage:
        return Stage(
            "packer_comparison (measured)",
            allot,
            lambda m, n, o, b: exp5.run(e5, o, model=m, model_name=n, budget=b),
        )

    return [
        ("sheared-llama-1.3b", [
            s("speedup_by_dataset", 30, exp1, e1), s("backend_comparison", 50, exp6, e6_small),
            s("speedup_by_batch", 25, exp2, e2), s("dataset_level", 25, exp4, e4),
            s("memory_and_max_batch", 40, exp3, e3), s5(15), s("backend_comparison (flex)", 20, exp6, e6_flex),
        ]),
        ("llama-2-7b", [
            s("speedup_by_dataset", 30, exp1, e1), s("backend_comparison", 30, exp6, e6_7b),
            s("speedup_by_batch", 35, exp2, e2_7b), s("memory_and_max_batch", 40, exp3, e3),
        ]),
    ]  # fmt: skip


def fill_plan(device: str = "cuda") -> list[tuple[str, list[Stage]]]:
    """The points the first H100 run (commit 181d209, experiments/results/) skipped for time,
    and nothing else, so that collecting this run adds rows without repeating a point:
    7B: memory search of `paper`, the bisection of the padded search between its last fit
    (192) and first OOM (256), the `graph` backend at batch 16; 1.3B: dataset_level of
    samsum (all but full-batching) and mmlu, flex on azure_conv batch 64. Most important
    first, about 3 minutes of stages."""
    e3_paper = exp3.Config(methods=("paper",), device=device)
    e3_padded = exp3.Config(methods=("padded",), known_fit=192, known_oom=256, device=device)
    e6_graph = exp6.Config(batches=(16,), backends=("graph",), device=device)
    e4_samsum = exp4.Config(
        datasets=("samsum",), strategies=("length-sorted", "prepacking", "engine"), device=device
    )
    e4_mmlu = exp4.Config(datasets=("mmlu",), device=device)
    e6_flex = exp6.Config(datasets=("azure_conv",), batches=(64,), backends=("flex",), device=device)
    return [
        ("llama-2-7b", [
            _stage("memory_and_max_batch (paper)", 60, exp3, e3_paper),
            _stage("memory_and_max_batch (padded, resumed)", 20, exp3, e3_padded),
            _stage("backend_comparison (graph)", 25, exp6, e6_graph),
        ]),
        ("sheared-llama-1.3b", [
            _stage("dataset_level (samsum)", 20, exp4, e4_samsum),
            _stage("dataset_level (mmlu)", 30, exp4, e4_mmlu),
            _stage("backend_comparison (flex)", 20, exp6, e6_flex),
        ]),
    ]  # fmt: skip


def plan_13b(device: str = "cuda") -> list[tuple[str, list[Stage]]]:
    """Optional, "where memory allows": the Llama-2-13B shape (26 GB of bf16 weights) at
    batch 16: experiment 1 (prefill and TTFT speedup, four lists) and experiment 6 (padded /
    dense / varlen / graph, five lists: new held-out points for experiment 7). About 2.5 minutes
    of stages (7B took 29 s and 32 s for the same points; 13B has about twice the FLOPs)."""
    e1 = exp1.Config(device=device)
    e6 = exp6.Config(batches=(16,), backends=("padded", "dense", "varlen", "graph"), device=device)
    return [
        (
            "llama2-13b",
            [_stage("speedup_by_dataset", 60, exp1, e1), _stage("backend_comparison", 90, exp6, e6)],
        ),
    ]


PLANS: dict[str, Callable[[str], list[tuple[str, list[Stage]]]]] = {
    "default": lambda device: gpu_plan(device),
    "fill": fill_plan,
    "13b": plan_13b,
}


def select(plan: list[tuple[str, list[Stage]]], models: Sequence[str] = (),
           stages: Sequence[str] = ()) -> list[tuple[str, list[Stage]]]:  # fmt: skip
    """The plan restricted to `models` and to stages whose first word is in `stages` (empty:
    all); models left without a stage are dropped. ValueError on a name the plan lacks or an
    empty selection."""
    have_models = {m for m, _ in plan}
    have_stages = {s.name.split(" ")[0] for _, st in plan for s in st}
    for name, have, what in ((models, have_models, "model"), (stages, have_stages, "stage")):
        bad = [n for n in name if n not in have]
        if bad:
            raise ValueError(f"no {what} {bad[0]!r} in this plan; it has {', '.join(sorted(have))}")
    out = []
    for model, model_stages in plan:
        if models and model not in models:
            continue
        kept = [s for s in model_stages if not stages or s.name.split(" ")[0] in stages]
        if kept:
            out.append((model, kept))
    if not out:
        raise ValueError(f"no stage of this plan matches models {list(models)} and stages {list(stages)}")
    return out


def smoke_plan() -> list[tuple[str, list[Stage]]]:
    """Every stage on the tiny model on CPU, with the scripts' smoke sizes."""
    e5 = replace(exp5.Config.smoke(), packers=("ffd", "pad"))

    def s(name: str, module: Any) -> Stage:
        cfg = module.Config.smoke()
        return Stage(name, 0, lambda m, n, o, b: module.run_for_model(m, n, cfg, _csv(o, module.CSV_NAME), b))

    return [(SMOKE_MODEL, [
        s("speedup_by_dataset", exp1), s("backend_comparison", exp6), s("speedup_by_batch", exp2),
        s("dataset_level", exp4), s("memory_and_max_batch", exp3),
        Stage("packer_comparison (measured)", 0, lambda m, n, o, b: exp5.run(e5, o, model=m, model_name=n, budget=b)),
    ])]  # fmt: skip


def run_all(plan: list[tuple[str, list[Stage]]], *, out_dir: str | None, device: str, budget_s: float,
            stages: Sequence[str] = ()) -> dict[str, Any]:  # fmt: skip
    """Run the plan; returns {stage timings, validation summary or its error}."""
    import torch

    from gpu_runner.bench.timing import release_memory

    check_device(device)
    out = str(results_dir(out_dir))
    total = Budget(budget_s)
    report: dict[str, Any] = {"out_dir": out, "stages": []}
    for model_name, model_stages in plan:
        if total.expired():
            print(f"[run_gpu_all] budget spent: skipping {model_name}", flush=True)
            continue
        t0 = time.perf_counter()
        model = build_model(model_name, device)
        print(f"[run_gpu_all] built {model_name} in {time.perf_counter() - t0:.1f} s", flush=True)
        for stage in model_stages:
            if stages and stage.name.split(" ")[0] not in stages:
                continue
            allot = min(stage.allot_s, total.left_s()) if stage.allot_s > 0 else total.left_s()
            if allot <= 0:
                print(f"[run_gpu_all] budget spent: skipping {model_name} {stage.name}", flush=True)
                continue
            t0 = time.perf_counter()
            try:
                stage.run(model, model_name, out, Budget(allot if allot != float("inf") else 0))
                err = ""
            except Exception as exc:  # noqa: BLE001 - a failing stage is reported, the others still run
                err = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                print(f"[run_gpu_all] {model_name} {stage.name} FAILED: {err}", flush=True)
            release_memory(torch.device(device))
            took = time.perf_counter() - t0
            report["stages"].append(
                {"model": model_name, "stage": stage.name, "seconds": round(took, 1), "error": err}
            )
            print(f"[run_gpu_all] {model_name} {stage.name}: {took:.1f} s (allotted {allot:.0f})", flush=True)
        del model
        release_memory(torch.device(device))
    try:
        # into a subfolder, so that collecting the run's CSVs never touches the committed validation
        report["validation"] = (
            exp7.validate([results_dir(out) / exp6.CSV_NAME], str(Path(out) / "validation"))
            if device != "cpu"
            else "skipped on CPU"
        )
    except ValueError as exc:
        report["validation"] = f"not run: {exc}"
    return report


def build_plan(plans: Sequence[str], device: str) -> list[tuple[str, list[Stage]]]:
    """The named plans, concatenated in order. ValueError on an unknown name or a model
    named by two of them (each model is built once per plan entry)."""
    out: list[tuple[str, list[Stage]]] = []
    for name in plans:
        if name not in PLANS:
            raise ValueError(f"unknown plan {name!r}; choose from {', '.join(PLANS)}")
        out += PLANS[name](device)
    models = [m for m, _ in out]
    if len(set(models)) != len(models):
        raise ValueError(f"plans {', '.join(plans)} name a model twice: run them one at a time")
    return out


def _body(args: argparse.Namespace) -> None:
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    models = tuple(s.strip() for s in args.models.split(",") if s.strip())
    if args.smoke:
        plan = select(smoke_plan(), models, stages)
        report = run_all(plan, out_dir=args.out_dir, device="cpu", budget_s=0)
    else:
        plans = tuple(s.strip() for s in args.plan.split(",") if s.strip()) or ("default",)
        plan = select(build_plan(plans, args.device), models, stages)
        budget = args.budget_s if args.budget_s is not None else sum(s.allot_s for _, st in plan for s in st)
        report = run_all(plan, out_dir=args.out_dir, device=args.device, budget_s=budget)
    print(json.dumps(report, default=str))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="run_gpu_all", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="every stage on CPU with the tiny model")
    parser.add_argument(
        "--out-dir", default=None, help="folder of the CSVs (default: $OUT, else experiments/results)"
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--plan", default="default", help="default, fill, 13b (comma-separated: one after the other)"
    )
    parser.add_argument("--budget-s", type=float, default=None,
                        help="wall-clock budget of the measurements (default: the selected stages' allotments, "
                             "340 s for the default plan)")  # fmt: skip
    parser.add_argument(
        "--models", default="", help="only these models of the plan (comma-separated), default all"
    )
    parser.add_argument("--stages", default="", help="only these stages (comma-separated names), default all")
    return run_cli(_body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
