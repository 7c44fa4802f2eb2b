"""Which execution paths are proven exact for a model, and the refusal for the rest.

This module is the one place that decides. Paths:

  dense, flex, varlen  `prefill` under that attention backend (HF's own modules, our mask);
  generate             `gpu_runner.generate` (a packed prefill, then HF `generate` from the cache);
  engine               `PrefillEngine` and the engine path of `generate` (our own kernels:
                       see `engine.support.engine_refusal`).

The rule is an allowlist. A model is supported on a runner path only when its
`model_type` is in `PROVEN[path]`, the table the model-zoo conformance test
(tests/test_model_zoo.py, regenerated with `python -m tests.zoo_matrix --write`) proved
exact against each prompt run alone under every transformers version it measured
(`MEASURED_VERSIONS`; a type exact under some only is `VERSION_DEPENDENT` and refused); the engine additionally needs every module and config
field of the model to be one it implements (`engine_refusal`). A config-dependent feature
is checked on top: a prompt longer than a local attention window (sliding windows, chunks)
runs only on the paths of `WINDOWED[path]`, the types the zoo proved with windowed masks
(gpu_runner.windows) on prompts longer than a tiny window; elsewhere it is refused.

Everything else raises `UnsupportedModelError` (a `ValueError`) naming the architecture
(model_type), the feature that stands in the way where one is recognized (QK-norm,
attention sinks, recurrent state, local attention, attention that bypasses transformers'
attention interface, ...), and the paths that would work. Features are read from the
config and the modules, never from version numbers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from gpu_runner.support_table import MEASURED_VERSIONS, PROVEN, VERSION_DEPENDENT, WINDOWED

__all__ = [
    "PATHS",
    "PROVEN",
    "WINDOWED",
    "Refusal",
    "UnsupportedModelError",
    "local_window",
    "model_type",
    "refusal",
    "require_supported",
    "supported_paths",
]

PATHS = ("dense", "flex", "varlen", "generate", "engine")
RUNNER_BACKENDS = ("dense", "flex", "varlen")


class UnsupportedModelError(ValueError):
    """A model (or prompt) that a path is not proven exact on; the message says why and
    which paths would work."""


@dataclass(frozen=True)
class Refusal:
    """Why `path` is refused for a model: `feature` (short name, e.g. "QK-norm"), `detail`
    (one sentence), `alternatives` (paths proven exact for this model)."""

    path: str
    model_type: str
    feature: str
    detail: str
    alternatives: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.path not in PATHS:
            raise ValueError(f"unknown path {self.path!r}; valid: {', '.join(PATHS)}")
        if not self.feature or not self.detail:
            raise ValueError("a refusal needs a feature and a detail")

    def message(self) -> str:
        where = (
            f"; proven exact for it: {', '.join(self.alternatives)}"
            if self.alternatives
            else "; no path of this library is proven exact for it"
        )
        return (
            f"{self.path!r} is not supported for model_type {self.model_type!r} "
            f"({self.feature}): {self.detail}{where}"
        )

    def error(self) -> UnsupportedModelError:
        return UnsupportedModelError(self.message())


# --------------------------------------------------------------------------- features

_probing = False  # set only by `probing()`: the zoo generator measures unchecked paths


@contextmanager
def probing() -> Iterator[None]:
    """Disable every check (for the zoo matrix generator only, which measures what is exact)."""
    global _probing
    before, _probing = _probing, True
    try:
        yield
    finally:
        _probing = before


def _config(model: torch.nn.Module) -> Any:
    from gpu_runner.plan import text_config

    return text_config(model.config)


def model_type(model: torch.nn.Module) -> str:
    """The model's `config.model_type` (the top-level one; composite models keep theirs)."""
    return str(getattr(model.config, "model_type", None) or type(model).__name__)


_RECURRENT_FIELDS = (
    "mamba_d_state", "state_size", "conv_kernel", "conv_L_cache", "linear_conv_kernel_dim",
    "mamba_d_conv", "lru_width", "conv1d_width", "time_step_rank",
)  # fmt: skip
_RECURRENT_LAYER_KINDS = ("mamba", "linear", "conv", "recurrent", "ssm", "deltanet", "rwkv", "lstm", "hybrid")


def _has_recurrent_state(model: torch.nn.Module, cfg: Any) -> bool:
    if any(getattr(cfg, f, None) for f in _RECURRENT_FIELDS):
        return True
    for field in ("layer_types", "layers_block_type", "block_types"):
        kinds = getattr(cfg, field, None) or ()
        if any(any(k in str(kind).lower() for k in _RECURRENT_LAYER_KINDS) for kind in kinds):
            return True
    return any(isinstance(m, torch.nn.Conv1d) for m in model.modules())


def _has_param(model: torch.nn.Module, *names: str) -> bool:
    return any(n.rsplit(".", 1)[-1] in names for n, _ in model.named_parameters())


