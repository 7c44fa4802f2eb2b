"""The model-zoo support matrix: measure it, write the allowlist and the Markdown table.

    python -m tests.zoo_matrix --write     # re-measure under the installed transformers, save
                                           # tests/data/zoo_measurements/transformers-<v>.json,
                                           # rewrite gpu_runner/support_table.py (combined with
                                           # the other versions' files) and docs/support_matrix.md
    python -m tests.zoo_matrix --write-matrix   # rewrite only the matrix (refusal wording changed)
    python -m tests.zoo_matrix --write-table    # re-emit the table from the committed measurements
    python -m tests.zoo_matrix             # print the matrix the library gives now

Measuring runs every path with the library's checks off (`support.probing`) and keeps,
per path, the model types whose results equal each prompt run alone (`zoo_check`); generate
is measured on the prefill backend `auto` would then pick (dense, else flex). Those sets
become `support.PROVEN`; the table then shows, per (type, path), "exact" or the refusal's
feature as the library states it. tests/test_model_zoo.py checks both against reality.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import textwrap
import warnings

import torch

from tests.zoo_check import PATHS, WINDOWED_LENGTHS, check_path
from tests.zoo_models import TINY_WINDOW, build_tiny, causal_lm_types
from tests.zoo_versions import Combined, Measurement, combine, load_all, save

ROOT = pathlib.Path(__file__).resolve().parents[1]
TABLE = ROOT / "gpu_runner" / "support_table.py"
MATRIX = ROOT / "docs" / "support_matrix.md"


def quiet() -> None:
    """Tiny models on 2 cores: one thread is fastest; transformers' warnings off."""
    import logging

    import transformers

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    logging.disable(logging.WARNING)


WINDOWED_PATHS = ("dense", "flex", "varlen", "generate")


def windowed_model(zoo_type: str) -> torch.nn.Module | None:
    """The zoo type built with windows of TINY_WINDOW tokens, where its tiny model has a
    local window at all (else None)."""
    from gpu_runner.plan import text_config
    from gpu_runner.support import local_window

    model = build_tiny(zoo_type)
    if isinstance(model, str) or local_window(text_config(model.config)) is None:
        return None
    small = build_tiny(zoo_type, TINY_WINDOW)
    if isinstance(small, str) or local_window(text_config(small.config)) != TINY_WINDOW:
        return None
    return small


def _measure_windowed(model: torch.nn.Module) -> dict[str, bool]:
    found = {p: check_path(model, p, lengths=WINDOWED_LENGTHS).kind == "exact" for p in ("dense", "flex", "varlen")}
    backend = next((b for b in ("dense", "flex") if found[b]), None)
    found["generate"] = backend is not None and check_path(
        model, "generate", backend=backend, lengths=WINDOWED_LENGTHS
    ).kind == "exact"
    return found


def measure() -> tuple[Measurement, dict[str, str]]:
    """(what the installed transformers gives: library types built, exact per path, exact
    per path with prompts longer than a tiny window; skipped: zoo type -> reason)."""
    import transformers

    from gpu_runner.support import probing

    from gpu_runner.support import model_type as library_type

    exact: dict[str, dict[str, list[bool]]] = {p: {} for p in PATHS}  # path -> library type -> per zoo type
    windowed: dict[str, dict[str, list[bool]]] = {p: {} for p in WINDOWED_PATHS}
    skipped: dict[str, str] = {}
    with probing():
        for zoo_type in causal_lm_types():
            model = build_tiny(zoo_type)
            if isinstance(model, str):
                skipped[zoo_type] = model
                continue
            # the allowlist is keyed by what the library reads (config.model_type: Emu3's
            # causal LM is "emu3_text_model"), not by the auto-mapping key
            name = library_type(model)
            found = {p: check_path(model, p).kind == "exact" for p in ("dense", "flex", "varlen", "engine")}
            backend = next((b for b in ("dense", "flex") if found[b]), None)
            found["generate"] = backend is not None and check_path(model, "generate", backend=backend).kind == "exact"
            for path, ok in found.items():
                exact[path].setdefault(name, []).append(ok)
            small = windowed_model(zoo_type)
            if small is not None:
                for path, ok in _measure_windowed(small).items():
                    windowed[path].setdefault(name, []).append(ok)
    # a library type is proven on a path only if every zoo type that builds it is exact there
    proven = {p: frozenset(name for name, oks in exact[p].items() if all(oks)) for p in PATHS}
    local = {p: frozenset(n for n, oks in windowed[p].items() if all(oks) and n in proven[p]) for p in WINDOWED_PATHS}
    built = frozenset(exact["dense"])
    return Measurement(transformers.__version__, built, proven, local, frozenset(skipped)), skipped


