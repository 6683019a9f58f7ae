"""pass^k reports: a table for the console and a plot (pass^k against k, one line per agent)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def passk_table(results: Mapping[str, Mapping[int, float]]) -> str:
    """``results[agent][k]`` as a fixed-width table, one row per agent."""
    ks = sorted({k for r in results.values() for k in r})
    w = max([10, *(len(n) + 2 for n in results)])
    head = f"{'agent':<{w}}" + "".join(f"{'pass^' + str(k):>9}" for k in ks)
    rows = [
        f"{name:<{w}}" + "".join(f"{r.get(k, float('nan')):>9.3f}" for k in ks) for name, r in results.items()
    ]
    return "\n".join([head, *rows])


def plot_passk(results: Mapping[str, Mapping[int, float]], path: str | Path, title: str = "") -> Path:
    """Write pass^k against k (one line per agent) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for name, r in results.items():
        ks = sorted(r)
        ax.plot(ks, [r[k] for k in ks], marker="o", label=name)
    ax.set_xlabel("k")
    ax.set_ylabel("pass^k")
    ax.set_ylim(0, 1)
    ax.set_xticks(sorted({k for r in results.values() for k in r}))
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
