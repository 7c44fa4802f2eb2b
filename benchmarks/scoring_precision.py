"""bf16 accuracy against an fp32 reference (issues 15 and 14): how far each method's
log-likelihoods and first tokens are from the same weights run in float32, each request
alone, and how far they are from lm-eval's `HFLM`.

The bf16 model is the benchmark's random-weight model (`gpu_runner.bench.build_model`); the
reference is an exact float32 copy of its weights, each request fed alone, log_softmax in
float32. Methods on the bf16 model:
  hflm-64 / hflm-1   lm-eval's HFLM, batch 64 (padded) and batch 1 (unpadded), its default
                     log_softmax in the model's dtype (results on the bf16 grid)
  hflm-*-fp32        the same with HFLM's softmax_dtype="float32"
  ours-engine        gpu_runner.score(path="engine")
  ours-tree          gpu_runner.score(path="runner", share_contexts="tree")
  ours-*-rounded     the same run's per-token log-probs rounded as HFLM's default rounds them
                     (`gpu_runner.scoring.rounded_logprob`: what the lm-eval backend returns
                     with softmax_dtype=None); no extra forward
Requests: the first --mmlu contexts of the MMLU length list with 4 one-token continuations
and the first --hellaswag contexts with 4 continuations of 10-40 tokens (as
benchmarks/scoring_bench.py builds them). Per method and set: |diff| max / p99 / mean to the
fp32 reference, to hflm-1 and to hflm-1-fp32, and how often the greedy flag disagrees with
the reference. The yardsticks: hflm-64 vs hflm-1 (HFLM's own padded vs unpadded, default
rounding) and hflm-64-fp32 vs hflm-1-fp32 (the same in float32).

First tokens: the first --prompts MMLU prompts, greedy next token from the fp32 reference
(each alone), HF unpadded (each alone, bf16), HF `generate` on the left-padded batch, and
`gpu_runner.generate(..., max_new_tokens=1)` (engine path where it applies, and path="hf").

  python benchmarks/scoring_precision.py --model sheared-llama-1.3b --out precision.json
  python benchmarks/scoring_precision.py --smoke      # tiny model on CPU: the plumbing
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_runner
from gpu_runner.bench import build_model, load_lengths
from gpu_runner.scoring import rounded_logprob
from scoring_bench import Request, make_hflm, make_requests, run_hflm


@torch.inference_mode()
def reference_scores(model32: torch.nn.Module, requests: list[Request]) -> tuple[np.ndarray, np.ndarray]:
    """(log-likelihood, greedy flag) per request, float32, each request alone; requests with
    the same context and a one-token continuation share one forward."""
    dev = next(model32.parameters()).device
    cache: dict[tuple[int, ...], torch.Tensor] = {}
    lls, greedy = [], []
    for ctx, cont in requests:
        if len(cont) == 1:
            key = tuple(ctx)
            if key not in cache:
                cache = {key: model32(torch.tensor([ctx], device=dev)).logits[0, -1].float().log_softmax(-1)}
            logp = cache[key][None]
        else:
            ids = torch.tensor([ctx + cont], device=dev)
            logp = model32(ids).logits[0, len(ctx) - 1 : -1].float().log_softmax(-1)
        target = torch.tensor(cont, device=dev)
        lls.append(float(logp.gather(1, target[:, None]).sum()))
        greedy.append(bool((logp.argmax(-1) == target).all()))
    return np.array(lls), np.array(greedy)


def diff_stats(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    d = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
    return {"max": float(d.max()), "p99": float(np.quantile(d, 0.99)), "mean": float(d.mean())}


def score_methods(model: torch.nn.Module) -> dict[str, Callable[[list[Request]], dict[str, tuple[list[float], list[bool]]]]]:
    """name -> run(requests) -> {method name: (log-likelihoods, greedy flags)} (an ours-* run
    also gives its -rounded twin)."""
    Out = dict[str, tuple[list[float], list[bool]]]

    def hflm(batch: int, name: str, softmax_dtype: str | None = None) -> Callable[[list[Request]], Out]:
        def run(requests: list[Request]) -> Out:
            lm = make_hflm(model, batch, softmax_dtype)
            out = lm._loglikelihood_tokens([(None, c, x) for c, x in requests], disable_tqdm=True)
            return {name: ([lp for lp, _ in out], [g for _, g in out])}

        return run

    def ours(name: str, **options: Any) -> Callable[[list[Request]], Out]:
        def run(requests: list[Request]) -> Out:
            res = gpu_runner.score(model, requests, return_token_logprobs=True, **options)
            greedy = [r.is_greedy for r in res]
            dtype = next(model.parameters()).dtype
            return {name: ([r.logprob for r in res], greedy),
                    f"{name}-rounded": ([rounded_logprob(r.token_logprobs, dtype) for r in res], greedy)}

        return run

    methods = {"hflm-64": hflm(64, "hflm-64"), "hflm-1": hflm(1, "hflm-1"),
               "hflm-64-fp32": hflm(64, "hflm-64-fp32", "float32"), "hflm-1-fp32": hflm(1, "hflm-1-fp32", "float32"),
               "ours-tree": ours("ours-tree", path="runner", share_contexts="tree")}  # fmt: skip
    if next(model.parameters()).is_cuda:
        methods["ours-engine"] = ours("ours-engine", path="engine")
    return methods


@torch.inference_mode()
def first_tokens(model: torch.nn.Module, model32: torch.nn.Module, prompts: list[list[int]]) -> dict[str, Any]:
    """Greedy first token per prompt from each method, and agreement counts."""
    dev = next(model.parameters()).device
    alone = lambda m: [int(m(torch.tensor([p], device=dev)).logits[0, -1].float().argmax()) for p in prompts]
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=dev)
    mask = (torch.arange(width, device=dev)[None] >= torch.tensor([width - len(p) for p in prompts], device=dev)[:, None]).long()
    padded = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=1, do_sample=False, pad_token_id=0)
    tokens = {"fp32": alone(model32), "hf-unpadded": alone(model), "hf-padded": padded[:, -1].tolist(),
              "ours-hf": [t[0] for t in gpu_runner.generate(model, prompts, 1, path="hf")]}  # fmt: skip
    if dev.type == "cuda":
        tokens["ours-engine"] = [t[0] for t in gpu_runner.generate(model, prompts, 1, path="engine")]
    agree = lambda a, b: int(sum(x == y for x, y in zip(tokens[a], tokens[b])))
    return {"prompts": len(prompts),
            "agree_with_fp32": {k: agree(k, "fp32") for k in tokens if k != "fp32"},
            "agree_with_hf_unpadded": {k: agree(k, "hf-unpadded") for k in tokens if k not in ("fp32", "hf-unpadded")}}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="sheared-llama-1.3b")
    p.add_argument("--mmlu", type=int, default=128, help="MMLU contexts (x4 one-token requests)")
    p.add_argument("--hellaswag", type=int, default=32, help="HellaSwag-shaped contexts (x4 requests)")
    p.add_argument("--prompts", type=int, default=64, help="MMLU prompts for the first-token check")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="")
    p.add_argument("--smoke", action="store_true", help="tiny model, CPU, 4 contexts")
    a = p.parse_args(argv)
    if a.smoke:
        a.model, a.device, a.mmlu, a.hellaswag, a.prompts = "tiny", "cpu", 4, 2, 4
    model = build_model(a.model, device=a.device, dtype="bfloat16")
    model32 = copy.deepcopy(model).float()
    vocab = model.config.vocab_size
    lengths = load_lengths("mmlu")
    if a.smoke:
        lengths = np.minimum(lengths, 24)
    sets = {"mmlu": make_requests("mmlu", lengths[: a.mmlu], vocab),
            "hellaswag": make_requests("hellaswag", lengths[: a.hellaswag], vocab, seed=1)}  # fmt: skip
    gpu = torch.cuda.get_device_name() if a.device == "cuda" else "cpu"
    import transformers

    out: dict[str, Any] = {"gpu": gpu, "torch": torch.__version__, "transformers": transformers.__version__,
                           "model": a.model, "dtype": "bfloat16", "reference": "float32 copy, each request alone",
                           "sets": {}}  # fmt: skip
    for name, requests in sets.items():
        ref, ref_greedy = reference_scores(model32, requests)
        results = {k: v for run in score_methods(model).values() for k, v in run(requests).items()}
        unpadded, unpadded32 = np.array(results["hflm-1"][0]), np.array(results["hflm-1-fp32"][0])
        out["sets"][name] = {
            "requests": len(requests),
            **{m: {"vs_fp32": diff_stats(lls, ref), "vs_hflm_unpadded": diff_stats(lls, unpadded),
                   "vs_hflm_fp32_unpadded": diff_stats(lls, unpadded32),
                   "greedy_flag_mismatch_vs_fp32": int(np.sum(np.array(g) != ref_greedy))}
               for m, (lls, g) in results.items()},
        }  # fmt: skip
        print(name, json.dumps(out["sets"][name]), flush=True)
    prompts = [list(ctx) for ctx, _ in sets["mmlu"][:: 4][: a.prompts]]
    out["first_tokens"] = first_tokens(model, model32, prompts)
    print("first_tokens", json.dumps(out["first_tokens"]), flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
