"""pass^k reports: a table for the console, a plot of pass^k against k (one line per agent), and
a learning curve (pass^k against training step)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


def _plot(lines: Mapping[str, tuple[list, list]], path: str | Path, xlabel: str, ylabel: str, title: str):
    """One PNG of ``lines[name] = (xs, ys)`` on a 0..1 y axis."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for name, (xs, ys) in lines.items():
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.set_xticks(sorted({x for xs, _ in lines.values() for x in xs}))
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


def plot_passk(results: Mapping[str, Mapping[int, float]], path: str | Path, title: str = "") -> Path:
    """Write pass^k against k (one line per agent) as a PNG."""
    lines = {name: (sorted(r), [r[k] for k in sorted(r)]) for name, r in results.items()}
    return _plot(lines, path, "k", "pass^k", title)


def plot_curve(points: Sequence[Mapping[str, float]], path: str | Path, title: str = "") -> Path:
    """Write a learning curve as a PNG: each ``pass^k`` key of ``points`` (rows with a
    ``step``) against the step."""
    keys = sorted({k for p in points for k in p if k.startswith("pass^")}, key=lambda k: int(k[5:]))
    lines = {k: ([p["step"] for p in points], [p[k] for p in points]) for k in keys}
    return _plot(lines, path, "GRPO step", "held-out pass^k", title)


def plot_curves(
    runs: Mapping[str, Sequence[Mapping[str, float]]], path: str | Path, key: str = "pass^1", title: str = ""
) -> Path:
    """Several learning curves on one PNG: ``key`` of each run's points (``grpo/heldout.jsonl``
    rows) against the step, one line per run name."""
    lines = {name: ([p["step"] for p in pts], [p[key] for p in pts]) for name, pts in runs.items()}
    return _plot(lines, path, "GRPO step", f"held-out {key}", title)
