"""A standalone eval run over OpenAI-compatible chat endpoints: n trials per task, each episode
scored by our verifier (and, on tau² domains, by tau²'s own evaluator as a cross-check), per-trial
records as JSONL, pass^k as JSON, a table and a plot. Resumable: a rerun only runs what is missing.

Outputs in ``run.out_dir``: ``trials.jsonl`` (one record per finished trial), ``trajectories.jsonl``
(the full episodes), ``results.json``, ``passk.png``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from eigen_apps.eval.config import TAU2_DOMAINS, EvalRunConfig
from eigen_apps.eval.passk import is_success, pass_hat_ks
from eigen_apps.eval.report import passk_table, plot_passk
from eigen_apps.eval.trials import RunFn, checkpoint_identity, read_trials, run_trials, trials_key
from eigen_core.config import EndpointSection
from eigen_core.contracts import Task, Trajectory
from eigen_core.domains import get_domain
from eigen_core.pool import TaskPool
from rollout.chat_agents import chat_agent, chat_user
from rollout.http_engine import HTTPEngine
from rollout.workflow import ScoredEpisodes, scripted_user
from verifiers.reward import Verifier
from verifiers.sandbox import Sandbox
from verifiers.tau2_eval import with_tau2_cross_check


class ParityError(RuntimeError):
    """Our reward and tau²'s disagree on a trajectory: a bug in one of the two, never noise."""


def load_eval_tasks(cfg: EvalRunConfig) -> list[Task]:
    e = cfg.eval
    if e.source == "tau2":
        from eigen_core.domains.tau2 import load_tasks

        tasks = load_tasks(cfg.domain.name, e.split)
    else:
        tasks = [x for x in TaskPool(cfg.pool.dir).tasks(e.split) if x.domain == cfg.domain.name]
    if not tasks:
        where = "tau²" if e.source == "tau2" else f"the pool at {cfg.pool.dir}"
        raise ValueError(f"eval: no {e.split!r} tasks of domain {cfg.domain.name!r} in {where}")
    return tasks[: e.max_tasks]


def client_for(party: EndpointSection, url: str | None = None) -> HTTPEngine:
    """The HTTP client of an endpoint party (``url`` overrides, for a locally served checkpoint)."""
    return HTTPEngine(url or party.url, party.model, **party.client_options())


def describe(party: EndpointSection, url: str | None) -> dict[str, Any]:
    if party.kind == "rules":
        return {"kind": "rules"}
    where = {"checkpoint": party.checkpoint} if party.kind == "checkpoint" else {"url": url or party.url}
    return {"kind": party.kind, "model": party.model, **where, "temperature": party.temperature}


def party_identity(party: EndpointSection) -> dict[str, Any]:
    """What about a party decides its episodes (resumed trials must match it). Not the URL: a
    served model restarted on another port is the same party."""
    if party.kind == "rules":
        return {"kind": "rules"}
    out: dict[str, Any] = {
        "kind": party.kind,
        "model": party.model,
        "temperature": party.temperature,
        "max_tokens": party.max_tokens,
        "max_len": party.max_len,
    }
    if party.kind == "checkpoint":
        out["checkpoint"] = checkpoint_identity(party.checkpoint)
    return out


def trial_settings(cfg: EvalRunConfig) -> dict[str, Any]:
    """The settings an endpoint eval's trial records are keyed by."""
    return {
        "domain": cfg.domain.name,
        "agent": party_identity(cfg.agent),
        "user": party_identity(cfg.user),
        "max_steps": cfg.episode.max_steps,
        "prompt": cfg.episode.prompt,
        "user_patience": cfg.episode.user_patience,
    }


