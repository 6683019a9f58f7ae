"""The eval stage: n trials per held-out task for the base, SFT and RL agents; pass^1..n as JSON,
a PNG plot and a console table. Per-trial records go to ``eval/<agent>.jsonl`` as they finish, so
an interrupted eval resumes where it stopped."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from eigen_apps.eval.config import TAU2_DOMAINS
from eigen_apps.eval.endpoints import recorded_runs
from eigen_apps.eval.passk import paired_difference, pass_hat_ks
from eigen_apps.eval.report import passk_table, plot_passk
from eigen_apps.eval.trials import checkpoint_identity, run_trials
from eigen_core.config import DomainConfig, PoolConfig
from eigen_core.domains import get_domain
from eigen_core.pool import TaskPool
from eigen_jax.stages.common import StageContext, episode_engine
from eigen_jax.train_config import EvalSection
from rollout.config import EpisodeConfig
from rollout.lockstep import Cohort
from rollout.workflow import lm_episodes
from verifiers.config import VerifierConfig
from verifiers.reward import Verifier
from verifiers.sandbox import Sandbox
from verifiers.tau2_eval import with_tau2_cross_check

STAGE_OF = {"sft": "sft_agent", "rl": "grpo"}


def agent_sources(ctx: StageContext, e: EvalSection, base_from: str | None = None) -> dict[str, str | None]:
    """Agent name -> the HF export it loads (None: the from-scratch init), for agents whose stage
    is done. ``base`` is ``base_from`` (the pretrain stage's export) or ``model.hf_dir``."""
    out: dict[str, str | None] = {}
    for name in e.agents:
        if name == "base":
            out[name] = base_from or ctx.model.hf_dir
            continue
        sd = ctx.stage_dir(STAGE_OF[name])
        if sd.finished():
            out[name] = str(sd.hf)
        else:
            print(f"[eval] skipping {name!r}: stage {STAGE_OF[name]} has not finished", file=sys.stderr)
    return out


def trial_settings(
    ctx: StageContext,
    e: EvalSection,
    domain: str,
    ep: EpisodeConfig,
    source: str | None,
    user_from: str | None,
) -> dict[str, Any]:
    """What decides an eval episode besides the seed: the agent's and the user model's weights,
    the sampling temperature and the episode limits (a rerun with other ones runs afresh)."""
    return {
        "domain": domain,
        "agent": checkpoint_identity(source) or {"init": ctx.model.model_dump(mode="json")},
        "temperature": e.temperature,
        "user_model": checkpoint_identity(user_from),
        # every episode knob but those that only change speed
        "episode": ep.decisive(),
    }


def run_eval(
    ctx: StageContext,
    e: EvalSection,
    *,
    domain: DomainConfig,
    pool: PoolConfig,
    episode: EpisodeConfig,
    verifier: VerifierConfig,
    user_from: str | None = None,
    base_from: str | None = None,
) -> dict[str, Any]:
    """The eval stage (``e``): the run's agents on ``pool``'s held-out tasks of ``domain``."""
    ep, tok, v = episode, ctx.tok, verifier
    if ep.user == "model" and user_from is None:
        raise ValueError("episode.user is 'model' but the run has no user-simulator model (sft_user stage)")
    root = ctx.stage_dir("eval").root
    tasks = list(TaskPool(pool.dir).tasks(e.split, domain.name))[: e.max_tasks]
    if not tasks:
        raise ValueError(f"eval: the pool at {pool.dir} has no {e.split!r} tasks")
    d = get_domain(domain.name)
    cross = domain.name in TAU2_DOMAINS
    user_engine = None
    if ep.user == "model":
        # (uncapped, as it always was: LMUser keeps its prompts within episode.max_len itself)
        user_engine = episode_engine(ctx.base_model(user_from), tok.pad_id, ep, capped=False)
    results: dict[str, dict[int, float]] = {}
    details: dict[str, Any] = {}
    by_agent: dict[str, dict[str, list[float]]] = {}
    with Sandbox.from_config(v) as sb:
        confinement = sb.describe()
        scorer = Verifier(d, sb, v.components)
        # on tau² domains every trial is also scored by tau²'s own evaluator, and a disagreement
        # stops the eval naming the trajectory (kept in eval/<agent>.trajectories.jsonl)
        score = with_tau2_cross_check(scorer.score) if cross else scorer.score
        for name, source in agent_sources(ctx, e, base_from).items():
            engine = episode_engine(ctx.base_model(source), tok.pad_id, ep)
            episodes = lm_episodes(
                d, engine, tok, ep, score, temperature=e.temperature, user_engine=user_engine, user_tok=tok
            )
            run = recorded_runs(episodes, root / f"{name}.trajectories.jsonl") if cross else episodes.run
            outcomes = asyncio.run(
                run_trials(
                    tasks,
                    run,
                    e.trials,
                    e.seed,
                    root / f"{name}.jsonl",
                    concurrency=ep.concurrency,
                    desc=f"eval {name}",
                    progress=ctx.run.progress,
                    settings=trial_settings(ctx, e, domain.name, ep, source, user_from),
                    cohorts=Cohort if e.deterministic else None,
                )
            )
            results[name] = pass_hat_ks(outcomes)
            by_agent[name] = outcomes
            details[name] = {"source": source or "from-scratch init", "tasks": len(outcomes)}
    report = {
        "split": e.split,
        "tasks": len(tasks),
        "trials": e.trials,
        "temperature": e.temperature,
        "user": ep.user,
        "pass_hat_k": {a: {str(k): x for k, x in r.items()} for a, r in results.items()},
        "agents": details,
        "sandbox": confinement,
        "tau2_cross_checked": cross,
    }
    if {"sft", "rl"} <= by_agent.keys() and len(tasks) > 1:  # the headline, paired over tasks
        diff, se = paired_difference(by_agent["sft"], by_agent["rl"])
        report["rl_minus_sft"] = {"pass1": diff, "paired_se": se}
    (root / "results.json").write_text(json.dumps(report, indent=2))
    if results:
        plot_passk(results, root / "passk.png", f"{domain.name}: {len(tasks)} {e.split} tasks × {e.trials}")
    print(passk_table(results))
    if "rl_minus_sft" in report:
        d = report["rl_minus_sft"]
        print(f"rl - sft pass^1: {d['pass1']:+.3f} (paired standard error {d['paired_se']:.3f})")
    return {**report, "results_json": str(root / "results.json"), "plot": str(root / "passk.png")}
