"""Speed of the simulator, end to end, written to benchmarks/results/simulate.json.

Two jobs, each timed as a real `simulate` console-script subprocess (interpreter start,
imports, drawing, packing, costing, table, JSON) and as the in-process library call:
  big:     100,000 MMLU prompts in batches of 256, every default packer (all registered
           except ilp), attention all (dense, flex, varlen + the padded baseline)
  default: `simulate --lengths-dist mmlu --batch-size 64` (4,096 prompts)
Target (issue #3): big < 10 s, default a few seconds.

    python benchmarks/simulate_bench.py [--repeats 3] [--label "machine name"]

Results accumulate in the JSON as one run per machine label (a rerun replaces its label's
run), each with the CPU, core count and the load average before and after, since a busy
2-core box inflates every number.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import packers
from simulator import CostModel, RowLayout, default_packers, parse_distribution, simulate

JOBS = {
    "big": ["--lengths-dist", "mmlu", "--batch-size", "256", "--num-prompts", "100000"],
    "default": ["--lengths-dist", "mmlu", "--batch-size", "64"],
}
OUT = Path(__file__).resolve().parent / "results" / "simulate.json"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _library_kwargs(argv: list[str]) -> dict:
    it = iter(argv)
    args = dict(zip(it, it))
    return {
        "lengths_dist": args["--lengths-dist"],
        "batch_size": int(args["--batch-size"]),
        **({"num_prompts": int(args["--num-prompts"])} if "--num-prompts" in args else {}),
    }


def split_big_job() -> dict:
    """The big job's library work split in two: packing (the packers' share) and costing
    (the simulator's share: layout + padded/dense/flex/varlen pricing of every packing)."""
    lengths = parse_distribution("mmlu").sample(100_000, np.random.default_rng(0))
    batches = [lengths[i : i + 256] for i in range(0, lengths.size, 256)]
    gc.disable()  # keeping 3,910 packings alive would otherwise make the GC rescan them over and over
    start = time.perf_counter()
    instances = [packers.make_packer(name) for name in default_packers()]
    packings = [packer.pack(b, int(b.max())) for b in batches for packer in instances]
    pack_s = time.perf_counter() - start
    models = {a: CostModel("llama-2-7b", "h100", a) for a in ("padded", "dense", "flex", "varlen")}
    start = time.perf_counter()
    for p in packings:
        layout = RowLayout.from_packing(p)
        for name, model in models.items():
            if name != "padded" or p.packer == "pad":
                model.cost(p, layout)
    cost_s = time.perf_counter() - start
    gc.enable()
    return {"packings": len(packings), "packing_s": round(pack_s, 3), "costing_s": round(cost_s, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--label", default="this 2-core dev box",
                        help="name of the machine; the run replaces the earlier run of the same label")  # fmt: skip
    args = parser.parse_args()
    exe = shutil.which("simulate")
    if exe is None:
        sys.exit("the simulate console script is not installed (pip install -e .)")
    results = {}
    load_before = os.getloadavg()
    for name, argv in JOBS.items():
        cli_s, lib_s = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            proc = subprocess.run([exe, *argv, "--json", "--quiet"], capture_output=True, text=True)
            cli_s.append(time.perf_counter() - start)
            if proc.returncode != 0:
                sys.exit(f"{name}: simulate failed: {proc.stderr.strip()}")
            start = time.perf_counter()
            simulate(**_library_kwargs(argv))
            lib_s.append(time.perf_counter() - start)
        doc = json.loads(proc.stdout.strip().splitlines()[-1])
        results[name] = {
            "command": " ".join(["simulate", *argv]),
            "num_prompts": doc["config"]["num_prompts"],
            "num_batches": doc["config"]["num_batches"],
            "packers": doc["config"]["packers"],
            "attention": doc["config"]["attention"],
            "result_rows": len(doc["results"]),
            "cli_wall_s": [round(x, 3) for x in cli_s],
            "cli_wall_s_median": round(statistics.median(cli_s), 3),
            "library_s": [round(x, 3) for x in lib_s],
            "library_s_median": round(statistics.median(lib_s), 3),
        }
        print(f"{name}: CLI median {statistics.median(cli_s):.2f} s, library median {statistics.median(lib_s):.2f} s")
    split = split_big_job()
    print(f"big job split: packing {split['packing_s']:.2f} s, costing {split['costing_s']:.2f} s")
    run = {
        "label": args.label,
        "machine": {
            "cpu": _cpu_name(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_1_5_15_before": [round(x, 2) for x in load_before],
            "load_average_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
            "note": "2-core box shared with other jobs: a load average above ~1 inflates the times",
        },
        "default_packers": default_packers(),
        "target": "big < 10 s end to end (CLI wall); default a few seconds",
        "jobs": results,
        "big_job_library_split": split,
        "command": f"python benchmarks/simulate_bench.py --repeats {args.repeats} --label '{args.label}'",
    }
    runs = []
    if OUT.is_file():
        runs = [r for r in json.loads(OUT.read_text()).get("runs", []) if r.get("label") != args.label]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"runs": [*runs, run]}, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
