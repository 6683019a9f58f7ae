"""``python -m synth.run --config configs/synth_shop.yaml``: run (or resume) the data engine.

Rounds of plan pairs -> worker streams (synthesize, verify, roll out, judge) -> accepted tasks
into the task pool -> reflection; the report (JSON + plot) is rewritten after every round.
Prints the final report's summary as one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Callable
from typing import Any

from eigen_core.config import DomainConfig, PoolConfig
from eigen_core.configio import Section, add_config_args, config_from_args
from eigen_core.contracts import Task
from rollout.agents import Agent
from rollout.config import EpisodeConfig
from synth.config import CurriculumConfig, EndpointsConfig, ProceduralConfig, SynthSection
from synth.context import domain_context
from synth.engine import EngineSettings, SynthEngine
from synth.llm import Budget
from synth.report import report_markdown
from synth.roles import open_roles
from synth.scripted import ScriptedBehaviour
from synth.store import RunStore
from synth.worker import WorkerEnv, llm_synthesizer
from verifiers.config import VerifierConfig
from verifiers.reward import Verifier
from verifiers.sandbox import Sandbox


class SynthRunConfig(Section):
    """The sections ``synth.run`` reads."""

    synth: SynthSection = SynthSection()
    """Mode, rounds, plans, attempts, budget, output directory."""
    endpoints: EndpointsConfig = EndpointsConfig()
    """The model behind each role."""
    domain: DomainConfig = DomainConfig()
    """The domain tasks are synthesized for."""
    pool: PoolConfig = PoolConfig()
    """The task pool accepted tasks go to."""
    episode: EpisodeConfig = EpisodeConfig()
    """Verification rollouts: step limit, user patience (rule-based user)."""
    verifier: VerifierConfig = VerifierConfig()
    """Reward components and the checker sandbox."""
    procedural: ProceduralConfig = ProceduralConfig()
    """Procedural mode: the generator's starting knobs."""
    curriculum: CurriculumConfig = CurriculumConfig()
    """Procedural mode: how reflection moves the knobs."""


def _needed(mode: str) -> tuple[str, ...]:
    if mode == "procedural":
        return ("judge", "user", "assistant")
    return ("planner", "synthesizer", "judge", "user", "assistant", "reflector")


async def run_synth(
    cfg: SynthRunConfig,
    *,
    make_agent: Callable[[Task, int], Agent] | None = None,
    behaviour: ScriptedBehaviour | None = None,
) -> dict[str, Any]:
    """Build the engine from ``cfg`` and run it; returns the report. ``make_agent`` replaces the
    assistant endpoint (tests and in-process policies); ``behaviour`` tunes a scripted endpoint."""
    s = cfg.synth
    ctx = domain_context(cfg.domain.name, world_seed=s.seed, world_customers=s.world_customers)
    budget = Budget(max_calls=s.max_calls, max_tokens=s.max_tokens)
    store = RunStore(s.out_dir)
    vc = cfg.verifier
    async with contextlib.AsyncExitStack() as stack:
        roles = await stack.enter_async_context(
            open_roles(
                cfg.endpoints,
                budget,
                json_retries=s.json_retries,
                needed=_needed(s.mode),
                behaviour=behaviour,
            )
        )
        sandbox = stack.enter_context(Sandbox.from_config(vc))
        if s.mode == "procedural":
            from synth.curriculum import CurriculumStrategy

            strategy: Any = CurriculumStrategy(
                ctx, cfg.procedural, cfg.curriculum, n_plans=s.plans, seed=s.seed
            )
        else:
            from synth.reflection import LLMStrategy

            assert roles.synthesizer and roles.planner and roles.reflector
            synthesize = llm_synthesizer(roles.synthesizer, ctx, s.db_sample, s.seed)
            strategy = LLMStrategy(
                ctx,
                roles.planner,
                roles.reflector,
                synthesize,
                n_plans=s.plans,
                overlap_threshold=s.overlap_threshold,
                db_sample=s.db_sample,
                seed=s.seed,
                fallback=s.planner_fallback,
            )
        env = WorkerEnv(
            ctx=ctx,
            synthesize=strategy.synthesize,
            make_agent=make_agent or roles.make_agent,
            make_user=roles.make_user,
            sandbox=sandbox,
            verifier=Verifier(ctx.domain, sandbox, vc.components),
            judge=roles.judge,
            rollouts=s.rollouts_per_task,
            max_steps=cfg.episode.max_steps,
            prompt=cfg.episode.prompt,
            seed=s.seed,
        )
        settings = EngineSettings(
            rounds=s.rounds,
            attempts_per_round=s.attempts_per_round,
            concurrency=s.concurrency,
            pool_dir=cfg.pool.dir,
            shard_size=cfg.pool.shard_size,
            test_fraction=s.test_fraction,
            dedupe_threshold=s.dedupe_threshold,
            seed=s.seed,
            progress=s.progress,
        )
        report = await SynthEngine(settings, store, strategy, env, budget).run()
        report["retries"] = roles.retries()
        report["sandbox"] = sandbox.describe()
        if hasattr(strategy, "notes"):
            report["planner"] = strategy.notes()
        store.save_json("report.json", report)
        (store.root / "report.md").write_text(report_markdown(report))
        return report


def summary(report: dict[str, Any]) -> dict[str, Any]:
    return {
        "pool": report["pool"],
        "accepted": report["accepted"],
        "proposed": report["proposed"],
        "yield_per_round": [r["yield"] for r in report["rounds"]],
        "calls": report["calls"],
        "tokens": report["tokens"],
        "stopped": report["stopped"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m synth.run", description=__doc__)
    add_config_args(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    extra = ["synth.progress=false"] if args.no_progress else []
    cfg = config_from_args(SynthRunConfig, args, extra)
    try:
        report = asyncio.run(run_synth(cfg))
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({**summary(report), "report": f"{cfg.synth.out_dir}/report.json"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
