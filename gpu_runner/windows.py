"""Local attention of a model's layers (sliding windows, Llama-4 chunks) as packed masks see it.

HF's rule for one prompt alone (masking_utils, 5.17 and 5.25 alike), token indices q >= k:
  sliding window w:  k > q - w           (q - k < w)
  chunk c:           k // c == q // c    (same chunk of the prompt)
Packed rows apply it to each token's index within its own prompt, on top of the
block-diagonal causal mask.

`window_layout(config)` reads which rule each layer kind follows: per-layer `layer_types`
("full_attention", "sliding_attention", "chunked_attention"; the decoder then takes a dict of
masks keyed by layer type) or one Mistral-style `sliding_window` for every layer (one mask).
A layer kind it does not know, or a window field it cannot place, gives None: no windowed
mask is built for that model (the caller refuses).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["LocalSpan", "WindowLayout", "window_layout"]

_KINDS = ("sliding", "chunked")


@dataclass(frozen=True)
class LocalSpan:
    """One local-attention rule: `kind` "sliding" (q - k < size) or "chunked" (same
    size-token chunk), `size` tokens >= 1."""

    kind: str
    size: int

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"local span kind must be one of {_KINDS}, got {self.kind!r}")
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"local span size must be an int >= 1, got {self.size!r}")


@dataclass(frozen=True)
class WindowLayout:
    """The masks a windowed packed forward passes.

    spans:  (layer type, span or None for full causal) per layer type the model has.
    keyed:  True: pass `attention_mask` as a dict {layer type: mask} (decoders with
            `layer_types`); False: one mask for every layer (spans has one entry).
    """

    spans: tuple[tuple[str, LocalSpan | None], ...]
    keyed: bool

    def __post_init__(self) -> None:
        if not self.spans:
            raise ValueError("a window layout needs at least one layer type")
        if not self.keyed and len(self.spans) != 1:
            raise ValueError("an unkeyed window layout has one mask for every layer")

    @property
    def smallest(self) -> int | None:
        sizes = [span.size for _, span in self.spans if span is not None]
        return min(sizes) if sizes else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def window_layout(config: Any) -> WindowLayout | None:
    """How `config`'s layers attend locally, or None where that is unknown to this module."""
    kinds = getattr(config, "layer_types", None)
    sliding = _int(getattr(config, "sliding_window", None))
    chunk = _int(getattr(config, "attention_chunk_size", None))
    if kinds:
        spans: dict[str, LocalSpan | None] = {}
        for kind in dict.fromkeys(str(k) for k in kinds):
            if kind == "full_attention":
                spans[kind] = None
            elif kind == "sliding_attention" and sliding is not None:
                spans[kind] = LocalSpan("sliding", sliding)
            elif kind == "chunked_attention" and chunk is not None:
                spans[kind] = LocalSpan("chunked", chunk)
            else:
                return None
        return WindowLayout(tuple(spans.items()), keyed=True)
    if sliding is not None and chunk is None and getattr(config, "use_sliding_window", True) is not False:
        return WindowLayout((("sliding_attention", LocalSpan("sliding", sliding)),), keyed=False)
    return None
