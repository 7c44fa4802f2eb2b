"""Calibration of the decode / end-to-end constants (simulator/decode.py) against measured
generation runs, and the predicted-vs-measured report in simulator/CALIBRATION.md ("Decode").

Owns the measured points (../shared/DESIGN.md and issue 14: one H200, Llama-2 7B shape, bf16,
random weights, the 64 MMLU prompts of the benchmark's batch, seed 0: 4,347 tokens, longest
351), how each is predicted with `simulator.endtoend`, and the least-squares fit of the
constants (scipy, imported only by `fit`).

    python -m simulator.decode_calibration          # report with the shipped constants
    python -m simulator.decode_calibration --fit    # refit, print the constants and the report
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from simulator.decode import DECODE_METHODS, ENGINE_PREFILL, DecodeMethod
from simulator.distributions import load_profile
from simulator.endtoend import Engine, Hardware, HFContinuous, HFPadded, PrepackHF, Requests, engine_prefill_model
from simulator.run import flat_packing

__all__ = ["MEASURED", "Point", "azure_requests", "benchmark_batch", "errors", "fit", "predict", "report"]


@dataclass(frozen=True)
class Point:
    """One measured run: method, new tokens per prompt, wall seconds, GPU, and whether the
    shipped constants were fitted to it (in_sample). workload "mmlu64": the benchmark batch
    (`benchmark_batch`) x new_tokens each; "azure<N>" (azure256, azure2048): the first N
    azure_conv requests with their logged outputs capped at new_tokens, prompts cut to fit
    the 4,096-token context (`azure_requests`, as the e2e bench runs them). finished: a run cut at
    measured_s that had handed back this many requests (measured_s is then compared with
    the modeled time of the finished-th finish); None = a whole run."""

    method: str
    new_tokens: int
    measured_s: float
    gpu: str = "h200"
    in_sample: bool = True
    source: str = "../shared/DESIGN.md, issue 14"
    workload: str = "mmlu64"
    finished: int | None = None


# End to end, 64 MMLU prompts, Llama-2 7B shape, bf16 (seconds).
MEASURED = (
    Point("hf-padded", 32, 1.55),
    Point("hf-padded", 256, 13.2),
    Point("prepack-hf", 32, 1.59),
    Point("prepack-hf", 256, 8.78),
    Point("hf-continuous", 32, 4.2),
    Point("hf-continuous", 256, 23.9),
    # generate_batch with max_new_tokens=1 on an H100 (bench hf-cb ttft, benchmarks/README.md): held out
    Point("hf-continuous", 1, 0.9914, gpu="h100", in_sample=False, source="benchmarks/README.md, hf-cb ttft"),
    # the engine's decode loop (method "engine", refill-when-free), measured on one H200
    # (prepack-bench --scenarios e2e --workloads mmlu-32,mmlu-256; benchmarks/results/generate_h200.json)
    Point("engine", 32, 0.27, source="benchmarks/results/generate_h200.json"),
    Point("engine", 256, 1.84, source="benchmarks/results/generate_h200.json"),
    # the azure_conv trace (prepack-bench --scenarios e2e --workloads azure; generate_azure_h200.json): held out
    Point("engine", 1000, 169.96, in_sample=False, source="benchmarks/results/generate_azure_h200.json",
          workload="azure2048"),
    Point("hf-continuous", 1000, 110.40, in_sample=False, source="benchmarks/results/generate_azure_h200.json (cut)",
          workload="azure2048", finished=103),
    # its first 256 requests, both methods run whole (prepack-bench --scenarios e2e --workloads azure
    # --azure-requests 256 --methods ours,hf-cb): hf-cb on the H200 fits hf-paged's KV term; the rest held out
    Point("hf-continuous", 1000, 198.82, source="benchmarks/results/generate_azure256_h200.json", workload="azure256"),
    Point("engine", 1000, 19.80, in_sample=False, source="benchmarks/results/generate_azure256_h200.json",
          workload="azure256"),
    Point("hf-continuous", 1000, 246.41, gpu="h100", in_sample=False,
          source="benchmarks/results/generate_azure256_h100.json", workload="azure256"),
    Point("engine", 1000, 29.06, gpu="h100", in_sample=False, source="benchmarks/results/generate_azure256_h100.json",
          workload="azure256"),
)
ENGINE_PREFILL_MEASURED_S = 0.0880  # H200 PrefillEngine, the same 64 prompts (../shared/DESIGN.md)


def benchmark_batch(size: int = 64, seed: int = 0) -> np.ndarray:
    """The bench's scenario-a batch: `size` MMLU lengths drawn without replacement with `seed`."""
    lengths = load_profile("mmlu")
    return lengths[np.random.default_rng(seed).choice(lengths.size, size=size, replace=False)]


