"""Prefill benchmark script: the same as the `prepack-bench` console script.

Run from the repository root, e.g.
  python benchmarks/prefill_bench.py --smoke
  PYTHONPATH=. python benchmarks/prefill_bench.py --model llama-2-7b --out benchmarks/results/prefill_h100.json
See benchmarks/README.md for the exact commands behind the committed results.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_runner.bench_cli import main

if __name__ == "__main__":
    sys.exit(main())
