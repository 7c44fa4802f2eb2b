"""Shared pieces of the experiment scripts.

Owns: where results go (`results_dir`: --out-dir, else $OUT, else experiments/results/),
appending rows to a CSV with a fixed header (`append_rows`), reproducible batches of real
prompt lengths (`draw_lengths`, `nested_lengths`), the tokens each method computes
(`computed_tokens`), the method-timing loop over the benchmark library (`time_methods`:
gpu_runner.bench.methods + gpu_runner.bench.timing, no timing code of its own), a wall-clock
`Budget` for the GPU driver, and `run_cli` (bad input -> one line on stderr, exit 2; the
scripts' parsers are built from their Config dataclasses by experiments.cli).
Nothing here imports torch at module level, so the CPU-only experiments stay light.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ALL_DATASETS",
    "DATASETS",
    "EXTRA_SHAPES",
    "FIGURES_DIR",
    "GPU_MODELS",
    "MAX_PROMPT_TOKENS",
    "RESULTS_DIR",
    "SMOKE_MODEL",
    "Budget",
    "MethodResult",
    "append_rows",
    "computed_tokens",
    "draw_lengths",
    "error_text",
    "machine_label",
    "nested_lengths",
    "read_rows",
    "results_dir",
    "run_cli",
    "time_methods",
    "versions",
]  # fmt: skip

EXPERIMENTS_DIR = Path(__file__).resolve().parent
RESULTS_DIR = EXPERIMENTS_DIR / "results"
FIGURES_DIR = EXPERIMENTS_DIR / "figures"
DATASETS = ("mmlu", "wikitext256", "alpaca", "samsum")  # the paper's four
ALL_DATASETS = DATASETS + ("azure_conv",)  # + the production trace's long prompts
GPU_MODELS = ("sheared-llama-1.3b", "llama-2-7b")  # gpu_runner.bench.MODEL_SHAPES keys
SMOKE_MODEL = "tiny"
# Optional shapes beyond gpu_runner.bench.MODEL_SHAPES, built by `build_model` the same way
# (random weights, sdpa). Llama-2-13B: 26 GB of bf16 weights, fits one 80 GB card; its
# simulator spec is "llama-2-13b" (cost_model_validation maps the name).
EXTRA_SHAPES: dict[str, dict[str, int]] = {
    "llama2-13b": {"hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
                   "num_attention_heads": 40, "num_key_value_heads": 40, "vocab_size": 32000,
                   "max_position_embeddings": 4096},
}  # fmt: skip
MAX_PROMPT_TOKENS = 4096  # max_position_embeddings of the benchmark shapes: longer prompts are clipped
SORTED_CHUNK = 16  # micro-batch of the `sorted` method (gpu_runner.bench.methods default)


# ------------------------------------------------------------------ files


def results_dir(out_dir: str | None = None) -> Path:
    """--out-dir if given, else $OUT (the device machine's output folder), else experiments/results/."""
    path = Path(out_dir or os.environ.get("OUT") or RESULTS_DIR)
    path.mkdir(parents=True, exist_ok=True)
    return path


def append_rows(path: str | Path, rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> int:
    """Append rows to the CSV at `path` (header written when the file is new or empty).

    Every row must have exactly the keys of `columns` (ValueError otherwise), and an
    existing file must carry the same header, so appended runs never mix schemas.
    Floats are written with 6 significant digits. Returns the number of rows written.
    """
    path = Path(path)
    rows = list(rows)
    for row in rows:
        if set(row) != set(columns):
            extra, missing = sorted(set(row) - set(columns)), sorted(set(columns) - set(row))
            raise ValueError(f"row does not match the {path.name} schema: extra {extra}, missing {missing}")
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        with open(path, newline="") as fh:
            header = next(csv.reader(fh), [])
        if header != list(columns):
            raise ValueError(
                f"{path} has header {header}, expected {list(columns)}: move it aside or use --out-dir"
            )
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns))
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(v) for k, v in row.items()})
    return len(rows)


