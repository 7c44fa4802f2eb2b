"""Presenting a `SimulationResult`: the text table, the recommendation line, the CSV and the
PNG plot (matplotlib with the Agg backend, imported only when plotting)."""

from __future__ import annotations

import csv
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Callable

import numpy as np

from simulator.run import BASELINE, JSON_RESULT_FIELDS, ResultRow, SimulationResult

__all__ = ["check_output_path", "format_table", "recommendation_line", "write_csv", "write_plot"]


def check_output_path(path: str | Path, what: str = "output") -> Path:
    """`path` as a `Path` a file can be written to, else `ValueError` saying why: empty, a
    directory or another non-regular file (e.g. /dev/full), or a missing parent folder.
    Checked before the work, so a bad path costs nothing."""
    text = str(path)
    if not text.strip():
        raise ValueError(f"{what} path is empty")
    target = Path(text)
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise ValueError(f"{what} {text!r}: {exc.strerror}") from None
    if mode is not None and stat.S_ISDIR(mode):
        raise ValueError(f"{what} {text!r} is a directory; give a file path")
    if mode is not None and not stat.S_ISREG(mode):
        raise ValueError(f"{what} {text!r} is not a regular file")
    if not target.resolve().parent.is_dir():
        raise ValueError(f"{what} {text!r}: folder {str(target.parent)!r} does not exist")
    return target


def write_atomically(path: str | Path, mode: str, write: Callable[[IO], None], what: str) -> None:
    """Write through `write` into a temporary file next to `path`, then rename it onto
    `path`; on any failure remove the temporary file and leave `path` untouched."""
    target = check_output_path(path, what)
    fd, tmp = tempfile.mkstemp(dir=target.resolve().parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({"newline": ""} if "b" not in mode else {})) as fh:
            write(fh)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # what open() would have given, not mkstemp's 0600
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _sorted_rows(result: SimulationResult) -> list[ResultRow]:
    base = [r for r in result.results if (r.packer, r.attention) == BASELINE]
    rest = sorted((r for r in result.results if (r.packer, r.attention) != BASELINE), key=lambda r: r.est_time_s)
    return base + rest


def format_table(result: SimulationResult) -> str:
    """One line per (packer, attention), padded baseline first, then by modeled time.
    Per-batch columns are means over the batches."""
    cfg = result.config
    head = (
        f"{cfg['num_prompts']} prompts from {cfg['lengths_dist']} in {cfg['num_batches']} "
        f"batch{'es' if cfg['num_batches'] != 1 else ''} of "
        f"{cfg['batch_size']}; {cfg['model']} on {cfg['gpu']} (budget {cfg['memory_budget_bytes'] / 1e9:.1f} GB); "
        f"capacity {cfg['capacity']}"
    )
    cols = ("packer", "attention", "capacity", "bins", "eff%", "gap%", "TFLOP", "ms/batch", "peak GB", "fwd", "speedup")
    lines = [head, ""]
    table = []
    for r in _sorted_rows(result):
        table.append(
            (
                r.packer, r.attention, f"{r.capacity:.0f}", str(r.num_bins), f"{100 * r.efficiency:.1f}",
                f"{100 * r.gap:.1f}", f"{r.flops / 1e12:.1f}", f"{1e3 * r.est_time_s / r.num_batches:.1f}",
                f"{r.peak_memory_bytes / 1e9:.1f}" + ("" if r.fits else "!"), str(r.forwards),
                f"{r.speedup_vs_padded:.2f}x",
            )
        )  # fmt: skip
    widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(cols)]
    fmt = lambda row: "  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))  # noqa: E731
    lines += [fmt(cols), fmt(tuple("-" * w for w in widths)), *map(fmt, table)]
    lines.append("flat = every prompt of a batch in one row (varlen pads nothing, so it is shown for flat only); "
                 "fwd = forward passes in all")
    if any(not r.fits for r in result.results):
        lines.append("! = does not fit the memory budget even one row at a time")
    return "\n".join(lines)


def recommendation_line(result: SimulationResult) -> str:
    best = result.recommendation
    if best is None:
        return "recommendation: nothing fits the memory budget; raise --memory-budget or lower --batch-size"
    if best.packer == "flat":
        what = f"{best.attention} attention over the flat batch (all prompts in one row, no packing needed)"
    else:
        what = f"packer {best.packer} with {best.attention} attention at capacity {best.capacity:.0f}"
    note = ""
    return (
        f"recommendation: {what}: "
        f"{1e3 * best.est_time_s / best.num_batches:.1f} ms/batch modeled, "
        f"{best.speedup_vs_padded:.2f}x vs padded{note}"
    )


def write_csv(result: SimulationResult, path: str | Path) -> None:
    """The JSON result fields, one row per (packer, attention), plus forwards and fits.
    Written atomically (a temporary file renamed on success); `ValueError` / `OSError` for
    a path that cannot be written, with no file left behind."""

    def write(fh: IO) -> None:
        writer = csv.writer(fh)
        writer.writerow([*JSON_RESULT_FIELDS, "forwards", "fits", "num_batches"])
        for r in _sorted_rows(result):
            writer.writerow([*(getattr(r, k) for k in JSON_RESULT_FIELDS), r.forwards, r.fits, r.num_batches])

    write_atomically(path, "w", write, "CSV output")


def write_plot(result: SimulationResult, path: str | Path) -> None:
    """PNG with three panels: length histogram, padding waste per packer, modeled time per
    (packer, attention). Written atomically to exactly `path` (no suffix added), as
    `write_csv` writes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _sorted_rows(result)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    axes[0].hist(result.lengths, bins=min(60, max(10, int(np.sqrt(result.lengths.size)))), color="#4c72b0")
    axes[0].set(title=f"prompt lengths ({result.config['lengths_dist']})", xlabel="tokens", ylabel="prompts")
    by_packer: dict[str, ResultRow] = {}
    for r in rows:
        if r.attention in ("dense", "padded") and r.packer not in by_packer:
            by_packer[r.packer] = r
    names = list(by_packer)
    waste = [100 * (1 - by_packer[n].efficiency) for n in names]
    axes[1].barh(names, waste, color="#dd8452")
    axes[1].set(title="padding waste (dense rows)", xlabel="% of forward tokens that are padding")
    axes[1].invert_yaxis()
    labels = [f"{r.packer}/{r.attention}" for r in rows]
    times = [1e3 * r.est_time_s / r.num_batches for r in rows]
    axes[2].barh(labels, times, color="#55a868")
    axes[2].set(title=f"modeled prefill time ({result.config['model']}, {result.config['gpu']})", xlabel="ms per batch")
    axes[2].invert_yaxis()
    axes[2].tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    try:
        write_atomically(path, "wb", lambda fh: fig.savefig(fh, dpi=110, format="png"), "plot output")
    finally:
        plt.close(fig)
