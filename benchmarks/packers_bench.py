"""Packer speed and quality benchmark (issue 2); writes benchmarks/results/packers.json.

Sections:
  speed_1m      every packer (but ilp/pad/sorted) on 1,000,000 lognormal lengths, capacity
                4096: end-to-end `pack()` seconds (best and median of --repeats) and the
                placement alone (meta solve_time_s), rows, the L2 bound.
  vs_binpacking PyPI `binpacking.to_constant_volume` (2.x: worst-fit decreasing) against
                ffd / bfd / wfd on the same 50,000 lengths: seconds, rows, speed-up.
  ilp_real      `ilp` on random batches of 64 and 256 prompts from each real length list,
                capacity = longest prompt in the batch: proven optimal or not, seconds.
  ilp_hard      `ilp` on hard synthetic mixes (many items in (C/4, C/2]; bimodal: half in
                [0.4C, 0.6C], half in [0.15C, 0.3C]; Falkenauer-style exact triplets, whose
                optimum is known) against FFD, L2 and the LP bound.

Run from the repo root:  python benchmarks/packers_bench.py  [--quick]  [--sections ilp_real,ilp_hard]
(a subset of sections replaces only those sections of an existing --out file).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # benchmark this checkout, whatever an editable install points at
import packers

DEFAULT_LENGTHS = [REPO.parent / "shared" / "data" / "lengths", REPO / "simulator" / "data"]
SECTIONS = ("speed_1m", "vs_binpacking", "ilp_real", "ilp_hard")
SPEED_PACKERS = ["ffd", "bfd", "lpfhp", "wfd", "next-fit", "first-fit", "best-fit", "worst-fit"]


def lognormal_lengths(n: int, capacity: int, seed: int = 0) -> np.ndarray:
    """Lognormal(mu=6, sigma=1) token counts (median ~403), rounded, clipped to [1, capacity]."""
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(rng.lognormal(6.0, 1.0, n)), 1, capacity).astype(np.int64)


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    import subprocess

    import ortools
    import scipy

    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "packers"], capture_output=True, text=True, check=False).stdout
    return {
        "packers_from": str(Path(packers.__file__).parent),
        "git_commit": commit,
        "packers_dirty": bool(dirty.strip()),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "ortools": ortools.__version__,
        "platform": platform.platform(),
    }


def time_pack(name: str, lengths: np.ndarray, capacity: int, repeats: int, **params: Any) -> dict[str, Any]:
    packer = packers.make_packer(name, **params)
    walls, placements, packing = [], [], None
    for _ in range(repeats):
        start = time.perf_counter()
        packing = packer.pack(lengths, capacity)
        walls.append(time.perf_counter() - start)
        placements.append(packing.meta["solve_time_s"])
    return {
        "packer": name,
        "pack_s_best": round(min(walls), 4),
        "pack_s_median": round(statistics.median(walls), 4),
        "placement_s_best": round(min(placements), 4),
        "rows": packing.num_bins,
        "lower_bound": packing.lower_bound,
        "repeats": repeats,
    }


def speed_1m(n: int, capacity: int, repeats: int) -> dict[str, Any]:
    lengths = lognormal_lengths(n, capacity)
    rows = []
    for name in SPEED_PACKERS:
        slow = name in ("wfd", "next-fit", "first-fit", "best-fit", "worst-fit")
        rows.append(time_pack(name, lengths, capacity, 1 if slow else repeats))
        print(f"speed_1m {rows[-1]}", file=sys.stderr)
    return {
        "lengths": f"lognormal(mu=6, sigma=1) rounded, clipped to [1, {capacity}], seed 0",
        "num_prompts": n,
        "capacity": capacity,
        "distinct_lengths": int(np.unique(lengths).size),
        "target": "ffd and bfd pack() <= 1.0 s",
        "results": rows,
    }


def vs_binpacking(n: int, capacity: int, repeats: int) -> dict[str, Any]:
    import binpacking

    lengths = lognormal_lengths(n, capacity, seed=1)
    values = lengths.tolist()
    start = time.perf_counter()
    theirs = binpacking.to_constant_volume(values, capacity)
    their_s = time.perf_counter() - start
    their_rows = len(theirs)
    assert sorted(x for b in theirs for x in b) == sorted(values)  # it dropped nothing
    rows = []
    for name in ("ffd", "bfd", "wfd"):
        row = time_pack(name, lengths, capacity, repeats)
        row["speedup_vs_binpacking"] = round(their_s / row["pack_s_best"], 1)
        row["rows_minus_binpacking"] = row["rows"] - their_rows
        rows.append(row)
        print(f"vs_binpacking {row}", file=sys.stderr)
    return {
        "num_prompts": n,
        "capacity": capacity,
        "binpacking_version": binpacking.__version__ if hasattr(binpacking, "__version__") else "unknown",
        "binpacking_algorithm": "to_constant_volume: worst-fit decreasing (least loaded bin) in 2.x",
        "binpacking_s": round(their_s, 3),
        "binpacking_rows": their_rows,
        "target": "ffd and bfd >= 100x faster with no more rows",
        "results": rows,
    }


def load_lists(directory: Path | None) -> dict[str, np.ndarray]:
    for candidate in ([directory] if directory else DEFAULT_LENGTHS):
        if candidate and candidate.is_dir() and any(candidate.glob("*.txt")):
            return {p.stem: np.loadtxt(p, dtype=np.int64, ndmin=1) for p in sorted(candidate.glob("*.txt"))}
    raise SystemExit("no length lists found: pass --lengths-dir")


def ilp_real(lists: dict[str, np.ndarray], batches: list[int], per_batch: int, time_limit_s: float) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    ilp = packers.make_packer("ilp", time_limit_s=time_limit_s)
    runs = []
    for dataset, lengths in lists.items():
        for batch in batches:
            for _ in range(per_batch):
                sample = rng.choice(lengths, size=batch, replace=False)
                capacity = int(sample.max())
                start = time.perf_counter()
                p = ilp.pack(sample, capacity)
                runs.append({
                    "dataset": dataset, "batch": batch, "capacity": capacity, "wall_s": round(time.perf_counter() - start, 3),
                    "rows": p.num_bins, "ffd_rows": p.meta["ffd_bins"], "l2": p.meta["l2_bound"],
                    "lower_bound": p.lower_bound, "status": p.meta["status"], "proof": p.meta.get("proof"),
                })
                if runs[-1]["ffd_rows"] != runs[-1]["l2"]:
                    print(f"ilp_real {runs[-1]}", file=sys.stderr)
    summary = []
    for batch in batches:
        sel = [r for r in runs if r["batch"] == batch]
        hard = [r for r in sel if r["ffd_rows"] > r["l2"]]
        summary.append({
            "batch": batch,
            "instances": len(sel),
            "proven_optimal": sum(r["status"] == "optimal" for r in sel),
            "proven_within_10s": sum(r["status"] == "optimal" and r["wall_s"] <= 10 for r in sel),
            "ffd_above_l2": len(hard),
            "ilp_below_ffd": sum(r["rows"] < r["ffd_rows"] for r in sel),
            "max_wall_s": max(r["wall_s"] for r in sel),
            "median_wall_s_where_ffd_above_l2": statistics.median([r["wall_s"] for r in hard]) if hard else None,
        })
    return {
        "capacity": "longest prompt of the batch",
        "time_limit_s": time_limit_s,
        "target": "optimality proven within 10 s",
        "summary": summary,
        "runs": runs,
    }


def hard_mixes(seed: int = 0) -> dict[str, tuple[np.ndarray, int, int | None]]:
    """name -> (lengths, capacity, known optimum or None)."""
    rng = np.random.default_rng(seed)
    capacity = 1000
    out: dict[str, tuple[np.ndarray, int, int | None]] = {}
    for n in (60, 120, 240):
        out[f"quarter_half_{n}"] = (rng.integers(capacity // 4 + 1, capacity // 2 + 1, n), capacity, None)
    for n in (60, 120, 240):
        big = rng.integers(int(0.4 * capacity), int(0.6 * capacity) + 1, n // 2)
        small = rng.integers(int(0.15 * capacity), int(0.3 * capacity) + 1, n - n // 2)
        out[f"bimodal_{n}"] = (rng.permutation(np.concatenate([big, small])), capacity, None)
    for k in (20, 40, 80):  # Falkenauer-style triplets: each bin exactly 1000 = three items
        items = []
        for _ in range(k):
            a = int(rng.integers(380, 491))
            b = int(rng.integers(250, min(a, capacity - a - 250) + 1))
            items += [a, b, capacity - a - b]
        out[f"triplets_{k}"] = (rng.permutation(np.array(items)), capacity, k)
    return out


def ilp_hard(time_limit_s: float) -> dict[str, Any]:
    from packers.colgen import lp_bound

    ilp = packers.make_packer("ilp", time_limit_s=time_limit_s)
    rows = []
    for name, (lengths, capacity, known) in hard_mixes().items():
        ffd = packers.make_packer("ffd").pack(lengths, capacity)
        start = time.perf_counter()
        p = ilp.pack(lengths, capacity)
        wall = time.perf_counter() - start
        sizes, type_of = np.unique(lengths, return_inverse=True)
        counts = np.bincount(type_of)
        lp = lp_bound(sizes, counts, capacity, np.diag(np.minimum(counts, capacity // sizes)), time_limit_s=30)
        rows.append({
            "mix": name, "prompts": int(lengths.size), "capacity": capacity, "known_optimum": known,
            "ffd_rows": ffd.num_bins, "l2": packers.bounds.l2(lengths, capacity),
            "lp_bound": lp.bound, "lp_value": round(lp.lp_value, 3), "lp_converged": lp.converged,
            "ilp_rows": p.num_bins, "ilp_status": p.meta["status"], "ilp_proof": p.meta.get("proof"),
            "ilp_wall_s": round(wall, 3),
        })
        print(f"ilp_hard {rows[-1]}", file=sys.stderr)
    return {"time_limit_s": time_limit_s, "results": rows}


def merge_partial(previous: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    """A run of some sections only: replace those in the previous report, keep the others and
    its top-level machine/command; the partial run's own machine/command go to partial_runs."""
    ran = [name for name in SECTIONS if name in report]
    merged = {**previous, **{name: report[name] for name in ran}}
    runs = [r for r in previous.get("partial_runs", []) if not set(r["sections"]) <= set(ran)]  # drop superseded
    runs.append({"sections": ran, "command": report["command"], "machine_before": report["machine_before"],
                 "machine_after": report["machine_after"]})
    merged["partial_runs"] = runs
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "packers.json")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--lengths-dir", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ilp-per-batch", type=int, default=8, help="random batches per dataset and batch size")
    parser.add_argument("--ilp-time-limit-s", type=float, default=10.0)
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help="comma-separated; a subset is merged into an existing --out file")
    args = parser.parse_args(argv)
    sections = set(args.sections.split(","))
    quick = args.quick
    report: dict[str, Any] = {"machine_before": machine(), "command": " ".join(["python", *sys.argv])}
    if "speed_1m" in sections:
        report["speed_1m"] = speed_1m(n=20_000 if quick else 1_000_000, capacity=4096, repeats=1 if quick else args.repeats)
    if "vs_binpacking" in sections:
        report["vs_binpacking"] = vs_binpacking(n=2_000 if quick else 50_000, capacity=4096, repeats=1 if quick else args.repeats)
    if "ilp_real" in sections:
        report["ilp_real"] = ilp_real(load_lists(args.lengths_dir), [64, 256], 1 if quick else args.ilp_per_batch,
                                      args.ilp_time_limit_s)
    if "ilp_hard" in sections and not quick:
        report["ilp_hard"] = ilp_hard(args.ilp_time_limit_s)
    report["machine_after"] = {"load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()]}
    if not set(SECTIONS) <= sections and args.out.exists():
        report = merge_partial(json.loads(args.out.read_text()), report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({"out": str(args.out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
