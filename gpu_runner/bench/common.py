"""What every benchmark shares (prepack-bench, the sweep, the multi-GPU benchmark and the
experiments): model shapes and `build_model`, prompt lengths and random prompts, the
real-token FLOP count, the GPU slug of records and file names, and the one-line error text
of a failed measurement."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simulator.gpus import match_gpu
from simulator.specs import ModelSpec

__all__ = [
    "MODEL_SHAPES", "bench_device", "build_model", "draw_prompts", "error_text", "gpu_slug", "load_lengths", "real_token_flops",
    "stream_batches",
]

# Model shapes (random weights): config fields, "model_type" (default llama) picking the
# architecture. max_position_embeddings covers the datasets. Besides Llama: the engine's other
# families at their published sizes (Qwen3-8B: QK-norm; Gemma-7B: GeLU-tanh MLP, (1 + w) norms,
# scaled embedding, head_dim 256; Phi-3-mini: fused qkv / gate_up weights, head_dim 96).
MODEL_SHAPES: dict[str, dict[str, Any]] = {
    "llama-2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096),
    "sheared-llama-1.3b": dict(hidden_size=2048, intermediate_size=5504, num_hidden_layers=24, num_attention_heads=16,
                               num_key_value_heads=16, vocab_size=32000, max_position_embeddings=4096),
    "qwen3-8b": dict(model_type="qwen3", hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                     max_position_embeddings=4096, tie_word_embeddings=False),
    "gemma-7b": dict(model_type="gemma", hidden_size=3072, intermediate_size=24576, num_hidden_layers=28,
                     num_attention_heads=16, num_key_value_heads=16, head_dim=256, vocab_size=256000,
                     max_position_embeddings=4096, hidden_act="gelu_pytorch_tanh"),
    "phi-3-mini": dict(model_type="phi3", hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, vocab_size=32064,
                       max_position_embeddings=4096, tie_word_embeddings=False),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1000, max_position_embeddings=2048),
}
_REPO = Path(__file__).resolve().parents[2]
_LENGTH_DIRS = (_REPO / "simulator" / "data", _REPO / "benchmarks" / "data", _REPO.parent / "shared" / "data" / "lengths")


def bench_device(name: str) -> torch.device:
    """The device a benchmark runs on: "cpu", "cuda" or "cuda:N" (CUDA available);
    `ValueError` saying why otherwise (e.g. "tpu"), before any model is built."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {name!r} is not supported; use cpu or cuda") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r} is not supported; use cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda asked for, but CUDA is not available (use --device cpu or --smoke)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


def load_lengths(dataset: str) -> np.ndarray:
    """Prompt lengths (tokens) of a named length list, e.g. 'mmlu'; ValueError if none found."""
    for folder in _LENGTH_DIRS:
        path = folder / f"{dataset}.txt"
        if path.is_file():
            return np.loadtxt(path, dtype=np.int64, ndmin=1)
    raise ValueError(f"no length list {dataset!r}.txt in {', '.join(str(d) for d in _LENGTH_DIRS)}")


def draw_prompts(lengths: Sequence[int], vocab_size: int, seed: int) -> list[list[int]]:
    """Random token ids (1 .. vocab-1) for prompts of the given lengths."""
    lengths = np.asarray(lengths, dtype=np.int64)
    rng = np.random.default_rng(seed)
    flat = rng.integers(1, vocab_size, size=int(lengths.sum()), dtype=np.int64)
    return [a.tolist() for a in np.split(flat, np.cumsum(lengths)[:-1])]


def stream_batches(lengths: np.ndarray, batch: int, vocab_size: int, seed: int, limit: int = 0) -> list[list[list[int]]]:
    """All prompts of a length list, shuffled with `seed`, in batches of `batch` (last one short)."""
    order = np.random.default_rng(seed).permutation(len(lengths))
    if limit:
        order = order[: limit * batch]
    prompts = draw_prompts(lengths[order], vocab_size, seed + 1)
    return [prompts[i : i + batch] for i in range(0, len(prompts), batch)]


def build_model(name: str, *, device: str, dtype: str) -> torch.nn.Module:
    """A random-weight model of shape `name` (`MODEL_SHAPES`), built directly on `device`
    (no CPU init)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    shape = dict(MODEL_SHAPES[name])
    cfg = AutoConfig.for_model(shape.pop("model_type", "llama"), **shape, attn_implementation="sdpa", pad_token_id=0)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype))
    return model.eval().requires_grad_(False)  # inference: no autograd state in any method


def real_token_flops(config: Any, lengths: Sequence[int]) -> float:
    """Matmul FLOPs of the real tokens of one prefill (no padding, no wasted attention).

    linear:    2 * sum(l) * layers * ModelSpec.layer_matmul_params (QKV, O, gated MLP)
    attention: layers * 4 * Hq * D * sum(l (l + 1) / 2)     (QK^T and PV, causal half)
    lm_head:   2 * N * hidden * vocab                         (last token of each prompt)
    """
    spec = ModelSpec.from_hf_config(config)  # the simulator's shape formulas (layer_matmul_params)
    lengths = np.asarray(lengths, dtype=np.float64)
    linear = 2.0 * lengths.sum() * spec.num_layers * spec.layer_matmul_params
    attention = spec.num_layers * 4.0 * spec.q_width * float((lengths * (lengths + 1) / 2).sum())
    return linear + attention + 2.0 * len(lengths) * spec.hidden_size * spec.vocab_size


def gpu_slug(device: torch.device) -> str:
    """Short card name for records and file names: the simulator GPU table's family (h100,
    h200, a100, l4, ...; `simulator.gpus.match_gpu`), else the device's name as a slug; 'cpu'."""
    if device.type != "cuda":
        return "cpu"
    label = torch.cuda.get_device_name(device)
    try:
        return match_gpu(label).split("-")[0]
    except ValueError:
        return "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-")


def error_text(exc: BaseException, limit: int = 300) -> str:
    """One line for a failed measurement's record: "Type: first line of the message"."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:limit] if str(exc) else ''}"


def check_choices(what: str, given: Iterable[str], known: Sequence[str]) -> None:
    """ValueError naming the first of `given` not in `known` (a config's validation)."""
    for name in given:
        if name not in known:
            raise ValueError(f"unknown {what} {name!r}; choose from {', '.join(known)}")
