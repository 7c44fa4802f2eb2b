"""Experiment 5: every registered packer (incl. the exact `ilp`) side by side: rows (bins),
gap to the lower bound, solve time, padding, modeled prefill time (simulator.CostModel on
an H100 by default) for capacity = longest prompt ("max", the paper's rule) and capacity
chosen by the cost model ("auto", simulator.choose_capacity), per attention backend; and
with --measure, the measured prefill time of each packing on the device
(gpu_runner.prefill with that exact packing, gpu_runner.bench.timing.time_calls).

The CPU part (everything but measured_ms) is deterministic and real on any machine. One
row per (dataset, batch, seed, packer, capacity mode, cost model, backend); `machine` is
where it ran, `cost_gpu` the card the cost model priced. Appends to packer_comparison.csv.

    python -m experiments.packer_comparison                      # CPU: 5 datasets x 4 batches x 3 seeds
    python -m experiments.packer_comparison --measure --device cuda --datasets mmlu,azure_conv \
        --batches 64 --seeds 0 --models sheared-llama-1.3b       # + measured_ms on the GPU
    python -m experiments.packer_comparison --smoke              # seconds (measures the tiny model on CPU)
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from experiments.cli import check_fields, config_from_args, config_parser, option
from experiments.common import (
    ALL_DATASETS, SMOKE_MODEL, Budget, append_rows, budget_spent, code_rev, draw_lengths, error_text,
    results_dir, run_cli,
)  # fmt: skip

CSV_NAME = "packer_comparison.csv"
COLUMNS = (
    "machine", "dataset", "batch", "seed", "real_tokens", "max_len", "packer", "capacity_mode", "capacity",
    "num_bins", "lower_bound", "gap", "status", "solve_ms", "padded_tokens", "efficiency", "cost_model",
    "cost_gpu", "backend", "modeled_ms", "forwards", "measured_ms", "measured_model", "code_rev", "error",
)  # fmt: skip
ILP_TIME_LIMIT_S = 2.0


@dataclass(frozen=True)
class Config:
    datasets: tuple[str, ...] = option(ALL_DATASETS, "length lists the batches are drawn from")
    batches: tuple[int, ...] = option((16, 64, 256, 1024), "batch sizes", minimum=1)
    seeds: tuple[int, ...] = option((0, 1, 2), "seeds of the drawn batches", minimum=0)
    packers: tuple[str, ...] = option((), "packer names (default: every registered packer)")
    capacity_modes: tuple[str, ...] = option(("max", "auto"), "capacity rules", choices=("max", "auto"))
    models: tuple[str, ...] = option(("sheared-llama-1.3b", "llama-2-7b"), "simulator model names")
    cost_gpu: str = option("h100", "GPU the cost model prices (simulator.GPUS)", flag="gpu")
    backends: tuple[str, ...] = option(("dense", "flex"), "dense, flex, varlen, padded")
    measure: bool = option(False, "also time each packing on --device")
    measure_packers: tuple[str, ...] = option((), "packers whose rows are timed (default: all)")
    device: str = option("cpu", "torch device of --measure")
    warmup: int = option(1, "untimed calls per measured packing", minimum=0)
    reps: int = option(3, "timed calls per measured packing (median)", minimum=1)

    def __post_init__(self) -> None:
        """ValueError on a bad option, an unknown simulator model, GPU or backend (unknown
        packers: `packer_names`, which asks the registry)."""
        from simulator import get_gpu, get_model, make_attention

        check_fields(self)
        for m in self.models:
            get_model(m)
        get_gpu(self.cost_gpu)
        for b in self.backends:
            make_attention(b)

    @classmethod
    def smoke(cls, seed: int = 0) -> Config:
        return cls(datasets=("mmlu",), batches=(12,), seeds=(seed,), models=("sheared-llama-1.3b",),
                   backends=("dense",), measure=True, measure_packers=("ffd", "pad"), device="cpu", warmup=0,
                   reps=1)  # fmt: skip


def packer_names(cfg: Config) -> tuple[str, ...]:
    import packers

    names = cfg.packers or tuple(packers.available_packers())
    for n in names:
        packers.make_packer(n)  # ValueError listing the valid names on a typo
    return names


def _make(name: str) -> Any:
    import packers

    return (
        packers.make_packer(name, time_limit_s=ILP_TIME_LIMIT_S)
        if name == "ilp"
        else packers.make_packer(name)
    )


def compare_batch(
    lengths: np.ndarray, cfg: Config, *, dataset: str, batch: int, seed: int
) -> list[dict[str, Any]]:
    """Rows for one batch of lengths: every packer x capacity mode x cost model x backend.
    `auto` packs at each candidate capacity once and lets every (model, backend) pick its own."""
    from simulator import CostModel, choose_capacity

    cost_models = [(m, b, CostModel(m, cfg.cost_gpu, b)) for m in cfg.models for b in cfg.backends]
    base = {"machine": "cpu", "dataset": dataset, "batch": batch, "seed": seed,
            "real_tokens": int(lengths.sum()), "max_len": int(lengths.max()), "cost_gpu": cfg.cost_gpu,
            "measured_ms": None, "measured_model": "", "code_rev": code_rev(("packers", "simulator")),
            "error": ""}  # fmt: skip
    rows = []
    for name in packer_names(cfg):
        packer = _make(name)
        for mode in cfg.capacity_modes:
            choices = choose_capacity(lengths, packer, [cm for _, _, cm in cost_models], mode)
            for (model, backend, _), choice in zip(cost_models, choices):
                p, c = choice.packing, choice.cost
                rows.append(dict(
                    base, packer=name, capacity_mode=mode, capacity=choice.capacity, num_bins=p.num_bins,
                    lower_bound=p.lower_bound, gap=p.gap, status=p.meta["status"],
                    solve_ms=1e3 * float(p.meta["solve_time_s"]), padded_tokens=p.padded_tokens,
                    efficiency=p.efficiency, cost_model=model, backend=backend, modeled_ms=1e3 * c.est_time_s,
                    forwards=c.forwards if c.forwards is not None else "",
                ))  # fmt: skip
    return rows


def measure_rows(
    rows: list[dict[str, Any]], lengths: np.ndarray, model: Any, model_name: str, cfg: Config
) -> None:
    """Fill measured_ms of `rows` (those of one batch) by running each distinct packing with
    gpu_runner.prefill on `model`; rows whose backend the runner lacks get an error."""
    import torch

    import packers
    from gpu_runner.bench import draw_prompts
    from gpu_runner.bench.timing import release_memory, time_calls
    from gpu_runner.runner import prefill

    dev = torch.device(cfg.device)
    prompts = draw_prompts(lengths, model.config.vocab_size, int(rows[0]["seed"]) if rows else 0)
    done: dict[tuple, tuple[float | None, str]] = {}
    for row in rows:
        if cfg.measure_packers and row["packer"] not in cfg.measure_packers:
            continue
        key = (row["packer"], row["capacity"], row["backend"])
        if key not in done:
            try:
                packing = _make(row["packer"]).pack(lengths, int(row["capacity"]))
                assert isinstance(packing, packers.Packing)
                call = lambda packing=packing, backend=row["backend"]: prefill(
                    model, prompts, packing=packing, backend=backend, return_kv=False
                )
                done[key] = (time_calls(call, device=dev, warmup=cfg.warmup, reps=cfg.reps).median_ms, "")
            except Exception as exc:  # noqa: BLE001 - a failing point is a row with `error`
                done[key] = (None, error_text(exc))
            release_memory(dev)
        row["measured_ms"], row["error"] = done[key]
        row["measured_model"] = model_name
        if cfg.device != "cpu" or row["measured_ms"] is not None:
            from experiments.common import machine_label

            row["machine"] = machine_label(cfg.device)


def run(cfg: Config, out_dir: str | None = None, model: Any = None, model_name: str = "",
        budget: Budget | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """The whole grid; with cfg.measure, `model` (built here from cfg.models[0] when None)
    is timed on each packing. Rows are appended per batch."""
    out_csv = str(results_dir(out_dir) / CSV_NAME)
    if cfg.measure and model is None:
        from experiments.common import build_model, check_device

        check_device(cfg.device)
        model_name = SMOKE_MODEL if cfg.device == "cpu" else cfg.models[0]
        model = build_model(model_name, cfg.device)
    rows: list[dict[str, Any]] = []
    for dataset in cfg.datasets:
        for batch in cfg.batches:
            for seed in cfg.seeds:
                if budget_spent(budget, "packer_comparison", f"{dataset} b{batch} s{seed}"):
                    continue
                lengths = draw_lengths(dataset, batch, seed)
                got = compare_batch(lengths, cfg, dataset=dataset, batch=batch, seed=seed)
                if cfg.measure:
                    measure_rows(got, lengths, model, model_name, cfg)
                append_rows(out_csv, got, COLUMNS)
                rows += got
                best = min((r for r in got if r["capacity_mode"] == "max"), key=lambda r: r["num_bins"])
                print(f"[packer_comparison {dataset} b{batch} s{seed}] {len(got)} rows; fewest bins {best['num_bins']} "
                      f"(bound {best['lower_bound']})", flush=True)  # fmt: skip
    return rows


def summary_tables(
    rows: list[dict[str, str]], cost_model: str = "sheared-llama-1.3b", backend: str = "dense"
) -> str:
    """Markdown tables from packer_comparison.csv rows (CPU columns only):
    1. per packer at capacity = longest prompt, over every batch: mean and max gap to the best
       lower bound any packer proved for that batch, share of batches at that bound, median
       solve ms, geometric-mean modeled time relative to ffd (`cost_model`, `backend`);
    2. per dataset: modeled time of ffd at capacity auto relative to max, and the mean chosen
       capacity over the longest prompt (geometric means over batches and seeds)."""
    import math
    import statistics

    rows = [
        r for r in rows if r["machine"] == "cpu"
    ] or rows  # the CPU grid, not a GPU run's few measured batches
    key = lambda r: (r["dataset"], r["batch"], r["seed"], r["capacity"])
    mx = [
        r
        for r in rows
        if r["capacity_mode"] == "max" and r["cost_model"] == cost_model and r["backend"] == backend
    ]
    if not mx:
        raise ValueError(f"no capacity-max rows for {cost_model}/{backend} in the CSV")
    bound: dict[tuple, int] = {}
    for r in mx:
        bound[key(r)] = max(bound.get(key(r), 0), int(r["lower_bound"]))
    ffd = {key(r): float(r["modeled_ms"]) for r in mx if r["packer"] == "ffd"}
    gm = lambda v: math.exp(sum(map(math.log, v)) / len(v))
    lines = [(f"| packer | batches | mean gap to best bound | max gap | at the bound | status optimal | "
              f"median solve ms | max solve ms | modeled time / ffd ({cost_model}, {backend}) |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name in sorted({r["packer"] for r in mx}):
        sub = [r for r in mx if r["packer"] == name]
        gaps = [int(r["num_bins"]) / bound[key(r)] - 1 for r in sub]
        rel = gm([float(r["modeled_ms"]) / ffd[key(r)] for r in sub if key(r) in ffd])
        lines.append(f"| {name} | {len(sub)} | {100 * statistics.mean(gaps):.2f}% | {100 * max(gaps):.1f}% | "
                     f"{100 * sum(g == 0 for g in gaps) / len(gaps):.0f}% | "
                     f"{100 * sum(r['status'] == 'optimal' for r in sub) / len(sub):.0f}% | "
                     f"{statistics.median(float(r['solve_ms']) for r in sub):.2f} | "
                     f"{max(float(r['solve_ms']) for r in sub):.1f} | {rel:.3f} |")  # fmt: skip
    lines += ["", (f"| dataset | ffd modeled time, capacity auto / max ({cost_model}, {backend}) | "
                   "chosen capacity / longest prompt |"), "|---|---:|---:|"]  # fmt: skip
    auto = {(r["dataset"], r["batch"], r["seed"]): r for r in rows if r["capacity_mode"] == "auto"
            and r["packer"] == "ffd" and r["cost_model"] == cost_model and r["backend"] == backend}  # fmt: skip
    for dataset in sorted({r["dataset"] for r in mx}):
        pairs = [
            (auto[(r["dataset"], r["batch"], r["seed"])], r)
            for r in mx
            if r["packer"] == "ffd"
            and r["dataset"] == dataset
            and (r["dataset"], r["batch"], r["seed"]) in auto
        ]
        if pairs:
            t = gm([float(a["modeled_ms"]) / float(m["modeled_ms"]) for a, m in pairs])
            c = gm([int(a["capacity"]) / int(a["max_len"]) for a, _ in pairs])
            lines.append(f"| {dataset} | {t:.3f} | {c:.2f} |")
    return "\n".join(lines)


def measured_table(rows: list[dict[str, str]]) -> str:
    """Markdown table of the measured rows (a GPU run with --measure): per batch, backend,
    packer and capacity mode, the rows, the modeled and measured ms, measured time relative
    to ffd at capacity max on the same batch, and modeled / measured. Last row per point; an
    `auto` row whose capacity equals the `max` row's is the same packing (measured once) and
    is left out."""
    from experiments.plot import _f, latest

    rows = latest(
        [r for r in rows if _f(r["measured_ms"])],
        ("machine", "measured_model", "dataset", "batch", "seed", "backend", "packer", "capacity_mode"),
    )
    if not rows:
        return "no measured rows"
    point = lambda r: (r["machine"], r["measured_model"], r["dataset"], r["batch"], r["seed"], r["backend"])
    ffd = {
        point(r): float(r["measured_ms"])
        for r in rows
        if r["packer"] == "ffd" and r["capacity_mode"] == "max"
    }
    lines = [("| card | model | dataset | batch | backend | packer | capacity | rows | capacity tokens | modeled ms | "
              "measured ms | measured / ffd max | modeled / measured |"),
             "|---|---|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    max_cap = {(*point(r), r["packer"]): r["capacity"] for r in rows if r["capacity_mode"] == "max"}
    for r in rows:
        if r["capacity_mode"] == "auto" and max_cap.get((*point(r), r["packer"])) == r["capacity"]:
            continue
        m, ref = float(r["measured_ms"]), ffd.get(point(r))
        lines.append(f"| {r['machine']} | {r['measured_model']} | {r['dataset']} | {r['batch']} | {r['backend']} | "
                     f"{r['packer']} | {r['capacity_mode']} | {r['num_bins']} | {r['capacity']} | "
                     f"{float(r['modeled_ms']):.1f} | {m:.1f} | {f'{m / ref:.3f}' if ref else '-'} | "
                     f"{float(r['modeled_ms']) / m:.2f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = config_parser(Config, "packer_comparison", __doc__.splitlines()[0])
    parser.add_argument("--summary", action="store_true", help="print the README tables from the CSV and exit")

    def body(args: argparse.Namespace) -> None:
        if args.summary:
            print_summary(args.out_dir)
        else:
            run(config_from_args(Config, args), args.out_dir)

    return run_cli(body, parser, argv)


def print_summary(out_dir: str | None = None) -> None:
    """The README tables (modeled per backend, measured) from the CSV in `out_dir`."""
    from experiments.common import read_rows

    path = results_dir(out_dir) / CSV_NAME
    rows = read_rows(path)
    if not rows:
        raise ValueError(f"no rows in {path}")
    for backend in ("dense", "flex"):
        print(f"\n### {backend}\n")
        print(summary_tables(rows, backend=backend))
    print("\n### measured\n")
    print(measured_table(rows))


if __name__ == "__main__":
    raise SystemExit(main())
