"""The soak's figures: RSS, threads and descriptors per minute of a 30-minute GRPO run.

    bash tools/test.sh -m soak -s            # writes runs/soak.jsonl (tests/test_soak.py)
    python tools/bench/soak.py [--samples runs/soak.jsonl]

Plots docs/soak_rss.png and writes RELIABILITY.md's soak section from the samples.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
sys.path.insert(0, str(Path(__file__).parent))

from _report import RELIABILITY, machine, write_section  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", default=str(ROOT / "runs/soak.jsonl"))
    args = ap.parse_args()
    samples = [json.loads(x) for x in Path(args.samples).read_text().splitlines()]
    minutes = samples[-1]["minute"]
    warm = [s for s in samples if s["minute"] >= minutes / 6]
    k = max(1, min(10, len(warm) // 3))
    first, last = warm[:k], warm[-k:]
    med = lambda xs: statistics.median(s["rss_mb"] for s in xs)  # noqa: E731
    growth = med(last) / med(first) - 1
    mid = lambda xs, key: statistics.median(s[key] for s in xs)  # noqa: E731
    verdict = "met" if growth < 0.05 else "NOT met"

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot([s["minute"] for s in samples], [s["rss_mb"] for s in samples], marker="o", ms=3)
    ax.axvline(minutes / 6, color="grey", ls="--", lw=1)
    ax.set_xlabel("minute")
    ax.set_ylabel("RSS (MB)")
    ax.set_title(f"GRPO soak: {samples[-1]['steps']} steps; RSS growth after warm-up {growth:+.1%}")
    fig.tight_layout()
    png = ROOT / "docs/soak_rss.png"
    fig.savefig(png, dpi=110)
    rows = "\n".join(
        f"| {s['minute']:.1f} | {s['steps']} | {s['rss_mb']:.0f} | {s['threads']} | {s['fds']} |"
        for s in samples
    )
    body = f"""## Soak: 30 minutes of GRPO on episodes

`bash tools/test.sh -m soak -s` then `python tools/bench/soak.py` — {machine()}. The quickstart's
tiny model from scratch, embedded sampler with a 64 MB prefix cache, scripted user, sampled every
30 s; warm-up is the first sixth. RSS swings with the batch in flight, so the median of the
first {k} samples after warm-up is compared with the median of the last {k}: growth
**{growth:+.1%}** (bar: < 5%: {verdict}); threads {mid(first, "threads"):g} → {mid(last, "threads"):g},
descriptors {mid(first, "fds"):g} → {mid(last, "fds"):g} (medians of the same windows).

![RSS per minute](docs/soak_rss.png)

| minute | GRPO steps | RSS (MB) | threads | descriptors |
|---:|---:|---:|---:|---:|
{rows}
"""
    print(body)
    write_section("soak", body, RELIABILITY)
    return 0


if __name__ == "__main__":
    sys.exit(main())
