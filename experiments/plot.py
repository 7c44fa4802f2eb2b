"""Figures from the experiment CSVs: reads only experiments/results/*.csv (or --results-dir)
and writes one PNG per experiment to experiments/figures/ (or --fig-dir). A CSV that is
absent or has no usable rows is skipped with a note. Where a CSV holds repeated runs of the
same point, the last row wins.

    python -m experiments.plot
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from experiments.common import FIGURES_DIR, RESULTS_DIR, read_rows, run_cli


def _f(value: str) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def latest(rows: list[dict[str, str]], key: Sequence[str]) -> list[dict[str, str]]:
    """Last row per key, in first-seen key order."""
    out: dict[tuple, dict[str, str]] = {}
    for r in rows:
        out[tuple(r[k] for k in key)] = r
    return list(out.values())


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path) -> bool:
    """Write `fig` to `path` (tight layout, 120 dpi) and close it; True (a plot was written)."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _bars(ax, groups: list[str], series: dict[str, dict[str, float]], ylabel: str) -> None:
    names = list(series)
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        xs = [g + (i - (len(names) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, [series[name].get(g, 0) for g in groups], width, label=name)
    ax.set_xticks(range(len(groups)), groups, rotation=20)
    ax.set_ylabel(ylabel)
    if names:
        ax.legend(fontsize=7)


def plot_speedup_by_dataset(rows, path: Path) -> bool:
    rows = [
        r
        for r in latest(rows, ("gpu", "model", "dataset", "batch", "method", "mode"))
        if _f(r["speedup_vs_padded"])
    ]
    rows = [r for r in rows if r["method"] != "padded"]
    if not rows:
        return False
    plt = _plt()
    modes = sorted({r["mode"] for r in rows})
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        sub = [r for r in rows if r["mode"] == mode]
        groups = sorted({r["dataset"] for r in sub})
        series: dict[str, dict[str, float]] = defaultdict(dict)
        for r in sub:
            series[f"{r['model']} {r['method']} ({r['gpu']})"][r["dataset"]] = _f(r["speedup_vs_padded"])
        _bars(ax, groups, series, f"{mode} speedup over HF padding (x)")
        ax.axhline(1, color="k", lw=0.5)
        ax.set_title(f"{mode}, batch {sub[0]['batch']}")
    return _save(plt, fig, path)


def plot_speedup_by_batch(rows, path: Path) -> bool:
    rows = latest(rows, ("gpu", "model", "dataset", "batch", "method", "mode"))
    rows = [r for r in rows if r["mode"] == "prefill" and _f(r["ms"])]
    if not rows:
        return False
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4))
    lines: dict[str, list[tuple[int, float, float | None]]] = defaultdict(list)
    for r in rows:
        lines[f"{r['model']} {r['method']} {r['dataset']} ({r['gpu']})"].append(
            (int(r["batch"]), _f(r["speedup_vs_padded"]) or float("nan"), _f(r["peak_extra_bytes"]))
        )
    for name, pts in lines.items():
        pts.sort()
        if "padded" not in name.split(" ")[1]:
            a1.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        mem = [(p[0], p[2] / 2**30) for p in pts if p[2]]
        if mem:
            a2.plot([m[0] for m in mem], [m[1] for m in mem], marker="o", label=name)
    for ax, yl in ((a1, "prefill speedup over HF padding (x)"), (a2, "peak extra memory (GiB)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel(yl)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    a2.set_yscale("log")
    return _save(plt, fig, path)


def plot_memory(rows, path: Path) -> bool:
    best = latest([r for r in rows if r["kind"] == "max_batch"], ("gpu", "model", "dataset", "method"))
    probes = [r for r in rows if r["kind"] == "probe" and r["fits"] == "True" and _f(r["peak_extra_bytes"])]
    if not best:
        return False
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4))
    groups = sorted({f"{r['model']} {r['dataset']} ({r['gpu']})" for r in best})
    series: dict[str, dict[str, float]] = defaultdict(dict)
    for r in best:
        series[r["method"]][f"{r['model']} {r['dataset']} ({r['gpu']})"] = float(r["max_batch"])
    _bars(a1, groups, series, "largest batch that fits")
    a1.set_yscale("log")
    curves: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for r in probes:
        curves[f"{r['model']} {r['method']} ({r['gpu']})"].append(
            (int(r["batch"]), float(r["peak_extra_bytes"]) / 2**30)
        )
    for name, pts in curves.items():
        pts = sorted(set(pts))
        a2.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    a2.set_xscale("log", base=2)
    a2.set_xlabel("batch size")
    a2.set_ylabel("peak extra memory (GiB)")
    if curves:
        a2.legend(fontsize=7)
    return _save(plt, fig, path)


