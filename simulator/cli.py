"""The `simulate` console script: parses arguments and calls `simulator.run.simulate` by
keyword. Bad input exits with code 2 and one line on stderr, never a traceback."""

from __future__ import annotations

import argparse
import ast
import json
import sys
from typing import Any, NoReturn, Sequence

from simulator.attention import available_attention
from simulator.distributions import FAMILIES, PROFILES
from simulator.endtoend import GENERATION_METHODS
from simulator.generation import format_generation_table, simulate_generation, write_generation_csv
from simulator.gpus import available_gpus
from simulator.report import check_output_path, format_table, recommendation_line, write_csv, write_plot
from simulator.run import DEFAULT_NUM_PROMPTS, EXCLUDED_BY_DEFAULT, simulate
from simulator.schedule import available_policies
from simulator.specs import available_models
from simulator.units import parse_bytes

__all__ = ["build_parser", "main"]

PROG = "simulate"


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not usage + message
        raise _UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Model what padding, prepacking and varlen attention cost for LLM prefill (CPU only).",
        epilog="Results over several batches: num_bins, padded_tokens, lower_bound, flops, useful_flops and "
        "est_time_s are sums; efficiency and speedup_vs_padded are ratios of those sums; peak_memory_bytes is "
        "the worst batch; capacity is the mean. The padded baseline (packer pad, attention padded) is always "
        "included. With --json the last stdout line is one JSON document {config, results}. Times model eager "
        "HF transformers with constants fitted on H100 measurements (simulator/CALIBRATION.md). Varlen "
        "attention pads nothing, so every packer costs the same under it: it is reported once, for packer "
        "'flat' (every prompt of a batch in one row).",
    )
    p.add_argument(
        "--lengths-dist", default="mmlu", metavar="SPEC",
        help=f"built-in profile ({', '.join(PROFILES)}), FAMILY:k=v,... ({', '.join(FAMILIES)}; e.g. "
        "lognormal:mean=200,sigma=1.0), a mixture 0.8*mmlu+0.2*constant:value=2000, or file:PATH "
        "(.txt/.csv/.json/.npy). Profiles and files are sampled with replacement; parametric draws are "
        "rounded and clipped to [1, max] (max= is optional on every family). Default: mmlu",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=64, help="prompts per batch (default 64)")
    p.add_argument("--num-prompts", type=int, default=DEFAULT_NUM_PROMPTS,
                   help=f"prompts drawn in all (default {DEFAULT_NUM_PROMPTS}); the last batch may be smaller")  # fmt: skip
    p.add_argument("--model", default="llama-2-7b", help=f"one of {', '.join(available_models())} (default llama-2-7b)")
    p.add_argument("--gpu", default="h100", help=f"one of {', '.join(available_gpus())} (default h100)")
    p.add_argument("--packers", default=None, metavar="A,B,...",
                   help=f"comma-separated packer names (default: all registered except {', '.join(EXCLUDED_BY_DEFAULT)}; "
                   "pad is always included)")  # fmt: skip
    p.add_argument("--packer-param", action="append", default=[], metavar="NAME.KEY=VALUE",
                   help="a packer hyperparameter, repeatable, e.g. ilp.time_limit_s=1 (ilp is exact and may "
                   "spend its whole time limit on every batch)")  # fmt: skip
    p.add_argument("--capacity", default="max", help="max (longest prompt, the paper's rule), auto (search), or tokens")
    p.add_argument("--attention", default="all",
                   help=f"{'|'.join(available_attention())}|all, or a comma list (default all = dense,flex,varlen)")  # fmt: skip
    p.add_argument("--memory-budget", default=None, metavar="SIZE", help="e.g. 40GB or 75GiB (default: GPU memory)")
    p.add_argument("--seed", type=int, default=0, help="seed for drawing lengths (default 0)")
    p.add_argument("--json", action="store_true", help="end stdout with one JSON line")
    p.add_argument("--csv", default=None, metavar="PATH", help="write the result rows as CSV")
    p.add_argument("--plot", default=None, metavar="PATH", help="write a PNG: length histogram, waste, modeled time")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no table")
    _add_generation_arguments(p)
    return p


