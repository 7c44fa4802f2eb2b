"""The end-to-end generation benchmark: workloads, methods, and one JSON of results.

This module owns what `benchmarks/generate_bench.py` measures (issue 14's "Must show"):
  workloads  mmlu-32 / mmlu-256: 64 MMLU prompt lengths (drawn with the seed, as the prefill
             benchmark's scenario a) x 32 / 256 new tokens, EOS ignored (fixed lengths);
             azure: the first N requests of the azure_conv trace with their real output
             lengths (azure_conv_output, capped at 1,000 new tokens; prompts cut so prompt +
             output fit the model's context, the count of cut prompts recorded)
  methods    hf-padded: HF `model.generate` on left-padded batches (`hf_batch` prompts per
             call in arrival order, each call as long as its longest output);
             hf-cb: HF continuous batching (`generate_batch` for fixed lengths; its manager
             with per-request max_new_tokens for the trace); each HF method makes one short
             untimed call first (8 prompts x 4 tokens: CUDA initialisation stays out);
             ours: `BatchGenerator` (prefill engine, CUDA-graph decode, packed refill), one
             warm-up pass on a slice of the workload first (graph captures), then timed
  records    wall time, new tokens/s, time-to-first-token percentiles (where the method
             exposes first-token times; every request is submitted at t = 0, so it includes
             queueing), requests completed within the method's time limit
Plus: a decode step at batch 64 (CUDA-event median over replays) against the time to read
the weights and the live KV once at the device copy bandwidth measured here, and
first-token agreement (`agreement_prompts` MMLU prompts) of ours and of HF padded with HF
run on each prompt alone, in the model's dtype and in float32.
Every record is written to the JSON as soon as it exists (a killed run keeps its data).
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np
import torch

from gpu_runner.engine.batch_generate import BatchGenerator
from gpu_runner.bench import build_model, draw_prompts, gpu_slug, load_lengths
from gpu_runner.bench.timing import kernel_times, release_memory, time_calls

__all__ = ["GENERATE_METHODS", "WORKLOADS", "GenerateBenchConfig", "Workload", "copy_bandwidth_bytes_per_s",
           "decode_step_probe", "make_workload", "run_generate_benchmark"]

WORKLOADS = ("mmlu-32", "mmlu-256", "azure")
GENERATE_METHODS = ("ours", "hf-padded", "hf-cb")


@dataclass(frozen=True)
class GenerateBenchConfig:
    """What to run: model (a key of bench.MODEL_SHAPES), workloads, methods, sizes and limits."""

    model: str = "llama-2-7b"
    workloads: tuple[str, ...] = WORKLOADS
    methods: tuple[str, ...] = GENERATE_METHODS
    batch: int = 64
    azure_requests: int = 2048  # the azure workload: the first this many requests of the trace
    max_new_cap: int = 1000  # the azure workload: output lengths capped here
    hf_batch: int = 64  # hf-padded: prompts per `model.generate` call
    time_limit_s: float = 120.0  # per (workload, method): no new work is started after this
    seed: int = 0
    device: str = "cuda"
    dtype: str = "bfloat16"
    out: str = ""
    scale_new_tokens: float = 1.0  # smoke runs shrink every output length by this factor
    policy: str = "refill-when-free"  # ours: the refill policy (a name of gpu_runner.schedule.POLICIES)
    policy_params: tuple[tuple[str, int], ...] = ()  # its int hyperparameters besides token_budget
    token_budget: int = 8192  # ours: tokens per packed refill prefill (the engine's pre-sized row)
    token_bucket: int = 128  # ours: the prefill engine's token bucket (fewer graphs when larger)
    max_batch: int = 256  # ours: most sequences decoding at once
    agreement_prompts: int = 512  # first-token agreement: this many MMLU prompts

    def __post_init__(self) -> None:
        from gpu_runner.bench import MODEL_SHAPES
        from gpu_runner.bench.common import check_choices

        check_choices("model", (self.model,), tuple(MODEL_SHAPES))
        check_choices("workload", self.workloads, WORKLOADS)
        check_choices("method", self.methods, GENERATE_METHODS)
        if min(self.batch, self.azure_requests, self.max_new_cap, self.hf_batch) < 1:
            raise ValueError("batch, azure_requests, max_new_cap and hf_batch must be >= 1")
        if not self.time_limit_s > 0 or not 0 < self.scale_new_tokens <= 1:
            raise ValueError("time_limit_s must be > 0 and scale_new_tokens in (0, 1]")
        if min(self.token_budget, self.token_bucket, self.max_batch, self.agreement_prompts) < 1:
            raise ValueError("token_budget, token_bucket, max_batch and agreement_prompts must be >= 1")
        self.make_policy()  # ValueError for an unknown policy or parameter

    def make_policy(self) -> Any:
        from gpu_runner.schedule import make_policy

        return make_policy(self.policy, token_budget=self.token_budget, **dict(self.policy_params))


@dataclass(frozen=True)
class Workload:
    """Prompts (token ids) and each one's number of new tokens (EOS ignored)."""

    name: str
    prompts: list[list[int]]
    new_tokens: list[int]
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.prompts or len(self.prompts) != len(self.new_tokens) or min(self.new_tokens) < 1:
            raise ValueError("a workload needs prompts and one new-token count >= 1 each")


