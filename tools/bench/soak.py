"""The soak's figures: RSS, threads and descriptors per minute of a 30-minute GRPO run.

    bash tools/test.sh -m soak -s   # writes runs/soak.jsonl and runs/soak_steps.jsonl (tests/test_soak.py)
    python tools/bench/soak.py [--samples runs/soak.jsonl] [--steps runs/soak_steps.jsonl]

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
    ap.add_argument("--steps", default=str(ROOT / "runs/soak_steps.jsonl"))
    args = ap.parse_args()
    samples = [json.loads(x) for x in Path(args.samples).read_text().splitlines()]
    steps = [json.loads(x) for x in Path(args.steps).read_text().splitlines()]
    t = trend(samples, steps)
    growth, k, n = t["rss_growth"], t["window"], t["step_window"]
    verdict = "met" if growth < 0.05 else "NOT met"
    (lo0, lo1), (hi0, hi1), (s0, s1) = t["rss_low_mb"], t["rss_high_mb"], t["step_rss_mb"]
    cache = max((r.get("prefix_cache_mb", 0.0) for r in steps), default=0.0)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    hot = [r for r in steps if "host_rss_mb" in r]
    ax.plot([r["time"] / 60 for r in hot], [r["host_rss_mb"] for r in hot], lw=0.6, label="end of each step")
    ax.plot([s["minute"] for s in samples], [s["rss_mb"] for s in samples], "o", ms=3, label="every 30 s")
    ax.axvline(t["warm_from"], color="grey", ls="--", lw=1)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("minute")
    ax.set_ylabel("RSS (MB)")
    ax.set_title(f"GRPO soak: {samples[-1]['steps']} steps; RSS growth after warm-up {growth:+.1%}")
    fig.tight_layout()
    png = ROOT / "docs/soak_rss.png"
    fig.savefig(png, dpi=110)
    rows = "\n".join(
        f"| {s['minute']:.1f} | {s['steps']} | {s['rss_mb']:.0f} | {s['threads']} | {s['fds']} "
        f"| {s.get('programs', -1):g} |"
        for s in samples
    )
    body = f"""## Soak: 30 minutes of GRPO on episodes

`bash tools/test.sh -m soak -s` then `python tools/bench/soak.py` — {machine()}. The quickstart's
tiny model from scratch, embedded sampler with a 64 MB prefix cache, scripted user; warm-up is
the first sixth. The verdict is the resident memory the run logs at the end of every step
(`host_rss_mb`, the same point of each step's cycle): median of the first {n} steps after warm-up
{s0:.0f} MB, of the last {n} {s1:.0f} MB, growth **{growth:+.1%}** (bar: < 5%: {verdict};
`tests/soak_trend.py`). Seen from outside every 30 s, RSS alternates between levels with the
batch in flight; the lowest and highest of the first {k} samples after warm-up against those of
the last {k}: lows {lo0:.0f} → {lo1:.0f} MB, highs {hi0:.0f} → {hi1:.0f} MB. Threads
{t["threads"][0]:g} → {t["threads"][1]:g}, descriptors {t["fds"][0]:g} → {t["fds"][1]:g} (window medians).
"Sampler programs" is the number of generation programs compiled so far (the step's
`compiled_programs` metric; -1: not recorded): each holds host memory, so RSS lows that rise with
it are compilation, not a leak. Prefix cache (`prefix_cache_mb` at each step's end: the engine's
store and the live lockstep cohorts' own stores, which share the budget): at most {cache:.1f} MB
of the 64 MB budget.

![RSS per minute](docs/soak_rss.png)

| minute | GRPO steps | RSS (MB) | threads | descriptors | sampler programs |
|---:|---:|---:|---:|---:|---:|
{rows}
"""
    print(body)
    write_section("soak", body, RELIABILITY)
    return 0


if __name__ == "__main__":
    sys.exit(main())
