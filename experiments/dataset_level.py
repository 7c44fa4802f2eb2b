"""Experiment 4: dataset-level prefill: per-prompt prefill time over a whole dataset for
full batching (random order, HF padding), length-sorted batching (the dataset sorted by
length, then cut into batches, HF padding) and prepacking (random order, each batch packed
by the paper's method); the PrefillEngine (`best`, GPU only) as a fourth strategy.

Each strategy runs one untimed warm-up batch, then the whole stream between two device
syncs (wall clock, gpu_runner.bench.timing.wall_clock_s), packing and padding included.
per_prompt_ms = wall / prompts. `limit` caps the prompts (the first `limit` of the
shuffled dataset; 0 = all). Appends to dataset_level.csv.

    python -m experiments.dataset_level                  # GPU: 1.3B; alpaca, samsum whole, mmlu 4096
    python -m experiments.dataset_level --smoke          # CPU, tiny model, 24 prompts
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from experiments.cli import ModelsConfig, model_script, option
from experiments.common import (
    MAX_PROMPT_TOKENS, SMOKE_MODEL, SORTED_CHUNK, Budget, append_rows, budget_spent, computed_tokens,
    error_text, machine_label, versions,
)  # fmt: skip

CSV_NAME = "dataset_level.csv"
COLUMNS = (
    "gpu", "model", "dataset", "batch", "strategy", "method", "order", "num_prompts", "num_batches", "wall_ms",
    "per_prompt_ms", "real_tokens", "computed_tokens", "speedup_vs_full", "seed", "versions", "error",
)  # fmt: skip
# strategy -> (benchmark method, order of the dataset before cutting it into batches)
STRATEGIES = {
    "full-batching": ("padded", "random"),
    "length-sorted": ("padded", "sorted"),
    "prepacking": ("paper", "random"),
    "engine": ("best", "random"),
}


def dataset_batches(lengths: np.ndarray, batch: int, order: str, seed: int) -> list[np.ndarray]:
    """Prompt indices per batch: the dataset in random order (seeded) or sorted by length
    (longest first, ties in random order), cut into consecutive batches of `batch`."""
    perm = np.random.default_rng(seed).permutation(lengths.size)
    if order == "sorted":
        perm = perm[np.argsort(-lengths[perm], kind="stable")]
    elif order != "random":
        raise ValueError(f"order must be random or sorted, got {order!r}")
    return [perm[i : i + batch] for i in range(0, perm.size, batch)]


def run_strategy(model: Any, prompts: list[list[int]], lengths: np.ndarray, strategy: str, *, batch: int,
                 device: str, seed: int) -> dict[str, Any]:  # fmt: skip
    """Time one strategy over the stream: {wall_ms, num_batches, computed_tokens, error}."""
    import torch

    from gpu_runner.bench.methods import make_method
    from gpu_runner.bench.timing import release_memory, wall_clock_s

    method, order = STRATEGIES[strategy]
    dev = torch.device(device)
    batches = dataset_batches(lengths, batch, order, seed)
    comp = sum(computed_tokens(method, lengths[b]) for b in batches)
    try:
        runner = make_method(method, model, sorted_chunk=SORTED_CHUNK)
        out = runner.prefill([prompts[i] for i in batches[0]])  # warm-up (kernels, allocator, graphs)
        del out

        def stream() -> None:
            for b in batches:
                out = runner.prefill([prompts[i] for i in b])
                del out

        wall_s = wall_clock_s(stream, device=dev)[1]
        res = {"wall_ms": wall_s * 1e3, "error": ""}
    except Exception as exc:  # noqa: BLE001 - a failing strategy is a row with `error`
        res = {"wall_ms": None, "error": error_text(exc)}
    runner = None
    release_memory(dev)
    return dict(res, num_batches=len(batches), computed_tokens=comp)


@dataclass(frozen=True)
class Config(ModelsConfig):
    models: tuple[str, ...] = option(("sheared-llama-1.3b",), "model shapes (gpu_runner.bench.MODEL_SHAPES)")
    datasets: tuple[str, ...] = option(("alpaca", "samsum", "mmlu"), "length lists, each run whole")
    batch: int = option(32, "prompts per batch", minimum=1)
    limit: int = option(4096, "prompts per dataset (0 = all)", minimum=0)
    strategies: tuple[str, ...] = option(tuple(STRATEGIES), "", choices=tuple(STRATEGIES))

    @classmethod
    def smoke(cls, seed: int = 0) -> Config:
        return cls(models=(SMOKE_MODEL,), datasets=("samsum",), batch=8, limit=16,
                   strategies=("full-batching", "length-sorted", "prepacking"), seed=seed, device="cpu")  # fmt: skip


def run_for_model(
    model: Any, model_name: str, cfg: Config, out_csv: str, budget: Budget | None = None
) -> list[dict]:
    from gpu_runner.bench import draw_prompts
    from simulator.distributions import load_profile

    gpu, vers = machine_label(cfg.device), versions()
    rows: list[dict] = []
    for dataset in cfg.datasets:
        full = load_profile(dataset)
        keep = np.random.default_rng(cfg.seed).permutation(full.size)[: cfg.limit or None]
        lengths = np.minimum(full[np.sort(keep)], MAX_PROMPT_TOKENS)
        prompts = draw_prompts(lengths, model.config.vocab_size, cfg.seed)
        got: list[dict] = []
        for strategy in cfg.strategies:
            if budget_spent(budget, "dataset_level", f"{model_name} {dataset} {strategy}"):
                continue
            method, order = STRATEGIES[strategy]
            res = run_strategy(
                model, prompts, lengths, strategy, batch=cfg.batch, device=cfg.device, seed=cfg.seed
            )
            row = dict(gpu=gpu, model=model_name, dataset=dataset, batch=cfg.batch, strategy=strategy, method=method,
                       order=order, num_prompts=int(lengths.size), real_tokens=int(lengths.sum()),
                       per_prompt_ms=res["wall_ms"] / lengths.size if res["wall_ms"] else None,
                       speedup_vs_full=None, seed=cfg.seed, versions=vers, **res)  # fmt: skip
            got.append(row)
            shown = f"{row['per_prompt_ms']:.3f} ms/prompt" if row["wall_ms"] else row["error"]
            print(f"[dataset_level {model_name} {dataset} {strategy}] {shown}", flush=True)
        full_ms = next((r["wall_ms"] for r in got if r["strategy"] == "full-batching" and r["wall_ms"]), None)
        for r in got:
            r["speedup_vs_full"] = full_ms / r["wall_ms"] if (full_ms and r["wall_ms"]) else None
        append_rows(out_csv, got, COLUMNS)
        rows += got
    return rows


run, main = model_script(Config, run_for_model, csv_name=CSV_NAME, prog="dataset_level", doc=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