def _names(names: set[str] | frozenset[str], indent: str) -> list[str]:
    """`names` sorted and quoted, a few to a line (the table stays short and free of long runs)."""
    body = ", ".join(f'"{name}"' for name in sorted(names))
    return textwrap.wrap(body, width=96, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False)


def write_table(table: Combined) -> None:
    """Each path's set as `_ALL` less what it lacks, or spelled out where that is shorter;
    WINDOWED and VERSION_DEPENDENT spelled out."""
    proven, windowed = table.proven, table.windowed
    every = set().union(*(proven[path] for path in PATHS))
    lines = [
        '"""Generated by `python -m tests.zoo_matrix --write`; do not edit by hand.',
        "",
        "PROVEN[path]: the model types the model-zoo conformance test proved exact on that path",
        "(tiny random-weight fp32 models of the installed transformers, packed prompts against",
        'each prompt run alone; see tests/test_model_zoo.py and docs/support_matrix.md).',
        "_ALL: the model types proven on at least one path.",
        "WINDOWED[path]: those also proven with prompts longer than a tiny local-attention window",
        "(windowed packed masks, gpu_runner.windows; zoo_check.WINDOWED_LENGTHS).",
        "Proven = exact under every transformers version of MEASURED_VERSIONS that builds the type",
        "(tests/zoo_versions.py); VERSION_DEPENDENT[path] (WINDOWED_VERSION_DEPENDENT[path]):",
        "exact under some of them, not all.",
        '"""',
        "",
        "_ALL: frozenset[str] = frozenset({",
        *_names(every, "    "),
        "})",
        "",
        "PROVEN: dict[str, frozenset[str]] = {",
    ]
    for path in PATHS:
        missing = every - set(proven[path])
        if len(missing) < len(proven[path]):
            lines.append(f'    "{path}": _ALL - frozenset({{')
            lines += _names(missing, "        ")
        else:
            lines.append(f'    "{path}": frozenset({{')
            lines += _names(proven[path], "        ")
        lines.append("    }),")
    lines.append("}")
    for title, sets, paths in (
        ("WINDOWED", windowed, WINDOWED_PATHS),
        ("VERSION_DEPENDENT", table.version_dependent, PATHS),
        ("WINDOWED_VERSION_DEPENDENT", table.windowed_version_dependent, WINDOWED_PATHS),
    ):
        lines += ["", f"{title}: dict[str, frozenset[str]] = {{"]
        for path in paths:
            lines.append(f'    "{path}": frozenset({{')
            lines += _names(set(sets.get(path, ())), "        ")
            lines.append("    }),")
        lines.append("}")
    lines += ["", f"MEASURED_VERSIONS: tuple[str, ...] = {table.versions!r}"]
    TABLE.write_text("\n".join(lines) + "\n")


def cell(model: torch.nn.Module, path: str) -> str:
    """What the library says for (model, path): "exact" or "refused: <feature>"."""
    from gpu_runner.support import refusal

    found = refusal(model, path)
    return "exact" if found is None else f"refused: {found.feature}"


def library_matrix() -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """(rows: model type -> path -> cell, skipped: model type -> reason) as the library decides."""
    rows: dict[str, dict[str, str]] = {}
    skipped: dict[str, str] = {}
    for model_type in causal_lm_types():
        model = build_tiny(model_type)
        if isinstance(model, str):
            skipped[model_type] = model
        else:
            rows[model_type] = {p: cell(model, p) for p in PATHS}
    return rows, skipped