def recorded_runs(workflow: ScoredEpisodes, traj_file: Path) -> RunFn:
    """``workflow.run`` that appends each trajectory to ``traj_file`` and raises ``ParityError``
    where tau²'s cross-checked reward disagrees with ours."""

    async def run(task: Task, seed: int, group_id: str, sample_index: int) -> Trajectory:
        traj = await workflow.run(task, seed, group_id, sample_index)
        with traj_file.open("a") as f:
            f.write(traj.model_dump_json() + "\n")
        info = traj.reward_info
        assert info is not None
        theirs = info.components.get("tau2")
        if theirs is not None and theirs != info.reward:
            raise ParityError(
                f"task {task.id} trial {sample_index}: our reward {info.reward} != tau²'s {theirs} "
                f"(ours: {info.reasons}); the trajectory is in {traj_file}"
            )
        return traj

    return run


async def evaluate(
    cfg: EvalRunConfig, agent_url: str | None = None, user_url: str | None = None
) -> dict[str, Any]:
    """Run (or resume) the eval; returns the report written to ``results.json``."""
    domain = get_domain(cfg.domain.name)
    tasks = load_eval_tasks(cfg)
    by_id = {t.id: t for t in tasks}
    out = Path(cfg.run.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cross = cfg.eval.tau2_cross_check and cfg.domain.name in TAU2_DOMAINS
    agent_client = client_for(cfg.agent, agent_url)
    user_client = client_for(cfg.user, user_url) if cfg.user.kind != "rules" else None
    v = cfg.verifier
    traj_file = out / "trajectories.jsonl"
    settings = trial_settings(cfg)  # keys the trial records (resume reuses only matching ones)
    a, u, ep = cfg.agent, cfg.user, cfg.episode
    user = (
        scripted_user(ep.user_patience)
        if user_client is None
        else chat_user(user_client, domain, temperature=u.temperature, max_tokens=u.max_tokens)
    )

    reruns: list[str] = []  # episodes rerun after an engine failed for good
    with Sandbox.from_config(v) as sb:
        confinement = sb.describe()
        verifier = Verifier(domain, sb, v.components)
        workflow = ScoredEpisodes(
            domain,
            agent=chat_agent(agent_client, temperature=a.temperature, max_tokens=a.max_tokens),
            user=user,
            score=with_tau2_cross_check(verifier.score) if cross else verifier.score,
            max_steps=ep.max_steps,
            prompt=ep.prompt,
        )
        run = recorded_runs(workflow, traj_file)
        try:
            outcomes = await run_trials(
                tasks,
                run,
                cfg.eval.trials,
                cfg.eval.seed,
                out / "trials.jsonl",
                concurrency=ep.concurrency,
                desc=f"eval {cfg.domain.name}",
                progress=cfg.run.progress,
                settings=settings,
                reruns=reruns,
            )
        finally:
            await agent_client.close()
            if user_client is not None:
                await user_client.close()

    key = trials_key(cfg.eval.seed, settings)
    records = [r for r in read_trials(out / "trials.jsonl", key).values() if r["task_id"] in by_id]
    passk = pass_hat_ks(outcomes)
    name = cfg.agent.model
    report = {
        "domain": cfg.domain.name,
        "tasks": {"source": cfg.eval.source, "split": cfg.eval.split, "count": len(tasks)},
        "trials": cfg.eval.trials,
        "agent": describe(cfg.agent, agent_url),
        "user": describe(cfg.user, user_url),
        "pass_hat_k": {str(k): x for k, x in passk.items()},
        "avg_reward": sum(sum(r) for r in outcomes.values()) / (len(outcomes) * cfg.eval.trials),
        "successes": sum(is_success(x) for r in outcomes.values() for x in r),
        "terminations": dict(Counter(r["termination"] for r in records)),
        "tau2_cross_checked": sum("tau2" in r.get("components", {}) for r in records) if cross else None,
        "sandbox": confinement,
        "faults": {
            "request_retries": agent_client.retries + (user_client.retries if user_client else 0),
            "episodes_rerun": len(reruns),
            "rerun_reasons": reruns[:10],
        },
    }
    (out / "results.json").write_text(json.dumps(report, indent=2))
    title = f"{cfg.domain.name}: {len(tasks)} {cfg.eval.split} tasks × {cfg.eval.trials} trials"
    plot_passk({name: passk}, out / "passk.png", title)
    print(passk_table({name: passk}))
    return report
