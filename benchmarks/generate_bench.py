"""End-to-end generation benchmark (issue 14): a thin wrapper of `prepack-bench --scenarios e2e`.

  python benchmarks/generate_bench.py ARGS  ==  prepack-bench --scenarios e2e ARGS
(flags, workloads, methods and the recorded numbers: `prepack-bench --help` and
gpu_runner/bench/generate.py). Kept so existing commands and `--smoke` keep working.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_runner.bench.cli import main as _cli_main


def main(argv: list[str] | None = None) -> int:
    return _cli_main(["--scenarios", "e2e", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
