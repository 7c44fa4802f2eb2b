"""Exclusive, inference-mode use of one model for the length of one gpu_runner call.

`prefill`, `generate` and `score` / `score_rolling` switch the model's attention
implementation for a call (attention/switch.py) and must run without dropout. Both are
model state other callers can see, so every such call runs inside `inference_call(model)`:

- a per-model re-entrant lock is held for the whole call: concurrent calls on one model
  (from threads, with any mix of backends) run one after another, each exact; calls on
  different models still run in parallel; a call made inside another on the same thread
  (`generate` -> `prefill`) re-enters;
- every module is put in eval mode (no dropout, whatever mode the caller left the model in)
  and the modules that were training are set back to training when the call ends;
- the attention implementation, if given, is switched and restored inside the lock.

The lock covers gpu_runner's calls only: a caller who runs `model(...)` or `model.train()`
directly from another thread while a gpu_runner call is in flight is not serialized.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from gpu_runner.attention.switch import attention_implementation

__all__ = ["inference_call", "model_lock"]

_LOCKS: weakref.WeakKeyDictionary[torch.nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: torch.nn.Module) -> threading.RLock:
    """The re-entrant lock every gpu_runner call on `model` holds (one per model object)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


@contextmanager
def inference_call(model: torch.nn.Module, implementation: str | None = None) -> Iterator[None]:
    """Run the block with `model` to itself, in eval mode, under no_grad, and under the
    attention `implementation` (None: the model's own); restore the modules' training
    flags and the implementation afterwards, also when the block raises."""
    with model_lock(model):
        training = [m for m in model.modules() if m.training]
        model.eval()
        try:
            with torch.no_grad():
                if implementation is None:
                    yield
                else:
                    with attention_implementation(model, implementation):
                        yield
        finally:
            for m in training:
                m.training = True