def make_workload(name: str, cfg: GenerateBenchConfig, vocab_size: int, context: int) -> Workload:
    """The prompts and output lengths of workload `name` (see the module docstring)."""
    scale = cfg.scale_new_tokens
    if name.startswith("mmlu-"):
        lengths_all = load_lengths("mmlu")
        rng = np.random.default_rng(cfg.seed)
        lengths = lengths_all[rng.choice(len(lengths_all), size=min(cfg.batch, len(lengths_all)), replace=False)]
        new = max(1, int(int(name.split("-")[1]) * scale))
        lengths = np.minimum(lengths, context - new + 1)
        return Workload(name, draw_prompts(lengths, vocab_size, cfg.seed), [new] * len(lengths))
    if name == "azure":
        prompts_len = load_lengths("azure_conv")[: cfg.azure_requests]
        outputs = load_lengths("azure_conv_output")[: cfg.azure_requests]
        outputs = np.maximum(1, (np.minimum(outputs, cfg.max_new_cap) * scale).astype(np.int64))
        limit = context - outputs + 1  # prompt + output - 1 cached tokens fit the context
        cut = int((prompts_len > limit).sum())
        lengths = np.minimum(prompts_len, limit)
        return Workload(name, draw_prompts(lengths, vocab_size, cfg.seed), outputs.tolist(),
                        notes={"prompts_cut_to_context": cut, "context": context})
    raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")


# ---------------------------------------------------------------- measurements


def copy_bandwidth_bytes_per_s(device: torch.device, num_bytes: int = 2**31) -> float:
    """Device-to-device copy rate, bytes read plus bytes written per second (median of 10)."""
    n = num_bytes // 2
    a = torch.empty(n, dtype=torch.bfloat16, device=device).fill_(1)
    b = torch.empty_like(a)
    timing = time_calls(lambda: b.copy_(a), device=device, warmup=3, reps=10)
    return 2.0 * a.numel() * a.element_size() / (timing.median_ms * 1e-3)