def plot_dataset_level(rows, path: Path) -> bool:
    rows = [
        r for r in latest(rows, ("gpu", "model", "dataset", "batch", "strategy")) if _f(r["per_prompt_ms"])
    ]
    if not rows:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4))
    groups = sorted({f"{r['model']} {r['dataset']}" for r in rows})
    series: dict[str, dict[str, float]] = defaultdict(dict)
    for r in rows:
        series[f"{r['strategy']} ({r['gpu']})"][f"{r['model']} {r['dataset']}"] = _f(r["per_prompt_ms"])
    _bars(ax, groups, series, "prefill ms per prompt")
    ax.set_title(f"whole-dataset prefill, batch {rows[0]['batch']}")
    return _save(plt, fig, path)


def _gmean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _batch_key(r: dict[str, str]) -> tuple:
    return (r["dataset"], r["batch"], r["seed"], r["capacity"])


def best_bounds(rows: list[dict[str, str]]) -> dict[tuple, int]:
    """The best lower bound known for each (dataset, batch, seed, capacity): the largest any
    packer reported (the ilp's LP bound beats L2), so every packer's gap uses the same bound."""
    out: dict[tuple, int] = {}
    for r in rows:
        k = _batch_key(r)
        out[k] = max(out.get(k, 0), int(r["lower_bound"]))
    return out


def plot_packers(rows, path: Path) -> bool:
    rows = latest(
        rows,
        (
            "machine",
            "dataset",
            "batch",
            "seed",
            "packer",
            "capacity_mode",
            "cost_model",
            "cost_gpu",
            "backend",
        ),
    )
    rows = [r for r in rows if _f(r["modeled_ms"])]
    if not rows:
        return False
    measured = [r for r in rows if _f(r["measured_ms"]) and r["capacity_mode"] == "max"]
    rows = [r for r in rows if r["machine"] == "cpu"] or rows  # the CPU grid, not a GPU run's few batches
    plt = _plt()
    model = rows[0]["cost_model"]
    fig, axes = plt.subplots(1, 3 if measured else 2, figsize=(19.5 if measured else 13, 4.5))
    a1, a2 = axes[0], axes[1]
    mx = [
        r
        for r in rows
        if r["capacity_mode"] == "max" and r["cost_model"] == model and r["backend"] == rows[0]["backend"]
    ]
    datasets = sorted({r["dataset"] for r in mx})
    packers = sorted({r["packer"] for r in mx if r["packer"] not in ("pad", "sorted")})
    bound = best_bounds(mx)
    gap: dict[str, dict[str, float]] = defaultdict(dict)
    for p in packers:
        for d in datasets:
            vals = [
                int(r["num_bins"]) / bound[_batch_key(r)] - 1
                for r in mx
                if r["packer"] == p and r["dataset"] == d
            ]
            gap[p][d] = 100 * sum(vals) / len(vals) if vals else 0
    _bars(a1, datasets, gap, "mean gap to the best lower bound (%)")
    a1.set_title("rows over the best bound, capacity = longest prompt")
    # modeled time relative to the paper's choice (ffd at capacity = max), geometric mean over batches
    ref = {
        (r["dataset"], r["batch"], r["seed"], r["backend"]): float(r["modeled_ms"])
        for r in rows
        if r["packer"] == "ffd" and r["capacity_mode"] == "max" and r["cost_model"] == model
    }
    rel: dict[str, dict[str, float]] = defaultdict(dict)
    for p in ["pad"] + packers:
        for mode in ("max", "auto"):
            vals = [
                float(r["modeled_ms"]) / ref[(r["dataset"], r["batch"], r["seed"], r["backend"])]
                for r in rows
                if r["packer"] == p
                and r["capacity_mode"] == mode
                and r["cost_model"] == model
                and r["backend"] == "dense"
                and (r["dataset"], r["batch"], r["seed"], r["backend"]) in ref
            ]
            if vals:
                rel[f"capacity {mode}"][p] = _gmean(vals)
    _bars(a2, ["pad"] + packers, rel, "modeled time / ffd at capacity max")
    a2.set_title(f"geometric mean over batches ({model}, dense, {rows[0]['cost_gpu']})")
    a2.set_yscale("log")
    if measured:
        _plot_measured_packers(axes[2], measured)
    return _save(plt, fig, path)


