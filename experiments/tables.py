"""Markdown tables of the GPU experiments (1-4, 6) from their CSVs, for experiments/README.md:
so that every number in the README is printed from a committed CSV by one command. Where a
CSV holds repeated runs of a point, the last row wins (as in plot.py).

    python -m experiments.tables                     # every table whose CSV has rows
    python -m experiments.tables --results-dir DIR
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from experiments.common import RESULTS_DIR, read_rows, run_cli
from experiments.plot import _f, latest


def _x(v: float | None) -> str:
    return f"{v:.2f}x" if v else "-"


def _ms(v: float | None) -> str:
    return f"{v:.1f}" if v else "-"


def speedup_table(rows: list[dict[str, str]]) -> str:
    """One line per (gpu, model, dataset, batch, mode): padded ms, then ms and speedup of each
    other method (experiments 1 and 2)."""
    rows = latest(rows, ("gpu", "model", "dataset", "batch", "method", "mode"))
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m != "padded"]
    head = (
        "| gpu | model | dataset | batch | mode | padded ms | "
        + " | ".join(f"{m} ms (speedup)" for m in methods)
        + " |"
    )
    lines = [head, "|---|---|---|---:|---|---:|" + "---:|" * len(methods)]
    keys = dict.fromkeys((r["gpu"], r["model"], r["dataset"], r["batch"], r["mode"]) for r in rows)
    by = {(r["gpu"], r["model"], r["dataset"], r["batch"], r["mode"], r["method"]): r for r in rows}
    for k in keys:
        pad = by.get((*k, "padded"), {})
        note = f" ({pad['oom_splits']} OOM splits)" if pad.get("oom_splits") not in (None, "", "0") else ""
        cells = []
        for m in methods:
            r = by.get((*k, m), {})
            cells.append(f"{_ms(_f(r.get('ms')))} ({_x(_f(r.get('speedup_vs_padded')))})" if r else "-")
        lines.append(f"| {' | '.join(k)} | {_ms(_f(pad.get('ms')))}{note} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def memory_table(rows: list[dict[str, str]]) -> str:
    """Largest fitting batch per (gpu, model, dataset, method), and prepacked / padded."""
    best = latest([r for r in rows if r["kind"] == "max_batch"], ("gpu", "model", "dataset", "method"))
    lines = ["| gpu | model | dataset | method | largest batch | first OOM batch | capped | probes | note |",
             "|---|---|---|---|---:|---:|---|---:|---|"]  # fmt: skip
    for r in best:
        lines.append(f"| {r['gpu']} | {r['model']} | {r['dataset']} | {r['method']} | {r['max_batch']} | "
                     f"{r['first_oom_batch'] or '-'} | {r['capped']} | {r['num_probes']} | {r['error']} |")  # fmt: skip
    pairs = {}
    for r in best:
        pairs.setdefault((r["gpu"], r["model"], r["dataset"]), {})[r["method"]] = int(r["max_batch"] or 0)
    for k, v in pairs.items():
        if v.get("padded") and v.get("paper"):
            lines.append(
                f"\n{' '.join(k)}: prepacked / padded largest batch = {v['paper'] / v['padded']:.1f}x"
            )
    return "\n".join(lines)


def dataset_level_table(rows: list[dict[str, str]]) -> str:
    """One line per strategy. The speedup is the row's own `speedup_vs_full` (full batching
    timed in the same run), else its time against the latest full-batching row of the same
    point from another run (marked `+`)."""
    rows = latest(rows, ("gpu", "model", "dataset", "batch", "strategy"))
    full = {(r["gpu"], r["model"], r["dataset"], r["batch"], r["num_prompts"]): _f(r["per_prompt_ms"])
            for r in rows if r["strategy"] == "full-batching"}  # fmt: skip
    lines = ["| gpu | model | dataset | prompts | batch | strategy | ms per prompt | speedup vs full batching |",
             "|---|---|---|---:|---:|---|---:|---:|"]  # fmt: skip
    for r in rows:
        pp = _f(r["per_prompt_ms"])
        speedup = _x(_f(r["speedup_vs_full"]))
        ref = full.get((r["gpu"], r["model"], r["dataset"], r["batch"], r["num_prompts"]))
        if speedup == "-" and pp and ref:
            speedup = _x(ref / pp) + "+"
        lines.append(f"| {r['gpu']} | {r['model']} | {r['dataset']} | {r['num_prompts']} | {r['batch']} | "
                     f"{r['strategy']} | {f'{pp:.3f}' if pp else r['error'] or '-'} | {speedup} |")  # fmt: skip
    if any(line.endswith("+ |") for line in lines):
        lines.append("\n`+` = against full batching timed in another run of the same point.")
    return "\n".join(lines)


def backend_table(rows: list[dict[str, str]]) -> str:
    rows = latest(rows, ("gpu", "model", "dataset", "batch", "backend"))
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    lines = ["| gpu | model | dataset | batch | real tokens | " + " | ".join(f"{b} ms" for b in backends) + " |",
             "|---|---|---|---:|---:|" + "---:|" * len(backends)]  # fmt: skip
    by = {(r["gpu"], r["model"], r["dataset"], r["batch"], r["backend"]): r for r in rows}
    keys = dict.fromkeys((r["gpu"], r["model"], r["dataset"], r["batch"]) for r in rows)
    tokens = {(r["gpu"], r["model"], r["dataset"], r["batch"]): r["real_tokens"] for r in rows}
    for k in keys:
        cells = []
        for b in backends:
            r = by.get((*k, b))
            if r is None:
                cells.append("-")
            elif _f(r["measured_ms"]):
                cells.append(_ms(_f(r["measured_ms"])) + ("*" if r["error"] else ""))
            else:
                cells.append("OOM" if "memory" in r["error"].lower() else "error")
        lines.append(f"| {' | '.join(k)} | {tokens[k]} | " + " | ".join(cells) + " |")
    lines.append("\n`*` = measured, but the padded batch ran out of memory once and was run as halves.")
    return "\n".join(lines)


TABLES: dict[str, tuple[str, Callable[[list[dict[str, str]]], str]]] = {
    "speedup_by_dataset.csv": ("1. speedup by dataset", speedup_table),
    "speedup_by_batch.csv": ("2. speedup by batch", speedup_table),
    "memory_and_max_batch.csv": ("3. largest batch", memory_table),
    "dataset_level.csv": ("4. dataset level", dataset_level_table),
    "backend_comparison.csv": ("6. backends", backend_table),
}


def all_tables(results_dir: str | Path = RESULTS_DIR) -> str:
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise ValueError(f"results folder {results_dir} does not exist")
    out = []
    for name, (title, fn) in TABLES.items():
        rows = read_rows(results_dir / name)
        out.append(f"### {title} ({name})\n\n" + (fn(rows) if rows else "no rows yet"))
    return "\n\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tables", description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    return run_cli(lambda a: print(all_tables(a.results_dir)), parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