def _percentiles(values: Sequence[float]) -> dict[str, float] | None:
    vals = [v for v in values if not np.isnan(v)]  # drop requests that never got a token
    if not vals:
        return None
    p = np.percentile(vals, [50, 90, 99])
    return {"p50": float(p[0]), "p90": float(p[1]), "p99": float(p[2])}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run_ours(model: Any, w: Workload, cfg: GenerateBenchConfig, device: torch.device) -> dict[str, Any]:
    gen = BatchGenerator(model, max_batch=cfg.max_batch, prefill_tokens=cfg.token_budget, token_bucket=cfg.token_bucket)
    policy = cfg.make_policy()
    t0 = time.perf_counter()
    warm = min(len(w.prompts), 256)  # graph captures (decode buckets, common prefill shapes) stay out
    gen.generate(w.prompts[:warm], [min(n, 8) for n in w.new_tokens[:warm]], policy=policy)
    _sync(device)
    warmup_s = time.perf_counter() - t0
    out = gen.generate(w.prompts, w.new_tokens, policy=policy)
    _sync(device)
    s = out.stats
    return dict(wall_s=s.wall_s, completed=len(w.prompts), new_tokens=sum(map(len, out.tokens)),
                ttft_s=_percentiles(s.first_token_s),
                notes=dict(warmup_s=warmup_s, decode_steps=s.decode_steps, prefills=s.prefills, max_live=s.max_live,
                           padded_rows=s.padded_rows, decode_graphs=gen.step.num_graphs,
                           prefill_graphs=gen.engine.num_graphs, kv_pages=gen.cache.num_pages,
                           kv_page_bytes=gen.layout.page_bytes, policy=asdict(policy)))


def _left_padded(prompts: Sequence[Sequence[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = np.zeros((len(prompts), width), dtype=np.int64)
    mask = np.zeros((len(prompts), width), dtype=np.int64)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = p
        mask[i, width - len(p):] = 1
    return torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)


def _warm_hf_padded(model: Any, w: Workload, device: torch.device) -> float:
    """One short untimed generate call (CUDA/cuBLAS initialisation, first-call allocations
    stay out of the timing, as ours keeps its graph captures out); returns its seconds."""
    t0 = time.perf_counter()
    ids, mask = _left_padded(w.prompts[:8], device)
    with torch.no_grad():
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0,
                       eos_token_id=None)
    _sync(device)
    return time.perf_counter() - t0


def _run_hf_padded(model: Any, w: Workload, cfg: GenerateBenchConfig, device: torch.device) -> dict[str, Any]:
    warmup_s = _warm_hf_padded(model, w, device)
    t0 = time.perf_counter()
    done = tokens = 0
    ttft: list[float] = []
    for first in range(0, len(w.prompts), cfg.hf_batch):
        if time.perf_counter() - t0 > cfg.time_limit_s:
            break
        chunk = w.prompts[first : first + cfg.hf_batch]
        news = w.new_tokens[first : first + cfg.hf_batch]
        ids, mask = _left_padded(chunk, device)
        with torch.no_grad():  # EOS off: every row runs the call's longest output
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max(news), do_sample=False,
                           pad_token_id=0, eos_token_id=None)
        _sync(device)
        # the first tokens exist when the call's prefill ends; the call returns them only at its end
        ttft.extend([time.perf_counter() - t0] * len(chunk))
        done += len(chunk)
        tokens += sum(news)
    return dict(wall_s=time.perf_counter() - t0, completed=done, new_tokens=tokens, ttft_s=_percentiles(ttft),
                notes={"ttft": "the end of each generate call (HF returns tokens only then)", "hf_batch": cfg.hf_batch,
                       "warmup_s": warmup_s})


def _generation_config(max_new: int) -> Any:
    from transformers import GenerationConfig

    return GenerationConfig(max_new_tokens=max_new, do_sample=False, pad_token_id=0, eos_token_id=None)


def _run_hf_cb(model: Any, w: Workload, cfg: GenerateBenchConfig, device: torch.device) -> dict[str, Any]:
    if not hasattr(model, "generate_batch"):
        raise RuntimeError("this transformers has no generate_batch (continuous batching)")
    params = inspect.signature(model.generate_batch).parameters
    kwargs = {k: v for k, v in (("progress_bar", False), ("record_timestamps", True)) if k in params}
    with torch.no_grad():  # untimed warm-up, as for the other methods
        model.generate_batch(inputs=[list(p) for p in w.prompts[:8]], generation_config=_generation_config(4), **kwargs)
    _sync(device)
    if len(set(w.new_tokens)) == 1:  # fixed lengths: the public one-call API
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate_batch(inputs=[list(p) for p in w.prompts],
                                       generation_config=_generation_config(w.new_tokens[0]), **kwargs)
        _sync(device)
        wall = time.perf_counter() - t0
        results = list(out.values())
        return dict(wall_s=wall, completed=len(results), new_tokens=sum(len(r.generated_tokens) for r in results),
                    ttft_s=_percentiles(_cb_first_token_s(results, t0)), notes={"api": "generate_batch"})
    return _run_hf_cb_manager(model, w, cfg, device)


