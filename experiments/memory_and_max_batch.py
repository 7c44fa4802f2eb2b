"""Experiment 3: peak memory, and the largest batch that fits before running out of memory,
HF padding vs prepacking (the paper claims up to 16x larger batches).

For each (model, dataset, method in padded / paper) the batch size is searched by doubling
from `start` until a batch runs out of memory (or `cap` is reached), then by bisection
until the gap is within `rel_tol` of the largest fitting batch. A batch of n prompts is the
first n of one fixed shuffle of the length list (`nested_lengths`), so larger batches only
add prompts. One probe = one prefill call, timed (wall, synced) and measured for peak extra
memory; out of memory is `torch.OutOfMemoryError` (the padded method's split-into-halves
fallback is disabled here: a split counts as not fitting). Every probe is a row
(kind=probe, its peak memory gives the memory-vs-batch curve) and the answer is one row
(kind=max_batch). Appends to memory_and_max_batch.csv.

    python -m experiments.memory_and_max_batch           # GPU: 1.3B and 7B, MMLU
    python -m experiments.memory_and_max_batch --smoke   # CPU, tiny model (never OOMs: capped)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from experiments.cli import ModelsConfig, model_script, option
from experiments.common import (
    SMOKE_MODEL, Budget, append_rows, budget_spent, computed_tokens, error_text, machine_label,
    nested_lengths, versions,
)  # fmt: skip

CSV_NAME = "memory_and_max_batch.csv"
COLUMNS = (
    "gpu", "model", "dataset", "method", "kind", "batch", "fits", "peak_extra_bytes", "ms", "real_tokens",
    "computed_tokens", "max_batch", "first_oom_batch", "capped", "num_probes", "seed", "versions", "error",
)  # fmt: skip


@dataclass(frozen=True)
class SearchResult:
    """max_fit: largest batch seen fitting (0 if none); first_fail: smallest batch seen not
    fitting (None when capped: every probe up to `cap` fitted); probes: (batch, fits) in order."""

    max_fit: int
    first_fail: int | None
    probes: tuple[tuple[int, bool], ...]

    @property
    def capped(self) -> bool:
        return self.first_fail is None


def find_max_batch(fits: Callable[[int], bool], *, start: int, cap: int, rel_tol: float = 1 / 16,
                   budget: Budget | None = None, known_fit: int = 0,
                   known_oom: int | None = None) -> SearchResult:  # fmt: skip
    """Largest n in [1, cap] with fits(n), assuming fits is monotone (true up to a threshold).

    Doubling from `start` (clamped to `cap`) until a failure, then bisection between the last
    fit and the first failure until first_fail - max_fit <= max(1, rel_tol * max_fit). If
    `start` itself fails, bisection runs on [0, start]. Stops early (keeping what it knows)
    when the budget is spent. `known_fit` / `known_oom` resume an earlier, unfinished search:
    a batch already seen fitting and one already seen running out of memory; with both, only
    the bisection between them runs (no probe repeats a known batch). ValueError on start < 1,
    cap < start, rel_tol < 0 or known_oom <= known_fit."""
    if start < 1 or cap < start or rel_tol < 0:
        raise ValueError(
            f"need 1 <= start <= cap and rel_tol >= 0, got start={start}, cap={cap}, rel_tol={rel_tol}"
        )
    if known_fit < 0 or (known_oom is not None and known_oom <= known_fit):
        raise ValueError(f"need 0 <= known_fit < known_oom, got {known_fit}, {known_oom}")
    probes: list[tuple[int, bool]] = []

    def probe(n: int) -> bool:
        ok = bool(fits(n))
        probes.append((n, ok))
        return ok

    lo, hi, n = known_fit, known_oom, max(start, 2 * known_fit) if known_fit else start
    n = min(n, cap)
    while hi is None and lo < cap and not (budget and budget.expired()):
        if probe(n):
            lo = n
            if n == cap:
                break
            n = min(2 * n, cap)
        else:
            hi = n
    while hi is not None and hi - lo > max(1, int(rel_tol * lo)) and not (budget and budget.expired()):
        mid = (lo + hi) // 2
        if probe(mid):
            lo = mid
        else:
            hi = mid
    return SearchResult(lo, hi, tuple(probes))


def _no_split_padded(model: Any) -> Any:
    """The padded benchmark method with its out-of-memory split disabled: the split calls
    `_forward` again, which here re-raises the out-of-memory error instead."""
    import torch

    from gpu_runner.bench.methods import PaddedHF

    class NoSplit(PaddedHF):
        def _forward(self, prompts, outs):  # type: ignore[override]
            if self.oom_splits:
                raise torch.OutOfMemoryError("the padded batch ran out of memory (split disabled)")
            super()._forward(prompts, outs)

    return NoSplit(model, name="padded", sort=False, chunk=None)


def probe_batch(
    model: Any, method: str, lengths: Sequence[int], *, device: str, seed: int = 0
) -> dict[str, Any]:
    """One prefill of these prompts with `method`: {fits, peak_extra_bytes, ms, error}."""
    import torch

    from gpu_runner.bench import draw_prompts
    from gpu_runner.bench.methods import make_method
    from gpu_runner.bench.timing import peak_extra_bytes, release_memory, wall_clock_s

    dev = torch.device(device)
    prompts = draw_prompts(lengths, model.config.vocab_size, seed)
    runner = _no_split_padded(model) if method == "padded" else make_method(method, model)

    def once() -> float:
        out, wall_s = wall_clock_s(lambda: runner.prefill(prompts), device=dev)
        del out
        return wall_s

    try:
        wall_s, peak = peak_extra_bytes(once, device=dev)
        result = {"fits": True, "peak_extra_bytes": peak, "ms": wall_s * 1e3, "error": ""}
    except torch.OutOfMemoryError as exc:
        result = {"fits": False, "peak_extra_bytes": None, "ms": None, "error": error_text(exc)}
    runner = prompts = None  # drop them before freeing memory
    release_memory(dev)
    return result


@dataclass(frozen=True)
class Config(ModelsConfig):
    datasets: tuple[str, ...] = option(("mmlu",), "length lists the batches are taken from")
    methods: tuple[str, ...] = option(("padded", "paper"), "padded and/or paper", choices=("padded", "paper"))
    start: int = option(16, "first batch size of the doubling", minimum=1)
    cap: int = option(8192, "largest batch size tried", minimum=1)
    rel_tol: float = option(1 / 16, "stop bisecting when the gap is this fraction of the fitting batch", minimum=0)
    known_fit: int = option(0, "resume an earlier search: a batch seen fitting (0: none)", minimum=0)
    known_oom: int | None = option(None, "... and one seen running out of memory (none: none)", minimum=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.cap < self.start:
            raise ValueError(f"need 1 <= --start <= --cap, got {self.start}, {self.cap}")

    @classmethod
    def smoke(cls, seed: int = 0) -> Config:
        return cls(models=(SMOKE_MODEL,), start=2, cap=8, rel_tol=0.0, seed=seed, device="cpu")


def run_for_model(
    model: Any, model_name: str, cfg: Config, out_csv: str, budget: Budget | None = None
) -> list[dict]:
    gpu, vers = machine_label(cfg.device), versions()
    rows: list[dict] = []
    for dataset in cfg.datasets:
        for method in cfg.methods:
            if budget_spent(budget, "memory", f"{model_name} {dataset} {method}"):
                continue
            base = {
                "gpu": gpu,
                "model": model_name,
                "dataset": dataset,
                "method": method,
                "seed": cfg.seed,
                "versions": vers,
            }

            def fits(n: int, dataset: str = dataset, method: str = method, base: dict = base) -> bool:
                lengths = nested_lengths(dataset, n, cfg.seed)
                got = probe_batch(model, method, lengths, device=cfg.device, seed=cfg.seed)
                row = dict(base, kind="probe", batch=n, real_tokens=int(lengths.sum()),
                           computed_tokens=computed_tokens(method, lengths), max_batch="", first_oom_batch="",
                           capped="", num_probes="", **got)  # fmt: skip
                append_rows(out_csv, [row], COLUMNS)
                rows.append(row)
                mem = f"{got['peak_extra_bytes'] / 2**30:.2f} GiB" if got["fits"] else got["error"]
                print(f"[memory {model_name} {dataset} {method} b{n}] fits={got['fits']} {mem}", flush=True)
                return got["fits"]

            res = find_max_batch(fits, start=cfg.start, cap=cfg.cap, rel_tol=cfg.rel_tol, budget=budget,
                                 known_fit=cfg.known_fit, known_oom=cfg.known_oom)  # fmt: skip
            row = dict(base, kind="max_batch", batch=res.max_fit, fits=True, peak_extra_bytes="", ms="", real_tokens="",
                       computed_tokens="", max_batch=res.max_fit, first_oom_batch=res.first_fail or "",
                       capped=res.capped, num_probes=len(res.probes),
                       error="time budget spent: search incomplete" if budget is not None and budget.expired() else "")  # fmt: skip
            append_rows(out_csv, [row], COLUMNS)
            rows.append(row)
            print(f"[memory {model_name} {dataset} {method}] max batch {res.max_fit}"
                  f"{' (capped)' if res.capped else f', OOM at {res.first_fail}'}", flush=True)  # fmt: skip
    return rows


run, main = model_script(Config, run_for_model, csv_name=CSV_NAME, prog="memory_and_max_batch", doc=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
