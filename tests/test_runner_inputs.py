"""Properties of `pack_inputs` on random length mixes and every registered packer: each
prompt's tokens sit contiguously in its row, positions restart, segment ids and cu_seqlens
describe exactly the prompts and padding runs, last_index points at each last token."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpu_runner
import packers

FAST_PACKERS = [p for p in packers.available_packers() if p != "ilp"]


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 40), min_size=1, max_size=30),
    packer=st.sampled_from(FAST_PACKERS),
    extra_len=st.integers(0, 5),
    extra_rows=st.integers(0, 2),
    seed=st.integers(0, 2**16),
)
def test_pack_inputs_layout(lengths, packer, extra_len, extra_rows, seed):
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(1, 1000, n).tolist() for n in lengths]
    packing = packers.make_packer(packer).pack(lengths, max(lengths))
    row_len, num_rows = packing.max_load + extra_len, packing.num_bins + extra_rows
    x = gpu_runner.pack_inputs(prompts, packing, row_len=row_len, num_rows=num_rows, pad_token_id=7)
    assert x.input_ids.shape == (num_rows, row_len) and x.num_real_tokens == sum(lengths)
    ids, pos, seg = x.input_ids.numpy(), x.position_ids.numpy(), x.segment_ids.numpy()
    for i, prompt in enumerate(prompts):
        r, s, n = int(x.row_of[i]), int(x.start_of[i]), int(x.lengths[i])
        assert n == len(prompt)
        assert ids[r, s : s + n].tolist() == prompt
        assert pos[r, s : s + n].tolist() == list(range(n))
        assert (seg[r, s : s + n] == i).all()
        assert int(x.last_index[i]) == r * row_len + s + n - 1
        assert i in packing.bins[r]
    pad = seg == -1
    assert pad.sum() == num_rows * row_len - sum(lengths)
    assert (ids[pad] == 7).all() and (pos[pad] == 0).all()
    # Placement order inside each row follows the bin.
    for r, members in enumerate(packing.bins):
        assert [int(x.start_of[i]) for i in members] == sorted(int(x.start_of[i]) for i in members)
    # cu_seqlens: boundaries of constant-segment runs in the flat stream, never across rows.
    cu = x.cu_seqlens.numpy()
    assert cu[0] == 0 and cu[-1] == num_rows * row_len and (np.diff(cu) > 0).all()
    flat = seg.reshape(-1)
    for a, b in zip(cu[:-1], cu[1:]):
        assert (flat[a:b] == flat[a]).all() and a // row_len == (b - 1) // row_len
    assert x.max_seqlen == int(np.diff(cu).max())


@pytest.mark.parametrize("bad", [{"row_len": 3}, {"num_rows": 1}])
def test_pack_inputs_rejects_too_small_shapes(bad):
    packing = packers.make_packer("pad").pack([4, 2], 4)
    with pytest.raises(ValueError, match="row_len|num_rows"):
        gpu_runner.pack_inputs([[1] * 4, [2] * 2], packing, **bad)
