"""gpu_runner.bench: the prefill benchmark (`prepack-bench`).

Modules: cli (the prepack-bench command), scenarios (scenario a: one batch repeated;
scenario b: a dataset stream; the JSON records), methods (the compared prefill methods:
padded, sorted, paper, best, hf-cb), sweep (the calibration sweep's grid and CSV), timing
(CUDA-event / graph / profiler timing and peak memory), multigpu (the data-parallel
benchmark), common (model shapes and build_model, prompts, real-token FLOPs, GPU slug,
error text).
"""

from gpu_runner.bench.common import (
    MODEL_SHAPES, build_model, draw_prompts, error_text, gpu_slug, load_lengths, real_token_flops, stream_batches,
)  # fmt: skip
from gpu_runner.bench.scenarios import MODES, BenchConfig, BenchRecord, merge_records, run_benchmark

__all__ = [
    "MODEL_SHAPES", "MODES", "BenchConfig", "BenchRecord", "build_model", "draw_prompts", "error_text", "gpu_slug",
    "load_lengths", "merge_records", "real_token_flops", "run_benchmark", "stream_batches",
]  # fmt: skip
