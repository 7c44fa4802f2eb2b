"""The lm-evaluation-harness model backend "prepacking": lm-eval's tasks scored through
`gpu_runner.score` (packed rows, logits at the scored positions only) and generated through
`gpu_runner.generate`.

Importing this module imports `lm_eval` (an optional extra: `pip install -e ".[eval]"`)
and registers the class under the model name "prepacking"; `gpu_runner` itself never
imports it. Use:

    import lm_eval, gpu_runner.harness
    lm_eval.simple_evaluate(model="prepacking", model_args="pretrained=<path>,dtype=bfloat16",
                            tasks=["mmlu"])
    lm_eval.simple_evaluate(model=gpu_runner.harness.PrepackLM(model, tokenizer), tasks=[...])

and from a shell, `prepack-eval` (gpu_runner.eval_cli): lm-eval's own CLI with this model
registered, e.g. `prepack-eval run --model prepacking --model_args pretrained=<path> --tasks mmlu`.

Tokenization, empty contexts, left truncation of over-long requests and rolling windows
follow lm-eval's `HFLM` exactly (TemplateLM's encoding, HFLM's `tok_encode` rule for
special tokens), so scores match HFLM's up to float summation order. `batch_size` is
accepted and ignored: packing decides what shares a forward, `memory_budget_bytes` bounds it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import lm_eval.models  # noqa: F401  (fills lm-eval's model registry first: see register())
import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import model_registry
from lm_eval.models.utils import (
    _add_special_kwargs,
    handle_stop_sequences,
    has_bos_prefix,
    normalize_gen_kwargs,
    postprocess_generated_text,
    resolve_max_length,
)

from gpu_runner.generation import generate
from gpu_runner.scoring import rounded_logprob, score, score_rolling

__all__ = ["MODEL_NAME", "PrepackLM", "register"]

MODEL_NAME = "prepacking"
_log = logging.getLogger(__name__)


def _dtype(value: str | torch.dtype | None, name: str = "dtype") -> torch.dtype | str:
    if value is None or value == "auto" or isinstance(value, torch.dtype):
        return value or "auto"
    if not isinstance(value, str) or not isinstance(getattr(torch, value, None), torch.dtype):
        raise ValueError(f"{name} must be 'auto' or a torch dtype name (bfloat16, float32, ...), got {value!r}")
    return getattr(torch, value)


class PrepackLM(TemplateLM):
    """An lm-eval `LM` whose loglikelihood, loglikelihood_rolling and generate_until run
    packed (`gpu_runner.score`, `score_rolling`, `generate`).

    pretrained: a transformers causal LM instance (used where it is; `dtype`, `device`
                ignored), or a name / path for `AutoModelForCausalLM.from_pretrained`
                (then loaded in `dtype` onto `device`, default CUDA if there is one).
    tokenizer:  a tokenizer instance or name / path (default: `pretrained`'s when a string).
    packer, capacity, backend, share_contexts, memory_budget_bytes, path, batch_tokens:
                passed to `score` (memory_budget_bytes default on CUDA: half the free
                memory; on CPU: none). path "auto" scores through the CUDA-graph engine
                where it applies ("identical" context sharing there), else the runner;
                "engine" / "runner" force one (`gpu_runner.score`).
    softmax_dtype: the dtype of the log-softmax behind `loglikelihood` (HFLM's option):
                "float32" (the default here; more accurate) or None / "auto" / the name of
                the model's dtype, which is HFLM's default: each token's log-prob and the sum are then
                rounded to it as HFLM rounds them (`scoring.rounded_logprob`), so on a bf16
                model results sit on HFLM's bf16 grid. Greedy flags come from the logits'
                argmax either way. `loglikelihood_rolling` sums in float32 either way.
    max_length, add_bos_token, prefix_token_id, max_gen_toks: as in lm-eval's HFLM.
    """

    def __init__(
        self,
        pretrained: Any,
        tokenizer: Any = None,
        *,
        dtype: str | torch.dtype | None = "auto",
        device: str | None = None,
        packer: str = "ffd",
        capacity: int | str = "max",
        backend: str = "auto",
        share_contexts: str = "auto",
        memory_budget_bytes: int | None = None,
        path: str = "auto",
        batch_tokens: int | None = None,
        softmax_dtype: str | torch.dtype | None = "float32",
        max_length: int | None = None,
        add_bos_token: bool | None = None,
        prefix_token_id: int | None = None,
        max_gen_toks: int = 256,
        batch_size: Any = None,
        max_batch_size: Any = None,
        trust_remote_code: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if kwargs:
            _log.warning("prepacking: ignoring model_args %s", sorted(kwargs))
        if isinstance(pretrained, str):
            if not device or (str(device).startswith("cuda") and not torch.cuda.is_available()):
                device = "cuda" if torch.cuda.is_available() else "cpu"  # as HFLM falls back
            model = AutoModelForCausalLM.from_pretrained(
                pretrained, dtype=_dtype(dtype), trust_remote_code=trust_remote_code
            )
            pretrained_model = model.to(device).eval()
            tokenizer = tokenizer or pretrained
        elif isinstance(pretrained, torch.nn.Module):
            pretrained_model = pretrained.eval()
        else:
            raise ValueError(f"pretrained must be a model name/path or a transformers model, got {type(pretrained).__name__}")
        if tokenizer is None:
            raise ValueError("pass tokenizer= with a model instance (a tokenizer object or a name / path)")
        if isinstance(tokenizer, str):
            tokenizer = AutoTokenizer.from_pretrained(tokenizer, trust_remote_code=trust_remote_code)
        self._model = pretrained_model
        self.tokenizer = tokenizer
        self._device = next(pretrained_model.parameters()).device
        self._max_length = int(max_length) if max_length else None
        self.add_bos_token = add_bos_token
        self.custom_prefix_token_id = prefix_token_id
        self._max_gen_toks = int(max_gen_toks)
        model_dtype = next(pretrained_model.parameters()).dtype
        chosen = _dtype(softmax_dtype, "softmax_dtype")
        self.softmax_dtype = model_dtype if chosen == "auto" else chosen
        if self.softmax_dtype not in (torch.float32, model_dtype):  # HFLM casts the logits first: not emulated
            raise ValueError(f"softmax_dtype must be float32 or the model's dtype ({model_dtype}, or None / 'auto'), "
                             f"got {softmax_dtype!r}")
        if memory_budget_bytes is None and self._device.type == "cuda":
            memory_budget_bytes = int(torch.cuda.mem_get_info(self._device)[0] // 2)
        self.score_options = dict(
            packer=packer, capacity=capacity, backend=backend, share_contexts=share_contexts,
            memory_budget_bytes=None if memory_budget_bytes is None else int(memory_budget_bytes), path=path,
        )  # fmt: skip
        if batch_tokens is not None:
            self.score_options["batch_tokens"] = int(batch_tokens)

    # -------------------------------------------------------------- what lm-eval reads

    @property
    def model(self) -> torch.nn.Module:
        return self._model

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        if self.custom_prefix_token_id is not None:
            return int(self.custom_prefix_token_id)
        if self.tokenizer.bos_token_id is not None:
            return self.tokenizer.bos_token_id
        return self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length or resolve_max_length(self._model.config, self.tokenizer, default=2048)

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tokenizer, "name_or_path", "").replace("/", "__")

    def get_model_info(self) -> dict:
        return {"model_num_parameters": sum(p.numel() for p in self._model.parameters()),
                "model_dtype": str(next(self._model.parameters()).dtype), "prepacking": dict(self.score_options),
                "softmax_dtype": str(self.softmax_dtype)}

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs: Any) -> list[int]:
        """HFLM's rule: the tokenizer's special tokens unless told, none if `string` starts with BOS."""
        special = _add_special_kwargs(add_special_tokens, self.add_bos_token)
        if add_special_tokens is None and has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
            special["add_special_tokens"] = False
        encoding = self.tokenizer.encode(string, **special)
        return encoding[-left_truncate_len:] if left_truncate_len else encoding

    def tok_decode(self, tokens: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    # -------------------------------------------------------------- the three request types

    def _loglikelihood_tokens(self, requests: list[tuple[tuple[str, str], list[int], list[int]]],
                              disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        """Score tokenized requests; over-long ones lose context tokens from the left, as in HFLM."""
        pairs = []
        limit = self.max_length
        for i, (_, context, continuation) in enumerate(requests):
            if len(continuation) > limit:
                raise ValueError(f"request {i}: continuation of {len(continuation)} tokens is over max_length {limit}")
            if context and continuation and len(context) + len(continuation) > limit + 1:
                _log.warning("request %d: %d + %d tokens exceed max_length %d; truncating the context from the left",
                             i, len(context), len(continuation), limit)
                context = (list(context) + list(continuation))[-(limit + 1) : -len(continuation)]
            pairs.append((context, continuation))
        rounded = self.softmax_dtype != torch.float32
        results = score(self._model, pairs, return_token_logprobs=rounded, **self.score_options)
        if rounded:  # HFLM's arithmetic: log-softmax and its sum in softmax_dtype
            answers = [(rounded_logprob(r.token_logprobs, self.softmax_dtype), r.is_greedy) for r in results]
        else:
            answers = [(r.logprob, r.is_greedy) for r in results]
        for (request_str, _, _), answer in zip(requests, answers):
            if request_str is not None:
                self.cache_hook.add_partial("loglikelihood", request_str, answer)
        return answers

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        texts = [self.tok_encode(req.args[0]) for req in requests]
        nonempty = [i for i, t in enumerate(texts) if t]
        totals = [0.0] * len(texts)
        if nonempty:
            scored = score_rolling(self._model, [texts[i] for i in nonempty], prefix_token_id=self.prefix_token_id,
                                   max_length=self.max_length, **self.score_options)  # fmt: skip
            for i, total in zip(nonempty, scored):
                totals[i] = total
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", (req.args[0],), total)
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Generate per request with `gpu_runner.generate` (greedy unless the task samples),
        requests with equal generation kwargs together; the text is cut at the first stop string."""
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        out: list[str] = [""] * len(requests)
        for members in groups.values():
            options = normalize_gen_kwargs(requests[members[0]].args[1], self.max_gen_toks)
            until = handle_stop_sequences(options.pop("until", None), eos=eos)
            max_gen_toks = int(options.pop("max_gen_toks"))
            options.pop("max_length", None)
            if options.get("temperature", 0.0) == 0.0 and not options.get("do_sample"):
                options.pop("temperature", None)
                options["do_sample"] = False
            room = self.max_length - max_gen_toks
            if room <= 0:
                raise ValueError(f"max_gen_toks {max_gen_toks} leaves no room under max_length {self.max_length}")
            prompts = [self.tok_encode(requests[i].args[0], left_truncate_len=room) for i in members]
            pad = self.tokenizer.pad_token_id
            new = generate(self._model, prompts, max_gen_toks, pad_token_id=pad if pad is not None else self.eot_token_id,
                           memory_budget_bytes=self.score_options["memory_budget_bytes"], **options)  # fmt: skip
            for i, tokens in zip(members, new):
                text = postprocess_generated_text(self.tok_decode(tokens), stop=until, think_end_token=None)
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out


def register() -> None:
    """Register `PrepackLM` as lm-eval model "prepacking" (idempotent). lm_eval.models is
    imported first: lm-eval fills its registry only when that registry is empty."""
    if model_registry.get(MODEL_NAME, None) is not PrepackLM:
        model_registry.register(MODEL_NAME)(PrepackLM)


register()
