"""experiments: one script per result of the Prepacking paper (and past it).

Run each as `python -m experiments.<name> [--smoke]` from the repository root; every
script appends rows to one CSV under experiments/results/ (or $OUT / --out-dir), and
`python -m experiments.plot` draws the figures from those CSVs. See experiments/README.md.
"""