def _plot_measured_packers(ax, rows: list[dict[str, str]]) -> None:
    """Measured and modeled time of each packer (capacity = longest prompt) relative to ffd on
    the same batch: one bar pair per packer and measured batch."""
    point = lambda r: (r["machine"], r["measured_model"], r["dataset"], r["batch"], r["seed"], r["backend"])
    ffd = {point(r): r for r in rows if r["packer"] == "ffd"}
    packers = sorted({r["packer"] for r in rows})
    series: dict[str, dict[str, float]] = defaultdict(dict)
    for r in rows:
        ref = ffd.get(point(r))
        if ref:
            label = f"{r['dataset']} b{r['batch']}"
            series[f"{label} measured ({r['machine']})"][r["packer"]] = float(r["measured_ms"]) / float(
                ref["measured_ms"]
            )
            series[f"{label} modeled"][r["packer"]] = float(r["modeled_ms"]) / float(ref["modeled_ms"])
    _bars(ax, packers, series, "time / ffd on the same batch")
    ax.set_yscale("log")
    ax.set_title(f"measured vs modeled, {rows[0]['measured_model']}, {rows[0]['backend']}, capacity max")


def plot_backends(rows, path: Path) -> bool:
    rows = [r for r in latest(rows, ("gpu", "model", "dataset", "batch", "backend")) if _f(r["measured_ms"])]
    if not rows:
        return False
    plt = _plt()
    panels = sorted({(r["gpu"], r["model"], int(r["batch"])) for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (gpu, model, batch) in zip(axes[0], panels):
        sub = [r for r in rows if (r["gpu"], r["model"], int(r["batch"])) == (gpu, model, batch)]
        groups = sorted({r["dataset"] for r in sub})
        series: dict[str, dict[str, float]] = defaultdict(dict)
        for r in sub:
            series[r["backend"]][r["dataset"]] = float(r["measured_ms"])
        _bars(ax, groups, series, "prefill ms (median)")
        ax.set_yscale("log")
        ax.set_title(f"{model}, batch {batch} ({gpu})")
    return _save(plt, fig, path)


def plot_validation(rows, path: Path) -> bool:
    rows = [r for r in rows if _f(r["predicted_ms"]) and _f(r["measured_ms"])]
    if not rows:
        return False
    plt = _plt()
    from experiments.cost_model_validation import summarize

    pts = [
        dict(
            r, predicted_ms=float(r["predicted_ms"]), measured_ms=float(r["measured_ms"]), ape=float(r["ape"])
        )
        for r in rows
    ]
    s = summarize(pts)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for b in sorted({p["backend"] for p in pts}):
        for held, marker, note in (("True", "o", "held out"), ("False", "x", "in-sample")):
            sub = [p for p in pts if p["backend"] == b and p.get("held_out", "True") == held]
            if sub:
                ax.scatter([p["measured_ms"] for p in sub], [p["predicted_ms"] for p in sub], marker=marker, s=22,
                           label=f"{b} ({note})")  # fmt: skip
    lo = min(min(p["measured_ms"], p["predicted_ms"]) for p in pts)
    hi = max(max(p["measured_ms"], p["predicted_ms"]) for p in pts)
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"measured ms ({', '.join(sorted({p['gpu'] for p in pts}))})")
    ax.set_ylabel("cost model ms")
    from matplotlib.ticker import NullFormatter

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_minor_formatter(NullFormatter())
    held = sum(p.get("held_out", "True") == "True" for p in pts)
    ax.set_title(
        f"{s['points']} points ({held} held out): Spearman {s['spearman']:.3f}, MdAPE {100 * s['mdape']:.1f}%"
    )
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


PLOTS: dict[str, tuple[str, Callable[[list[dict[str, str]], Path], bool]]] = {
    "speedup_by_dataset.csv": ("speedup_by_dataset.png", plot_speedup_by_dataset),
    "speedup_by_batch.csv": ("speedup_by_batch.png", plot_speedup_by_batch),
    "memory_and_max_batch.csv": ("memory_and_max_batch.png", plot_memory),
    "dataset_level.csv": ("dataset_level.png", plot_dataset_level),
    "packer_comparison.csv": ("packer_comparison.png", plot_packers),
    "backend_comparison.csv": ("backend_comparison.png", plot_backends),
    "cost_model_validation.csv": ("cost_model_validation.png", plot_validation),
}


def plot_all(results_dir: str | Path = RESULTS_DIR, fig_dir: str | Path = FIGURES_DIR) -> list[Path]:
    """Draw every figure whose CSV exists and has usable rows; returns the PNGs written."""
    results_dir, fig_dir = Path(results_dir), Path(fig_dir)
    if not results_dir.is_dir():
        raise ValueError(f"results folder {results_dir} does not exist")
    fig_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for csv_name, (png, fn) in PLOTS.items():
        rows = read_rows(results_dir / csv_name)
        if rows and fn(rows, fig_dir / png):
            written.append(fig_dir / png)
            print(f"wrote {fig_dir / png}")
        else:
            print(f"skipped {png}: no usable rows in {results_dir / csv_name}")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="plot", description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    parser.add_argument("--fig-dir", default=str(FIGURES_DIR))
    return run_cli(lambda a: plot_all(a.results_dir, a.fig_dir), parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
