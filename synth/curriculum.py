"""LLM-free mode: the procedural generator is the synthesizer, and reflection is a curriculum that
moves each stream's knobs toward the current policy's frontier.

Each stream samples tasks from a window of request counts (``min_actions..max_actions``) and a
share of forbidden requests. After a round, each accepted task's pass rate (over
``rollouts_per_task`` episodes of the policy) gives it a weight: 1 on the frontier (some samples
solve it, some do not), ``saturated_weight`` when every sample or none solved it. A stream whose
tasks are mostly solved gets harder (window up, more forbidden requests), one whose tasks are
mostly failed gets easier, and each stream's share of the next round follows its tasks' mean
weight. Runs on a CPU against any policy endpoint (e.g. ``eigen_jax.serve``).
"""

from __future__ import annotations

from typing import Any

from eigen_core.contracts import Provenance, Task
from synth.config import CurriculumConfig, ProceduralConfig
from synth.context import DomainContext
from synth.plans import EvaluationPlan, PlanPair, SynthesisPlan
from synth.procedural import GENERATORS
from synth.seeding import hash_int
from synth.validate import Rejection

KNOBS = ("min_actions", "max_actions", "forbidden_prob")


def _tier(max_actions: int) -> str:
    return "easy" if max_actions <= 1 else "medium" if max_actions <= 3 else "hard"


def _plan(pid: str, knobs: dict[str, Any], **kw: Any) -> PlanPair:
    return PlanPair(
        id=pid,
        synthesis=SynthesisPlan(
            complexity=_tier(int(knobs["max_actions"])),  # type: ignore[arg-type]
            tool_patterns=[["get_customer", "get_order", "cancel_order|return_order"]],
            user_style="scripted customer",
            target_entities=[f"{knobs['min_actions']}-{knobs['max_actions']} requests"],
        ),
        evaluation=EvaluationPlan(rubric=["the policy solves the task sometimes, not always"]),
        knobs=dict(knobs),
        **kw,
    )


def task_weight(pass_rate: float | None, saturated_weight: float) -> float:
    """1 for a frontier task (0 < pass rate < 1), ``saturated_weight`` otherwise."""
    if pass_rate is None:
        return 0.0
    return 1.0 if 0.0 < pass_rate < 1.0 else saturated_weight


def next_knobs(
    knobs: dict[str, Any], mean_pass: float | None, cfg: CurriculumConfig
) -> tuple[dict[str, Any], str]:
    """The stream's knobs for the next round and why."""
    k = dict(knobs)
    lo, hi = int(k["min_actions"]), int(k["max_actions"])
    if mean_pass is None:
        return k, "no accepted tasks: knobs kept"
    if mean_pass > cfg.target_high and hi < cfg.max_actions_cap:
        k["min_actions"], k["max_actions"] = lo + 1, hi + 1
        k["forbidden_prob"] = round(min(0.6, float(k["forbidden_prob"]) + 0.1), 3)
        return (
            k,
            f"mean pass {mean_pass:.2f} > {cfg.target_high}: harder "
            f"({lo}-{hi} -> {lo + 1}-{hi + 1} requests)",
        )
    if mean_pass < cfg.target_low and lo > 1:
        k["min_actions"], k["max_actions"] = lo - 1, hi - 1
        k["forbidden_prob"] = round(max(0.0, float(k["forbidden_prob"]) - 0.1), 3)
        return (
            k,
            f"mean pass {mean_pass:.2f} < {cfg.target_low}: easier ({lo}-{hi} -> {lo - 1}-{hi - 1} requests)",
        )
    return k, f"mean pass {mean_pass:.2f}: on the frontier, knobs kept"


class CurriculumStrategy:
    def __init__(
        self,
        ctx: DomainContext,
        base: ProceduralConfig,
        cfg: CurriculumConfig,
        *,
        n_plans: int,
        seed: int = 0,
    ):
        if ctx.name not in GENERATORS:
            raise ValueError(
                f"synth.mode 'procedural': no procedural generator for domain {ctx.name!r}; "
                f"have {sorted(GENERATORS)}"
            )
        self.ctx, self.base, self.cfg, self.n, self.seed = ctx, base, cfg, n_plans, seed
        self.generate = GENERATORS[ctx.name]

    async def initial_plans(self) -> list[PlanPair]:
        """``n`` streams whose request windows step up from the base config's."""
        lo, hi = self.base.min_actions, self.base.max_actions
        plans = []
        for i in range(self.n):
            shift = min(i, max(0, self.cfg.max_actions_cap - hi))
            knobs = {
                "min_actions": lo + shift,
                "max_actions": hi + shift,
                "forbidden_prob": self.base.forbidden_prob,
            }
            plans.append(
                _plan(f"c{i}", knobs, rationale=f"initial window {lo + shift}-{hi + shift} requests")
            )
        return plans

    async def synthesize(
        self, plan: PlanPair, rnd: int, attempt: int, task_id: str
    ) -> Task | list[Rejection]:
        seed = hash_int(f"{self.seed}:{plan.id}:{plan.version}:{rnd}") % 2**31
        cfg = self.base.model_copy(update={**plan.knobs, "seed": seed})
        task = self.generate(cfg, attempt)
        prov = Provenance(
            generator=task.provenance.generator,
            plan_id=plan.id,
            round=rnd,
            seed=seed,
            params={**task.provenance.params, "knobs": plan.knobs, "plan_version": plan.version},
        )
        return task.model_copy(update={"id": task_id, "provenance": prov})

    async def reflect(self, plans: list[PlanPair], stats: dict[str, Any], rnd: int) -> list[PlanPair]:
        by_id = {p["id"]: p for p in stats["plans"]}
        out = []
        for plan in plans:
            rates = by_id.get(plan.id, {}).get("pass_rates", [])
            mean = sum(rates) / len(rates) if rates else None
            weight = (
                sum(task_weight(r, self.cfg.saturated_weight) for r in rates) / len(rates) if rates else 0.0
            )
            knobs, why = next_knobs(plan.knobs, mean, self.cfg)
            out.append(
                _plan(
                    plan.id,
                    knobs,
                    version=plan.version + 1,
                    parent=plan.version,
                    round=rnd,
                    weight=round(max(weight, 0.05), 4),
                    rationale=f"{why}; frontier weight {weight:.2f}",
                )
            )
        return out
