"""The soak's figures: RSS, threads and descriptors per minute of a 30-minute GRPO run.

    bash tools/test.sh -m soak -s            # writes runs/soak.jsonl (tests/test_soak.py)
    python tools/bench/soak.py [--samples runs/soak.jsonl]

Plots docs/soak_rss.png and writes RELIABILITY.md's soak section from the samples.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT / "tests"))

from _report import RELIABILITY, machine, write_section  # noqa: E402
from soak_trend import trend  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", default=str(ROOT / "runs/soak.jsonl"))
    args = ap.parse_args()
    samples = [json.loads(x) for x in Path(args.samples).read_text().splitlines()]
    t = trend(samples)
    growth, k = t["rss_growth"], t["window"]
    verdict = "met" if growth < 0.05 else "NOT met"
    (lo0, lo1), (hi0, hi1) = t["rss_low_mb"], t["rss_high_mb"]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot([s["minute"] for s in samples], [s["rss_mb"] for s in samples], marker="o", ms=3)
    ax.axvline(t["warm_from"], color="grey", ls="--", lw=1)
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
30 s; warm-up is the first sixth. RSS alternates between levels with the batch in flight, so
each level is compared: the lowest and the highest of the first {k} samples after warm-up against
those of the last {k} (`tests/soak_trend.py`): lows {lo0:.0f} → {lo1:.0f} MB, highs {hi0:.0f} →
{hi1:.0f} MB, growth **{growth:+.1%}** (the larger; bar: < 5%: {verdict}); threads
{t["threads"][0]:g} → {t["threads"][1]:g}, descriptors {t["fds"][0]:g} → {t["fds"][1]:g} (window medians).

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
