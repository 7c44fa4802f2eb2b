"""Append the CSVs of a GPU run (e.g. the device's $OUT, fetched) to experiments/results/.

Each known experiment CSV in SOURCE is appended row by row to the CSV of the same name in
the results folder (header checked: a different schema is an error, nothing is
overwritten). A row identical to one already there is not appended again, so collecting
the same run twice changes nothing. The validation files are not copied: re-run
`python -m experiments.cost_model_validation` afterwards, which re-prices every measured row.

    python -m experiments.collect /path/to/fetched/out
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from experiments.common import append_rows, read_rows, results_dir, run_cli

EXPERIMENT_CSVS = (
    "speedup_by_dataset.csv",
    "speedup_by_batch.csv",
    "memory_and_max_batch.csv",
    "dataset_level.csv",
    "packer_comparison.csv",
    "backend_comparison.csv",
)


def collect(source: str | Path, out_dir: str | None = None) -> dict[str, int]:
    """Rows appended per CSV name (exact repeats of rows already there are skipped).
    ValueError when SOURCE is not a folder or holds none of them."""
    source = Path(source)
    if not source.is_dir():
        raise ValueError(f"{source} is not a folder")
    dest = results_dir(out_dir)
    if dest.resolve() == source.resolve():
        raise ValueError("source and destination are the same folder")
    counts = {}
    for name in EXPERIMENT_CSVS:
        rows = read_rows(source / name)
        if rows:
            have = {tuple(r.items()) for r in read_rows(dest / name)}
            new = [r for r in rows if tuple(r.items()) not in have]
            counts[name] = append_rows(dest / name, new, list(rows[0]))
    if not counts:
        raise ValueError(f"no experiment CSVs in {source} (looked for {', '.join(EXPERIMENT_CSVS)})")
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="collect", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="folder holding a run's CSVs")
    parser.add_argument("--out-dir", default=None, help="results folder (default experiments/results)")
    return run_cli(lambda a: print(collect(a.source, a.out_dir)), parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