def _fmt(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    if isinstance(value, np.integer):
        return int(value)
    return value


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """All rows of a CSV as dicts of strings ([] when the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def code_rev(paths: Sequence[str] = ("packers", "simulator", "gpu_runner")) -> str:
    """Short git commit of the checkout, '+dirty' when `paths` have uncommitted changes;
    $PREPACKING_CODE_REV when set (a run from an exported snapshot of a commit); 'unknown'
    without git (e.g. a copied working tree)."""
    import subprocess

    if os.environ.get("PREPACKING_CODE_REV"):
        return os.environ["PREPACKING_CODE_REV"]

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=EXPERIMENTS_DIR.parent, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", *paths)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


# ------------------------------------------------------------------ prompt lengths


def draw_lengths(
    dataset: str, batch: int, seed: int = 0, max_len: int | None = MAX_PROMPT_TOKENS
) -> np.ndarray:
    """`batch` prompt lengths of a shipped length list, drawn exactly as gpu_runner.bench.sweep
    does (`simulator.sweep_calibration.sweep_lengths`: without replacement unless the batch
    is larger than the list), then clipped to `max_len` tokens (None: no clipping).
    Unknown datasets raise ValueError."""
    from simulator.sweep_calibration import sweep_lengths

    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    lengths = sweep_lengths(dataset, batch, seed)
    return np.minimum(lengths, max_len) if max_len else lengths


def nested_lengths(
    dataset: str, n: int, seed: int = 0, max_len: int | None = MAX_PROMPT_TOKENS
) -> np.ndarray:
    """The first `n` prompts of one fixed shuffle of the length list (tiled when n is larger),
    so a batch of n is a prefix of every larger batch: memory grows monotonically with n."""
    from simulator.distributions import load_profile

    profile = load_profile(dataset)
    perm = np.random.default_rng(seed).permutation(profile.size)
    lengths = profile[np.resize(perm, n)]
    return np.minimum(lengths, max_len) if max_len else lengths


def computed_tokens(
    method: str, lengths: Sequence[int], sorted_chunk: int = SORTED_CHUNK, token_bucket: int = 128
) -> int:
    """Tokens the method pushes through the model for one batch (real + padding):
    padded: N x longest; sorted: each micro-batch of the length-sorted batch x its longest;
    paper: FFD rows at capacity = longest x fullest row; best: the flat row rounded up to
    `token_bucket`."""
    arr = np.asarray(lengths, dtype=np.int64)
    if method == "padded":
        return int(arr.size * arr.max())
    if method == "sorted":
        s = np.sort(arr)[::-1]
        return int(sum(len(c) * c.max() for c in np.split(s, range(sorted_chunk, s.size, sorted_chunk))))
    if method == "paper":
        import packers

        p = packers.make_packer("ffd").pack(arr, int(arr.max()))
        return p.num_bins * p.max_load
    if method == "best":
        return int(-(-int(arr.sum()) // token_bucket) * token_bucket)
    raise ValueError(f"no token count for method {method!r}")


# ------------------------------------------------------------------ measurement


def error_text(exc: BaseException) -> str:
    first = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {first}"


@dataclass(frozen=True)
class MethodResult:
    """One method on one batch: median/min/max ms per mode (None on error), the peak extra
    device memory of all its calls (0 on CPU), notes (e.g. OOM splits) and the error."""

    method: str
    ms: Mapping[str, float | None]
    ms_min: Mapping[str, float | None]
    ms_max: Mapping[str, float | None]
    peak_extra_bytes: int | None
    oom_splits: int
    error: str


def time_methods(model: Any, prompts: Sequence[Sequence[int]], methods: Sequence[str], modes: Sequence[str], *,
                 device: Any, warmup: int, reps: int) -> list[MethodResult]:  # fmt: skip
    """Time each benchmark method (gpu_runner.bench.methods) on the same prompts, each mode
    ("prefill" or "ttft") timed by gpu_runner.bench.timing.time_calls, all calls of a method inside
    one gpu_runner.bench.timing.peak_extra_bytes. A failing method becomes a result with `error`."""
    from gpu_runner.bench.methods import make_method
    from gpu_runner.bench.timing import peak_extra_bytes, release_memory, time_calls

    out = []
    for method in methods:
        state: dict[str, Any] = {}

        def measure(method: str = method, state: dict[str, Any] = state) -> dict[str, Any]:
            runner = make_method(method, model, sorted_chunk=SORTED_CHUNK)
            state["runner"] = runner
            timings = {}
            for mode in modes:
                call = (
                    (lambda: runner.prefill(prompts))
                    if mode == "prefill"
                    else (lambda: runner.first_tokens(prompts))
                )
                timings[mode] = time_calls(call, device=device, warmup=warmup, reps=reps)
            return timings

        try:
            timings, peak = peak_extra_bytes(measure, device=device)
            err = ""
        except Exception as exc:  # noqa: BLE001 - a failing method is a result with `error`
            timings, peak, err = {}, None, error_text(exc)
        splits = int(getattr(state.get("runner"), "oom_splits", 0) or 0)
        state.clear()
        release_memory(device)
        out.append(MethodResult(
            method=method,
            ms={m: timings[m].median_ms if m in timings else None for m in modes},
            ms_min={m: timings[m].min_ms if m in timings else None for m in modes},
            ms_max={m: timings[m].max_ms if m in timings else None for m in modes},
            peak_extra_bytes=peak, oom_splits=splits, error=err,
        ))  # fmt: skip
    return out


def machine_label(device: Any) -> str:
    """Card name for the `gpu` column (gpu_runner.bench.gpu_slug: h100, h200, ... or cpu)."""
    import torch

    from gpu_runner.bench import gpu_slug

    return gpu_slug(torch.device(device))


def versions() -> str:
    """'torch X transformers Y' for the config columns."""
    import torch
    import transformers

    return f"torch {torch.__version__} transformers {transformers.__version__}"


def build_model(name: str, device: str) -> Any:
    """A random-weight model of shape `name` (gpu_runner.bench.MODEL_SHAPES, or EXTRA_SHAPES:
    the optional 13B), built as gpu_runner.bench.build_model builds its shapes: bf16 on a GPU,
    fp32 on CPU (the smoke runs)."""
    from gpu_runner.bench import MODEL_SHAPES
    from gpu_runner.bench import build_model as _build

    dtype = "float32" if device == "cpu" else "bfloat16"
    if name in EXTRA_SHAPES and name not in MODEL_SHAPES:
        import torch
        from transformers import AutoModelForCausalLM, LlamaConfig

        cfg = LlamaConfig(**EXTRA_SHAPES[name], attn_implementation="sdpa", pad_token_id=0)
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype))
        return model.eval().requires_grad_(False)
    if name not in MODEL_SHAPES:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join([*MODEL_SHAPES, *EXTRA_SHAPES])}")
    return _build(name, device=device, dtype=dtype)


def check_device(device: str) -> None:
    """ValueError when CUDA is asked for and absent (pass --smoke or --device cpu)."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError("CUDA is not available here: run with --smoke (CPU, tiny model) or --device cpu")


def run_models(
    cfg: Any,
    out_dir: str | None,
    csv_name: str,
    run_for_model: Callable[[Any, str, Any, str], list[dict]],
) -> list[dict]:
    """Build each model of `cfg.models` on `cfg.device` in turn (one at a time, so memory
    holds one replica) and run `run_for_model(model, name, cfg, out_csv)` on it; rows are
    appended to `results_dir(out_dir) / csv_name` by `run_for_model` as they are measured.
    Each GPU script's `run(cfg, out_dir)` is this function with its CSV name and
    `run_for_model` bound (`functools.partial`)."""
    check_device(cfg.device)
    out_csv = str(results_dir(out_dir) / csv_name)
    rows: list[dict] = []
    for name in cfg.models:
        model = build_model(name, cfg.device)
        rows += run_for_model(model, name, cfg, out_csv)
        del model
    return rows


class Budget:
    """Wall-clock budget shared by the stages of a run: `left_s()`; `expired()` once spent.
    `seconds <= 0` means no limit."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = float(seconds)
        self.start = time.perf_counter()

    def left_s(self) -> float:
        if self.seconds <= 0:
            return float("inf")
        return self.seconds - (time.perf_counter() - self.start)

    def expired(self) -> bool:
        return self.left_s() <= 0


def budget_spent(budget: Budget | None, prog: str, skipped: str) -> bool:
    """True once `budget` (None: no limit) is spent, saying on stdout that `skipped` is skipped."""
    if budget is None or not budget.expired():
        return False
    print(f"[{prog}] time budget spent: skipping {skipped}", flush=True)
    return True


# ------------------------------------------------------------------ CLI


def run_cli(body: Callable[[argparse.Namespace], Any], parser: argparse.ArgumentParser,
            argv: Sequence[str] | None = None) -> int:  # fmt: skip
    """Parse `argv` and run `body(args)`; a ValueError (bad input) prints one line to stderr
    and returns 2. Returns 0 on success."""
    args = parser.parse_args(argv)
    try:
        body(args)
    except ValueError as exc:
        print(f"{parser.prog}: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


# ------------------------------------------------------------------ speedup rows (experiments 1 and 2)

SPEEDUP_COLUMNS = (
    "gpu", "model", "dataset", "batch", "seed", "method", "mode", "ms", "ms_min", "ms_max", "reps",
    "speedup_vs_padded", "real_tokens", "computed_tokens", "padded_tokens", "peak_extra_bytes", "oom_splits",
    "versions", "error",
)  # fmt: skip


def speedup_rows(model: Any, model_name: str, dataset: str, batch: int, *, methods: Sequence[str],
                 modes: Sequence[str], device: str, warmup: int, reps: int, seed: int = 0) -> list[dict[str, Any]]:  # fmt: skip
    """Time `methods` x `modes` on one drawn batch (`draw_lengths(dataset, batch, seed)`,
    random token ids) and return one SPEEDUP_COLUMNS row per (method, mode), with the speedup
    over the `padded` method of the same mode when padded is among the methods."""
    import torch

    from gpu_runner.bench import draw_prompts

    lengths = draw_lengths(dataset, batch, seed)
    prompts = draw_prompts(lengths, model.config.vocab_size, seed)
    results = time_methods(
        model, prompts, methods, modes, device=torch.device(device), warmup=warmup, reps=reps
    )
    padded = {r.method: r for r in results}.get("padded")
    gpu, vers, real = machine_label(device), versions(), int(lengths.sum())
    rows = []
    for r in results:
        comp = computed_tokens(r.method, lengths) if r.method in ("padded", "sorted", "paper", "best") else ""
        for mode in modes:
            ms = r.ms[mode]
            base = padded.ms.get(mode) if padded else None
            rows.append({
                "gpu": gpu, "model": model_name, "dataset": dataset, "batch": batch, "seed": seed,
                "method": r.method, "mode": mode, "ms": ms, "ms_min": r.ms_min[mode], "ms_max": r.ms_max[mode],
                "reps": reps if ms else 0, "speedup_vs_padded": (base / ms) if (ms and base) else None,
                "real_tokens": real, "computed_tokens": comp,
                "padded_tokens": (comp - real) if comp != "" else "", "peak_extra_bytes": r.peak_extra_bytes,
                "oom_splits": r.oom_splits, "versions": vers, "error": r.error or ("" if ms else "not run"),
            })  # fmt: skip
    return rows


def speedup_points(model: Any, model_name: str, cfg: Any, out_csv: str, points: Sequence[tuple[str, int]], *,
                   prog: str, budget: Budget | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """`speedup_rows` for each (dataset, batch) of `points` on one built model, with `cfg`'s
    methods, modes, device, warmup, reps and seed; each point's rows appended to `out_csv`
    and printed as they are measured; points left when `budget` is spent are skipped (said
    on stdout). Returns every row."""
    rows: list[dict[str, Any]] = []
    for dataset, batch in points:
        if budget_spent(budget, prog, f"{model_name} {dataset} b{batch}"):
            continue
        got = speedup_rows(model, model_name, dataset, batch, methods=cfg.methods, modes=cfg.modes,
                           device=cfg.device, warmup=cfg.warmup, reps=cfg.reps, seed=cfg.seed)  # fmt: skip
        append_rows(out_csv, got, SPEEDUP_COLUMNS)
        for row in got:
            shown = f"{row['ms']:.2f} ms" if row.get("ms") else f"ERROR {row.get('error')}"
            sp = f" x{row['speedup_vs_padded']:.2f}" if row.get("speedup_vs_padded") else ""
            print(f"[{prog} {model_name} {dataset} b{batch} {row['method']} {row['mode']}] {shown}{sp}", flush=True)
        rows += got
    return rows