def _cb_first_token_s(results: Sequence[Any], t0: float) -> list[float]:
    out = []
    for r in results:
        stamps = getattr(r, "timestamps", None)
        if stamps:
            out.append(float(stamps[0]) - t0)
    return out


def _run_hf_cb_manager(model: Any, w: Workload, cfg: GenerateBenchConfig, device: torch.device) -> dict[str, Any]:
    """Per-request output lengths through the continuous-batching manager, time-limited."""
    manager = model.init_continuous_batching(generation_config=_generation_config(max(w.new_tokens)))
    params = inspect.signature(manager.add_request).parameters
    extra = {"record_timestamps": True} if "record_timestamps" in params else {}
    t0 = time.perf_counter()
    manager.start()
    results: dict[str, Any] = {}
    progress: list[tuple[float, int, int]] = []  # (s since t0, requests finished, their new tokens), every ~30 s
    tokens = 0
    try:
        for i, (p, n) in enumerate(zip(w.prompts, w.new_tokens)):
            manager.add_request(list(p), request_id=f"r{i}", max_new_tokens=n, **extra)
        while len(results) < len(w.prompts) and time.perf_counter() - t0 < cfg.time_limit_s:
            r = manager.get_result(timeout=1)
            if r is not None and r.is_finished():
                results[r.request_id] = r
                tokens += len(r.generated_tokens)
            elif r is None and not manager.is_running():
                break
            now = time.perf_counter() - t0
            if not progress or now - progress[-1][0] >= 30:
                progress.append((round(now, 2), len(results), tokens))
    finally:
        wall = time.perf_counter() - t0
        manager.stop(block=True, timeout=30)
    done = list(results.values())
    return dict(wall_s=wall, completed=len(done), new_tokens=sum(len(r.generated_tokens) for r in done),
                ttft_s=_percentiles(_cb_first_token_s(done, t0)),
                notes={"api": "init_continuous_batching manager", "progress_s_finished_tokens": progress,
                       "cut_runs": "HF hands a request back only when it finishes: tokens of unfinished requests are "
                                   "not counted, so a cut run's tokens/s is a lower bound"})


_RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {"ours": _run_ours, "hf-padded": _run_hf_padded,
                                                       "hf-cb": _run_hf_cb}


