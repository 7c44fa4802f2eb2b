"""Does sharing contexts pay? Token counts of `gpu_runner.score`'s three layouts
(share_contexts none / identical / tree) on the whole request sets of scoring_bench.py,
what share_contexts="auto" picks for each, and (with --time) CPU wall times of the three
on a small random Llama, interleaved, best of --reps. CPU only: GPU timings are
scoring_bench.py's ours-identical vs ours-tree records.

  python benchmarks/scoring_share.py --time --out benchmarks/results/scoring_share_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from scoring_bench import SETS, make_requests  # noqa: E402

import gpu_runner  # noqa: E402
from gpu_runner.bench import load_lengths  # noqa: E402
from gpu_runner.score_requests import SHARE_MODES, auto_share, layout_requests, validate_requests  # noqa: E402

VOCAB = 32000


def token_counts(limit: int = 0) -> list[dict]:
    """Per set and layout: segments, fed tokens, distinct scored positions, longest segment."""
    lengths = load_lengths("mmlu")
    lengths = lengths[:limit] if limit else lengths
    rows = []
    for name in SETS:
        checked = validate_requests(make_requests(name, lengths, VOCAB), vocab_size=VOCAB, max_input_tokens=None)
        choice = auto_share(checked)
        for share in SHARE_MODES:
            layout = layout_requests(checked, share)
            rows.append({"set": name, "share": share, "requests": checked.num_requests, "segments": layout.num_segments,
                         "fed_tokens": layout.num_fed_tokens, "scored_positions": int(layout.unique_offset.size),
                         "longest_segment": max(layout.lengths), "auto_picks": choice})  # fmt: skip
    return rows


def cpu_times(contexts: int, reps: int) -> list[dict]:
    """Best-of-`reps` wall time per set and layout on a 4-layer, 256-wide random Llama (fp32)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=4000, max_position_embeddings=4096)  # fmt: skip
    model = AutoModelForCausalLM.from_config(config).eval()
    lengths = load_lengths("mmlu")[:contexts]
    rows = []
    for name in ("mmlu", "hellaswag"):
        requests = make_requests(name, lengths, config.vocab_size)
        best: dict[str, float] = {}
        for _ in range(reps):
            for share in SHARE_MODES:
                t0 = time.perf_counter()
                gpu_runner.score(model, requests, share_contexts=share)
                best[share] = min(best.get(share, float("inf")), time.perf_counter() - t0)
        rows += [{"set": name, "share": s, "requests": len(requests), "best_wall_s": t} for s, t in best.items()]
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=0, help="first N contexts for the token counts (0 = all)")
    p.add_argument("--time", action="store_true", help="also time the layouts on a small CPU model")
    p.add_argument("--contexts", type=int, default=40, help="contexts for the CPU timing")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    result = {"machine": f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
              "token_counts": token_counts(args.limit)}  # fmt: skip
    if args.time:
        result["cpu_times"] = cpu_times(args.contexts, args.reps)
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
