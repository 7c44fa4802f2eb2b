"""Merge benchmark record files of one card into benchmarks/results/prefill_<gpu>.json.

Usage: python benchmarks/merge_results.py OUT.json IN1.json [IN2.json ...]
Later inputs replace earlier records of the same (model, dataset, batch, mode, method);
speedups over padded and over the paper's method are recomputed across the inputs.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_runner.bench import merge_records


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: merge_results.py OUT.json IN.json [IN.json ...]", file=sys.stderr)
        return 2
    try:
        records = merge_records(argv[1:], out=argv[0])
    except (OSError, ValueError) as exc:
        print(f"merge_results: error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(records)} records -> {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