def decode_step_probe(model: Any, w: Workload, device: torch.device, copy_bw: float, *,
                       attention_kernel: str = "split", attention_splits: int | None = None,
                       kernels: bool = False) -> dict[str, Any]:
    """A decode step at batch len(w.prompts) (64), each sequence in the middle of its output
    (cache = prompt + half the new tokens): median ms of `DecodeStep.run` (host staging and
    the graph) and of the graph replay alone, against the bytes of the weights and the live
    KV read once at the copy bandwidth (bytes read + written per second). attention_kernel,
    attention_splits: the decode step's attention (`DecodeStep`); kernels: add the replay's
    per-kernel times (`timing.kernel_times`, CUDA graphs only) and the attention kernels' sum."""
    n = len(w.prompts)
    gen = BatchGenerator(model, max_batch=n)
    gen.step.attention_kernel, gen.step.attention_splits = attention_kernel, attention_splits  # before any capture
    eng, cache = gen.engine, gen.cache
    lengths = [len(p) for p in w.prompts]
    slots = [cache.admit(L + w.new_tokens[i]) for i, L in enumerate(lengths)]
    pos = [L + w.new_tokens[i] // 2 for i, L in enumerate(lengths)]
    ids = [1] * n
    call = lambda: gen.step.run(ids, pos, slots)  # noqa: E731
    step = time_calls(call, device=device, warmup=3, reps=30)
    replay_ms = per_kernel = None
    if gen.step.num_graphs:
        graph = gen.step._graphs[gen.step.bucket(n)][0]
        replay_ms = time_calls(graph.replay, device=device, warmup=3, reps=30).median_ms
        if kernels:
            per_kernel = {k: asdict(t) for k, t in kernel_times(graph.replay, device=device, warmup=2, reps=5).items()}
    weights = [eng.lm_head, eng.final_norm] + [t for w_ in eng.layers for t in (w_.ln1, w_.qkv, w_.qkv_bias, w_.o,
                                                                               w_.ln2, w_.gate_up, w_.down) if t is not None]
    weight_bytes = sum(t.numel() * t.element_size() for t in weights) + n * eng.embed.shape[1] * eng.embed.element_size()
    kv_bytes = sum(p + 1 for p in pos) * gen.layout.token_bytes
    read_ms = (weight_bytes + kv_bytes) / copy_bw * 1e3
    out = dict(batch=n, attention_kernel=attention_kernel, attention_splits=attention_splits, step_ms=step.median_ms,
               replay_ms=replay_ms, weight_bytes=weight_bytes, live_kv_bytes=kv_bytes, read_once_ms=read_ms,
               step_over_read=step.median_ms / read_ms, replay_over_read=(replay_ms / read_ms) if replay_ms else None)
    if per_kernel is not None:
        out["kernels"] = per_kernel
        out["attention_ms"] = sum(t["ms"] for k, t in per_kernel.items() if k.lstrip("_").startswith(_ATTENTION_KERNELS))
        out["kv_read_once_ms"] = kv_bytes / copy_bw * 1e3
    return out


_ATTENTION_KERNELS = ("split_kernel", "reduce_kernel", "decode_attention_kernel")  # decode_kernels' Triton kernels


def _first_token_agreement(model: Any, w: Workload, hf_batch: int, device: torch.device) -> dict[str, Any]:
    """First greedy tokens of ours (one packed batch) and of HF on left-padded batches of
    `hf_batch`, each compared with HF on every prompt alone (unpadded, the model's dtype) and,
    where the model is not float32 already, with a float32 copy of the model on every prompt
    alone (the exact answer both roundings miss). For each disagreement with the unpadded run,
    its top logit minus its logit of the token chosen: near ties (random weights) show as
    small gaps."""
    prompts = w.prompts
    ours = [t[0] for t in BatchGenerator(model, max_batch=min(256, len(prompts))).generate(prompts, 1).tokens]
    with torch.no_grad():
        alone_logits = [model(torch.tensor([p], device=device)).logits[0, -1].float() for p in prompts]
        alone = [int(row.argmax()) for row in alone_logits]
        padded: list[int] = []
        for first in range(0, len(prompts), hf_batch):
            ids, mask = _left_padded(prompts[first : first + hf_batch], device)
            pos = (mask.cumsum(-1) - 1).clamp_(min=0)
            padded += model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1].argmax(-1).tolist()
        exact = alone
        if model.dtype != torch.float32:
            reference = copy.deepcopy(model).float()
            exact = [int(reference(torch.tensor([p], device=device)).logits[0, -1].argmax()) for p in prompts]
            del reference
            release_memory(device)

    def agree(xs: list[int], ref: list[int]) -> float:
        return float(np.mean([a == b for a, b in zip(xs, ref)]))

    def gaps(xs: list[int]) -> dict[str, Any]:
        g = [float(row.max() - row[x]) for row, x, a in zip(alone_logits, xs, alone) if x != a]
        return {"disagreements": len(g), "median_gap": float(np.median(g)) if g else None, "max_gap": max(g, default=None)}

    return {"prompts": len(prompts), "hf_batch": hf_batch, "ours_vs_unpadded": agree(ours, alone),
            "hf_padded_vs_unpadded": agree(padded, alone), "ours_vs_float32": agree(ours, exact),
            "hf_padded_vs_float32": agree(padded, exact), "hf_unpadded_vs_float32": agree(alone, exact),
            "ours_gap_to_unpadded_top": gaps(ours), "hf_padded_gap_to_unpadded_top": gaps(padded),
            "float32_reference": model.dtype != torch.float32}


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"


