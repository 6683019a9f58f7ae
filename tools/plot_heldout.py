"""Compare GRPO learning curves: several runs' held-out pass^k (``grpo/heldout.jsonl``) on one PNG.

    python tools/plot_heldout.py --out curves.png "seed 0=runs/a" "seed 1=runs/b/grpo/heldout.jsonl"

A run directory stands for its ``grpo/heldout.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from eigen_apps.eval.report import plot_curves


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="NAME=PATH of a heldout.jsonl (or of the run directory)")
    ap.add_argument("--out", required=True, help="the PNG to write")
    ap.add_argument("--key", default="pass^1", help="which pass^k to plot (default pass^1)")
    ap.add_argument("--title", default="")
    args = ap.parse_args(argv)
    runs = {}
    for spec in args.runs:
        name, sep, where = spec.partition("=")
        if not sep:
            ap.error(f"{spec!r}: expected NAME=PATH")
        path = Path(where)
        if path.is_dir():
            path = path / "grpo/heldout.jsonl"
        try:
            runs[name] = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        except (OSError, ValueError) as e:
            ap.error(f"{path}: {e}")
        if not runs[name] or any(args.key not in p or "step" not in p for p in runs[name]):
            ap.error(f"{path}: every line needs 'step' and {args.key!r}")
    print(plot_curves(runs, args.out, args.key, args.title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
