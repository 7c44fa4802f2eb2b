"""Scoring benchmark (issue 15): whole request sets scored by `gpu_runner.score` against
lm-evaluation-harness's real `HFLM` (its own length sorting, one-token-continuation
grouping and batching) on the same random-weight model.

Request sets (random token ids; context lengths = every prompt length of the MMLU length
list, `simulator/data/mmlu.txt`, 14,033 of them, or its first `--limit`):
  mmlu       each context with 4 one-token continuations (MMLU's answer letters)
  hellaswag  each context with 4 continuations of 10-40 tokens (HellaSwag's endings)
  mixed200   200 unrelated requests: contexts drawn from the list, continuations of 1-40
             tokens (a small task, where a global length sort cannot remove padding)
Methods:
  ours-<share>  `gpu_runner.score(model, requests, share_contexts=<share>, path="runner")`
                (packed rows through the HF decoder, attention backend "auto"), share in
                none / identical / tree
  ours-engine   `gpu_runner.score(model, requests, path="engine", batch_tokens=...)`: the
                CUDA-graph PrefillEngine over flat rows of <= --batch-tokens tokens,
                "identical" sharing (the engine has no tree masks)
  ours-auto     `gpu_runner.score(model, requests)`: whatever path="auto" picks (the
                engine where it applies, else the runner with share_contexts="auto");
                the record's "path" says which ran
  hflm-64       `HFLM(model, batch_size=64)._loglikelihood_tokens(requests)`
  hflm-auto     the same with batch_size="auto" (max_batch_size 512)
Per (model, set, method): wall time of the whole set (synced start to synced end, host
work, syncs and result transfer included; ours-engine also records `host_prep_s`, its
host work before the first row, timed apart), the untimed warm-up call before it
(`warmup_s`: the first 64 requests, or with `--warmup full` the whole set for the ours-*
methods, so that their Triton kernels and CUDA graph for the set's shapes exist before the
timed call; `--repeat N` times N calls of each ours-* method and records their median as
`wall_s`, every call in `wall_s_runs`), fed and padded tokens, roofline, speedup over
hflm-64, and the largest |log-likelihood difference| to hflm-64. HFLM's own padded vs
unpadded difference (HFLM at batch size 1 against batch 64, on the first `--self-check`
requests) is the yardstick for bf16 differences; every other method also records its
difference to that unpadded HFLM run (`max_abs_diff_vs_hflm_unpadded`). Roofline = real-token FLOPs of the distinct fed sequences
(`gpu_runner.bench.real_token_flops` without its last-token lm_head) + the lm_head at the
distinct scored positions, over the bf16 matmul rate measured in the same process (an
8192^3 product, ~30 ms: the boost clock). The card does not hold that clock under a whole
set (an H100 at its 700 W limit averages 1,370-1,490 MHz against 1,980), so the JSON also has
the rate of the same product run for 3 s (`sustained_matmul_tflops`, its clock and power in
`sustained_power`), each record its roofline at that rate (`roofline_sustained_fraction`)
and the SM clock and power draw over its timed calls (`power`, sampled by nvidia-smi).

One JSON (a dict with the GPU name and a list of records) is rewritten after every record.

  python benchmarks/scoring_bench.py --smoke                       # tiny model, CPU, seconds
  python benchmarks/scoring_bench.py --model sheared-llama-1.3b --sets mmlu,hellaswag,mixed200
  python benchmarks/scoring_bench.py --model llama-2-7b --sets mmlu --methods ours-engine,ours-identical,hflm-64
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gpu_runner
from gpu_runner.bench import MODEL_SHAPES, build_model, load_lengths, real_token_flops
from gpu_runner.score_requests import layout_requests, validate_requests
from gpu_runner.bench.power import PowerLog
from gpu_runner.bench.timing import matmul_peak_flops, matmul_sustained_flops, release_memory, wall_clock_s

SETS = ("mmlu", "hellaswag", "mixed200")
METHODS = ("ours-auto", "ours-engine", "ours-identical", "ours-tree", "ours-none", "hflm-64", "hflm-auto")
Request = tuple[list[int], list[int]]


def make_requests(name: str, lengths: np.ndarray, vocab_size: int, seed: int = 0, mixed: int = 200) -> list[Request]:
    """The request set `name` over context `lengths` (random ids in [1, vocab)); mixed200
    draws `mixed` requests."""
    rng = np.random.default_rng(seed)
    ids = lambda n: rng.integers(1, vocab_size, size=int(n)).tolist()
    if name == "mmlu":
        return [(ctx, ids(1)) for ctx in map(ids, lengths) for _ in range(4)]
    if name == "hellaswag":
        return [(ctx, ids(rng.integers(10, 41))) for ctx in map(ids, lengths) for _ in range(4)]
    if name == "mixed200":
        return [(ids(n), ids(rng.integers(1, 41))) for n in rng.choice(lengths, size=mixed)]
    raise ValueError(f"unknown set {name!r}; choose from {', '.join(SETS)}")


def offline_tokenizer(vocab_size: int) -> Any:
    """A word-level tokenizer with `vocab_size` ids, built offline: HFLM wants a tokenizer
    object even when it is only handed token ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="t1", eos_token="t2", pad_token="t0")


