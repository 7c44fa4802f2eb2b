"""Refill policies (`gpu_runner.schedule`): the registry, the select contract on synthetic
queues, and the schedule count behind the default: on one CPU workload, greedy tokens do not
depend on the policy, and "refill-when-free" needs the fewest decode steps and padded
token-steps (it also runs the most prefills: on the GPU the lead's measurement decides)."""

from __future__ import annotations

import numpy as np
import pytest
from test_runner_support import tiny_model

from gpu_runner.engine.batch_generate import BatchGenerator
from gpu_runner.schedule import DEFAULT_POLICY, POLICIES, BatchRefill, RefillWhenFree, make_policy


def _select(policy, live=0, waiting=None, free_slots=8, free_pages=100, tokens=(10, 20, 30), pages=(1, 1, 1)):
    return policy.select(live=live, waiting=len(tokens) if waiting is None else waiting, free_slots=free_slots,
                         free_pages=free_pages, prompt_tokens=list(tokens), kv_pages=list(pages))


def test_registry():
    assert set(POLICIES) == {"refill-when-free", "batch-refill"} and DEFAULT_POLICY == "refill-when-free"
    assert make_policy() == RefillWhenFree()
    assert make_policy("batch-refill", min_free=3, token_budget=64) == BatchRefill(min_free=3, token_budget=64)
    assert make_policy("gpu_runner.schedule:BatchRefill", min_free=2).min_free == 2
    for name, params, match in (("nope", {}, "unknown refill policy"), ("batch-refill", {"min_free": 0}, "min_free"),
                                ("refill-when-free", {"token_budget": 0}, "token_budget"),
                                ("refill-when-free", {"packer": "nope"}, "unknown packer"),
                                ("refill-when-free", {"bogus": 1}, "bad parameters"),
                                ("gpu_runner.schedule:Nope", {}, "cannot load")):
        with pytest.raises(ValueError, match=match):
            make_policy(name, **params)


def test_select_contract():
    p = RefillWhenFree(token_budget=40)
    # the packed row holding the head under the budget: 10 + 30 (FFD puts 30 first, 10 fits)
    assert _select(p) == [0, 2]
    assert _select(p, free_slots=2) == [0, 1]  # only the first two are eligible
    assert _select(p, tokens=(50, 5, 5)) == [0]  # a head over the budget goes alone
    assert _select(p, free_pages=1, pages=(1, 1, 1)) == [0]
    assert _select(p, free_pages=3, pages=(2, 2, 1)) == [0]  # FIFO: the third may not overtake the second
    assert _select(p, free_pages=1, pages=(2, 1, 1)) == []  # the head waits for pages
    b = BatchRefill(min_free=3, token_budget=100)
    assert _select(b, live=5, free_slots=2) == []  # waits for 3 free slots
    assert _select(b, live=5, free_slots=3) == [0, 1, 2]
    assert _select(b, live=5, free_slots=2, tokens=(10, 20), pages=(1, 1)) == [0, 1]  # the rest of the queue
    assert _select(b, live=0, free_slots=1) == [0]  # nothing live: progress


def test_default_policy_has_fewest_decode_steps_and_tokens_do_not_depend_on_the_policy():
    model = tiny_model("llama")
    rng = np.random.default_rng(0)
    lengths = np.minimum(rng.lognormal(3.0, 0.8, 40).astype(int) + 1, 100)
    news = rng.integers(1, 20, 40).tolist()
    prompts = [rng.integers(0, 96, n).tolist() for n in lengths]
    gen = BatchGenerator(model, max_batch=12, page_tokens=8, prefill_tokens=256)
    runs = {name: gen.generate(prompts, news, policy=make_policy(name, token_budget=128, **kw))
            for name, kw in (("refill-when-free", {}), ("batch-refill", {"min_free": 6}))}
    free, batch = runs["refill-when-free"], runs["batch-refill"]
    assert free.tokens == batch.tokens
    assert free.stats.decode_steps < batch.stats.decode_steps
    assert free.stats.padded_rows < batch.stats.padded_rows
    assert free.stats.prefills > batch.stats.prefills
    assert free.stats.decode_rows == batch.stats.decode_rows == sum(news) - len(news)
