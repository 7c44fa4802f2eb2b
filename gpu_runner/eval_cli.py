"""`prepack-eval`: lm-evaluation-harness's own command line with the "prepacking" model
registered.

lm-eval 0.4.13 resolves `--model` only through its registry, which it fills from its own
`lm_eval.models.MODEL_MAPPING` (no entry-point group for third-party models; `--include_path`
adds tasks, not models). So this entry point imports `gpu_runner.harness` (which registers
the model) and hands the unchanged arguments to `lm_eval.__main__.cli_evaluate`:

    prepack-eval run --model prepacking --model_args pretrained=<path>,dtype=bfloat16 --tasks mmlu
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Run lm-eval's CLI on `argv` (default sys.argv[1:]) with "prepacking" registered."""
    try:
        from lm_eval.__main__ import cli_evaluate

        import gpu_runner.harness  # noqa: F401  (registers the model)
    except ImportError as exc:
        raise SystemExit(f"prepack-eval needs lm-evaluation-harness: pip install 'prepacking[eval]' ({exc})")
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