def local_window(config: Any) -> int | None:
    """The smallest local-attention span any layer of the model uses (sliding window,
    Llama-4's attention chunk, GPT-Neo's local window), or None when every layer attends
    globally (no span field, `use_sliding_window=False`, or per-layer kinds with no local one)."""
    fields = (
        "sliding_window", "sliding_window_size", "attention_chunk_size", "window_size", "local_window_size",
        "local_attention",
    )  # fmt: skip
    spans = [
        v for v in (getattr(config, f, None) for f in fields)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0
    ]  # fmt: skip
    if not spans or getattr(config, "use_sliding_window", True) is False:
        return None
    kinds = getattr(config, "layer_types", None) or getattr(config, "attention_layers", None)
    local = ("sliding", "chunk", "local")
    if (
        kinds is not None
        and not getattr(config, "attention_chunk_size", None)
        and not any(word in str(kind).lower() for kind in kinds for word in local)
    ):
        return None
    return min(spans)


def _features(model: torch.nn.Module) -> list[tuple[str, str]]:
    """(feature, detail) for each recognized feature that can stand in the way of packing."""
    cfg = _config(model)
    found = []
    if getattr(model.config, "is_encoder_decoder", False) or getattr(cfg, "add_cross_attention", False):
        found.append(("encoder-decoder", "cross-attention over an encoder's output"))
    if _has_recurrent_state(model, cfg):
        found.append((
            "recurrent/SSM state",
            "a recurrent or convolutional state runs along the row, so it would flow from one packed prompt into the next",
        ))
    if _has_param(model, "sinks", "sink", "attention_sinks") or getattr(cfg, "use_sinks", False):
        found.append(("attention sinks", "learned sink logits that packed attention kernels here do not apply"))
    if not getattr(model, "_supports_attention_backend", True):
        found.append((
            "attention outside transformers' attention interface",
            "its attention ignores the attention-implementation switch and the packed mask format",
        ))
    if _has_param(model, "q_norm", "k_norm", "q_layernorm", "k_layernorm") or any(
        n.endswith(("q_norm.weight", "k_norm.weight", "q_layernorm.weight", "k_layernorm.weight"))
        for n, _ in model.named_parameters()
    ):
        found.append(("QK-norm", "query/key normalization"))
    if getattr(cfg, "keep_window_size", None):
        found.append((
            "dynamic attention mask",
            "keys are top-k selected over the whole row once it is longer than keep_window_size, "
            "so a packed row would select across prompts",
        ))
    if getattr(cfg, "alibi", False) or "alibi" in model_type(model):
        found.append(("ALiBi", "position biases computed from the attention mask"))
    return found


def _path_features(model: torch.nn.Module, path: str) -> list[tuple[str, str]]:
    """Features that stand in the way of one backend only."""
    found = []
    if path == "dense" and not getattr(model, "_supports_sdpa", True):
        found.append(("no sdpa support", "transformers has no sdpa attention for it, which the dense mask runs under"))
    if path == "flex" and not getattr(model, "_supports_flex_attn", True):
        found.append(("no flex support", "transformers has no flex attention for it"))
    if path == "varlen" and _has_param(model, "sinks", "sink", "attention_sinks"):
        found.append(("attention sinks", "the varlen kernel has no sink logits"))
    return found


def _not_proven(model: torch.nn.Module, path: str, features: list[tuple[str, str]]) -> tuple[str, str]:
    features = features + _path_features(model, path)
    if features:
        feature, detail = features[0]
        return feature, f"{detail}; the model-zoo test found this path not exact for it"
    if model_type(model) in VERSION_DEPENDENT.get(path, ()):
        return (
            "transformers-version dependent",
            "the model-zoo test found this path exact under some of the transformers versions it "
            f"measured ({', '.join(MEASURED_VERSIONS)}) and not under others",
        )
    return (
        "unverified architecture",
        "the model-zoo conformance test has not proven this path exact for this model type "
        "(see docs/support_matrix.md)",
    )


# Structural features refused on every path even for a proven model type: a tiny zoo
# config may lack the layers (e.g. convolution layers) that a real config of that type has,
# and a dynamic mask only differs once rows are longer than the zoo's (Doge: 2048 tokens).
_ALWAYS_REFUSED = ("recurrent/SSM state", "encoder-decoder", "dynamic attention mask")


def _runner_refusal(model: torch.nn.Module, path: str, features: list[tuple[str, str]]) -> tuple[str, str] | None:
    hard = [f for f in features if f[0] in _ALWAYS_REFUSED]
    if hard:
        return hard[0]
    if model_type(model) in PROVEN.get(path, ()):
        return None
    return _not_proven(model, path, features)


def refusal(
    model: torch.nn.Module, path: str, *, lengths: Sequence[int] | None = None
) -> Refusal | None:
    """None if `path` is proven exact for `model` (and these prompt lengths), else why not."""
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}; valid: {', '.join(PATHS)}")
    if _probing:
        return None
    reason = _reason(model, path, lengths)
    if reason is None:
        return None
    alternatives = tuple(p for p in PATHS if p != path and _reason(model, p, lengths) is None)
    return Refusal(path, model_type(model), reason[0], reason[1], alternatives)