class _Doc:
    """The result document, rewritten after every addition."""

    def __init__(self, path: str, head: dict[str, Any]) -> None:
        self.path, self.data = path, {**head, "records": []}

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        self._write()

    def add(self, rec: dict[str, Any]) -> None:
        self.data["records"].append(rec)
        shown = f"{rec['wall_s']:8.2f} s {rec['tokens_per_s']:10.1f} tok/s" if rec.get("wall_s") else f"ERROR {rec['error']}"
        print(f"[{rec['workload']:8s} {rec['method']:9s}] {shown} ({rec.get('completed')}/{rec['requests']})", flush=True)
        self._write()

    def _write(self) -> None:
        if self.path:
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.data, f, indent=1)
            os.replace(tmp, self.path)


def _speedups(records: list[dict[str, Any]]) -> None:
    """ours' tokens/s over each other method's, per workload (= the wall-time ratio when both
    completed every request)."""
    for rec in records:
        if rec["method"] != "ours" or not rec.get("tokens_per_s"):
            continue
        rec["speedup_vs"] = {o["method"]: rec["tokens_per_s"] / o["tokens_per_s"] for o in records
                             if o["workload"] == rec["workload"] and o["method"] != "ours" and o.get("tokens_per_s")}


def run_generate_benchmark(cfg: GenerateBenchConfig) -> dict[str, Any]:
    """Run the configured workloads and methods, the decode-step probe and the agreement check;
    return (and write to cfg.out) the result document."""
    import transformers

    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda asked for, but CUDA is not available (use --smoke)")
    head = dict(gpu=gpu_slug(device), gpu_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                torch=torch.__version__, transformers=transformers.__version__, config=asdict(cfg))
    doc = _Doc(cfg.out, head)
    model = build_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    context = int(model.config.max_position_embeddings)
    copy_bw = copy_bandwidth_bytes_per_s(device, 2**31 if device.type == "cuda" else 2**24)
    doc.set("copy_bandwidth_bytes_per_s", copy_bw)
    print(f"gpu={head['gpu']} copy {copy_bw / 1e12:.2f} TB/s (read + write)", flush=True)
    workloads = {name: make_workload(name, cfg, model.config.vocab_size, context) for name in cfg.workloads}
    # HF continuous batching may switch the model's attention implementation: it runs last
    order = [m for m in cfg.methods if m != "hf-cb"] + [m for m in cfg.methods if m == "hf-cb"]
    for method in order:
        for name, w in workloads.items():
            base = dict(workload=name, method=method, requests=len(w.prompts), workload_notes=w.notes,
                        time_limit_s=cfg.time_limit_s)
            try:
                res = _RUNNERS[method](model, w, cfg, device)
                res["tokens_per_s"] = res["new_tokens"] / res["wall_s"]
                res["truncated"] = res["completed"] < len(w.prompts)
                rec = {**base, **res, "error": None}
            except Exception as exc:  # noqa: BLE001 - one method failing must not lose the others
                rec = {**base, "wall_s": None, "tokens_per_s": None, "error": _error_text(exc)}
            release_memory(device)
            doc.add(rec)
            _speedups(doc.data["records"])
        if method == "ours":  # probes before HF continuous batching touches the model
            mmlu = make_workload("mmlu-256", cfg, model.config.vocab_size, context)
            agreement = make_workload("mmlu-1", replace(cfg, batch=cfg.agreement_prompts), model.config.vocab_size,
                                      context)
            for key, probe in (("decode_step", partial(decode_step_probe, model, mmlu, device, copy_bw)),
                               ("first_token_agreement", partial(_first_token_agreement, model, agreement, cfg.hf_batch, device))):
                try:
                    doc.set(key, probe())
                except Exception as exc:  # noqa: BLE001
                    doc.set(key, {"error": _error_text(exc)})
                release_memory(device)
                print(f"{key}: {doc.data[key]}", flush=True)
    doc.set("records", doc.data["records"])
    return doc.data
