"""Per-round statistics of a synth run (what reflection reads and the report shows) and the plot."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from synth.plans import PlanPair
from synth.worker import AttemptRecord


def _frontier(p: float | None) -> bool:
    return p is not None and 0.0 < p < 1.0


def plan_stats(records: list[AttemptRecord]) -> dict[str, Any]:
    rejections: Counter = Counter()
    examples: dict[str, list[str]] = defaultdict(list)
    faults: Counter = Counter()
    for r in records:
        if not r.accepted:  # each code counts once per attempt; examples show the details
            rejections.update({reason.code for reason in r.reasons})
            for reason in r.reasons:
                if len(examples[reason.code]) < 3:
                    examples[reason.code].append(reason.detail[:300])
        for v in r.rollout.verdicts if r.rollout else []:
            faults[f"{v.fault}:{v.tag}"] += 1
    rates = [
        r.rollout.pass_rate for r in records if r.accepted and r.rollout and r.rollout.pass_rate is not None
    ]
    accepted = sum(r.accepted for r in records)
    return {
        "proposed": len(records),
        "accepted": accepted,
        "yield": round(accepted / len(records), 4) if records else None,
        "rejections": dict(rejections.most_common()),
        "examples": dict(examples),
        "faults": dict(faults.most_common()),
        "pass_rate": round(sum(rates) / len(rates), 4) if rates else None,
        "frontier_share": round(sum(map(_frontier, rates)) / len(rates), 4) if rates else None,
        "pass_rates": [round(x, 4) for x in rates],
    }


def round_stats(rnd: int, plans: list[PlanPair], records: list[AttemptRecord]) -> dict[str, Any]:
    """The round's totals and per-plan statistics (rejection histogram, yield, faults)."""
    by_plan: dict[str, list[AttemptRecord]] = defaultdict(list)
    for r in records:
        by_plan[r.plan_id].append(r)
    total = plan_stats(records)
    total.pop("pass_rates")
    return {
        "round": rnd,
        **total,
        "stages": dict(Counter(r.stage for r in records if not r.accepted)),
        "plans": [
            {
                "id": p.id,
                "version": p.version,
                "weight": p.weight,
                "knobs": p.knobs,
                "rationale": p.rationale,
                **plan_stats(by_plan.get(p.id, [])),
            }
            for p in plans
        ],
    }


def plot_report(report: dict[str, Any], path: Path) -> None:
    """Yield per plan and round, and the rejection reasons per round, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = report["rounds"]
    if not rounds:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    xs = [r["round"] for r in rounds]
    ids = sorted({p["id"] for r in rounds for p in r["plans"]})
    for pid in ids:
        ys = [next((p["yield"] for p in r["plans"] if p["id"] == pid), None) for r in rounds]
        a.plot(xs, [y if y is not None else float("nan") for y in ys], marker="o", alpha=0.6, label=pid)
    a.plot(xs, [r["yield"] or 0 for r in rounds], color="black", linewidth=2.5, marker="s", label="all")
    a.set(
        xlabel="round",
        ylabel="accepted / proposed",
        title=f"{report['domain']}: yield per plan",
        ylim=(0, 1.05),
    )
    a.legend(fontsize=7, ncol=2)
    codes = sorted({c for r in rounds for c in r["rejections"]})
    bottom = [0] * len(rounds)
    for c in codes:
        ys = [r["rejections"].get(c, 0) for r in rounds]
        b.bar(xs, ys, bottom=bottom, label=c)
        bottom = [x + y for x, y in zip(bottom, ys, strict=True)]
    b.set(xlabel="round", ylabel="attempts", title="rejection reasons")
    if codes:
        b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _cell(text: Any, width: int = 160) -> str:
    s = " ".join(str(text).split()).replace("|", "\\|")
    return s if len(s) <= width else s[: width - 1] + "…"


def report_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown (``report.md``): totals, then per round the plans with their
    yield and rejection histogram, the trajectory faults, and an example per rejection code."""
    lines = [
        f"# synth run: {report['domain']}",
        "",
        f"- proposed {report['proposed']}, accepted {report['accepted']} "
        f"(pool `{report['pool']}`); calls {report['calls']}, tokens {report['tokens']}"
        + (f"; stopped: {report['stopped']}" if report.get("stopped") else ""),
        "- calls per role: " + ", ".join(f"{k} {v}" for k, v in report["budget"]["calls"].items()),
    ]
    planner = report.get("planner")
    if planner:
        lines.append(
            f"- planner: {len(planner['errors'])} unusable answers, {len(planner['rejected_overlap'])} "
            f"plans rejected for overlap, {planner['seeded']} seed plans filled in"
        )
    for r in report["rounds"]:
        lines += [
            "",
            f"## Round {r['round']}: yield {r['yield']} ({r['accepted']} / {r['proposed']})",
            "",
            "| plan | version | proposed | accepted | yield | rejections | rationale |",
            "|---|---|---|---|---|---|---|",
        ]
        for p in r["plans"]:
            rej = ", ".join(f"{k} {v}" for k, v in p["rejections"].items()) or "-"
            lines.append(
                f"| {p['id']} | {p['version']} | {p['proposed']} | {p['accepted']} | {p['yield']} "
                f"| {rej} | {_cell(p['rationale'], 120)} |"
            )
        if r["faults"]:
            lines += ["", "Trajectory verdicts: " + ", ".join(f"{k} {v}" for k, v in r["faults"].items())]
        if r.get("pass_rate") is not None:
            lines.append(f"Mean pass rate of accepted tasks: {r['pass_rate']}")
        if r["examples"]:
            lines += ["", "| rejection | example |", "|---|---|"]
            lines += [f"| {code} | {_cell(ex[0])} |" for code, ex in r["examples"].items() if ex]
    return "\n".join(lines) + "\n"
