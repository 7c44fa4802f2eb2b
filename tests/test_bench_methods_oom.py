"""The padded baseline's out-of-memory fallback (CPU, a stand-in model that runs out of
memory above a batch size): every prompt keeps its output, halves run after the failed
forward's exception is gone."""

from __future__ import annotations

import sys

import pytest
import torch

from gpu_runner.bench.methods import PaddedHF


class _Head(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(4, 2))


class _FitsAtMost(torch.nn.Module):
    """Returns its input ids; raises torch.OutOfMemoryError above `limit` prompts."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit, self.lm_head, self.in_handler = limit, _Head(), []

    def forward(self, input_ids, attention_mask, position_ids, use_cache):
        self.in_handler.append(sys.exc_info()[0] is not None)
        if input_ids.shape[0] > self.limit:
            raise torch.OutOfMemoryError("stand-in: out of memory")
        return input_ids


@pytest.mark.parametrize("n,limit,splits", [(8, 8, 0), (8, 3, 3), (5, 2, 2), (7, 1, 6)])
def test_out_of_memory_splits_keep_every_prompt(n, limit, splits):
    model = _FitsAtMost(limit)
    method = PaddedHF(model, name="padded", sort=False, chunk=None)
    prompts = [[i + 1] * (i + 1) for i in range(n)]
    outs = method.prefill(prompts)
    assert method.oom_splits == splits
    # every prompt is in exactly one successful output, in order (left padding: its last id)
    assert [int(row[-1]) for out in outs for row in out] == [i + 1 for i in range(n)]
    assert not any(model.in_handler), "a half ran inside the out-of-memory handler"


def test_a_single_prompt_that_does_not_fit_is_an_error():
    method = PaddedHF(_FitsAtMost(0), name="padded", sort=False, chunk=None)
    with pytest.raises(torch.OutOfMemoryError):
        method.prefill([[1, 2, 3]])