def _runner(point: Point, methods: dict[str, DecodeMethod]) -> object:
    if point.method == "hf-padded":
        return HFPadded(batch_size=64, decode=methods["hf-eager"])
    if point.method == "prepack-hf":
        return PrepackHF(batch_size=64, decode=methods["hf-eager"])
    if point.method == "hf-continuous":
        return HFContinuous(decode=methods["hf-paged"])
    return Engine(decode=methods["graph"])


def azure_requests(max_new_tokens: int = 1000, size: int = 2048, context: int = 4096) -> Requests:
    """The e2e bench's azure workload: the trace's first `size` requests, outputs capped at
    max_new_tokens, each prompt cut so that prompt + output - 1 tokens fit `context`."""
    outputs = np.minimum(load_profile("azure_conv_output")[:size], max_new_tokens)
    prompts = np.minimum(load_profile("azure_conv")[:size], context - outputs + 1)
    return Requests(prompts, outputs, max_new_tokens)


def predict(point: Point, methods: dict[str, DecodeMethod] | None = None) -> float:
    """Modeled seconds of `point` with `methods` (default: the shipped DECODE_METHODS): the
    whole run's, or for a cut run the time its `finished`-th request finishes."""
    size = point.workload[len("azure"):]
    if point.workload.startswith("azure") and size.isdigit() and int(size) > 0:
        requests = azure_requests(point.new_tokens, size=int(size))
    elif point.workload == "mmlu64":
        batch = benchmark_batch()
        requests = Requests(batch, np.full(batch.size, point.new_tokens), point.new_tokens)
    else:
        raise ValueError(f"unknown workload {point.workload!r}: mmlu64 or azure<N> (e.g. azure2048)")
    run = _runner(point, dict(DECODE_METHODS if methods is None else methods)).run(requests, Hardware("llama-2-7b", point.gpu))
    if point.finished is None:
        return run.total_s
    return float(np.sort(run.finish_s)[point.finished - 1])


def errors(methods: dict[str, DecodeMethod] | None = None, points: Sequence[Point] = MEASURED) -> np.ndarray:
    """predicted / measured - 1 for each point."""
    return np.array([predict(p, methods) / p.measured_s - 1 for p in points])


def engine_prefill_error(matmul_efficiency: float = ENGINE_PREFILL["matmul_efficiency"]) -> float:
    cost = engine_prefill_model(Hardware("llama-2-7b", "h200"), matmul_efficiency=matmul_efficiency)
    return cost.cost(flat_packing(benchmark_batch())).est_time_s / ENGINE_PREFILL_MEASURED_S - 1


