"""Attention backends: how a packed forward keeps prompts apart.

registry (AttentionBackend, register_backend, get_backend, the "auto" rule), switch (the
model's attention implementation for the length of a call), masks (dense and flex masks
from segment ids), and one module per built-in backend, each registering itself with its
forward kwargs, availability and extra-memory term: dense, flex, varlen.
To add a backend: a module like dense.py that calls `register_backend(AttentionBackend(...))`
(imported below), or call `gpu_runner.register_backend` from your own code.
"""

from gpu_runner.attention import dense, flex, varlen  # noqa: F401  (register the built-ins)
from gpu_runner.attention.registry import (
    AUTO,
    AUTO_CANDIDATES,
    BACKENDS,
    AttentionBackend,
    auto_backend_name,
    available_backends,
    cheapest_by_cost_model,
    get_backend,
    no_extra_bytes,
    register_backend,
    resolve_backend,
)
from gpu_runner.attention.switch import attention_implementation, set_attention_implementation
from gpu_runner.attention.varlen import varlen_forward_kwargs

__all__ = [
    "AUTO",
    "AUTO_CANDIDATES",
    "BACKENDS",
    "AttentionBackend",
    "attention_implementation",
    "auto_backend_name",
    "available_backends",
    "cheapest_by_cost_model",
    "get_backend",
    "no_extra_bytes",
    "register_backend",
    "resolve_backend",
    "set_attention_implementation",
    "varlen_forward_kwargs",
]
