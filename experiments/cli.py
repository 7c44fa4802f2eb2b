"""The experiment scripts' command line, built from each script's frozen `Config` dataclass.

A script declares its settings once, as `Config` fields (`option(default, help, ...)`), and
validates them in `__post_init__` (`check_fields`, plus its own cross-field rules, raising
ValueError). `config_main(Config, run, argv, ...)` is then its whole `main`: --smoke,
--out-dir and --seed, one option per field, `Config.smoke(seed)` under --smoke, and bad
input as one line on stderr with exit status 2 (`experiments.common.run_cli`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from functools import partial
from typing import Any, get_args, get_origin, get_type_hints

from experiments.common import GPU_MODELS, run_cli, run_models

__all__ = ["ModelsConfig", "check_fields", "config_from_args", "config_main", "config_parser", "option"]


def option(default: Any, help: str = "", *, flag: str = "", choices: Sequence[Any] = (),
           minimum: float | None = None) -> Any:  # fmt: skip
    """A `Config` field that `config_main` turns into a command-line option: `--<name>` (or
    `--<flag>`), `help`, and the checks `check_fields` applies (every value in `choices`,
    every number >= `minimum`). Tuple fields are comma-separated lists on the command line."""
    meta = {"help": help, "flag": flag, "choices": tuple(choices), "minimum": minimum}
    return field(default=default, metadata=meta)


def check_fields(cfg: Any) -> None:
    """Raise ValueError naming the option when a field of the dataclass `cfg` holds a value
    outside its `option(choices=...)` or below its `option(minimum=...)`, or a list field
    declared non-empty by its default is empty. Configs call it from `__post_init__`."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        values = value if isinstance(value, tuple) else (value,)
        flag = f.metadata.get("flag") or f.name.replace("_", "-")
        choices, minimum = f.metadata.get("choices", ()), f.metadata.get("minimum")
        if isinstance(value, tuple) and not value and f.default != ():
            raise ValueError(f"--{flag} is empty")
        for v in values:
            if choices and v not in choices:
                raise ValueError(f"unknown {flag} {v!r}; choose from {', '.join(map(str, choices))}")
            if minimum is not None and v is not None and v < minimum:
                raise ValueError(f"--{flag} values must be >= {minimum}, got {v!r}")


def _item_type(hint: Any) -> tuple[type, bool]:
    """(type of one value, is a tuple) of a field annotation: tuple[int, ...] -> (int, True),
    int | None -> (int, False), float -> (float, False)."""
    args = [a for a in get_args(hint) if a is not type(None) and a is not Ellipsis]
    if get_origin(hint) is tuple:
        return args[0], True
    return (args[0] if args else hint), False


def _parse_value(text: str, kind: type, is_tuple: bool, flag: str) -> Any:
    if not is_tuple:
        return kind(text)
    try:
        return tuple(kind(t.strip()) for t in str(text).split(",") if t.strip())
    except ValueError:
        raise ValueError(f"--{flag} must be a comma-separated list of {kind.__name__}, got {text!r}") from None


def config_parser(config: type, prog: str, description: str) -> argparse.ArgumentParser:
    """An argparse parser with --smoke, --out-dir and --seed plus one option per field of the
    dataclass `config` (name, default and help from the field and its `option` metadata;
    lists comma-separated, booleans as switches). Values stay strings until
    `config_from_args`, so the dataclass alone decides what is valid."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--smoke", action="store_true", help="tiny random model on CPU, a few points, seconds")
    parser.add_argument("--out-dir", default=None, help="folder of the CSV (default: $OUT, else experiments/results)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the drawn batches (default 0)")
    hints = get_type_hints(config)
    for f in fields(config):
        if f.name == "seed":
            continue
        flag = f.metadata.get("flag") or f.name.replace("_", "-")
        kind, is_tuple = _item_type(hints[f.name])
        help_text = f.metadata.get("help", "")
        if kind is bool:
            parser.add_argument(f"--{flag}", dest=f.name, action="store_true", help=help_text)
            continue
        default = ",".join(map(str, f.default)) if is_tuple else f.default
        parser.add_argument(f"--{flag}", dest=f.name, default=default, help=f"{help_text} (default: {default})".strip())
    return parser


def config_from_args(config: type, args: argparse.Namespace) -> Any:
    """The `config` dataclass from parsed options (`config.smoke(seed)` under --smoke);
    ValueError on a value that does not parse or that the dataclass refuses."""
    if args.smoke:
        return config.smoke(args.seed)
    hints, values = get_type_hints(config), {}
    for f in fields(config):
        if f.name == "seed":
            values["seed"] = args.seed
            continue
        raw = getattr(args, f.name)
        kind, is_tuple = _item_type(hints[f.name])
        flag = f.metadata.get("flag") or f.name.replace("_", "-")
        if kind is bool or raw is None or (not is_tuple and not isinstance(raw, str)):
            values[f.name] = raw
            continue
        try:
            values[f.name] = _parse_value(raw, kind, is_tuple, flag)
        except ValueError as exc:
            raise ValueError(str(exc) if is_tuple else f"--{flag} must be {kind.__name__}, got {raw!r}") from None
    return config(**values)


def config_main(config: type, run: Callable[[Any, str | None], Any], argv: Sequence[str] | None, *,
                prog: str, description: str) -> int:  # fmt: skip
    """The whole CLI of an experiment script: parse `argv` into its `config` dataclass
    (`config_parser`, `config_from_args`) and call `run(cfg, out_dir)`. Bad input (a
    ValueError from parsing, the dataclass or the run) prints one line to stderr; returns 2
    then, else 0."""
    parser = config_parser(config, prog, description)
    return run_cli(lambda args: run(config_from_args(config, args), args.out_dir), parser, argv)


def model_script(config: type, run_for_model: Callable[..., list[dict]], *, csv_name: str, prog: str,
                 doc: str) -> tuple[Callable[..., list[dict]], Callable[[Sequence[str] | None], int]]:  # fmt: skip
    """`run` and `main` of a per-model experiment script: `run(cfg, out_dir)` builds each
    model of `cfg` in turn (`experiments.common.run_models`, rows to `csv_name`) and calls
    `run_for_model` on it; `main(argv)` is its CLI (`config_main`, described by the first
    line of `doc`)."""
    run = partial(run_models, csv_name=csv_name, run_for_model=run_for_model)

    def main(argv: Sequence[str] | None = None) -> int:
        return config_main(config, run, argv, prog=prog, description=doc.splitlines()[0])

    return run, main


@dataclass(frozen=True)
class ModelsConfig:
    """The settings every GPU experiment shares: model shapes built one at a time
    (`experiments.common.run_models`), the seed of the drawn batches and the torch device.
    A script's `Config` subclasses it with its own `option` fields (redeclaring `models` to
    change its default); `__post_init__` validates every field (`check_fields`)."""

    models: tuple[str, ...] = option(GPU_MODELS, "model shapes (gpu_runner.bench.MODEL_SHAPES)")
    seed: int = 0
    device: str = option("cuda", "torch device")

    def __post_init__(self) -> None:
        check_fields(self)
