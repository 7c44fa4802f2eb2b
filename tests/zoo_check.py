"""Run one (model, path) of the model zoo against the unpacked reference (no tests here).

`check_path(model, path)` runs the library's path on `PROMPTS` (different lengths, several
packed together) and compares it with each prompt run alone through the plain HF model:
next-token logits and K/V for the prefill paths, greedy tokens for generate; the engine
path is its prefill (logits, K/V) and then generate's engine path (its decode loop: tokens). It returns an
`Outcome`: "exact", "refused" (the library raised `UnsupportedModelError`), "wrong" (ran,
differs) or "error" (any other exception), with a one-line detail.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gpu_runner.support import UnsupportedModelError

# capacity "max" = 11: FFD packs [11], [9, 2], [7, 4], [5, 3, 1]...
PROMPT_LENGTHS = (7, 3, 11, 5, 9, 1, 4, 2)
# with zoo_models.TINY_WINDOW = 4: prompts across one and two window / chunk boundaries
WINDOWED_LENGTHS = (9, 3, 6, 2, 7, 5)
NEW_TOKENS = 3
TOL = {"atol": 2e-4, "rtol": 2e-4}
PATHS = ("dense", "flex", "varlen", "generate", "engine")
KINDS = ("exact", "refused", "wrong", "error")


@dataclass(frozen=True)
class Outcome:
    kind: str
    detail: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"outcome kind must be one of {KINDS}, got {self.kind!r}")


def prompts(vocab: int, lengths: tuple[int, ...] = PROMPT_LENGTHS) -> list[list[int]]:
    g = torch.Generator().manual_seed(7)
    from tests.zoo_models import SPECIAL_IDS

    # text tokens only: clear of the usual special ids 0-2 and of the top ids, where the zoo
    # puts image / audio / other special token ids
    return [torch.randint(3, vocab - SPECIAL_IDS, (n,), generator=g).tolist() for n in lengths]


def _device(model) -> torch.device:
    return model.get_input_embeddings().weight.device


def _reference(model, prompt: list[int]):
    from gpu_runner.cache import cache_layers_kv, output_cache

    with torch.no_grad():
        out = model(input_ids=torch.tensor([prompt], device=_device(model)), use_cache=True)
    return out.logits[0, -1], [(k[0], v[0]) for k, v in cache_layers_kv(output_cache(out))]


def _reference_tokens(model, prompt: list[int]) -> list[int]:
    ids = torch.tensor([prompt], device=_device(model))
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0,
        )  # fmt: skip
    return out[0, len(prompt) :].tolist()


def _compare_prefill(model, batch, logits, kv) -> str | None:
    """None if equal to the reference, else where the first difference is."""
    for i, prompt in enumerate(batch):
        ref_logits, ref_kv = _reference(model, prompt)
        if not torch.allclose(logits[i].float(), ref_logits.float(), **TOL):
            diff = (logits[i].float() - ref_logits.float()).abs().max().item()
            return f"prompt {i} ({len(prompt)} tokens): logits differ by up to {diff:.3g}"
        if kv is None:
            continue
        if len(kv[i]) != len(ref_kv):
            return f"prompt {i}: {len(kv[i])} cache layers, reference has {len(ref_kv)}"
        for layer, ((k, v), (rk, rv)) in enumerate(zip(kv[i], ref_kv)):
            if k.shape[-2] > rk.shape[-2] and _has_local_window(model):
                # HF's sliding-window cache keeps the last window - 1 tokens; result.kv keeps
                # every token (cache_for / generate hand HF the whole and it trims the same way)
                k, v = k[..., -rk.shape[-2] :, :], v[..., -rv.shape[-2] :, :]
            if k.shape != rk.shape or v.shape != rv.shape:
                return f"prompt {i} layer {layer}: K/V shape {tuple(k.shape)} vs reference {tuple(rk.shape)}"
            if not (torch.allclose(k.float(), rk.float(), **TOL) and torch.allclose(v.float(), rv.float(), **TOL)):
                return f"prompt {i} layer {layer}: K/V differ"
    return None


def _compare_tokens(model, batch, tokens, what: str = "tokens") -> str | None:
    for i, prompt in enumerate(batch):
        ref = _reference_tokens(model, prompt)
        if tokens[i] != ref:
            return f"prompt {i} ({len(prompt)} tokens): {what} {tokens[i]} vs reference {ref}"
    return None


def _run(model, path: str, batch: list[list[int]], backend: str) -> str | None:
    import gpu_runner

    if path in ("dense", "flex", "varlen"):
        name = "varlen-reference" if path == "varlen" else path
        result = gpu_runner.prefill(model, batch, backend=name)
        return _compare_prefill(model, batch, result.logits, result.kv)
    if path == "generate":
        tokens = gpu_runner.generate(
            model, batch, NEW_TOKENS, backend=backend, min_new_tokens=NEW_TOKENS, pad_token_id=0
        )
        return _compare_tokens(model, batch, tokens)
    if path == "engine":
        from gpu_runner.engine import PrefillEngine

        engine = PrefillEngine(model, token_bucket=16, cuda_graphs=False, share_weights=False, attention="torch")
        out = engine.prefill(batch)
        problem = _compare_prefill(model, batch, out.logits, [out.prompt_kv(i) for i in range(len(batch))])
        if problem is not None:
            return problem
        try:  # generate's engine path: the engine's prefill, then its decode loop
            tokens = gpu_runner.generate(model, batch, NEW_TOKENS, path="engine", eos_token_id=[], pad_token_id=0)
        finally:
            gpu_runner.clear_generation_cache(model)
        return _compare_tokens(model, batch, tokens, "engine decode")
    raise ValueError(f"unknown path {path!r}")


def _has_local_window(model) -> bool:
    from gpu_runner.plan import text_config
    from gpu_runner.support import local_window

    return local_window(text_config(model.config)) is not None


def check_path(
    model, path: str, *, backend: str = "auto", lengths: tuple[int, ...] = PROMPT_LENGTHS
) -> Outcome:
    """Outcome of `path` on `model` for zoo prompts of `lengths` (`backend`: generate's
    prefill backend)."""
    from tests.test_runner_support import register_reference_varlen_backends

    register_reference_varlen_backends()
    batch = prompts(model.get_input_embeddings().num_embeddings, lengths)
    try:
        problem = _run(model, path, batch, backend)
    except UnsupportedModelError as exc:
        return Outcome("refused", str(exc))
    except Exception as exc:  # noqa: BLE001 - the zoo's point is to catch every other failure
        return Outcome("error", f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}")
    return Outcome("exact") if problem is None else Outcome("wrong", problem)
