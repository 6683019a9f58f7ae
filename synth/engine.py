"""The data engine's rounds: plans -> worker streams -> accepted tasks into the pool -> reflection.

Per round, the streams' attempts run concurrently (bounded by ``synth.concurrency``; each endpoint
has its own throttle). An accepted task is published to the task pool at once (a trainer can read
it while synthesis runs), then journaled. Resume: journaled attempts are skipped, accepted ones
missing from the pool are re-published, plans already written are reused; a task published but
not yet journaled when the process died gets the same id when its attempt reruns, and the pool
keeps one copy. So a killed run, restarted, neither duplicates nor loses accepted tasks.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

from tqdm import tqdm

from eigen_core.contracts import Task
from eigen_core.dialogues import DialogueWriter, dialogue_root
from eigen_core.pool import PoolError, PoolWriter, TaskPool
from synth.dedupe import Deduper
from synth.llm import Budget, BudgetExhausted
from synth.plans import PlanPair
from synth.report import plot_report, round_stats
from synth.seeding import split_of
from synth.store import RunStore
from synth.worker import AttemptRecord, Reason, Synthesize, WorkerEnv, attempt_key, run_attempt


class Strategy(Protocol):
    """Where plans come from and how they evolve (``llm`` or ``procedural`` mode)."""

    synthesize: Synthesize

    async def initial_plans(self) -> list[PlanPair]: ...

    async def reflect(self, plans: list[PlanPair], stats: dict[str, Any], rnd: int) -> list[PlanPair]:
        """The plans of round ``rnd`` (each new version's ``rationale`` says why)."""
        ...


def allocate(plans: list[PlanPair], total: int) -> list[tuple[PlanPair, int]]:
    """``total`` attempts split over plans by weight (largest remainder), interleaved so every
    stream makes progress from the start. Returns ``(plan, attempt index within the plan)``."""
    weights = [p.weight for p in plans]
    if sum(weights) <= 0:
        weights = [1.0] * len(plans)
    shares = [w / sum(weights) * total for w in weights]
    counts = [int(s) for s in shares]
    for i in sorted(range(len(plans)), key=lambda i: (counts[i] - shares[i], i))[: total - sum(counts)]:
        counts[i] += 1
    jobs = []
    for k in range(max(counts, default=0)):
        jobs += [(p, k) for p, n in zip(plans, counts, strict=True) if k < n]
    return jobs


@dataclass
class EngineSettings:
    rounds: int
    attempts_per_round: int
    concurrency: int
    pool_dir: str
    shard_size: int
    test_fraction: float = 0.0
    dedupe_threshold: float = 0.9
    seed: int = 0
    progress: bool = True


class SynthEngine:
    def __init__(
        self, settings: EngineSettings, store: RunStore, strategy: Strategy, env: WorkerEnv, budget: Budget
    ):
        self.s, self.store, self.strategy, self.env, self.budget = settings, store, strategy, env, budget
        self.after_round: dict[str, list[int]] = {}
        """Budget totals (calls, tokens) at the end of each round."""
        self.stopped: str | None = None
        """Why the run ended early (a spent budget), or None."""
        self.dialogues: DialogueWriter | None = None
        """Where accepted tasks' passing rollouts go (the pool's dialogues), while ``run`` runs."""

    def task_id(self, plan: PlanPair, rnd: int, attempt: int) -> str:
        return f"{self.env.ctx.name}-synth-s{self.s.seed}-r{rnd}-{plan.id}-a{attempt}"

    async def _plans(self, rnd: int, journal: dict[str, AttemptRecord]) -> list[PlanPair]:
        plans = self.store.load_plans(rnd)
        if plans is not None:
            return plans
        prev = (self.store.load_plans(rnd - 1) or []) if rnd else []
        if rnd == 0:
            plans = await self.strategy.initial_plans()
        else:
            stats = round_stats(rnd - 1, prev, [r for r in journal.values() if r.round == rnd - 1])
            plans = await self.strategy.reflect(prev, stats, rnd)
        self.store.save_plans(rnd, plans)
        old = {(p.id, p.version) for p in prev}
        for p in plans:
            if (p.id, p.version) not in old:
                self.store.add_lineage({"round": rnd, **p.model_dump(mode="json")})
        return plans

    async def run(self) -> dict[str, Any]:
        """Run (or resume) every round; returns the report (also written to ``report.json``)."""
        journal = self.store.journal()
        saved = self.store.load_budget()
        for role, n in saved["calls"].items():
            self.budget.charge(role, n, saved["tokens"].get(role, 0))
        deduper = Deduper(self.s.dedupe_threshold)
        self.after_round = dict(saved.get("after_round", {}))
        with (
            PoolWriter(self.s.pool_dir, self.s.shard_size) as writer,
            DialogueWriter(dialogue_root(self.s.pool_dir), self.s.shard_size) as self.dialogues,
        ):
            for rec in journal.values():  # re-publish what a kill may have lost
                if rec.accepted and rec.task is not None:
                    writer.add(rec.task)
                    deduper.add(rec.task)
                    for d in rec.dialogues:
                        self.dialogues.add(d)
            writer.flush()
            self.dialogues.flush()
            try:
                mine = {r.task_id for r in journal.values()}
                for t in TaskPool(self.s.pool_dir).tasks():
                    if t.domain == self.env.ctx.name and t.id not in mine:
                        deduper.add(t)
            except PoolError:  # a new pool has no manifest yet
                pass
            for rnd in range(self.s.rounds):
                try:
                    plans = await self._plans(rnd, journal)
                except BudgetExhausted as e:
                    self.stopped = str(e)
                    break
                await self._round(rnd, plans, journal, writer, deduper)
                self.after_round[str(rnd)] = [self.budget.total_calls, self.budget.total_tokens]
                self.store.save_budget({**self.budget.snapshot(), "after_round": self.after_round})
                self.write_report(journal)
                if self.stopped:
                    break
        return self.write_report(journal)

    async def _round(
        self,
        rnd: int,
        plans: list[PlanPair],
        journal: dict[str, AttemptRecord],
        writer: PoolWriter,
        deduper: Deduper,
    ) -> None:
        jobs = [
            (p, k)
            for p, k in allocate(plans, self.s.attempts_per_round)
            if attempt_key(p.id, rnd, k) not in journal
        ]
        done = self.s.attempts_per_round - len(jobs)
        accepted = sum(r.accepted for r in journal.values() if r.round == rnd)
        bar = tqdm(
            total=self.s.attempts_per_round,
            initial=done,
            desc=f"round {rnd}",
            unit="task",
            disable=not self.s.progress,
        )
        sem = asyncio.Semaphore(self.s.concurrency)

        def is_duplicate(task: Task) -> str | None:
            if task.id in writer:  # published before a kill, journaled now: not a duplicate
                return None
            m = deduper.match(task)
            return None if m is None else f"similar ({m[1]:.2f}) to {m[0]}"

        async def one(plan: PlanPair, k: int) -> None:
            nonlocal accepted
            if self.stopped:
                return
            async with sem:
                if self.stopped:
                    return
                tid = self.task_id(plan, rnd, k)
                try:
                    rec = await run_attempt(self.env, plan, rnd, k, tid, is_duplicate)
                except BudgetExhausted as e:
                    self.stopped = str(e)
                    return
            if rec.accepted and rec.task is not None:
                task = rec.task.model_copy(update={"split": split_of(rec.task.id, self.s.test_fraction)})
                dup = is_duplicate(task)  # a concurrent attempt may have been accepted meanwhile
                if dup is not None:
                    rec = rec.model_copy(
                        update={
                            "accepted": False,
                            "stage": "dedupe",
                            "task": None,
                            "dialogues": [],
                            "reasons": [Reason(code="near_duplicate", detail=dup)],
                        }
                    )
                else:
                    dialogues = [d.model_copy(update={"split": task.split}) for d in rec.dialogues]
                    rec = rec.model_copy(update={"task": task, "dialogues": dialogues})
                    writer.add(task)
                    writer.flush()  # visible to readers now
                    assert self.dialogues is not None
                    for d in dialogues:  # its passing rollouts: SFT data (sft_*.data: imported)
                        self.dialogues.add(d)
                    self.dialogues.flush()
                    deduper.add(task)
                    accepted += 1
            self.store.record(rec)
            journal[rec.key] = rec
            bar.update()
            bar.set_postfix(accepted=accepted, calls=self.budget.total_calls, tokens=self.budget.total_tokens)

        await asyncio.gather(*(one(p, k) for p, k in jobs))
        bar.close()

    def write_report(self, journal: dict[str, AttemptRecord]) -> dict[str, Any]:
        rounds = []
        for rnd in range(self.s.rounds):
            plans = self.store.load_plans(rnd)
            if plans is None:
                break
            stats = round_stats(rnd, plans, [r for r in journal.values() if r.round == rnd])
            end = self.after_round.get(str(rnd))
            start = self.after_round.get(str(rnd - 1), [0, 0])
            if end is not None:  # spent in the round (cumulative marks, so resumes count right)
                stats["calls"], stats["tokens"] = end[0] - start[0], end[1] - start[1]
            rounds.append(stats)
        report = {
            "domain": self.env.ctx.name,
            "rounds": rounds,
            "accepted": sum(r["accepted"] for r in rounds),
            "proposed": sum(r["proposed"] for r in rounds),
            "budget": self.budget.snapshot(),
            "calls": self.budget.total_calls,
            "tokens": self.budget.total_tokens,
            "stopped": self.stopped,
            "pool": self.s.pool_dir,
        }
        self.store.save_json("report.json", report)
        plot_report(report, self.store.root / "report.png")
        return report