def work_of(config: Any, requests: list[Request]) -> dict[str, float]:
    """Distinct fed tokens and scored positions ("identical" layout) and their roofline FLOPs."""
    checked = validate_requests(requests, vocab_size=config.vocab_size, max_input_tokens=None)
    layout = layout_requests(checked, "identical")
    lengths = layout.lengths
    head = 2.0 * config.hidden_size * config.vocab_size
    flops = real_token_flops(config, lengths) - head * len(lengths) + head * layout.unique_offset.size
    return {"fed_tokens": layout.num_fed_tokens, "scored_positions": int(layout.unique_offset.size),
            "roofline_flops": flops, "tree_fed_tokens": layout_requests(checked, "tree").num_fed_tokens}


def host_prep_s(config: Any, requests: list[Request], batch_tokens: int) -> float:
    """Seconds of the engine path's host work before its first row can start (validation,
    "identical" layout, row plan), timed apart after the timed call: the part of `wall_s`
    that no device work overlaps (row staging and result assembly overlap the rows)."""
    from gpu_runner.score_engine import plan_rows

    t0 = time.perf_counter()
    checked = validate_requests(requests, vocab_size=config.vocab_size,
                                max_input_tokens=getattr(config, "max_position_embeddings", None))
    plan_rows(layout_requests(checked, "identical"), batch_tokens)
    return time.perf_counter() - t0


def ours_options(method: str, budget: int | None, batch_tokens: int) -> dict[str, Any]:
    """`gpu_runner.score` options of an ours-* method (module docstring)."""
    kind = method.removeprefix("ours-")
    if kind == "engine":
        return {"path": "engine", "batch_tokens": batch_tokens}
    if kind == "auto":
        return {"path": "auto", "batch_tokens": batch_tokens, "memory_budget_bytes": budget}
    return {"path": "runner", "share_contexts": kind, "memory_budget_bytes": budget}


def auto_choice(model: Any, requests: list[Request]) -> tuple[str, str]:
    """(path, share_contexts) that `gpu_runner.score(model, requests)` takes (default options:
    `gpu_runner.scoring.route`, the decision `score` itself makes)."""
    from gpu_runner.scoring import route

    checked = validate_requests(requests, vocab_size=model.config.vocab_size, max_input_tokens=None)
    way = route(model, checked)
    return way.path, way.share


def run_ours(model: Any, requests: list[Request], options: dict[str, Any]) -> list[float]:
    results = gpu_runner.score(model, requests, **options)
    return [r.logprob for r in results]


def make_hflm(model: Any, batch_size: int | str, softmax_dtype: str | None = None) -> Any:
    """lm-eval's HFLM on `model` (softmax_dtype: HFLM's option; None = the model's dtype, its
    default), counting the padded tokens it feeds (`padded_tokens`, batch-size probes aside)."""
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=offline_tokenizer(model.config.vocab_size), batch_size=batch_size,
              max_batch_size=512, max_length=model.config.max_position_embeddings,
              softmax_dtype=softmax_dtype)  # fmt: skip
    lm.padded_tokens, lm.probing = 0, False
    call, detect = lm._model_call, lm._detect_batch_size

    def counting_call(inps: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if not lm.probing:  # batch-size probes are timed (HFLM runs them) but not counted as tokens
            lm.padded_tokens += inps.numel()
        return call(inps, *args, **kwargs)

    def probing_detect(*args: Any, **kwargs: Any) -> int:
        lm.probing = True
        try:
            return detect(*args, **kwargs)
        finally:
            lm.probing = False

    lm._model_call, lm._detect_batch_size = counting_call, probing_detect
    return lm


def run_hflm(lm: Any, requests: list[Request]) -> list[float]:
    out = lm._loglikelihood_tokens([(None, ctx, cont) for ctx, cont in requests], disable_tqdm=True)
    return [lp for lp, _ in out]


class Recorder:
    """The result JSON: {"gpu", "torch", "transformers", "lm_eval", "records": [...]}, rewritten per record."""

    def __init__(self, path: str, device: torch.device) -> None:
        import lm_eval
        import transformers

        self.path = Path(path)
        gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or 'cpu'})"
        self.data = {"gpu": gpu, "torch": torch.__version__, "transformers": transformers.__version__,
                     "lm_eval": lm_eval.__version__, "records": []}  # fmt: skip

    def add(self, record: dict[str, Any]) -> None:
        self.data["records"].append(record)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=1))
        print(json.dumps(record), flush=True)