# -- end-to-end generation (--output-dist): simulator.generation ---------------------------------
def _add_generation_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "end-to-end generation (with --output-dist)",
        "Predict prefill + decode of every request for HF generate padded, gpu_runner.generate today "
        "(prepack-hf), HF generate_batch and the engine per schedule policy: total s, tokens/s, TTFT percentiles. "
        "--batch-size is then the static batch of the HF methods; --packers, --packer-param, --capacity, "
        "--attention and --plot apply to the prefill-only simulation.",
    )
    g.add_argument("--output-dist", default=None, metavar="SPEC",
                   help="output lengths, same SPEC grammar as --lengths-dist (e.g. azure_conv_output, "
                   "lognormal:mean=200,sigma=1, file:PATH); azure_conv + azure_conv_output take the trace's first "
                   "--num-prompts requests in order, paired")  # fmt: skip
    g.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help="cap on every output (default none); continuous methods reserve KV for prompt + N tokens")  # fmt: skip
    g.add_argument("--methods", default=None, metavar="A,B,...",
                   help=f"generation methods (default all: {', '.join(GENERATION_METHODS)})")
    g.add_argument("--policies", default=None, metavar="A,B,...",
                   help=f"engine schedule policies (default all: {', '.join(available_policies())})")


def _names(text: str | None, flag: str) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError(f"{flag} is empty")
    return names


def _workload(args: argparse.Namespace) -> dict[str, Any]:
    """The options the prefill-only and the generation simulation share: what is run, where."""
    return {
        "lengths_dist": args.lengths_dist, "num_prompts": args.num_prompts, "batch_size": args.batch_size,
        "model": args.model, "gpu": args.gpu, "seed": args.seed,
        "memory_budget_bytes": None if args.memory_budget is None else parse_bytes(args.memory_budget),
    }  # fmt: skip


def _run_generation(args: argparse.Namespace) -> int:
    for flag, value in (("--packers", args.packers), ("--packer-param", args.packer_param), ("--plot", args.plot)):
        if value:
            raise ValueError(f"{flag} applies to the prefill-only simulation, not with --output-dist")
    result = simulate_generation(
        **_workload(args),
        output_dist=args.output_dist,
        max_new_tokens=args.max_new_tokens,
        methods=_names(args.methods, "--methods"),
        policies=_names(args.policies, "--policies"),
    )
    if args.csv is not None:
        write_generation_csv(result, args.csv)
    if not args.quiet:
        print(format_generation_table(result))
    if args.json:
        print(json.dumps(result.to_json()))
    return 0


def parse_packer_params(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """['ilp.time_limit_s=1', ...] -> {'ilp': {'time_limit_s': 1}}; values are Python literals
    (numbers, True/False) or plain strings. `ValueError` for a malformed item."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        target, eq, raw = item.partition("=")
        name, dot, key = target.strip().rpartition(".")
        if not (eq and dot and name and key):
            raise ValueError(f"--packer-param {item!r}: expected NAME.KEY=VALUE, e.g. ilp.time_limit_s=1")
        try:
            value: Any = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            value = raw.strip()
        out.setdefault(name, {})[key] = value
    return out


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.csv is not None:  # before the work: a bad path costs nothing
        check_output_path(args.csv, "--csv")
    if args.plot is not None:
        check_output_path(args.plot, "--plot")
    if args.output_dist is not None:
        return _run_generation(args)
    for flag, value in (("--max-new-tokens", args.max_new_tokens), ("--methods", args.methods), ("--policies", args.policies)):
        if value is not None:
            raise ValueError(f"{flag} needs --output-dist (end-to-end generation)")
    packer_names = None
    if args.packers is not None:
        packer_names = [n.strip() for n in args.packers.split(",") if n.strip()]
        if not packer_names:
            raise ValueError("--packers is empty")
    result = simulate(
        **_workload(args),
        packers=packer_names,
        packer_params=parse_packer_params(args.packer_param),
        capacity=args.capacity,
        attention=args.attention,
        progress=not args.quiet and sys.stderr.isatty(),
    )
    if args.csv is not None:
        write_csv(result, args.csv)
    if args.plot is not None:
        write_plot(result, args.plot)
    if not args.quiet:
        print(format_table(result))
        print()
    print(recommendation_line(result))
    if args.json:
        print(json.dumps(result.to_json()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 bad input, a failing packer or an
    unwritable output: one line on stderr, no traceback, no partial file)."""
    try:
        return _run(argv)
    except (_UsageError, ValueError, TypeError, OSError, OverflowError) as exc:
        message = " ".join(str(exc).split())
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
