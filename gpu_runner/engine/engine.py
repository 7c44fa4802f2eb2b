"""`PrefillEngine` (the facade: options, buffers, CUDA graphs per bucket) and `EngineOutput`.
The data flow of one batch is described in `gpu_runner.engine`'s docstring."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gpu_runner.cache import PromptKV
from gpu_runner.engine import matmul as mm
from gpu_runner.engine.family import engine_family, layer_ropes, norm_weight
from gpu_runner.engine.forward import forward
from gpu_runner.engine.graphs import GraphCapture
from gpu_runner.engine.kernels import packed_head_dim, use_triton
from gpu_runner.engine.rope import rope_plan
from gpu_runner.engine.staging import bucket_tokens, layout, num_chunks, stage
from gpu_runner.engine.weights import fuse_layer
from gpu_runner.plan import text_config
from gpu_runner.support import require_supported
from gpu_runner.validate import sliding_window
from simulator.names import AUTO, ENGINE, ENGINE_ATTENTION, FLASH, PACKED, TORCH

__all__ = ["EngineOutput", "PrefillEngine", "bucket_tokens"]

@dataclass(frozen=True)
class EngineOutput:
    """What one `PrefillEngine.prefill` call produced (N prompts, caller's order).

    logits:     [N, vocab], next-token logits of each prompt (its last token only)
    kv:         [layers, 2, T, Hkv, D], keys (roped) and values of the flat row
    cu_seqlens: [N + 1] int64 on the host: prompt i owns rows cu_seqlens[i]:cu_seqlens[i+1]
    """

    logits: torch.Tensor
    kv: torch.Tensor
    cu_seqlens: np.ndarray

    def __post_init__(self) -> None:
        if self.logits.shape[0] + 1 != len(self.cu_seqlens):
            raise ValueError("logits and cu_seqlens disagree on the number of prompts")

    @property
    def num_prompts(self) -> int:
        return int(self.logits.shape[0])

    def prompt_kv(self, i: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Prompt i's cache: per layer (key, value), each a [Hkv, len_i, D] view."""
        a, b = int(self.cu_seqlens[i]), int(self.cu_seqlens[i + 1])
        return [(layer[0, a:b].transpose(0, 1), layer[1, a:b].transpose(0, 1)) for layer in self.kv]

    def clone(self) -> EngineOutput:
        """A copy that the next `prefill` call does not overwrite."""
        total = int(self.cu_seqlens[-1])
        return EngineOutput(self.logits.clone(), self.kv[:, :, :total].clone(), self.cu_seqlens.copy())


class PrefillEngine:
    """Prefill of many prompts as one flat varlen row, with CUDA graphs per shape bucket.

    model:         an HF causal LM the engine supports (`engine.support.ENGINE_FAMILIES` and the
                   copies the model zoo proves; on its device, in its dtype)
    token_bucket:  the row length is the real token count rounded up to a multiple of this
                   (static shapes: few distinct graphs, at most token_bucket - 1 wasted tokens)
    cuda_graphs:   capture and replay CUDA graphs (CUDA only; False = eager, same kernels)
    share_weights: make the HF module's projection weights views into the fused tensors
                   (no duplicated weight memory); False keeps separate copies. Families whose
                   Q / K head dims are permuted for RoPE (`engine.rope`: interleaved or partial
                   RoPE) keep their own QKV copy either way
    max_tokens:    pre-size the KV buffer for batches up to this many tokens (grows on demand;
                   growing drops the captured graphs)
    attention:     "packed": the fused RoPE + attention Triton kernel tiled over the flat row
                   (short prompts share tiles; the default where Triton runs), "flash":
                   torch's flash varlen kernel (FA2) per prompt, "torch": dense-mask sdpa
                   (CPU reference); "auto" picks packed where Triton runs and head_dim is
                   even and >= 32 (Phi-3-mini's 96 too: tiles padded), else flash on CUDA, else torch
    fused_mlp:     the gate/up matmul with SiLU * up in its epilogue (`matmul.swiglu`:
                   one persistent Triton TMA kernel on Hopper, no [T, 2 I] intermediate); False =
                   cuBLAS then the silu_mul kernel, which is also what runs where the fused
                   kernel cannot (no Triton, pre-Hopper GPUs, CPU)
    fused_qkv:     packed attention on Hopper: the QKV matmul with RoPE in its epilogue writes
                   roped Q and the KV cache directly (`matmul.qkv_rope`: the projection
                   is never written, no RoPE in the attention loop), then `packed_attention`
                   over them; False (or where its tiles do not fit the head layout) = cuBLAS QKV
                   then `rope_attention`, RoPE fused into the attention kernel
    q_chunk:       flash only: attention runs over query chunks of at most this many tokens (each with its
                   prompt's key prefix), so the flash grid is sized by q_chunk, not by the
                   longest prompt: no idle thread blocks, and the graph key ignores prompt
                   lengths. 0 = one query segment per prompt, grid sized by the longest.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        token_bucket: int = 128,
        cuda_graphs: bool = True,
        share_weights: bool = True,
        max_tokens: int = 0,
        q_chunk: int = 128,
        attention: str = "auto",
        fused_mlp: bool = True,
        fused_qkv: bool = True,
    ) -> None:
        if token_bucket < 1:
            raise ValueError(f"token_bucket must be >= 1, got {token_bucket}")
        require_supported(model, "engine")  # every module and field the engine implements
        cfg = model.config
        inner = model.model
        self.model = model
        self.token_bucket = int(token_bucket)
        if q_chunk < 0:
            raise ValueError(f"q_chunk must be >= 0 (0 = no query chunks), got {q_chunk}")
        self.q_chunk = int(q_chunk)
        if attention not in ENGINE_ATTENTION:
            raise ValueError(f"attention must be one of {', '.join(ENGINE_ATTENTION)}, got {attention!r}")
        self.device = model.lm_head.weight.device
        self.dtype = model.lm_head.weight.dtype
        self.cuda_graphs = bool(cuda_graphs) and self.device.type == "cuda"
        probe = torch.empty(0, device=self.device)
        head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        packable = packed_head_dim(head_dim)  # the packed kernels' tiles (padded to a power of two)
        if attention == AUTO:
            attention = (PACKED if use_triton(probe) and packable else FLASH if self.device.type == "cuda"
                         else TORCH)
        if attention == PACKED and not use_triton(probe):
            raise ValueError("attention 'packed' needs Triton and a CUDA device")
        if attention == PACKED and not packable:
            raise ValueError(f"attention 'packed' needs an even head_dim >= 32, got {head_dim}: use 'flash'")
        if attention == FLASH and self.device.type != "cuda":
            raise ValueError("attention 'flash' needs a CUDA device")
        self.attention = attention
        self.fused_mlp = bool(fused_mlp)
        self.fused_qkv = bool(fused_qkv)
        # the fused matmul's split-tile counters: zeroed once here, outside any graph capture
        self._counters = torch.zeros(mm.counter_slots(self.device), dtype=torch.int32, device=self.device)
        self.num_q_heads = int(cfg.num_attention_heads)
        self.num_kv_heads = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        self.vocab_size = int(model.lm_head.weight.shape[0])
        self.family = engine_family(model)  # multipliers, norm offsets, activation, QK-norm
        self.scale = self.family.attn_scale or self.head_dim**-0.5
        self.sliding_window = sliding_window(text_config(cfg))
        self.pad_token_id = 0
        self.eps = self.family.eps
        self.embed = inner.embed_tokens.weight
        self.final_norm = norm_weight(inner.norm, self.family, self.embed)
        self.lm_head = model.lm_head.weight
        self.max_positions = int(getattr(cfg, "max_position_embeddings", 4096))
        cfg_text = text_config(cfg)
        layer_types = getattr(cfg_text, "layer_types", None)
        self.rope = rope_plan(model, max_positions=self.max_positions, head_dim=self.head_dim,
                              interleaved=self.family.interleaved_rope, layer_ropes=layer_ropes(model, self.family),
                              layer_types=list(layer_types) if layer_types else None,
                              negate_sin=self.family.rope_sin_negated)
        self.cos, self.sin = self.rope.tables[0]  # [P, D/2], HF's rounding; the QKV-RoPE epilogue's table
        # the QKV-RoPE epilogue reads one table per forward (Row.cos): only where every layer uses it
        qkv_rope = self.fused_qkv and self.attention == PACKED and set(self.rope.layer_table) == {0}
        self.layers = [fuse_layer(layer, share_weights, qkv_rope=qkv_rope, num_q_heads=self.num_q_heads,
                                  num_kv_heads=self.num_kv_heads, head_dim=self.head_dim, family=self.family,
                                  perm=self.rope.perm, table=self.rope.tables[self.rope.layer_table[i]])
                       for i, layer in enumerate(inner.layers)]
        self._graphs: dict[tuple[int, int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._capture_graph = GraphCapture()  # one pool, one warm-up per capacity
        self._t_cap = 0
        self._p_cap = 0
        self._kv: torch.Tensor | None = None
        self.reserve(max_tokens)

    # ------------------------------------------------------------------ buffers and graphs

    def reserve(self, max_tokens: int) -> None:
        """Size the KV buffer for batches of up to `max_tokens` tokens (no-op when it holds
        them already; growing drops the captured graphs)."""
        self._ensure_capacity(bucket_tokens(max(int(max_tokens), 1), self.token_bucket), 16)

    def _ensure_capacity(self, num_tokens: int, num_slots: int) -> None:
        if num_tokens <= self._t_cap and num_slots <= self._p_cap:
            return
        self._t_cap = max(num_tokens, self._t_cap)
        self._p_cap = max(num_slots, self._p_cap)
        self._graphs.clear()
        self._capture_graph = GraphCapture()  # one pool, one warm-up per capacity
        self._kv = None  # free before allocating the larger one
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        shape = (len(self.layers), 2, self._t_cap, self.num_kv_heads, self.head_dim)
        self._kv = torch.empty(shape, dtype=self.dtype, device=self.device)
        n_in = self._layout(self._t_cap, self._p_cap, self._num_chunks(self._t_cap, self._p_cap))["used_k"].stop
        self._in_dev = torch.zeros(n_in, dtype=torch.int64, device=self.device)
        self._in_host = torch.zeros(n_in, dtype=torch.int64, pin_memory=self.device.type == "cuda")
        self._copied = None

    # ------------------------------------------------------------------ staging and forward

    def _num_chunks(self, t: int, p: int) -> int:
        return num_chunks(t, p, self.q_chunk, self.attention)

    _layout = staticmethod(layout)

    def _stage(self, prompts: Sequence[Sequence[int]]) -> tuple[int, int, int, np.ndarray]:
        return stage(self, prompts)

    def _forward(self, t: int, p: int, max_len: int) -> torch.Tensor:
        return forward(self, t, p, max_len)

    @torch.no_grad()
    def prefill(self, prompts: Sequence[Sequence[int]]) -> EngineOutput:
        """Prefill `prompts` (token-id lists); returns next-token logits and the flat KV.

        Raises ValueError for an empty list, an empty prompt, a prompt over the context,
        or token ids outside the vocabulary, before any device work.
        """
        t, p, max_len, cu = self._stage(prompts)
        n_in = self._layout(t, p, self._num_chunks(t, p))["used_k"].stop
        self._in_dev[:n_in].copy_(self._in_host[:n_in], non_blocking=True)
        if self.device.type == "cuda":
            self._copied = torch.cuda.Event()
            self._copied.record()
        if self.cuda_graphs:
            logits = self._replay((t, p, max_len))
        else:
            logits = self._forward(t, p, max_len)
        n = len(prompts)
        return EngineOutput(logits=logits[:n], kv=self._kv[:, :, :t], cu_seqlens=cu)

    def _replay(self, key: tuple[int, int, int]) -> torch.Tensor:
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(key)
            self._graphs[key] = entry
        graph, logits = entry
        graph.replay()
        return logits

    def _capture(self, key: tuple[int, int, int]) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        return self._capture_graph(lambda: self._forward(*key))

    def prefill_result(self, prompts: Sequence[Sequence[int]]) -> Any:
        """`prefill`, handed back as the library's `result.PrefillResult` (one flat row as the
        packing, backend "engine"); its logits and kv are views into the engine's buffers,
        valid until the next call. Per-prompt kv views are sliced on access (a `PromptKV`, the
        type `runner.prefill` hands back, so `cache_for_batch` works too)."""
        from gpu_runner.plan import ForwardPlan
        from gpu_runner.result import PrefillResult
        from packers import Packing

        out = self.prefill(prompts)
        lengths = tuple(int(x) for x in np.diff(out.cu_seqlens))
        total = int(out.cu_seqlens[-1])
        packing = Packing(lengths=lengths, capacity=total, bins=(tuple(range(len(lengths))),), packer="flat",
                          meta={"lower_bound": 1, "status": "optimal", "solve_time_s": 0.0})
        plan = ForwardPlan(bins=(0,), num_rows=1, row_len=int(out.kv.shape[2]), estimated_bytes=0)
        kv = PromptKV.from_flat(out.kv, out.cu_seqlens)
        return PrefillResult(logits=out.logits, kv=kv, packing=packing, backend=ENGINE, forwards=(plan,),
                             config=self.model.config)

    @property
    def num_graphs(self) -> int:
        """CUDA graphs captured so far (one per shape bucket seen)."""
        return len(self._graphs)
