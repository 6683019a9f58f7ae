"""LLM mode: the planner writes the first plan pairs; after each round the reflector rewrites each
pair from its statistics and tagged failures.

Overlap is enforced both times: the planner's plans that overlap an earlier one are rejected (and
the planner asked again, told what to avoid); a rewrite that would overlap another stream's plan
is refused and the stream keeps its previous version. Every new version carries its rationale and
is recorded in the lineage by the engine.
"""

from __future__ import annotations

from typing import Any

from rollout.http_engine import EngineError
from synth.context import DomainContext
from synth.llm import MalformedOutput, RoleClient
from synth.plans import PlanPair, overlap, seed_plans, select_distinct
from synth.prompts import PlannerOutput, ReflectionOutput, planner_prompt, reflector_prompt
from synth.worker import Synthesize


class PlanningError(RuntimeError):
    """The planner could not produce any usable plan."""


class LLMStrategy:
    def __init__(
        self,
        ctx: DomainContext,
        planner: RoleClient,
        reflector: RoleClient,
        synthesize: Synthesize,
        *,
        n_plans: int,
        overlap_threshold: float,
        db_sample: int,
        seed: int = 0,
        planner_tries: int = 3,
        fallback: bool = True,
    ):
        self.ctx, self.planner, self.reflector, self.synthesize = ctx, planner, reflector, synthesize
        self.n, self.threshold, self.db_sample, self.seed = n_plans, overlap_threshold, db_sample, seed
        self.planner_tries, self.fallback = planner_tries, fallback
        self.rejected_plans: list[dict[str, Any]] = []
        """Planner plans dropped for overlap: ``{"id", "overlaps", "overlap"}``."""
        self.planner_errors: list[str] = []
        """Planner answers that could not be used (malformed or off-schema after retries)."""
        self.seeded = 0
        """Plans filled in by ``seed_plans`` because the planner wrote too few."""

    def notes(self) -> dict[str, Any]:
        """How the first plans came about, for the run's report."""
        return {"rejected_overlap": self.rejected_plans, "errors": self.planner_errors, "seeded": self.seeded}

    async def initial_plans(self) -> list[PlanPair]:
        kept: list[PlanPair] = []
        brief = self.ctx.brief(self.db_sample, self.seed)
        for attempt in range(self.planner_tries):
            need = self.n - len(kept)
            system, user = planner_prompt(brief, need, [p.synthesis for p in kept])
            try:
                out = await self.planner.ask(system, user, PlannerOutput, seed=self.seed * 100 + attempt)
            except MalformedOutput as e:  # an endpoint error is not the model's: it ends the run
                self.planner_errors.append(str(e)[:300])
                continue
            drafts = out.plans
            chosen, rejected = select_distinct(
                [d.synthesis for d in drafts], self.threshold, [p.synthesis for p in kept]
            )
            for i, j, o in rejected:
                other = kept[int(j.split(":")[1])].id if isinstance(j, str) else drafts[j].id
                self.rejected_plans.append({"id": drafts[i].id, "overlaps": other, "overlap": o})
            ids = {p.id for p in kept}
            for i in chosen[:need]:
                d = drafts[i]
                pid = d.id if d.id not in ids else f"{d.id}-{len(kept)}"
                ids.add(pid)
                kept.append(
                    PlanPair(
                        id=pid,
                        synthesis=d.synthesis,
                        evaluation=d.evaluation,
                        prompts=d.prompts,
                        rationale=d.rationale,
                    )
                )
            if len(kept) >= self.n:
                break
        if len(kept) < self.n and self.fallback:
            # A weak planner must not end the run: rule-made plans give reflection streams to
            # work on, and the report says how many were seeded and why.
            seeded = seed_plans(
                list(self.ctx.schemas()), self.n - len(kept), self.threshold, [p.synthesis for p in kept]
            )
            why = f"; the planner wrote {len(kept)} of {self.n} usable plans"
            if self.planner_errors:
                why += f" (last error: {self.planner_errors[-1][:200]})"
            taken = {p.id for p in kept}
            kept += [
                p.model_copy(
                    update={"id": p.id if p.id not in taken else f"{p.id}-s", "rationale": p.rationale + why}
                )
                for p in seeded
            ]
            self.seeded = len(seeded)
        if not kept:
            raise PlanningError(
                "the planner wrote no usable plan"
                + (f": {self.planner_errors[-1]}" if self.planner_errors else "")
            )
        return kept

    async def reflect(self, plans: list[PlanPair], stats: dict[str, Any], rnd: int) -> list[PlanPair]:
        by_id = {p["id"]: p for p in stats["plans"]}
        out: list[PlanPair] = []
        for i, plan in enumerate(plans):
            others = [p.synthesis for p in out] + [p.synthesis for p in plans[i + 1 :]]
            pstats = {
                k: v
                for k, v in by_id.get(plan.id, {}).items()
                if k not in ("rationale", "knobs", "pass_rates")
            }
            system, user = reflector_prompt(plan, pstats, others)
            try:
                new = await self.reflector.ask(
                    system, user, ReflectionOutput, seed=self.seed * 1000 + rnd * 100 + i
                )
            except (MalformedOutput, EngineError) as e:
                out.append(
                    plan.model_copy(update={"rationale": f"kept: the reflector failed ({str(e)[:200]})"})
                )
                continue
            clash = max(
                ((overlap(new.synthesis, o), o) for o in others), default=(0.0, None), key=lambda x: x[0]
            )
            if clash[0] >= self.threshold:
                out.append(
                    plan.model_copy(
                        update={"rationale": f"kept: the rewrite overlapped another plan ({clash[0]:.2f})"}
                    )
                )
                continue
            out.append(
                plan.model_copy(
                    update={
                        "version": plan.version + 1,
                        "parent": plan.version,
                        "round": rnd,
                        "synthesis": new.synthesis,
                        "evaluation": new.evaluation,
                        "prompts": new.prompts,
                        "rationale": new.rationale,
                    }
                )
            )
        return out
