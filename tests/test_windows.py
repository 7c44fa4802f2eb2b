"""Windowed packed masks (gpu_runner.windows, attention/masks.py): the layout read from a
config, and the masks' rule against a per-prompt construction of HF's rule."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from gpu_runner.attention.masks import dense_block_causal_mask, packed_masks, prompt_offsets
from gpu_runner.windows import LocalSpan, WindowLayout, window_layout

SEGMENTS = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 1, 1, 1, -1, -1], [2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, -1]])


def _alone(n: int, span: LocalSpan) -> torch.Tensor:
    q = torch.arange(n)[:, None]
    k = torch.arange(n)[None, :]
    rule = (k > q - span.size) if span.kind == "sliding" else (k // span.size == q // span.size)
    return (k <= q) & rule


@pytest.mark.parametrize("span", [LocalSpan("sliding", 3), LocalSpan("chunked", 3), LocalSpan("sliding", 1)])
def test_dense_mask_applies_the_rule_within_each_prompt(span):
    mask = dense_block_causal_mask(SEGMENTS, span)[:, 0]
    offsets = prompt_offsets(SEGMENTS)
    for row in range(SEGMENTS.shape[0]):
        for seg in SEGMENTS[row].unique().tolist():
            idx = (SEGMENTS[row] == seg).nonzero().flatten()
            if seg < 0:
                continue
            assert offsets[row, idx].tolist() == list(range(idx.numel()))
            assert torch.equal(mask[row][idx][:, idx], _alone(idx.numel(), span))
        other = SEGMENTS[row][:, None] != SEGMENTS[row][None, :]
        assert not mask[row][other].any()


def test_flex_mask_matches_dense():
    pytest.importorskip("torch.nn.attention.flex_attention")
    from torch.nn.attention.flex_attention import create_mask

    from gpu_runner.attention.masks import document_causal_mask_mod

    span = LocalSpan("chunked", 4)
    dense = dense_block_causal_mask(SEGMENTS, span)
    rows, length = SEGMENTS.shape
    flex = create_mask(document_causal_mask_mod(SEGMENTS, span), rows, 1, length, length, device="cpu")
    assert torch.equal(flex, dense)


def test_layouts_from_configs():
    hybrid = SimpleNamespace(layer_types=["chunked_attention", "full_attention"], attention_chunk_size=8, sliding_window=None)
    layout = window_layout(hybrid)
    assert layout == WindowLayout((("chunked_attention", LocalSpan("chunked", 8)), ("full_attention", None)), keyed=True)
    masks = packed_masks(SEGMENTS, layout, dense_block_causal_mask)
    assert set(masks) == {"chunked_attention", "full_attention"}
    assert torch.equal(masks["full_attention"], dense_block_causal_mask(SEGMENTS))
    mistral = SimpleNamespace(sliding_window=4, attention_chunk_size=None)
    assert window_layout(mistral) == WindowLayout((("sliding_attention", LocalSpan("sliding", 4)),), keyed=False)
    assert window_layout(SimpleNamespace(sliding_window=4, use_sliding_window=False)) is None
    assert window_layout(SimpleNamespace(layer_types=["linear_attention", "full_attention"], sliding_window=4)) is None
    assert window_layout(SimpleNamespace(layer_types=["sliding_attention"], sliding_window=None)) is None


def test_spans_validate():
    with pytest.raises(ValueError, match="kind"):
        LocalSpan("dilated", 4)
    with pytest.raises(ValueError, match="size"):
        LocalSpan("sliding", 0)
    with pytest.raises(ValueError, match="one mask"):
        WindowLayout((("a", None), ("b", None)), keyed=False)