def bench_set(model: Any, model_name: str, set_name: str, requests: list[Request], methods: list[str],
              rec: Recorder, peak_flops: float | None, device: torch.device, self_check: int,
              batch_tokens: int = 32768, warmup: str = "prefix", repeat: int = 1,
              sustained_flops: float | None = None) -> None:
    """Every method on one request set; hflm-64 runs first (the reference for diffs and speedups).
    Before its timed call each method runs once untimed (its `warmup_s` is recorded): on the
    first 64 requests, or, for the ours-* methods with warmup="full", on the whole set (its
    shapes then are compiled and captured: the timed call is the steady state; HFLM compiles
    nothing, its cuBLAS kernels are warm after 64 requests). The ours-* methods' timed call
    runs `repeat` times: `wall_s` is the median, `wall_s_runs` every call. `power`: the SM
    clock and power draw over the timed calls (`bench.power`); `roofline_sustained_fraction`:
    the roofline at `sustained_flops` (the card's rate under sustained load) over wall_s."""
    work = work_of(model.config, requests)
    roofline_s = work["roofline_flops"] / peak_flops if peak_flops else None
    budget = int(torch.cuda.mem_get_info(device)[0] // 2) if device.type == "cuda" else None
    reference: list[float] | None = None
    reference_s: float | None = None
    unpadded: list[float] = []
    order = sorted(methods, key=lambda m: m != "hflm-64")
    prefix = requests[: min(64, len(requests))]
    for method in order:
        release_memory(device)
        base = dict(model=model_name, set=set_name, method=method, num_requests=len(requests), **work)
        try:
            if method.startswith("ours-"):
                options = ours_options(method, budget, batch_tokens)
                warm = requests if warmup == "full" else prefix
                _, warmup_s = wall_clock_s(lambda o=options: run_ours(model, warm, o), device=device)
                with PowerLog(device) as log:
                    runs = [wall_clock_s(lambda o=options: run_ours(model, requests, o), device=device)
                            for _ in range(repeat)]
                scores, wall_s = runs[0][0], float(np.median([t for _, t in runs]))
                path, share = (options["path"], options.get("share_contexts", "auto"))
                if path == "auto":
                    path, share = auto_choice(model, requests)
                extra: dict[str, Any] = {"share_contexts": share, "path": path, "warmup": warmup, "warmup_s": warmup_s,
                                         "wall_s_runs": [t for _, t in runs]}
                if path == "engine":
                    from gpu_runner.score_engine import engine_scorer

                    scorer = engine_scorer(model)
                    extra.update(share_contexts="identical", batch_tokens=batch_tokens, engine_graphs=scorer.num_graphs,
                                 engine_attention=scorer.engine.attention,
                                 host_prep_s=host_prep_s(model.config, requests, batch_tokens))
            else:
                lm = make_hflm(model, 64 if method == "hflm-64" else "auto")
                _, warmup_s = wall_clock_s(lambda lm=lm: run_hflm(lm, prefix), device=device)
                lm.padded_tokens = 0
                with PowerLog(device) as log:
                    scores, wall_s = wall_clock_s(lambda lm=lm: run_hflm(lm, requests), device=device)
                extra = {"warmup_s": warmup_s, "hflm_padded_tokens": lm.padded_tokens,
                         "hflm_padded_over_real": lm.padded_tokens / work["fed_tokens"]}  # fmt: skip
        except Exception as exc:  # noqa: BLE001  (record it, go on with the next method)
            rec.add({**base, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
            continue
        if method == "hflm-64":
            reference, reference_s = scores, wall_s
            n = min(self_check, len(requests))
            unpadded = run_hflm(make_hflm(model, 1), requests[:n])
            extra["hflm_padded_vs_unpadded_max_abs_diff"] = float(np.max(np.abs(np.subtract(unpadded, scores[:n]))))
            extra["self_check_requests"] = n
        diff = float(np.max(np.abs(np.subtract(scores, reference)))) if reference is not None else None
        if unpadded and method != "hflm-64":
            extra["max_abs_diff_vs_hflm_unpadded"] = float(np.max(np.abs(np.subtract(scores[: len(unpadded)], unpadded))))
        rec.add({**base, **extra, "wall_s": wall_s, "roofline_s": roofline_s,
                 "roofline_fraction": roofline_s / wall_s if roofline_s else None,
                 "roofline_sustained_fraction": work["roofline_flops"] / sustained_flops / wall_s if sustained_flops else None,
                 "power": log.summary.as_record() if log.summary else None,
                 "speedup_vs_hflm64": reference_s / wall_s if reference_s else None,
                 "max_abs_diff_vs_hflm64": diff})  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="sheared-llama-1.3b", help=f"comma list of {', '.join(MODEL_SHAPES)}")
    p.add_argument("--sets", default=",".join(SETS))
    p.add_argument("--methods", default="ours-identical,ours-tree,hflm-64,hflm-auto", help=f"of {', '.join(METHODS)}")
    p.add_argument("--limit", type=int, default=0, help="first N contexts of the length list (0 = all)")
    p.add_argument("--mixed", type=int, default=200, help="requests of the mixed200 set")
    p.add_argument("--self-check", type=int, default=512, help="requests HFLM also scores unpadded (batch 1)")
    p.add_argument("--batch-tokens", type=int, default=32768, help="tokens per flat row of ours-engine / ours-auto")
    p.add_argument("--warmup", choices=("prefix", "full"), default="prefix",
                   help="untimed call before each timed one: the first 64 requests, or (ours-* only) the whole set")
    p.add_argument("--repeat", type=int, default=1, help="timed calls of each ours-* method (wall_s: their median)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--out", default="")
    p.add_argument("--smoke", action="store_true", help="tiny model, CPU, fp32, 6 contexts: checks the plumbing")
    args = p.parse_args(argv)
    if args.smoke:
        args.model, args.device, args.dtype, args.limit, args.self_check, args.mixed = "tiny", "cpu", "float32", 4, 8, 24
        args.methods = "ours-identical,ours-tree,ours-engine,ours-auto,hflm-64"  # hflm-auto probes 512 x 2048 tokens
        args.batch_tokens = 256  # several flat rows
    if args.repeat < 1:
        p.error(f"--repeat must be >= 1, got {args.repeat}")
    models = args.model.split(",")
    sets, methods = args.sets.split(","), args.methods.split(",")
    for name in (*sets, *methods, *models):
        if name not in (*SETS, *METHODS, *MODEL_SHAPES):
            p.error(f"unknown set / method / model {name!r}")
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    device = torch.device(args.device)
    slug = torch.cuda.get_device_name(device).split()[-1].lower() if device.type == "cuda" else "cpu"
    rec = Recorder(args.out or f"benchmarks/results/scoring_{slug}.json", device)
    peak = sustained = None
    if device.type == "cuda":
        peak = matmul_peak_flops(device=device)
        with PowerLog(device) as log:
            sustained = matmul_sustained_flops(device=device)
        rec.data.update(peak_matmul_tflops=peak / 1e12, sustained_matmul_tflops=sustained / 1e12,
                        sustained_power=log.summary.as_record() if log.summary else None)
    lengths = load_lengths("mmlu")
    if args.limit:
        lengths = lengths[: args.limit]
    for model_name in models:
        model = build_model(model_name, device=args.device, dtype=args.dtype)
        for set_name in sets:
            requests = make_requests(set_name, lengths, model.config.vocab_size, mixed=args.mixed)
            t0 = time.perf_counter()
            bench_set(model, model_name, set_name, requests, methods, rec, peak, device, args.self_check,
                      args.batch_tokens, args.warmup, args.repeat, sustained)
            print(f"# {model_name} {set_name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        gpu_runner.clear_generation_cache(model)  # the engine and scorer cached on the model
        del model
        release_memory(device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