def _reason(model: torch.nn.Module, path: str, lengths: Sequence[int] | None) -> tuple[str, str] | None:
    features = _features(model)
    if path == "engine":
        from gpu_runner.engine.support import engine_refusal

        # the engine runs its own kernels: the attention interface does not matter, and a
        # QK-norm is the engine's own decision (engine_refusal: Qwen3's is implemented)
        features = [f for f in features if not f[0].startswith("attention outside") and f[0] != "QK-norm"]
        found = features[0] if features else engine_refusal(model)
        if found is not None:
            return found
    found = _runner_refusal(model, path, features)
    if found is not None:
        return found
    cfg = _config(model)
    window = local_window(cfg)
    if window is not None and lengths and max(lengths) > window and not _windowed_ok(model, path, cfg, window):
        return (
            "local attention",
            f"a prompt of {max(lengths)} tokens is longer than the model's local attention span "
            f"({window} tokens: sliding window / attention chunk) and windowed packed masks are not "
            "proven exact for it on this path",
        )
    return None


def _windowed_ok(model: torch.nn.Module, path: str, cfg: Any, window: int) -> bool:
    """Prompts longer than the window: proven by the zoo's windowed check (`WINDOWED`) and
    the masks' layout covers the span `local_window` found (gpu_runner.windows)."""
    from gpu_runner.windows import window_layout

    if model_type(model) not in WINDOWED.get(path, ()):
        return False
    layout = window_layout(cfg)
    return layout is not None and layout.smallest == window


def supported_paths(model: torch.nn.Module, *, lengths: Sequence[int] | None = None) -> tuple[str, ...]:
    """The paths (of `PATHS`) proven exact for `model` (and these prompt lengths)."""
    return tuple(p for p in PATHS if refusal(model, p, lengths=lengths) is None)


def require_supported(
    model: torch.nn.Module, path: str, *, lengths: Sequence[int] | None = None
) -> None:
    """Raise `UnsupportedModelError` unless `path` is proven exact for `model` (and these
    prompt lengths); `ValueError` for an unknown path."""
    found = refusal(model, path, lengths=lengths)
    if found is not None:
        raise found.error()


def exact_backends(model: torch.nn.Module, *, lengths: Sequence[int] | None = None) -> tuple[str, ...]:
    """The runner backends (dense, flex, varlen) proven exact for `model`, in that order."""
    return tuple(p for p in RUNNER_BACKENDS if refusal(model, p, lengths=lengths) is None)


def backend_path(name: str) -> str | None:
    """The path a registered attention backend runs: dense / flex / varlen for ours (and the
    test-only "varlen-*" reference backends, which run varlen's plumbing); None for a
    third-party backend, whose exactness is its registrant's to prove."""
    if name in RUNNER_BACKENDS:
        return name
    if name.startswith("varlen-"):
        return "varlen"
    return None


def require_backend(model: torch.nn.Module, name: str, *, lengths: Sequence[int] | None = None) -> None:
    """`require_supported(model, backend_path(name))` for a registered backend name."""
    path = backend_path(name)
    if path is not None:
        require_supported(model, path, lengths=lengths)


def auto_backend(
    model: torch.nn.Module,
    device: torch.device,
    dtype: torch.dtype,
    *,
    lengths: Sequence[int] | None = None,
    packing: Any = None,
) -> str:
    """The backend `backend="auto"` runs: among varlen and dense, those proven exact for
    `model` that can run on `device` in `dtype`, the cheaper by the simulator's cost model
    (`attention.registry.auto_backend_name`'s rule); else flex if it is proven exact (e.g. Gemma 2 or
    GPT-OSS on CPU: no sdpa support); else `UnsupportedModelError` naming what is proven."""
    from gpu_runner.attention.registry import (
        AUTO_CANDIDATES,
        BACKENDS,
        cheapest_by_cost_model,
        gpu_table_name,
    )

    exact = exact_backends(model, lengths=lengths)
    runnable = [n for n in exact if n in BACKENDS and BACKENDS[n].unavailable(device, dtype) is None]
    candidates = [n for n in AUTO_CANDIDATES if n in runnable]
    if len(candidates) > 1 and packing is not None:
        gpu = gpu_table_name(device)
        choice = cheapest_by_cost_model(candidates, _config(model), packing, gpu) if gpu else None
        if choice is not None:
            return choice
    if candidates:
        return candidates[0]
    if "flex" in runnable:
        return "flex"
    if exact:
        raise UnsupportedModelError(
            f"backend 'auto': for model_type {model_type(model)!r} only {', '.join(exact)} "
            f"is proven exact, and it cannot run on {device.type} in {dtype}"
        )
    raise refusal(model, "dense", lengths=lengths).error()