def render(rows: dict[str, dict[str, str]], skipped: dict[str, str]) -> str:
    import transformers

    from gpu_runner.support import MEASURED_VERSIONS as versions
    from gpu_runner.support import WINDOWED as windowed

    prefill = sum(
        1 for r in rows.values() if r["generate"] == "exact" and "exact" in (r["dense"], r["flex"])
    )
    counts = {p: sum(r[p] == "exact" for r in rows.values()) for p in PATHS}
    out = [
        "# Support matrix",
        "",
        f"transformers {transformers.__version__}: {len(rows) + len(skipped)} causal-LM model types, "
        f"{len(rows)} built tiny (random fp32 weights, CPU), {len(skipped)} skipped.",
        f"Exact through prefill (dense or flex) and generate: **{prefill}** types. "
        + ", ".join(f"{p}: {n}" for p, n in counts.items()) + ".",
        "",
        "\"exact\": packed results equal each prompt run alone (logits and K/V, or greedy",
        "tokens) in tests/test_model_zoo.py; \"refused\": the library raises",
        "`UnsupportedModelError` naming the feature. varlen is proven on CPU with the",
        "reference kernel (same plumbing as the CUDA one). Regenerate with",
        "`python -m tests.zoo_matrix --write`.",
        f"Proven under every transformers version measured ({', '.join(versions)}; "
        "tests/data/zoo_measurements/) that builds the type.",
        "Prompts longer than a local-attention window (windowed packed masks, proven with",
        f"{TINY_WINDOW}-token windows; `support_table.WINDOWED`): "
        + ", ".join(f"{p}: {len(windowed[p])}" for p in WINDOWED_PATHS) + " types.",
        "",
        "| model type | " + " | ".join(PATHS) + " |",
        "|---|" + "---|" * len(PATHS),
    ]
    out += [f"| {t} | " + " | ".join(r[p] for p in PATHS) + " |" for t, r in sorted(rows.items())]
    out += ["", "## Skipped (cannot be built tiny offline)", "", "| model type | reason |", "|---|---|"]
    out += [f"| {t} | {reason.replace('|', '/')} |" for t, reason in sorted(skipped.items())]
    return "\n".join(out) + "\n"


def parse(text: str) -> tuple[str, dict[str, dict[str, str]]]:
    """(transformers version, rows) of a rendered matrix."""
    version = re.search(r"^transformers (\S+):", text, re.MULTILINE)
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == len(PATHS) + 1 and cells[0] not in ("model type", "---"):
            rows[cells[0]] = dict(zip(PATHS, cells[1:]))
    return (version.group(1) if version else ""), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="re-measure and rewrite the table and matrix")
    parser.add_argument(
        "--write-matrix", action="store_true", help="rewrite only the matrix, from the current table"
    )
    parser.add_argument(
        "--write-table", action="store_true", help="re-emit the table from the committed measurements, measuring nothing"
    )
    args = parser.parse_args()
    if args.write_table:
        write_table(combine(load_all()))  # the committed measurements, nothing measured
        return
    quiet()
    if args.write:
        import importlib

        import gpu_runner.support
        import gpu_runner.support_table

        here, _ = measure()
        save(here)  # this version's measurement; the table combines it with the other versions'
        write_table(combine([m for m in load_all() if m.version != here.version] + [here]))
        importlib.reload(gpu_runner.support_table)
        for name in ("PROVEN", "WINDOWED", "VERSION_DEPENDENT", "MEASURED_VERSIONS"):  # what support reads
            setattr(gpu_runner.support, name, getattr(gpu_runner.support_table, name))
    rows, skipped = library_matrix()
    text = render(rows, skipped)
    if args.write or args.write_matrix:
        MATRIX.parent.mkdir(exist_ok=True)
        MATRIX.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
