"""`simulate_generation(...)`: the typed library function behind `simulate --output-dist ...`:
draw (prompt length, output length) requests, run every generation method (and every schedule
policy of the engine) through `simulator.endtoend`, and present the result as a table or JSON.

Requests: prompt lengths from `lengths_dist` (the same draw `simulate` makes with that seed),
output lengths from `output_dist` (same SPEC grammar, own random stream), capped at
`max_new_tokens`. When both are the paired built-in profiles of one trace (`azure_conv` and
`azure_conv_output`: line i of each is one request), the first `num_prompts` requests of the
trace are taken in trace order with their real output lengths (what the GPU benchmark runs),
instead of drawing the two independently.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from simulator.distributions import load_profile, parse_distribution
from simulator.endtoend import GENERATION_METHODS, Engine, GenerationRun, Hardware, Requests
from simulator.report import write_atomically
from simulator.schedule import available_policies, make_policy

__all__ = [
    "PAIRED_PROFILES",
    "GenerationResult",
    "draw_requests",
    "format_generation_table",
    "simulate_generation",
    "write_generation_csv",
]

PAIRED_PROFILES = {("azure_conv", "azure_conv_output")}  # (prompt profile, output profile), line-paired


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def draw_requests(
    lengths_dist: str, output_dist: str, num_prompts: int, *, max_new_tokens: int | None = None, seed: int = 0
) -> tuple[Requests, bool]:
    """(requests, paired): see the module docstring. `ValueError` for bad specs or counts."""
    n = _positive_int(num_prompts, "number of prompts")
    if max_new_tokens is not None:
        max_new_tokens = _positive_int(max_new_tokens, "max new tokens")
    if not isinstance(lengths_dist, str) or not isinstance(output_dist, str):
        raise ValueError("lengths_dist and output_dist must be SPEC strings")
    key = (lengths_dist.strip().lower(), output_dist.strip().lower())
    if key in PAIRED_PROFILES:
        prompts, outputs = load_profile(key[0]), load_profile(key[1])
        if n > prompts.size:
            raise ValueError(f"the paired trace {key[0]} + {key[1]} holds {prompts.size} requests, not {n}")
        prompts, outputs, paired = prompts[:n], outputs[:n], True
    else:
        prompts = parse_distribution(lengths_dist).sample(n, np.random.default_rng(seed))
        outputs = parse_distribution(output_dist).sample(n, np.random.default_rng([seed, 1]))
        paired = False
    if max_new_tokens is not None:
        outputs = np.minimum(outputs, max_new_tokens)
    return Requests(prompts, outputs, max_new_tokens), paired


@dataclass(frozen=True, eq=False)
class GenerationResult:
    """config: what ran (JSON-able); runs: one per (method, policy), hf-padded first."""

    config: dict[str, Any]
    runs: tuple[GenerationRun, ...]
    requests: Requests

    def to_json(self) -> dict[str, Any]:
        return {"config": self.config, "results": [r.to_dict() for r in self.runs]}


def simulate_generation(
    *,
    lengths_dist: str = "azure_conv",
    output_dist: str = "azure_conv_output",
    num_prompts: int = 2048,
    max_new_tokens: int | None = None,
    model: str = "llama-2-7b",
    gpu: str = "h200",
    batch_size: int = 64,
    memory_budget_bytes: int | None = None,
    methods: Sequence[str] | None = None,
    policies: Sequence[str] | None = None,
    max_batch_size: int = 256,
    prefill_token_budget: int = 8192,
    seed: int = 0,
) -> GenerationResult:
    """Predict end-to-end generation for every method in `methods` (default all of
    GENERATION_METHODS) and, for the engine, every policy in `policies` (default all).
    batch_size: prompts per static batch (hf-padded, prepack-hf); max_batch_size: the engine's
    decode slots; prefill_token_budget: prompt tokens per refill prefill. `ValueError` on bad input."""
    names = list(GENERATION_METHODS) if methods is None else list(dict.fromkeys(methods))
    unknown = [n for n in names if n not in GENERATION_METHODS]
    if unknown or not names:
        raise ValueError(f"unknown generation method(s) {unknown}; known: {', '.join(GENERATION_METHODS)}")
    policy_names = available_policies() if policies is None else list(dict.fromkeys(policies))
    if not policy_names:
        raise ValueError(f"no schedule policy given; known: {', '.join(available_policies())}")
    for p in policy_names:
        make_policy(p)  # unknown names fail here, before any work
    batch_size = _positive_int(batch_size, "batch size")
    requests, paired = draw_requests(lengths_dist, output_dist, num_prompts, max_new_tokens=max_new_tokens, seed=seed)
    hw = Hardware(model, gpu, memory_budget_bytes)
    runs: list[GenerationRun] = []
    for name in names:
        if name == "engine":
            for p in policy_names:
                runs.append(Engine(p, (), max_batch_size, prefill_token_budget).run(requests, hw))
        elif name == "hf-continuous":
            runs.append(GENERATION_METHODS[name](prefill_token_budget).run(requests, hw))
        else:
            runs.append(GENERATION_METHODS[name](batch_size).run(requests, hw))
    config = {
        "lengths_dist": lengths_dist,
        "output_dist": output_dist,
        "paired": paired,
        "num_prompts": requests.size,
        "max_new_tokens": max_new_tokens,
        "prompt_tokens": int(requests.prompt_tokens.sum()),
        "output_tokens": int(requests.output_tokens.sum()),
        "model": hw.model.name,
        "gpu": hw.gpu.name,
        "batch_size": batch_size,
        "max_batch_size": max_batch_size,
        "prefill_token_budget": prefill_token_budget,
        "memory_budget_bytes": hw.memory_budget_bytes,
        "seed": seed,
    }
    return GenerationResult(config=config, runs=tuple(runs), requests=requests)


def format_generation_table(result: GenerationResult) -> str:
    """One line per (method, policy): total s, tokens/s, TTFT p50/p90/p99 s, speedup vs hf-padded."""
    cfg = result.config
    head = (
        f"{cfg['num_prompts']} requests, prompts {cfg['lengths_dist']}, outputs {cfg['output_dist']}"
        f"{' (paired, trace order)' if cfg['paired'] else ''}, max new tokens {cfg['max_new_tokens']}; "
        f"{cfg['prompt_tokens']} prompt + {cfg['output_tokens']} output tokens; {cfg['model']} on {cfg['gpu']} "
        f"(budget {cfg['memory_budget_bytes'] / 1e9:.1f} GB)"
    )
    base = next((r for r in result.runs if r.method == "hf-padded"), None)
    cols = ("method", "policy", "total s", "tokens/s", "TTFT p50", "TTFT p90", "TTFT p99", "steps", "vs hf-padded")
    table = []
    for r in result.runs:
        table.append((
            r.method, r.policy, f"{r.total_s:.2f}" + ("" if r.fits else "!"), f"{r.tokens_per_s:.0f}",
            f"{r.ttft_percentile_s(50):.2f}", f"{r.ttft_percentile_s(90):.2f}", f"{r.ttft_percentile_s(99):.2f}",
            str(r.decode_steps), f"{base.total_s / r.total_s:.2f}x" if base and r.total_s > 0 else "-",
        ))  # fmt: skip
    widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(cols)]
    fmt = lambda row: "  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))  # noqa: E731
    lines = [head, "", fmt(cols), fmt(tuple("-" * w for w in widths)), *map(fmt, table)]
    lines.append("times in seconds from t = 0 (every request waiting); TTFT = time to a request's first token")
    for r in result.runs:
        if not r.fits:
            lines.append(f"! {r.method}/{r.policy}: {r.note}")
    return "\n".join(lines)


def write_generation_csv(result: GenerationResult, path: str | Path) -> None:
    """One row per (method, policy): the fields of `GenerationRun.to_dict()`."""
    rows = [r.to_dict() for r in result.runs]

    def write(fh: Any) -> None:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    write_atomically(path, "w", write, "CSV output")
