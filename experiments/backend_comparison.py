"""Experiment 6: attention backends side by side across length distributions, including
the long prompts of the production trace (azure_conv, clipped to 4096 tokens):

  padded  HF forward over the left-padded batch (gpu_runner.bench.methods.PaddedHF)
  dense   prepacked rows (FFD at capacity = longest prompt), 4D block-diagonal mask, sdpa
  flex    the same rows under FlexAttention (BlockMask)
  varlen  the same rows as one flat varlen attention call (CUDA only)
  graph   PrefillEngine: one flat varlen row, bucketed shapes, CUDA graphs (CUDA only)

dense / flex / varlen run through the library path `gpu_runner.prefill(model, prompts,
packing=..., backend=..., return_kv=False)`. Batches are drawn exactly as
gpu_runner.bench.sweep draws them (`draw_lengths`), so each row can be re-priced by the
cost model (experiment 7). Each point: `warmup` calls, then the median of `reps`
CUDA-event-timed calls (gpu_runner.bench.timing.time_calls) and the peak extra memory; a point
that fails (out of memory, backend unavailable) is a row with `error`. Appends to
backend_comparison.csv.

    python -m experiments.backend_comparison              # GPU: 1.3B and 7B, 5 datasets, batch 16 and 64
    python -m experiments.backend_comparison --smoke      # CPU, tiny model (varlen: error rows)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from experiments.cli import ModelsConfig, model_script, option
from experiments.common import (
    ALL_DATASETS, MAX_PROMPT_TOKENS, SMOKE_MODEL, Budget, append_rows, budget_spent, draw_lengths,
    error_text, machine_label, versions,
)  # fmt: skip

CSV_NAME = "backend_comparison.csv"
COLUMNS = (
    "gpu", "model", "dataset", "batch", "seed", "max_len", "packer", "backend", "mode", "num_bins", "row_len",
    "real_tokens", "computed_tokens", "measured_ms", "ms_min", "ms_max", "reps", "peak_extra_bytes", "versions",
    "error",
)  # fmt: skip
BACKENDS = ("padded", "dense", "flex", "varlen", "graph")


def backend_call(model: Any, prompts: list[list[int]], backend: str,
                 packer: str = "ffd") -> tuple[Callable[[], Any], str, int, int, Any]:  # fmt: skip
    """(call, packer, num_bins, row_len, runner) for one backend on these prompts; runner is
    the object whose `oom_splits` counts padded batches split after running out of memory."""
    lengths = [len(p) for p in prompts]
    if backend == "padded":
        from gpu_runner.bench.methods import PaddedHF

        m = PaddedHF(model, name="padded", sort=False, chunk=None)
        return (lambda: m.prefill(prompts)), "pad", len(prompts), max(lengths), m
    if backend == "graph":
        from gpu_runner.engine import PrefillEngine, bucket_tokens

        eng = PrefillEngine(model, token_bucket=128)
        return (lambda: eng.prefill(prompts)), "flat", 1, bucket_tokens(sum(lengths), 128), eng
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    import packers
    from gpu_runner.runner import prefill

    packing = packers.make_packer(packer).pack(lengths, max(lengths))
    return (
        (lambda: prefill(model, prompts, packing=packing, backend=backend, return_kv=False)),
        packer,
        packing.num_bins,
        packing.max_load,
        None,
    )


@dataclass(frozen=True)
class Config(ModelsConfig):
    datasets: tuple[str, ...] = option(ALL_DATASETS, "length lists the batches are drawn from")
    batches: tuple[int, ...] = option((16, 64), "batch sizes", minimum=1)
    backends: tuple[str, ...] = option(BACKENDS, "", choices=BACKENDS)
    warmup: int = option(1, "untimed calls per point", minimum=0)
    reps: int = option(3, "timed calls per point (median)", minimum=1)

    @classmethod
    def smoke(cls, seed: int = 0) -> Config:
        return cls(models=(SMOKE_MODEL,), datasets=("mmlu",), batches=(6,), backends=("padded", "dense", "varlen"),
                   warmup=0, reps=1, seed=seed, device="cpu")  # fmt: skip


def run_for_model(
    model: Any, model_name: str, cfg: Config, out_csv: str, budget: Budget | None = None
) -> list[dict]:
    import torch

    from gpu_runner.bench import draw_prompts
    from gpu_runner.bench.timing import peak_extra_bytes, release_memory, time_calls

    dev = torch.device(cfg.device)
    gpu, vers = machine_label(cfg.device), versions()
    rows: list[dict] = []
    batches = {}
    for dataset in cfg.datasets:
        for batch in cfg.batches:
            lengths = draw_lengths(dataset, batch, cfg.seed, MAX_PROMPT_TOKENS)
            batches[(dataset, batch)] = (lengths, draw_prompts(lengths, model.config.vocab_size, cfg.seed))
    # backends outermost: a slow backend (flex compiles per shape) listed last cannot starve the others
    for backend in cfg.backends:
        for (dataset, batch), (lengths, prompts) in batches.items():
            if budget_spent(budget, "backend_comparison", f"{model_name} {dataset} b{batch} {backend}"):
                continue
            row: dict[str, Any] = {
                "gpu": gpu, "model": model_name, "dataset": dataset, "batch": batch, "seed": cfg.seed,
                "max_len": MAX_PROMPT_TOKENS,
                "packer": "pad" if backend == "padded" else ("flat" if backend == "graph" else "ffd"),
                "backend": backend, "mode": "graph" if backend == "graph" else "eager", "num_bins": "", "row_len": "",
                "real_tokens": int(lengths.sum()), "computed_tokens": "", "measured_ms": None, "ms_min": None,
                "ms_max": None, "reps": 0, "peak_extra_bytes": None, "versions": vers, "error": "",
            }  # fmt: skip
            try:
                call, packer, bins, row_len, runner = backend_call(model, prompts, backend)
                row.update(packer=packer, num_bins=bins, row_len=row_len, computed_tokens=bins * row_len)
                t, peak = peak_extra_bytes(
                    lambda call=call: time_calls(call, device=dev, warmup=cfg.warmup, reps=cfg.reps),
                    device=dev,
                )
                row.update(
                    measured_ms=t.median_ms,
                    ms_min=t.min_ms,
                    ms_max=t.max_ms,
                    reps=cfg.reps,
                    peak_extra_bytes=peak,
                )
                if getattr(runner, "oom_splits", 0):
                    row["error"] = "padded batch ran out of memory and was split"
            except Exception as exc:  # noqa: BLE001 - any failure (OOM, backend unavailable) is an error row
                row["error"] = error_text(exc)
            call = runner = None
            release_memory(dev)
            append_rows(out_csv, [row], COLUMNS)
            rows.append(row)
            shown = f"{row['measured_ms']:.2f} ms" if row["measured_ms"] else row["error"]
            print(f"[backend_comparison {model_name} {dataset} b{batch} {backend}] {shown}", flush=True)
    return rows


run, main = model_script(Config, run_for_model, csv_name=CSV_NAME, prog="backend_comparison", doc=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