def fit(points: Sequence[Point] = MEASURED) -> tuple[dict[str, DecodeMethod], float]:
    """Least squares on log(predicted / measured) over the in-sample `points`: hf-eager
    (kv_extra_passes, layer_overhead_s, call_overhead_s), hf-paged (step_overhead_s,
    call_overhead_s, and kv_extra_passes where an in-sample azure point gives long caches), graph (step_overhead_s, only when engine points are given: none are
    measured yet); and the engine prefill matmul_efficiency. Returns (methods, efficiency)."""
    from scipy.optimize import brentq, least_squares

    shipped = dict(DECODE_METHODS)
    eager_pts = [p for p in points if p.in_sample and p.method in ("hf-padded", "prepack-hf")]
    paged_pts = [p for p in points if p.in_sample and p.method == "hf-continuous"]
    engine_pts = [p for p in points if p.in_sample and p.method == "engine"]

    def eager(x: np.ndarray) -> np.ndarray:
        m = {**shipped, "hf-eager": replace(shipped["hf-eager"], kv_extra_passes=x[0], layer_overhead_s=x[1] * 1e-3,
                                             call_overhead_s=x[2])}  # fmt: skip
        return np.log1p(errors(m, eager_pts))

    long_caches = any(p.workload != "mmlu64" for p in paged_pts)

    def paged(x: np.ndarray) -> np.ndarray:
        m = {**shipped, "hf-paged": replace(shipped["hf-paged"], step_overhead_s=x[0] * 1e-3, call_overhead_s=x[1],
                                             kv_extra_passes=x[2] if long_caches else 0.0)}  # fmt: skip
        return np.log1p(errors(m, paged_pts))

    e = least_squares(eager, [10.0, 0.8, 0.1], bounds=([0, 0, 0], [100, 10, 5])).x
    g = least_squares(paged, [80.0, 1.0, 5.0], bounds=([0, 0, 0], [1000, 10, 100])).x
    methods = {
        **shipped,
        "hf-eager": replace(shipped["hf-eager"], kv_extra_passes=float(e[0]), layer_overhead_s=float(e[1]) * 1e-3,
                            call_overhead_s=float(e[2])),
        "hf-paged": replace(shipped["hf-paged"], step_overhead_s=float(g[0]) * 1e-3, call_overhead_s=float(g[1]),
                            kv_extra_passes=float(g[2]) if long_caches else 0.0),
    }  # fmt: skip
    if engine_pts:
        def graph(x: np.ndarray) -> np.ndarray:
            m = {**methods, "graph": replace(shipped["graph"], step_overhead_s=x[0] * 1e-3)}
            return np.log1p(errors(m, engine_pts))

        s = least_squares(graph, [0.05], bounds=([0], [100])).x
        methods["graph"] = replace(shipped["graph"], step_overhead_s=float(s[0]) * 1e-3)
    efficiency = brentq(engine_prefill_error, 0.05, 1.0)
    return methods, float(efficiency)


def report(methods: dict[str, DecodeMethod] | None = None) -> str:
    """Markdown table of every measured point, modeled vs measured, and the in-sample summary."""
    errs = errors(methods)
    lines = [
        "| method | GPU | workload | new tokens | measured s | modeled s | error | fitted on it |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for p, e in zip(MEASURED, errs):
        what = p.workload if p.finished is None else f"{p.workload}, cut: {p.finished} done"
        lines.append(
            f"| {p.method} | {p.gpu} | {what} | {p.new_tokens} | {p.measured_s:.2f} | {p.measured_s * (1 + e):.2f} | "
            f"{100 * e:+.1f}% | {'yes' if p.in_sample else 'no (held out)'} |"
        )
    ins = np.abs([e for p, e in zip(MEASURED, errs) if p.in_sample])
    out = np.abs([e for p, e in zip(MEASURED, errs) if not p.in_sample])
    lines.append("")
    lines.append(
        f"{ins.size} fitted points: median |error| {100 * np.median(ins):.1f}%, mean {100 * ins.mean():.1f}%, "
        f"max {100 * ins.max():.1f}%; {out.size} held out: median {100 * np.median(out):.1f}%, max "
        f"{100 * out.max():.1f}%. Engine prefill (64 MMLU prompts, H200): {100 * engine_prefill_error():+.1f}%."
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulator.decode_calibration", description=__doc__.split("\n")[0])
    parser.add_argument("--fit", action="store_true", help="refit the constants and report with them")
    args = parser.parse_args(argv)
    methods = None
    if args.fit:
        methods, efficiency = fit()
        for name in ("hf-eager", "hf-paged", "graph"):
            print(methods[name])
        print(f"engine prefill matmul_efficiency = {efficiency:.4f}")
    print(report(methods))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
